"""The CTranslate2 generation backend: convert a saved model once, then translate with it.

``generation_backend: ctranslate2`` runs beam search in CTranslate2 instead of transformers'
``generate``. The driver converts the model once per (model fingerprint, compute type) into a
cache folder (``prepare_backend``); each Ray Data actor then loads the converted folder
(``load_translator``) and generates with ``generate_ct2``, which means by beams, length penalty,
max length and batch size what ``generate_local`` means by them. Architectures CTranslate2
cannot convert (or that raydistill has not checked against transformers) fall back to
transformers with one warning.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raydistill.config import BACKENDS, COMPUTE_TYPES

# Model types whose conversion raydistill checks against transformers (tests/unit/eval/test_ct2.py:
# greedy identical). Others generate with transformers, with a warning: FSMT and BERT2BERT have no
# converter; Pegasus converts but its greedy output differed on a tiny model; mBART needs a
# language-code decoder start; mT5, M2M-100 and NLLB are unchecked.
CONVERTIBLE = ("bart", "marian", "t5")
# BART configs written by transformers 5 lack these keys, which the converter reads
# (config.json files of the Hub's older checkpoints still carry them): (pre-norm, embedding norm).
_NORM_DEFAULTS = {"bart": (False, True)}
CACHE_ENV = "RAYDISTILL_CT2_CACHE"


def require_ctranslate2():
    """Import ctranslate2 or say how to install it."""
    try:
        import ctranslate2
    except ImportError as err:
        from raydistill.errors import ConfigError

        raise ConfigError("generation_backend: ctranslate2 needs the ctranslate2 package: "
                          "pip install 'ctranslate2>=4.5'") from err
    return ctranslate2


@dataclass(frozen=True)
class Backend:
    """What the actors load: ``name`` is the backend that will run (after any fallback);
    ``ct2_dir`` the converted model when it is ctranslate2."""

    name: str = "transformers"
    compute_type: str = "float32"
    ct2_dir: str | None = None


def default_cache_dir() -> Path:
    """``$RAYDISTILL_CT2_CACHE``, else ``~/.cache/raydistill/ctranslate2``. On a multi-node
    cluster point it at storage every node reads (the actors load from it)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "raydistill" / "ctranslate2")


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
                    device: str = "cpu") -> Backend:
    """On the driver: convert ``model_dir`` for CTranslate2 (cached) or decide to fall back."""
    check_choice(backend, compute_type)
    if backend == "transformers":
        return Backend()
    ct2 = require_ctranslate2()
    from raydistill.errors import ConfigError

    supported = ct2.get_supported_compute_types(device) if device == "cpu" or \
        ct2.get_cuda_device_count() else None
    if supported is not None and compute_type not in supported:
        raise ConfigError(f"compute_type={compute_type} does not run on {device} here "
                          f"(supported: {', '.join(sorted(supported))}); choose one of those")
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
    return Backend("ctranslate2", compute_type, str(ct2_dir))


def _fallback(model_dir, why: str) -> None:
    warnings.warn(f"generation_backend: ctranslate2 falls back to transformers for {model_dir}: "
                  f"{why}", UserWarning, stacklevel=3)


def convert_cached(model_dir: str | os.PathLike, compute_type: str,
                   cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted model in ``cache_dir/<fingerprint>-<compute_type>``; converted on a miss.

    The key hashes weights, config and tokenizer files (the vocabulary is part of the converted
    model) and the ctranslate2 version, so a retrained model in the same folder converts again.
    """
    ct2 = require_ctranslate2()
    from raydistill.data.fingerprint import digest, model_fingerprint, tokenizer_fingerprint

    key = digest({"model": model_fingerprint(model_dir), "tokenizer": tokenizer_fingerprint(model_dir),
                  "ctranslate2": ct2.__version__})
    out = Path(cache_dir or default_cache_dir()) / f"{key}-{compute_type}"
    if (out / "model.bin").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a temporary sibling and rename: a concurrent reader never sees half a model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with _raydistill_loaders():
            _converter(str(model_dir)).convert(str(tmp), quantization=compute_type, force=True)
        try:
            os.replace(tmp, out)
        except OSError:  # another process converted it first
            if not (out / "model.bin").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _converter(model_dir: str):
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        """TransformersConverter with BART's norm keys filled in (transformers 5 drops them)."""

        def load_model(self, model_class, model_name_or_path, **kwargs):
            model = super().load_model(model_class, model_name_or_path, **kwargs)
            defaults = _NORM_DEFAULTS.get(model.config.model_type)
            if defaults:
                for key, value in zip(("normalize_before", "normalize_embedding"), defaults):
                    if not hasattr(model.config, key):
                        setattr(model.config, key, value)
            return model

    return Converter(model_dir)


@contextlib.contextmanager
def _raydistill_loaders() -> Iterator[None]:
    """Swap in a Marian loader for vocabularies whose ``<pad>`` is not the last token.

    CTranslate2's Marian loader assumes OPUS-MT's layout (``<pad>`` last, dropped; the decoder
    starts from a zero embedding). raydistill's from-scratch Marians put ``<pad>`` at id 1 and
    start the decoder from its (trained, tied) embedding, as transformers does: convert those
    like BART, starting from the ``decoder_start_token_id`` token.
    """
    from ctranslate2.converters import transformers as ct2_tf

    stock = ct2_tf._MODEL_LOADERS["MarianConfig"]

    class MarianLoader(type(stock)):
        def __call__(self, model, tokenizer):
            self._pad_last = tokenizer.convert_ids_to_tokens(len(tokenizer) - 1) == "<pad>"
            return super().__call__(model, tokenizer)

        def get_model_spec(self, model):
            if self._pad_last:
                return super().get_model_spec(model)
            model.config.normalize_before = False
            model.config.normalize_embedding = False
            return ct2_tf.BartLoader.get_model_spec(self, model)

        def get_vocabulary(self, model, tokenizer):
            if self._pad_last:
                return super().get_vocabulary(model, tokenizer)
            return ct2_tf.BartLoader.get_vocabulary(self, model, tokenizer)

        def set_config(self, config, model, tokenizer):
            super().set_config(config, model, tokenizer)
            if not self._pad_last:
                config.decoder_start_token = tokenizer.convert_ids_to_tokens(
                    model.config.decoder_start_token_id)

        def set_decoder(self, spec, decoder):
            if self._pad_last:
                return super().set_decoder(spec, decoder)
            return ct2_tf.BartLoader.set_decoder(self, spec, decoder)

    ct2_tf._MODEL_LOADERS["MarianConfig"] = MarianLoader()
    try:
        yield
    finally:
        ct2_tf._MODEL_LOADERS["MarianConfig"] = stock


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
                                             max_batch_size=batch_size, **opts)
        out_ids = [tokenizer.convert_tokens_to_ids(r.hypotheses[0]) for r in results]
        texts = tokenizer.batch_decode(out_ids, skip_special_tokens=True)
        for i, text, r in zip(idx, texts, results):
            preds[i] = text.strip()
            scores[i] = float(r.scores[0])
    return (preds, scores) if return_scores else preds


__all__ = ["BACKENDS", "COMPUTE_TYPES", "Backend", "convert_cached", "generate_ct2",
           "load_translator", "prepare_backend"]
