"""A trimmed student end to end: ``trim_vocab`` in a distill run (sft, in this process) trains,
resumes, evaluates with the trimmed tokenizer and exports a trimmed best_tfmr."""

import dataclasses
import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from raydistill.config import DistillConfig
from raydistill.models.scratch import new_model, save_model_and_tokenizer, train_tokenizer
from raydistill.pipeline import run_distill

pytestmark = pytest.mark.integration


def data_and_teacher(root, lines, sizes, extra, vocab_size):
    """A six-file data folder of ``lines`` (``sizes``: rows per split) and a BART teacher whose
    tokenizer also learnt ``extra`` (text the task never uses: what trimming drops)."""
    data = root / "data"
    data.mkdir()
    for split, n in sizes.items():
        (data / f"{split}.source").write_text("\n".join(lines[:n]) + "\n")
        (data / f"{split}.target").write_text("\n".join(s.split(" ")[1] + " ." for s in lines[:n]) + "\n")
    tok = train_tokenizer(lines + extra, vocab_size=vocab_size)
    teacher = save_model_and_tokenizer(new_model("bart", len(tok), pad_token_id=tok.pad_token_id),
                                       tok, root / "teacher")
    return data, tok, teacher


@pytest.mark.timeout(400)
def test_trimmed_student_trains_resumes_and_evaluates(ray_session, tmp_path):
    lines = [f"sentence {i} about cats and dogs ." for i in range(12)]
    # The teacher's tokenizer knows much more text than the task uses.
    data, tok, teacher = data_and_teacher(
        tmp_path, lines, {"train": 12, "val": 4, "test": 4},
        ["quantum chromodynamics and zebras graze acacia leaves"] * 5 +
        ["giraffes browse while jubilant xylophones vex a wizard"] * 5, vocab_size=420)
    out = tmp_path / "run"
    cfg = DistillConfig(
        method="sft", teacher=str(teacher), trim_vocab=str(data), student_encoder_layers=1,
        student_decoder_layers=1, data_dir=str(data), output_dir=str(out), num_workers=0,
        cpus_per_worker=1, train_batch_size=4, max_steps=4, max_epochs=10, val_check_steps=2,
        eval_beams=1, learning_rate=1e-3, val_max_target_length=8, test_max_target_length=8,
        seed=0)
    first = run_distill(cfg)
    assert first["final_step"] == 4
    kept = json.loads((out / "student_layers.json").read_text())["vocab_map"]
    assert len(kept) < len(tok)
    best = out / "best_tfmr"
    assert json.loads((best / "config.json").read_text())["vocab_size"] == len(kept)
    assert len(AutoTokenizer.from_pretrained(best)) == len(kept)
    assert len((out / "test_generations.txt").read_text().splitlines()) == 4

    summary = run_distill(dataclasses.replace(cfg, max_steps=6), resume=True)
    assert summary["resumed_from"] == [4] and summary["final_step"] == 6
    assert json.loads((out / "student_layers.json").read_text())["vocab_map"] == kept


def trimmed_kd_config(tmp_path, name: str, **extra) -> DistillConfig:
    """A kd run into a student trimmed from a tiny teacher whose extra words the train split
    never uses (so the kept set drops some teacher mass)."""
    lines = [f"sentence {i} about cats and dogs ." for i in range(8)]
    data, _, teacher = data_and_teacher(
        tmp_path, lines, {"train": 8, "val": 8, "test": 8},
        ["zebras graze acacia leaves while giraffes browse"] * 5, vocab_size=380)
    return DistillConfig(
        method="kd", teacher=str(teacher), trim_vocab=str(data), student_encoder_layers=1,
        student_decoder_layers=1, data_dir=str(data), output_dir=str(tmp_path / name),
        num_workers=0, cpus_per_worker=1, train_batch_size=4, max_steps=2, val_check_steps=2,
        eval_beams=1, log_every_n_steps=1, do_predict=False, val_max_target_length=6, seed=0,
        **extra)


@pytest.mark.timeout(400)
def test_kd_into_a_trimmed_student_reports_the_dropped_teacher_mass(ray_session, tmp_path,
                                                                   capfd):
    summary = run_distill(trimmed_kd_config(tmp_path, "kd"))
    assert summary["final_step"] == 2
    step_lines = [ln for ln in capfd.readouterr().out.splitlines() if "teacher_dropped_mass" in ln]
    assert step_lines  # the step line carries the mass the kept set drops


@pytest.mark.timeout(400)
def test_cached_teacher_logits_for_a_trimmed_student_are_keyed_by_its_map(ray_session, tmp_path,
                                                                          capfd):
    """is_caching_logits (Parquet) with trim_vocab: the cache is built at the kept ids, keyed by
    the map, and the step line reports the dropped mass from it (no live teacher)."""
    from raydistill.models.teacher_cache import read_manifest
    from raydistill.models.vocab import map_fingerprint

    cfg = trimmed_kd_config(
        tmp_path, "cached",
        distillation={"is_caching_logits": True, "temperature": 2.0, "hard_label_weight": 0.5})
    assert run_distill(cfg)["final_step"] == 2
    out = Path(cfg.output_dir)
    kept = json.loads((out / "student_layers.json").read_text())["vocab_map"]
    manifest = read_manifest(out / "logit_cache")
    assert manifest["key"]["vocab_map"] == map_fingerprint(kept)
    step_lines = [ln for ln in capfd.readouterr().out.splitlines() if "teacher_dropped_mass" in ln]
    assert step_lines


@pytest.mark.timeout(400)
@pytest.mark.parametrize("cached", [False, True], ids=["live", "cached"])
def test_kd_into_a_trimmed_fsmt_student(ray_session, tmp_path, capfd, cached):
    """FSMT: each side trimmed apart; the run carries both maps (student_layers.json), the
    teacher reads the inputs through the source map (live, and when building the Parquet cache,
    keyed by both maps) and its logits are gathered through the target map."""
    from raydistill.models.scratch import train_fsmt_tokenizer
    from raydistill.models.vocab import map_fingerprint, read_source_map

    pytest.importorskip("sacremoses")
    pairs = [(f"the {w} sat on the mat {i} .", f"die {w} sass auf der Matte {i} .")
             for i, w in enumerate(["cat", "dog", "bird", "fox"] * 2)]
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "val", "test"):
        (data / f"{split}.source").write_text("".join(s + "\n" for s, _ in pairs))
        (data / f"{split}.target").write_text("".join(t + "\n" for _, t in pairs))
    extra = ["zebras graze acacia leaves while giraffes browse"] * 5
    tok = train_fsmt_tokenizer([s for s, _ in pairs] + extra, [t for _, t in pairs] + extra,
                               tmp_path / "tok", vocab_size=200)
    teacher = save_model_and_tokenizer(new_model("fsmt", len(tok.encoder)), tok,
                                       tmp_path / "teacher")
    out = tmp_path / "run"
    cfg = DistillConfig(
        method="kd", teacher=str(teacher), trim_vocab=str(data), student_encoder_layers=1,
        student_decoder_layers=1, data_dir=str(data), output_dir=str(out), num_workers=0,
        cpus_per_worker=1, train_batch_size=4, max_steps=2, val_check_steps=2, eval_beams=1,
        log_every_n_steps=1, do_predict=False, val_max_target_length=6, seed=0,
        **({"distillation": {"is_caching_logits": True, "temperature": 2.0,
                             "hard_label_weight": 0.5}} if cached else {}))
    assert run_distill(cfg)["final_step"] == 2
    layers = json.loads((out / "student_layers.json").read_text())
    assert layers["source_vocab_map"] == read_source_map(out / "student") != layers["vocab_map"]
    assert len(layers["vocab_map"]) < len(tok.decoder)
    assert any("teacher_dropped_mass" in ln for ln in capfd.readouterr().out.splitlines())
    if cached:
        from raydistill.models.teacher_cache import read_manifest

        key = read_manifest(out / "logit_cache")["key"]
        assert key["source_vocab_map"] == map_fingerprint(layers["source_vocab_map"])


@pytest.mark.timeout(400)
def test_kd_from_a_student_trimmed_by_make_student(ray_session, tmp_path):
    """make-student --trim-vocab, then a distill run with ``student:`` that folder and the
    teacher (the README's workflow, and a staged run's later stages): the preflight vocabulary
    check compared the trimmed size with the teacher's and refused every such run."""
    from raydistill.models.student import make_student

    cfg = trimmed_kd_config(tmp_path, "from_saved")
    saved = tmp_path / "trimmed_student"
    make_student(cfg.teacher, e=1, d=1, save_path=saved, trim_vocab=cfg.trim_vocab)
    assert json.loads((saved / "config.json").read_text())["vocab_size"] < \
        json.loads((Path(cfg.teacher) / "config.json").read_text())["vocab_size"]
    cfg = dataclasses.replace(cfg, student=str(saved), trim_vocab=None,
                              student_encoder_layers=None, student_decoder_layers=None)
    assert run_distill(cfg)["final_step"] == 2
