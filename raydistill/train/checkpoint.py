"""Checkpoints that resume exactly.

A checkpoint folder holds:
- the student as ``save_pretrained`` (config.json + model.safetensors) and its tokenizer, so any
  checkpoint is also a usable model folder;
- ``projections.safetensors`` (TextBrewer projections, when there are any);
- ``optimizer.pt`` / ``scheduler.pt`` / ``scaler.pt``: state dicts of tensors and numbers, read
  with ``torch.load(weights_only=True)`` (no pickle executes);
- ``trainer_state.json``: step, epoch, batch position in the epoch, best metric, config;
- ``rng_states.json``: Python, NumPy and torch RNG states of every rank.
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

STATE_FILE = "trainer_state.json"
RNG_FILE = "rng_states.json"


def model_files(checkpoint_dir: str | Path) -> list[Path]:
    """The files of a checkpoint folder that make a model folder (no optimizer or RNG state)."""
    return [f for f in Path(checkpoint_dir).iterdir() if f.is_file() and f.suffix != ".pt"
            and f.name not in (STATE_FILE, RNG_FILE)]


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *[int(x) if i < 2 else float(x)
                                                      for i, x in enumerate(np_state[2:])]],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npv = state["numpy"]
    np.random.set_state((npv[0], np.array(npv[1], dtype=np.uint32), npv[2], npv[3], npv[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


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
) -> None:
    """Write a full checkpoint into the (empty, temporary) folder ``path``."""
    path = Path(path)
    student.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    if projections is not None and len(list(projections.parameters())):
        save_file({k: v.detach().cpu().contiguous() for k, v in projections.state_dict().items()},
                  str(path / "projections.safetensors"))
    torch.save(optimizer.state_dict(), path / "optimizer.pt")
    torch.save(scheduler.state_dict(), path / "scheduler.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), path / "scaler.pt")
    write_json_atomic(path / STATE_FILE, state)
    write_json_atomic(path / RNG_FILE, rng_states)


def load_training_state(
    path: str | Path,
    *,
    student,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler=None,
    projections: torch.nn.Module | None = None,
    rank: int = 0,
) -> dict[str, Any]:
    """Restore everything ``save_training_state`` wrote; returns the trainer state dict."""
    path = Path(path)
    weights = load_file(str(path / "model.safetensors"))
    # strict=False: tied weights (lm_head = embeddings) are saved once and re-tied below.
    _, unexpected = student.load_state_dict(weights, strict=False)
    student.tie_weights()
    if unexpected:
        raise RuntimeError(f"{path}: checkpoint has weights the student lacks: {unexpected[:5]}")
    if projections is not None and (path / "projections.safetensors").exists():
        projections.load_state_dict(load_file(str(path / "projections.safetensors")))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if scaler is not None and (path / "scaler.pt").exists():
        scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    rngs = json.loads((path / RNG_FILE).read_text())
    set_rng_state(rngs[min(rank, len(rngs) - 1)])
    return json.loads((path / STATE_FILE).read_text())


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
