"""The worker loop's prefetch: batches in order, errors raised where the loop waits, no silent hang."""

from __future__ import annotations

import threading

import pytest
import torch

from raydistill.errors import TrainingError
from raydistill.train.prefetch import Prefetcher, host_batch, to_device


def test_items_come_prepared_and_in_order_from_another_thread():
    threads = set()

    def prepare(x):
        threads.add(threading.current_thread().name)
        return x * 10

    with Prefetcher(range(7), prepare, depth=2) as items:
        assert list(items) == [0, 10, 20, 30, 40, 50, 60]
    assert threads and threading.current_thread().name not in threads


def test_an_error_in_the_thread_is_raised_in_the_loop():
    def source():
        yield 1
        raise KeyError("3 example ids of the plan are not in the dataset")

    with Prefetcher(source(), lambda x: x) as items, pytest.raises(KeyError, match="not in the"):
        assert next(iter(items)) == 1
        next(iter(items))


def test_a_thread_that_died_without_a_word_is_an_error_not_a_hang():
    class Mute(Prefetcher):
        def _produce(self, source, prepare):  # ends without a batch, an end mark or an error
            return

    with Mute(range(3), lambda x: x, poll_s=0.01) as items:
        with pytest.raises(TrainingError, match="stopped without a batch or an error"):
            list(items)


def test_leaving_early_stops_the_thread_and_closes_the_source():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    feed = Prefetcher(endless(), lambda x: x, depth=2)
    with feed:
        for x in feed:
            if x == 3:
                break
    assert not feed._thread.is_alive() and closed.wait(2)


def test_host_batch_counts_tokens_before_the_copy_and_the_ids_stay_on_the_host():
    batch = {"input_ids": torch.tensor([[5, 6, 1], [7, 1, 1]]),
             "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]]),
             "labels": torch.tensor([[5, 2, -100], [2, -100, -100]]), "id": torch.tensor([4, 9])}
    ready = host_batch(batch, pin=False)
    assert (ready.source_tokens, ready.target_tokens) == (3, 3)
    moved = to_device(ready.tensors, torch.device("cpu"))
    assert moved["id"] is batch["id"] and torch.equal(moved["labels"], batch["labels"])
