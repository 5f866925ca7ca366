"""Planned epochs for N Ray Train workers: the driver's plan and the worker's side of feeding it.

With ``max_tokens_per_batch`` (token-budget batches), ``sortish_sampler`` (length-grouped fixed
batches) or cached teacher logits, batches are not cut from a stream: they come from a *plan*,
a pure function of (example lengths, settings, seed, epoch). The driver and every worker compute
the same plan; worker ``rank`` takes ``batches[rank::N]`` (the count is a multiple of N, so DDP
never waits on a worker that ran out), and pulls the rows of those batches by example id from the
(non-split, materialized) Ray Dataset. Resuming is exact: the position in the data is the batch
index in the epoch's plan. See docs/data_at_scale.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from raydistill.data.batching import BatchPlan, fixed_size_plan, shard_batches, token_budget_plan

PLAN_MODES = ("token_budget", "sortish", "random")


@dataclass(frozen=True)
class PlanSpec:
    """What decides every epoch's batches (besides the lengths and the epoch number)."""

    mode: str  # one of PLAN_MODES
    num_workers: int
    seed: int
    batch_size: int = 8
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in PLAN_MODES:
            raise ValueError(f"plan mode {self.mode!r} is unknown; use one of {', '.join(PLAN_MODES)}")
        if self.mode == "token_budget" and not self.max_tokens:
            raise ValueError("plan mode token_budget needs max_tokens (max_tokens_per_batch)")


def plan_mode(max_tokens_per_batch: int | None, sortish_sampler: bool,
              cached_logits: bool = False) -> str | None:
    """The plan a run uses, or None for plain streaming fixed-size batches (no plan).

    Cached teacher logits need a plan even without length grouping: the worker joins them to
    the train rows by example id, which a stream split cannot do.
    """
    if max_tokens_per_batch:
        return "token_budget"
    if sortish_sampler:
        return "sortish"
    return "random" if cached_logits else None


def epoch_plan(src_lens: Sequence[int], tgt_lens: Sequence[int], spec: PlanSpec,
               epoch: int) -> BatchPlan:
    """Epoch ``epoch``'s batches, as positions into the length arrays; count % num_workers == 0."""
    if spec.mode == "token_budget":
        return token_budget_plan(src_lens, tgt_lens, spec.max_tokens, spec.seed, epoch,  # type: ignore[arg-type]
                                 num_workers=spec.num_workers)
    return fixed_size_plan(src_lens, spec.batch_size, spec.seed, epoch, spec.num_workers,
                           sortish=spec.mode == "sortish")


def batches_per_worker(src_lens: Sequence[int], tgt_lens: Sequence[int], spec: PlanSpec,
                       epochs: int) -> list[int]:
    """Each epoch's number of batches per worker (what the LR schedule must count)."""
    return [len(epoch_plan(src_lens, tgt_lens, spec, e).batches) // spec.num_workers
            for e in range(epochs)]


def rank_batches(plan: BatchPlan, ids: np.ndarray, num_workers: int, rank: int) -> list[np.ndarray]:
    """Worker ``rank``'s batches of the plan, as arrays of example ids (``ids[position]``)."""
    return [np.asarray(ids)[np.asarray(b, dtype=np.int64)]
            for b in shard_batches(plan.batches, num_workers, rank)]


def gather_rows(iterator: Any, wanted: Iterable[int],
                columns: Sequence[str] | None = None) -> dict[int, dict[str, Any]]:
    """Rows whose ``id`` is in ``wanted``, read from a Ray ``DataIterator`` (or ``Dataset``).

    One pass over the dataset's blocks as they are (no task, so it runs while the training
    workers hold every CPU); only the wanted rows are kept. Raises if an id is missing.
    """
    want = np.unique(np.fromiter(wanted, dtype=np.int64))
    rows: dict[int, dict[str, Any]] = {}
    if len(want) == 0:
        return rows
    for block in iterator.iter_batches(batch_size=None, batch_format="numpy"):
        ids = np.asarray(block["id"], dtype=np.int64)
        hit = np.nonzero(np.isin(ids, want, assume_unique=False))[0]
        cols = columns or [c for c in block if c != "id"]
        for j in hit:
            rows[int(ids[j])] = {c: block[c][j] for c in cols}
    missing = len(want) - len(rows)
    if missing:
        absent = [int(i) for i in want if int(i) not in rows][:5]
        raise KeyError(f"{missing} example ids of the plan are not in the dataset (first: {absent}); "
                       "the lengths and the dataset come from different data")
    return rows


def planned_batches(
    batches: Sequence[np.ndarray],
    sources: Mapping[str, Any],
    collate: Any,
    columns: Mapping[str, Sequence[str]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Collated batches in plan order, the rows joined by id across ``sources``.

    ``sources`` maps a name to a ``DataIterator`` (``"train"`` with input_ids/labels, optionally
    ``"teacher_logits"`` with cached top-k logits); ``columns`` picks each source's columns.
    All of this epoch's rows are gathered first (one pass per source): a worker holds its
    1/N share of the epoch's rows in memory.
    """
    wanted = np.concatenate(list(batches)) if len(batches) else np.zeros(0, dtype=np.int64)
    tables = {name: gather_rows(it, wanted, (columns or {}).get(name)) for name, it in sources.items()}
    for batch_ids in batches:
        cols: dict[str, list[Any]] = {"id": [int(i) for i in batch_ids]}
        for table in tables.values():
            for i in cols["id"]:
                for c, v in table[i].items():
                    cols.setdefault(c, []).append(v)
        yield collate({c: _column(v) for c, v in cols.items()})


class PlannedFeed:
    """One Train worker's batches of each epoch's plan, joined by id with cached logits if any.

    ``plan`` is what the driver put in the run (``spec``, ``lengths`` as an array or an object
    ref, ``cached_logits``); ``train_shard`` the train Dataset's (unsplit) shard.
    """

    def __init__(self, plan: dict[str, Any], train_shard: Any, collate: Any, rank: int,
                 world: int) -> None:
        import ray
        import ray.train

        lengths = plan["lengths"]
        self.ids, self.src, self.tgt = ray.get(lengths) if isinstance(lengths, ray.ObjectRef) else lengths
        self.spec = PlanSpec(**plan["spec"])
        self.sources = {"train": train_shard}
        self.columns: dict[str, Any] = {"train": ["input_ids", "labels"]}
        if plan.get("cached_logits"):
            self.sources["teacher_logits"] = ray.train.get_dataset_shard("teacher_logits")
            self.columns["teacher_logits"] = None  # top-k and any cached hidden states
        self.collate, self.rank, self.world = collate, rank, world

    def epoch(self, epoch: int, skip: int) -> tuple[Iterator[dict[str, Any]], int]:
        """(collated batches on the host from index ``skip``, batches in this epoch). The
        iterator does the gathering and collating: the loop runs it on its prefetch thread."""
        mine = rank_batches(epoch_plan(self.src, self.tgt, self.spec, epoch), self.ids,
                            self.world, self.rank)
        return planned_batches(mine[skip:], self.sources, self.collate, self.columns), len(mine)


def _column(values: list[Any]) -> np.ndarray:
    """A list of per-row values as the numpy column a collate function expects (ragged kept)."""
    if values and isinstance(values[0], np.ndarray):
        out = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            out[i] = v
        return out
    return np.asarray(values)


__all__ = ["PLAN_MODES", "PlanSpec", "PlannedFeed", "batches_per_worker", "epoch_plan",
           "gather_rows", "plan_mode", "planned_batches", "rank_batches"]
