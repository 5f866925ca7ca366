"""Tokenizing through Ray Data (ragged columns), and padding rows into model batches."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from raydistill.data.files import read_split, split_dataset
from raydistill.data.tokenize import (Tokenize, make_collate_fn, pad_batch, tokenize_dataset,
                                      tokenized_split)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tok")
    tiny_tokenizer.save_pretrained(path)
    return str(path)


def test_tokenize_truncates_and_keeps_columns(tokenizer_dir, tiny_tokenizer):
    batch = {
        "id": np.array([0, 1]),
        "source": np.array(["the cat sat on the mat and looked at the dog .", "a dog ."], dtype=object),
        "target": np.array(["cat .", "dog ran in the park ."], dtype=object),
    }
    out = Tokenize(tokenizer_dir, max_source_length=5, max_target_length=4)(batch)
    assert out["id"].tolist() == [0, 1] and out["source"][1] == "a dog ."
    eos = tiny_tokenizer.eos_token_id
    assert len(out["input_ids"][0]) == 5 and out["input_ids"][0][-1] == eos  # truncated, eos kept
    assert out["input_ids"][1].tolist() == tiny_tokenizer("a dog .")["input_ids"]
    assert out["src_len"].tolist() == [len(x) for x in out["input_ids"]]
    assert out["tgt_len"].max() <= 4 and out["labels"][1][-1] == eos


def test_pad_batch():
    out = pad_batch([[5, 6, 2], [7, 2]], [[9, 2], [8, 8, 8, 2]], pad_token_id=1)
    assert out["input_ids"].tolist() == [[5, 6, 2], [7, 2, 1]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out["labels"].tolist() == [[9, 2, -100, -100], [8, 8, 8, 2]]
    assert out["input_ids"].dtype == torch.long


def test_collate_handles_equal_lengths_and_pickles():
    collate = pickle.loads(pickle.dumps(make_collate_fn(pad_token_id=1)))
    # Rows of one length reach the collate fn as a 2-D array, not an object array.
    batch = {"id": np.array([3, 4]), "input_ids": np.array([[5, 2], [6, 2]], dtype=np.int32),
             "labels": np.array([[7, 2], [7, 2]], dtype=np.int32)}
    out = collate(batch)
    assert out["id"].tolist() == [3, 4] and out["input_ids"].shape == (2, 2)
    assert out["attention_mask"].all()


def test_tokenize_dataset_through_ray(ray_session, tiny_data_dir, tokenizer_dir, tiny_tokenizer):
    ds = tokenize_dataset(split_dataset(tiny_data_dir, "train"), tokenizer_dir,
                          max_source_length=6, max_target_length=8, batch_size=4)
    pad = tiny_tokenizer.pad_token_id
    seen = []
    for batch in ds.iter_torch_batches(batch_size=3, collate_fn=make_collate_fn(pad)):
        assert set(batch) >= {"id", "input_ids", "attention_mask", "labels"}
        assert batch["input_ids"].shape[1] <= 6 and batch["labels"].shape[1] <= 8
        # Padding sits exactly where the mask is 0, and labels pad with -100.
        assert ((batch["input_ids"] == pad) == (batch["attention_mask"] == 0)).all()
        assert (batch["labels"] != pad).all()
        seen += batch["id"].tolist()
    assert sorted(seen) == list(range(6))


def test_tokenized_split_in_the_driver_gives_the_actor_path_rows(ray_session, tiny_data_dir,
                                                                  tokenizer_dir):
    """Small splits skip the tokenizer actors; what the workers read must not change."""
    kw = dict(max_source_length=6, max_target_length=8)
    split = read_split(tiny_data_dir, "train", 5)
    local = tokenized_split(split, tokenizer_dir, **kw)
    actors = tokenized_split(split, tokenizer_dir, local_max_rows=0, **kw)
    assert local.schema() == actors.schema()
    rows = [sorted(ds.take_all(), key=lambda r: r["id"]) for ds in (local, actors)]
    assert [r["id"] for r in rows[0]] == list(range(5))
    for a, b in zip(*rows):
        assert a.keys() == b.keys() and a["source"] == b["source"]
        for col in ("input_ids", "labels"):
            assert a[col].dtype == b[col].dtype == np.int32 and a[col].tolist() == b[col].tolist()
        assert (a["src_len"], a["tgt_len"]) == (len(a["input_ids"]), len(a["labels"]))
    assert local.num_blocks() > 1  # split among workers without a repartition
