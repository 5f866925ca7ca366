"""Pseudo-labels: shards resume, the layout a run trains on; combine-data (the all_pl recipe).

Generation is replaced by a fake here (Ray and the teacher run in
tests/integration/test_pseudo_label.py); everything around it is the real code.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from raydistill.models import pseudo_label as pl
from raydistill.data.combine import combine_data
from raydistill.data.files import read_split, validate_data_dir
from raydistill.errors import ConfigError, DataError

SOURCES = [f"source number {i} " + "word " * (i % 5) for i in range(11)]


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "train.source").write_text("\n".join(SOURCES) + "\n")
    (d / "train.target").write_text("\n".join(f"gold {i}" for i in range(11)) + "\n")
    for split in ("val", "test"):
        (d / f"{split}.source").write_text("a b c\nd e f\n")
        (d / f"{split}.target").write_text("a\nd\n")
    (d / "test.refs.jsonl").write_text('{"references": ["a", "aa"]}\n{"references": ["d"]}\n')
    return d


@pytest.fixture
def teacher(tmp_path):
    t = tmp_path / "teacher"
    t.mkdir()
    (t / "config.json").write_text('{"model_type": "bart"}')
    (t / "model.safetensors").write_bytes(b"weights")
    return t


class FakeGenerate:
    """Stands in for the Ray Data actor pool: echoes sources, can die after some batches."""

    def __init__(self, die_after: int | None = None):
        self.die_after = die_after
        self.ids: list[int] = []
        self.calls = 0

    def __call__(self, rows, settings, num_workers=1, num_gpus=0.0, backend=None):
        self.calls += 1
        ids = rows["id"]
        for b, a in enumerate(range(0, len(ids), 2)):  # batches of 2, in the given order
            if self.die_after is not None and b >= self.die_after:
                raise RuntimeError("killed")
            part = ids[a:a + 2]
            self.ids += part.tolist()
            yield {"id": part, "prediction": np.array([f"pseudo {i}" for i in part], dtype=object),
                   "score": -np.asarray(part, dtype=np.float32) / 10}


def _run(teacher, data_dir, out, **kw):
    return pl.pseudo_label(str(teacher), str(data_dir), str(out), shard_size=4, **kw)


def test_killed_run_resumes_with_only_the_missing_shards(teacher, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = FakeGenerate(die_after=4)  # 8 examples back = shards 0 and 1 (of 4 + 4 + 3)
    monkeypatch.setattr(pl, "generate_batches", first)
    with pytest.raises(RuntimeError, match="killed"):
        _run(teacher, data_dir, out)
    done = sorted(p.name for p in (out / pl.PARTS).glob("part-*.parquet"))
    assert done == ["part-000000.parquet", "part-000001.parquet"]
    assert not list((out / pl.PARTS).glob(".*"))  # no half-written part left behind
    mtimes = {p: (out / pl.PARTS / p).stat().st_mtime_ns for p in done}

    second = FakeGenerate()
    monkeypatch.setattr(pl, "generate_batches", second)
    report = _run(teacher, data_dir, out)
    assert sorted(second.ids) == [8, 9, 10]  # only the last shard was generated again
    assert {p: (out / pl.PARTS / p).stat().st_mtime_ns for p in done} == mtimes

    third = FakeGenerate()
    monkeypatch.setattr(pl, "generate_batches", third)
    again = _run(teacher, data_dir, out)
    assert third.calls == 0 and again["runs"][-1]["examples_generated"] == 0

    # The folder is a data folder: train = pseudo-labels, val/test (with refs) copied.
    validate_data_dir(out)
    train = read_split(out, "train")
    assert train.sources == [" ".join(s.split()) for s in SOURCES]
    assert train.targets == [f"pseudo {i}" for i in range(11)]
    assert (out / "test.refs.jsonl").read_text() == (data_dir / "test.refs.jsonl").read_text()
    table = pq.read_table(out / pl.PARTS)
    assert table.num_rows == 11 and set(table.column_names) >= {"id", "source", "target", "score"}
    assert table.column("reference").to_pylist()[:2] == ["gold 0", "gold 1"]
    assert report["examples"] == 11 and report["shards"] == 3 and report["written"] == 11
    # A killed run writes no report (its finished shards are on disk); later runs append one.
    assert len(report["runs"]) == 1 and report["runs"][-1]["examples_generated"] == 3
    saved = json.loads((out / "pseudo_label.json").read_text())
    assert saved["settings"]["num_beams"] == 2 and saved["teacher"] == str(teacher.resolve())
    assert len(saved["runs"]) == 2 and saved["examples_per_second"] > 0


def test_rows_go_shard_by_shard_longest_first(teacher, data_dir, tmp_path, monkeypatch):
    fake = FakeGenerate()
    monkeypatch.setattr(pl, "generate_batches", fake)
    _run(teacher, data_dir, tmp_path / "out")
    shards = [i // 4 for i in fake.ids]
    assert shards == sorted(shards)
    for s in range(3):
        lens = [len(SOURCES[i]) for i in fake.ids if i // 4 == s]
        assert lens == sorted(lens, reverse=True)


def test_other_settings_refuse_to_mix_until_overwrite(teacher, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(pl, "generate_batches", FakeGenerate())
    _run(teacher, data_dir, out)
    with pytest.raises(ConfigError, match="num_beams"):
        _run(teacher, data_dir, out, num_beams=4)
    (teacher / "model.safetensors").write_bytes(b"other weights")
    with pytest.raises(ConfigError, match="teacher"):
        _run(teacher, data_dir, out)
    fake = FakeGenerate()
    monkeypatch.setattr(pl, "generate_batches", fake)
    _run(teacher, data_dir, out, num_beams=4, overwrite=True)
    assert sorted(fake.ids) == list(range(11))
    with pytest.raises(ConfigError, match="is --data-dir"):
        _run(teacher, data_dir, data_dir.parent / "data")
    with pytest.raises(ConfigError, match="not empty"):
        _run(teacher, data_dir, teacher)  # a folder that holds something else


def test_empty_pseudo_labels_are_left_out_of_the_text_files(teacher, data_dir, tmp_path, monkeypatch):
    def blank_odd(rows, settings, num_workers=1, num_gpus=0.0, backend=None):
        ids = rows["id"]
        yield {"id": ids, "prediction": np.array(["" if i % 2 else f"p {i}" for i in ids], dtype=object),
               "score": np.zeros(len(ids), np.float32)}

    monkeypatch.setattr(pl, "generate_batches", blank_odd)
    report = _run(teacher, data_dir, tmp_path / "out")
    assert report["written"] == 6 and report["dropped_empty"] == 5
    assert read_split(tmp_path / "out", "train").targets == [f"p {i}" for i in range(0, 11, 2)]


def test_scores_from_generate_local_are_length_normalized_log_probs(tiny_bart_dir):
    """Greedy: the score is the mean token log-probability, as teacher forcing computes it."""
    import torch
    from transformers import AutoTokenizer

    from raydistill.models.generate import generate_local
    from raydistill.models.layers import load_seq2seq

    model, tok = load_seq2seq(tiny_bart_dir).eval(), AutoTokenizer.from_pretrained(tiny_bart_dir)
    sources = ["the cat sat on the mat", "a dog ran"]
    preds, scores = generate_local(model, tok, sources, num_beams=1, max_length=8, return_scores=True)
    assert preds == generate_local(model, tok, sources, num_beams=1, max_length=8)
    for src, score in zip(sources, scores):
        enc = tok([src], return_tensors="pt")
        out = model.generate(**{k: enc[k] for k in ("input_ids", "attention_mask")}, num_beams=1,
                             max_length=8)
        dec_in, target = out[:, :-1], out[:, 1:]
        with torch.no_grad():
            logits = model(input_ids=enc["input_ids"], decoder_input_ids=dec_in).logits
        logp = torch.log_softmax(logits, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        if out.size(1) == 8:  # hit max_length: generate forced </s> there, a log-prob of 0
            logp[0, -1] = 0.0
        eos = (target[0] == model.config.eos_token_id).nonzero()
        n = int(eos[0]) + 1 if len(eos) else target.size(1)
        assert score == pytest.approx(float(logp[0, :n].mean()), abs=1e-4)
    _, beam_scores = generate_local(model, tok, sources, num_beams=2, max_length=8,
                                    return_scores=True)
    assert all(np.isfinite(beam_scores)) and all(s <= 0 for s in beam_scores)


# ---- combine-data ------------------------------------------------------------------------------

def _folder(path, n, tag, jsonl=False):
    path.mkdir()
    if jsonl:
        (path / "train.jsonl").write_text("".join(
            json.dumps({"source": f"{tag} src\n{i}", "target": f"{tag} tgt {i}"}) + "\n" for i in range(n)))
    else:
        (path / "train.source").write_text("".join(f"{tag} src {i}\n" for i in range(n)))
        (path / "train.target").write_text("".join(f"{tag} tgt {i}\n" for i in range(n)))
    (path / "val.source").write_text(f"{tag} val\n")
    (path / "val.target").write_text(f"{tag} v\n")
    return path


def test_combine_concatenates_train_and_copies_val_test_from_the_first(tmp_path):
    a = _folder(tmp_path / "pl_a", 3, "a")
    (a / "test.source").write_text("t\n")
    (a / "test.target").write_text("t\n")
    b = _folder(tmp_path / "pl_b", 2, "b", jsonl=True)  # any layout in; six-file out
    c = _folder(tmp_path / "orig", 1, "c")
    summary = combine_data(tmp_path / "all_pl", [a, b, c])
    out = tmp_path / "all_pl"
    validate_data_dir(out)
    train = read_split(out, "train")
    assert train.sources == ["a src 0", "a src 1", "a src 2", "b src 0", "b src 1", "c src 0"]
    assert train.targets[3] == "b tgt 0"
    assert (out / "val.source").read_text() == "a val\n" and (out / "test.source").is_file()
    assert [x["train"] for x in summary["inputs"]] == [3, 2, 1] and summary["train"] == 6
    assert json.loads((out / "combine.json").read_text())["train"] == 6


def test_combine_validates_every_input_before_writing(tmp_path):
    a = _folder(tmp_path / "a", 2, "a")
    bad = _folder(tmp_path / "bad", 2, "b")
    (bad / "train.target").write_text("only one line\n")
    with pytest.raises(DataError, match="lines"):
        combine_data(tmp_path / "out", [a, bad])
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="also an input"):
        combine_data(a, [a])
    combine_data(tmp_path / "out", [a])
    with pytest.raises(ConfigError, match="not empty"):
        combine_data(tmp_path / "out", [a])


def test_cli_registers_the_data_commands(data_dir, tmp_path, monkeypatch, capsys):
    from raydistill.cli import main

    monkeypatch.setattr(pl, "generate_batches", FakeGenerate())
    out = tmp_path / "cli_out"
    teacher = tmp_path / "t"
    teacher.mkdir()
    (teacher / "config.json").write_text("{}")
    (teacher / "model.safetensors").write_bytes(b"weights")  # a model folder: config + weights
    assert main(["pseudo-label", "--teacher", str(teacher), "--data-dir", str(data_dir),
                 "--out", str(out), "--shard-size", "5", "--num-beams", "1"]) == 0
    assert "pseudo-labels of 11 examples" in capsys.readouterr().out
    assert main(["combine-data", str(tmp_path / "all"), str(out), str(data_dir)]) == 0
    assert len(read_split(tmp_path / "all", "train")) == 22
    assert main(["combine-data", str(tmp_path / "all"), str(out)]) == 2  # not empty: one line
    assert "not empty" in capsys.readouterr().err
