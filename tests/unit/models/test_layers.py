"""Architecture helpers on tiny from-scratch models of every supported family."""

from __future__ import annotations

import pytest
import torch

from raydistill.errors import ModelError
from raydistill.models.layers import (
    decoder_inputs,
    encoder_decoder_layers,
    hidden_sizes,
    layer_counts,
    load_seq2seq,
    set_layer_counts,
    shift_labels_right,
)
from raydistill.models.scratch import ARCHITECTURES, new_model

VOCAB = 300


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {a: new_model(a, VOCAB, encoder_layers=3, decoder_layers=2).eval() for a in ARCHITECTURES}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_layer_lists_and_counts(models, arch):
    model = models[arch]
    enc, dec = encoder_decoder_layers(model)
    assert (len(enc), len(dec)) == (3, 2)
    assert layer_counts(model) == layer_counts(model.config) == (3, 2)
    assert hidden_sizes(model) == (64, 64)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_set_layer_counts_copies(models, arch):
    config = models[arch].config
    new = set_layer_counts(config, 1, 4)
    assert layer_counts(new) == (1, 4)
    assert layer_counts(config) == (3, 2)  # original untouched
    with pytest.raises(ModelError, match="encoder 0"):
        set_layer_counts(config, 0, 1)


def test_shift_labels_right():
    labels = torch.tensor([[5, 6, 2, -100], [7, 2, -100, -100]])
    got = shift_labels_right(labels, decoder_start_token_id=9, pad_token_id=1)
    assert got.tolist() == [[9, 5, 6, 2], [9, 7, 2, 1]]
    assert labels[0, 3] == -100  # input not modified


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_decoder_inputs_match_model_shift(models, arch):
    model = models[arch]
    # Labels end with eos then -100 padding: FSMT's own shift wraps the last real token (eos)
    # to the front, which equals decoder_start (= eos) only for such labels.
    labels = torch.tensor([[5, 6, 7, 2, -100, -100], [8, 9, 10, 11, 12, 2]])
    got = decoder_inputs(model, labels)
    assert got[:, 0].eq(model.config.decoder_start_token_id).all()
    assert torch.equal(got, model.prepare_decoder_input_ids_from_labels(labels.clone()))
    assert not (got == -100).any()


def test_decoder_inputs_needs_ids(models):
    model = new_model("t5", VOCAB)
    model.config.decoder_start_token_id = None
    model.generation_config.decoder_start_token_id = None
    with pytest.raises(ModelError, match="decoder_start_token_id=None"):
        decoder_inputs(model, torch.tensor([[5, 2]]))


def test_load_seq2seq_errors(tmp_path, models):
    with pytest.raises(ModelError, match="does not exist"):
        load_seq2seq(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_seq2seq(empty)
    config_only = tmp_path / "config_only"
    models["bart"].config.save_pretrained(config_only)
    with pytest.raises(ModelError, match="no weights"):
        load_seq2seq(config_only)
    # Not a local folder: tried as a hub id; conftest sets HF_HUB_OFFLINE so this never downloads.
    with pytest.raises(ModelError, match="no_such_model_xyz"):
        load_seq2seq("no_such_model_xyz")


def test_load_seq2seq_passes_kwargs(tiny_bart_dir):
    model = load_seq2seq(tiny_bart_dir, attn_implementation="eager", dropout=0.3)
    assert type(model).__name__ == "BartForConditionalGeneration"
    assert model.config.dropout == 0.3
    assert model.config._attn_implementation == "eager"


def test_load_seq2seq_encoder_decoder(tmp_path, models):
    models["bert2bert"].save_pretrained(tmp_path / "b2b")
    model = load_seq2seq(tmp_path / "b2b")
    assert type(model).__name__ == "EncoderDecoderModel"
    assert layer_counts(model) == (3, 2)
