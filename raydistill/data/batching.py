"""Batch plans from example lengths: pure functions of (lengths, seed, epoch), no Ray.

Grouping examples of similar length cuts padding (and compute); doing it only within random
chunks ("sortish") keeps batches varied from epoch to epoch. Seeding by (seed, epoch) makes every
epoch's order different yet reproducible, which an exact resume needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CHUNK_BATCHES = 50  # sort within chunks of 50 batches, as the seq2seq scripts' SortishSampler


def sortish_batches(
    lens: Sequence[int], batch_size: int, seed: int = 0, epoch: int = 0
) -> list[list[int]]:
    """Fixed-size batches of indices, sorted by length within random chunks.

    Like SortishSampler: random permutation; sort each chunk of ``50 * batch_size`` by length,
    longest first; cut into batches; the batch holding the longest example goes first (so an
    out-of-memory shows at step 0, not hours in); the other batches are shuffled.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    lens_arr = np.asarray(lens)
    rng = np.random.default_rng([seed, epoch])
    order = _sortish_order(lens_arr, CHUNK_BATCHES * batch_size, rng)
    batches = [order[i: i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if not batches:
        return []
    longest = int(np.argmax([lens_arr[b].max() for b in batches]))
    first = batches.pop(longest)
    rest = [batches[i] for i in rng.permutation(len(batches))]
    return [first, *rest]


@dataclass(frozen=True)
class BatchPlan:
    """Batches of indices, and how many of them hold one example over the token budget alone."""

    batches: list[list[int]]
    num_oversized: int
    num_repeated: int = 0  # batches repeated to give every worker as many (see token_budget_plan)


def token_budget_plan(
    src_lens: Sequence[int],
    tgt_lens: Sequence[int],
    max_tokens: int,
    seed: int = 0,
    epoch: int = 0,
    num_workers: int = 1,
    shuffle: bool = True,
) -> BatchPlan:
    """Batches whose padded size (rows x longest source, and rows x longest target) <= ``max_tokens``.

    Examples are sorted by length within random chunks and packed greedily; an example over the
    budget by itself gets a batch of its own and is counted in ``num_oversized``. Every example
    appears exactly once. With ``num_workers > 1`` the number of batches is made a multiple of
    ``num_workers`` by halving the batches with the most rows (halves stay under budget), so
    ``shard_batches`` gives every worker the same number of steps without dropping anything.
    Only when too few examples remain to split (fewer than one per extra batch needed) are the
    first batches repeated, counted in ``num_repeated``.

    ``shuffle=False`` (evaluation) sorts all examples longest first and keeps that batch order.
    Otherwise batches are shuffled, and the ``num_workers`` largest go first (one per worker) so
    an out-of-memory shows at the first step.
    """
    if max_tokens < 1 or num_workers < 1:
        raise ValueError(f"max_tokens and num_workers must be >= 1 (got {max_tokens}, {num_workers})")
    src, tgt = np.asarray(src_lens), np.asarray(tgt_lens)
    if len(src) != len(tgt):
        raise ValueError(f"src_lens and tgt_lens differ in length ({len(src)} vs {len(tgt)})")
    if len(src) == 0:
        return BatchPlan([], 0)
    rng = np.random.default_rng([seed, epoch])
    # Chunks of about 50 batches, as in sortish_batches; a typical batch has max_tokens / median rows.
    rows_per_batch = max(1, max_tokens // max(1, int(np.median(src))))
    chunk = CHUNK_BATCHES * rows_per_batch if shuffle else len(src)
    order = _sortish_order(src, chunk, rng, tie=tgt)

    batches: list[list[int]] = []
    num_oversized = 0
    cur: list[int] = []
    cur_src = cur_tgt = 0
    for i in order.tolist():
        s, t = int(src[i]), int(tgt[i])
        rows = len(cur) + 1
        if cur and rows * max(cur_src, s) <= max_tokens and rows * max(cur_tgt, t) <= max_tokens:
            cur.append(i)
            cur_src, cur_tgt = max(cur_src, s), max(cur_tgt, t)
            continue
        if cur:
            batches.append(cur)
        cur, cur_src, cur_tgt = [i], s, t
        num_oversized += s > max_tokens or t > max_tokens
    if cur:
        batches.append(cur)

    num_repeated = 0
    if num_workers > 1 and len(batches) % num_workers:
        batches, num_repeated = _make_multiple(batches, num_workers)
    if shuffle and batches:
        batches = [batches[i] for i in rng.permutation(len(batches))]
        cost = [len(b) * max(int(src[b].max()), int(tgt[b].max())) for b in batches]
        front = set(np.argsort(cost, kind="stable")[::-1][:num_workers].tolist())
        batches = [b for i, b in enumerate(batches) if i in front] + [
            b for i, b in enumerate(batches) if i not in front]
    return BatchPlan(batches, num_oversized, num_repeated)


def token_budget_batches(
    src_lens: Sequence[int],
    tgt_lens: Sequence[int],
    max_tokens: int,
    seed: int = 0,
    epoch: int = 0,
    num_workers: int = 1,
    shuffle: bool = True,
) -> list[list[int]]:
    """The batches of ``token_budget_plan`` (use the plan to warn about oversized examples)."""
    return token_budget_plan(src_lens, tgt_lens, max_tokens, seed, epoch, num_workers, shuffle).batches


def fixed_size_plan(
    lens: Sequence[int],
    batch_size: int,
    seed: int = 0,
    epoch: int = 0,
    num_workers: int = 1,
    sortish: bool = True,
) -> BatchPlan:
    """Batches of ``batch_size`` indices (``sortish_batches``, or random when ``sortish=False``).

    As in ``token_budget_plan``, the count is made a multiple of ``num_workers`` by halving the
    largest batches (repeating batches only when single examples are left), so every worker
    gets as many batches and every example is seen once per epoch.
    """
    if sortish:
        batches = sortish_batches(lens, batch_size, seed, epoch)
    else:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        perm = np.random.default_rng([seed, epoch]).permutation(len(lens))
        batches = [perm[i: i + batch_size].tolist() for i in range(0, len(perm), batch_size)]
    num_repeated = 0
    if num_workers > 1 and batches and len(batches) % num_workers:
        batches, num_repeated = _make_multiple(batches, num_workers)
    return BatchPlan(batches, 0, num_repeated)


def shard_batches(batches: Sequence[list[int]], num_workers: int, rank: int) -> list[list[int]]:
    """Worker ``rank``'s share: ``batches[rank::num_workers]`` (equal counts need a multiple)."""
    if not 0 <= rank < num_workers:
        raise ValueError(f"rank must be in [0, {num_workers}) (got {rank})")
    if len(batches) % num_workers:
        raise ValueError(f"{len(batches)} batches do not split evenly over {num_workers} workers: "
                         f"plan them with num_workers={num_workers}")
    return list(batches[rank::num_workers])


def padding_fraction(batches: Sequence[Sequence[int]], src_lens: Sequence[int]) -> float:
    """Fraction of padded source positions: 1 - real tokens / (rows x longest row), summed."""
    lens = np.asarray(src_lens)
    padded = sum(len(b) * int(lens[list(b)].max()) for b in batches if len(b))
    real = sum(int(lens[list(b)].sum()) for b in batches)
    return 1.0 - real / padded if padded else 0.0


def _sortish_order(lens: np.ndarray, chunk: int, rng: np.random.Generator,
                   tie: np.ndarray | None = None) -> np.ndarray:
    """A random permutation, sorted longest first (then by ``tie``) within each chunk."""
    perm = rng.permutation(len(lens))
    out = []
    for c in range(0, len(perm), max(1, chunk)):
        idx = perm[c: c + chunk]
        keys = (-lens[idx],) if tie is None else (-tie[idx], -lens[idx])  # lexsort: last key leads
        out.append(idx[np.lexsort(keys)])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _make_multiple(batches: list[list[int]], num_workers: int) -> tuple[list[list[int]], int]:
    """Halve the batches with most rows until the count is a multiple of ``num_workers``."""
    batches = list(batches)
    need = -len(batches) % num_workers
    while need and max(len(b) for b in batches) > 1:
        k = max(range(len(batches)), key=lambda j: len(batches[j]))
        b = batches[k]
        batches[k: k + 1] = [b[: len(b) // 2], b[len(b) // 2:]]
        need -= 1
    # Every batch is a single example and the count is still short: repeat the first batches
    # (DistributedSampler's choice) rather than leave one worker a step short and hang DDP.
    repeated = [batches[j % len(batches)] for j in range(need)]
    return batches + repeated, len(repeated)
