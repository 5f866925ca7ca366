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


def _folder(path, vocab_size: int, original: int | None = None):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "bart", "vocab_size": vocab_size}))
    if original is not None:  # a trimmed student: its map and the size it was trimmed from
        (path / "vocab_map.json").write_text(json.dumps(
            {"original_vocab_size": original, "new_to_old": list(range(vocab_size))}))
    return str(path)


def test_a_trimmed_student_meets_its_teacher_in_the_teachers_vocabulary(tmp_path):
    from raydistill.config import DistillConfig
    from raydistill.errors import ModelError
    from raydistill.train.preflight import check_vocabularies

    teacher = _folder(tmp_path / "teacher", 500)

    def check(student):
        check_vocabularies(DistillConfig(method="kd", teacher=teacher, student=student,
                                         data_dir=str(tmp_path), output_dir=str(tmp_path / "o")))

    check(_folder(tmp_path / "trimmed", 120, original=500))  # passes
    check(_folder(tmp_path / "same", 500))
    for name, size, original in (("other", 120, None), ("from_another", 120, 800)):
        with pytest.raises(ModelError, match="vocabularies differ"):
            check(_folder(tmp_path / name, size, original))


def test_gradient_checkpointing_is_refused_before_ray_for_an_architecture_without_it(tmp_path):
    """transformers' FSMT has no gradient checkpointing: one line before Ray starts; the other
    architectures pass, and ``checkpoint_layers`` turns it on in them."""
    from raydistill.config import DistillConfig
    from raydistill.errors import ConfigError, ModelError
    from raydistill.models.layers import checkpoint_layers
    from raydistill.train.preflight import check_models

    for arch in ("fsmt", "bart", "t5"):
        model = new_model(arch, 64, d_model=16, ffn_dim=32, heads=2)
        model.save_pretrained(tmp_path / arch)
        cfg = DistillConfig(teacher=str(tmp_path / arch), data_dir="d", output_dir="o",
                            gradient_checkpointing=True)
        if arch == "fsmt":
            with pytest.raises(ConfigError, match="gradient_checkpointing: the student") as err:
                check_models(cfg)
            assert "\n" not in str(err.value)
            with pytest.raises(ModelError, match="does not support it"):
                checkpoint_layers(model)
        else:
            check_models(cfg)
            checkpoint_layers(model)
            new_name = hasattr(type(model), "is_activation_checkpointing")  # transformers >= 5.2x
            assert (model.is_activation_checkpointing if new_name
                    else model.is_gradient_checkpointing) and not model.config.use_cache
