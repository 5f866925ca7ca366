"""textbrewer_loss against a hand computation of GeneralDistiller's total loss on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from raydistill.distill.textbrewer import (
    DistillationConfig,
    average_teacher_logits,
    build_projections,
    probability_shift,
    select_logits_with_mask,
    textbrewer_loss,
)
from raydistill.errors import ConfigError

B, TGT, V, SRC, HEADS, D_S, D_T = 2, 3, 4, 4, 2, 3, 5
LOGITS_MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])  # KD positions (0,0), (0,1), (1,0)
SRC_MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
TGT_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _results(seed: int, dim: int, layers: int) -> dict:
    """A seq2seq adaptor dict: `layers` encoder hidden states (SRC) then 2 decoder ones (TGT)."""
    hidden = [_rand(B, SRC, dim, seed=seed + i) for i in range(layers)] + \
             [_rand(B, TGT, dim, seed=seed + 50 + i) for i in range(2)]
    return {
        "logits": _rand(B, TGT, V, seed=seed + 100),
        "logits_mask": LOGITS_MASK,
        "hidden": hidden,
        "hidden_mask": [SRC_MASK] * layers + [TGT_MASK] * 2,
        "attention": [_rand(B, HEADS, SRC, SRC, seed=seed + 200 + i) for i in range(layers)],
        "attention_mask": [SRC_MASK] * layers,
        "labels": torch.tensor([[2, 0, -100], [3, -100, -100]]),
    }


STUDENT, TEACHER = _results(0, D_S, 2), _results(1000, D_T, 3)
STUDENT["losses"] = [torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64)]

CONFIG = DistillationConfig.from_dict({
    "temperature": 2,
    "kd_loss_weight": 1, "kd_loss_weight_scheduler": "linear_decay",
    "hard_label_weight": 0.5, "hard_label_weight_scheduler": "linear_growth",
    "intermediate_matches": [
        {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 0.3,
         "proj": ["linear", D_S, D_T, {"lr": 1e-3}]},
        {"layer_T": 2, "layer_S": 1, "feature": "attention", "loss": "attention_mse", "weight": 2},
    ],
})


# ---- naive pieces (TextBrewer's formulas, position by position) -----------------------------

def kd_ce_by_hand(rows_s, rows_t, temps):
    total = 0.0
    for s, t, tau in zip(rows_s, rows_t, temps):
        p_t = torch.softmax(t / tau, -1)
        total += -(p_t * torch.log_softmax(s / tau, -1)).sum().item()
    return total / len(rows_s)


def kept_rows(logits, mask):
    return [logits[b, i] for b in range(logits.size(0)) for i in range(logits.size(1)) if mask[b, i]]


def masked_hidden_mse(s, t, mask):
    num = sum(((s[b, i] - t[b, i]) ** 2).sum().item() for b in range(B) for i in range(s.size(1)) if mask[b, i])
    return num / (mask.sum().item() * s.size(-1))


def masked_att_mse(s, t, mask):
    num = sum(mask[b, i].item() * mask[b, j].item() * ((s[b, :, i, j] - t[b, :, i, j]) ** 2).sum().item()
              for b in range(B) for i in range(SRC) for j in range(SRC))
    return num / sum(HEADS * mask[b].sum().item() ** 2 for b in range(B))


def _projections(config=CONFIG):
    torch.manual_seed(0)
    return build_projections(config).double()


# ---- the total --------------------------------------------------------------------------------

@pytest.mark.parametrize("step, w_kd, w_hl", [(0, 1.0, 0.5), (3, 0.7, 0.3), (10, 0.0, 1.0)])
def test_total_matches_hand_computation(step, w_kd, w_hl):
    projections = _projections()
    loss, logs = textbrewer_loss(CONFIG, STUDENT, TEACHER, step=step, total_steps=10, projections=projections)

    kd = kd_ce_by_hand(kept_rows(STUDENT["logits"], LOGITS_MASK), kept_rows(TEACHER["logits"], LOGITS_MASK), [2] * 3)
    lin = projections[0]
    projected = STUDENT["hidden"][1] @ lin.weight.T + lin.bias  # Linear(D_S -> D_T)
    hid = masked_hidden_mse(projected, TEACHER["hidden"][2], SRC_MASK)
    att = masked_att_mse(STUDENT["attention"][1], TEACHER["attention"][2], SRC_MASK)
    hard = 0.7 + 0.2
    expected = w_kd * kd + 0.3 * hid + 2 * att + w_hl * hard

    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert logs == pytest.approx({
        "kd_loss_weight": w_kd, "hard_label_weight": w_hl, "temperature": 2.0,
        "unweighted_kd_loss": kd, "unweighted_hidden_hidden_mse_1_2": hid,
        "unweighted_attention_attention_mse_1_2": att, "unweighted_hard_label_loss": hard,
    })


def test_masked_out_positions_do_not_change_the_loss():
    noisy_S, noisy_T = dict(STUDENT), dict(TEACHER)
    noisy_S["logits"] = STUDENT["logits"].clone()
    noisy_S["logits"][~LOGITS_MASK.bool()] = 100.0
    noisy_S["hidden"] = list(STUDENT["hidden"])
    noisy_S["hidden"][1] = STUDENT["hidden"][1].clone()
    noisy_S["hidden"][1][~SRC_MASK.bool()] = -50.0
    noisy_T["attention"] = list(TEACHER["attention"])
    noisy_T["attention"][2] = TEACHER["attention"][2].clone()
    noisy_T["attention"][2][:, :, :, 3] = 9.0  # column of a pad token in both samples
    kwargs = dict(step=3, total_steps=10, projections=_projections())
    assert textbrewer_loss(CONFIG, noisy_S, noisy_T, **kwargs)[0].item() == pytest.approx(
        textbrewer_loss(CONFIG, STUDENT, TEACHER, **kwargs)[0].item(), rel=1e-12)


def test_labels_mask_stands_in_for_missing_logits_mask():
    config = DistillationConfig()
    plain_S = {"logits": STUDENT["logits"]}
    plain_T = {"logits": TEACHER["logits"]}
    with_mask = textbrewer_loss(config, STUDENT, TEACHER, step=0, total_steps=1)[0]
    via_arg = textbrewer_loss(config, plain_S, plain_T, step=0, total_steps=1, labels_mask=LOGITS_MASK)[0]
    cached_teacher = textbrewer_loss(config, STUDENT, plain_T, step=0, total_steps=1)[0]  # uses the student's mask
    assert via_arg.item() == pytest.approx(with_mask.item(), rel=1e-12)
    assert cached_teacher.item() == pytest.approx(with_mask.item(), rel=1e-12)


def test_gradients_reach_student_and_projection():
    student = {k: (list(v) if isinstance(v, list) else v) for k, v in STUDENT.items()}
    student["logits"] = STUDENT["logits"].clone().requires_grad_()
    student["hidden"][1] = STUDENT["hidden"][1].clone().requires_grad_()
    projections = _projections()
    loss, _ = textbrewer_loss(CONFIG, student, TEACHER, step=3, total_steps=10, projections=projections)
    loss.backward()
    assert student["logits"].grad.abs().sum() > 0 and student["hidden"][1].grad.abs().sum() > 0
    assert projections[0].weight.grad.abs().sum() > 0
    assert student["logits"].grad[~LOGITS_MASK.bool()].abs().sum() == 0


def test_decoder_layers_use_their_own_mask():
    # hidden[-1] is a decoder state (length TGT): its aligned mask is TGT_MASK, not the encoder's.
    config = DistillationConfig(kd_loss_weight=0, intermediate_matches=[
        {"layer_T": -1, "layer_S": -1, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
         "proj": ["linear", D_S, D_T]}])
    projections = _projections(config)
    loss, _ = textbrewer_loss(config, STUDENT, TEACHER, step=0, total_steps=1, projections=projections)
    lin = projections[0]
    expected = masked_hidden_mse(STUDENT["hidden"][-1] @ lin.weight.T + lin.bias, TEACHER["hidden"][-1], TGT_MASK)
    assert loss.item() == pytest.approx(expected, rel=1e-12)  # hard_label_weight defaults to 0


def test_inputs_mask_is_used_when_no_per_layer_masks():
    student = {k: v for k, v in STUDENT.items() if k not in ("hidden_mask", "attention_mask", "losses", "logits")}
    student["inputs_mask"] = SRC_MASK
    config = DistillationConfig(kd_loss_weight=0, intermediate_matches=[
        {"layer_T": 0, "layer_S": 0, "feature": "attention", "loss": "attention_mse", "weight": 1}])
    loss, _ = textbrewer_loss(config, student, TEACHER, step=0, total_steps=1)
    assert loss.item() == pytest.approx(masked_att_mse(STUDENT["attention"][0], TEACHER["attention"][0], SRC_MASK))


def test_pair_loss_uses_two_layers_and_the_first_student_layers_mask():
    config = DistillationConfig(kd_loss_weight=0, intermediate_matches=[
        {"layer_T": [0, 2], "layer_S": [0, 1], "feature": "hidden", "loss": "nst", "weight": 1}])
    loss, logs = textbrewer_loss(config, STUDENT, TEACHER, step=0, total_steps=1)
    s0, s1, t0, t1 = STUDENT["hidden"][0], STUDENT["hidden"][1], TEACHER["hidden"][0], TEACHER["hidden"][2]
    num = 0.0
    for b in range(B):
        for i in range(SRC):
            for j in range(SRC):
                diff = torch.dot(s0[b, i], s1[b, j]).item() / D_S - torch.dot(t0[b, i], t1[b, j]).item() / D_T
                num += SRC_MASK[b, i].item() * SRC_MASK[b, j].item() * diff ** 2
    expected = num / sum(SRC_MASK[b].sum().item() ** 2 for b in range(B))
    assert loss.item() == pytest.approx(expected)
    assert "unweighted_hidden_nst_0-1_0-2" in logs


# ---- temperature, probability shift, several teachers -----------------------------------------

def test_flsw_temperature_is_computed_over_kd_positions_only():
    config = DistillationConfig(temperature=3, temperature_scheduler=["flsw", 1.5, 2])
    loss, logs = textbrewer_loss(config, {"logits": STUDENT["logits"], "logits_mask": LOGITS_MASK},
                                 {"logits": TEACHER["logits"], "logits_mask": LOGITS_MASK}, step=0, total_steps=1)
    rows_s, rows_t = kept_rows(STUDENT["logits"], LOGITS_MASK), kept_rows(TEACHER["logits"], LOGITS_MASK)
    w = []
    for s, t in zip(rows_s, rows_t):
        cos = torch.dot(s / (s.norm() + 1e-4), t / (t.norm() + 1e-4)).item()
        w.append((1 - cos) ** 2)
    temps = [3 + (sum(w) / len(w) - wi) * 1.5 for wi in w]
    assert loss.item() == pytest.approx(kd_ce_by_hand(rows_s, rows_t, temps))
    assert logs["temperature"] == pytest.approx(sum(temps) / len(temps))


def swap_by_hand(logits, labels):
    out = logits.clone()
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in logits.shape[:-1]]).reshape(-1, logits.dim() - 1).tolist():
        row, label = out[tuple(idx)], labels[tuple(idx)].item()
        if label < 0:
            continue
        top = int(torch.argmax(logits[tuple(idx)]))
        row[top], row[label] = logits[tuple(idx)][label], logits[tuple(idx)][top]
    return out


def test_probability_shift_swaps_label_and_max_logit():
    logits = _rand(B, TGT, V, seed=7)
    shifted = probability_shift(logits, STUDENT["labels"])
    assert torch.equal(shifted, swap_by_hand(logits, STUDENT["labels"]))
    assert not torch.equal(shifted, logits)  # pure: the input is left alone, the result differs
    flat = logits[LOGITS_MASK.bool()]
    assert torch.equal(probability_shift(flat, torch.tensor([2, 0, 3])), swap_by_hand(flat, torch.tensor([2, 0, 3])))
    labels = torch.tensor([[2, 0, -100], [3, -100, -100]])
    assert torch.equal(probability_shift(logits, labels)[0, 2], logits[0, 2])  # ignored label: row unchanged


def test_objective_with_probability_shift():
    config = DistillationConfig(probability_shift=True)
    results_S = {k: STUDENT[k] for k in ("logits", "logits_mask", "labels")}
    results_T = {k: TEACHER[k] for k in ("logits", "logits_mask")}
    loss, _ = textbrewer_loss(config, results_S, results_T, step=0, total_steps=1)
    shifted_T = swap_by_hand(TEACHER["logits"], STUDENT["labels"])
    expected = kd_ce_by_hand(kept_rows(STUDENT["logits"], LOGITS_MASK), kept_rows(shifted_T, LOGITS_MASK), [4] * 3)
    assert loss.item() == pytest.approx(expected)
    with pytest.raises(ConfigError, match="needs 'labels'"):
        textbrewer_loss(config, {"logits": STUDENT["logits"]}, results_T, step=0, total_steps=1)


def test_several_teachers_are_averaged():
    teachers = [{"logits": _rand(B, TGT, V, seed=s), "logits_mask": LOGITS_MASK} for s in (11, 12, 13)]
    mean = (teachers[0]["logits"] + teachers[1]["logits"] + teachers[2]["logits"]) / 3
    averaged = average_teacher_logits(teachers)
    assert torch.allclose(averaged["logits"], mean) and averaged["logits_mask"] is LOGITS_MASK
    config = DistillationConfig(kd_loss_type="mse", hard_label_weight=1)
    student = {"logits": STUDENT["logits"], "logits_mask": LOGITS_MASK, "losses": STUDENT["losses"]}
    loss, _ = textbrewer_loss(config, student, teachers, step=0, total_steps=1)
    rows_s, rows_t = kept_rows(STUDENT["logits"], LOGITS_MASK), kept_rows(mean, LOGITS_MASK)
    mse = sum(((s / 4 - t / 4) ** 2).sum().item() for s, t in zip(rows_s, rows_t)) / (3 * V)
    assert loss.item() == pytest.approx(mse + 0.9)
    with pytest.raises(ConfigError, match="single teacher"):
        textbrewer_loss(CONFIG, STUDENT, [TEACHER, TEACHER], step=0, total_steps=1, projections=_projections())


# ---- edge cases and errors --------------------------------------------------------------------

def test_all_padding_batch_gives_a_finite_loss():
    zero_S = dict(STUDENT, logits_mask=torch.zeros(B, TGT, dtype=torch.long),
                  hidden_mask=[torch.zeros(B, SRC, dtype=torch.long)] * 2 + [torch.zeros(B, TGT, dtype=torch.long)] * 2,
                  attention_mask=[torch.zeros(B, SRC, dtype=torch.long)] * 2)
    zero_S["logits"] = STUDENT["logits"].clone().requires_grad_()
    zero_T = dict(TEACHER, logits_mask=torch.zeros(B, TGT, dtype=torch.long))
    loss, logs = textbrewer_loss(CONFIG, zero_S, zero_T, step=3, total_steps=10, projections=_projections())
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(0.3 * 0.9)  # only the hard-label term
    loss.backward()


def test_select_logits_with_mask():
    logits = _rand(B, TGT, V, seed=3)
    selected = select_logits_with_mask(logits, LOGITS_MASK)
    assert selected.shape == (3, V)
    assert torch.equal(selected, torch.stack(kept_rows(logits, LOGITS_MASK)))
    assert torch.equal(select_logits_with_mask(logits[:, 0], LOGITS_MASK[:, 0]), logits[:, 0])  # 2-D: as is


@pytest.mark.parametrize("change, expected", [
    (lambda s, t: s.pop("hidden"), "needs 'hidden' from the student adaptor"),
    (lambda s, t: t.__setitem__("attention", t["attention"][:1]), "layer_T=2 is out of range"),
])
def test_missing_features_are_explained(change, expected):
    student, teacher = dict(STUDENT), dict(TEACHER)
    change(student, teacher)
    with pytest.raises(ConfigError, match=expected):
        textbrewer_loss(CONFIG, student, teacher, step=0, total_steps=1, projections=_projections())


def test_projection_errors_are_explained():
    with pytest.raises(ConfigError, match=r"pass projections=build_projections\(config\)"):
        textbrewer_loss(CONFIG, STUDENT, TEACHER, step=0, total_steps=1)
    with pytest.raises(ConfigError, match="projections has 1 entries"):
        textbrewer_loss(CONFIG, STUDENT, TEACHER, step=0, total_steps=1, projections=_projections()[:1])


def test_nothing_to_optimize_is_an_error():
    with pytest.raises(ConfigError, match="nothing to optimize"):
        textbrewer_loss(DistillationConfig(), {"hidden": []}, {"hidden": []}, step=0, total_steps=1)
