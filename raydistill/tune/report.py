"""A sweep's results: one row per trial -> results.csv, results.md and pareto.png.

Everything here is a pure function of the rows (no Ray), so it is tested on hand-made rows.
A row holds ``trial_id``, ``status``, the sampled values (dotted config keys), ``metric`` (the
trial's best validation value), ``best_step``, ``reports``, ``parameters``, ``ms_per_example``.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

STATUS_LABELS = {"ERROR": "error", "PENDING": "pending", "RUNNING": "running", "PAUSED": "paused"}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _true(value: Any) -> bool:
    """A reported flag read back from a results table (bool, numpy bool, or NaN when absent)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return bool(value)


def summarize_trial(trial_id: str, status: str, config: dict[str, Any],
                    history: list[dict[str, Any]], metric: str, mode: str,
                    keys: list[str]) -> dict[str, Any]:
    """One trial's row from its reports (``history``, oldest first) and flattened config.

    ``status`` is Tune's; a TERMINATED trial whose last report is not ``final`` was stopped by
    the scheduler (ASHA) before its training ended: ``early_stopped``. ``checkpoints`` lists the
    reported checkpoint paths, best first (ties: the later report first).
    """
    scored = [r for r in history if _finite(r.get(metric))]
    sign = 1 if mode == "max" else -1
    ranked = sorted(scored, key=lambda r: (sign * r[metric], r.get("training_iteration", 0)),
                    reverse=True)
    if status == "TERMINATED":
        label = "completed" if history and _true(history[-1].get("final")) else (
            "early_stopped" if history else "no_reports")
    else:
        label = STATUS_LABELS.get(status, status.lower())
    best = ranked[0] if ranked else {}
    return {
        "trial_id": trial_id,
        "status": label,
        **{k: config.get(k) for k in keys},
        "metric": best.get(metric),
        "best_step": int(best["step"]) if _finite(best.get("step")) else None,
        "reports": len(history),
        "checkpoints": [r["checkpoint_path"] for r in ranked
                        if isinstance(r.get("checkpoint_path"), str)],
    }


def pareto_front(points: list[tuple[float, float]], mode: str = "max") -> list[bool]:
    """Which (quality, latency) points no other point beats on both axes.

    Quality is better higher (``mode="max"``) or lower (``"min"``); latency is better lower. A
    point is dominated when another is at least as good on both and better on one.
    """
    sign = 1 if mode == "max" else -1

    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        qa, la, qb, lb = sign * a[0], a[1], sign * b[0], b[1]
        return qa >= qb and la <= lb and (qa > qb or la < lb)

    return [not any(dominates(o, p) for o in points) for p in points]


def mark_frontier(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Copies of ``rows`` with ``pareto`` set (False where quality or latency is missing)."""
    idx = [i for i, r in enumerate(rows)
           if _finite(r.get("metric")) and _finite(r.get("ms_per_example"))]
    front = pareto_front([(rows[i]["metric"], rows[i]["ms_per_example"]) for i in idx], mode)
    on = {i for i, f in zip(idx, front) if f}
    return [{**r, "pareto": i in on} for i, r in enumerate(rows)]


def best_row(rows: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    """The trial with the best metric; ties go to the faster one, then the first trial."""
    scored = [r for r in rows if _finite(r.get("metric"))]
    if not scored:
        return None
    sign = 1 if mode == "max" else -1
    def latency(r: dict[str, Any]) -> float:
        return r["ms_per_example"] if _finite(r.get("ms_per_example")) else math.inf

    return min(scored, key=lambda r: (-sign * r["metric"], latency(r), r["trial_id"]))


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def table_columns(keys: list[str]) -> list[str]:
    return ["trial_id", "status", *keys, "metric", "best_step", "reports", "parameters",
            "ms_per_example", "pareto"]


def results_csv(rows: list[dict[str, Any]], metric: str, keys: list[str]) -> str:
    """CSV text; the ``metric`` column is named after the metric (e.g. rouge2)."""
    cols = table_columns(keys) + ["trial_dir"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([metric if c == "metric" else c for c in cols])
    for r in rows:
        writer.writerow(["" if r.get(c) is None else r.get(c) for c in cols])
    return buf.getvalue()


def results_markdown(rows: list[dict[str, Any]], metric: str, keys: list[str],
                     best_id: str | None = None) -> str:
    """A Markdown table; Pareto-optimal trials are starred, the best one is bold."""
    head = ["trial", "status", *keys, f"{metric} (best)", "step", "reports", "params (M)",
            "ms/example", "Pareto"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 3) + [":---:"]) + "|"]
    for r in rows:
        trial = f"**{r['trial_id']}**" if r["trial_id"] == best_id else r["trial_id"]
        params = r["parameters"] / 1e6 if _finite(r.get("parameters")) else None
        cells = [trial, r["status"], *[_fmt(r.get(k)) for k in keys],
                 f"{r['metric']:.4f}" if _finite(r.get("metric")) else "",
                 _fmt(r.get("best_step")), _fmt(r.get("reports")),
                 f"{params:.3f}" if params is not None else "",
                 f"{r['ms_per_example']:.1f}" if _finite(r.get("ms_per_example")) else "",
                 "★" if r.get("pareto") else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pareto_plot(rows: list[dict[str, Any]], path: str | Path, metric: str, mode: str,
                best_id: str | None = None) -> Path:
    """Quality vs generation latency, one point per trial; the frontier drawn as a step line."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    pts = [r for r in rows if _finite(r.get("metric")) and _finite(r.get("ms_per_example"))]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for stopped, label, style in ((False, "trial", dict(color="tab:blue")),
                                  (True, "trial (stopped early)",
                                   dict(facecolors="none", edgecolors="tab:blue"))):
        sel = [r for r in pts if (r["status"] == "early_stopped") == stopped]
        if sel:
            ax.scatter([r["ms_per_example"] for r in sel], [r["metric"] for r in sel], s=40,
                       label=label, zorder=2, **style)
    front = sorted((r for r in pts if r.get("pareto")), key=lambda r: r["ms_per_example"])
    if front:
        ax.step([r["ms_per_example"] for r in front], [r["metric"] for r in front], where="post",
                color="tab:red", lw=1.2, zorder=1)
        ax.scatter([r["ms_per_example"] for r in front], [r["metric"] for r in front], s=110,
                   marker="*", color="tab:red", label="Pareto frontier", zorder=3)
    best = [r for r in pts if r["trial_id"] == best_id]
    if best:
        ax.scatter([best[0]["ms_per_example"]], [best[0]["metric"]], s=260, facecolors="none",
                   edgecolors="black", linewidths=1.2, label="best", zorder=4)
    for r in pts:  # "#3" for trial xxxxx_00003, as in results.md
        text = "#" + r["trial_id"].rsplit("_", 1)[-1].lstrip("0").rjust(1, "0")
        ax.annotate(text, (r["ms_per_example"], r["metric"]), textcoords="offset points",
                    xytext=(6, -10), fontsize=8)
    if not pts:
        ax.text(0.5, 0.5, "no trial reported both quality and latency", ha="center",
                transform=ax.transAxes)
    better = "higher" if mode == "max" else "lower"
    ax.set_xlabel("generation latency (ms/example, batch 1)  - lower is better")
    ax.set_ylabel(f"validation {metric}  - {better} is better")
    ax.set_title(f"Sweep: quality vs latency ({len(pts)} trials)")
    ax.grid(alpha=0.3)
    if pts:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(rows: list[dict[str, Any]], out_dir: str | Path, *, metric: str, mode: str,
                 keys: list[str], best_id: str | None = None) -> list[dict[str, Any]]:
    """Write results.csv, results.md and pareto.png into ``out_dir``; returns the marked rows."""
    from raydistill.atomic import write_text_atomic

    out = Path(out_dir)
    rows = mark_frontier(rows, mode)
    write_text_atomic(out / "results.csv", results_csv(rows, metric, keys))
    write_text_atomic(out / "results.md", results_markdown(rows, metric, keys, best_id))
    pareto_plot(rows, out / "pareto.png", metric, mode, best_id)
    return rows


__all__ = ["summarize_trial", "pareto_front", "mark_frontier", "best_row", "results_csv",
           "results_markdown", "pareto_plot", "write_report"]
