"""The KD losses for large vocabularies: the same numbers, computed a chunk of positions at a time.

At V = 250,112 (mBART-50, mT5, NLLB) one (N, V) fp32 tensor of 8 x 64 target positions is 0.5 GiB,
and an unchunked KD loss holds several at once: the masked copies of both logits, ``s / T`` and its
log-softmax, the teacher's softmax, the pointwise KL terms, and as many again in backward.
:func:`chunked_kd_loss` reads the logits in place, a chunk of rows at a time, and keeps only three
numbers per position for backward (both log-normalizers and the loss). Backward recomputes each
chunk's probabilities and writes its gradient, ``(p_S - p_T) / T`` times the position's weight,
straight into the gradient of the logits. Beyond the logits and their gradient, the largest
temporaries are then a chunk's (:func:`chunk_elements`: ``CHUNK_ELEMENTS`` on a CPU,
``CUDA_CHUNK_ELEMENTS`` on a GPU). Masked-out positions run too, with weight 0: which positions
count is never read on the host, so on a GPU the loss is queued without waiting for it.

Per selected position n, at temperature T_n, with the teacher's logits over K (the whole
vocabulary, or the top-k token ids of a logit cache):

    p_T = softmax(t_n / T_n) over K,  log p_S = log_softmax(s_n / T_n) over V
    "ce": -sum_K p_T log p_S                        (TextBrewer's kd_ce_loss)
    "kl": T_n^2 * sum_K p_T (log p_T - log p_S)      (kd_kl_loss; 0 log 0 = 0, as F.kl_div)

averaged over the selected positions. ``kd_kl_loss``, ``kd_ce_loss`` and ``topk_kd_loss`` switch to
it on their own from ``CHUNKED_MIN_VOCAB`` (:func:`use_chunked`); below, they run their unchunked
code, so small-vocabulary runs compute what they always did.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

CHUNKED_MIN_VOCAB = 32_000
"""Vocabulary size from which the KD losses run chunked. Measured with ``bench/kd_memory.py
--sweep`` (kd_kl_loss on 8 x 64 positions, 448 kept, one CPU thread; BENCHMARKS.md section 7):
at V = 4k-16k chunking saves little (0.53-0.59x of a 49-196 MiB peak) at 0.85-1.08x the CPU time;
from 32,000 on it takes 0.79x (32k), 0.60x (50k), 0.59x (65k), 0.63x (250k) the time and 0.37x
down to 0.19x the peak. (On CPU the unchunked (N, V) temporaries are then over 32 MiB each, past
glibc's largest mmap threshold: every one is a fresh mapping whose pages fault in again each
step.) T5 / mT5 (32,128), BART (50,265), Marian (58-65k), Pegasus (96,103) and mBART-50 / NLLB
run chunked; BERT2BERT (30,522) and the tests' small models keep their unchanged code."""

CHUNK_ELEMENTS = 1 << 22
"""Elements of one chunk's (rows, V) temporaries on a CPU: 16 MiB in fp32, 16 positions at
V = 250,112. At that V (same sweep), 2^21-2^23 run at the same speed (0.52-0.55x the unchunked CPU
time), and 2^24 is slower (0.91x: 64 MiB temporaries are mapped afresh) and holds 0.27x instead
of 0.19x."""

CUDA_CHUNK_ELEMENTS = 1 << 24
"""Elements of one chunk's temporaries on a GPU: 64 MiB in fp32, 67 positions at V = 250,112.
A chunk costs ~12 kernel launches each way whatever its size; at the CPU's 2^22 a GPU runs ~28
chunks of small kernels for 448 positions and waits on launches. 2^24 keeps each kernel's pass
over memory well above a launch (7 chunks there) while its temporaries stay a few chunk-sized
tensors beside the logits and their gradient. Measure it on the GPU with ``bench/kd_memory.py
--device cuda`` (peak and time against the unchunked loss at V = 250,112)."""


def chunk_elements(device: Optional[Union[torch.device, str]] = None) -> int:
    """The chunk budget for logits on ``device``: ``CUDA_CHUNK_ELEMENTS`` on a GPU, else
    ``CHUNK_ELEMENTS`` (the CPU's, also for an unknown device)."""
    if device is not None and torch.device(device).type == "cuda":
        return CUDA_CHUNK_ELEMENTS
    return CHUNK_ELEMENTS


Temperature = Union[float, Tensor]


def use_chunked(vocab_size: int, temperature: Temperature = 1.0) -> bool:
    """Whether the KD losses take the chunked path: V >= ``CHUNKED_MIN_VOCAB`` and no gradient is
    asked of the temperature (the chunked backward treats it as a constant, as the schedulers
    make it)."""
    grad_t = isinstance(temperature, Tensor) and temperature.requires_grad
    return vocab_size >= CHUNKED_MIN_VOCAB and not grad_t


def chunk_rows(vocab_size: int, device: Optional[Union[torch.device, str]] = None) -> int:
    """Positions per chunk on ``device``: ``chunk_elements(device) // V``, at least 1."""
    return max(1, chunk_elements(device) // max(vocab_size, 1))


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is, else float32: half-precision logits are upcast, as the losses do."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def chunked_kd_loss(
    s_logits: Tensor,
    t_logits: Tensor,
    temperature: Temperature,
    *,
    mask: Optional[Tensor] = None,
    t_indices: Optional[Tensor] = None,
    kind: str = "ce",
    chunk_size: Optional[int] = None,
) -> Tensor:
    """KD cross-entropy ("ce") or T^2-scaled KL ("kl") averaged over positions (module doc).

    s_logits: (..., V) student logits; t_logits: (..., K) teacher logits with the same leading
    shape (K = V, or the cached top-k values); t_indices: (..., K) token ids of t_logits, None when
    K = V in vocabulary order. mask: bool, the leading shape; True where a position counts (None:
    every position). temperature: a number or 0-d tensor, or a tensor broadcastable to the leading
    shape (one per position, as flsw/cwsm give). chunk_size: positions per chunk (default
    :func:`chunk_rows` for the logits' device). Computes in float32 (float64 for float64 inputs);
    gradients flow to both logits, not to the temperature. Returns a scalar; 0 (in the graph) when
    no position is selected.

    Every position runs, the masked ones with weight 0 (their gradient is 0): the positions to
    keep are never read on the host, so the loss queues on a GPU without waiting for it.
    """
    if kind not in ("ce", "kl"):
        raise ValueError(f"kind={kind!r}: use 'ce' (TextBrewer's kd_ce_loss) or 'kl' (kd_kl_loss)")
    vocab, lead = s_logits.size(-1), s_logits.shape[:-1]
    if t_logits.shape[:-1] != lead:
        raise ValueError(f"teacher logits {tuple(t_logits.shape)} and student logits "
                         f"{tuple(s_logits.shape)} must have the same positions (all dims but the last)")
    if t_indices is None and t_logits.size(-1) != vocab:
        raise ValueError(f"teacher logits over {t_logits.size(-1)} tokens need t_indices (their token "
                         f"ids) to be compared with a student over {vocab}")
    if t_indices is not None and t_indices.shape != t_logits.shape:
        raise ValueError(f"t_indices {tuple(t_indices.shape)} must have the teacher logits' shape "
                         f"{tuple(t_logits.shape)}")
    if isinstance(temperature, Tensor) and temperature.requires_grad:
        raise ValueError("chunked_kd_loss treats the temperature as a constant; pass a detached "
                         "tensor (or use the unchunked losses to differentiate through it)")
    if mask is not None and mask.shape != lead:
        raise ValueError(f"mask {tuple(mask.shape)} must have the logits' positions {tuple(lead)}")
    s2 = s_logits.reshape(-1, vocab)
    t2 = t_logits.reshape(-1, t_logits.size(-1))
    idx2 = None if t_indices is None else t_indices.reshape(t2.shape).long()
    n = s2.size(0)
    if n == 0:
        return s_logits.sum() * 0.0
    dtype = compute_dtype(s_logits, t_logits)
    temps = _per_position(temperature, lead, n, dtype, s_logits.device)
    # The mean over kept positions as a weighted sum: weight keep / count, 0 for the others.
    if mask is None:
        share = torch.full_like(temps, 1.0 / n)
    else:
        keep = mask.reshape(-1).to(dtype)
        share = keep / keep.sum().clamp_min(1)
    weights = temps**2 * share if kind == "kl" else share
    chunk = chunk_size or chunk_rows(vocab, s_logits.device)
    if chunk < 1:
        raise ValueError(f"chunk_size={chunk_size}: use at least 1 position per chunk")
    return _ChunkedKD.apply(s2, t2, idx2, temps, weights, kind, chunk)


def _per_position(temperature: Temperature, lead: torch.Size, n: int, dtype: torch.dtype,
                  device: torch.device) -> Tensor:
    """The temperature as one value per position, (n,)."""
    if not isinstance(temperature, Tensor):  # filled on the device: no blocking copy to it
        return torch.full((n,), float(temperature), dtype=dtype, device=device)
    temp = temperature.detach().to(device=device, dtype=dtype)
    if temp.dim() == 0:
        return temp.expand(n)
    return torch.broadcast_to(temp, lead).reshape(-1)


def _read(x: Tensor, a: int, b: int, dtype: torch.dtype, scale: Optional[Tensor] = None) -> Tensor:
    """Rows a..b of x (N, K) in ``dtype``; with ``scale``, divided by it into a new tensor that
    the caller may overwrite (a slice of x is a view: never written)."""
    part = x[a:b]
    fresh = x.dtype != dtype
    part = part.to(dtype)
    if scale is None:
        return part
    return part.div_(scale) if fresh else part / scale


class _ChunkedKD(torch.autograd.Function):
    """Forward keeps per-position log-normalizers; backward recomputes probabilities per chunk."""

    @staticmethod
    def forward(ctx, s, t, t_index, temps, weights, kind, chunk):  # type: ignore[override]
        n, dtype = temps.numel(), temps.dtype
        lse_s, lse_t, row_loss = (temps.new_empty(n) for _ in range(3))
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            scale = temps[a:b, None]
            z_s = _read(s, a, b, dtype, scale)  # (c, V)
            z_t = _read(t, a, b, dtype, scale)  # (c, K)
            lse_s[a:b] = torch.logsumexp(z_s, dim=-1)
            lse_t[a:b] = torch.logsumexp(z_t, dim=-1)
            log_p_s = z_s.sub_(lse_s[a:b, None])
            if t_index is not None:
                log_p_s = log_p_s.gather(1, t_index[a:b])
            log_p_t = z_t.sub_(lse_t[a:b, None])
            p_t = log_p_t.exp()
            ce = -(p_t * log_p_s).sum(-1)
            row_loss[a:b] = ce if kind == "ce" else torch.xlogy(p_t, p_t).sum(-1) + ce
        ctx.save_for_backward(s, t, t_index, temps, weights, lse_s, lse_t, row_loss)
        ctx.kind, ctx.chunk = kind, chunk
        return (weights * row_loss).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        s, t, t_index, temps, weights, lse_s, lse_t, row_loss = ctx.saved_tensors
        need_s, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n, dtype = temps.numel(), temps.dtype
        # Every row is written (a masked one with weight 0: a zero gradient).
        grad_s = torch.empty_like(s) if need_s else None
        grad_t = torch.empty_like(t) if need_t else None
        coef = weights * grad_out.to(dtype) / temps  # d loss / d (logits / T), per position
        for a in range(0, n, ctx.chunk):
            b = min(a + ctx.chunk, n)
            scale, c = temps[a:b, None], coef[a:b, None]
            z_s = _read(s, a, b, dtype, scale)
            idx = None if t_index is None else t_index[a:b]
            log_p_t = _read(t, a, b, dtype, scale).sub_(lse_t[a:b, None])
            p_t = log_p_t.exp()
            log_p_s = z_s.sub_(lse_s[a:b, None])
            if need_t:
                log_p_s_k = log_p_s if idx is None else log_p_s.gather(1, idx)
                if ctx.kind == "ce":  # d/dz_t of -sum p_T log p_S
                    d_t = -p_t * (log_p_s_k + row_loss[a:b, None])
                else:  # d/dz_t of sum p_T (log p_T - log p_S)
                    d_t = p_t * (log_p_t - log_p_s_k - row_loss[a:b, None])
                grad_t[a:b].copy_(d_t.mul_(c))
            if need_s:  # d/dz_s = p_S * sum(p_T) - p_T, the same for "ce" and "kl"
                p_s = log_p_s.exp_().mul_(p_t.sum(-1, keepdim=True) * c)
                p_t.mul_(c)
                if idx is None:
                    p_s.sub_(p_t)
                else:
                    p_s.scatter_add_(1, idx, p_t.neg_())
                grad_s[a:b].copy_(p_s)
        return grad_s, grad_t, None, None, None, None, None


__all__ = ["CHUNKED_MIN_VOCAB", "CHUNK_ELEMENTS", "CUDA_CHUNK_ELEMENTS", "chunk_elements", "chunk_rows",
           "chunked_kd_loss", "compute_dtype", "use_chunked"]
