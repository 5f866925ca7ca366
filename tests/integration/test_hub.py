"""Hub ids end to end on local Ray, from an on-disk Hub cache with HF_HUB_OFFLINE=1 (no
network): a 1-worker ``distill`` with ``teacher: org/tiny-bart`` (in bf16 on the CPU worker),
and ``raydistill evaluate --model org/tiny-bart``."""

from __future__ import annotations

import json

import pytest

from raydistill.cli import main
from raydistill.config import DistillConfig
from raydistill.pipeline import run_distill

pytestmark = pytest.mark.integration
HUB_ID, HUB_COMMIT = "org/tiny-bart", "0123456789abcdef0123456789abcdef01234567"  # conftest's


@pytest.mark.timeout(600)
def test_distill_from_a_hub_id(ray_session, hub_cache, hub_snapshot, tiny_data_dir, tmp_path):
    out = tmp_path / "kd"
    cfg = DistillConfig(
        method="kd", teacher=HUB_ID, teacher_dtype="bf16", student_encoder_layers=2,
        student_decoder_layers=1, data_dir=str(tiny_data_dir), output_dir=str(out),
        num_workers=1, cpus_per_worker=1, max_steps=2, train_batch_size=3, eval_batch_size=4,
        n_val=2, max_source_length=32, max_target_length=8, val_max_target_length=8,
        eval_beams=1, do_predict=False, logger="none", seed=0)
    summary = run_distill(cfg)
    assert summary["final_step"] == 2

    hparams = json.loads((out / "hparams.json").read_text())
    assert hparams["teacher"] == HUB_ID and hparams["teacher_dtype"] == "bf16"  # as given
    teacher = hparams["models"]["teacher"]
    assert (teacher["id"], teacher["commit"], teacher["path"]) == (HUB_ID, HUB_COMMIT,
                                                                 str(hub_snapshot))
    student = json.loads((out / "student" / "config.json").read_text())
    assert student["init_metadata"]["teacher"] == HUB_ID
    assert student["init_metadata"]["teacher_commit"] == HUB_COMMIT
    assert (out / "student" / "tokenizer.json").is_file()
    assert (out / "best_tfmr" / "model.safetensors").is_file()


@pytest.mark.timeout(300)
def test_evaluate_cli_from_a_hub_id(ray_session, hub_cache, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    code = main(["evaluate", "--model", HUB_ID, "--data-dir", str(tiny_data_dir), "--out-dir",
                 str(out), "--num-beams", "1", "--max-length", "8", "--batch-size", "4"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "test_results.json").read_text())
    assert (results["model_dir"], results["model_id"], results["model_commit"]) == (
        HUB_ID, HUB_ID, HUB_COMMIT)
    assert results["n_examples"] == 4
    assert len((out / "test_generations.txt").read_text().splitlines()) == 4
