"""``raydistill tune`` end to end: 3 tiny trials, ASHA, Ctrl-C after the first trial, --resume.

One sweep serves every test here (each Ray Train fit costs ~30 s of fixed overhead): it is
interrupted the way Ctrl-C interrupts Tune (SIGUSR1, which Tune treats alike and pytest leaves
alone) as soon as the first trial completes, then resumed from its output_dir.
"""

from __future__ import annotations

import csv
import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from ray.tune import Callback

from raydistill.demo import write_dataset
from raydistill.tune.sweep import ATTEMPTS_FILE, load_sweep, run_sweep

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


class InterruptAfterFirstTrial(Callback):
    """Send Tune its stop signal once, when the first trial completes.

    Tune pickles callbacks with the experiment, so the restored sweep gets this object back:
    the marker file keeps it from firing a second time.
    """

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGUSR1)


def sweep_config(teacher: str, data: Path, out: Path) -> dict:
    return {
        "method": "kd", "teacher": teacher, "data_dir": str(data), "output_dir": str(out),
        "task": "summarization", "num_workers": 1, "cpus_per_worker": 1,
        "train_batch_size": 4, "eval_batch_size": 8, "max_source_length": 48,
        "max_target_length": 16, "val_max_target_length": 16, "eval_beams": 1,
        "learning_rate": 1.0e-3, "max_steps": 5, "val_check_interval": 0.25,  # a report per step
        "log_every_n_steps": 5, "do_predict": False, "seed": 0,
        "tune": {
            "search_space": {
                # Trial 0 trains 2 steps (2 reports: completes); trials 1 and 2 would report 5
                # and 4 times, so ASHA's max_t=3 stops them early whatever their scores.
                "max_steps": {"grid": [2, 5, 4]},
                "student_decoder_layers": {"choice": [1, 2]},
                "temperature": {"uniform": [1.0, 4.0]},
            },
            "scheduler": "asha", "grace_period": 1, "reduction_factor": 2, "max_t": 3,
            "latency_examples": 4,
        },
    }


@pytest.fixture(scope="module")
def sweep(ray_session, tiny_bart_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    data = write_dataset(root / "data", n_train=16, n_val=6, n_test=2)
    out = root / "sweep"
    path = root / "tune.yaml"
    path.write_text(yaml.safe_dump(sweep_config(str(tiny_bart_dir), data, out)))
    cfg, settings = load_sweep(path)

    t0 = time.time()
    first = run_sweep(cfg, settings, callbacks=[InterruptAfterFirstTrial(root / "fired")])
    t1 = time.time()
    second = run_sweep(cfg, settings, resume=str(out))
    print(f"\n[timing] interrupted sweep {t1 - t0:.0f} s, resumed sweep {time.time() - t1:.0f} s")
    return {"first": first, "second": second, "out": out, "settings": settings}


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(sweep):
    first, second = sweep["first"], sweep["second"]
    # Tune creates trials as slots free up: at the interrupt some did not exist yet.
    assert first["interrupted"] and first["trials"] < 3 and not first["rows"]
    assert not second["interrupted"] and second["experiment_path"] == first["experiment_path"]
    assert first["finished"], "the first trial completed before the interrupt"
    ids = [r["trial_id"] for r in second["rows"]]
    assert set(first["finished"]) < set(ids) and len(ids) == 3
    for trial_id in first["finished"]:  # restored as finished: its driver never ran again
        attempts = (sweep["out"] / "trials" / trial_id / ATTEMPTS_FILE).read_text().splitlines()
        assert len(attempts) == 1, attempts
    row = {r["trial_id"]: r for r in second["rows"]}[first["finished"][0]]
    assert row["status"] == "completed" and row["reports"] == 2  # its results were kept


def test_asha_stops_trials_early(sweep):
    rows = {r["max_steps"]: r for r in sweep["second"]["rows"]}
    assert sorted(rows) == [2, 4, 5]
    for steps in (4, 5):  # more reports than max_t: stopped at or before the 3rd
        assert rows[steps]["status"] == "early_stopped" and rows[steps]["reports"] <= 3
    assert rows[2]["status"] in ("completed", "early_stopped") and rows[2]["reports"] <= 2


def test_results_table_plot_and_best_model(sweep):
    out, keys = sweep["out"], sweep["settings"].keys
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3  # one row per trial
    assert set(keys) | {"trial_id", "status", "rouge2", "parameters", "ms_per_example",
                        "pareto"} <= set(table[0])
    for row in table:
        assert float(row["rouge2"]) >= 0.0
        assert int(row["parameters"]) > 0 and float(row["ms_per_example"]) > 0
        assert row["student_decoder_layers"] in ("1", "2")
    assert any(row["pareto"] == "True" for row in table)
    md = (out / "results.md").read_text().splitlines()
    assert len(md) == 2 + 3 and "rouge2 (best)" in md[0]
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = sweep["second"]["best"]
    assert (out / "best" / "config.json").exists() and (out / "best" / "model.safetensors").exists()
    assert (out / "trials" / best["trial_id"] / "best_tfmr" / "config.json").exists()


def test_raydistill_tune_ends_with_the_sweeps_results_page(sweep, capsys):
    from raydistill.cli import _sweep_report, build_parser

    assert build_parser().parse_args(["tune", "tune.yaml"]).after_sweep is _sweep_report
    page = _sweep_report(sweep["out"])
    assert capsys.readouterr().out == f"report: {page}\n" and page == sweep["out"] / "report.html"
    html = page.read_text()
    assert all(r["trial_id"] in html for r in sweep["second"]["rows"])  # the trials' table
    assert "data:image/png;base64," in html  # the Pareto plot, inline


def test_tensorboard_events_for_every_trial(sweep):
    out = sweep["out"]
    for row in sweep["second"]["rows"]:
        assert list((out / "trials" / row["trial_id"] / "tensorboard").glob("events.out.tfevents*"))
    assert list((out / "ray_results").rglob("events.out.tfevents*"))  # Tune's own TBX logger


def test_no_placement_group_left_behind(sweep, ray_session):
    # Trials stopped by ASHA lose their Train controller; Train's cleaner then removes the
    # workers' placement group a few seconds later. Nothing may stay reserved or waiting.
    deadline = time.time() + 60
    while True:
        stuck = {pg: v["state"] for pg, v in ray_session.util.placement_group_table().items()
                 if v["state"] in ("PENDING", "CREATED", "RESCHEDULING")}
        if not stuck or time.time() > deadline:
            break
        time.sleep(2)
    assert not stuck, stuck


def test_a_trial_whose_workers_ask_for_every_cpu_is_placed(ray_session, tiny_bart_dir,
                                                           tmp_path):
    """jobs/configs/tune_summarization.yaml's cpus_per_worker: 2 on a 2-CPU Ray: the trial
    driver's sliver of a CPU comes out of its workers' share, so the trial runs (it used to wait
    for its worker group forever)."""
    data = write_dataset(tmp_path / "data", n_train=8, n_val=4, n_test=2)
    config = sweep_config(str(tiny_bart_dir), data, tmp_path / "sweep")
    config.update(cpus_per_worker=2, max_steps=2)
    config["tune"] = {"search_space": {"temperature": {"grid": [2.0]}}, "latency_examples": 2}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg, settings = load_sweep(path)
    t0 = time.time()
    summary = run_sweep(cfg, settings)
    assert time.time() - t0 < 300
    assert [r["status"] for r in summary["rows"]] == ["completed"]


def test_a_staged_sweep_trains_its_first_stage_once_for_every_trial(ray_session, tiny_bart_dir,
                                                                     tmp_path):
    """stages: [sft, kd] swept over the kd stage's temperature: the sft stage trains once, in
    shared_stages/, and both trials start from its best student with its copied layers; a
    resumed sweep does not train it again."""
    import json

    from safetensors.torch import load_file

    data = write_dataset(tmp_path / "data", n_train=8, n_val=4, n_test=2)
    config = sweep_config(str(tiny_bart_dir), data, tmp_path / "sweep")
    config.update(method="sft", max_steps=2, student_decoder_layers=1,
                  stages=[{"num_workers": 0, "max_steps": 3, "val_check_steps": 3},
                          {"method": "kd", "alpha_hid": 1.0}])
    config["tune"] = {"search_space": {"temperature": {"grid": [1.0, 4.0]}},
                      "latency_examples": 2, "max_concurrent_trials": 1}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg, settings = load_sweep(path)
    summary = run_sweep(cfg, settings)
    assert [r["status"] for r in summary["rows"]] == ["completed", "completed"]
    shared = tmp_path / "sweep" / "shared_stages" / "stage0_sft"
    done = json.loads((shared / "stage_done.json").read_text())
    assert done["summary"]["final_step"] == 3
    best = load_file(str(shared / "best_tfmr" / "model.safetensors"))
    trials = sorted((tmp_path / "sweep" / "trials").iterdir())
    assert len(trials) == 2
    for trial in trials:
        hp = json.loads((trial / "hparams.json").read_text())
        assert hp["method"] == "kd" and hp["student"] == str(shared / "best_tfmr")
        start = load_file(str(trial / "student" / "model.safetensors"))
        assert all(torch_equal(start[k], best[k]) for k in best)
        assert json.loads((trial / "student_layers.json").read_text()) == done["layers"]
    assert sorted(r["temperature"] for r in summary["rows"]) == [1.0, 4.0]


def torch_equal(a, b) -> bool:
    return bool((a == b).all())
