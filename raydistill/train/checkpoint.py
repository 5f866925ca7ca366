"""Checkpoints that resume exactly.

A checkpoint folder holds:
- the student as ``save_pretrained`` (config.json + model.safetensors) and its tokenizer, so any
  checkpoint is also a usable model folder;
- ``projections.safetensors`` (TextBrewer projections, when there are any);
- ``optimizer.pt`` / ``scheduler.pt`` / ``scaler.pt``: state dicts of tensors and numbers, read
  with ``torch.load(weights_only=True)`` (no pickle executes);
- ``trainer_state.json``: step, epoch, batch position in the epoch, best metric, config;
- ``rng_states.json``: Python, NumPy and torch RNG states of every rank, and the CUDA RNG of
  the rank's own GPU (``cuda_device``; none on CPU);
- ``files.json``, written last: the size of every other file, so a folder whose copy to storage
  was cut off is told apart from a whole one (``whole_checkpoint``).

A sharded student (``parallel: fsdp``) has ``sharded/`` instead of ``model.safetensors`` and
``optimizer.pt``: every rank writes its shard there (``torch.distributed.checkpoint``, through
``train/parallel.py``) into its own folder, Ray Train merges the ranks' folders, and rank 0's
``files.json`` lists every rank's files. Its config.json and tokenizer make it a model folder
once ``parallel.export_whole`` has gathered the weights (``best_tfmr``).

Portable: every tensor file loads onto the CPU first (``map_location="cpu"``; the optimizer then
moves its state to its parameters' device), so a checkpoint written on GPUs resumes on a CPU
machine, and no rank of a multi-GPU node first loads the state onto cuda:0. A checkpoint holds
no per-GPU list, so it resumes on a node with any number of GPUs; one whose CUDA RNG is absent
(written on a CPU) resumes on a GPU with the seeded CUDA RNG.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

# The atomic writes live in the base module raydistill.atomic (every stage writes files); the
# names stay importable from here for checkpoint code and older imports.
from raydistill.atomic import (  # noqa: F401
    recover_dir,
    replace_dir_atomic,
    write_json_atomic,
    write_text_atomic,
)
from raydistill.errors import ConfigError
from raydistill.train.device import cuda_rng_device
from raydistill.train.parallel import (
    export_whole,
    is_sharded,
    is_sharded_checkpoint,
    load_sharded,
    save_sharded,
)

STATE_FILE = "trainer_state.json"
RNG_FILE = "rng_states.json"
MANIFEST_FILE = "files.json"


def model_files(checkpoint_dir: str | Path) -> list[Path]:
    """The files of a checkpoint folder that make a model folder (no optimizer or RNG state)."""
    return [f for f in Path(checkpoint_dir).iterdir() if f.is_file() and f.suffix != ".pt"
            and f.name not in (STATE_FILE, RNG_FILE)]


def export_model(checkpoint_dir: str | Path, dst: str | Path) -> None:
    """A checkpoint's model into the folder ``dst``: config, weights and tokenizer, no training
    state. A sharded student's shards are gathered into one ``model.safetensors`` here."""
    if is_sharded_checkpoint(checkpoint_dir):
        export_whole(checkpoint_dir, dst)
    for f in model_files(checkpoint_dir):
        if not (Path(dst) / f.name).exists():
            shutil.copy2(f, Path(dst) / f.name)


def rng_state(cuda_device: int | None = None) -> dict[str, Any]:
    """This process's RNG states: Python, NumPy, torch's CPU generator and the CUDA generator of
    ``cuda_device`` (default: the GPU this process computes on, ``cuda_rng_device``)."""
    np_state = np.random.get_state()
    if cuda_device is None:
        cuda_device = cuda_rng_device()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *[int(x) if i < 2 else float(x)
                                                      for i, x in enumerate(np_state[2:])]],
        "torch": torch.get_rng_state().tolist(),
        "cuda_device": (None if cuda_device is None
                        else torch.cuda.get_rng_state(cuda_device).tolist()),
    }


def set_rng_state(state: dict[str, Any], cuda_device: int | None = None) -> None:
    """Restore ``rng_state``'s states; the CUDA one onto ``cuda_device`` (default: this
    process's GPU). A state without one (written on a CPU), or a process without a GPU, leaves
    the CUDA generator as seeded. Older checkpoints kept ``cuda``: one state per visible GPU;
    the entry of this process's device index is restored when there is one."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npv = state["numpy"]
    np.random.set_state((npv[0], np.array(npv[1], dtype=np.uint32), npv[2], npv[3], npv[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if cuda_device is None:
        cuda_device = cuda_rng_device()
    if cuda_device is None:
        return
    own = state.get("cuda_device")
    if own is None:
        old = state.get("cuda") or []
        own = old[cuda_device] if cuda_device < len(old) else None
    if own is not None:
        torch.cuda.set_rng_state(torch.tensor(own, dtype=torch.uint8), cuda_device)


def load_tensors(path: str | Path) -> Any:
    """A ``.pt`` state dict, onto the CPU whatever device wrote it, with no pickle executed."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_training_state(
    path: str | Path,
    *,
    student,
    tokenizer,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler=None,
    projections: torch.nn.Module | None = None,
    state: dict[str, Any],
    rng_states: list[dict[str, Any]],
    rank: int = 0,
) -> None:
    """Write a full checkpoint into the (empty, temporary) folder ``path``. A sharded student:
    every rank calls it with its own folder and writes its shard; rank 0 writes the rest."""
    path = Path(path)
    if is_sharded(student):
        save_sharded(path, student, optimizer, projections)
        if rank == 0:
            student.config.save_pretrained(path)
            if getattr(student, "generation_config", None) is not None:
                student.generation_config.save_pretrained(path)
        mine = {p.relative_to(path).as_posix(): p.stat().st_size
                for p in sorted(path.rglob("*")) if p.is_file()}
        if torch.distributed.is_initialized():
            everyone: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(everyone, mine)
        else:
            everyone = [mine]
        if rank != 0:
            return
    else:
        student.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    if projections is not None and len(list(projections.parameters())):
        save_file({k: v.detach().cpu().contiguous() for k, v in projections.state_dict().items()},
                  str(path / "projections.safetensors"))
    if not is_sharded(student):
        torch.save(optimizer.state_dict(), path / "optimizer.pt")
    torch.save(scheduler.state_dict(), path / "scheduler.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), path / "scaler.pt")
    write_json_atomic(path / STATE_FILE, state)
    write_json_atomic(path / RNG_FILE, rng_states)
    files = {p.relative_to(path).as_posix(): p.stat().st_size
             for p in sorted(path.rglob("*")) if p.is_file()}
    if is_sharded(student):  # the other ranks' shards, in their own folders until Ray merges
        files = {k: v for part in everyone[1:] for k, v in part.items()} | files
    write_json_atomic(path / MANIFEST_FILE, files)


def load_training_state(
    path: str | Path,
    *,
    student,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler=None,
    projections: torch.nn.Module | None = None,
    rank: int = 0,
    cuda_device: int | None = None,
) -> dict[str, Any]:
    """Restore everything ``save_training_state`` wrote; returns the trainer state dict.

    Tensors load onto the CPU and move to the device of the parameters they belong to; the
    CUDA RNG goes to ``cuda_device`` (default: this process's GPU, none on a CPU)."""
    path = Path(path)
    if is_sharded_checkpoint(path) != is_sharded(student):
        written = "fsdp" if is_sharded_checkpoint(path) else "ddp"
        raise ConfigError(f"{path} was written with parallel: {written}; resume it with "
                          f"parallel: {written}")
    if is_sharded(student):  # weights and AdamW state, resharded for this number of workers
        load_sharded(path, student, optimizer, projections)
    else:
        weights = load_file(str(path / "model.safetensors"))
        # strict=False: tied weights (lm_head = embeddings) are saved once and re-tied below.
        _, unexpected = student.load_state_dict(weights, strict=False)
        student.tie_weights()
        if unexpected:
            raise RuntimeError(f"{path}: checkpoint has weights the student lacks: {unexpected[:5]}")
        optimizer.load_state_dict(load_tensors(path / "optimizer.pt"))
    if projections is not None and (path / "projections.safetensors").exists():
        projections.load_state_dict(load_file(str(path / "projections.safetensors")))
    scheduler.load_state_dict(load_tensors(path / "scheduler.pt"))
    if scaler is not None and (path / "scaler.pt").exists():
        scaler.load_state_dict(load_tensors(path / "scaler.pt"))
    rngs = json.loads((path / RNG_FILE).read_text())
    set_rng_state(rngs[min(rank, len(rngs) - 1)], cuda_device)
    return json.loads((path / STATE_FILE).read_text())


# ---- the newest whole checkpoint of a run on its storage ------------------------------------
# Ray Train registers a checkpoint once the controller has collected every rank's report. A node
# lost mid-run can leave the last one or two folders on storage unregistered although rank 0
# wrote them in full (it gathered every rank's RNG first, so every rank reached that step), and
# Ray then restores an older one. A restore takes the newest whole folder beside Ray's instead.


def _read(fs, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def whole_checkpoint(fs, path: str) -> int | None:
    """The step of the checkpoint folder ``path`` on the pyarrow file system ``fs`` if every file
    its manifest lists is there at its full size; None otherwise (a cut-off copy, an older
    checkpoint without a manifest, anything unreadable)."""
    from pyarrow.fs import FileType

    try:
        sizes = json.loads(_read(fs, f"{path}/{MANIFEST_FILE}"))
        infos = fs.get_file_info([f"{path}/{name}" for name in sizes])
        if any(i.type != FileType.File or i.size != sizes[Path(i.path).relative_to(path).as_posix()]
               for i in infos):
            return None
        return int(json.loads(_read(fs, f"{path}/{STATE_FILE}"))["global_step"])
    except (OSError, ValueError, KeyError):
        return None


def newest_whole_checkpoint(checkpoint):
    """Ray's restore ``checkpoint``, or a newer whole folder beside it on the same storage."""
    from pyarrow.fs import FileSelector, FileType

    if checkpoint is None:
        return None
    fs, own = checkpoint.filesystem, checkpoint.path.rstrip("/")
    try:
        own_step = int(json.loads(_read(fs, f"{own}/{STATE_FILE}"))["global_step"])
        siblings = fs.get_file_info(FileSelector(str(Path(own).parent)))
    except (OSError, ValueError, KeyError):
        return checkpoint
    best, best_step = checkpoint, own_step
    for info in siblings:
        if info.type == FileType.Directory and info.base_name.startswith("checkpoint_"):
            step = whole_checkpoint(fs, info.path)
            if step is not None and step > best_step:
                best, best_step = type(checkpoint)(info.path, filesystem=fs), step
    return best


# ---- checkpoints of a run in this process (num_workers: 0, Ray Train's local mode) -----------
# Ray Train's local mode keeps only the last reported checkpoint object, in memory; a run in
# this process keeps its own under <storage>/<run_name>/ as Ray would: each validation's
# checkpoint, the best `keep` by the validation metric plus the latest.

REPORTED_FILE = "reported_metrics.json"


def local_checkpoints(run_dir: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """(folder, reported metrics) of every finished checkpoint in ``run_dir``, oldest first."""
    run_dir = Path(run_dir)
    found = [(p, json.loads((p / REPORTED_FILE).read_text()))
             for p in run_dir.glob("checkpoint_*") if (p / REPORTED_FILE).is_file()]
    return sorted(found, key=lambda pm: pm[1]["step"])


def persist_local_checkpoint(run_dir: str | Path, src: str | Path, metrics: dict[str, Any], *,
                             keep: int, metric: str) -> Path:
    """Move the finished checkpoint folder ``src`` into ``run_dir`` with its metrics, then drop
    all but the best ``keep`` (by ``metric``) and the latest. Returns its folder."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(src) / REPORTED_FILE, metrics)
    dst = run_dir / f"checkpoint_{int(metrics['step']):08d}"
    replace_dir_atomic(src, dst)
    found = local_checkpoints(run_dir)
    best = sorted(found, key=lambda pm: pm[1].get(metric, float("-inf")), reverse=True)[:keep]
    kept = {p for p, _ in best} | {found[-1][0]}
    for p, _ in found:
        if p not in kept:
            shutil.rmtree(p, ignore_errors=True)
    return dst


@dataclass
class LocalResult:
    """What ``export_outputs`` reads of a Ray Train Result, for a run in this process."""

    best_checkpoints: list
    checkpoint: Any
    error: BaseException | None = None


def local_result(run_dir: str):
    from ray.train import Checkpoint

    found = [(Checkpoint.from_directory(str(p)), m) for p, m in local_checkpoints(run_dir)]
    if not found:
        raise RuntimeError(f"training reported no checkpoint in {run_dir}")
    return LocalResult(best_checkpoints=found, checkpoint=found[-1][0])
