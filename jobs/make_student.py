"""Pipeline stage 1: a smaller student that copies alternating teacher layers (make_student).

    python jobs/make_student.py jobs/configs/make_student.yaml [key=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/make_student.py jobs/configs/make_student.yaml \
        teacher=/mnt/shared/runs/teacher/best_tfmr save_path=/mnt/shared/runs/student_6_3

parse config -> load the teacher -> copy layers and save -> summary. No Ray: one process on
whichever node runs the script; distill's workers then read ``save_path`` (shared storage on a
cluster).
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path

from raydistill.config import merge, parse_overrides, read_yaml
from raydistill.errors import ConfigError, RaydistillError
from raydistill.models.student import make_student
from raydistill.train.run import check_model_dir

# Config keys -> make_student arguments; the names match DistillConfig's where they overlap.
KEYS = {"teacher": "teacher", "save_path": "save_path", "student_encoder_layers": "e",
        "student_decoder_layers": "d", "e_layers_to_copy": "e_layers_to_copy",
        "d_layers_to_copy": "d_layers_to_copy",
        "copy_first_teacher_layers": "copy_first_teacher_layers"}
REQUIRED = ("teacher", "save_path")


def require_durable(path: str | None, key: str) -> None:
    """Inside a Ray job, refuse relative output paths: they would land in the job's copy of
    ``--working-dir``, a temporary folder on one node that Ray deletes."""
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    if in_job and path and "://" not in path and not os.path.isabs(path):
        raise ConfigError(f"{key}={path} is relative: a Ray job runs in a temporary copy of "
                          f"--working-dir, so it would be lost; pass an absolute path on storage "
                          f"every node sees, e.g. {key}=/mnt/shared/{path}")


def read_config(path: str, overrides: list[str]) -> dict:
    data = merge(read_yaml(path), parse_overrides(overrides))
    for key in data:
        if key not in KEYS:
            close = difflib.get_close_matches(key, list(KEYS), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(KEYS)}"
            raise ConfigError(f"{path}: unknown key {key!r}; {hint}")
    for key in REQUIRED:
        if not data.get(key):
            raise ConfigError(f"{path}: {key} is required (set {key}: PATH or {key}=PATH)")
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML config (jobs/configs/make_student.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)

    # 1. Config.
    cfg = read_config(args.config, args.overrides)
    require_durable(cfg["save_path"], "save_path")
    check_model_dir(cfg["teacher"], "teacher")

    # 2. The student: the teacher's class and config with fewer layers, weights copied.
    student, e_ids, d_ids = make_student(**{KEYS[k]: v for k, v in cfg.items()})

    # 3. Summary.
    n_student = sum(p.numel() for p in student.parameters())
    print(f"[make_student] {Path(cfg['save_path'])}: {n_student / 1e6:.2f}M parameters; "
          f"encoder layers {e_ids} and decoder layers {d_ids} copied from {cfg['teacher']}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RaydistillError as err:
        print(f"jobs/make_student.py: error: {err}", file=sys.stderr)
        sys.exit(2)
