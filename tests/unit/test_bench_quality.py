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


def test_a_rows_clocks_count_every_stage_and_are_absent_for_older_runs(tmp_path):
    q = load_quality()

    def write(folder: Path, val: list[dict], final: int, wall: float) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps(
            {"val": val, "final_step": final, "train_seconds": wall}))

    one = tmp_path / "one"  # resumed once: its last call's wall time (15 s) is not its clock
    write(one, [{"step": 5, "bleu": 1.0, "elapsed_s": 10.0, "cpu_s": 18.0},
                {"step": 10, "bleu": 2.0, "elapsed_s": 21.5, "cpu_s": 40.0}], 10, 15.0)
    assert q.training_seconds(one, "bleu") == 21.5 and q.training_cpu_seconds(one) == 40.0

    staged = tmp_path / "staged"
    write(staged / "stage0_sft", [{"step": 30, "bleu": 3.0, "elapsed_s": 30.0, "cpu_s": 55.0}],
          30, 50.0)
    write(staged / "stage1_kd", [{"step": 10, "bleu": 4.0, "elapsed_s": 12.0, "cpu_s": 20.0}],
          10, 40.0)
    (staged / "metrics.json").write_text(json.dumps({
        "stages": [{"name": "stage0_sft", "dir": str(staged / "stage0_sft"), "final_step": 30,
                    "train_seconds": 50.0},
                   {"name": "stage1_kd", "dir": str(staged / "stage1_kd"), "final_step": 10,
                    "train_seconds": 40.0}],
        "val": [{"step": 10, "bleu": 4.0, "elapsed_s": 12.0, "cpu_s": 20.0}]}))
    assert q.training_seconds(staged, "bleu") == 42.0
    assert q.training_cpu_seconds(staged) == 75.0

    old = tmp_path / "old"  # validations without the clocks: None, the caller's wall time then
    write(old, [{"step": 10, "bleu": 2.0}], 10, 15.0)
    assert q.training_seconds(old, "bleu") is None and q.training_cpu_seconds(old) is None


def test_the_equal_time_sft_follows_cpu_seconds_where_every_run_has_them(tmp_path):
    q = load_quality()

    def row(name: str, wall: float, cpu: float | None) -> dict:
        out = tmp_path / name
        (out / "best_tfmr").mkdir(parents=True)
        val = {"step": 10, "bleu": 1.0, "elapsed_s": wall, **({"cpu_s": cpu} if cpu else {})}
        (out / "metrics.json").write_text(json.dumps({"val": [val], "final_step": 10}))
        return {"dir": str(out / "best_tfmr"), "train_seconds": wall}

    # sft's wall clock counted a loaded machine (1,100 s for 1,000 CPU s): by CPU seconds the
    # slowest gkd row is 3x sft (6,000 steps), by the wall clock 2,000 / 1,100 (3,636 steps).
    sft = row("sft", 1100.0, 1000.0)
    gkd = [row("gkd_a", 2000.0, 3000.0), row("gkd_b", 1500.0, 2500.0)]
    assert q.equal_time_steps(2000, sft, gkd) == 6000
    # a run without CPU seconds: every run by the wall clock (the slowest: 2,000 / 1,100)
    assert q.equal_time_steps(2000, sft, [*gkd, row("old", 1000.0, None)]) == round(2000 * 2000 / 1100)
    # never fewer steps than the sft row itself
    assert q.equal_time_steps(2000, sft, [row("fast", 100.0, 50.0)]) == 2000
