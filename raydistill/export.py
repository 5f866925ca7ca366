"""``raydistill export``: the student as a CTranslate2 model, ready for ``ctranslate2.Translator``.

The conversion is the one evaluation's ``--backend ctranslate2`` runs (``raydistill.models.ct2``:
transformers 5's BART keys filled in, raydistill's from-scratch Marians converted as they
generate in transformers). The folder it writes holds CTranslate2's ``model.bin``, ``config.json``
and vocabulary, the model's tokenizer files (``AutoTokenizer.from_pretrained(out)`` loads them),
its ``generation_config.json``, and ``raydistill_export.json`` (what was exported, how)::

    import ctranslate2, transformers
    translator = ctranslate2.Translator(out)   # compute_type="default": as exported
    tok = transformers.AutoTokenizer.from_pretrained(out)
    tokens = tok.convert_ids_to_tokens(tok.encode("some text"))
    hyp = translator.translate_batch([tokens], beam_size=4)[0].hypotheses[0]
    print(tok.decode(tok.convert_tokens_to_ids(hyp), skip_special_tokens=True))

With a data folder, ``compare_latency`` times both models at batch 1 (greedy) on a few of its
sources and counts the sources whose outputs are the same.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from raydistill.config import COMPUTE_TYPES
from raydistill.errors import ConfigError, ModelError

FORMATS = ("ctranslate2",)
# The tokenizer's files (BPE, WordPiece, SentencePiece: Marian's source.spm/target.spm, T5's
# spiece.model) and the generation settings; never the model's config.json (CTranslate2 writes
# its own under that name) nor its weights.
TOKENIZER_PATTERNS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                      "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "*.spm",
                      "*.model", "generation_config.json")
EXPORT_FILE = "raydistill_export.json"


def tokenizer_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.is_file()
                  and any(fnmatch.fnmatch(p.name, pat) for pat in TOKENIZER_PATTERNS))


def export_ctranslate2(model: str | os.PathLike, out: str | os.PathLike,
                       quantization: str = "float32", *, overwrite: bool = False,
                       model_cache_dir: str | os.PathLike | None = None) -> Path:
    """Convert ``model`` (a folder or a Hub id) into the CTranslate2 folder ``out``.

    ``quantization`` is the weights' type (``int8`` for CPUs, ``float16`` / ``int8_float16``
    for GPUs); a ``Translator`` loading it with ``compute_type="default"`` computes in it where
    the device can. The folder appears whole or not at all (written beside it, then renamed).
    """
    from raydistill.atomic import replace_dir_atomic
    from raydistill.hub import resolve_model
    from raydistill.models.ct2 import CONVERTIBLE, convert_cached, require_ctranslate2

    if quantization not in COMPUTE_TYPES:
        raise ConfigError(f"--quantization {quantization} is not allowed: choose one of "
                          f"{', '.join(COMPUTE_TYPES)}")
    dst = Path(out).resolve()
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())) and not overwrite:
        raise ConfigError(f"--out {dst} exists and is not empty; pass --overwrite to replace it, "
                          "or choose another folder")
    if (Path(model) / "best_tfmr" / "config.json").is_file():
        model = Path(model) / "best_tfmr"  # a distill run's output_dir: its best student
    source = resolve_model(str(model), "model", model_cache_dir)
    src = Path(source.path)
    if not (src / "config.json").is_file():
        raise ModelError(f"{src} holds no saved model (config.json missing); pass a folder "
                         "written by save_pretrained or by raydistill distill (best_tfmr)")
    model_type = json.loads((src / "config.json").read_text()).get("model_type")
    ct2 = require_ctranslate2()
    dst.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        try:
            converted = convert_cached(src, quantization, cache_dir=work)
        except (ValueError, AttributeError, KeyError, NotImplementedError) as err:
            from raydistill.runtime import first_line

            raise ModelError(f"CTranslate2 cannot convert {model} (model type {model_type!r}): "
                             f"{type(err).__name__}: {first_line(err)}") from err
        for path in tokenizer_files(src):
            shutil.copy2(path, converted / path.name)
        record = {"model": str(model), "model_path": str(src), "model_id": source.id,
                  "model_commit": source.commit,
                  "model_type": model_type, "format": "ctranslate2",
                  "quantization": quantization, "ctranslate2": ct2.__version__,
                  # greedy outputs checked equal to transformers' (tests/unit/test_export.py)
                  "checked_architecture": model_type in CONVERTIBLE}
        (converted / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")
        replace_dir_atomic(converted, dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dst


def _timed(run: Callable[[list[str]], list[str]], texts: list[str]) -> tuple[list[str], float]:
    """Outputs one text at a time (batch 1) and milliseconds per text, after one warm-up."""
    run(texts[:1])  # first-call allocations
    outputs, t0 = [], time.perf_counter()
    for text in texts:
        outputs += run([text])
    return outputs, 1000 * (time.perf_counter() - t0) / max(len(texts), 1)


def compare_latency(model: str | os.PathLike, exported: str | os.PathLike,
                    sources: Sequence[str], *, max_length: int = 64,
                    max_source_length: int = 512, rounds: int = 3) -> dict[str, Any]:
    """Greedy batch-1 generation of ``sources`` by the transformers model (float32) and by its
    export (as exported), on this process's torch threads, best of ``rounds``. Returns
    ``ms_transformers``, ``ms_ctranslate2``, ``same`` (sources with identical outputs), ``n``."""
    import torch
    from transformers import AutoTokenizer

    from raydistill.models.ct2 import generate_ct2, load_translator, saved_generation_config
    from raydistill.models.generate import generate_local
    from raydistill.models.layers import load_seq2seq

    texts = [str(s) for s in sources]
    tokenizer = AutoTokenizer.from_pretrained(str(exported))  # the exported files, as a user would
    hf_model = load_seq2seq(str(model)).eval()
    kw = dict(num_beams=1, max_length=max_length, max_source_length=max_source_length,
              batch_size=1)
    translator = load_translator(str(exported), "cpu", "default", torch.get_num_threads())
    gen_cfg = saved_generation_config(model)
    engines = {"transformers": lambda t: generate_local(hf_model, tokenizer, t, **kw),
               "ctranslate2": lambda t: generate_ct2(translator, tokenizer, t,
                                                     generation_config=gen_cfg, **kw)}
    outputs: dict[str, list[str]] = {}
    best: dict[str, float] = {}
    for _ in range(rounds):  # in turn, best of ``rounds``: a busy moment lands on neither alone
        for name, run in engines.items():
            outputs[name], ms = _timed(run, texts)
            best[name] = min(ms, best.get(name, ms))
    return {"ms_transformers": best["transformers"], "ms_ctranslate2": best["ctranslate2"],
            "n": len(texts), "threads": torch.get_num_threads(),
            "same": sum(a == b for a, b in zip(outputs["transformers"], outputs["ctranslate2"]))}


def run_export_cli(args) -> int:
    """``raydistill export`` from parsed arguments: convert, list the files, time when asked."""
    from raydistill.models.ct2 import CONVERTIBLE

    if args.format not in FORMATS:
        raise ConfigError(f"--format {args.format}: only {', '.join(FORMATS)} is supported")
    sources = None
    if args.data_dir:  # a wrong folder fails here, before the conversion
        from raydistill.data.files import read_split

        sources = read_split(args.data_dir, args.split, n=args.n).sources
    out = export_ctranslate2(args.model, args.out, args.quantization, overwrite=args.overwrite,
                             model_cache_dir=args.model_cache_dir)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file()) / 1e6
    print(f"exported {args.model} to {out} as CTranslate2 ({args.quantization}, {size:.1f} MB): "
          + ", ".join(sorted(p.name for p in out.iterdir())))
    record = json.loads((out / EXPORT_FILE).read_text())
    if not record["checked_architecture"]:
        print(f"warning: raydistill has not checked CTranslate2's outputs for model type "
              f"{record['model_type']!r} against transformers' (it has for "
              f"{', '.join(CONVERTIBLE)}); --data-dir compares them on your data")
    if sources is not None:
        r = compare_latency(record["model_path"], out, sources, max_length=args.max_length,
                            max_source_length=args.max_source_length)
        print(f"batch-1 greedy generation of {r['n']} {args.split} sources of {args.data_dir} "
              f"(cpu, {r['threads']} threads, best of 3):")
        ours = f"ctranslate2 ({args.quantization})"
        print(f"  {'transformers (float32)':<28} {r['ms_transformers']:8.1f} ms/example")
        print(f"  {ours:<28} {r['ms_ctranslate2']:8.1f} ms/example  "
              f"({r['ms_transformers'] / max(r['ms_ctranslate2'], 1e-9):.2f}x faster)")
        print(f"  same output on {r['same']}/{r['n']} sources")
    print(f"load it: ctranslate2.Translator({str(out)!r}) and "
          f"transformers.AutoTokenizer.from_pretrained({str(out)!r})")
    return 0


def add_export_args(p) -> None:
    """Arguments of ``raydistill export``."""
    p.add_argument("model", help="the model: a folder (best_tfmr, save_pretrained) or a Hub id")
    p.add_argument("--format", default="ctranslate2", choices=FORMATS)
    p.add_argument("--quantization", default="float32", choices=COMPUTE_TYPES,
                   help="weights' type (int8: CPUs; float16 or int8_float16: GPUs)")
    p.add_argument("--out", required=True, help="folder to write (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--data-dir", default=None, help="time both models at batch 1 on sources "
                   "of this data folder and count identical outputs")
    p.add_argument("--split", default="test", help="the split --data-dir's sources come from")
    p.add_argument("--n", type=int, default=20, help="how many sources to time")
    p.add_argument("--max-length", type=int, default=64, help="longest generation, in tokens")
    p.add_argument("--max-source-length", type=int, default=512)
    p.add_argument("--model-cache-dir", default=None, help="where a Hub id is downloaded "
                   "(default: $HF_HUB_CACHE, else Hugging Face's cache)")


__all__ = ["FORMATS", "add_export_args", "compare_latency", "export_ctranslate2",
           "run_export_cli", "tokenizer_files"]
