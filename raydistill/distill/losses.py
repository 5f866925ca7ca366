"""TextBrewer's distillation losses, same names and same math (``textbrewer/losses.py``).

Users compare numbers with TextBrewer, so each function reproduces TextBrewer's formula
operation by operation. The one deviation: where TextBrewer divides by a count of masked-in
tokens (or averages over zero selected positions), an all-zero mask gives ``nan`` there and
``0`` here. The result is the same whenever at least one token is masked in.

A mask is applied by weighting, never by selecting: every position is computed and the masked-out
ones are left out of a sum divided by ``count.clamp(min=1)``. Which positions count is then never
read on the host (a boolean-mask selection or an ``if`` on a count waits for the GPU).

Masks are 0/1 (or bool) tensors of shape (batch, length); 1 marks a real token.

Shape names: B batch, N selected positions, V vocabulary, H heads, L length, D hidden size.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from raydistill.distill.chunked import chunked_kd_loss, compute_dtype, use_chunked

Temperature = Union[float, Tensor]

_ATTENTION_FLOOR = -1e-3  # TextBrewer zeroes attention scores at or below this (masked -inf/-1e4 scores)


def _zero(like: Tensor) -> Tensor:
    """A 0 that stays in the autograd graph (so backward() works on an all-padding batch)."""
    return like.sum() * 0.0


def _div_count(total: Tensor, count: Tensor) -> Tensor:
    """total / count, where a zero count (all tokens masked out) gives 0 instead of nan."""
    return total / count.clamp(min=1)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """The mean of ``values`` over the positions ``mask`` keeps (same shape); 0 when none."""
    keep = mask.to(values.dtype)
    return _div_count((values * keep).sum(), mask.sum())


def _per_position_temperature(temperature: Temperature) -> Temperature:
    # flsw/cwsm give one temperature per position, (N,) or (B, L): broadcast it over V.
    if isinstance(temperature, Tensor) and temperature.dim() > 0:
        return temperature.unsqueeze(-1)
    return temperature


def kd_ce_loss(logits_S: Tensor, logits_T: Tensor, temperature: Temperature = 1, *,
               mask: Tensor | None = None) -> Tensor:
    """Soft cross-entropy ``-sum_v p_T log p_S`` at temperature, averaged over positions.

    logits_S, logits_T: (N, V) or (B, L, V). temperature: a float, or a tensor (N,) / (B, L)
    from the flsw/cwsm schedulers. Not multiplied by temperature**2 (as TextBrewer).
    mask (not in TextBrewer): bool, the logits' positions; gives the value of
    ``kd_ce_loss(logits_S[mask], logits_T[mask], temperature[mask])``, which the chunked path
    reads in place (no masked copies). From V >= ``CHUNKED_MIN_VOCAB`` the loss runs chunked
    (``raydistill.distill.chunked``: the same value without the (N, V) temporaries, computed in
    float32 whatever the logits' dtype).
    Zero positions (N == 0) give 0, not nan.
    """
    if use_chunked(logits_S.size(-1), temperature):
        return chunked_kd_loss(logits_S, logits_T, temperature, mask=mask, kind="ce")
    if logits_S.numel() == 0:
        return _zero(logits_S)
    if mask is not None and isinstance(temperature, Tensor) and temperature.dim() > 0:
        temperature = torch.broadcast_to(temperature, mask.shape)
    temperature = _per_position_temperature(temperature)
    p_T = F.softmax(logits_T / temperature, dim=-1)
    row_ce = -(p_T * F.log_softmax(logits_S / temperature, dim=-1)).sum(dim=-1)
    if mask is None:
        return row_ce.mean()
    return _masked_mean(row_ce, mask)


def kd_mse_loss(logits_S: Tensor, logits_T: Tensor, temperature: Temperature = 1, *,
                mask: Tensor | None = None) -> Tensor:
    """Mean squared error between ``logits / temperature``; shapes as :func:`kd_ce_loss`.

    mask (not in TextBrewer): bool, the logits' positions; gives the value of
    ``kd_mse_loss(logits_S[mask], logits_T[mask], temperature[mask])``.
    """
    if logits_S.numel() == 0:
        return _zero(logits_S)
    if mask is not None and isinstance(temperature, Tensor) and temperature.dim() > 0:
        temperature = torch.broadcast_to(temperature, mask.shape)
    temperature = _per_position_temperature(temperature)
    if mask is None:
        return F.mse_loss(logits_S / temperature, logits_T / temperature)
    row_se = F.mse_loss(logits_S / temperature, logits_T / temperature, reduction="none").sum(-1)
    return _masked_mean(row_se, mask) / logits_S.size(-1)


def att_mse_loss(attention_S: Tensor, attention_T: Tensor, mask: Tensor | None = None) -> Tensor:
    """MSE between attention matrices (B, H, L, L); mask (B, L) keeps rows and columns of real tokens.

    Without a mask, entries <= -1e-3 (masked scores) count as 0. With a mask, the squared error
    summed over kept entries is divided by ``sum_{b,h} len_b**2``.
    """
    if mask is None:
        s = torch.where(attention_S <= _ATTENTION_FLOOR, torch.zeros_like(attention_S), attention_S)
        t = torch.where(attention_T <= _ATTENTION_FLOOR, torch.zeros_like(attention_T), attention_T)
        return F.mse_loss(s, t)
    mask = mask.to(attention_S).unsqueeze(1).expand(-1, attention_S.size(1), -1)  # (B, H, L)
    valid_count = torch.pow(mask.sum(dim=2), 2).sum()
    se = F.mse_loss(attention_S, attention_T, reduction="none") * mask.unsqueeze(-1) * mask.unsqueeze(2)
    return _div_count(se.sum(), valid_count)


def att_mse_sum_loss(attention_S: Tensor, attention_T: Tensor, mask: Tensor | None = None) -> Tensor:
    """MSE after summing attention over heads: (B, H, L, L) -> (B, L, L); (B, L, L) is used as is.

    Masking as :func:`att_mse_loss`, with the count ``sum_b len_b**2``.
    """
    if attention_S.dim() == 4:
        attention_T = attention_T.sum(dim=1)
        attention_S = attention_S.sum(dim=1)
    if mask is None:
        s = torch.where(attention_S <= _ATTENTION_FLOOR, torch.zeros_like(attention_S), attention_S)
        t = torch.where(attention_T <= _ATTENTION_FLOOR, torch.zeros_like(attention_T), attention_T)
        return F.mse_loss(s, t)
    mask = mask.to(attention_S)  # (B, L)
    valid_count = torch.pow(mask.sum(dim=1), 2).sum()
    se = F.mse_loss(attention_S, attention_T, reduction="none") * mask.unsqueeze(-1) * mask.unsqueeze(1)
    return _div_count(se.sum(), valid_count)


def att_ce_loss(attention_S: Tensor, attention_T: Tensor, mask: Tensor | None = None) -> Tensor:
    """Cross-entropy between row-wise softmaxes of attention scores (B, H, L, L).

    Without a mask, teacher probabilities where the teacher score is <= -1e-3 count as 0 and the
    row sums are averaged over (B, H, L). With a mask (B, L), masked key columns are dropped and
    the sum over kept query rows is divided by ``H * sum_b len_b``.
    """
    probs_T = F.softmax(attention_T, dim=-1)
    if mask is None:
        probs_T = torch.where(attention_T <= _ATTENTION_FLOOR, torch.zeros_like(attention_T), probs_T)
        return -((probs_T * F.log_softmax(attention_S, dim=-1)).sum(dim=-1)).mean()
    mask = mask.to(attention_S).unsqueeze(1).expand(-1, attention_S.size(1), -1)  # (B, H, L)
    row_ce = (probs_T * F.log_softmax(attention_S, dim=-1) * mask.unsqueeze(2)).sum(dim=-1)  # (B, H, L)
    return -_div_count((row_ce * mask).sum(), mask.sum())


def att_ce_mean_loss(attention_S: Tensor, attention_T: Tensor, mask: Tensor | None = None) -> Tensor:
    """As :func:`att_ce_loss` after averaging scores over heads: (B, H, L, L) -> (B, L, L).

    With a mask (B, L) the sum over kept rows is divided by ``sum_b len_b``.
    """
    if attention_S.dim() == 4:
        attention_S = attention_S.mean(dim=1)
        attention_T = attention_T.mean(dim=1)
    probs_T = F.softmax(attention_T, dim=-1)
    if mask is None:
        probs_T = torch.where(attention_T <= _ATTENTION_FLOOR, torch.zeros_like(attention_T), probs_T)
        return -((probs_T * F.log_softmax(attention_S, dim=-1)).sum(dim=-1)).mean()
    mask = mask.to(attention_S)  # (B, L)
    row_ce = (probs_T * F.log_softmax(attention_S, dim=-1) * mask.unsqueeze(1)).sum(dim=-1)  # (B, L)
    return -_div_count((row_ce * mask).sum(), mask.sum())


def hid_mse_loss(state_S: Tensor, state_T: Tensor, mask: Tensor | None = None) -> Tensor:
    """MSE between hidden states (B, L, D); with a mask (B, L), averaged over kept tokens x D."""
    if mask is None:
        return F.mse_loss(state_S, state_T)
    mask = mask.to(state_S)
    valid_count = mask.sum() * state_S.size(-1)
    return _div_count((F.mse_loss(state_S, state_T, reduction="none") * mask.unsqueeze(-1)).sum(), valid_count)


def cos_loss(state_S: Tensor, state_T: Tensor, mask: Tensor | None = None) -> Tensor:
    """``mean(1 - cos(s, t))`` over token vectors of (B, L, D) states (DistilBERT's loss).

    A mask (B, L) keeps only real tokens (F.cosine_embedding_loss with target 1, as TextBrewer).
    """
    if mask is None:
        state_S = state_S.reshape(-1, state_S.size(-1))
        state_T = state_T.reshape(-1, state_T.size(-1))
        target = state_S.new_ones(state_S.size(0))
        return F.cosine_embedding_loss(state_S, state_T, target, reduction="mean")
    # F.cosine_embedding_loss's formula (target 1), per position, averaged over kept positions.
    eps = 1e-12  # its EPSILON
    dot = (state_S * state_T).sum(-1)
    norms = (((state_S * state_S).sum(-1) + eps) * ((state_T * state_T).sum(-1) + eps)).sqrt()
    return _masked_mean(1 - dot / norms, mask)


def pkd_loss(state_S: Tensor, state_T: Tensor, mask: Tensor | None = None) -> Tensor:
    """BERT-PKD: squared distance of L2-normalized vectors at position 0, averaged over the batch.

    state_S, state_T: (B, L, D) (position 0 is used) or (B, D). mask is not used (as TextBrewer).
    """
    cls_T = state_T[:, 0] if state_T.dim() == 3 else state_T
    cls_S = state_S[:, 0] if state_S.dim() == 3 else state_S
    normed_T = cls_T / torch.norm(cls_T, dim=1, keepdim=True)
    normed_S = cls_S / torch.norm(cls_S, dim=1, keepdim=True)
    return (normed_S - normed_T).pow(2).sum(dim=-1).mean()


def fsp_loss(state_S: Sequence[Tensor], state_T: Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
    """FSP variant: MSE between (B, D, D) Gram matrices ``X0^T X1 / len`` of two layers each.

    state_S, state_T: two (B, L, D) tensors each (``layer_S``/``layer_T`` are two-int lists).
    A mask (B, L) zeroes padded tokens and divides by each sample's real length (an all-padding
    sample gives a zero Gram matrix here, nan in TextBrewer).
    """
    if mask is None:
        gram_S = torch.bmm(state_S[0].transpose(1, 2), state_S[1]) / state_S[1].size(1)
        gram_T = torch.bmm(state_T[0].transpose(1, 2), state_T[1]) / state_T[1].size(1)
    else:
        mask = mask.to(state_S[0]).unsqueeze(-1)  # (B, L, 1)
        lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1, 1)
        gram_S = torch.bmm((state_S[0] * mask).transpose(1, 2), state_S[1] * mask) / lengths
        gram_T = torch.bmm((state_T[0] * mask).transpose(1, 2), state_T[1] * mask) / lengths
    return F.mse_loss(gram_S, gram_T)


def mmd_loss(state_S: Sequence[Tensor], state_T: Sequence[Tensor], mask: Tensor | None = None) -> Tensor:
    """NST/MMD variant: MSE between (B, L, L) similarity matrices ``X0 X1^T / D`` of two layers each.

    state_S: two (B, L, D_S) tensors, state_T: two (B, L, D_T) tensors (D_S may differ from D_T).
    A mask (B, L) keeps real rows/columns; the sum is divided by ``sum_b len_b**2``. Both
    branches divide the Gram matrices by D, as TextBrewer's GitHub master (issue #36); the PyPI
    release 0.2.1.post1 divides by L instead when a mask is given.
    """
    gram_S = torch.bmm(state_S[0], state_S[1].transpose(1, 2)) / state_S[1].size(2)
    gram_T = torch.bmm(state_T[0], state_T[1].transpose(1, 2)) / state_T[1].size(2)
    if mask is None:
        return F.mse_loss(gram_S, gram_T)
    mask = mask.to(state_S[0])
    valid_count = torch.pow(mask.sum(dim=1), 2).sum()
    se = F.mse_loss(gram_S, gram_T, reduction="none") * mask.unsqueeze(-1) * mask.unsqueeze(1)
    return _div_count(se.sum(), valid_count)


# ---- KD from cached top-k teacher logits (raydistill.models.teacher_cache) -----------------
#
# The loss from top-k logits (``topk_kd_loss``), per target position, with K the teacher's top-k
# token ids at that position and T the temperature:
#
#     p~_T(v)   = exp(z_T(v) / T) / sum_{u in K} exp(z_T(u) / T)       for v in K, 0 elsewhere
#     log p_S(v) = z_S(v) / T - logsumexp_{u in V} (z_S(u) / T)          full-vocabulary student
#     CE_k = - sum_{v in K} p~_T(v) log p_S(v)                            (TextBrewer kd_ce_loss)
#     KL_k = T^2 * sum_{v in K} p~_T(v) (log p~_T(v) - log p_S(v))        (kd_kl_loss)
#
# averaged over target positions. The teacher distribution is renormalized over its top-k (the
# tail mass outside K is dropped); the student keeps its full-vocabulary normalizer, so its
# gradient is p_S - p~_T over the whole vocabulary and mass it puts outside K is still pushed down.
# With k = V both are exact. The error at k < V is measured in tests/unit/distill/test_logit_cache.py
# and docs/data_at_scale.md.

def topk_kd_loss(
    s_logits: torch.Tensor,
    topk_values: torch.Tensor,
    topk_indices: torch.Tensor | None,
    mask: torch.Tensor,
    temperature: float | torch.Tensor,
    kind: str = "ce",
) -> torch.Tensor:
    """KD from the teacher's top-k logits (formula in the module doc).

    s_logits: (B, T, V) student logits; topk_values: (B, T, k) teacher logits (any per-position
    shift); topk_indices: (B, T, k) their token ids, or None when every logit is kept in
    vocabulary order (k = V: no gather); mask: (B, T) True where the position counts.
    temperature: a number, or one per position broadcastable to (B, T) (each KL then scaled by
    its own T^2). kind: "ce" (TextBrewer's kd_ce_loss, no T^2) or "kl" (kd_kl_loss: KL x T^2).
    From V >= ``CHUNKED_MIN_VOCAB`` it runs chunked (``raydistill.distill.chunked``): the same
    value without the (N, V) temporaries of the student's log-softmax.
    Returns a scalar averaged over selected positions; 0 (in the graph) when none is selected.
    """
    if kind not in ("ce", "kl"):
        raise ValueError(f"kind={kind!r}: use 'ce' or 'kl'")
    if use_chunked(s_logits.size(-1), temperature):
        return chunked_kd_loss(s_logits, topk_values, temperature, mask=mask,
                               t_indices=topk_indices, kind=kind)
    dtype = compute_dtype(s_logits, topk_values)
    s = s_logits.to(dtype)  # (B, T, V)
    tv = topk_values.to(dtype)  # (B, T, k)
    per_position = isinstance(temperature, torch.Tensor) and temperature.dim() > 0
    temp = temperature
    if per_position:  # (B, T, 1)
        temp = torch.broadcast_to(temperature, mask.shape).to(dtype).unsqueeze(-1)
    log_p_s = F.log_softmax(s / temp, dim=-1)
    if topk_indices is not None:
        log_p_s = log_p_s.gather(-1, topk_indices.long())  # (B, T, k)
    log_p_t = F.log_softmax(tv / temp, dim=-1)  # renormalized over the top-k
    p_t = log_p_t.exp()
    keep = mask.to(dtype)
    count = keep.sum().clamp_min(1)
    if kind == "ce":
        return (-(p_t * log_p_s).sum(-1) * keep).sum() / count
    kl = (p_t * (log_p_t - log_p_s)).sum(-1)
    if per_position:
        return (kl * temp.squeeze(-1) ** 2 * keep).sum() / count
    return (kl * keep).sum() / count * temperature**2



# ---- divergences between the student's and the teacher's token distributions ----------------
#
# With p_S = softmax(z_S / T), p_T = softmax(z_T / T) at one target position (sums over the
# vocabulary):
#
#     forward KL         KL(p_T || p_S)       = sum p_T (log p_T - log p_S)
#     reverse KL         KL(p_S || p_T)       = sum p_S (log p_S - log p_T)
#     generalized JSD    beta KL(p_T || m) + (1 - beta) KL(p_S || m),  m = beta p_T + (1 - beta) p_S
#                        (TRL's GKDTrainer.generalized_jsd_loss: beta = 0 is the forward KL,
#                        beta = 1 the reverse KL, Agarwal et al. 2024, eq. 1)
#     skew KL            KL(p_T || alpha p_T + (1 - alpha) p_S)      (DistiLLM, Ko et al. 2024)
#     skew reverse KL    KL(p_S || alpha p_S + (1 - alpha) p_T)
#     total variation    1/2 sum |p_T - p_S|
#
# each averaged over the positions ``mask`` selects (0, in the graph, when it selects none), with
# no T^2 factor (TRL's convention; the kd method's ``kd_loss`` adds its T^2 itself). Computed in
# float32, or float64 for float64 inputs.

def _log_probs(student_logits: Tensor, teacher_logits: Tensor,
               temperature: float) -> tuple[Tensor, Tensor]:
    """(N, V) log-probabilities of every position at ``temperature``."""
    dtype = compute_dtype(student_logits, teacher_logits)
    s = student_logits.reshape(-1, student_logits.size(-1)).to(dtype)
    t = teacher_logits.reshape(-1, teacher_logits.size(-1)).to(dtype)
    return F.log_softmax(s / temperature, dim=-1), F.log_softmax(t / temperature, dim=-1)


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per row from log-probabilities; 0 * log 0 counts as 0."""
    return torch.where(log_p > -torch.inf, log_p.exp() * (log_p - log_q), 0.0).sum(-1)


def _log_mix(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(weight_a * a + (1 - weight_a) * b), stable, for 0 < weight_a < 1."""
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def _divergence(rows: Callable[[Tensor, Tensor], Tensor], student_logits: Tensor,
                teacher_logits: Tensor, mask: Tensor | None, temperature: float) -> Tensor:
    if student_logits.numel() == 0:
        return _zero(student_logits)
    per_row = rows(*_log_probs(student_logits, teacher_logits, temperature))  # (N,)
    if mask is None:
        return per_row.mean()
    return _masked_mean(per_row, mask.reshape(-1))


def forward_kl_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None,
                    temperature: float = 1.0) -> Tensor:
    """KL(p_T || p_S). Logits (B, L, V) or (N, V); mask (B, L) or None (every position)."""
    return _divergence(lambda s, t: _kl_rows(t, s), student_logits, teacher_logits, mask,
                       temperature)


def reverse_kl_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None,
                    temperature: float = 1.0) -> Tensor:
    """KL(p_S || p_T), mode-seeking: the student is pushed off tokens the teacher rules out."""
    return _divergence(lambda s, t: _kl_rows(s, t), student_logits, teacher_logits, mask,
                       temperature)


def generalized_jsd_loss(student_logits: Tensor, teacher_logits: Tensor,
                         mask: Tensor | None = None, beta: float = 0.5,
                         temperature: float = 1.0) -> Tensor:
    """The generalized Jensen-Shannon divergence of GKD, TRL's convention (module notes):
    ``beta`` 0 is KL(p_T || p_S), 1 is KL(p_S || p_T), in between the mixture's JSD."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta}: use a number in [0, 1]")

    def rows(s: Tensor, t: Tensor) -> Tensor:
        if beta == 0.0:
            return _kl_rows(t, s)
        if beta == 1.0:
            return _kl_rows(s, t)
        m = _log_mix(t, s, beta)
        return beta * _kl_rows(t, m) + (1.0 - beta) * _kl_rows(s, m)

    return _divergence(rows, student_logits, teacher_logits, mask, temperature)


def skew_kl_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None,
                 alpha: float = 0.1, temperature: float = 1.0) -> Tensor:
    """DistiLLM's alpha-skew KL: KL(p_T || alpha p_T + (1 - alpha) p_S); alpha 0 is the forward KL."""
    _check_alpha(alpha)
    return _divergence(lambda s, t: _kl_rows(t, _log_mix(t, s, alpha) if alpha else s),
                       student_logits, teacher_logits, mask, temperature)


def skew_reverse_kl_loss(student_logits: Tensor, teacher_logits: Tensor,
                         mask: Tensor | None = None, alpha: float = 0.1,
                         temperature: float = 1.0) -> Tensor:
    """DistiLLM's alpha-skew reverse KL: KL(p_S || alpha p_S + (1 - alpha) p_T)."""
    _check_alpha(alpha)
    return _divergence(lambda s, t: _kl_rows(s, _log_mix(s, t, alpha) if alpha else t),
                       student_logits, teacher_logits, mask, temperature)


def tvd_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None,
             temperature: float = 1.0) -> Tensor:
    """Total variation distance: 1/2 sum |p_T - p_S|."""
    return _divergence(lambda s, t: 0.5 * (t.exp() - s.exp()).abs().sum(-1), student_logits,
                       teacher_logits, mask, temperature)


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha={alpha}: use a number in [0, 1)")


DIVERGENCES = ("kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")
"""The ``kd_loss`` choices (``kl``: the forward KL)."""


def divergence_loss(kind: str, student_logits: Tensor, teacher_logits: Tensor,
                    mask: Tensor | None = None, *, temperature: float = 1.0, beta: float = 0.5,
                    alpha: float = 0.1) -> Tensor:
    """The divergence named ``kind`` (one of ``DIVERGENCES``); ``beta`` is jsd's, ``alpha`` the
    skew divergences'."""
    if kind == "kl":
        return forward_kl_loss(student_logits, teacher_logits, mask, temperature)
    if kind == "reverse_kl":
        return reverse_kl_loss(student_logits, teacher_logits, mask, temperature)
    if kind == "jsd":
        return generalized_jsd_loss(student_logits, teacher_logits, mask, beta, temperature)
    if kind == "skew_kl":
        return skew_kl_loss(student_logits, teacher_logits, mask, alpha, temperature)
    if kind == "skew_reverse_kl":
        return skew_reverse_kl_loss(student_logits, teacher_logits, mask, alpha, temperature)
    if kind == "tvd":
        return tvd_loss(student_logits, teacher_logits, mask, temperature)
    raise ValueError(f"kd_loss={kind!r}: use one of {', '.join(DIVERGENCES)}")


KD_LOSS_MAP: dict[str, Callable[..., Tensor]] = {"mse": kd_mse_loss, "ce": kd_ce_loss}
"""``kd_loss_type`` -> KD loss on logits (TextBrewer's ``presets.KD_LOSS_MAP``)."""

MATCH_LOSS_MAP: dict[str, Callable[..., Tensor]] = {
    "attention_mse_sum": att_mse_sum_loss,
    "attention_mse": att_mse_loss,
    "attention_ce_mean": att_ce_mean_loss,
    "attention_ce": att_ce_loss,
    "hidden_mse": hid_mse_loss,
    "cos": cos_loss,
    "pkd": pkd_loss,
    "gram": fsp_loss,
    "fsp": fsp_loss,
    "mmd": mmd_loss,
    "nst": mmd_loss,
}
"""``intermediate_matches[i]['loss']`` -> loss (TextBrewer's ``presets.MATCH_LOSS_MAP``:
gram is fsp, nst is mmd; TextBrewer has no separate gram/nst functions)."""

PAIR_LOSSES = frozenset({"fsp", "gram", "mmd", "nst"})
"""Losses that compare two layers per model: their ``layer_S``/``layer_T`` are two-int lists."""

__all__ = [
    "DIVERGENCES",
    "KD_LOSS_MAP",
    "MATCH_LOSS_MAP",
    "PAIR_LOSSES",
    "att_ce_loss",
    "att_ce_mean_loss",
    "att_mse_loss",
    "att_mse_sum_loss",
    "cos_loss",
    "divergence_loss",
    "forward_kl_loss",
    "fsp_loss",
    "generalized_jsd_loss",
    "hid_mse_loss",
    "kd_ce_loss",
    "kd_mse_loss",
    "mmd_loss",
    "pkd_loss",
    "reverse_kl_loss",
    "skew_kl_loss",
    "skew_reverse_kl_loss",
    "topk_kd_loss",
    "tvd_loss",
]
