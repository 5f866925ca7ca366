"""Checkpoints restore exactly (weights, optimizer, scheduler, RNG, projections); atomic writes."""

import json
import random

import numpy as np
import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from raydistill.models.scratch import new_model
from raydistill.train.checkpoint import (
    load_training_state,
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
