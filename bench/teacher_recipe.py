"""Which from-scratch translator learns fastest per second here: short probes, val BLEU vs time.

    python bench/teacher_recipe.py --minutes 5                       # the recipe quality.py uses
    python bench/teacher_recipe.py --minutes 5 --no-scale-embedding  # MarianConfig's default
    python bench/teacher_recipe.py --minutes 5 --vocab-size 4000 --lr 2e-3

A plain PyTorch loop (no Ray, so a probe costs its minutes and nothing else) over the train pairs
of at most ``--max-words`` source words: the Marian of ``raydistill.models.scratch.new_model``,
raydistill's tokenizer, label-smoothed loss, decoder inputs and token-budget batch plan
(``token_budget_plan``, as ``max_tokens_per_batch``), AdamW (0.9, 0.98) with an
inverse-square-root schedule. Every ``--eval-every`` minutes: greedy BLEU on the first 200 val pairs (evaluation time is not counted). Probes are
meant to be compared with each other on the same machine, a few minutes each; BENCHMARKS.md
section 4 lists the ones that picked ``bench/quality.py``'s CPU settings.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from common import DEFAULT_DATA_ROOT, read_lines, setup_env


def main() -> None:
    setup_env()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_ROOT / "en_de"))
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, nargs=2, default=(6, 6), metavar=("E", "D"))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=400)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--max-tokens", type=int, default=1000,
                   help="rows x longest source (and target) per batch (max_tokens_per_batch)")
    p.add_argument("--max-words", type=int, default=16)
    p.add_argument("--no-scale-embedding", action="store_true",
                   help="token embeddings unscaled (MarianConfig's default)")
    p.add_argument("--minutes", type=float, default=5)
    p.add_argument("--eval-every", type=float, default=2.5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import sacrebleu
    import torch

    from raydistill.data.batching import token_budget_plan
    from raydistill.data.tokenize import pad_batch
    from raydistill.distill.objective import lm_loss
    from raydistill.models.generate import generate_local
    from raydistill.models.layers import decoder_inputs
    from raydistill.models.scratch import new_model, train_tokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = Path(args.data_dir)
    pairs = [(s, t) for s, t in zip(read_lines(data / "train.source"),
                                    read_lines(data / "train.target"))
             if len(s.split()) <= args.max_words and len(t.split()) <= 1.5 * args.max_words]
    tok = train_tokenizer([s for s, _ in pairs] + [t for _, t in pairs], args.vocab_size)
    model = new_model("marian", len(tok), d_model=args.d_model, encoder_layers=args.layers[0],
                      decoder_layers=args.layers[1], ffn_dim=4 * args.d_model, heads=4,
                      max_positions=256, pad_token_id=tok.pad_token_id)
    if args.no_scale_embedding:
        model.config.scale_embedding = False
        model.get_encoder().embed_scale = model.get_decoder().embed_scale = 1.0
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = args.dropout

    src = tok([s for s, _ in pairs], max_length=64, truncation=True)["input_ids"]
    tgt = tok(text_target=[t for _, t in pairs], max_length=64, truncation=True)["input_ids"]
    src_lens, tgt_lens = [len(r) for r in src], [len(r) for r in tgt]

    val_src, val_ref = read_lines(data / "val.source", 200), read_lines(data / "val.target", 200)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-9)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / args.warmup, math.sqrt(args.warmup / (s + 1))))
    name = json.dumps({k: v for k, v in vars(args).items() if k not in ("data_dir", "threads")})
    print(f"{len(pairs)} pairs, {sum(q.numel() for q in model.parameters()) / 1e6:.2f} M "
          f"parameters; {name}", flush=True)
    clock, step, tokens, losses, next_eval = 0.0, 0, 0, [], args.eval_every * 60
    model.train()
    epoch = 0
    while clock < args.minutes * 60:
        plan = token_budget_plan(src_lens, tgt_lens, args.max_tokens, seed=0, epoch=epoch)
        epoch += 1
        for rows in plan.batches:
            t0 = time.perf_counter()
            b = pad_batch([src[i] for i in rows], [tgt[i] for i in rows], tok.pad_token_id)
            x, mask, y = b["input_ids"], b["attention_mask"], b["labels"]
            out = model(input_ids=x, attention_mask=mask, decoder_input_ids=decoder_inputs(model, y))
            loss = lm_loss(out.logits, y, args.label_smoothing)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            clock += time.perf_counter() - t0
            step += 1
            tokens += int(mask.sum()) + int(y.ne(-100).sum())
            losses.append(float(loss.detach()))
            if clock >= next_eval or clock >= args.minutes * 60:
                hyps = generate_local(model, tok, val_src, num_beams=1, max_length=64,
                                      batch_size=50)
                print(json.dumps({"minutes": round(clock / 60, 1), "step": step,
                                  "tokens_per_s": round(tokens / clock),
                                  "loss": round(sum(losses[-100:]) / len(losses[-100:]), 3),
                                  "val_bleu_greedy": round(sacrebleu.corpus_bleu(hyps, [val_ref]).score, 2),
                                  "distinct": len(set(hyps)), "example": hyps[0]},
                                 ensure_ascii=False), flush=True)
                next_eval += args.eval_every * 60
                model.train()
                if clock >= args.minutes * 60:
                    break


if __name__ == "__main__":
    main()
