"""Pipeline stage 5: sweep distillation settings with Ray Tune (trials are Ray Train runs).

    python jobs/tune.py jobs/configs/tune_summarization.yaml [key=value ...] [--resume DIR]
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/tune.py jobs/configs/tune_summarization.yaml \
        output_dir=/mnt/shared/runs/tune_scitldr tune.max_concurrent_trials=4

parse config (the distill keys + a ``tune:`` section) -> check inputs -> sweep -> report.
After a failed or stopped job, submit it again with ``--resume OUTPUT_DIR``.
"""

from __future__ import annotations

import argparse

from raydistill.jobkit import add_verbose_arg, parse_args, require_durable, run_stage
from raydistill.tune import load_sweep, run_sweep


def build_parser() -> argparse.ArgumentParser:
    """This script's arguments (docs/cli.md is generated from them)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML config with a tune: section")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. tune.num_samples=8")
    parser.add_argument("--resume", metavar="DIR", default=None,
                        help="continue the interrupted sweep in DIR (its output_dir)")
    parser.add_argument("--overwrite", action="store_true", help="start over in output_dir")
    add_verbose_arg(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)

    # 1. Config: every input check happens here, before Ray starts a trial.
    cfg, settings = load_sweep(args.config, args.overrides)
    for key, path in (("output_dir", settings.output_dir or cfg.output_dir),
                      ("tune.storage_path", settings.storage_path),
                      ("storage_path", cfg.storage_path)):
        require_durable(path, key)
    print(f"[tune] {len(settings.search_space)} dimensions ({', '.join(settings.keys)}), "
          f"{settings.num_samples} samples, scheduler {settings.scheduler}; "
          f"each trial: {cfg.num_workers} workers x {cfg.cpus_per_worker} CPU"
          f"{' + 1 GPU' if cfg.use_gpu else ''}", flush=True)

    # 2-3. The sweep: trials fit, ASHA stops the weak ones, the best is measured and exported.
    summary = run_sweep(cfg, settings, resume=args.resume, overwrite=args.overwrite)

    # 4. Summary.
    out = summary["output_dir"]
    if summary["interrupted"]:
        print(f"[tune] interrupted with {len(summary['unfinished'])} trials unfinished; "
              f"continue with: python jobs/tune.py {args.config} --resume {out}")
        return 130
    best = summary["best"]
    print(f"[tune] {len(summary['rows'])} trials in {summary['tune_seconds']:.0f} s")
    if best:
        print(f"[tune] best trial {best['trial_id']}: {settings.metric or cfg.val_metric}="
              f"{best['metric']:.4f} -> {out}/best")
    print(f"[tune] outputs in {out}: results.md results.csv pareto.png best/ trials/")
    return 0


if __name__ == "__main__":
    run_stage(main, "jobs/tune.py")
