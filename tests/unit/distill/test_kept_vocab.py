"""Distilling into a trimmed student: the teacher reads the batch in its own ids and its logits
are gathered to the kept ids and renormalised (float64 oracles)."""

import json

import numpy as np
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


def test_a_vocab_map_for_another_teacher_is_refused(setup):
    teacher, _, student, kept, _ = setup
    with pytest.raises(ValueError, match="trim the student from this teacher"):
        LossStep(DistillConfig(method="kd", **BASE), [teacher], student,
                 vocab_map=kept[:-1] + [VOCAB + 5])


# ---- the logit cache of a trimmed student -------------------------------------------------

def _ragged(rows, dtype):
    out = np.empty(len(rows), dtype=object)
    out[:] = [np.asarray(r, dtype=dtype) for r in rows]
    return out


def _naive_teacher(teacher, kept, batch, student):
    """The oracle, in float64: the full teacher on the batch mapped to its ids by hand; its
    logits at the kept ids and the probability it puts outside them, per position."""
    ids = torch.tensor(kept)
    with torch.no_grad():
        full = teacher(input_ids=ids[batch["input_ids"]], attention_mask=batch["attention_mask"],
                       decoder_input_ids=ids[decoder_inputs(student, batch["labels"])]).logits
    p = full.softmax(-1)
    return full[..., kept], 1 - sum(p[..., i] for i in kept)


def test_the_cache_of_a_trimmed_student_holds_the_kept_logits_and_gives_the_live_loss(setup):
    """Rows as the Parquet cache writes them (teacher_outputs_for_batch -> example_rows ->
    topk_table -> PadCollate): the teacher's logits at the kept ids (indices: the student's
    ids) and the dropped mass per position; the cached step's loss equals the live one."""
    from raydistill.data.tokenize import make_collate_fn
    from raydistill.models.teacher_cache import (example_rows, teacher_outputs_for_batch,
                                                 topk_table)

    teacher, _, student, kept, batch = setup
    n = len(kept)
    values, indices, _, dropped = teacher_outputs_for_batch([teacher], batch, n, vocab_map=kept)
    want_logits, want_dropped = _naive_teacher(teacher, kept, batch, student)
    assert indices.shape == (2, 6, n) and (indices == np.arange(n)).all()  # the student's ids
    np.testing.assert_allclose(values, (want_logits - want_logits.amax(-1, keepdim=True)).numpy(),
                               rtol=1e-6, atol=1e-6)  # stored from fp32 logits
    np.testing.assert_allclose(dropped, want_dropped.numpy(), rtol=1e-6, atol=0)

    tgt_lens = batch["labels"].ne(-100).sum(1).tolist()
    src_lens = batch["attention_mask"].sum(1).tolist()
    rows = example_rows(values, indices, {}, src_lens, tgt_lens, 2, np.float32, dropped)
    flat = {k: [r[k].reshape(-1) for r in rows] for k in rows[0]}
    table = topk_table(np.array([0, 1]), flat.pop("topk_values"), flat.pop("topk_indices"), flat)
    assert str(table.schema.field("teacher_dropped").type) == "list<item: float>"  # fp32 always
    cols = {c: _ragged([v.as_py() for v in table.column(c)],
                       np.int32 if c == "topk_indices" else np.float32)
            for c in table.column_names if c != "id"}
    raw = {"id": np.array([0, 1]), "labels": _ragged([r[:m] for r, m in zip(
        batch["labels"].tolist(), tgt_lens)], np.int64), "input_ids": _ragged(
        [r[:m] for r, m in zip(batch["input_ids"].tolist(), src_lens)], np.int64)}
    cached = make_collate_fn(1)({**raw, **cols})
    assert cached["teacher_dropped"].shape == (2, 6)
    torch.testing.assert_close(cached["teacher_dropped"][0], want_dropped[0].float(), rtol=1e-6,
                               atol=0)
    assert float(cached["teacher_dropped"][1, 4:].abs().sum()) == 0.0  # padded positions

    live_cfg = DistillConfig(method="kd", distillation=TB, **BASE)
    cache_cfg = live_cfg.replace(distillation={**TB, "is_caching_logits": True})
    live_batch = {"input_ids": cached["input_ids"], "attention_mask": cached["attention_mask"],
                  "labels": cached["labels"]}
    want, want_parts = LossStep(live_cfg, [teacher], student, vocab_map=kept)(
        student, live_batch, 3, 10)
    got, parts = LossStep(cache_cfg, [], student, vocab_map=kept)(
        student, {k: v for k, v in cached.items() if k != "id"}, 3, 10)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)  # fp32 storage of exact logits
    torch.testing.assert_close(parts["teacher_dropped_mass"].double(),
                               want_parts["teacher_dropped_mass"].double(), rtol=1e-6, atol=0)


def test_the_memory_cache_of_a_trimmed_student_keeps_the_dropped_mass(setup):
    """logit_cache: memory: the first epoch records the kept logits and the dropped mass; a
    later epoch's step from the cache equals the live step, dropped mass included."""
    from raydistill.train.memory_cache import MemoryLogitCache

    teacher, _, student, kept, batch = setup
    cfg = DistillConfig(method="kd", distillation={**TB, "is_caching_logits": True},
                        logit_cache="memory", **BASE)
    step = LossStep(cfg, [teacher], student, vocab_map=kept)
    live, live_parts = step(student, batch, 3, 10)
    logits, hidden = step.last_teacher
    assert logits.shape[-1] == len(kept)
    _, want_dropped = _naive_teacher(teacher, kept, batch, student)
    torch.testing.assert_close(step.last_dropped.double(), want_dropped, rtol=1e-6, atol=0)
    memory = MemoryLogitCache(len(kept), "float32")
    memory.record([7, 8], logits, hidden, batch["attention_mask"], batch["labels"].ne(-100),
                  dropped=step.last_dropped)
    kept_cols = memory.lookup([7, 8])
    assert set(kept_cols) == {"topk_values", "teacher_dropped"}  # k = V: no indices
    got, parts = step(student, {**batch, **kept_cols}, 3, 10)
    torch.testing.assert_close(got, live, rtol=1e-6, atol=0)
    torch.testing.assert_close(parts["teacher_dropped_mass"], live_parts["teacher_dropped_mass"],
                               rtol=1e-6, atol=0)


def test_a_cache_for_another_vocab_map_or_none_is_never_reused(tmp_path, tiny_bart_dir,
                                                                tiny_data_dir):
    """The key holds the map's fingerprint: a cache built for one map (or for an untrimmed
    student) is not valid for another."""
    from raydistill.data.fingerprint import digest
    from raydistill.models.teacher_cache import build_cache, cache_key, is_valid

    def key(vocab_map):
        return cache_key([str(tiny_bart_dir)], str(tiny_bart_dir), str(tiny_data_dir),
                         max_source_length=16, max_target_length=8, vocab_map=vocab_map)

    kept = list(range(0, 40, 2))
    built = tmp_path / "cache"
    (built / "parts").mkdir(parents=True)
    (built / "manifest.json").write_text(json.dumps({"key_digest": digest(key(kept)),
                                                     "top_k": 8}))
    assert is_valid(built, key(kept))
    assert is_valid(built, key(list(kept)))  # the same map, another list
    for other in (None, kept[:-1], kept[:-1] + [41], [kept[1], kept[0]] + kept[2:]):
        assert not is_valid(built, key(other)), other
    assert "vocab_map" not in key(None)  # untrimmed students keep their old keys
    with pytest.raises(ValueError, match="vocab_map"):  # a map the key does not name
        build_cache(None, tmp_path / "other", key(None), teachers=[], pad_token_id=1,
                    vocab_map=kept)


# ---- gkd.seq_kd with a trimmed student ----------------------------------------------------

@pytest.mark.parametrize("sampling", [dict(), dict(top_k=5, top_p=0.9, temperature=0.7)],
                         ids=["plain", "top-k-p"])
def test_seq_kd_samples_equal_a_teacher_restricted_by_hand(setup, sampling):
    """The oracle: the full teacher with -inf added to its output bias outside the kept ids
    (its logits restricted by hand), sampled with the same seed from the sources in its ids,
    and the sample mapped to the student's ids by a dict."""
    import copy

    from raydistill.config import GKDSettings
    from raydistill.train.targets import make_targets, sample_targets, sample_teacher_targets

    teacher, _, student, kept, batch = setup
    g = GKDSettings(seq_kd=True, max_new_tokens=10, **sampling)
    src = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    torch.manual_seed(11)
    got = sample_teacher_targets(teacher, src, g, KeptVocab(kept))

    restricted = copy.deepcopy(teacher)
    outside = torch.ones(VOCAB, dtype=torch.bool)
    outside[kept] = False
    with torch.no_grad():
        restricted.final_logits_bias[:, outside] = float("-inf")
    old_to_new = {o: i for i, o in enumerate(kept)}
    torch.manual_seed(11)
    t_src = {**src, "input_ids": torch.tensor(kept)[src["input_ids"]]}
    sample = sample_targets(restricted, t_src, g)
    want = [[-100 if t == -100 else old_to_new[t] for t in row] for row in sample.tolist()]
    assert got.tolist() == want
    assert got.size(1) > 3 and bool(got.ge(0).any())
    torch.manual_seed(11)  # unrestricted, the teacher would say ids the student lacks
    free = sample_targets(teacher, t_src, g)
    assert any(t not in old_to_new for t in free.flatten().tolist() if t != -100)

    cfg = DistillConfig(method="gkd", gkd={"seq_kd": True}, **BASE)
    step = LossStep(cfg, [teacher], student, vocab_map=kept)
    targets = make_targets(cfg, step.needs, step, torch.device("cpu"), {})
    assert targets.kept is step.kept
    loss, parts = step(student, {**src, "labels": got}, 0, 1)  # the loss reads them as labels
    assert torch.isfinite(loss) and "teacher_dropped_mass" in parts
