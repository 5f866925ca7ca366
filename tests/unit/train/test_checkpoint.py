"""Checkpoints restore exactly (weights, optimizer, scheduler, RNG, projections); atomic writes."""

import json
import random

import numpy as np
import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from raydistill.models.scratch import new_model
from raydistill.train.checkpoint import (
    MANIFEST_FILE,
    load_training_state,
    newest_whole_checkpoint,
    recover_dir,
    replace_dir_atomic,
    rng_state,
    save_training_state,
    write_json_atomic,
)


def setup(seed: int):
    torch.manual_seed(seed)
    model = new_model("bart", 50, encoder_layers=1, decoder_layers=1, d_model=16, ffn_dim=32, heads=2)
    proj = torch.nn.ModuleList([torch.nn.Linear(16, 32)])
    opt = torch.optim.AdamW(list(model.parameters()) + list(proj.parameters()), lr=1e-3)
    sched = get_linear_schedule_with_warmup(opt, 2, 10)
    return model, proj, opt, sched


def train_step(model, proj, opt, sched):
    x = torch.randint(3, 50, (2, 6))
    out = model(input_ids=x, decoder_input_ids=x, output_hidden_states=True)
    loss = out.logits.logsumexp(-1).mean() + proj[0](out.decoder_hidden_states[-1]).pow(2).mean()
    torch.nn.functional.dropout(loss, 0.1)
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    return float(loss)


def test_resume_continues_exactly_as_the_uninterrupted_run(tmp_path):
    model, proj, opt, sched = setup(0)
    for _ in range(3):
        train_step(model, proj, opt, sched)
    random.seed(5)
    np.random.seed(5)
    save_training_state(tmp_path, student=model, tokenizer=None, optimizer=opt, scheduler=sched,
                        projections=proj, state={"global_step": 3}, rng_states=[rng_state()])
    expected = [train_step(model, proj, opt, sched) for _ in range(2)]
    after = (random.random(), float(np.random.rand()))

    model2, proj2, opt2, sched2 = setup(123)  # different init: everything must come from disk
    state = load_training_state(tmp_path, student=model2, optimizer=opt2, scheduler=sched2,
                                projections=proj2)
    assert state["global_step"] == 3
    assert sched2.get_last_lr() == sched.get_last_lr() or sched2.last_epoch == 3
    got = [train_step(model2, proj2, opt2, sched2) for _ in range(2)]
    assert got == pytest.approx(expected, rel=1e-6)
    assert (random.random(), float(np.random.rand())) == after
    assert torch.equal(proj2[0].weight, proj[0].weight)
    # Weights are safetensors; optimizer files load with weights_only=True (no pickle runs).
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "projections.safetensors").exists()
    torch.load(tmp_path / "optimizer.pt", weights_only=True)


def test_a_restore_takes_the_newest_whole_checkpoint_beside_rays(tmp_path):
    """A lost node can leave folders Ray never registered: the newest whole one wins; a folder
    whose copy was cut off, or one without a manifest (older raydistill), never does."""
    from ray.train import Checkpoint

    model, proj, opt, sched = setup(0)
    run = tmp_path / "run"
    for step in (8, 16, 24, 32, 40):
        save_training_state(run / f"checkpoint_{step}", student=model, tokenizer=None,
                            optimizer=opt, scheduler=sched, projections=proj,
                            state={"global_step": step}, rng_states=[rng_state()])
    with open(run / "checkpoint_32" / "optimizer.pt", "r+b") as f:  # copy cut off mid-file
        f.truncate(10)
    (run / "checkpoint_40" / MANIFEST_FILE).unlink()
    (run / "not_a_checkpoint").mkdir()
    rays = Checkpoint.from_directory(str(run / "checkpoint_8"))
    assert newest_whole_checkpoint(rays).path == str(run / "checkpoint_24")
    # Ray's own is kept when nothing newer is whole, and a fresh run has none.
    assert newest_whole_checkpoint(Checkpoint.from_directory(str(run / "checkpoint_24"))).path \
        == str(run / "checkpoint_24")
    (run / "checkpoint_24" / "rng_states.json").unlink()  # a file the manifest lists is gone
    assert newest_whole_checkpoint(rays).path == str(run / "checkpoint_16")
    assert newest_whole_checkpoint(None) is None
    manifest = json.loads((run / "checkpoint_16" / MANIFEST_FILE).read_text())
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= set(manifest)


def test_replace_dir_atomic_keeps_old_until_swap_and_recovers(tmp_path):
    dst, new = tmp_path / "best_tfmr", tmp_path / "tmp_new"
    dst.mkdir()
    (dst / "a").write_text("old")
    new.mkdir()
    (new / "a").write_text("new")
    replace_dir_atomic(new, dst)
    assert (dst / "a").read_text() == "new" and not new.exists()
    # A crash between the two renames leaves best_tfmr.old only: recover_dir puts it back.
    dst.rename(tmp_path / "best_tfmr.old")
    recover_dir(dst)
    assert (dst / "a").read_text() == "new"


def test_write_json_atomic_leaves_no_partial_file(tmp_path):
    p = tmp_path / "metrics.json"
    write_json_atomic(p, {"a": 1})
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError):
        write_json_atomic(p, circular)
    assert json.loads(p.read_text()) == {"a": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left behind


def test_a_run_in_this_process_keeps_the_best_and_the_latest_checkpoints(tmp_path):
    """num_workers: 0 keeps its own checkpoints (Ray's local mode keeps none): each validation's
    folder moves in with its metrics, then all but the best `keep` and the latest go."""
    from raydistill.train.checkpoint import local_checkpoints, local_result, persist_local_checkpoint

    run = tmp_path / "run"
    for step, bleu in ((2, 5.0), (4, 9.0), (6, 7.0), (8, 3.0)):
        src = tmp_path / f"tmp{step}"
        src.mkdir()
        (src / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        persist_local_checkpoint(run, src, {"step": step, "bleu": bleu}, keep=1, metric="bleu")
        assert not src.exists()
    kept = local_checkpoints(run)
    assert [m["step"] for _, m in kept] == [4, 8]  # the best (bleu 9) and the latest
    result = local_result(str(run))
    assert [m["bleu"] for _, m in result.best_checkpoints] == [9.0, 3.0]
    assert result.checkpoint.path.endswith("checkpoint_00000008") and result.error is None


# ---- portable checkpoints: written on GPUs, resumed anywhere -----------------------------------

def saved_as_if_on_cuda(monkeypatch, obj, path):
    """``torch.save`` as a GPU process writes it: every storage tagged with location cuda:0
    (what a CPU machine cannot load without map_location)."""
    import torch.serialization as ser

    with monkeypatch.context() as m:
        m.setattr(ser, "location_tag", lambda storage: "cuda:0")
        torch.save(obj, path)


def test_an_optimizer_state_written_on_a_gpu_resumes_on_the_cpu(tmp_path, monkeypatch):
    model, proj, opt, sched = setup(0)
    for _ in range(2):
        train_step(model, proj, opt, sched)
    save_training_state(tmp_path, student=model, tokenizer=None, optimizer=opt, scheduler=sched,
                        projections=proj, state={"global_step": 2}, rng_states=[rng_state()])
    saved_as_if_on_cuda(monkeypatch, opt.state_dict(), tmp_path / "optimizer.pt")
    scaler = {"scale": torch.tensor(1024.0), "growth_tracker": 0}
    saved_as_if_on_cuda(monkeypatch, scaler, tmp_path / "scaler.pt")
    written = {i: {k: v.clone() for k, v in st.items()}
               for i, st in opt.state_dict()["state"].items()}
    expected = train_step(model, proj, opt, sched)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine
    with pytest.raises(RuntimeError, match="CUDA"):  # the file really names a GPU
        torch.load(tmp_path / "optimizer.pt", weights_only=True)

    model2, proj2, opt2, sched2 = setup(1)
    loaded = {}

    class Scaler:
        def load_state_dict(self, state):
            loaded.update(state)

    load_training_state(tmp_path, student=model2, optimizer=opt2, scheduler=sched2,
                        scaler=Scaler(), projections=proj2)
    for i, st in opt2.state_dict()["state"].items():
        assert st["exp_avg"].device.type == "cpu"
        assert torch.equal(st["exp_avg"], written[i]["exp_avg"])
        assert torch.equal(st["exp_avg_sq"], written[i]["exp_avg_sq"])
    assert loaded["scale"].device.type == "cpu"
    assert train_step(model2, proj2, opt2, sched2) == pytest.approx(expected, rel=1e-6)


class FakeCuda:
    """torch.cuda as a process on ``current`` of ``count`` GPUs sees it, recording RNG calls;
    asking for every GPU's RNG (a CUDA context on each) fails the test."""

    def __init__(self, monkeypatch, current: int = 0, initialized: bool = True):
        self.set_calls: list[tuple[list[int], int]] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialized)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.full(
            (4,), 10 + int(device), dtype=torch.uint8))
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda":
                            self.set_calls.append((state.tolist(), device)))

        def every_gpu(*a, **k):
            raise AssertionError("touched the RNG of every visible GPU")

        monkeypatch.setattr(torch.cuda, "get_rng_state_all", every_gpu)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", every_gpu)


def test_a_checkpoint_keeps_the_rng_of_the_workers_own_gpu_only(monkeypatch):
    from raydistill.train.checkpoint import set_rng_state

    cuda = FakeCuda(monkeypatch, current=2)
    state = rng_state()
    assert state["cuda_device"] == [12] * 4 and "cuda" not in state
    set_rng_state(state)
    assert cuda.set_calls == [([12] * 4, 2)]
    FakeCuda(monkeypatch, initialized=False)  # a CPU worker on a GPU node: no CUDA context
    assert rng_state()["cuda_device"] is None


@pytest.mark.parametrize("saved, current, restored", [
    ({"cuda": [[1] * 4, [2] * 4]}, 1, [2] * 4),  # an older checkpoint: its own device's entry
    ({"cuda": [[1] * 4, [2] * 4]}, 3, None),  # a node with more GPUs than the writer's
    ({"cuda": [[1] * 4] * 8}, 0, [1] * 4),  # written on 8 GPUs, resumed on 1
    ({"cuda": []}, 0, None),  # an older checkpoint written on a CPU
    ({"cuda_device": None}, 0, None),  # written on a CPU, resumed on a GPU
    ({"cuda_device": [7] * 4}, 0, [7] * 4),
])
def test_any_checkpoint_resumes_on_any_number_of_gpus(monkeypatch, saved, current, restored):
    from raydistill.train.checkpoint import set_rng_state

    base = {k: v for k, v in rng_state().items() if k != "cuda_device"}
    cuda = FakeCuda(monkeypatch, current=current)
    set_rng_state({**base, **saved})
    assert cuda.set_calls == ([] if restored is None else [(restored, current)])


def test_a_gpu_checkpoint_resumes_on_a_cpu_without_touching_cuda(monkeypatch):
    from raydistill.train.checkpoint import set_rng_state

    state = {**rng_state(), "cuda_device": [7] * 4}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda *a: pytest.fail("CUDA touched"))
    set_rng_state(state)
