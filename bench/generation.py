"""Generation at scale: transformers vs CTranslate2, one process vs a Ray Data actor pool.

    python bench/generation.py --quick                       # 200 sentences
    python bench/generation.py --model PATH                  # 2,000 sentences (the issue-17 table)
    python bench/generation.py --model PATH --device cuda    # one GPU: float16 / int8_float16

The same sources (the first ``--n`` of ``en_de/test.source``), beams (4), max length and batch
size for every system, in one run:

- ``tf_single``: ``generate_local`` in this process, ``--single-threads`` torch threads (default:
  as many as the pool's actors together);
- ``tf_ray``: ``generate_parallel`` (transformers), ``--num-workers`` actors x 1 CPU;
- ``ct2_ray_float32`` / ``ct2_ray_int8``: ``generate_parallel`` with ``backend="ctranslate2"``
  (on cuda: float16 and int8_float16), the conversion (cached) timed apart.

Examples/s and generated tokens/s count the whole call (Ray: actor start and model load
included); ``pool`` examples/s leave out the start-up: examples over the actors' mean busy time. BLEU is scored
against ``test.target`` and against ``tf_single``'s outputs.

Without Ray (a GPU machine that lacks it: bench/gpu_check.sh), ``tf_single`` alone runs, and
without ctranslate2 the ``ct2`` systems are left out, each with a ``PARTIAL`` line saying so.

``--model`` is a trained Marian teacher (bench/quality.py writes one to
``bench/results/quality/en_de/teacher/best_tfmr``, the default). Without one, a Marian of the
same shape with random weights stands in: the speeds mean the same, the BLEU nothing.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from common import RESULTS, add_common_args, data_dir_or_skip, gpus_per_actor, read_lines, \
    setup_env, table, write_result

NAME = "generation"
DEFAULT_TEACHER = RESULTS / "quality" / "en_de" / "teacher" / "best_tfmr"


def stand_in_teacher(data: Path, work: Path) -> Path:
    """A Marian 6-6 d128 with random weights and a BPE trained on the train split (no training)."""
    import torch

    from raydistill.models.scratch import new_model, save_model_and_tokenizer, train_tokenizer

    out = work / "random_marian"
    if (out / "config.json").is_file():
        return out
    tok = train_tokenizer(read_lines(data / "train.source", 20000)
                          + read_lines(data / "train.target", 20000), vocab_size=8000)
    torch.manual_seed(0)
    model = new_model("marian", len(tok), d_model=128, encoder_layers=6, decoder_layers=6,
                      ffn_dim=512, pad_token_id=tok.pad_token_id)
    return save_model_and_tokenizer(model, tok, out)


def main() -> None:
    setup_env()
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]), NAME)
    parser.add_argument("--model", default=str(DEFAULT_TEACHER), help="a Marian teacher folder")
    parser.add_argument("--n", type=int, default=None, help="sources (default 2000; quick 200)")
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2, help="actors, 1 CPU each")
    parser.add_argument("--compute-types", nargs="+", default=None,
                        help="CTranslate2 compute types compared (default float32 int8 on cpu, "
                             "float16 int8_float16 on cuda)")
    parser.add_argument("--single-threads", type=int, default=None,
                        help="torch threads of tf_single (default: --num-workers)")
    args = parser.parse_args()
    import sacrebleu
    import torch
    from transformers import AutoTokenizer

    from raydistill.models.layers import load_seq2seq
    from raydistill.models.generate import generate_local

    t_start = time.perf_counter()
    data = data_dir_or_skip(args.data_root, "en_de", NAME)
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model)
    trained = (model_dir / "config.json").is_file()
    if not trained:
        print(f"[generation] no teacher at {model_dir}: a random-weight Marian stands in "
              "(speeds only; BLEU means nothing)", flush=True)
        model_dir = stand_in_teacher(data, work)
    n = args.n or (200 if args.quick else 2000)
    sources = read_lines(data / "test.source", n)
    refs = read_lines(data / "test.target", n)
    cuda = args.device == "cuda"
    gen = dict(num_beams=args.num_beams, length_penalty=1.0, max_length=args.max_length,
               batch_size=args.batch_size)
    tok = AutoTokenizer.from_pretrained(model_dir)
    cache = work / "ct2_cache"

    def row(name: str, preds: list[str], seconds: float, gen_seconds: float, extra: dict) -> dict:
        tokens = sum(len(t) for t in tok(preds, add_special_tokens=False)["input_ids"])
        return {"system": name, "examples": len(preds), "seconds": round(seconds, 2),
                "generation_seconds": round(gen_seconds, 2),
                "examples_per_s": round(len(preds) / seconds, 2),
                "generation_examples_per_s": round(len(preds) / max(gen_seconds, 1e-9), 2),
                "tokens_per_s": round(tokens / seconds, 1),
                "bleu": round(sacrebleu.corpus_bleu(preds, [refs]).score, 2), **extra}

    rows, outputs = [], {}
    # 1. One process, all the cores the pool gets.
    single_threads = args.single_threads or args.num_workers
    torch.set_num_threads(single_threads)
    t0 = time.perf_counter()
    model = load_seq2seq(model_dir).to(args.device).eval()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    outputs["tf_single"] = generate_local(model, tok, sources, device=args.device, **gen)
    gen_s = time.perf_counter() - t0
    rows.append(row("tf_single", outputs["tf_single"], load_s + gen_s, gen_s,
                    {"threads": single_threads, "load_seconds": round(load_s, 2)}))
    print(rows[-1], flush=True)
    del model

    # 2-4. Ray Data actor pools.
    try:
        import ray
    except ImportError as err:
        ray = None
        print(f"PARTIAL generation: no Ray pools (tf_ray, ct2_ray_*): ray does not import here "
              f"({err}); tf_single alone", flush=True)
    if ray is not None:
        ray_pools(args, model_dir, sources, gen, cache, cuda, outputs, rows, row)
    base = rows[0]
    for r in rows:
        r["speedup_vs_tf_single"] = round(r["examples_per_s"] / base["examples_per_s"], 2)
        r["bleu_delta_vs_tf_single"] = round(r["bleu"] - base["bleu"], 2)
    int8 = rows[-1]
    result = {
        "settings": {"n": n, **gen, "num_workers": args.num_workers,
                     "single_threads": single_threads, "device": args.device,
                     "model": str(model_dir), "trained_teacher": trained},
        "quick": args.quick, "rows": rows,
        "target": "ct2 int8 >= 3x tf_single examples/s, BLEU within 0.5 of tf_single",
        "target_met": bool(len(rows) > 1 and int8["speedup_vs_tf_single"] >= 3
                           and abs(int8["bleu_delta_vs_tf_single"]) <= 0.5),
        "ray_pool_vs_single": (round(rows[1]["examples_per_s"] / base["examples_per_s"], 2)
                               if len(rows) > 1 else None),
        "seconds": round(time.perf_counter() - t_start, 1),
        "load_avg_at_start": os.getloadavg(),
    }
    print(table([[r["system"], r["examples_per_s"], r["generation_examples_per_s"],
                  r["tokens_per_s"], r["bleu"], r.get("bleu_vs_tf_single", 100.0),
                  r["speedup_vs_tf_single"]] for r in rows],
                ["system", "ex/s", "ex/s w/o start-up", "tokens/s", "BLEU", "BLEU vs tf_single",
                 "x tf_single"]))
    print(f"target (int8 >= 3x, BLEU within 0.5): {'met' if result['target_met'] else 'NOT met'}")
    print(f"wrote {write_result(NAME, result)}")


def ray_pools(args, model_dir: Path, sources: list[str], gen: dict, cache: Path, cuda: bool,
              outputs: dict, rows: list, row) -> None:
    """transformers, then CTranslate2 in two compute types, in Ray Data actor pools."""
    import ray
    import sacrebleu

    from raydistill.errors import ConfigError
    from raydistill.models.ct2 import prepare_backend
    from raydistill.models.generate import generate_parallel

    ray.init(num_cpus=args.num_workers, num_gpus=1 if cuda else 0, include_dashboard=False)
    per_actor_gpu = gpus_per_actor(args.device, args.num_workers)
    compute_types = args.compute_types or (("float16", "int8_float16") if cuda
                                           else ("float32", "int8"))
    systems = [("tf_ray", "transformers", "float32")] + [
        (f"ct2_ray_{ct}", "ctranslate2", ct) for ct in compute_types]
    for name, backend, compute_type in systems:
        t0 = time.perf_counter()
        try:
            used = prepare_backend(model_dir, backend, compute_type, cache,
                                   device="cuda" if cuda else "cpu", samples=sources[:64],
                                   num_gpus=per_actor_gpu)
        except ConfigError as err:  # no ctranslate2 here: the other systems still run
            print(f"PARTIAL generation: no {name}: {err}", flush=True)
            continue
        convert_s = time.perf_counter() - t0
        timings: dict[str, float] = {}
        preds, seconds = generate_parallel(model_dir, sources, num_workers=args.num_workers,
                                           num_gpus=per_actor_gpu, backend=used,
                                           timings=timings, **gen)
        outputs[name] = preds
        rows.append(row(name, preds, seconds, timings["busy_s"] / args.num_workers, {
            "backend": used.name, "compute_type": compute_type, "convert_seconds":
            round(convert_s, 2), "actors": args.num_workers,
            "busy_seconds": round(timings["busy_s"], 2),
            "first_batch_seconds": round(timings["first_batch_s"], 2),
            "bleu_vs_tf_single": round(sacrebleu.corpus_bleu(preds, [outputs["tf_single"]]).score, 2),
            "in_input_order_same_as_tf_single": sum(a == b for a, b in zip(
                preds, outputs["tf_single"])) / len(preds)}))
        print(rows[-1], flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
