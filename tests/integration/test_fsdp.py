"""parallel: fsdp end to end on local Ray: 2 Train workers (gloo) shard a tiny BART student,
one dies after its step-2 checkpoint and Ray restarts both from it; the run is then resumed
on 1 worker. The math (fsdp = ddp, bit-exact resume, export = sharded generation) is tested
in plain torch: tests/unit/train/test_parallel.py."""

from __future__ import annotations

import json
import sys

import pytest
from pyarrow.fs import LocalFileSystem

from raydistill.config import DistillConfig
from raydistill.pipeline import run_distill

pytestmark = pytest.mark.integration


def crash_after_checkpoint(step: int):
    """A worker loop whose first attempt dies, as a killed process would, once it has reported
    the checkpoint of optimizer step ``step`` (as in test_distill.py; pickled by value)."""
    def loop(config):
        import os
        import time

        import ray.train

        from raydistill.train import loop as product

        first_attempt = ray.train.get_checkpoint() is None
        report = ray.train.report

        def report_then_die(metrics, checkpoint=None, **kw):
            report(metrics, checkpoint=checkpoint, **kw)
            if first_attempt and metrics.get("step") == step:
                time.sleep(5)  # the controller registers the checkpoint at its next poll
                os._exit(1)

        ray.train.report = report_then_die
        try:
            product.train_loop_per_worker(config)
        finally:
            ray.train.report = report

    return loop


@pytest.mark.timeout(600)
def test_fsdp_run_dies_resumes_from_its_shards_then_resumes_on_one_worker(
        ray_session, tiny_bart_dir, tiny_data_dir, tmp_path, monkeypatch):
    import ray.cloudpickle
    from transformers import AutoModelForSeq2SeqLM

    from raydistill.train import loop
    from raydistill.train.checkpoint import whole_checkpoint

    out = tmp_path / "fsdp"
    cfg = DistillConfig(
        method="kd", teacher=str(tiny_bart_dir), student_encoder_layers=2,
        student_decoder_layers=1, alpha_hid=1.0, data_dir=str(tiny_data_dir),
        output_dir=str(out), parallel="fsdp", num_workers=2, cpus_per_worker=1,
        train_batch_size=1, max_steps=4, max_epochs=10, val_check_steps=2, eval_beams=1,
        val_max_target_length=8, max_failures=1, checkpoints_to_keep=10,
        learning_rate=1e-3, do_predict=False, logger="none", seed=0)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with monkeypatch.context() as patch:
        patch.setattr(loop, "train_loop_per_worker", crash_after_checkpoint(2))
        summary = run_distill(cfg)
    assert summary["resumed_from"] == [2] and summary["final_step"] == 4
    assert [h["step"] for h in summary["val"]] == [2, 4]

    # Each rank's shard merged into one folder on storage; files.json lists them all.
    ckpts = sorted(p for p in (out / "ray_results" / "fsdp").glob("checkpoint_*") if p.is_dir())
    for ckpt in ckpts:
        names = {p.name for p in (ckpt / "sharded").iterdir()}
        assert {"__0_0.distcp", "__1_0.distcp", ".metadata"} <= names
        assert whole_checkpoint(LocalFileSystem(), str(ckpt)) in (2, 4)
    # best_tfmr: a whole safetensors folder that from_pretrained loads, output layer tied
    assert (out / "best_tfmr" / "model.safetensors").is_file()
    student = AutoModelForSeq2SeqLM.from_pretrained(out / "best_tfmr")
    assert student.lm_head.weight.data_ptr() == student.model.shared.weight.data_ptr()
    assert json.loads((out / "best_tfmr" / "config.json").read_text())["decoder_layers"] == 1

    # The same run continued on 1 worker: its shards are read resharded.
    resumed = run_distill(cfg.replace(num_workers=1, max_steps=6, max_failures=0), resume=True)
    assert resumed["resumed_from"][-1] == 4 and resumed["final_step"] == 6
    assert [h["step"] for h in resumed["val"]][-1] == 6
