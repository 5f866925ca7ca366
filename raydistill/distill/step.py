"""One training step's loss for any method: sft / pl (labels only) or kd (teacher(s) + student).

``LossStep`` is built once per worker; ``__call__(student, batch, step, total_steps)`` returns
``(loss, components)``. Teachers stay frozen, in eval mode, under ``no_grad``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from raydistill.config import DistillConfig
from raydistill.distill.chunked import use_chunked
from raydistill.distill.kept_vocab import KeptVocab, mean_dropped
from raydistill.distill.objective import IGNORE_INDEX, lm_loss, summarization_distiller_loss
from raydistill.models.adaptor import seq2seq_forward, textbrewer_results
from raydistill.models.layers import decoder_inputs, layer_counts
from raydistill.models.student import get_layers_to_supervise


@dataclass(frozen=True)
class RunNeeds:
    """What a run's objective needs in each worker, decided from the config alone."""

    tb_config: Any = None  # the DistillationConfig of a kd run's ``distillation:`` section
    live_teachers: bool = False  # teachers load in the worker (kd without the Parquet cache)
    attentions: bool = False  # an attention match: student and teachers with eager attention
    projections: bool = False  # TextBrewer projections for the intermediate matches
    cached_logits: bool = False  # batches carry the Parquet cache's teacher top-k
    memory_cache: bool = False  # logit_cache: memory (first epoch's teacher outputs reused)


def run_needs(cfg: DistillConfig) -> RunNeeds:
    """The models and stores a run of ``cfg`` needs (a pure function of the config)."""
    tb = None
    if cfg.method == "kd" and cfg.distillation is not None:
        from raydistill.distill.textbrewer import DistillationConfig

        tb = DistillationConfig.from_dict(cfg.distillation)
    matches = (tb.intermediate_matches or []) if tb is not None else []
    cached = cfg.caches_logits and cfg.logit_cache == "parquet"
    return RunNeeds(tb_config=tb, live_teachers=cfg.uses_teacher and not cached,
                    attentions=any(m.feature == "attention" for m in matches),
                    projections=bool(matches), cached_logits=cached,
                    memory_cache=cfg.caches_logits and cfg.logit_cache == "memory")


class LossStep:
    """The objective of a run; holds teachers, layer matches and TextBrewer projections."""

    def __init__(
        self,
        cfg: DistillConfig,
        teachers: list[nn.Module],
        student: nn.Module,
        e_layer_ids: list[int] | None = None,
        d_layer_ids: list[int] | None = None,
        projections: nn.ModuleList | None = None,
        vocab_map: list[int] | None = None,
        source_vocab_map: list[int] | None = None,
    ) -> None:
        self.cfg = cfg
        # A trimmed student (vocab_map: its id -> the teacher's; source_vocab_map: the same for
        # its input ids, where the sides have their own vocabularies, FSMT): the teachers read
        # the batch in their ids and their logits are gathered to the kept ids
        # (distill/kept_vocab.py).
        self.kept = KeptVocab(vocab_map, source_vocab_map) if vocab_map and teachers else None
        if vocab_map:
            _check_kept(cfg, teachers, vocab_map, source_vocab_map)
        self.teachers = teachers
        self.teacher_timer: DeviceTimer | None = None  # method gkd: the teachers' forward passes
        for t in teachers:
            t.eval().requires_grad_(False)
        self.projections = projections
        self.needs = needs = run_needs(cfg)
        self.tb_config = needs.tb_config
        # Cached teacher logits: batches carry the teacher's top-k (and the hidden states the
        # matches read). From the Parquet cache no teacher runs here; with logit_cache: memory
        # the teacher runs on batches not cached yet, and keeps its outputs in last_teacher
        # for the loop to record.
        caching = cfg.caches_logits
        self.cached_logits = needs.cached_logits
        self.memory_logits = needs.memory_cache
        self.last_teacher: tuple[torch.Tensor, list[Any]] | None = None
        self.last_dropped: torch.Tensor | None = None  # and a trimmed student's (B, T) dropped mass
        self.cached_hidden: list[int] = []
        if caching:
            from raydistill.models.teacher_cache import cached_hidden_layers, check_cacheable

            check_cacheable(self.tb_config)
            if self.tb_config.intermediate_matches:
                self.teacher_counts = _teacher_counts(teachers, cfg)
                self.cached_hidden = cached_hidden_layers(self.tb_config, self.teacher_counts)
        self.e_matches = self.d_matches = None
        self.different_encoder = True
        if teachers and self.tb_config is None:
            se, sd = layer_counts(student)
            te, td = layer_counts(teachers[0])
            # A frozen student encoder as deep as the teacher's is the teacher's copy: the teacher
            # decoder reads the student's encoder output and no encoder loss runs (the original's
            # recipes freeze it: --freeze_encoder). A trainable one drifts from the teacher's, and
            # a teacher decoder reading it gives targets that are no longer the teacher's: on
            # en_de a 6-3 kd student fell to BLEU 0.3 that way. Then the teacher runs its own
            # encoder, and the encoder hidden states are matched too (alpha_hid).
            self.different_encoder = cfg.student is not None or se != te or not cfg.freeze_encoder
            e_ids = e_layer_ids if e_layer_ids is not None else list(range(se))
            d_ids = d_layer_ids if d_layer_ids is not None else list(range(sd))
            if cfg.alpha_hid > 0:
                if cfg.supervise_forward:
                    self.e_matches = get_layers_to_supervise(len(e_ids), te)
                    self.d_matches = get_layers_to_supervise(len(d_ids), td)
                else:  # each student layer emulates the teacher layer it was copied from
                    self.e_matches, self.d_matches = e_ids, d_ids

    @property
    def needs_attentions(self) -> bool:
        return self.needs.attentions

    @property
    def teacher_seconds(self) -> float:
        """method gkd: seconds in the teachers' forward passes so far (that the device finished)."""
        return self.teacher_timer.seconds() if self.teacher_timer is not None else 0.0

    def temperature_at(self, step: int, total_steps: int) -> float:
        """The KD temperature in force at ``step`` (for logging)."""
        if self.cfg.method == "gkd":
            return self.cfg.gkd_settings.temperature
        if self.tb_config is None:
            return self.cfg.temperature
        return float(self.tb_config.temperature)

    def __call__(
        self, student: nn.Module, batch: dict[str, torch.Tensor], step: int, total_steps: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = batch["labels"]
        inner = getattr(student, "module", student)
        dec_in = decoder_inputs(inner, labels)
        cfg = self.cfg
        if self.cached_logits or "topk_values" in batch:
            return self._cached(student, batch, dec_in, step, total_steps)
        if cfg.method == "gkd":
            return self._gkd(student, batch, dec_in)
        if not self.teachers:
            out = seq2seq_forward(student, batch, dec_in)
            loss = lm_loss(out.logits, labels, cfg.label_smoothing)
            return loss, {"mlm_loss": loss}
        if self.tb_config is not None:
            return self._textbrewer(student, batch, dec_in, step, total_steps)
        want_hidden = cfg.alpha_hid > 0
        s_out = seq2seq_forward(student, batch, dec_in, hidden=want_hidden)
        with torch.no_grad():
            t_logits, t_enc_h, t_dec_h = self._teacher_outputs(batch, dec_in, s_out, want_hidden)
            t_logits, dropped = self._gather(t_logits, labels)
        loss, parts = summarization_distiller_loss(
            s_logits=s_out.logits, t_logits=t_logits, labels=labels,
            alpha_ce=cfg.alpha_ce, alpha_mlm=cfg.alpha_mlm, alpha_hid=cfg.alpha_hid,
            temperature=cfg.temperature, label_smoothing=cfg.label_smoothing,
            src_mask=batch["attention_mask"],
            s_enc_hidden=s_out.encoder_hidden_states if self.different_encoder else None,
            t_enc_hidden=t_enc_h, e_matches=self.e_matches,
            s_dec_hidden=s_out.decoder_hidden_states, t_dec_hidden=t_dec_h,
            d_matches=self.d_matches, normalize_hidden=cfg.normalize_hidden,
            kd_loss=cfg.kd_loss, kd_beta=cfg.kd_beta, kd_alpha=cfg.kd_alpha,
        )
        return loss, _with_dropped(parts, dropped)

    def _gather(self, t_logits, labels):
        """(teacher logits at the kept ids, dropped mass) for a trimmed student; else as is."""
        return self.kept.gather(t_logits, labels) if self.kept is not None else (t_logits, None)

    def _teacher_forward(self, teacher, batch, dec_in, s_out, want_hidden: bool = False):
        """One teacher's outputs on the batch's targets, and its encoder hidden states (None
        when it reads the student's encoder output)."""
        if self.kept is not None:
            batch, dec_in = self.kept.teacher_batch(batch, dec_in)
        if self.different_encoder:
            enc = teacher.get_encoder()(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_hidden_states=want_hidden, return_dict=True)
            enc_states, enc_h = enc.last_hidden_state, enc.hidden_states
        else:  # in the teacher's dtype: a bf16/fp16 teacher (teacher_dtype) reads it too
            enc_states, enc_h = s_out.encoder_last_hidden_state.detach().to(teacher.dtype), None
        out = seq2seq_forward(teacher, batch, dec_in, hidden=want_hidden,
                              encoder_outputs=BaseModelOutput(last_hidden_state=enc_states))
        return out, enc_h

    def _teacher_outputs(self, batch, dec_in, s_out, want_hidden):
        logits, enc_h, dec_h = [], None, None
        for i, teacher in enumerate(self.teachers):
            out, enc = self._teacher_forward(teacher, batch, dec_in, s_out, want_hidden)
            logits.append(out.logits)
            if i == 0:
                enc_h, dec_h = enc, out.decoder_hidden_states
        # Several teachers: average their logits (TextBrewer's MultiTeacherDistiller), in fp32.
        if len(logits) > 1:
            return torch.stack([t.float() for t in logits]).mean(0), enc_h, dec_h
        return logits[0], enc_h, dec_h  # the KD and hidden losses upcast to fp32 themselves

    def _gkd(self, student, batch, dec_in):
        """GKD's loss: the generalized JSD between the student's and the teachers' token
        distributions on the batch's targets (the data's, or a sample: see train/targets.py),
        over their real tokens. Several teachers: the mean of their distributions."""
        from raydistill.distill.losses import generalized_jsd_loss

        g = self.cfg.gkd_settings
        s_out = seq2seq_forward(student, batch, dec_in)
        if self.teacher_timer is None:
            self.teacher_timer = DeviceTimer(s_out.logits.device)
        t0 = self.teacher_timer.start()
        with torch.no_grad():
            outs = [self._teacher_forward(t, batch, dec_in, s_out)[0].logits
                    for t in self.teachers]
            if len(outs) == 1:
                t_logits = outs[0]
            else:  # logits whose softmax at T is the teachers' mean distribution at T
                logs = torch.stack([F.log_softmax(o.float() / g.temperature, dim=-1)
                                    for o in outs])
                t_logits = (torch.logsumexp(logs, 0) - math.log(len(outs))) * g.temperature
            t_logits, dropped = self._gather(t_logits, batch["labels"])
        self.teacher_timer.stop(t0)
        loss = generalized_jsd_loss(s_out.logits, t_logits, batch["labels"].ne(IGNORE_INDEX),
                                    beta=g.beta, temperature=g.temperature)
        return loss, _with_dropped({"gkd_loss": loss.detach()}, dropped)

    def _textbrewer(self, student, batch, dec_in, step, total_steps):
        from raydistill.distill.textbrewer import average_teacher_logits, textbrewer_loss

        tb = self.tb_config
        feats = {m.feature for m in (tb.intermediate_matches or [])}
        hidden, attn = "hidden" in feats, "attention" in feats
        tgt_mask = batch["labels"].ne(IGNORE_INDEX)
        s_out = seq2seq_forward(student, batch, dec_in, hidden=hidden, attentions=attn)
        hard = lm_loss(s_out.logits, batch["labels"], self.cfg.label_smoothing)
        results_s = textbrewer_results(s_out, batch, tgt_mask, losses=[hard])
        # The chunked KD loss reads half-precision teacher logits in fp32 itself, a chunk at a
        # time; every other loss gets fp32 teacher tensors (see _fp32).
        keep_logits = tb.kd_loss_type == "ce" and use_chunked(s_out.logits.size(-1))
        t_batch, t_dec_in = (self.kept.teacher_batch(batch, dec_in) if self.kept is not None
                             else (batch, dec_in))
        with torch.no_grad():
            results_t = [
                _fp32(textbrewer_results(seq2seq_forward(t, t_batch, t_dec_in, hidden=hidden,
                                                         attentions=attn), batch, tgt_mask),
                      keep_logits)
                for t in self.teachers
            ]
        if len(results_t) > 1:
            merged = dict(results_t[0])
            merged["logits"] = average_teacher_logits(results_t)["logits"]
            results_t = [merged]
        results_t[0] = dict(results_t[0])
        dropped = None
        if self.kept is not None:
            results_t[0]["logits"], self.last_dropped = self.kept.gather_positions(
                results_t[0]["logits"])
            dropped = mean_dropped(self.last_dropped, batch["labels"])
        if self.memory_logits:
            self.last_teacher = (results_t[0]["logits"], results_t[0]["hidden"])
        loss, parts = textbrewer_loss(tb, results_s, results_t[0], step=step, total_steps=total_steps,
                                      projections=self.projections, sync_logs=False)
        # Tensors stay on the device (the loop reads them, all at once, when a line is due);
        # weights and a constant temperature are numbers already.
        parts = {k: (v if torch.is_tensor(v) else float(v)) for k, v in parts.items()}
        parts.setdefault("hard_label_loss", hard.detach())
        return loss, _with_dropped(parts, dropped)


    def _cached(self, student, batch, dec_in, step, total_steps):
        """TextBrewer's KD + hard-label blend, KD from the cached top-k teacher logits."""
        from raydistill.distill.losses import topk_kd_loss
        from raydistill.distill.schedulers import scheduled_weight

        if "topk_values" not in batch:
            raise ValueError("is_caching_logits: the batch holds no cached teacher logits "
                             "(topk_values); build the datasets with raydistill.train.run")
        tb = self.tb_config
        tgt_mask = batch["labels"].ne(IGNORE_INDEX)
        s_out = seq2seq_forward(student, batch, dec_in, hidden=bool(self.cached_hidden))
        hard = lm_loss(s_out.logits, batch["labels"], self.cfg.label_smoothing)
        kd = topk_kd_loss(s_out.logits, batch["topk_values"], batch.get("topk_indices"), tgt_mask,
                          float(tb.temperature), kind="ce")
        kd_w = scheduled_weight(tb.kd_loss_weight, tb.kd_loss_weight_scheduler, step, total_steps)
        hl_w = scheduled_weight(tb.hard_label_weight, tb.hard_label_weight_scheduler, step,
                                total_steps)
        loss = kd * kd_w
        parts = {"unweighted_kd_loss": kd.detach(), "unweighted_hard_label_loss": hard.detach(),
                 "kd_loss_weight": float(kd_w), "hard_label_weight": float(hl_w),
                 "temperature": float(tb.temperature), "hard_label_loss": hard.detach()}
        if self.cached_hidden:  # TextBrewer's matches against the cached teacher hidden states
            from raydistill.distill.textbrewer import textbrewer_loss

            results_s = textbrewer_results(s_out, batch, tgt_mask)
            del results_s["losses"], results_s["logits"]  # KD and hard labels are added here
            matched, logs = textbrewer_loss(tb, results_s, self._cached_teacher(batch, tgt_mask),
                                            step=step, total_steps=total_steps,
                                            projections=self.projections, sync_logs=False)
            loss = loss + matched
            parts.update({k: v for k, v in logs.items() if k.startswith("unweighted_")})
        if "teacher_dropped" in batch:  # a trimmed student's cache (DROPPED_COLUMN)
            parts["teacher_dropped_mass"] = mean_dropped(batch["teacher_dropped"], batch["labels"])
        return loss + hard * hl_w, parts

    def _cached_teacher(self, batch, tgt_mask) -> dict[str, Any]:
        """TextBrewer's teacher results from the batch's ``t_hidden_*`` columns (no logits:
        KD is the top-k loss); entries no match reads stay None."""
        from raydistill.data.tokenize import parse_hidden_column

        te, td = self.teacher_counts
        hidden: list[Any] = [None] * (te + td + 2)
        masks: list[Any] = [None] * (te + td + 2)
        for name, value in batch.items():
            parsed = parse_hidden_column(name)
            if parsed is not None and parsed[1] < len(hidden):
                hidden[parsed[1]] = value
                masks[parsed[1]] = batch["attention_mask"] if parsed[0] == "enc" else tgt_mask
        missing = [i for i in self.cached_hidden if hidden[i] is None]
        if missing:
            raise ValueError(f"is_caching_logits: the cached teacher logits hold no hidden state "
                             f"{missing[0]} for intermediate_matches; rebuild the cache (delete "
                             "<output_dir>/logit_cache or run cache-logits with --hidden-layers)")
        return {"hidden": hidden, "hidden_mask": masks}


def _with_dropped(parts: dict[str, Any], dropped: torch.Tensor | None) -> dict[str, Any]:
    """The step's components, with a trimmed student's dropped teacher mass (a device tensor)."""
    return parts if dropped is None else {**parts, "teacher_dropped_mass": dropped}


def _check_kept(cfg: DistillConfig, teachers: list[nn.Module], vocab_map: list[int],
                source_vocab_map: list[int] | None = None) -> None:
    size = min((t.config.vocab_size for t in teachers), default=max(vocab_map) + 1)
    if max(vocab_map) >= size:
        raise ValueError(f"the student's vocab_map names teacher id {max(vocab_map)}, but a "
                         f"teacher has {size} tokens: trim the student from this teacher")
    if source_vocab_map and teachers:  # FSMT: its source vocabulary is another size
        size = min(getattr(t.config, "src_vocab_size", t.config.vocab_size) for t in teachers)
        if max(source_vocab_map) >= size:
            raise ValueError(f"the student's source vocab_map names teacher id "
                             f"{max(source_vocab_map)}, but a teacher has {size} source tokens: "
                             "trim the student from this teacher")


def _fp32(results: dict[str, Any], keep_logits: bool = False) -> dict[str, Any]:
    """A teacher's TextBrewer results with every floating tensor in fp32 (a no-op for an fp32
    teacher); ``keep_logits`` leaves the logits as they are (for a loss that upcasts them).
    A bf16/fp16 teacher (``teacher_dtype``) saves memory in its weights and forward pass;
    TextBrewer's losses, which mix both sides' tensors, then still compute in fp32."""
    def up(value: Any) -> Any:
        if torch.is_tensor(value):
            return value.float() if value.is_floating_point() else value
        if isinstance(value, (list, tuple)):
            return type(value)(up(v) for v in value)
        return value

    return {k: v if keep_logits and k == "logits" else up(v) for k, v in results.items()}


def _teacher_counts(teachers: list[nn.Module], cfg: DistillConfig) -> tuple[int, int]:
    """(encoder, decoder) layers of the first teacher: its config when it is not loaded."""
    if teachers:
        return layer_counts(teachers[0])
    from transformers import AutoConfig

    return layer_counts(AutoConfig.from_pretrained(cfg.teacher_paths[0]))


class DeviceTimer:
    """Seconds of work on a device, measured without waiting for it.

    On a GPU an interval is a pair of CUDA events recorded in the stream, added up once the GPU
    has passed both: :meth:`seconds` never waits, and an interval still in flight counts at a
    later call (by a validation report, the loop's read of the loss has waited for all of them).
    Elsewhere the work has run when the host moves on: a clock.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.total = 0.0  # seconds of the finished intervals
        self._taken = 0.0
        self._pending: list[tuple[Any, Any]] = []

    def start(self) -> Any:
        """A mark to pass to :meth:`stop`."""
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(self, start: Any) -> None:
        """Ends the interval that began at ``start``."""
        if not self.cuda:
            self.total += time.perf_counter() - start
            return
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self._pending.append((start, end))

    def seconds(self) -> float:
        """Seconds of every interval the device has finished."""
        while self._pending and self._pending[0][1].query():
            begin, end = self._pending.pop(0)
            self.total += begin.elapsed_time(end) / 1000.0
        return self.total

    def take(self) -> float:
        """Seconds finished since the last ``take``."""
        now = self.seconds()
        new, self._taken = now - self._taken, now
        return new


def describe(components: dict[str, Any]) -> str:
    return " ".join(f"{k}={float(v):.4f}" for k, v in components.items())
