"""``raydistill cache-logits``: run the teacher once over a split and store its top-k logits
(``raydistill.models.teacher_cache.cache_logits``)."""

from __future__ import annotations

import argparse

from raydistill.models import teacher_cache
from raydistill.models.teacher_cache import DEFAULT_TOP_K, DTYPES
from raydistill.runtime import add_address_arg, join_address


def register_cli(sub: argparse._SubParsersAction) -> None:
    """``raydistill cache-logits``."""
    p = sub.add_parser("cache-logits", help="run the teacher once; store its top-k logits (Parquet)")
    p.add_argument("--teacher", required=True, nargs="+", help="teacher folder(s) or Hub id(s) "
                   "(org/name[@revision]); several are averaged")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True, help="cache folder; for a kd run: <output_dir>/logit_cache")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    p.add_argument("--split", default="train")
    p.add_argument("--n", type=int, default=None, help="first n examples (a kd run's n_train)")
    p.add_argument("--tokenizer", default=None, help="default: the teacher's; a trimmed "
                   "student's folder (with vocab_map.json) caches the logits at its kept ids")
    p.add_argument("--max-source-length", type=int, default=1024)
    p.add_argument("--max-target-length", type=int, default=56)
    p.add_argument("--dtype", choices=DTYPES, default="float16")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=1, help="Ray Data actors (one teacher each)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor")
    p.add_argument("--force", action="store_true", help="rebuild even when the cache is valid")
    p.add_argument("--hidden-layers", type=int, nargs="*", default=[], metavar="LAYER_T",
                   help="teacher hidden entries to keep for hidden-state matches (TextBrewer "
                        "layer_T: encoder embeddings + layers, then decoder embeddings + layers)")
    p.add_argument("--teacher-dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="the teacher's weights (auto: bf16 or fp16 on GPU actors, fp32 on CPU); "
                        "a kd run reuses the cache only with the same teacher_dtype")
    p.add_argument("--model-cache-dir", default=None, help="where a Hub id is downloaded "
                   "(default: $HF_HUB_CACHE, else Hugging Face's cache)")
    add_address_arg(p)
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    join_address(getattr(args, "address", None))
    manifest = teacher_cache.cache_logits(args.teacher, args.data_dir, args.out, top_k=args.top_k,
                            split=args.split, n=args.n, tokenizer=args.tokenizer,
                            max_source_length=args.max_source_length,
                            max_target_length=args.max_target_length, dtype=args.dtype,
                            batch_size=args.batch_size, num_workers=args.num_workers,
                            num_gpus=args.num_gpus, force=args.force,
                            hidden_layers=args.hidden_layers, teacher_dtype=args.teacher_dtype,
                            model_cache_dir=args.model_cache_dir)
    print(f"cached top-{manifest['top_k']} logits of {manifest['num_examples']} examples in "
          f"{args.out} ({manifest['bytes'] / 1e6:.1f} MB, {manifest.get('examples_per_second')} ex/s)")
    return 0
