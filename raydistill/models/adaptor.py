"""One forward pass for any seq2seq architecture, and TextBrewer's adaptor dict built from it.

Losses never look at the architecture: they read logits, hidden states and attentions from here.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel


def seq2seq_forward(
    model: PreTrainedModel,
    batch: dict[str, torch.Tensor],
    decoder_input_ids: torch.Tensor,
    *,
    hidden: bool = False,
    attentions: bool = False,
    encoder_outputs: Any = None,
) -> Any:
    """Run ``model`` with explicit decoder inputs (FSMT would otherwise shift ``input_ids``).

    Returns the model's output object: ``logits`` (B, T, V), and when asked
    ``encoder_hidden_states`` / ``decoder_hidden_states`` (tuples of (B, L, H), embeddings first)
    and ``encoder_attentions`` / ``decoder_attentions`` (tuples of (B, heads, L, L)).
    """
    kwargs: dict[str, Any] = dict(
        attention_mask=batch["attention_mask"],
        decoder_input_ids=decoder_input_ids,
        output_hidden_states=hidden,
        output_attentions=attentions,
        use_cache=False,
        return_dict=True,
    )
    if encoder_outputs is not None:
        kwargs["encoder_outputs"] = encoder_outputs
    return model(input_ids=batch["input_ids"], **kwargs)


def textbrewer_results(
    out: Any,
    batch: dict[str, torch.Tensor],
    tgt_mask: torch.Tensor,
    losses: list[torch.Tensor] | None = None,
) -> dict[str, Any]:
    """TextBrewer's adaptor dict for a seq2seq output.

    ``hidden``: encoder embeddings + encoder layers, then decoder embeddings + decoder layers.
    ``attention``: encoder self-attentions, then decoder self-attentions.
    Each entry has an aligned mask in ``hidden_mask`` / ``attention_mask`` (source or target).
    """
    src_mask = batch["attention_mask"]
    enc_h = list(out.encoder_hidden_states or ())
    dec_h = list(out.decoder_hidden_states or ())
    enc_a = [a for a in (out.encoder_attentions or ()) if a is not None]
    dec_a = [a for a in (out.decoder_attentions or ()) if a is not None]
    return {
        "logits": out.logits,
        "logits_mask": tgt_mask,
        "hidden": enc_h + dec_h,
        "hidden_mask": [src_mask] * len(enc_h) + [tgt_mask] * len(dec_h),
        "attention": enc_a + dec_a,
        "attention_mask": [src_mask] * len(enc_a) + [tgt_mask] * len(dec_a),
        "losses": list(losses or []),
        "labels": batch["labels"],
    }
