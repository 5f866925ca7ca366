"""What Ray costs: raydistill's kd step against a plain PyTorch loop, side by side.

    python bench/overhead.py --quick            # scratch BART 6-6 d128 -> 6-1, ~4 min
    python bench/overhead.py                    # MiniLM BERT2BERT teacher, 3 repetitions each
    python bench/overhead.py --device cuda      # one GPU, bf16 autocast on both sides
    python bench/overhead.py --device cuda --size bart-base   # BART-base size (gpu_check.sh)

``--size`` picks the models and lengths: ``quick`` (the ``--quick`` default: a scratch BART 6-6
d128 -> 6-1, 64/32 tokens), ``full`` (the default: MiniLM BERT2BERT -> 6-1, 256/48 tokens),
``bart-base`` (a scratch BART of BART-base's shape: d_model 768, 12 heads, FFN 3072, a 6-6
teacher and a 6-3 student, batches of 8 x 128 tokens; where a GPU's efficiency means something)
and ``tiny`` (d64 2-2 -> 2-1, a dozen steps: the rehearsal of bench/gpu_check.sh).

Both sides train the same student against the same teacher on the same batches with the same
loss (the SummarizationDistiller objective of ``raydistill.distill.objective``: alpha_ce 0.8 KD at
T=2, alpha_mlm 0.2 CE), AdamW with linear decay, gradient clipping, one worker:

- raydistill: a real ``raydistill distill`` run (a subprocess of the CLI; Ray Train, one worker,
  Ray Data feeding length-grouped "sortish" batches of ``train_batch_size``). Its tokens/s is read
  from the run's own TensorBoard log (``train/tokens_per_s``, every ``log_every_n_steps``).
- raydistill_local: the same run with ``num_workers: 0``: Ray Train's local mode, the loop in
  the CLI's own process (Ray and Ray Data still start; no Train controller or worker process).
  For both raydistill runs the time from launch to the first optimizer step is read from the
  line rank 0 prints.
- plain: this file's ``plain_loop`` (a subprocess too): no Ray runtime (importing raydistill
  imports the ray module; nothing starts it), tokenization in-process with the same tokenizer,
  the same batch plan (``raydistill.data.plan.epoch_plan`` is a pure function of the token
  lengths, so both sides get identical batches in identical order), the same
  ``summarization_distiller_loss``.

Steady state = tokens/s over every logging window except the first; it excludes Ray start-up,
tokenization, model loading, the first window (first-step warm-up, the worker pulling its rows),
the final validation (generation) and the checkpoint. End-to-end = the wall time of each
subprocess, start to exit, everything included (both validate the same examples and save).
Tokens = non-pad source tokens + target tokens of each batch, counted the same way on both sides.
Both sides train with ``--threads`` torch threads (default 1) and ``OMP_NUM_THREADS`` set to it (as
Ray sets it in its workers). Steady tokens/s is the median logging window's rate (robust to other
processes taking the CPU for a few windows); the mean rate is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from common import (
    RESULTS,
    abba,
    add_common_args,
    autocast,
    build_bert2bert,
    build_scratch_pair,
    data_dir_or_skip,
    make_student_quietly,
    median,
    raydistill_cli,
    read_lines,
    run_logged,
    setup_env,
    table,
    tb_scalars,
    thread_env,
    threads,
    tokenize_pairs,
    useful_tokens,
    window_rates,
    write_result,
    write_yaml,
)

NAME = "overhead"


SIZES = {
    # model: scratch (a random-init BART, BPE trained on the train split) or minilm (BERT2BERT).
    "quick": {"model": "scratch", "d_model": 128, "heads": 4, "vocab_size": 4000,
              "teacher_layers": (6, 6), "student_layers": (6, 1), "reps": 2, "max_steps": 60,
              "log_every_n_steps": 4, "max_source_length": 64, "max_target_length": 32},
    "full": {"model": "minilm", "teacher_layers": (6, 6), "student_layers": (6, 1), "reps": 3,
             "max_steps": 100, "log_every_n_steps": 10, "max_source_length": 256,
             "max_target_length": 48},
    # 240 steps x 8 stay inside one epoch of scitldr's 1,992 training pairs: no validation
    # (generation) inside the timed windows. scitldr's BPE stops near 25k tokens: the models
    # get BART-base's 50,265 rows anyway (the KD losses then run chunked, as BART-base's do).
    "bart-base": {"model": "scratch", "d_model": 768, "heads": 12, "vocab_size": 50_265,
                  "model_vocab": 50_265,
                  "teacher_layers": (6, 6), "student_layers": (6, 3), "reps": 2,
                  "max_steps": 240, "log_every_n_steps": 20, "max_source_length": 128,
                  "max_target_length": 128},
    "tiny": {"model": "scratch", "d_model": 64, "heads": 4, "vocab_size": 1000,
             "teacher_layers": (2, 2), "student_layers": (2, 1), "reps": 1, "max_steps": 12,
             "log_every_n_steps": 3, "max_source_length": 32, "max_target_length": 16},
}
SYSTEMS = ("plain", "raydistill", "raydistill_local")


def settings(args: argparse.Namespace) -> dict:
    size = args.size or ("quick" if args.quick else "full")
    s = {"size": size, **SIZES[size], "train_batch_size": 8}
    if args.model == "scratch" and s["model"] != "scratch":  # full's lengths, quick's model
        s.update({k: SIZES["quick"][k] for k in ("d_model", "heads", "vocab_size")})
    if args.model:
        s["model"] = args.model
    if args.reps:
        s["reps"] = args.reps
    if args.max_steps:
        s["max_steps"] = args.max_steps
    return s


def distill_config(args, s: dict, teacher: Path, student: Path, data: Path, out: Path) -> dict:
    """One config for both sides: the plain loop reads the same YAML."""
    return {
        "method": "kd", "teacher": str(teacher), "student": str(student), "data_dir": str(data),
        "output_dir": str(out), "task": "summarization",
        "num_workers": 1, "cpus_per_worker": threads(args), "use_gpu": args.device == "cuda",
        "precision": "bf16" if args.device == "cuda" else "fp32",
        # One epoch: no mid-run validation.
        "n_train": s["max_steps"] * s["train_batch_size"],
        "max_steps": s["max_steps"], "train_batch_size": s["train_batch_size"],
        "sortish_sampler": True, "max_source_length": s["max_source_length"],
        "max_target_length": s["max_target_length"], "learning_rate": 1e-4, "seed": 0,
        "alpha_ce": 0.8, "alpha_mlm": 0.2, "alpha_hid": 0.0, "temperature": 2.0,
        # The final validation both sides do: a few examples, greedy, short.
        "n_val": 4, "eval_beams": 1, "eval_max_gen_length": 16, "eval_batch_size": 4,
        "val_check_interval": 1.0, "do_predict": False, "logger": "tensorboard",
        "log_every_n_steps": s["log_every_n_steps"], "checkpoints_to_keep": 1,
    }


# ---- the plain PyTorch side (runs in its own process: `--plain CONFIG`) -----------------------

def plain_loop(config_path: str, result_path: str, device: str) -> None:
    """The kd step with no Ray: same models, batches, loss and optimizer as the raydistill run.

    Written as the fastest loops are (nanoGPT's): tokens counted on the host before the copy,
    batches pinned and copied ``non_blocking`` on a GPU, the loss read on the host only when a
    line is due. The teacher loads through raydistill's ``load_teacher`` with the run's
    ``teacher_dtype``, so both sides run the same teacher dtype (bf16 weights on a GPU)."""
    t_start = time.time()
    import torch
    import yaml
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    from raydistill.config import DistillConfig
    from raydistill.data.plan import PlanSpec, epoch_plan
    from raydistill.distill.objective import summarization_distiller_loss
    from raydistill.models.generate import generate_local
    from raydistill.metrics import score
    from raydistill.models.layers import decoder_inputs, load_seq2seq, load_teacher

    from raydistill.data.tokenize import pad_batch

    cfg = DistillConfig.from_dict(yaml.safe_load(Path(config_path).read_text()))
    torch.set_num_threads(cfg.cpus_per_worker)
    torch.manual_seed(cfg.seed)
    data = Path(cfg.data_dir)
    tok = AutoTokenizer.from_pretrained(cfg.student)
    src, tgt = tokenize_pairs(tok, read_lines(data / "train.source", cfg.n_train),
                              read_lines(data / "train.target", cfg.n_train),
                              cfg.max_source_length, cfg.max_target_length)
    student = load_seq2seq(cfg.student).to(device).train()
    teacher = load_teacher(cfg.teacher, cfg.teacher_dtype, device)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad],
                            lr=cfg.learning_rate, eps=cfg.adam_epsilon,
                            weight_decay=cfg.weight_decay, fused=True)  # as raydistill's
    sched = get_linear_schedule_with_warmup(opt, cfg.warmup_steps, cfg.max_steps)
    spec = PlanSpec(mode="sortish", num_workers=1, seed=cfg.seed, batch_size=cfg.train_batch_size)

    windows: list[tuple[float, int]] = []  # (seconds, tokens) per logging window
    step, tokens, t0 = 0, 0, time.time()
    t_loop = t0
    epoch = 0
    while step < cfg.max_steps:
        for ids in epoch_plan([len(s) for s in src], [len(t) for t in tgt], spec, epoch).batches:
            host = pad_batch([src[i] for i in ids], [tgt[i] for i in ids], tok.pad_token_id)
            tokens += useful_tokens(host)  # on the host: no wait for the GPU
            if device == "cuda":
                batch = {k: v.pin_memory().to(device, non_blocking=True) for k, v in host.items()}
            else:
                batch = host
            dec_in = decoder_inputs(student, batch["labels"])
            kw = dict(attention_mask=batch["attention_mask"], decoder_input_ids=dec_in,
                      use_cache=False, return_dict=True)
            with autocast(device):
                s_out = student(input_ids=batch["input_ids"], **kw)
                with torch.no_grad():
                    t_out = teacher(input_ids=batch["input_ids"], **kw)
                loss, _ = summarization_distiller_loss(
                    s_logits=s_out.logits, t_logits=t_out.logits, labels=batch["labels"],
                    alpha_ce=cfg.alpha_ce, alpha_mlm=cfg.alpha_mlm, alpha_hid=cfg.alpha_hid,
                    temperature=cfg.temperature, src_mask=batch["attention_mask"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step % cfg.log_every_n_steps == 0:
                float(loss.detach())  # the one read of a window (it waits for the GPU's queue)
                now = time.time()
                windows.append((now - t0, tokens))
                t0, tokens = now, 0
            if step >= cfg.max_steps:
                break
        epoch += 1
    t_train = time.time() - t_loop
    # The same final validation and a checkpoint, so the end-to-end work matches.
    val_src = read_lines(data / "val.source", cfg.n_val)
    preds = generate_local(student, tok, val_src, num_beams=cfg.eval_beams,
                           max_length=cfg.eval_max_gen_length, batch_size=cfg.eval_batch_size,
                           max_source_length=cfg.max_source_length, device=device)
    score(cfg.task, preds, read_lines(data / "val.target", cfg.n_val))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out / "student")
    tok.save_pretrained(out / "student")
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, out / "state.pt")
    Path(result_path).write_text(json.dumps({"windows": windows, "train_seconds": t_train,
                                             "process_seconds": time.time() - t_start}))


# ---- measurement ------------------------------------------------------------------------------

def first_step_seconds(log: Path) -> float | None:
    """The 'first optimizer step X s after launch' rank 0 prints (None for the plain loop)."""
    import re

    found = re.search(r"first optimizer step ([0-9.]+) s after launch", log.read_text())
    return float(found.group(1)) if found else None


def raydistill_windows(tb_dir: Path) -> list[tuple[float, float]]:
    """(seconds, tokens) per logging window, from the run's TensorBoard tokens/s and wall times."""
    events = tb_scalars(tb_dir, "train/tokens_per_s")
    if len(events) < 3:
        raise RuntimeError(f"{tb_dir}: {len(events)} tokens/s events; need >= 3 logging windows")
    out = [(float("nan"), float("nan"))]  # the first window has no start time: never used
    for (w0, _, _), (w1, _, rate) in zip(events, events[1:]):
        out.append((w1 - w0, rate * (w1 - w0)))
    return out


def main() -> None:
    setup_env()
    p = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), NAME)
    p.add_argument("--model", choices=("scratch", "minilm"), default=None,
                   help="scratch: BART 6-6 d128 (random init) -> 6-1 (quick default); "
                        "minilm: BERT2BERT from MiniLM -> 6-1 (full default)")
    p.add_argument("--size", choices=tuple(SIZES), default=None,
                   help="models and lengths (module doc; default quick with --quick, else full)")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS),
                   help="the systems compared (plain is always one of them)")
    p.add_argument("--reps", type=int, default=None, help="repetitions per system")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps per run")
    p.add_argument("--plain", help=argparse.SUPPRESS)  # internal: run the plain loop on CONFIG
    p.add_argument("--plain-result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain:
        plain_loop(args.plain, args.plain_result, args.device)
        return

    s = settings(args)
    data = data_dir_or_skip(args.data_root, "scitldr", NAME)
    work = Path(args.workdir).resolve()
    t_all = time.time()
    teacher_layers, student_layers = tuple(s["teacher_layers"]), tuple(s["student_layers"])
    if s["model"] == "scratch":
        # The quick pair keeps its old folder name (a cache other runs made).
        name = (f"scratch_d{s['d_model']}" if s["size"] == "quick" else
                f"scratch_d{s['d_model']}_h{s['heads']}_v{s['vocab_size']}"
                f"_{teacher_layers[0]}_{teacher_layers[1]}")
        teacher, student = build_scratch_pair(
            data, RESULTS / "models" / name, vocab_size=s["vocab_size"], d_model=s["d_model"],
            layers=teacher_layers, student=student_layers, heads=s["heads"],
            model_vocab=s.get("model_vocab"))
    else:
        teacher = build_bert2bert(RESULTS / "models" / "bert2bert_minilm")
        student = RESULTS / "models" / "bert2bert_minilm_6_1"
        if not (student / "config.json").is_file():
            make_student_quietly(teacher, student_layers, student)

    systems = ("plain", *[k for k in SYSTEMS[1:] if k in args.systems])
    reps: dict[str, list[dict]] = {k: [] for k in systems}
    for rep, system in abba(s["reps"], systems):
        out = work / "runs" / f"{system}_{rep}"
        shutil.rmtree(out, ignore_errors=True)
        run_dir = out / "run"  # raydistill wants an empty output_dir: config and log sit beside it
        cfg = distill_config(args, s, teacher, student, data, run_dir)
        if system == "raydistill_local":  # num_workers: 0, Ray Train's local mode
            cfg["num_workers"] = 0
        cfg_path = write_yaml(out / "config.yaml", cfg)
        log = out / "log.txt"
        if system == "plain":
            wall = run_logged([sys.executable, str(Path(__file__).resolve()), "--plain",
                               str(cfg_path), "--plain-result", str(out / "plain.json"),
                               "--device", args.device], log, extra_env=thread_env(threads(args)))
            res = json.loads((out / "plain.json").read_text())
            windows = [tuple(w) for w in res["windows"]]
        else:
            wall = run_logged([*raydistill_cli(), "distill", str(cfg_path)], log)
            windows = raydistill_windows(run_dir / "tensorboard")
        rates = window_rates(windows)
        reps[system].append({"rep": rep, "steady_tokens_per_s": rates["median"],
                             "steady_mean_tokens_per_s": rates["mean"], "wall_seconds": wall,
                             "window_rates": [t / s for s, t in windows[1:]],
                             "first_step_s": first_step_seconds(log)})
        print(f"[overhead] rep {rep} {system:>10}: steady {rates['median']:7.0f} tok/s (median "
              f"window; mean {rates['mean']:.0f}), end-to-end {wall:6.1f} s", flush=True)

    med = {k: {key: median([r[key] for r in v]) for key in
               ("steady_tokens_per_s", "steady_mean_tokens_per_s", "wall_seconds")}
           for k, v in reps.items()}
    ours = [k for k in systems if k != "plain"]
    for k in ours:
        firsts = [r["first_step_s"] for r in reps[k] if r["first_step_s"] is not None]
        med[k]["first_step_s"] = median(firsts) if firsts else None
    plain = med["plain"]
    # Steady tokens/s of each raydistill system over the plain loop's: medians, mean rates,
    # and per repetition pair (each pair ran back to back, under the same load).
    ratios = {k: {"steady": med[k]["steady_tokens_per_s"] / plain["steady_tokens_per_s"],
                  "steady_mean": (med[k]["steady_mean_tokens_per_s"]
                                  / plain["steady_mean_tokens_per_s"]),
                  "wall": med[k]["wall_seconds"] / plain["wall_seconds"],
                  "pairs": [r["steady_tokens_per_s"] / pl["steady_tokens_per_s"]
                            for r, pl in zip(reps[k], reps["plain"])]} for k in ours}
    target = 0.97 if args.device == "cuda" else 0.95  # issue 27 on a GPU; issue 4 on the CPU
    labels = {"plain": "plain PyTorch", "raydistill": "raydistill (Ray Train + Ray Data)",
              "raydistill_local": "raydistill, num_workers: 0 (in process)"}
    print(f"\nkd step, 1 worker x {threads(args)} thread(s), {args.device}, size {s['size']} "
          f"(model {s['model']}), batch {s['train_batch_size']} (sortish), max_source_length "
          f"{s['max_source_length']}, {s['max_steps']} steps, "
          f"{s['reps']} interleaved repetitions each (medians)\n")
    print(table([[labels[k], f"{med[k]['steady_tokens_per_s']:.0f}",
                  f"{med[k]['steady_mean_tokens_per_s']:.0f}", f"{med[k]['wall_seconds']:.1f}"]
                 for k in systems],
                ["system", "steady tokens/s (median window)", "steady tokens/s (mean)",
                 "end-to-end wall (s)"]))
    print()
    for k in ours:
        q = ratios[k]
        print(f"steady-state tokens/s ratio {k}/plain: {q['steady']:.3f} (target >= {target}: "
              f"{'met' if q['steady'] >= target else 'NOT met'}); per repetition pair: "
              f"{', '.join(f'{r:.3f}' for r in q['pairs'])}; with mean rates: "
              f"{q['steady_mean']:.3f}")
        first = med[k]["first_step_s"]
        print(f"first optimizer step after launch, {labels[k]}: "
              + (f"{first:.1f} s (target <= 15 s: {'met' if first <= 15 else 'NOT met'})"
                 if first is not None else "not printed"))
        print(f"end-to-end wall time ratio {k}/plain: {q['wall']:.2f}x "
              f"(+{med[k]['wall_seconds'] - plain['wall_seconds']:.1f} s of fixed cost)")
    print(f"benchmark wall time {time.time() - t_all:.0f} s")
    result = {"settings": s, "device": args.device, "systems": list(systems), "reps": reps,
              "medians": med, "ratios": ratios, "target": target,
              "command": " ".join(sys.argv), "seconds": time.time() - t_all}
    if "raydistill" in ratios:  # the keys run_quick.py and BENCHMARKS.md read
        q = ratios["raydistill"]
        result.update(steady_ratio=q["steady"], steady_mean_ratio=q["steady_mean"],
                      pair_ratios=q["pairs"], wall_ratio=q["wall"])
    if "raydistill_local" in ratios:
        result["steady_ratio_local"] = ratios["raydistill_local"]["steady"]
    write_result(NAME, result)

if __name__ == "__main__":
    main()
