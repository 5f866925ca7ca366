"""The jobs/*.py stage scripts: their configs load, typos are named, and inside a Ray job they
refuse output paths that would vanish with the job's working-dir copy."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from raydistill.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
JOBS = REPO / "jobs"
STAGES = ("make_student", "pseudo_label", "evaluate", "distill", "tune")


def script(name: str):
    """Import jobs/NAME.py as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"jobs_{name}", JOBS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["make_student", "pseudo_label", "evaluate"])
def test_stage_config_loads_into_the_stage_function(name):
    cfg = script(name).read_config(str(JOBS / "configs" / f"{name}.yaml"), ["batch_size=8"]
                                   if name != "make_student" else ["student_decoder_layers=1"])
    assert cfg and all(isinstance(k, str) for k in cfg)
    assert cfg.get("batch_size", 8) == 8 and cfg.get("student_decoder_layers", 1) == 1


@pytest.mark.parametrize("name, typo, fix", [("make_student", "save_pth", "save_path"),
                                              ("pseudo_label", "num_beam", "num_beams"),
                                              ("evaluate", "modle", "model")])
def test_unknown_key_names_the_closest(name, typo, fix):
    with pytest.raises(ConfigError, match=rf"unknown key '{typo}'; did you mean '{fix}'"):
        script(name).read_config(str(JOBS / "configs" / f"{name}.yaml"), [f"{typo}=x"])


@pytest.mark.parametrize("name", STAGES)
def test_relative_outputs_are_refused_only_inside_a_ray_job(name, monkeypatch):
    require = script(name).require_durable
    require("runs/x", "output_dir")  # by hand: relative to where you run it, fine
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray sets for a job's driver
    with pytest.raises(ConfigError, match="output_dir=runs/x is relative.*output_dir=/mnt/shared/runs/x"):
        require("runs/x", "output_dir")
    require("/mnt/shared/runs/x", "output_dir")
    require("s3://bucket/runs/x", "storage_path")
    require(None, "storage_path")


@pytest.mark.parametrize("name", STAGES)
def test_scripts_import_the_installed_package(name):
    text = (JOBS / f"{name}.py").read_text()
    assert "sys.path" not in text and "from raydistill" in text
    assert 'if __name__ == "__main__":' in text


@pytest.mark.parametrize("name", ["pseudo_label", "evaluate", "distill", "tune"])
def test_every_job_that_starts_ray_takes_verbose(name, monkeypatch):
    from raydistill import console
    from raydistill.jobkit import parse_args

    monkeypatch.setenv(console.VERBOSE_ENV, "0")
    parser = script(name).build_parser()
    positional = [a for a in parser._actions if not a.option_strings and a.required
                  and a.nargs is None]
    parse_args(parser, ["x.yaml"] * len(positional))
    assert not console.verbose()
    parse_args(parser, ["x.yaml"] * len(positional) + ["--verbose"])
    assert console.verbose()
