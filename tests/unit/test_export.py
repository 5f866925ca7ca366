"""``raydistill export``: a CTranslate2 folder that generates what the model generates.

Tiny BART, mBART, Marian, Pegasus and T5 models trained for a few seconds to copy their input (a random model's
near-uniform logits would let argmax ties, not the engines, decide), exported, then loaded the
way a user would: ``ctranslate2.Translator(out)`` and ``AutoTokenizer.from_pretrained(out)``.
"""

from __future__ import annotations

import json
import shutil

import pytest

from raydistill.cli import main

ctranslate2 = pytest.importorskip("ctranslate2")

CORPUS = [
    "the cat sat on the mat and looked at the dog .",
    "a dog ran in the park with a red ball .",
    "birds sing in the morning when the sun rises .",
    "the quick brown fox jumps over the lazy dog .",
    "summaries are short texts that keep the main point .",
    "translation maps a sentence from one language to another .",
]
SOURCES = CORPUS + [" ".join(reversed(s.split())) for s in CORPUS] + [
    "the dog sat on the red mat .", "a bird ran .", "the sun sat in the park ."]


@pytest.fixture(scope="module", params=["bart", "mbart", "marian", "pegasus", "t5"])
def trained(request, tmp_path_factory, tiny_tokenizer):
    """(model, tokenizer, saved folder) of one architecture, trained to copy CORPUS."""
    import torch

    from raydistill.models.scratch import new_model, save_model_and_tokenizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tok = tiny_tokenizer
    model = new_model(request.param, len(tok), pad_token_id=tok.pad_token_id)
    enc = tok(CORPUS, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["input_ids"] == tok.pad_token_id, -100)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(100):
        model(**enc, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return model, tok, save_model_and_tokenizer(model, tok, tmp_path_factory.mktemp(request.param))


def test_the_exports_greedy_outputs_equal_the_models(trained, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    from raydistill.export import export_ctranslate2
    from raydistill.models.ct2 import generate_ct2
    from raydistill.models.generate import generate_local

    model, tok, model_dir = trained
    out = export_ctranslate2(model_dir, tmp_path / "ct2")
    translator = ctranslate2.Translator(str(out))  # as a user loads it: nothing of raydistill's
    exported_tok = AutoTokenizer.from_pretrained(str(out))
    for max_length in (6, 40):  # 6: every output cut at max_length
        hf = generate_local(model, tok, SOURCES, num_beams=1, max_length=max_length, batch_size=4)
        ct = generate_ct2(translator, exported_tok, SOURCES, num_beams=1, max_length=max_length,
                          generation_config=GenerationConfig.from_pretrained(str(out)),
                          batch_size=4)
        assert ct == hf, max_length
    assert len(set(hf)) > 3  # the model writes text, not one repeated string
    record = json.loads((out / "raydistill_export.json").read_text())
    assert record["quantization"] == "float32" and record["checked_architecture"]


def test_a_forced_language_code_leads_the_exports_outputs_as_it_leads_generates(
        trained, tmp_path):
    """mBART-50 and NLLB force the target language code after the decoder start
    (``forced_bos_token_id``): CTranslate2 gets it as the target prefix."""
    from transformers import AutoTokenizer, GenerationConfig

    from raydistill.export import export_ctranslate2
    from raydistill.models.ct2 import generate_ct2
    from raydistill.models.generate import generate_local

    model, tok, model_dir = trained
    if model.config.model_type != "mbart":
        pytest.skip("the forced language code is mBART's (and NLLB's)")
    forced = tmp_path / "forced"
    shutil.copytree(model_dir, forced)
    code = tok("birds", add_special_tokens=False)["input_ids"][0]  # not how outputs start
    model.generation_config.forced_bos_token_id = code
    try:
        model.generation_config.save_pretrained(forced)
        out = export_ctranslate2(forced, tmp_path / "ct2")
        translator = ctranslate2.Translator(str(out))
        for max_length in (6, 40):
            hf = generate_local(model, tok, SOURCES, num_beams=1, max_length=max_length,
                                batch_size=4)
            ct = generate_ct2(translator, AutoTokenizer.from_pretrained(str(out)), SOURCES,
                              num_beams=1, max_length=max_length, batch_size=4,
                              generation_config=GenerationConfig.from_pretrained(str(out)))
            assert ct == hf, max_length
        assert all(text.startswith(tok.decode([code]).strip()) for text in hf), hf  # forced
    finally:
        model.generation_config.forced_bos_token_id = None
    assert code not in tok.all_special_ids


def test_the_cli_writes_the_folder_with_its_tokenizer_files_and_times_both(
        tiny_bart_dir, tmp_path, capsys):
    model_dir = tiny_bart_dir
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.source").write_text("\n".join(SOURCES) + "\n")
    (data / "test.target").write_text("\n".join(SOURCES) + "\n")
    out = tmp_path / "student_ct2"
    assert main(["export", str(model_dir), "--format", "ctranslate2", "--quantization", "int8",
                 "--out", str(out), "--data-dir", str(data), "--n", "3",
                 "--max-length", "20"]) == 0
    files = {p.name for p in out.iterdir()}
    assert {"model.bin", "config.json", "shared_vocabulary.json", "tokenizer.json",
            "tokenizer_config.json", "generation_config.json", "raydistill_export.json"} <= files
    assert not any(name.endswith(".safetensors") for name in files)
    printed = capsys.readouterr().out
    assert "transformers (float32)" in printed and "ctranslate2 (int8)" in printed
    assert "ms/example" in printed and "same output on" in printed and "/3 sources" in printed
    # the folder exists now: a second export there is refused, --overwrite replaces it
    assert main(["export", str(model_dir), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(model_dir), "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "raydistill_export.json").read_text())["quantization"] == "float32"
    # a distill run's output_dir: its best_tfmr is exported
    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "best_tfmr")
    assert main(["export", str(run), "--out", str(tmp_path / "from_run")]) == 0
    record = json.loads((tmp_path / "from_run" / "raydistill_export.json").read_text())
    assert record["model_path"] == str(run / "best_tfmr")


def test_a_model_ctranslate2_cannot_convert_is_one_line(tmp_path, tiny_tokenizer, capsys):
    from raydistill.models.scratch import new_model, save_model_and_tokenizer

    fsmt = save_model_and_tokenizer(new_model("fsmt", len(tiny_tokenizer)), tiny_tokenizer,
                                    tmp_path / "fsmt")
    assert main(["export", str(fsmt), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "CTranslate2 cannot convert" in err and "fsmt" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no leftovers


def test_an_architecture_raydistill_has_not_checked_exports_with_a_warning(
        tiny_bart_dir, tmp_path, monkeypatch, capsys):
    import raydistill.models.ct2 as ct2

    monkeypatch.setattr(ct2, "CONVERTIBLE", ("marian", "t5"))  # as if BART were unchecked
    assert main(["export", str(tiny_bart_dir), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "warning: raydistill has not checked" in printed and "'bart'" in printed
    assert (tmp_path / "out" / "model.bin").is_file()
    assert not json.loads((tmp_path / "out" / "raydistill_export.json").read_text())[
        "checked_architecture"]
