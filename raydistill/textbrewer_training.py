"""TextBrewer's ``TrainingConfig``, and the from_dict / JSON plumbing TextBrewer's configs share.

A low module (it imports only ``raydistill.errors``): ``raydistill.config`` validates a YAML's
``training:`` section with it, and ``raydistill.distill.textbrewer`` builds ``DistillationConfig``
on the same base.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from raydistill.errors import ConfigError


# ---- validation helpers ---------------------------------------------------------------------

def _closest(name: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(where: str, data: Mapping[str, Any], valid: Sequence[str]) -> None:
    for key in data:
        if key not in valid:
            raise ConfigError(f"{where}: unknown key {key!r}{_closest(str(key), valid)}; valid keys: {', '.join(valid)}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _jsonable(value: Any) -> Any:
    """Tuples -> lists, recursively, so to_dict() output is what a TextBrewer JSON holds."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class _FromDict:
    """from_dict / from_json_file / to_dict shared by the config dataclasses."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Build from a dict (a TextBrewer config dict or ``to_dict()``/``asdict()`` output)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
        _check_keys(cls.__name__, data, [f.name for f in dataclasses.fields(cls)])  # type: ignore[arg-type]
        return cls(**data)

    @classmethod
    def from_json_file(cls, path: Union[str, Path]):
        """Build from a JSON file holding one object of this config's keys."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found; pass the path of a {cls.__name__} JSON file") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{err.lineno}: invalid JSON ({err.msg}); fix the file") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict; ``from_dict(to_dict())`` gives an equal config."""
        return _jsonable(dataclasses.asdict(self))  # type: ignore[call-overload]


# ---- TrainingConfig -------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainingConfig(_FromDict):
    """TextBrewer's ``TrainingConfig``: same fields and defaults.

    ``fp16_opt_level`` (Apex), ``data_parallel`` and ``local_rank`` are accepted so TextBrewer
    files load, and have no effect on Ray (Ray Train sets up distributed data parallel itself).
    Unlike TextBrewer, constructing it does not create ``output_dir``.
    """

    gradient_accumulation_steps: int = 1
    ckpt_frequency: int = 1
    ckpt_epoch_frequency: int = 1
    ckpt_steps: Optional[int] = None
    log_dir: Optional[str] = None
    output_dir: str = "./saved_models"
    device: str = "cuda"
    fp16: bool = False
    fp16_opt_level: str = "O1"
    data_parallel: bool = False
    local_rank: int = -1

    def __post_init__(self) -> None:
        name = type(self).__name__
        for key in ("gradient_accumulation_steps", "ckpt_frequency", "ckpt_epoch_frequency"):
            value = getattr(self, key)
            _require(_is_int(value) and value >= 1, f"{name}.{key}={value!r} must be an integer >= 1")
        _require(self.ckpt_steps is None or (_is_int(self.ckpt_steps) and self.ckpt_steps >= 1),
                 f"{name}.ckpt_steps={self.ckpt_steps!r} must be null or an integer >= 1")
        if isinstance(self.device, torch.device):  # TextBrewer accepts torch.device; keep a str
            object.__setattr__(self, "device", str(self.device))
        for key in ("output_dir", "device"):
            _require(isinstance(getattr(self, key), str), f"{name}.{key}={getattr(self, key)!r} must be a string")
        _require(self.log_dir is None or isinstance(self.log_dir, str),
                 f"{name}.log_dir={self.log_dir!r} must be null or a string")
        for key in ("fp16", "data_parallel"):
            _require(isinstance(getattr(self, key), bool), f"{name}.{key}={getattr(self, key)!r} must be true or false")
        _require(self.fp16_opt_level in ("O0", "O1", "O2", "O3"),
                 f"{name}.fp16_opt_level={self.fp16_opt_level!r} must be one of 'O0', 'O1', 'O2', 'O3'")
        _require(_is_int(self.local_rank) and self.local_rank >= -1,
                 f"{name}.local_rank={self.local_rank!r} must be an integer >= -1 (it has no effect on Ray)")


# ---- the training: section of a raydistill config ------------------------------------------

# TextBrewer TrainingConfig field -> (our key, conversion). Only fields given explicitly apply.
_TRAINING_KEYS = {
    "gradient_accumulation_steps": ("gradient_accumulation_steps", lambda v: v),
    "ckpt_frequency": ("val_check_interval", lambda v: 1.0 / v),
    "ckpt_steps": ("val_check_steps", lambda v: v),
    "log_dir": ("log_dir", lambda v: v),
    "output_dir": ("output_dir", lambda v: v),
    "device": ("use_gpu", lambda v: str(v).startswith("cuda")),
    "fp16": ("precision", lambda v: "fp16" if v else "auto"),
}


def apply_training_section(cfg: Any) -> None:
    """Map a TextBrewer ``training:`` dict onto a ``DistillConfig`` under construction (validated by TrainingConfig first).

    A key still at its default takes the mapped value; a key set to another value is a conflict.
    ``ckpt_epoch_frequency``, ``fp16_opt_level``, ``data_parallel`` and ``local_rank`` are accepted
    and have no effect: we check and checkpoint at least once per epoch, autocast needs no opt
    level, and Ray Train places the workers.
    """
    TrainingConfig.from_dict(cfg.training)  # same fields, defaults and errors as TextBrewer
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for key, value in cfg.training.items():
        if key not in _TRAINING_KEYS:
            continue
        ours, convert = _TRAINING_KEYS[key]
        new, current = convert(value), getattr(cfg, ours)
        if current not in (defaults[ours], new):
            raise ConfigError(f"training.{key}={value!r} conflicts with {ours}={current!r}; "
                              "set one of them")
        object.__setattr__(cfg, ours, new)  # still construction: the config is frozen after


__all__ = ["TrainingConfig", "apply_training_section"]
