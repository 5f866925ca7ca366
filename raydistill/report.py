"""``raydistill report``: the runs' own files, as one HTML page to look at.

It reads what runs wrote and loads no model (no torch, no Ray). A folder given may be

- a ``distill`` run's ``output_dir``: ``metrics.json`` (its validations; a staged run lists its
  stages, whose curves are chained), ``hparams.json``, ``test_results.json`` and
  ``test_generations.txt`` (``do_predict``), ``latency.json`` where batch-1 generation was timed
  (``make demo``, a sweep's trials);
- an ``evaluate`` output folder (``test_results.json``, ``test_generations.txt``), e.g. a teacher's;
- a ``tune`` sweep's ``output_dir`` (``sweep.json``, ``results.csv``, ``pareto.png``).

The page holds everything itself: CSS inline, plots as base64 PNGs, no script.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raydistill.errors import ConfigError

EXAMPLES = 10


@dataclass
class Run:
    """What the page shows of one folder (see the module docstring for the files read)."""

    name: str
    path: Path
    kind: str  # "distill", "staged", "evaluate" or "sweep"
    hparams: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    metric: str | None = None
    curve: list[tuple[float, int, float]] = field(default_factory=list)
    model_dir: Path | None = None
    generations: list[str] | None = None
    sweep_rows: list[dict[str, str]] = field(default_factory=list)
    pareto_png: bytes | None = None


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _stage_dir(run_dir: Path, stage: dict[str, Any]) -> Path:
    """A stage's folder as recorded, else beside the run's (a run folder that was moved)."""
    recorded = Path(stage.get("dir", ""))
    return recorded if recorded.is_dir() else run_dir / stage.get("name", recorded.name)


def run_curve(run_dir: Path, metric: str) -> list[tuple[float, int, float]]:
    """(seconds of training, step, val score) at each validation of the run in ``run_dir``.

    A staged run's stages follow each other on both axes. ``elapsed_s`` (recorded by the
    training loop) is the run's seconds of training, across resumes; a validation without it
    (an older run) sits at ``step / final_step`` of the run's training seconds.
    """
    summary = _json(run_dir / "metrics.json") or {}
    if "stages" in summary:
        points, offset, steps = [], 0.0, 0
        for stage in summary["stages"]:
            stage_points = run_curve(_stage_dir(run_dir, stage), metric)
            points += [(offset + t, steps + step, score) for t, step, score in stage_points]
            # its last validation is its end: the clock its points were read on
            offset += stage_points[-1][0] if stage_points else stage.get("train_seconds") or 0.0
            steps += stage.get("final_step") or 0
        return points
    final = max(summary.get("final_step") or 1, 1)
    seconds = summary.get("train_seconds") or 0.0
    return [(h.get("elapsed_s", seconds * h["step"] / final), h["step"], h[metric])
            for h in summary.get("val", []) if h.get(metric) is not None and "step" in h]


def count_parameters(model_dir: Path) -> int | None:
    """Parameters stored in the folder's safetensors files, read from their headers only
    (``save_pretrained`` stores a tied weight once, as ``model.parameters()`` counts it; BART's
    and Marian's ``final_logits_bias`` is a buffer, not counted)."""
    total, found = 0, False
    for path in sorted(model_dir.glob("*.safetensors")):
        with path.open("rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for key, tensor in header.items():
            if key != "__metadata__" and not key.endswith("final_logits_bias"):
                total += math.prod(tensor["shape"])
                found = True
    return total if found else None


def _default_metric(task: str | None) -> str:
    from raydistill.metrics import METRICS

    return METRICS.get(task or "summarization", "rouge2")


def read_run(path: str | Path, name: str | None = None) -> Run:
    """The folder's files as a ``Run``; a ``ConfigError`` when it holds none of them."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise ConfigError(f"{path} is not a folder; pass a run's output_dir, an evaluate "
                          "output folder or a sweep's output_dir")
    name = name or (f"{path.parent.name}/{path.name}" if path.name == "best_tfmr" else path.name)
    if (path / "sweep.json").is_file():
        return _read_sweep(path, name)
    summary = _json(path / "metrics.json")
    test = _json(path / "test_results.json")
    if summary is None and test is None:
        raise ConfigError(f"{path} holds no run: expected metrics.json (distill), "
                          "test_results.json (evaluate) or sweep.json (tune)")
    hparams = _json(path / "hparams.json") or {}
    test = test or (summary or {}).get("test")
    kind = "evaluate" if summary is None else ("staged" if "stages" in summary else "distill")
    metric = next(iter((summary or {}).get("best") or {}), None) or (test or {}).get("metric") \
        or _default_metric(hparams.get("task"))
    model_dir = path / "best_tfmr" if (path / "best_tfmr").is_dir() else None
    if model_dir is None and test and test.get("model_dir"):
        model_dir = Path(test["model_dir"])
    gens = path / "test_generations.txt"
    return Run(name=name, path=path, kind=kind, hparams=hparams, summary=summary or {}, test=test,
               latency=_json(path / "latency.json"), metric=metric,
               curve=run_curve(path, metric) if summary else [], model_dir=model_dir,
               generations=gens.read_text().splitlines() if gens.is_file() else None)


def _read_sweep(path: Path, name: str) -> Run:
    info = _json(path / "sweep.json") or {}
    rows: list[dict[str, str]] = []
    if (path / "results.csv").is_file():
        with (path / "results.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
    pareto = path / "pareto.png"
    return Run(name=name, path=path, kind="sweep", hparams=info.get("config") or {},
               summary=info, metric=(info.get("tune") or {}).get("metric"), sweep_rows=rows,
               pareto_png=pareto.read_bytes() if pareto.is_file() else None)


# ---- what the table shows of a run ------------------------------------------------------

def _teacher_ref(run: Run) -> str | None:
    h = run.hparams
    if h.get("teachers"):
        return ", ".join(str(t) for t in h["teachers"])
    return str(h["teacher"]) if h.get("teacher") else None


def teacher_label(run: Run, runs: list[Run]) -> str:
    """The teacher as a name on the page: another run's name where it is that run's model."""
    ref = _teacher_ref(run)
    if ref is None:
        return ""
    for other in runs:
        if other is not run and other.model_dir is not None and Path(ref).resolve() in (
                other.model_dir.resolve(), other.path):
            return other.name
    parts = Path(ref).parts
    return "/".join(parts[-2:]) if Path(ref).is_absolute() else ref


def method_label(run: Run) -> str:
    if run.kind == "staged":
        return " → ".join(s.get("method", "?") for s in run.summary["stages"])
    if run.kind == "evaluate":
        return "(evaluated)"
    return str(run.hparams.get("method", ""))


def layers_label(run: Run) -> str:
    """Encoder-decoder depth of the run's model, e.g. ``6-3``."""
    cfg = _json(run.model_dir / "config.json") if run.model_dir else None
    if not cfg:
        return ""
    enc = cfg.get("encoder_layers", cfg.get("num_layers"))
    dec = cfg.get("decoder_layers", cfg.get("num_decoder_layers", cfg.get("num_layers")))
    return f"{enc}-{dec}" if enc is not None else ""


def copied_label(run: Run) -> str:
    """The teacher layers ``make_student`` copied into the run's student (stage 0's for a
    staged run), e.g. ``enc 0,2,4; dec 0,5``."""
    copied = _json(run.path / "student_layers.json")
    if copied is None and run.kind == "staged":
        copied = _json(_stage_dir(run.path, run.summary["stages"][0]) / "student_layers.json")
    if not copied:
        return ""

    def ids(key: str) -> str:
        return "all" if copied.get(key) is None else ",".join(map(str, copied[key]))

    return f"enc {ids('e_layer_ids')}; dec {ids('d_layer_ids')}"


def parameters(run: Run) -> int | None:
    if run.latency and run.latency.get("parameters"):
        return int(run.latency["parameters"])
    return count_parameters(run.model_dir) if run.model_dir and run.model_dir.is_dir() else None


def score_on_test(run: Run) -> float | None:
    scores = (run.test or {}).get("scores") or {}
    return scores.get(run.metric) if run.metric else None


def ms_per_example(run: Run) -> float | None:
    value = (run.latency or {}).get("ms_per_example")
    return float(value) if isinstance(value, (int, float)) else None


# ---- plots --------------------------------------------------------------------------------

def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display
    import matplotlib.pyplot as plt

    return plt


def curves_png(runs: list[Run], metric: str) -> bytes:
    """Val ``metric`` of each run against step (left) and training wall-clock (right)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in runs:
        xs_t = [t / 60 for t, _, _ in run.curve]
        style = dict(marker="o", markersize=3, label=run.name)
        axes[0].plot([s for _, s, _ in run.curve], [v for _, _, v in run.curve], **style)
        axes[1].plot(xs_t, [v for _, _, v in run.curve], **style)
        teacher_val = run.summary.get("teacher_val")
        if isinstance(teacher_val, (int, float)):
            for ax in axes:
                ax.axhline(teacher_val, color="black", linestyle="--", linewidth=1)
    for ax, xlabel in zip(axes, ("training step", "training wall-clock (minutes)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"val {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Validation {metric} (dashed: the teacher's, where recorded)")
    fig.tight_layout()
    return _png(fig)


def quality_speed_png(runs: list[Run], metric: str) -> bytes:
    """Test ``metric`` against batch-1 generation latency, one point per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for run in runs:
        x, y = ms_per_example(run), score_on_test(run)
        ax.scatter([x], [y], s=50, zorder=2)
        ax.annotate(run.name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("generation latency (ms/example, batch 1) - lower is better")
    ax.set_ylabel(f"test {metric} - higher is better")
    ax.set_title("Quality against speed")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


# ---- the page -----------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222;
       padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
.wide { overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; text-align: left; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.example { width: 100%; }
table.example th { width: 14em; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 12px; }
.note { color: #666; font-size: 13px; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: Any, fmt: str = ".2f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and math.isfinite(value) else ""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _table(head: list[str], rows: list[list[str]], table_id: str = "",
           numeric: tuple[int, ...] = ()) -> str:
    """``rows`` hold cell HTML (escaped by the caller); columns in ``numeric`` align right."""
    def cell(i: int, c: str) -> str:
        return f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>"

    attrs = f' id="{table_id}"' if table_id else ""
    out = [f"<table{attrs}><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>" for row in rows]
    return "\n".join(out) + "</table>"


def runs_table(runs: list[Run]) -> str:
    keys: list[str] = []
    for run in runs:
        keys += [k for k in ((run.test or {}).get("scores") or {}) if k not in keys]
    metrics = {run.metric for run in runs}
    one = next(iter(metrics)) if len(metrics) == 1 else None  # else each cell names its own
    head = ["run", "method", "teacher", "layers (enc-dec)", "copied teacher layers",
            "params (M)", f"best val ({one})" if one else "best val",
            *[f"{k} (test)" for k in keys], "test examples", "test ex/s (backend)",
            "ms/example (batch 1)", "train (min)", "steps"]
    rows = []
    for run in runs:
        params, test, best = parameters(run), run.test or {}, (run.summary.get("best") or {})
        gen = test.get("generation") or {}
        speed = _num(test.get("examples_per_second"), ".1f")
        seconds = run.summary.get("train_seconds")
        rows.append([
            _e(run.name), _e(method_label(run)), _e(teacher_label(run, runs)),
            _e(layers_label(run)), _e(copied_label(run)),
            _num(params / 1e6 if params else None),
            _num(best.get(run.metric)) + ("" if one or not best else f" ({_e(run.metric)})"),
            *[_num((test.get("scores") or {}).get(k)) for k in keys],
            _e(test.get("n_examples", "")),
            _e(f"{speed} ({gen.get('backend', 'transformers')})" if speed else ""),
            _num(ms_per_example(run), ".1f"),
            _num(seconds / 60 if isinstance(seconds, (int, float)) else None, ".1f"),
            _e(run.summary.get("final_step", ""))])
    numeric = tuple(i for i, h in enumerate(head) if i >= 5 and h != "test ex/s (backend)")
    return f'<div class="wide">{_table(head, rows, "runs-table", numeric)}</div>'


def _data_dir(runs: list[Run]) -> str | None:
    for run in runs:
        for d in (run.hparams.get("data_dir"), (run.test or {}).get("data_dir")):
            if d and Path(d).is_dir():
                return str(d)
    return None


def teacher_generations(runs: list[Run]) -> tuple[str, list[str]] | None:
    """The teacher's test generations where ``evaluate`` left them beside it (its folder, or the
    run folder of a ``best_tfmr``) and the teacher is not itself one of the runs shown."""
    shown = {run.path for run in runs} | {run.model_dir.resolve() for run in runs if run.model_dir}
    for run in runs:
        ref = _teacher_ref(run)
        if not ref or "," in ref or not Path(ref).is_dir():
            continue
        teacher = Path(ref).resolve()
        places = [teacher] + ([teacher.parent] if teacher.name == "best_tfmr" else [])
        if any(p in shown for p in places):
            continue
        for place in places:
            if (place / "test_generations.txt").is_file():
                return (f"teacher ({teacher_label(run, runs)})",
                        (place / "test_generations.txt").read_text().splitlines())
    return None


def examples_html(runs: list[Run], n: int = EXAMPLES) -> str:
    """The first ``n`` test examples: source, reference, the teacher's and each run's output."""
    from raydistill.data.files import read_split

    outputs = [(run.name, run.generations) for run in runs if run.generations is not None]
    teacher = teacher_generations(runs)
    if teacher:
        outputs.insert(0, teacher)
    data_dir, sources, refs = _data_dir(runs), [], []
    if data_dir:
        try:
            split = read_split(data_dir, "test", n=n)
            sources = split.sources
            refs = [r[0] for r in split.refs] if split.refs is not None else split.targets
        except (ConfigError, OSError, ValueError, KeyError):
            pass
    count = min(n, max([len(sources)] + [len(g) for _, g in outputs]))
    if not count:
        return '<p class="note">No test generations (test_generations.txt) in these folders.</p>'
    parts = []
    for i in range(count):
        rows = [["source", sources[i] if i < len(sources) else ""],
                ["reference", refs[i] if i < len(refs) else ""]]
        rows += [[name, gens[i] if i < len(gens) else ""] for name, gens in outputs]
        parts.append(f'<h3>Example {i + 1}</h3><table class="example">' + "".join(
            f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>")
    where = f"test split of {_e(data_dir)}" if data_dir else "test split (data folder not found)"
    return f'<p class="note">The first {count} examples of the {where}.</p>' + "\n".join(parts)


def sweep_html(run: Run) -> str:
    cols = [c for c in (run.sweep_rows[0] if run.sweep_rows else {}) if c != "trial_dir"]
    table = _table(cols, [[_e(r.get(c)) for c in cols] for r in run.sweep_rows])
    pareto = _img(run.pareto_png, f"{run.name}: quality against latency") if run.pareto_png else ""
    return f"<h3>{_e(run.name)}</h3><p class=\"note\">{_e(run.path)}</p>{table}{pareto}"


def render(runs: list[Run], n_examples: int = EXAMPLES) -> str:
    """The whole page for ``runs`` (sweeps get a section of their own)."""
    singles = [r for r in runs if r.kind != "sweep"]
    sweeps = [r for r in runs if r.kind == "sweep"]
    body = [f"<h1>raydistill report</h1><p class=\"note\">{len(runs)} folder(s), written "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}: "
            + ", ".join(_e(r.path) for r in runs) + "</p>"]
    if singles:
        body += ['<h2 id="runs">Runs</h2>', runs_table(singles)]
        body.append('<h2 id="curves">Validation curves</h2>')
        metrics = sorted({r.metric for r in singles if r.curve and r.metric})
        body += [_img(curves_png([r for r in singles if r.metric == m and r.curve], m),
                      f"validation {m} against step and wall-clock") for m in metrics]
        if not metrics:
            body.append('<p class="note">No validations recorded (metrics.json "val").</p>')
        body.append('<h2 id="speed">Quality and speed</h2>')
        timed = [r for r in singles
                 if ms_per_example(r) is not None and score_on_test(r) is not None]
        for m in sorted({r.metric for r in timed}):
            body.append(_img(quality_speed_png([r for r in timed if r.metric == m], m),
                             f"test {m} against generation latency"))
        if not timed:
            body.append('<p class="note">No run here recorded both a test score and its batch-1 '
                        "generation latency (latency.json: make demo, a sweep's trials).</p>")
        body += ['<h2 id="examples">Test examples</h2>', examples_html(singles, n_examples)]
    if sweeps:
        body += ['<h2 id="sweeps">Sweeps</h2>'] + [sweep_html(r) for r in sweeps]
    body.append('<h2 id="configs">Configurations</h2>')
    for run in runs:
        text = (json.dumps(run.hparams, indent=2, default=str) if run.hparams
                else "(no hparams.json)")
        body.append(f"<details><summary>{_e(run.name)} ({_e(run.kind)})</summary>"
                    f"<pre>{_e(text)}</pre></details>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>raydistill report</title><style>" + CSS + "</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(run_dirs: list[str | Path], out: str | Path,
                 n_examples: int = EXAMPLES) -> Path:
    """Read ``run_dirs`` and write the page to ``out``; returns its path."""
    from raydistill.atomic import write_text_atomic

    if not run_dirs:
        raise ConfigError("report: pass at least one run folder")
    runs = [read_run(d) for d in run_dirs]
    seen: dict[str, int] = {}
    for run in runs:  # two folders of the same name: tell them apart
        seen[run.name] = seen.get(run.name, 0) + 1
        if seen[run.name] > 1:
            run.name = f"{run.name} ({seen[run.name]})"
    out = Path(out)
    write_text_atomic(out, render(runs, n_examples))
    return out.resolve()


__all__ = ["Run", "count_parameters", "read_run", "render", "run_curve", "write_report"]
