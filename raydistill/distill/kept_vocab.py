"""A trimmed student against its full-vocabulary teacher (``trim_vocab``, models/vocab.py).

The student's batches hold its own (new) token ids; the teacher reads them mapped back to its
ids, and its logits are gathered to the kept ids. A softmax over the gathered logits is the
teacher's distribution renormalised over the kept set, so every logit loss (kd, TextBrewer's,
gkd's, the chunked one) takes them as they are. What the kept set misses of the teacher's
probability, per target token, is the dropped mass: a large one means the kept set lacks words
the teacher says (the train split was not the task's text, or ``keep_vocab`` is too small).
A teacher that samples targets for the student (``gkd.seq_kd``) reads the sources in its ids,
samples only kept ids (``KeptLogits``) and its sample is mapped back (``student_ids``); the
logit cache keeps the gathered logits and the dropped mass per position (models/teacher_cache.py).
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from raydistill.distill.objective import IGNORE_INDEX
from raydistill.models.vocab import gather_kept


class KeptVocab:
    """``new_to_old``: the student's id i is the teacher's id ``new_to_old[i]``. A student whose
    sides have their own vocabularies (FSMT) also has ``source_new_to_old``, for its input ids;
    ``new_to_old`` is then its target side's, what the logits and labels are in."""

    def __init__(self, new_to_old: list[int], source_new_to_old: list[int] | None = None) -> None:
        self.new_to_old = torch.tensor(new_to_old, dtype=torch.long)
        self.source = (torch.tensor(source_new_to_old, dtype=torch.long)
                       if source_new_to_old is not None else None)
        self.old_to_new: torch.Tensor | None = None  # built on first use (student_ids)
        self.teacher_size = max(new_to_old) + 1  # the largest kept teacher id, plus one

    def _on(self, device: torch.device) -> torch.Tensor:
        if self.new_to_old.device != device:
            self.new_to_old = self.new_to_old.to(device)
        return self.new_to_old

    def teacher_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) student (target-side) ids -> the teacher's ids (no ignored -100 among them)."""
        return self._on(ids.device)[ids]

    def teacher_source_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, S) student input ids -> the teacher's: through the source map where the sides
        have their own (FSMT), else as ``teacher_ids``."""
        if self.source is None:
            return self.teacher_ids(ids)
        if self.source.device != ids.device:
            self.source = self.source.to(ids.device)
        return self.source[ids]

    def teacher_batch(self, batch: dict[str, torch.Tensor], decoder_input_ids: torch.Tensor,
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The batch and decoder inputs as the teacher reads them (labels stay the student's)."""
        return ({**batch, "input_ids": self.teacher_source_ids(batch["input_ids"])},
                self.teacher_ids(decoder_input_ids))

    def student_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Teacher ids -> the student's; -100 stays, and an id outside the kept set gives -1
        (no host read: the caller keeps such ids out, as ``KeptLogits`` does for samples)."""
        new_to_old, size = self._on(ids.device), self.teacher_size
        if self.old_to_new is None or self.old_to_new.device != ids.device:
            table = torch.full((size,), -1, dtype=torch.long, device=ids.device)
            self.old_to_new = table.scatter_(0, new_to_old, torch.arange(len(new_to_old),
                                                                        device=ids.device))
        inside = ids.ge(0) & ids.lt(size)
        mapped = self.old_to_new[ids.clamp(0, size - 1)]
        return torch.where(inside, mapped, torch.where(ids.eq(IGNORE_INDEX), ids, -1))

    def logits_processor(self) -> KeptLogits:
        """A generation logits processor that gives the teacher's ids outside the kept set
        -inf: a teacher sampling targets for a trimmed student (``gkd.seq_kd``) picks kept ids
        only; temperature, top-k and top-p then act on the kept ids, as for a teacher that
        had only those."""
        return KeptLogits(self.new_to_old)

    def gather(self, t_logits: torch.Tensor, labels: torch.Tensor,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, V_teacher) logits -> ((B, T, V_kept) logits in their dtype, the mean dropped
        probability mass over the real target tokens, an fp32 scalar; 0 with none)."""
        kept, dropped = self.gather_positions(t_logits)
        return kept, mean_dropped(dropped, labels)

    def gather_positions(self, t_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, V_teacher) logits -> ((B, T, V_kept) logits, (B, T) fp32 dropped mass)."""
        return gather_kept(t_logits, self._on(t_logits.device))


def mean_dropped(dropped: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T) dropped mass per position -> its mean over the real target tokens (fp32; 0 with
    none): what the step line reports as ``teacher_dropped_mass``."""
    mask = labels.ne(IGNORE_INDEX).to(torch.float32)
    return (dropped.float() * mask).sum() / mask.sum().clamp(min=1.0)


class KeptLogits(LogitsProcessor):
    """Scores (B, V_teacher) -> -inf outside the kept ids (``KeptVocab.logits_processor``)."""

    def __init__(self, new_to_old: torch.Tensor) -> None:
        self.new_to_old = new_to_old

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        keep = torch.zeros(scores.size(-1), dtype=torch.bool, device=scores.device)
        keep[self.new_to_old.to(scores.device)] = True
        return scores.masked_fill(~keep, float("-inf"))
