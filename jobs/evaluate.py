"""Pipeline stage 4: generate on a split with a Ray Data actor pool and score it.

    python jobs/evaluate.py jobs/configs/evaluate.yaml [key=value ...]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/evaluate.py jobs/configs/evaluate.yaml \
        model=/mnt/shared/runs/scitldr_kd_6_3/best_tfmr data_dir=/mnt/shared/data/scitldr \
        num_workers=4 num_gpus=1

parse config -> the split (references) -> parallel generation -> metrics -> summary. Writes
``{split}_generations.txt`` and ``{split}_results.json`` to ``out_dir`` (default: the model).
"""

from __future__ import annotations

import argparse

from raydistill.eval.evaluate import evaluate
from raydistill.hub import is_local_ref
from raydistill.jobkit import (add_verbose_arg, function_keys, parse_args, read_stage_config,
                               require_durable, run_stage)

# `model` reads better in a config than evaluate()'s `model_dir`.
RENAMED = {"model": "model_dir"}


# The config keys this stage knows and needs: evaluate()'s parameters, under their config names.
KNOWN, REQUIRED = function_keys(evaluate, RENAMED)


def read_config(path: str, overrides: list[str]) -> dict:
    """YAML + overrides -> keyword arguments of ``evaluate``."""
    data = read_stage_config(path, overrides, KNOWN, REQUIRED)
    return {RENAMED.get(k, k): v for k, v in data.items()}


def build_parser() -> argparse.ArgumentParser:
    """This script's arguments (docs/cli.md is generated from them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML config (jobs/configs/evaluate.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model=PATH")
    add_verbose_arg(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)

    # 1. Config: results go beside the model unless out_dir says otherwise (a Hub id, e.g.
    # model=facebook/bart-large-xsum, has no folder to write beside: evaluate asks for out_dir).
    cfg = read_config(args.config, args.overrides)
    model = str(cfg["model_dir"])
    require_durable(cfg.get("out_dir") or (model if is_local_ref(model) else None), "out_dir")

    # 2-3. Read the split, generate on the actor pool, score against every reference.
    results = evaluate(**cfg)

    # 4. Summary.
    print(f"[evaluate] {results['model_dir']} on {results['split']} "
          f"({results['n_examples']} examples, references from {results['references']['file']}): "
          + "  ".join(f"{k}={v:.4f}" for k, v in results["scores"].items()))
    print(f"[evaluate] {results['gen_seconds']:.1f} s generation "
          f"({results['examples_per_second']} examples/s); wrote {results['files']['results']}")
    return 0


if __name__ == "__main__":
    run_stage(main, "jobs/evaluate.py")
