"""Batches made ready on a background thread while the device computes the step before.

The worker loop's batches come from Ray Data (fixed batches) or from the epoch's plan (rows
gathered by id and collated here: ``raydistill.data.plan``). Both are host work: collating,
counting the tokens for tokens/s, pinning the tensors so that their copy to the GPU runs
``non_blocking``. A thread does it ``depth`` batches ahead (nanoGPT and torchtune keep their GPU
busy the same way), so the training thread only queues each batch's copy and its step.

A wait for the thread is never silent: an error in it is raised in the training thread, a thread
that died without a word raises ``TrainingError``, and a long wait prints a line now and then.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import torch

from raydistill.errors import TrainingError

IGNORE_INDEX = -100

_DONE = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher:
    """Iterates ``prepare(item)`` for the items of ``source``, computed ``depth`` ahead on a
    daemon thread. Use as a context manager (or call :meth:`close`): leaving early stops the
    thread."""

    def __init__(self, source: Iterable[Any], prepare: Callable[[Any], Any], depth: int = 2,
                 poll_s: float = 1.0, note_every_s: float = 300.0, name: str = "batches") -> None:
        if depth < 1:
            raise ValueError(f"depth={depth}: prefetch at least 1 item ahead")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._poll_s, self._note_every_s, self._name = poll_s, note_every_s, name
        self._thread = threading.Thread(target=self._produce, args=(source, prepare),
                                        name=f"raydistill-prefetch-{name}", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, source: Iterable[Any], prepare: Callable[[Any], Any]) -> None:
        it = iter(source)
        try:
            for item in it:
                if not self._put(prepare(item)):
                    return
            self._put(_DONE)
        except BaseException as e:  # handed to the training thread, which raises it
            self._put(_Failed(e))
        finally:
            close = getattr(it, "close", None)  # a generator's cleanup runs on its own thread
            if close is not None:
                close()

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def _get(self) -> Any:
        waited, noted = 0.0, 0.0
        while True:
            try:
                return self._queue.get(timeout=self._poll_s)
            except queue.Empty:
                pass
            waited += self._poll_s
            if not self._thread.is_alive() and self._queue.empty():
                raise TrainingError(f"the thread that prepares the training {self._name} stopped "
                                    "without a batch or an error (killed?); restart the run "
                                    "(it resumes from its last checkpoint)")
            if waited - noted >= self._note_every_s:
                noted = waited
                print(f"[raydistill] waited {waited:.0f} s for the next training batch: the data "
                      "source is slow (a large planned epoch gathers its rows first)",
                      file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stops the thread (it finishes the item in hand) and drops what it prepared."""
        self._stop.set()
        deadline = time.monotonic() + 5.0
        while self._thread.is_alive() and time.monotonic() < deadline:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class HostBatch(NamedTuple):
    """A collated batch on the host (pinned for a GPU) and its token counts."""

    tensors: dict[str, torch.Tensor]
    source_tokens: int
    target_tokens: int


def host_batch(batch: dict[str, torch.Tensor], pin: bool) -> HostBatch:
    """A batch made ready on the prefetch thread: its tokens counted on the host, before the
    copy (after it, a count read on the host would wait for the GPU), and its tensors pinned
    (``pin``) so that :func:`to_device` does not block."""
    source = int(batch["attention_mask"].sum())
    target = int(batch["labels"].ne(IGNORE_INDEX).sum())
    if pin:
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return HostBatch(batch, source, target)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's tensors copied to ``device`` (``non_blocking``: from pinned memory the copy
    is queued like a kernel); ``id`` stays on the host, where a target source reads it."""
    return {k: v if k == "id" else v.to(device, non_blocking=True) for k, v in batch.items()}


__all__ = ["HostBatch", "Prefetcher", "host_batch", "to_device"]
