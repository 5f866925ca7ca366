"""The CUDA paths (skipped without a GPU; CI has none): a bf16 loss step against fp32 on the CPU,
Ray Train runs on one GPU (live teacher, then a teacher cache built by GPU actors), and
generation on the GPU against the CPU."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open

from raydistill.config import DistillConfig
from raydistill.data.tokenize import pad_batch
from raydistill.models.teacher_cache import read_manifest
from raydistill.distill.step import LossStep
from raydistill.models.scratch import new_model
from raydistill.models.student import make_student

pytestmark = pytest.mark.gpu

BASE = dict(data_dir="d", output_dir="o", teacher="t")


def test_bf16_kd_step_on_cuda_matches_fp32_on_cpu(tiny_tokenizer):
    """The training step of every run: SummarizationDistiller kd (KD + CE + hidden MSE)."""
    torch.manual_seed(0)
    teacher = new_model("bart", len(tiny_tokenizer), encoder_layers=4, decoder_layers=4).eval()
    student, e_ids, d_ids = make_student(teacher, e=4, d=2)
    student.eval()
    src = tiny_tokenizer(["the cat sat on the mat .", "a dog ran ."]).input_ids
    tgt = tiny_tokenizer(["cat .", "a dog ran in the park ."]).input_ids
    batch = pad_batch(src, tgt, tiny_tokenizer.pad_token_id)
    cfg = DistillConfig(method="kd", alpha_ce=0.8, alpha_mlm=0.2, alpha_hid=3.0, **BASE)

    loss_cpu, parts_cpu = LossStep(cfg, [teacher], student, e_ids, d_ids)(student, batch, 0, 10)

    teacher, student = teacher.cuda(), student.cuda()
    gpu_batch = {k: v.cuda() for k, v in batch.items()}
    step = LossStep(cfg, [teacher], student, e_ids, d_ids)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss_gpu, parts_gpu = step(student, gpu_batch, 0, 10)
    # bf16 keeps 8 bits of mantissa: components agree to about 1%.
    assert float(loss_gpu) == pytest.approx(float(loss_cpu), rel=3e-2)
    for k, v in parts_cpu.items():
        assert float(parts_gpu[k]) == pytest.approx(float(v), rel=5e-2, abs=1e-3), k
    loss_gpu.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is frozen


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_kd_runs_on_one_gpu_in_bf16_live_and_from_a_gpu_built_cache(
        ray_session, tiny_bart_dir, tiny_data_dir, tmp_path, capsys):
    from raydistill.pipeline import run_distill

    common = dict(teacher=str(tiny_bart_dir), student_encoder_layers=2, student_decoder_layers=1,
                  data_dir=str(tiny_data_dir), num_workers=1, use_gpu=True, precision="bf16",
                  max_source_length=32, max_target_length=8, val_max_target_length=8,
                  train_batch_size=2, max_epochs=2, learning_rate=1e-3, eval_beams=1,
                  eval_batch_size=4, do_predict=False, log_every_n_steps=1, seed=0)
    live = run_distill(DistillConfig(method="kd", alpha_hid=1.0, output_dir=str(tmp_path / "live"),
                                     **common))
    history = live["val"]
    assert history and all(math.isfinite(h["train_loss"]) for h in history)
    assert all(0 < h["gpu_peak_mem_gib"] < 40 for h in history)  # measured on the worker's GPU
    with safe_open(str(tmp_path / "live" / "best_tfmr" / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F32"}  # bf16 autocast, fp32 master weights: saved in fp32

    cached = run_distill(DistillConfig(
        method="kd", output_dir=str(tmp_path / "cached"), logit_cache_top_k=16,
        distillation={"is_caching_logits": True, "temperature": 2, "hard_label_weight": 0.5,
                      "intermediate_matches": [{"layer_T": -1, "layer_S": -1, "feature": "hidden",
                                                "loss": "hidden_mse", "weight": 1.0}]},
        **common))
    assert "teacher logits: ready in" in capsys.readouterr().out  # built here, on the GPU
    manifest = read_manifest(tmp_path / "cached" / "logit_cache")
    assert manifest["top_k"] == 16 and manifest["num_examples"] == 6
    assert all(math.isfinite(h["train_loss"]) for h in cached["val"])


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_generation_on_the_gpu_matches_the_cpu(ray_session, tiny_bart_dir):
    from transformers import AutoTokenizer

    from raydistill.models.generate import generate_local, generate_parallel, measure_latency
    from raydistill.models.layers import load_seq2seq

    sources = ["the cat sat on the mat .", "a dog ran in the park with a red ball .",
               "birds sing in the morning ."] * 3
    model = load_seq2seq(str(tiny_bart_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_bart_dir))
    on_cpu = generate_local(model, tok, sources, num_beams=2, max_length=12)
    on_gpu, seconds = generate_parallel(str(tiny_bart_dir), sources, num_beams=2, max_length=12,
                                        num_workers=1, num_gpus=1.0)
    assert on_gpu == on_cpu and seconds > 0  # fp32 on both: the same beams
    lat = measure_latency(str(tiny_bart_dir), sources, num_beams=2, max_length=12, n=4,
                          device="cuda")
    assert lat["ms_per_example"] > 0
