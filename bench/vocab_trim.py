"""Vocabulary trimming (issue 31): a student against itself with only the kept vocabulary.

    python bench/vocab_trim.py                      # CPU: batch-1 latency, batch-8 throughput
    python bench/vocab_trim.py --batch 32           # the issue's batch-32 throughput
    python bench/vocab_trim.py --kept 12000         # another kept-vocabulary size
    python bench/vocab_trim.py --tokenizer DIR      # kept size measured: DIR's tokenizer on en_de
    python bench/vocab_trim.py --shapes marian_6_3 --reps 1 --ct2 int8   # + CTranslate2
    python bench/vocab_trim.py --tokenizer DIR --keep-shares 4000,7000   # only the shares below

Two shapes, random weights (the speeds mean the same as trained ones'; the outputs nothing):
an mBART-50-shaped 12-3 student (V 250,054, d_model 1024, ffn 4096, 16 heads) and a
Marian-shaped 6-3 one (opus-mt: V 58,101, d_model 512, ffn 2048, 8 heads). Each is compared
with itself trimmed by ``raydistill.models.vocab.trim_model`` to ``--kept`` ids: the same
weights at those rows, so both generate the same computation but for the output layer and the
beam's top-k over V. Without ``--tokenizer`` (the real mBART-50 / opus-mt tokenizers come from
the Hub, which this machine cannot reach) the kept size is ``--kept``; with it, the number of
ids ``kept_token_ids`` keeps for en_de's train split.

Per system, in one run, repetitions in ABBA order: parameters; beam-4 generation of 24 new
tokens (``min_new_tokens`` = ``max_new_tokens``: a random model would stop anywhere) for one
source at a time (latency, median) and for a batch (sentences/s); one kd step (student forward
+ backward, KL to teacher logits of the student's vocabulary, batch 8 x 32 source / 24 target
tokens) in a fresh process: its time and the process's peak RSS (model built + step).

With ``--ct2 COMPUTE_TYPE`` both systems are also converted to CTranslate2 (``convert_cached``,
with a word-level tokenizer of the model's size: token i is ``t<i>``, the config's special ids
named) and timed the same way, in the same ABBA order: beam 4, 24 tokens forced
(``min_decoding_length``), batch 1 and ``--batch``, ``intra_threads`` = ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from common import DEFAULT_DATA_ROOT, abba, median, setup_env, table, write_result

NAME = "vocab_trim"
SHAPES = {
    "mbart50_12_3": dict(arch="mbart", vocab=250_054, d_model=1024, ffn=4096, heads=16, e=12, d=3),
    "marian_6_3": dict(arch="marian", vocab=58_101, d_model=512, ffn=2048, heads=8, e=6, d=3),
}
NEW_TOKENS, BEAMS, SRC_LEN = 24, 4, 24


def build(shape: str, kept_n: int, trimmed: bool, seed: int = 0):
    """(model, kept ids) of ``shape``: full, or trimmed to ``kept_n`` ids (seeded choice)."""
    import torch

    from raydistill.models.scratch import new_model
    from raydistill.models.vocab import config_token_ids, trim_model

    s = SHAPES[shape]
    torch.manual_seed(seed)
    model = new_model(s["arch"], s["vocab"], d_model=s["d_model"], encoder_layers=s["e"],
                      decoder_layers=s["d"], ffn_dim=s["ffn"], heads=s["heads"],
                      max_positions=256).eval()
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(s["vocab"], generator=g)[:kept_n].tolist()
    kept = sorted(set(chosen) | config_token_ids(model))
    return (trim_model(model, kept) if trimmed else model), kept


def sources(kept: list[int], n: int, trimmed: bool, seed: int = 1):
    """``n`` random sources of kept tokens, in the model's ids."""
    import torch

    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(3, len(kept), (n, SRC_LEN), generator=g)
    return pos if trimmed else torch.tensor(kept)[pos]


def generate_seconds(model, src) -> float:
    import torch

    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=src, attention_mask=torch.ones_like(src), num_beams=BEAMS,
                       max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    return time.perf_counter() - t0


def save_for_ct2(model, out_dir: str) -> str:
    """``model`` and a word-level tokenizer of its vocabulary size (CTranslate2's converter
    reads the vocabulary from the tokenizer; the real ones are on the Hub)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    cfg = model.config
    names = {cfg.pad_token_id: "<pad>", cfg.eos_token_id: "</s>"}
    if cfg.bos_token_id is not None and cfg.bos_token_id not in names:
        names[cfg.bos_token_id] = "<s>"
    names[next(i for i in range(cfg.vocab_size) if i not in names)] = "<unk>"
    vocab = {names.get(i, f"t{i}"): i for i in range(cfg.vocab_size)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, "<unk>")),
                                  pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                  **({"bos_token": "<s>"} if "<s>" in vocab else {}))
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def ct2_translator(model, work: str, name: str, compute_type: str, threads: int):
    from raydistill.models.ct2_convert import convert_cached

    import ctranslate2

    src = save_for_ct2(model, f"{work}/{name}")
    ct2_dir = convert_cached(src, compute_type, f"{work}/ct2")
    return ctranslate2.Translator(str(ct2_dir), device="cpu", compute_type=compute_type,
                                  inter_threads=1, intra_threads=threads)


def ct2_seconds(translator, src) -> float:
    tokens = [[f"t{int(i)}" for i in row] for row in src]
    t0 = time.perf_counter()
    translator.translate_batch(tokens, beam_size=BEAMS, max_decoding_length=NEW_TOKENS,
                               min_decoding_length=NEW_TOKENS, max_batch_size=len(tokens))
    return time.perf_counter() - t0


def kd_step(shape: str, kept_n: int, trimmed: bool) -> dict:
    """One kd step in this (fresh) process: seconds and peak RSS (MiB)."""
    import torch

    from raydistill.distill.objective import kd_kl_loss
    from raydistill.models.layers import decoder_inputs

    from raydistill.models.scratch import new_model

    # Built at its size directly (trimming a full model first would put the full one in the
    # peak); the same architecture, so the same step.
    sh = SHAPES[shape]
    model = new_model(sh["arch"], kept_n if trimmed else sh["vocab"], d_model=sh["d_model"],
                      encoder_layers=sh["e"], decoder_layers=sh["d"], ffn_dim=sh["ffn"],
                      heads=sh["heads"], max_positions=256).train()
    kept = list(range(model.config.vocab_size))
    src, tgt = sources(kept, 8, True), sources(kept, 8, True, seed=2)
    with torch.no_grad():
        t_logits = torch.randn(8, SRC_LEN, model.config.vocab_size)
    times = []
    for _ in range(2):  # the first step allocates; the second is timed
        t0 = time.perf_counter()
        out = model(input_ids=src, attention_mask=torch.ones_like(src),
                    decoder_input_ids=decoder_inputs(model, tgt))
        kd_kl_loss(out.logits, t_logits, torch.ones_like(tgt, dtype=torch.bool), 2.0).backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child forked from this
    # benchmark's big parent would report the parent's peak.
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    return {"kd_step_s": times[-1], "peak_rss_mib": int(hwm.split()[1]) / 1024}


def measure_kept(tokenizer_dir: str, data: str) -> int:
    from transformers import AutoTokenizer

    from raydistill.models.vocab import kept_token_ids

    return len(kept_token_ids(AutoTokenizer.from_pretrained(tokenizer_dir), data))


def keep_shares(tokenizer_dir: str, data: str, keeps: list[int]) -> list[dict]:
    """For each ``keep_vocab`` N: the ids kept (the N most frequent train tokens, the specials
    and the BPE intermediates) and the share of ``data``'s train tokens outside them, which
    re-segment into smaller pieces in the trimmed tokenizer."""
    from transformers import AutoTokenizer

    from raydistill.models.vocab import kept_token_ids, token_counts

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    counts = token_counts(tok, data)
    total = sum(counts.values())
    out = []
    for n in keeps:
        kept = set(kept_token_ids(tok, data, n, counts=counts))
        outside = sum(c for i, c in counts.items() if i not in kept)
        out.append({"keep_vocab": n, "kept_ids": len(kept), "train_tokens": total,
                    "resegmented_share": outside / total})
    return out


def main() -> None:
    setup_env()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kept", type=int, default=20_000, help="kept ids (without --tokenizer)")
    p.add_argument("--tokenizer", default=None, help="a teacher tokenizer folder: measure the kept "
                   "size on en_de's train split with it")
    p.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    p.add_argument("--data-dir", default=None, help="the data folder --tokenizer measures "
                   "(default: DATA_ROOT/en_de)")
    p.add_argument("--keep-shares", default=None, metavar="N,N", help="with --tokenizer: only "
                   "print, per keep_vocab N, the ids kept and the share of train tokens that "
                   "re-segment")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--batch", type=int, default=8, help="sources per throughput batch")
    p.add_argument("--reps", type=int, default=2, help="ABBA repetitions")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kd-only", action="store_true", help="only the kd steps (no generation)")
    p.add_argument("--ct2", default=None, metavar="COMPUTE_TYPE", help="also time CTranslate2 "
                   "(int8, float32, ...) on both systems")
    p.add_argument("--kd-step", nargs=3, metavar=("SHAPE", "KEPT", "TRIMMED"), help=argparse.SUPPRESS)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.kd_step:  # the child process of one kd-step measurement
        print(json.dumps(kd_step(args.kd_step[0], int(args.kd_step[1]), args.kd_step[2] == "1")))
        return
    data = args.data_dir or f"{args.data_root}/en_de"
    if args.keep_shares:
        if not args.tokenizer:
            p.error("--keep-shares needs --tokenizer DIR")
        shares = keep_shares(args.tokenizer, data,
                             [int(n) for n in args.keep_shares.split(",")])
        print(table([[r["keep_vocab"], r["kept_ids"], f"{100 * r['resegmented_share']:.2f}%"]
                     for r in shares], ["keep_vocab", "kept ids", "train tokens re-segmented"]))
        write_result(NAME + "_keep_shares", {"tokenizer": args.tokenizer, "data": data,
                                             "shares": shares})
        return
    kept_n = measure_kept(args.tokenizer, data) if args.tokenizer else args.kept
    results: dict = {"kept": kept_n, "kept_measured": bool(args.tokenizer), "batch": args.batch,
                     "beams": BEAMS, "new_tokens": NEW_TOKENS, "threads": args.threads,
                     "ct2": args.ct2, "shapes": {}}
    rows, ct2_rows = [], []
    for shape in args.shapes.split(","):
        models = {name: build(shape, kept_n, name == "trimmed") for name in ("full", "trimmed")}
        one = {n: sources(k, 3, n == "trimmed") for n, (_, k) in models.items()}
        many = {n: sources(k, args.batch, n == "trimmed", seed=3) for n, (_, k) in models.items()}
        lat: dict = {n: [] for n in models}
        thr: dict = {n: [] for n in models}
        ct2 = {}
        if args.ct2 and not args.kd_only:
            import tempfile

            work = tempfile.mkdtemp(prefix="vocab_trim_ct2.")
            ct2 = {n: ct2_translator(m, work, n, args.ct2, args.threads)
                   for n, (m, _) in models.items()}
        ct2_lat: dict = {n: [] for n in ct2}
        ct2_thr: dict = {n: [] for n in ct2}
        for n in models:  # warm-up
            if not args.kd_only:
                generate_seconds(models[n][0], one[n][:1])
                if n in ct2:
                    ct2_seconds(ct2[n], one[n][:1])
        for _, name in [] if args.kd_only else abba(args.reps, list(models)):
            model = models[name][0]
            lat[name] += [generate_seconds(model, one[name][i:i + 1]) for i in range(len(one[name]))]
            thr[name].append(args.batch / generate_seconds(model, many[name]))
            if name in ct2:
                ct2_lat[name] += [ct2_seconds(ct2[name], one[name][i:i + 1])
                                  for i in range(len(one[name]))]
                ct2_thr[name].append(args.batch / ct2_seconds(ct2[name], many[name]))
        out = {}
        for name, (model, kept) in models.items():
            child = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                                    "--kd-step", shape, str(kept_n), str(int(name == "trimmed"))],
                                   capture_output=True, text=True, check=True)
            out[name] = {"vocab": model.config.vocab_size,
                         "params_m": sum(x.numel() for x in model.parameters()) / 1e6,
                         "latency_s": median(lat[name]) if lat[name] else float("nan"),
                         "sentences_per_s": median(thr[name]) if thr[name] else float("nan"),
                         "latency_runs_s": lat[name], "sentences_per_s_runs": thr[name],
                         **({"ct2_latency_s": median(ct2_lat[name]), "ct2_latency_runs_s":
                             ct2_lat[name], "ct2_sentences_per_s": median(ct2_thr[name]),
                             "ct2_sentences_per_s_runs": ct2_thr[name]} if name in ct2 else {}),
                         **json.loads(child.stdout.strip().splitlines()[-1])}
        del models, ct2
        results["shapes"][shape] = out
        f, t = out["full"], out["trimmed"]
        for name, r in out.items():
            rows.append([shape, name, f"{r['vocab']:,}", f"{r['params_m']:.1f}",
                         f"{r['latency_s']:.2f}", f"{r['sentences_per_s']:.2f}",
                         f"{r['kd_step_s']:.2f}", f"{r['peak_rss_mib']:,.0f}"])
        rows.append([shape, "**trimmed / full**", "", f"{t['params_m'] / f['params_m']:.2f}x",
                     f"**{f['latency_s'] / t['latency_s']:.2f}x faster**",
                     f"**{t['sentences_per_s'] / f['sentences_per_s']:.2f}x**",
                     f"{f['kd_step_s'] / t['kd_step_s']:.2f}x faster",
                     f"{t['peak_rss_mib'] / f['peak_rss_mib']:.2f}x"])
        if args.ct2 and not args.kd_only:
            ct2_rows += [[shape, name, f"{r['ct2_latency_s']:.3f}",
                          f"{r['ct2_sentences_per_s']:.2f}"] for name, r in out.items()]
            ct2_rows.append([shape, "**trimmed / full**",
                             f"**{f['ct2_latency_s'] / t['ct2_latency_s']:.2f}x faster**",
                             f"**{t['ct2_sentences_per_s'] / f['ct2_sentences_per_s']:.2f}x**"])
        print(f"[vocab_trim] {shape} done", flush=True)
    print(table(rows, ["shape", "system", "vocab", "params M", "batch-1 latency s",
                       f"batch-{args.batch} sent/s", "kd step s", "peak RSS MiB"]))
    if ct2_rows:
        print(f"CTranslate2 ({args.ct2}, beam {BEAMS}, {NEW_TOKENS} tokens):")
        print(table(ct2_rows, ["shape", "system", "batch-1 latency s",
                               f"batch-{args.batch} sent/s"]))
    print(f"wrote {write_result(NAME, results)}")


if __name__ == "__main__":
    main()
