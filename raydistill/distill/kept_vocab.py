"""A trimmed student against its full-vocabulary teacher (``trim_vocab``, models/vocab.py).

The student's batches hold its own (new) token ids; the teacher reads them mapped back to its
ids, and its logits are gathered to the kept ids. A softmax over the gathered logits is the
teacher's distribution renormalised over the kept set, so every logit loss (kd, TextBrewer's,
gkd's, the chunked one) takes them as they are. What the kept set misses of the teacher's
probability, per target token, is the dropped mass: a large one means the kept set lacks words
the teacher says (the train split was not the task's text, or ``keep_vocab`` is too small).
"""

from __future__ import annotations

import torch

from raydistill.distill.objective import IGNORE_INDEX


class KeptVocab:
    """``new_to_old``: the student's id i is the teacher's id ``new_to_old[i]``."""

    def __init__(self, new_to_old: list[int]) -> None:
        self.new_to_old = torch.tensor(new_to_old, dtype=torch.long)

    def _on(self, device: torch.device) -> torch.Tensor:
        if self.new_to_old.device != device:
            self.new_to_old = self.new_to_old.to(device)
        return self.new_to_old

    def teacher_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) student ids -> the teacher's ids (no ignored -100 among them)."""
        return self._on(ids.device)[ids]

    def teacher_batch(self, batch: dict[str, torch.Tensor], decoder_input_ids: torch.Tensor,
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The batch and decoder inputs as the teacher reads them (labels stay the student's)."""
        return ({**batch, "input_ids": self.teacher_ids(batch["input_ids"])},
                self.teacher_ids(decoder_input_ids))

    def gather(self, t_logits: torch.Tensor, labels: torch.Tensor,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, V_teacher) logits -> ((B, T, V_kept) logits in their dtype, the mean dropped
        probability mass over the real target tokens, an fp32 scalar; 0 with none)."""
        kept = t_logits.index_select(-1, self._on(t_logits.device))
        with torch.no_grad():
            full = t_logits.float()
            dropped = 1.0 - torch.exp(torch.logsumexp(kept.float(), -1) - torch.logsumexp(full, -1))
            mask = labels.ne(IGNORE_INDEX).to(dropped.dtype)
            mean = (dropped * mask).sum() / mask.sum().clamp(min=1.0)
        return kept, mean
