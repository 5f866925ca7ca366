"""The masked means of the losses, against naive float64 formulas over the kept positions.

The losses weight positions by their mask and divide by ``count.clamp(min=1)`` instead of
selecting the kept positions (a selection, or an ``if`` on the count, waits for the GPU). Each
check runs on a random mask, on a mask that keeps one position, and on an all-ignored batch,
which must give 0 and a zero gradient (no nan).
"""

from __future__ import annotations

import math

import pytest
import torch

from raydistill.distill import chunked
from raydistill.distill.losses import (
    cos_loss,
    generalized_jsd_loss,
    kd_ce_loss,
    kd_mse_loss,
    reverse_kl_loss,
    topk_kd_loss,
)
from raydistill.distill.objective import hidden_mse_loss, kd_kl_loss, lm_loss

B, T, V, K, H = 3, 5, 11, 4, 6


def _masks() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    random = torch.rand(B, T, generator=g) < 0.6
    random[0, 0] = True
    one = torch.zeros(B, T, dtype=torch.bool)
    one[1, 2] = True
    return {"random": random, "one": one, "none": torch.zeros(B, T, dtype=torch.bool)}


MASKS = _masks()


def _logits(seed: int, *shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * 2).requires_grad_(True)


def _kept(mask: torch.Tensor) -> list[tuple[int, int]]:
    return [(b, t) for b in range(B) for t in range(T) if mask[b, t]]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _check(loss: torch.Tensor, want: float, inputs: list[torch.Tensor], mask_name: str) -> None:
    assert float(loss.detach()) == pytest.approx(want, rel=1e-9, abs=1e-12)
    loss.backward()
    for x in inputs:
        assert x.grad is not None and torch.isfinite(x.grad).all()
        if mask_name == "none":
            assert float(loss.detach()) == 0.0 and not x.grad.any()


def _log_softmax(row: torch.Tensor, temperature: float) -> list[float]:
    z = [float(v) / temperature for v in row.detach()]
    top = max(z)
    lse = top + math.log(sum(math.exp(v - top) for v in z))
    return [v - lse for v in z]


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("chunk", [None, 2], ids=["unchunked", "chunked"])
def test_kd_kl_loss(mask_name, chunk, monkeypatch):
    mask, temp = MASKS[mask_name], 2.0
    if chunk:  # the chunked path at this small V, 2 positions a chunk
        monkeypatch.setattr(chunked, "CHUNKED_MIN_VOCAB", 1)
        monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 2 * V)
    s, t = _logits(0, B, T, V), _logits(1, B, T, V)
    per = []
    for b, i in _kept(mask):
        ls, lt = _log_softmax(s[b, i], temp), _log_softmax(t[b, i], temp)
        per.append(temp**2 * sum(math.exp(q) * (q - p) for p, q in zip(ls, lt)))
    _check(kd_kl_loss(s, t, mask, temp), _mean(per), [s, t] if chunk else [s], mask_name)


@pytest.mark.parametrize("mask_name", list(MASKS))
def test_kd_kl_loss_with_a_temperature_per_position(mask_name):
    mask = MASKS[mask_name]
    temps = 1.0 + torch.arange(B * T, dtype=torch.float64).reshape(B, T) / 10
    s, t = _logits(0, B, T, V), _logits(1, B, T, V)
    per = []
    for b, i in _kept(mask):
        tau = float(temps[b, i])
        ls, lt = _log_softmax(s[b, i], tau), _log_softmax(t[b, i], tau)
        per.append(tau**2 * sum(math.exp(q) * (q - p) for p, q in zip(ls, lt)))
    _check(kd_kl_loss(s, t, mask, temps), _mean(per), [s], mask_name)


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("kind", ["ce", "mse"])
def test_textbrewer_kd_losses_with_a_mask(mask_name, kind):
    mask, temp = MASKS[mask_name], 3.0
    s, t = _logits(2, B, T, V), _logits(3, B, T, V)
    per = []
    for b, i in _kept(mask):
        if kind == "ce":
            ls, lt = _log_softmax(s[b, i], temp), _log_softmax(t[b, i], temp)
            per.append(-sum(math.exp(q) * p for p, q in zip(ls, lt)))
        else:  # the mean over the kept positions' V entries
            per.append(sum((x / temp - y / temp) ** 2
                           for x, y in zip(s[b, i].tolist(), t[b, i].tolist())) / V)
    loss = (kd_ce_loss if kind == "ce" else kd_mse_loss)(s, t, temp, mask=mask)
    _check(loss, _mean(per), [s], mask_name)


@pytest.mark.parametrize("mask_name", list(MASKS))
def test_cos_loss_with_a_mask(mask_name):
    mask = MASKS[mask_name]
    s, t = _logits(4, B, T, H), _logits(5, B, T, H)
    per = []
    for b, i in _kept(mask):
        x, y = s[b, i].detach().tolist(), t[b, i].detach().tolist()
        dot = sum(p * q for p, q in zip(x, y))
        norms = math.sqrt((sum(p * p for p in x) + 1e-12) * (sum(q * q for q in y) + 1e-12))
        per.append(1 - dot / norms)
    _check(cos_loss(s, t, mask), _mean(per), [s], mask_name)
    if mask_name == "random":  # what TextBrewer computes on the selected vectors
        keep = mask.bool()
        ref = torch.nn.functional.cosine_embedding_loss(
            s.detach()[keep], t.detach()[keep], torch.ones(int(keep.sum()), dtype=s.dtype))
        assert float(cos_loss(s.detach(), t.detach(), mask)) == pytest.approx(float(ref), rel=1e-12)


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("normalize", [False, True])
def test_hidden_mse_loss(mask_name, normalize):
    mask = MASKS[mask_name]
    student = [_logits(10 + k, B, T, H) for k in range(3)]  # embeddings + 2 layers
    teacher = [_logits(20 + k, B, T, H) for k in range(4)]
    matches = [0, 2]  # student layer i (entry i + 1) against teacher layer matches[i]
    total = 0.0
    for i, j in enumerate(matches):
        s, t = student[i + 1].detach(), teacher[j + 1].detach()
        if normalize:  # layer-normed over (B, L, H) of the stacked layers, as the loss does
            s = torch.nn.functional.layer_norm(torch.stack([student[k + 1].detach() for k in range(2)]),
                                               (B, T, H))[i]
            t = torch.nn.functional.layer_norm(torch.stack([teacher[m + 1].detach() for m in matches]),
                                               (B, T, H))[i]
        total += sum(float((s[b, p] - t[b, p]).pow(2).sum()) for b, p in _kept(mask))
    want = total / (len(_kept(mask)) * H) if _kept(mask) else 0.0
    loss = hidden_mse_loss(mask, student, teacher, matches, normalize)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-6, abs=1e-12)  # computed in fp32
    loss.backward()
    assert torch.isfinite(student[1].grad).all()
    if mask_name == "none":
        assert float(loss.detach()) == 0.0 and not student[1].grad.any()


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_lm_loss(mask_name, smoothing):
    mask = MASKS[mask_name]
    logits = _logits(6, B, T, V)
    labels = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(7))
    labels = labels.masked_fill(~mask, -100)
    per = []
    for b, i in _kept(mask):
        lp = _log_softmax(logits[b, i], 1.0)
        nll = -lp[int(labels[b, i])]
        per.append((1 - smoothing) * nll + smoothing / V * -sum(lp))
    loss = lm_loss(logits, labels, smoothing)
    assert float(loss.detach()) == pytest.approx(_mean(per), rel=1e-6, abs=1e-12)  # fp32
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    if mask_name == "none":
        assert float(loss.detach()) == 0.0 and not logits.grad.any()


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("kind", ["ce", "kl"])
@pytest.mark.parametrize("chunk", [None, 2], ids=["unchunked", "chunked"])
def test_topk_kd_loss(mask_name, kind, chunk, monkeypatch):
    mask, temp = MASKS[mask_name], 2.0
    if chunk:
        monkeypatch.setattr(chunked, "CHUNKED_MIN_VOCAB", 1)
        monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 2 * V)
    s = _logits(8, B, T, V)
    values = _logits(9, B, T, K).detach()
    g = torch.Generator().manual_seed(3)
    indices = torch.stack([torch.randperm(V, generator=g)[:K] for _ in range(B * T)]).reshape(B, T, K)
    per = []
    for b, i in _kept(mask):
        ls = _log_softmax(s[b, i], temp)
        lt = _log_softmax(values[b, i], temp)  # renormalized over the top-k
        ce = -sum(math.exp(q) * ls[int(k)] for q, k in zip(lt, indices[b, i]))
        per.append(ce if kind == "ce" else
                   temp**2 * sum(math.exp(q) * (q - ls[int(k)]) for q, k in zip(lt, indices[b, i])))
    _check(topk_kd_loss(s, values, indices, mask, temp, kind), _mean(per), [s], mask_name)


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_divergences_with_a_mask(mask_name, beta):
    mask, temp = MASKS[mask_name], 1.5
    s, t = _logits(11, B, T, V), _logits(12, B, T, V)

    def kl(log_p, log_q):
        return sum(math.exp(p) * (p - q) for p, q in zip(log_p, log_q))

    per, rev = [], []
    for b, i in _kept(mask):
        ls, lt = _log_softmax(s[b, i], temp), _log_softmax(t[b, i], temp)
        m = [math.log(beta * math.exp(q) + (1 - beta) * math.exp(p)) for p, q in zip(ls, lt)]
        per.append(kl(lt, ls) if beta == 0 else kl(ls, lt) if beta == 1
                   else beta * kl(lt, m) + (1 - beta) * kl(ls, m))
        rev.append(kl(ls, lt))
    _check(generalized_jsd_loss(s, t, mask, beta=beta, temperature=temp), _mean(per), [s],
           mask_name)
    assert float(reverse_kl_loss(s.detach(), t.detach(), mask, temp)) == pytest.approx(
        _mean(rev), rel=1e-9, abs=1e-12)


def test_chunk_size_follows_the_device():
    assert chunked.chunk_elements("cpu") == chunked.CHUNK_ELEMENTS == 1 << 22  # as measured
    assert chunked.chunk_elements(torch.device("cuda", 0)) == chunked.CUDA_CHUNK_ELEMENTS
    assert chunked.chunk_elements(None) == chunked.CHUNK_ELEMENTS
    assert chunked.chunk_rows(250_112, "cpu") == 16
    assert chunked.chunk_rows(250_112, "cuda") == chunked.CUDA_CHUNK_ELEMENTS // 250_112 > 16
