"""Tokenize text columns with Ray Data, and pad tokenized rows into model batches.

Rows keep their token ids unpadded (ragged columns): padding to the longest row happens per batch
in the collate function, so a batch of short examples stays short.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

if TYPE_CHECKING:
    import ray.data

    from raydistill.data.files import SplitData

IGNORE_INDEX = -100  # label value that torch's cross-entropy (and our losses) skip
# Cached teacher hidden states: t_hidden_enc_<i> (source positions) / t_hidden_dec_<i> (target).
HIDDEN_PREFIX = "t_hidden_"
# A trimmed student's cached logits: the teacher's probability mass outside the kept ids, per
# target position (models/teacher_cache.py, DROPPED).
DROPPED_COLUMN = "teacher_dropped"



def hidden_side(index: int, teacher_encoder_layers: int) -> str:
    """"enc" (source positions) or "dec" (target positions) for teacher hidden entry ``index``."""
    return "enc" if index <= teacher_encoder_layers else "dec"


def hidden_column(index: int, teacher_encoder_layers: int) -> str:
    """The cache column of teacher hidden entry ``index``."""
    return f"{HIDDEN_PREFIX}{hidden_side(index, teacher_encoder_layers)}_{index}"


def parse_hidden_column(name: str) -> tuple[str, int] | None:
    """``t_hidden_dec_7`` -> ("dec", 7); None for other columns."""
    if not name.startswith(HIDDEN_PREFIX):
        return None
    side, index = name[len(HIDDEN_PREFIX):].split("_")
    return side, int(index)


class Tokenize:
    """``map_batches`` callable class: loads the tokenizer once per actor, then tokenizes batches.

    Adds ``input_ids`` and ``labels`` (one int32 array per row, truncated, with the tokenizer's
    special tokens such as ``</s>``) and ``src_len`` / ``tgt_len``; input columns are kept.
    """

    def __init__(self, tokenizer_path: str, max_source_length: int, max_target_length: int):
        from transformers import AutoTokenizer

        self.tokenizer = with_target_side(AutoTokenizer.from_pretrained(tokenizer_path))
        self.max_source_length = max_source_length
        self.max_target_length = max_target_length

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sources = [str(s) for s in batch["source"]]
        targets = [str(t) for t in batch["target"]]
        src = self.tokenizer(sources, max_length=self.max_source_length, truncation=True)
        # text_target= switches tokenizers with a separate target side (Marian) to it.
        tgt = self.tokenizer(text_target=targets, max_length=self.max_target_length, truncation=True)
        out = dict(batch)
        out["input_ids"] = _ragged(src["input_ids"])
        out["labels"] = _ragged(tgt["input_ids"])
        out["src_len"] = np.array([len(x) for x in out["input_ids"]], dtype=np.int32)
        out["tgt_len"] = np.array([len(x) for x in out["labels"]], dtype=np.int32)
        return out


def with_target_side(tokenizer):
    """``tokenizer``, with the target side that ``text_target=`` calls where transformers lacks it.

    FSMT (fairseq's WMT19 models) has separate source and target vocabularies, but transformers'
    ``FSMTTokenizer`` tokenizes ``text_target=`` with the source side: the source language's
    Moses rules and the source vocabulary's ids, so a target word became a source id (or
    ``<unk>``), and labels, losses and teacher caches were wrong. Its target mode here uses the
    target language and ``vocab-tgt.json`` (the ids its ``decode`` already reads). Other
    tokenizers, and an FSMT tokenizer that has a target mode of its own, are returned as they are.
    """
    if type(tokenizer).__name__ != "FSMTTokenizer" or hasattr(tokenizer, "_switch_to_target_mode"):
        return tokenizer
    source = (tokenizer.encoder, tokenizer.src_lang)
    target = ({token: i for i, token in tokenizer.decoder.items()}, tokenizer.tgt_lang)

    def use(side: tuple[dict, str]) -> None:
        tokenizer.encoder, tokenizer.src_lang = side

    tokenizer._switch_to_target_mode = lambda: use(target)
    tokenizer._switch_to_input_mode = lambda: use(source)
    return tokenizer


def _ragged(rows: Sequence[Sequence[int]]) -> np.ndarray:
    """An object array of int32 arrays; np.array(rows) would make a 2-D array when lengths agree."""
    out = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        out[i] = np.asarray(row, dtype=np.int32)
    return out


def tokenize_dataset(
    ds: ray.data.Dataset,
    tokenizer_path: str,
    max_source_length: int,
    max_target_length: int,
    num_actors: int = 1,
    batch_size: int = 256,
) -> ray.data.Dataset:
    """Tokenize ``ds`` (columns ``source``, ``target``) on a pool of ``num_actors`` actors."""
    import ray.data

    from raydistill.runtime import pool_map_batches

    return pool_map_batches(
        ds, Tokenize,
        fn_constructor_kwargs={
            "tokenizer_path": str(tokenizer_path),
            "max_source_length": max_source_length,
            "max_target_length": max_target_length,
        },
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        batch_size=batch_size,
        batch_format="numpy",
    )


# Up to this many examples, tokenizing in the driver (~2,000 scitldr abstracts a second on one
# core) beats starting tokenizer actors (10-25 s of process start and imports); more go to the
# num_tokenize_workers actors of Ray Data, in parallel and across nodes.
LOCAL_TOKENIZE_MAX_ROWS = 20_000


def tokenized_split(
    data: SplitData,
    tokenizer_path: str,
    max_source_length: int,
    max_target_length: int,
    num_actors: int = 1,
    local_max_rows: int = LOCAL_TOKENIZE_MAX_ROWS,
) -> ray.data.Dataset:
    """A split read by ``read_split``, tokenized (``Tokenize``'s columns), as a materialized
    Dataset.

    Splits of at most ``local_max_rows`` examples are tokenized here, in this process; larger
    ones by ``tokenize_dataset`` on ``num_actors`` actors. The rows are the same either way.
    """
    from ray.data.block import BlockAccessor

    from raydistill.data.files import arrow_dataset, split_table, table_blocks

    if len(data) > local_max_rows:
        return tokenize_dataset(arrow_dataset(table_blocks(split_table(data))),
                                tokenizer_path, max_source_length, max_target_length,
                                num_actors=num_actors).materialize()
    batch = {"id": np.arange(len(data), dtype=np.int64),
             "source": np.array(data.sources, dtype=object),
             "target": np.array(data.targets, dtype=object)}
    out = Tokenize(tokenizer_path, max_source_length, max_target_length)(batch)
    # The block Ray Data builds from a map_batches result: ragged ids become its tensor column.
    return arrow_dataset(table_blocks(BlockAccessor.batch_to_block(out)))


def pad_batch(
    input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Pad to the longest row: ``input_ids`` with ``pad_token_id``, ``labels`` with -100.

    Returns ``input_ids``, ``attention_mask`` (B, S) and ``labels`` (B, T), all int64.
    """
    if len(input_ids) == 0 or len(input_ids) != len(labels):
        raise ValueError(f"pad_batch needs as many label rows as input rows, at least one "
                         f"(got {len(input_ids)} and {len(labels)})")
    # Fill numpy arrays, then hand them to torch once: cheaper than a tensor write per row.
    ids = np.full((len(input_ids), max(len(r) for r in input_ids)), pad_token_id, dtype=np.int64)
    lab = np.full((len(labels), max(len(r) for r in labels)), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, (src, tgt) in enumerate(zip(input_ids, labels)):
        ids[i, : len(src)] = src
        mask[i, : len(src)] = 1
        lab[i, : len(tgt)] = tgt
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(lab)}


class PadCollate(NumpyBatchCollateFn):
    """``iter_torch_batches(collate_fn=...)``: pads a tokenized batch and keeps ``id``.

    A class (not a closure) so Ray can pickle it to training workers.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        # A batch whose rows happen to share a length arrives as a 2-D array; iterating rows
        # handles that and the ragged object array alike.
        out = pad_batch(list(batch["input_ids"]), list(batch["labels"]), self.pad_token_id)
        # torch.tensor copies: Ray hands out read-only arrays, which torch warns about sharing.
        out["id"] = torch.tensor(np.asarray(batch["id"]), dtype=torch.long)
        if "topk_values" in batch:  # cached teacher logits joined into the rows
            out.update(pad_topk(list(batch["topk_values"]), list(batch["topk_indices"]),
                                [len(r) for r in batch["labels"]]))
        if DROPPED_COLUMN in batch:  # (B, T), zeros at padded positions
            out[DROPPED_COLUMN] = pad_hidden(list(batch[DROPPED_COLUMN]), [len(r) for r in batch[
                "labels"]], DROPPED_COLUMN)[..., 0]
        for name in batch:  # cached teacher hidden states
            if name.startswith(HIDDEN_PREFIX):
                rows = batch["input_ids"] if name.startswith(HIDDEN_PREFIX + "enc_") else batch["labels"]
                out[name] = pad_hidden(list(batch[name]), [len(r) for r in rows], name)
        return out


def pad_topk(values: Sequence[np.ndarray], indices: Sequence[np.ndarray],
             tgt_lens: Sequence[int]) -> dict[str, torch.Tensor]:
    """Cached top-k teacher logits, one flat (tgt_len * k) array per row -> padded tensors.

    Returns ``topk_values`` (B, T, k) float32 and ``topk_indices`` (B, T, k) int64, T the
    longest target; padded positions hold 0 (they are masked by ``labels == -100``).
    """
    T = max(tgt_lens)
    k = len(values[0]) // max(1, tgt_lens[0])
    vals = np.zeros((len(values), T, k), dtype=np.float32)
    idx = np.zeros((len(values), T, k), dtype=np.int64)
    for i, (v, ix, n) in enumerate(zip(values, indices, tgt_lens)):
        if len(v) != n * k or len(ix) != n * k:
            raise ValueError(f"cached logits of row {i} hold {len(v)} values for {n} target tokens "
                             f"x k={k}: the cache was built with other tokenization; rebuild it")
        vals[i, :n] = np.asarray(v, dtype=np.float32).reshape(n, k)
        idx[i, :n] = np.asarray(ix).reshape(n, k)
    return {"topk_values": torch.from_numpy(vals), "topk_indices": torch.from_numpy(idx)}


def pad_hidden(values: Sequence[np.ndarray], lens: Sequence[int], name: str) -> torch.Tensor:
    """Cached teacher hidden states, one flat (len * d) array per row -> (B, L, d) float32 with
    zeros at padded positions (masked by the attention mask or ``labels == -100``)."""
    d = len(values[0]) // max(1, lens[0])
    out = np.zeros((len(values), max(lens), d), dtype=np.float32)
    for i, (v, n) in enumerate(zip(values, lens)):
        if len(v) != n * d:
            raise ValueError(f"cached {name} of row {i} holds {len(v)} values for {n} tokens x "
                             f"d={d}: the cache was built with other tokenization; rebuild it")
        out[i, :n] = np.asarray(v, dtype=np.float32).reshape(n, d)
    return torch.from_numpy(out)


def make_collate_fn(pad_token_id: int) -> PadCollate:
    """The collate function for ``iter_torch_batches`` of a tokenized dataset."""
    return PadCollate(pad_token_id)
