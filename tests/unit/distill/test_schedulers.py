"""Temperature and weight schedulers against TextBrewer's formulas written out per position."""

from __future__ import annotations

import math

import pytest
import torch

import raydistill.schedulers as public
from raydistill.distill import schedulers as S
from raydistill.errors import ConfigError


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def naive_flsw(s, t, base, beta, gamma, eps=1e-4):
    rows_s, rows_t = s.reshape(-1, s.size(-1)).tolist(), t.reshape(-1, t.size(-1)).tolist()
    w = []
    for v, u in zip(rows_s, rows_t):
        nv, nu = math.sqrt(sum(x * x for x in v)) + eps, math.sqrt(sum(x * x for x in u)) + eps
        w.append((1 - sum((a / nv) * (b / nu) for a, b in zip(v, u))) ** gamma)
    mean = sum(w) / len(w)
    return [base + (mean - wi) * beta for wi in w]


def naive_cwsm(s, base, beta):
    w = []
    for v in s.reshape(-1, s.size(-1)).tolist():
        e = [math.exp(x) for x in v]
        w.append(1 / (max(e) / sum(e) + 1e-3))
    mean = sum(w) / len(w)
    return [base + (mean - wi) * beta for wi in w]


def test_constant_temperature_returns_base():
    assert S.constant_temperature_scheduler(_rand(3, 4, seed=0), _rand(3, 4, seed=1), 4) == 4


@pytest.mark.parametrize("shape", [(7, 5), (2, 3, 5)])
@pytest.mark.parametrize("eps", [None, 1e-2])
def test_flsw_matches_formula(shape, eps):
    s, t = _rand(*shape, seed=2), _rand(*shape, seed=3)
    sched = S.flsw_temperature_scheduler_builder(1.5, 2) if eps is None else S.flsw_temperature_scheduler_builder(1.5, 2, eps)
    tau = sched(s, t, 4.0)
    assert tau.shape == shape[:-1]
    naive = naive_flsw(s, t, 4.0, 1.5, 2, 1e-4 if eps is None else eps)
    assert tau.flatten().tolist() == pytest.approx(naive)


@pytest.mark.parametrize("shape", [(7, 5), (2, 3, 5)])
def test_cwsm_matches_formula(shape):
    s = _rand(*shape, seed=4)
    tau = S.cwsm_temperature_scheduler_builder(0.7)(s, _rand(*shape, seed=5), 2.0)
    assert tau.shape == shape[:-1]
    assert tau.flatten().tolist() == pytest.approx(naive_cwsm(s, 2.0, 0.7))


def test_adaptive_temperatures_carry_no_gradient():
    s = _rand(4, 5, seed=6).requires_grad_()
    for sched in (S.flsw_temperature_scheduler_builder(1, 1), S.cwsm_temperature_scheduler_builder(1)):
        assert not sched(s, _rand(4, 5, seed=7), 4).requires_grad


def test_temperature_map_and_builder_from_config_form():
    assert set(S.TEMPERATURE_SCHEDULER) == {"none", "constant", "flsw", "cwsm"}
    s, t = _rand(6, 5, seed=8), _rand(6, 5, seed=9)
    assert S.build_temperature_scheduler("none")(s, t, 3) == 3
    assert S.build_temperature_scheduler(["constant"])(s, t, 3) == 3
    flsw = S.build_temperature_scheduler(["flsw", 1, 2])
    assert torch.equal(flsw(s, t, 4), S.flsw_temperature_scheduler_builder(1, 2)(s, t, 4))
    flsw_eps = S.build_temperature_scheduler(("flsw", 1, 2, 0.5))
    assert flsw_eps(s, t, 4).tolist() == pytest.approx(naive_flsw(s, t, 4, 1, 2, 0.5))
    cwsm = S.build_temperature_scheduler(["cwsm", 0.5])
    assert cwsm(s, t, 4).tolist() == pytest.approx(naive_cwsm(s, 4, 0.5))
    assert S.normalize_temperature_spec(["flsw", 1, 2]) == ("flsw", 1, 2)
    assert S.normalize_temperature_spec(["constant"]) == "constant"


@pytest.mark.parametrize("spec, expected", [
    ("flsw", "['flsw', beta, gamma]"),
    (["cwsm"], "['cwsm', beta]"),
    (["cwsm", 1, 2], "['cwsm', beta]"),
    (["constant", 2], "'constant'"),
    (["flsw", "a", 2], "beta must be a number"),
    (["flsw", 1, 2, 0], "eps must be > 0"),
    ("fls", "did you mean 'flsw'"),
    ([], "unknown"),
])
def test_bad_temperature_specs_are_explained(spec, expected):
    with pytest.raises(ConfigError) as err:
        S.build_temperature_scheduler(spec)
    assert expected in str(err.value) and "temperature_scheduler" in str(err.value)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 1.0])
def test_weight_schedulers_take_textbrewers_call_shape(ratio):
    """Code written against TextBrewer's WEIGHT_SCHEDULER runs unchanged: f(x), x = step/total."""
    assert public.WEIGHT_SCHEDULER["linear_decay"](ratio) == 1 - ratio
    assert public.WEIGHT_SCHEDULER["linear_growth"](ratio) == ratio
    assert public.linear_decay_weight_scheduler(ratio) == 1 - ratio
    assert set(public.WEIGHT_SCHEDULER) == {"linear_decay", "linear_growth"}  # TextBrewer's keys
    assert set(public.WEIGHT_SCHEDULER_NAMES) == {"none", "constant", "linear_decay",
                                                  "linear_growth"}  # what a config may name
    # TextBrewer's temperature schedulers: f(logits_S, logits_T, base) and the builders
    logits = torch.zeros(2, 3)
    assert public.TEMPERATURE_SCHEDULER["constant"](logits, logits, 4.0) == 4.0
    tau = public.TEMPERATURE_SCHEDULER["flsw"](1.0, 2.0)(logits + 1, logits + 2, 4.0)
    assert tau.shape == (2,)


def test_scheduled_weight_follows_textbrewer_loop():
    # TextBrewer: weight = scheduler(global_step / total) after each optimizer step; base before the first.
    assert S.scheduled_weight(0.5, "linear_decay", 0, 10) == 0.5
    assert S.scheduled_weight(0.5, "linear_decay", 3, 10) == pytest.approx(0.7)
    assert S.scheduled_weight(0.5, "linear_growth", 3, 10) == pytest.approx(0.3)
    assert S.scheduled_weight(0.5, "none", 7, 10) == 0.5
    assert S.scheduled_weight(0.5, "linear_decay", 10, 10) == 0.0
    assert S.scheduled_weight(0.5, "linear_decay", 12, 10) == 0.0  # past the end: the final weight


@pytest.mark.parametrize("args, expected", [
    ((1, "linear_decay", 0, 0), "total_steps=0"),
    ((1, "linear_decay", -1, 10), "step=-1"),
    ((1, "linear_decy", 1, 10), "did you mean 'linear_decay'"),
])
def test_scheduled_weight_errors(args, expected):
    with pytest.raises(ConfigError) as err:
        S.scheduled_weight(*args)
    assert expected in str(err.value)


def test_public_module_reexports_the_same_objects():
    for name in public.__all__:
        assert getattr(public, name) is getattr(S, name)
    assert set(public.__all__) == set(S.__all__)
