"""Model-shape checks run before Ray starts: depths, intermediate-match indices, projection sizes.

They read only ``config.json`` files, so a misconfigured run fails in a second with one line
naming the key and the sizes, instead of minutes later inside a worker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from raydistill.config import DistillConfig
from raydistill.errors import ConfigError, ModelError


@dataclass(frozen=True)
class Shape:
    """Layer counts and hidden sizes of one model, from its config."""

    encoder_layers: int
    decoder_layers: int
    encoder_hidden: int
    decoder_hidden: int

    def feature_len(self, feature: str) -> int:
        """Length of TextBrewer's ``hidden`` / ``attention`` list for this model
        (docs/textbrewer.md)."""
        n = self.encoder_layers + self.decoder_layers
        return n + 2 if feature == "hidden" else n

    def hidden_size_at(self, index: int) -> int:
        index %= self.feature_len("hidden")  # negative counts from the end, as in TextBrewer
        return self.encoder_hidden if index <= self.encoder_layers else self.decoder_hidden


def model_shape(path: str) -> Shape:
    """The model's depths and hidden sizes, from its ``config.json`` where that names them all
    (``save_pretrained`` writes every key); else from transformers' config class, which fills in
    its defaults. The first costs nothing; the second imports torch and transformers (5 s on a
    small machine) before Ray starts."""
    shape = json_shape(json.loads((Path(path) / "config.json").read_text()))
    if shape is not None:
        return shape
    from transformers import AutoConfig

    from raydistill.models.layers import hidden_sizes, layer_counts

    config = AutoConfig.from_pretrained(path)
    e, d = layer_counts(config)
    he, hd = hidden_sizes(config)
    return Shape(e, d, he, hd)


def json_shape(raw: dict) -> Shape | None:
    """``raydistill.models.layers``' layer_counts and hidden_sizes read from a raw config dict
    (the same keys in the same order of preference); None where a key is missing."""
    if raw.get("model_type") == "encoder-decoder":
        enc, dec = raw.get("encoder") or {}, raw.get("decoder") or {}
        sizes = (enc.get("num_hidden_layers"), dec.get("num_hidden_layers"),
                 enc.get("hidden_size"), dec.get("hidden_size"))
    elif "encoder_layers" in raw and "decoder_layers" in raw:  # BART, mBART, Marian, Pegasus, FSMT
        sizes = (raw["encoder_layers"], raw["decoder_layers"], raw.get("d_model"),
                 raw.get("d_model"))
    elif "num_decoder_layers" in raw:  # T5-likes
        sizes = (raw.get("num_encoder_layers", raw.get("num_layers")), raw["num_decoder_layers"],
                 raw.get("d_model"), raw.get("d_model"))
    else:
        return None
    if not all(isinstance(v, int) for v in sizes):
        return None
    return Shape(*sizes)


def student_shape(cfg: DistillConfig, teacher: Shape | None) -> Shape | None:
    """The student's shape: its own config, or the teacher's with the requested depths."""
    if cfg.student:
        return model_shape(cfg.student)
    if teacher is None:
        return None
    for key, want, have in (("student_encoder_layers", cfg.student_encoder_layers, teacher.encoder_layers),
                            ("student_decoder_layers", cfg.student_decoder_layers, teacher.decoder_layers)):
        if want is not None and want > have:
            raise ModelError(f"{key}={want} is deeper than the teacher ({have} layers on that side); "
                             f"choose at most {have}")
    return Shape(cfg.student_encoder_layers or teacher.encoder_layers,
                 cfg.student_decoder_layers or teacher.decoder_layers,
                 teacher.encoder_hidden, teacher.decoder_hidden)


def check_models(cfg: DistillConfig) -> None:
    """Depths, TextBrewer match indices and projection sizes against the models' configs; an
    architecture without gradient checkpointing when the config asks for it."""
    if cfg.gradient_checkpointing and (cfg.student or cfg.teacher_paths):
        from transformers import AutoConfig

        from raydistill.models.layers import seq2seq_class

        source = cfg.student or cfg.teacher_paths[0]  # make_student keeps the teacher's class
        config = AutoConfig.from_pretrained(source)
        if not seq2seq_class(config).supports_gradient_checkpointing:
            raise ConfigError(f"gradient_checkpointing: the student ({config.model_type}, from "
                              f"{source}) does not support it in transformers; set "
                              "gradient_checkpointing: false")
    teacher = model_shape(cfg.teacher_paths[0]) if cfg.teacher_paths else None
    student = student_shape(cfg, teacher)
    if cfg.method != "kd" or not cfg.distillation or teacher is None or student is None:
        return
    matches = cfg.distillation.get("intermediate_matches") or []
    for i, m in enumerate(matches):
        name = f"distillation.intermediate_matches[{i}]"
        feature = m.get("feature", "hidden")
        for side, key, shape in (("teacher", "layer_T", teacher), ("student", "layer_S", student)):
            idx = m.get(key)
            n = shape.feature_len(feature)
            for j in idx if isinstance(idx, list) else [idx]:
                if not isinstance(j, int) or not -n <= j < n:
                    raise ConfigError(
                        f"{name}: {key}={idx} is out of range: the {side}'s {feature!r} list has "
                        f"{n} entries (0..{n - 1}, or -{n}..-1 from the end; see "
                        "docs/textbrewer.md, 'Seq2seq layer indexing')")
        if feature != "hidden":
            continue
        first = lambda v: v[0] if isinstance(v, list) else v  # noqa: E731 (pair losses: two layers)
        dim_s = student.hidden_size_at(first(m["layer_S"]))
        dim_t = teacher.hidden_size_at(first(m["layer_T"]))
        proj = m.get("proj")
        if proj:
            if len(proj) < 3 or (proj[1], proj[2]) != (dim_s, dim_t):
                raise ConfigError(
                    f"{name}: proj {proj[:3]} does not match the models: student hidden size "
                    f"{dim_s}, teacher hidden size {dim_t}; use proj: [{proj[0]}, {dim_s}, {dim_t}]")
        elif dim_s != dim_t and m.get("loss") not in ("fsp", "gram", "mmd", "nst"):
            raise ConfigError(
                f"{name}: student hidden size {dim_s} != teacher hidden size {dim_t}; add "
                f"proj: [linear, {dim_s}, {dim_t}]")


def vocab_size(path: str) -> int:
    """The output vocabulary of the model in ``path``, from its config.json."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    if cfg.get("model_type") == "encoder-decoder":
        return int(cfg["decoder"]["vocab_size"])
    return int(cfg.get("tgt_vocab_size") or cfg.get("decoder_vocab_size") or cfg["vocab_size"])


def compared_vocab_size(path: str) -> int:
    """The vocabulary in which a model's logits meet its teacher's: its own, or for a trimmed
    student (``vocab_map.json`` beside its weights, from ``make-student --trim-vocab`` or an
    earlier stage) the size of the teacher it was trimmed from, whose logits are gathered to
    its kept ids (the map's ``original_vocab_size``)."""
    kept = Path(path) / "vocab_map.json"
    if kept.is_file():
        return int(json.loads(kept.read_text())["original_vocab_size"])
    return vocab_size(path)


def check_vocabularies(cfg: DistillConfig) -> None:
    """Teachers and student must share one vocabulary: KD compares logits token by token. A
    trimmed student counts as the vocabulary it was trimmed from."""
    sizes = {p: vocab_size(p) for p in cfg.teacher_paths}
    if cfg.student:
        sizes[cfg.student] = compared_vocab_size(cfg.student)
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"{p}: {v}" for p, v in sizes.items())
        raise ModelError(f"teacher and student vocabularies differ ({shown}); KD compares logits "
                         "token by token, so all models must share one tokenizer (or the "
                         "student be trimmed from the teacher: make-student --trim-vocab)")
