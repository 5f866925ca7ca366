"""``raydistill tune CONFIG.yaml [key=value ...] [--resume DIR]``: registered by raydistill.cli."""

from __future__ import annotations

import argparse


def _tune(args: argparse.Namespace) -> int:
    from raydistill.tune.sweep import load_sweep, run_sweep

    cfg, settings = load_sweep(args.config, args.overrides)  # every input check, before Ray
    summary = run_sweep(cfg, settings, resume=args.resume, overwrite=args.overwrite,
                        address=args.address)
    out = summary["output_dir"]
    if summary["interrupted"]:
        print(f"\nsweep interrupted after {summary['trials']} trials were created "
              f"({len(summary['unfinished'])} unfinished); continue it with: "
              f"raydistill tune {args.config} --resume {out}")
        return 130
    metric = settings.metric or cfg.val_metric
    print(f"\n{len(summary['rows'])} trials in {summary['tune_seconds']:.0f} s")
    best = summary["best"]
    if best:
        print(f"best trial {best['trial_id']}: {metric}={best['metric']:.4f} "
              f"({best['ms_per_example'] or float('nan'):.1f} ms/example) -> {out}/best")
    print(f"outputs in {out}: results.md results.csv pareto.png best/ trials/ ray_results/ "
          f"(tensorboard --logdir {out})")
    after = getattr(args, "after_sweep", None)  # raydistill.cli: the results page (report.py)
    if after is not None:
        after(out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``tune`` subcommand (called by raydistill.cli.build_parser)."""
    p = subparsers.add_parser("tune", help="sweep distillation settings with Ray Tune (ASHA) and "
                              "plot quality vs latency")
    p.add_argument("config", help="YAML config with a tune: section "
                   "(example: jobs/configs/tune_summarization.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. tune.num_samples=8")
    p.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the interrupted sweep in DIR (its output_dir)")
    p.add_argument("--overwrite", action="store_true", help="start over in a non-empty output_dir")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, "
                   "else a local Ray)")
    p.set_defaults(func=_tune)
