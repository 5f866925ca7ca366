"""Students made by copying teacher layers, for every supported architecture."""

from __future__ import annotations

import warnings

import pytest
import torch

from raydistill.errors import ModelError
from raydistill.models.layers import decoder_inputs, encoder_decoder_layers, layer_counts, load_seq2seq
from raydistill.models.scratch import ARCHITECTURES, new_model
from raydistill.models.student import (
    LAYERS_TO_COPY,
    get_layers_to_copy,
    get_layers_to_supervise,
    make_student,
)

VOCAB = 300


# --- tables -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_teacher, n_student, expected", [
    (12, 1, [11]), (16, 1, [15]), (6, 1, [5]), (4, 1, [3]), (1, 1, [0]), (12, 3, [0, 6, 11]), (12, 6, [0, 2, 4, 7, 9, 11]), (12, 9, [0, 1, 2, 4, 5, 7, 9, 10, 11]),
    (16, 4, [0, 5, 10, 15]), (16, 8, [0, 2, 4, 6, 8, 10, 12, 15]), (6, 2, [0, 5]), (6, 3, [0, 2, 5]),
])
def test_layers_to_copy_table(n_teacher, n_student, expected):
    assert get_layers_to_copy(n_student, n_teacher) == expected


def test_layers_to_copy_table_is_well_formed():
    """The original's table, one-layer rows included ([0]: get_layers_to_copy copies the last
    layer instead, on purpose)."""
    for n_teacher, row in LAYERS_TO_COPY.items():
        assert row[1] == [0]
        for n_student, layers in row.items():
            assert len(layers) == n_student and layers == sorted(set(layers))
            assert layers[0] == 0 and max(layers) < n_teacher


def test_layers_to_copy_fallback_and_errors():
    with pytest.warns(UserWarning, match="defaulting to first 2"):
        assert get_layers_to_copy(2, 4) == [0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_layers_to_copy(4, 4) == [0, 1, 2, 3]  # same depth: no warning
    with pytest.raises(ModelError, match="7-layer student from a 6-layer teacher"):
        get_layers_to_copy(7, 6)
    get_layers_to_copy(3, 12).append(99)  # returns a copy: the table is not mutated
    assert LAYERS_TO_COPY[12][3] == [0, 6, 11]


def test_layers_to_supervise_rules():
    assert get_layers_to_supervise(3, 12) == [3, 7, 11]
    assert get_layers_to_supervise(4, 16) == [4, 9, 12, 15]
    assert get_layers_to_supervise(2, 6) == [3, 5]
    assert get_layers_to_supervise(5, 5) == [0, 1, 2, 3, 4]
    assert get_layers_to_supervise(1, 7) == [6]
    with pytest.raises(ModelError, match="student 7 > teacher 6"):
        get_layers_to_supervise(7, 6)
    with pytest.raises(ModelError, match="teacher 12 -> student 5"):
        get_layers_to_supervise(5, 12)


# --- make_student on every architecture ---------------------------------------------------------

@pytest.fixture(scope="module")
def teachers():
    torch.manual_seed(0)
    return {a: new_model(a, VOCAB, encoder_layers=6, decoder_layers=6, attn_implementation="eager").eval()
            for a in ARCHITECTURES}


def _equal_modules(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _assert_copied(teacher, student, e_layers, d_layers):
    (t_enc, t_dec), (s_enc, s_dec) = encoder_decoder_layers(teacher), encoder_decoder_layers(student)
    for s_layers, t_layers, chosen in ((s_enc, t_enc, e_layers), (s_dec, t_dec, d_layers)):
        assert len(s_layers) == len(chosen)
        for s_i, t_i in enumerate(chosen):
            s_sd, t_sd = s_layers[s_i].state_dict(), t_layers[t_i].state_dict()
            for k, v in s_sd.items():
                if "relative_attention_bias" not in k:  # T5: checked on its own below
                    assert torch.equal(v, t_sd[k]), (s_i, t_i, k)
    # Everything outside the layer stacks (embeddings, norms, heads, biases) is the teacher's.
    t_sd = teacher.state_dict()
    layer_prefixes = ("layers.", "layer.", "block.")
    for k, v in student.state_dict().items():
        if not any(p in k for p in layer_prefixes):
            assert torch.equal(v, t_sd[k]), k


def _run(student):
    x = torch.randint(4, VOCAB, (2, 7))
    labels = torch.randint(4, VOCAB, (2, 5))
    labels[:, -1] = 2
    logits = student(input_ids=x, decoder_input_ids=decoder_inputs(student, labels)).logits
    assert logits.shape[:2] == (2, 5) and torch.isfinite(logits).all()
    generated = student.generate(x, max_new_tokens=3, num_beams=1, do_sample=False)
    assert generated.shape[0] == 2


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_student_copies_chosen_layers(teachers, arch):
    teacher = teachers[arch]
    student, e_layers, d_layers = make_student(teacher, e=3, d=2)
    assert (e_layers, d_layers) == ([0, 2, 5], [0, 5])
    assert layer_counts(student) == (3, 2) and layer_counts(teacher) == (6, 6)
    assert type(student) is type(teacher)
    assert student.config._attn_implementation == teacher.config._attn_implementation
    assert student.config.init_metadata == {
        "teacher_type": teacher.config.model_type, "copied_encoder_layers": [0, 2, 5],
        "copied_decoder_layers": [0, 5]}
    assert student.generation_config.to_dict() == teacher.generation_config.to_dict()
    _assert_copied(teacher, student, e_layers, d_layers)
    _run(student.eval())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_none_keeps_side_whole(teachers, arch):
    teacher = teachers[arch]
    student, e_layers, d_layers = make_student(teacher, d=1)
    assert layer_counts(student) == (6, 1)
    assert (e_layers, d_layers) == (list(range(6)), [5])  # one layer: the teacher's last
    _assert_copied(teacher, student, e_layers, d_layers)


@pytest.mark.parametrize("e_layers", [[0, 3], [1, 4]])
def test_t5_relative_attention_bias_kept(teachers, e_layers):
    """T5's position bias lives in block 0 only; the student keeps the teacher's either way."""
    teacher = teachers["t5"]
    student, _, _ = make_student(teacher, e_layers_to_copy=e_layers, d=2)
    assert layer_counts(student) == (2, 2)
    for side in ("encoder", "decoder"):
        t_bias = getattr(teacher, side).block[0].layer[0].SelfAttention.relative_attention_bias.weight
        s_bias = getattr(student, side).block[0].layer[0].SelfAttention.relative_attention_bias.weight
        assert torch.equal(s_bias, t_bias)
    _assert_copied(teacher, student, e_layers, [0, 5])
    _run(student.eval())


def test_copy_first_and_explicit_layers(teachers):
    teacher = teachers["bart"]
    student, e_layers, d_layers = make_student(teacher, e=2, d=3, copy_first_teacher_layers=True)
    assert (e_layers, d_layers) == ([0, 1], [0, 1, 2])
    _assert_copied(teacher, student, e_layers, d_layers)
    student, e_layers, d_layers = make_student(teacher, e_layers_to_copy=[5, 1], d_layers_to_copy=[3])
    assert layer_counts(student) == (2, 1)
    _assert_copied(teacher, student, [5, 1], [3])


def test_extra_config_kwargs(teachers):
    teacher = teachers["bart"]
    before = teacher.config.to_dict()
    student, _, _ = make_student(teacher, e=1, d=1, dropout=0.0, activation_dropout=0.05)
    assert student.config.dropout == 0.0 and student.config.activation_dropout == 0.05
    assert teacher.config.to_dict() == before  # the teacher's config is never mutated


def test_cli_make_student_copies_the_layers_it_is_given(tiny_bart_dir, tmp_path, capsys):
    """seq2seq-distillation's make_student arguments: d_layers_to_copy (fire's [i,j] spelling
    too), e_layers_to_copy, copy_first_teacher_layers; the student's layers are those copies."""
    import json

    from raydistill.cli import main

    teacher = load_seq2seq(tiny_bart_dir)
    out = tmp_path / "student"
    assert main(["make-student", str(tiny_bart_dir), "--save-path", str(out),
                 "--e-layers-to-copy", "3,1", "--d_layers_to_copy", "[2]"]) == 0
    assert "copied encoder layers [3, 1], decoder layers [2]" in capsys.readouterr().out
    student = load_seq2seq(out)
    for side, pairs in (("encoder", ((0, 3), (1, 1))), ("decoder", ((0, 2),))):
        for mine, theirs in pairs:
            got = getattr(student.model, side).layers[mine].state_dict()
            want = getattr(teacher.model, side).layers[theirs].state_dict()
            assert all(torch.equal(got[k], want[k]) for k in want)
    meta = json.loads((out / "config.json").read_text())["init_metadata"]
    assert meta["copied_encoder_layers"] == [3, 1] and meta["copied_decoder_layers"] == [2]
    assert main(["make-student", str(tiny_bart_dir), "--save-path", str(tmp_path / "first"),
                 "-d", "2", "--copy-first-teacher-layers"]) == 0
    assert "decoder layers [0, 1]" in capsys.readouterr().out
    assert main(["make-student", str(tiny_bart_dir), "--save-path", str(tmp_path / "one"),
                 "-d", "1"]) == 0  # the default one-layer choice differs from the original's
    printed = capsys.readouterr().out
    assert "decoder layers [3]" in printed
    assert "one decoder layer: the teacher's last, where seq2seq-distillation's table" in printed
    assert main(["make-student", str(tiny_bart_dir), "--save-path", str(tmp_path / "x"),
                 "--d-layers-to-copy", "7"]) == 2  # past the teacher's layers: one line
    assert "decoder layers to copy [7]" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # not integers: argparse's usage error
        main(["make-student", str(tiny_bart_dir), "--save-path", str(tmp_path / "y"),
              "--d-layers-to-copy", "a,b"])
    assert "give layer indices as 0,2,5" in capsys.readouterr().err


def test_make_student_errors(teachers):
    teacher = teachers["bart"]
    with pytest.raises(ModelError, match="7-layer student from a 6-layer teacher"):
        make_student(teacher, e=7)
    with pytest.raises(ModelError, match="encoder layers to copy"):
        make_student(teacher, e=2, e_layers_to_copy=[0, 1, 2])
    with pytest.raises(ModelError, match="decoder layers to copy"):
        make_student(teacher, d_layers_to_copy=[0, 6])
    with pytest.raises(ModelError, match="PreTrainedModel or a path"):
        make_student(object(), e=1)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_round_trip(teachers, arch, tmp_path):
    student, _, _ = make_student(teachers[arch], e=2, d=1, save_path=tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = load_seq2seq(tmp_path)
    assert type(reloaded) is type(student)
    assert layer_counts(reloaded) == (2, 1)
    assert reloaded.config.init_metadata["copied_encoder_layers"] == [0, 5]
    assert _equal_modules(reloaded, student)


def test_teacher_path_saves_tokenizer(tiny_bart_dir, tiny_tokenizer, tmp_path):
    with pytest.warns(UserWarning, match="defaulting to first"):
        student, e_layers, d_layers = make_student(str(tiny_bart_dir), e=2, d=1, save_path=tmp_path / "s")
    # 4 -> 2 is not in the table: the first layers; one layer: the last
    assert (e_layers, d_layers) == ([0, 1], [3])
    assert (tmp_path / "s" / "model.safetensors").is_file()
    assert (tmp_path / "s" / "tokenizer.json").is_file()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "s")
    assert tok("the cat").input_ids == tiny_tokenizer("the cat").input_ids
    _assert_copied(load_seq2seq(tiny_bart_dir), load_seq2seq(tmp_path / "s"), e_layers, d_layers)


def test_teacher_path_without_tokenizer_warns(teachers, tmp_path):
    teachers["marian"].save_pretrained(tmp_path / "teacher")  # weights only, no tokenizer
    with pytest.warns(UserWarning, match="without a tokenizer"):
        make_student(tmp_path / "teacher", e=1, save_path=tmp_path / "s")
    assert (tmp_path / "s" / "model.safetensors").is_file()
