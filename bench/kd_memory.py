"""Peak memory and time of one KD step at a large vocabulary: chunked against unchunked, one run.

    python bench/kd_memory.py                 # V = 250,112 (mBART-50, mT5, NLLB), 8 x 64 targets
    python bench/kd_memory.py --quick         # V = 32,000, fewer repetitions (~1.5 min)
    python bench/kd_memory.py --sweep         # instead: V = 4k-65k, then chunk sizes at V = 250k:
                                              #   where CHUNKED_MIN_VOCAB and CHUNK_ELEMENTS come from
    python bench/kd_memory.py --device cuda   # one GPU: torch.cuda.max_memory_allocated
    python bench/kd_memory.py --device cuda --sweep --sweep-vocabs 32000 250112 \
        --chunks 20 21 22 23 24 25 26 27       # the chunk size for a GPU (bench/gpu_check.sh)

A KD step is the loss on given logits, forward and backward (no model): student logits (8, 64, V)
fp32 that require grad, teacher logits (8, 64, V) fp32, a target mask with a quarter of every
other row padded (448 of 512 positions kept). Three losses, each as training calls it:

- ``kd_kl_loss`` (SummarizationDistiller's KD term, T = 2);
- ``textbrewer_loss`` with ``kd_loss_type: ce`` (TextBrewer's kd_ce_loss after its mask selection, T = 4);
- ``topk_kd_loss`` from a top-64 logit cache (T = 4).

"unchunked" is each loss's own code (the chunked path switched off), "chunked" the same call with
``raydistill.distill.chunked`` on (what V >= CHUNKED_MIN_VOCAB gets by default).

Memory. On CPU torch's allocator keeps no statistics and tracemalloc does not see tensor memory
(torch allocates it with its own C allocator). The peak is measured with ``torch.profiler``
(``profile_memory=True``): every allocation and free of the c10 CPU allocator, the one all CPU
tensors use, is recorded with its size; the peak is the largest running total of those sizes
during the step, counted from 0 at its start (the inputs are not counted; the student's gradient
is). As a check from outside torch, each variant also runs once in a fresh subprocess that
resets the kernel's RSS high-water mark (``/proc/self/clear_refs``) before the step and reads
``VmHWM`` after it. On CUDA: ``max_memory_allocated`` above the memory allocated at the start.
Time: median of interleaved (ABBA) repetitions, with no profiler running, as wall time and as
this process's CPU time (``time.process_time``; with one torch thread it is the step's work,
whatever other jobs on a shared machine take). Figures go to ``bench/results/kd_memory.json``
(``kd_memory_sweep.json`` with ``--sweep``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from common import abba, add_common_args, median, setup_env, table, threads, write_result

NAME = "kd_memory"
FULL_VOCAB = 250_112  # mBART-50, mT5, NLLB-200
QUICK_VOCAB = 32_000
BATCH, TGT_LEN, TOP_K = 8, 64, 64
LOSSES = ("kd_kl_loss", "textbrewer_kd_ce", "topk_kd_loss")
SWEEP_VOCABS = (4_096, 8_192, 16_384, 32_000, 50_265, 65_536)
SWEEP_CHUNKS = (20, 21, 22, 23, 24)  # CHUNK_ELEMENTS = 2^e
MIB = 2**20


@contextlib.contextmanager
def path(variant: str, chunk_elements: int | None = None) -> Iterator[None]:
    """Force the unchunked or the chunked code of every KD loss (and a chunk size: the constant
    and, where chunked.py picks the size per device, its ``chunk_elements``)."""
    from raydistill.distill import chunked

    names = ("CHUNKED_MIN_VOCAB", "CHUNK_ELEMENTS", "chunk_elements")
    saved = {k: getattr(chunked, k) for k in names if hasattr(chunked, k)}
    chunked.CHUNKED_MIN_VOCAB = 0 if variant == "chunked" else sys.maxsize
    if chunk_elements:
        chunked.CHUNK_ELEMENTS = chunk_elements
        if "chunk_elements" in saved:
            chunked.chunk_elements = lambda *_, **__: chunk_elements
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(chunked, k, v)


def default_chunk_elements(device: str) -> int:
    """The chunk size the losses use on ``device`` today (``chunk_elements(device)`` where
    chunked.py has it, else ``CHUNK_ELEMENTS``)."""
    from raydistill.distill import chunked

    if hasattr(chunked, "chunk_elements"):
        return int(chunked.chunk_elements(torch.device(device)))
    return int(chunked.CHUNK_ELEMENTS)


def make_inputs(vocab: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(BATCH, TGT_LEN, vocab, generator=g).mul_(2).to(device).requires_grad_(True)
    t = torch.randn(BATCH, TGT_LEN, vocab, generator=g).mul_(2).to(device)
    mask = torch.ones(BATCH, TGT_LEN, dtype=torch.bool, device=device)
    mask[1::2, 3 * TGT_LEN // 4:] = False  # padded targets
    values, indices = t.topk(TOP_K, dim=-1)
    return {"s": s, "t": t, "mask": mask, "values": values - values[..., :1], "indices": indices}


def step_fn(loss: str, x: dict[str, torch.Tensor]) -> Callable[[], float]:
    """One KD step (forward + backward) of ``loss``; returns the loss value."""
    from raydistill.distill.losses import topk_kd_loss
    from raydistill.distill.objective import kd_kl_loss
    from raydistill.distill.textbrewer import DistillationConfig, textbrewer_loss

    tb = DistillationConfig(temperature=4, kd_loss_type="ce")

    def run() -> float:
        x["s"].grad = None
        if loss == "kd_kl_loss":
            value = kd_kl_loss(x["s"], x["t"], x["mask"], 2.0)
        elif loss == "textbrewer_kd_ce":
            value, _ = textbrewer_loss(tb, {"logits": x["s"], "logits_mask": x["mask"]},
                                       {"logits": x["t"], "logits_mask": x["mask"]},
                                       step=0, total_steps=1, sync_logs=False)
        else:
            value = topk_kd_loss(x["s"], x["values"], x["indices"], x["mask"], 4.0, kind="ce")
        value.backward()
        return float(value.detach())

    return run


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_bytes(run: Callable[[], float], device: str) -> tuple[int, float]:
    """(peak bytes allocated during one call of ``run`` above its start, the loss value)."""
    if device == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        value = run()
        sync(device)
        return torch.cuda.max_memory_allocated() - start, value
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        value = run()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:  # every allocation and free (size < 0), wherever it sits in the op tree
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and str(event.extra_fields.device) == "cpu":
            events.append((event.start_time_ns, event.extra_fields.alloc_size))
    # A running total of our own: the allocator's (extra_fields.total_allocated) carries over
    # from earlier profiler sessions and misses frees made between them.
    peak = total = 0
    for _, size in sorted(events):
        total += size
        peak = max(peak, total)
    return peak, value


def rss_peak(loss: str, variant: str, vocab: int, enabled: bool = True) -> int | None:
    """The RSS high-water mark of one step above the RSS before it, in a fresh process (Linux)."""
    if not enabled or not Path("/proc/self/clear_refs").exists():
        return None
    out = subprocess.run([sys.executable, __file__, "--rss-child", loss, variant, str(vocab)],
                         capture_output=True, text=True, cwd=Path(__file__).parent)
    if out.returncode != 0:
        print(f"  rss child {loss}/{variant} failed: {out.stderr.strip()[-300:]}", flush=True)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["rss_peak"]


def rss_child(loss: str, variant: str, vocab: int) -> None:
    def status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{key} not in /proc/self/status")

    torch.set_num_threads(1)
    x = make_inputs(vocab, "cpu")
    with path(variant):
        run = step_fn(loss, x)
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = status("VmRSS")
        run()
        print(json.dumps({"rss_peak": status("VmHWM") - before}))


def seconds(run: Callable[[], float], device: str) -> tuple[float, float]:
    """(wall, CPU) seconds of one call: this process's CPU time does not count what other jobs
    on a shared machine take, so on CPU its ratio is the steadier one."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    run()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def measure(loss: str, x: dict[str, torch.Tensor], device: str, reps: int,
            systems: dict[str, tuple[str, int | None]]) -> dict[str, dict]:
    """Systems (name -> (variant, CHUNK_ELEMENTS or None)) on the same inputs: peak, median time,
    loss value and the largest gradient difference from the first system."""
    out: dict[str, dict] = {}
    ref_grad = None
    for name, (variant, elements) in systems.items():  # memory, after one warm-up call
        with path(variant, elements):
            run = step_fn(loss, x)
            run()
            x["s"].grad = None
            peak, value = peak_bytes(run, device)
        out[name] = {"peak_bytes": peak, "loss": value, "times": [], "cpu_times": []}
        if ref_grad is None:
            ref_grad = x["s"].grad
        else:
            out[name]["grad_max_abs_diff"] = float((x["s"].grad - ref_grad).abs().max())
        x["s"].grad = None
    del ref_grad
    for _, name in abba(reps, list(systems)):
        variant, elements = systems[name]
        with path(variant, elements):
            wall, cpu = seconds(step_fn(loss, x), device)
        out[name]["times"].append(wall)
        out[name]["cpu_times"].append(cpu)
    for v in out.values():
        v["seconds"], v["cpu_seconds"] = median(v["times"]), median(v["cpu_times"])
    return out


BOTH = {"unchunked": ("unchunked", None), "chunked": ("chunked", None)}


def main() -> None:
    setup_env()
    p = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), NAME)
    p.add_argument("--vocab", type=int, default=None,
                   help=f"default {FULL_VOCAB:,} ({QUICK_VOCAB:,} with --quick)")
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions per system (default 6, 4 with --quick)")
    p.add_argument("--sweep", action="store_true",
                   help="instead: kd_kl_loss over vocabulary sizes, then chunk sizes at --vocab")
    p.add_argument("--sweep-vocabs", type=int, nargs="+", default=list(SWEEP_VOCABS),
                   help="--sweep: the vocabulary sizes of its first table")
    p.add_argument("--chunks", type=int, nargs="+", default=list(SWEEP_CHUNKS), metavar="E",
                   help="--sweep: chunk sizes 2^E elements of its second table (at --vocab)")
    p.add_argument("--no-rss", action="store_true",
                   help="skip the RSS check in fresh subprocesses (CPU; the rehearsal)")
    p.add_argument("--rss-child", nargs=3, metavar=("LOSS", "VARIANT", "VOCAB"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_child:
        loss, variant, vocab = args.rss_child
        return rss_child(loss, variant, int(vocab))
    torch.set_num_threads(threads(args))
    vocab = args.vocab or (QUICK_VOCAB if args.quick else FULL_VOCAB)
    reps = args.reps or (4 if args.quick else 6)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    from raydistill.distill.chunked import CHUNKED_MIN_VOCAB

    common = {"vocab": vocab, "batch": BATCH, "tgt_len": TGT_LEN, "top_k": TOP_K,
              "device": args.device, "threads": threads(args), "reps": reps,
              "chunked_min_vocab": CHUNKED_MIN_VOCAB,
              "chunk_elements": default_chunk_elements(args.device),
              "command": " ".join(sys.argv)}
    if args.sweep:
        write_result(f"{NAME}_sweep", {**common, **run_sweep(
            args.device, reps, vocab, args.sweep_vocabs, [1 << e for e in args.chunks])})
    else:
        write_result(NAME, {**common, **run_main(args.device, reps, vocab, not args.no_rss)})


def run_main(device: str, reps: int, vocab: int, with_rss: bool = True) -> dict:
    """The three losses, unchunked and chunked, at ``vocab``."""
    x = make_inputs(vocab, device)
    one = BATCH * TGT_LEN * vocab * 4  # bytes of one (B*T, V) fp32 tensor
    print(f"V = {vocab:,}, {BATCH} x {TGT_LEN} targets ({int(x['mask'].sum())} kept), device "
          f"{device}, {torch.get_num_threads()} thread(s); one (B*T, V) fp32 tensor = "
          f"{one / MIB:.0f} MiB; chunk {max(1, default_chunk_elements(device) // vocab)} positions",
          flush=True)
    results: dict[str, dict] = {}
    rows = []
    for loss in LOSSES:
        r = measure(loss, x, device, reps, BOTH)
        u, c = r["unchunked"], r["chunked"]
        if device == "cpu":
            for name, v in r.items():
                v["rss_peak_bytes"] = rss_peak(loss, name, vocab, with_rss)
        r["peak_ratio"] = c["peak_bytes"] / u["peak_bytes"]
        r["time_ratio"] = c["seconds"] / u["seconds"]
        r["cpu_time_ratio"] = c["cpu_seconds"] / u["cpu_seconds"]
        r["loss_rel_diff"] = abs(c["loss"] - u["loss"]) / abs(u["loss"])
        rss = "n/a"
        if u.get("rss_peak_bytes") and c.get("rss_peak_bytes"):
            r["rss_peak_ratio"] = c["rss_peak_bytes"] / u["rss_peak_bytes"]
            rss = f"{u['rss_peak_bytes'] / MIB:.0f} / {c['rss_peak_bytes'] / MIB:.0f}"
        results[loss] = r
        rows.append([loss, f"{u['peak_bytes'] / MIB:.0f} ({u['peak_bytes'] / one:.1f}x)",
                     f"{c['peak_bytes'] / MIB:.0f} ({c['peak_bytes'] / one:.1f}x)",
                     f"**{r['peak_ratio']:.2f}**", rss, f"{u['seconds']:.2f} / {u['cpu_seconds']:.2f}",
                     f"{c['seconds']:.2f} / {c['cpu_seconds']:.2f}",
                     f"**{r['time_ratio']:.2f}** / **{r['cpu_time_ratio']:.2f}**",
                     f"{r['loss_rel_diff']:.1e}", f"{c['grad_max_abs_diff']:.1e}"])
        print(f"{loss}: peak {r['peak_ratio']:.2f}x, time {r['time_ratio']:.2f}x wall, "
              f"{r['cpu_time_ratio']:.2f}x CPU", flush=True)
    print(table(rows, ["loss", "unchunked peak MiB (x one tensor)", "chunked peak MiB",
                       "peak ratio", "RSS peak MiB u / c", "unchunked s wall / CPU",
                       "chunked s wall / CPU", "time ratio wall / CPU", "loss rel. diff",
                       "grad max diff"]))
    met = all(r["peak_ratio"] <= 0.5 and min(r["time_ratio"], r["cpu_time_ratio"]) <= 1.1
              for r in results.values())
    where = "" if vocab == FULL_VOCAB else f" (set for V = {FULL_VOCAB:,}; this is V = {vocab:,})"
    print(f"target (peak <= 0.5x at <= 1.1x the time, every loss){where}: "
          f"{'met' if met else 'NOT met'}")
    return {"one_tensor_bytes": one, "kept_positions": int(x["mask"].sum()), "losses": results,
            "target_met": met}


def run_sweep(device: str, reps: int, chunk_vocab: int, vocabs=SWEEP_VOCABS,
              chunks=tuple(1 << e for e in SWEEP_CHUNKS)) -> dict:
    """kd_kl_loss, both paths, over vocabulary sizes; then chunk sizes at ``chunk_vocab``, and
    the one to choose for ``device``: the fastest whose peak stays <= 0.5x the unchunked one
    (by wall time on a GPU, where this process's CPU time says nothing; by CPU time on a CPU)."""
    out: dict[str, Any] = {"by_vocab": [], "by_chunk": []}
    rows = []
    for vocab in vocabs:
        x = make_inputs(vocab, device)
        r = measure("kd_kl_loss", x, device, reps, BOTH)
        del x
        u, c = r["unchunked"], r["chunked"]
        out["by_vocab"].append({"vocab": vocab, "unchunked": u, "chunked": c,
                                "peak_ratio": c["peak_bytes"] / u["peak_bytes"],
                                "time_ratio": c["seconds"] / u["seconds"],
                                "cpu_time_ratio": c["cpu_seconds"] / u["cpu_seconds"]})
        rows.append([f"{vocab:,}", f"{u['peak_bytes'] / MIB:.1f}", f"{c['peak_bytes'] / MIB:.1f}",
                     f"{c['peak_bytes'] / u['peak_bytes']:.2f}", f"{1e3 * u['cpu_seconds']:.1f}",
                     f"{1e3 * c['cpu_seconds']:.1f}", f"{c['seconds'] / u['seconds']:.2f}",
                     f"{c['cpu_seconds'] / u['cpu_seconds']:.2f}"])
        print(f"sweep V={vocab}: CPU time {c['cpu_seconds'] / u['cpu_seconds']:.2f}x", flush=True)
    print(table(rows, ["V", "unchunked peak MiB", "chunked peak MiB", "peak ratio",
                       "unchunked CPU ms", "chunked CPU ms", "time ratio wall", "time ratio CPU"]))
    x = make_inputs(chunk_vocab, device)
    systems = {"unchunked": ("unchunked", None)}
    systems.update({f"2^{e.bit_length() - 1}": ("chunked", e) for e in chunks})
    r = measure("kd_kl_loss", x, device, reps, systems)
    base = r.pop("unchunked")
    rows = []
    for (name, c), elements in zip(r.items(), chunks):
        out["by_chunk"].append({"chunk_elements": elements, "positions": max(1, elements // chunk_vocab),
                                **c, "time_ratio": c["seconds"] / base["seconds"],
                                "cpu_time_ratio": c["cpu_seconds"] / base["cpu_seconds"],
                                "peak_ratio": c["peak_bytes"] / base["peak_bytes"]})
        rows.append([name, max(1, elements // chunk_vocab), f"{c['peak_bytes'] / MIB:.0f}",
                     f"{c['peak_bytes'] / base['peak_bytes']:.2f}", f"{c['cpu_seconds']:.3f}",
                     f"{c['seconds'] / base['seconds']:.2f}",
                     f"{c['cpu_seconds'] / base['cpu_seconds']:.2f}"])
    out["by_chunk_unchunked"] = base
    print(table(rows, [f"CHUNK_ELEMENTS (V = {chunk_vocab:,})", "positions per chunk",
                       "chunked peak MiB", "peak ratio", "chunked CPU s", "time ratio wall",
                       "time ratio CPU"]))
    key = "time_ratio" if device == "cuda" else "cpu_time_ratio"
    fits = [c for c in out["by_chunk"] if c["peak_ratio"] <= 0.5] or out["by_chunk"]
    best = min(fits, key=lambda c: c[key])
    out["suggested_chunk_elements"] = best["chunk_elements"]
    print(f"suggested chunk size on {device} at V = {chunk_vocab:,}: 2^"
          f"{best['chunk_elements'].bit_length() - 1} = {best['chunk_elements']:,} elements "
          f"({best['positions']} positions; {best[key]:.2f}x the unchunked "
          f"{'wall' if device == 'cuda' else 'CPU'} time, {best['peak_ratio']:.2f}x its peak; "
          f"today's: {default_chunk_elements(device):,})")
    return out


if __name__ == "__main__":
    main()
