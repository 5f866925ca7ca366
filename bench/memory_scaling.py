"""Per-worker memory and step time of parallel: ddp against parallel: fsdp, 2 workers.

    python bench/memory_scaling.py --quick          # d_model 512, V 16,000: 3-9 min on 2 CPUs
    python bench/memory_scaling.py                  # BART-large shape (below); 30 min, 16 GB here
    python bench/memory_scaling.py --device cuda    # one GPU per worker (nccl), bf16 fsdp
    python bench/memory_scaling.py --tiny           # d_model 32: the runs' smoke test (seconds)
    python bench/memory_scaling.py --gradient-checkpointing   # the students recompute activations

The student has BART-large's shape cut to 12-3 layers (d_model 1024, 16 heads, FFN 4096,
vocabulary 50,265, random weights); the teacher is BART-large's shape 12-12. Five runs, each
in fresh processes started as torchrun would (``RANK``, ``WORLD_SIZE``; gloo on the CPU):
sft (ddp, fsdp) and kd (ddp with the teacher replicated; fsdp with it replicated and sharded).
Each worker trains through the product's pieces: ``train/parallel.py`` shards (fsdp) or DDP
wraps the student, ``LossStep`` computes the loss (kd: the SummarizationDistiller objective),
``build_optimizer``'s AdamW steps after ``parallel.clip_grad_norm``.

Measured per worker, after one warm-up step: CPU: the training state it holds (weights,
gradients and AdamW moments of its shard or of the whole student, plus its teacher weights,
plus DDP's all-reduce buckets where they are not the gradients themselves: what an
allocator's peak counts before activations; the student's DDP is the product's,
``parallel.ddp_kwargs``), the allocator's peak (that state plus the
most bytes torch's CPU allocator held above it during one more step, profiled: see
``allocator_peak``), the RSS high-water during the timed steps (sampled every 5 ms) and the
process's ru_maxrss; CUDA: ``max_memory_allocated``. Step time is the median of the timed
steps (the profiled step is not one of them). A fsdp student is built on the meta device and
materialized shard by shard, as a run that could not hold the whole model would; a ddp
student whole.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SHAPES = {
    "full": dict(d_model=1024, heads=16, ffn=4096, vocab=50265, teacher=(12, 12), student=(12, 3),
                 batch=4, src=128, tgt=32),
    "quick": dict(d_model=512, heads=8, ffn=2048, vocab=16000, teacher=(6, 6), student=(6, 2),
                  batch=4, src=64, tgt=16),
    # the smoke test's (tests/unit/test_bench_memory.py): the same code paths in seconds
    "tiny": dict(d_model=32, heads=2, ffn=64, vocab=300, teacher=(2, 2), student=(2, 1),
                 batch=2, src=8, tgt=4),
}
RUNS = [  # (name, method, parallel, teacher_parallel)
    ("sft ddp", "sft", "ddp", "replicate"),
    ("sft fsdp", "sft", "fsdp", "replicate"),
    ("kd ddp, teacher replicated", "kd", "ddp", "replicate"),
    ("kd fsdp, teacher replicated", "kd", "fsdp", "replicate"),
    ("kd fsdp, teacher sharded", "kd", "fsdp", "fsdp"),
]


def bart(shape: dict, layers: tuple[int, int]):
    from transformers import BartConfig, BartForConditionalGeneration

    cfg = BartConfig(vocab_size=shape["vocab"], d_model=shape["d_model"],
                     encoder_layers=layers[0], decoder_layers=layers[1],
                     encoder_attention_heads=shape["heads"], decoder_attention_heads=shape["heads"],
                     encoder_ffn_dim=shape["ffn"], decoder_ffn_dim=shape["ffn"],
                     max_position_embeddings=512, dropout=0.0)
    return BartForConditionalGeneration(cfg)


def build(shape: dict, layers, sharded: bool, device, frozen: bool = False, bf16: bool = False,
          checkpointing: bool = False):
    """A random BART; sharded: built on meta, sharded, then each rank fills its own shard.
    ``checkpointing``: the product's gradient checkpointing (``models.layers.checkpoint_layers``)."""
    import torch

    from raydistill.models.layers import checkpoint_layers
    from raydistill.train import parallel

    if not sharded:
        model = bart(shape, layers).to(device)
        if checkpointing:
            checkpoint_layers(model)
        return model.eval().requires_grad_(False) if frozen else model
    with torch.device("meta"):
        model = bart(shape, layers)
    if checkpointing:
        checkpoint_layers(model)
    from torch.distributed.fsdp import fully_shard

    mesh = parallel._mesh(device)
    policy = parallel._policy(device, torch.bfloat16 if bf16 else None)
    for stack in parallel._layer_lists(model):
        for layer in stack:
            fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False if frozen else None)
    model.to_empty(device=device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    model.tie_weights()
    if frozen:
        model.eval().requires_grad_(False)
    ids = torch.ones(1, 1, dtype=torch.long, device=device)
    with torch.no_grad():  # the root's state set before anything calls a part directly
        model(input_ids=ids, attention_mask=ids, decoder_input_ids=ids, use_cache=False)
    if not frozen:
        model.reshard()
    return model


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def state_bytes(model, optimizer) -> int:
    """Bytes of this rank's weights, gradients and optimizer state (local shards only)."""
    from torch.distributed.tensor import DTensor

    def local(t):
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size()

    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += local(p) + (local(p.grad) if p.grad is not None else 0)
    for st in optimizer.state.values():
        total += sum(local(v) for v in st.values() if hasattr(v, "numel") and v.dim() > 0)
    return total


def allocator_peak(step) -> int:
    """The most bytes torch's CPU allocator held during ``step()`` among the tensors allocated
    in it: the allocation events of ``torch.profiler`` (``profile_memory=True``) carry the
    allocator's running total of what it allocated while the profiler ran, so tensors alive
    before (the training state) are not in it, and frees of them do not lower it."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    todo, peak = list(prof.profiler.kineto_results.experimental_event_tree()), 0
    while todo:
        event = todo.pop()
        todo += event.children
        if event.tag == _EventType.Allocation:
            peak = max(peak, event.extra_fields.total_allocated)
    return peak


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from raydistill.config import DistillConfig
    from raydistill.distill.step import LossStep
    from raydistill.train import parallel
    from raydistill.train.optim import build_optimizer

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cuda = args.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.set_num_threads(args.threads)
    shape, (_, method, mode, t_mode) = SHAPES[args.shape], RUNS[args.run]
    torch.manual_seed(rank)
    cfg = DistillConfig(method=method, teacher="t", data_dir="d", output_dir="o", num_workers=world,
                        parallel=mode, teacher_parallel=t_mode, alpha_hid=0.0,
                        precision="bf16" if cuda else "fp32", teacher_dtype="fp32")
    bf16 = cuda and mode == "fsdp"
    student = build(shape, shape["student"], mode == "fsdp", device, bf16=bf16,
                    checkpointing=args.gradient_checkpointing)
    model = student if mode == "fsdp" else torch.nn.parallel.DistributedDataParallel(
        student, device_ids=[rank] if cuda else None, **parallel.ddp_kwargs(cfg))
    teachers = [build(shape, shape["teacher"], t_mode == "fsdp", device, frozen=True)] \
        if method == "kd" else []
    te, td = shape["teacher"]
    loss_step = LossStep(cfg, teachers, student, list(range(shape["student"][0])),
                         list(range(0, td, max(1, td // shape["student"][1])))[:shape["student"][1]])
    optimizer, _ = build_optimizer(cfg, student, 100)
    gen = torch.Generator().manual_seed(100 + rank)
    batch = {"input_ids": torch.randint(4, shape["vocab"], (shape["batch"], shape["src"]), generator=gen),
             "labels": torch.randint(4, shape["vocab"], (shape["batch"], shape["tgt"]), generator=gen)}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch = {k: v.to(device) for k, v in batch.items()}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda and mode == "ddp")

    def step() -> float:
        t0 = time.perf_counter()
        with autocast:
            loss, _ = loss_step(model, batch, 0, 100)
        loss.backward()
        parallel.clip_grad_norm([p for p in student.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated: counted below
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    step()  # warm-up: AdamW's moments and the gradients exist from here on
    held = state_bytes(student, optimizer) + sum(state_bytes(t, torch.optim.SGD([torch.zeros(1)]))
                                                 for t in teachers) + ddp_buckets(model)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    peak, stop = [rss()], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak.append(rss())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    times = [step() for _ in range(args.steps)]
    stop.set()
    sampler.join()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # before the profiler's
    alloc = None if cuda else (held + allocator_peak(step)) / 2**30
    mine = {"rank": rank, "state_gib": held / 2**30, "rss_peak_gib": max(peak) / 2**30,
            "alloc_peak_gib": alloc, "ru_maxrss_gib": maxrss,
            "step_s": statistics.median(times),
            "cuda_peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None}
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    if rank == 0:
        Path(args.out).write_text(json.dumps(everyone))
    dist.destroy_process_group()
    # Leave without freeing the models: torch 2.13 can deadlock freeing a DDP reducer here (the
    # main thread, holding the GIL, joins gloo's thread, which waits for the GIL to free the
    # all-gather's tensor; seen in 1 run of 3 at the tiny shape, py-spy --native).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def ddp_buckets(model) -> int:
    """The bytes of DDP's all-reduce buckets that are not the gradients themselves (a copy of
    every gradient unless ``gradient_as_bucket_view``; allocated before the step, so the
    profiled step does not count them); 0 for a sharded student."""
    import re

    import torch

    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return 0
    data = model._get_ddp_logging_data()
    if data.get("gradient_as_bucket_view"):
        return 0
    return sum(int(n) for n in re.findall(r"\d+", str(data.get("bucket_sizes", ""))))


def launch(args, run: int) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(tempfile.mkdtemp()) / "result.json"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "WORLD_SIZE": str(args.workers), "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, __file__, "--worker", "--run", str(run), "--out", str(out),
           "--shape", args.shape, "--device", args.device, "--steps", str(args.steps),
           "--threads", str(args.threads)] + (["--gradient-checkpointing"]
                                               if args.gradient_checkpointing else [])
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r)}) for r in range(args.workers)]
    if any(p.wait() for p in procs):
        raise SystemExit(f"run {RUNS[run][0]} failed")
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the smaller shape (d_model 512)")
    ap.add_argument("--tiny", action="store_true", help="d_model 32: a smoke test of the runs")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="the students recompute their layers' activations (both modes)")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--shape", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.shape = args.shape or ("tiny" if args.tiny else "quick" if args.quick else "full")
    if args.worker:
        return worker(args)
    results = {}
    for i, (name, *_rest) in enumerate(RUNS):
        t0 = time.time()
        results[name] = launch(args, i)
        print(f"{name}: {time.time() - t0:.0f} s", flush=True)
    cuda = args.device == "cuda"
    key = "cuda_peak_gib" if cuda else "rss_peak_gib"
    print(f"\n{args.workers} workers, {args.device}, shape {args.shape}"
          f"{', gradient checkpointing' if args.gradient_checkpointing else ''}: per worker "
          "(max over ranks)")
    print(f"{'run':30s} {'state GiB':>10s} {'peak GiB':>9s} {'maxrss GiB':>10s} {'step s':>7s}"
          f"{'' if cuda else ' alloc peak GiB':>15s}")
    rows = {}
    for name, ranks in results.items():
        row = {k: max(r[k] for r in ranks) if ranks[0][k] is not None else None for k in ranks[0]}
        rows[name] = row
        print(f"{name:30s} {row['state_gib']:10.2f} {row[key]:9.2f} {row['ru_maxrss_gib']:10.2f} "
              f"{row['step_s']:7.2f}" + ("" if cuda else f"{row['alloc_peak_gib']:15.2f}"))
    print("\nratios fsdp / ddp (state, peak, step time"
          + ("" if cuda else ", allocator peak") + "):")
    for base, other in (("sft ddp", "sft fsdp"), ("kd ddp, teacher replicated",
                                                  "kd fsdp, teacher replicated"),
                        ("kd ddp, teacher replicated", "kd fsdp, teacher sharded")):
        b, o = rows[base], rows[other]
        print(f"  {other:30s} {o['state_gib'] / b['state_gib']:.2f}  {o[key] / b[key]:.2f}  "
              f"{o['step_s'] / b['step_s']:.2f}"
              + ("" if cuda else f"  {o['alloc_peak_gib'] / b['alloc_peak_gib']:.2f}"))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
