"""raydistill against TextBrewer 0.2.1.post1: same teacher, student, data, loss; side by side.

    python bench/vs_textbrewer.py --quick        # scratch BART 6-6 d128 -> 6-1, ~5 min
    python bench/vs_textbrewer.py                # MiniLM BERT2BERT 6-6 -> 6-1, full scitldr train
    python bench/vs_textbrewer.py --device cuda  # one GPU, bf16 autocast on both sides

The loss on both sides is TextBrewer's GeneralDistiller objective, from one DistillationConfig:
KD cross-entropy at temperature T + hard-label cross-entropy + one hidden-state MSE match (the
student's only decoder layer against the teacher's last decoder layer, over target positions).
raydistill gets it as its ``distillation:`` section; TextBrewer as ``DistillationConfig``.

Each system uses its best batching:
- raydistill: token-budget batches (``max_tokens_per_batch``: similar lengths together, little
  padding), fed by Ray Data to one Ray Train worker; a real ``raydistill distill`` run.
- TextBrewer: a torch DataLoader with a random sampler, padding to the longest row of the batch.

raydistill runs three times per repetition: with the live teacher ("raydistill"), and with
``is_caching_logits: true`` and its two stores. "raydistill+cache" (``logit_cache: parquet``,
the default): the teacher runs once, before training, over the train set (Ray Data), and its
top-k logits and the matched hidden state are read from the Parquet cache in every epoch; the
build is counted in every time below. "raydistill+memory" (``logit_cache: memory``): the first
epoch runs the teacher and keeps its outputs in memory, the later epochs train from them; no
build stage. TextBrewer has the same key, but its GeneralDistiller switches caching off when
intermediate matches are set (distiller_general.py), so it runs its teacher at every step.
``--top-k``: logits kept per position (default: the whole vocabulary for the scratch models, so
the cached loss is exact; 256 otherwise). ``--systems`` runs a subset (TextBrewer always runs;
``--quick`` leaves raydistill+cache out unless asked, to keep the quick set short).

Validation loss is computed the same way for both, after the runs, by this file: the student's
token-averaged cross-entropy on the first ``n_val`` val examples, for every checkpoint each system
wrote (``evals_per_epoch`` per epoch). Time of a checkpoint = seconds from the launch of the
system's process to the checkpoint, minus raydistill's own validation (generation) time (TextBrewer
runs no validation: its callback only notes the time). "Time to the same loss": the target is the
worse of the two final validation losses; each system's time is its first checkpoint at or below it,
counted from launch and, without start-up costs, from the end of its first logging window.
Tokens/s: the median logging window (``log_every_n_steps`` steps) after the first, leaving out
windows that hold a checkpoint; both systems run ``--threads`` torch threads (default 1) with
``OMP_NUM_THREADS`` set to it, as Ray sets it in its workers.
"""

from __future__ import annotations

import argparse
import json
import re
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
    last_decoder_match,
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
    val_batches,
    val_loss,
    write_result,
    window_rates,
    write_yaml,
)

NAME = "vs_textbrewer"
SYSTEMS = ("textbrewer", "raydistill", "raydistill+cache", "raydistill+memory")
CACHE_STORE = {"raydistill+cache": "parquet", "raydistill+memory": "memory"}


def settings(args: argparse.Namespace) -> dict:
    quick = args.quick
    return {
        "model": args.model or ("scratch" if quick else "minilm"),
        "d_model": 128,
        "reps": args.reps or (2 if quick else 3),
        "n_train": 192 if quick else None,
        "n_val": 64 if quick else 200,
        "max_epochs": 2 if quick else 3,
        "evals_per_epoch": 2,
        "train_batch_size": 8,
        "max_source_length": 256,
        "max_target_length": 48,
        "learning_rate": 5e-4 if quick else 1e-4,
        "warmup_steps": 4 if quick else 50,
        "log_every_n_steps": 4 if quick else 10,
        "seed": 0,
    }


def distillation(teacher: Path, student: Path) -> dict:
    """The DistillationConfig both systems get (TextBrewer's keys and meanings)."""
    from raydistill.models.layers import layer_counts, load_seq2seq

    counts = [layer_counts(load_seq2seq(str(p)).config) for p in (teacher, student)]
    return {"temperature": 4, "kd_loss_type": "ce", "kd_loss_weight": 1.0, "hard_label_weight": 1.0,
            "intermediate_matches": [last_decoder_match(*counts)]}


# ---- the TextBrewer side (its own process: `--textbrewer SPEC`) -------------------------------

class Collate:
    """Pads a list of (source ids, target ids); the same batch for teacher and student, plus labels
    for the student (its model computes the hard-label loss, TextBrewer's usual way)."""

    def __init__(self, pad_id: int, start_id: int) -> None:
        self.pad_id, self.start_id = pad_id, start_id

    def __call__(self, rows):
        from raydistill.data.tokenize import pad_batch
        from raydistill.models.layers import shift_labels_right

        b = pad_batch([r[0] for r in rows], [r[1] for r in rows], self.pad_id)
        common = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
                  "decoder_input_ids": shift_labels_right(b["labels"], self.start_id, self.pad_id),
                  # Real decoder positions = target positions: the KD and hidden-state mask.
                  "decoder_attention_mask": b["labels"].ne(-100).long()}
        return {"teacher": common, "student": {**common, "labels": b["labels"]}}


def adaptor(batch, out) -> dict:
    """TextBrewer adaptor for a seq2seq output: logits over target positions, the hidden list,
    the hard-label loss the model computed (student only)."""
    mask = batch["decoder_attention_mask"]
    res = {"logits": out.logits, "logits_mask": mask, "inputs_mask": mask,
           "hidden": list(out.encoder_hidden_states) + list(out.decoder_hidden_states)}
    if getattr(out, "loss", None) is not None:
        res["losses"] = out.loss
    return res


def textbrewer_run(spec_path: str, device: str) -> None:
    t_start = time.time()
    import torch
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig
    from torch.utils.data import DataLoader, RandomSampler
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    from raydistill.models.layers import load_seq2seq

    spec = json.loads(Path(spec_path).read_text())
    s, out = spec["settings"], Path(spec["out"])
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(s["seed"])
    tok = AutoTokenizer.from_pretrained(spec["student"])
    data = Path(spec["data"])
    src, tgt = tokenize_pairs(tok, read_lines(data / "train.source", s["n_train"]),
                              read_lines(data / "train.target", s["n_train"]),
                              s["max_source_length"], s["max_target_length"])
    examples = list(zip(src, tgt))
    student = load_seq2seq(spec["student"]).to(device).train()
    teacher = load_seq2seq(spec["teacher"]).to(device).eval()
    loader = DataLoader(examples, batch_size=s["train_batch_size"],
                        sampler=RandomSampler(examples,
                                              generator=torch.Generator().manual_seed(s["seed"])),
                        collate_fn=Collate(tok.pad_token_id, student.config.decoder_start_token_id))
    steps: list[tuple] = []  # (start time, tokens, source tokens, padded source tokens)
    points: list[dict] = []

    def note_batch(batch):
        b = batch["student"]
        tokens = b["attention_mask"].sum() + b["decoder_attention_mask"].sum()
        steps.append((time.time(), int(tokens), int(b["attention_mask"].sum()),
                      b["attention_mask"].numel()))
        return batch

    def note_checkpoint(model, step):
        points.append({"step": step, "time": time.time() - t_start, "after_step": len(steps)})

    distiller = GeneralDistiller(
        TrainingConfig(device=device, output_dir=str(out / "ckpt"), log_dir=str(out / "tb"),
                       ckpt_frequency=s["evals_per_epoch"]),
        DistillationConfig(**spec["distillation"]), teacher, student, adaptor, adaptor)
    (out / "ckpt").mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.AdamW(student.parameters(), lr=s["learning_rate"], eps=1e-8)
    total = len(loader) * s["max_epochs"]
    with autocast(device):
        distiller.train(optimizer, loader, s["max_epochs"],
                        scheduler_class=get_linear_schedule_with_warmup,
                        scheduler_args={"num_warmup_steps": s["warmup_steps"],
                                        "num_training_steps": total},
                        max_grad_norm=1.0, callback=note_checkpoint, batch_postprocessor=note_batch,
                        output_hidden_states=True, use_cache=False)
    Path(spec["result"]).write_text(json.dumps({"steps": steps, "points": points, "start": t_start,
                                                "process_seconds": time.time() - t_start}))


def textbrewer_windows(steps: list, points: list, every: int) -> list[tuple[float, float]]:
    """(seconds, tokens) per window of ``every`` steps, as raydistill logs them; a window in which
    a checkpoint was saved is left out (as raydistill's windows that hold a validation)."""
    after = {p["after_step"] for p in points}
    out = []
    for a in range(0, len(steps) - every, every):
        if any(a < k <= a + every for k in after):
            continue
        out.append((steps[a + every][0] - steps[a][0], sum(st[1] for st in steps[a:a + every])))
    return out


# ---- the raydistill side ----------------------------------------------------------------------

def raydistill_config(args, s, teacher, student, data, run_dir, budget, dist,
                      store: str | None = None) -> dict:
    """The run's config; ``store`` set (``logit_cache``: parquet or memory): cached teacher
    logits (and hidden state), ``s["top_k"]`` per position; None: the live teacher."""
    n_points = s["max_epochs"] * s["evals_per_epoch"]
    if store is not None:
        dist = {**dist, "is_caching_logits": True}
    return {
        "method": "kd", "teacher": str(teacher), "student": str(student), "data_dir": str(data),
        "output_dir": str(run_dir), "task": "summarization", "distillation": dist,
        "num_workers": 1, "cpus_per_worker": threads(args), "use_gpu": args.device == "cuda",
        "precision": "bf16" if args.device == "cuda" else "fp32",
        "n_train": s["n_train"], "max_epochs": s["max_epochs"], "max_tokens_per_batch": budget,
        "max_source_length": s["max_source_length"], "max_target_length": s["max_target_length"],
        "learning_rate": s["learning_rate"], "warmup_steps": s["warmup_steps"], "seed": s["seed"],
        "max_grad_norm": 1.0, "val_check_interval": 1.0 / s["evals_per_epoch"],
        # raydistill's own validation (generation + ROUGE): as small as it goes; its time is
        # subtracted. The comparison uses the val loss computed below for both systems.
        # eval_batch_size is also the teacher's batch when it builds the cache.
        "n_val": 4, "eval_beams": 1, "eval_max_gen_length": 8, "eval_batch_size": 16,
        "do_predict": False, "logger": "tensorboard", "log_every_n_steps": s["log_every_n_steps"],
        "checkpoints_to_keep": n_points + 1,
        **({"logit_cache_top_k": s["top_k"], "logit_cache": store} if store is not None else {}),
    }


def raydistill_points(run_dir: Path, launched: float) -> list[dict]:
    """Each validation's checkpoint folder and its time since launch, minus validation time."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    walls = {step: w for w, step, _ in tb_scalars(run_dir / "tensorboard", "val/rouge2")}
    ckpts = {}
    for state in (run_dir / "ray_results").rglob("trainer_state.json"):
        ckpts[json.loads(state.read_text())["global_step"]] = state.parent
    points, val_seconds = [], 0.0
    for v in metrics["val"]:
        val_seconds += v["val_gen_seconds"]
        points.append({"step": v["step"], "time": walls[v["step"]] - launched - val_seconds,
                       "dir": str(ckpts[v["step"]])})
    return points


def raydistill_windows(tb_dir: Path) -> list[tuple[float, float]]:
    """(seconds, tokens) per logging window from the run's TensorBoard tokens/s; the first
    window (no start time) and windows that hold a validation are left out."""
    events = tb_scalars(tb_dir, "train/tokens_per_s")
    vals = [w for w, _, _ in tb_scalars(tb_dir, "val/rouge2")]
    return [(w1 - w0, rate * (w1 - w0)) for (w0, _, _), (w1, _, rate) in zip(events, events[1:])
            if not any(w0 < v < w1 for v in vals)]


# ---- orchestration ----------------------------------------------------------------------------

def token_budget(tok, data: Path, s: dict) -> int:
    """Rows x longest source per batch, sized so a batch holds about ``train_batch_size`` rows of
    median length: about as many optimizer steps per epoch as TextBrewer's fixed batches."""
    src, _ = tokenize_pairs(tok, read_lines(data / "train.source", s["n_train"]),
                            read_lines(data / "train.target", s["n_train"]),
                            s["max_source_length"], s["max_target_length"])
    lens = sorted(len(x) for x in src)
    return s["train_batch_size"] * lens[len(lens) // 2]


def main() -> None:
    setup_env()
    p = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), NAME)
    p.add_argument("--model", choices=("scratch", "minilm"), default=None,
                   help="scratch: BART 6-6 d128 (random init) -> 6-1 (quick default); "
                        "minilm: BERT2BERT from MiniLM -> 6-1 (full default)")
    p.add_argument("--teacher", default=None, help="a trained teacher folder instead (student: "
                   "make_student 6-1 of it), e.g. bench/results/quality/teacher/best_tfmr")
    p.add_argument("--reps", type=int, default=None, help="repetitions per system")
    p.add_argument("--top-k", type=int, default=None, help="raydistill+cache: teacher logits "
                   "kept per position (default: the vocabulary for scratch models, else 256)")
    p.add_argument("--systems", default=None,
                   help="raydistill systems to run beside TextBrewer, comma-separated, from "
                        + ",".join(SYSTEMS[1:]) + " (default: all; --quick: raydistill,"
                        "raydistill+memory, to keep the quick set short)")
    p.add_argument("--textbrewer", help=argparse.SUPPRESS)  # internal: the TextBrewer run
    args = p.parse_args()
    if args.textbrewer:
        textbrewer_run(args.textbrewer, args.device)
        return
    try:
        import textbrewer  # noqa: F401
    except ImportError:
        sys.exit("textbrewer is not installed: pip install -e .[bench] (textbrewer==0.2.1.post1)")

    import torch
    from transformers import AutoTokenizer

    from raydistill.models.layers import load_seq2seq

    s = settings(args)
    given = args.systems or ("raydistill,raydistill+memory" if args.quick else ",".join(SYSTEMS[1:]))
    chosen = [x.strip() for x in given.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in SYSTEMS[1:]]
    if unknown or not chosen:
        sys.exit(f"--systems {given!r}: choose from {', '.join(SYSTEMS[1:])}")
    systems = ["textbrewer"] + [x for x in SYSTEMS[1:] if x in chosen]
    s["systems"] = systems
    data = data_dir_or_skip(args.data_root, "scitldr", NAME)
    work = Path(args.workdir).resolve()
    t_all = time.time()
    if args.teacher:
        teacher = Path(args.teacher).resolve()
        student = work / "models" / "student_6_1"
        if not (student / "config.json").is_file():
            make_student_quietly(teacher, (6, 1), student)
        s["model"] = str(teacher)
    elif s["model"] == "scratch":
        teacher, student = build_scratch_pair(data, RESULTS / "models" / f"scratch_d{s['d_model']}",
                                              d_model=s["d_model"])
    else:
        teacher = build_bert2bert(RESULTS / "models" / "bert2bert_minilm")
        student = RESULTS / "models" / "bert2bert_minilm_6_1"
        if not (student / "config.json").is_file():
            make_student_quietly(teacher, (6, 1), student)
    tok = AutoTokenizer.from_pretrained(str(student))
    budget = token_budget(tok, data, s)
    dist = distillation(teacher, student)
    s["top_k"] = args.top_k or (len(tok) if s["model"] == "scratch" else 256)

    runs: dict[str, list[dict]] = {k: [] for k in systems}
    for rep, system in abba(s["reps"], systems):
        out = work / "runs" / f"{system}_{rep}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        launched = time.time()
        if system == "textbrewer":
            spec = {"settings": s, "out": str(out), "data": str(data), "teacher": str(teacher),
                    "student": str(student), "distillation": dist, "threads": threads(args),
                    "result": str(out / "result.json")}
            (out / "spec.json").write_text(json.dumps(spec, indent=2))
            wall = run_logged([sys.executable, str(Path(__file__).resolve()), "--textbrewer",
                               str(out / "spec.json"), "--device", args.device], out / "log.txt",
                              extra_env=thread_env(threads(args)))
            res = json.loads((out / "result.json").read_text())
            points = [{**pt, "dir": str(out / "ckpt" / f"gs{pt['step']}.pkl")}
                      for pt in res["points"]]
            # The first window is left out on both sides (first-step warm-up).
            rates = window_rates(textbrewer_windows(res["steps"], res["points"],
                                                    s["log_every_n_steps"]), skip=1)
            n_steps = len(res["steps"])
            first_window = res["steps"][s["log_every_n_steps"]][0] - res["start"]
            padding = 1 - sum(st[2] for st in res["steps"]) / sum(st[3] for st in res["steps"])
        else:
            run_dir = out / "run"
            cfg = write_yaml(out / "config.yaml", raydistill_config(
                args, s, teacher, student, data, run_dir, budget, dist,
                store=CACHE_STORE.get(system)))
            wall = run_logged([*raydistill_cli(), "distill", str(cfg)], out / "log.txt")
            points = raydistill_points(run_dir, launched)
            rates = window_rates(raydistill_windows(run_dir / "tensorboard"), skip=0)
            n_steps = json.loads((run_dir / "metrics.json").read_text())["final_step"]
            first_log = tb_scalars(run_dir / "tensorboard", "train/tokens_per_s")[0][0]
            # The cache is built and loaded before the first step: "without start-up" times add
            # that back (the run prints "teacher logits: ready in X s").
            ready = re.search(r"teacher logits: ready in ([0-9.]+) s", (out / "log.txt").read_text())
            cache_build = float(ready.group(1)) if ready else 0.0
            first_window = first_log - launched - cache_build
            plan = json.loads((run_dir / "batch_plan.json").read_text())
            padding = plan["padding_fraction_source"]
        runs[system].append({"rep": rep, "wall_seconds": wall,
                             "steady_tokens_per_s": rates["median"],
                             "steady_mean_tokens_per_s": rates["mean"],
                             "optimizer_steps": n_steps, "points": points,
                             "first_window_end": first_window, "source_padding": padding,
                             "cache_build_seconds": cache_build if system != "textbrewer" else 0.0})
        print(f"[vs_textbrewer] rep {rep} {system:>16}: {wall:6.1f} s end-to-end, steady "
              f"{rates['median']:7.0f} tok/s (median window; mean {rates['mean']:.0f}), "
              f"{n_steps} steps", flush=True)

    # Validation loss of every checkpoint, one function for both systems (outside every timing).
    vb = val_batches(tok, data, s["n_val"], s["max_source_length"], s["max_target_length"])
    torch.set_num_threads(threads(args))
    for system, reps in runs.items():
        for r in reps:
            for pt in r["points"]:
                if system == "textbrewer":
                    model = load_seq2seq(str(student))
                    model.load_state_dict(torch.load(pt["dir"], weights_only=True))
                else:
                    model = load_seq2seq(pt["dir"])
                pt["val_loss"] = val_loss(model.to(args.device), vb, args.device)
            r["final_val_loss"] = r["points"][-1]["val_loss"]
    summarize(args, s, runs, budget, dist, time.time() - t_all)


def summarize(args, s, runs, budget, dist, seconds) -> None:
    med = {k: {key: median([r[key] for r in v])
               for key in ("wall_seconds", "steady_tokens_per_s", "steady_mean_tokens_per_s",
                           "final_val_loss", "optimizer_steps", "source_padding",
                           "cache_build_seconds")}
           for k, v in runs.items()}
    target = max(m["final_val_loss"] for m in med.values())
    for system, reps in runs.items():
        for r in reps:
            hit = [pt["time"] for pt in r["points"] if pt["val_loss"] <= target * (1 + 1e-9)]
            r["time_to_target"] = hit[0] if hit else None
            # The same, counted from the end of the first logging window: no start-up costs
            # (raydistill+cache: its cache build is counted, see first_window_end).
            r["train_time_to_target"] = hit[0] - r["first_window_end"] if hit else None
        for key in ("time_to_target", "train_time_to_target"):
            times = [r[key] for r in reps if r[key] is not None]
            med[system][key] = median(times) if times else None
    tb = med["textbrewer"]

    def ratio(a, b):
        return a / b if a and b else None

    ratios = {}
    for system in [k for k in runs if k != "textbrewer"]:
        rd = med[system]
        ratios[system] = {
            "tokens_per_s": ratio(rd["steady_tokens_per_s"], tb["steady_tokens_per_s"]),
            "tokens_per_s_mean": ratio(rd["steady_mean_tokens_per_s"], tb["steady_mean_tokens_per_s"]),
            "wall": ratio(tb["wall_seconds"], rd["wall_seconds"]),
            "time_to_target": ratio(tb["time_to_target"], rd["time_to_target"]),
            "train_time_to_target": ratio(tb["train_time_to_target"], rd["train_time_to_target"]),
            "final_loss_gap": (rd["final_val_loss"] - tb["final_val_loss"]) / tb["final_val_loss"],
        }
    print(f"\nKD (T={dist['temperature']}, ce) + hard-label CE + hidden MSE "
          f"(layer_T {dist['intermediate_matches'][0]['layer_T']} <- layer_S "
          f"{dist['intermediate_matches'][0]['layer_S']}); model {s['model']}; {args.device}; "
          f"{s['n_train'] or 'all'} train examples x {s['max_epochs']} epochs; max_source_length "
          f"{s['max_source_length']}; {threads(args)} thread(s) each; raydistill token budget "
          f"{budget}, cache top-{s['top_k']}; TextBrewer batch {s['train_batch_size']}; medians "
          f"of {s['reps']} interleaved repetitions\n")
    fmt = lambda x, f: "n/a" if x is None else format(x, f)  # noqa: E731
    print(table([[k, fmt(med[k]["steady_tokens_per_s"], ".0f"), fmt(med[k]["wall_seconds"], ".1f"),
                  fmt(med[k]["time_to_target"], ".1f"), fmt(med[k]["train_time_to_target"], ".1f"),
                  fmt(med[k]["cache_build_seconds"], ".1f"), fmt(med[k]["final_val_loss"], ".4f"),
                  fmt(100 * med[k]["source_padding"], ".1f"), fmt(med[k]["optimizer_steps"], ".0f")]
                 for k in runs],
                ["system", "steady tokens/s", "end-to-end wall (s)",
                 f"time to val loss {target:.4f} from launch (s)",
                 "same, from end of first log window (s)", "cache build (s)", "final val loss",
                 "source padding (%)", "optimizer steps"]))
    print()
    for system, r in ratios.items():
        print(f"{system}: tokens/s {fmt(r['tokens_per_s'], '.2f')}x TextBrewer (median windows; "
              f"{fmt(r['tokens_per_s_mean'], '.2f')}x with mean rates); time to the same val loss "
              f"{fmt(r['time_to_target'], '.2f')}x from launch, {fmt(r['train_time_to_target'], '.2f')}x "
              f"without start-up; end-to-end wall {fmt(r['wall'], '.2f')}x; final val loss "
              f"{100 * r['final_loss_gap']:+.2f}% "
              f"({'within' if abs(r['final_loss_gap']) <= 0.02 else 'outside'} 2%)")
    met = {}
    for basis, key in (("from launch", "time_to_target"), ("without start-up", "train_time_to_target")):
        met[basis] = {k: r[key] is not None and r[key] >= 1.5 and abs(r["final_loss_gap"]) <= 0.02
                      for k, r in ratios.items()}
        print(f"target (>= 1.5x faster to the same val loss, {basis}; final loss within 2%): "
              + "; ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in met[basis].items()))
    print(f"benchmark wall time {seconds:.0f} s")
    write_result(NAME, {"settings": s, "device": args.device, "token_budget": budget,
                        "distillation": dist, "runs": runs, "medians": med, "target_loss": target,
                        "ratios": ratios, "target_met": met, "command": " ".join(sys.argv),
                        "seconds": seconds})


if __name__ == "__main__":
    main()
