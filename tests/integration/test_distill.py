"""End-to-end ``run_distill`` on local Ray with tiny models: real data, 2 workers, crash + resume."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from raydistill.config import DistillConfig
from raydistill.models.scratch import new_model, save_model_and_tokenizer, train_tokenizer
from raydistill.pipeline import run_distill

pytestmark = pytest.mark.integration


def crash_after_checkpoint(step: int):
    """Fault injection, in the tests only: a worker loop whose first attempt dies, as a killed
    process would, once it has reported the checkpoint of optimizer step ``step``. (Pickled by
    value, so the workers need not import this module.)"""
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
                # The controller registers a reported checkpoint when it next polls this
                # worker; give it that poll, then die.
                time.sleep(5)
                os._exit(1)

        ray.train.report = report_then_die
        try:
            product.train_loop_per_worker(config)
        finally:
            ray.train.report = report

    return loop


@pytest.fixture(scope="module")
def scitldr_teacher(tmp_path_factory, scitldr_dir):
    """A tiny random 2-2 BART teacher with a BPE tokenizer trained on SciTLDR's train split."""
    texts = (scitldr_dir / "train.source").read_text().splitlines()[:500] + \
        (scitldr_dir / "train.target").read_text().splitlines()
    tok = train_tokenizer(texts, vocab_size=500)
    torch.manual_seed(0)
    model = new_model("bart", len(tok), encoder_layers=2, decoder_layers=2, pad_token_id=tok.pad_token_id)
    return save_model_and_tokenizer(model, tok, tmp_path_factory.mktemp("scitldr_teacher"))


@pytest.mark.timeout(600)
def test_kd_with_two_workers_on_scitldr_loss_falls_and_outputs_are_written(
        ray_session, scitldr_teacher, scitldr_dir, tmp_path):
    out = tmp_path / "kd"
    cfg = DistillConfig(
        method="kd", teacher=str(scitldr_teacher), student_encoder_layers=2, student_decoder_layers=1,
        data_dir=str(scitldr_dir), output_dir=str(out), num_workers=2, cpus_per_worker=1,
        n_train=64, n_val=8, n_test=8, max_source_length=64, max_target_length=24,
        val_max_target_length=16, test_max_target_length=16, train_batch_size=8, eval_batch_size=8,
        learning_rate=3e-3, max_epochs=4, val_check_interval=0.5, eval_beams=1, alpha_hid=1.0,
        log_every_n_steps=2, seed=0)
    summary = run_distill(cfg)

    history = summary["val"]
    assert len(history) == 8  # 2 validations per epoch x 4 epochs
    losses = [h["train_loss"] for h in history]
    # Falls steadily (seen: 1.36 -> 1.30 with a random teacher, whose KD target is a floor).
    assert sum(losses[-2:]) < 0.97 * sum(losses[:2]), losses
    assert summary["final_step"] == 16 and summary["resumed_from"] == []  # 64 / 2 workers / 8 = 4 per epoch
    for name in ("best_tfmr/model.safetensors", "best_tfmr/tokenizer.json", "student/config.json",
                 "metrics.json", "hparams.json", "git_log.json", "test_generations.txt",
                 "test_results.txt", "test_results.json"):
        assert (out / name).exists(), name
    assert len((out / "test_generations.txt").read_text().splitlines()) == 8
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n_examples"] == 8 and "rouge2" in metrics["test"]["scores"]
    assert json.loads((out / "hparams.json").read_text())["method"] == "kd"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    student_cfg = json.loads((out / "best_tfmr" / "config.json").read_text())
    assert (student_cfg["encoder_layers"], student_cfg["decoder_layers"]) == (2, 1)


TEXTBREWER_JSON = {
    "temperature": 4, "temperature_scheduler": "none", "hard_label_weight": 1,
    "hard_label_weight_scheduler": "none", "kd_loss_type": "ce", "kd_loss_weight": 1,
    "kd_loss_weight_scheduler": "linear_decay", "probability_shift": False,
    "is_caching_logits": False,
    "intermediate_matches": [
        {"layer_T": 2, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1},
        {"layer_T": 5, "layer_S": 4, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
         "proj": ["linear", 64, 64, {"lr": 1e-2}]},
    ],
}


@pytest.mark.timeout(600)
def test_textbrewer_config_run_crashes_and_resumes_from_the_checkpoint_step(
        ray_session, tiny_bart_dir, tiny_data_dir, tmp_path, monkeypatch):
    """A worker dies after its step-2 checkpoint; Ray restarts it from there (not from 0)."""
    from raydistill.distill.textbrewer import DistillationConfig

    tb_file = tmp_path / "distill_config.json"
    tb_file.write_text(json.dumps(TEXTBREWER_JSON))
    distillation = DistillationConfig.from_json_file(str(tb_file)).to_dict()  # loads as it is
    out = tmp_path / "tb"
    cfg = DistillConfig(
        method="kd", teacher=str(tiny_bart_dir), student_encoder_layers=2, student_decoder_layers=2,
        data_dir=str(tiny_data_dir), output_dir=str(out), distillation=distillation,
        # TextBrewer's TrainingConfig: ckpt_steps=2 validates and checkpoints every 2 steps.
        training={"ckpt_steps": 2, "gradient_accumulation_steps": 1},
        train_batch_size=1, max_steps=6, max_epochs=10, eval_beams=1,
        max_failures=1, checkpoints_to_keep=10, learning_rate=1e-3, do_predict=False,
        val_max_target_length=8, seed=0)
    import sys

    import ray.cloudpickle

    from raydistill.train import loop

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(loop, "train_loop_per_worker", crash_after_checkpoint(2))
    summary = run_distill(cfg)

    assert summary["resumed_from"] == [2]  # restarted at the checkpoint's step
    assert summary["final_step"] == 6
    assert [h["step"] for h in summary["val"]] == [2, 4, 6]  # no duplicate steps, none from 0
    ckpts = [c for c in (out / "ray_results" / "tb").glob("checkpoint_*") if c.is_dir()]
    states = {json.loads((c / "trainer_state.json").read_text())["global_step"]: c for c in ckpts}
    first, last = load_file(str(states[2] / "projections.safetensors")), \
        load_file(str(states[6] / "projections.safetensors"))
    assert set(first) == set(last) and first  # the projection is checkpointed
    assert any(not torch.equal(first[k], last[k]) for k in first)  # and it trained across the resume


@pytest.mark.timeout(300)
def test_in_process_run_keeps_its_checkpoints_and_resumes_after_a_crash(
        ray_session, tiny_bart_dir, tmp_path, monkeypatch):
    """num_workers: 0 trains in this process (Ray Train's local mode): it keeps its own
    checkpoints under ray_results (the best and the latest), exports best_tfmr, and --resume
    continues from the latest after the process died."""
    from raydistill.train import loop

    data = tmp_path / "data"
    data.mkdir()
    lines = [f"sentence {i} about cats and dogs ." for i in range(12)]
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        (data / f"{split}.source").write_text("\n".join(lines[:n]) + "\n")
        (data / f"{split}.target").write_text("\n".join(s.split(" ")[1] + " ." for s in lines[:n]) + "\n")
    out = tmp_path / "local"
    cfg = DistillConfig(
        method="kd", teacher=str(tiny_bart_dir), student_encoder_layers=2, student_decoder_layers=1,
        data_dir=str(data), output_dir=str(out), num_workers=0, cpus_per_worker=1,
        train_batch_size=2, max_steps=6, max_epochs=10, val_check_steps=2, eval_beams=1,
        checkpoints_to_keep=1, learning_rate=1e-3, do_predict=False, val_max_target_length=8,
        seed=0)
    product = loop.train_loop_per_worker

    def dies_after_step_4(config):
        import ray.train

        report = ray.train.report

        def report_then_die(metrics, checkpoint=None, **kw):
            report(metrics, checkpoint=checkpoint, **kw)
            if metrics.get("step") == 4:
                raise KeyboardInterrupt("killed after the step-4 checkpoint")

        monkeypatch.setattr(ray.train, "report", report_then_die)
        try:
            product(config)
        finally:
            monkeypatch.setattr(ray.train, "report", report)

    monkeypatch.setattr(loop, "train_loop_per_worker", dies_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        run_distill(cfg)
    run_dir = out / "ray_results" / "local"
    steps = sorted(json.loads((c / "trainer_state.json").read_text())["global_step"]
                   for c in run_dir.glob("checkpoint_*"))
    assert steps[-1] == 4 and len(steps) <= 2  # the best and the latest

    monkeypatch.setattr(loop, "train_loop_per_worker", product)
    summary = run_distill(cfg, resume=True)
    assert summary["resumed_from"] == [4] and summary["final_step"] == 6
    assert [h["step"] for h in summary["val"]] == [2, 4, 6]
    # the loop's clock goes on from the checkpoint's: seconds of training across the resume
    elapsed = [h["elapsed_s"] for h in summary["val"]]
    assert 0 < elapsed[0] < elapsed[1] < elapsed[2]
    cpu = [h["cpu_s"] for h in summary["val"]]  # and the process's CPU seconds likewise
    assert 0 < cpu[0] < cpu[1] < cpu[2]
    assert (out / "best_tfmr" / "model.safetensors").is_file()
    kept = list(run_dir.glob("checkpoint_*"))
    assert 1 <= len(kept) <= 2 and not list(run_dir.glob("tmp*"))


@pytest.mark.timeout(300)
def test_nan_loss_stops_the_run_naming_step_and_component(
        ray_session, tiny_bart_dir, tiny_data_dir, tmp_path, capsys):
    """A teacher with a NaN weight makes the KD term NaN at the first step: one line, exit 2."""
    import yaml

    from raydistill.cli import main
    from raydistill.models.layers import load_seq2seq

    teacher = load_seq2seq(str(tiny_bart_dir))
    with torch.no_grad():
        teacher.get_input_embeddings().weight[5, 0] = float("nan")
    bad = tmp_path / "nan_teacher"
    teacher.save_pretrained(bad)
    (bad / "tokenizer.json").write_bytes((Path(tiny_bart_dir) / "tokenizer.json").read_bytes())
    (bad / "tokenizer_config.json").write_bytes((Path(tiny_bart_dir) / "tokenizer_config.json").read_bytes())
    config = {"method": "kd", "teacher": str(bad), "student_decoder_layers": 1,
              "data_dir": str(tiny_data_dir), "output_dir": str(tmp_path / "out"),
              "train_batch_size": 2, "max_steps": 3, "do_predict": False, "eval_beams": 1}
    path = tmp_path / "nan.yaml"
    path.write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert main(["distill", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("raydistill distill: error: loss became nan at step 0"), err
    assert "ce_loss" in err


def gkd_config(teacher, data, out, **kw) -> DistillConfig:
    base = dict(method="gkd", teacher=str(teacher), student_encoder_layers=2,
                student_decoder_layers=1, data_dir=str(data), output_dir=str(out),
                train_batch_size=2, max_steps=6, max_epochs=10, val_check_steps=2, eval_beams=1,
                learning_rate=1e-3, do_predict=False, val_max_target_length=8,
                checkpoints_to_keep=10, log_every_n_steps=1, seed=0,
                gkd={"lmbda": 1.0, "beta": 0.5, "max_new_tokens": 8})
    return DistillConfig(**{**base, **kw})


@pytest.mark.timeout(600)
def test_gkd_fully_on_policy_with_two_workers_reports_the_fraction_and_the_time_split(
        ray_session, tiny_bart_dir, tiny_data_dir, tmp_path, capsys):
    cfg = gkd_config(tiny_bart_dir, tiny_data_dir, tmp_path / "gkd", num_workers=2,
                     cpus_per_worker=1, log_every_n_steps=10)
    summary = run_distill(cfg)
    assert summary["final_step"] == 6 and [h["step"] for h in summary["val"]] == [2, 4, 6]
    for h in summary["val"]:
        assert h["on_policy_fraction"] == 1.0 and h["on_policy_batches"] == h["gkd_batches"] > 0
        assert h["sample_seconds"] > 0 and h["teacher_seconds"] > 0
        assert h["step_seconds"] > h["sample_seconds"] + h["teacher_seconds"]
    # log_every_n_steps 10 > 6 steps: still a line at the first and the last step, with an
    # ETA; it shows what on-policy costs
    out = capsys.readouterr().out
    # where start-up went: the driver's phases, and the workers' first step after launch (or
    # after the call, when an earlier test already ran one in this pytest process)
    assert "[raydistill] start-up: " in out and " s imports and checks, " in out
    assert " s student and Ray, " in out and "starting the workers" in out
    assert re.search(r"\[raydistill\] first optimizer step \d+\.\d s after (launch|the call) "
                     r"\(this worker: process started at \d+\.\d s, loop started at \d+\.\d s, "
                     r"\d+\.\d s setup, \d+\.\d s to the step\)", out), out
    lines = [s for s in out.splitlines() if "[raydistill] step " in s]
    assert [s.split("[raydistill] step ")[1].split()[0] for s in lines] == ["1/6", "6/6"], lines
    assert "on_policy_fraction=1.0000" in lines[1] and "time_sample=" in lines[1]
    assert "gkd_loss=" in lines[1] and " eta=0s" in lines[1] and " eta=" in lines[0]


@pytest.mark.timeout(600)
def test_gkd_crash_and_resume_makes_the_same_sampling_decisions(
        ray_session, tiny_bart_dir, tiny_data_dir, tmp_path, monkeypatch):
    """lmbda 0.5: the on-policy choices are draws; a run that dies after its step-2 checkpoint
    and resumes makes the same ones as a run that never stopped."""
    import sys

    import ray.cloudpickle

    from raydistill.train import loop

    kw = dict(gkd={"lmbda": 0.5, "beta": 0.1, "max_new_tokens": 8}, max_failures=1)
    whole = run_distill(gkd_config(tiny_bart_dir, tiny_data_dir, tmp_path / "whole", **kw))
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(loop, "train_loop_per_worker", crash_after_checkpoint(2))
    resumed = run_distill(gkd_config(tiny_bart_dir, tiny_data_dir, tmp_path / "crash", **kw))
    assert resumed["resumed_from"] == [2] and whole["resumed_from"] == []
    counts = [(h["step"], h["on_policy_batches"], h["gkd_batches"]) for h in whole["val"]]
    assert counts == [(h["step"], h["on_policy_batches"], h["gkd_batches"])
                      for h in resumed["val"]]
    assert 0 < counts[-1][1] < counts[-1][2]  # some batches on-policy, some not


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kw,msg", [
    ({"num_workers": 3}, "distill needs 3 CPUs but the Ray cluster has 2; use fewer workers "
                         "(num_workers=3) or fewer CPUs per worker (cpus_per_worker=1)"),
    ({"cpus_per_worker": 4}, "distill needs 4 CPUs but the Ray cluster has 2"),
    ({"use_gpu": True}, "distill needs 1 GPUs but the Ray cluster has 0; set use_gpu: false"),
])
def test_requests_the_cluster_cannot_meet_fail_before_any_worker_starts(
        ray_session, tiny_bart_dir, tiny_data_dir, tmp_path, kw, msg):
    import time

    from raydistill.errors import ConfigError

    cfg = DistillConfig(method="sft", teacher=str(tiny_bart_dir), student_decoder_layers=1,
                        data_dir=str(tiny_data_dir), output_dir=str(tmp_path / "out"),
                        max_steps=1, do_predict=False, **kw)
    t0 = time.time()
    with pytest.raises(ConfigError) as err:
        run_distill(cfg)
    assert msg in str(err.value) and "\n" not in str(err.value)
    assert time.time() - t0 < 60
    assert not (tmp_path / "out" / "ray_results").exists()  # no Train run was started
