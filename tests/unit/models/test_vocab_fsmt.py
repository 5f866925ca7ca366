"""FSMT's vocabulary trimming (models/vocab_fsmt.py): two vocabularies, trimmed apart, against
oracles: the full model restricted to the kept ids (float64), and the teacher's tokenizer
(through ``with_target_side``) mapped through each side's kept ids."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, FSMTConfig, FSMTForConditionalGeneration

from raydistill.data.tokenize import with_target_side
from raydistill.errors import ModelError
from raydistill.models.layers import load_seq2seq
from raydistill.models.vocab import (
    VOCAB_MAP_FILE,
    config_token_ids,
    read_source_map,
    read_vocab_map,
    trim_model,
    trim_vocab,
)
from raydistill.models.vocab_fsmt import fsmt_kept_ids, trim_fsmt_tokenizer

pytest.importorskip("sacremoses")

TRAIN = [
    ("the cat sat on the mat.", "die Katze sass auf der Matte."),
    ("a dog ran in the park.", "ein Hund lief im Park."),
    ("the dog looked at the cat.", "der Hund sah die Katze an."),
    ("birds sing in the morning.", "Voegel singen am Morgen."),
]
OTHER = [  # more text than the train split holds, so trimming removes tokens on both sides
    "quantum chromodynamics describes strong interactions between quarks and gluons.",
    "zebras graze peacefully while giraffes browse acacia leaves nearby.",
    "Schwere Zeiten verlangen kluge Entscheidungen und viel Geduld.",
    "jubilant xylophone players quickly vexed the wizard's sphinx.",
]


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    for split in ("train", "val", "test"):
        (d / f"{split}.source").write_text("".join(s + "\n" for s, _ in TRAIN))
        (d / f"{split}.target").write_text("".join(t + "\n" for _, t in TRAIN))
    return d


@pytest.fixture
def fsmt_dir(tmp_path):
    """A tiny FSMT tokenizer (en -> de) with merges learnt from Moses-tokenized text (words take
    several pieces) and one token set ordered differently on each side (other ids per side)."""
    from raydistill.models.scratch import train_fsmt_tokenizer

    sources = [s for s, _ in TRAIN] + [s for s in OTHER if not s[0].isupper()]
    targets = [t for _, t in TRAIN] + [s for s in OTHER if s[0].isupper()]
    train_fsmt_tokenizer(sources * 3, targets * 3, tmp_path / "fsmt")
    return tmp_path / "fsmt"


def fsmt_model(src_vocab: int = 300, tgt_vocab: int = 260, layers: int = 2, **kw):
    torch.manual_seed(0)
    cfg = FSMTConfig(langs=["en", "de"], src_vocab_size=src_vocab, tgt_vocab_size=tgt_vocab,
                     d_model=32, encoder_layers=layers, decoder_layers=layers,
                     encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=4,
                     decoder_attention_heads=4, max_position_embeddings=64,
                     pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                     forced_eos_token_id=2, **{"tie_word_embeddings": False, **kw})
    return FSMTForConditionalGeneration._from_config(cfg).double().eval()


def some_maps(model, seed: int = 0) -> tuple[list[int], list[int]]:
    """(source map, target map): different ids on each side, the specials 0..3 on both."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for size, step in ((model.config.src_vocab_size, 3), (model.config.tgt_vocab_size, 4)):
        extra = torch.randperm(size, generator=g)[:15].tolist()
        out.append(sorted(set(range(4)) | set(range(0, size, step)) | set(extra)
                          | config_token_ids(model)))
    return out[0], out[1]


@pytest.fixture
def fsmt64(monkeypatch):
    """FSMT's causal mask in float64 (built only with ``use_cache=False``, as training runs
    it): transformers fills it through float32 (``fill_with_neg_inf``, for fp16), which
    overflows with float64's minimum."""
    from transformers.models.fsmt import modeling_fsmt

    monkeypatch.setattr(modeling_fsmt, "fill_with_neg_inf",
                        lambda t: t.fill_(torch.finfo(t.dtype).min))


def restrict_output(model, kept: list[int]):
    """The full model with logits -inf outside the kept target ids."""
    mask = torch.full((model.config.tgt_vocab_size,), float("-inf"), dtype=torch.float64)
    mask[kept] = 0.0
    return model.model.decoder.output_projection.register_forward_hook(lambda m, i, out: out + mask)


# --- the model ------------------------------------------------------------------------------

def test_trimmed_logits_equal_full_logits_at_kept_target_ids(fsmt64):
    full = fsmt_model()
    src_map, tgt_map = some_maps(full)
    assert src_map != tgt_map
    trimmed = trim_model(full, tgt_map, source_new_to_old=src_map)
    g = torch.Generator().manual_seed(1)
    src = torch.tensor(src_map)[torch.randint(3, len(src_map), (2, 7), generator=g)]
    tgt = torch.tensor(tgt_map)[torch.randint(3, len(tgt_map), (2, 5), generator=g)]
    src[1, 5:] = full.config.pad_token_id
    mask = src.ne(full.config.pad_token_id).long()
    new = lambda t, m: t.clone().apply_(m.index)  # noqa: E731
    with torch.no_grad():
        a = full(input_ids=src, attention_mask=mask, decoder_input_ids=tgt,
                 output_hidden_states=True, use_cache=False)
        b = trimmed(input_ids=new(src, src_map), attention_mask=mask,
                    decoder_input_ids=new(tgt, tgt_map), output_hidden_states=True,
                    use_cache=False)
    for x, y in zip(a.encoder_hidden_states + a.decoder_hidden_states,
                    b.encoder_hidden_states + b.decoder_hidden_states, strict=True):
        assert torch.equal(x, y)
    assert b.logits.dtype == torch.float64 and b.logits.shape[-1] == len(tgt_map)
    # as in test_vocab.py: the same products, summed by BLAS in a shape-dependent order
    torch.testing.assert_close(b.logits, a.logits[..., tgt_map], rtol=0, atol=1e-13)


def test_sizes_ids_and_original_sizes():
    full = fsmt_model()
    src_map, tgt_map = some_maps(full)
    trimmed = trim_model(full, tgt_map, source_new_to_old=src_map)
    cfg = trimmed.config
    assert (cfg.src_vocab_size, cfg.tgt_vocab_size) == (len(src_map), len(tgt_map))
    assert (cfg.original_src_vocab_size, cfg.original_vocab_size) == (300, 260)
    assert trimmed.get_input_embeddings().weight.shape[0] == len(src_map)
    assert trimmed.model.decoder.embed_tokens.weight.shape[0] == len(tgt_map)
    assert torch.equal(trimmed.model.decoder.output_projection.weight,
                       full.model.decoder.output_projection.weight[tgt_map])
    for c_full, c_new in ((full.config, cfg), (full.generation_config, trimmed.generation_config)):
        for key in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
                    "forced_eos_token_id"):
            assert tgt_map[getattr(c_new, key)] == getattr(c_full, key), key
    with pytest.raises(ModelError, match="source_new_to_old"):
        trim_model(full, tgt_map)
    with pytest.raises(ModelError, match="pad id 1"):  # positions count from the pad id
        trim_model(full, [1, 2] + tgt_map[3:], source_new_to_old=src_map)


def test_tied_embeddings_need_one_map():
    full = fsmt_model(src_vocab=260, tie_word_embeddings=True)
    src_map, tgt_map = some_maps(full)
    with pytest.raises(ModelError, match="same map"):
        trim_model(full, tgt_map, source_new_to_old=src_map)
    trimmed = trim_model(full, tgt_map, source_new_to_old=tgt_map)
    assert trimmed.get_input_embeddings().weight.data_ptr() == \
        trimmed.model.decoder.embed_tokens.weight.data_ptr()


def test_tied_embeddings_with_two_different_vocabularies_are_refused(fsmt_dir, data_dir):
    tok = AutoTokenizer.from_pretrained(fsmt_dir)  # one token set, other ids on each side
    tied = fsmt_model(len(tok.encoder), len(tok.decoder), tie_word_embeddings=True)
    with pytest.raises(ModelError, match="two vocabularies differ"):
        fsmt_kept_ids(tied.config, tok, data_dir)


@pytest.mark.parametrize("beams", [1, 3])
def test_generation_equals_full_model_restricted_to_kept_ids(beams):
    full = fsmt_model()
    src_map, tgt_map = some_maps(full, seed=2)
    g = torch.Generator().manual_seed(3)
    src = torch.tensor(src_map)[torch.randint(4, len(src_map), (2, 6), generator=g)]
    gen = dict(num_beams=beams, do_sample=False, max_new_tokens=8, min_new_tokens=3,
               suppress_tokens=[full.config.pad_token_id])  # pad keeps its id: 1 on both
    with torch.no_grad():
        free = full.generate(input_ids=src, **gen)
    # so that the restriction matters: drop what the full model says unrestricted
    tgt_map = sorted((set(tgt_map) - set(free.flatten().tolist())) | set(range(4))
                     | config_token_ids(full))
    trimmed = trim_model(full, tgt_map, source_new_to_old=src_map)
    handle = restrict_output(full, tgt_map)
    try:
        with torch.no_grad():
            want = full.generate(input_ids=src, **gen)
    finally:
        handle.remove()
    with torch.no_grad():
        got = trimmed.generate(input_ids=src.clone().apply_(src_map.index), **gen)
    assert [[tgt_map[i] for i in row] for row in got.tolist()] == want.tolist()
    assert want.tolist() != free.tolist()


# --- the tokenizer --------------------------------------------------------------------------

def test_tokenizer_round_trip_over_the_train_split_on_both_sides(fsmt_dir, data_dir, tmp_path):
    full = with_target_side(AutoTokenizer.from_pretrained(fsmt_dir))
    model = fsmt_model(len(full.encoder), len(full.decoder))
    src_map, tgt_map = fsmt_kept_ids(model.config, full, data_dir,
                                     extra_ids=config_token_ids(model))
    assert len(src_map) < len(full.encoder) and len(tgt_map) < len(full.decoder)
    assert src_map != tgt_map
    trim_fsmt_tokenizer(full, src_map, tgt_map, tmp_path / "trimmed")
    trimmed = with_target_side(AutoTokenizer.from_pretrained(tmp_path / "trimmed"))
    assert (len(trimmed.encoder), len(trimmed.decoder)) == (len(src_map), len(tgt_map))
    for source, target in TRAIN:
        want, got = full(source)["input_ids"], trimmed(source)["input_ids"]
        assert got == [src_map.index(i) for i in want], source
        assert 3 not in want  # no <unk>: the train words are whole
        want, got = full(text_target=target)["input_ids"], trimmed(text_target=target)["input_ids"]
        assert got == [tgt_map.index(i) for i in want], target
        assert trimmed.decode(got) == full.decode(want)
        assert trimmed.decode(got, skip_special_tokens=True) == target
    for name in ("pad_token", "sep_token", "unk_token", "bos_token"):  # FSMT's eos is its sep
        assert trimmed.convert_ids_to_tokens(getattr(trimmed, name + "_id")) == \
            getattr(full, name) is not None
    # a word outside the train split falls apart into kept pieces, not <unk>
    text = "cats sang on docks"
    ids = trimmed(text)["input_ids"]
    assert trimmed.unk_token_id not in ids and len(ids) > len(full(text)["input_ids"])
    pieces = {i: t for t, i in trimmed.encoder.items()}  # decode() reads the target side
    assert "".join(pieces[i] for i in ids[:-1]).replace("</w>", " ").strip() == text


def test_keep_vocab_bounds_each_sides_data_tokens(fsmt_dir, data_dir, tmp_path):
    full = AutoTokenizer.from_pretrained(fsmt_dir)
    model = fsmt_model(len(full.encoder), len(full.decoder))
    every_src, every_tgt = fsmt_kept_ids(model.config, full, data_dir)
    src_map, tgt_map = fsmt_kept_ids(model.config, full, data_dir, keep_vocab=3)
    assert len(src_map) < len(every_src) and len(tgt_map) < len(every_tgt)
    trimmed = with_target_side(trim_fsmt_tokenizer(full, src_map, tgt_map, tmp_path / "few"))
    for source, target in TRAIN:  # smaller pieces, not <unk>; the same text back
        assert trimmed.unk_token_id not in trimmed(source)["input_ids"]
        labels = trimmed(text_target=target)["input_ids"]
        assert trimmed.unk_token_id not in labels
        assert trimmed.decode(labels, skip_special_tokens=True) == target
    with pytest.raises(ModelError, match="keep_vocab"):
        fsmt_kept_ids(model.config, full, data_dir, keep_vocab=0)


# --- both, saved ----------------------------------------------------------------------------

def test_trim_vocab_saves_a_model_tokenizer_and_both_maps(fsmt_dir, data_dir, tmp_path, fsmt64):
    tok = AutoTokenizer.from_pretrained(fsmt_dir)
    full = fsmt_model(len(tok.encoder), len(tok.decoder))
    trimmed, _, tgt_map = trim_vocab(full, tok, data_dir, save_path=tmp_path / "out")
    src_map = read_source_map(tmp_path / "out")
    assert read_vocab_map(tmp_path / "out") == tgt_map and src_map != tgt_map
    saved = json.loads((tmp_path / "out" / VOCAB_MAP_FILE).read_text())
    assert (saved["original_vocab_size"], saved["original_src_vocab_size"]) == \
        (len(tok.decoder), len(tok.encoder))
    loaded = load_seq2seq(tmp_path / "out").double().eval()
    new_tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    sources, targets = [s for s, _ in TRAIN], [t for _, t in TRAIN]
    batch = with_target_side(new_tok)(sources, text_target=targets, padding=True,
                                      return_tensors="pt")
    full_batch = with_target_side(tok)(sources, text_target=targets, padding=True,
                                       return_tensors="pt")
    with torch.no_grad():
        got = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     decoder_input_ids=batch["labels"][:, :4], use_cache=False).logits
        want = full(input_ids=full_batch["input_ids"], attention_mask=full_batch["attention_mask"],
                    decoder_input_ids=full_batch["labels"][:, :4],
                    use_cache=False).logits[..., tgt_map]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13)


def test_a_distill_run_makes_a_trimmed_fsmt_student_and_records_both_maps(fsmt_dir, data_dir,
                                                                          tmp_path):
    """make-student --trim-vocab from an FSMT teacher folder, through a run's prepare_student:
    student_layers.json holds the target map (vocab_map, what the losses gather) and the
    source map (source_vocab_map, what the teacher reads the inputs through)."""
    from raydistill.config import DistillConfig
    from raydistill.models.vocab import vocab_maps
    from raydistill.train.run import prepare_student

    tok = AutoTokenizer.from_pretrained(fsmt_dir)
    fsmt_model(len(tok.encoder), len(tok.decoder)).float().save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    out = tmp_path / "run"
    out.mkdir()
    cfg = DistillConfig(method="kd", teacher=str(tmp_path / "teacher"), data_dir=str(data_dir),
                        output_dir=str(out), student_encoder_layers=1,
                        student_decoder_layers=1, trim_vocab=str(data_dir))
    layers = prepare_student(cfg, out, resume=False)
    maps = vocab_maps(out / "student")
    assert set(maps) == {"vocab_map", "source_vocab_map"}
    assert layers["vocab_map"] == maps["vocab_map"] == read_vocab_map(out / "student")
    assert layers["source_vocab_map"] == maps["source_vocab_map"] != maps["vocab_map"]
    student = load_seq2seq(out / "student")
    assert (student.config.src_vocab_size, student.config.tgt_vocab_size) == \
        (len(maps["source_vocab_map"]), len(maps["vocab_map"]))
    assert student.config.encoder_layers == 1
    # a run from that saved student carries both maps along
    out2 = tmp_path / "run2"
    out2.mkdir()
    cfg2 = DistillConfig(method="kd", teacher=str(tmp_path / "teacher"),
                         student=str(out / "student"), data_dir=str(data_dir),
                         output_dir=str(out2))
    assert prepare_student(cfg2, out2, resume=False) == {"e_layer_ids": None,
                                                         "d_layer_ids": None, **maps}
