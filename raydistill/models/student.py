"""Make a smaller student by copying a teacher's layers (seq2seq-distillation's make_student.py).

The student is the teacher's architecture and config with fewer encoder and/or decoder layers.
It starts from the teacher's weights: embeddings, layer norms, LM head and biases come over as
they are, and each student layer is a copy of one chosen teacher layer. Which teacher layers
are chosen follows the tables of Shleifer & Rush (2020): spread out, keeping the first and last;
a one-layer side copies the teacher's last layer (the tables say the first; see
``get_layers_to_copy``).
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from raydistill.errors import ModelError
from raydistill.models.layers import (
    encoder_decoder_layers,
    layer_counts,
    load_seq2seq,
    set_layer_counts,
)

logger = logging.getLogger(__name__)

LAYERS_TO_COPY: dict[int, dict[int, list[int]]] = {
    # teacher layers -> student layers -> which teacher layers to copy.
    # 12: bart, 16: pegasus, 6: marian/Helsinki-NLP
    12: {
        1: [0],  # a 12-layer teacher and a 1-layer student: copy teacher layer 0
        2: [0, 6],
        3: [0, 6, 11],
        4: [0, 4, 8, 11],
        6: [0, 2, 4, 7, 9, 11],
        9: [0, 1, 2, 4, 5, 7, 9, 10, 11],
        12: list(range(12)),
    },
    16: {
        1: [0],
        2: [0, 15],
        3: [0, 8, 15],
        4: [0, 5, 10, 15],
        6: [0, 3, 6, 9, 12, 15],
        8: [0, 2, 4, 6, 8, 10, 12, 15],
        9: [0, 1, 3, 5, 7, 9, 11, 13, 15],
        12: [0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 15],
        16: list(range(16)),
    },
    6: {1: [0], 2: [0, 5], 3: [0, 2, 5], 4: [0, 1, 3, 5], 6: list(range(6))},
}

LAYERS_TO_SUPERVISE: dict[int, dict[int, list[int]]] = {
    # teacher layers -> student layers -> which teacher layer's output each student layer matches.
    6: {1: [5], 2: [3, 5], 3: [1, 4, 5], 4: [1, 2, 4, 5]},
    12: {1: [11], 2: [5, 11], 3: [3, 7, 11], 6: [1, 3, 5, 8, 10, 11]},
    16: {1: [15], 4: [4, 9, 12, 15], 8: [1, 3, 5, 7, 9, 11, 13, 15]},
}


def get_layers_to_copy(n_student: int, n_teacher: int) -> list[int]:
    """Teacher layer indices to initialise ``n_student`` layers from: the table's, except that
    one layer is the teacher's last; the first ``n_student`` (with a warning) when the table has
    no entry for the pair.

    One layer differs from the original's table ([0]) on purpose: the last layer's output is
    what the teacher's final norm and output layer (and, for an encoder, the decoder's
    cross-attention) were trained to read, and what hidden-state supervision matches a one-layer
    student to (``get_layers_to_supervise``). A 6-1 en_de student from the last decoder layer
    reached greedy val BLEU 6.96 / 9.58 / 13.94 / 12.97 after 500-2,000 sft steps, from the first
    0.67 / 1.41 / 3.83 / 4.04 (BENCHMARKS.md section 12)."""
    if n_student < 1 or n_student > n_teacher:
        raise ModelError(f"cannot make a {n_student}-layer student from a {n_teacher}-layer "
                         f"teacher; choose 1..{n_teacher} layers")
    if n_student == 1:
        return [n_teacher - 1]
    try:
        return list(LAYERS_TO_COPY[n_teacher][n_student])
    except KeyError:
        if n_student != n_teacher:
            warnings.warn(f"no hardcoded layers to copy for teacher {n_teacher} -> student "
                          f"{n_student}, defaulting to first {n_student}", stacklevel=2)
        return list(range(n_student))


def get_layers_to_supervise(n_student: int, n_teacher: int) -> list[int]:
    """Teacher layers whose hidden states the student's layers are matched to (intermediate
    supervision): identity for equal depth, the last layer for a 1-layer student, else the table."""
    if n_student > n_teacher:
        raise ModelError(f"cannot perform intermediate supervision for student {n_student} > "
                         f"teacher {n_teacher}")
    if n_teacher == n_student:
        return list(range(n_teacher))
    if n_student == 1:
        return [n_teacher - 1]
    try:
        return list(LAYERS_TO_SUPERVISE[n_teacher][n_student])
    except KeyError:
        known = ", ".join(f"{t}->{s}" for t, row in LAYERS_TO_SUPERVISE.items() for s in row)
        raise ModelError(f"no layers to supervise for teacher {n_teacher} -> student {n_student}; "
                         f"known pairs: {known}") from None


def copy_layers(src_layers: nn.ModuleList, dest_layers: nn.ModuleList, layers_to_copy: list[int]) -> None:
    """Load ``src_layers[i] for i in layers_to_copy`` into ``dest_layers`` in order."""
    if len(dest_layers) != len(layers_to_copy):
        raise ModelError(f"{len(layers_to_copy)} layers to copy {layers_to_copy} for a student "
                         f"side of {len(dest_layers)} layers; give one index per student layer")
    chosen = nn.ModuleList([src_layers[i] for i in layers_to_copy])
    info = dest_layers.load_state_dict(chosen.state_dict(), strict=False)
    # T5 keeps its relative attention bias only in block 0. If student block 0 is copied from a
    # later teacher block, it keeps the teacher's block-0 bias from the full state-dict load, and
    # a teacher block 0 copied to a later student block has nowhere to put its bias. Any other
    # mismatch is a real architecture difference.
    bad = [k for k in info.missing_keys + info.unexpected_keys if "relative_attention_bias" not in k]
    if bad:
        raise ModelError(f"teacher and student layers differ in {bad[:3]}; the student must be the "
                         "teacher's architecture with fewer layers")


def _pick(n: int, n_teacher: int, given: list[int] | None, first: bool, side: str) -> list[int]:
    if given is not None:
        layers = list(given)
    elif first:
        layers = list(range(n))
    else:
        layers = get_layers_to_copy(n, n_teacher)
    if len(layers) != n or not all(0 <= i < n_teacher for i in layers):
        raise ModelError(f"{side} layers to copy {layers} do not fit a {n}-layer student of a "
                         f"{n_teacher}-layer teacher; give {n} indices in 0..{n_teacher - 1}")
    return layers


def make_student(
    teacher: PreTrainedModel | str | os.PathLike,
    e: int | None = None,
    d: int | None = None,
    save_path: str | os.PathLike | None = None,
    copy_first_teacher_layers: bool = False,
    e_layers_to_copy: list[int] | None = None,
    d_layers_to_copy: list[int] | None = None,
    model_cache_dir: str | os.PathLike | None = None,
    trim_vocab: str | os.PathLike | None = None,
    keep_vocab: int | None = None,
    **extra_config_kwargs,
) -> tuple[PreTrainedModel, list[int], list[int]]:
    """Build a student with ``e`` encoder and ``d`` decoder layers copied from ``teacher``.

    Args:
        teacher: a model, or a folder or Hub id (``org/name``, ``org/name@revision``; then
            loaded in fp32 with ``load_seq2seq``, and its tokenizer is saved beside the student
            when ``save_path`` is given).
        e, d: student layer counts; ``None`` keeps that side whole (or, with
            ``{e,d}_layers_to_copy`` given, takes their length).
        save_path: where to ``save_pretrained`` the student (safetensors); ``None`` saves nothing.
        copy_first_teacher_layers: copy teacher layers ``0..n-1`` instead of the table's choice.
        e_layers_to_copy, d_layers_to_copy: explicit teacher layer indices, one per student layer.
        model_cache_dir: where a Hub id is downloaded (default: ``$HF_HUB_CACHE`` or HF's own).
        trim_vocab: a data folder: keep only the vocabulary its train split uses
            (``raydistill.models.vocab``; needs the teacher as a folder or Hub id, for its
            tokenizer); the trimmed tokenizer and ``vocab_map.json`` are saved beside the student.
        keep_vocab: with ``trim_vocab``, keep only the N most frequent of the train split's
            tokens; N bounds those, not the kept vocabulary, which also holds the special
            tokens, single-character pieces and BPE merge intermediates (``kept_token_ids``).
        **extra_config_kwargs: config attributes to change on the student (e.g. ``dropout=0.0``).

    Returns:
        (student, encoder layers copied, decoder layers copied). The lists are also recorded in
        ``student.config.init_metadata`` as in the original (with the teacher's Hub id and
        commit when it came from the Hub).
    """
    teacher_path, source = None, None
    if isinstance(teacher, (str, os.PathLike)):
        from raydistill.hub import resolve_model

        source = resolve_model(teacher, "teacher", model_cache_dir)
        # fp32: the student trains from these weights, and transformers 5 would otherwise keep
        # a checkpoint's half precision.
        teacher_path, teacher = source.path, load_seq2seq(source.path, dtype=torch.float32).eval()
    elif not isinstance(teacher, PreTrainedModel):
        raise ModelError(f"teacher must be a PreTrainedModel or a path, got {type(teacher).__name__}")

    teacher_e, teacher_d = layer_counts(teacher)
    e = e if e is not None else len(e_layers_to_copy) if e_layers_to_copy is not None else teacher_e
    d = d if d is not None else len(d_layers_to_copy) if d_layers_to_copy is not None else teacher_d
    e_layers = _pick(e, teacher_e, e_layers_to_copy, copy_first_teacher_layers, "encoder")
    d_layers = _pick(d, teacher_d, d_layers_to_copy, copy_first_teacher_layers, "decoder")

    config = set_layer_counts(teacher.config, e, d)
    for key, value in extra_config_kwargs.items():
        setattr(config, key, value)
    # The teacher's own class (not AutoModel) so MarianMTModel, FSMT and EncoderDecoderModel
    # come back as themselves; the deep-copied config keeps the attention implementation.
    student = type(teacher)._from_config(config).to(device=teacher.device, dtype=teacher.dtype)

    # Everything outside the layers (embeddings, norms, lm_head, final_logits_bias, T5's
    # relative attention bias) comes from the teacher; the teacher's extra layers are ignored.
    try:
        info = student.load_state_dict(teacher.state_dict(), strict=False)
    except RuntimeError as err:  # size mismatch: extra_config_kwargs changed a weight shape
        raise ModelError(f"teacher weights do not fit the student: {str(err).splitlines()[0]}; "
                         "only change layer counts or shape-free settings") from err
    if info.missing_keys:
        raise ModelError(f"student weights missing from the teacher: {info.missing_keys[:3]}")

    (t_enc, t_dec), (s_enc, s_dec) = encoder_decoder_layers(teacher), encoder_decoder_layers(student)
    copy_layers(t_enc, s_enc, e_layers)
    copy_layers(t_dec, s_dec, d_layers)
    student.config.init_metadata = dict(
        teacher_type=teacher.config.model_type,
        copied_encoder_layers=e_layers,
        copied_decoder_layers=d_layers,
    )
    if source is not None and source.id:
        student.config.init_metadata.update(teacher=source.id, teacher_commit=source.commit)
    if getattr(teacher, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(teacher.generation_config)
    logger.info("copied encoder layers %s and decoder layers %s", e_layers, d_layers)

    if keep_vocab is not None and trim_vocab is None:
        raise ModelError("keep_vocab needs trim_vocab (the data folder whose tokens to count)")
    if trim_vocab is not None:
        from transformers import AutoTokenizer

        from raydistill.models.vocab import trim_vocab as trim

        if teacher_path is None:
            raise ModelError("trim_vocab needs the teacher as a folder or Hub id (its tokenizer "
                             "decides the tokens); save the teacher with its tokenizer first")
        student, _, kept = trim(student, AutoTokenizer.from_pretrained(str(teacher_path)),
                                trim_vocab, keep_vocab, save_path)
        logger.info("vocabulary trimmed to %d of %d tokens", len(kept),
                    student.config.original_vocab_size)
    elif save_path is not None:
        save_student(student, save_path, teacher_path)
    return student, e_layers, d_layers


def save_student(student: PreTrainedModel, save_path: str | os.PathLike,
                 tokenizer_from: str | os.PathLike | None = None) -> Path:
    """``save_pretrained`` the student (safetensors) and, if given, the tokenizer of
    ``tokenizer_from``; a tokenizer that cannot be loaded is skipped with a warning."""
    save_path = Path(save_path)
    student.save_pretrained(save_path)
    if tokenizer_from is not None:
        from transformers import AutoTokenizer

        try:
            AutoTokenizer.from_pretrained(str(tokenizer_from)).save_pretrained(save_path)
        except Exception as err:  # noqa: BLE001 - the tokenizer is a convenience, never fatal
            warnings.warn(f"student saved to {save_path} without a tokenizer: loading one from "
                          f"{tokenizer_from} failed ({type(err).__name__}: {err})", stacklevel=2)
    return save_path
