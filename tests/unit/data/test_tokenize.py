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


def _fsmt_folder(path) -> tuple[dict, dict]:
    """An FSMT tokenizer (en -> de) whose vocabularies give the same word different ids on each
    side, as fairseq's WMT19 dictionaries do; merges that make each word one token."""
    import json

    from transformers import FSMTTokenizer

    specials = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    src = {**specials, **{w + "</w>": 4 + i for i, w in enumerate(
        ["the", "house", "is", "small", "."])}}
    tgt = {**specials, **{w + "</w>": 4 + i for i, w in enumerate(
        [".", "klein", "ist", "Haus", "das", "the"])}}
    (path / "vocab-src.json").write_text(json.dumps(src))
    (path / "vocab-tgt.json").write_text(json.dumps(tgt))
    merges = []
    for word in [w[:-4] for w in {**src, **tgt} if w.endswith("</w>")]:
        for i in range(1, len(word)):  # left to right: "t h", "th e</w>"
            pair = f"{word[:i]} {word[i]}" + ("</w>" if i == len(word) - 1 else "")
            merges += [pair] if pair not in merges else []
    (path / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")
    tok = FSMTTokenizer(langs=["en", "de"], src_vocab_file=str(path / "vocab-src.json"),
                        tgt_vocab_file=str(path / "vocab-tgt.json"),
                        merges_file=str(path / "merges.txt"))
    tok.save_pretrained(path / "saved")
    return src, tgt


def test_fsmt_labels_take_the_target_vocabulary(tmp_path):
    """FSMTTokenizer's text_target= used the source vocabulary: "das Haus ist klein ." came out
    as <unk> <unk> <unk> <unk> 8 (the source id of "."). Labels must be target ids."""
    pytest.importorskip("sacremoses")
    src, tgt = _fsmt_folder(tmp_path)
    batch = {"id": np.array([0]), "source": np.array(["the house is small ."], dtype=object),
             "target": np.array(["das Haus ist klein .", ], dtype=object)}
    tokenize = Tokenize(str(tmp_path / "saved"), max_source_length=16, max_target_length=16)
    out = tokenize(batch)
    words = lambda text, vocab: [vocab[w + "</w>"] for w in text.split()] + [vocab["</s>"]]
    assert out["input_ids"][0].tolist() == words("the house is small .", src)
    assert out["labels"][0].tolist() == words("das Haus ist klein .", tgt)
    # decode reads the target vocabulary (and Moses-detokenizes): the labels give the text back
    assert tokenize.tokenizer.decode(out["labels"][0], skip_special_tokens=True) == \
        "das Haus ist klein."
    # the source side is back after the target call ("the" has another id on each side)
    assert tokenize.tokenizer("the")["input_ids"] == [src["the</w>"], src["</s>"]]


def test_fsmt_vocabularies_are_in_the_tokenizer_fingerprint(tmp_path):
    from raydistill.data.fingerprint import tokenizer_fingerprint

    pytest.importorskip("sacremoses")
    _fsmt_folder(tmp_path)
    saved = tmp_path / "saved"
    before = tokenizer_fingerprint(saved)
    assert {"vocab-src.json", "vocab-tgt.json"} <= set(before)
    (saved / "vocab-tgt.json").write_text((saved / "vocab-tgt.json").read_text()
                                          .replace('"klein</w>": 5', '"klein</w>": 9'))
    assert tokenizer_fingerprint(saved) != before


def test_a_resaved_tokenizer_fingerprints_as_its_original_after_a_truncating_call(tmp_path):
    """A tokenizer once called with truncation keeps that state in tokenizer.json; transformers
    then writes its defaults (max_length, stride, sides, ...) into a re-saved
    tokenizer_config.json. The re-save (make_student's copy) must still fingerprint as the
    original, so a logit cache built on the teacher fits the student; a left truncation side,
    which changes the ids, must not."""
    from transformers import AutoTokenizer

    from raydistill.data.fingerprint import tokenizer_fingerprint
    from raydistill.models.scratch import train_tokenizer

    tok = train_tokenizer(["the cat sat on the mat .", "a dog ran ."] * 5, vocab_size=120)
    tok(["the cat sat"], truncation=True, max_length=512, padding=True)  # leaves the state
    tok.save_pretrained(tmp_path / "original")
    AutoTokenizer.from_pretrained(tmp_path / "original").save_pretrained(tmp_path / "resaved")
    assert tokenizer_fingerprint(tmp_path / "resaved") == tokenizer_fingerprint(tmp_path / "original")
    left = AutoTokenizer.from_pretrained(tmp_path / "original", truncation_side="left")
    left.save_pretrained(tmp_path / "left")
    assert tokenizer_fingerprint(tmp_path / "left") != tokenizer_fingerprint(tmp_path / "original")
