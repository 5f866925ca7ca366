"""The Ray Train worker: restore -> setup -> loop -> report checkpoints -> cleanup.

Every rank calls ``ray.train.report`` the same number of times (once per validation); rank 0
alone writes the checkpoint folder, with the RNG states of all ranks gathered into it.
"""

from __future__ import annotations

import functools
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray.train
import torch
import torch.distributed as dist

from raydistill.config import DistillConfig
from raydistill.data.tokenize import make_collate_fn
from raydistill.distill.step import LossStep, run_needs
from raydistill.errors import TrainingError
from raydistill.models.generate import generate_local
from raydistill.metrics import score
from raydistill.models.layers import load_seq2seq, load_teacher
from raydistill.runtime import process_start_time
from raydistill.train.checkpoint import (
    load_training_state,
    local_checkpoints,
    persist_local_checkpoint,
    rng_state,
    save_training_state,
)
from raydistill.train.logger import Logger
from raydistill.train.targets import TargetSource, make_targets


def _world() -> tuple[int, int]:
    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _gather(obj: Any, world: int) -> list[Any]:
    if world == 1 or not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _autocast(cfg: DistillConfig, device: torch.device):
    """bf16 where the GPU has it, else fp16 (with a GradScaler); plain fp32 on CPU."""
    if device.type != "cuda" or cfg.precision == "fp32":
        return None, None
    if cfg.precision == "bf16" or (cfg.precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def _student_overrides(cfg: DistillConfig) -> dict[str, float]:
    keys = ("dropout", "attention_dropout", "encoder_layerdrop", "decoder_layerdrop")
    return {k: getattr(cfg, k) for k in keys if getattr(cfg, k) is not None}


def _freeze(student, cfg: DistillConfig) -> None:
    """finetune.py's freeze_embeds (token + position embeddings) and freeze_encoder."""
    if cfg.freeze_embeds:
        student.get_input_embeddings().requires_grad_(False)
        for part in (student.get_encoder(), student.get_decoder()):
            for name in ("embed_tokens", "embed_positions", "embeddings"):
                sub = getattr(part, name, None)
                if isinstance(sub, torch.nn.Module):
                    sub.requires_grad_(False)
    if cfg.freeze_encoder:
        student.get_encoder().requires_grad_(False)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config`` is ``DistillConfig.to_dict()`` plus a ``_run`` section.

    Ray Train's documented shape: restore and set up, run the epochs (validating and reporting
    when due), report the final state, clean up.
    """
    w = setup(config)
    while not w.done:
        run_epoch(w)
        end_epoch(w)
    if w.state["global_step"] != w.last_val_step:
        validate_and_report(w, final=True)
    if w.logger:
        w.logger.close()


@dataclass
class Worker:
    """One worker's run: what ``setup`` built and the state the epochs advance."""

    cfg: DistillConfig
    run: dict[str, Any]
    rank: int
    world: int
    device: torch.device
    model: torch.nn.Module  # the student as trained (DDP-wrapped with several workers)
    inner: torch.nn.Module  # the student itself
    tokenizer: Any
    loss_step: LossStep
    targets: TargetSource
    projections: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    amp_dtype: Any
    state: dict[str, Any]
    resumed: bool
    train_shard: Any
    val_rows: list[dict[str, Any]]
    collate: Any
    feed: Any
    logger: Any
    last_val_step: int
    done: bool = False
    loss_sum: float = 0.0  # training loss since the last validation
    loss_n: int = 0
    t0: float = field(default_factory=time.time)  # the logging window: start, tokens seen
    tokens: int = 0
    last_loss: Any = None  # the last micro-batch's loss and components (for the step line)
    last_parts: Any = None
    started: float = field(default_factory=time.time)  # for the ETA: when, and from which step
    first_step: int = 0
    setup_seconds: float = 0.0  # models, optimizer, restore and data handles
    # When a Train worker's process started, for the first step's line; None in the driver's
    # process (num_workers: 0). (This loop started setup_seconds before ``started``.)
    process_started: float | None = None


def setup(config: dict[str, Any]) -> Worker:
    """Restore -> models -> optimizer -> state -> data, in that order: the checkpoint decides
    the weights, the RNG and where the data restarts; the config alone decides which models
    and stores the run needs (``run_needs``)."""
    t_setup = time.time()
    config = dict(config)
    run = config.pop("_run")
    cfg = DistillConfig.from_dict(config)
    rank, world = _world()
    torch.set_num_threads(max(1, cfg.cpus_per_worker))
    device = ray.train.torch.get_device()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and run.get("local_run_dir"):  # this process: its own checkpoints
        found = local_checkpoints(run["local_run_dir"])
        checkpoint = ray.train.Checkpoint.from_directory(str(found[-1][0])) if found else None
    _seed_everything(cfg.seed + rank)

    needs = run_needs(cfg)
    student, teachers, projections = _models(cfg, run, needs, device)
    loss_step = LossStep(cfg, teachers, student, run.get("e_layer_ids"), run.get("d_layer_ids"),
                         projections)
    layerdrop = bool(cfg.encoder_layerdrop or cfg.decoder_layerdrop)
    model = ray.train.torch.prepare_model(
        student, parallel_strategy_kwargs={"find_unused_parameters": layerdrop or cfg.freeze_encoder})
    inner = getattr(model, "module", model)

    # Optimizer and schedule (linear warmup then linear decay to 0 at total_steps).
    optimizer, scheduler = build_optimizer(cfg, inner, run["total_steps"], projections,
                                           loss_step.tb_config)
    amp_dtype, scaler = _autocast(cfg, device)
    state = {"global_step": 0, "epoch": 0, "batch_in_epoch": 0, "best_metric": None,
             "history": []}
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = load_training_state(ckpt_dir, student=inner, optimizer=optimizer,
                                        scheduler=scheduler, scaler=scaler,
                                        projections=projections, rank=rank)
        state.setdefault("resumed_from", []).append(state["global_step"])
        if rank == 0:
            print(f"[raydistill] resumed from checkpoint at step {state['global_step']} "
                  f"(epoch {state['epoch']}, batch {state['batch_in_epoch']})", flush=True)

    targets = make_targets(cfg, needs, loss_step, device, state)

    # Data: this worker's shard of train; the whole (small) val set, split across ranks.
    # A planned run (token budget, sortish, cached logits) gets the whole train set and pulls
    # the rows of its own batches of each epoch's plan (raydistill.data.plan).
    tokenizer = _load_tokenizer(run["tokenizer"])
    train_shard = ray.train.get_dataset_shard("train")
    val_rows = list(ray.train.get_dataset_shard("val").iter_rows())
    collate = make_collate_fn(tokenizer.pad_token_id)
    feed = _PlannedFeed(run["plan"], train_shard, collate, rank, world) if run.get("plan") else None
    model.train()
    return Worker(cfg=cfg, run=run, rank=rank, world=world, device=device, model=model,
                  inner=inner, tokenizer=tokenizer, loss_step=loss_step, targets=targets,
                  projections=projections, optimizer=optimizer, scheduler=scheduler,
                  scaler=scaler, amp_dtype=amp_dtype, state=state,
                  resumed=checkpoint is not None, train_shard=train_shard, val_rows=val_rows,
                  collate=collate, feed=feed, logger=Logger(cfg, run) if rank == 0 else None,
                  last_val_step=state["global_step"] if checkpoint is not None else -1,
                  done=state["global_step"] >= run["total_steps"],
                  first_step=state["global_step"], setup_seconds=time.time() - t_setup,
                  process_started=process_start_time() if cfg.num_workers else None)


def _models(cfg: DistillConfig, run: dict[str, Any], needs, device):
    """(student, teachers, projections). The student starts from output_dir/student (written by
    the driver); the teachers load only when a live teacher is needed, frozen, in
    teacher_dtype (bf16/fp16 on a GPU: half the bytes) and with SDPA attention unless an
    attention match needs the weights (eager). Paths are local: the driver resolved Hub ids."""
    attn = {"attn_implementation": "eager"} if needs.attentions else {}
    student = load_seq2seq(run["student_init"], **attn, **_student_overrides(cfg))
    _freeze(student, cfg)
    teachers = [load_teacher(p, cfg.teacher_dtype, device, **attn)
                for p in cfg.teacher_paths] if needs.live_teachers else []
    projections = None
    if needs.projections:
        from raydistill.distill.textbrewer import build_projections

        projections = build_projections(needs.tb_config).to(device)
    return student, teachers, projections


def _epoch_batches(w: Worker):
    """(this worker's batches of the current epoch from the resume position, their number,
    the index of the first one)."""
    cfg, state = w.cfg, w.state
    if w.feed is not None:  # the plan starts at the resume position: skipped batches never read
        it, n = w.feed.epoch(state["epoch"], state["batch_in_epoch"])
        return it, n, state["batch_in_epoch"]
    it = w.train_shard.iter_torch_batches(
        batch_size=cfg.train_batch_size, collate_fn=w.collate,
        local_shuffle_buffer_size=None if cfg.seed is None else 4 * cfg.train_batch_size,
        local_shuffle_seed=cfg.seed + state["epoch"] * 1000 + w.rank,
    )
    return it, w.run["batches_per_epoch"], 0


def run_epoch(w: Worker) -> None:
    """One epoch (or what is left of it): micro-batches, accumulation, optimizer steps,
    logging; validates and reports when due. Optimizer steps count toward total_steps."""
    cfg, state = w.cfg, w.state
    skip = state["batch_in_epoch"]
    it, batches_per_epoch, start = _epoch_batches(w)
    val_every = max(1, round(cfg.val_check_interval * batches_per_epoch))
    micro, seen = 0, start
    for i, batch in enumerate(it, start=start):
        seen += 1
        if i < skip:  # resume: these batches were consumed before the checkpoint
            continue
        # Counted on the host, before the copy: on a GPU every read of a device value waits
        # for the queued work, and a step reads one (the loss) in all.
        w.tokens += int(batch["attention_mask"].sum()) + int(batch["labels"].ne(-100).sum())
        _forward_backward(w, batch)
        micro += 1
        state["batch_in_epoch"] = i + 1
        stepped = micro % cfg.gradient_accumulation_steps == 0 or i + 1 == batches_per_epoch
        if stepped:
            _optimizer_step(w)
        # val_check_steps (TextBrewer's ckpt_steps) counts optimizer steps; otherwise a
        # fraction of the epoch's batches.
        due = (stepped and state["global_step"] % cfg.val_check_steps == 0
               if cfg.val_check_steps else state["batch_in_epoch"] % val_every == 0)
        if (w.done or due) and state["global_step"] != w.last_val_step:
            validate_and_report(w, final=w.done)
        if w.done or i + 1 >= batches_per_epoch:
            break
    if seen == 0:
        raise TrainingError(f"worker {w.rank} got no training batch in epoch {state['epoch']}: "
                            "n_train is smaller than num_workers; add data or use fewer workers")


def _forward_backward(w: Worker, raw: dict[str, torch.Tensor]) -> None:
    """One micro-batch: its targets (the target source), the loss, the backward pass."""
    t0 = time.perf_counter()
    data_labels = raw["labels"]
    batch = w.targets.batch(raw, w.inner, w.state["global_step"])
    if batch["labels"] is not data_labels:  # sampled targets (gkd): tokens/s counts those
        w.tokens += int(batch["labels"].ne(-100).sum()) - int(data_labels.ne(-100).sum())
    with torch.autocast(w.device.type, dtype=w.amp_dtype, enabled=w.amp_dtype is not None):
        loss, parts = w.loss_step(w.model, batch, w.state["global_step"], w.run["total_steps"])
    loss_value = float(loss.detach())  # the step's one read: finite check and the mean
    _check_finite(loss_value, parts, w.state["global_step"])
    w.loss_sum += loss_value
    w.loss_n += 1
    loss_scaled = loss / w.cfg.gradient_accumulation_steps
    (w.scaler.scale(loss_scaled) if w.scaler else loss_scaled).backward()
    w.targets.after_step(w.loss_step, batch, parts, time.perf_counter() - t0)
    w.last_loss, w.last_parts = loss, parts


def first_step_line(w: Worker, now: float) -> str:
    """Where the seconds to the first optimizer step went, from the run's start (the launch,
    or the call in a process that ran one before). A Train worker adds when its process
    started (before: the Train controller and the placement) and when this loop began
    (between: the worker's own start, mostly importing torch and transformers again)."""
    base = w.run["launch_time"]
    own = (f"process started at {w.process_started - base:.1f} s, loop started at "
           f"{w.started - w.setup_seconds - base:.1f} s, " if w.process_started else "")
    return (f"[raydistill] first optimizer step {now - base:.1f} s after "
            f"{w.run.get('launched_by', 'launch')} (this worker: {own}{w.setup_seconds:.1f} s "
            f"setup, {now - w.started:.1f} s to the step)")


def _optimizer_step(w: Worker) -> None:
    _sync_projection_grads(w.projections, w.world)
    if w.scaler:
        w.scaler.unscale_(w.optimizer)
    params = [p for g in w.optimizer.param_groups for p in g["params"]]
    torch.nn.utils.clip_grad_norm_(params, w.cfg.max_grad_norm)
    if w.scaler:
        w.scaler.step(w.optimizer)
        w.scaler.update()
    else:
        w.optimizer.step()
    w.scheduler.step()
    w.optimizer.zero_grad(set_to_none=True)
    state, total = w.state, w.run["total_steps"]
    state["global_step"] += 1
    step = state["global_step"]
    if w.logger and step == w.first_step + 1 and w.run.get("launch_time"):
        print(first_step_line(w, time.time()), flush=True)
    # Every log_every_n_steps, and the first and the last step: a short run shows its loss too.
    if w.logger and (step % w.cfg.log_every_n_steps == 0 or step == w.first_step + 1
                     or step == total):
        now = time.time()
        w.logger.step(state, w.last_loss, w.last_parts, w.scheduler.get_last_lr()[0],
                      w.loss_step.temperature_at(step, total),
                      w.tokens * w.world / max(now - w.t0, 1e-9),
                      eta_s=(now - w.started) / (step - w.first_step) * (total - step))
        w.t0, w.tokens = now, 0
    if state["global_step"] >= total:
        w.done = True


def end_epoch(w: Worker) -> None:
    """Between epochs: the target source's exchange (e.g. the memory cache), the next epoch."""
    if w.done:
        return
    w.targets.end_epoch(lambda obj: _gather(obj, w.world), log=w.logger is not None)
    w.state["epoch"] += 1
    w.state["batch_in_epoch"] = 0
    if w.cfg.max_steps is None and w.state["epoch"] >= w.cfg.max_epochs:
        w.done = True


def validate_and_report(w: Worker, final: bool = False) -> None:
    """Validation metrics -> rank 0 writes the checkpoint -> every rank reports (the same
    number of times on every rank)."""
    cfg, state = w.cfg, w.state
    metrics = _validate(w.inner, w.tokenizer, w.val_rows, cfg, w.run, w.rank, w.world, w.device)
    metrics.update(step=state["global_step"], epoch=state["epoch"], final=final,
                   train_loss=w.loss_sum / max(w.loss_n, 1))
    if w.device.type == "cuda":  # this worker's peak so far: training, teacher and validation
        metrics["gpu_peak_mem_gib"] = torch.cuda.max_memory_allocated(w.device) / 2**30
    w.loss_sum, w.loss_n = 0.0, 0
    metrics.update(w.targets.metrics())
    name = cfg.val_metric
    if state["best_metric"] is None or metrics[name] > state["best_metric"]:
        state["best_metric"] = metrics[name]
    metrics["best_" + name] = state["best_metric"]
    state["history"].append(dict(metrics))
    rngs = _gather(rng_state(), w.world)
    if w.logger:
        w.logger.validation(metrics)
    local = w.run.get("local_run_dir")
    if local:
        os.makedirs(local, exist_ok=True)
    # (ignore_cleanup_errors: a checkpoint kept by this process has been moved out of tmp)
    with tempfile.TemporaryDirectory(dir=local, ignore_cleanup_errors=True) as tmp:
        ckpt = None
        if w.rank == 0:
            save_training_state(tmp, student=w.inner, tokenizer=w.tokenizer,
                                optimizer=w.optimizer, scheduler=w.scheduler, scaler=w.scaler,
                                projections=w.projections,
                                state={**state, "config": cfg.to_dict()}, rng_states=rngs)
            if local:  # Ray keeps no checkpoint in its local mode: this run keeps its own
                tmp = persist_local_checkpoint(local, tmp, metrics, keep=cfg.checkpoints_to_keep,
                                               metric=name)
            ckpt = ray.train.Checkpoint.from_directory(str(tmp))
        ray.train.report(metrics, checkpoint=ckpt)
    w.last_val_step = state["global_step"]
    w.model.train()


def build_optimizer(cfg: DistillConfig, student: torch.nn.Module, total_steps: int,
                    projections=None, tb_config=None):
    """AdamW over the trainable student weights (and TextBrewer projections, at their own
    rate) + linear warmup to ``learning_rate``, then the config's ``lr_scheduler``."""

    groups = [{"params": [p for p in student.parameters() if p.requires_grad],
               "weight_decay": cfg.weight_decay}]
    if projections is not None:
        from raydistill.distill.textbrewer import projection_param_groups

        groups += projection_param_groups(tb_config, projections, cfg.learning_rate)
    kw = dict(lr=cfg.learning_rate, eps=cfg.adam_epsilon, betas=(cfg.adam_beta1, cfg.adam_beta2))
    params = [p for g in groups for p in g["params"]]
    # The fused kernel: one pass over all weights instead of a Python loop over them (on CPU,
    # 13 against 63 ms a step for 7 M weights here); the same update (test_optimizer).
    fused = bool(params) and all(p.is_floating_point() and p.device.type in _FUSED_DEVICES
                                 for p in params)
    optimizer = torch.optim.AdamW(groups, fused=fused or None, **kw)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, cfg.warmup_steps, total_steps,
                                     _decay_steps(cfg, total_steps)))


def _decay_steps(cfg: DistillConfig, total_steps: int) -> int:
    if cfg.lr_scheduler == "linear":
        return total_steps - cfg.warmup_steps
    return cfg.lr_decay_steps or max(1, total_steps // 10)


def lr_factor(warmup: int, total: int, decay: int, step: int) -> float:
    """The learning rate at ``step`` as a fraction of the peak: linear warm-up over ``warmup``
    steps, the peak held, then linear decay to 0 over the last ``decay`` steps before ``total``
    (``decay = total - warmup`` is transformers' linear schedule)."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, min(1.0, (total - step) / max(1, decay)))


_FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused AdamW runs (mps/xpu: left to torch's default)


class _PlannedFeed:
    """This worker's batches of each epoch's plan, joined by id with cached logits if any."""

    def __init__(self, plan: dict[str, Any], train_shard, collate, rank: int, world: int) -> None:
        from raydistill.data.plan import PlanSpec

        lengths = plan["lengths"]
        self.ids, self.src, self.tgt = ray.get(lengths) if isinstance(lengths, ray.ObjectRef) else lengths
        self.spec = PlanSpec(**plan["spec"])
        self.sources = {"train": train_shard}
        self.columns = {"train": ["input_ids", "labels"]}
        if plan.get("cached_logits"):
            self.sources["teacher_logits"] = ray.train.get_dataset_shard("teacher_logits")
            self.columns["teacher_logits"] = None  # top-k and any cached hidden states
        self.collate, self.rank, self.world = collate, rank, world

    def epoch(self, epoch: int, skip: int):
        """(iterator over collated batches from index ``skip``, batches in this epoch)."""
        from raydistill.data.plan import epoch_plan, planned_batches, rank_batches

        mine = rank_batches(epoch_plan(self.src, self.tgt, self.spec, epoch), self.ids,
                            self.world, self.rank)
        return planned_batches(mine[skip:], self.sources, self.collate, self.columns), len(mine)


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _check_finite(loss: float, parts: dict[str, torch.Tensor], step: int) -> None:
    if math.isfinite(loss):
        return
    bad = [k for k, v in parts.items() if not torch.isfinite(torch.as_tensor(v))] or ["loss"]
    raise TrainingError(
        f"loss became {loss} at step {step} (component {', '.join(bad)}); lower "
        "learning_rate, set max_grad_norm, or use precision: fp32/bf16 instead of fp16")


def _sync_projection_grads(projections, world: int) -> None:
    # Projections live outside the DDP-wrapped student: average their gradients by hand.
    if projections is None or world == 1 or not dist.is_initialized():
        return
    for p in projections.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def _validate(model, tokenizer, val_rows, cfg: DistillConfig, run, rank, world, device):
    """Generate on this rank's share of val, gather everything, score on every rank."""
    model.eval()
    mine = val_rows[rank::world]
    t = time.time()
    with torch.no_grad():
        preds = generate_local(
            model, tokenizer, [r["source"] for r in mine], num_beams=cfg.eval_beams,
            length_penalty=cfg.length_penalty,
            max_length=cfg.eval_max_gen_length or cfg.val_max_target_length,
            batch_size=cfg.eval_batch_size, max_source_length=cfg.max_source_length,
            device=str(device)) if mine else []
    gathered = _gather([(r["id"], p) for r, p in zip(mine, preds)], world)
    by_id = dict(pair for part in gathered for pair in part)
    ordered = sorted(val_rows, key=lambda r: r["id"])
    scores = score(cfg.task, [by_id[r["id"]] for r in ordered], [r["target"] for r in ordered])
    return {f"val_{k}" if not k.startswith("val") else k: v for k, v in scores.items()} | {
        cfg.val_metric: scores[cfg.val_metric], "val_gen_seconds": time.time() - t,
        "val_n": len(ordered)}


def steps_per_epoch(n_train: int, world: int, batch_size: int, accumulation: int) -> tuple[int, int]:
    """(batches per worker per epoch, optimizer steps per epoch) for an equal split of n_train."""
    rows = n_train // world
    batches = max(1, math.ceil(rows / batch_size))
    return batches, max(1, math.ceil(batches / accumulation))
