"""The config: YAML + overrides -> a frozen, validated DistillConfig; every shipped config loads."""

from pathlib import Path

import pytest

from raydistill.config import DistillConfig, load_config, parse_overrides
from raydistill.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
BASE = {"data_dir": "d", "output_dir": "o", "teacher": "t"}


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


# Stage configs of other jobs (make_student, pseudo_label, evaluate, tune) have tests of their own.
NOT_DISTILL = {"make_student.yaml", "pseudo_label.yaml", "evaluate.yaml"}
DISTILL_CONFIGS = [p for p in sorted((REPO / "jobs" / "configs").glob("*.yaml")) if p.name not in NOT_DISTILL]


@pytest.mark.parametrize("path", DISTILL_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path):
    cfg, extras = load_config(path, extra_keys=("tune",))
    assert cfg.method in ("sft", "kd", "pl", "gkd")
    if cfg.distillation is not None:  # the TextBrewer section validates too
        from raydistill.distill.textbrewer import DistillationConfig

        DistillationConfig.from_dict(cfg.distillation)


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    p = write(tmp_path, "method: kd\nteacher: [unclosed\ndata_dir: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg and ":3:" in msg and "\n" not in msg


def test_unknown_key_suggests_the_closest(tmp_path):
    p = write(tmp_path, "teacher: t\ndata_dir: d\noutput_dir: o\ntemprature: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'temprature'.*did you mean 'temperature'"):
        load_config(p)


def test_overrides_are_typed_and_nested(tmp_path):
    p = write(tmp_path, "teacher: t\ndata_dir: d\noutput_dir: o\ndistillation: {temperature: 4}\n")
    cfg, _ = load_config(p, ["learning_rate=1e-4", "max_steps=7", "freeze_encoder=true",
                             "distillation.temperature=8"])
    assert cfg.learning_rate == pytest.approx(1e-4)
    assert cfg.max_steps == 7 and cfg.freeze_encoder is True
    assert cfg.distillation == {"temperature": 8}
    assert parse_overrides(["a.b.c=x"]) == {"a": {"b": {"c": "x"}}}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["learning_rate"])


@pytest.mark.parametrize("key,value,pattern", [
    ("temperature", -1.0, r"temperature=-1.0 is out of range: it must be > 0"),
    ("train_batch_size", 0, r"train_batch_size=0 is out of range: it must be >= 1"),
    ("val_check_interval", 1.5, r"val_check_interval=1.5 .*\(0, 1\]"),
    ("val_check_interval", 0.0, r"val_check_interval=0.0 .*\(0, 1\]"),
    ("learning_rate", "abc", r"learning_rate='abc' has the wrong type: expected float"),
    ("max_epochs", 1.5, r"max_epochs=1.5 has the wrong type"),
    ("method", "distil", r"method='distil' is not allowed: choose one of sft, kd, pl"),
    ("label_smoothing", 1.0, r"label_smoothing=1.0 is out of range"),
    ("adam_beta2", 1.0, r"adam_beta2=1.0 is out of range: it must be in \[0, 1\)"),
    ("logit_cache_top_k", 0, r"logit_cache_top_k=0 is out of range: it must be >= 1"),
    ("logit_cache", "disk", r"logit_cache='disk' is not allowed: choose one of parquet, memory"),
    ("num_workers", -1, r"num_workers=-1 is out of range: it must be >= 0"),
])
def test_bad_values_name_key_value_and_range(key, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        DistillConfig.from_dict({**BASE, key: value})


def test_memory_logit_cache_needs_cached_logits():
    with pytest.raises(ConfigError, match="logit_cache: memory .*is_caching_logits: true"):
        DistillConfig.from_dict({**BASE, "method": "kd", "teacher": "t", "logit_cache": "memory"})
    cfg = DistillConfig.from_dict({**BASE, "method": "kd", "teacher": "t", "logit_cache": "memory",
                                   "distillation": {"is_caching_logits": True}})
    assert cfg.logit_cache == "memory"


def test_all_loss_weights_zero_is_an_error():
    with pytest.raises(ConfigError, match="all 0"):
        DistillConfig.from_dict({**BASE, "alpha_ce": 0, "alpha_mlm": 0, "alpha_hid": 0})


def test_kd_needs_a_teacher_and_required_paths():
    with pytest.raises(ConfigError, match="method: kd needs teacher"):
        DistillConfig.from_dict({"data_dir": "d", "output_dir": "o"})
    with pytest.raises(ConfigError, match="data_dir is required"):
        DistillConfig.from_dict({"output_dir": "o", "teacher": "t"})


def test_config_is_frozen_and_round_trips():
    cfg = DistillConfig.from_dict({**BASE, "learning_rate": "3e-4"})  # YAML 1.1 reads 3e-4 as str
    assert cfg.learning_rate == pytest.approx(3e-4)
    with pytest.raises(Exception):
        cfg.learning_rate = 1.0  # frozen: configs never change during training
    assert DistillConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(temperature=3.0).temperature == 3.0 and cfg.temperature == 2.0
    assert cfg.val_metric == "rouge2"
    assert cfg.replace(task="translation").val_metric == "bleu"


def test_sections_flatten(tmp_path):
    p = write(tmp_path, "model: {teacher: t}\ndata: {data_dir: d}\noutput_dir: o\noptim: {learning_rate: 0.01}\n")
    cfg, _ = load_config(p)
    assert (cfg.teacher, cfg.data_dir, cfg.learning_rate) == ("t", "d", 0.01)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_textbrewer_training_section_maps_onto_run_keys():
    cfg = DistillConfig.from_dict({"teacher": "t", "data_dir": "d", "training": {
        "gradient_accumulation_steps": 4, "ckpt_frequency": 2, "ckpt_steps": 100, "log_dir": "tb",
        "output_dir": "saved", "device": "cpu", "fp16": True, "fp16_opt_level": "O2",
        "data_parallel": True, "local_rank": -1}})
    assert (cfg.gradient_accumulation_steps, cfg.val_check_interval, cfg.val_check_steps) == (4, 0.5, 100)
    assert (cfg.log_dir, cfg.output_dir, cfg.use_gpu, cfg.precision) == ("tb", "saved", False, "fp16")
    with pytest.raises(ConfigError, match="conflicts with gradient_accumulation_steps=2"):
        DistillConfig.from_dict({**BASE, "gradient_accumulation_steps": 2,
                                 "training": {"gradient_accumulation_steps": 4}})
    with pytest.raises(ConfigError, match="ckpt_frequncy"):
        DistillConfig.from_dict({**BASE, "training": {"ckpt_frequncy": 2}})


def test_num_workers_0_trains_in_this_process_and_cannot_restart():
    cfg = DistillConfig.from_dict({**BASE, "num_workers": 0})
    assert cfg.world_size == 1 and DistillConfig.from_dict({**BASE, "num_workers": 3}).world_size == 3
    with pytest.raises(ConfigError, match=r"max_failures=1 needs Ray Train workers .*--resume"):
        DistillConfig.from_dict({**BASE, "num_workers": 0, "max_failures": 1})


def test_num_workers_0_keeps_checkpoints_on_local_disk(tmp_path):
    from raydistill.train.run import local_run_dir

    cfg = DistillConfig.from_dict({**BASE, "num_workers": 0})
    assert local_run_dir(cfg, str(tmp_path), "r") == str(tmp_path / "r")
    assert local_run_dir(DistillConfig.from_dict(BASE), str(tmp_path), "r") is None
    with pytest.raises(ConfigError, match="num_workers: 0 keeps its checkpoints on this machine"):
        local_run_dir(cfg, "s3://bucket/runs", "r")
