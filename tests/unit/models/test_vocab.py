"""Vocabulary trimming, against oracles: the full model restricted to the kept ids (float64),
and the teacher's tokenizer mapped through the kept ids."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, LogitsProcessor, LogitsProcessorList

from raydistill.errors import ModelError
from raydistill.models.layers import load_seq2seq
from raydistill.models.scratch import (
    new_model,
    train_marian_tokenizer,
    train_tokenizer,
    train_unigram_tokenizer,
)
from raydistill.models.student import make_student
from raydistill.models.vocab import (
    VOCAB_MAP_FILE,
    config_token_ids,
    kept_token_ids,
    read_vocab_map,
    trim_model,
    trim_tokenizer,
    trim_vocab,
)

VOCAB = 300
MODEL_ARCHS = ("bart", "mbart", "marian", "pegasus", "t5")
# The tokenizers learn from more text than the train split holds, so trimming removes tokens.
TRAIN = [
    ("the cat sat on the mat .", "die katze sass auf der matte ."),
    ("a dog ran in the park .", "ein hund lief im park ."),
    ("the dog looked at the cat .", "der hund sah die katze an ."),
    ("birds sing in the morning .", "voegel singen am morgen ."),
]
OTHER = [
    "quantum chromodynamics describes strong interactions between quarks and gluons .",
    "zebras graze peacefully while giraffes browse acacia leaves nearby .",
    "whitespace, punctuation; and numbers like 12345 appear rarely !",
    "jubilant xylophone players quickly vexed the wizard's sphinx .",
] * 3
CORPUS = [s for pair in TRAIN for s in pair] * 3 + OTHER


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    for split in ("train", "val", "test"):
        (d / f"{split}.source").write_text("".join(s + "\n" for s, _ in TRAIN))
        (d / f"{split}.target").write_text("".join(t + "\n" for _, t in TRAIN))
    return d


def tokenizer_of(kind: str, tmp_path):
    if kind == "bart-bpe":
        return train_tokenizer(CORPUS, vocab_size=400)
    if kind == "bart-roberta":  # BartTokenizer's class, rebuilt from tokenizer.json on load
        from transformers import BartTokenizer

        model = json.loads(train_tokenizer(CORPUS, vocab_size=400).backend_tokenizer.to_str())
        return BartTokenizer(vocab=model["model"]["vocab"],
                             merges=[tuple(m) for m in model["model"]["merges"]])
    if kind == "t5-unigram":
        return train_unigram_tokenizer(CORPUS, vocab_size=150)
    if kind == "mbart-unigram":
        return train_unigram_tokenizer(CORPUS, vocab_size=150, kind="mbart")
    if kind == "marian-spm":
        return train_marian_tokenizer(CORPUS, tmp_path / "marian_tok", vocab_size=150)
    raise ValueError(kind)


TOKENIZERS = ("bart-bpe", "bart-roberta", "t5-unigram", "mbart-unigram", "marian-spm")


def model_of(arch: str, tokenizer=None, vocab: int = VOCAB, **kw):
    torch.manual_seed(0)
    ids = {}
    if tokenizer is not None:
        vocab = len(tokenizer)
        ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                   bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None
                   else tokenizer.eos_token_id)
    return new_model(arch, vocab, **ids, **kw).double().eval()


def some_kept(model, seed: int = 0) -> list[int]:
    """Every third id, a few random ones, and the ids the config names."""
    size = model.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(seed)
    extra = torch.randperm(size, generator=g)[:20].tolist()
    return sorted(set(range(0, size, 3)) | set(extra) | config_token_ids(model))


class KeepOnly(LogitsProcessor):
    def __init__(self, kept: list[int]):
        self.kept = torch.tensor(kept)

    def __call__(self, input_ids, scores):
        masked = torch.full_like(scores, float("-inf"))
        masked[:, self.kept] = scores[:, self.kept]
        return masked


def restrict_output(model, kept: list[int]):
    """The full model whose logits are -inf outside ``kept`` before any softmax (so beam
    search's log-probabilities normalise over the kept ids, as the trimmed model's do)."""
    mask = torch.full((model.get_output_embeddings().weight.shape[0],), float("-inf"),
                      dtype=torch.float64)
    mask[kept] = 0.0
    return model.get_output_embeddings().register_forward_hook(lambda m, i, out: out + mask)


# --- the model ------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", MODEL_ARCHS)
def test_trimmed_logits_equal_full_logits_at_kept_ids(arch):
    full = model_of(arch)
    kept = some_kept(full)
    trimmed = trim_model(full, kept)
    old_to_new = {o: n for n, o in enumerate(kept)}
    g = torch.Generator().manual_seed(1)
    src = torch.tensor(kept)[torch.randint(len(kept), (2, 7), generator=g)]
    tgt = torch.tensor(kept)[torch.randint(len(kept), (2, 5), generator=g)]
    new = lambda t: t.apply_(lambda i: old_to_new[i])  # noqa: E731
    with torch.no_grad():
        a = full(input_ids=src, decoder_input_ids=tgt, output_hidden_states=True)
        b = trimmed(input_ids=new(src.clone()), decoder_input_ids=new(tgt.clone()),
                    output_hidden_states=True)
    # Bitwise: every hidden state, and the output layer's rows (and final_logits_bias).
    for x, y in zip(a.encoder_hidden_states + a.decoder_hidden_states,
                    b.encoder_hidden_states + b.decoder_hidden_states, strict=True):
        assert torch.equal(x, y)
    assert torch.equal(trimmed.get_output_embeddings().weight,
                       full.get_output_embeddings().weight[kept])
    if hasattr(full, "final_logits_bias"):
        assert torch.equal(trimmed.final_logits_bias, full.final_logits_bias[:, kept])
    # The logits: the same products, summed by BLAS in a shape-dependent order (a few ulps in
    # float64; seen <= 2.3e-15), so equal to 1e-13 and no looser.
    assert b.logits.dtype == torch.float64 and b.logits.shape[-1] == len(kept)
    torch.testing.assert_close(b.logits, a.logits[..., kept], rtol=0, atol=1e-13)


@pytest.mark.parametrize("arch", MODEL_ARCHS)
def test_config_ids_remapped_and_original_size_recorded(arch):
    full = model_of(arch, pad_token_id=7, bos_token_id=5, eos_token_id=9)
    kept = some_kept(full)
    trimmed = trim_model(full, kept)
    for cfg_full, cfg_new in ((full.config, trimmed.config),
                              (full.generation_config, trimmed.generation_config)):
        for key in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
                    "forced_eos_token_id"):
            old = getattr(cfg_full, key, None)
            if old is not None:
                assert kept[getattr(cfg_new, key)] == old, key
    assert trimmed.config.vocab_size == len(kept)
    assert trimmed.config.original_vocab_size == VOCAB
    assert trimmed.get_input_embeddings().weight.shape[0] == len(kept)


@pytest.mark.parametrize("arch", MODEL_ARCHS)
@pytest.mark.parametrize("beams", [1, 3])
def test_generation_equals_full_model_restricted_to_kept_ids(arch, beams):
    full = model_of(arch)
    kept = some_kept(full, seed=2)
    g = torch.Generator().manual_seed(3)
    src = torch.tensor(kept)[torch.randint(len(kept), (2, 6), generator=g)]
    gen = dict(num_beams=beams, do_sample=False, max_new_tokens=8, min_new_tokens=3)
    # So that the restriction matters: drop what the random model says unrestricted.
    with torch.no_grad():
        free = full.generate(input_ids=src, **gen, suppress_tokens=[full.config.pad_token_id])
    kept = sorted((set(kept) - set(free.flatten().tolist())) | config_token_ids(full)
                  | set(src.flatten().tolist()))
    trimmed = trim_model(full, kept)
    src_new = src.clone().apply_(lambda i: kept.index(i))
    # A random T5 repeats its pad token, kept either way: ban it in both.
    pad = full.config.pad_token_id
    gen_full = dict(gen, suppress_tokens=[pad])
    gen_new = dict(gen, suppress_tokens=[kept.index(pad)])
    handle = restrict_output(full, kept)
    try:
        with torch.no_grad():
            want = full.generate(input_ids=src, **gen_full)
    finally:
        handle.remove()
    with torch.no_grad():
        got = trimmed.generate(input_ids=src_new, **gen_new)
    assert [[kept[i] for i in row] for row in got.tolist()] == want.tolist()
    assert want.tolist() != free.tolist()  # the restriction changed what the full model says


def test_keep_only_processor_gives_the_same_greedy_output():
    """Greedy search cannot tell a logits processor from the restricted output layer."""
    full = model_of("bart")
    kept = some_kept(full)
    src = torch.tensor([kept[1:7]])
    with torch.no_grad():
        a = full.generate(input_ids=src, max_new_tokens=6, num_beams=1,
                          logits_processor=LogitsProcessorList([KeepOnly(kept)]))
        b = trim_model(full, kept).generate(input_ids=src.apply_(kept.index), max_new_tokens=6,
                                            num_beams=1)
    assert [kept[i] for i in b[0].tolist()] == a[0].tolist()


def test_unsupported_kinds_and_bad_maps_are_model_errors():
    with pytest.raises(ModelError, match="not encoder-decoder"):  # BERT2BERT
        trim_model(new_model("bert2bert", VOCAB), [0, 1, 2])
    with pytest.raises(ModelError, match="give source_new_to_old"):  # FSMT: test_vocab_fsmt.py
        trim_model(new_model("fsmt", VOCAB), [0, 1, 2])
    with pytest.raises(ModelError, match="distinct ids"):
        trim_model(new_model("bart", VOCAB), [0, 1, 1, 2])
    with pytest.raises(ModelError, match="not among the kept"):
        trim_model(new_model("bart", VOCAB), [0, 1, 3])  # eos (2) dropped


# --- the tokenizer --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", TOKENIZERS)
def test_tokenizer_round_trip_over_the_train_split(kind, data_dir, tmp_path):
    full = tokenizer_of(kind, tmp_path)
    kept = kept_token_ids(full, data_dir)
    assert len(kept) < len(full)  # something was trimmed
    trim_tokenizer(full, kept, tmp_path / "trimmed")
    trimmed = AutoTokenizer.from_pretrained(tmp_path / "trimmed")  # as a user loads it
    assert len(trimmed) == len(kept)
    for source, target in TRAIN:
        for kw in ({"text": source}, {"text_target": target}):
            want, got = full(**kw)["input_ids"], trimmed(**kw)["input_ids"]
            assert got == [kept.index(i) for i in want], kw
            assert trimmed.decode(got) == full.decode(want)
    for name in ("pad_token", "eos_token", "unk_token", "bos_token"):
        tok = getattr(full, name, None)
        if tok is not None:
            assert trimmed.convert_ids_to_tokens(getattr(trimmed, name + "_id")) == tok


def test_bpe_keeps_every_intermediate_of_the_kept_merges(data_dir, tmp_path):
    full = tokenizer_of("bart-bpe", tmp_path)
    kept = set(full.convert_ids_to_tokens(kept_token_ids(full, data_dir)))
    merges = json.loads(full.backend_tokenizer.to_str())["model"]["merges"]
    made = {a + b: (a, b) for a, b in merges}
    for token in kept:
        if token in made:
            assert set(made[token]) <= kept, token
    from tokenizers import pre_tokenizers

    assert set(pre_tokenizers.ByteLevel.alphabet()) <= kept  # any text still encodes to bytes


def test_language_codes_and_special_tokens_are_kept(data_dir, tmp_path):
    full = tokenizer_of("mbart-unigram", tmp_path)
    kept = set(kept_token_ids(full, data_dir))
    assert set(full.all_special_ids) <= kept
    assert {full.convert_tokens_to_ids(c) for c in ("en_XX", "ro_RO", "de_DE")} <= kept


@pytest.mark.parametrize("kind", ["bart-bpe", "t5-unigram"])
def test_keep_vocab_keeps_the_most_frequent_and_text_still_encodes(kind, data_dir, tmp_path):
    full = tokenizer_of(kind, tmp_path)
    everything = kept_token_ids(full, data_dir)
    few = kept_token_ids(full, data_dir, keep_vocab=5)
    assert len(few) < len(everything)
    trimmed = trim_tokenizer(full, few, tmp_path / "few")
    for source, _ in TRAIN:
        ids = trimmed(source)["input_ids"]
        assert trimmed.unk_token_id not in ids  # smaller pieces, not <unk>
        assert trimmed.decode(ids, skip_special_tokens=True).strip() == \
            full.decode(full(source)["input_ids"], skip_special_tokens=True).strip()
    with pytest.raises(ModelError, match="keep_vocab"):
        kept_token_ids(full, data_dir, keep_vocab=0)


@pytest.mark.parametrize("kind", ["bart-bpe", "t5-unigram"])
@pytest.mark.parametrize("n", [1, 5, 12])
def test_keep_vocab_bounds_the_data_tokens_and_the_rest_are_what_the_docs_name(kind, n, data_dir,
                                                                               tmp_path):
    """What N bounds, written out: the N most frequent train tokens (counted here by hand, ties
    to the smaller id) are all kept, and every other kept id is a special token, a single
    character (with or without a word marker), or a piece of a kept data token's string (a BPE
    merge intermediate: a substring of what it builds)."""
    from collections import Counter

    full = tokenizer_of(kind, tmp_path)
    counts = Counter()
    for source, target in TRAIN:
        counts.update(full(source)["input_ids"])
        counts.update(full(text_target=target)["input_ids"])
    top = sorted(counts, key=lambda i: (-counts[i], i))[:n]
    kept = kept_token_ids(full, data_dir, keep_vocab=n)
    assert set(top) <= set(kept)
    top_strings = full.convert_ids_to_tokens(top)
    for i in set(kept) - set(top):
        piece = full.convert_ids_to_tokens(i)
        bare = piece.lstrip("\u2581\u0120")
        assert (i in full.all_special_ids or len(bare) <= 1
                or any(piece in t or bare in t for t in top_strings)), (i, piece)
    assert len(kept) > n  # the total is larger than N: what the help and docs say


# --- both, saved ----------------------------------------------------------------------------

@pytest.mark.parametrize("arch, kind", [("bart", "bart-roberta"), ("t5", "t5-unigram"),
                                        ("marian", "marian-spm"), ("mbart", "mbart-unigram")])
def test_trim_vocab_saves_a_model_tokenizer_and_map_that_load(arch, kind, data_dir, tmp_path):
    tok = tokenizer_of(kind, tmp_path)
    full = model_of(arch, tok)
    trimmed, _, kept = trim_vocab(full, tok, data_dir, save_path=tmp_path / "out")
    assert read_vocab_map(tmp_path / "out") == kept
    saved = json.loads((tmp_path / "out" / VOCAB_MAP_FILE).read_text())
    assert saved["original_vocab_size"] == len(tok)
    loaded = load_seq2seq(tmp_path / "out").double().eval()
    assert loaded.config.original_vocab_size == len(tok)
    new_tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    batch = new_tok([s for s, _ in TRAIN], text_target=[t for _, t in TRAIN], padding=True,
                    return_tensors="pt")
    full_batch = tok([s for s, _ in TRAIN], padding=True, return_tensors="pt")
    with torch.no_grad():
        got = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     decoder_input_ids=batch["input_ids"][:, :4]).logits
        want = full(input_ids=full_batch["input_ids"], attention_mask=full_batch["attention_mask"],
                    decoder_input_ids=full_batch["input_ids"][:, :4]).logits[..., kept]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13)


def test_make_student_trims_after_copying_layers(data_dir, tmp_path):
    tok = tokenizer_of("bart-roberta", tmp_path)
    teacher = model_of("bart", tok, encoder_layers=4, decoder_layers=4).float()
    teacher.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    student, e, d = make_student(tmp_path / "teacher", e=2, d=1, save_path=tmp_path / "student",
                                 trim_vocab=data_dir, keep_vocab=None)
    kept = read_vocab_map(tmp_path / "student")
    assert student.config.vocab_size == len(kept) < len(tok)
    reference, e_ref, d_ref = make_student(teacher, e=2, d=1)
    assert (e, d) == (e_ref, d_ref)
    assert torch.equal(student.lm_head.weight, reference.lm_head.weight[kept])
    loaded = load_seq2seq(tmp_path / "student")
    assert loaded.config.encoder_layers == 2 and loaded.config.vocab_size == len(kept)
    assert len(AutoTokenizer.from_pretrained(tmp_path / "student")) == len(kept)
    with pytest.raises(ModelError, match="folder or Hub id"):
        make_student(teacher, e=2, d=1, trim_vocab=data_dir)


# --- where a student is made: the CLI, the config, a distill run's prepare_student -----------

@pytest.fixture
def teacher_dir(tmp_path):
    tok = tokenizer_of("bart-roberta", tmp_path)
    model_of("bart", tok, encoder_layers=2, decoder_layers=2).float().save_pretrained(
        tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher"


def test_cache_logits_with_a_trimmed_students_tokenizer_keys_by_its_map(teacher_dir, data_dir,
                                                                       tmp_path, monkeypatch):
    """``cache-logits --tokenizer STUDENT_DIR``: the key holds the student's map, so a cache
    built for it is found (no build: Ray is never started here) and one keyed for no map or
    another map is not."""
    import json as json_

    from raydistill.data.fingerprint import digest
    from raydistill.models import teacher_cache

    make_student(teacher_dir, e=1, d=1, save_path=tmp_path / "s", trim_vocab=data_dir)
    kept = read_vocab_map(tmp_path / "s")

    def key(vocab_map):
        return teacher_cache.cache_key([str(teacher_dir)], str(tmp_path / "s"), str(data_dir),
                                       max_source_length=16, max_target_length=8,
                                       vocab_map=vocab_map)

    def built(name, vocab_map):
        (tmp_path / name / "parts").mkdir(parents=True)
        (tmp_path / name / "manifest.json").write_text(json_.dumps(
            {"key_digest": digest(key(vocab_map)), "top_k": 4, "num_examples": 4}))
        return str(tmp_path / name)

    def no_build():
        raise AssertionError("the cache was not found: a build started")

    monkeypatch.setattr(teacher_cache, "init_ray", no_build)
    kw = dict(top_k=4, tokenizer=str(tmp_path / "s"), max_source_length=16, max_target_length=8)
    found = teacher_cache.cache_logits(str(teacher_dir), str(data_dir), built("mine", kept), **kw)
    assert found["num_examples"] == 4
    for name, other in (("none", None), ("other", kept[:-1])):
        with pytest.raises(AssertionError, match="a build started"):
            teacher_cache.cache_logits(str(teacher_dir), str(data_dir), built(name, other), **kw)


def test_cli_make_student_trim_vocab(teacher_dir, data_dir, tmp_path, capsys):
    from raydistill.cli import main

    out = tmp_path / "student"
    assert main(["make-student", str(teacher_dir), "--save-path", str(out), "-e", "1", "-d", "1",
                 "--trim-vocab", str(data_dir), "--keep-vocab", "10"]) == 0
    kept = read_vocab_map(out)
    printed = capsys.readouterr().out
    assert f"vocabulary: {len(kept)} of {len(AutoTokenizer.from_pretrained(teacher_dir))}" in printed
    assert len(kept) < len(kept_token_ids(AutoTokenizer.from_pretrained(teacher_dir), data_dir))
    assert main(["make-student", str(teacher_dir), "--save-path", str(tmp_path / "x"),
                 "--keep-vocab", "10"]) == 2  # keep_vocab alone: a one-line error
    assert "keep_vocab needs trim_vocab" in capsys.readouterr().err


def test_config_trim_vocab_keys(tmp_path):
    from raydistill.config import DistillConfig
    from raydistill.errors import ConfigError

    base = dict(data_dir=str(tmp_path), output_dir=str(tmp_path / "o"), teacher="t")
    cfg = DistillConfig(method="sft", trim_vocab="d", keep_vocab=100, **base)
    assert (cfg.trim_vocab, cfg.keep_vocab) == ("d", 100)
    for method in ("kd", "gkd", "pl"):  # kd / gkd: the teacher's logits gathered to the kept ids
        assert DistillConfig(method=method, trim_vocab="d", **base).trim_vocab == "d"
    cached = {"temperature": 2.0, "is_caching_logits": True}  # keyed by the map; samples mapped
    assert DistillConfig(method="kd", trim_vocab="d", distillation=cached, **base).caches_logits
    assert DistillConfig(method="gkd", trim_vocab="d", gkd={"seq_kd": True},
                         **base).gkd_settings.seq_kd
    for bad, match in ((dict(method="sft", trim_vocab="d", student="s"), "make-student"),
                       (dict(method="sft", keep_vocab=5), "needs trim_vocab"),
                       (dict(method="sft", trim_vocab="d", keep_vocab=0), "N >= 1")):
        with pytest.raises(ConfigError, match=match):
            DistillConfig(**bad, **base)


def test_prepare_student_trims_and_records_the_map(teacher_dir, data_dir, tmp_path):
    from raydistill.config import DistillConfig
    from raydistill.train.run import prepare_student

    out = tmp_path / "run"
    out.mkdir()
    cfg = DistillConfig(method="sft", teacher=str(teacher_dir), data_dir=str(data_dir),
                        output_dir=str(out), student_decoder_layers=1, trim_vocab=str(data_dir))
    layers = prepare_student(cfg, out, resume=False)
    kept = read_vocab_map(out / "student")
    assert layers["vocab_map"] == kept and json.loads(
        (out / "student_layers.json").read_text())["vocab_map"] == kept
    assert len(AutoTokenizer.from_pretrained(out / "student")) == len(kept)
    # A run from that saved student carries its map along.
    out2 = tmp_path / "run2"
    out2.mkdir()
    cfg2 = DistillConfig(method="sft", student=str(out / "student"), data_dir=str(data_dir),
                         output_dir=str(out2))
    assert prepare_student(cfg2, out2, resume=False)["vocab_map"] == kept
    # An untrimmed run's student_layers.json is as before.
    out3 = tmp_path / "run3"
    out3.mkdir()
    cfg3 = DistillConfig(method="sft", teacher=str(teacher_dir), data_dir=str(data_dir),
                         output_dir=str(out3))
    assert "vocab_map" not in prepare_student(cfg3, out3, resume=False)


def test_trimmed_student_converts_to_ctranslate2(teacher_dir, data_dir, tmp_path):
    pytest.importorskip("ctranslate2")
    from raydistill.models.ct2 import generate_ct2, load_translator, prepare_backend
    from raydistill.models.generate import generate_local

    make_student(teacher_dir, e=1, d=1, save_path=tmp_path / "s", trim_vocab=data_dir)
    backend = prepare_backend(tmp_path / "s", "ctranslate2", "float32",
                              cache_dir=tmp_path / "ct2")
    assert backend.name == "ctranslate2"
    tok = AutoTokenizer.from_pretrained(tmp_path / "s")
    model = load_seq2seq(tmp_path / "s").eval()
    sources = [s for s, _ in TRAIN] + [t for _, t in TRAIN]
    hf = generate_local(model, tok, sources, num_beams=1, max_length=8, batch_size=4)
    ct = generate_ct2(load_translator(backend.ct2_dir), tok, sources,
                      generation_config=model.generation_config, num_beams=1, max_length=8,
                      batch_size=4)
    assert ct == hf
