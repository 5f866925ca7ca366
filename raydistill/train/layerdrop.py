"""Layerdrop that every worker draws alike: the same layers skipped on every rank in a step.

transformers' BART-family stacks (BART, mBART, Marian, Pegasus, FSMT) draw each layer's drop
with ``torch.rand([])`` from the global CPU generator, in the encoder's and decoder's layer
loop, between the layers. The loop seeds that generator per rank (``seed + rank``), as dropout
needs, so each worker would skip other layers:

- with ``parallel: fsdp`` a sharded layer's all-gather would wait for a worker that skipped it;
- with ``parallel: ddp`` the step lasts as long as the worker that ran the most layers.

``SharedLayerDrop`` answers those draws, and only those, from a generator of its own that is
the same on every rank: while a stack's own code runs (a forward pre-hook on the encoder or
decoder, to its forward hook; not inside its layers), ``torch.rand([])`` called on that thread
without a generator draws from it. A shared *state* of the global generator would not do: the
embeddings' dropout, between the hook and the first draw, consumes as many numbers as the
batch has elements, which differ per worker. Dropout, and every other draw, stay the worker's
own. The generator is a function of ``(seed, step)`` (``begin``, from the loop), so a resumed
run draws what an uninterrupted one draws.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import nn


def _stacks(model: nn.Module) -> list[tuple[nn.Module, nn.ModuleList]]:
    """(the encoder or decoder, its ``layers``) of each stack that has a ``layerdrop``."""
    found = []
    for part in (model.get_encoder(), model.get_decoder()):
        layers = getattr(part, "layers", None)
        if isinstance(layers, nn.ModuleList) and hasattr(part, "layerdrop"):
            found.append((part, layers))
    return found


class SharedLayerDrop:
    """The hooks of one student; ``begin(step)`` before each micro-batch's forward."""

    def __init__(self, model: nn.Module, seed: int) -> None:
        self.seed, self.step = seed, None
        self.generator: torch.Generator | None = None
        self.thread: int | None = None  # the thread inside a stack's forward, if any
        self.in_layer = 0  # inside one of the stack's layers: nothing is answered there
        self.original = None  # torch.rand, while it is replaced
        self.handles = []
        for part, layers in _stacks(model):
            self.handles += [part.register_forward_pre_hook(self._enter),
                             part.register_forward_hook(self._leave, always_call=True)]
            for layer in layers:
                self.handles += [layer.register_forward_pre_hook(self._into_layer),
                                 layer.register_forward_hook(self._out_of_layer, always_call=True)]

    def begin(self, step: int) -> None:
        """The shared generator of optimizer step ``step`` (its micro-batches draw on from it)."""
        if step != self.step:
            key = int(np.random.SeedSequence([self.seed, step]).generate_state(1)[0])
            self.step, self.generator = step, torch.Generator().manual_seed(key)

    def _rand(self, *args, **kwargs):
        """``torch.rand`` while a stack runs: its layerdrop draw (a scalar, no generator, on
        the stack's thread, between layers) from the shared generator; anything else as is."""
        if (not kwargs and len(args) == 1 and isinstance(args[0], (list, tuple))
                and len(args[0]) == 0 and not self.in_layer
                and threading.get_ident() == self.thread):
            return self.original([], generator=self.generator)
        return self.original(*args, **kwargs)

    def _enter(self, module, args) -> None:
        if module.training and self.generator is not None and self.original is None:
            self.original, self.thread, self.in_layer = torch.rand, threading.get_ident(), 0
            torch.rand = self._rand

    def _leave(self, module, args, output) -> None:
        if self.original is not None and threading.get_ident() == self.thread:
            torch.rand, self.original, self.thread = self.original, None, None

    def _into_layer(self, module, args) -> None:
        self.in_layer += 1

    def _out_of_layer(self, module, args, output) -> None:
        self.in_layer = max(0, self.in_layer - 1)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


ATTR = "_raydistill_layerdrop"  # where ``install`` keeps a student's hooks


def install(model: nn.Module, seed: int | None) -> SharedLayerDrop | None:
    """Shared draws for a student whose stacks drop layers (kept on the model, which a DDP
    wrapper or FSDP2 leaves the same object); None when none does."""
    if not any(part.layerdrop > 0 for part, _ in _stacks(model)):
        return None
    hooks = SharedLayerDrop(model, seed or 0)  # no seed: the ranks must still agree
    setattr(model, ATTR, hooks)
    return hooks


def begin(model: nn.Module, step: int) -> None:
    """``SharedLayerDrop.begin`` of the student's hooks, if it has them."""
    hooks = getattr(model, ATTR, None)
    if hooks is not None:
        hooks.begin(step)


__all__ = ["SharedLayerDrop", "begin", "install"]
