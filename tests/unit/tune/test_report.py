"""The sweep report: trial rows, the Pareto frontier, results.csv / results.md / pareto.png."""

from __future__ import annotations

import csv
import io

import pytest

from raydistill.tune.report import (
    best_row,
    mark_frontier,
    pareto_front,
    results_csv,
    results_markdown,
    summarize_trial,
    write_report,
)

NAN = float("nan")


def report(it: int, rouge2: float, final: bool = False, ckpt: str | None = None) -> dict:
    return {"training_iteration": it, "rouge2": rouge2, "step": 10 * it, "final": final,
            "checkpoint_path": ckpt or f"ckpt{it}"}


def row(tid: str, metric, ms, status="completed", **extra) -> dict:
    return {"trial_id": tid, "status": status, "metric": metric, "best_step": 10, "reports": 3,
            "parameters": 2_000_000, "ms_per_example": ms, **extra}


@pytest.mark.parametrize("points,mode,expected", [
    # (quality, latency): b is slower and worse than a; c is slowest but best
    ([(0.5, 10.0), (0.4, 12.0), (0.6, 20.0)], "max", [True, False, True]),
    ([(0.5, 10.0), (0.4, 5.0), (0.3, 8.0), (0.5, 12.0)], "max", [True, True, False, False]),
    ([(0.5, 10.0), (0.5, 10.0)], "max", [True, True]),  # equal points do not dominate each other
    ([(0.5, 10.0), (0.4, 12.0)], "min", [True, True]),  # lower quality is better: a trade-off
    ([(0.5, 10.0), (0.6, 12.0)], "min", [True, False]),
    ([], "max", []),
])
def test_pareto_front(points, mode, expected):
    assert pareto_front(points, mode) == expected


def test_mark_frontier_skips_rows_without_quality_or_latency():
    rows = [row("t_0", 0.5, 10.0), row("t_1", None, 1.0), row("t_2", 0.7, None),
            row("t_3", 0.4, 20.0)]
    assert [r["pareto"] for r in mark_frontier(rows, "max")] == [True, False, False, False]
    assert "pareto" not in rows[0]  # copies: the input rows are not changed


def test_summarize_trial_statuses_and_best_checkpoint_order():
    keys = ["temperature", "distillation.kd_loss_weight"]
    cfg = {"temperature": 2.0, "distillation.kd_loss_weight": 0.5, "other": 1}
    history = [report(1, 0.2), report(2, 0.4), report(3, 0.4), report(4, NAN, ckpt="nan")]
    r = summarize_trial("ab_00001", "TERMINATED", cfg, history, "rouge2", "max", keys)
    assert r["status"] == "early_stopped"  # the last report is not final: ASHA stopped it
    assert r["metric"] == 0.4 and r["best_step"] == 30  # ties: the later report
    assert r["checkpoints"] == ["ckpt3", "ckpt2", "ckpt1"]
    assert r["temperature"] == 2.0 and r["distillation.kd_loss_weight"] == 0.5 and "other" not in r
    assert r["reports"] == 4

    done = summarize_trial("ab_0", "TERMINATED", cfg, [report(1, 0.1), report(2, 0.3, final=True)],
                           "rouge2", "max", keys)
    assert done["status"] == "completed" and done["metric"] == 0.3
    low = summarize_trial("ab_0", "TERMINATED", cfg, [report(1, 0.1), report(2, 0.3)],
                          "rouge2", "min", keys)
    assert low["metric"] == 0.1
    err = summarize_trial("ab_0", "ERROR", cfg, [], "rouge2", "max", keys)
    assert err["status"] == "error" and err["metric"] is None and err["checkpoints"] == []
    empty = summarize_trial("ab_0", "TERMINATED", cfg, [], "rouge2", "max", keys)
    assert empty["status"] == "no_reports"
    assert summarize_trial("ab_0", "PENDING", cfg, [], "rouge2", "max", keys)["status"] == "pending"


def test_best_row_prefers_quality_then_speed():
    rows = [row("t_0", 0.5, 30.0), row("t_1", 0.6, 50.0), row("t_2", 0.6, 20.0),
            row("t_3", None, 1.0)]
    assert best_row(rows, "max")["trial_id"] == "t_2"
    assert best_row(rows, "min")["trial_id"] == "t_0"
    assert best_row([row("t_0", None, 1.0)], "max") is None


def test_csv_and_markdown_have_one_row_per_trial():
    keys = ["temperature", "student_decoder_layers"]
    rows = mark_frontier([
        row("t_0", 0.51234, 12.34, temperature=2.5, student_decoder_layers=1, trial_dir="/x/0"),
        row("t_1", 0.3, 30.0, "early_stopped", temperature=7.123456, student_decoder_layers=3),
        row("t_2", None, None, "error", temperature=1.0, student_decoder_layers=6, parameters=None),
    ], "max")
    table = list(csv.DictReader(io.StringIO(results_csv(rows, "rouge2", keys))))
    assert [t["trial_id"] for t in table] == ["t_0", "t_1", "t_2"]
    assert table[0]["rouge2"] == "0.51234" and table[0]["pareto"] == "True"
    assert table[0]["trial_dir"] == "/x/0"
    assert table[2]["rouge2"] == "" and table[2]["parameters"] == ""
    md = results_markdown(rows, "rouge2", keys, best_id="t_0").splitlines()
    assert len(md) == 2 + 3
    assert md[0].startswith("| trial | status | temperature | student_decoder_layers | rouge2")
    assert md[2].startswith("| **t_0** | completed | 2.5 | 1 | 0.5123 |")
    assert md[2].endswith("★ |")
    assert "| t_1 | early_stopped | 7.123 | 3 | 0.3000 |" in md[3]
    assert md[4].count("|") == md[0].count("|")  # empty cells keep the columns aligned


def test_write_report_writes_the_three_files(tmp_path):
    rows = [row("t_0", 0.5, 10.0), row("t_1", 0.4, 12.0, "early_stopped"), row("t_2", 0.6, 20.0),
            row("t_3", None, None, "error")]
    marked = write_report(rows, tmp_path, metric="rouge2", mode="max", keys=[], best_id="t_2")
    assert [r["pareto"] for r in marked] == [True, False, True, False]
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 1 + 4
    assert (tmp_path / "results.md").exists()
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temporary files


def test_plot_without_any_scored_trial(tmp_path):
    write_report([row("t_0", None, None, "error")], tmp_path, metric="bleu", mode="max", keys=[])
    assert (tmp_path / "pareto.png").stat().st_size > 1000
