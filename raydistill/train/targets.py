"""Where a training batch's targets and teacher outputs come from: the worker loop's one seam.

The loop copies every batch it reads to the device (its ``id`` column stays on the host), hands
it to its ``TargetSource`` and trains on what comes back; it tells the source when the loss has
run and when an epoch ends. A source reads no device value on the host: the loop's one read per
log line is the only wait for the GPU. A new source of targets (samples
from the student or the teacher, for on-policy distillation) is one more class here, not a
branch in the loop.

- ``DataTargets``: the data's labels, and with the Parquet cache the teacher's top-k columns that
  the batch plan joined to the rows (``raydistill.data.plan``): the batch as it comes.
- ``MemoryCacheTargets`` (``logit_cache: memory``): the teacher outputs kept from an earlier
  epoch when every example of the batch is kept (no teacher runs then); otherwise the live
  teacher runs and its outputs are recorded. After each epoch the workers exchange what they
  recorded, so each holds the whole cache.
- ``OnPolicyTargets`` (``method: gkd``): with probability ``gkd.lmbda`` the student samples the
  batch's targets from its sources (GKD's on-policy batches); the other batches keep the data's
  targets, or with ``gkd.seq_kd`` take a sample of the first teacher.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np
import torch
from transformers import LogitsProcessorList

from raydistill.config import DistillConfig
from raydistill.distill.kept_vocab import KeptVocab
from raydistill.distill.step import DeviceTimer, LossStep, RunNeeds
from raydistill.models.generate import past_first_eos
from raydistill.train.parallel import gathered_root, is_sharded

Gather = Callable[[Any], list[Any]]


class TargetSource:
    """The default: a batch's targets are the data's labels (``DataTargets``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def batch(self, batch: dict[str, torch.Tensor], model: torch.nn.Module,
              step: int) -> dict[str, torch.Tensor]:
        """The batch the loss reads, without its ``id`` column. ``batch`` is on the device but
        for ``id`` (on the host); a source that replaces the labels returns new ones (the loop
        then counts those for tokens/s). ``model`` is the student (unwrapped), for sources
        that sample from it."""
        return {k: v for k, v in batch.items() if k != "id"}

    def after_step(self, loss_step: LossStep, batch: dict[str, torch.Tensor],
                   parts: dict[str, Any], seconds: float) -> None:
        """Called after the backward pass of ``batch`` (as ``batch()`` returned it), which took
        ``seconds`` in all; may add entries to ``parts`` (the step line's components)."""

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
        self.ids = batch["id"].tolist()  # a host tensor: no wait
        batch = dict(batch)
        kept = self.memory.lookup(self.ids) or {}  # only when all examples are kept
        batch.update({k: v.to(self.device, non_blocking=True) for k, v in kept.items()})
        return super().batch(batch, model, step)

    def after_step(self, loss_step, batch, parts, seconds):
        if loss_step.last_teacher is not None:  # the live teacher ran: keep its outputs
            self.memory.record(self.ids, *loss_step.last_teacher, batch["attention_mask"],
                               batch["labels"].ne(-100), dropped=loss_step.last_dropped)
            loss_step.last_teacher = loss_step.last_dropped = None

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


class OnPolicyTargets(TargetSource):
    """``method: gkd``: targets sampled from the student (on-policy) or the teacher (seq_kd).

    Whether a micro-batch is on-policy is a draw from a counter-based RNG keyed by (seed,
    optimizer step, micro-batch of the step): every worker makes the same choice at the same
    step, and a run resumed from a checkpoint (which holds the step) makes the same choices
    again. The counts so far live in the checkpointed training state (``state["gkd"]``).
    """

    def __init__(self, device, cfg: DistillConfig, teachers: list, state: dict[str, Any],
                 kept: KeptVocab | None = None) -> None:
        super().__init__(device)
        self.g, self.seed, self.teachers = cfg.gkd_settings, cfg.seed, teachers
        self.kept = kept  # a trimmed student's: the teacher samples (seq_kd) the kept ids only
        self.counts = state.setdefault("gkd", {"draws": 0, "on_policy": 0, "sample_s": 0.0,
                                               "teacher_s": 0.0, "step_s": 0.0})
        self.step, self.micro = -1, 0
        # Timed with CUDA events on a GPU (no synchronize): the seconds are added to the counts
        # as the GPU finishes them, so the step line's fractions may lag by a micro-batch.
        self.sample_timer, self.step_timer = DeviceTimer(device), DeviceTimer(device)
        self._step_start: Any = None
        self._loss_step: LossStep | None = None  # its teacher_timer times the teachers

    def on_policy(self, step: int) -> bool:
        """The draw for the next micro-batch of optimizer step ``step``."""
        self.micro = self.micro + 1 if step == self.step else 0
        self.step = step
        u = np.random.default_rng([self.seed, step, self.micro]).random()
        return bool(u < self.g.lmbda)

    def batch(self, batch, model, step):
        self._step_start = self.step_timer.start()
        batch = super().batch(batch, model, step)
        on = self.on_policy(step)
        self.counts["draws"] += 1
        self.counts["on_policy"] += int(on)
        if on or self.g.seq_kd:
            t0 = self.sample_timer.start()
            batch["labels"] = (sample_targets(model, batch, self.g) if on else
                               sample_teacher_targets(self.teachers[0], batch, self.g, self.kept))
            self.sample_timer.stop(t0)
        return batch

    def _collect(self) -> dict[str, Any]:
        """The counts with the seconds the device has finished so far."""
        c = self.counts
        c["sample_s"] += self.sample_timer.take()
        c["step_s"] += self.step_timer.take()
        timer = self._loss_step.teacher_timer if self._loss_step is not None else None
        if timer is not None:
            c["teacher_s"] += timer.take()
        return c

    def after_step(self, loss_step, batch, parts, seconds):
        self.step_timer.stop(self._step_start)
        self._loss_step = loss_step
        c = self._collect()
        total = max(c["step_s"], 1e-9)
        student = max(c["step_s"] - c["sample_s"] - c["teacher_s"], 0.0)
        parts.update(on_policy_fraction=c["on_policy"] / max(c["draws"], 1),
                     time_sample=c["sample_s"] / total, time_teacher=c["teacher_s"] / total,
                     time_student=student / total)

    def metrics(self):
        c = self._collect()
        return {"on_policy_fraction": c["on_policy"] / max(c["draws"], 1),
                "on_policy_batches": c["on_policy"], "gkd_batches": c["draws"],
                "sample_seconds": c["sample_s"], "teacher_seconds": c["teacher_s"],
                "step_seconds": c["step_s"]}


@torch.no_grad()
def sample_targets(model: torch.nn.Module, batch: dict[str, torch.Tensor], g,
                   logits_processor: LogitsProcessorList | None = None) -> torch.Tensor:
    """Labels sampled by ``model`` (the unwrapped or sharded student, or a teacher, replicated
    or sharded: every rank then calls it) for the batch's sources: (B, L) token ids up to and
    including each row's first EOS, -100 after it; L is at most ``g.max_new_tokens``. The
    model samples in eval mode (no dropout) and is put back."""
    config = copy.deepcopy(model.generation_config)
    config.update(do_sample=True, num_beams=1, temperature=g.temperature, top_p=g.top_p,
                  top_k=g.top_k or None, max_new_tokens=g.max_new_tokens, max_length=None,
                  min_length=0, min_new_tokens=None, no_repeat_ngram_size=0,
                  repetition_penalty=1.0, length_penalty=1.0, early_stopping=False)
    # A sharded model (FSDP2) samples in lockstep, as validation generates: each forward
    # gathers layers from every rank, so synced_gpus keeps a rank whose rows are all done
    # stepping (without a draw: generate skips the sampling then, so each rank draws what it
    # would alone, as with ddp) until every rank's are; the root is gathered by hand because
    # generate calls the encoder past the root's hook.
    sharded = is_sharded(model)
    was_training = model.training
    model.eval()
    try:
        with gathered_root(model):
            seqs = model.generate(input_ids=batch["input_ids"],
                                  attention_mask=batch["attention_mask"],
                                  generation_config=config, synced_gpus=sharded,
                                  logits_processor=logits_processor)
    finally:
        model.train(was_training)
    labels = seqs[:, 1:]  # seqs[:, 0] is the decoder start token
    # Keep each row through its first EOS; everything after it (pads) is ignored. (masked_fill:
    # a boolean-mask assignment would read the mask's positions on the host.)
    return labels.masked_fill(past_first_eos(labels, config.eos_token_id), -100)


def sample_teacher_targets(teacher: torch.nn.Module, batch: dict[str, torch.Tensor], g,
                           kept: KeptVocab | None = None) -> torch.Tensor:
    """``sample_targets`` of a teacher (``gkd.seq_kd``). For a trimmed student (``kept``) the
    teacher reads the sources in its ids and samples the kept ids only (its logits elsewhere
    are -inf before temperature, top-k and top-p), and the labels come back in the student's."""
    if kept is None:
        return sample_targets(teacher, batch, g)
    t_batch = {**batch, "input_ids": kept.teacher_source_ids(batch["input_ids"])}
    labels = sample_targets(teacher, t_batch, g, LogitsProcessorList([kept.logits_processor()]))
    return kept.student_ids(labels)


def make_targets(cfg: DistillConfig, needs: RunNeeds, loss_step: LossStep,
                 device: torch.device, state: dict[str, Any]) -> TargetSource:
    """The target source a run of ``cfg`` trains from; ``state`` is the checkpointed training
    state (a source may keep counts there)."""
    if cfg.method == "gkd":
        return OnPolicyTargets(device, cfg, loss_step.teachers, state, kept=loss_step.kept)
    if needs.memory_cache:
        from raydistill.models.teacher_cache import DEFAULT_TOP_K
        from raydistill.train.memory_cache import MemoryLogitCache

        memory = MemoryLogitCache(cfg.logit_cache_top_k or DEFAULT_TOP_K,
                                  hidden_layers=loss_step.cached_hidden,
                                  encoder_layers=loss_step.teacher_counts[0]
                                  if loss_step.cached_hidden else 0)
        return MemoryCacheTargets(device, memory)
    return DataTargets(device)
