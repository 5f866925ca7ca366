"""The divergence family against naive float64 references written as sums over the vocabulary,
their gradients by gradcheck, and the generalized JSD against TRL's GKDTrainer."""

from __future__ import annotations

import math

import pytest
import torch

from raydistill.distill.losses import (
    DIVERGENCES,
    divergence_loss,
    forward_kl_loss,
    generalized_jsd_loss,
    reverse_kl_loss,
    skew_kl_loss,
    skew_reverse_kl_loss,
    tvd_loss,
)

BETAS = (0.0, 0.1, 0.5, 0.9, 1.0)


def softmax_rows(z: list[float], T: float) -> list[float]:
    top = max(v / T for v in z)
    e = [math.exp(v / T - top) for v in z]
    return [x / sum(e) for x in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def naive(kind: str, s_logits, t_logits, mask, T: float, beta: float = 0.5,
          alpha: float = 0.1) -> float:
    """Loop over positions and vocabulary, in Python floats (float64)."""
    B, L, _ = s_logits.shape
    vals = []
    for b in range(B):
        for i in range(L):
            if mask is not None and not mask[b, i]:
                continue
            ps = softmax_rows(s_logits[b, i].tolist(), T)
            pt = softmax_rows(t_logits[b, i].tolist(), T)
            if kind == "kl":
                v = kl(pt, ps)
            elif kind == "reverse_kl":
                v = kl(ps, pt)
            elif kind == "jsd":
                m = [beta * a + (1 - beta) * c for a, c in zip(pt, ps)]
                v = (beta * kl(pt, m) if beta > 0 else 0.0) + \
                    ((1 - beta) * kl(ps, m) if beta < 1 else 0.0)
                if beta == 0:
                    v = kl(pt, ps)
                if beta == 1:
                    v = kl(ps, pt)
            elif kind == "skew_kl":
                v = kl(pt, [alpha * a + (1 - alpha) * c for a, c in zip(pt, ps)])
            elif kind == "skew_reverse_kl":
                v = kl(ps, [alpha * c + (1 - alpha) * a for a, c in zip(pt, ps)])
            else:
                v = 0.5 * sum(abs(a - c) for a, c in zip(pt, ps))
            vals.append(v)
    return sum(vals) / len(vals) if vals else 0.0


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_divergence_matches_its_naive_sum(kind, seed):
    g = torch.Generator().manual_seed(seed)
    B, L, V = 1 + seed, 2 + seed, 5 + 3 * seed
    s = torch.randn(B, L, V, generator=g, dtype=torch.float64) * 2
    t = torch.randn(B, L, V, generator=g, dtype=torch.float64) * 2
    mask = torch.rand(B, L, generator=g) > 0.3
    mask[0, 0] = True
    for T in (0.5, 1.0, 2.0):
        for beta in BETAS if kind == "jsd" else (0.5,):
            got = divergence_loss(kind, s, t, mask, temperature=T, beta=beta, alpha=0.2)
            want = naive(kind, s, t, mask, T, beta=beta, alpha=0.2)
            assert float(got) == pytest.approx(want, rel=1e-9, abs=1e-12), (kind, T, beta)


def test_jsd_ends_are_the_two_kls_and_middle_is_bounded():
    g = torch.Generator().manual_seed(3)
    s, t = (torch.randn(2, 4, 9, generator=g, dtype=torch.float64) for _ in range(2))
    assert torch.allclose(generalized_jsd_loss(s, t, beta=0.0), forward_kl_loss(s, t))
    assert torch.allclose(generalized_jsd_loss(s, t, beta=1.0), reverse_kl_loss(s, t))
    for beta in (0.1, 0.5, 0.9):  # JSD(beta) <= H(beta) (its maximum, disjoint supports)
        bound = -(beta * math.log(beta) + (1 - beta) * math.log(1 - beta))
        assert 0 < float(generalized_jsd_loss(s, t, beta=beta)) < bound
    assert float(skew_kl_loss(s, t, alpha=0.0)) == pytest.approx(float(forward_kl_loss(s, t)))
    assert float(skew_reverse_kl_loss(s, t, alpha=0.0)) == pytest.approx(float(reverse_kl_loss(s, t)))


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_identical_distributions_give_zero_and_an_empty_mask_zero_in_the_graph(kind):
    z = torch.randn(2, 3, 6, requires_grad=True)
    assert float(divergence_loss(kind, z, z.detach())) == pytest.approx(0.0, abs=1e-6)
    empty = divergence_loss(kind, z, torch.randn(2, 3, 6), torch.zeros(2, 3, dtype=torch.bool))
    assert float(empty) == 0.0
    empty.backward()  # an all-padding batch still backpropagates
    assert z.grad is not None and not z.grad.any()


@pytest.mark.parametrize("kind,kw", [("kl", {}), ("reverse_kl", {}), ("jsd", {"beta": 0.1}),
                                     ("jsd", {"beta": 0.9}), ("skew_kl", {"alpha": 0.3}),
                                     ("skew_reverse_kl", {"alpha": 0.3}), ("tvd", {})])
def test_gradients_by_gradcheck(kind, kw):
    g = torch.Generator().manual_seed(4)
    s = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    assert torch.autograd.gradcheck(
        lambda x: divergence_loss(kind, x, t, mask, temperature=1.5, **kw), (s,))


def test_float32_inputs_compute_in_float32_and_agree():
    g = torch.Generator().manual_seed(5)
    s, t = (torch.randn(3, 4, 50, generator=g, dtype=torch.float64) * 3 for _ in range(2))
    for kind in DIVERGENCES:
        lo = divergence_loss(kind, s.float(), t.float(), temperature=2.0)
        assert lo.dtype == torch.float32
        assert float(lo) == pytest.approx(float(divergence_loss(kind, s, t, temperature=2.0)),
                                          rel=1e-4, abs=1e-6)


def test_bad_beta_and_alpha_are_errors():
    z = torch.zeros(1, 1, 3)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd_loss(z, z, beta=1.5)
    with pytest.raises(ValueError, match="alpha"):
        skew_kl_loss(z, z, alpha=1.0)
    with pytest.raises(ValueError, match="kd_loss"):
        divergence_loss("js", z, z)
    assert float(tvd_loss(z, z)) == 0.0


def test_generalized_jsd_is_trls():
    """Where TRL installs beside our pins (the dev extra), the same numbers as its GKDTrainer."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gkd = pytest.importorskip("trl.experimental.gkd")
    g = torch.Generator().manual_seed(6)
    s, t = (torch.randn(3, 5, 11, generator=g) for _ in range(2))
    labels = torch.randint(0, 11, (3, 5), generator=g)
    labels[0, 3:] = labels[2, 1:] = -100
    for beta in BETAS:
        for T in (1.0, 2.0):
            theirs = gkd.GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=beta,
                                                         temperature=T)
            ours = generalized_jsd_loss(s, t, labels.ne(-100), beta=beta, temperature=T)
            assert float(ours) == pytest.approx(float(theirs), rel=1e-5, abs=1e-7), (beta, T)
