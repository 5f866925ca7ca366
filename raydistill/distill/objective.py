"""The training objectives: sft (finetune.py), kd (SummarizationDistiller), and dispatch.

Pure functions of tensors, written after seq2seq-distillation's ``distillation.py``:

    loss = alpha_ce * KL(softmax(t / T) || softmax(s / T)) * T^2
         + alpha_mlm * CE(s, labels)
         + alpha_hid * (MSE_enc + MSE_dec)

Two deliberate differences from the original, both in docs/methods.md ("differs from the originals"):
- KD is averaged over non-pad *target* positions (``labels != -100``). The original masked with
  ``decoder_input_ids != pad``, which counts one padded position per padded row and drops T5's
  first position (T5's decoder start token is the pad token).
- Label-smoothed NLL is averaged over target tokens; the original summed it, so the loss scale
  (and the effective learning rate) changed with the batch's token count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from raydistill.distill.chunked import chunked_kd_loss, compute_dtype, use_chunked

IGNORE_INDEX = -100


def kd_kl_loss(
    s_logits: torch.Tensor, t_logits: torch.Tensor, mask: torch.Tensor, temperature: float | torch.Tensor
) -> torch.Tensor:
    """KL(teacher || student) at temperature T, times T^2, averaged over selected positions.

    s_logits, t_logits: (B, T, V); mask: (B, T) bool, True where the position counts.
    temperature: a number (or 0-d tensor), or one per position broadcastable to (B, T): then each
    position's KL is scaled by its own T^2. Computed in float32 (float64 inputs: float64).
    From V >= ``CHUNKED_MIN_VOCAB`` it runs chunked (``raydistill.distill.chunked``): the same
    value, without the (N, V) temporaries.
    Returns a scalar; 0 when no position is selected (e.g. an all-pad batch).
    """
    if use_chunked(s_logits.size(-1), temperature):
        return chunked_kd_loss(s_logits, t_logits, temperature, mask=mask, kind="kl")
    dtype = compute_dtype(s_logits, t_logits)
    s, t = s_logits.to(dtype), t_logits.to(dtype)
    per_position = isinstance(temperature, torch.Tensor) and temperature.dim() > 0
    # Every position is computed and the masked ones are left out of the mean: which positions
    # count is never read on the host (a boolean-mask selection would wait for the GPU).
    temp = torch.broadcast_to(temperature, mask.shape).to(dtype).unsqueeze(-1) if per_position \
        else temperature  # (B, T, 1) or a number
    kl = F.kl_div(F.log_softmax(s / temp, dim=-1), F.softmax(t / temp, dim=-1),
                  reduction="none").sum(-1)  # (B, T)
    if per_position:
        kl = kl * temp.squeeze(-1) ** 2
    keep = mask.to(dtype)
    mean = (kl * keep).sum() / keep.sum().clamp_min(1)
    return mean if per_position else mean * temperature**2


def hidden_mse_loss(
    mask: torch.Tensor,
    student_hidden: tuple[torch.Tensor, ...] | list[torch.Tensor],
    teacher_hidden: tuple[torch.Tensor, ...] | list[torch.Tensor],
    matches: list[int],
    normalize_hidden: bool = False,
) -> torch.Tensor:
    """Masked MSE between the output of student layer ``i`` and that of teacher layer
    ``matches[i]``, for ``i`` in ``0 .. len(matches)-1``.

    The hidden tuples are transformers' ``hidden_states``: index 0 is the embedding output, so
    layer ``k``'s output is entry ``k + 1``. The original ``calc_hidden_loss`` indexed the tuples
    with the layer numbers themselves, one entry too early on both sides: it pulled the student's
    *embedding output* towards a teacher layer (with tied embeddings, as in BART and Marian,
    that is the output projection too) and never matched a last layer. ``normalize_hidden``
    layer-norms each stack over (B, L, H) first.
    mask: (B, L); hidden tuples: (B, L, H) each. Returns a scalar, 0 when the mask is empty.
    """
    m = mask.float()
    valid = m.sum() * student_hidden[0].size(-1)  # counted in fp32, whatever the hidden dtype
    s = torch.stack([student_hidden[i + 1] for i in range(len(matches))]).float()
    t = torch.stack([teacher_hidden[j + 1] for j in matches]).float()
    if s.shape != t.shape:
        raise ValueError(f"student hidden states {tuple(s.shape)} != teacher's {tuple(t.shape)}: "
                         "alpha_hid needs equal hidden sizes; set alpha_hid: 0 or use a "
                         "`distillation:` match with a projection")
    if normalize_hidden:
        s = F.layer_norm(s, s.shape[1:])
        t = F.layer_norm(t, t.shape[1:])
    mse = F.mse_loss(s, t, reduction="none")
    return (mse * m.unsqueeze(0).unsqueeze(-1)).sum() / valid.clamp_min(1)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy on labels (-100 ignored), optionally label-smoothed as fairseq/finetune.py.

    logits: (B, T, V); labels: (B, T). Mean over non-ignored tokens; 0 when there are none.
    """
    mask = labels.ne(IGNORE_INDEX)
    n = mask.sum().clamp_min(1)  # no branch on the count: 0 tokens give 0, not nan
    if label_smoothing == 0:
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum") / n
    lprobs = F.log_softmax(logits.float(), dim=-1)
    target = labels.masked_fill(~mask, 0).unsqueeze(-1)
    nll = -lprobs.gather(dim=-1, index=target).squeeze(-1)
    smooth = -lprobs.sum(dim=-1)
    eps_i = label_smoothing / lprobs.size(-1)
    loss = (1.0 - label_smoothing) * nll + eps_i * smooth
    return (loss * mask).sum() / n


def summarization_distiller_loss(
    *,
    s_logits: torch.Tensor,
    t_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha_ce: float,
    alpha_mlm: float,
    alpha_hid: float,
    temperature: float,
    label_smoothing: float = 0.0,
    src_mask: torch.Tensor | None = None,
    s_enc_hidden=None,
    t_enc_hidden=None,
    e_matches: list[int] | None = None,
    s_dec_hidden=None,
    t_dec_hidden=None,
    d_matches: list[int] | None = None,
    normalize_hidden: bool = False,
    kd_loss: str = "kl",
    kd_beta: float = 0.5,
    kd_alpha: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The SummarizationDistiller blend. Returns (loss, components) with components
    ``ce_loss`` (KD), ``mlm_loss`` (hard labels), ``hid_loss_enc``, ``hid_loss_dec``.

    ``kd_loss`` picks the KD term's divergence (``raydistill.distill.losses.divergence_loss``,
    with ``kd_beta`` / ``kd_alpha``), times T^2 as the original's KL; ``kl`` is that KL."""
    tgt_mask = labels.ne(IGNORE_INDEX)
    if kd_loss == "kl":
        ce = kd_kl_loss(s_logits, t_logits, tgt_mask, temperature)
    else:
        from raydistill.distill.losses import divergence_loss

        ce = divergence_loss(kd_loss, s_logits, t_logits, tgt_mask, temperature=temperature,
                             beta=kd_beta, alpha=kd_alpha) * temperature**2
    mlm = lm_loss(s_logits, labels, label_smoothing)
    zero = ce * 0.0
    hid_enc = hid_dec = zero
    if alpha_hid > 0 and e_matches and s_enc_hidden is not None and t_enc_hidden is not None:
        hid_enc = hidden_mse_loss(src_mask, s_enc_hidden, t_enc_hidden, e_matches, normalize_hidden)
    if alpha_hid > 0 and d_matches and s_dec_hidden is not None and t_dec_hidden is not None:
        hid_dec = hidden_mse_loss(tgt_mask, s_dec_hidden, t_dec_hidden, d_matches, normalize_hidden)
    loss = alpha_ce * ce + alpha_mlm * mlm + alpha_hid * (hid_enc + hid_dec)
    return loss, {"ce_loss": ce, "mlm_loss": mlm, "hid_loss_enc": hid_enc, "hid_loss_dec": hid_dec}
