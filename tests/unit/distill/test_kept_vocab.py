"""Distilling into a trimmed student: the teacher reads the batch in its own ids and its logits
are gathered to the kept ids and renormalised (float64 oracles)."""

import pytest
import torch

from raydistill.config import DistillConfig
from raydistill.distill import chunked
from raydistill.distill.kept_vocab import KeptVocab
from raydistill.distill.step import LossStep
from raydistill.models.layers import decoder_inputs
from raydistill.models.scratch import new_model
from raydistill.models.student import make_student
from raydistill.models.vocab import config_token_ids, trim_model

BASE = dict(data_dir="d", output_dir="o", teacher="t")
VOCAB = 300
TB = {"temperature": 2.0, "kd_loss_type": "ce", "kd_loss_weight": 1.0, "hard_label_weight": 0.5}


@pytest.fixture(scope="module")
def setup():
    """(teacher, the same teacher trimmed, a trimmed 1-1 student, kept ids, a batch in the
    student's ids)."""
    torch.manual_seed(0)
    teacher = new_model("bart", VOCAB, encoder_layers=2, decoder_layers=2).double().eval()
    kept = sorted(set(range(0, VOCAB, 4)) | config_token_ids(teacher))
    student = trim_model(make_student(teacher, e=1, d=1)[0], kept).eval()
    g = torch.Generator().manual_seed(1)
    n = len(kept)
    labels = torch.randint(3, n, (2, 6), generator=g)
    labels[1, 4:] = -100
    batch = {"input_ids": torch.randint(3, n, (2, 7), generator=g),
             "attention_mask": torch.ones(2, 7, dtype=torch.long), "labels": labels}
    batch["attention_mask"][0, 5:] = 0
    return teacher, trim_model(teacher, kept).eval(), student, kept, batch


def test_gather_renormalises_and_measures_the_dropped_mass():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 10, generator=g, dtype=torch.float64)
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    kept = [0, 2, 3, 7]
    out, dropped = KeptVocab(kept).gather(logits, labels)
    p = logits.softmax(-1)
    renorm = p[..., kept] / p[..., kept].sum(-1, keepdim=True)
    torch.testing.assert_close(out.softmax(-1), renorm, rtol=0, atol=1e-15)
    mask = labels.ne(-100)
    want = (1 - p[..., kept].sum(-1))[mask].mean()
    torch.testing.assert_close(dropped.double(), want, rtol=1e-6, atol=0)
    ids = torch.tensor([[0, 3, 1]])
    assert KeptVocab(kept).teacher_ids(ids).tolist() == [[0, 7, 2]]


@pytest.mark.parametrize("objective", [
    dict(method="kd", alpha_ce=0.8, alpha_mlm=0.2, alpha_hid=1.0),
    dict(method="kd", kd_loss="jsd"),
    dict(method="kd", distillation=TB),
    dict(method="gkd", gkd={"beta": 0.5, "temperature": 1.5}),
], ids=["kd", "kd-jsd", "textbrewer", "gkd"])
@pytest.mark.parametrize("chunk", [False, True], ids=["full", "chunked"])
def test_losses_equal_the_teacher_on_the_kept_ids(setup, objective, chunk, monkeypatch):
    """The oracle: the same step with a teacher that has only the kept ids (trim_model of it,
    whose logits are the full teacher's at those ids) and reads the student's ids directly."""
    teacher, teacher_kept, student, kept, batch = setup
    if chunk:  # the chunked KD losses, from this vocabulary up
        monkeypatch.setattr(chunked, "CHUNKED_MIN_VOCAB", 2)
    cfg = DistillConfig(**objective, **BASE)
    got, parts = LossStep(cfg, [teacher], student, vocab_map=kept)(student, batch, 3, 10)
    want, ref_parts = LossStep(cfg, [teacher_kept], student)(student, batch, 3, 10)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert set(parts) == set(ref_parts) | {"teacher_dropped_mass"}
    # The dropped mass: what the full teacher puts outside the kept ids, on the real tokens.
    with torch.no_grad():
        ids = torch.tensor(kept)
        full = teacher(input_ids=ids[batch["input_ids"]], attention_mask=batch["attention_mask"],
                       decoder_input_ids=ids[decoder_inputs(student, batch["labels"])]).logits
    p_out = 1 - full.softmax(-1)[..., kept].sum(-1)
    want_dropped = p_out[batch["labels"].ne(-100)].mean()
    torch.testing.assert_close(parts["teacher_dropped_mass"].double(), want_dropped,
                               rtol=1e-6, atol=0)
    assert 0.5 < float(want_dropped) < 0.9  # a random teacher: ~3/4 of its mass is dropped


def test_untrimmed_runs_report_no_dropped_mass(setup):
    teacher, *_ = setup
    student = make_student(teacher, e=1, d=1)[0].eval()
    batch = {"input_ids": torch.tensor([[5, 6, 2]]), "attention_mask": torch.ones(1, 3),
             "labels": torch.tensor([[7, 8, 2]])}
    _, parts = LossStep(DistillConfig(method="kd", **BASE), [teacher], student)(student, batch, 0, 1)
    assert "teacher_dropped_mass" not in parts


def test_what_a_trimmed_student_cannot_use_yet_is_refused(setup):
    teacher, _, student, kept, _ = setup
    cached = DistillConfig(method="kd", distillation={**TB, "is_caching_logits": True}, **BASE)
    for teachers in ([teacher], []):  # [] : the Parquet cache, no live teacher
        with pytest.raises(ValueError, match="cached teacher logits"):
            LossStep(cached, teachers, student, vocab_map=kept)
    seq_kd = DistillConfig(method="gkd", gkd={"seq_kd": True}, **BASE)
    with pytest.raises(ValueError, match="seq_kd"):
        LossStep(seq_kd, [teacher], student, vocab_map=kept)
    with pytest.raises(ValueError, match="trim the student from this teacher"):
        LossStep(DistillConfig(method="kd", **BASE), [teacher], student,
                 vocab_map=kept[:-1] + [VOCAB + 5])
