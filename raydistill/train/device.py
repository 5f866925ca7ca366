"""Where each process computes: one decision, from ``use_gpu``, for every mode.

- ``train_device``: the device a Train worker trains on, and the command's own process with
  ``num_workers: 0``. Ray Train's local mode returns cuda whenever torch sees a GPU, whatever
  ``use_gpu`` says, so the decision is made here, not left to ``ray.train.torch.get_device``.
- ``actor_gpus``: each generation or teacher actor's GPU request, so that a pool of actors
  shares the GPUs instead of each asking for a whole one and waiting for it forever.
- ``generation_device``: where a measurement in this stage's own task runs (tune's latency).
- ``check_gpu_request`` / ``check_compute_type``: before Ray starts, one line for a GPU request
  this process cannot serve and a CTranslate2 compute type the device cannot run.
- ``check_sharding``: the same for ``parallel: fsdp`` / ``teacher_parallel: fsdp`` and what they
  do not support; how a model is sharded, saved and loaded is ``train/parallel.py``'s. (A request
  the cluster cannot serve is ``runtime.check_resources``', once Ray runs: train/run.py.)

The checkpoint code asks ``cuda_rng_device`` whose RNG to save: this worker's device only.
This module imports torch only inside the functions that need it: the driver's checks run
before the heavy imports.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from raydistill.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from raydistill.config import DistillConfig

# CTranslate2 compute types that need a CUDA device (the CPU runs float32, int8, int8_float32).
GPU_COMPUTE_TYPES = ("float16", "int8_float16", "bfloat16", "int8_bfloat16")


def this_process_has_gpu() -> bool:
    """Whether torch sees a CUDA device in this process (imports torch)."""
    import torch

    return torch.cuda.is_available()


def train_device(use_gpu: bool) -> torch.device:
    """The device this Train worker trains on (or this process, with ``num_workers: 0``).

    ``use_gpu: false`` is the CPU even where a GPU is visible. ``use_gpu: true`` is the GPU Ray
    Train assigned to this worker (local mode: torch's current device); a process that sees no
    GPU is a one-line ConfigError, never a silent run on the CPU.
    """
    import torch

    if not use_gpu:
        return torch.device("cpu")
    import ray.train.torch

    device = ray.train.torch.get_device()
    if device.type != "cuda":
        raise ConfigError("use_gpu: true, but this training process sees no GPU "
                          "(torch.cuda.is_available() is False); run it where a GPU is "
                          "(num_workers >= 1 on a cluster with GPUs), or set use_gpu: false")
    return device


def generation_device(use_gpu: bool) -> str:
    """Where a stage that generates in its own process or task runs: the training's device."""
    return "cuda" if use_gpu else "cpu"


def actor_gpus(use_gpu: bool, actors: int, gpus: float | None = None) -> float:
    """Each actor's ``num_gpus`` for a pool of ``actors`` that shares ``gpus`` GPUs (default:
    the Ray cluster's; Ray must run).

    One whole GPU per actor while there are enough; otherwise an equal share of one GPU: Ray
    places a fractional request on a single GPU, so each GPU holds ``ceil(actors / gpus)``
    actors (2 GPUs, 3 actors: 0.5 each, not 0.67, which would leave the third actor no GPU
    with room). Rounded down to Ray's 1e-4 resource unit. 0 without ``use_gpu``.
    """
    if not use_gpu:
        return 0.0
    if gpus is None:
        import ray

        gpus = ray.cluster_resources().get("GPU", 0.0)
    whole = int(gpus + 1e-6)
    if whole < 1:
        raise ConfigError(f"use_gpu: true, but the Ray cluster has {gpus:g} GPUs for the "
                          f"{actors} generation or teacher actors; set use_gpu: false, or run "
                          "on a cluster with GPUs")
    if actors <= whole:
        return 1.0
    return math.floor(10_000 / math.ceil(actors / whole)) / 10_000


def check_compute_type(backend: str, compute_type: str, use_gpu: bool) -> None:
    """A CTranslate2 ``compute_type`` that needs a GPU, in a run that generates on the CPU."""
    if backend == "ctranslate2" and compute_type in GPU_COMPUTE_TYPES and not use_gpu:
        raise ConfigError(f"compute_type: {compute_type} runs on a GPU only, and this run "
                          "generates on the CPU (use_gpu: false); set compute_type: int8 "
                          "(fastest on CPU) or float32, or use_gpu: true")


def check_gpu_request(cfg: DistillConfig) -> None:
    """Before Ray starts: ``use_gpu`` with ``num_workers: 0`` trains in this process, which must
    see a GPU (a GPU elsewhere in the cluster does not help it); and the compute type must run
    where the run generates (test generation, tune's latency)."""
    check_compute_type(cfg.generation_backend, cfg.compute_type, cfg.use_gpu)
    if cfg.use_gpu and cfg.num_workers == 0 and not this_process_has_gpu():
        raise ConfigError("use_gpu: true with num_workers: 0 trains in this process, which sees "
                          "no GPU (torch.cuda.is_available() is False); run the command on a "
                          "machine with a GPU, set num_workers >= 1 to train on the cluster's "
                          "GPU workers, or set use_gpu: false")


def check_sharding(cfg) -> None:
    """What ``parallel: fsdp`` / ``teacher_parallel: fsdp`` do not support, in one line, before
    Ray starts a worker (preflight) and for each sweep trial (build_trainer). (Layerdrop and
    fp16 are supported: train/layerdrop.py, ``parallel.grad_scaler``.)"""
    student, teacher = cfg.parallel == "fsdp", cfg.teacher_parallel == "fsdp"
    if (student or teacher) and cfg.num_workers == 0:
        key = "parallel" if student else "teacher_parallel"
        raise ConfigError(f"{key}: fsdp shards over Ray Train workers: set num_workers >= 1; "
                          "or use parallel: ddp and teacher_parallel: replicate")


def cuda_rng_device() -> int | None:
    """The CUDA device whose RNG a checkpoint saves and restores: the one this process computes
    on (``torch.cuda.current_device()``, which Ray Train's ``prepare_model`` sets), and only
    when this process has initialized CUDA already. Never every visible GPU: asking for all of
    them opens a CUDA context on each, in every worker."""
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return torch.cuda.current_device()


__all__ = ["GPU_COMPUTE_TYPES", "actor_gpus", "check_compute_type", "check_gpu_request",
           "check_sharding",
           "cuda_rng_device", "generation_device", "this_process_has_gpu", "train_device"]
