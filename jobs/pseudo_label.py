"""Pipeline stage 2 (method: pl): the teacher writes the targets the student will train on.

    python jobs/pseudo_label.py jobs/configs/pseudo_label.yaml [key=value ...] [--overwrite]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/pseudo_label.py jobs/configs/pseudo_label.yaml \
        teacher=/mnt/shared/runs/teacher/best_tfmr data_dir=/mnt/shared/data/scitldr \
        out=/mnt/shared/runs/scitldr_pl_data num_workers=4 num_gpus=1

parse config -> the split to label -> generate on a Ray Data actor pool -> summary. Finished
shards are kept: after a failure, submit the same job again and only the missing ones run.
"""

from __future__ import annotations

import argparse

from raydistill.models.pseudo_label import pseudo_label
from raydistill.jobkit import (add_verbose_arg, function_keys, parse_args, read_stage_config,
                               require_durable, run_stage)


# The config keys this stage knows and needs: pseudo_label()'s parameters (--overwrite is a
# flag, never a config key).
KNOWN, REQUIRED = function_keys(pseudo_label, exclude=["overwrite"])


def read_config(path: str, overrides: list[str]) -> dict:
    """YAML + overrides -> keyword arguments of ``pseudo_label`` (its parameter names)."""
    return read_stage_config(path, overrides, KNOWN, REQUIRED)


def build_parser() -> argparse.ArgumentParser:
    """This script's arguments (docs/cli.md is generated from them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML config (jobs/configs/pseudo_label.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. num_workers=4")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard parts written earlier with other settings")
    add_verbose_arg(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)

    # 1. Config: the outputs must outlive the job.
    cfg = read_config(args.config, args.overrides)
    require_durable(cfg["out"], "out")
    print(f"[pseudo_label] teacher {cfg['teacher']} labels {cfg.get('split', 'train')} of "
          f"{cfg['data_dir']} -> {cfg['out']}", flush=True)

    # 2-3. Generate the missing shards on the actor pool; written as each one finishes.
    report = pseudo_label(**cfg, overwrite=args.overwrite)

    # 4. Summary.
    last = report["runs"][-1]
    print(f"[pseudo_label] {report['written']} of {report['examples']} examples labelled "
          f"({report['dropped_empty']} empty dropped) in {report['shards']} shards; this run "
          f"generated {last['examples_generated']} at {last['examples_per_second']} examples/s; "
          f"copied from data_dir: {', '.join(report['copied_splits']) or 'nothing'}")
    print(f"[pseudo_label] train on it: method: pl, data_dir: {cfg['out']}")
    return 0


if __name__ == "__main__":
    run_stage(main, "jobs/pseudo_label.py")
