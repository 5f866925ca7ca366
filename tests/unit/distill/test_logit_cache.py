"""Top-k cached logits: the loss against full-vocabulary KD, the cache key, the cached LossStep.

Measured here (tiny BART teacher, V=512, weights ~N(0, 0.3) so its distributions are peaked:
mean top-1 probability 0.22, top-64 mass 0.89 at T=1; 16 x 20 target positions), relative
error of the top-k loss against the full one (float32 storage; float16 changes < 1e-3):

    T=1     k=16     k=64     k=256    k=V
    CE      2.2e-3   6.5e-4   3.7e-5   < 1e-6
    KL      0.48     0.20     0.022    < 1e-6
    grad    0.41     0.11     0.0086   < 1e-6   (relative L2 error of d CE / d student logits)

CE (TextBrewer's kd_ce_loss) agrees closely because it is dominated by the student's
log-normalizer, which the top-k loss keeps exactly; KL and the gradient show what the
renormalization drops: the teacher's mass outside its top-k (11% here). At higher T that mass
grows (top-64 keeps 52% at T=2, 29% at T=4 for this small, flat teacher) and so does the error
(KL 2.0 / 10, gradient 1.0 / 3.3 relative at k=64): with cached logits, keep T low or k large.
The tests pin these with a margin.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from raydistill.config import DistillConfig
from raydistill.data.fingerprint import digest
from raydistill.data import tokenize
from raydistill.models import teacher_cache
from raydistill.models.teacher_cache import (
    TeacherTopK,
    cache_key,
    check_cacheable,
    ensure_cache,
    is_valid,
    teacher_topk,
)
from raydistill.distill.losses import kd_ce_loss, topk_kd_loss
from raydistill.distill.objective import kd_kl_loss
from raydistill.distill.step import LossStep
from raydistill.distill.textbrewer import DistillationConfig
from raydistill.errors import ConfigError
from raydistill.models.layers import decoder_inputs

V = 512


def _spiky_bart(seed: int, std: float = 0.3):
    from raydistill.models.scratch import new_model

    torch.manual_seed(seed)
    model = new_model("bart", V).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, std)
    return model


@pytest.fixture(scope="module")
def batch_and_logits():
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, V, (16, 24), generator=g)
    labels = torch.randint(4, V, (16, 20), generator=g)
    labels[::3, 14:] = -100  # some padded targets
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    teacher, student = _spiky_bart(0), _spiky_bart(1, std=0.1)
    dec = decoder_inputs(teacher, labels)
    with torch.no_grad():
        t = teacher(input_ids=input_ids, attention_mask=batch["attention_mask"], decoder_input_ids=dec).logits
        s = student(input_ids=input_ids, attention_mask=batch["attention_mask"], decoder_input_ids=dec).logits
    return batch, s, t, labels.ne(-100)


def _errors(s, t, mask, k, T, store=torch.float32):
    values, indices = teacher_topk(t, k)
    values = values.to(store).float()
    kl_full, ce_full = kd_kl_loss(s, t, mask, T), kd_ce_loss(s[mask], t[mask], T)
    kl, ce = (topk_kd_loss(s, values, indices, mask, T, kind) for kind in ("kl", "ce"))
    s1 = s.clone().requires_grad_()
    kd_ce_loss(s1[mask], t[mask], T).backward()
    s2 = s.clone().requires_grad_()
    topk_kd_loss(s2, values, indices, mask, T, "ce").backward()
    grad = (s2.grad - s1.grad).norm() / s1.grad.norm()
    return (float(abs(kl - kl_full) / kl_full), float(abs(ce - ce_full) / ce_full), float(grad))


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_k_equal_vocab_is_exact(batch_and_logits, T):
    _, s, t, mask = batch_and_logits
    kl, ce, grad = _errors(s, t, mask, V, T)
    assert kl < 1e-5 and ce < 1e-6 and grad < 1e-5


def test_top64_tolerance_at_t1_and_error_shrinks_with_k(batch_and_logits):
    _, s, t, mask = batch_and_logits
    errs = {k: _errors(s, t, mask, k, 1.0) for k in (16, 64, 256)}
    kl, ce, grad = errs[64]
    assert ce < 1e-3 and kl < 0.25 and grad < 0.15  # measured 6.5e-4, 0.20, 0.11
    for metric in range(3):
        assert errs[16][metric] > errs[64][metric] > errs[256][metric]
    # Teacher top-64 mass at T=1 (what the approximation keeps): the fixture's realism check.
    _, idx = teacher_topk(t, 64)
    mass = torch.softmax(t[mask], -1).gather(-1, idx[mask]).sum(-1).mean()
    assert 0.85 < float(mass) < 0.95


def test_error_grows_with_temperature(batch_and_logits):
    _, s, t, mask = batch_and_logits
    kl = [_errors(s, t, mask, 64, T)[0] for T in (1.0, 2.0, 4.0)]
    assert kl[0] < kl[1] < kl[2]


def test_float16_storage_adds_little(batch_and_logits):
    _, s, t, mask = batch_and_logits
    f32 = _errors(s, t, mask, 64, 1.0)
    f16 = _errors(s, t, mask, 64, 1.0, store=torch.float16)
    assert all(abs(a - b) < 1e-3 for a, b in zip(f32, f16))


def test_no_selected_position_gives_zero_in_graph():
    s = torch.randn(2, 3, 10, requires_grad=True)
    v, i = teacher_topk(torch.randn(2, 3, 10), 4)
    loss = topk_kd_loss(s, v, i, torch.zeros(2, 3, dtype=torch.bool), 2.0)
    loss.backward()
    assert float(loss.detach()) == 0.0 and s.grad is not None


def test_teacher_topk_shift_and_order():
    logits = torch.tensor([[[1.0, 5.0, 3.0, -2.0]]])
    v, i = teacher_topk(logits, 3)
    assert i.tolist() == [[[1, 2, 0]]] and v.tolist() == [[[0.0, -2.0, -4.0]]]
    # k >= V keeps every logit, unsorted (vocabulary order), shifted the same way.
    v, i = teacher_topk(logits, 99)
    assert i.tolist() == [[[0, 1, 2, 3]]] and v.tolist() == [[[-4.0, 0.0, -2.0, -7.0]]]


# ---- the cached LossStep path ---------------------------------------------------------------

def _cfg(tmp_path, **distillation):
    return DistillConfig(method="kd", teacher="t", data_dir=str(tmp_path), output_dir=str(tmp_path),
                         distillation={"temperature": 2, "hard_label_weight": 0.5, **distillation})


def test_cached_step_equals_live_textbrewer_step_at_k_equal_vocab(tmp_path, batch_and_logits):
    batch, _, _, _ = batch_and_logits
    teacher, student = _spiky_bart(0), _spiky_bart(1, std=0.1)
    live = LossStep(_cfg(tmp_path), [teacher], student)
    cached = LossStep(_cfg(tmp_path, is_caching_logits=True), [], student)
    assert cached.cached_logits and not live.cached_logits
    values, indices = teacher_cache.topk_for_batch([teacher], batch, V)
    cached_batch = {**batch, "topk_values": torch.from_numpy(values),
                    "topk_indices": torch.from_numpy(indices)}
    loss_live, parts_live = live(student, batch, step=0, total_steps=10)
    loss_cached, parts_cached = cached(student, cached_batch, step=0, total_steps=10)
    assert torch.allclose(loss_live, loss_cached, rtol=1e-5)
    for key in ("unweighted_kd_loss", "unweighted_hard_label_loss", "kd_loss_weight",
                "hard_label_weight", "temperature"):
        assert float(parts_live[key]) == pytest.approx(float(parts_cached[key]), rel=1e-5)
    with pytest.raises(ValueError, match="no cached teacher logits"):
        cached(student, batch, step=0, total_steps=10)


@pytest.mark.parametrize("extra, message", [
    ({"intermediate_matches": [{"layer_T": 0, "layer_S": 0, "feature": "attention",
                                "loss": "attention_mse", "weight": 1}]}, "attention"),
    ({"probability_shift": True}, "probability_shift"),
    ({"kd_loss_type": "mse"}, "kd_loss_type"),
    ({"temperature_scheduler": ["flsw", 1, 1]}, "temperature_scheduler"),
])
def test_options_that_need_the_live_teacher_are_refused(extra, message):
    with pytest.raises(ConfigError, match=message):
        check_cacheable(DistillationConfig.from_dict({"is_caching_logits": True, **extra}))


# ---- cached hidden states: the whole GeneralDistiller objective without the teacher ----------

# Teacher 4-4 (tiny_bart_dir): hidden entries 0..4 encoder (embeddings + 4 layers), 5..9 decoder.
HIDDEN_MATCHES = [
    {"layer_T": -1, "layer_S": -1, "feature": "hidden", "loss": "hidden_mse", "weight": 1.0},
    {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 0.5,
     "proj": ["linear", 64, 64]},
    {"layer_T": [7, 9], "layer_S": [6, 9], "feature": "hidden", "loss": "nst", "weight": 0.1},
]


def test_cached_hidden_layers_are_normalized_and_range_checked():
    tb = DistillationConfig.from_dict({"is_caching_logits": True,
                                       "intermediate_matches": HIDDEN_MATCHES})
    assert teacher_cache.cached_hidden_layers(tb, (4, 4)) == [2, 7, 9]
    assert tokenize.hidden_column(4, 4) == "t_hidden_enc_4"
    assert tokenize.hidden_column(5, 4) == "t_hidden_dec_5"
    assert tokenize.parse_hidden_column("t_hidden_dec_9") == ("dec", 9)
    assert tokenize.parse_hidden_column("topk_values") is None
    with pytest.raises(ConfigError, match=r"intermediate_matches\[2\]\.layer_T=7 is out of range.*0\.\.5"):
        teacher_cache.cached_hidden_layers(tb, (2, 2))
    check_cacheable(tb)  # hidden matches no longer need the live teacher


def _rows_teacher_student(tiny_bart_dir, ids):
    """Three tokenized rows (Ray Data's numpy layout) with ``ids``, the tiny teacher, and a
    student that is the teacher perturbed (so KD and the matches are not zero)."""
    from transformers import AutoTokenizer

    from raydistill.models.layers import load_seq2seq

    tok = AutoTokenizer.from_pretrained(tiny_bart_dir)
    enc = tok(["the cat sat on the mat", "a dog", "birds sang in the old tree by the river"])
    tgt = tok(text_target=["cat sat .", "the dog ran in the park .", "birds ."])
    rows = {"id": np.array(ids), "input_ids": _ragged(enc["input_ids"]),
            "labels": _ragged(tgt["input_ids"])}
    teacher = load_seq2seq(str(tiny_bart_dir)).eval()
    student = load_seq2seq(str(tiny_bart_dir))
    torch.manual_seed(3)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return tok, rows, teacher, student


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-5), ("float16", 2e-3)])
def test_cached_hidden_states_round_trip_to_the_live_textbrewer_loss(tiny_bart_dir, tmp_path,
                                                                     dtype, rtol):
    """TeacherTopK (k = V, hidden entries) -> Arrow rows -> PadCollate -> the cached LossStep
    gives the live teacher's GeneralDistiller loss: KD + three kinds of hidden matches (one with
    a projection, one pair loss) + hard labels, every logged component included."""
    from raydistill.data.tokenize import make_collate_fn
    from raydistill.distill.textbrewer import build_projections

    tok, rows, teacher, student = _rows_teacher_student(tiny_bart_dir, ids=[0, 1, 2])
    vocab = teacher.config.vocab_size
    dist = {"temperature": 2, "hard_label_weight": 0.5, "intermediate_matches": HIDDEN_MATCHES}
    live_cfg = DistillConfig(method="kd", teacher=str(tiny_bart_dir), data_dir=str(tmp_path),
                             output_dir=str(tmp_path), distillation=dist)
    cached_cfg = live_cfg.replace(distillation={**dist, "is_caching_logits": True})
    torch.manual_seed(0)
    projections = build_projections(DistillationConfig.from_dict(dist))
    live = LossStep(live_cfg, [teacher], student, projections=projections)
    cached = LossStep(cached_cfg, [], student, projections=projections)  # reads the config
    assert cached.cached_hidden == [2, 7, 9]

    table = TeacherTopK([str(tiny_bart_dir)], top_k=vocab, dtype=dtype,
                        pad_token_id=tok.pad_token_id, hidden_layers=cached.cached_hidden)(rows)
    assert table.column_names == ["id", "topk_values", "topk_indices", "t_hidden_enc_2",
                                  "t_hidden_dec_7", "t_hidden_dec_9"]
    joined = {**rows, **{c: _ragged([v.as_py() for v in table.column(c)], np.float32)
                         for c in table.column_names if c != "id"}}
    batch = make_collate_fn(tok.pad_token_id)(joined)
    assert batch["t_hidden_enc_2"].shape == (*batch["input_ids"].shape, 64)
    assert batch["t_hidden_dec_9"].shape == (*batch["labels"].shape, 64)
    batch.pop("id")
    plain = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}

    loss_live, parts_live = live(student, plain, step=3, total_steps=10)
    loss_cached, parts_cached = cached(student, batch, step=3, total_steps=10)
    assert torch.allclose(loss_cached, loss_live, rtol=rtol)
    matched = [k for k in parts_live if k.startswith("unweighted_hidden")]
    assert len(matched) == 3
    for key in ("unweighted_kd_loss", "unweighted_hard_label_loss", *matched):
        assert float(parts_cached[key]) == pytest.approx(float(parts_live[key]), rel=rtol), key
    # Gradients reach the student and the projection alike.
    loss_cached.backward()
    assert all(p.grad is not None for p in projections.parameters())

    # A cache built without the hidden states is refused with a way out.
    with pytest.raises(ValueError, match="no hidden state 2.*--hidden-layers"):
        cached(student, {k: v for k, v in batch.items() if not k.startswith("t_hidden_enc_2")},
               step=0, total_steps=10)


# ---- logit_cache: memory (TextBrewer's own caching: the first epoch's teacher outputs) -------

@pytest.mark.parametrize("top_k", [None, 5])  # None: k = V (exact, no indices kept)
def test_memory_cache_records_what_the_parquet_cache_holds(tiny_bart_dir, tmp_path, top_k):
    """First epoch: the memory step is the live teacher's step and hands over the teacher's
    outputs; recorded, they come back as the Parquet cache's batch columns (TeacherTopK ->
    PadCollate), and a later epoch's step equals the Parquet-cached step."""
    from raydistill.data.tokenize import make_collate_fn
    from raydistill.train.memory_cache import MemoryLogitCache
    from raydistill.distill.textbrewer import build_projections

    tok, rows, teacher, student = _rows_teacher_student(tiny_bart_dir, ids=[4, 0, 9])
    k = top_k or teacher.config.vocab_size
    dist = {"temperature": 2, "hard_label_weight": 0.5, "intermediate_matches": HIDDEN_MATCHES}
    live_cfg = DistillConfig(method="kd", teacher=str(tiny_bart_dir), data_dir=str(tmp_path),
                             output_dir=str(tmp_path), distillation=dist)
    parquet_cfg = live_cfg.replace(distillation={**dist, "is_caching_logits": True})
    memory_cfg = parquet_cfg.replace(logit_cache="memory")
    torch.manual_seed(0)
    projections = build_projections(DistillationConfig.from_dict(dist))
    live = LossStep(live_cfg, [teacher], student, projections=projections)
    memory = LossStep(memory_cfg, [teacher], student, projections=projections)
    parquet = LossStep(parquet_cfg, [], student, projections=projections)
    assert memory.memory_logits and not memory.cached_logits and parquet.cached_logits

    batch = make_collate_fn(tok.pad_token_id)(rows)
    ids = batch.pop("id").tolist()
    loss_live, _ = live(student, batch, step=3, total_steps=10)
    assert live.last_teacher is None  # only the memory mode hands its outputs over
    loss_first, _ = memory(student, batch, step=3, total_steps=10)
    assert torch.equal(loss_first, loss_live)  # the first epoch is the live teacher's step

    cache = MemoryLogitCache(k, "float16", hidden_layers=memory.cached_hidden, encoder_layers=4)
    cache.record(ids, *memory.last_teacher, batch["attention_mask"], batch["labels"].ne(-100))
    kept = cache.lookup(ids)
    table = TeacherTopK([str(tiny_bart_dir)], top_k=k, dtype="float16",
                        pad_token_id=tok.pad_token_id, hidden_layers=memory.cached_hidden)(rows)
    ref = make_collate_fn(tok.pad_token_id)(
        {**rows, **{c: _ragged([v.as_py() for v in table.column(c)],
                               np.int32 if c == "topk_indices" else np.float16)
                    for c in table.column_names if c != "id"}})
    expected = {c for c in ref if c not in ("id", "input_ids", "attention_mask", "labels")}
    assert set(kept) == (expected if top_k else expected - {"topk_indices"})
    for name, value in kept.items():
        assert value.shape == ref[name].shape, name
        torch.testing.assert_close(value, ref[name], rtol=0, atol=0, msg=name)

    loss_memory, parts_memory = memory(student, {**batch, **kept}, step=3, total_steps=10)
    loss_parquet, parts_parquet = parquet(student, {**batch, **{c: v for c, v in ref.items()
                                                                if c != "id"}}, step=3, total_steps=10)
    torch.testing.assert_close(loss_memory, loss_parquet, rtol=1e-6, atol=0)
    assert set(parts_memory) == set(parts_parquet)
    if top_k is None:  # exact: the live loss, up to float16 storage
        torch.testing.assert_close(loss_memory, loss_live, rtol=2e-3, atol=0)


def test_memory_cache_serves_only_whole_batches_and_merges_other_workers(tiny_bart_dir):
    from raydistill.train.memory_cache import MemoryLogitCache

    logits = torch.randn(2, 4, 10)
    tgt_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    src_mask = torch.ones(2, 6, dtype=torch.long)
    mine, other = MemoryLogitCache(3), MemoryLogitCache(3)
    mine.record([10, 11], logits, [], src_mask, tgt_mask)
    assert mine.lookup([10, 12]) is None and mine.lookup([]) is None
    kept = mine.lookup([11, 10])  # any order: rows follow the ids asked for
    values, indices = teacher_topk(logits, 3)
    assert torch.equal(kept["topk_indices"][0], indices[1])
    torch.testing.assert_close(kept["topk_values"][1, :3], values[0, :3].half().float())
    assert float(kept["topk_values"][1, 3].abs().sum()) == 0.0  # the padded position
    assert len(mine) == 2 and mine.nbytes == (3 + 4) * 3 * (2 + 4)  # float16 values, int32 ids
    new = mine.take_new()
    assert sorted(new) == [10, 11] and mine.take_new() == {}
    other.merge(new)
    assert torch.equal(other.lookup([10, 11])["topk_values"], mine.lookup([10, 11])["topk_values"])


def test_topk_loss_without_indices_is_the_full_vocabulary_loss():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    values, indices = teacher_topk(t, 7)
    for kind in ("ce", "kl"):
        torch.testing.assert_close(topk_kd_loss(s, values, None, mask, 2.0, kind),
                                   topk_kd_loss(s, values, indices, mask, 2.0, kind))
    torch.testing.assert_close(topk_kd_loss(s, values, None, mask, 2.0),
                               kd_ce_loss(s[mask], t[mask], 2.0))


def test_key_names_the_hidden_states_kept(cache_inputs):
    teacher, data = cache_inputs
    plain, with_hidden = _key(teacher, data), _key(teacher, data, hidden_layers=[9, 2])
    assert "hidden_layers" not in plain  # caches of logits only keep their key
    assert with_hidden["hidden_layers"] == [2, 9]
    assert digest(plain) != digest(with_hidden)


def test_teacher_topk_map_batches_class_writes_flat_rows(tiny_bart_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bart_dir)
    enc = tok(["the cat sat", "a dog ran in the park"])
    tgt = tok(text_target=["cat .", "the dog ran ."])
    rows = {"id": np.array([7, 3]), "input_ids": _ragged(enc["input_ids"]),
            "labels": _ragged(tgt["input_ids"])}
    table = TeacherTopK([str(tiny_bart_dir)], top_k=5, dtype="float16",
                        pad_token_id=tok.pad_token_id)(rows)
    assert table.column("id").to_pylist() == [7, 3]
    assert str(table.schema.field("topk_values").type) == "list<item: halffloat>"
    for r, labels in enumerate(rows["labels"]):
        values = np.asarray(table.column("topk_values")[r].as_py(), dtype=np.float32).reshape(-1, 5)
        assert values.shape == (len(labels), 5)
        assert np.all(values[:, 0] == 0) and np.all(np.diff(values, axis=1) <= 0)
    # The collate function turns rows back into (B, T, k) next to the labels.
    from raydistill.data.tokenize import make_collate_fn

    collated = make_collate_fn(tok.pad_token_id)({
        **rows, "topk_values": _ragged([v.as_py() for v in table.column("topk_values")], np.float16),
        "topk_indices": _ragged([v.as_py() for v in table.column("topk_indices")])})
    assert collated["topk_values"].shape == (*collated["labels"].shape, 5)


def _ragged(rows, dtype=np.int32):
    out = np.empty(len(rows), dtype=object)
    out[:] = [np.asarray(r, dtype=dtype) for r in rows]
    return out


# ---- the key: any change to teacher, data or tokenization rebuilds -----------------------------

@pytest.fixture
def cache_inputs(tmp_path, tiny_bart_dir, tiny_data_dir):
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_bart_dir, teacher)
    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data)
    return teacher, data


def _key(teacher, data, **kw):
    args = dict(split="train", n=None, max_source_length=64, max_target_length=16) | kw
    return cache_key([str(teacher)], str(teacher), str(data), **args)


def test_key_ignores_paths_and_copies_but_not_content(cache_inputs, tmp_path):
    import shutil

    teacher, data = cache_inputs
    base = digest(_key(teacher, data))
    copy = tmp_path / "copy"
    shutil.copytree(teacher, copy)
    assert digest(_key(copy, data)) == base  # a copy of the same teacher: same key
    # The student's tokenizer is re-saved by transformers (other loading keys): same key.
    from transformers import AutoTokenizer

    student_tok = tmp_path / "student_tok"
    AutoTokenizer.from_pretrained(teacher).save_pretrained(student_tok)
    assert cache_key([str(teacher)], str(student_tok), str(data), split="train", n=None,
                     max_source_length=64, max_target_length=16)["tokenizer"] == \
        _key(teacher, data)["tokenizer"]
    for change in ({"max_source_length": 32}, {"max_target_length": 8}, {"n": 3}):
        assert digest(_key(teacher, data, **change)) != base


def test_cache_is_rebuilt_when_teacher_data_or_tokenizer_change(cache_inputs, tmp_path, monkeypatch):
    teacher, data = cache_inputs
    cache = tmp_path / "cache"
    builds = []

    def fake_build(tokenized, cache_dir, key, **kw):  # what build_cache leaves, minus Ray
        builds.append(kw["top_k"])
        (Path(cache_dir) / "parts").mkdir(parents=True, exist_ok=True)
        manifest = {"key_digest": digest(key), "key": key, "top_k": kw["top_k"], "num_examples": 6}
        (Path(cache_dir) / "manifest.json").write_text(json.dumps(manifest))
        return manifest

    monkeypatch.setattr(teacher_cache, "build_cache", fake_build)

    def ensure(**kw):
        return ensure_cache(None, cache, _key(teacher, data), teachers=[str(teacher)],
                            pad_token_id=1, **kw)

    ensure()
    ensure()
    assert builds == [64]  # built once (default k), then reused
    ensure(top_k=8)
    assert builds == [64, 8]  # an explicit other k rebuilds

    with open(teacher / "model.safetensors", "r+b") as f:  # one byte of the weights
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    assert not is_valid(cache, _key(teacher, data))
    ensure()
    (data / "train.target").write_text((data / "train.target").read_text().replace("cat", "cow"))
    ensure()
    tok = json.loads((teacher / "tokenizer.json").read_text())
    tok["added_tokens"].append({**tok["added_tokens"][-1], "id": 9999, "content": "<x>"})
    (teacher / "tokenizer.json").write_text(json.dumps(tok))
    ensure()
    cfg = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps({**cfg, "dropout": 0.3}))
    ensure()
    ensure()
    assert builds == [64, 8, 64, 64, 64, 64]  # weights, data, tokenizer, config; then reuse


def test_a_cache_swap_killed_between_its_renames_is_recovered(tmp_path):
    """build_cache swaps the new cache in with two renames (raydistill.atomic): a build killed
    between them leaves only <cache>.old, which the next read puts back, manifest and all."""
    cache = tmp_path / "logit_cache"
    old = tmp_path / "logit_cache.old"
    old.mkdir()
    (old / teacher_cache.MANIFEST).write_text(json.dumps({"key_digest": "abc", "top_k": 8}))
    manifest = teacher_cache.read_manifest(cache)
    assert manifest == {"key_digest": "abc", "top_k": 8}
    assert cache.is_dir() and not old.exists()
