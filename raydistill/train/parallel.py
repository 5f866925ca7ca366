"""How a student or teacher is spread over the workers, and how its state is saved and loaded.

- ``parallel: ddp`` (the default): every worker holds the whole student; Ray Train's
  ``prepare_model`` wraps it in DistributedDataParallel, which all-reduces the gradients.
- ``parallel: fsdp``: FSDP2 (``fully_shard``) on each encoder and decoder layer, then on the
  root (embeddings, tied output layer, final norms), as torchtune's ``shard_model`` does. Each
  worker keeps 1/N of the weights, gradients and AdamW state; a layer's weights are gathered
  for its forward and backward and freed after (``reshard_after_forward``). On a GPU the
  gathered weights are bf16 (fp16 on GPUs without bf16, with ``grad_scaler``) and gradients
  are reduced in fp32 (``MixedPrecisionPolicy``); on the CPU everything stays fp32.
- ``teacher_parallel: fsdp``: a frozen teacher sharded the same way, forward only.

Checkpoints of a sharded student go through ``torch.distributed.checkpoint``: each rank writes
its own shard of the weights and AdamW state into ``sharded/``, and a resume with another
number of workers reshards on load. A whole model is gathered only to export it
(``export_whole``: ``best_tfmr``), on one machine, from those shards.

Why the root is gathered by hand in places (``gathered_root``): FSDP2 gathers a module's
weights in its forward hook, but ``generate`` and the teacher's encoder pass call the encoder
and decoder directly, past the root's hook, and the embeddings belong to the root (they are
tied to the output layer, so they cannot be a group of their own).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from raydistill.errors import ConfigError

SHARDED_DIR = "sharded"  # a sharded checkpoint's torch.distributed.checkpoint folder


def _layer_lists(model: nn.Module) -> list[nn.ModuleList]:
    """The encoder's and the decoder's stacks of layers (BART/Marian ``layers``, T5 ``block``,
    BERT ``layer``)."""
    found = []
    for part in (model.get_encoder(), model.get_decoder()):
        lists = [m for name, m in part.named_modules() if isinstance(m, nn.ModuleList)
                 and name.rsplit(".", 1)[-1] in ("layers", "block", "layer")]
        if not lists:
            raise ConfigError(f"parallel: fsdp found no layer stack in {type(part).__name__}; "
                              "this architecture is not supported sharded: use parallel: ddp")
        found.append(lists[0])
    return found


def _mesh(device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (dist.get_world_size(),))


def _policy(device: torch.device, dtype: torch.dtype | None):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if dtype is not None:  # bf16 / fp16 weights gathered, fp32 gradients reduced
        return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()  # fp32 (the CPU; precision: fp32)


def student_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype a sharded student's weights are gathered in (None: fp32): on a GPU, what the
    loop's autocast picks for a whole student (bf16 where the GPU has it, else fp16), unless
    ``precision: fp32``; fp32 on the CPU. fp16 steps through ``grad_scaler``."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def grad_scaler(device: torch.device):
    """fp16's loss scaling for a sharded student: ``ShardedGradScaler``, which all-reduces
    whether any rank's shard of the gradients overflowed, so that every rank skips the same
    steps (``torch.amp.GradScaler`` would look at its own rank's shard only)."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    class Scaler(ShardedGradScaler):
        def step(self, optimizer, *args, **kwargs):
            # The step is taken or skipped here, on the all-reduced flag: a fused AdamW
            # (train/optim.py) handed the flag instead stepped sharded (DTensor) weights
            # whose gradients overflowed (torch 2.13, CPU;
            # test_fp16_shards_skip_together_when_one_ranks_gradient_overflows).
            fused = getattr(optimizer, "_step_supports_amp_scaling", False)
            optimizer._step_supports_amp_scaling = False
            try:
                return super().step(optimizer, *args, **kwargs)
            finally:
                optimizer._step_supports_amp_scaling = fused

    return Scaler(device.type)


def shard(model: nn.Module, device: torch.device, *, reshard_after_forward: bool = True,
          dtype: torch.dtype | None = None, frozen: bool = False) -> nn.Module:
    """FSDP2 on each encoder and decoder layer, then the root; moved to ``device`` and run
    once through the root (in eval mode, so no RNG is drawn) so that the root's state is
    set before anything calls a part of the model directly. A ``frozen`` model (a teacher)
    keeps its root gathered: it never runs a backward pass that would free it."""
    from torch.distributed.fsdp import fully_shard

    mesh, policy = _mesh(device), _policy(device, dtype)
    for stack in _layer_lists(model):
        for layer in stack:
            fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward,
                        mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy,
                reshard_after_forward=False if frozen else None)
    model.to(device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        ids = torch.ones(1, 1, dtype=torch.long, device=device)
        model(input_ids=ids, attention_mask=ids, decoder_input_ids=ids, use_cache=False)
    model.train(was_training)
    if not frozen:
        model.reshard()
    return model


def wrap_student(student: nn.Module, cfg, device: torch.device) -> nn.Module:
    """The student as the loop trains it: sharded (fsdp), or whole and DDP-wrapped by Ray Train
    (ddp; one worker: unwrapped). The DDP wrapper's ``module`` is the student itself."""
    if cfg.parallel == "fsdp":
        return shard(student, device, reshard_after_forward=cfg.reshard_after_forward,
                     dtype=student_dtype(cfg.precision, device))
    import ray.train.torch

    return ray.train.torch.prepare_model(student, move_to_device=device,
                                         parallel_strategy_kwargs=ddp_kwargs(cfg))


def ddp_kwargs(cfg) -> dict[str, bool]:
    """DistributedDataParallel's settings for the student:

    - ``gradient_as_bucket_view``: the gradients are views into DDP's all-reduce buckets, so a
      worker holds one copy of them, not two (4 bytes a parameter less in fp32: 0.95 GiB for
      the 254 M-parameter student of bench/memory_scaling.py);
    - ``find_unused_parameters`` where layers may get no gradient in a step (layerdrop, a
      frozen encoder): DDP must not wait for them."""
    unused = bool(cfg.encoder_layerdrop or cfg.decoder_layerdrop or cfg.freeze_encoder)
    return {"find_unused_parameters": unused, "gradient_as_bucket_view": True}


def wrap_teacher(teacher: nn.Module, cfg, device: torch.device) -> nn.Module:
    """A frozen teacher (loaded on the CPU for ``teacher_parallel: fsdp``): sharded and moved
    to ``device``, or returned as it is (replicated)."""
    if cfg.teacher_parallel != "fsdp":
        return teacher
    return shard(teacher, device, reshard_after_forward=True, frozen=True)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def grad_sync(model: nn.Module, sync: bool):
    """DDP's all-reduce only where ``sync`` (``no_sync`` on the other micro-batches). A sharded
    student reduces every micro-batch: skipping it would keep whole gradients, the memory
    sharding saves; the sum of the reduced micro-batches is the same gradient."""
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    return model.no_sync() if ddp and not sync else contextlib.nullcontext()


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over whole and sharded (DTensor) gradients together: the norm of the
    sharded ones is reduced over the ranks (``full_tensor``), so every rank clips by the norm
    of the whole gradient, as DDP does."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    sharded = [g for g in grads if isinstance(g, DTensor)]
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    whole = [g for g in grads if not isinstance(g, DTensor)]
    norms = [torch.nn.utils.get_total_norm(sharded).full_tensor()]
    if whole:
        norms.append(torch.nn.utils.get_total_norm(whole))
    total = torch.linalg.vector_norm(torch.stack(norms))
    torch.nn.utils.clip_grads_with_norm_([p for p in params if isinstance(p.grad, DTensor)],
                                         max_norm, total)
    if whole:
        torch.nn.utils.clip_grads_with_norm_(
            [p for p in params if p.grad is not None and not isinstance(p.grad, DTensor)],
            max_norm, total)
    return total


@contextlib.contextmanager
def gathered_root(model: nn.Module) -> Iterator[None]:
    """The root's weights (embeddings, output layer) gathered while code calls the encoder or
    decoder directly (``generate``); every rank must enter. A no-op for a whole model. A frozen
    model's root (a teacher: no trainable parameter) stays gathered after, as ``shard`` left it:
    its encoder is called directly in every step."""
    if not is_sharded(model):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        if any(p.requires_grad for p in model.parameters()):
            model.reshard()


# ---- state ------------------------------------------------------------------------------


def _with_projections(model: nn.Module, projections: nn.Module | None):
    """(the module whose state a sharded checkpoint holds, the prefix of the student's names in
    it). TextBrewer projections are whole on every rank (their gradients are averaged by the
    loop) but share the student's optimizer, whose state ``get_state_dict`` can only name
    through one module: both go in a container then, and the student's names lose its prefix
    again in the file, so that ``export_whole`` reads the same ``model`` either way."""
    if projections is None or not list(projections.parameters()):
        return model, ""
    return nn.ModuleDict({"student": model, "projections": projections}), "student."


def save_sharded(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                 projections: nn.Module | None = None) -> None:
    """Each rank writes its shard of the weights and AdamW state under ``path/sharded``
    (rank 0 also the metadata; a whole tensor, as a projection's, is written once); every
    rank must call it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root, prefix = _with_projections(model, projections)
    model_sd, optim_sd = get_state_dict(root, optimizer)
    dcp.save({**_split(model_sd, prefix), "optimizer": optim_sd},
             checkpoint_id=str(Path(path) / SHARDED_DIR))


def load_sharded(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                 projections: nn.Module | None = None) -> None:
    """``save_sharded``'s state into a sharded ``model`` (and its projections) and their
    optimizer, resharded for this run's number of workers; every rank must call it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    root, prefix = _with_projections(model, projections)
    model_sd, optim_sd = get_state_dict(root, optimizer)
    state = {**_split(model_sd, prefix), "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(Path(path) / SHARDED_DIR))
    whole = {prefix + k: v for k, v in state["model"].items()} | state.get("projections", {})
    set_state_dict(root, optimizer, model_state_dict=whole, optim_state_dict=state["optimizer"])


def _split(model_sd: dict[str, Any], prefix: str) -> dict[str, dict[str, Any]]:
    """A container's state -> {"model": the student's (names without ``prefix``),
    "projections": theirs (names as in the container)}; a student's alone -> {"model": it}."""
    if not prefix:
        return {"model": model_sd}
    return {"model": {k[len(prefix):]: v for k, v in model_sd.items() if k.startswith(prefix)},
            "projections": {k: v for k, v in model_sd.items() if not k.startswith(prefix)}}


def is_sharded_checkpoint(path: str | Path) -> bool:
    return (Path(path) / SHARDED_DIR / ".metadata").is_file()


def export_whole(checkpoint_dir: str | Path, dst: str | Path) -> None:
    """A sharded checkpoint's weights -> a whole Hugging Face model (config, safetensors) in
    ``dst``, on one machine and without a process group: the model is built from its config
    and every shard is read into it (tied weights stay tied: both names load one tensor)."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, EncoderDecoderModel

    src, dst = Path(checkpoint_dir), Path(dst)
    config = AutoConfig.from_pretrained(src)
    cls = EncoderDecoderModel if config.model_type == "encoder-decoder" else AutoModelForSeq2SeqLM
    with torch.device("meta"):
        model = cls.from_config(config) if cls is AutoModelForSeq2SeqLM else cls(config=config)
    model.to_empty(device="cpu")
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(src / SHARDED_DIR), no_dist=True)
    model.load_state_dict(state["model"])
    model.tie_weights()
    model.save_pretrained(dst)


__all__ = ["SHARDED_DIR", "clip_grad_norm", "ddp_kwargs", "export_whole", "gathered_root",
           "grad_scaler", "grad_sync", "is_sharded", "is_sharded_checkpoint", "load_sharded",
           "save_sharded", "shard", "student_dtype", "wrap_student", "wrap_teacher"]
