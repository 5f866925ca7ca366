"""``pseudo_label`` end to end: a tiny teacher on two Ray Data actors, then a re-run that skips."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from raydistill.data.files import read_split, validate_data_dir
from raydistill.models.pseudo_label import PARTS, pseudo_label

SOURCES = [
    "the cat sat on the mat and looked at the dog .",
    "a dog .",
    "birds sing in the morning when the sun rises and the dog ran in the park .",
    "the quick brown fox .",
    "summaries are short texts that keep the main point .",
    "translation maps a sentence .",
    "the lazy dog jumps over the quick brown fox in the park with a red ball .",
    "a red ball .",
    "the sun rises .",
]


@pytest.fixture(scope="module")
def spiky_teacher(tmp_path_factory, tiny_tokenizer):
    """A tiny BART whose outputs differ by source (at std 0.02 a random model writes one text)."""
    import torch

    from raydistill.models.scratch import new_model, save_model_and_tokenizer

    torch.manual_seed(0)
    model = new_model("bart", len(tiny_tokenizer), pad_token_id=tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return save_model_and_tokenizer(model, tiny_tokenizer, tmp_path_factory.mktemp("pl_teacher"))


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "train.source").write_text("\n".join(SOURCES) + "\n")
    (d / "train.target").write_text("\n".join(s.split()[1] for s in SOURCES) + "\n")
    (d / "val.source").write_text("a dog .\n")
    (d / "val.target").write_text("dog\n")
    return d


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_pseudo_label_two_actors_matches_one_process_and_resumes(ray_session, spiky_teacher,
                                                                 data_dir, tmp_path):
    from transformers import AutoTokenizer

    from raydistill.models.generate import generate_local
    from raydistill.models.layers import load_seq2seq

    out = tmp_path / "pl"
    kw = dict(num_beams=2, max_length=10, batch_size=2, num_workers=2, shard_size=4,
              max_source_length=64)
    report = pseudo_label(str(spiky_teacher), str(data_dir), str(out), **kw)
    assert report["shards"] == 3 and report["runs"][-1]["examples_generated"] == len(SOURCES)
    assert report["examples_per_second"] > 0

    model, tok = load_seq2seq(spiky_teacher), AutoTokenizer.from_pretrained(spiky_teacher)
    preds, scores = generate_local(model, tok, SOURCES, num_beams=2, max_length=10,
                                   max_source_length=64, batch_size=2, return_scores=True)
    table = pq.read_table(out / PARTS).sort_by("id")
    assert table.column("target").to_pylist() == preds  # same teacher, same outputs, same order
    assert np.allclose(table.column("score").to_numpy(), scores, atol=1e-4)
    assert len(set(preds)) > 1
    validate_data_dir(out, ("train", "val"))
    kept = [p for p in preds if p.strip()]
    assert read_split(out, "train").targets == [" ".join(p.split()) for p in kept]
    assert (out / "val.source").read_text() == "a dog .\n"

    # A re-run finds every shard done: no actor starts, no part is rewritten.
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / PARTS).glob("*.parquet")}
    again = pseudo_label(str(spiky_teacher), str(data_dir), str(out), **kw)
    assert again["runs"][-1]["examples_generated"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / PARTS).glob("*.parquet")} == mtimes
    saved = json.loads((out / "pseudo_label.json").read_text())
    assert saved["settings"]["num_beams"] == 2 and len(saved["runs"]) == 2
