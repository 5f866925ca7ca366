"""Layerdrop that every worker draws alike (raydistill/train/layerdrop.py).

The oracle for which layers run is transformers' own rule written out: in each stack, layer i
is skipped when the i-th ``torch.rand([])`` of the stack's loop is below ``layerdrop``, here
drawn from a generator seeded as ``begin`` seeds the shared state (encoder first, then
decoder). Two "workers" are two seeds of the global generator, as the loop seeds them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration, FSMTConfig, FSMTForConditionalGeneration

from raydistill.train import layerdrop

P = 0.5
LAYERS = 6


def _model(arch: str, dropout: float = 0.1) -> torch.nn.Module:
    torch.manual_seed(0)
    common = dict(d_model=16, encoder_layers=LAYERS, decoder_layers=LAYERS,
                  encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                  decoder_ffn_dim=32, encoder_layerdrop=P, decoder_layerdrop=P,
                  attention_dropout=0.3, activation_dropout=0.3, dropout=dropout,
                  max_position_embeddings=32)
    if arch == "bart":
        model = BartForConditionalGeneration(BartConfig(vocab_size=40, **common))
    else:
        model = FSMTForConditionalGeneration(FSMTConfig(
            src_vocab_size=40, tgt_vocab_size=40, langs=["en", "de"], **common))
    return model.train()


def _ran(model) -> list[str]:
    """Record the names of the layers each forward runs."""
    ran: list[str] = []
    for part_name, part in (("encoder", model.get_encoder()), ("decoder", model.get_decoder())):
        for i, layer in enumerate(part.layers):
            layer.register_forward_pre_hook(lambda m, a, n=f"{part_name}.{i}": ran.append(n))
    return ran


def _forward(model, rank: int, step: int, hooks) -> torch.Tensor:
    """One worker's first forward of ``step`` (a fresh process: nothing drawn yet)."""
    torch.manual_seed(rank)  # each worker's own generator: seed + rank
    if hooks is not None:
        hooks.step = None
        hooks.begin(step)
    ids = torch.arange(3, 10).reshape(1, 7)
    return model(input_ids=ids, decoder_input_ids=ids).logits


def _expected(seed: int, step: int) -> list[str]:
    key = int(np.random.SeedSequence([seed, step]).generate_state(1)[0])
    g = torch.Generator().manual_seed(key)
    return [f"{part}.{i}" for part in ("encoder", "decoder") for i in range(LAYERS)
            if not float(torch.rand([], generator=g)) < P]


@pytest.mark.parametrize("arch", ["bart", "fsmt"])
def test_every_worker_runs_the_layers_the_shared_draws_keep(arch):
    model = _model(arch)
    ran = _ran(model)
    hooks = layerdrop.install(model, seed=7)
    kept_counts = []
    for step in range(4):
        per_rank, outputs = [], []
        for rank in (0, 1):
            ran.clear()
            outputs.append(_forward(model, rank, step, hooks))
            per_rank.append(list(ran))
        assert per_rank[0] == per_rank[1] == _expected(7, step)
        # dropout is still each worker's own: the same layers, other masks
        assert not torch.equal(outputs[0], outputs[1])
        kept_counts.append(len(per_rank[0]))
    assert len(set(kept_counts)) > 1 or 0 < kept_counts[0] < 2 * LAYERS  # the draws vary


def test_without_the_hooks_workers_skip_other_layers():
    """What the hooks exist for: transformers' draws from each worker's own generator."""
    model = _model("bart")
    ran = _ran(model)
    layers = []
    for rank in (0, 1):
        ran.clear()
        _forward(model, rank, 0, hooks=None)
        layers.append(list(ran))
    assert layers[0] != layers[1]


def test_the_same_step_draws_the_same_layers_again_and_the_layers_dropout_is_the_workers_own():
    """A resumed run redraws a step's layers (the shared generator is a function of the
    step), and a step's later micro-batches draw on; dropout (the embeddings' and the layers')
    takes the worker's own generator, as if no layerdrop draw had been made."""
    model = _model("bart")
    ran = _ran(model)
    hooks = layerdrop.install(model, seed=3)
    ran.clear()
    _forward(model, 0, 5, hooks)
    first = list(ran)
    _forward(model, 0, 6, hooks)
    ran.clear()
    _forward(model, 0, 5, hooks)  # begin() rebuilds the state from (seed, step)
    assert ran == first
    again = []
    for _ in range(3):  # the step's next micro-batches draw on from there (other layers)
        ran.clear()
        hooks.begin(5)
        model(input_ids=torch.arange(3, 10).reshape(1, 7), decoder_input_ids=torch.ones(1, 3).long())
        again.append(list(ran))
    assert any(layers != first for layers in again)

    # Nearly no drop: every layer runs, and the outputs equal those of the same model without
    # layerdrop, whose forward makes no draw at all: the layers drew only the worker's state.
    model.get_encoder().layerdrop = model.get_decoder().layerdrop = 1e-12
    with_draws = _forward(model, 1, 0, hooks)
    hooks.remove()
    model.get_encoder().layerdrop = model.get_decoder().layerdrop = 0.0
    without = _forward(model, 1, 0, hooks=None)
    assert torch.equal(with_draws, without)


def test_eval_mode_and_models_without_layerdrop_are_left_alone():
    model = _model("bart")
    hooks = layerdrop.install(model, seed=0)
    model.eval()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    hooks.begin(0)
    model(input_ids=torch.arange(3, 9).reshape(1, 6), decoder_input_ids=torch.ones(1, 2).long())
    assert torch.equal(torch.get_rng_state(), before)  # no draw, no state swapped in
    plain = _model("bart")
    plain.get_encoder().layerdrop = plain.get_decoder().layerdrop = 0.0
    assert layerdrop.install(plain, seed=0) is None
    assert not hasattr(plain, layerdrop.ATTR)
