"""Evaluate a saved model on one split: parallel generation -> metrics -> files (``raydistill evaluate``)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from raydistill.atomic import write_text_atomic
from raydistill.console import log_to
from raydistill.data.files import read_split
from raydistill.errors import ConfigError, ModelError
from raydistill.runtime import add_address_arg, check_writable, join_address
from raydistill.models.ct2 import TOKENIZER_SAMPLES, add_backend_args, prepare_backend
from raydistill.metrics import METRICS, score


def _check_model(model_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
    """Fail on the driver, with a clear message, before Ray actors fail to load the model; a
    Hub id is resolved (downloaded once) here, so the actors load its local snapshot."""
    from transformers import AutoConfig

    from raydistill.hub import is_local_ref, resolve_model

    local = Path(model_dir)
    if is_local_ref(str(model_dir)) and not local.exists():
        raise ModelError(f"model path {local} does not exist; check the path")
    if local.exists() and not (local / "config.json").is_file():
        raise ModelError(f"{local} holds no saved model (config.json missing); "
                         "pass a folder written by save_pretrained or by raydistill train")
    source = resolve_model(model_dir, "model", cache_dir)
    try:
        AutoConfig.from_pretrained(source.path)
    except (OSError, ValueError) as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelError(f"cannot load a model config from {model_dir}: {first_line}") from err
    return source


def evaluate(
    model_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    split: str = "test",
    task: str = "summarization",
    out_dir: str | os.PathLike | None = None,
    *,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    max_length: int = 64,
    max_source_length: int = 512,
    batch_size: int = 16,
    num_workers: int = 1,
    num_gpus: float = 0.0,
    n: int | None = None,
    model_cache_dir: str | os.PathLike | None = None,
    backend: str = "transformers",
    compute_type: str = "float32",
    ct2_cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Generate for ``split`` of ``data_dir`` and score it against its references.

    ``backend`` (transformers | ctranslate2) generates; ctranslate2 converts the model once per
    ``compute_type`` into ``ct2_cache_dir`` and falls back to transformers, with a warning, for
    architectures it cannot convert (the results name the backend that ran).

    ``model_dir`` is a saved model's folder or a Hub id (``org/name[@revision]``, downloaded
    into ``model_cache_dir``, default HF's cache); the results record its id and commit.

    Uses ``{split}.refs.jsonl`` (several references per example) when the data folder has it,
    else ``{split}.target``. Writes ``{split}_generations.txt`` and ``{split}_results.json`` into
    ``out_dir`` (default: ``model_dir``) and returns the results dict.
    """
    from raydistill.models.generate import generate_parallel  # torch: not for the CLI's parser

    if task not in METRICS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(METRICS)}")
    source = _check_model(model_dir, model_cache_dir)
    if out_dir is None and not Path(model_dir).is_dir():
        raise ConfigError(f"{model_dir} is not a local folder; pass out_dir (--out-dir) "
                          "to say where the results go")
    out = Path(out_dir if out_dir is not None else model_dir)
    check_writable(out, "--out-dir")
    if out_dir is not None:  # Ray's own lines beside the results (never into a model folder)
        log_to(out / "ray.log")
    data = read_split(data_dir, split, n=n)
    refs = data.refs if data.refs is not None else data.targets

    used = prepare_backend(source.path, backend, compute_type, ct2_cache_dir,
                           device="cuda" if num_gpus > 0 else "cpu",
                           samples=data.sources[:TOKENIZER_SAMPLES], num_gpus=num_gpus)
    preds, seconds = generate_parallel(
        source.path, data.sources, num_beams=num_beams, length_penalty=length_penalty,
        max_length=max_length, max_source_length=max_source_length, batch_size=batch_size,
        num_workers=num_workers, num_gpus=num_gpus, backend=used,
    )
    scores = score(task, preds, refs)

    n_refs = [1] * len(preds) if data.refs is None else [len(r) for r in data.refs]
    results: dict[str, Any] = {
        "model_dir": str(model_dir),
        "model_id": source.id,
        "model_commit": source.commit,
        "data_dir": str(data_dir),
        "split": split,
        "task": task,
        "metric": METRICS[task],
        "scores": scores,
        "n_examples": len(preds),
        "references": {
            "file": f"{split}.refs.jsonl" if data.refs is not None else f"{split}.target",
            "max_per_example": max(n_refs, default=0),
            "mean_per_example": round(sum(n_refs) / max(len(n_refs), 1), 3),
        },
        "gen_seconds": round(seconds, 3),
        "examples_per_second": round(len(preds) / seconds, 3) if seconds > 0 else None,
        "mean_gen_words": round(sum(len(p.split()) for p in preds) / max(len(preds), 1), 2),
        "generation": {
            "num_beams": num_beams, "length_penalty": length_penalty, "max_length": max_length,
            "max_source_length": max_source_length, "batch_size": batch_size,
            "num_workers": num_workers, "num_gpus": num_gpus, "backend": used.name,
            "compute_type": used.compute_type if used.name == "ctranslate2" else None,
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    gen_path, res_path = out / f"{split}_generations.txt", out / f"{split}_results.json"
    # One line per example, whatever the model generated.
    write_text_atomic(gen_path, "".join(p.replace("\n", " ") + "\n" for p in preds))
    results["files"] = {"generations": str(gen_path), "results": str(res_path)}
    write_text_atomic(res_path, json.dumps(results, indent=2) + "\n")
    return results


def add_evaluate_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``raydistill evaluate``."""
    p = parser
    p.add_argument("--model", required=True, help="folder of a saved model and its tokenizer, "
                   "or a Hub id (org/name[@revision])")
    p.add_argument("--data-dir", required=True, help="folder with {split}.source/.target")
    p.add_argument("--split", default="test")
    p.add_argument("--task", default="summarization", choices=sorted(METRICS))
    p.add_argument("--num-beams", type=int, default=4)
    p.add_argument("--length-penalty", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=64, help="longest generation, in tokens")
    p.add_argument("--max-source-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=1, help="generation actors")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor")
    p.add_argument("--n", type=int, default=None, help="only the first N examples")
    add_backend_args(p)
    add_address_arg(p)
    p.add_argument("--out-dir", default=None, help="where to write results (default: --model; "
                   "required for a Hub id)")
    p.add_argument("--model-cache-dir", default=None, help="where a Hub id is downloaded "
                   "(default: $HF_HUB_CACHE, else Hugging Face's cache)")
    return p


def run_evaluate_cli(args: argparse.Namespace) -> int:
    """Run ``evaluate`` from parsed arguments; print the scores and the files written."""
    join_address(getattr(args, "address", None))
    r = evaluate(
        args.model, args.data_dir, args.split, args.task, args.out_dir,
        num_beams=args.num_beams, length_penalty=args.length_penalty, max_length=args.max_length,
        max_source_length=args.max_source_length, batch_size=args.batch_size,
        num_workers=args.num_workers, num_gpus=args.num_gpus, n=args.n,
        model_cache_dir=args.model_cache_dir, backend=args.backend,
        compute_type=args.compute_type, ct2_cache_dir=args.ct2_cache_dir,
    )
    print(f"{r['split']}: {r['n_examples']} examples, references from {r['references']['file']}, "
          f"{r['gen_seconds']:.1f} s generation")
    width = max(len(k) for k in r["scores"])
    for key, value in r["scores"].items():
        mark = "  <- validation metric" if key == r["metric"] else ""
        print(f"  {key:<{width}}  {value:8.4f}{mark}")
    for path in r["files"].values():
        print(f"wrote {path}")
    return 0
