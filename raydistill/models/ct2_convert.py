"""Converting a saved model to CTranslate2, once per fingerprint (``convert_cached``).

CTranslate2's converters read a few things transformers 5 no longer writes or that
raydistill's models do differently; the loaders are adjusted here, for the conversion only:
BART's, mBART's and Pegasus' norm keys (absent from transformers 5 configs), the decoder start
token of mBART and Pegasus (transformers' ``generate`` starts from ``decoder_start_token_id``;
CTranslate2's loaders assume the Hub's mBART-25 and Pegasus layouts), and Marian vocabularies
whose ``<pad>`` is not the last token (raydistill's from-scratch Marians).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# BART configs written by transformers 5 lack these keys, which the converter reads
# (config.json files of the Hub's older checkpoints still carry them): (pre-norm, embedding norm).
_NORM_DEFAULTS = {"bart": (False, True), "mbart": (True, True), "pegasus": (True, False)}
CACHE_ENV = "RAYDISTILL_CT2_CACHE"
# Part of the cache key: a change to the loaders below converts every model again.
LOADERS_VERSION = 2  # 2: mBART and Pegasus start decoding from decoder_start_token_id


def require_ctranslate2():
    """Import ctranslate2 or say how to install it."""
    try:
        import ctranslate2
    except ImportError as err:
        from raydistill.errors import ConfigError

        raise ConfigError("generation_backend: ctranslate2 needs the ctranslate2 package: "
                          "pip install 'ctranslate2>=4.5'") from err
    return ctranslate2


def default_cache_dir() -> Path:
    """``$RAYDISTILL_CT2_CACHE``, else ``~/.cache/raydistill/ctranslate2``. On a multi-node
    cluster point it at storage every node reads (the actors load from it)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "raydistill" / "ctranslate2")


def convert_cached(model_dir: str | os.PathLike, compute_type: str,
                   cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted model in ``cache_dir/<fingerprint>-<compute_type>``; converted on a miss.

    The key hashes weights, config and tokenizer files (the vocabulary is part of the converted
    model) and the ctranslate2 version, so a retrained model in the same folder converts again.
    """
    ct2 = require_ctranslate2()
    from raydistill.data.fingerprint import digest, model_fingerprint, tokenizer_fingerprint

    key = digest({"model": model_fingerprint(model_dir), "tokenizer": tokenizer_fingerprint(model_dir),
                  "ctranslate2": ct2.__version__, "loaders": LOADERS_VERSION})
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
    """Swap in a Marian loader for vocabularies whose ``<pad>`` is not the last token, and
    mBART and Pegasus loaders that start decoding where ``generate`` does.

    CTranslate2's Marian loader assumes OPUS-MT's layout (``<pad>`` last, dropped; the decoder
    starts from a zero embedding). raydistill's from-scratch Marians put ``<pad>`` at id 1 and
    start the decoder from its (trained, tied) embedding, as transformers does: convert those
    like BART, starting from the ``decoder_start_token_id`` token.
    """
    from ctranslate2.converters import transformers as ct2_tf

    class MarianLoader(type(ct2_tf._MODEL_LOADERS["MarianConfig"])):
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

    def starts_as_generate(stock_loader):
        """mBART's and Pegasus' loaders with transformers' decoder start token (``generate``
        starts from ``decoder_start_token_id``; CTranslate2's loaders assume the Hub's mBART-25,
        which starts from the language code given as a target prefix, and Pegasus' ``<pad>``)."""

        class Loader(type(stock_loader)):
            def set_config(self, config, model, tokenizer):
                super().set_config(config, model, tokenizer)
                start = model.config.decoder_start_token_id
                if start is not None:
                    config.decoder_start_token = tokenizer.convert_ids_to_tokens(start)

        return Loader()

    swapped = {"MarianConfig": MarianLoader(),
               **{name: starts_as_generate(ct2_tf._MODEL_LOADERS[name])
                  for name in ("MBartConfig", "PegasusConfig")}}
    stock_loaders = {name: ct2_tf._MODEL_LOADERS[name] for name in swapped}
    ct2_tf._MODEL_LOADERS.update(swapped)
    try:
        yield
    finally:
        ct2_tf._MODEL_LOADERS.update(stock_loaders)
