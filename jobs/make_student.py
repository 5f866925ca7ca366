"""Pipeline stage 1: a smaller student that copies alternating teacher layers (make_student).

    python jobs/make_student.py jobs/configs/make_student.yaml [key=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/make_student.py jobs/configs/make_student.yaml \
        teacher=/mnt/shared/runs/teacher/best_tfmr save_path=/mnt/shared/runs/student_6_3

parse config -> load the teacher -> copy layers and save -> summary. No Ray: one process on
whichever node runs the script; distill's workers then read ``save_path`` (shared storage on a
cluster). ``teacher`` may be a Hub id (``teacher=facebook/bart-large-xsum``, pinned with
``@revision``), downloaded into ``model_cache_dir`` (default: Hugging Face's cache).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from raydistill.jobkit import read_stage_config, require_durable, run_stage
from raydistill.models.student import make_student

# Config keys -> make_student arguments; the names match DistillConfig's where they overlap.
KEYS = {"teacher": "teacher", "save_path": "save_path", "student_encoder_layers": "e",
        "student_decoder_layers": "d", "e_layers_to_copy": "e_layers_to_copy",
        "d_layers_to_copy": "d_layers_to_copy",
        "copy_first_teacher_layers": "copy_first_teacher_layers",
        "model_cache_dir": "model_cache_dir"}
REQUIRED = ("teacher", "save_path")


def read_config(path: str, overrides: list[str]) -> dict:
    return read_stage_config(path, overrides, KEYS, REQUIRED)


def build_parser() -> argparse.ArgumentParser:
    """This script's arguments (docs/cli.md is generated from them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML config (jobs/configs/make_student.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    # 1. Config.
    cfg = read_config(args.config, args.overrides)
    require_durable(cfg["save_path"], "save_path")

    # 2. The student: the teacher's class and config with fewer layers, weights copied (a Hub
    # id is resolved first: found in the cache or downloaded, with one-line errors).
    student, e_ids, d_ids = make_student(**{KEYS[k]: v for k, v in cfg.items()})

    # 3. Summary.
    n_student = sum(p.numel() for p in student.parameters())
    print(f"[make_student] {Path(cfg['save_path'])}: {n_student / 1e6:.2f}M parameters; "
          f"encoder layers {e_ids} and decoder layers {d_ids} copied from {cfg['teacher']}")
    return 0


if __name__ == "__main__":
    run_stage(main, "jobs/make_student.py")
