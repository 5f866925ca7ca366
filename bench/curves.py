"""Learning curves from the runs' own validations: val score against training wall-clock.

``run_curve`` is ``raydistill.report``'s reading of a run folder. A run's ``metrics.json`` lists its validations (``val``: step, score, and ``elapsed_s``, the
seconds of training before it, where the run recorded them) and its ``train_seconds``; a staged
run (``stages:``) lists its stages, whose clocks follow each other. ``bench/quality.py`` plots
every recipe at each depth into ``docs/quality_en_de.png``.
"""

from __future__ import annotations

from pathlib import Path

from raydistill.report import run_curve  # the reading `raydistill report` plots too

__all__ = ["plot_curves", "run_curve"]


def plot_curves(curves: dict[str, list[tuple[float, int, float]]], path: Path, *,
                metric: str, title: str, teacher: float | None = None,
                xlabel: str = "training wall-clock (minutes)") -> Path:
    """One panel per student depth (the ``6-d`` in each name), a line per recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = sorted({name.split(" ")[1] for name in curves if name.startswith("student 6-")})
    fig, axes = plt.subplots(1, max(1, len(depths)), figsize=(6.5 * max(1, len(depths)), 4.5),
                             squeeze=False)
    # up to 20 lines a panel in distinct colours (tab20's dark shades, then its light ones)
    colors = [plt.get_cmap("tab20").colors[i] for i in (*range(0, 20, 2), *range(1, 20, 2))]
    for ax, depth in zip(axes[0], depths or ["?"]):
        names = [n for n, p in sorted(curves.items()) if f" {depth} " in f" {n} " and p]
        for i, name in enumerate(names):
            points = curves[name]
            xs = [t / 60 for t, _, _ in points]
            ax.plot(xs, [v for _, _, v in points], marker="o", markersize=3,
                    color=colors[i % 20], linestyle=("-", "--")[i // 20 % 2],
                    label=name.split("(", 1)[-1].replace(")", ""))
        if teacher is not None:
            ax.axhline(teacher, color="black", linestyle="--", linewidth=1, label="teacher")
        ax.set_title(f"student {depth}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"val {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
