"""Hub ids wherever a model goes (raydistill.hub): resolution from an on-disk Hub cache, the
one-line errors, and what each stage records. Nothing here touches the network: the cache is
built on disk (tests/conftest.py ``hub_cache``) and HF_HUB_OFFLINE=1; the online error rows
stand in ``snapshot_download`` for the Hub's answers."""

from __future__ import annotations

import importlib
import json

import httpx2
import pytest

from raydistill import hub
from raydistill.cli import main
from raydistill.config import DistillConfig
from raydistill.errors import ModelError
HUB_ID, HUB_COMMIT = "org/tiny-bart", "0123456789abcdef0123456789abcdef01234567"  # conftest's
evaluate_module = importlib.import_module("raydistill.eval.evaluate")
# evaluate() imports generate_parallel from here when it runs (the CLI's parser needs no torch)
generate_module = importlib.import_module("raydistill.models.generate")


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


def test_local_folder_passes_through(tiny_bart_dir):
    found = hub.resolve_model(tiny_bart_dir, "teacher")
    assert found == hub.ResolvedModel(path=str(tiny_bart_dir), ref=str(tiny_bart_dir))
    assert found.id is None and found.commit is None


def test_hub_id_resolves_to_its_snapshot_from_the_cache(hub_cache, hub_snapshot):
    found = hub.resolve_model(HUB_ID, "teacher")
    assert found.path == str(hub_snapshot)
    assert (found.id, found.revision, found.commit) == (HUB_ID, None, HUB_COMMIT)
    assert found.record() == {"path": str(hub_snapshot), "ref": HUB_ID, "id": HUB_ID,
                              "revision": None, "commit": HUB_COMMIT}
    # Pinned: by branch (refs/<branch>) or by commit.
    for revision in ("main", HUB_COMMIT):
        pinned = hub.resolve_model(f"{HUB_ID}@{revision}", "teacher")
        assert (pinned.path, pinned.revision, pinned.commit) == (str(hub_snapshot), revision,
                                                                 HUB_COMMIT)
    assert hub.snapshot_identity(found.path) == (HUB_ID, HUB_COMMIT)
    assert hub.snapshot_identity(hub_snapshot.parent) is None


def test_model_cache_dir_wins_over_hf_hub_cache(hub_cache, hub_snapshot, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    with pytest.raises(ModelError, match="not in the Hub cache"):
        hub.resolve_model(HUB_ID, "teacher")
    assert hub.resolve_model(HUB_ID, "teacher", cache_dir=hub_cache).path == str(hub_snapshot)


def test_offline_without_a_cached_copy_names_the_variable(hub_cache):
    with pytest.raises(ModelError) as err:
        hub.resolve_model("org/absent", "teacher")
    msg = _one_line(err.value)
    assert msg.startswith("teacher: org/absent") and "HF_HUB_OFFLINE=1" in msg
    assert "unset HF_HUB_OFFLINE" in msg and str(hub_cache) in msg


@pytest.mark.parametrize("ref, needle", [
    ("org/bad--name", "not a valid Hub id"),
    ("org/name@", "no revision"),
    ("org/na me", "not a valid Hub id"),
])
def test_malformed_id(hub_cache, ref, needle):
    with pytest.raises(ModelError, match=needle) as err:
        hub.resolve_model(ref, "student")
    assert _one_line(err.value).startswith("student: ")


def test_missing_local_path_is_not_tried_on_the_hub(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        hub.resolve_model(tmp_path / "no_model", "teacher")
    with pytest.raises(ModelError, match="does not exist"):
        hub.resolve_model("runs/a/b", "teacher")  # two slashes: a path, never a Hub id


def _hub_error(cls, status: int):
    response = httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/x"))
    return cls(f"{status} Client Error", response=response)


@pytest.mark.parametrize("error, needles", [
    ("gated", ["gated", "HF_TOKEN", "huggingface-cli login", "https://huggingface.co/org/name"]),
    ("missing", ["no such model exists on the Hub", "HF_TOKEN", "huggingface-cli login"]),
    ("revision", ["revision 'v9' does not exist"]),
])
def test_online_errors_are_one_line(monkeypatch, error, needles):
    """The Hub's answers (stood in here) -> one line each, saying what to do."""
    from huggingface_hub import errors as hf_errors

    raised = {"gated": _hub_error(hf_errors.GatedRepoError, 403),
              "missing": _hub_error(hf_errors.RepositoryNotFoundError, 401),
              "revision": _hub_error(hf_errors.RevisionNotFoundError, 404)}[error]

    def fake_download(repo_id, **kwargs):
        assert kwargs["local_files_only"] is False  # online: the Hub is asked
        raise raised

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_download)
    with pytest.raises(ModelError) as err:
        hub.resolve_model("org/name@v9" if error == "revision" else "org/name", "teacher")
    msg = _one_line(err.value)
    for needle in needles:
        assert needle in msg, (needle, msg)


def _cached_repo(cache, name: str, files: dict[str, bytes]) -> None:
    repo = cache / f"models--org--{name}"
    (repo / "snapshots" / HUB_COMMIT).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HUB_COMMIT)
    for fname, data in files.items():
        (repo / "snapshots" / HUB_COMMIT / fname).write_bytes(data)


def test_repo_without_seq2seq_weights(hub_cache, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    _cached_repo(cache, "bert", {"config.json": b'{"model_type": "bert"}',
                                 "model.safetensors": b"x"})
    _cached_repo(cache, "tf-only", {"config.json": b'{"model_type": "bart"}',
                                    "tf_model.h5": b"x"})
    with pytest.raises(ModelError, match="'bert' model, not a seq2seq") as err:
        hub.resolve_model("org/bert", "teacher")
    _one_line(err.value)
    with pytest.raises(ModelError, match="no PyTorch weights") as err:
        hub.resolve_model("org/tf-only", "teacher")
    assert "unset it" in _one_line(err.value)  # offline: the weights may just not be cached


def test_driver_resolves_once_into_a_frozen_copy(hub_cache, hub_snapshot, tiny_data_dir, tmp_path):
    from raydistill.train.run import resolve_models

    cfg = DistillConfig(method="kd", teacher=HUB_ID, student=f"{HUB_ID}@main",
                        data_dir=str(tiny_data_dir), output_dir=str(tmp_path / "out"))
    resolved, records = resolve_models(cfg)
    assert cfg.teacher == HUB_ID  # the original is untouched
    assert resolved.teacher == resolved.student == str(hub_snapshot)
    assert resolved.replace(teacher=HUB_ID) == cfg.replace(student=str(hub_snapshot))
    assert records["teacher"]["commit"] == records["student"]["commit"] == HUB_COMMIT
    assert records["student"]["revision"] == "main"
    many, records = resolve_models(cfg.replace(teachers=[HUB_ID, str(hub_snapshot)], student=None))
    assert many.teachers == [str(hub_snapshot)] * 2
    # A snapshot folder passed as a path is recognised as the same Hub model and commit.
    assert [(r["ref"], r["id"], r["commit"]) for r in records["teachers"]] == [
        (HUB_ID, HUB_ID, HUB_COMMIT), (str(hub_snapshot), HUB_ID, HUB_COMMIT)]


def test_resume_refuses_a_hub_id_that_moved(hub_cache, tiny_data_dir, tmp_path):
    from raydistill.errors import ConfigError
    from raydistill.train.run import check_same_models, resolve_models

    cfg = DistillConfig(method="kd", teacher=HUB_ID, data_dir=str(tiny_data_dir),
                        output_dir=str(tmp_path))
    _, models = resolve_models(cfg)
    check_same_models(tmp_path, models)  # no earlier run: nothing to compare
    (tmp_path / "hparams.json").write_text(json.dumps({"models": models}))
    check_same_models(tmp_path, models)  # the same commit
    moved = {"teacher": {**models["teacher"], "commit": "a" * 40}}
    (tmp_path / "hparams.json").write_text(json.dumps({"models": moved}))
    with pytest.raises(ConfigError, match=f"pin it with teacher={HUB_ID}@{'a' * 40}"):
        check_same_models(tmp_path, models)


def test_make_student_cli_from_a_hub_id(hub_cache, tmp_path, capsys):
    from raydistill.models.layers import layer_counts, load_seq2seq

    out = tmp_path / "dbart_2_1"
    # The seq2seq README's line, verbatim but for the id: make_student.py ID --save_path P -e -d
    assert main(["make-student", HUB_ID, "--save_path", str(out), "-e", "2", "-d", "1"]) == 0
    assert f"student saved to {out}" in capsys.readouterr().out
    student = load_seq2seq(out)
    assert layer_counts(student) == (2, 1) and (out / "tokenizer.json").is_file()
    meta = student.config.init_metadata
    assert (meta["teacher"], meta["teacher_commit"]) == (HUB_ID, HUB_COMMIT)


def test_load_seq2seq_takes_a_hub_id(hub_cache):
    from raydistill.models.layers import load_seq2seq

    assert type(load_seq2seq(HUB_ID)).__name__ == "BartForConditionalGeneration"


def test_evaluate_gives_the_actors_the_snapshot_and_records_the_commit(
        hub_cache, hub_snapshot, tiny_data_dir, tmp_path, monkeypatch):
    seen = {}

    def fake_generate(model_dir, sources, **kw):
        seen["model_dir"] = model_dir
        return [s.split()[1] + " ." for s in sources], 0.1

    monkeypatch.setattr(generate_module, "generate_parallel", fake_generate)
    with pytest.raises(Exception, match="out_dir"):  # no folder to write beside
        evaluate_module.evaluate(HUB_ID, tiny_data_dir)
    results = evaluate_module.evaluate(HUB_ID, tiny_data_dir, out_dir=tmp_path / "ev")
    assert seen["model_dir"] == str(hub_snapshot)
    assert (results["model_dir"], results["model_id"], results["model_commit"]) == (
        HUB_ID, HUB_ID, HUB_COMMIT)


def test_pseudo_label_records_id_and_commit(hub_cache, hub_snapshot, tiny_data_dir, tmp_path,
                                            monkeypatch):
    import numpy as np

    from raydistill.models import pseudo_label as pl

    seen = {}

    def fake_generate(rows, settings, num_workers=1, num_gpus=0.0, backend=None):
        seen.update(settings)
        yield {"id": rows["id"], "prediction": np.array(["x ."] * len(rows["id"]), dtype=object),
               "score": np.zeros(len(rows["id"]), dtype=np.float32)}

    monkeypatch.setattr(pl, "generate_batches", fake_generate)
    report = pl.pseudo_label(HUB_ID, str(tiny_data_dir), str(tmp_path / "pl"), num_beams=1)
    assert seen["teacher"] == str(hub_snapshot) and seen["teacher_dtype"] == "auto"
    saved = json.loads((tmp_path / "pl" / "pseudo_label.json").read_text())
    assert saved == report
    assert (saved["teacher_id"], saved["teacher_commit"]) == (HUB_ID, HUB_COMMIT)


def test_logit_cache_key_holds_id_and_commit(hub_cache, hub_snapshot, tiny_bart_dir,
                                             tiny_data_dir, tmp_path):
    """A cache built from one revision is never reused for another, even with equal weights."""
    import shutil

    from raydistill.data.fingerprint import digest
    from raydistill.models.teacher_cache import cache_key

    def key(teacher, **kw):
        return cache_key([str(teacher)], str(tiny_bart_dir), str(tiny_data_dir),
                         max_source_length=32, max_target_length=8, **kw)

    local = key(tiny_bart_dir)
    assert "teacher_hub" not in local and "teacher_dtype" not in local  # as before this key
    from_hub = key(hub.resolve_path(HUB_ID))
    assert from_hub["teacher_hub"] == [{"id": HUB_ID, "commit": HUB_COMMIT}]
    assert from_hub["teachers"] == local["teachers"]  # same files, so only the commit differs
    other = hub_snapshot.parent / ("f" * 40)
    shutil.copytree(hub_snapshot, other)
    assert digest(key(other)) != digest(from_hub)
    assert key(tiny_bart_dir, teacher_dtype="bf16")["teacher_dtype"] == "bf16"


def test_offline_is_the_users_choice(monkeypatch):
    """Neither the CLI nor the workers' environment forces HF_HUB_OFFLINE."""
    import ray

    import raydistill.cli
    from raydistill import runtime as run

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    importlib.reload(raydistill.cli)
    import os

    assert "HF_HUB_OFFLINE" not in os.environ
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw["runtime_env"]["env_vars"]))
    monkeypatch.setattr(run, "quiet_ray_data", lambda: None)
    run.init_ray()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    run.init_ray()
    assert "HF_HUB_OFFLINE" not in calls[0] and calls[1]["HF_HUB_OFFLINE"] == "0"
