"""Where a training batch's targets and teacher outputs come from: the worker loop's one seam.

The loop hands every batch it reads to its ``TargetSource`` and trains on what comes back; it
tells the source when the loss has run and when an epoch ends. A new source of targets (samples
from the student or the teacher, for on-policy distillation) is one more class here, not a
branch in the loop.

- ``DataTargets``: the data's labels, and with the Parquet cache the teacher's top-k columns that
  the batch plan joined to the rows (``raydistill.data.plan``): the batch as it comes.
- ``MemoryCacheTargets`` (``logit_cache: memory``): the teacher outputs kept from an earlier
  epoch when every example of the batch is kept (no teacher runs then); otherwise the live
  teacher runs and its outputs are recorded. After each epoch the workers exchange what they
  recorded, so each holds the whole cache.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from raydistill.config import DistillConfig
from raydistill.distill.step import LossStep, RunNeeds

Gather = Callable[[Any], list[Any]]


class TargetSource:
    """The default: a batch's targets are the data's labels (``DataTargets``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def batch(self, batch: dict[str, torch.Tensor], model: torch.nn.Module,
              step: int) -> dict[str, torch.Tensor]:
        """The batch the loss reads, on the device, without its ``id`` column; ``model`` is the
        student (unwrapped), for sources that sample from it."""
        return {k: v.to(self.device) for k, v in batch.items() if k != "id"}

    def after_loss(self, loss_step: LossStep, batch: dict[str, torch.Tensor]) -> None:
        """Called once the loss of ``batch`` (as ``batch()`` returned it) has been computed."""

    def end_epoch(self, gather: Gather, log: bool) -> None:
        """Called on every worker at the end of each epoch but the last."""

    def metrics(self) -> dict[str, float]:
        """What this source adds to each validation report (this worker's view)."""
        return {}


DataTargets = TargetSource


class MemoryCacheTargets(TargetSource):
    """``logit_cache: memory``: TextBrewer's in-memory caching of the teacher's outputs."""

    def __init__(self, device: torch.device, memory) -> None:
        super().__init__(device)
        self.memory = memory
        self.ids: list[int] = []

    def batch(self, batch, model, step):
        self.ids = batch["id"].tolist()
        batch = dict(batch)
        batch.update(self.memory.lookup(self.ids) or {})  # only when all examples are kept
        return super().batch(batch, model, step)

    def after_loss(self, loss_step, batch):
        if loss_step.last_teacher is not None:  # the live teacher ran: keep its outputs
            self.memory.record(self.ids, *loss_step.last_teacher, batch["attention_mask"],
                               batch["labels"].ne(-100))
            loss_step.last_teacher = None

    def end_epoch(self, gather, log):
        parts = gather(self.memory.take_new())
        for part in parts:
            self.memory.merge(part)
        if log and any(parts):
            print(f"[raydistill] teacher logits: {len(self.memory)} examples kept in memory "
                  f"({self.memory.nbytes / 2**20:.0f} MiB per worker)", flush=True)

    def metrics(self):
        return {"logit_cache_examples": len(self.memory),
                "logit_cache_hit_rate": self.memory.take_hit_rate()}


def make_targets(cfg: DistillConfig, needs: RunNeeds, loss_step: LossStep,
                 device: torch.device) -> TargetSource:
    """The target source a run of ``cfg`` trains from."""
    if needs.memory_cache:
        from raydistill.models.teacher_cache import DEFAULT_TOP_K
        from raydistill.train.memory_cache import MemoryLogitCache

        memory = MemoryLogitCache(cfg.logit_cache_top_k or DEFAULT_TOP_K,
                                  hidden_layers=loss_step.cached_hidden,
                                  encoder_layers=loss_step.teacher_counts[0]
                                  if loss_step.cached_hidden else 0)
        return MemoryCacheTargets(device, memory)
    return DataTargets(device)
