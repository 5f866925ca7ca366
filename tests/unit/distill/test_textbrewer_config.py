"""TrainingConfig / DistillationConfig: TextBrewer defaults, TextBrewer JSON, validation, projections."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from raydistill.distill.textbrewer import (
    PROJ_MAP,
    DistillationConfig,
    IntermediateMatch,
    TrainingConfig,
    build_projections,
    projection_param_groups,
)
from raydistill.errors import ConfigError

# TextBrewer 0.2.x constructor defaults (configurations.py).
TEXTBREWER_TRAINING_DEFAULTS = dict(
    gradient_accumulation_steps=1, ckpt_frequency=1, ckpt_epoch_frequency=1, ckpt_steps=None, log_dir=None,
    output_dir="./saved_models", device="cuda", fp16=False, fp16_opt_level="O1", data_parallel=False, local_rank=-1)
TEXTBREWER_DISTILLATION_DEFAULTS = dict(
    temperature=4, temperature_scheduler="none", hard_label_weight=0, hard_label_weight_scheduler="none",
    kd_loss_type="ce", kd_loss_weight=1, kd_loss_weight_scheduler="none", probability_shift=False,
    intermediate_matches=None, is_caching_logits=False)

TEXTBREWER_JSON = {
    "temperature": 8,
    "temperature_scheduler": ["flsw", 1, 2],
    "hard_label_weight": 0.5,
    "kd_loss_type": "ce",
    "kd_loss_weight_scheduler": "linear_decay",
    "intermediate_matches": [
        {"layer_T": 4, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
         "proj": ["linear", 32, 64, {"lr": 1e-3}]},
        {"layer_T": 2, "layer_S": 1, "feature": "attention", "loss": "attention_mse", "weight": 0.5},
    ],
}


def _defaults(cls):
    return {f.name: f.default for f in dataclasses.fields(cls)}


def test_defaults_equal_textbrewers():
    assert _defaults(TrainingConfig) == TEXTBREWER_TRAINING_DEFAULTS
    assert _defaults(DistillationConfig) == TEXTBREWER_DISTILLATION_DEFAULTS
    assert DistillationConfig().intermediate_matches == ()  # TextBrewer also stores an empty list


def test_textbrewer_json_loads_as_is(tmp_path):
    path = tmp_path / "distill.json"
    path.write_text(json.dumps(TEXTBREWER_JSON))
    config = DistillationConfig.from_json_file(path)
    assert config.temperature == 8 and config.temperature_scheduler == ("flsw", 1, 2)
    assert config.hard_label_weight == 0.5 and config.kd_loss_weight_scheduler == "linear_decay"
    first, second = config.intermediate_matches
    assert first == IntermediateMatch(layer_T=4, layer_S=1, weight=1, loss="hidden_mse", feature="hidden",
                                      proj=("linear", 32, 64, {"lr": 1e-3}))
    assert second.proj is None and second.feature == "attention" and second.weight == 0.5
    assert config == DistillationConfig.from_dict(TEXTBREWER_JSON)


def test_round_trips_through_to_dict_asdict_and_json():
    config = DistillationConfig.from_dict(TEXTBREWER_JSON)
    assert DistillationConfig.from_dict(config.to_dict()) == config
    assert DistillationConfig.from_dict(dataclasses.asdict(config)) == config  # what travels to Ray workers
    assert DistillationConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.to_dict()["intermediate_matches"][0]["proj"] == ["linear", 32, 64, {"lr": 1e-3}]
    training = TrainingConfig(gradient_accumulation_steps=4, ckpt_steps=100)
    assert TrainingConfig.from_dict(training.to_dict()) == training


def test_three_element_proj_gets_empty_options_like_textbrewer():
    match = IntermediateMatch.from_dict({"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "cos",
                                         "weight": 1, "proj": ["tanh", 8, 16]})
    assert match.proj == ("tanh", 8, 16, {})


def test_pair_losses_take_two_layers():
    match = IntermediateMatch.from_dict({"layer_T": [0, 2], "layer_S": [0, 1], "feature": "hidden",
                                         "loss": "fsp", "weight": 1, "proj": ["linear", 8, 16]})
    assert match.layer_T == (0, 2) and match.layer_S == (0, 1)


def test_configs_are_frozen():
    config = DistillationConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.temperature = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainingConfig().fp16 = True  # type: ignore[misc]


def test_training_config_has_no_side_effects(tmp_path):
    out = tmp_path / "never_created"
    config = TrainingConfig(output_dir=str(out), device=torch.device("cpu"), local_rank=0, data_parallel=True)
    assert not out.exists()
    assert config.device == "cpu"


def _match(**overrides):
    base = {"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
    base.update(overrides)
    return {"intermediate_matches": [base]}


@pytest.mark.parametrize("data, expected", [
    ({"temprature": 4}, ["unknown key 'temprature'", "did you mean 'temperature'"]),
    ({"temperature": -1}, ["temperature=-1", "> 0"]),
    ({"temperature": 0}, ["temperature=0"]),
    ({"temperature_scheduler": "flsw"}, ["['flsw', beta, gamma]"]),
    ({"temperature_scheduler": "cosine"}, ["temperature_scheduler='cosine'", "'none', 'constant'"]),
    ({"kd_loss_type": "kl"}, ["kd_loss_type='kl'", "'ce' or 'mse'"]),
    ({"kd_loss_weight_scheduler": "linear_decy"}, ["kd_loss_weight_scheduler", "did you mean 'linear_decay'"]),
    ({"hard_label_weight_scheduler": "cosine"}, ["hard_label_weight_scheduler='cosine'"]),
    ({"kd_loss_weight": -1}, ["kd_loss_weight=-1", ">= 0"]),
    ({"kd_loss_weight": 0}, ["all loss weights are 0"]),
    ({"probability_shift": "yes"}, ["probability_shift='yes'"]),
    (_match(loss="hiden_mse"), ["intermediate_matches[0].loss='hiden_mse'", "did you mean 'hidden_mse'"]),
    (_match(feature="hiddens"), ["intermediate_matches[0].feature='hiddens'", "did you mean 'hidden'"]),
    (_match(layers_S=0), ["intermediate_matches[0]: unknown key 'layers_S'", "did you mean 'layer_S'"]),
    ({"intermediate_matches": [{"layer_T": 0, "layer_S": 0, "loss": "cos", "feature": "hidden"}]},
     ["intermediate_matches[0]: missing key(s) weight"]),
    (_match(loss="fsp"), ["intermediate_matches[0].layer_T=0", "two ints"]),
    (_match(layer_S=[0, 1]), ["intermediate_matches[0].layer_S=[0, 1]", "one int"]),
    (_match(weight=-2), ["intermediate_matches[0].weight=-2"]),
    (_match(proj=["lineer", 32, 64]), ["proj[0]='lineer'", "did you mean 'linear'"]),
    (_match(proj=["linear", 32]), ["proj=['linear', 32]", "[name, dim_S, dim_T]"]),
    (_match(proj=["linear", 32, "64"]), ["dim_S and dim_T must be positive ints"]),
    (_match(proj=["linear", 32, 64, 0.001]), ["proj[3]=0.001", "dict"]),
    (_match(proj=["linear", 32, 64, {"lr": -1}]), ["proj[3]['lr']=-1"]),
])
def test_validation_errors_name_the_key_and_the_fix(data, expected):
    with pytest.raises(ConfigError) as err:
        DistillationConfig.from_dict(data)
    message = str(err.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, message


@pytest.mark.parametrize("data, expected", [
    ({"gradient_accumulaton_steps": 2}, "did you mean 'gradient_accumulation_steps'"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps=0"),
    ({"ckpt_steps": 0}, "ckpt_steps=0"),
    ({"fp16_opt_level": "O4"}, "fp16_opt_level='O4'"),
    ({"local_rank": -2}, "local_rank=-2"),
])
def test_training_config_validation(data, expected):
    with pytest.raises(ConfigError) as err:
        TrainingConfig.from_dict(data)
    assert expected in str(err.value)


def test_from_json_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        DistillationConfig.from_json_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"temperature": 4,\n "kd_loss_type": }')
    with pytest.raises(ConfigError, match=r"bad.json:2: invalid JSON"):
        DistillationConfig.from_json_file(bad)


def test_zero_base_weight_with_a_growth_schedule_is_allowed():
    config = DistillationConfig(kd_loss_weight=0, kd_loss_weight_scheduler="linear_growth")
    assert config.kd_loss_weight == 0
    assert DistillationConfig(kd_loss_weight=0, **_match()).kd_loss_weight == 0  # a match carries the loss


# ---- projections ----------------------------------------------------------------------------

def test_build_projections_one_per_match_as_textbrewer():
    config = DistillationConfig.from_dict(TEXTBREWER_JSON)
    torch.manual_seed(0)
    projections = build_projections(config)
    assert len(projections) == 2 and projections[1] is None
    linear = projections[0]
    assert isinstance(linear, torch.nn.Linear) and (linear.in_features, linear.out_features) == (32, 64)
    assert torch.count_nonzero(linear.bias) == 0
    assert abs(linear.weight.std().item() - 0.02) < 0.004  # N(0, 0.02) init
    relu, tanh = PROJ_MAP["relu"](4, 6), PROJ_MAP["tanh"](4, 6)
    assert [type(m) for m in relu] == [torch.nn.Linear, torch.nn.ReLU]
    assert [type(m) for m in tanh] == [torch.nn.Linear, torch.nn.Tanh]
    assert relu(torch.randn(3, 4)).min() >= 0


def test_projection_param_groups_get_their_own_lr():
    config = DistillationConfig.from_dict({"intermediate_matches": [
        {"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
         "proj": ["linear", 32, 64, {"lr": 1e-3}]},
        {"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
         "proj": ["relu", 32, 64, {"weight_decay": 0.1}]},
        {"layer_T": 2, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1},
    ]})
    projections = build_projections(config)
    groups = projection_param_groups(config, projections, default_lr=5e-5)
    assert [g["lr"] for g in groups] == [1e-3, 5e-5]
    assert groups[1]["weight_decay"] == 0.1 and "weight_decay" not in groups[0]
    assert groups[0]["params"] == list(projections[0].parameters())
    student = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW([{"params": student.parameters()}, *groups], lr=5e-5)
    assert [g["lr"] for g in optimizer.param_groups] == [5e-5, 1e-3, 5e-5]
    with pytest.raises(ConfigError, match="build_projections"):
        projection_param_groups(config, projections[:2], default_lr=5e-5)
