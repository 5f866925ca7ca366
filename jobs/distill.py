"""Pipeline stage 3: distill a student with Ray Train (sft, kd or pl), by hand or as a Ray job.

    python jobs/distill.py jobs/configs/kd_summarization.yaml [key=value ...] [--resume]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/distill.py jobs/configs/kd_summarization.yaml output_dir=/mnt/shared/runs/kd

parse config -> check inputs -> fit (restarts from the latest checkpoint on failures) -> summary.
Inside a Ray job the driver joins the job's cluster (Ray sets RAY_ADDRESS); run by hand it
starts a local Ray. Checkpoints go to ``storage_path`` (a local folder, NFS, s3:// or gs://).
"""

from __future__ import annotations

import argparse
import os
import time

import raydistill
from raydistill.config import load_config
from raydistill.jobkit import add_verbose_arg, parse_args, require_durable, run_stage
from raydistill.pipeline import run_distill


def build_parser() -> argparse.ArgumentParser:
    """This script's arguments (docs/cli.md is generated from them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML config (jobs/configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. num_workers=4")
    parser.add_argument("--resume", action="store_true", help="continue the run in output_dir "
                        "from its latest checkpoint (after a failed or stopped job)")
    parser.add_argument("--overwrite", action="store_true", help="start over in output_dir")
    add_verbose_arg(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)

    # 1. Config: YAML + overrides, validated once; the outputs must outlive the job.
    cfg, _ = load_config(args.config, args.overrides)
    require_durable(cfg.output_dir, "output_dir")
    require_durable(cfg.storage_path, "storage_path")
    storage = cfg.storage_path or os.path.join(cfg.output_dir, "ray_results")
    print(f"[distill] raydistill {raydistill.__version__} from {os.path.dirname(raydistill.__file__)}\n"
          f"[distill] method={cfg.method} task={cfg.task} data={cfg.data_dir}\n"
          f"[distill] {cfg.num_workers} workers x {cfg.cpus_per_worker} CPU"
          f"{' + 1 GPU' if cfg.use_gpu else ''}, max_failures={cfg.max_failures}, "
          f"checkpoints in {storage}", flush=True)

    # 2-3. Inputs are checked before any worker starts, then the TorchTrainer fits.
    t0 = time.time()
    summary = run_distill(cfg, overwrite=args.overwrite, resume=args.resume)

    # 4. Summary: where it ended and what it scored.
    last = summary["val"][-1] if summary["val"] else {}
    resumed = summary.get("resumed_from") or []
    print(f"[distill] done in {time.time() - t0:.0f} s: {len(summary['val'])} validations, "
          f"last at step {last.get('step')}; best {cfg.val_metric}="
          f"{summary['best'][cfg.val_metric]:.4f}"
          + (f"; resumed from step(s) {resumed}" if resumed else ""))
    if summary.get("test"):
        scores = summary["test"]["scores"]
        print("[distill] test: " + "  ".join(f"{k}={v:.4g}" for k, v in scores.items()))
    print(f"[distill] outputs in {cfg.output_dir} (best_tfmr/, metrics.json); "
          f"latest checkpoint {summary['checkpoint']}")
    return 0


if __name__ == "__main__":
    run_stage(main, "jobs/distill.py")
