"""The tune: section: search-space parsing and every check that runs before Ray starts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from raydistill.config import DistillConfig, load_config
from raydistill.errors import ConfigError
from raydistill.tune.space import (
    Dimension,
    default_max_concurrent,
    flatten,
    nest,
    param_space,
    parse_dimension,
    parse_tune_section,
    trial_config,
)

REPO = Path(__file__).resolve().parents[3]
BASE = DistillConfig(data_dir="d", output_dir="o", teacher="t")
TB = BASE.replace(distillation={"temperature": 4, "kd_loss_weight": 1.0, "hard_label_weight": 0.5})


def section(**space) -> dict:
    return {"search_space": space}


def test_every_kind_parses_and_becomes_a_tune_domain():
    s = parse_tune_section({
        "search_space": {"temperature": {"uniform": [1.0, 8.0]},
                         "learning_rate": {"loguniform": ["1e-5", "1e-3"]},
                         "student_decoder_layers": {"grid": [1, 2]},
                         "alpha_hid": {"choice": [0.0, 1.0]},
                         "seed": {"randint": [0, 10]}},
        "num_samples": 3, "scheduler": "asha", "grace_period": 1, "max_t": 4,
        "reduction_factor": 2}, BASE)
    assert s.keys == ["temperature", "learning_rate", "student_decoder_layers", "alpha_hid", "seed"]
    assert s.search_space[1] == Dimension("learning_rate", "loguniform", (1e-5, 1e-3))
    assert s.search_space[4].representatives() == (0, 9)  # randint excludes hi, as Tune's
    space = param_space(s)
    from ray import tune

    assert isinstance(space["temperature"], tune.search.sample.Float)
    assert space["student_decoder_layers"] == {"grid_search": [1, 2]}
    assert isinstance(space["alpha_hid"], tune.search.sample.Categorical)


def test_grid_search_alg_enumerates_choices_and_rejects_ranges():
    s = parse_tune_section({**section(alpha_hid={"choice": [0.0, 1.0]}), "search_alg": "grid"},
                           BASE)
    assert param_space(s)["alpha_hid"] == {"grid_search": [0.0, 1.0]}
    with pytest.raises(ConfigError, match="search_alg: grid"):
        parse_tune_section({**section(temperature={"uniform": [1, 2]}), "search_alg": "grid"}, BASE)


def test_nested_distillation_keys_merge_into_the_section():
    s = parse_tune_section(section(**{"distillation.kd_loss_weight": {"grid": [0.5, 1.0]}}), TB)
    assert param_space(s) == {"distillation": {"kd_loss_weight": {"grid_search": [0.5, 1.0]}}}
    cfg = trial_config(TB, {"distillation": {"kd_loss_weight": 0.5}, "seed": 3}, "trials/x")
    assert cfg.distillation == {"temperature": 4, "kd_loss_weight": 0.5, "hard_label_weight": 0.5}
    assert cfg.output_dir == "trials/x" and cfg.run_name is None and cfg.seed == 3
    assert TB.distillation["kd_loss_weight"] == 1.0  # the base is never changed


def test_nest_and_flatten_are_inverse():
    flat = {"temperature": 2.0, "distillation.kd_loss_weight": 0.5, "distillation.temperature": 8}
    assert nest(flat) == {"temperature": 2.0,
                          "distillation": {"kd_loss_weight": 0.5, "temperature": 8}}
    assert flatten(nest(flat)) == flat


@pytest.mark.parametrize("data,cfg,pattern", [
    ({**section(temperature={"grid": [2]}), "serach_alg": "random"}, BASE,
     r"tune: unknown key 'serach_alg'; did you mean 'search_alg'\?"),
    ({**section(temperature={"grid": [2]}), "shceduler": "asha"}, BASE,
     r"unknown key 'shceduler'; did you mean 'scheduler'\?"),
    (section(temprature={"grid": [2]}), BASE,
     r"'temprature' is not a config key; did you mean 'temperature'\?"),
    (section(**{"distillation.kd_los_weight": {"grid": [1]}}), TB,
     r"'kd_los_weight' is not a DistillationConfig key; did you mean 'kd_loss_weight'\?"),
    (section(**{"distillation.kd_loss_weight": {"grid": [1]}}), BASE,
     r"has no effect.*add one"),
    (section(alpha_ce={"grid": [0.5]}), TB, r"'alpha_ce' has no effect"),
    (section(temperature={"grid": [2.0]}), TB, r"search distillation.temperature instead"),
    (section(**{"learning_rate.x": {"grid": [1]}}), BASE, r"only distillation\.\* keys"),
    (section(output_dir={"grid": ["a", "b"]}), BASE, r"the sweep sets it"),
    (section(student_decoder_layers={"grid": [1]}), BASE.replace(student="s"),
     r"no effect with student: set"),
    ({}, BASE, r"tune.search_space must map"),
    (None, BASE, r"needs a `tune:` section"),
])
def test_bad_keys_are_named_before_ray_starts(data, cfg, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_tune_section(data, cfg)


@pytest.mark.parametrize("spec,pattern", [
    ({"gird": [1, 2]}, r"unknown kind 'gird'; did you mean 'grid'\?"),
    ([1, 2], r"must be one of \{grid"),
    ({"grid": []}, r"non-empty list"),
    ({"uniform": [4.0, 1.0]}, r"lo=4.0 must be below hi=1.0"),
    ({"uniform": [1.0]}, r"must be \[lo, hi\]"),
    ({"loguniform": [0.0, 1.0]}, r"must be > 0"),
    ({"randint": [1.5, 3]}, r"must be an integer"),
    ({"uniform": ["a", 2]}, r"must be a number"),
])
def test_bad_search_specs(spec, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_dimension("temperature", spec)


@pytest.mark.parametrize("extra,pattern", [
    ({"search_alg": "bayes"}, r"search_alg='bayes' is not allowed"),
    ({"scheduler": "asha", "reduction_factor": 1}, r"reduction_factor=1 must be > 1"),
    ({"scheduler": "asha", "grace_period": 3, "max_t": 2}, r"max_t=2 must be >= grace_period=3"),
    ({"grace_period": 2}, r"grace_period has no effect with scheduler: fifo"),
    ({"metric": "rouge3"}, r"metric='rouge3' is not reported.*did you mean"),
    ({"mode": "maximum"}, r"mode='maximum' is not allowed"),
    ({"num_samples": 0}, r"num_samples=0 is out of range"),
    ({"max_concurrent_trials": 0}, r"max_concurrent_trials=0 must be >= 1"),
    ({"num_samples": 2.5}, r"num_samples=2.5 must be an integer"),
])
def test_bad_settings(extra, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_tune_section({**section(temperature={"grid": [2.0]}), **extra}, BASE)


def test_every_sampled_value_must_give_a_valid_trial():
    with pytest.raises(ConfigError, match=r"invalid trial config \(temperature=-1.0\).*range"):
        parse_tune_section(section(temperature={"grid": [2.0, -1.0]}), BASE)
    with pytest.raises(ConfigError, match=r"alpha_ce=0.0, alpha_mlm=0.0.*nothing to train"):
        parse_tune_section(section(alpha_ce={"grid": [0.0]}, alpha_mlm={"grid": [0.0, 1.0]}),
                           BASE.replace(alpha_hid=0.0))
    with pytest.raises(ConfigError, match=r"DistillationConfig.kd_loss_weight=-1"):
        parse_tune_section(section(**{"distillation.kd_loss_weight": {"uniform": [-1, 1]}}), TB)


def test_student_layers_cannot_exceed_the_teachers(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"encoder_layers": 4, "decoder_layers": 2}))
    cfg = BASE.replace(teacher=str(tmp_path))
    parse_tune_section(section(student_decoder_layers={"grid": [1, 2]}), cfg)
    with pytest.raises(ConfigError, match=r"3 layers is more than the teacher's 2"):
        parse_tune_section(section(student_decoder_layers={"randint": [1, 4]}), cfg)


@pytest.mark.skipif(importlib.util.find_spec("optuna") is not None, reason="optuna is installed")
def test_optional_search_alg_needs_its_package():
    with pytest.raises(ConfigError, match=r"pip install optuna"):
        parse_tune_section({**section(temperature={"uniform": [1, 2]}), "search_alg": "optuna"},
                           BASE)


@pytest.mark.parametrize("cfg_kw,space,cluster,expected", [
    ({}, {}, {"CPU": 2.0}, 1),  # 2 // (1 + 0.01): the driver's 0.01 CPU counts
    ({"num_workers": 2}, {}, {"CPU": 8.0}, 3),
    ({}, {"num_workers": {"grid": [1, 4]}}, {"CPU": 8.0}, 1),
    ({"cpus_per_worker": 2}, {}, {"CPU": 1.0}, 1),  # never below 1
    ({"use_gpu": True, "num_workers": 2}, {}, {"CPU": 16.0, "GPU": 4.0}, 2),
])
def test_default_max_concurrent_trials(cfg_kw, space, cluster, expected):
    cfg = BASE.replace(**cfg_kw)
    s = parse_tune_section(section(temperature={"grid": [2.0]}, **space), cfg)
    assert default_max_concurrent(cfg, s, cluster) == expected


def test_shipped_tune_config_validates():
    cfg, extras = load_config(REPO / "jobs" / "configs" / "tune_summarization.yaml",
                              extra_keys=("tune",))
    s = parse_tune_section(extras["tune"], cfg)
    assert s.scheduler == "asha" and len(s.search_space) >= 3


def test_cli_registers_the_tune_command():
    from raydistill.cli import build_parser

    args = build_parser().parse_args(["tune", "c.yaml", "tune.num_samples=4", "--resume", "runs/x"])
    assert args.command == "tune" and args.resume == "runs/x"
    assert args.overrides == ["tune.num_samples=4"]


def test_cli_reports_a_bad_tune_section_in_one_line(tmp_path, capsys):
    from raydistill.cli import main

    p = tmp_path / "c.yaml"
    p.write_text("teacher: t\ndata_dir: d\noutput_dir: o\n"
                 "tune: {search_space: {temperature: {grid: [2.0]}}, num_sample: 3}\n")
    assert main(["tune", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("raydistill tune: error: tune: unknown key 'num_sample'; "
                   "did you mean 'num_samples'?")


def test_expected_trials_count_grid_combinations_times_samples():
    from raydistill.tune.space import expected_trials

    space = section(student_decoder_layers={"grid": [1, 2, 3]}, alpha_hid={"choice": [0.0, 1.0]},
                    temperature={"uniform": [1, 2]})
    assert expected_trials(parse_tune_section({**space, "num_samples": 2}, BASE)) == 6
    grid = section(student_decoder_layers={"grid": [1, 2, 3]}, alpha_hid={"choice": [0.0, 1.0]})
    assert expected_trials(parse_tune_section({**grid, "search_alg": "grid"}, BASE)) == 6


def test_settings_round_trip_through_sweep_json():
    import json

    from raydistill.tune.sweep import _settings_dict

    s = parse_tune_section({**section(temperature={"uniform": [1.0, 8.0]},
                                      student_decoder_layers={"grid": [1, 2]}),
                            "scheduler": "asha", "max_t": 4, "reduction_factor": 3}, BASE)
    stored = json.loads(json.dumps(_settings_dict(s)))  # what --resume reads back
    assert parse_tune_section(stored, BASE) == s and _settings_dict(s) == stored


def test_gkd_beta_and_lmbda_are_searched_like_any_key():
    gkd = BASE.replace(method="gkd", gkd={"lmbda": 1.0})
    s = parse_tune_section(section(**{"gkd.beta": {"grid": [0.1, 0.9]},
                                      "gkd.lmbda": {"choice": [0.5, 1.0]}}), gkd)
    assert param_space(s)["gkd"]["beta"] == {"grid_search": [0.1, 0.9]}
    cfg = trial_config(gkd, {"gkd": {"beta": 0.9, "lmbda": 0.5}}, "trials/x")
    assert cfg.gkd_settings.beta == 0.9 and cfg.gkd_settings.lmbda == 0.5
    with pytest.raises(ConfigError, match=r"'lmda' is not a gkd key; did you mean 'lmbda'"):
        parse_tune_section(section(**{"gkd.lmda": {"grid": [1.0]}}), gkd)
    with pytest.raises(ConfigError, match=r"read only with method: gkd"):
        parse_tune_section(section(**{"gkd.beta": {"grid": [0.1]}}), BASE)
    with pytest.raises(ConfigError, match=r"gkd.beta=1.5 is out of range"):
        parse_tune_section(section(**{"gkd.beta": {"uniform": [0.5, 1.5]}}), gkd)


@pytest.mark.parametrize("cfg,space", [
    (DistillConfig(data_dir="d", output_dir="o", teacher="t", num_workers=0), {}),
    (BASE, {"num_workers": {"choice": [0, 1]}}),
])
def test_a_sweep_refuses_in_process_trials(cfg, space):
    from raydistill.tune.sweep import check_trial_fits

    settings = parse_tune_section(section(**(space or {"temperature": {"choice": [1.0, 2.0]}})), cfg)
    with pytest.raises(ConfigError, match="num_workers: 0 trains in the process that starts it"):
        check_trial_fits(cfg, settings)


def test_a_staged_config_searches_its_last_stage():
    """The search space's keys set the last stage's values: checked against that stage."""
    staged = BASE.replace(method="sft", stages=[{"max_steps": 5}, {"method": "gkd"}])
    s = parse_tune_section(section(**{"gkd.beta": {"choice": [0.1, 0.9]}}), staged)
    assert s.keys == ["gkd.beta"]
    with pytest.raises(ConfigError, match="the gkd: section is read only with method: gkd"):
        parse_tune_section(section(**{"gkd.beta": {"choice": [0.1, 0.9]}}),
                           BASE.replace(method="sft", stages=[{"method": "gkd"}, {"max_steps": 5}]))
