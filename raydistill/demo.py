"""``make demo``: the whole pipeline on a generated data set, on local Ray, with no download.

1. Write a deterministic text-to-text data set (short stories -> one-line summaries).
2. Train a small BART teacher from scratch with ``method: sft`` (cached after the first run).
3. ``make_student`` copies alternating teacher layers into a 4-1 student.
4. Distill it with ``method: kd``.
5. Score teacher and student on the test split with ``evaluate`` and print a table.
6. Write ``report.html`` (``raydistill report``) beside them and print its path.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from raydistill.config import DistillConfig

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
         "mallory", "nina", "oscar", "peggy", "quinn", "rupert", "sybil", "trent", "uma", "victor"]
CITIES = ["paris", "rome", "oslo", "lima", "cairo", "tokyo", "delhi", "quito", "dakar", "hanoi",
          "perth", "sofia", "turin", "basel", "ghent", "porto"]
ITEMS = ["bike", "lamp", "book", "kite", "drum", "coat", "vase", "sofa", "boat", "clock",
         "piano", "chair", "radio", "tent", "scarf", "camera"]
COLORS = ["red", "blue", "green", "black", "white", "yellow", "brown", "grey"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
FILLERS = ["the weather was mild", "the market was busy", "it had rained all night",
           "the shops opened late", "a band played in the square", "the trains ran on time"]


def make_example(rng: random.Random) -> tuple[str, str]:
    name, friend = rng.sample(NAMES, 2)
    city, item, color, day = rng.choice(CITIES), rng.choice(ITEMS), rng.choice(COLORS), rng.choice(DAYS)
    filler = rng.choice(FILLERS)
    source = (f"on {day} {filler} in {city} . {name} went to the old shop and bought a {color} "
              f"{item} . later {name} gave the {item} to {friend} , who was very happy .")
    target = f"{name} bought a {color} {item} in {city} for {friend} ."
    return source, target


def write_dataset(data_dir: Path, n_train: int = 3000, n_val: int = 100, n_test: int = 200) -> Path:
    """The six-file layout, deterministic (seed 0)."""
    rng = random.Random(0)
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        pairs = [make_example(rng) for _ in range(n)]
        (data_dir / f"{split}.source").write_text("\n".join(s for s, _ in pairs) + "\n")
        (data_dir / f"{split}.target").write_text("\n".join(t for _, t in pairs) + "\n")
    return data_dir


def build_teacher_init(data_dir: Path, out: Path) -> Path:
    """A randomly initialised 4-4 BART (d_model 128) and a BPE tokenizer trained on train."""
    import torch

    from raydistill.models.scratch import new_model, save_model_and_tokenizer, train_tokenizer

    texts = (data_dir / "train.source").read_text().splitlines() + \
        (data_dir / "train.target").read_text().splitlines()
    tok = train_tokenizer(texts, vocab_size=400)
    torch.manual_seed(0)
    model = new_model("bart", len(tok), d_model=128, encoder_layers=4, decoder_layers=4,
                      ffn_dim=256, heads=4, max_positions=128, pad_token_id=tok.pad_token_id)
    return save_model_and_tokenizer(model, tok, out)


COMMON = dict(task="summarization", num_workers=1, cpus_per_worker=2, max_source_length=64,
              max_target_length=24, val_max_target_length=24, test_max_target_length=24,
              train_batch_size=32, eval_batch_size=64, eval_beams=1, n_val=100,
              log_every_n_steps=100, logger="tensorboard", seed=0)


def run_demo(workdir: str | Path = "demo_runs", fresh: bool = False) -> dict:
    """Run the demo in ``workdir``; returns the table rows."""
    from raydistill.eval.evaluate import evaluate
    from raydistill.models.generate import measure_latency
    from raydistill.pipeline import run_distill

    t0 = time.time()
    work = Path(workdir).resolve()
    data = write_dataset(work / "data")
    teacher_dir = work / "teacher" / "best_tfmr"
    if fresh or not (teacher_dir / "config.json").exists():
        print("== 1/4 training the teacher from scratch (sft; cached for later runs)", flush=True)
        init = build_teacher_init(data, work / "teacher_init")
        cfg = DistillConfig(method="sft", student=str(init), data_dir=str(data),
                            output_dir=str(work / "teacher"), learning_rate=1e-3, warmup_steps=30,
                            max_epochs=4, do_predict=False, val_check_interval=1.0, **COMMON)
        run_distill(cfg, overwrite=True)
    else:
        print(f"== 1/4 teacher cached at {teacher_dir}", flush=True)
    print("== 2/4 make-student (4-1: all encoder layers, 1 decoder layer) + 3/4 kd", flush=True)
    kd = DistillConfig(method="kd", teacher=str(teacher_dir), student_encoder_layers=4,
                       student_decoder_layers=1, data_dir=str(data),
                       output_dir=str(work / "student_kd"), learning_rate=1e-3, warmup_steps=20,
                       max_epochs=3, alpha_ce=0.8, alpha_mlm=0.2, temperature=2.0,
                       do_predict=False, **COMMON)
    run_distill(kd, overwrite=True)
    print("== 4/4 evaluate teacher and student on the test split (Ray Data generation)", flush=True)
    models = (("teacher 4-4", teacher_dir), ("student 4-1 (kd)", work / "student_kd" / "best_tfmr"))
    sources = (data / "test.source").read_text().splitlines()
    rows = []
    for name, model_dir in models:
        res = evaluate(str(model_dir), str(data), split="test", task="summarization",
                       out_dir=str(model_dir.parent), num_beams=1, max_length=24,
                       max_source_length=64, batch_size=64, num_workers=1)
        rows.append({"model": name, "rouge2": res["scores"]["rouge2"],
                     "rougeL": res["scores"]["rougeL"], "dir": str(model_dir)})
    # Latency: both models timed in turn, best of 3, so a busy moment on the machine does not
    # land on one model only.
    runs: dict[str, list[dict]] = {name: [] for name, _ in models}
    for _ in range(3):
        for name, model_dir in models:
            runs[name].append(measure_latency(str(model_dir), sources, num_beams=1, max_length=24,
                                              max_source_length=64, n=50))
    for row in rows:
        row["params_M"] = runs[row["model"]][0]["parameters"] / 1e6
        row["ms_per_example"] = min(r["ms_per_example"] for r in runs[row["model"]])
        # beside the run's other files, as a sweep's trials keep theirs: the report reads it
        (Path(row["dir"]).parent / "latency.json").write_text(json.dumps(
            {"parameters": runs[row["model"]][0]["parameters"],
             "ms_per_example": round(row["ms_per_example"], 3), "batch_size": 1, "n": 50}))
    _print_table(rows, time.time() - t0)
    (work / "demo_results.json").write_text(json.dumps(rows, indent=2))
    from raydistill.report import write_report

    page = write_report([work / "teacher", work / "student_kd"], work / "report.html")
    print(f"report: {page}")
    return {"rows": rows, "report": str(page)}


def _print_table(rows: list[dict], seconds: float) -> None:
    speed = rows[0]["ms_per_example"] / max(rows[1]["ms_per_example"], 1e-9)
    print("\n| model | ROUGE-2 | ROUGE-L | params (M) | generation ms/example |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['rouge2']:.2f} | {r['rougeL']:.2f} | {r['params_M']:.2f} | "
              f"{r['ms_per_example']:.1f} |")
    print(f"\nstudent generation speedup: {speed:.2f}x; demo wall time {seconds:.0f} s")
    for r in rows:
        print(f"{r['model']}: {r['dir']}")
