"""The bad-input table: each row through the CLI gives exit code 2, one line on stderr naming the
file/line or key and the fix, and Ray is never started."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from raydistill.cli import main
from raydistill.models.scratch import new_model, save_model_and_tokenizer

GOOD_LINES = ["the cat sat on the mat .", "a dog ran in the park .", "birds sing ."]


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    for split in ("train", "val", "test"):
        (d / f"{split}.source").write_text("\n".join(GOOD_LINES) + "\n")
        (d / f"{split}.target").write_text("\n".join(s.split()[1] for s in GOOD_LINES) + "\n")
    return d


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_tokenizer):
    torch.manual_seed(0)
    model = new_model("bart", len(tiny_tokenizer), encoder_layers=2, decoder_layers=2)
    return save_model_and_tokenizer(model, tiny_tokenizer, tmp_path_factory.mktemp("teacher"))


@pytest.fixture
def ray_starts(monkeypatch):
    """Records every attempt to start or join Ray (other tests may have one running already)."""
    import ray

    calls = []
    monkeypatch.setattr(ray, "init", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    return calls


@pytest.fixture
def run_cli(capsys, ray_starts):
    def run(args):
        capsys.readouterr()  # drop what the fixtures printed
        code = main(args)
        err = capsys.readouterr().err.strip()
        assert ray_starts == [], "the check must run before Ray starts"
        return code, err

    return run


@pytest.fixture
def distill(tmp_path, run_cli):
    def run(config: dict, *extra):
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config))
        return run_cli(["distill", str(path), *extra])

    return run


def base(data_dir, teacher_dir, tmp_path, **changes):
    return {"method": "kd", "teacher": str(teacher_dir), "data_dir": str(data_dir),
            "output_dir": str(tmp_path / "out"), **changes}


def assert_one_line(code, err, *needles):
    assert code == 2, err
    assert "\n" not in err and err.startswith("raydistill distill: error:"), err
    for n in needles:
        assert n in err, (n, err)


def test_data_folder_missing(tmp_path, teacher_dir, distill, run_cli):
    code, err = distill(base(tmp_path / "nope", teacher_dir, tmp_path))
    assert_one_line(code, err, str(tmp_path / "nope"))


def test_split_missing_names_the_files(tmp_path, data_dir, teacher_dir, distill, run_cli):
    (data_dir / "val.source").unlink()
    (data_dir / "val.target").unlink()
    code, err = distill(base(data_dir, teacher_dir, tmp_path))
    assert_one_line(code, err, str(data_dir), "val.source")


def test_line_count_mismatch_names_both_files_and_counts(tmp_path, data_dir, teacher_dir, distill, run_cli):
    (data_dir / "train.target").write_text("one\ntwo\n")
    code, err = distill(base(data_dir, teacher_dir, tmp_path))
    assert_one_line(code, err, "train.source", "train.target", "3", "2")


@pytest.mark.parametrize("content,needle", [(b"", "empty"), (b"a\n\nb\n", ":2:"),
                                            (b"ok\nbad \xff byte\nok\n", ":2:")])
def test_empty_blank_and_non_utf8_name_file_and_line(tmp_path, data_dir, teacher_dir, distill, run_cli,
                                                    content, needle):
    (data_dir / "train.source").write_bytes(content)
    code, err = distill(base(data_dir, teacher_dir, tmp_path))
    assert_one_line(code, err, "train.source", needle)


@pytest.mark.parametrize("line,needle", [("{not json", "not valid JSON"), ('{"source": "x"}', "target")])
def test_jsonl_bad_line_or_missing_key(tmp_path, data_dir, teacher_dir, distill, run_cli, line, needle):
    (data_dir / "train.source").unlink()
    (data_dir / "train.target").unlink()
    (data_dir / "train.jsonl").write_text('{"source": "a", "target": "b"}\n' + line + "\n")
    code, err = distill(base(data_dir, teacher_dir, tmp_path))
    assert_one_line(code, err, "train.jsonl:2", needle)


def test_yaml_that_does_not_parse_names_line_and_column(tmp_path, distill, run_cli):
    path = tmp_path / "bad.yaml"
    path.write_text("method: kd\nteacher: [x\n")
    code, err = run_cli(["distill", str(path)])
    assert_one_line(code, err, str(path), ":3:")


def test_unknown_key_suggests_closest(tmp_path, data_dir, teacher_dir, distill, run_cli):
    code, err = distill(base(data_dir, teacher_dir, tmp_path, alpha_hd=1.0))
    assert_one_line(code, err, "'alpha_hd'", "'alpha_hid'")


@pytest.mark.parametrize("changes,needles", [
    ({"temperature": -2.0}, ["temperature=-2.0", "> 0"]),
    ({"train_batch_size": 0}, ["train_batch_size=0", ">= 1"]),
    ({"alpha_ce": 0, "alpha_mlm": 0, "alpha_hid": 0}, ["all 0"]),
    ({"val_check_interval": 2}, ["val_check_interval=2", "(0, 1]"]),
])
def test_wrong_values_name_key_value_and_range(tmp_path, data_dir, teacher_dir, distill, run_cli, changes, needles):
    code, err = distill(base(data_dir, teacher_dir, tmp_path, **changes))
    assert_one_line(code, err, *needles)


def test_teacher_path_missing_or_without_model(tmp_path, data_dir, distill, run_cli):
    code, err = distill(base(data_dir, tmp_path / "no_teacher", tmp_path))
    assert_one_line(code, err, str(tmp_path / "no_teacher"), "does not exist")
    empty = tmp_path / "empty_model"
    empty.mkdir()
    code, err = distill(base(data_dir, empty, tmp_path))
    assert_one_line(code, err, str(empty), "holds no model")


def test_student_deeper_than_teacher(tmp_path, data_dir, teacher_dir, distill, run_cli):
    code, err = distill(base(data_dir, teacher_dir, tmp_path, student_decoder_layers=5))
    assert_one_line(code, err, "student_decoder_layers=5", "2 layers")


def test_intermediate_match_layer_out_of_range(tmp_path, data_dir, teacher_dir, distill, run_cli):
    match = {"layer_T": 9, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
    code, err = distill(base(data_dir, teacher_dir, tmp_path,
                                               distillation={"intermediate_matches": [match]}))
    assert_one_line(code, err, "intermediate_matches[0]", "layer_T=9", "6 entries")


def test_negative_match_layer_counts_from_the_end(tmp_path, data_dir, teacher_dir, distill,
                                                  run_cli):
    match = {"layer_T": -7, "layer_S": -1, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
    code, err = distill(base(data_dir, teacher_dir, tmp_path,
                             distillation={"intermediate_matches": [match]}))
    assert_one_line(code, err, "intermediate_matches[0]", "layer_T=-7", "-6..-1 from the end")
    # In range from the end: the preflight passes, and a logit cache keeps entry 0.
    from transformers import AutoConfig

    from raydistill.config import DistillConfig
    from raydistill.models.teacher_cache import cached_hidden_layers
    from raydistill.distill.textbrewer import DistillationConfig
    from raydistill.models.layers import layer_counts
    from raydistill.train.preflight import check_models

    dist = {"is_caching_logits": True, "intermediate_matches": [{**match, "layer_T": -6}]}
    check_models(DistillConfig.from_dict(base(data_dir, teacher_dir, tmp_path, distillation=dist)))
    counts = layer_counts(AutoConfig.from_pretrained(teacher_dir))
    assert cached_hidden_layers(DistillationConfig.from_dict(dist), counts) == [0]


def test_projection_dims_that_do_not_match(tmp_path, data_dir, teacher_dir, distill, run_cli):
    match = {"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
             "proj": ["linear", 32, 64]}
    code, err = distill(base(data_dir, teacher_dir, tmp_path,
                                               distillation={"intermediate_matches": [match]}))
    assert_one_line(code, err, "intermediate_matches[0]", "student hidden size 64", "teacher hidden size 64")


def test_different_vocabularies_name_both_sizes(tmp_path, data_dir, teacher_dir, distill, run_cli, tiny_tokenizer):
    other = save_model_and_tokenizer(new_model("bart", 400, encoder_layers=2, decoder_layers=1),
                                     tiny_tokenizer, tmp_path / "student")
    code, err = distill(base(data_dir, teacher_dir, tmp_path, student=str(other)))
    vocab = json.loads((Path(teacher_dir) / "config.json").read_text())["vocab_size"]
    assert_one_line(code, err, "vocabularies differ", str(vocab), "400")


def test_output_dir_not_empty_is_refused(tmp_path, data_dir, teacher_dir, distill, run_cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    code, err = distill(base(data_dir, teacher_dir, tmp_path))
    assert_one_line(code, err, str(out), "--resume", "--overwrite")
    assert (out / "metrics.json").read_text() == "{}"  # nothing touched


def test_make_student_and_evaluate_errors_are_one_line(tmp_path, data_dir, teacher_dir, distill, run_cli):
    code, err = run_cli(["make-student", str(tmp_path / "none"), "--save-path", str(tmp_path / "s")])
    assert code == 2 and "\n" not in err and "does not exist" in err
    code, err = run_cli(["make-student", str(teacher_dir), "--save-path", str(tmp_path / "s"), "-d", "9"])
    assert code == 2 and "\n" not in err and "9" in err
    code, err = run_cli(["evaluate", "--model", str(tmp_path / "none"), "--data-dir", str(data_dir)])
    assert code == 2 and "\n" not in err and str(tmp_path / "none") in err


def test_debug_shows_the_traceback(tmp_path, capsys):
    from raydistill.errors import ConfigError

    with pytest.raises(ConfigError):
        main(["--debug", "distill", str(tmp_path / "missing.yaml")])


def test_hub_id_rows_stop_before_ray(tmp_path, data_dir, hub_cache, distill, run_cli):
    """Hub ids: one line each, exit 2, Ray never started (offline, on-disk cache: no network)."""
    code, err = distill(base(data_dir, "org/absent", tmp_path))
    assert_one_line(code, err, "teacher: org/absent", "HF_HUB_OFFLINE=1", "unset HF_HUB_OFFLINE")
    code, err = distill(base(data_dir, "org/tiny-bart", tmp_path, student="org/bad--id"))
    assert_one_line(code, err, "student: 'org/bad--id'", "not a valid Hub id")
    code, err = distill(base(data_dir, "org/tiny-bart", tmp_path, teachers=["org/tiny-bart", "x/y@"]))
    assert_one_line(code, err, "teachers[1]", "no revision")
    code, err = run_cli(["make-student", "org/absent", "--save-path", str(tmp_path / "s")])
    assert code == 2 and "\n" not in err and "org/absent" in err and "HF_HUB_OFFLINE" in err
    code, err = run_cli(["evaluate", "--model", "org/absent", "--data-dir", str(data_dir),
                         "--out-dir", str(tmp_path / "ev")])
    assert code == 2 and "\n" not in err and "org/absent" in err and "HF_HUB_OFFLINE" in err
