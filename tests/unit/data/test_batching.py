"""Batch plans: budgets respected, every example once, seeded per epoch, even across workers."""

from __future__ import annotations

import numpy as np
import pytest

from raydistill.data.batching import (
    padding_fraction,
    shard_batches,
    sortish_batches,
    token_budget_batches,
    token_budget_plan,
)


@pytest.fixture
def lens():
    rng = np.random.default_rng(0)
    return rng.integers(3, 120, size=1000).tolist(), rng.integers(2, 40, size=1000).tolist()


def _flat(batches):
    return sorted(i for b in batches for i in b)


def test_sortish_covers_all_longest_first_and_reshuffles(lens):
    src, _ = lens
    b0 = sortish_batches(src, batch_size=16, seed=1, epoch=0)
    assert _flat(b0) == list(range(1000))
    assert sorted(len(b) for b in b0) == [8] + [16] * 62  # 1000 = 62 x 16 + 8
    assert max(src[i] for i in b0[0]) == max(src)  # the longest example's batch goes first
    assert sortish_batches(src, 16, seed=1, epoch=0) == b0  # reproducible
    assert sortish_batches(src, 16, seed=1, epoch=1) != b0  # new order each epoch
    # Sorting within chunks gives far less padding than random batches.
    rand = np.random.default_rng(0).permutation(1000).reshape(-1, 8).tolist()
    assert padding_fraction(b0, src) < padding_fraction(rand, src) / 3


def test_token_budget_respected_and_each_example_once(lens):
    src, tgt = lens
    plan = token_budget_plan(src, tgt, max_tokens=512, seed=0, epoch=0)
    assert plan.num_oversized == 0 and plan.num_repeated == 0
    assert _flat(plan.batches) == list(range(1000))
    for b in plan.batches:
        assert len(b) * max(src[i] for i in b) <= 512 and len(b) * max(tgt[i] for i in b) <= 512
    assert padding_fraction(plan.batches, src) < 0.1


def test_oversized_example_goes_alone_and_is_counted():
    src, tgt = [10, 300, 12, 11, 9, 400], [5, 5, 5, 5, 5, 5]
    plan = token_budget_plan(src, tgt, max_tokens=100)
    assert plan.num_oversized == 2
    assert [1] in plan.batches and [5] in plan.batches
    assert _flat(plan.batches) == list(range(6))
    assert token_budget_plan([5], [200], max_tokens=100).num_oversized == 1  # target side too


def test_token_budget_order_per_epoch(lens):
    src, tgt = lens
    e0 = token_budget_batches(src, tgt, 512, seed=3, epoch=0)
    assert token_budget_batches(src, tgt, 512, seed=3, epoch=0) == e0
    assert token_budget_batches(src, tgt, 512, seed=3, epoch=1) != e0
    assert token_budget_batches(src, tgt, 512, seed=4, epoch=0) != e0


@pytest.mark.parametrize("num_workers", [2, 3, 7])
def test_workers_get_equal_counts_without_drop_or_duplicate(lens, num_workers):
    src, tgt = lens
    plan = token_budget_plan(src, tgt, 512, num_workers=num_workers)
    assert len(plan.batches) % num_workers == 0 and plan.num_repeated == 0
    shards = [shard_batches(plan.batches, num_workers, r) for r in range(num_workers)]
    assert len({len(s) for s in shards}) == 1
    assert _flat([b for s in shards for b in s]) == list(range(1000))
    for b in plan.batches:  # splitting keeps batches under budget
        assert len(b) * max(src[i] for i in b) <= 512


def test_too_few_examples_for_workers_repeats():
    plan = token_budget_plan([5, 5, 5], [5, 5, 5], max_tokens=5, num_workers=2)
    assert len(plan.batches) == 4 and plan.num_repeated == 1


def test_no_shuffle_is_sorted_longest_first(lens):
    src, tgt = lens
    batches = token_budget_batches(src, tgt, 512, shuffle=False)
    firsts = [src[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)


def test_shard_batches_rejects_uneven():
    with pytest.raises(ValueError, match="num_workers=2"):
        shard_batches([[0], [1], [2]], num_workers=2, rank=0)
