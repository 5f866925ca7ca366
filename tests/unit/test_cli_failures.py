"""Failures a user can cause, through the CLI: one stderr line, exit 2, earlier outputs intact
(issue 19's audit: a teacher that writes nothing, an unwritable output folder, a full disk while
writing Parquet, a Ray address where nothing answers)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from raydistill.cli import main
from raydistill.models import pseudo_label as pl


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        (d / f"{split}.source").write_text("".join(f"source {i} .\n" for i in range(n)))
        (d / f"{split}.target").write_text("".join(f"target {i} .\n" for i in range(n)))
    return d


@pytest.fixture
def teacher(tmp_path):
    t = tmp_path / "teacher"
    t.mkdir()
    (t / "config.json").write_text('{"model_type": "bart"}')
    (t / "model.safetensors").write_bytes(b"weights")
    return t


def one_error_line(capsys, command: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f"raydistill {command}: error: "), err
    return err[0]


def fake_generate(text: str):
    def generate(rows, settings, num_workers=1, num_gpus=0.0, backend=None):
        ids = rows["id"]
        yield {"id": ids, "prediction": np.array([text] * len(ids), dtype=object),
               "score": np.zeros(len(ids), np.float32)}
    return generate


def test_a_teacher_that_writes_nothing(teacher, data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pl, "generate_batches", fake_generate(""))
    out = tmp_path / "pl"
    code = main(["pseudo-label", "--teacher", str(teacher), "--data-dir", str(data_dir),
                 "--out", str(out), "--num-beams", "1"])
    assert code == 2
    line = one_error_line(capsys, "pseudo-label")
    assert "every pseudo-label of train is empty" in line and "check the teacher" in line
    assert not (out / "train.source").exists()  # no half data folder
    assert list((out / pl.PARTS).glob("*.parquet"))  # the teacher's outputs, kept to look at


def test_a_full_disk_while_writing_parquet(teacher, data_dir, tmp_path, monkeypatch, capsys):
    """The disk fills while the second part is written: one line; the first part is intact and
    a rerun (after freeing space) generates only what is missing."""
    import pyarrow.parquet as pq

    out = tmp_path / "pl"
    monkeypatch.setattr(pl, "generate_batches", fake_generate("a pseudo label ."))
    real = pq.write_table
    calls = []

    def fills_up(table, where, **kw):
        calls.append(where)
        if len(calls) == 2:
            Path(where).write_bytes(b"half")  # a partial write, as a disk that fills up leaves
            raise OSError(errno.ENOSPC, "No space left on device", str(where))
        return real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", fills_up)
    args = ["pseudo-label", "--teacher", str(teacher), "--data-dir", str(data_dir), "--out",
            str(out), "--num-beams", "1", "--shard-size", "3"]
    assert main(args) == 2
    line = one_error_line(capsys, "pseudo-label")
    assert "No space left on device; free space there, or write elsewhere" in line
    parts = sorted((out / pl.PARTS).glob("*"))
    assert [p.name for p in parts if p.suffix == ".parquet"] == ["part-000000.parquet"]
    first = out / pl.PARTS / "part-000000.parquet"
    assert pq.read_table(first).num_rows == 3  # the part written before is whole
    assert not [p for p in parts if p.name.startswith(".")]  # no half file left behind
    monkeypatch.setattr(pq, "write_table", real)
    assert main(args) == 0  # the rerun finishes the job
    assert (out / "train.target").read_text().count("a pseudo label .") == 6


def test_an_unwritable_output_dir_stops_before_ray(tiny_bart_dir, data_dir, tmp_path, capsys):
    import ray

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    config = {"method": "kd", "teacher": str(tiny_bart_dir), "student_decoder_layers": 1,
              "data_dir": str(data_dir), "output_dir": str(blocker / "run"), "max_steps": 1}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    started = ray.is_initialized()
    assert main(["distill", str(path)]) == 2
    line = one_error_line(capsys, "distill")
    assert "output_dir" in line and "cannot be written (Not a directory)" in line
    assert ray.is_initialized() == started  # no Ray was started for it


def test_a_ray_address_where_nothing_answers(tiny_bart_dir, data_dir, tmp_path):
    """In a fresh process: Ray itself would wait minutes; this ends in seconds."""
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-m", "raydistill.cli", "evaluate", "--model",
                           str(tiny_bart_dir), "--data-dir", str(data_dir), "--out-dir",
                           str(tmp_path / "ev"), "--num-beams", "1"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = [line for line in proc.stderr.splitlines() if "raydistill evaluate: error:" in line]
    assert len(err) == 1 and "no Ray cluster answers at 127.0.0.1:9 (Connection refused)" in err[0]
    assert not list((tmp_path / "ev").glob("*.txt"))  # nothing half written
