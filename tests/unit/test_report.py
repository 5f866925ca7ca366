"""``raydistill report``: the page read from hand-made run folders, and opened in Chromium.

The folders hold what runs write (a distill run, a staged run, a teacher's run, a sweep), made by
hand: no training, no Ray. The browser test runs wherever Debian's ``chromium`` is installed
(``.ci/run`` installs it) and skips elsewhere.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from raydistill.cli import main
from raydistill.report import count_parameters, read_run, render, write_report

SOURCES = [f"on day {i} alice went to town and bought a lamp number {i} ." for i in range(12)]
REFS = [f"alice bought lamp {i} ." for i in range(12)]


def _model(path: Path, layers: tuple[int, int], rows: int) -> Path:
    """A model folder: config.json and real safetensors of ``rows`` x 1,000 int8 weights."""
    import numpy as np
    from safetensors.numpy import save_file

    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(
        {"model_type": "bart", "encoder_layers": layers[0], "decoder_layers": layers[1]}))
    save_file({"w": np.zeros((rows, 1000), dtype=np.int8), "b": np.zeros(500, dtype=np.int8)},
              str(path / "model.safetensors"))
    return path


def _write(path: Path, name: str, data) -> None:
    path.mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data)
    (path / name).write_text(text)


def _val(steps, scores, metric="rouge2", seconds=None):
    return [{"step": s, metric: v, **({"elapsed_s": t} if seconds else {})}
            for s, v, t in zip(steps, scores, seconds or [None] * len(steps))]


def _test_outputs(run: Path, data: Path, score: float, outputs: list[str], ms: float) -> None:
    _write(run, "test_results.json", {
        "data_dir": str(data), "split": "test", "metric": "rouge2", "n_examples": len(outputs),
        "scores": {"rouge1": score + 10, "rouge2": score, "rougeL": score + 5},
        "gen_seconds": 3.0, "examples_per_second": 4.0, "generation": {"backend": "transformers"}})
    _write(run, "test_generations.txt", "".join(o + "\n" for o in outputs))
    _write(run, "latency.json", {"ms_per_example": ms})


@pytest.fixture
def runs(tmp_path):
    """data/, teacher/ (sft), student_kd/ (kd from teacher/best_tfmr), staged/ (sft -> kd),
    sweep/ (tune), as those commands leave them."""
    data = tmp_path / "data"
    _write(data, "test.source", "\n".join(SOURCES) + "\n")
    _write(data, "test.target", "\n".join(REFS) + "\n")
    teacher = tmp_path / "teacher"
    _model(teacher / "best_tfmr", (4, 4), 3000)
    _write(teacher, "hparams.json", {"method": "sft", "student": "init", "data_dir": str(data),
                                     "task": "summarization", "learning_rate": 1e-3})
    _write(teacher, "metrics.json", {"val": _val([100, 200], [20.0, 30.0]), "final_step": 200,
                                     "train_seconds": 120.0, "best": {"rouge2": 30.0}})
    _test_outputs(teacher, data, 31.0, [f"teacher says lamp {i} ." for i in range(12)], 40.0)

    student = tmp_path / "student_kd"
    _model(student / "best_tfmr", (4, 1), 1500)
    _write(student, "hparams.json", {"method": "kd", "teacher": str(teacher / "best_tfmr"),
                                     "data_dir": str(data), "task": "summarization",
                                     "student_decoder_layers": 1, "alpha_ce": 0.8})
    _write(student, "student_layers.json", {"e_layer_ids": [0, 1, 2, 3], "d_layer_ids": [0]})
    _write(student, "metrics.json", {"val": _val([50, 100], [10.0, 25.0], seconds=[10.0, 30.0]),
                                     "final_step": 100, "train_seconds": 40.0,
                                     "best": {"rouge2": 25.0}})
    _test_outputs(student, data, 26.0, [f"student <b>lamp</b> {i}" for i in range(12)], 15.0)

    staged = tmp_path / "staged"
    for i, (method, steps) in enumerate((("sft", [10, 20]), ("kd", [5, 10]))):
        _write(staged / f"stage{i}_{method}", "metrics.json",
               {"val": _val(steps, [5.0 + 10 * i, 8.0 + 10 * i]), "final_step": steps[-1],
                "train_seconds": 60.0})
    _write(staged / "stage0_sft", "student_layers.json",
           {"e_layer_ids": [0, 3], "d_layer_ids": [0]})
    _model(staged / "best_tfmr", (2, 1), 1000)
    _write(staged, "hparams.json", {"method": "sft", "teacher": str(teacher / "best_tfmr"),
                                    "data_dir": str(data), "task": "summarization",
                                    "stages": [{"max_steps": 20}, {"method": "kd"}]})
    _write(staged, "metrics.json", {"stages": [
        {"name": "stage0_sft", "method": "sft", "dir": str(staged / "stage0_sft"),
         "final_step": 20, "train_seconds": 60.0, "best": 8.0},
        {"name": "stage1_kd", "method": "kd", "dir": "/moved/elsewhere/stage1_kd",
         "final_step": 10, "train_seconds": 60.0, "best": 18.0}],
        "best": {"rouge2": 18.0}, "teacher_val": 30.0, "train_seconds": 120.0, "final_step": 30})

    from raydistill.tune.report import write_report as write_sweep_report

    sweep = tmp_path / "sweep"
    _write(sweep, "sweep.json", {"config": {"method": "kd", "data_dir": str(data)},
                                 "tune": {"metric": "rouge2", "mode": "max"}})
    rows = [{"trial_id": f"abc_0000{i}", "status": "completed", "learning_rate": lr,
             "metric": m, "best_step": 100, "reports": 2, "parameters": 1e6,
             "ms_per_example": ms, "trial_dir": str(sweep / "trials" / str(i))}
            for i, (lr, m, ms) in enumerate(((1e-3, 20.0, 10.0), (3e-4, 24.0, 12.0)))]
    write_sweep_report(rows, sweep, metric="rouge2", mode="max", keys=["learning_rate"],
                       best_id="abc_00001")
    return {"data": data, "teacher": teacher, "student": student, "staged": staged,
            "sweep": sweep}


class Page(HTMLParser):
    """The page's tables (rows of cell texts, by id), images, h3 headings and texts."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict[str, str]] = []
        self.h3: list[str] = []
        self.scripts = 0
        self._table = self._cell = self._tag = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._tag = tag
        if tag == "table":
            self._table = attrs.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self.tables[self._table][-1].append("")
            self._cell = True
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "script":
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag in ("td", "th"):
            self._cell = None

    def handle_data(self, data):
        if self._cell:
            self.tables[self._table][-1][-1] += data
        if self._tag == "h3":
            self.h3.append(data)
            self._tag = None


def _png_size(src: str) -> tuple[int, int]:
    assert src.startswith("data:image/png;base64,")
    png = base64.b64decode(src.split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_the_page_shows_the_runs_side_by_side_with_curves_speed_examples_and_configs(runs):
    pytest.importorskip("matplotlib")
    folders = [runs[k] for k in ("teacher", "student", "staged", "sweep")]
    text = render([read_run(f) for f in folders])
    page = Page(text)
    table = {row[0]: dict(zip(page.tables["runs-table"][0], row))
             for row in page.tables["runs-table"][1:]}
    assert list(table) == ["teacher", "student_kd", "staged"]  # the sweep has its own section
    kd, staged, teacher = table["student_kd"], table["staged"], table["teacher"]
    assert kd["method"] == "kd" and staged["method"] == "sft → kd"
    assert kd["teacher"] == "teacher" and staged["teacher"] == "teacher"  # the run shown
    assert (kd["layers (enc-dec)"], kd["copied teacher layers"]) == ("4-1", "enc 0,1,2,3; dec 0")
    assert (staged["layers (enc-dec)"], staged["copied teacher layers"]) == ("2-1",
                                                                            "enc 0,3; dec 0")
    assert (teacher["params (M)"], kd["params (M)"]) == ("3.00", "1.50")
    assert kd["rouge2 (test)"] == "26.00" and kd["best val (rouge2)"] == "25.00"
    assert kd["ms/example (batch 1)"] == "15.0" and teacher["ms/example (batch 1)"] == "40.0"
    assert kd["test ex/s (backend)"] == "4.0 (transformers)"
    # plots: curves (step and wall-clock), quality-speed, the sweep's Pareto plot
    alts = [img["alt"] for img in page.images]
    assert alts == ["validation rouge2 against step and wall-clock",
                    "test rouge2 against generation latency", "sweep: quality against latency"]
    assert all(_png_size(img["src"])[0] > 300 for img in page.images)
    # ten examples: source, reference, the teacher's and each run's output (escaped)
    assert page.h3[:10] == [f"Example {i}" for i in range(1, 11)] and "Example 11" not in page.h3
    first = {row[0]: row[1] for row in page.tables["table1"]}
    assert first == {"source": SOURCES[0], "reference": REFS[0], "teacher": "teacher says lamp 0 .",
                     "student_kd": "student <b>lamp</b> 0"}  # staged: no test generations
    assert "student &lt;b&gt;lamp&lt;/b&gt; 0" in text
    # the sweep's trials and every configuration
    sweep = next(rows for rows in page.tables.values() if rows[0][0] == "trial_id")
    assert [r[0] for r in sweep[1:]] == ["abc_00000", "abc_00001"]
    assert text.count("<details>") == 4 and "&quot;alpha_ce&quot;: 0.8" in text
    # self-contained: no script, nothing fetched
    assert page.scripts == 0 and not re.search(r"(src|href)=\"(?!data:)", text)


def test_a_staged_run_chains_its_stages_on_both_axes(runs):
    run = read_run(runs["staged"])
    # stage 1's folder moved (recorded dir missing): found beside the run; no elapsed_s: a
    # validation sits at step / final_step of its stage's seconds
    assert run.curve == [(30.0, 10, 5.0), (60.0, 20, 8.0), (90.0, 25, 15.0), (120.0, 30, 18.0)]
    assert run.kind == "staged" and run.metric == "rouge2"


def test_a_teachers_generations_beside_its_model_are_shown_when_it_is_not_a_run(runs):
    page = Page(render([read_run(runs["student"])]))
    first = {row[0]: row[1] for row in page.tables["table1"]}
    assert first["teacher (teacher/best_tfmr)"] == "teacher says lamp 0 ."
    assert list(first) == ["source", "reference", "teacher (teacher/best_tfmr)", "student_kd"]


def test_the_cli_writes_the_page_and_a_folder_without_runs_is_one_line(runs, tmp_path, capsys):
    out = tmp_path / "r" / "report.html"
    assert main(["report", str(runs["teacher"]), str(runs["student"]), "--out", str(out),
                 "--examples", "3"]) == 0
    assert str(out) in capsys.readouterr().out
    assert Page(out.read_text()).h3 == ["Example 1", "Example 2", "Example 3"]
    assert main(["report", str(runs["data"]), "--out", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err
    assert "holds no run" in err and len(err.splitlines()) == 1


def test_an_evaluate_folder_and_the_parameter_count_from_safetensors(tiny_bart_dir, tmp_path):
    from raydistill.models.layers import load_seq2seq

    model = load_seq2seq(str(tiny_bart_dir))
    assert count_parameters(Path(tiny_bart_dir)) == sum(p.numel() for p in model.parameters())
    _write(tmp_path / "ev", "test_results.json", {"model_dir": str(tiny_bart_dir),
                                                  "metric": "bleu", "scores": {"bleu": 1.5}})
    run = read_run(tmp_path / "ev")
    assert (run.kind, run.metric, run.model_dir) == ("evaluate", "bleu", Path(tiny_bart_dir))


# ---- in a real browser ----------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Appended to a copy of the page (the page itself has no script): on load, whether every image
# decoded, written where --dump-dom shows it.
PROBE = ("<script>window.addEventListener('load', () => { const imgs = [...document.images]; "
         "document.title = 'images ' + imgs.filter(i => i.complete && i.naturalWidth > 0).length "
         "+ '/' + imgs.length; });</script>")


def _chromium(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
         "--v=0", "--virtual-time-budget=5000", *extra, url],
        capture_output=True, text=True, timeout=120)


def _console(stderr: str) -> list[str]:
    """Chromium's log lines of the page's console (errors, uncaught exceptions)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_the_page_opens_in_headless_chromium_without_console_errors(runs, tmp_path):
    pytest.importorskip("matplotlib")
    # the console check itself works: a page that throws is seen
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><p>x</p><script>throw new Error('boom')</script>")
    assert any("Uncaught Error: boom" in line for line in _console(_chromium(
        bad.as_uri(), tmp_path, "--dump-dom").stderr))

    page = write_report([runs[k] for k in ("teacher", "student", "staged", "sweep")],
                        tmp_path / "report.html")
    shot = tmp_path / "report.png"
    done = _chromium(page.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1280,2400")
    assert done.returncode == 0, done.stderr[-2000:]
    assert not _console(done.stderr), _console(done.stderr)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium(probed.as_uri(), tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<title>images 3/3</title>" in dom.stdout  # every plot decoded in the browser
    seen = Page(dom.stdout)
    assert len(seen.tables["runs-table"]) == 4 and seen.h3[:10] == [
        f"Example {i}" for i in range(1, 11)]
    assert "teacher says lamp 9 ." in dom.stdout and "sweep" in dom.stdout
    if os.environ.get("RAYDISTILL_REPORT_SCREENSHOT"):  # to look at it by hand
        shutil.copy(shot, os.environ["RAYDISTILL_REPORT_SCREENSHOT"])


def test_a_staged_runs_clock_is_its_loops_own_across_stages_and_resumes(tmp_path):
    """With ``elapsed_s`` (the loop's seconds of training, counted across a resume), a stage's
    points sit at their own clock and the next stage starts at the last one's end: not at its
    train_seconds (one call's wall time: the segment after a resume, start-up included)."""
    from raydistill.report import run_curve

    run = tmp_path / "run"
    # stage 0 resumed at step 10: its call's wall time (50 s) is neither its training (35 s)
    _write(run / "stage0_sft", "metrics.json",
           {"val": _val([10, 20], [5.0, 8.0], seconds=[20.0, 35.0]), "final_step": 20,
            "train_seconds": 50.0, "resumed_from": [10]})
    _write(run / "stage1_kd", "metrics.json",
           {"val": _val([5, 10], [9.0, 11.0], seconds=[4.0, 9.5]), "final_step": 10,
            "train_seconds": 30.0})
    _write(run, "metrics.json", {"stages": [
        {"name": "stage0_sft", "dir": str(run / "stage0_sft"), "final_step": 20,
         "train_seconds": 50.0},
        {"name": "stage1_kd", "dir": str(run / "stage1_kd"), "final_step": 10,
         "train_seconds": 30.0}]})
    assert run_curve(run, "rouge2") == [(20.0, 10, 5.0), (35.0, 20, 8.0), (39.0, 25, 9.0),
                                        (44.5, 30, 11.0)]
