"""Batched generation keeps input order: in-process, in a Generator, and over Ray actors."""

from __future__ import annotations

import numpy as np
import pytest

from raydistill.models.generate import (
    Generator,
    generate_local,
    generate_parallel,
    measure_latency,
)

# Different lengths, shuffled, so sorting by length really reorders them.
SOURCES = [
    "the cat sat on the mat and looked at the dog .",
    "a dog .",
    "birds sing in the morning when the sun rises and the dog ran in the park .",
    "the quick brown fox .",
    "summaries are short texts that keep the main point .",
    "translation maps a sentence .",
    "the lazy dog jumps over the quick brown fox in the park with a red ball .",
]
GREEDY = dict(num_beams=1, max_length=12)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny BART whose output depends on its input: at the usual init (std 0.02) a random
    model writes the same text for every source, which would hide an order mix-up."""
    import torch

    from raydistill.models.scratch import new_model, save_model_and_tokenizer

    torch.manual_seed(0)
    model = new_model("bart", len(tiny_tokenizer), pad_token_id=tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return save_model_and_tokenizer(model, tiny_tokenizer, tmp_path_factory.mktemp("spiky_bart"))


@pytest.fixture(scope="module")
def model_and_tokenizer(model_dir):
    from transformers import AutoTokenizer

    from raydistill.models.layers import load_seq2seq

    return load_seq2seq(model_dir), AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def one_by_one(model_and_tokenizer):
    model, tok = model_and_tokenizer
    return [generate_local(model, tok, [s], batch_size=1, **GREEDY)[0] for s in SOURCES]


def test_generate_local_restores_input_order(model_and_tokenizer, one_by_one):
    model, tok = model_and_tokenizer
    model.train()
    batched = generate_local(model, tok, SOURCES, batch_size=3, **GREEDY)
    assert batched == one_by_one
    assert len(set(one_by_one)) > 1  # else the order check proves nothing
    assert all(p == p.strip() and "</s>" not in p for p in batched)
    assert model.training  # the caller's mode is given back


def test_generate_local_beam_search_and_empty_input(model_and_tokenizer):
    model, tok = model_and_tokenizer
    preds = generate_local(model, tok, SOURCES[:3], num_beams=2, length_penalty=0.8, max_length=8)
    assert len(preds) == 3 and all(isinstance(p, str) for p in preds)
    assert generate_local(model, tok, [], **GREEDY) == []


def test_generator_adds_prediction_column(model_dir, one_by_one):
    gen = Generator(str(model_dir), batch_size=4, **GREEDY)
    batch = {"idx": np.arange(3), "source": np.array(SOURCES[:3], dtype=object)}
    out = gen(batch)
    assert list(out["prediction"]) == one_by_one[:3]
    assert list(out["idx"]) == [0, 1, 2]


@pytest.mark.timeout(180)
def test_generate_parallel_two_actors_match_local(ray_session, model_dir, one_by_one):
    preds, seconds = generate_parallel(model_dir, SOURCES, batch_size=2, num_workers=2,
                                       max_source_length=512, **GREEDY)
    assert preds == one_by_one
    assert seconds > 0


def test_measure_latency_batches_and_reports_throughput(model_dir, monkeypatch):
    import raydistill.models.generate as gen

    sizes = []
    real = gen.generate_local

    def spy(model, tok, sources, **kw):
        sizes.append((len(sources), kw["batch_size"]))
        return real(model, tok, sources, **kw)

    monkeypatch.setattr(gen, "generate_local", spy)
    out = measure_latency(str(model_dir), SOURCES, n=6, batch_size=4, **GREEDY)
    assert sizes == [(4, 4), (6, 4)]  # warm-up on one batch, then the n examples in batches of 4
    assert out["examples_per_s"] * out["ms_per_example"] / 1000 == pytest.approx(1.0)
    assert out["parameters"] > 0
