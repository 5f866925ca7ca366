"""One training process of tests/unit/train/test_parallel.py (not a test module itself).

Started like torchrun starts one: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` in
the environment, and ``python fsdp_worker.py SPEC.json``: gloo on the CPU, or nccl on the GPU of
its rank where the spec says ``"device": "cuda"`` (tests/gpu/test_fsdp_cuda.py). For each job of the
spec it builds the worker loop's ``Worker`` by hand (the student DDP-wrapped or sharded by
train/parallel.py, the teacher replicated or sharded) and runs the product's ``run_epoch``:
its micro-batches, accumulation, clipping, validation through the (sharded) student and
checkpoints. ``ray.train.report`` is replaced by a copy of each rank's checkpoint folder into
one folder per step, as Ray Train merges them. Rank 0 writes what it saw to ``RESULTS``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


def rows(tokenizer, n: int, seed: int) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    vocab = len(tokenizer)
    src = [rng.integers(5, vocab, int(rng.integers(3, 12))).astype(np.int32) for _ in range(n)]
    tgt = [np.append(rng.integers(5, vocab, int(rng.integers(2, 8))),
                     tokenizer.eos_token_id).astype(np.int32) for _ in range(n)]
    return {"id": list(range(n)), "input_ids": src, "labels": tgt}


class Shard:
    """What the loop reads of a Ray Data shard: iter_torch_batches over fixed rows."""

    def __init__(self, data: dict[str, list]) -> None:
        self.data = data

    def iter_torch_batches(self, *, batch_size, collate_fn, **_):
        n = len(self.data["id"])
        for a in range(0, n, batch_size):
            part = {}
            for k, v in self.data.items():
                col = v[a:a + batch_size]
                if isinstance(col[0], np.ndarray):
                    arr = np.empty(len(col), dtype=object)
                    arr[:] = col
                    part[k] = arr
                else:
                    part[k] = np.asarray(col)
            yield collate_fn(part)


def build(job: dict, rank: int, world: int, device: torch.device):
    from transformers import AutoTokenizer

    from raydistill.config import DistillConfig
    from raydistill.data.tokenize import make_collate_fn
    from raydistill.distill.step import LossStep, run_needs
    from raydistill.train import loop, parallel
    from raydistill.train.optim import build_optimizer
    from raydistill.train.targets import make_targets

    cfg = DistillConfig.from_dict({**job["config"], "num_workers": world})
    torch.manual_seed(cfg.seed + rank)
    run = {"student_init": job["student"], "tokenizer": job["student"], "total_steps":
           job["total_steps"], "batches_per_epoch": job["batches"], "output_dir": job["out"]}
    needs = run_needs(cfg)
    student, teachers, projections = loop._models(cfg, run, needs, device)
    loss_step = LossStep(cfg, teachers, student, job.get("e_ids"), job.get("d_ids"), projections)
    if cfg.parallel == "fsdp":
        model = parallel.wrap_student(student, cfg, device)
    elif device.type == "cuda":  # what Ray Train's prepare_model does on a GPU
        model = torch.nn.parallel.DistributedDataParallel(
            student.to(device), device_ids=[device], **parallel.ddp_kwargs(cfg))
    else:  # what Ray Train's prepare_model does on the CPU
        model = torch.nn.parallel.DistributedDataParallel(student, **parallel.ddp_kwargs(cfg))
    inner = getattr(model, "module", model)
    model.train()  # as setup() leaves it (from_pretrained gives eval mode)
    optimizer, scheduler = build_optimizer(cfg, inner, job["total_steps"], projections,
                                           loss_step.tb_config)
    amp_dtype, scaler = loop._autocast(cfg, device)  # bf16 autocast for ddp on a GPU; else none
    state = {"global_step": 0, "epoch": 0, "batch_in_epoch": 0, "best_metric": None,
             "history": []}
    tokenizer = AutoTokenizer.from_pretrained(job["student"])
    data = rows(tokenizer, job["batches"] * cfg.train_batch_size * world, seed=1)
    mine = {k: v[rank::world] for k, v in data.items()}
    val = [{"id": i, "source": s, "target": s.split()[0]} for i, s in enumerate(job["val"])]
    return loop.Worker(
        cfg=cfg, run=run, rank=rank, world=world, device=device, model=model, inner=inner,
        tokenizer=tokenizer, loss_step=loss_step,
        targets=make_targets(cfg, needs, loss_step, device, state), projections=projections,
        optimizer=optimizer, scheduler=scheduler, scaler=scaler, amp_dtype=amp_dtype, state=state,
        resumed=False, train_shard=Shard(mine), val_rows=val,
        collate=make_collate_fn(tokenizer.pad_token_id), feed=None, logger=None,
        last_val_step=-1)


def whole_state(model) -> dict[str, torch.Tensor]:
    """The whole student's weights on every rank (gathered from the shards when sharded)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from raydistill.train import parallel

    if parallel.is_sharded(model):
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {k: v.detach().clone() for k, v in getattr(model, "module", model).state_dict().items()}


ORIGINAL: dict = {}  # the loop's functions, before the first job wraps them


def run_job(job: dict, rank: int, world: int, device: torch.device) -> dict:
    from raydistill.train import loop

    from raydistill.train import targets

    ORIGINAL.setdefault("step", loop._optimizer_step)
    ORIGINAL.setdefault("generate", loop.generate_local)
    ORIGINAL.setdefault("sample", targets.sample_targets)
    from raydistill.train.checkpoint import load_training_state

    out = Path(job["out"])
    seen: dict = {"losses": [], "generated": [], "reports": [], "samples": [], "moved": [],
                  "scales": []}

    def report(metrics, checkpoint=None):  # Ray Train's merge of the ranks' folders
        seen["reports"].append(metrics["step"])
        if checkpoint is not None:
            shutil.copytree(checkpoint.path, out / f"step_{metrics['step']}", dirs_exist_ok=True)
        dist.barrier()

    step, generate, sample = ORIGINAL["step"], ORIGINAL["generate"], ORIGINAL["sample"]

    def record_step(w):
        seen["losses"].append(float(w.last_loss))
        if job.get("inf_at") == [w.state["global_step"] + 1, rank]:  # this rank's shard overflows
            grad = next(p.grad for p in w.inner.parameters() if p.grad is not None)
            getattr(grad, "_local_tensor", grad).fill_(float("inf"))
        before = [local(p).clone() for p in w.inner.parameters()]
        step(w)
        seen["moved"].append(any(not torch.equal(b, local(p))
                                 for b, p in zip(before, w.inner.parameters())))
        if w.scaler is not None:
            seen["scales"].append(w.scaler.get_scale())

    def record_generation(model, tokenizer, sources, **kw):
        preds = generate(model, tokenizer, sources, **kw)
        seen["generated"].append([sources, preds])
        return preds

    def record_sample(model, batch, g, *rest):  # every rank's sampled labels, in rank order
        labels = sample(model, batch, g, *rest)
        everyone: list = [None] * world
        dist.all_gather_object(everyone, labels.tolist())
        seen["samples"].append(everyone)
        return labels

    loop.ray.train.report, loop._optimizer_step, loop.generate_local = \
        report, record_step, record_generation
    targets.sample_targets = record_sample
    from raydistill.train import parallel

    ORIGINAL.setdefault("dtype", parallel.student_dtype)
    dtype = ORIGINAL["dtype"]
    if job.get("fp16_on_cpu"):  # the CPU standing in for a GPU without bf16 (precision: fp16)
        dtype = lambda precision, device: torch.float16 if precision == "fp16" else None  # noqa: E731
    parallel.student_dtype = loop.student_dtype = dtype
    w = build(job, rank, world, device)
    record_dtypes(w, seen)
    new_name = hasattr(type(w.inner), "is_activation_checkpointing")  # transformers >= 5.2x
    seen["checkpointing"] = (w.inner.is_activation_checkpointing if new_name
                             else w.inner.is_gradient_checkpointing)
    if isinstance(w.model, torch.nn.parallel.DistributedDataParallel):
        seen["bucket_views"] = w.model._get_ddp_logging_data()["gradient_as_bucket_view"]
    trained_layers = record_layers(w)
    if job.get("resume"):  # a new worker started from a checkpoint folder, as setup() does
        w.state = load_training_state(job["resume"], student=w.inner, optimizer=w.optimizer,
                                      scheduler=w.scheduler, projections=w.projections,
                                      rank=rank)
        w.first_step = w.last_val_step = w.state["global_step"]
        save_whole(w.model, out / "loaded.safetensors", rank)
    while not w.done:
        loop.run_epoch(w)
        loop.end_epoch(w)
    save_whole(w.model, out / "final.safetensors", rank)
    everyone = [None] * world
    dist.all_gather_object(everyone, seen["moved"])
    seen["moved"] = everyone  # per rank: whether each optimizer step changed its weights
    everyone = [None] * world
    dist.all_gather_object(everyone, trained_layers)
    seen["layers_agree"], seen["layers"] = all(x == trained_layers for x in everyone), trained_layers
    seen["moments"] = sorted({str(s["exp_avg"].dtype) for s in w.optimizer.state.values()})
    if w.projections is not None:  # TextBrewer projections: whole on every rank, and equal
        mine = {k: v.detach().clone() for k, v in w.projections.state_dict().items()}
        everyone = [None] * world
        dist.all_gather_object(everyone, mine)
        seen["projections_agree"] = all(torch.equal(mine[k], other[k])
                                        for other in everyone for k in mine)
        if rank == 0:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in mine.items()},
                      str(out / "projections.safetensors"))
    return seen


def record_dtypes(w, seen: dict) -> None:
    """The dtypes a run trains in: its master weights (the optimizer's parameters: a sharded
    student's are its DTensor shards), and the weights the first encoder layer computes with
    (read by a hook that runs after FSDP2's own pre-forward hook, which gathers them)."""
    from torch.distributed.tensor import DTensor

    params = [p for g in w.optimizer.param_groups for p in g["params"]]
    seen["masters"] = sorted({str(p.dtype) for p in params})
    seen["masters_sharded"] = all(isinstance(p, DTensor) for p in params)
    seen["gathered"] = []
    layer = next(m[0] for name, m in w.inner.get_encoder().named_modules()
                 if name.rsplit(".", 1)[-1] in ("layers", "block"))

    def pre(module, args):
        dtype = str(next(module.parameters()).dtype)
        if dtype not in seen["gathered"]:
            seen["gathered"].append(dtype)

    layer.register_forward_pre_hook(pre)


def local(p: torch.Tensor) -> torch.Tensor:
    """A parameter's tensor on this rank (its shard when sharded)."""
    return getattr(p, "_local_tensor", p).detach()


def record_layers(w) -> list[str]:
    """The names of the student's layers each training forward runs, in order (layerdrop:
    every rank must run the same ones)."""
    ran: list[str] = []
    for part_name in ("encoder", "decoder"):
        part = getattr(w.inner, f"get_{part_name}")()
        for name, module in part.named_modules():
            if name.rsplit(".", 2)[-2:-1] in (["layers"], ["block"]):
                module.register_forward_pre_hook(
                    lambda m, a, n=f"{part_name}.{name}": ran.append(n) if m.training else None)
    return ran


def save_whole(model, path: Path, rank: int) -> None:
    from safetensors.torch import save_file

    weights = whole_state(model)  # every rank takes part in the gather
    if rank == 0:  # clones: tied weights are one tensor under several names
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in weights.items()},
                  str(path))


def main() -> None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    spec = json.loads(Path(sys.argv[1]).read_text())
    device = torch.device(spec.get("device", "cpu"))
    if device.type == "cuda":  # this rank's own GPU, before nccl starts on it
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    results = {}
    for job in spec["jobs"]:
        Path(job["out"]).mkdir(parents=True, exist_ok=True)
        results[job["name"]] = run_job(job, rank, world, device)
    if rank == 0:
        Path(spec["results"]).write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
