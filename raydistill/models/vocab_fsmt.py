"""Vocabulary trimming for FSMT (fairseq's WMT19 models): two vocabularies, trimmed apart.

FSMT's encoder reads source ids (``vocab-src.json``) and its decoder and output layer target
ids (``vocab-tgt.json``); one ``merges.txt`` segments both sides. Each side keeps the tokens its
half of the train split gives (sources with ``tokenizer(...)``, targets with
``tokenizer(text_target=...)`` through ``with_target_side``, as training tokenizes them),
``keep_vocab`` bounding the data tokens of each side; every special token and, on the target
side, the config's ids. So there are two maps: the target map is what the distillation losses
read (the teacher's logits are over target ids); the source map only takes the student's
input ids back to the teacher's. ``vocab_map.json`` holds the target map as ``new_to_old`` and
the source one as ``source_new_to_old`` (models/vocab.py: ``read_source_map``).

Segmentation: a merge stays if its two parts and its result are kept on one side, so the train
split segments as before; other words fall apart into smaller kept pieces, down to single
characters (every character of the split's tokens is kept, with and without the end-of-word
marker ``</w>``). The merges are shared, so the source side also keeps what the kept merges make
of its pieces: source text spelled with the split's characters never gives ``<unk>``. The
target side is not closed so (its rows are the output layer's, the cost trimming cuts): there a
piece only the source side keeps becomes ``<unk>`` (in labels of text outside the train split;
generation emits kept ids). A character never seen becomes ``<unk>`` on either side.
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
from transformers import PretrainedConfig, PreTrainedModel

from raydistill.errors import ModelError
from raydistill.models.merges import merge_parts

WORD_END = "</w>"
SRC_KEYS = ("encoder.embed_tokens.weight",)
TGT_KEYS = ("decoder.embed_tokens.weight", "decoder.output_projection.weight")


def side_vocabs(tokenizer) -> tuple[dict[str, int], dict[str, int]]:
    """(source vocabulary, target vocabulary) of an ``FSMTTokenizer``: token -> id."""
    return dict(tokenizer.encoder), {t: i for i, t in tokenizer.decoder.items()}


def side_counts(tokenizer, data_dir: str | os.PathLike, batch: int = 1000,
                ) -> tuple[Counter, Counter]:
    """How often each source id occurs in the train split's sources and each target id in its
    targets, tokenized as training does it (special tokens included)."""
    from raydistill.data.files import read_split
    from raydistill.data.tokenize import with_target_side

    tokenizer = with_target_side(tokenizer)
    data = read_split(data_dir, "train")
    src, tgt = Counter(), Counter()
    for i in range(0, len(data), batch):
        for ids in tokenizer(data.sources[i:i + batch])["input_ids"]:
            src.update(ids)
        for ids in tokenizer(text_target=data.targets[i:i + batch])["input_ids"]:
            tgt.update(ids)
    return src, tgt


def _merges(tokenizer) -> list[tuple[str, str]]:
    return sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.get)


def _closure(vocab: dict[str, int], keep: set[int], merges: list[tuple[str, str]],
             data: set[int], specials: set[str]) -> set[str]:
    """The tokens of ``keep``; for every kept token, both parts of each merge that makes it
    (recursively); and each character of the ``data`` tokens alone and with the word end,
    where the vocabulary has them (the split's characters, whatever ``keep_vocab`` keeps)."""
    made_by: dict[str, list[tuple[str, str]]] = {}
    for a, b in merges:
        made_by.setdefault(a + b, []).append((a, b))
    seen = merge_parts(vocab, keep, made_by)
    id_to_token = {i: t for t, i in vocab.items()}
    words = {id_to_token[i] for i in data if i in id_to_token} - specials
    chars = {c for t in words for c in (t[:-len(WORD_END)] if t.endswith(WORD_END) else t)}
    return seen | {p for c in chars for p in (c, c + WORD_END) if p in vocab}


def kept_merges(merges: list[tuple[str, str]], sides: list) -> list[tuple[str, str]]:
    """The merges whose two parts and result are all kept on one side (the trimmed
    ``merges.txt``, in rank order)."""
    return [(a, b) for a, b in merges if any(a in s and b in s and a + b in s for s in sides)]


def _close_source(sides: list[set[str]], vocab: dict[str, int],
                  merges: list[tuple[str, str]]) -> None:
    """Add to the source side (``sides[0]``) the result of every kept merge whose two parts it
    keeps (where its vocabulary has it). The merges are shared, so a merge kept for the target
    side would otherwise join two source pieces into one the source lacks, an ``<unk>`` in
    what the student reads. Source rows are embedding lookups, so this costs no speed; the
    target side is not closed so, as its rows are the output layer's."""
    grew = True
    while grew:
        grew = False
        for a, b in kept_merges(merges, sides):
            if a in sides[0] and b in sides[0] and a + b not in sides[0] and a + b in vocab:
                sides[0].add(a + b)
                grew = True


def fsmt_kept_ids(config: PretrainedConfig, tokenizer, data_dir: str | os.PathLike,
                  keep_vocab: int | None = None, extra_ids: set[int] = frozenset(),
                  ) -> tuple[list[int], list[int]]:
    """Sorted (source ids, target ids) to keep: each side's train tokens (its ``keep_vocab``
    most frequent when given, ties to the smaller id), the special tokens, ``extra_ids`` (the
    config's ids: target side; the pad id on both), the merge intermediates and characters of those, and
    on the source side what the kept merges make of its pieces. A model whose embeddings are
    tied keeps the union on both sides (one matrix holds both)."""
    if keep_vocab is not None and keep_vocab < 1:
        raise ModelError(f"keep_vocab={keep_vocab}: give a positive number of tokens, or none")
    vocabs = list(side_vocabs(tokenizer))
    merges = _merges(tokenizer)
    specials = set(tokenizer.all_special_tokens)
    sides = []
    for vocab, counts, extra in zip(
            vocabs, side_counts(tokenizer, data_dir),
            ({config.pad_token_id}, set(extra_ids) | {config.pad_token_id})):
        ranked = sorted(counts, key=lambda i: (-counts[i], i))
        keep = set(ranked[:keep_vocab] if keep_vocab is not None else ranked)
        keep |= {vocab[t] for t in specials if t in vocab} | {i for i in extra if i is not None}
        sides.append(_closure(vocab, keep, merges, set(counts), specials))
    if config.tie_word_embeddings:
        if vocabs[0] != vocabs[1]:
            raise ModelError("this FSMT model ties its source and target embeddings but its "
                             "tokenizer's two vocabularies differ; it cannot be trimmed")
        sides = [sides[0] | sides[1]] * 2
    _close_source(sides, vocabs[0], merges)
    return sorted(vocabs[0][t] for t in sides[0]), sorted(vocabs[1][t] for t in sides[1])


# --- the model ------------------------------------------------------------------------------

def trim_fsmt_weights(model: PreTrainedModel, source_new_to_old: list[int],
                      new_to_old: list[int]) -> tuple[dict, PretrainedConfig]:
    """(state dict, config) of an FSMT ``model`` with only the source rows
    ``source_new_to_old`` in its encoder's embeddings and the target rows ``new_to_old`` in its
    decoder's embeddings and output projection; the config's sizes set and the original sizes
    recorded (``original_src_vocab_size``; ``original_vocab_size``: the target's), its ids not
    yet remapped (``trim_model`` does that, in models/vocab.py)."""
    cfg = model.config
    sizes = (cfg.src_vocab_size, cfg.tgt_vocab_size)
    for name, ids, size in (("source", source_new_to_old, sizes[0]),
                            ("target", new_to_old, sizes[1])):
        if len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) >= size:
            raise ModelError(f"the {name} vocabulary map must list distinct ids in 0..{size - 1}")
    if cfg.tie_word_embeddings and list(source_new_to_old) != list(new_to_old):
        raise ModelError("this FSMT model ties its source and target embeddings: give both "
                         "sides the same map")
    pad = cfg.pad_token_id
    # FSMT's sinusoidal positions count from the pad id (fairseq's make_positions): it must not
    # move on either side, or every position's vector would.
    if pad >= min(len(source_new_to_old), len(new_to_old)) or \
            source_new_to_old[pad] != pad or new_to_old[pad] != pad:
        raise ModelError(f"the pad id {pad} must keep its id on both sides (keep every id "
                         "below it): FSMT's positions count from it")
    src_index = torch.tensor(source_new_to_old, dtype=torch.long)
    tgt_index = torch.tensor(new_to_old, dtype=torch.long)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith(SRC_KEYS):
            state[key] = value.index_select(0, src_index.to(value.device))
        elif key.endswith(TGT_KEYS):
            state[key] = value.index_select(0, tgt_index.to(value.device))
    config = copy.deepcopy(cfg)
    config.src_vocab_size, config.tgt_vocab_size = len(source_new_to_old), len(new_to_old)
    config.original_src_vocab_size, config.original_vocab_size = sizes
    return state, config


# --- the tokenizer --------------------------------------------------------------------------

def trim_fsmt_tokenizer(tokenizer, source_new_to_old: list[int], new_to_old: list[int],
                        out_dir: str | os.PathLike):
    """Save an ``FSMTTokenizer`` with only those source and target tokens (new id = position)
    and the merges that build kept tokens into ``out_dir``; return it loaded with
    ``AutoTokenizer``, checked token by token on both sides."""
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    src_vocab, tgt_vocab = side_vocabs(tokenizer)
    sides = []
    for vocab, ids in ((src_vocab, source_new_to_old), (tgt_vocab, new_to_old)):
        old_to_new = {o: n for n, o in enumerate(ids)}
        sides.append({t: old_to_new[i] for t, i in vocab.items() if i in old_to_new})
    for name, side, ids in (("source", sides[0], source_new_to_old),
                            ("target", sides[1], new_to_old)):
        if len(side) != len(ids):
            raise ModelError(f"the {name} vocabulary map names ids the tokenizer does not have")
    for token in tokenizer.all_special_tokens:  # one id per special token, whatever the side
        if sides[0].get(token) != sides[1].get(token):
            raise ModelError(f"{token} must have the same new id on both sides (keep the ids "
                             "below it)")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        lines = Path(tmp, "merges.txt").read_text(encoding="utf-8").split("\n")[:-1]
        keep = set(kept_merges(_merges(tokenizer), sides))
        kept = [line for n, line in enumerate(lines) if (n == 0 and line.startswith("#version"))
                or tuple(line.split()[:2]) in keep]
        Path(tmp, "merges.txt").write_text("".join(m + "\n" for m in kept), encoding="utf-8")
        for name, side in zip(("vocab-src.json", "vocab-tgt.json"), sides):
            Path(tmp, name).write_text(json.dumps(side, indent=2, ensure_ascii=False) + "\n",
                                       encoding="utf-8")
        cfg_path = Path(tmp, "tokenizer_config.json")
        cfg = json.loads(cfg_path.read_text())
        if "added_tokens_decoder" in cfg:  # the special tokens, in source ids (equal on both)
            cfg["added_tokens_decoder"] = {str(sides[0][v["content"]]): v
                                           for v in cfg["added_tokens_decoder"].values()
                                           if v["content"] in sides[0]}
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in os.listdir(tmp):
            shutil.copy(Path(tmp) / name, out_dir / name)
    trimmed = AutoTokenizer.from_pretrained(str(out_dir))
    for name, (want, got) in zip(("source", "target"), zip(sides, side_vocabs(trimmed))):
        if want != got:
            raise ModelError(f"the trimmed FSMTTokenizer's {name} vocabulary does not load as "
                             "written")
    return trimmed
