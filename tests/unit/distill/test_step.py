"""LossStep on tiny real models (no Ray): sft, SummarizationDistiller kd, TextBrewer kd."""

import copy

import pytest
import torch

from raydistill.config import DistillConfig
from raydistill.data.tokenize import pad_batch
from raydistill.distill.objective import kd_kl_loss
from raydistill.distill.step import LossStep
from raydistill.models.layers import decoder_inputs
from raydistill.models.scratch import new_model
from raydistill.models.student import get_layers_to_supervise, make_student

BASE = dict(data_dir="d", output_dir="o", teacher="t")


@pytest.fixture
def models(tiny_tokenizer):
    torch.manual_seed(0)
    teacher = new_model("bart", len(tiny_tokenizer), encoder_layers=6, decoder_layers=6,
                        attn_implementation="eager").eval()
    student, e_ids, d_ids = make_student(teacher, e=6, d=3)
    return teacher, student.eval(), e_ids, d_ids  # eval: no dropout, so references match


@pytest.fixture
def batch(tiny_tokenizer):
    src = tiny_tokenizer(["the cat sat on the mat .", "a dog ran ."]).input_ids
    tgt = tiny_tokenizer(["cat .", "a dog ran in the park ."]).input_ids
    return pad_batch(src, tgt, tiny_tokenizer.pad_token_id)


def own_forward_kd(student, teacher, batch, temperature: float = 2.0) -> float:
    """KL(teacher || student) at T over the target positions, each model running its own
    encoder and decoder on the batch: the reference for the kd steps below."""
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              decoder_input_ids=decoder_inputs(student, batch["labels"]))
    with torch.no_grad():
        t_logits, s_logits = teacher(**kw).logits, student(**kw).logits
    return float(kd_kl_loss(s_logits, t_logits, batch["labels"].ne(-100), temperature))


def test_sft_is_label_cross_entropy(models, batch):
    _, student, *_ = models
    step = LossStep(DistillConfig(method="sft", **BASE), [], student)
    loss, parts = step(student, batch, 0, 10)
    out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  decoder_input_ids=decoder_inputs(student, batch["labels"]))
    ref = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]),
                                            batch["labels"].reshape(-1), ignore_index=-100)
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    assert set(parts) == {"mlm_loss"}


def test_kd_uses_teacher_logits_and_copied_layer_matches(models, batch):
    teacher, student, e_ids, d_ids = models
    cfg = DistillConfig(method="kd", alpha_ce=1.0, alpha_mlm=0.0, alpha_hid=1.0, **BASE)
    # Default: each student layer emulates the teacher layer it was copied from.
    assert LossStep(cfg, [teacher], student, e_ids, d_ids).d_matches == d_ids
    step = LossStep(cfg.replace(supervise_forward=True, freeze_encoder=True), [teacher], student,
                    e_ids, d_ids)
    assert step.d_matches == get_layers_to_supervise(3, 6) and not step.different_encoder
    loss, parts = step(student, batch, 0, 10)
    ce = own_forward_kd(student, teacher, batch)
    assert float(parts["ce_loss"]) == pytest.approx(ce, rel=1e-4, abs=1e-6)  # tiny: float noise
    assert float(parts["hid_loss_enc"]) == 0.0  # frozen copied encoder: no encoder loss
    assert float(parts["hid_loss_dec"]) > 0
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher stays frozen
    assert student.get_decoder().layers[0].fc1.weight.grad is not None


def test_kd_teacher_reads_its_own_encoder_when_the_students_trains(models, batch):
    teacher, student, e_ids, d_ids = models
    student = copy.deepcopy(student)
    with torch.no_grad():  # the trainable encoder has drifted from the teacher's
        for p in student.get_encoder().parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = DistillConfig(method="kd", alpha_ce=1.0, alpha_mlm=0.0, alpha_hid=1.0, **BASE)
    step = LossStep(cfg, [teacher], student, e_ids, d_ids)
    assert step.different_encoder
    _, parts = step(student, batch, 0, 10)
    assert float(parts["ce_loss"]) == pytest.approx(own_forward_kd(student, teacher, batch),
                                                    rel=1e-4, abs=1e-6)
    assert float(parts["hid_loss_enc"]) > 0  # and the encoder is pulled back to the teacher's


def test_multi_teacher_averages_logits(models, batch):
    teacher, student, e_ids, d_ids = models
    torch.manual_seed(1)
    other = new_model("bart", teacher.config.vocab_size, encoder_layers=6, decoder_layers=6).eval()
    cfg = DistillConfig(method="kd", teachers=["a", "b"], alpha_ce=1.0, alpha_mlm=0.0,
                        data_dir="d", output_dir="o")
    step = LossStep(cfg, [teacher, other], student, e_ids, d_ids)
    _, parts = step(student, batch, 0, 10)
    dec = decoder_inputs(student, batch["labels"])
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=dec)
    with torch.no_grad():
        # The student's encoder trains (freeze_encoder is off): each teacher runs its own.
        avg = (teacher(**kw).logits + other(**kw).logits) / 2
        s_logits = student(**kw).logits
    assert float(parts["ce_loss"]) == pytest.approx(
        float(kd_kl_loss(s_logits, avg, batch["labels"].ne(-100), 2.0)), rel=1e-4)


def test_textbrewer_section_with_two_teachers_averages_their_logits(models, batch):
    """MultiTeacherDistiller: KD against the mean of the teachers' logits (it used to pass the
    averaging helper's dict as the logits and fail)."""
    from raydistill.distill.losses import kd_ce_loss

    teacher, student, *_ = models
    torch.manual_seed(1)
    other = new_model("bart", teacher.config.vocab_size, encoder_layers=6, decoder_layers=6).eval()
    cfg = DistillConfig(method="kd", teachers=["a", "b"], data_dir="d", output_dir="o",
                        distillation={"temperature": 2, "hard_label_weight": 0})
    loss, parts = LossStep(cfg, [teacher, other], student)(student, batch, 0, 10)
    dec = decoder_inputs(student, batch["labels"])
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
              decoder_input_ids=dec)
    with torch.no_grad():
        avg = (teacher(**kw).logits + other(**kw).logits) / 2
        s_logits = student(**kw).logits
    mask = batch["labels"].ne(-100)
    expected = kd_ce_loss(s_logits[mask], avg[mask], 2.0)
    assert float(parts["unweighted_kd_loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_textbrewer_section_with_projection_and_attention(models, batch):
    from raydistill.distill.textbrewer import build_projections

    teacher, student, *_ = models
    distillation = {
        "temperature": 4, "hard_label_weight": 1, "kd_loss_weight": 1,
        "intermediate_matches": [
            {"layer_T": 6, "layer_S": 6, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
             "proj": ["linear", 64, 64, {"lr": 1e-3}]},
            {"layer_T": 9, "layer_S": 7, "feature": "attention", "loss": "attention_mse", "weight": 1},
        ]}
    cfg = DistillConfig(method="kd", distillation=distillation, **BASE)
    step = LossStep(cfg, [teacher], student)
    assert step.needs_attentions
    step.projections = build_projections(step.tb_config)
    loss, parts = step(student, batch, 0, 10)
    assert torch.isfinite(loss)
    loss.backward()
    assert step.projections[0].weight.grad is not None  # the projection trains with the student
