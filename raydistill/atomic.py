"""Atomic writes: a file or a folder is written under a temporary name beside its place, then
renamed into place, so a run killed at any moment leaves the previous version readable.

A base module (it imports nothing of raydistill): every stage that leaves files behind uses it
(data folders, pseudo-labels, the teacher's logit cache, evaluation, checkpoints, sweeps).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write to a temporary name beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temporary name beside ``path``, then rename it into place."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def replace_dir_atomic(src: str | Path, dst: str | Path) -> None:
    """Move the finished folder ``src`` to ``dst``; the old ``dst`` stays readable until the swap.

    Two renames: dst -> dst.old, src -> dst; a crash between them leaves dst.old, which
    ``recover_dir`` puts back.
    """
    src, dst = Path(src), Path(dst)
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    if old.exists():
        shutil.rmtree(old)


def recover_dir(dst: str | Path) -> None:
    """Undo a swap interrupted between its two renames."""
    dst = Path(dst)
    old = dst.with_name(dst.name + ".old")
    if old.exists() and not dst.exists():
        os.replace(old, dst)
