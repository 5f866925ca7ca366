"""Models built from nothing: the from-scratch Marian scales its token embeddings."""

from __future__ import annotations

import math

import torch

from raydistill.models.scratch import new_model


def test_marian_scales_token_embeddings_like_opus_mt():
    # Without the sqrt(d_model) scale, sinusoidal positions (rms ~0.7) drown the 0.02-std token
    # embeddings and a from-scratch translator learns several times slower.
    model = new_model("marian", 50, d_model=64, encoder_layers=1, decoder_layers=1).eval()
    assert model.config.scale_embedding
    enc = model.get_encoder()
    ids = torch.tensor([[5, 6, 7]])
    hidden = model.get_input_embeddings()(ids) * math.sqrt(64)
    assert math.isclose(enc.embed_scale, math.sqrt(64))
    tokens_rms = hidden.pow(2).mean().sqrt()
    positions_rms = enc.embed_positions.weight[:3].pow(2).mean().sqrt()
    assert tokens_rms > positions_rms / 10  # unscaled it is ~35x smaller
