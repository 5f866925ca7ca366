"""``raydistill pseudo-label``: the teacher writes the targets a student then trains on.

The teacher generates on a Ray Data actor pool (one model per actor; rows sorted by length so a
batch holds similar lengths). Work is cut into shards of ``shard_size`` examples; each finished
shard is written at once, atomically, as its own Parquet part, so a killed run loses at most the
shards in flight and a re-run generates only the missing ones. ``--out`` then holds:

    {split}.source / {split}.target      the six-file layout; .target = the teacher's outputs
    val.* / test.* (the other splits)    copied from --data-dir
    pseudo_labels/part-NNNNNN.parquet    id, source, target (pseudo-label), score, reference
    pseudo_label.json                    teacher (and its Hub id and commit), settings, counts,
                                         throughput (examples/s)

``score`` is the sequence's length-normalized log-probability (beam search's sequences_scores).
The teacher may be a folder or a Hub id (resolved once, here, before the actors start); it
generates in ``teacher_dtype`` (auto: bf16 or fp16 on GPU actors, fp32 on CPU), or with
``backend="ctranslate2"`` in CTranslate2 at ``compute_type`` (converted once, on the driver;
``score`` is then CTranslate2's hypothesis score).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from raydistill.atomic import write_text_atomic
from raydistill.data.files import (
    SPLITS,
    copy_split,
    one_line,
    read_split,
    validate_data_dir,
)
from raydistill.data.fingerprint import digest, model_fingerprint, split_fingerprint
from raydistill.errors import ConfigError, ModelError
from raydistill.models.ct2 import TOKENIZER_SAMPLES, Backend, prepare_backend

PARTS = "pseudo_labels"
SETTINGS_FILE = "_settings.json"
REPORT = "pseudo_label.json"


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard of ``n`` examples."""
    if shard_size < 1:
        raise ConfigError(f"shard_size={shard_size}: use a positive number of examples per shard")
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def part_path(out: str | Path, shard: int) -> Path:
    return Path(out) / PARTS / f"part-{shard:06d}.parquet"


def generate_batches(rows: dict[str, np.ndarray], settings: dict[str, Any],
                     num_workers: int = 1, num_gpus: float = 0.0,
                     backend: Backend | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Stream generated batches (``id``, ``prediction``, ``score``) from a Ray Data actor pool.

    ``rows`` holds ``id`` and ``source`` in the order to generate. Batches come back as the
    actors finish them (not in input order), while the pool keeps working. ``backend``: a
    ``prepare_backend`` result (None: transformers).
    """
    import pyarrow as pa
    import ray
    import ray.data

    from raydistill.data.files import arrow_dataset
    from raydistill.models.generate import generator_class

    from raydistill.runtime import check_actor_pool, init_ray, pool_map_batches

    init_ray()
    check_actor_pool("pseudo-label", num_workers, 1, num_gpus)
    table = pa.table({"id": rows["id"], "source": rows["source"]})
    # Blocks of a few batches: enough parallelism, few enough blocks for millions of rows.
    block = 4 * settings["batch_size"]
    ds = arrow_dataset([table.slice(i, block) for i in range(0, table.num_rows, block)])
    ds = pool_map_batches(
        ds, generator_class(backend),
        fn_constructor_kwargs=dict(
            model_dir=settings["teacher"], teacher_dtype=settings.get("teacher_dtype", "fp32"),
            num_beams=settings["num_beams"],
            length_penalty=settings["length_penalty"], max_length=settings["max_length"],
            max_source_length=settings["max_source_length"], batch_size=settings["batch_size"],
            device="cuda" if num_gpus > 0 else "cpu", return_scores=True, backend=backend),
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        batch_size=settings["batch_size"], batch_format="numpy", num_cpus=1, num_gpus=num_gpus,
    )
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


def pseudo_label(teacher: str, data_dir: str, out: str, *, split: str = "train",
                 num_beams: int = 2, max_length: int = 142, length_penalty: float = 1.0,
                 batch_size: int = 16, num_workers: int = 1, num_gpus: float = 0.0,
                 max_source_length: int = 1024, shard_size: int = 1000, n: int | None = None,
                 overwrite: bool = False, teacher_dtype: str = "auto",
                 model_cache_dir: str | None = None, backend: str = "transformers",
                 compute_type: str = "float32", ct2_cache_dir: str | None = None,
                 ) -> dict[str, Any]:
    """Pseudo-label ``split`` of ``data_dir`` into ``out`` (module doc); returns the report.

    ``teacher`` is a folder or a Hub id (``org/name[@revision]``, downloaded into
    ``model_cache_dir``, default HF's cache); it generates in ``teacher_dtype`` with
    transformers, or in ``compute_type`` with ``backend="ctranslate2"`` (converted into
    ``ct2_cache_dir``; unconvertible teachers fall back to transformers with a warning).
    """
    from raydistill.hub import resolve_model
    from raydistill.models.layers import teacher_dtype_label, teacher_torch_dtype

    t_start = time.perf_counter()
    teacher_torch_dtype(teacher_dtype)  # a bad name fails here, not in an actor
    source = resolve_model(teacher, "teacher", model_cache_dir)
    teacher_dir = Path(source.path)
    validate_data_dir(data_dir, (split,))
    out_dir = Path(out)
    if out_dir.resolve() == Path(data_dir).resolve():
        raise ConfigError(f"--out {out} is --data-dir: write pseudo-labels to a new folder")
    from raydistill.runtime import check_writable

    check_writable(out_dir, "--out")
    data = read_split(data_dir, split, n)
    used = prepare_backend(teacher_dir, backend, compute_type, ct2_cache_dir,
                           device="cuda" if num_gpus > 0 else "cpu",
                           samples=data.sources[:TOKENIZER_SAMPLES], num_gpus=num_gpus)
    settings = {"teacher": str(teacher_dir.resolve()), "split": split, "n": len(data),
                "num_beams": num_beams, "max_length": max_length, "length_penalty": length_penalty,
                "max_source_length": max_source_length, "batch_size": batch_size,
                "shard_size": shard_size, "teacher_dtype": teacher_dtype,
                "generation_backend": used.name, "compute_type": used.compute_type}
    # What the parts depend on; batch size does not change what greedy/beam search writes.
    # A Hub commit and a teacher dtype other than fp32 join it (so fp32 runs of local folders
    # keep the identity they had before either existed).
    skipped = ("batch_size", "teacher", "teacher_dtype", "generation_backend", "compute_type")
    identity = {k: v for k, v in settings.items() if k not in skipped} | {
        "teacher": digest(model_fingerprint(teacher_dir)),
        "data": digest(split_fingerprint(data_dir, split))}
    if source.commit:
        identity["teacher_commit"] = source.commit
    if teacher_dtype_label(teacher_dtype, num_gpus > 0) != "fp32":
        identity["teacher_dtype"] = teacher_dtype_label(teacher_dtype, num_gpus > 0)
    if used.name == "ctranslate2":  # another engine (and precision) writes other outputs
        identity.update(generation_backend=used.name, compute_type=used.compute_type)
    _check_or_start(out_dir, identity, overwrite)

    shards = shard_ranges(len(data), shard_size)
    pending = [s for s in range(len(shards)) if not part_path(out_dir, s).is_file()]
    if len(pending) < len(shards):
        rest = "; generating the rest" if pending else ""
        print(f"[raydistill] pseudo-label: {len(shards) - len(pending)} of {len(shards)} shards "
              f"already done{rest}", flush=True)
    t0 = time.perf_counter()
    generated = _label(data, shards, pending, out_dir, settings, num_workers, num_gpus,
                       used) if pending else 0
    gen_seconds = time.perf_counter() - t0

    kept, dropped = _write_split(out_dir, split, len(shards))
    copied = _copy_other_splits(data_dir, out_dir, split)
    previous = json.loads((out_dir / REPORT).read_text()) if (out_dir / REPORT).is_file() else {}
    runs = previous.get("runs", []) + [{
        "examples_generated": generated, "generate_seconds": round(gen_seconds, 3),
        "examples_per_second": round(generated / gen_seconds, 2) if generated else None,
        "num_workers": num_workers, "num_gpus_per_worker": num_gpus,
        "wall_seconds": round(time.perf_counter() - t_start, 2)}]
    timed = [r for r in runs if r["examples_generated"]]
    report = {
        "teacher": settings["teacher"], "teacher_fingerprint": identity["teacher"],
        "teacher_id": source.id, "teacher_revision": source.revision,
        "teacher_commit": source.commit,
        "data_dir": str(Path(data_dir).resolve()), "split": split, "settings": settings,
        "examples": len(data), "shards": len(shards), "written": kept,
        "dropped_empty": dropped, "copied_splits": copied,
        "examples_per_second": round(sum(r["examples_generated"] for r in timed) /
                                     max(sum(r["generate_seconds"] for r in timed), 1e-3), 2)
        if timed else None,
        "runs": runs,
    }
    write_text_atomic(out_dir / REPORT, json.dumps(report, indent=2) + "\n")
    return report


def _check_or_start(out_dir: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Parts from other settings must not be mixed in: refuse, or start over with --overwrite."""
    settings_file = out_dir / PARTS / SETTINGS_FILE
    if overwrite and out_dir.exists():
        shutil.rmtree(out_dir / PARTS, ignore_errors=True)
        (out_dir / REPORT).unlink(missing_ok=True)
    if settings_file.is_file():
        before = json.loads(settings_file.read_text())
        if before != identity:
            changed = sorted(k for k in set(before) | set(identity) if before.get(k) != identity.get(k))
            raise ConfigError(f"{out_dir} holds pseudo-labels made with other settings "
                              f"({', '.join(changed)} differ); pass --overwrite to start over "
                              "or choose another --out")
        return
    if out_dir.exists() and any(p.name != PARTS for p in out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out_dir} is not empty and holds no pseudo-label run; "
                          "choose an empty folder or pass --overwrite")
    write_text_atomic(settings_file, json.dumps(identity, indent=2) + "\n")


def _label(data, shards, pending, out_dir: Path, settings, num_workers, num_gpus,
           backend: Backend) -> int:
    """Generate the pending shards; write each as soon as its last example is back."""
    # Shard by shard (so shards finish in turn), longest first within one (OOM shows early).
    order = [i for s in pending for i in sorted(range(*shards[s]), key=lambda i: -len(data.sources[i]))]
    rows = {"id": np.asarray(order, dtype=np.int64),
            "source": np.asarray([data.sources[i] for i in order], dtype=object)}
    size = {s: shards[s][1] - shards[s][0] for s in pending}
    shard_of = np.zeros(len(data), dtype=np.int64)
    for s, (a, b) in enumerate(shards):
        shard_of[a:b] = s
    buffers: dict[int, dict[int, tuple[str, float]]] = {s: {} for s in pending}
    done = 0
    from raydistill.runtime import Progress

    progress = Progress("pseudo-label", len(order))
    for batch in generate_batches(rows, settings, num_workers, num_gpus, backend):
        progress.add(len(batch["id"]))
        for i, pred, score in zip(batch["id"], batch["prediction"], batch["score"]):
            s = int(shard_of[int(i)])
            buffers[s][int(i)] = (str(pred), float(score))
            if len(buffers[s]) == size[s]:
                _write_part(out_dir, s, buffers.pop(s), data)
                done += size[s]
    if buffers:
        raise RuntimeError(f"generation returned too few rows: shards {sorted(buffers)} incomplete")
    return done


def _write_part(out_dir: Path, shard: int, results: dict[int, tuple[str, float]], data) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = sorted(results)
    table = pa.table({
        "id": pa.array(ids, pa.int64()),
        "source": [data.sources[i] for i in ids],
        "target": [results[i][0] for i in ids],
        "score": pa.array([results[i][1] for i in ids], pa.float32()),
        "reference": [data.targets[i] for i in ids],
    })
    path = part_path(out_dir, shard)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_split(out_dir: Path, split: str, n_shards: int) -> tuple[int, int]:
    """All parts -> ``{split}.source`` / ``{split}.target``; empty pseudo-labels are left out."""
    import pyarrow.parquet as pq

    sources, targets, dropped = [], [], 0
    for s in range(n_shards):
        t = pq.read_table(part_path(out_dir, s), columns=["source", "target"])
        for src, tgt in zip(t.column("source").to_pylist(), t.column("target").to_pylist()):
            src, tgt = one_line(src), one_line(tgt)
            if not tgt or not src:
                dropped += 1
                continue
            sources.append(src)
            targets.append(tgt)
    if dropped:
        print(f"[raydistill] pseudo-label: {dropped} examples got an empty output and are left "
              f"out of {split}.target (kept in {PARTS}/)", flush=True)
    if not sources:
        raise ModelError(f"every pseudo-label of {split} is empty: the teacher wrote nothing for "
                         f"any of its {dropped} examples; check the teacher (max_length, its "
                         f"generation config) before training on them (its outputs: {PARTS}/)")
    write_text_atomic(out_dir / f"{split}.source", "\n".join(sources) + "\n")
    write_text_atomic(out_dir / f"{split}.target", "\n".join(targets) + "\n")
    return len(sources), dropped


def _copy_other_splits(data_dir: str, out_dir: Path, split: str) -> list[str]:
    copied = []
    for other in SPLITS:
        if other == split:
            continue
        try:
            validate_data_dir(data_dir, (other,))
        except Exception:  # a split the source folder lacks (or a broken one) is not copied
            continue
        copied += copy_split(data_dir, out_dir, other)
    return copied


def register_cli(sub: argparse._SubParsersAction) -> None:
    """``raydistill pseudo-label``."""
    p = sub.add_parser("pseudo-label", help="teacher outputs as training targets (Ray Data, resumable)")
    p.add_argument("--teacher", required=True, help="teacher model folder or Hub id "
                   "(org/name[@revision])")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True, help="new data folder (six-file layout + Parquet)")
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--num-beams", type=int, default=2)
    p.add_argument("--max-length", type=int, default=142, help="longest pseudo-label, in tokens")
    p.add_argument("--length-penalty", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=1, help="Ray Data actors (one teacher each)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor")
    p.add_argument("--max-source-length", type=int, default=1024)
    p.add_argument("--shard-size", type=int, default=1000,
                   help="examples per Parquet part (the unit a re-run skips)")
    p.add_argument("--n", type=int, default=None, help="first n examples only")
    p.add_argument("--overwrite", action="store_true", help="discard earlier parts in --out")
    p.add_argument("--teacher-dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="the teacher's weights (auto: bf16 or fp16 on GPU actors, fp32 on CPU)")
    p.add_argument("--model-cache-dir", default=None, help="where a Hub id is downloaded "
                   "(default: $HF_HUB_CACHE, else Hugging Face's cache)")
    from raydistill.models.ct2 import add_backend_args
    from raydistill.runtime import add_address_arg

    add_backend_args(p)
    add_address_arg(p)
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from raydistill.runtime import join_address

    join_address(getattr(args, "address", None))
    report = pseudo_label(args.teacher, args.data_dir, args.out, split=args.split,
                          num_beams=args.num_beams, max_length=args.max_length,
                          length_penalty=args.length_penalty, batch_size=args.batch_size,
                          num_workers=args.num_workers, num_gpus=args.num_gpus,
                          max_source_length=args.max_source_length, shard_size=args.shard_size,
                          n=args.n, overwrite=args.overwrite, teacher_dtype=args.teacher_dtype,
                          model_cache_dir=args.model_cache_dir, backend=args.backend,
                          compute_type=args.compute_type, ct2_cache_dir=args.ct2_cache_dir)
    last = report["runs"][-1]
    speed = f"{last['examples_per_second']} examples/s" if last["examples_generated"] else "nothing left to do"
    print(f"pseudo-labels of {report['examples']} examples in {args.out} "
          f"({report['shards']} shards; this run: {last['examples_generated']} generated, {speed})")
    return 0


__all__ = ["generate_batches", "part_path", "pseudo_label", "shard_ranges"]
