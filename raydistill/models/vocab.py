"""Trim a student's vocabulary to the tokens its task uses (``make-student --trim-vocab``).

A multilingual teacher's vocabulary (mBART-50: 250k tokens) is mostly unused by one language
pair, yet a small student's output layer multiplies by all of it for every generated token.
Trimming keeps the tokens the teacher's tokenizer produces on a data folder's train split
(source and target, as training tokenizes them), every special token (language codes among
them) and the ids the config names; ``keep_vocab`` keeps only the N most frequent data tokens.
N bounds the data tokens chosen by frequency, not the trimmed vocabulary: the special tokens,
the config's ids, the single-character pieces of the split's characters and (BPE) every merge
intermediate of the kept tokens and the 256 bytes are added to them, since without them the
kept tokens could not be reached or a character would have no piece (make-student prints the
total). A bound on the total could only be met from below: one more data token can bring
several intermediates with it.
The kept ids keep their order (new id i is old id ``new_to_old[i]``), so the embeddings, the
output layer and ``final_logits_bias`` are those rows of the teacher's, and with no layer
removed the trimmed model's logits are the full model's at the kept ids.

What happens to text outside the kept set, by tokenizer kind:

- byte-level BPE (BART, RoBERTa-style): every intermediate token of the kept tokens' merges and
  the 256 byte symbols are kept, so the train split segments as before and other words fall
  apart into smaller kept pieces, down to bytes; never ``<unk>``.
- SentencePiece BPE / Unigram / WordPiece (mBART, T5 / mT5, Pegasus, BERT): the kept pieces plus
  the single-character pieces of every character in the train split; other words take smaller
  kept pieces, a character never seen becomes ``<unk>`` (bytes where the model has byte
  fallback).
- Marian (SentencePiece models + ``vocab.json``): segmentation is the SentencePiece models'
  own, unchanged; a piece outside the kept set becomes ``<unk>``.
- FSMT (a source and a target vocabulary, one ``merges.txt``): each side trimmed apart, with a
  map each (models/vocab_fsmt.py).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import torch
from transformers import PreTrainedModel

from raydistill.errors import ModelError
from raydistill.models.merges import merge_parts

VOCAB_MAP_FILE = "vocab_map.json"
SUPPORTED = ("bart", "mbart", "marian", "pegasus", "t5", "mt5", "fsmt")
# state-dict keys whose rows are token ids (final_logits_bias: its columns)
ROW_KEYS = ("shared.weight", "embed_tokens.weight", "lm_head.weight")
ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
           "forced_bos_token_id", "forced_eos_token_id", "sep_token_id")
ID_LIST_KEYS = ("suppress_tokens", "begin_suppress_tokens")
CHECK_LINES = 2000  # train lines re-tokenized after trimming, as a guard


def token_counts(tokenizer, data_dir: str | os.PathLike, batch: int = 1000) -> Counter:
    """How often each token id occurs in the train split, tokenized as training does it
    (sources, and targets with ``text_target=``), special tokens included."""
    from raydistill.data.files import read_split

    data = read_split(data_dir, "train")
    counts: Counter = Counter()
    for i in range(0, len(data), batch):
        for ids in tokenizer(data.sources[i:i + batch])["input_ids"]:
            counts.update(ids)
        for ids in tokenizer(text_target=data.targets[i:i + batch])["input_ids"]:
            counts.update(ids)
    return counts


def config_token_ids(model: PreTrainedModel) -> set[int]:
    """The ids the config and generation config name (pad, bos, eos, decoder start, forced
    BOS / EOS): a trimmed model must keep them."""
    out: set[int] = set()
    for cfg in (model.config, getattr(model, "generation_config", None)):
        for key in ID_KEYS:
            value = getattr(cfg, key, None) if cfg is not None else None
            if isinstance(value, int):
                out.add(value)
            elif isinstance(value, (list, tuple)):
                out.update(v for v in value if isinstance(v, int))
    return out


def kept_token_ids(tokenizer, data_dir: str | os.PathLike, keep_vocab: int | None = None,
                   extra_ids: set[int] = frozenset(), counts: Counter | None = None) -> list[int]:
    """Sorted old ids to keep: the train split's tokens (only the ``keep_vocab`` most frequent
    when given: N bounds these, ties broken by the smaller id), special tokens, ``extra_ids``,
    single-character pieces of the data's characters and, for BPE, every intermediate token of
    the kept tokens' merges (and the byte alphabet of a byte-level BPE). ``counts``: the
    split's ``token_counts``, when the caller has them already."""
    from raydistill.data.files import read_split

    if keep_vocab is not None and keep_vocab < 1:
        raise ModelError(f"keep_vocab={keep_vocab}: give a positive number of tokens, or none")
    counts = counts if counts is not None else token_counts(tokenizer, data_dir)
    ranked = sorted(counts, key=lambda i: (-counts[i], i))
    keep = set(ranked[:keep_vocab] if keep_vocab is not None else ranked)
    keep |= set(extra_ids) | set(tokenizer.all_special_ids)
    keep |= {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    vocab = tokenizer.get_vocab()
    data = read_split(data_dir, "train")
    chars = set("".join(data.sources)) | set("".join(data.targets))
    keep |= {vocab[p] for c in chars for p in (c, "\u2581" + c, "##" + c) if p in vocab}
    keep |= _bpe_closure(tokenizer, keep)
    size = len(tokenizer)
    return sorted(i for i in keep if 0 <= i < size)


def _tokenizer_json(tokenizer) -> dict | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else None


def _merge_pairs(model: dict) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def _is_byte_level(tok_json: dict) -> bool:
    return "ByteLevel" in json.dumps(tok_json.get("pre_tokenizer"))


def _bpe_closure(tokenizer, keep: set[int]) -> set[int]:
    """For a BPE tokenizer: the ids of both parts of every merge that makes a kept token,
    recursively (so each kept token is still reachable by merges), and the byte alphabet of a
    byte-level BPE; nothing for other kinds."""
    tok_json = _tokenizer_json(tokenizer)
    if tok_json is None or tok_json["model"].get("type") != "BPE":
        return set()
    model = tok_json["model"]
    vocab, prefix = model["vocab"], model.get("continuing_subword_prefix") or ""
    made_by: dict[str, list[tuple[str, str]]] = {}
    for a, b in _merge_pairs(model):
        made_by.setdefault(a + (b[len(prefix):] if prefix and b.startswith(prefix) else b),
                           []).append((a, b))
    seen = merge_parts(vocab, keep, made_by)
    if _is_byte_level(tok_json):
        from tokenizers import pre_tokenizers

        seen |= {c for c in pre_tokenizers.ByteLevel.alphabet() if c in vocab}
    return {vocab[t] for t in seen}


# --- the model ------------------------------------------------------------------------------

def trim_model(model: PreTrainedModel, new_to_old: list[int],
               source_new_to_old: list[int] | None = None) -> PreTrainedModel:
    """A copy of ``model`` with only the token rows ``new_to_old`` (in that order) in its
    embeddings, output layer and ``final_logits_bias``, and its config's ids remapped. FSMT
    (two vocabularies) also needs ``source_new_to_old``, its encoder's rows (vocab_fsmt.py)."""
    check_supported(model)
    if model.config.model_type == "fsmt":
        from raydistill.models.vocab_fsmt import trim_fsmt_weights

        if source_new_to_old is None:
            raise ModelError("FSMT has a source and a target vocabulary: give source_new_to_old "
                             "too")
        state, config = trim_fsmt_weights(model, source_new_to_old, new_to_old)
    else:
        state, config = _trim_weights(model, new_to_old)
    old_to_new = {o: n for n, o in enumerate(new_to_old)}
    remap_ids(config, old_to_new)
    trimmed = type(model)._from_config(config).to(device=model.device, dtype=model.dtype)
    info = trimmed.load_state_dict(state, strict=False)
    if info.missing_keys or info.unexpected_keys:
        raise ModelError(f"trimmed weights do not fit: missing {info.missing_keys[:3]}, "
                         f"unexpected {info.unexpected_keys[:3]}")
    if getattr(model, "generation_config", None) is not None:
        trimmed.generation_config = copy.deepcopy(model.generation_config)
        remap_ids(trimmed.generation_config, old_to_new)
    return trimmed.train(model.training)


def _trim_weights(model: PreTrainedModel, new_to_old: list[int]) -> tuple[dict, object]:
    """(state dict, config) of ``model`` with only the token rows ``new_to_old``; the config's
    ids not yet remapped."""
    size = model.get_output_embeddings().weight.shape[0]
    index = torch.tensor(new_to_old, dtype=torch.long)
    if len(set(new_to_old)) != len(new_to_old) or index.min() < 0 or index.max() >= size:
        raise ModelError(f"vocabulary map must list distinct ids in 0..{size - 1}")
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith(ROW_KEYS) and value.shape[0] == size:
            state[key] = value.index_select(0, index.to(value.device))
        elif key.endswith("final_logits_bias"):
            state[key] = value.index_select(-1, index.to(value.device))
    config = copy.deepcopy(model.config)
    config.vocab_size = len(new_to_old)
    if getattr(config, "decoder_vocab_size", None) is not None:  # Marian
        config.decoder_vocab_size = len(new_to_old)
    config.original_vocab_size = size
    return state, config


def check_supported(model: PreTrainedModel) -> None:
    kind = model.config.model_type
    if kind not in SUPPORTED:
        raise ModelError(f"vocabulary trimming supports {', '.join(SUPPORTED)}; not {kind} "
                         "(BERT2BERT is not done yet): make the "
                         "student without --trim-vocab")
    if kind == "marian" and not getattr(model.config, "share_encoder_decoder_embeddings", True):
        raise ModelError("this Marian model has separate source and target vocabularies; "
                         "vocabulary trimming supports shared ones only")


def remap_ids(cfg, old_to_new: dict[int, int]) -> None:
    """Rewrite the token ids a (generation) config names into the trimmed vocabulary; an id
    outside it is an error for the single ids, dropped from the lists of banned tokens."""
    def one(value, key):
        if value not in old_to_new:
            raise ModelError(f"{key}={value} is not among the kept tokens")
        return old_to_new[value]

    for key in ID_KEYS:
        value = getattr(cfg, key, None)
        if isinstance(value, int):
            setattr(cfg, key, one(value, key))
        elif isinstance(value, (list, tuple)):
            setattr(cfg, key, [one(v, key) for v in value])
    for key in ID_LIST_KEYS:
        value = getattr(cfg, key, None)
        if value:
            setattr(cfg, key, [old_to_new[v] for v in value if v in old_to_new])
    bad = getattr(cfg, "bad_words_ids", None)
    if bad:
        kept = [[old_to_new[v] for v in seq] for seq in bad if all(v in old_to_new for v in seq)]
        cfg.bad_words_ids = kept or None


# --- the tokenizer --------------------------------------------------------------------------

def trim_tokenizer(tokenizer, new_to_old: list[int], out_dir: str | os.PathLike):
    """Save a tokenizer with only the tokens ``new_to_old`` (new id = position) into
    ``out_dir`` and return it loaded back with ``AutoTokenizer``; checked token by token."""
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    old_tokens = tokenizer.convert_ids_to_tokens(new_to_old)
    tok_to_new = {t: n for n, t in enumerate(old_tokens)}
    old_to_new = {o: n for n, o in enumerate(new_to_old)}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files = set(os.listdir(tmp))
        if "tokenizer.json" in files:
            tok_json = _trim_tokenizer_json(json.loads(Path(tmp, "tokenizer.json").read_text()),
                                            old_to_new, tok_to_new)
            Path(tmp, "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False))
            # the class rebuilds itself from tokenizer.json; an old vocabulary file would win
            for name in getattr(tokenizer, "vocab_files_names", {}).values():
                if name != "tokenizer.json" and (Path(tmp) / name).exists():
                    os.remove(Path(tmp) / name)
        elif type(tokenizer).__name__ == "MarianTokenizer":
            if getattr(tokenizer, "separate_vocabs", False):
                raise ModelError("this Marian tokenizer has separate source and target "
                                 "vocabularies; vocabulary trimming supports shared ones only")
            vocab = json.loads(Path(tmp, "vocab.json").read_text())
            Path(tmp, "vocab.json").write_text(json.dumps(
                {t: old_to_new[i] for t, i in vocab.items() if i in old_to_new},
                ensure_ascii=False))
        else:
            raise ModelError(f"cannot trim a {type(tokenizer).__name__}: trimming knows "
                             "tokenizers saved as tokenizer.json and Marian's")
        _remap_tokenizer_config(Path(tmp, "tokenizer_config.json"), old_to_new)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in os.listdir(tmp):
            shutil.copy(Path(tmp) / name, out_dir / name)
    trimmed = AutoTokenizer.from_pretrained(str(out_dir))
    got = trimmed.convert_ids_to_tokens(list(range(len(new_to_old))))
    if len(trimmed) != len(new_to_old) or got != old_tokens:
        bad = next((i for i, (a, b) in enumerate(zip(got, old_tokens)) if a != b), len(got))
        raise ModelError(f"the trimmed {type(trimmed).__name__} does not load as written "
                         f"({len(trimmed)} tokens for {len(new_to_old)}; first difference at "
                         f"new id {bad})")
    return trimmed


def _trim_tokenizer_json(tok_json: dict, old_to_new: dict[int, int],
                         tok_to_new: dict[str, int]) -> dict:
    model = tok_json["model"]
    kind = model.get("type")
    if kind in ("BPE", "WordPiece", "WordLevel"):
        model["vocab"] = {t: old_to_new[i] for t, i in model["vocab"].items() if i in old_to_new}
        if kind == "BPE":
            prefix = model.get("continuing_subword_prefix") or ""
            model["merges"] = [
                [a, b] for a, b in _merge_pairs(model)
                if a in tok_to_new and b in tok_to_new
                and a + (b[len(prefix):] if prefix and b.startswith(prefix) else b) in tok_to_new]
    elif kind == "Unigram":
        kept = [(old_to_new[i], piece) for i, piece in enumerate(model["vocab"]) if i in old_to_new]
        if [n for n, _ in kept] != list(range(len(kept))):
            raise ModelError("this Unigram tokenizer's added tokens sit among its pieces; "
                             "trimming needs the pieces first")
        model["vocab"] = [piece for _, piece in kept]
        if model.get("unk_id") is not None:
            model["unk_id"] = old_to_new[model["unk_id"]]
    else:
        raise ModelError(f"cannot trim a {kind} tokenizer model: trimming knows BPE, Unigram, "
                         "WordPiece and WordLevel")
    tok_json["added_tokens"] = [dict(a, id=old_to_new[a["id"]]) for a in tok_json["added_tokens"]
                                if a["id"] in old_to_new]
    _remap_processor(tok_json.get("post_processor"), tok_to_new)
    return tok_json


def _remap_processor(proc: dict | None, tok_to_new: dict[str, int]) -> None:
    if not proc:
        return
    kind = proc.get("type")
    if kind in ("RobertaProcessing", "BertProcessing"):
        for key in ("sep", "cls"):
            proc[key] = [proc[key][0], tok_to_new[proc[key][0]]]
    elif kind == "TemplateProcessing":
        for special in proc["special_tokens"].values():
            special["ids"] = [tok_to_new[t] for t in special["tokens"]]
    elif kind == "Sequence":
        for inner in proc["processors"]:
            _remap_processor(inner, tok_to_new)


def _remap_tokenizer_config(path: Path, old_to_new: dict[int, int]) -> None:
    if not path.exists():
        return
    cfg = json.loads(path.read_text())
    if "added_tokens_decoder" in cfg:
        cfg["added_tokens_decoder"] = {str(old_to_new[int(i)]): v
                                       for i, v in cfg["added_tokens_decoder"].items()
                                       if int(i) in old_to_new}
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))


# --- both -----------------------------------------------------------------------------------

def trim_vocab(model: PreTrainedModel, tokenizer, data_dir: str | os.PathLike,
               keep_vocab: int | None = None, save_path: str | os.PathLike | None = None,
               ) -> tuple[PreTrainedModel, object, list[int]]:
    """Trim ``model`` and ``tokenizer`` to the vocabulary ``data_dir``'s train split uses.

    Returns (trimmed model, trimmed tokenizer, new_to_old). With ``save_path``, writes the model
    (safetensors), the tokenizer and ``vocab_map.json`` (``new_to_old``, the original size)
    there. Without ``keep_vocab``, the first train lines are re-tokenized as a guard: they must
    give the same tokens under the new ids. FSMT's two vocabularies are trimmed apart
    (vocab_fsmt.py): ``new_to_old`` is then the target side's, and ``vocab_map.json`` also holds
    ``source_new_to_old`` and ``original_src_vocab_size``.
    """
    from raydistill.models import vocab_fsmt

    check_supported(model)
    fsmt = model.config.model_type == "fsmt"
    if fsmt:
        src_map, new_to_old = vocab_fsmt.fsmt_kept_ids(model.config, tokenizer, data_dir,
                                                       keep_vocab, config_token_ids(model))
    else:
        src_map = None
        new_to_old = kept_token_ids(tokenizer, data_dir, keep_vocab, config_token_ids(model))
    trimmed = trim_model(model, new_to_old, src_map)
    with tempfile.TemporaryDirectory() as tmp:
        new_tokenizer = (vocab_fsmt.trim_fsmt_tokenizer(tokenizer, src_map, new_to_old,
                                                        save_path or tmp) if fsmt
                         else trim_tokenizer(tokenizer, new_to_old, save_path or tmp))
    if keep_vocab is None:
        check_round_trip(tokenizer, new_tokenizer, new_to_old, data_dir, CHECK_LINES, src_map)
    if save_path is not None:
        trimmed.save_pretrained(save_path)
        source = {"original_src_vocab_size": model.config.src_vocab_size,
                  "source_new_to_old": src_map} if fsmt else {}
        write_vocab_map(save_path, new_to_old, model.get_output_embeddings().weight.shape[0],
                        data_dir=str(data_dir), keep_vocab=keep_vocab, **source)
    return trimmed, new_tokenizer, new_to_old


def check_round_trip(full, trimmed, new_to_old: list[int], data_dir: str | os.PathLike,
                     n: int | None = None, source_new_to_old: list[int] | None = None) -> None:
    """Raise ModelError unless ``trimmed`` tokenizes the train split (its first ``n`` lines)
    to ``full``'s tokens under the new ids (the sources under ``source_new_to_old`` where the
    sides have their own maps: FSMT)."""
    from raydistill.data.files import read_split
    from raydistill.data.tokenize import with_target_side

    data = read_split(data_dir, "train", n)
    full, trimmed = with_target_side(full), with_target_side(trimmed)
    for side, key, lines, ids in (("source", "text", data.sources, source_new_to_old),
                                  ("target", "text_target", data.targets, new_to_old)):
        old_to_new = {o: n for n, o in enumerate(new_to_old if ids is None else ids)}
        want = full(**{key: lines})["input_ids"]
        got = trimmed(**{key: lines})["input_ids"]
        for line, (w, g) in enumerate(zip(want, got)):
            if [old_to_new.get(i, -1) for i in w] != g:
                raise ModelError(f"the trimmed tokenizer segments train {side} line {line + 1} "
                                 "differently from the teacher's; please report it with the "
                                 "tokenizer's name")


def write_vocab_map(save_path: str | os.PathLike, new_to_old: list[int], original_size: int,
                    **extra) -> Path:
    path = Path(save_path) / VOCAB_MAP_FILE
    path.write_text(json.dumps({"original_vocab_size": original_size, **extra,
                                "new_to_old": list(new_to_old)}))
    return path


def gather_kept(t_logits: torch.Tensor, new_to_old: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., V_teacher) teacher logits -> ((..., V_kept) logits at the kept ids, in their dtype;
    (...) fp32 probability mass the teacher puts outside the kept ids). A softmax of the first
    is the teacher's distribution renormalised over the kept ids (distill/kept_vocab.py; the
    logit cache of a trimmed student keeps both)."""
    kept = t_logits.index_select(-1, new_to_old.to(t_logits.device))
    with torch.no_grad():
        inside = torch.logsumexp(kept.float(), -1) - torch.logsumexp(t_logits.float(), -1)
        return kept, 1.0 - torch.exp(inside)


def map_fingerprint(new_to_old: list[int]) -> str:
    """A short hash of a vocabulary map: what the logit cache of a trimmed student is keyed by."""
    from raydistill.data.fingerprint import digest

    return digest([int(i) for i in new_to_old])


def read_vocab_map(model_dir: str | os.PathLike) -> list[int] | None:
    """``new_to_old`` of a trimmed model's folder (FSMT: its target side's, what the losses
    gather); None for a model that was not trimmed."""
    path = Path(model_dir) / VOCAB_MAP_FILE
    return json.loads(path.read_text())["new_to_old"] if path.is_file() else None


def read_source_map(model_dir: str | os.PathLike) -> list[int] | None:
    """The source side's ``new_to_old`` of a trimmed model whose sides have their own
    vocabularies (FSMT: the student's input ids -> the teacher's); None for one shared
    vocabulary (``read_vocab_map`` serves both sides) or a model that was not trimmed."""
    path = Path(model_dir) / VOCAB_MAP_FILE
    return json.loads(path.read_text()).get("source_new_to_old") if path.is_file() else None


def vocab_maps(model_dir: str | os.PathLike) -> dict[str, list[int]]:
    """A trimmed model's maps as a run passes them on: ``vocab_map`` and, where its sides have
    their own vocabularies, ``source_vocab_map``; empty for a model that was not trimmed."""
    maps = {"vocab_map": read_vocab_map(model_dir), "source_vocab_map": read_source_map(model_dir)}
    return {k: v for k, v in maps.items() if v is not None}


def keep_vocab_map(model_dir: str | os.PathLike, copied_from: str | os.PathLike | None = None,
                   ) -> dict[str, list[int]]:
    """``vocab_maps(model_dir)``, after copying ``vocab_map.json`` over from the folder the
    model was copied from (a saved trimmed student), if it has one."""
    src = Path(copied_from) / VOCAB_MAP_FILE if copied_from else None
    if src is not None and src.is_file():
        shutil.copy(src, Path(model_dir) / VOCAB_MAP_FILE)
    return vocab_maps(model_dir)
