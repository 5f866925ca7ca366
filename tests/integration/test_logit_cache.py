"""kd runs from cached teacher logits, with token-budget batches over two Ray Train workers.

The Parquet cache is built first by ``raydistill cache-logits`` (the standalone command), with
the teacher hidden state a hidden-state match reads; the run must find it valid (same teacher,
data, tokenization and hidden states, through the student's copy of the tokenizer) and train from
it instead of the teacher. The memory cache is recorded by the run's first epoch. One Ray Train
fit each.
"""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raydistill.config import DistillConfig
from raydistill.models.teacher_cache import cache_logits, read_manifest

WORDS = ("the cat sat on the mat and looked at the dog while a bird sang in the tree by the "
         "river near the old town").split()


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    # 24 examples of varied lengths, so token-budget batches differ in size.
    lines = [" ".join(WORDS[i % 5: i % 5 + 3 + (7 * i) % 12]) for i in range(24)]
    (d / "train.source").write_text("\n".join(lines) + "\n")
    (d / "train.target").write_text("\n".join(s.split()[1] + " ." for s in lines) + "\n")
    (d / "val.source").write_text("\n".join(lines[:4]) + "\n")
    (d / "val.target").write_text("\n".join(s.split()[1] + " ." for s in lines[:4]) + "\n")
    return d


def _cached_kd_config(teacher, data_dir, out, **cache) -> DistillConfig:
    """kd 4-4 -> 1-1 on two workers with token-budget batches, from cached logits and the
    teacher's last hidden state (a hidden-state match)."""
    return DistillConfig(
        method="kd", teacher=str(teacher), student_encoder_layers=1,
        student_decoder_layers=1, data_dir=str(data_dir), output_dir=str(out),
        num_workers=2, max_source_length=32, max_target_length=8, val_max_target_length=8,
        max_tokens_per_batch=48, max_epochs=2, learning_rate=1e-3, eval_beams=1,
        eval_batch_size=4, logger="tensorboard", do_predict=False, log_every_n_steps=1,
        distillation={"is_caching_logits": True, "temperature": 1, "hard_label_weight": 0.5,
                      "intermediate_matches": [{"layer_T": -1, "layer_S": -1, "feature": "hidden",
                                                "loss": "hidden_mse", "weight": 1.0}]},
        **cache,
    )


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_kd_from_cached_logits_with_token_budget_on_two_workers(ray_session, tiny_bart_dir,
                                                                 data_dir, tmp_path, capsys):
    from raydistill.pipeline import run_distill

    out = tmp_path / "run"
    cache_dir = out / "logit_cache"
    manifest = cache_logits(str(tiny_bart_dir), str(data_dir), str(cache_dir), top_k=16,
                            max_source_length=32, max_target_length=8, num_workers=2,
                            hidden_layers=[-1])
    assert manifest["num_examples"] == 24 and manifest["top_k"] == 16
    assert manifest["hidden_layers"] == [9]  # teacher 4-4: the last decoder layer
    table = pq.read_table(cache_dir / "parts")
    assert table.schema.field("topk_values").type.value_type == pa.float16()
    assert table.schema.field("topk_indices").type.value_type == pa.int32()
    assert table.schema.field("t_hidden_dec_9").type.value_type == pa.float16()

    # The command's k: reused (another k would rebuild).
    cfg = _cached_kd_config(tiny_bart_dir, data_dir, out, logit_cache_top_k=16)
    summary = run_distill(cfg, overwrite=True)
    printed = capsys.readouterr().out
    assert "teacher logits: reusing" in printed  # the command's cache fits the run
    # The hidden-state match trained from the cache: its loss is logged at every step.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    match = [e.value for e in events.Scalars("train/unweighted_hidden_hidden_mse_-1_-1")]
    assert len(match) >= 2 and all(math.isfinite(v) and v > 0 for v in match)
    assert read_manifest(cache_dir)["created"] == manifest["created"]

    plan = json.loads((out / "batch_plan.json").read_text())
    assert plan["mode"] == "token_budget" and plan["num_workers"] == 2
    assert plan["examples"] == 24 and plan["num_oversized"] == 0 and len(plan["batches_per_worker"]) == 2
    total = sum(math.ceil(c / cfg.gradient_accumulation_steps) for c in plan["batches_per_worker"])
    history = summary["val"]
    assert history[-1]["step"] == total  # the LR schedule counted the plan's batches
    assert history[-1]["epoch"] == 1 and len(history) == 2
    assert all(math.isfinite(h["train_loss"]) for h in history if "train_loss" in h)
    assert (out / "best_tfmr" / "config.json").is_file()

    # The same run with a sharded student (parallel: fsdp): the same cache and batch plan.
    sharded = run_distill(cfg.replace(parallel="fsdp"), overwrite=True)
    assert "teacher logits: reusing" in capsys.readouterr().out
    assert json.loads((out / "batch_plan.json").read_text())["batches_per_worker"] == \
        plan["batches_per_worker"]
    assert [h["step"] for h in sharded["val"]] == [h["step"] for h in history]
    assert all(math.isfinite(h["train_loss"]) for h in sharded["val"] if "train_loss" in h)
    assert (out / "best_tfmr" / "model.safetensors").is_file()  # whole, from the shards
    assert not (out / "best_tfmr" / "sharded").exists()


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_kd_with_logits_kept_in_memory_on_two_workers(ray_session, tiny_bart_dir, data_dir,
                                                      tmp_path):
    """logit_cache: memory (TextBrewer's caching): the first epoch runs the teacher and keeps its
    outputs, the workers exchange them, and the second epoch trains from them alone."""
    from raydistill.pipeline import run_distill

    out = tmp_path / "run"
    # The default k = 64 < V: token ids are kept too.
    cfg = _cached_kd_config(tiny_bart_dir, data_dir, out, logit_cache="memory")
    first, second = run_distill(cfg, overwrite=True)["val"]
    # Epoch 0: the live teacher on every batch; rank 0 holds what it saw (its share).
    assert first["logit_cache_hit_rate"] == 0.0 and 0 < first["logit_cache_examples"] < 24
    # Epoch 1: after the exchange every worker holds all 24, and no batch runs the teacher.
    assert second["logit_cache_hit_rate"] == 1.0 and second["logit_cache_examples"] == 24
    assert not (out / "logit_cache").exists()  # nothing written: the cache lived in memory
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    match = [e.value for e in events.Scalars("train/unweighted_hidden_hidden_mse_-1_-1")]
    assert len(match) >= 4 and all(math.isfinite(v) and v > 0 for v in match)
    assert (out / "best_tfmr" / "config.json").is_file()
