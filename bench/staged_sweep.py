"""A staged sweep shares its first stages: `raydistill tune` on a `stages:` config, against every
trial training the whole chain itself (what a user does by hand without `stages:`).

    python bench/staged_sweep.py --quick      # tiny sizes, the `make bench` set
    python bench/staged_sweep.py              # en_de, a d128 Marian-shaped BART 6-6 -> 6-3

Both systems run the same recipe, sft then kd, over the same grid of the kd stage's temperature,
one trial at a time:

- **shared**: `run_sweep` on the staged config: the sft stage trains once (shared_stages/), each
  trial runs the kd stage from its best student;
- **per trial**: one staged `run_distill` per grid point: each trains sft, then kd.

Printed: wall-clock of each system, the ratio (per trial / shared), and each trial's val score
(the same recipe, so the two systems' scores should be alike).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import (
    add_common_args,
    build_scratch_pair,
    data_dir_or_skip,
    setup_env,
    table,
    train_run,
    write_result,
)

NAME = "staged_sweep"


def settings(quick: bool) -> dict:
    return {"n_train": 256 if quick else 4000, "d_model": 64 if quick else 128,
            "vocab_size": 1000 if quick else 4000, "sft_steps": 30 if quick else 400,
            "kd_steps": 10 if quick else 60, "temperatures": [1.0, 2.0, 4.0],
            "batch": 16 if quick else 32}


def staged_config(s: dict, teacher: Path, data: Path, out: Path, threads: int) -> dict:
    return {
        "method": "sft", "teacher": str(teacher), "student_encoder_layers": 6,
        "student_decoder_layers": 3, "data_dir": str(data), "output_dir": str(out),
        "task": "translation", "n_train": s["n_train"], "n_val": 16, "num_workers": 1,
        "cpus_per_worker": threads, "train_batch_size": s["batch"], "max_source_length": 48,
        "max_target_length": 48, "val_max_target_length": 48, "eval_beams": 1,
        "learning_rate": 5e-4, "do_predict": False, "logger": "none", "seed": 0,
        "stages": [{"name": "sft", "max_steps": s["sft_steps"], "val_check_steps": s["sft_steps"]},
                   {"name": "kd", "method": "kd", "max_steps": s["kd_steps"],
                    "val_check_steps": s["kd_steps"]}],
    }


def main() -> None:
    setup_env()
    args = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]),
                           NAME).parse_args()
    s = settings(args.quick)
    data = data_dir_or_skip(args.data_root, "en_de", NAME)
    work = Path(args.workdir).resolve() / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    teacher, _ = build_scratch_pair(data, work / "models", vocab_size=s["vocab_size"],
                                    d_model=s["d_model"], student=(6, 3))
    threads = max(1, args.threads)
    import torch

    from raydistill.config import DistillConfig
    from raydistill.tune.space import parse_tune_section
    from raydistill.tune.sweep import run_sweep

    torch.set_num_threads(threads)
    base = staged_config(s, teacher, data, work / "shared", threads)
    tune = {"search_space": {"temperature": {"grid": s["temperatures"]}},
            "max_concurrent_trials": 1, "latency_examples": 2}

    t0 = time.time()
    cfg = DistillConfig.from_dict(base)
    summary = run_sweep(cfg, parse_tune_section(tune, cfg), overwrite=True)
    shared_s = time.time() - t0
    shared_scores = {r["temperature"]: r["metric"] for r in summary["rows"]}

    t0 = time.time()
    per_trial_scores = {}
    for temp in s["temperatures"]:
        cfg = staged_config(s, teacher, data, work / f"per_trial_T{temp:g}", threads)
        cfg["stages"][1]["temperature"] = temp
        best, _ = train_run(cfg)
        per_trial_scores[temp] = json.loads((best.parent / "metrics.json").read_text())["best"]["bleu"]
    per_trial_s = time.time() - t0

    ratio = per_trial_s / shared_s
    rows = [["shared first stage (raydistill tune, stages:)", f"{shared_s:.0f}", "1.00"],
            ["every trial trains its stages", f"{per_trial_s:.0f}", f"{ratio:.2f}"]]
    print("\n" + table(rows, ["system", "wall-clock s", "x shared"]))
    print("val BLEU by temperature, shared / per trial: " + ", ".join(
        f"T={t:g}: {shared_scores.get(t, float('nan')):.2f} / {per_trial_scores[t]:.2f}"
        for t in s["temperatures"]))
    print(f"target (a staged sweep faster than every trial training its stages): "
          + ("met" if ratio > 1 else "NOT met") + f", {ratio:.2f}x")
    write_result(NAME + ("_quick" if args.quick else ""),
                 {"settings": s, "shared_seconds": shared_s, "per_trial_seconds": per_trial_s,
                  "ratio": ratio, "shared_scores": shared_scores,
                  "per_trial_scores": per_trial_scores, "threads": threads})


if __name__ == "__main__":
    main()
