"""The SummarizationDistiller objective against naive loops over positions (seeded tensors)."""

import math

import pytest
import torch

from raydistill.distill.objective import (
    hidden_mse_loss,
    kd_kl_loss,
    lm_loss,
    summarization_distiller_loss,
)
from raydistill.models.student import get_layers_to_supervise


def naive_kd(s, t, mask, T):
    """sum over selected positions of KL(p_t || p_s) at temperature T, / count, * T^2."""
    total, n = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if not mask[b, i]:
                continue
            p_t = torch.softmax(t[b, i].double() / T, -1)
            log_p_s = torch.log_softmax(s[b, i].double() / T, -1)
            total += float((p_t * (torch.log(p_t) - log_p_s)).sum())
            n += 1
    return total / n * T * T


def naive_hidden(mask, hs, ht, matches, normalize):
    # hs/ht are transformers' hidden_states: [embedding output, layer 0 output, layer 1, ...].
    s = torch.stack([hs[1 + layer] for layer in range(len(matches))]).double()
    t = torch.stack([ht[1 + layer] for layer in matches]).double()
    if normalize:
        s = (s - s.mean(dim=(1, 2, 3), keepdim=True)) / torch.sqrt(s.var(dim=(1, 2, 3), unbiased=False, keepdim=True) + 1e-5)
        t = (t - t.mean(dim=(1, 2, 3), keepdim=True)) / torch.sqrt(t.var(dim=(1, 2, 3), unbiased=False, keepdim=True) + 1e-5)
    total = 0.0
    for k in range(s.shape[0]):
        for b in range(s.shape[1]):
            for i in range(s.shape[2]):
                if mask[b, i]:
                    total += float(((s[k, b, i] - t[k, b, i]) ** 2).sum())
    return total / (float(mask.sum()) * s.shape[-1])


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 11, generator=g)
    t = torch.randn(2, 5, 11, generator=g)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    labels[0, 3:] = -100  # padded target positions
    return s, t, labels


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_kd_matches_naive_over_non_pad_positions_with_T_squared(tensors, T):
    s, t, labels = tensors
    mask = labels.ne(-100)
    assert float(kd_kl_loss(s, t, mask, T)) == pytest.approx(naive_kd(s, t, mask, T), rel=1e-5)
    # Padded positions do not count: changing logits there leaves the loss unchanged.
    s2 = s.clone()
    s2[0, 4] += 100.0
    assert float(kd_kl_loss(s2, t, mask, T)) == pytest.approx(float(kd_kl_loss(s, t, mask, T)))


def test_kd_is_zero_for_identical_logits_and_for_an_empty_mask(tensors):
    s, _, labels = tensors
    assert float(kd_kl_loss(s, s, labels.ne(-100), 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_kl_loss(s, s + 1, torch.zeros_like(labels, dtype=torch.bool), 2.0)) == 0.0


def test_lm_loss_matches_cross_entropy_and_label_smoothing_formula(tensors):
    s, _, labels = tensors
    mask = labels.ne(-100)
    ce = float(torch.nn.functional.cross_entropy(s[mask], labels[mask]))
    assert float(lm_loss(s, labels)) == pytest.approx(ce, rel=1e-6)
    eps, V = 0.1, s.shape[-1]
    lp = torch.log_softmax(s[mask].double(), -1)
    naive = sum(float((1 - eps) * -lp[i, labels[mask][i]] - eps / V * lp[i].sum())
                for i in range(lp.shape[0])) / lp.shape[0]
    assert float(lm_loss(s, labels, eps)) == pytest.approx(naive, rel=1e-5)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("supervise_forward", [False, True])
def test_hidden_mse_with_both_layer_maps(normalize, supervise_forward):
    g = torch.Generator().manual_seed(1)
    n_teacher, n_student = 12, 3
    ht = [torch.randn(2, 4, 8, generator=g) for _ in range(n_teacher + 1)]
    hs = [torch.randn(2, 4, 8, generator=g) for _ in range(n_student + 1)]
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    # supervise_forward: LAYERS_TO_SUPERVISE; otherwise the layers the student was copied from.
    matches = get_layers_to_supervise(n_student, n_teacher) if supervise_forward else [0, 6, 11]
    got = float(hidden_mse_loss(mask, hs, ht, matches, normalize))
    assert got == pytest.approx(naive_hidden(mask, hs, ht, matches, normalize), rel=1e-4)


def test_hidden_mse_matches_layer_outputs_not_the_embeddings():
    # A student whose layers reproduce the teacher layers they are matched to has nothing to
    # learn, whatever its embedding output (the original compared that embedding output with a
    # teacher layer, and left the last student layer unmatched).
    g = torch.Generator().manual_seed(2)
    ht = [torch.randn(2, 3, 8, generator=g) for _ in range(7)]  # embeddings + 6 layers
    matches = [0, 2, 5]
    hs = [torch.randn(2, 3, 8, generator=g)] + [ht[1 + j].clone() for j in matches]
    mask = torch.ones(2, 3)
    assert float(hidden_mse_loss(mask, hs, ht, matches)) == 0.0
    hs[-1] = hs[-1] + 1.0  # the last student layer is matched too
    # the sum over matches, per valid position and unit (as the original): 1 for one match off by 1
    assert float(hidden_mse_loss(mask, hs, ht, matches)) == pytest.approx(1.0)


def test_hidden_mse_shape_mismatch_is_a_clear_error():
    h = [torch.zeros(1, 2, 4)] * 3
    with pytest.raises(ValueError, match="alpha_hid needs equal hidden sizes"):
        hidden_mse_loss(torch.ones(1, 2), h, [torch.zeros(1, 2, 8)] * 3, [0, 1], False)


def test_blend_weights_components(tensors):
    s, t, labels = tensors
    src_mask = torch.ones(2, 4)
    g = torch.Generator().manual_seed(2)
    he = [torch.randn(2, 4, 8, generator=g) for _ in range(3)]
    hd = [torch.randn(2, 5, 8, generator=g) for _ in range(3)]
    loss, parts = summarization_distiller_loss(
        s_logits=s, t_logits=t, labels=labels, alpha_ce=0.8, alpha_mlm=0.2, alpha_hid=3.0,
        temperature=2.0, src_mask=src_mask, s_enc_hidden=he, t_enc_hidden=he[::-1], e_matches=[0, 1],
        s_dec_hidden=hd, t_dec_hidden=hd[::-1], d_matches=[1, 0])
    expected = 0.8 * parts["ce_loss"] + 0.2 * parts["mlm_loss"] + 3.0 * (parts["hid_loss_enc"] + parts["hid_loss_dec"])
    assert float(loss) == pytest.approx(float(expected))
    assert float(parts["ce_loss"]) == pytest.approx(naive_kd(s, t, labels.ne(-100), 2.0), rel=1e-5)
    assert float(parts["hid_loss_enc"]) > 0 and float(parts["hid_loss_dec"]) > 0
    assert math.isfinite(float(loss))
