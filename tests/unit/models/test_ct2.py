"""The CTranslate2 backend means what transformers means: same outputs, cached conversion, fallback.

Tiny BART, Marian and T5 models built from configs, trained for a few seconds to copy their
input (a random model's near-uniform logits would make argmax ties, not the engines, decide).
"""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

from raydistill.errors import ConfigError
from raydistill.models.ct2 import (
    convert_cached,
    generate_ct2,
    load_translator,
    prepare_backend,
)
from raydistill.models.generate import Generator, generate_local, measure_latency

pytest.importorskip("ctranslate2")

CORPUS = [
    "the cat sat on the mat and looked at the dog .",
    "a dog ran in the park with a red ball .",
    "birds sing in the morning when the sun rises .",
    "the quick brown fox jumps over the lazy dog .",
    "summaries are short texts that keep the main point .",
    "translation maps a sentence from one language to another .",
]
# Seen sentences, their reversals and new mixes: some copied well, some not.
SOURCES = CORPUS + [" ".join(reversed(s.split())) for s in CORPUS] + [
    "the dog sat on the red mat .", "a bird ran .", "the sun sat in the park ."]


def _trained_copy(arch: str, tokenizer, steps: int = 100):
    from raydistill.models.scratch import new_model

    torch.manual_seed(0)
    model = new_model(arch, len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    enc = tokenizer(CORPUS, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["input_ids"] == tokenizer.pad_token_id, -100)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        model(**enc, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.fixture(scope="module", params=["bart", "marian", "t5"])
def converted(request, tmp_path_factory, tiny_tokenizer):
    """(model, tokenizer, model_dir, float32 translator) of one architecture."""
    from raydistill.models.scratch import save_model_and_tokenizer

    torch.set_num_threads(1)
    model = _trained_copy(request.param, tiny_tokenizer)
    model_dir = save_model_and_tokenizer(model, tiny_tokenizer,
                                         tmp_path_factory.mktemp(request.param))
    backend = prepare_backend(model_dir, "ctranslate2", "float32",
                              cache_dir=tmp_path_factory.mktemp("ct2_cache"))
    assert backend.name == "ctranslate2", request.param
    return model, tiny_tokenizer, model_dir, load_translator(backend.ct2_dir)


@pytest.mark.parametrize("max_length", [6, 40])  # 6: every output cut at max_length
def test_greedy_float32_outputs_identical(converted, max_length):
    model, tok, _, translator = converted
    hf = generate_local(model, tok, SOURCES, num_beams=1, max_length=max_length, batch_size=4)
    ct = generate_ct2(translator, tok, SOURCES, generation_config=model.generation_config,
                      num_beams=1, max_length=max_length, batch_size=4)
    assert ct == hf
    assert len(set(hf)) > 3  # the models write text, not one repeated string


def test_beam4_corpus_bleu_between_backends_at_least_99(converted):
    import sacrebleu

    model, tok, _, translator = converted
    kw = dict(num_beams=4, length_penalty=1.0, max_length=40, batch_size=8)
    hf = generate_local(model, tok, SOURCES, **kw)
    ct = generate_ct2(translator, tok, SOURCES, generation_config=model.generation_config, **kw)
    assert sacrebleu.corpus_bleu(ct, [hf]).score >= 99.0


def test_generator_and_measure_latency_use_the_backend(converted, tmp_path):
    model, tok, model_dir, _ = converted
    backend = prepare_backend(model_dir, "ctranslate2", "float32", cache_dir=tmp_path)
    gen = Generator(str(model_dir), num_beams=1, max_length=12, batch_size=3, backend=backend,
                    return_scores=True)
    import numpy as np

    out = gen({"source": np.array(SOURCES[:5], dtype=object)})
    assert list(out["prediction"]) == generate_local(model, tok, SOURCES[:5], num_beams=1,
                                                     max_length=12)
    assert np.all(out["score"] <= 0) and len(out["gen_seconds"]) == 5
    lat = measure_latency(str(model_dir), SOURCES, num_beams=1, max_length=12, n=4,
                          batch_size=2, backend="ctranslate2", ct2_cache_dir=str(tmp_path))
    assert lat["parameters"] == sum(p.numel() for p in model.parameters())
    assert lat["examples_per_s"] > 0


def test_conversion_is_cached_per_fingerprint_and_compute_type(tiny_bart_dir, tmp_path,
                                                               monkeypatch):
    import raydistill.models.ct2_convert as ct2_module

    first = convert_cached(tiny_bart_dir, "float32", tmp_path)
    calls = []
    real = ct2_module._converter
    monkeypatch.setattr(ct2_module, "_converter", lambda d: calls.append(d) or real(d))
    assert convert_cached(tiny_bart_dir, "float32", tmp_path) == first and calls == []
    int8 = convert_cached(tiny_bart_dir, "int8", tmp_path)
    assert int8 != first and len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, int8.name])


def test_unconvertible_architecture_falls_back_with_one_warning(tmp_path, tiny_tokenizer):
    from raydistill.models.scratch import new_model, save_model_and_tokenizer

    fsmt = save_model_and_tokenizer(new_model("fsmt", len(tiny_tokenizer)), tiny_tokenizer,
                                    tmp_path / "fsmt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = prepare_backend(fsmt, "ctranslate2", "int8", cache_dir=tmp_path / "cache")
    assert backend.name == "transformers"
    assert len(caught) == 1 and "falls back to transformers" in str(caught[0].message)
    assert "fsmt" in str(caught[0].message)


def test_bad_names_and_missing_package_are_clear_errors(tiny_bart_dir, monkeypatch):
    from raydistill.config import DistillConfig

    with pytest.raises(ConfigError, match="compute_type='int4'"):
        DistillConfig(data_dir="d", output_dir="o", method="sft", student="s",
                      compute_type="int4")
    with pytest.raises(ConfigError, match="generation_backend='vllm'"):
        prepare_backend(tiny_bart_dir, "vllm")
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match="pip install"):
        prepare_backend(tiny_bart_dir, "ctranslate2", "int8")
    assert prepare_backend(tiny_bart_dir, "transformers").name == "transformers"


def test_light_tokenizer_gives_the_transformers_ids_and_texts(converted, tmp_path):
    from raydistill.models.ct2 import LightTokenizer, light_tokenizer_matches

    _, tok, model_dir, _ = converted
    light = LightTokenizer(model_dir)
    ids = tok(SOURCES, max_length=7, truncation=True)["input_ids"]
    assert light(SOURCES, max_length=7)["input_ids"] == ids  # truncation keeps </s> the same way
    full = tok(SOURCES, max_length=512, truncation=True)["input_ids"]
    assert [light.convert_ids_to_tokens(x) for x in full] == [tok.convert_ids_to_tokens(x)
                                                              for x in full]
    assert light.batch_decode(full) == tok.batch_decode(full, skip_special_tokens=True)
    assert light_tokenizer_matches(model_dir, tok, SOURCES)
    assert prepare_backend(model_dir, "ctranslate2", "float32",
                           cache_dir=tmp_path).light_tokenizer


class _Cleaned:
    """A tokenizer that decodes like transformers' clean_up_tokenization_spaces=True."""

    def __init__(self, tok):
        self.tok = tok

    def __getattr__(self, name):
        return getattr(self.tok, name)

    def __call__(self, *args, **kwargs):
        return self.tok(*args, **kwargs)

    def batch_decode(self, ids, **kwargs):
        texts = self.tok.batch_decode(ids, **kwargs)
        return [t.replace(" .", ".").replace(" ,", ",") for t in texts]


def test_light_tokenizer_is_refused_where_it_would_differ(tiny_bart_dir, tiny_tokenizer,
                                                          tmp_path):
    import shutil

    from raydistill.models.ct2 import light_tokenizer_matches

    assert light_tokenizer_matches(tiny_bart_dir, tiny_tokenizer, ["a cat ."])
    assert not light_tokenizer_matches(tiny_bart_dir, _Cleaned(tiny_tokenizer), ["a cat ."])
    no_json = tmp_path / "no_json"
    shutil.copytree(tiny_bart_dir, no_json)
    (no_json / "tokenizer.json").unlink()
    assert not light_tokenizer_matches(no_json, tiny_tokenizer, ["a cat ."])


def test_ct2_actor_imports_neither_torch_nor_transformers(converted, tmp_path):
    """What a ctranslate2 pool actor runs, in a fresh interpreter: the same outputs, no torch."""
    import json
    import subprocess
    from dataclasses import asdict

    model, tok, model_dir, _ = converted
    backend = prepare_backend(model_dir, "ctranslate2", "float32", cache_dir=tmp_path,
                              samples=SOURCES)
    script = (
        "import json, sys\n"
        "import numpy as np\n"
        "from raydistill.models.ct2 import Backend, CT2Generator\n"
        "spec = json.loads(sys.argv[1])\n"
        "spec['generation'] = tuple(tuple(kv) for kv in spec['generation'])\n"
        f"gen = CT2Generator({str(model_dir)!r}, num_beams=1, max_length=12, batch_size=3,\n"
        "                   backend=Backend(**spec))\n"
        "out = gen({'source': np.array(json.loads(sys.argv[2]), dtype=object)})\n"
        "print(json.dumps({'preds': list(out['prediction']),\n"
        "                  'heavy': [m for m in ('torch', 'transformers') if m in sys.modules]}))\n")
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(asdict(backend)),
                           json.dumps(SOURCES)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["heavy"] == []
    assert got["preds"] == generate_local(model, tok, SOURCES, num_beams=1, max_length=12)


# ---- CTranslate2 on a GPU: checked before any actor starts ----------------------------------

class FakeCT2:
    """A ctranslate2 that sees a GPU but cannot run on it (the CUDA build without cuBLAS)."""

    def __init__(self, supported=("float32", "float16", "int8_float16"), error=None):
        self.supported, self.error, self.loaded = set(supported), error, []

    def get_cuda_device_count(self):
        return 1

    def get_supported_compute_types(self, device):
        return self.supported

    def Translator(self, path, device, compute_type):  # noqa: N802 - ctranslate2's name
        self.loaded.append((device, compute_type))
        error = self.error

        class Translator:
            def translate_batch(self, tokens, **kw):
                if error:
                    raise RuntimeError(error)
                return []
        return Translator()


def fake_ct2(monkeypatch, tmp_path, fake):
    import raydistill.models.ct2 as ct2

    monkeypatch.setattr(ct2, "require_ctranslate2", lambda: fake)
    monkeypatch.setattr(ct2, "convert_cached", lambda *a, **k: tmp_path)


def test_a_ctranslate2_that_cannot_load_cuda_falls_back_before_the_actors(
        tiny_bart_dir, tmp_path, monkeypatch):
    fake = FakeCT2(error="Library libcublas.so.12 is not found or cannot be loaded")
    fake_ct2(monkeypatch, tmp_path, fake)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        used = prepare_backend(tiny_bart_dir, "ctranslate2", "float16", device="cuda")
    assert used.name == "transformers" and fake.loaded == [("cuda", "float16")]
    assert len(caught) == 1 and "libcublas.so.12" in str(caught[0].message)
    assert "\n" not in str(caught[0].message)


def test_a_compute_type_the_gpu_lacks_is_one_line(tiny_bart_dir, tmp_path, monkeypatch):
    fake_ct2(monkeypatch, tmp_path, FakeCT2(supported=("float32", "float16")))
    with pytest.raises(ConfigError, match="compute_type=bfloat16 does not run on cuda here "
                                          r"\(supported: float16, float32\)"):
        prepare_backend(tiny_bart_dir, "ctranslate2", "bfloat16", device="cuda")


def test_this_machines_ctranslate2_without_a_gpu_falls_back(tiny_bart_dir, tmp_path):
    import ctranslate2

    if ctranslate2.get_cuda_device_count():
        pytest.skip("CTranslate2 sees a GPU here")
    with pytest.warns(UserWarning, match="cannot run on the GPU here.*no CUDA device"):
        used = prepare_backend(tiny_bart_dir, "ctranslate2", "float16", device="cuda",
                               cache_dir=tmp_path)
    assert used.name == "transformers"


def test_the_gpu_check_for_actors_asks_the_cluster_first(tmp_path, monkeypatch):
    """The probe runs where the actors will (a Ray task with their GPU request); a cluster
    without that GPU is the one-line resource error, not a task that waits forever."""
    import ray

    import raydistill.runtime as runtime
    from raydistill.models.ct2 import cuda_probe

    def no_gpu(what, cpus, gpus, **kw):
        raise ConfigError(f"{what} needs {gpus:g} GPUs but the Ray cluster has 0; {kw['fix']}")

    monkeypatch.setattr(runtime, "init_ray", lambda *a, **k: None)
    monkeypatch.setattr(runtime, "check_resources", no_gpu)
    monkeypatch.setattr(ray, "remote", lambda **k: pytest.fail("a task was started"))
    with pytest.raises(ConfigError, match="CTranslate2 GPU check needs 0.5 GPUs"):
        cuda_probe(str(tmp_path), "float16", num_gpus=0.5)
