"""A command's console holds raydistill's lines; Ray's own go, whole, to the run's ray.log.

Run as a user runs it: ``raydistill distill CONFIG`` in a fresh process, which starts its own
local Ray (a train worker, Ray Data's split coordinator, Ray Train's controller and its
placement-group cleaner, then test generation on Ray Data actors in the driver)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent
# What Ray printed on a demo's console before (issue 30): none of it may reach the console.
RAY_NOISE = ("TrainController", "SplitCoordinator", "PlacementGroupCleaner", "Failed to query",
             "Execution plan of Dataset", "Starting execution of Dataset", "Progress bars disabled",
             "Started a local Ray instance", "Checkpoint successfully created", "Autoscaler status",
             # Ray 2.60's core worker on every restartable pool actor (runtime.actor_restarts)
             "constructor arguments in the object store", "core_worker.cc",
             "`ray_remote_args` is deprecated")


@pytest.mark.timeout(300)
def test_a_distill_run_prints_its_own_lines_and_logs_rays_to_its_folder(
        tiny_bart_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "out"
    config = {"method": "kd", "teacher": str(tiny_bart_dir), "student_decoder_layers": 1,
              "data_dir": str(tiny_data_dir), "output_dir": str(out), "train_batch_size": 2,
              "max_steps": 6, "log_every_n_steps": 2, "val_check_interval": 1.0,
              "do_predict": True, "eval_beams": 1, "num_workers": 1, "cpus_per_worker": 1,
              "logger": "none"}
    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYDISTILL_VERBOSE")}
    done = subprocess.run([str(BIN / "raydistill"), "distill", str(path)], env=env,
                          capture_output=True, text=True, timeout=280)
    console = done.stdout + done.stderr
    assert done.returncode == 0, console
    log = out / "ray.log"
    assert f"[raydistill] Ray's own log lines go to {log}" in console
    assert "[raydistill] step 6/6" in console and "[raydistill] validation" in console
    assert [line for line in console.splitlines() if any(n in line for n in RAY_NOISE)] == []
    # Ray's lines are in the run's folder: the workers' and actors' and the driver's Ray Data.
    text = log.read_text()
    assert "(TrainController pid=" in text and "Started training worker group" in text
    assert "Execution plan of Dataset" in text
    assert "Autoscaler status" not in text  # its status every few seconds: only its events
    assert len(console.splitlines()) < 30, console
