"""The worker-side teacher-logit cache (``logit_cache: memory``): what a Ray Train worker keeps
of the teacher's outputs in the first epoch, to serve the later ones without the teacher."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from raydistill.models.teacher_cache import DROPPED, example_rows, teacher_topk


class MemoryLogitCache:
    """``logit_cache: memory``: the teacher's outputs of the first epoch, kept in memory and
    reused by the later epochs (TextBrewer's ``is_caching_logits``: the teacher runs once, with
    no build stage before training).

    An example is kept as the Parquet cache keeps it: its top-k logits minus the position's
    largest, in ``dtype``, with int32 token ids (none when k >= V: every logit, vocabulary
    order), and the hidden entries the matches read. A batch whose every example is kept
    trains through the same top-k loss as the Parquet cache; any other batch runs the live
    teacher and is recorded (the first epoch, and after a resume). After each epoch the
    workers exchange what they recorded, so every worker holds the whole cache: this suits
    small and medium train sets, as TextBrewer advises; larger ones use the Parquet cache.
    """

    def __init__(self, top_k: int, dtype: str = "float16", hidden_layers: Sequence[int] = (),
                 encoder_layers: int = 0) -> None:
        if top_k < 1:
            raise ValueError(f"top_k={top_k}: keep at least 1 logit per position")
        self.top_k = top_k
        self.dtype = np.dtype(dtype)
        self.hidden_layers = [int(i) for i in hidden_layers]
        self.encoder_layers = encoder_layers
        self.rows: dict[int, dict[str, np.ndarray]] = {}
        self.new: dict[int, dict[str, np.ndarray]] = {}
        self.lookups = self.hits = 0  # since the last take_hit_rate()

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for row in self.rows.values() for a in row.values())

    @torch.no_grad()
    def record(self, ids: Sequence[int], logits: torch.Tensor, hidden: Sequence[Any],
               src_mask: torch.Tensor, tgt_mask: torch.Tensor,
               dropped: torch.Tensor | None = None) -> None:
        """Keep a batch's teacher outputs: ``logits`` (B, T, V); ``hidden`` TextBrewer's list
        (encoder embeddings + layers, then decoder's), each (B, L, d); masks (B, S) / (B, T);
        ``dropped`` (B, T): a trimmed student's teacher mass outside the kept ids (``logits``
        are then at the kept ids)."""
        values, indices = teacher_topk(logits, self.top_k)
        exact = self.top_k >= logits.size(-1)  # every logit in vocabulary order: no ids to keep
        rows = example_rows(values.cpu().numpy(), None if exact else indices.cpu().numpy(),
                            {i: hidden[i].float().cpu().numpy() for i in self.hidden_layers},
                            src_mask.sum(1).tolist(), tgt_mask.sum(1).tolist(),
                            self.encoder_layers, self.dtype,
                            None if dropped is None else dropped.float().cpu().numpy())
        for example, row in zip(ids, rows):
            self.rows[int(example)] = self.new[int(example)] = row

    def lookup(self, ids: Sequence[int]) -> dict[str, torch.Tensor] | None:
        """A batch's cached columns, padded as the batch (None unless every example is kept):
        ``topk_values`` (B, T, k) float32, ``topk_indices`` (B, T, k) int64 when k < V, and
        each ``t_hidden_*`` (B, L, d) float32, a trimmed student's ``teacher_dropped`` (B, T);
        zeros at padded positions (as PadCollate pads
        the Parquet cache's columns)."""
        from raydistill.data.tokenize import pad_hidden, pad_topk

        self.lookups += 1
        rows = [self.rows.get(int(i)) for i in ids]
        if not rows or any(r is None for r in rows):
            return None
        self.hits += 1
        flat = {name: [r[name].reshape(-1) for r in rows] for name in rows[0]}
        lens = {name: [len(r[name]) for r in rows] for name in rows[0]}
        values = flat.pop("topk_values")
        if "topk_indices" in flat:
            out = pad_topk(values, flat.pop("topk_indices"), lens["topk_values"])
        else:
            out = {"topk_values": pad_hidden(values, lens["topk_values"], "topk_values")}
        out.update({name: pad_hidden(v, lens[name], name) for name, v in flat.items()})
        if DROPPED in out:
            out[DROPPED] = out[DROPPED][..., 0]
        return out

    def take_hit_rate(self) -> float:
        """The share of lookups since the last call that found their whole batch kept."""
        rate = self.hits / max(self.lookups, 1)
        self.lookups = self.hits = 0
        return rate

    def take_new(self) -> dict[int, dict[str, np.ndarray]]:
        """The examples recorded since the last call (what this worker shares after an epoch)."""
        new, self.new = self.new, {}
        return new

    def merge(self, rows: dict[int, dict[str, np.ndarray]]) -> None:
        """Add another worker's examples."""
        self.rows.update(rows)
