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
import difflib
import inspect
import os
import sys

from raydistill.config import merge, parse_overrides, read_yaml
from raydistill.errors import ConfigError, RaydistillError
from raydistill.eval.evaluate import evaluate

# `model` reads better in a config than evaluate()'s `model_dir`.
RENAMED = {"model": "model_dir"}


def require_durable(path: str | None, key: str) -> None:
    """Inside a Ray job, refuse relative output paths: they would land in the job's copy of
    ``--working-dir``, a temporary folder on one node that Ray deletes."""
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    if in_job and path and "://" not in path and not os.path.isabs(path):
        raise ConfigError(f"{key}={path} is relative: a Ray job runs in a temporary copy of "
                          f"--working-dir, so it would be lost; pass an absolute path on storage "
                          f"every node sees, e.g. {key}=/mnt/shared/{path}")


def read_config(path: str, overrides: list[str]) -> dict:
    """YAML + overrides -> keyword arguments of ``evaluate``."""
    data = merge(read_yaml(path), parse_overrides(overrides))
    params = inspect.signature(evaluate).parameters
    known = [next((k for k, v in RENAMED.items() if v == p), p) for p in params]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
            raise ConfigError(f"{path}: unknown key {key!r}; {hint}")
    kwargs = {RENAMED.get(k, k): v for k, v in data.items()}
    for key, p in params.items():
        if p.default is inspect.Parameter.empty and not kwargs.get(key):
            name = next((k for k, v in RENAMED.items() if v == key), key)
            raise ConfigError(f"{path}: {name} is required (set {name}: PATH or {name}=PATH)")
    return kwargs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML config (jobs/configs/evaluate.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model=PATH")
    args = parser.parse_args(argv)

    # 1. Config: results go beside the model unless out_dir says otherwise.
    cfg = read_config(args.config, args.overrides)
    require_durable(cfg.get("out_dir") or str(cfg["model_dir"]), "out_dir")

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
    try:
        sys.exit(main())
    except RaydistillError as err:
        print(f"jobs/evaluate.py: error: {err}", file=sys.stderr)
        sys.exit(2)
