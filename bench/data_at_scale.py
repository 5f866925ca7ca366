"""Data at scale: batch plans, cached teacher logits, pseudo-label throughput, in one run.

    python bench/data_at_scale.py --quick       # ~10 min on 2 busy cores
    python bench/data_at_scale.py               # more examples, ABBA repetitions

Reads ../shared/data/scitldr in place (exits with a SKIP line when it is absent). Three parts:

1. Batching (pure functions, no Ray): the SciTLDR train split tokenized by a BPE tokenizer
   trained on it (max 1024 source / 64 target tokens), planned for 2 workers as random
   fixed-size batches, sortish fixed-size batches and token-budget batches
   (``raydistill.data.plan.epoch_plan``, what a run uses). Padding fraction of the source side,
   batches per worker per epoch, padded source tokens per batch (mean and max: the memory peak).
2. Epoch time, live teacher vs cached top-k logits (``--threads`` torch threads, default 1): the
   same student, loss (TextBrewer KD at T=1 plus hard labels), batches (token budget) and
   feed (``planned_batches`` pulling rows from the materialized Ray Datasets), in this process; live runs the teacher forward on every batch,
   cached reads the top-64 that ``build_cache`` wrote (Ray Data, 2 actors; its time is reported
   as the one-off cost, with the number of epochs after which caching has paid for itself).
3. Pseudo-label throughput: ``pseudo_label`` (2 Ray Data actors, 1 CPU each, end to end: actor
   start, model load, generation, Parquet parts) against one process running ``generate_local``
   over the same teacher and examples, with all cores and with one thread (model load
   included). The teacher here has weights ~N(0, 0.3) (``spiky_copy``) so that it writes text.

Systems run interleaved (ABBA), figures are medians; part 2 also reports CPU seconds of this
process, steadier than wall time when other jobs share the machine.

Models: a random 6-6 BART teacher (d_model 256, BPE vocab 4000 trained on the train split) and a
6-1 student copied from it (``bench/common.py``). Random weights change no timing that matters
here (part 3's teacher generates to max_length).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from common import (
    abba,
    add_common_args,
    build_scratch_pair,
    data_dir_or_skip,
    median,
    read_lines,
    setup_env,
    table,
    threads,
    tokenize_pairs,
    write_result,
)

NAME = "data_at_scale"


def settings(quick: bool) -> dict:
    return {
        "reps": 2 if quick else 3,
        "batch_size": 16,
        "num_workers": 2,
        "epoch_examples": 64 if quick else 256,
        "epoch_max_source_length": 128 if quick else 256,
        "epoch_max_tokens": 2048,
        "top_k": 64,
        "pl_examples": 96 if quick else 384,
        "pl_num_beams": 2,
        "pl_max_length": 32,
        "pl_batch_size": 8,
    }


# ---- 1. batching -------------------------------------------------------------------------------

def batching(tokenizer, data_dir: Path, s: dict) -> dict:
    from raydistill.data.batching import padding_fraction
    from raydistill.data.plan import PlanSpec, epoch_plan

    src, tgt = tokenize_pairs(tokenizer, read_lines(data_dir / "train.source"),
                              read_lines(data_dir / "train.target"), 1024, 64)
    src_lens = np.array([len(x) for x in src])
    tgt_lens = np.array([len(x) for x in tgt])
    bs, n_w = s["batch_size"], s["num_workers"]
    # The budget a fixed batch of `bs` examples of mean length would fill.
    budget = int(bs * src_lens.mean())
    specs = {
        f"random, {bs} per batch": PlanSpec("random", n_w, seed=0, batch_size=bs),
        f"sortish, {bs} per batch": PlanSpec("sortish", n_w, seed=0, batch_size=bs),
        f"token budget {budget}": PlanSpec("token_budget", n_w, seed=0, max_tokens=budget),
    }
    rows = {}
    for name, spec in specs.items():
        t0 = time.perf_counter()
        plan = epoch_plan(src_lens, tgt_lens, spec, epoch=0)
        seconds = time.perf_counter() - t0
        padded = [len(b) * src_lens[b].max() for b in plan.batches]
        rows[name] = {"padding_fraction": padding_fraction(plan.batches, src_lens),
                      "batches_per_worker": len(plan.batches) // n_w,
                      "padded_tokens_mean": float(np.mean(padded)),
                      "padded_tokens_max": int(np.max(padded)),
                      "oversized": plan.num_oversized, "plan_seconds": seconds}
    return {"examples": len(src), "src_len_mean": float(src_lens.mean()),
            "src_len_max": int(src_lens.max()), "budget": budget, "plans": rows}


# ---- 2. live teacher vs cached logits ---------------------------------------------------------

def epochs(teacher: Path, student: Path, data_dir: Path, work: Path, s: dict, n_threads: int) -> dict:
    import torch

    from raydistill.config import DistillConfig
    from raydistill.data.files import split_dataset
    from raydistill.data.plan import PlanSpec, epoch_plan, planned_batches
    from raydistill.data.tokenize import make_collate_fn, tokenize_dataset
    from raydistill.models.teacher_cache import build_cache, cache_key, load_cache
    from raydistill.distill.step import LossStep
    from raydistill.models.layers import load_seq2seq

    n, max_src = s["epoch_examples"], s["epoch_max_source_length"]
    train = tokenize_dataset(split_dataset(data_dir, "train", n), str(student), max_src, 48,
                             num_actors=2).materialize()
    from transformers import AutoTokenizer

    pad_id = AutoTokenizer.from_pretrained(student).pad_token_id
    cache_dir = work / "logit_cache"
    key = cache_key([str(teacher)], str(student), str(data_dir), n=n, max_source_length=max_src,
                    max_target_length=48)
    manifest = build_cache(train, cache_dir, key, teachers=[str(teacher)], pad_token_id=pad_id,
                           top_k=s["top_k"], batch_size=s["batch_size"], num_workers=2)
    cached_ds = load_cache(cache_dir)

    cols = {"id": [], "src_len": [], "tgt_len": []}
    for block in train.iter_batches(batch_size=None, batch_format="numpy"):
        for c in cols:
            cols[c].append(block[c])
    ids, src_l, tgt_l = (np.concatenate(cols[c]) for c in cols)
    order = np.argsort(ids)
    ids, src_l, tgt_l = ids[order], src_l[order], tgt_l[order]
    plan = epoch_plan(src_l, tgt_l, PlanSpec("token_budget", 1, 0, max_tokens=s["epoch_max_tokens"]), 0)
    batches = [ids[np.asarray(b)] for b in plan.batches]
    collate = make_collate_fn(pad_id)
    columns = {"train": ["input_ids", "labels"], "teacher_logits": ["topk_values", "topk_indices"]}
    torch.set_num_threads(n_threads)

    def cfg(cached: bool) -> DistillConfig:
        return DistillConfig(method="kd", teacher=str(teacher), data_dir=str(data_dir),
                             output_dir=str(work), distillation={
                                 "temperature": 1, "hard_label_weight": 0.5,
                                 "is_caching_logits": cached})

    teacher_model = load_seq2seq(teacher)

    def one_epoch(system: str) -> tuple[float, float, int]:
        torch.manual_seed(0)
        model = load_seq2seq(student).train()
        cached = system == "cached"
        step = LossStep(cfg(cached), [] if cached else [teacher_model], model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        sources = {"train": train, **({"teacher_logits": cached_ds} if cached else {})}
        t0, c0, tokens = time.perf_counter(), time.process_time(), 0
        for i, batch in enumerate(planned_batches(batches, sources, collate, columns)):
            batch = {k: v for k, v in batch.items() if k != "id"}
            loss, _ = step(model, batch, i, len(batches))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum()) + int(batch["labels"].ne(-100).sum())
        return time.perf_counter() - t0, time.process_time() - c0, tokens

    # Wall time and this process's CPU time: on a shared machine the CPU time is the steadier.
    times: dict[str, list[float]] = {"live": [], "cached": []}
    cpu: dict[str, list[float]] = {"live": [], "cached": []}
    tokens = 0
    for _, system in abba(s["reps"], ["live", "cached"]):
        seconds, cpu_s, tokens = one_epoch(system)
        times[system].append(seconds)
        cpu[system].append(cpu_s)
        print(f"  epoch {system}: {seconds:.1f} s wall, {cpu_s:.1f} s CPU", flush=True)
    live, cached = median(times["live"]), median(times["cached"])
    live_cpu, cached_cpu = median(cpu["live"]), median(cpu["cached"])
    build = manifest["build_seconds"]
    return {"examples": n, "batches": len(batches), "tokens_per_epoch": tokens,
            "max_source_length": max_src,
            "live_epoch_s": live, "cached_epoch_s": cached, "speedup": live / cached,
            "live_epoch_cpu_s": live_cpu, "cached_epoch_cpu_s": cached_cpu,
            "speedup_cpu": live_cpu / cached_cpu,
            "cache_build_s": build, "cache_mb": manifest["bytes"] / 1e6, "top_k": s["top_k"],
            "break_even_epochs": build / (live - cached) if live > cached else None,
            "all": times, "all_cpu": cpu}


# ---- 3. pseudo-label throughput -----------------------------------------------------------------

def spiky_copy(teacher: Path, out: Path) -> Path:
    """The teacher with weights ~N(0, 0.3): at the usual 0.02 an untrained model writes nothing
    but special tokens (empty pseudo-labels); these write varied text, to max_length."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoTokenizer

    from raydistill.models.layers import load_seq2seq

    torch.manual_seed(0)
    model = load_seq2seq(teacher)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(out)
    return out


def pseudo_labels(teacher: Path, data_dir: Path, work: Path, s: dict) -> dict:
    import os

    import torch
    from transformers import AutoTokenizer

    from raydistill.models.pseudo_label import pseudo_label
    from raydistill.models.generate import generate_local
    from raydistill.models.layers import load_seq2seq

    n = s["pl_examples"]
    teacher = spiky_copy(teacher, work / "models" / "teacher_spiky")
    gen = dict(num_beams=s["pl_num_beams"], max_length=s["pl_max_length"], max_source_length=256)

    def ray_actors() -> float:
        out = work / "pseudo"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        shard = max(8, n // 6)
        pseudo_label(str(teacher), str(data_dir), str(out), n=n, batch_size=s["pl_batch_size"],
                     num_workers=2, shard_size=shard, **gen)
        return time.perf_counter() - t0

    def one_process(n_threads: int) -> float:
        torch.set_num_threads(n_threads)
        t0 = time.perf_counter()
        model = load_seq2seq(teacher).eval()
        tok = AutoTokenizer.from_pretrained(teacher)
        generate_local(model, tok, read_lines(data_dir / "train.source", n),
                       batch_size=s["pl_batch_size"], **gen)
        return time.perf_counter() - t0

    # One process with all cores, and with one thread: on a busy machine a multi-threaded
    # torch can lose far more to descheduled threads than the single-threaded actors do.
    cores = os.cpu_count() or 1
    runs = {"ray_actors": ray_actors,
            "one_process": lambda: one_process(cores),
            "one_process_1_thread": lambda: one_process(1)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _, system in abba(s["reps"], list(runs)):
        times[system].append(runs[system]())
        print(f"  pseudo-label {system}: {times[system][-1]:.1f} s", flush=True)
    ray_s, one_s = median(times["ray_actors"]), median(times["one_process"])
    one1_s = median(times["one_process_1_thread"])
    return {"examples": n, **gen, "batch_size": s["pl_batch_size"], "threads": cores,
            "ray_examples_per_s": n / ray_s, "one_process_examples_per_s": n / one_s,
            "one_process_1_thread_examples_per_s": n / one1_s,
            "ratio": one_s / ray_s, "ratio_1_thread": one1_s / ray_s, "all": times}


def main() -> None:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), NAME)
    args = parser.parse_args()
    setup_env()
    data_dir = data_dir_or_skip(args.data_root, "scitldr", NAME)
    s = settings(args.quick)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    n_threads = threads(args)
    t_start = time.perf_counter()

    teacher, student = build_scratch_pair(data_dir, work / "models", vocab_size=4000, d_model=256,
                                          layers=(6, 6), student=(6, 1))
    from transformers import AutoTokenizer

    print("1. batching (pure)", flush=True)
    batch_res = batching(AutoTokenizer.from_pretrained(teacher), data_dir, s)

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from raydistill.runtime import quiet_ray_data

    quiet_ray_data()
    print("2. epoch: live teacher vs cached logits", flush=True)
    epoch_res = epochs(teacher, student, data_dir, work, s, n_threads)
    print("3. pseudo-label: Ray Data actors vs one process", flush=True)
    pl_res = pseudo_labels(teacher, data_dir, work, s)
    ray.shutdown()

    import os

    result = {"settings": s, "quick": args.quick, "seconds": time.perf_counter() - t_start,
              "load_avg_end": [round(x, 1) for x in os.getloadavg()],
              "batching": batch_res, "epoch": epoch_res, "pseudo_label": pl_res}
    path = write_result(NAME, result)
    print(report(result))
    print(f"\nresults: {path}")


def report(r: dict) -> str:
    b, e, p = r["batching"], r["epoch"], r["pseudo_label"]
    rand = next(iter(b["plans"].values()))
    rows = [[name, f"{v['padding_fraction']:.1%}", v["batches_per_worker"],
             f"{v['padded_tokens_mean']:.0f}", v["padded_tokens_max"],
             f"{rand['padding_fraction'] / max(v['padding_fraction'], 1e-9):.1f}x"]
            for name, v in b["plans"].items()]
    out = [f"\n## 1. Batch plans: SciTLDR train, {b['examples']} examples, 2 workers "
           f"(source length mean {b['src_len_mean']:.0f}, max {b['src_len_max']})\n",
           table(rows, ["plan", "padding", "batches/worker/epoch", "padded tokens/batch (mean)",
                        "(max)", "less padding than random"])]
    out += [f"\n## 2. One epoch, live teacher vs cached top-{e['top_k']} logits "
            f"({e['examples']} examples, {e['batches']} token-budget batches, source <= "
            f"{e['max_source_length']} tokens)\n",
            table([["live teacher", f"{e['live_epoch_s']:.1f}", f"{e['live_epoch_cpu_s']:.1f}", ""],
                   ["cached logits", f"{e['cached_epoch_s']:.1f}", f"{e['cached_epoch_cpu_s']:.1f}",
                    f"{e['speedup']:.2f}x wall, {e['speedup_cpu']:.2f}x CPU"],
                   ["cache build (once, 2 actors)", f"{e['cache_build_s']:.1f}", "",
                    f"pays off after {e['break_even_epochs']:.1f} epochs"
                    if e["break_even_epochs"] else "no gain measured"]],
                  ["", "wall s", "CPU s", "speed-up"]),
            f"\ncache: {e['cache_mb']:.2f} MB for {e['examples']} examples "
            f"({e['cache_mb'] * 1e3 / e['examples']:.1f} kB/example)"]
    out += [f"\n## 3. Pseudo-labels: {p['examples']} examples, beams {p['num_beams']}, "
            f"max_length {p['max_length']}\n",
            table([["Ray Data, 2 actors x 1 CPU (end to end)", f"{p['ray_examples_per_s']:.2f}",
                    f"{p['ratio']:.2f}x", f"{p['ratio_1_thread']:.2f}x"],
                   [f"one process, {p['threads']} threads", f"{p['one_process_examples_per_s']:.2f}",
                    "1.00x", ""],
                   ["one process, 1 thread", f"{p['one_process_1_thread_examples_per_s']:.2f}",
                    "", "1.00x"]],
                  ["", "examples/s", f"vs {p['threads']} threads", "vs 1 thread"]),
            "\nseconds per run: " + "; ".join(
                f"{k} {', '.join(f'{x:.1f}' for x in v)}" for k, v in p["all"].items()),
            f"\nload average at the end: {r.get('load_avg_end', '?')}"]
    return "\n".join(out)


if __name__ == "__main__":
    main()
