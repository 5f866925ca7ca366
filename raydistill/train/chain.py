"""Train a chain of stages, each a whole run that starts from the previous stage's best student.

The loop of ``stages:`` (``raydistill.stages``) and of a staged sweep's shared stages
(``raydistill.tune.sweep``). It sits beside ``run_training`` rather than above ``train/``
because the sweep needs it too, and ``tune/`` comes before the entry points; it orders whole
runs (``run_training``) and never reaches into the worker loop.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raydistill.atomic import replace_dir_atomic, write_json_atomic
from raydistill.stage_plan import Stage

DONE_FILE = "stage_done.json"  # in a stage's folder: its summary and layers, once it finished


def train_chain(stages: list[Stage], *, resume: bool, overwrite: bool = False,
                address: str | None = None,
                after: Callable[[Stage, dict[str, Any]], None] | None = None,
                ) -> list[dict[str, Any]]:
    """Train ``stages`` in order; returns each stage's record (``summary``: what
    ``run_training`` returned, ``layers``: the teacher layers its student was copied from).

    ``resume``: a finished stage (``DONE_FILE``) is skipped, the one that stopped continues from
    its checkpoint. ``after(stage, record)`` runs after each stage, e.g. to check it."""
    from raydistill.train.run import run_training

    records: list[dict[str, Any]] = []
    layers: dict[str, Any] | None = None
    for stage in stages:
        done = stage.dir / DONE_FILE
        if resume and done.is_file():
            record = json.loads(done.read_text())
            best = record["summary"]["best"][stage.cfg.val_metric]
            print(f"[raydistill] {stage.name}: finished before (best {stage.cfg.val_metric} "
                  f"{best:.4f}), skipped", flush=True)
        else:
            if overwrite:
                done.unlink(missing_ok=True)
            again = resume and (stage.dir / "hparams.json").is_file()
            print(f"[raydistill] {stage.name}: {stage.cfg.method}, "
                  + ("resuming" if again else "starting")
                  + (f" from {stage.cfg.student}" if stage.index else ""), flush=True)
            _, _, summary = run_training(stage.cfg, overwrite=overwrite, resume=again,
                                         address=address, student_layers=layers)
            record = {"summary": summary, "layers": stage_layers(stage.dir)}
            write_json_atomic(done, record)
        layers = record["layers"]
        records.append(record)
        if after is not None:
            after(stage, record)
    return records


def stage_layers(stage_dir: Path) -> dict[str, Any] | None:
    """The teacher layers the stage's student was copied from (make_student), handed on so a
    later stage's hidden-state matches pair the same layers."""
    path = stage_dir / "student_layers.json"
    return json.loads(path.read_text()) if path.is_file() else None


def export_best(src: Path, dst: Path) -> None:
    """A copy of ``src`` replaces ``dst`` in one rename (a killed copy leaves ``dst`` as it was)."""
    tmp = Path(tempfile.mkdtemp(prefix=".best_tfmr.", dir=dst.parent))
    shutil.copytree(src, tmp, dirs_exist_ok=True)
    replace_dir_atomic(tmp, dst)
