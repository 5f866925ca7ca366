"""generate_parallel with backend="ctranslate2": two actors load the converted model, outputs in
input order and equal to the same engine's in-process outputs (a random tiny BART's near-uniform
logits could tie differently between engines: their equality is tests/unit/models/test_ct2.py's,
on trained models)."""

from __future__ import annotations

import pytest

pytest.importorskip("ctranslate2")

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_two_ct2_actors_match_in_process_ct2(ray_session, tiny_bart_dir, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    from raydistill.models.ct2 import generate_ct2, load_translator, prepare_backend
    from raydistill.models.generate import generate_parallel

    sources = [f"the cat number {i} sat on the mat ." + " and the dog" * (i % 4) for i in range(12)]
    backend = prepare_backend(tiny_bart_dir, "ctranslate2", "float32", tmp_path)
    expected = generate_ct2(load_translator(backend.ct2_dir), AutoTokenizer.from_pretrained(
        tiny_bart_dir), sources, generation_config=GenerationConfig.from_pretrained(
        tiny_bart_dir), num_beams=1, max_length=10, batch_size=5)
    timings: dict[str, float] = {}
    preds, seconds = generate_parallel(tiny_bart_dir, sources, num_beams=1, max_length=10,
                                       batch_size=3, num_workers=2, backend="ctranslate2",
                                       compute_type="float32", ct2_cache_dir=tmp_path,
                                       timings=timings)
    assert preds == expected
    assert seconds > 0 and timings["busy_s"] > 0 and timings["first_batch_s"] <= seconds
