"""The Ray Train worker: restore -> setup -> loop -> report checkpoints -> cleanup.

Every rank calls ``ray.train.report`` the same number of times (once per validation); rank 0
writes the checkpoint folder, with the RNG states of all ranks gathered into it (with
``parallel: fsdp`` every rank also writes its own shard, and Ray merges the folders). How the
student and teacher are wrapped, saved and loaded is train/parallel.py's decision."""

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
from raydistill.data.plan import PlannedFeed as _PlannedFeed
from raydistill.data.tokenize import make_collate_fn
from raydistill.distill.step import LossStep, run_needs
from raydistill.errors import TrainingError
from raydistill.models.generate import generate_local
from raydistill.metrics import score
from raydistill.models.layers import checkpoint_layers, load_seq2seq, load_teacher
from raydistill.runtime import process_start_time
from raydistill.train.checkpoint import (
    load_training_state,
    local_checkpoints,
    newest_whole_checkpoint,
    persist_local_checkpoint,
    rng_state,
    save_training_state,
)
from raydistill.train.device import train_device
from raydistill.train import layerdrop
from raydistill.train.optim import build_optimizer, lr_factor  # noqa: F401 (lr_factor: re-export)
from raydistill.train.parallel import (clip_grad_norm, gathered_root, grad_scaler, grad_sync,
                                       is_sharded, student_dtype, wrap_student, wrap_teacher)
from raydistill.train.logger import Logger
from raydistill.train.prefetch import HostBatch, Prefetcher, host_batch, to_device
from raydistill.train.tally import StepTally, read_step
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
    """(autocast dtype, GradScaler): bf16 where the GPU has it, else fp16 (with a GradScaler);
    plain fp32 on CPU. A sharded student computes in its MixedPrecisionPolicy's dtype instead,
    with a ShardedGradScaler for fp16 (train/parallel.py)."""
    if cfg.parallel == "fsdp":
        fp16 = student_dtype(cfg.precision, device) == torch.float16
        return None, grad_scaler(device) if fp16 else None
    if device.type != "cuda" or cfg.precision == "fp32":
        return None, None
    if cfg.precision == "bf16" or (cfg.precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def _student_overrides(cfg: DistillConfig) -> dict[str, float]:
    keys = ("dropout", "attention_dropout", "encoder_layerdrop", "decoder_layerdrop")
    return {k: getattr(cfg, k) for k in keys if getattr(cfg, k) is not None}


def _set_up_student(student, cfg: DistillConfig) -> None:
    """finetune.py's freeze_embeds (token + position embeddings) and freeze_encoder; gradient
    checkpointing; the layerdrop draws every worker shares (train/layerdrop.py)."""
    if cfg.gradient_checkpointing:
        checkpoint_layers(student)
    layerdrop.install(student, cfg.seed)
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
    model: torch.nn.Module  # the student as trained (DDP-wrapped with several workers, or sharded)
    inner: torch.nn.Module  # the student itself (a sharded student is its own module)
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
    tally: Any = None  # sums kept on the device, read once per log line (train/tally.py)
    t0: float = field(default_factory=time.time)  # the logging window: start, tokens seen
    tokens: int = 0  # counted on the host, before the copy (train/prefetch.py)
    last_loss: Any = None  # the last micro-batch's loss and components (for the step line)
    last_parts: Any = None
    started: float = field(default_factory=time.time)  # for the ETA: when, and from which step
    first_step: int = 0
    # Seconds of training the checkpoint this loop resumed from had behind it (its
    # ``elapsed_s``): a validation's ``elapsed_s`` counts the run's training across resumes.
    elapsed_before: float = 0.0
    # The same for this process's CPU seconds (all its threads): the cost of the training on a
    # machine shared with other work, where wall-clock time measures the load as well.
    cpu_before: float = 0.0
    cpu_started: float = field(default_factory=time.process_time)
    setup_seconds: float = 0.0  # models, optimizer, restore and data handles
    # When a Train worker's process started, for the first step's line; None in the driver's
    # process (num_workers: 0). (This loop started setup_seconds before ``started``.)
    process_started: float | None = None

    def __post_init__(self) -> None:
        if self.tally is None:
            self.tally = StepTally(self.device)


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
    device = train_device(cfg.use_gpu)  # use_gpu decides, in Ray's local mode too
    checkpoint = newest_whole_checkpoint(ray.train.get_checkpoint())
    if checkpoint is None and run.get("local_run_dir"):  # this process: its own checkpoints
        found = local_checkpoints(run["local_run_dir"])
        checkpoint = ray.train.Checkpoint.from_directory(str(found[-1][0])) if found else None
    _seed_everything(cfg.seed + rank)

    needs = run_needs(cfg)
    student, teachers, projections = _models(cfg, run, needs, device)
    loss_step = LossStep(cfg, teachers, student, run.get("e_layer_ids"), run.get("d_layer_ids"),
                         projections, vocab_map=run.get("vocab_map"),
                         source_vocab_map=run.get("source_vocab_map"))
    model = wrap_student(student, cfg, device)  # DDP, or FSDP2 shards (train/parallel.py)
    inner = getattr(model, "module", model)  # a sharded student is its own module

    # Optimizer and schedule (linear warmup then linear decay to 0 at total_steps).
    optimizer, scheduler = build_optimizer(cfg, inner, run["total_steps"], projections,
                                           loss_step.tb_config)
    amp_dtype, scaler = _autocast(cfg, device)
    state = {"global_step": 0, "epoch": 0, "batch_in_epoch": 0, "best_metric": None,
             "history": []}
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:  # a sharded one: every rank reads its shard
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
                  elapsed_before=state.get("elapsed_s", 0.0), cpu_before=state.get("cpu_s", 0.0),
                  process_started=process_start_time() if cfg.num_workers else None)


def _models(cfg: DistillConfig, run: dict[str, Any], needs, device):
    """(student, teachers, projections). The student starts from output_dir/student (written by
    the driver); the teachers load only when a live teacher is needed, frozen, in
    teacher_dtype (bf16/fp16 on a GPU: half the bytes) and with SDPA attention unless an
    attention match needs the weights (eager). Paths are local: the driver resolved Hub ids."""
    attn = {"attn_implementation": "eager"} if needs.attentions else {}
    student = load_seq2seq(run["student_init"], **attn, **_student_overrides(cfg))
    _set_up_student(student, cfg)
    sharded = cfg.teacher_parallel == "fsdp"  # loaded on the CPU, each worker keeps its shard
    teachers = [wrap_teacher(load_teacher(p, cfg.teacher_dtype, device, place=not sharded,
                                          **attn), cfg, device)
                for p in cfg.teacher_paths] if needs.live_teachers else []
    projections = None
    if needs.projections:
        from raydistill.distill.textbrewer import build_projections

        # The same initial weights on every rank (the global RNG is seeded per rank): they are
        # whole on every rank and only their averaged gradients keep them equal after.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            projections = build_projections(needs.tb_config).to(device)
    return student, teachers, projections


def _epoch_batches(w: Worker):
    """(this worker's batches of the current epoch from the resume position, prepared two
    ahead on a thread as ``HostBatch``es, their number, the index of the first one)."""
    cfg, state = w.cfg, w.state
    if w.feed is not None:  # the plan starts at the resume position: skipped batches never read
        it, n = w.feed.epoch(state["epoch"], state["batch_in_epoch"])
        start = state["batch_in_epoch"]
    else:
        # device="cpu", not Ray's copy to the GPU: counted on the host, copied pinned (prefetch)
        it = w.train_shard.iter_torch_batches(
            batch_size=cfg.train_batch_size, collate_fn=w.collate, device="cpu",
            local_shuffle_buffer_size=None if cfg.seed is None else 4 * cfg.train_batch_size,
            local_shuffle_seed=cfg.seed + state["epoch"] * 1000 + w.rank,
        )
        n, start = w.run["batches_per_epoch"], 0
    prepare = functools.partial(host_batch, pin=w.device.type == "cuda")
    return Prefetcher(it, prepare, depth=2), n, start


def run_epoch(w: Worker) -> None:
    """One epoch (or what is left of it): micro-batches, accumulation, optimizer steps,
    logging; validates and reports when due. Optimizer steps count toward total_steps."""
    cfg, state = w.cfg, w.state
    skip = state["batch_in_epoch"]
    batches, batches_per_epoch, start = _epoch_batches(w)
    val_every = max(1, round(cfg.val_check_interval * batches_per_epoch))
    micro, seen = 0, start
    with batches:
        for i, batch in enumerate(batches, start=start):
            seen += 1
            if i < skip:  # resume: these batches were consumed before the checkpoint
                continue
            w.tokens += batch.source_tokens + batch.target_tokens  # counted before the copy
            stepping = (micro + 1) % cfg.gradient_accumulation_steps == 0 or i + 1 == batches_per_epoch
            _forward_backward(w, batch, sync=stepping)
            micro += 1
            state["batch_in_epoch"] = i + 1
            if stepping:
                _optimizer_step(w)
            # val_check_steps (TextBrewer's ckpt_steps) counts optimizer steps, else epoch batches
            due = (stepping and state["global_step"] % cfg.val_check_steps == 0
                   if cfg.val_check_steps else state["batch_in_epoch"] % val_every == 0)
            if (w.done or due) and state["global_step"] != w.last_val_step:
                validate_and_report(w, final=w.done)
            if w.done or i + 1 >= batches_per_epoch:
                break
    if seen == 0:
        raise TrainingError(f"worker {w.rank} got no training batch in epoch {state['epoch']}: "
                            "n_train is smaller than num_workers; add data or use fewer workers")


def _forward_backward(w: Worker, host: HostBatch, sync: bool = True) -> None:
    """One micro-batch: the copy to the device, its targets (the target source), the loss, the
    backward pass; nothing is read on the host (the loss goes to the tally). ``sync`` False:
    no DDP all-reduce (the gradients add up locally; the step's last micro-batch reduces them)."""
    t0, step = time.perf_counter(), w.state["global_step"]
    moved = to_device(host.tensors, w.device)
    layerdrop.begin(w.inner, step)
    batch = w.targets.batch(moved, w.inner, step)
    if batch["labels"] is not moved["labels"]:  # sampled targets (gkd): tokens/s counts those
        w.tally.add_tokens(batch["labels"].ne(-100).sum() - host.target_tokens)
    with grad_sync(w.model, sync):
        with torch.autocast(w.device.type, dtype=w.amp_dtype, enabled=w.amp_dtype is not None):
            loss, parts = w.loss_step(w.model, batch, step, w.run["total_steps"])
        loss_scaled = loss / w.cfg.gradient_accumulation_steps
        (w.scaler.scale(loss_scaled) if w.scaler else loss_scaled).backward()
    w.tally.add_loss(loss, step)
    w.targets.after_step(w.loss_step, batch, parts, time.perf_counter() - t0)
    w.last_loss, w.last_parts = loss.detach(), parts


def _read_step(w: Worker) -> tuple[dict[str, float], float, dict[str, Any]]:
    """``read_step`` (the one host read); the tokens only the device counted join w.tokens."""
    sums, loss, parts = read_step(w.tally, w.last_loss, w.last_parts or {})
    w.tokens += int(sums["tokens"])
    return sums, loss, parts


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
    clip_grad_norm(params, w.cfg.max_grad_norm)  # the whole gradient's norm, sharded or not
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
    # Every rank reads then (its finite check); rank 0 prints.
    if step % w.cfg.log_every_n_steps == 0 or step == w.first_step + 1 or step == total:
        _, loss, parts = _read_step(w)
        now = time.time()
        if w.logger:
            w.logger.step(state, loss, parts, w.scheduler.get_last_lr()[0],
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
    sums, _, _ = _read_step(w)  # first: a non-finite loss stops the run before a checkpoint
    train_loss = sums["loss_sum"] / max(w.tally.losses, 1)
    w.tally.reset_loss()
    metrics = _validate(w.inner, w.tokenizer, w.val_rows, cfg, w.run, w.rank, w.world, w.device)
    # The run's seconds of training so far: this loop's, after those before its checkpoint
    # (work lost after a checkpoint and start-ups not counted): the learning curves' clock.
    state["elapsed_s"] = round(w.elapsed_before + time.time() - w.started, 2)
    state["cpu_s"] = round(w.cpu_before + time.process_time() - w.cpu_started, 2)
    metrics.update(step=state["global_step"], epoch=state["epoch"], final=final,
                   train_loss=train_loss, elapsed_s=state["elapsed_s"], cpu_s=state["cpu_s"])
    if w.device.type == "cuda":  # this worker's peak so far: training, teacher and validation
        metrics["gpu_peak_mem_gib"] = torch.cuda.max_memory_allocated(w.device) / 2**30
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
        if w.rank == 0 or is_sharded(w.inner):  # sharded: each rank writes its own shard
            save_training_state(tmp, student=w.inner, tokenizer=w.tokenizer,
                                optimizer=w.optimizer, scheduler=w.scheduler, scaler=w.scaler,
                                projections=w.projections,
                                state={**state, "config": cfg.to_dict()}, rng_states=rngs,
                                rank=w.rank)
            if local:  # Ray keeps no checkpoint in its local mode: this run keeps its own
                tmp = persist_local_checkpoint(local, tmp, metrics, keep=cfg.checkpoints_to_keep,
                                               metric=name)
        if w.rank == 0 or is_sharded(w.inner):  # Ray merges the ranks' folders into one
            ckpt = ray.train.Checkpoint.from_directory(str(tmp))
        ray.train.report(metrics, checkpoint=ckpt)
    w.last_val_step = state["global_step"]
    w.model.train()


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


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
    sharded = is_sharded(model)
    # A sharded student generates in lockstep (each forward gathers layers from every rank):
    # every rank the same number of rows (the short ones repeat one, dropped after), and
    # generate's synced_gpus keeps stepping until every rank's batch is done.
    sources = [r["source"] for r in mine]
    if sharded:
        sources += [val_rows[0]["source"]] * (-(-len(val_rows) // world) - len(mine))
    with torch.no_grad(), gathered_root(model):
        preds = generate_local(
            model, tokenizer, sources, num_beams=cfg.eval_beams,
            length_penalty=cfg.length_penalty,
            max_length=cfg.eval_max_gen_length or cfg.val_max_target_length,
            batch_size=cfg.eval_batch_size, max_source_length=cfg.max_source_length,
            device=str(device), synced=sharded) if sources else []
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
