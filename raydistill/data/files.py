"""Find, validate and read a data folder's splits.

A split comes in one of three layouts, looked for in this order:

- six-file: ``{split}.source`` + ``{split}.target``, one example per line (the seq2seq scripts' format);
- ``{split}.jsonl``: one JSON object per line with ``"source"`` and ``"target"``;
- ``{split}.parquet``: columns ``source`` and ``target``.

An optional ``{split}.refs.jsonl`` holds several references per example (objects with a
``"references"`` list), one line per example, for metrics that take more than one reference.

Validation runs before anything heavy (tokenizers, Ray, models): it streams bytes line by line, so
checking files of many MB costs well under a second, and each problem is one ``DataError`` line
naming the file, the line and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from raydistill.errors import ConfigError, DataError

if TYPE_CHECKING:
    import ray.data

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitData:
    """One split in memory: ``sources[i]`` pairs with ``targets[i]`` (and ``refs[i]`` if given)."""

    sources: list[str]
    targets: list[str]
    refs: list[list[str]] | None

    def __len__(self) -> int:
        return len(self.sources)


def find_split_files(data_dir: str | Path, split: str) -> dict:
    """Say which layout ``split`` uses in ``data_dir``.

    Returns ``{"format": "lines", "source": Path, "target": Path, "refs": Path | None}``, or
    ``{"format": "jsonl" | "parquet", "path": Path, "refs": Path | None}``.
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"data folder {d} does not exist: create it or fix the data path")
    refs = d / f"{split}.refs.jsonl"
    refs_path = refs if refs.is_file() else None
    src, tgt = d / f"{split}.source", d / f"{split}.target"
    if src.is_file() or tgt.is_file():
        # Half a pair is a mistake, not "some other layout": say which half is missing.
        missing, present = (tgt, src) if src.is_file() else (src, tgt)
        if not missing.is_file():
            raise DataError(f"{present} has no partner: add {missing} (one example per line, "
                            f"same number of lines)")
        return {"format": "lines", "source": src, "target": tgt, "refs": refs_path}
    for fmt in ("jsonl", "parquet"):
        path = d / f"{split}.{fmt}"
        if path.is_file():
            return {"format": fmt, "path": path, "refs": refs_path}
    raise DataError(f"data folder {d} has no '{split}' split: add {split}.source + {split}.target "
                    f"(one example per line), or {split}.jsonl, or {split}.parquet")


def validate_data_dir(data_dir: str | Path, splits: tuple[str, ...] = SPLITS) -> None:
    """Check every split of ``data_dir`` and raise the first problem as a one-line ``DataError``."""
    for split in splits:
        _validate_split(find_split_files(data_dir, split))


def read_split(data_dir: str | Path, split: str, n: int | None = None) -> SplitData:
    """Validate and read ``split``; ``n`` keeps only the first ``n`` examples."""
    if n is not None and n < 1:
        raise ConfigError(f"n must be a positive number of examples or None (got {n})")
    files = find_split_files(data_dir, split)
    _validate_split(files)
    if files["format"] == "lines":
        sources = _read_lines(files["source"])
        targets = _read_lines(files["target"])
    elif files["format"] == "jsonl":
        rows = [json.loads(line) for line in _read_lines(files["path"])]
        sources = [r["source"] for r in rows]
        targets = [r["target"] for r in rows]
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(files["path"], columns=["source", "target"])
        sources = table.column("source").to_pylist()
        targets = table.column("target").to_pylist()
    refs = None
    if files["refs"] is not None:
        refs = [json.loads(line)["references"] for line in _read_lines(files["refs"])]
    if n is not None:
        sources, targets = sources[:n], targets[:n]
        refs = refs[:n] if refs is not None else None
    return SplitData(sources, targets, refs)


def split_dataset(data_dir: str | Path, split: str, n: int | None = None) -> ray.data.Dataset:
    """``split`` as a Ray Dataset with columns ``id`` (int64 line index), ``source``, ``target``."""
    return arrow_dataset(table_blocks(split_table(read_split(data_dir, split, n))))


def split_table(data: SplitData):
    """A split as one pyarrow table: ``id`` (int64 line index), ``source``, ``target``."""
    import numpy as np
    import pyarrow as pa

    return pa.table({"id": np.arange(len(data), dtype=np.int64), "source": data.sources,
                     "target": data.targets})


def table_blocks(table, max_blocks: int = 8) -> list:
    """``table`` cut into at most ``max_blocks`` slices, the blocks of a Ray Dataset.

    A few blocks are enough to feed a handful of actors or split among workers; Ray's default of
    200 blocks makes small datasets slow. (from_pandas(override_num_blocks=) breaks with
    pandas 3.)"""
    num_blocks = max(1, min(table.num_rows, max_blocks))
    step = max(1, -(-table.num_rows // num_blocks))
    return [table.slice(i, step) for i in range(0, table.num_rows, step)] or [table]


def arrow_dataset(tables: list):
    """``ray.data.from_arrow(tables)`` with each block's metadata computed here, in the driver.

    ``from_arrow`` runs one Ray task per block for it, and the first such task waits for a worker
    process to start and import pyarrow: 2.6-4 s of a run's start-up on 2 cores (issue 19).
    ``ray.data.from_blocks`` keeps the blocks as given; older Rays without it use from_arrow.
    """
    import ray.data

    from_blocks = getattr(ray.data, "from_blocks", None)
    return from_blocks(list(tables)) if from_blocks is not None else ray.data.from_arrow(tables)


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) as one space: a line-layout row."""
    return " ".join(text.split())


def copy_split(src_dir: str | Path, dst_dir: str | Path, split: str) -> list[str]:
    """Copy the files of ``split`` (any layout, with its refs) into ``dst_dir``; returns their names."""
    import os
    import shutil

    files = find_split_files(src_dir, split)
    paths = [files["source"], files["target"]] if files["format"] == "lines" else [files["path"]]
    if files["refs"] is not None:
        paths.append(files["refs"])
    for p in paths:
        tmp = Path(dst_dir) / f".{p.name}.copy"
        shutil.copyfile(p, tmp)
        os.replace(tmp, Path(dst_dir) / p.name)
    return [p.name for p in paths]


# --- validation internals -------------------------------------------------------------------

def _validate_split(files: dict) -> int:
    """Validate one split's files; return its number of examples."""
    if files["format"] == "lines":
        n_src = _check_lines(files["source"])
        n_tgt = _check_lines(files["target"])
        if n_src != n_tgt:
            raise DataError(f"{files['source']} has {n_src} lines but {files['target']} has {n_tgt}: "
                            f"each source line needs exactly one target line")
        count = n_src
    elif files["format"] == "jsonl":
        count = _check_jsonl(files["path"], ("source", "target"), str)
    else:
        count = _check_parquet(files["path"])
    if files["refs"] is not None:
        n_refs = _check_jsonl(files["refs"], ("references",), list)
        if n_refs != count:
            raise DataError(f"{files['refs']} has {n_refs} lines but its split has {count} examples: "
                            f"write one line of references per example, in the same order")
    return count


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)``, raising on an empty file, bad UTF-8 or a blank line."""
    with open(path, "rb") as f:
        # Split on b"\n" only (not str.splitlines, which also splits on \x0b, \u2028, ...), so
        # line numbers match what editors and `wc -l` show.
        for i, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{i}: bytes that are not UTF-8 ({e.reason} at column "
                                f"{e.start + 1}): re-encode the file as UTF-8") from None
            if not text.strip():
                raise DataError(f"{path}:{i}: blank line: every line must hold one example; "
                                f"remove it or fill it in")
            yield i, text.rstrip("\r\n")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty: add examples (one per line) or remove the split")


def _check_lines(path: Path) -> int:
    count = 0
    for count, _ in _iter_lines(path):
        pass
    return count


def _check_jsonl(path: Path, keys: tuple[str, ...], kind: type) -> int:
    count = 0
    for count, text in _iter_lines(path):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{count}: not valid JSON ({e.msg} at column {e.colno}): "
                            f"write one JSON object per line") from None
        for key in keys:
            value = obj.get(key) if isinstance(obj, dict) else None
            if not _is_filled(value, kind):
                example = json.dumps({k: "..." for k in keys})
                raise DataError(f"{path}:{count}: needs a non-empty {kind.__name__} under "
                                f"\"{key}\": write one object per line like {example}")
    return count


def _is_filled(value: object, kind: type) -> bool:
    """A non-blank string, or a non-empty list of non-blank strings."""
    if kind is list:
        return isinstance(value, list) and bool(value) and all(_is_filled(v, str) for v in value)
    return isinstance(value, str) and bool(value.strip())


def _check_parquet(path: Path) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    missing = [c for c in ("source", "target") if c not in names]
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(missing)} (has {', '.join(names)}): "
                        f"rename the text columns to source and target")
    table = pq.read_table(path, columns=["source", "target"])
    if table.num_rows == 0:
        raise DataError(f"{path} is empty: add examples or remove the split")
    for name in ("source", "target"):
        col = table.column(name)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise DataError(f"{path}: column {name} has type {col.type}: store the texts as strings")
        blank = pc.or_kleene(pc.is_null(col), pc.equal(pc.utf8_trim_whitespace(col), ""))
        if pc.any(blank).as_py():
            row = pc.index(blank, True).as_py() + 1
            raise DataError(f"{path}: row {row} has an empty or missing {name}: "
                            f"fill it in or drop the row")
    return table.num_rows


def _read_lines(path: Path) -> list[str]:
    """The lines of a validated file, split on \\n only (as validation counted them)."""
    text = path.read_bytes().decode("utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start a new one
    return [line.rstrip("\r") for line in lines]
