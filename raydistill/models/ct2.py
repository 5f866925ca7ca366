"""The CTranslate2 generation backend: convert a saved model once, then translate with it.

``generation_backend: ctranslate2`` runs beam search in CTranslate2 instead of transformers'
``generate``. The driver converts the model once per (model fingerprint, compute type) into a
cache folder (``prepare_backend``); each Ray Data actor then loads the converted folder
(``load_translator``) and generates with ``generate_ct2``, which means by beams, length penalty,
max length and batch size what ``generate_local`` means by them. Architectures CTranslate2
cannot convert (or that raydistill has not checked against transformers) fall back to
transformers with one warning.

A CTranslate2 actor (``CT2Generator``) imports neither torch nor transformers when the model's
``tokenizer.json`` tokenizes and decodes like its transformers tokenizer (``LightTokenizer``,
checked on the driver): that import was most of an actor's start (3.4 s of 5 s on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from raydistill.config import BACKENDS, COMPUTE_TYPES
from raydistill.models.ct2_convert import (  # noqa: F401  (export and tests import them here)
    CACHE_ENV,
    convert_cached,
    default_cache_dir,
    require_ctranslate2,
)

# Model types whose conversion raydistill checks against transformers (tests/unit/test_export.py:
# greedy identical, mBART with a forced language code too). Others generate with transformers,
# with a warning: FSMT and BERT2BERT have no converter; mT5, M2M-100 and NLLB are unchecked.
CONVERTIBLE = ("bart", "mbart", "marian", "pegasus", "t5")


@dataclass(frozen=True)
class Backend:
    """What the actors load: ``name`` is the backend that will run (after any fallback);
    ``ct2_dir`` the converted model when it is ctranslate2."""

    name: str = "transformers"
    compute_type: str = "float32"
    ct2_dir: str | None = None
    # The model's tokenizer.json, loaded by the tokenizers library alone, gave the transformers
    # tokenizer's ids and texts on the driver's probes (``light_tokenizer_matches``).
    light_tokenizer: bool = False
    # The generation config's settings ``decode_options`` reads, as (key, value) pairs.
    generation: tuple[tuple[str, Any], ...] = ()

    def generation_config(self) -> SimpleNamespace:
        """Those settings as the attributes ``decode_options`` reads (read once, on the driver)."""
        return SimpleNamespace(**dict(self.generation))

# What ``light_tokenizer_matches`` tries besides the caller's samples: punctuation, digits,
# accents, runs of spaces, a script the vocabulary may lack, and the empty string.
_PROBES = ("Hello, world! It's 3.5 km (2 miles).", "  two  spaces , and a tab\there ",
           "Ça coûte 12 € — n'est-ce pas?", "Größe über Maß: 100%.", "日本語のテキスト", "")
# How many of the sources to generate ``prepare_backend`` callers pass as tokenizer ``samples``.
TOKENIZER_SAMPLES = 64
# The generation config's keys ``decode_options`` reads.
_GENERATION_KEYS = ("forced_eos_token_id", "min_length", "no_repeat_ngram_size",
                    "repetition_penalty")


class LightTokenizer:
    """What ``generate_ct2`` uses of a transformers tokenizer, on the tokenizers library alone.

    Loads ``tokenizer.json`` (no torch, no transformers import). Use it only where
    ``light_tokenizer_matches`` said it tokenizes like the transformers tokenizer.
    """

    def __init__(self, model_dir: str | os.PathLike) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        self.tokenizer.no_padding()

    def __call__(self, texts: Sequence[str], max_length: int, truncation: bool = True
                 ) -> dict[str, list[list[int]]]:
        if truncation:
            self.tokenizer.enable_truncation(max_length)
        else:
            self.tokenizer.no_truncation()
        return {"input_ids": [e.ids for e in self.tokenizer.encode_batch(list(texts))]}

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.tokenizer.id_to_token(int(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.tokenizer.token_to_id(t) for t in tokens]

    def batch_decode(self, ids: Sequence[Sequence[int]], skip_special_tokens: bool = True
                     ) -> list[str]:
        return self.tokenizer.decode_batch([list(x) for x in ids],
                                           skip_special_tokens=skip_special_tokens)


def light_tokenizer_matches(model_dir: str | os.PathLike, tokenizer: Any,
                            samples: Sequence[str] = (), max_length: int = 512) -> bool:
    """Whether ``LightTokenizer(model_dir)`` gives ``tokenizer``'s ids and decoded texts.

    Checked on ``_PROBES`` and ``samples`` (the caller's first sources): ids of each, and the
    decoding of those ids with and without special tokens. False when the folder has no
    tokenizer.json (a SentencePiece-only tokenizer, as OPUS-MT's) or it does not load.
    """
    if not (Path(model_dir) / "tokenizer.json").is_file():
        return False
    try:
        light = LightTokenizer(model_dir)
    except Exception:  # noqa: BLE001 - any load failure means: use transformers
        return False
    texts = list(_PROBES) + [str(t) for t in samples]
    ids = tokenizer(texts, max_length=max_length, truncation=True)["input_ids"]
    if light(texts, max_length=max_length)["input_ids"] != [list(x) for x in ids]:
        return False
    if light.convert_ids_to_tokens(ids[0]) != tokenizer.convert_ids_to_tokens(ids[0]):
        return False
    return all(light.batch_decode(ids, skip_special_tokens=skip)
               == tokenizer.batch_decode(ids, skip_special_tokens=skip) for skip in (True, False))


def saved_generation_config(model_dir: str | os.PathLike):
    """The saved generation config, else the one transformers derives from config.json."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(model_dir))
    except OSError:
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(str(model_dir)))


def check_choice(backend: str, compute_type: str) -> None:
    from raydistill.errors import ConfigError

    if backend not in BACKENDS:
        raise ConfigError(f"generation_backend={backend!r} is not allowed: choose one of "
                          f"{', '.join(BACKENDS)}")
    if compute_type not in COMPUTE_TYPES:
        raise ConfigError(f"compute_type={compute_type!r} is not allowed: choose one of "
                          f"{', '.join(COMPUTE_TYPES)}")


def prepare_backend(model_dir: str | os.PathLike, backend: str = "transformers",
                    compute_type: str = "float32", cache_dir: str | os.PathLike | None = None,
                    device: str = "cpu", samples: Sequence[str] = (),
                    num_gpus: float = 0.0) -> Backend:
    """On the driver: convert ``model_dir`` for CTranslate2 (cached) or decide to fall back.

    Also checks whether the actors may tokenize without transformers (``LightTokenizer``, on
    ``samples``, a few of the sources to generate, besides fixed probes) and reads the
    generation settings the actors need, so that an actor imports neither torch nor transformers.
    On ``device="cuda"`` it first runs the converted model on a GPU where the actors will
    (``cuda_probe``; ``num_gpus``: each actor's request, 0 for this process): a CTranslate2
    that cannot (no CUDA in the wheel, a CUDA library it cannot load) falls back to
    transformers with one warning, before any actor starts.
    """
    check_choice(backend, compute_type)
    if backend == "transformers":
        return Backend()
    ct2 = require_ctranslate2()
    if device == "cpu":
        _check_supported(compute_type, device, ct2.get_supported_compute_types(device))
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(str(model_dir)).model_type
    if model_type not in CONVERTIBLE:
        _fallback(model_dir, f"model type {model_type!r} has no CTranslate2 conversion "
                  f"that raydistill checks (those: {', '.join(CONVERTIBLE)})")
        return Backend()
    try:
        ct2_dir = convert_cached(model_dir, compute_type, cache_dir)
    except (ValueError, AttributeError, KeyError, NotImplementedError) as err:
        _fallback(model_dir, f"CTranslate2 cannot convert it ({type(err).__name__}: "
                  f"{str(err).splitlines()[0][:200]})")
        return Backend()
    if device == "cuda":
        probe = cuda_probe(str(ct2_dir), compute_type, num_gpus)
        if "error" in probe:
            _fallback(model_dir, f"CTranslate2 cannot run on the GPU here ({probe['error']})")
            return Backend()
        _check_supported(compute_type, device, probe["supported"])
    from transformers import AutoTokenizer

    gen = saved_generation_config(model_dir)
    light = light_tokenizer_matches(model_dir, AutoTokenizer.from_pretrained(str(model_dir)),
                                    samples)
    return Backend("ctranslate2", compute_type, str(ct2_dir), light_tokenizer=light,
                   generation=tuple((k, getattr(gen, k, None)) for k in _GENERATION_KEYS))


def _check_supported(compute_type: str, device: str, supported: Sequence[str]) -> None:
    from raydistill.errors import ConfigError

    if compute_type not in supported:
        raise ConfigError(f"compute_type={compute_type} does not run on {device} here "
                          f"(supported: {', '.join(sorted(supported))}); choose one of those")


def cuda_probe(ct2_dir: str, compute_type: str, num_gpus: float = 0.0) -> dict[str, Any]:
    """What CTranslate2 can do on a GPU where the actors will run: ``{"supported": [compute
    types]}``, or ``{"error": one line}`` when it cannot run ``ct2_dir`` there at all.

    Runs ``_try_cuda`` in a one-off Ray task asking for ``num_gpus`` (the actors' request: the
    driver may have no GPU) or, with 0, in this process."""
    if num_gpus <= 0:
        return _try_cuda(ct2_dir, compute_type)
    import ray

    from raydistill.runtime import check_resources, init_ray

    init_ray()
    check_resources("the CTranslate2 GPU check", 0.0, num_gpus, per_unit_gpus=num_gpus,
                    fix="use a cluster with GPUs, or generate on the CPU (num_gpus=0)")
    task = ray.remote(num_cpus=0, num_gpus=num_gpus, max_retries=0)(_try_cuda)
    return ray.get(task.remote(ct2_dir, compute_type))


def _try_cuda(ct2_dir: str, compute_type: str) -> dict[str, Any]:
    """``cuda_probe`` here: the GPU's compute types, then one token translated on it (the
    first translation loads cuBLAS, where a missing ``libcublas.so.12`` shows)."""
    try:
        ct2 = require_ctranslate2()
        if ct2.get_cuda_device_count() < 1:
            return {"error": "CTranslate2 sees no CUDA device: a build without CUDA, or no "
                             "GPU visible to it"}
        supported = sorted(ct2.get_supported_compute_types("cuda"))
        if compute_type in supported:
            translator = ct2.Translator(ct2_dir, device="cuda", compute_type=compute_type)
            translator.translate_batch([["a"]], beam_size=1, max_decoding_length=1)
        return {"supported": supported}
    except Exception as err:  # noqa: BLE001 - any failure here would fail every actor
        from raydistill.runtime import first_line

        return {"error": f"{type(err).__name__}: {first_line(err)}"}


def _fallback(model_dir, why: str) -> None:
    warnings.warn(f"generation_backend: ctranslate2 falls back to transformers for {model_dir}: "
                  f"{why}", UserWarning, stacklevel=3)


def load_translator(ct2_dir: str, device: str = "cpu", compute_type: str = "float32",
                    threads: int = 1):
    """A ``ctranslate2.Translator`` using ``threads`` cores for one batch at a time."""
    ct2 = require_ctranslate2()
    return ct2.Translator(ct2_dir, device=device, compute_type=compute_type,
                          inter_threads=1, intra_threads=threads)


def decode_options(generation_config: Any, *, num_beams: int, length_penalty: float,
                   max_length: int) -> dict[str, Any]:
    """``translate_batch`` options that mean what ``generate`` does with the same settings.

    ``max_length`` counts the decoder start token in transformers and not in CTranslate2; a
    ``forced_eos_token_id`` spends the last position on ``</s>``, which CTranslate2 does not
    count. The generation config's ``min_length``, ``no_repeat_ngram_size`` and
    ``repetition_penalty`` carry over.
    """
    forced_eos = getattr(generation_config, "forced_eos_token_id", None) is not None
    opts: dict[str, Any] = {
        "beam_size": num_beams,
        "max_decoding_length": max(1, max_length - 1 - int(forced_eos)),
        "return_scores": True,
        # transformers lets </s> come first unless min_length says otherwise; CTranslate2 not.
        "min_decoding_length": 0,
    }
    if num_beams > 1:
        opts["length_penalty"] = length_penalty
    min_length = getattr(generation_config, "min_length", 0) or 0
    if min_length > 1:
        opts["min_decoding_length"] = min_length - 1
    if getattr(generation_config, "no_repeat_ngram_size", 0):
        opts["no_repeat_ngram_size"] = generation_config.no_repeat_ngram_size
    if (getattr(generation_config, "repetition_penalty", None) or 1.0) != 1.0:
        opts["repetition_penalty"] = generation_config.repetition_penalty
    return opts


def target_prefix(generation_config: Any, tokenizer: Any, n: int) -> dict[str, Any]:
    """``forced_bos_token_id`` (mBART-50's, NLLB's target language code) as CTranslate2's target
    prefix: the first token after the decoder start, as ``generate`` forces it."""
    forced = getattr(generation_config, "forced_bos_token_id", None)
    if forced is None:
        return {}
    return {"target_prefix": [[tokenizer.convert_ids_to_tokens(forced)]] * n}


def generate_ct2(translator: Any, tokenizer: Any, sources: Sequence[str], *,
                 generation_config: Any = None, num_beams: int = 4, length_penalty: float = 1.0,
                 max_length: int = 64, batch_size: int = 16, max_source_length: int = 512,
                 return_scores: bool = False) -> list[str] | tuple[list[str], list[float]]:
    """``generate_local`` on a CTranslate2 translator: texts (and scores) in input order.

    The scores are CTranslate2's: the hypothesis log-probability, divided by
    ``length ** length_penalty`` in beam search.
    """
    opts = decode_options(generation_config, num_beams=num_beams, length_penalty=length_penalty,
                          max_length=max_length)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    preds: list[str] = [""] * len(sources)
    scores: list[float] = [0.0] * len(sources)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids = tokenizer([sources[i] for i in idx], max_length=max_source_length,
                        truncation=True)["input_ids"]
        results = translator.translate_batch([tokenizer.convert_ids_to_tokens(x) for x in ids],
                                             max_batch_size=batch_size, **opts,
                                             **target_prefix(generation_config, tokenizer,
                                                             len(ids)))
        out_ids = [tokenizer.convert_tokens_to_ids(r.hypotheses[0]) for r in results]
        texts = tokenizer.batch_decode(out_ids, skip_special_tokens=True)
        for i, text, r in zip(idx, texts, results):
            preds[i] = text.strip()
            scores[i] = float(r.scores[0])
    return (preds, scores) if return_scores else preds


def add_predictions(batch: dict[str, np.ndarray], preds: Sequence[str],
                    scores: Sequence[float] | None, seconds: float) -> dict[str, np.ndarray]:
    """A generator actor's output: "prediction", "gen_seconds" (each row's share of the batch's
    generation time: summed, the pool's busy time) and "score" when there are scores."""
    batch["prediction"] = np.array(list(preds), dtype=object)
    batch["gen_seconds"] = np.full(len(preds), seconds / max(len(preds), 1))
    if scores is not None:
        batch["score"] = np.asarray(scores, dtype=np.float32)
    return batch


class CT2Generator:
    """The Ray Data ``map_batches`` callable of the ctranslate2 backend (``Generator``'s twin
    for a ``prepare_backend`` result): loads the translator once per actor, adds "prediction".

    Imports neither torch nor transformers when ``backend.light_tokenizer``. ``teacher_dtype``
    is accepted and ignored (the compute type decides).
    """

    def __init__(self, model_dir: str, num_beams: int = 4, length_penalty: float = 1.0,
                 max_length: int = 64, max_source_length: int = 512, batch_size: int = 16,
                 device: str = "cpu", return_scores: bool = False,
                 teacher_dtype: str | None = None, backend: Backend | None = None) -> None:
        from raydistill.runtime import actor_threads

        if backend is None or backend.name != "ctranslate2":
            raise ValueError("CT2Generator needs a ctranslate2 prepare_backend result")
        if backend.light_tokenizer:
            self.tokenizer: Any = LightTokenizer(model_dir)
        else:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.generation_config = backend.generation_config()
        self.translator = load_translator(backend.ct2_dir, device, backend.compute_type,
                                          actor_threads())
        self.kw = dict(num_beams=num_beams, length_penalty=length_penalty, max_length=max_length,
                       max_source_length=max_source_length, batch_size=batch_size)
        self.return_scores = return_scores

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Adds "prediction" (and "score", CTranslate2's hypothesis score, when asked for)."""
        t0 = time.perf_counter()
        out = generate_ct2(self.translator, self.tokenizer, [str(s) for s in batch["source"]],
                           generation_config=self.generation_config,
                           return_scores=self.return_scores, **self.kw)
        preds, scores = out if self.return_scores else (out, None)
        return add_predictions(batch, preds, scores, time.perf_counter() - t0)


def add_backend_args(p: argparse.ArgumentParser) -> None:
    """``--backend``, ``--compute-type``, ``--ct2-cache-dir`` (evaluate, pseudo-label)."""
    p.add_argument("--backend", choices=BACKENDS, default="transformers",
                   help="generation engine (ctranslate2: converted once per compute type, "
                   "cached; unconvertible models fall back to transformers with a warning)")
    p.add_argument("--compute-type", choices=COMPUTE_TYPES, default="float32",
                   help="CTranslate2 weights/computation (int8: fastest on CPU; float16 on GPU)")
    p.add_argument("--ct2-cache-dir", default=None, help="converted models (default: "
                   "$RAYDISTILL_CT2_CACHE, else ~/.cache/raydistill/ctranslate2)")


__all__ = ["BACKENDS", "COMPUTE_TYPES", "TOKENIZER_SAMPLES", "Backend", "CT2Generator",
           "LightTokenizer", "add_backend_args", "add_predictions", "convert_cached", "cuda_probe",
           "generate_ct2", "light_tokenizer_matches", "load_translator", "prepare_backend",
           "saved_generation_config"]
