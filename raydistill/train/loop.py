"""The Ray Train worker: restore -> setup -> loop -> report checkpoints -> cleanup.

Every rank calls ``ray.train.report`` the same number of times (once per validation); rank 0
alone writes the checkpoint folder, with the RNG states of all ranks gathered into it.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch
import torch.distributed as dist

from raydistill.config import DistillConfig
from raydistill.data.tokenize import make_collate_fn
from raydistill.distill.step import LossStep
from raydistill.errors import TrainingError
from raydistill.eval.generate import generate_local
from raydistill.eval.metrics import score
from raydistill.models.layers import load_seq2seq, load_teacher
from raydistill.train.checkpoint import load_training_state, rng_state, save_training_state


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
    """Ray Train entry point; ``config`` is ``DistillConfig.to_dict()`` plus a ``_run`` section."""
    config = dict(config)
    run = config.pop("_run")
    cfg = DistillConfig.from_dict(config)
    rank, world = _world()
    torch.set_num_threads(max(1, cfg.cpus_per_worker))
    device = ray.train.torch.get_device()

    # 1. Restore first: the checkpoint decides the weights, the RNG and where the data restarts.
    checkpoint = ray.train.get_checkpoint()
    _seed_everything(cfg.seed + rank)

    # 2. Models. The student starts from output_dir/student (written by the driver); the
    # teachers load only for kd, frozen, in teacher_dtype (bf16/fp16 on a GPU: half the bytes)
    # and with SDPA attention unless an attention match needs the weights (eager). Paths here
    # are local: the driver resolved any Hub id to its snapshot.
    student = load_seq2seq(run["student_init"], **_student_overrides(cfg))
    tokenizer = _load_tokenizer(run["tokenizer"])
    _freeze(student, cfg)
    teachers = []
    projections = None
    step_probe = LossStep(cfg, [], student) if cfg.uses_teacher else None
    # With cached logits the teacher ran before training (top-k in the batches): none loads here.
    if step_probe is not None and not step_probe.cached_logits:
        attn = {"attn_implementation": "eager"} if step_probe.needs_attentions else {}
        teachers = [load_teacher(p, cfg.teacher_dtype, device, **attn) for p in cfg.teacher_paths]
        if step_probe.needs_attentions:
            student = load_seq2seq(run["student_init"], attn_implementation="eager",
                                   **_student_overrides(cfg))
            _freeze(student, cfg)
    if step_probe is not None and step_probe.tb_config is not None \
            and step_probe.tb_config.intermediate_matches:
        from raydistill.distill.textbrewer import build_projections

        projections = build_projections(step_probe.tb_config).to(device)
    loss_step = LossStep(cfg, teachers, student, run.get("e_layer_ids"), run.get("d_layer_ids"),
                         projections)
    memory = None  # logit_cache: memory (the first epoch's teacher outputs, for the later ones)
    if loss_step.memory_logits:
        from raydistill.distill.logit_cache import DEFAULT_TOP_K, MemoryLogitCache

        memory = MemoryLogitCache(cfg.logit_cache_top_k or DEFAULT_TOP_K,
                                  hidden_layers=loss_step.cached_hidden,
                                  encoder_layers=loss_step.teacher_counts[0]
                                  if loss_step.cached_hidden else 0)
    layerdrop = bool(cfg.encoder_layerdrop or cfg.decoder_layerdrop)
    model = ray.train.torch.prepare_model(
        student, parallel_strategy_kwargs={"find_unused_parameters": layerdrop or cfg.freeze_encoder})
    inner = getattr(model, "module", model)

    # 3. Optimizer and schedule (linear warmup then linear decay to 0 at total_steps).
    total_steps = run["total_steps"]
    optimizer, scheduler = build_optimizer(cfg, inner, total_steps, projections,
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
    # Fault-injection hook for the resume tests: the first attempt dies after this step.
    crash_at = int(run.get("crash_at_step") or 0)

    # 4. Data: this worker's shard of train; the whole (small) val set, split across ranks.
    # A planned run (token budget, sortish, cached logits) gets the whole train set and pulls
    # the rows of its own batches of each epoch's plan (raydistill.data.plan).
    train_shard = ray.train.get_dataset_shard("train")
    val_rows = list(ray.train.get_dataset_shard("val").iter_rows())
    collate = make_collate_fn(tokenizer.pad_token_id)
    feed = _PlannedFeed(run["plan"], train_shard, collate, rank, world) if run.get("plan") else None
    logger = _Logger(cfg, run, rank) if rank == 0 else None

    running = {"sum": 0.0, "n": 0}  # mean training loss between validations

    def validate_and_report(final: bool = False) -> None:
        metrics = _validate(inner, tokenizer, val_rows, cfg, run, rank, world, device)
        metrics.update(step=state["global_step"], epoch=state["epoch"], final=final,
                       train_loss=running["sum"] / max(running["n"], 1))
        if device.type == "cuda":  # this worker's peak so far: training, teacher and validation
            metrics["gpu_peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        running.update(sum=0.0, n=0)
        if memory is not None:  # this worker's view: what it holds, how often it served a batch
            metrics.update(logit_cache_examples=len(memory),
                           logit_cache_hit_rate=memory.take_hit_rate())
        name = cfg.val_metric
        if state["best_metric"] is None or metrics[name] > state["best_metric"]:
            state["best_metric"] = metrics[name]
        metrics["best_" + name] = state["best_metric"]
        state["history"].append({k: v for k, v in metrics.items()})
        rngs = _gather(rng_state(), world)
        if logger:
            logger.validation(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                save_training_state(tmp, student=inner, tokenizer=tokenizer, optimizer=optimizer,
                                    scheduler=scheduler, scaler=scaler, projections=projections,
                                    state={**state, "config": cfg.to_dict()}, rng_states=rngs)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)

    # 5. The loop. Optimizer steps count toward total_steps; accumulation spans micro-batches.
    model.train()
    done = state["global_step"] >= total_steps
    last_val_step = state["global_step"] if checkpoint is not None else -1
    t0, tokens = time.time(), 0
    while not done:
        skip = state["batch_in_epoch"]
        if feed is None:
            it = train_shard.iter_torch_batches(
                batch_size=cfg.train_batch_size, collate_fn=collate,
                local_shuffle_buffer_size=None if cfg.seed is None else 4 * cfg.train_batch_size,
                local_shuffle_seed=cfg.seed + state["epoch"] * 1000 + rank,
            )
            batches_per_epoch, start = run["batches_per_epoch"], 0
        else:  # the plan starts at the resume position: skipped batches are never read
            it, batches_per_epoch = feed.epoch(state["epoch"], skip)
            start = skip
        val_every = max(1, round(cfg.val_check_interval * batches_per_epoch))
        micro, seen = 0, start
        for i, batch in enumerate(it, start=start):
            seen += 1
            if i < skip:  # resume: these batches were consumed before the checkpoint
                continue
            # Counted on the host, before the copy: on a GPU every read of a device value
            # waits for the queued work, and a step reads one (the loss) in all.
            tokens += int(batch["attention_mask"].sum()) + int(batch["labels"].ne(-100).sum())
            if memory is not None:  # the teacher's outputs, when this batch's are all kept
                ids = batch["id"].tolist()
                batch.update(memory.lookup(ids) or {})
            batch = {k: v.to(device) for k, v in batch.items() if k != "id"}
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss, parts = loss_step(model, batch, state["global_step"], total_steps)
            if loss_step.last_teacher is not None:  # the live teacher ran: keep its outputs
                memory.record(ids, *loss_step.last_teacher, batch["attention_mask"],
                              batch["labels"].ne(-100))
                loss_step.last_teacher = None
            loss_value = float(loss.detach())  # the step's one read: finite check and the mean
            _check_finite(loss_value, parts, state["global_step"])
            running["sum"] += loss_value
            running["n"] += 1
            loss_scaled = loss / cfg.gradient_accumulation_steps
            (scaler.scale(loss_scaled) if scaler else loss_scaled).backward()
            micro += 1
            state["batch_in_epoch"] = i + 1
            stepped = micro % cfg.gradient_accumulation_steps == 0 or i + 1 == batches_per_epoch
            if stepped:
                _sync_projection_grads(projections, world)
                if scaler:
                    scaler.unscale_(optimizer)
                params = [p for g in optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state["global_step"] += 1
                if logger and state["global_step"] % cfg.log_every_n_steps == 0:
                    dt = time.time() - t0
                    logger.step(state, loss, parts, scheduler.get_last_lr()[0],
                                loss_step.temperature_at(state["global_step"], total_steps),
                                tokens * world / max(dt, 1e-9))
                    t0, tokens = time.time(), 0
                if state["global_step"] >= total_steps:
                    done = True
                if crash_at and checkpoint is None and state["global_step"] == crash_at + 1:
                    # The controller registers a reported checkpoint when it next polls this
                    # worker; give it that poll, then die as a killed process would.
                    time.sleep(5)
                    os._exit(1)
            # val_check_steps (TextBrewer's ckpt_steps) counts optimizer steps; otherwise a
            # fraction of the epoch's batches.
            due = (stepped and state["global_step"] % cfg.val_check_steps == 0
                   if cfg.val_check_steps else state["batch_in_epoch"] % val_every == 0)
            if done or due:
                if state["global_step"] != last_val_step:
                    validate_and_report(final=done)
                    last_val_step = state["global_step"]
                    model.train()
            if done or i + 1 >= batches_per_epoch:
                break
        if seen == 0:
            raise TrainingError(f"worker {rank} got no training batch in epoch {state['epoch']}: "
                                "n_train is smaller than num_workers; add data or use fewer workers")
        if not done:
            if memory is not None:  # every worker gets what the others recorded this epoch
                parts = _gather(memory.take_new(), world)
                for part in parts:
                    memory.merge(part)
                if logger and any(parts):
                    print(f"[raydistill] teacher logits: {len(memory)} examples kept in memory "
                          f"({memory.nbytes / 2**20:.0f} MiB per worker) after epoch "
                          f"{state['epoch']}", flush=True)
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            if cfg.max_steps is None and state["epoch"] >= cfg.max_epochs:
                done = True
    if state["global_step"] != last_val_step:
        validate_and_report(final=True)
    if logger:
        logger.close()


def build_optimizer(cfg: DistillConfig, student: torch.nn.Module, total_steps: int,
                    projections=None, tb_config=None):
    """AdamW over the trainable student weights (and TextBrewer projections, at their own
    rate) + linear warmup to ``learning_rate``, then linear decay to 0 at ``total_steps``."""
    from transformers import get_linear_schedule_with_warmup

    groups = [{"params": [p for p in student.parameters() if p.requires_grad],
               "weight_decay": cfg.weight_decay}]
    if projections is not None:
        from raydistill.distill.textbrewer import projection_param_groups

        groups += projection_param_groups(tb_config, projections, cfg.learning_rate)
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, eps=cfg.adam_epsilon,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2))
    return optimizer, get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, total_steps)


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


class _Logger:
    """Rank 0's console lines, TensorBoard events and (optionally) wandb."""

    def __init__(self, cfg: DistillConfig, run: dict[str, Any], rank: int) -> None:
        self.cfg = cfg
        self.tb = None
        self.wandb = None
        if cfg.logger in ("tensorboard", "wandb"):
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=cfg.log_dir or str(Path(run["output_dir"]) / "tensorboard"))
        if cfg.logger == "wandb":
            import wandb

            os.environ.setdefault("WANDB_DIR", str(Path(run["output_dir"])))
            # Offline unless the user logged in (an API key is configured).
            mode = "online" if os.environ.get("WANDB_API_KEY") else os.environ.get("WANDB_MODE", "offline")
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "raydistill"),
                                    name=run.get("run_name"), config=cfg.to_dict(), mode=mode,
                                    resume="allow")

    def step(self, state, loss, parts, lr: float, temperature: float, tok_s: float) -> None:
        step = state["global_step"]
        comps = " ".join(f"{k}={float(v):.4f}" for k, v in parts.items())
        print(f"[raydistill] step {step} epoch {state['epoch']} loss={float(loss):.4f} {comps} "
              f"lr={lr:.3g} T={temperature:g} tok/s={tok_s:.0f}", flush=True)
        values = {"train/loss": float(loss), "train/lr": lr, "train/temperature": temperature,
                  "train/tokens_per_s": tok_s} | {f"train/{k}": float(v) for k, v in parts.items()}
        self._log(values, step)

    def validation(self, metrics: dict[str, Any]) -> None:
        shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "final"}
        print("[raydistill] validation " + " ".join(f"{k}={v:.4g}" for k, v in shown.items()),
              flush=True)
        self._log({f"val/{k}": v for k, v in shown.items()}, metrics["step"])

    def _log(self, values: dict[str, float], step: int) -> None:
        if self.tb:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def steps_per_epoch(n_train: int, world: int, batch_size: int, accumulation: int) -> tuple[int, int]:
    """(batches per worker per epoch, optimizer steps per epoch) for an equal split of n_train."""
    rows = n_train // world
    batches = max(1, math.ceil(rows / batch_size))
    return batches, max(1, math.ceil(batches / accumulation))
