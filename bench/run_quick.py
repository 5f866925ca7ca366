"""Every benchmark's ``--quick`` mode, one after the other, then a summary (``make bench``).

    python bench/run_quick.py                    # ~20 min on 2 idle cores
    python bench/run_quick.py --device cuda      # passed on to every benchmark
    python bench/run_quick.py --only overhead vs_textbrewer

Each benchmark runs as its own process (its output streams through and is kept in
``bench/results/<name>.log``); a failing one is reported and the others still run. The summary
reads the figures each benchmark wrote to ``bench/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, setup_env

BENCHMARKS = ("overhead", "vs_textbrewer", "quality", "kd_memory", "generation")
# Where a benchmark's quick mode writes its figures, when not bench/results/<name>.json.
RESULT_FILES = {"quality": "quality_en_de_quick"}
HERE = Path(__file__).resolve().parent


def run(name: str, extra: list[str]) -> tuple[int, float]:
    """Run ``bench/<name>.py --quick`` with output to the terminal and to a log file."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / f"{name}.log"
    # No stale figures in the summary.
    (RESULTS / f"{RESULT_FILES.get(name, name)}.json").unlink(missing_ok=True)
    cmd = [sys.executable, str(HERE / f"{name}.py"), "--quick", *extra]
    print(f"\n===== {' '.join(cmd)}", flush=True)
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=HERE.parent)
        for line in proc.stdout:  # type: ignore[union-attr]
            f.write(line)
            # Progress bars and per-weight loading lines stay in the log only.
            if not line.startswith(("Loading weights", "Writing model", "\r")):
                sys.stdout.write(line)
        code = proc.wait()
    return code, time.time() - t0


def summary_lines(name: str) -> list[str]:
    """The headline figures of one benchmark, from its results JSON."""
    path = RESULTS / f"{RESULT_FILES.get(name, name)}.json"
    if not path.is_file():
        return ["no results written"]
    r = json.loads(path.read_text())
    if "skipped" in r:
        return [f"skipped: {r['skipped']}"]
    if name == "overhead":
        if "steady_ratio" not in r:  # --systems without the Train worker
            return [f"steady tokens/s {k}/plain {q['steady']:.3f}"
                    for k, q in r.get("ratios", {}).items()]
        m = r["medians"]
        rd, pl = m["raydistill"], m["plain"]
        return [f"steady tokens/s raydistill/plain {r['steady_ratio']:.3f} "
                f"({rd['steady_tokens_per_s']:.0f} vs {pl['steady_tokens_per_s']:.0f}; "
                f"target >= 0.95 {'met' if r['steady_ratio'] >= 0.95 else 'NOT met'})",
                f"end-to-end wall raydistill/plain {r['wall_ratio']:.2f}x "
                f"({rd['wall_seconds']:.0f} s vs {pl['wall_seconds']:.0f} s)"]
    if name == "vs_textbrewer":
        fmt = lambda x: "n/a" if x is None else f"{x:.2f}x"  # noqa: E731
        out = []
        for system, q in r["ratios"].items():
            out.append(f"{system}: steady tokens/s {fmt(q['tokens_per_s'])} TextBrewer; time to "
                       f"the same val loss {fmt(q['time_to_target'])} from launch, "
                       f"{fmt(q['train_time_to_target'])} without start-up; final val loss "
                       f"{100 * q['final_loss_gap']:+.2f}%")
        for basis, met in r["target_met"].items():
            out.append(f"target (>= 1.5x, within 2%), {basis}: "
                       + "; ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in met.items()))
        return out
    if name == "kd_memory":
        out = [f"{loss}: peak memory chunked/unchunked {q['peak_ratio']:.2f}x, time "
               f"{q['time_ratio']:.2f}x (CPU time {q['cpu_time_ratio']:.2f}x)"
               for loss, q in r["losses"].items()]
        return out + [f"target (peak <= 0.5x at <= 1.1x the time, V = {r['vocab']:,}): "
                      + ("met" if r["target_met"] else "NOT met")]
    if name == "quality":
        metric = "bleu" if r["task"] == "translation" else "rouge2"
        out = [f"{model}: {metric} {m['scores'][metric]:.2f}, speedup {m['speedup']:.2f}x"
               for model, m in r["models"].items()]
        for depth, b in r["best"].items():
            out.append(f"best {depth}: {b['best']}, {100 * b['kept']:.1f}% of the teacher's "
                       f"{metric} at {b['speedup']:.2f}x")
        out.append("target (a 6-3 student >= 97% of the teacher at >= 1.6x): "
                   + ("met" if r["target_met"] else "NOT met"))
        return out
    if name == "staged_sweep":
        return [f"staged sweep, first stage shared: {r['shared_seconds']:.0f} s; every trial "
                f"training its stages: {r['per_trial_seconds']:.0f} s ({r['ratio']:.2f}x; "
                f"target > 1: {'met' if r['ratio'] > 1 else 'NOT met'})"]
    if name == "generation":
        out = [f"{q['system']}: {q['examples_per_s']:.1f} examples/s ({q['speedup_vs_tf_single']:.2f}x "
               f"tf_single), BLEU {q['bleu']:.2f}" for q in r["rows"]]
        return out + [f"target ({r['target']}): " + ("met" if r["target_met"] else "NOT met")]
    return []


def main() -> None:
    setup_env()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--data-root", default=None, help="passed on (default: ../shared/data)")
    args = p.parse_args()
    extra = ["--device", args.device] + (["--data-root", args.data_root] if args.data_root else [])
    t0 = time.time()
    status = {}
    for name in args.only:
        status[name] = run(name, extra)
    print("\n===== summary (quick mode; full figures and context in BENCHMARKS.md)")
    for name, (code, seconds) in status.items():
        state = "ok" if code == 0 else f"FAILED (exit {code}; log {RESULTS / (name + '.log')})"
        print(f"{name}: {state}, {seconds:.0f} s")
        if code == 0:
            for line in summary_lines(name):
                print(f"    {line}")
    print(f"total {time.time() - t0:.0f} s")
    sys.exit(1 if any(code for code, _ in status.values()) else 0)


if __name__ == "__main__":
    main()
