"""TextBrewer's temperature and loss-weight schedulers (``textbrewer/schedulers.py``, ``presets.py``).

Pure functions. Two kinds:

* temperature schedulers ``f(logits_S, logits_T, base_temperature) -> float | Tensor``; flsw and
  cwsm return one temperature per position, shape ``logits.shape[:-1]``. In a config they are
  written as TextBrewer writes them: ``'none'``, ``'constant'``, ``['flsw', beta, gamma]``
  (optionally ``['flsw', beta, gamma, eps]``) or ``['cwsm', beta]``.
* weight schedulers ``f(x) -> float`` with ``x = global_step / total_steps``, TextBrewer's call
  shape (``WEIGHT_SCHEDULER['linear_decay'](0.3) == 0.7``). As in TextBrewer, ``linear_decay``
  and ``linear_growth`` *replace* the configured weight (1 -> 0 and 0 -> 1) rather than scale it;
  use :func:`scheduled_weight` to get the weight a TextBrewer run uses at a given step.
"""

from __future__ import annotations

import difflib
from typing import Callable, Sequence, Union

import torch
from torch import Tensor

from raydistill.errors import ConfigError

TemperatureScheduler = Callable[[Tensor, Tensor, float], Union[float, Tensor]]
WeightScheduler = Callable[[float], float]
TemperatureSpec = Union[str, Sequence[object]]


def _did_you_mean(name: object, options: Sequence[str]) -> str:
    """' (did you mean 'x'?)' for the closest option, or '' when none is close."""
    close = difflib.get_close_matches(str(name), list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---- temperature ----------------------------------------------------------------------------

def constant_temperature_scheduler(logits_S: Tensor, logits_T: Tensor, base_temperature: float) -> float:
    """The configured temperature, unchanged."""
    return base_temperature


def flsw_temperature_scheduler_builder(beta: float, gamma: float, eps: float = 1e-4) -> TemperatureScheduler:
    """Focal-loss-style sample weighting (arXiv:1911.07471), as TextBrewer's latest version.

    Per position: ``w = (1 - cos(logits_S, logits_T)) ** gamma`` (logits normalized by
    ``norm + eps``), ``tau = base + (mean(w) - w) * beta``; the mean runs over all positions.
    Logits (N, V) or (B, L, V) -> tau (N,) or (B, L); no gradient flows through tau.
    """

    def flsw_temperature_scheduler(logits_S: Tensor, logits_T: Tensor, base_temperature: float) -> Tensor:
        with torch.no_grad():
            v, t = logits_S.detach(), logits_T.detach()
            v = v / (torch.norm(v, dim=-1, keepdim=True) + eps)
            t = t / (torch.norm(t, dim=-1, keepdim=True) + eps)
            w = torch.pow(1 - (v * t).sum(dim=-1), gamma)
            return base_temperature + (w.mean() - w) * beta

    return flsw_temperature_scheduler


def cwsm_temperature_scheduler_builder(beta: float) -> TemperatureScheduler:
    """Confidence-weighted by student max (arXiv:1911.07471), as TextBrewer.

    Per position: ``w = 1 / (max softmax(logits_S) + 1e-3)``, ``tau = base + (mean(w) - w) * beta``.
    Logits (N, V) or (B, L, V) -> tau (N,) or (B, L); no gradient flows through tau.
    """

    def cwsm_temperature_scheduler(logits_S: Tensor, logits_T: Tensor, base_temperature: float) -> Tensor:
        with torch.no_grad():
            v_max = torch.softmax(logits_S.detach(), dim=-1).max(dim=-1)[0]
            w = 1 / (v_max + 1e-3)
            return base_temperature + (w.mean() - w) * beta

    return cwsm_temperature_scheduler


TEMPERATURE_SCHEDULER: dict[str, Callable[..., object]] = {
    "none": constant_temperature_scheduler,
    "constant": constant_temperature_scheduler,
    "flsw": flsw_temperature_scheduler_builder,
    "cwsm": cwsm_temperature_scheduler_builder,
}
"""Name -> scheduler ('none', 'constant') or builder taking the list's parameters ('flsw', 'cwsm')."""

_TEMPERATURE_PARAMS = {"none": (), "constant": (), "flsw": ("beta", "gamma", "eps"), "cwsm": ("beta",)}
_TEMPERATURE_REQUIRED = {"none": 0, "constant": 0, "flsw": 2, "cwsm": 1}
_TEMPERATURE_USAGE = "'none', 'constant', ['flsw', beta, gamma] or ['cwsm', beta]"


def normalize_temperature_spec(spec: TemperatureSpec) -> str | tuple:
    """Check a ``temperature_scheduler`` value; returns the name or ``(name, *numbers)``.

    Raises ConfigError naming the value and the accepted forms.
    """
    is_seq = isinstance(spec, (list, tuple))
    name = spec[0] if is_seq and len(spec) > 0 else spec
    params = tuple(spec[1:]) if is_seq else ()
    if not isinstance(name, str) or name not in TEMPERATURE_SCHEDULER:
        raise ConfigError(
            f"temperature_scheduler={spec!r} is unknown{_did_you_mean(name, list(TEMPERATURE_SCHEDULER))};"
            f" use {_TEMPERATURE_USAGE}"
        )
    names = _TEMPERATURE_PARAMS[name]
    if not _TEMPERATURE_REQUIRED[name] <= len(params) <= len(names):
        need = f"['{name}', {', '.join(names[:_TEMPERATURE_REQUIRED[name]])}]" if names else f"'{name}'"
        raise ConfigError(
            f"temperature_scheduler={spec!r} has {len(params)} parameter(s); write it as {need}"
            + (" (optionally with eps last)" if name == "flsw" else "")
        )
    for pname, value in zip(names, params):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"temperature_scheduler={spec!r}: {pname} must be a number, got {value!r}")
    if name == "flsw" and len(params) == 3 and params[2] <= 0:
        raise ConfigError(f"temperature_scheduler={spec!r}: eps must be > 0 (default 1e-4)")
    return (name, *params) if params else name


def build_temperature_scheduler(spec: TemperatureSpec) -> TemperatureScheduler:
    """The scheduler function for a config value, e.g. ``['flsw', 1, 2]`` -> flsw(beta=1, gamma=2)."""
    spec = normalize_temperature_spec(spec)
    if isinstance(spec, str):
        return TEMPERATURE_SCHEDULER[spec]  # type: ignore[return-value]
    return TEMPERATURE_SCHEDULER[spec[0]](*spec[1:])  # type: ignore[return-value]


# ---- loss weights ---------------------------------------------------------------------------

def linear_decay_weight_scheduler(x: float) -> float:
    """``1 - x`` for ``x = global_step / total_steps``: 1 -> 0 over training (TextBrewer's)."""
    return 1 - x


def linear_growth_weight_scheduler(x: float) -> float:
    """``x`` for ``x = global_step / total_steps``: 0 -> 1 over training (TextBrewer's)."""
    return x


WEIGHT_SCHEDULER: dict[str, WeightScheduler] = {
    "linear_decay": linear_decay_weight_scheduler,
    "linear_growth": linear_growth_weight_scheduler,
}
"""TextBrewer's ``WEIGHT_SCHEDULER``: name -> ``f(x)``, ``x = global_step / total_steps``; the
result *replaces* the configured weight, as in TextBrewer."""

# The config also accepts TextBrewer's default 'none' and our 'constant': the weight stays.
_KEEP_WEIGHT = ("none", "constant")
WEIGHT_SCHEDULER_NAMES = (*_KEEP_WEIGHT, *WEIGHT_SCHEDULER)


def check_weight_scheduler(key: str, name: object) -> str:
    """Return ``name`` if it names a weight scheduler ('none', 'constant' or a WEIGHT_SCHEDULER
    key), else raise ConfigError naming ``key``."""
    if not isinstance(name, str) or name not in WEIGHT_SCHEDULER_NAMES:
        raise ConfigError(
            f"{key}={name!r} is unknown{_did_you_mean(name, WEIGHT_SCHEDULER_NAMES)};"
            f" use one of {sorted(WEIGHT_SCHEDULER_NAMES)}"
        )
    return name


def scheduled_weight(base_weight: float, scheduler: str, step: int, total_steps: int) -> float:
    """The loss weight TextBrewer uses after ``step`` optimizer updates out of ``total_steps``.

    TextBrewer sets ``weight = scheduler(global_step / total_steps)`` after each optimizer step,
    so the batches before the first update use the configured weight; we do the same. A step past
    ``total_steps`` (TextBrewer stops there) keeps the final weight.
    """
    check_weight_scheduler("weight scheduler", scheduler)
    if total_steps <= 0:
        raise ConfigError(f"total_steps={total_steps} must be >= 1 (the number of optimizer updates)")
    if step < 0:
        raise ConfigError(f"step={step} must be >= 0 (optimizer updates done so far)")
    if step == 0 or scheduler in _KEEP_WEIGHT:
        return float(base_weight)
    return float(WEIGHT_SCHEDULER[scheduler](min(step / total_steps, 1.0)))


__all__ = [
    "TEMPERATURE_SCHEDULER",
    "WEIGHT_SCHEDULER",
    "WEIGHT_SCHEDULER_NAMES",
    "build_temperature_scheduler",
    "check_weight_scheduler",
    "constant_temperature_scheduler",
    "cwsm_temperature_scheduler_builder",
    "flsw_temperature_scheduler_builder",
    "linear_decay_weight_scheduler",
    "linear_growth_weight_scheduler",
    "normalize_temperature_spec",
    "scheduled_weight",
]
