"""``stages:`` end to end on a tiny model: sft then kd in one output_dir, a crash inside the second
stage, ``--resume`` skipping the first and continuing the second from its checkpoint."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from raydistill.config import DistillConfig
from raydistill.pipeline import run_distill

pytestmark = pytest.mark.integration


def tensors_equal(a, b) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all((x[k] == y[k]).all() for k in x)


@pytest.mark.timeout(420)
def test_two_stages_resume_inside_the_second(ray_session, tiny_bart_dir, tmp_path, monkeypatch):
    from raydistill.train import loop

    data = tmp_path / "data"
    data.mkdir()
    lines = [f"sentence {i} about cats and dogs ." for i in range(12)]
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        (data / f"{split}.source").write_text("\n".join(lines[:n]) + "\n")
        (data / f"{split}.target").write_text("\n".join(s.split(" ")[1] + " ." for s in lines[:n]) + "\n")
    out = tmp_path / "recipe"
    cfg = DistillConfig(
        method="sft", teacher=str(tiny_bart_dir), student_encoder_layers=2,
        student_decoder_layers=2, data_dir=str(data), output_dir=str(out), task="translation",
        num_workers=0, cpus_per_worker=1, train_batch_size=2, max_steps=4, val_check_steps=2,
        eval_beams=1, checkpoints_to_keep=1, learning_rate=1e-3, val_max_target_length=8,
        test_max_target_length=8, seed=0,
        stages=[{"max_steps": 2},
                {"method": "kd", "alpha_hid": 1.0, "learning_rate": 5e-4}])
    product = loop.train_loop_per_worker

    def kd_stage_dies_after_step_2(config):
        import ray.train

        report = ray.train.report

        def report_then_die(metrics, checkpoint=None, **kw):
            report(metrics, checkpoint=checkpoint, **kw)
            if config["output_dir"].endswith("stage1_kd") and metrics.get("step") == 2:
                raise KeyboardInterrupt("killed after the second stage's step-2 checkpoint")

        monkeypatch.setattr(ray.train, "report", report_then_die)
        try:
            product(config)
        finally:
            monkeypatch.setattr(ray.train, "report", report)

    monkeypatch.setattr(loop, "train_loop_per_worker", kd_stage_dies_after_step_2)
    with pytest.raises(KeyboardInterrupt):
        run_distill(cfg)
    s0, s1 = out / "stage0_sft", out / "stage1_kd"
    assert (s0 / "stage_done.json").is_file() and not (s1 / "stage_done.json").exists()
    # stage 1 starts from stage 0's best student, with the teacher layers make_student copied
    assert tensors_equal(s1 / "student" / "model.safetensors",
                         s0 / "best_tfmr" / "model.safetensors")
    layers = json.loads((s0 / "student_layers.json").read_text())
    assert layers["d_layer_ids"] is not None  # make_student's copy (4 -> 2: the first two)
    assert json.loads((s1 / "student_layers.json").read_text()) == layers
    stage0_best = (s0 / "best_tfmr" / "model.safetensors").read_bytes()

    with pytest.raises(Exception, match="is not empty"):
        run_distill(cfg)  # neither --resume nor --overwrite: nothing is touched
    monkeypatch.setattr(loop, "train_loop_per_worker", product)
    summary = run_distill(cfg, resume=True)
    assert (s0 / "best_tfmr" / "model.safetensors").read_bytes() == stage0_best  # not retrained
    stage1 = json.loads((s1 / "metrics.json").read_text())
    assert stage1["resumed_from"] == [2] and stage1["final_step"] == 4
    assert [h["step"] for h in stage1["val"]] == [2, 4]
    assert [s["name"] for s in summary["stages"]] == ["stage0_sft", "stage1_kd"]
    assert [s["final_step"] for s in summary["stages"]] == [2, 4]
    assert summary["teacher_val"] is not None and summary["stages"][1]["start_gap"] is not None
    assert summary["test"]["n_examples"] == 4
    # output_dir/best_tfmr is the last stage's best student; hparams.json lists the stages
    assert tensors_equal(out / "best_tfmr" / "model.safetensors",
                         s1 / "best_tfmr" / "model.safetensors")
    hparams = json.loads((out / "hparams.json").read_text())
    assert hparams["stages"] == cfg.stages and hparams["stage_dirs"] == ["stage0_sft", "stage1_kd"]
    assert json.loads((out / "metrics.json").read_text())["stages"] == summary["stages"]
