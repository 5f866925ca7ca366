"""Planned epochs across N workers: equal counts, every example once, budget kept, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raydistill.data.plan import (
    PlanSpec,
    batches_per_worker,
    epoch_plan,
    gather_rows,
    plan_mode,
    planned_batches,
    rank_batches,
)
from raydistill.data.tokenize import make_collate_fn
from raydistill.train.loop import _PlannedFeed

N_EXAMPLES = 301  # odd on purpose: nothing divides evenly


@pytest.fixture
def lengths():
    rng = np.random.default_rng(0)
    ids = np.arange(1000, 1000 + N_EXAMPLES) * 3  # ids need not be positions
    return ids, rng.integers(4, 200, N_EXAMPLES), rng.integers(2, 60, N_EXAMPLES)


SPECS = [
    PlanSpec("token_budget", num_workers=1, seed=0, max_tokens=512),
    PlanSpec("token_budget", num_workers=2, seed=0, max_tokens=512),
    PlanSpec("token_budget", num_workers=3, seed=1, max_tokens=300),
    PlanSpec("sortish", num_workers=2, seed=0, batch_size=8),
    PlanSpec("sortish", num_workers=3, seed=0, batch_size=16),
    PlanSpec("random", num_workers=2, seed=5, batch_size=8),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.mode}-{s.num_workers}w")
def test_every_worker_gets_as_many_batches_and_every_example_once(lengths, spec):
    ids, src, tgt = lengths
    for epoch in (0, 1):
        plan = epoch_plan(src, tgt, spec, epoch)
        shares = [rank_batches(plan, ids, spec.num_workers, r) for r in range(spec.num_workers)]
        assert len({len(s) for s in shares}) == 1  # DDP: no worker waits for another
        seen = np.sort(np.concatenate([b for s in shares for b in s]))
        assert seen.tolist() == sorted(ids.tolist())  # each example exactly once
        assert plan.num_repeated == 0
        if spec.mode == "token_budget":
            for b in plan.batches:
                assert len(b) * src[b].max() <= spec.max_tokens
                assert len(b) * tgt[b].max() <= spec.max_tokens
        else:
            assert max(len(b) for b in plan.batches) <= spec.batch_size


@pytest.mark.parametrize("spec", SPECS[1::2], ids=lambda s: s.mode)
def test_plans_are_deterministic_per_epoch_and_counted_for_the_schedule(lengths, spec):
    ids, src, tgt = lengths
    e0 = epoch_plan(src, tgt, spec, 0)
    assert epoch_plan(src, tgt, spec, 0).batches == e0.batches  # driver and workers agree
    assert epoch_plan(src, tgt, spec, 1).batches != e0.batches  # a new order every epoch
    counts = batches_per_worker(src, tgt, spec, epochs=3)
    assert counts == [len(epoch_plan(src, tgt, spec, e).batches) // spec.num_workers
                      for e in range(3)]
    assert counts[0] == len(rank_batches(e0, ids, spec.num_workers, spec.num_workers - 1))


def test_token_budget_cuts_padding_against_random_batches(lengths):
    from raydistill.data.batching import padding_fraction

    _, src, tgt = lengths
    budget = epoch_plan(src, tgt, PlanSpec("token_budget", 2, 0, max_tokens=512), 0)
    rand = epoch_plan(src, tgt, PlanSpec("random", 2, 0, batch_size=8), 0)
    assert padding_fraction(budget.batches, src) < padding_fraction(rand.batches, src) / 3


def test_plan_mode_choice():
    assert plan_mode(None, False) is None  # plain streaming split
    assert plan_mode(2000, True) == "token_budget"
    assert plan_mode(None, True) == "sortish"
    assert plan_mode(None, False, cached_logits=True) == "random"
    with pytest.raises(ValueError, match="max_tokens"):
        PlanSpec("token_budget", 1, 0)


class FakeIterator:
    """What a Ray DataIterator offers the feed: iter_batches over numpy blocks."""

    def __init__(self, columns: dict[str, list], block: int = 7):
        self.columns, self.block, self.passes = columns, block, 0

    def iter_batches(self, batch_size=None, batch_format="numpy"):
        self.passes += 1
        n = len(self.columns["id"])
        for a in range(0, n, self.block):
            yield {k: _np(v[a:a + self.block]) for k, v in self.columns.items()}


def _np(values):
    if isinstance(values[0], np.ndarray):
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out
    return np.asarray(values)


def _train_rows(ids, src, tgt):
    rng = np.random.default_rng(1)
    return {"id": list(ids),
            "input_ids": [rng.integers(4, 50, s).astype(np.int32) for s in src],
            "labels": [rng.integers(4, 50, t).astype(np.int32) for t in tgt],
            "source": ["text"] * len(ids)}


def test_planned_batches_pull_rows_by_id_and_join_cached_logits(lengths):
    ids, src, tgt = lengths
    rows = _train_rows(ids, src, tgt)
    k = 3
    logits = {"id": list(ids)[::-1],  # another order than train: the join is by id
              "topk_values": [np.full(t * k, float(i), np.float32) for i, t in zip(ids[::-1], tgt[::-1])],
              "topk_indices": [np.zeros(t * k, np.int32) for t in tgt[::-1]]}
    spec = PlanSpec("token_budget", 2, 0, max_tokens=512)
    mine = rank_batches(epoch_plan(src, tgt, spec, 0), ids, 2, 1)
    train_it, logit_it = FakeIterator(rows), FakeIterator(logits, block=50)
    out = list(planned_batches(mine, {"train": train_it, "teacher_logits": logit_it},
                               make_collate_fn(pad_token_id=1),
                               {"train": ["input_ids", "labels"],
                                "teacher_logits": ["topk_values", "topk_indices"]}))
    assert train_it.passes == 1 and logit_it.passes == 1  # one pass per source per epoch
    assert len(out) == len(mine)
    pos = {int(i): j for j, i in enumerate(ids)}
    for batch, want in zip(out, mine):
        assert batch["id"].tolist() == want.tolist()
        assert batch["input_ids"].shape == (len(want), src[[pos[int(i)] for i in want]].max())
        assert batch["topk_values"].shape == (*batch["labels"].shape, k)
        for r, i in enumerate(want):  # each row got its own cached logits
            n = tgt[pos[int(i)]]
            assert torch.all(batch["topk_values"][r, :n] == float(i))
            assert torch.all(batch["topk_values"][r, n:] == 0)
            assert batch["labels"][r, :n].tolist() == rows["labels"][pos[int(i)]].tolist()


def test_gather_rows_names_missing_ids():
    it = FakeIterator({"id": [1, 2], "x": [5, 6]})
    assert gather_rows(it, [2])[2]["x"] == 6
    with pytest.raises(KeyError, match="not in the dataset"):
        gather_rows(it, [2, 9])


def test_worker_feed_resumes_at_the_batch_index_of_the_plan(lengths):
    """The loop's feed: epoch(e, skip) is epoch(e, 0) without its first `skip` batches."""
    ids, src, tgt = lengths
    rows = _train_rows(ids, src, tgt)
    spec = PlanSpec("sortish", num_workers=2, seed=3, batch_size=8)
    plan = {"spec": {"mode": spec.mode, "num_workers": 2, "seed": 3, "batch_size": 8,
                     "max_tokens": None},
            "lengths": np.stack([ids, src, tgt]), "counts": [], "cached_logits": False}
    for rank in (0, 1):
        feed = _PlannedFeed(plan, FakeIterator(rows), make_collate_fn(1), rank, 2)
        full, n = feed.epoch(1, 0)
        full = [b["id"].tolist() for b in full]
        resumed, n2 = feed.epoch(1, 5)
        assert n == n2 == len(full) == batches_per_worker(src, tgt, spec, 2)[1]
        assert [b["id"].tolist() for b in resumed] == full[5:]


def test_the_driver_reads_lengths_from_the_materialized_blocks_sorted_by_id(ray_session, tmp_path):
    """plan_epochs reads id / src_len / tgt_len from the tokenized split's blocks (no Ray Data
    execution): shuffled blocks still give lengths sorted by id, equal to the rows'."""
    import pyarrow as pa
    import ray.data

    from raydistill.config import DistillConfig
    from raydistill.train.run import plan_epochs

    rng = np.random.default_rng(1)
    ids = rng.permutation(50).astype(np.int64)
    src, tgt = rng.integers(3, 40, 50).astype(np.int32), rng.integers(2, 20, 50).astype(np.int32)
    table = pa.table({"id": ids, "src_len": src, "tgt_len": tgt})
    ds = ray.data.from_arrow([table.slice(0, 17), table.slice(17, 20), table.slice(37)])
    cfg = DistillConfig.from_dict({"method": "sft", "student": "s", "data_dir": "d",
                                   "output_dir": str(tmp_path), "max_tokens_per_batch": 200,
                                   "max_steps": 5})
    spec, lengths, counts = plan_epochs(cfg, "token_budget", ds, tmp_path)
    order = np.argsort(ids)
    np.testing.assert_array_equal(lengths, np.stack([ids[order], src[order], tgt[order]]))
    assert counts[0] == len(epoch_plan(lengths[1], lengths[2], spec, 0).batches)
