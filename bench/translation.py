"""Translation on tatoeba_en_ro: a Marian teacher trained from scratch, a student, sft vs kd.

    python bench/translation.py --quick          # d_model 128, 2000 pairs: ~4 min
    python bench/translation.py                  # d_model 128, all 3836 pairs, 20 + 4 epochs: ~40 min
    python bench/translation.py --device cuda    # one GPU, bf16: d_model 256, 20 epochs

1. A byte-level BPE tokenizer trained on the train split (both sides, ``train_tokenizer``) and a
   randomly initialised Marian 6-6 (``raydistill.models.scratch.new_model("marian", ...)``),
   trained by ``raydistill distill`` with ``method: sft``: the teacher.
2. A 6-3 student (``make_student``: alternating decoder layers 0, 2, 5), trained with sft
   (references) and with kd (SummarizationDistiller: KD at T=2 + CE), with equal budgets.
3. sacreBLEU and chrF on the test split (``evaluate``), batch-1 latency (``measure_latency``,
   interleaved rounds, median) and speedup over the teacher.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import (
    begin,
    add_common_args,
    jsonable,
    read_lines,
    score_models,
    setup_env,
    table,
    threads,
    train_run,
    write_result,
)

NAME = "translation"


def settings(args: argparse.Namespace) -> dict:
    """quick: the `make bench` set; full on CPU: every train pair, sized for 2 cores;
    full on a GPU: a wider model trained longer."""
    quick, gpu = args.quick, args.device == "cuda"
    return {
        "vocab_size": 2000 if quick else 8000 if gpu else 4000,
        "d_model": 256 if gpu and not quick else 128,
        "layers": 6,
        "student_decoder_layers": args.student_decoder_layers,
        "n_train": 2000 if quick else None,
        "n_val": 32 if quick else 100,
        "n_test": 200 if quick else None if gpu else 500,
        "max_length": 48,
        "num_beams": 1 if quick else 4,
        "teacher_epochs": 3 if quick else 20,
        "student_epochs": 1 if quick else 10 if gpu else 4,
        "train_batch_size": 32,
        "learning_rate": 5e-4,
        "warmup_steps": 40 if quick else 200 if gpu else 100,
        "latency_n": 20 if quick else 100 if gpu else 50,
        "latency_rounds": 3,
        "num_eval_workers": 2,
        "seed": 0,
    }


def teacher_init(data: Path, out: Path, s: dict) -> Path:
    """Tokenizer trained on train (both sides) + a random Marian 6-6, saved together."""
    import torch

    from raydistill.models.scratch import new_model, save_model_and_tokenizer, train_tokenizer

    texts = read_lines(data / "train.source", s["n_train"]) + read_lines(data / "train.target",
                                                                         s["n_train"])
    tok = train_tokenizer(texts, vocab_size=s["vocab_size"])
    torch.manual_seed(s["seed"])
    model = new_model("marian", len(tok), d_model=s["d_model"], encoder_layers=s["layers"],
                      decoder_layers=s["layers"], ffn_dim=4 * s["d_model"], heads=4,
                      max_positions=256, pad_token_id=tok.pad_token_id)
    return save_model_and_tokenizer(model, tok, out)


def base_config(args, s: dict, data: Path, out: Path) -> dict:
    return {
        "data_dir": str(data), "task": "translation", "output_dir": str(out),
        "num_workers": 1, "cpus_per_worker": threads(args), "use_gpu": args.device == "cuda",
        "precision": "bf16" if args.device == "cuda" else "fp32",
        "n_train": s["n_train"], "n_val": s["n_val"], "max_source_length": s["max_length"],
        "max_target_length": s["max_length"], "val_max_target_length": s["max_length"],
        "test_max_target_length": s["max_length"], "train_batch_size": s["train_batch_size"],
        "eval_batch_size": 32, "eval_beams": s["num_beams"], "learning_rate": s["learning_rate"],
        "warmup_steps": s["warmup_steps"], "seed": s["seed"], "sortish_sampler": True,
        "do_predict": False, "logger": "tensorboard", "log_every_n_steps": 20,
        "checkpoints_to_keep": 1,
    }


def main() -> None:
    setup_env()
    p = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), NAME)
    p.add_argument("--student-decoder-layers", type=int, default=3)
    args = p.parse_args()
    s = settings(args)
    data, work = begin(args, "tatoeba_en_ro", NAME)
    t_all = time.time()
    d = s["student_decoder_layers"]
    print(f"== teacher: Marian {s['layers']}-{s['layers']} d{s['d_model']} from scratch (sft)",
          flush=True)
    init = teacher_init(data, work / "teacher_init", s)
    teacher, secs = train_run({**base_config(args, s, data, work / "teacher"), "method": "sft",
                               "student": str(init), "max_epochs": s["teacher_epochs"]})
    models = {f"teacher {s['layers']}-{s['layers']} (sft)": {"dir": teacher, "train_seconds": secs}}
    for method in ("sft", "kd"):
        name = f"student {s['layers']}-{d} ({method})"
        print(f"== {name}", flush=True)
        cfg = {**base_config(args, s, data, work / f"student_{method}"), "method": method,
               "teacher": str(teacher), "student_decoder_layers": d,
               "max_epochs": s["student_epochs"]}
        if method == "kd":
            cfg.update(alpha_ce=0.8, alpha_mlm=0.2, temperature=2.0)
        best, secs = train_run(cfg)
        models[name] = {"dir": best, "train_seconds": secs}

    print("== test split: sacreBLEU, chrF and batch-1 generation latency", flush=True)
    score_models(models, data, "translation", num_beams=s["num_beams"], max_length=s["max_length"],
                 max_source_length=s["max_length"], n_test=s["n_test"], latency_n=s["latency_n"],
                 latency_rounds=s["latency_rounds"], num_workers=s["num_eval_workers"],
                 device=args.device)
    seconds = time.time() - t_all
    mode = "QUICK MODE (small caps)" if args.quick else "full mode"
    print(f"\ntatoeba en-ro test, {mode}: n_train {s['n_train'] or 'all'}, n_test "
          f"{s['n_test'] or 'all'}, beams {s['num_beams']}, device {args.device}, "
          f"{threads(args)} thread(s); latency: batch 1, {s['latency_n']} examples x "
          f"{s['latency_rounds']} interleaved rounds (median)\n")
    print(table([[n, f"{m['parameters'] / 1e6:.2f}", f"{m['speedup']:.2f}",
                  f"{m['scores']['bleu']:.2f}", f"{m['scores']['chrf']:.2f}",
                  f"{m['ms_per_example']:.1f}", f"{m['mean_gen_words']:.1f}",
                  f"{m['train_seconds']:.0f}"] for n, m in models.items()],
                ["model", "# params (M)", "speedup", "BLEU", "chrF", "ms/example", "output words",
                 "train s"]))
    names = list(models)
    kd, sft = models[names[2]]["scores"], models[names[1]]["scores"]
    print(f"\nkd vs sft student: BLEU {kd['bleu'] - sft['bleu']:+.2f}, chrF "
          f"{kd['chrf'] - sft['chrf']:+.2f}; benchmark wall time {seconds:.0f} s")
    write_result(NAME, {"settings": s, "device": args.device, "threads": threads(args),
                        "quick": args.quick, "models": jsonable(models),
                        "command": " ".join(sys.argv), "seconds": seconds})


if __name__ == "__main__":
    main()
