"""The pre-Ray model-shape reader: config.json alone gives what transformers' config classes
give."""

import json

import pytest

from raydistill.models.layers import hidden_sizes, layer_counts
from raydistill.models.scratch import ARCHITECTURES, new_model
from raydistill.train.preflight import Shape, json_shape, model_shape


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_config_json_gives_the_config_class_shape(arch, tmp_path):
    model = new_model(arch, 120, d_model=32, encoder_layers=3, decoder_layers=2, ffn_dim=64)
    model.config.save_pretrained(tmp_path)
    want = Shape(*layer_counts(model.config), *hidden_sizes(model.config))
    assert json_shape(json.loads((tmp_path / "config.json").read_text())) == want
    assert model_shape(str(tmp_path)) == want


def test_a_config_json_missing_a_size_falls_back_to_the_config_class(tmp_path):
    """save_pretrained writes every key; a hand-written config may leave defaults out."""
    config = new_model("t5", 120, d_model=32, encoder_layers=3, decoder_layers=2).config
    config.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["d_model"]  # T5Config's default: 512
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert json_shape(raw) is None
    assert model_shape(str(tmp_path)) == Shape(3, 2, 512, 512)
