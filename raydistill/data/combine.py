"""``raydistill combine-data OUT DIR1 DIR2 ...``: one train set from several (the README's all_pl).

As the seq2seq recipe (``cat a/train.source b/train.source > all_pl/train.source``, same for
``.target``; ``cp a/val* a/test* all_pl``): train examples are concatenated in argument order,
val and test are copied from the first folder. Every input is validated before anything is
written. Inputs may use any layout (six-file, jsonl, parquet); the output is six-file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from raydistill.atomic import write_text_atomic
from raydistill.data.files import (
    copy_split,
    find_split_files,
    one_line,
    read_split,
    validate_data_dir,
)
from raydistill.errors import ConfigError, DataError


def combine_data(out: str | Path, data_dirs: list[str | Path], *,
                 overwrite: bool = False) -> dict[str, Any]:
    """Concatenate the train splits of ``data_dirs`` into ``out``; returns the summary."""
    if not data_dirs:
        raise ConfigError("combine-data needs at least one input folder: OUT DIR1 [DIR2 ...]")
    out = Path(out)
    dirs = [Path(d) for d in data_dirs]
    if any(out.resolve() == d.resolve() for d in dirs):
        raise ConfigError(f"OUT {out} is also an input; write the combination to a new folder")
    for d in dirs:
        validate_data_dir(d, ("train",))
    validate_data_dir(dirs[0], ("val",))  # distill needs val; it comes from the first folder
    has_test = _has_split(dirs[0], "test")
    if has_test:
        validate_data_dir(dirs[0], ("test",))
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"OUT {out} is not empty; choose a new folder or pass --overwrite")

    sources: list[str] = []
    targets: list[str] = []
    counts = []
    for d in dirs:
        split = read_split(d, "train")
        sources += [one_line(s) for s in split.sources]
        targets += [one_line(t) for t in split.targets]
        counts.append({"dir": str(d.resolve()), "train": len(split)})
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "train.source", "\n".join(sources) + "\n")
    write_text_atomic(out / "train.target", "\n".join(targets) + "\n")
    copied = copy_split(dirs[0], out, "val") + (copy_split(dirs[0], out, "test") if has_test else [])
    summary = {"inputs": counts, "train": len(sources), "val_test_from": str(dirs[0].resolve()),
               "copied": copied}
    write_text_atomic(out / "combine.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _has_split(d: Path, split: str) -> bool:
    try:
        find_split_files(d, split)
    except DataError:
        return False
    return True


def register_cli(sub: argparse._SubParsersAction) -> None:
    """``raydistill combine-data``."""
    p = sub.add_parser("combine-data", help="concatenate train sets (val/test from the first)")
    p.add_argument("out", help="new data folder")
    p.add_argument("data_dirs", nargs="+", help="data folders, in order")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    summary = combine_data(args.out, args.data_dirs, overwrite=args.overwrite)
    parts = " + ".join(str(c["train"]) for c in summary["inputs"])
    print(f"{args.out}: train {summary['train']} examples ({parts}); val/test from "
          f"{summary['val_test_from']}")
    return 0


__all__ = ["combine_data"]
