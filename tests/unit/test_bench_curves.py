"""bench/curves.py: a run's validations as (seconds, step, score), staged runs end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "bench_curves", Path(__file__).resolve().parents[2] / "bench" / "curves.py")
curves = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(curves)


def write_run(path: Path, val: list[dict], final_step: int, seconds: float) -> Path:
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({"val": val, "final_step": final_step,
                                                   "train_seconds": seconds}))
    return path


def test_a_staged_run_continues_the_clock_and_the_steps_of_the_stages_before(tmp_path):
    s0 = write_run(tmp_path / "r" / "stage0_sft", [{"step": 50, "bleu": 1.0},
                                                   {"step": 100, "bleu": 2.0}], 100, 40.0)
    s1 = write_run(tmp_path / "r" / "stage1_gkd",
                   [{"step": 10, "bleu": 3.0, "elapsed_s": 12.5}], 10, 20.0)
    (tmp_path / "r" / "metrics.json").write_text(json.dumps({"stages": [
        {"dir": str(s0), "train_seconds": 40.0, "final_step": 100},
        {"dir": str(s1), "train_seconds": 20.0, "final_step": 10}]}))
    points = curves.run_curve(tmp_path / "r", "bleu")
    # without elapsed_s a validation sits at step / final_step of the run's seconds
    assert points == [(20.0, 50, 1.0), (40.0, 100, 2.0), (52.5, 110, 3.0)]


def test_the_plot_has_a_panel_per_depth(tmp_path):
    pytest.importorskip("matplotlib")
    path = curves.plot_curves({"student 6-3 (sft)": [(60.0, 10, 1.0), (120.0, 20, 2.0)],
                               "student 6-1 (pl)": [(30.0, 10, 0.5)]},
                              tmp_path / "c.png", metric="bleu", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
