"""method: gkd pieces without Ray: the config, the sampled targets, the on-policy draws, the
loss on tiny real models (against references computed by hand), and kd_loss choices."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from raydistill.config import DistillConfig
from raydistill.data.tokenize import pad_batch
from raydistill.distill.losses import divergence_loss, generalized_jsd_loss
from raydistill.distill.objective import kd_kl_loss, lm_loss, summarization_distiller_loss
from raydistill.distill.step import LossStep
from raydistill.errors import ConfigError
from raydistill.models.layers import decoder_inputs
from raydistill.models.scratch import new_model
from raydistill.models.student import make_student
from raydistill.train.targets import OnPolicyTargets, sample_targets

BASE = dict(data_dir="d", output_dir="o", teacher="t")


@pytest.fixture
def models(tiny_tokenizer):
    torch.manual_seed(0)
    teacher = new_model("bart", len(tiny_tokenizer), encoder_layers=2, decoder_layers=2).eval()
    _sharpen(teacher)
    student, _, _ = make_student(teacher, e=2, d=1)
    with torch.no_grad():  # a student that disagrees with its teacher: divergences well above 0
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return teacher, student.eval()


def _sharpen(model):
    """A freshly initialized model's token distributions are nearly uniform; larger output
    weights make them peaked, as a trained model's are."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(6)


@pytest.fixture
def batch(tiny_tokenizer):
    src = tiny_tokenizer(["the cat sat on the mat .", "a dog ran ."]).input_ids
    tgt = tiny_tokenizer(["cat .", "a dog ran in the park ."]).input_ids
    return pad_batch(src, tgt, tiny_tokenizer.pad_token_id)


def test_gkd_config_defaults_are_trls_and_bad_sections_are_one_line_errors():
    g = DistillConfig(method="gkd", **BASE).gkd_settings
    assert (g.lmbda, g.beta, g.temperature, g.max_new_tokens, g.seq_kd) == (0.5, 0.5, 0.9, 128, False)
    cases = [
        (dict(gkd={"lmda": 1}), "did you mean 'lmbda'"),
        (dict(gkd={"beta": 1.5}), "gkd.beta=1.5 is out of range"),
        (dict(gkd={"top_p": 0}), "gkd.top_p=0"),
        (dict(gkd={"seq_kd": "yes"}), "gkd.seq_kd='yes' has the wrong type"),
        (dict(alpha_hid=1.0), "alpha_hid=1.0 has no effect with method: gkd"),
        (dict(distillation={"is_caching_logits": True}), "need the live teacher"),
        (dict(distillation={"temperature": 4}), "drop the distillation: section"),
    ]
    for extra, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            DistillConfig(method="gkd", **BASE, **extra)
    with pytest.raises(ConfigError, match="set method: gkd"):
        DistillConfig(method="kd", gkd={"lmbda": 1.0}, **BASE)
    with pytest.raises(ConfigError, match="method: gkd needs teacher"):
        DistillConfig(method="gkd", data_dir="d", output_dir="o")
    with pytest.raises(ConfigError, match="kd_loss='js' is not allowed"):
        DistillConfig(method="kd", kd_loss="js", **BASE)


def test_sampled_targets_stop_after_the_first_eos_and_respect_max_new_tokens(models, batch):
    _, student = models
    cfg = DistillConfig(method="gkd", gkd={"max_new_tokens": 6, "temperature": 1.5}, **BASE)
    student.train()
    torch.manual_seed(1)
    labels = sample_targets(student, batch, cfg.gkd_settings)
    assert student.training  # put back as it was
    assert labels.shape[0] == 2 and labels.shape[1] <= 6
    eos = student.generation_config.eos_token_id
    for row in labels.tolist():
        real = [t for t in row if t != -100]
        assert row[:len(real)] == real  # the real tokens come first, -100 only after them
        assert eos not in real[:-1]  # nothing after an EOS counts
    torch.manual_seed(1)
    assert torch.equal(sample_targets(student, batch, cfg.gkd_settings), labels)  # seeded


def test_on_policy_draws_follow_lmbda_and_repeat_after_a_resume(models):
    teacher, _ = models
    for lmbda, want in ((0.0, 0.0), (1.0, 1.0)):
        cfg = DistillConfig(method="gkd", gkd={"lmbda": lmbda}, **BASE)
        t = OnPolicyTargets(torch.device("cpu"), cfg, [teacher], {})
        assert sum(t.on_policy(s) for s in range(50)) / 50 == want
    cfg = DistillConfig(method="gkd", gkd={"lmbda": 0.3}, seed=7, **BASE)
    a = OnPolicyTargets(torch.device("cpu"), cfg, [teacher], {})
    draws = [a.on_policy(s) for s in range(400) for _ in range(2)]  # 2 micro-batches per step
    assert 0.25 < sum(draws) / len(draws) < 0.35
    b = OnPolicyTargets(torch.device("cpu"), cfg, [teacher], {})  # a restart at step 200
    assert [b.on_policy(s) for s in range(200, 400) for _ in range(2)] == draws[400:]
    other = OnPolicyTargets(torch.device("cpu"), cfg.replace(seed=8), [teacher], {})
    assert [other.on_policy(s) for s in range(400) for _ in range(2)] != draws


def reference_gkd(student, teachers, batch, beta, T):
    """Each model on the batch with its own encoder; the teachers' mean distribution at T;
    the generalized JSD written out over the vocabulary, in float64."""
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              decoder_input_ids=decoder_inputs(student, batch["labels"]))
    with torch.no_grad():
        s = F.softmax(student(**kw).logits.double() / T, -1)
        t = torch.stack([F.softmax(m(**kw).logits.double() / T, -1) for m in teachers]).mean(0)
    mask = batch["labels"].ne(-100)
    total, n = 0.0, 0
    for b, i in mask.nonzero().tolist():
        p, q = t[b, i], s[b, i]
        m = beta * p + (1 - beta) * q
        kl_pm = float((p * (p / m).log()).sum()) if beta > 0 else 0.0
        kl_qm = float((q * (q / m).log()).sum()) if beta < 1 else 0.0
        total += beta * kl_pm + (1 - beta) * kl_qm if 0 < beta < 1 else \
            float((p * (p / q).log()).sum()) if beta == 0 else float((q * (q / p).log()).sum())
        n += 1
    return total / n


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.9, 1.0])
def test_gkd_loss_is_the_jsd_against_the_teacher_on_the_batch_targets(models, batch, beta):
    teacher, student = models
    cfg = DistillConfig(method="gkd", gkd={"beta": beta, "temperature": 2.0}, **BASE)
    step = LossStep(cfg, [teacher], student)
    loss, parts = step(student, batch, 0, 10)
    assert set(parts) == {"gkd_loss"}
    assert float(loss) == pytest.approx(reference_gkd(student, [teacher], batch, beta, 2.0),
                                        rel=1e-4)
    assert step.teacher_seconds > 0
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is frozen
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_gkd_with_two_teachers_matches_their_mean_distribution(models, batch, tiny_tokenizer):
    teacher, student = models
    torch.manual_seed(5)
    other = new_model("bart", len(tiny_tokenizer), encoder_layers=2, decoder_layers=2).eval()
    _sharpen(other)
    cfg = DistillConfig(method="gkd", gkd={"beta": 0.5, "temperature": 1.0}, teachers=["a", "b"],
                        data_dir="d", output_dir="o")
    loss, _ = LossStep(cfg, [teacher, other], student)(student, batch, 0, 10)
    assert float(loss) == pytest.approx(reference_gkd(student, [teacher, other], batch, 0.5, 1.0),
                                        rel=1e-4)


def test_gkd_loss_on_sampled_targets_counts_only_their_real_tokens(models, batch):
    teacher, student = models
    cfg = DistillConfig(method="gkd", gkd={"beta": 0.5, "max_new_tokens": 5}, **BASE)
    torch.manual_seed(2)
    sampled = dict(batch, labels=sample_targets(student, batch, cfg.gkd_settings))
    loss, _ = LossStep(cfg, [teacher], student)(student, sampled, 0, 10)
    assert float(loss) == pytest.approx(reference_gkd(student, [teacher], sampled, 0.5, 0.9),
                                        rel=1e-4)


def test_kd_loss_choice_replaces_the_kl_term_and_the_default_is_unchanged(models, batch):
    teacher, student = models
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              decoder_input_ids=decoder_inputs(student, batch["labels"]))
    with torch.no_grad():
        s, t = student(**kw).logits, teacher(**kw).logits
    labels, mask = batch["labels"], batch["labels"].ne(-100)
    common = dict(s_logits=s, t_logits=t, labels=labels, alpha_ce=0.8, alpha_mlm=0.2,
                  alpha_hid=0.0, temperature=2.0)
    loss, parts = summarization_distiller_loss(**common)
    want = 0.8 * kd_kl_loss(s, t, mask, 2.0) + 0.2 * lm_loss(s, labels)
    assert float(loss) == pytest.approx(float(want), rel=1e-6)
    for kind, extra in (("jsd", {"kd_beta": 0.1}), ("reverse_kl", {}),
                        ("skew_kl", {"kd_alpha": 0.2}), ("tvd", {})):
        loss, parts = summarization_distiller_loss(**common, kd_loss=kind, **extra)
        div = divergence_loss(kind, s, t, mask, temperature=2.0, beta=extra.get("kd_beta", 0.5),
                              alpha=extra.get("kd_alpha", 0.1))
        assert float(parts["ce_loss"]) == pytest.approx(float(div) * 4.0, rel=1e-6)
        assert float(loss) == pytest.approx(float(0.8 * div * 4 + 0.2 * lm_loss(s, labels)),
                                            rel=1e-6)
    # Through LossStep: the config keys reach the objective.
    cfg = DistillConfig(method="kd", kd_loss="jsd", kd_beta=0.9, alpha_ce=1.0, alpha_mlm=0.0,
                        temperature=1.0, **BASE)
    loss, _ = LossStep(cfg, [teacher], student)(student, batch, 0, 10)
    assert float(loss) == pytest.approx(float(generalized_jsd_loss(s, t, mask, 0.9)), rel=1e-5)
    assert math.isfinite(float(loss))


def test_tokens_per_second_counts_the_sampled_targets_of_an_on_policy_batch():
    """The loop counts a batch's tokens from the data first; when its targets are replaced by
    samples, the count follows the samples (what the student was trained on). The samples are
    counted on the device and join the count at the next read (a log line)."""
    from types import SimpleNamespace

    from raydistill.train import loop
    from raydistill.train.prefetch import host_batch
    from raydistill.train.tally import StepTally

    data = {"attention_mask": torch.ones(2, 5, dtype=torch.long),
            "labels": torch.tensor([[5, 6, 7, -100], [5, 6, -100, -100]])}  # 5 target tokens
    sampled = torch.tensor([[9, 9, 9, 9, 9, 2], [9, 2, -100, -100, -100, -100]])  # 8

    class Sampler:
        def batch(self, raw, model, step):
            return {**raw, "labels": sampled}

        def after_step(self, *a):
            pass

    class Keep(Sampler):
        def batch(self, raw, model, step):
            return raw

    w = SimpleNamespace(inner=None, state={"global_step": 0}, device=torch.device("cpu"),
                        amp_dtype=None, model=None, cfg=SimpleNamespace(gradient_accumulation_steps=1),
                        scaler=None, tokens=0, last_loss=None, last_parts=None,
                        loss_step=lambda m, b, s, t: (torch.tensor(1.0, requires_grad=True), {}),
                        run={"total_steps": 1})
    for targets, want in ((Sampler(), 8 - 5), (Keep(), 0)):
        w.targets, w.tokens, w.tally = targets, 0, StepTally(w.device)
        loop._forward_backward(w, host_batch(dict(data), pin=False))
        loop._read_step(w)
        assert w.tokens == want
