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


# ---- FSMT: a source map and a target map ---------------------------------------------------

@pytest.fixture(scope="module")
def fsmt_setup():
    """(FSMT teacher with 300 source and 260 target ids, the same teacher trimmed, a trimmed 1-1
    student, source map, target map, a batch in the student's ids)."""
    from transformers import FSMTConfig, FSMTForConditionalGeneration

    torch.manual_seed(0)
    cfg = FSMTConfig(langs=["en", "de"], src_vocab_size=300, tgt_vocab_size=260, d_model=32,
                     encoder_layers=2, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                     encoder_attention_heads=4, decoder_attention_heads=4,
                     max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                     decoder_start_token_id=2, forced_eos_token_id=2, tie_word_embeddings=False)
    teacher = FSMTForConditionalGeneration._from_config(cfg).double().eval()
    src_map = sorted(set(range(4)) | set(range(0, 300, 3)))
    tgt_map = sorted(set(range(4)) | set(range(0, 260, 5)))
    student = trim_model(make_student(teacher, e=1, d=1)[0], tgt_map, src_map).eval()
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(4, len(tgt_map), (2, 6), generator=g)
    labels[1, 4:] = -100
    batch = {"input_ids": torch.randint(4, len(src_map), (2, 7), generator=g),
             "attention_mask": torch.ones(2, 7, dtype=torch.long), "labels": labels}
    batch["input_ids"][0, 5:] = 1  # padded with the pad id (1 on both sides)
    batch["attention_mask"][0, 5:] = 0
    return (teacher, trim_model(teacher, tgt_map, src_map).eval(), student, src_map, tgt_map,
            batch)


@pytest.fixture
def fsmt64(monkeypatch):
    """FSMT's causal mask in float64: transformers fills it through float32
    (``fill_with_neg_inf``, for fp16), which overflows with float64's minimum."""
    from transformers.models.fsmt import modeling_fsmt

    monkeypatch.setattr(modeling_fsmt, "fill_with_neg_inf",
                        lambda t: t.fill_(torch.finfo(t.dtype).min))


def _naive_fsmt_teacher(teacher, src_map, tgt_map, batch, student):
    """The full FSMT teacher on the batch mapped by hand: inputs through the source map, decoder
    inputs through the target map; its logits at the kept target ids and the dropped mass."""
    with torch.no_grad():
        full = teacher(input_ids=torch.tensor(src_map)[batch["input_ids"]],
                       attention_mask=batch["attention_mask"],
                       decoder_input_ids=torch.tensor(tgt_map)[
                           decoder_inputs(student, batch["labels"])],
                       use_cache=False).logits  # FSMT's causal mask only without the cache
    return full[..., tgt_map], 1 - full.softmax(-1)[..., tgt_map].sum(-1)


@pytest.mark.parametrize("objective", [
    dict(method="kd", alpha_ce=0.8, alpha_mlm=0.2, alpha_hid=1.0),
    dict(method="kd", distillation=TB),
    dict(method="gkd", gkd={"beta": 0.5, "temperature": 1.5}),
], ids=["kd", "textbrewer", "gkd"])
def test_fsmt_losses_equal_the_teacher_on_the_kept_ids(fsmt_setup, fsmt64, objective):
    """As for BART above: the oracle is the teacher trimmed on both sides, reading the student's
    ids directly; the dropped mass, the full teacher reading the batch mapped by hand (sources
    through the source map: the target map there would give another teacher input)."""
    teacher, teacher_kept, student, src_map, tgt_map, batch = fsmt_setup
    cfg = DistillConfig(**objective, **BASE)
    got, parts = LossStep(cfg, [teacher], student, vocab_map=tgt_map,
                          source_vocab_map=src_map)(student, batch, 3, 10)
    want, _ = LossStep(cfg, [teacher_kept], student)(student, batch, 3, 10)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    _, dropped = _naive_fsmt_teacher(teacher, src_map, tgt_map, batch, student)
    torch.testing.assert_close(parts["teacher_dropped_mass"].double(),
                               dropped[batch["labels"].ne(-100)].mean(), rtol=1e-6, atol=0)


def test_fsmt_kd_loss_equals_the_full_logits_gathered_and_renormalised(fsmt_setup, fsmt64):
    """kd's soft loss written out: KL(teacher || student) at temperature T, the teacher's
    distribution the full logits at the kept target ids, renormalised (a softmax over them)."""
    teacher, _, student, src_map, tgt_map, batch = fsmt_setup
    T = 2.0
    cfg = DistillConfig(method="kd", alpha_ce=1.0, alpha_mlm=0.0, alpha_hid=0.0, temperature=T,
                        **BASE)
    got, _ = LossStep(cfg, [teacher], student, vocab_map=tgt_map,
                      source_vocab_map=src_map)(student, batch, 3, 10)
    t_logits, _ = _naive_fsmt_teacher(teacher, src_map, tgt_map, batch, student)
    with torch.no_grad():
        s_logits = student(**{k: batch[k] for k in ("input_ids", "attention_mask")},
                           decoder_input_ids=decoder_inputs(student, batch["labels"]),
                           use_cache=False).logits
    mask = batch["labels"].ne(-100)
    p_t = (t_logits[mask] / T).softmax(-1)
    kl = (p_t * (p_t.log() - (s_logits[mask] / T).log_softmax(-1))).sum(-1).mean() * T ** 2
    torch.testing.assert_close(got.double(), kl, rtol=1e-10, atol=1e-12)


def test_fsmt_cache_rows_and_seq_kd_read_the_sources_through_the_source_map(fsmt_setup, fsmt64):
    from raydistill.models.teacher_cache import teacher_outputs_for_batch
    from raydistill.config import GKDSettings
    from raydistill.train.targets import sample_targets, sample_teacher_targets

    teacher, _, student, src_map, tgt_map, batch = fsmt_setup
    n = len(tgt_map)
    values, indices, _, dropped = teacher_outputs_for_batch(
        [teacher], batch, n, vocab_map=tgt_map, source_vocab_map=src_map)
    want_logits, want_dropped = _naive_fsmt_teacher(teacher, src_map, tgt_map, batch, student)
    assert (indices == np.arange(n)).all()
    np.testing.assert_allclose(values, (want_logits - want_logits.amax(-1, keepdim=True)).numpy(),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dropped, want_dropped.numpy(), rtol=1e-6, atol=0)

    g = GKDSettings(seq_kd=True, max_new_tokens=8)
    src = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    torch.manual_seed(11)
    got = sample_teacher_targets(teacher, src, g, KeptVocab(tgt_map, src_map))
    # the oracle: the full teacher with -inf outside the kept ids (a hook on its output layer),
    # sampled with the same seed from the sources mapped by hand, mapped back by a dict
    mask = torch.full((260,), float("-inf"), dtype=torch.float64)
    mask[tgt_map] = 0.0
    hook = teacher.model.decoder.output_projection.register_forward_hook(
        lambda m, i, out: out + mask)
    try:
        torch.manual_seed(11)
        sample = sample_targets(teacher, {**src, "input_ids": torch.tensor(src_map)[
            src["input_ids"]]}, g)
    finally:
        hook.remove()
    old_to_new = {o: i for i, o in enumerate(tgt_map)}
    want = torch.tensor([[-100 if t == -100 else old_to_new[t] for t in row]
                         for row in sample.tolist()])
    assert got.tolist() == want.tolist() and got.size(1) > 2
