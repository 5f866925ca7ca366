"""bench/quality.py: staged rows of one depth and seed train their shared first stage once."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_quality():
    sys.path.insert(0, str(BENCH))  # quality.py imports its siblings (common, curves)
    try:
        spec = importlib.util.spec_from_file_location("bench_quality", BENCH / "quality.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def staged(second: str, out: Path, lr: float = 5e-4) -> dict:
    return {"method": "sft", "learning_rate": lr, "seed": 0, "output_dir": str(out),
            "stages": [{"name": "sft", "max_steps": 30}, {"method": second, "max_steps": 10}]}


def finish_first_stage(row: Path, reuse, seconds: float) -> None:
    """What the first row's run leaves: its key (written by reuse) and a finished stage 0."""
    row.mkdir(parents=True)
    assert reuse(row) is False  # nothing to copy yet: this row trains its first stage
    stage = row / "stage0_sft"
    (stage / "best_tfmr").mkdir(parents=True)
    (stage / "best_tfmr" / "model.safetensors").write_bytes(b"weights")
    (stage / "stage_done.json").write_text(json.dumps(
        {"summary": {"train_seconds": seconds}, "layers": None}))
    (row / "teacher_val.json").write_text('{"score": 21.0}')


def test_a_staged_row_copies_the_finished_first_stage_of_the_same_settings(tmp_path):
    q = load_quality()
    first, later = tmp_path / "student_6_3_sft_kd", tmp_path / "student_6_3_sft_pl"
    finish_first_stage(first, q.first_stage_reuse(staged("kd", first), tmp_path, "t1"), 312.5)
    later.mkdir()
    cfg = staged("pl", later)
    assert q.first_stage_reuse(cfg, tmp_path, "t1")(later) is True
    assert (later / "stage0_sft" / "best_tfmr" / "model.safetensors").read_bytes() == b"weights"
    assert (later / q.SHARED_SECONDS).read_text() == "312.5"  # its time counts in this row
    assert json.loads((later / "hparams.json").read_text()) == {"stages": cfg["stages"]}
    assert (later / "teacher_val.json").is_file()


def test_a_first_stage_of_other_settings_or_another_teacher_is_not_copied(tmp_path):
    q = load_quality()
    first = tmp_path / "student_6_3_sft_kd"
    finish_first_stage(first, q.first_stage_reuse(staged("kd", first), tmp_path, "t1"), 10.0)
    for n, (cfg_of, teacher) in enumerate([(lambda o: staged("pl", o, lr=1e-4), "t1"),
                                           (lambda o: staged("pl", o), "t2")]):
        row = tmp_path / f"student_6_3_other{n}"
        row.mkdir()
        assert q.first_stage_reuse(cfg_of(row), tmp_path, teacher)(row) is False
        assert not (row / "stage0_sft").exists() and not (row / q.SHARED_SECONDS).exists()
