"""Where a model comes from: a local folder as it is, or a Hub id resolved to a local snapshot.

Every place that takes a model (``teacher``, ``teachers``, ``student``, ``make-student``,
``pseudo-label``, ``cache-logits``, ``evaluate``, ``tune``, the ``jobs/`` scripts and the
Python API) passes it through :func:`resolve_model` once, on the driver, before Ray starts a
worker. A Hub id (``org/name``, optionally pinned as ``org/name@revision``: a branch, tag or
commit) is downloaded with ``huggingface_hub.snapshot_download`` (config, weights and tokenizer
files only) into the Hugging Face cache, or ``model_cache_dir``; workers and actors are then
given the local snapshot folder, so N workers never download N times and never need the
network. Downloads honour ``HF_TOKEN`` (or ``huggingface-cli login``) and ``HF_HUB_CACHE``;
``HF_HUB_OFFLINE=1`` reads the cache alone. Each failure is a one-line :class:`ModelError`.

This module sits below every folder of the package: it imports only ``raydistill.errors`` and
libraries.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from raydistill.errors import ModelError

WEIGHT_GLOBS = ("*.safetensors", "*.safetensors.index.json", "*.bin")
# What a snapshot needs: config, generation config, tokenizer files (JSON, BPE merges / WordPiece
# vocabularies, sentencepiece models) and the PyTorch weights; never TF/Flax/ONNX copies.
CONFIG_AND_TOKENIZER = ["*.json", "*.txt", "*.model", "*.spm"]
SAFETENSORS = ["*.safetensors"]
PYTORCH_BIN = ["pytorch_model*.bin"]
COMMIT = re.compile(r"[0-9a-f]{40}")
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
SEQ2SEQ_FAMILIES = "BART, mBART, Marian, Pegasus, FSMT, T5 or EncoderDecoderModel"


@dataclass(frozen=True)
class ResolvedModel:
    """A model reference and the local folder it stands for.

    ``id`` / ``revision`` / ``commit`` are None for a local folder (id and commit are set for a
    snapshot folder of the Hub cache); for a Hub id, ``revision`` is the one asked for (None:
    the default branch) and ``commit`` the commit it resolved to.
    """

    path: str
    ref: str
    id: str | None = None
    revision: str | None = None
    commit: str | None = None

    def record(self) -> dict[str, Any]:
        """What ``hparams.json`` / ``pseudo_label.json`` keep of this model."""
        return asdict(self)


def is_local_ref(ref: str) -> bool:
    """True for what can only be a path: an existing one, one starting with ``/ . ~``, or one
    with more than one ``/`` (a Hub id is ``name`` or ``org/name``)."""
    return (Path(ref).expanduser().exists() or ref.startswith(("/", ".", "~"))
            or ref.split("@", 1)[0].count("/") > 1 or "\\" in ref)


def check_model_dir(path: str | os.PathLike, key: str) -> None:
    """A model folder must exist and hold a config and weights (checked without loading)."""
    p = Path(path)
    if not p.is_dir():
        raise ModelError(f"{key}: {path} does not exist; pass a folder written by save_pretrained "
                         "(or by raydistill make-student), or a Hub id such as org/name")
    has_weights = any(f for pattern in WEIGHT_GLOBS for f in p.glob(pattern))
    if not (p / "config.json").is_file() or not has_weights:
        raise ModelError(f"{key}: {path} holds no model (needs config.json and *.safetensors); "
                         "pass a folder written by save_pretrained")


def parse_hub_id(ref: str, key: str) -> tuple[str, str | None]:
    """``org/name`` or ``org/name@revision`` -> (repo id, revision or None); malformed ids raise."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id, at, revision = ref.partition("@")
    if at and not revision:
        raise ModelError(f"{key}: {ref!r} ends in '@' with no revision; write org/name@REVISION "
                         "(a branch, tag or commit) or drop the '@'")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ModelError(f"{key}: {ref!r} is not a valid Hub id ({_first_line(err)}) nor an "
                         "existing folder; use org/name or org/name@revision (letters, digits, "
                         "'-', '_', '.'), or the path of a saved model") from None
    return repo_id, revision or None


def snapshot_identity(path: str | os.PathLike) -> tuple[str, str] | None:
    """(Hub id, commit) of a folder in the Hub cache layout
    (``.../models--org--name/snapshots/<commit>``); None for any other folder."""
    p = Path(path)
    repo = p.parent.parent.name
    if (p.parent.name != "snapshots" or not repo.startswith("models--")
            or not COMMIT.fullmatch(p.name)):
        return None
    # Hub ids cannot contain "--", so the cache's folder name maps back without ambiguity.
    return repo[len("models--"):].replace("--", "/"), p.name


def resolve_model(ref: str | os.PathLike, key: str = "model",
                  cache_dir: str | os.PathLike | None = None) -> ResolvedModel:
    """A local folder (checked, passed through) or a Hub id (downloaded or found in the cache).

    ``key`` names the setting in errors (``teacher``, ``teachers[1]``, ``--model``);
    ``cache_dir`` is ``model_cache_dir`` (default: ``$HF_HUB_CACHE``, else Hugging Face's own).
    """
    ref = str(ref)
    if is_local_ref(ref):
        check_model_dir(ref, key)
        # A folder of the Hub cache (what a driver hands on) still knows its id and commit.
        hub_id, commit = snapshot_identity(ref) or (None, None)
        return ResolvedModel(path=ref, ref=ref, id=hub_id, commit=commit)
    repo_id, revision = parse_hub_id(ref, key)
    # huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE when it is imported; read them now.
    cache = str(cache_dir) if cache_dir else os.environ.get("HF_HUB_CACHE") or None
    offline = _offline_var()

    def fetch(weights: list[str]) -> str:
        return _download(ref, repo_id, revision, cache, offline, key, CONFIG_AND_TOKENIZER + weights)

    path = fetch(SAFETENSORS)
    if not any(Path(path).glob("*.safetensors")):  # older repos: pytorch_model*.bin only
        path = fetch(PYTORCH_BIN)
    _check_seq2seq(Path(path), ref, key, offline)
    name = Path(path).name
    resolved = ResolvedModel(path=path, ref=ref, id=repo_id, revision=revision,
                             commit=name if COMMIT.fullmatch(name) else None)
    print(f"[raydistill] {key}: {ref} -> commit {resolved.commit or '?'} ({path})", flush=True)
    return resolved


def resolve_path(ref: str | os.PathLike, key: str = "model",
                 cache_dir: str | os.PathLike | None = None) -> str:
    """:func:`resolve_model`'s local folder."""
    return resolve_model(ref, key, cache_dir).path


def _offline_var() -> str | None:
    """The variable that switches the Hub off (``HF_HUB_OFFLINE=1``), or None."""
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _download(ref: str, repo_id: str, revision: str | None, cache: str | None,
              offline: str | None, key: str, patterns: list[str]) -> str:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    shown = cache or constants.HF_HUB_CACHE
    login = "set HF_TOKEN or run `huggingface-cli login` (`hf auth login`)"
    try:
        return snapshot_download(repo_id, revision=revision, cache_dir=cache,
                                 allow_patterns=patterns, local_files_only=offline is not None)
    except GatedRepoError:
        raise ModelError(f"{key}: {ref} is a gated model: accept its terms on "
                         f"https://huggingface.co/{repo_id}, then {login}") from None
    except RepositoryNotFoundError:
        raise ModelError(f"{key}: {ref} is not a local folder and no such model exists on the Hub "
                         f"(if it is private, {login}); check the id or the path") from None
    except RevisionNotFoundError:
        raise ModelError(f"{key}: {ref}: revision {revision!r} does not exist in {repo_id}; pin "
                         "a branch, tag or commit that exists, or drop '@...'") from None
    except LocalEntryNotFoundError as err:
        partial = "IncompleteSnapshot" in type(err).__name__
        what = "only partly in" if partial else "not in"
        if offline:
            raise ModelError(f"{key}: {ref} is not a local folder and is {what} the Hub cache "
                             f"{shown}, and {offline}={os.environ[offline]} forbids downloading "
                             f"it; unset {offline} to download it once, or point model_cache_dir "
                             "(or HF_HUB_CACHE) at a cache that holds it") from None
        raise ModelError(f"{key}: {ref} is not a local folder and is {what} the Hub cache {shown}, "
                         f"and the Hub could not be reached ({_first_line(err)}); check the "
                         "network (or HF_ENDPOINT), or set HF_HUB_OFFLINE=1 with a cache that "
                         "holds it") from None
    except HFValidationError as err:
        raise ModelError(f"{key}: {ref!r} is not a valid Hub id ({_first_line(err)}); use "
                         "org/name or org/name@revision") from None
    except (OSError, ValueError) as err:  # HTTP errors, a full disk, a bad token file
        raise ModelError(f"{key}: cannot download {ref} ({type(err).__name__}: "
                         f"{_first_line(err)})") from None


def _check_seq2seq(path: Path, ref: str, key: str, offline: str | None) -> None:
    """A snapshot must hold a PyTorch encoder-decoder: config.json, weights, a seq2seq type."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES

    fix = (f"{offline} is set: unset it to fetch the missing files" if offline else
           f"use a seq2seq checkpoint ({SEQ2SEQ_FAMILIES})")
    if not (path / "config.json").is_file():
        raise ModelError(f"{key}: {ref} has no config.json ({path}): not a transformers model; "
                         f"{fix}")
    if not any(f for pattern in SAFETENSORS + PYTORCH_BIN for f in path.glob(pattern)):
        raise ModelError(f"{key}: {ref} has no PyTorch weights (*.safetensors or pytorch_model*.bin;"
                         f" TensorFlow/Flax-only checkpoints cannot be loaded) in {path}; {fix}")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        model_type = config.get("model_type")
    except (OSError, ValueError, AttributeError):
        raise ModelError(f"{key}: {ref}: {path / 'config.json'} is not a JSON object; "
                         "download the model again") from None
    if model_type not in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(f"{key}: {ref} is a {model_type!r} model, not a seq2seq (encoder-decoder)"
                         f" model; raydistill distills {SEQ2SEQ_FAMILIES} checkpoints")


__all__ = ["ResolvedModel", "check_model_dir", "is_local_ref", "parse_hub_id", "resolve_model",
           "resolve_path", "snapshot_identity"]
