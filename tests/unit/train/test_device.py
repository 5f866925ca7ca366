"""One device decision (raydistill.train.device): ``use_gpu`` picks the device in every mode,
GPU requests this process cannot serve and GPU-only compute types stop before Ray starts, and
actor pools share the GPUs. On CPU: torch's CUDA queries and Ray's device are patched."""

from __future__ import annotations

import inspect
import math
import sys
import types

import pytest
import torch

from raydistill.config import DistillConfig
from raydistill.errors import ConfigError
from raydistill.train import device as dev


def ray_local_mode_device():
    """What Ray Train's local mode (num_workers: 0) answers: cuda whenever torch sees a GPU."""
    return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")


@pytest.fixture
def fake_ray_device(monkeypatch):
    """Ray Train's get_device as the local mode computes it (``cuda_seen``), or as a Train
    worker with a GPU is given (``assigned``)."""
    import ray.train.torch

    def use(cuda_seen: bool, assigned: torch.device | None = None):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_seen)
        monkeypatch.setattr(ray.train.torch, "get_device",
                            (lambda: assigned) if assigned is not None else ray_local_mode_device)
    return use


@pytest.mark.parametrize("use_gpu, cuda_seen, assigned, expected", [
    (False, False, None, "cpu"),
    (False, True, None, "cpu"),  # local mode on a GPU machine: Ray says cuda, use_gpu says no
    (True, True, None, "cuda:0"),  # local mode, GPU here
    (True, True, torch.device("cuda:3"), "cuda:3"),  # a Train worker: the GPU Ray assigned
    (False, True, torch.device("cpu"), "cpu"),  # a Train worker without GPUs
])
def test_use_gpu_decides_the_training_device(fake_ray_device, use_gpu, cuda_seen, assigned,
                                             expected):
    fake_ray_device(cuda_seen, assigned)
    assert dev.train_device(use_gpu) == torch.device(expected)


def test_use_gpu_without_a_gpu_in_the_training_process_is_one_line(fake_ray_device):
    fake_ray_device(cuda_seen=False)  # Ray's local mode would silently train on the CPU
    with pytest.raises(ConfigError, match="use_gpu: true.*sees no GPU.*use_gpu: false"):
        dev.train_device(True)


def test_the_worker_setup_asks_this_module_and_moves_the_model_there():
    """train/loop.py's setup decides the device here, never with Ray's get_device (which
    ignores use_gpu in local mode), and prepare_model moves the student to that device (it
    would otherwise move it to Ray's choice). The wrapping lives in train/parallel.py (DDP or
    FSDP2), which gets that device."""
    from raydistill.train import loop, parallel

    source = inspect.getsource(loop.setup)
    assert "train_device(cfg.use_gpu)" in source
    assert "get_device" not in inspect.getsource(loop) + inspect.getsource(parallel)
    assert "wrap_student(student, cfg, device)" in source
    assert "move_to_device=device" in inspect.getsource(parallel.wrap_student)


# ---- before Ray starts ----------------------------------------------------------------------

def config(tmp_path, **kw) -> DistillConfig:
    return DistillConfig(method="sft", student="s", data_dir=str(tmp_path),
                         output_dir=str(tmp_path / "out"), **kw)


@pytest.mark.parametrize("use_gpu, num_workers, cuda_seen, refused", [
    (True, 0, False, True),  # a CPU driver attached to a GPU cluster: this process trains
    (True, 0, True, False),
    (True, 2, False, False),  # Train workers: the cluster's GPUs are checked once Ray runs
    (False, 0, False, False),
    (False, 0, True, False),
])
def test_a_gpu_request_this_process_cannot_serve_is_refused(monkeypatch, tmp_path, use_gpu,
                                                            num_workers, cuda_seen, refused):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_seen)
    cfg = config(tmp_path, use_gpu=use_gpu, num_workers=num_workers)
    if refused:
        with pytest.raises(ConfigError) as err:
            dev.check_gpu_request(cfg)
        message = str(err.value)
        assert "\n" not in message
        assert "use_gpu: true with num_workers: 0" in message
        assert "num_workers >= 1" in message and "use_gpu: false" in message
    else:
        dev.check_gpu_request(cfg)


@pytest.mark.parametrize("compute_type", dev.GPU_COMPUTE_TYPES)
def test_a_gpu_compute_type_on_the_cpu_is_refused(tmp_path, compute_type):
    cfg = config(tmp_path, generation_backend="ctranslate2", compute_type=compute_type)
    with pytest.raises(ConfigError, match=f"compute_type: {compute_type} runs on a GPU only.*"
                                          "compute_type: int8.*use_gpu: true"):
        dev.check_gpu_request(cfg)


def test_compute_types_the_device_runs_pass(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for kw in ({"generation_backend": "ctranslate2", "compute_type": "int8"},
               {"generation_backend": "ctranslate2", "compute_type": "float16", "use_gpu": True},
               {"generation_backend": "transformers", "compute_type": "float16"}):  # unused
        dev.check_gpu_request(config(tmp_path, **kw))


def test_distill_refuses_a_gpu_it_cannot_use_before_ray_starts(monkeypatch, tmp_path, capsys,
                                                               tiny_bart_dir, tiny_data_dir):
    from raydistill.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    started = []
    monkeypatch.setattr("raydistill.train.run.init_ray_during",
                        lambda *a, **k: started.append(1))
    path = tmp_path / "c.yaml"
    path.write_text(f"method: sft\nstudent: {tiny_bart_dir}\ndata_dir: {tiny_data_dir}\n"
                    f"output_dir: {tmp_path / 'out'}\nnum_workers: 0\n")
    assert main(["distill", str(path), "use_gpu=true"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("raydistill distill: error: use_gpu: true with "
                                               "num_workers: 0"), err
    assert not started  # refused before Ray starts (or is joined)


# ---- actors share the GPUs ------------------------------------------------------------------

@pytest.mark.parametrize("actors, gpus, share", [
    (1, 1, 1.0), (2, 1, 0.5), (3, 1, 0.3333), (4, 1, 0.25),
    (2, 2, 1.0), (3, 2, 0.5),  # 0.67 each would leave the third actor no GPU with room
    (8, 4, 0.5), (4, 8, 1.0), (5, 4, 0.5),
])
def test_actors_get_an_equal_share_of_the_gpus(actors, gpus, share):
    assert dev.actor_gpus(True, actors, gpus) == share


def fits(actors: int, share: float, gpus: int) -> bool:
    """Ray's placement of fractional requests: each on a single GPU with room (first fit)."""
    free = [1.0] * gpus
    for _ in range(actors):
        slot = next((i for i, f in enumerate(free) if f + 1e-9 >= share), None)
        if slot is None:
            return False
        free[slot] -= share
    return True


def test_every_pool_fits_its_gpus():
    for gpus in range(1, 9):
        for actors in range(1, 25):
            share = dev.actor_gpus(True, actors, gpus)
            assert fits(actors, share, gpus), (actors, gpus, share)
            assert share == 1.0 or share == math.floor(1e4 / math.ceil(actors / gpus)) / 1e4


def test_no_gpu_asked_without_use_gpu_and_none_to_share_is_one_line():
    assert dev.actor_gpus(False, 4, 8) == 0.0
    with pytest.raises(ConfigError, match="use_gpu: true, but the Ray cluster has 0 GPUs"):
        dev.actor_gpus(True, 2, 0)


def test_test_generation_actors_share_one_gpu_after_training(monkeypatch, tmp_path):
    """num_eval_workers: 2 on one GPU: each evaluate actor asks for half of it (it asked for a
    whole one, and the second waited forever after training)."""
    import ray

    import raydistill.eval.evaluate  # noqa: F401
    from raydistill import pipeline

    seen = {}

    def evaluate(*args, **kw):
        seen.update(kw)
        return {"scores": {"rouge2": 1.0}, "n_examples": 1, "gen_seconds": 0.1}

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 1.0})
    # (raydistill.eval re-exports the function under the module's name: patch the module)
    monkeypatch.setattr(sys.modules["raydistill.eval.evaluate"], "evaluate", evaluate)
    cfg = config(tmp_path, use_gpu=True, num_eval_workers=2)
    pipeline.run_test(cfg, tmp_path)
    assert seen["num_workers"] == 2 and seen["num_gpus"] == 0.5


def test_a_logit_cache_build_shares_the_free_gpus(monkeypatch, tmp_path, tiny_bart_dir,
                                                  tiny_data_dir):
    """Two workers' teachers build the cache before training on a one-GPU node: half a GPU
    each (a whole one each left the second teacher waiting forever)."""
    import ray

    from raydistill.train.run import prepare_logit_cache

    seen = {}
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 4.0, "GPU": 1.0})
    monkeypatch.setattr("raydistill.models.teacher_cache.ensure_cache",
                        lambda *a, **kw: seen.update(kw))
    cfg = DistillConfig(method="kd", teacher=str(tiny_bart_dir), data_dir=str(tiny_data_dir),
                        output_dir=str(tmp_path), use_gpu=True, num_workers=2)
    prepare_logit_cache(cfg, str(tiny_bart_dir), None, tmp_path / "cache")
    assert seen["num_workers"] == 2 and seen["num_gpus"] == 0.5


# ---- tune measures latency where its trials trained ------------------------------------------

@pytest.mark.parametrize("use_gpu, device", [(False, "cpu"), (True, "cuda")])
def test_tune_latency_runs_on_the_trials_device(monkeypatch, tmp_path, tiny_data_dir, use_gpu,
                                                device):
    import json

    import ray

    from raydistill.tune import sweep

    devices, tasks = [], []
    monkeypatch.setattr("raydistill.models.generate.measure_latency",
                        lambda *a, **kw: devices.append(kw["device"]) or
                        {"ms_per_example": 1.0, "parameters": 10})

    def remote(**options):  # a Ray task, run here: its resources are what matters
        tasks.append(options)
        return lambda fn: types.SimpleNamespace(remote=fn)

    monkeypatch.setattr(ray, "remote", remote)
    monkeypatch.setattr(ray, "get", lambda value: value)
    monkeypatch.setattr("raydistill.runtime.init_ray", lambda *a, **k: None)
    monkeypatch.setattr(sweep, "_export_checkpoint", lambda path, dst: True)
    trial = tmp_path / "trial"
    trial.mkdir()
    cfg = DistillConfig(method="sft", student="s", data_dir=str(tiny_data_dir),
                        output_dir=str(trial), use_gpu=use_gpu,
                        generation_backend="ctranslate2", compute_type="float16" if use_gpu
                        else "int8")
    (trial / "hparams.json").write_text(json.dumps(cfg.to_dict()))
    settings = types.SimpleNamespace(latency_examples=2)
    out = sweep._measure_trial(trial, ["ckpt"], settings)
    assert out["ms_per_example"] == 1.0
    assert devices == [device] * sweep.LATENCY_REPEATS
    assert tasks == ([{"num_cpus": 1, "num_gpus": 1, "max_retries": 0}] if use_gpu else [])
