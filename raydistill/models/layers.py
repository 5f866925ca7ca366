"""Architecture knowledge in one place: loading, layer lists, layer counts, decoder inputs.

Everything else in raydistill asks these functions instead of probing ``model.model.encoder``
or ``config.encoder_layers`` itself. Supported families (checked against transformers 5.23):

- BART, mBART, Marian, Pegasus, FSMT: ``model.model.{encoder,decoder}.layers``;
  config ``encoder_layers`` / ``decoder_layers`` / ``d_model``.
- T5 (and T5-likes): ``model.{encoder,decoder}.block``; config ``num_layers`` /
  ``num_decoder_layers`` / ``d_model``.
- EncoderDecoderModel (BERT2BERT): ``model.encoder.encoder.layer`` and
  ``model.decoder.bert.encoder.layer``; nested ``config.{encoder,decoder}.num_hidden_layers``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from raydistill.errors import ModelError

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


TEACHER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def teacher_torch_dtype(name: str, device: str | torch.device = "cpu") -> torch.dtype:
    """``teacher_dtype`` (auto | bf16 | fp16 | fp32) -> the dtype of a frozen teacher's weights
    on ``device``: auto is bf16 on a GPU that has it, fp16 on other GPUs, fp32 on CPU."""
    if name == "auto":
        if torch.device(device).type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in TEACHER_DTYPES:
        raise ModelError(f"teacher_dtype={name!r} is not allowed: choose one of auto, "
                         f"{', '.join(TEACHER_DTYPES)}")
    return TEACHER_DTYPES[name]


def teacher_dtype_label(name: str, use_gpu: bool) -> str:
    """What a cache key records of ``teacher_dtype``: auto on CPU is fp32; on a GPU, auto stays
    auto (bf16 or fp16, decided by the GPU that runs the teacher)."""
    return "fp32" if name == "auto" and not use_gpu else name


def load_teacher(path: str | os.PathLike, teacher_dtype: str = "auto",
                 device: str | torch.device = "cpu", place: bool = True,
                 **kwargs) -> PreTrainedModel:
    """A frozen teacher on ``device``: eval mode, no gradients, weights loaded directly in
    ``teacher_torch_dtype(teacher_dtype, device)`` (bf16 holds half the bytes of fp32).
    ``place=False``: left on the CPU in that dtype (a teacher to shard moves its shard only).
    ``kwargs`` go to ``from_pretrained`` (``attn_implementation="eager"`` for attention maps)."""
    dtype = teacher_torch_dtype(teacher_dtype, device)
    model = load_seq2seq(path, dtype=dtype, **kwargs).to(device if place else "cpu").eval()
    return model.requires_grad_(False)


def load_seq2seq(path: str | os.PathLike, **kwargs) -> PreTrainedModel:
    """Load a seq2seq model from a folder (or a Hub id, resolved by ``raydistill.hub``):
    ``AutoModelForSeq2SeqLM`` or, for ``model_type == "encoder-decoder"``,
    ``EncoderDecoderModel``. ``kwargs`` go to ``from_pretrained`` (``attn_implementation="eager"``,
    ``dropout=0.0``, ``dtype=...``; without ``dtype`` transformers keeps the checkpoint's)."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, EncoderDecoderModel

    from raydistill.hub import is_local_ref, resolve_path

    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelError(f"model path {local} is a file; pass the folder that holds config.json")
        if not (local / "config.json").is_file():
            raise ModelError(f"no config.json in {local}: it is not a saved model; "
                             "pass a folder written by save_pretrained")
        if not any((local / f).is_file() for f in WEIGHT_FILES):
            raise ModelError(f"no weights in {local} (expected one of {', '.join(WEIGHT_FILES)}); "
                             "save the model with save_pretrained")
        source: str = str(local)
    elif not is_local_ref(str(path)):
        source = resolve_path(str(path), "model")  # a Hub id: its local snapshot
    else:
        raise ModelError(f"model path {path} does not exist; check the path")
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:  # a config transformers cannot read
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load a model from {path}: {first}; check the path") from err
    # AutoModelForSeq2SeqLM maps EncoderDecoderConfig too, but be explicit: it is the one family
    # whose weights live in two nested models.
    cls = EncoderDecoderModel if config.model_type == "encoder-decoder" else AutoModelForSeq2SeqLM
    return cls.from_pretrained(source, **kwargs)


def seq2seq_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The class ``load_seq2seq`` builds for ``config`` (without loading weights)."""
    from transformers import AutoModelForSeq2SeqLM, EncoderDecoderModel

    if _is_encoder_decoder(config):
        return EncoderDecoderModel
    return AutoModelForSeq2SeqLM._model_mapping[type(config)]


def checkpoint_layers(model: PreTrainedModel) -> None:
    """Gradient (activation) checkpointing: each layer keeps only its input in the forward pass
    and recomputes the rest in the backward pass (transformers' ``activation_checkpointing_enable``,
    formerly ``gradient_checkpointing_enable``; non-reentrant, as torch recommends: it works with
    DDP's unused parameters and with FSDP2).
    Less activation memory for about one more forward pass of compute."""
    if not model.supports_gradient_checkpointing:  # preflight's check_models says it first
        raise ModelError(f"gradient_checkpointing: {type(model).__name__} does not support it in "
                         "transformers; set gradient_checkpointing: false")
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False  # a cache is not kept in training; transformers warns else


def _is_encoder_decoder(config: PretrainedConfig) -> bool:
    return config.model_type == "encoder-decoder"


def encoder_decoder_layers(model: PreTrainedModel) -> tuple[nn.ModuleList, nn.ModuleList]:
    """The encoder's and the decoder's list of transformer blocks."""
    if _is_encoder_decoder(model.config):
        decoder = model.decoder
        # BertLMHeadModel keeps its stack under .bert; other causal-LM decoders use base_model.
        dec_base = getattr(decoder, "bert", None) or decoder.base_model
        return model.encoder.encoder.layer, dec_base.encoder.layer
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "encoder") and hasattr(inner.encoder, "layers"):
        return inner.encoder.layers, inner.decoder.layers  # BART, mBART, Marian, Pegasus, FSMT
    if hasattr(model, "encoder") and hasattr(model.encoder, "block"):
        return model.encoder.block, model.decoder.block  # T5
    raise ModelError(f"unsupported architecture {type(model).__name__} ({model.config.model_type}); "
                     "use BART, mBART, Marian, Pegasus, FSMT, T5 or EncoderDecoderModel")


def _config(model_or_config: PreTrainedModel | PretrainedConfig) -> PretrainedConfig:
    return model_or_config if isinstance(model_or_config, PretrainedConfig) else model_or_config.config


def _layer_keys(config: PretrainedConfig) -> tuple[str, str]:
    """The config attribute names that hold (encoder, decoder) layer counts."""
    if hasattr(config, "encoder_layers") and hasattr(config, "decoder_layers"):
        return "encoder_layers", "decoder_layers"
    if hasattr(config, "num_decoder_layers"):  # T5-likes; some spell the encoder side out
        return ("num_encoder_layers" if hasattr(config, "num_encoder_layers") else "num_layers",
                "num_decoder_layers")
    raise ModelError(f"config of type {config.model_type} has no known layer-count keys; "
                     "use BART, mBART, Marian, Pegasus, FSMT, T5 or EncoderDecoderModel")


def layer_counts(model_or_config: PreTrainedModel | PretrainedConfig) -> tuple[int, int]:
    """(encoder layers, decoder layers)."""
    config = _config(model_or_config)
    if _is_encoder_decoder(config):
        return config.encoder.num_hidden_layers, config.decoder.num_hidden_layers
    e_key, d_key = _layer_keys(config)
    return getattr(config, e_key), getattr(config, d_key)


def hidden_sizes(model_or_config: PreTrainedModel | PretrainedConfig) -> tuple[int, int]:
    """(encoder hidden size, decoder hidden size); they differ only for mixed encoder-decoders."""
    config = _config(model_or_config)
    if _is_encoder_decoder(config):
        return config.encoder.hidden_size, config.decoder.hidden_size
    return config.d_model, config.d_model


def set_layer_counts(config: PretrainedConfig, e: int, d: int) -> PretrainedConfig:
    """A copy of ``config`` with ``e`` encoder and ``d`` decoder layers; ``config`` is untouched."""
    if e < 1 or d < 1:
        raise ModelError(f"layer counts must be >= 1, got encoder {e}, decoder {d}")
    new = copy.deepcopy(config)
    if _is_encoder_decoder(new):
        new.encoder.num_hidden_layers, new.decoder.num_hidden_layers = e, d
    else:
        e_key, d_key = _layer_keys(new)
        setattr(new, e_key, e)
        setattr(new, d_key, d)
    return new


def shift_labels_right(labels: torch.Tensor, decoder_start_token_id: int,
                       pad_token_id: int) -> torch.Tensor:
    """Teacher-forcing inputs: ``[start, y_0, ..., y_{T-2}]``; ``-100`` becomes ``pad``.

    labels: (B, T) token ids with -100 at ignored positions. Returns a new (B, T) tensor.
    """
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


def decoder_inputs(model: PreTrainedModel, labels: torch.Tensor) -> torch.Tensor:
    """``decoder_input_ids`` for ``labels`` on any supported architecture.

    Always pass these explicitly: FSMT builds its decoder inputs from ``input_ids`` (not labels)
    when none are given, and some models do not shift at all.
    """
    config = model.config  # for EncoderDecoderModel the top-level config holds the ids
    gen = getattr(model, "generation_config", None)
    start = config.decoder_start_token_id
    if start is None and gen is not None:
        start = gen.decoder_start_token_id
    pad = config.pad_token_id
    if pad is None and gen is not None:
        pad = gen.pad_token_id
    if start is None or pad is None:
        raise ModelError(f"{type(model).__name__} config has decoder_start_token_id={start}, "
                         f"pad_token_id={pad}; set both on model.config before training")
    return shift_labels_right(labels, start, pad)
