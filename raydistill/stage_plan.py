"""The config side of ``stages:``: every stage's whole config, from the base and its overrides.

A base module (it imports only the config): ``DistillConfig.__post_init__`` validates a staged
config with it, and ``raydistill.stages`` runs the stages it plans.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from raydistill.config import DistillConfig, merge
from raydistill.errors import ConfigError

# Keys a stage may not change: where the run lives and what it starts from are the base's
# (a later stage starts from the previous stage's student), and the test split is scored once,
# on the last stage's student.
FIXED_KEYS = ("stages", "output_dir", "storage_path", "run_name", "student",
              "student_encoder_layers", "student_decoder_layers", "do_predict", "model_cache_dir")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage: its index, name, folder (under the run's output_dir) and whole config."""

    index: int
    name: str
    dir: Path
    cfg: DistillConfig


def stage_name(index: int, overrides: dict[str, Any], method: str) -> str:
    return f"stage{index}_{overrides.get('name') or method}"


def plan_stages(cfg: DistillConfig) -> list[Stage]:
    """``cfg.stages`` -> the validated config of every stage (raises ConfigError naming the
    stage and key). Used at construction (``DistillConfig.__post_init__``) and to run."""
    if not isinstance(cfg.stages, list) or not cfg.stages:
        raise ConfigError("stages: must be a non-empty list of mappings (the keys each stage "
                          "changes), for example [{method: sft}, {method: kd}]")
    base = {k: v for k, v in cfg.to_dict().items() if k != "stages"}
    out = Path(cfg.output_dir)
    stages: list[Stage] = []
    for i, overrides in enumerate(cfg.stages):
        where = f"stages[{i}]"
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where}: expected a mapping of the keys this stage changes, got "
                              f"{overrides!r}")
        fixed = sorted(set(overrides) & set(FIXED_KEYS))
        if fixed:
            raise ConfigError(f"{where}: {fixed[0]} cannot change between stages (every stage "
                              "shares output_dir and starts from the previous stage's student); "
                              "set it at the top of the config")
        name = overrides.get("name")
        if name is not None and (not isinstance(name, str) or not name.replace("_", "").replace(
                "-", "").isalnum()):
            raise ConfigError(f"{where}: name={name!r} must be letters, digits, '-' or '_' "
                              "(it names the stage's folder)")
        changes = {k: v for k, v in overrides.items() if k != "name"}
        data = merge(base, changes)
        # A stage's method decides which method sections apply: a gkd: section given at the top
        # for a later gkd stage must not fail an sft stage.
        if data.get("method") != "gkd" and "gkd" not in changes:
            data["gkd"] = None
        method = data.get("method")
        folder = out / stage_name(i, overrides, str(method))
        data.update(output_dir=str(folder), do_predict=False, stages=None,
                    run_name=f"{cfg.run_name}_{folder.name}" if cfg.run_name else None)
        if i > 0:  # the previous stage's best student, whole: its depth is settled
            data.update(student=str(stages[-1].dir / "best_tfmr"), student_encoder_layers=None,
                        student_decoder_layers=None)
        try:
            stage_cfg = DistillConfig.from_dict(data, source=where)
        except ConfigError as err:
            msg = str(err)
            raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from None
        stages.append(Stage(i, folder.name, folder, stage_cfg))
    return stages


__all__ = ["FIXED_KEYS", "Stage", "plan_stages", "stage_name"]
