"""export_outputs: best_tfmr comes from the best checkpoint and is never replaced by a worse one."""

import json
from types import SimpleNamespace

from ray.train import Checkpoint

from raydistill.config import DistillConfig
from raydistill.train.run import BEST_INFO, export_outputs


def fake_checkpoint(path, step, weights: str):
    path.mkdir()
    (path / "model.safetensors").write_text(weights)
    (path / "config.json").write_text("{}")
    (path / "optimizer.pt").write_text("not copied to best_tfmr")
    (path / "trainer_state.json").write_text(json.dumps(
        {"global_step": step, "history": [{"step": step}], "resumed_from": []}))
    return Checkpoint.from_directory(str(path))


def result(tmp_path, name, rouge2, weights):
    ckpt = fake_checkpoint(tmp_path / name, 10, weights)
    return SimpleNamespace(best_checkpoints=[(ckpt, {"rouge2": rouge2, "step": 10})], checkpoint=ckpt)


def test_best_tfmr_is_kept_when_the_resumed_run_is_worse(tmp_path):
    out = tmp_path / "out"
    cfg = DistillConfig(method="kd", teacher="t", data_dir="d", output_dir=str(out))
    export_outputs(cfg, out, result(tmp_path, "a", 30.0, "good"), 1.0)
    assert (out / "best_tfmr" / "model.safetensors").read_text() == "good"
    assert not (out / "best_tfmr" / "optimizer.pt").exists()  # a model folder, not a checkpoint
    assert json.loads((out / "best_tfmr" / BEST_INFO).read_text())["rouge2"] == 30.0

    summary = export_outputs(cfg, out, result(tmp_path, "b", 20.0, "worse"), 1.0)
    assert (out / "best_tfmr" / "model.safetensors").read_text() == "good"
    assert summary["best"]["rouge2"] == 30.0

    export_outputs(cfg, out, result(tmp_path, "c", 40.0, "better"), 1.0)
    assert (out / "best_tfmr" / "model.safetensors").read_text() == "better"
    assert json.loads((out / "metrics.json").read_text())["best"]["rouge2"] == 40.0

