"""Each loss against TextBrewer's formula written out naively (loops over positions), float64."""

from __future__ import annotations

import math

import pytest
import torch

import raydistill.losses as public
from raydistill.distill import losses as L

B, H, T, D, V = 2, 3, 4, 5, 6
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # lengths 3 and 2
ZERO = torch.zeros(B, T, dtype=torch.long)


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _softmax(row):
    e = [math.exp(x) for x in row]
    return [x / sum(e) for x in e]


def _floor(x):  # TextBrewer: attention scores <= -1e-3 count as 0 when no mask is given
    return 0.0 if x <= -1e-3 else x


# ---- KD ---------------------------------------------------------------------------------------

def naive_kd_ce(s, t, temps):
    """-sum_v softmax(t/T) log softmax(s/T), averaged over rows; temps: one per row."""
    total = 0.0
    for row_s, row_t, tau in zip(s.tolist(), t.tolist(), temps):
        p_t = _softmax([x / tau for x in row_t])
        p_s = _softmax([x / tau for x in row_s])
        total += -sum(pt * math.log(ps) for pt, ps in zip(p_t, p_s))
    return total / len(temps)


@pytest.mark.parametrize("shape", [(7, V), (B, T, V)])
def test_kd_ce_loss_matches_formula(shape):
    s, t = _rand(*shape, seed=0), _rand(*shape, seed=1)
    rows = s.numel() // V
    assert L.kd_ce_loss(s, t, 2.0).item() == pytest.approx(naive_kd_ce(s.reshape(-1, V), t.reshape(-1, V), [2.0] * rows))
    assert L.kd_ce_loss(s, t).item() == pytest.approx(naive_kd_ce(s.reshape(-1, V), t.reshape(-1, V), [1.0] * rows))
    temps = 1.0 + torch.arange(rows, dtype=torch.float64) / 3  # per-position temperature (flsw/cwsm)
    got = L.kd_ce_loss(s, t, temps.reshape(shape[:-1])).item()
    assert got == pytest.approx(naive_kd_ce(s.reshape(-1, V), t.reshape(-1, V), temps.tolist()))


def test_kd_mse_loss_matches_formula():
    s, t = _rand(B, T, V, seed=2), _rand(B, T, V, seed=3)
    naive = sum((a / 3 - b / 3) ** 2 for a, b in zip(s.flatten().tolist(), t.flatten().tolist())) / s.numel()
    assert L.kd_mse_loss(s, t, 3).item() == pytest.approx(naive)
    temps = _rand(B, T, seed=4).abs() + 1
    naive = sum(((s[b, i, v] - t[b, i, v]) / temps[b, i]).item() ** 2
                for b in range(B) for i in range(T) for v in range(V)) / s.numel()
    assert L.kd_mse_loss(s, t, temps).item() == pytest.approx(naive)


def test_kd_losses_on_zero_positions_give_zero_with_grad():
    s = torch.zeros(0, V, requires_grad=True)
    for fn in (L.kd_ce_loss, L.kd_mse_loss):
        loss = fn(s, torch.zeros(0, V), 4)
        assert loss.item() == 0.0
        loss.backward()  # still in the graph


# ---- attention ------------------------------------------------------------------------------

def naive_att_mse(s, t, mask=None):
    if mask is None:
        diffs = [(_floor(a) - _floor(b)) ** 2 for a, b in zip(s.flatten().tolist(), t.flatten().tolist())]
        return sum(diffs) / len(diffs)
    num = count = 0.0
    for b in range(s.size(0)):
        n = int(mask[b].sum())
        count += s.size(1) * n * n
        for h in range(s.size(1)):
            for i in range(s.size(2)):
                for j in range(s.size(3)):
                    num += mask[b, i].item() * mask[b, j].item() * (s[b, h, i, j] - t[b, h, i, j]).item() ** 2
    return num / count


def naive_att_ce_rows(s, t, mask=None):
    """Average over (kept) rows of -sum_j p_T log p_S; without mask p_T is floored as TextBrewer."""
    num = count = 0.0
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in s.shape[:-1]]).tolist():
        b, i = idx[0], idx[-1]
        row_s, row_t = s[tuple(idx)].tolist(), t[tuple(idx)].tolist()
        p_t, p_s = _softmax(row_t), _softmax(row_s)
        if mask is None:
            num += -sum((0.0 if x <= -1e-3 else pt) * math.log(ps) for x, pt, ps in zip(row_t, p_t, p_s))
            count += 1
        else:
            m = mask[b].tolist()
            num += -m[i] * sum(m[j] * p_t[j] * math.log(p_s[j]) for j in range(len(row_t)))
            count += m[i]
    return num / count


@pytest.mark.parametrize("masked", [False, True])
def test_att_mse_loss(masked):
    s, t = _rand(B, H, T, T, seed=5), _rand(B, H, T, T, seed=6)
    mask = MASK if masked else None
    assert L.att_mse_loss(s, t, mask).item() == pytest.approx(naive_att_mse(s, t, mask))


@pytest.mark.parametrize("masked", [False, True])
def test_att_mse_sum_loss_sums_heads(masked):
    s, t = _rand(B, H, T, T, seed=7), _rand(B, H, T, T, seed=8)
    mask = MASK if masked else None
    naive = naive_att_mse(s.sum(1, keepdim=True), t.sum(1, keepdim=True), mask)  # one "head" = the sum
    assert L.att_mse_sum_loss(s, t, mask).item() == pytest.approx(naive)
    assert L.att_mse_sum_loss(s.sum(1), t.sum(1), mask).item() == pytest.approx(naive)  # 3-D input as is


@pytest.mark.parametrize("masked", [False, True])
def test_att_ce_loss(masked):
    s, t = _rand(B, H, T, T, seed=9), _rand(B, H, T, T, seed=10)
    mask = MASK if masked else None
    assert L.att_ce_loss(s, t, mask).item() == pytest.approx(naive_att_ce_rows(s, t, mask))


@pytest.mark.parametrize("masked", [False, True])
def test_att_ce_mean_loss_averages_heads(masked):
    s, t = _rand(B, H, T, T, seed=11), _rand(B, H, T, T, seed=12)
    mask = MASK if masked else None
    naive = naive_att_ce_rows(s.mean(1), t.mean(1), mask)
    assert L.att_ce_mean_loss(s, t, mask).item() == pytest.approx(naive)


# ---- hidden states --------------------------------------------------------------------------

@pytest.mark.parametrize("masked", [False, True])
def test_hid_mse_loss(masked):
    s, t = _rand(B, T, D, seed=13), _rand(B, T, D, seed=14)
    m = MASK if masked else torch.ones(B, T)
    num = sum(m[b, i].item() * (s[b, i, d] - t[b, i, d]).item() ** 2 for b in range(B) for i in range(T) for d in range(D))
    naive = num / (m.sum().item() * D)
    assert L.hid_mse_loss(s, t, MASK if masked else None).item() == pytest.approx(naive)


@pytest.mark.parametrize("masked", [False, True])
def test_cos_loss(masked):
    s, t = _rand(B, T, D, seed=15), _rand(B, T, D, seed=16)
    m = MASK if masked else torch.ones(B, T)
    terms = [1 - torch.dot(s[b, i], t[b, i]).item() / (s[b, i].norm().item() * t[b, i].norm().item())
             for b in range(B) for i in range(T) if m[b, i]]
    assert L.cos_loss(s, t, MASK if masked else None).item() == pytest.approx(sum(terms) / len(terms))


@pytest.mark.parametrize("dims", [3, 2])
def test_pkd_loss_uses_position_zero(dims):
    s, t = _rand(B, T, D, seed=17), _rand(B, T, D, seed=18)
    if dims == 2:
        s, t = s[:, 0], t[:, 0]
    cls_s, cls_t = (s[:, 0], t[:, 0]) if dims == 3 else (s, t)
    naive = sum(((cls_s[b] / cls_s[b].norm() - cls_t[b] / cls_t[b].norm()) ** 2).sum().item() for b in range(B)) / B
    assert L.pkd_loss(s, t, MASK).item() == pytest.approx(naive)  # mask is ignored


def naive_fsp(s0, s1, t0, t1, mask=None):
    total = 0.0
    for b in range(B):
        m = mask[b].tolist() if mask is not None else [1] * T
        length = sum(m) if mask is not None else T
        for d1 in range(D):
            for d2 in range(D):
                gs = sum(m[i] * s0[b, i, d1].item() * m[i] * s1[b, i, d2].item() for i in range(T)) / length
                gt = sum(m[i] * t0[b, i, d1].item() * m[i] * t1[b, i, d2].item() for i in range(T)) / length
                total += (gs - gt) ** 2
    return total / (B * D * D)


@pytest.mark.parametrize("masked", [False, True])
def test_fsp_loss_and_gram(masked):
    s0, s1, t0, t1 = (_rand(B, T, D, seed=k) for k in range(19, 23))
    mask = MASK if masked else None
    naive = naive_fsp(s0, s1, t0, t1, mask)
    assert L.fsp_loss([s0, s1], [t0, t1], mask).item() == pytest.approx(naive)
    assert L.MATCH_LOSS_MAP["gram"]([s0, s1], [t0, t1], mask).item() == pytest.approx(naive)


@pytest.mark.parametrize("masked", [False, True])
def test_mmd_loss_and_nst(masked):
    s0, s1 = _rand(B, T, D, seed=23), _rand(B, T, D, seed=24)
    t0, t1 = _rand(B, T, D + 2, seed=25), _rand(B, T, D + 2, seed=26)  # teacher width may differ
    m = MASK if masked else torch.ones(B, T)
    num = 0.0
    for b in range(B):
        for i in range(T):
            for j in range(T):
                gs = torch.dot(s0[b, i], s1[b, j]).item() / D
                gt = torch.dot(t0[b, i], t1[b, j]).item() / (D + 2)
                num += m[b, i].item() * m[b, j].item() * (gs - gt) ** 2
    naive = num / sum(m[b].sum().item() ** 2 for b in range(B))
    mask = MASK if masked else None
    assert L.mmd_loss([s0, s1], [t0, t1], mask).item() == pytest.approx(naive)
    assert L.MATCH_LOSS_MAP["nst"]([s0, s1], [t0, t1], mask).item() == pytest.approx(naive)


# ---- zero-token masks (the one deviation: 0 instead of TextBrewer's nan) ---------------------

@pytest.mark.parametrize("name", ["attention_mse", "attention_mse_sum", "attention_ce", "attention_ce_mean"])
def test_attention_losses_with_all_padding_mask_give_zero(name):
    s = _rand(B, H, T, T, seed=27).requires_grad_()
    loss = L.MATCH_LOSS_MAP[name](s, _rand(B, H, T, T, seed=28), ZERO)
    assert loss.item() == 0.0
    loss.backward()


@pytest.mark.parametrize("name", ["hidden_mse", "cos"])
def test_hidden_losses_with_all_padding_mask_give_zero(name):
    s = _rand(B, T, D, seed=29).requires_grad_()
    loss = L.MATCH_LOSS_MAP[name](s, _rand(B, T, D, seed=30), ZERO)
    assert loss.item() == 0.0
    loss.backward()


@pytest.mark.parametrize("name", ["fsp", "mmd"])
def test_pair_losses_with_all_padding_mask_give_zero(name):
    pair_s = [_rand(B, T, D, seed=31).requires_grad_(), _rand(B, T, D, seed=32)]
    loss = L.MATCH_LOSS_MAP[name](pair_s, [_rand(B, T, D, seed=33), _rand(B, T, D, seed=34)], ZERO)
    assert loss.item() == 0.0
    loss.backward()


def test_fsp_with_one_all_padding_sample_matches_formula_with_zero_gram():
    s0, s1, t0, t1 = (_rand(B, T, D, seed=k) for k in range(35, 39))
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    got = L.fsp_loss([s0, s1], [t0, t1], mask).item()
    # sample 1 contributes a zero Gram difference (nan in TextBrewer); sample 0 uses its length 2
    gs = s0[0, :2].T @ s1[0, :2] / 2
    gt = t0[0, :2].T @ t1[0, :2] / 2
    assert got == pytest.approx(((gs - gt) ** 2).sum().item() / (B * D * D))


# ---- maps -----------------------------------------------------------------------------------

def test_maps_match_textbrewer_presets():
    assert set(L.MATCH_LOSS_MAP) == {"attention_mse", "attention_mse_sum", "attention_ce", "attention_ce_mean",
                                     "hidden_mse", "cos", "pkd", "fsp", "gram", "nst", "mmd"}
    expected = {"attention_mse_sum": L.att_mse_sum_loss, "attention_mse": L.att_mse_loss,
                "attention_ce_mean": L.att_ce_mean_loss, "attention_ce": L.att_ce_loss, "hidden_mse": L.hid_mse_loss,
                "cos": L.cos_loss, "pkd": L.pkd_loss, "gram": L.fsp_loss, "fsp": L.fsp_loss,
                "mmd": L.mmd_loss, "nst": L.mmd_loss}
    assert L.MATCH_LOSS_MAP == expected
    assert L.KD_LOSS_MAP == {"ce": L.kd_ce_loss, "mse": L.kd_mse_loss}


@pytest.mark.parametrize("name", sorted(L.MATCH_LOSS_MAP))
def test_every_match_loss_runs_on_its_feature(name):
    if name in L.PAIR_LOSSES:
        args = ([_rand(B, T, D, seed=1), _rand(B, T, D, seed=2)], [_rand(B, T, D, seed=3), _rand(B, T, D, seed=4)])
    elif name.startswith("attention"):
        args = (_rand(B, H, T, T, seed=1), _rand(B, H, T, T, seed=2))
    else:
        args = (_rand(B, T, D, seed=1), _rand(B, T, D, seed=2))
    for mask in (None, MASK):
        value = L.MATCH_LOSS_MAP[name](*args, mask=mask)
        assert value.dim() == 0 and math.isfinite(value.item())


def test_public_module_reexports_the_same_objects():
    for name in public.__all__:
        assert getattr(public, name) is getattr(L, name)
    assert set(public.__all__) == set(L.__all__)
