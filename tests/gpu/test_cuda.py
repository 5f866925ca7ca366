"""The CUDA paths, skipped without a GPU (CI has none); bench/gpu_check.sh runs them on the
device machine (docs/gpu.md).

Plain PyTorch, run even where Ray is absent (the device machine has none unless the pack of
bench/device_pack.py travels): a bf16 kd step against fp32 on the CPU; the chunked KD losses under
bf16 autocast at V >= 32,000 against their unchunked code; the kd (hidden-state MSE), tb and gkd
steps under ``torch.cuda.set_sync_debug_mode("error")`` (no host wait between two log lines);
gkd's on-policy sampling; fp16 with a GradScaler and fused AdamW; CTranslate2 on cuda or its
one-line fallback.

With Ray (skipped, with the reason, when ``import ray`` fails): Ray Train runs on one GPU (live
teacher, then a teacher cache built by GPU actors); ``num_workers: 0`` with ``use_gpu``, fp16,
``logit_cache: memory`` and ``freeze_encoder`` in one run, whose GPU checkpoint then resumes on
the CPU; ``pseudo-label`` and ``cache-logits`` with ``--num-gpus`` (two actors sharing the GPU);
generation on the GPU against the CPU.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from raydistill.config import DistillConfig
from raydistill.distill.step import LossStep, run_needs
from raydistill.models.scratch import new_model
from raydistill.models.student import make_student

pytestmark = pytest.mark.gpu

BASE = dict(data_dir="d", output_dir="o", teacher="t")

needs_ray = pytest.mark.needs_ray  # tests/conftest.py skips it, saying why, without Ray


def _batch(tokenizer, sources: list[str], targets: list[str]) -> dict[str, torch.Tensor]:
    """Padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 pads), as
    ``raydistill.data.tokenize.pad_batch`` makes them; that module imports ``ray.data`` when it
    loads, and these tests run without Ray."""
    src, tgt = tokenizer(sources).input_ids, tokenizer(targets).input_ids
    ids = torch.full((len(src), max(map(len, src))), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(tgt), max(map(len, tgt))), -100, dtype=torch.long)
    for i, (s, t) in enumerate(zip(src, tgt)):
        ids[i, :len(s)], labels[i, :len(t)] = torch.tensor(s), torch.tensor(t)
    return {"input_ids": ids, "attention_mask": ids.ne(tokenizer.pad_token_id).long(),
            "labels": labels}


SOURCES = ["the cat sat on the mat .", "a dog ran in the park with a red ball .",
           "birds sing in the morning .", "the quick brown fox jumps over the lazy dog ."]
TARGETS = ["cat .", "a dog ran in the park .", "birds sing .", "the fox jumps ."]


def _pair(tokenizer, eager: bool = False):
    """A tiny BART teacher (4-4) and its 4-2 student, on the CPU."""
    torch.manual_seed(0)
    kw = {"attn_implementation": "eager"} if eager else {}
    teacher = new_model("bart", len(tokenizer), encoder_layers=4, decoder_layers=4,
                        pad_token_id=tokenizer.pad_token_id, **kw).eval()
    student, e_ids, d_ids = make_student(teacher, e=4, d=2)
    return teacher, student, e_ids, d_ids


# ---- plain PyTorch -----------------------------------------------------------------------------

def test_bf16_kd_step_on_cuda_matches_fp32_on_cpu(tiny_tokenizer):
    """The training step of every run: SummarizationDistiller kd (KD + CE + hidden MSE)."""
    teacher, student, e_ids, d_ids = _pair(tiny_tokenizer)
    student.eval()
    batch = _batch(tiny_tokenizer, SOURCES[:2], ["cat .", "a dog ran in the park ."])
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


@pytest.mark.parametrize("vocab", [32_000, 50_265])
def test_chunked_kd_under_bf16_autocast_matches_the_unchunked_code(vocab, monkeypatch):
    """Logits made under bf16 autocast (a bf16 LM head), V where the losses run chunked: the
    chunked KL and top-k losses give the unchunked loss and gradient."""
    from raydistill.distill import chunked
    from raydistill.distill.losses import topk_kd_loss
    from raydistill.distill.objective import kd_kl_loss

    assert chunked.use_chunked(vocab)  # what training takes at this V
    torch.manual_seed(0)
    batch, length, hidden = 4, 32, 64
    h = torch.randn(batch, length, hidden, device="cuda")
    head_s = torch.nn.Linear(hidden, vocab, device="cuda")
    head_t = torch.nn.Linear(hidden, vocab, device="cuda")
    mask = torch.ones(batch, length, dtype=torch.bool, device="cuda")
    mask[1::2, length // 2:] = False  # padded targets

    def run(chunk: bool):
        monkeypatch.setattr(chunked, "CHUNKED_MIN_VOCAB", 0 if chunk else 1 << 40)
        head_s.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            s = head_s(h)
            with torch.no_grad():
                t = head_t(h)
            assert s.dtype == torch.bfloat16
            kl = kd_kl_loss(s, t, mask, 2.0)
            values, indices = t.float().topk(64, dim=-1)
            topk = topk_kd_loss(s, values - values[..., :1], indices, mask, 2.0, kind="ce")
        (kl + topk).backward()
        return float(kl), float(topk), head_s.weight.grad.clone()

    kl_u, topk_u, grad_u = run(chunk=False)
    kl_c, topk_c, grad_c = run(chunk=True)
    assert math.isfinite(kl_c) and math.isfinite(topk_c)
    assert kl_c == pytest.approx(kl_u, rel=1e-3) and topk_c == pytest.approx(topk_u, rel=1e-3)
    # The gradient reaches the bf16 logits through a bf16 cast on both paths: it agrees as a
    # whole, to bf16's precision, not element by element.
    rel = float((grad_c - grad_u).norm() / grad_u.norm())
    assert rel < 1e-2, f"gradient differs by {rel:.2e} (relative norm)"


TB_SECTION = {"temperature": 2.0, "hard_label_weight": 0.5, "kd_loss_weight": 1.0,
              "kd_loss_type": "ce",
              "intermediate_matches": [
                  {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse",
                   "weight": 1.0}]}
STEP_CASES = {  # the steps tests/unit/train/test_host_reads.py counts host reads of, on the CPU
    "kd": dict(method="kd", alpha_ce=0.5, alpha_mlm=0.3, alpha_hid=0.2),
    "tb": dict(method="kd", distillation=TB_SECTION),
    "gkd": dict(method="gkd", gkd={"lmbda": 0.0, "beta": 0.5}),
}


def _training_steps(cfg: DistillConfig, tokenizer, n: int, *, amp=torch.bfloat16, scaler=None):
    """A worker's training steps, as train/loop.py takes them, on tiny models on cuda: the
    target source's batch, the loss under autocast, backward, clipping, fused AdamW. Returns
    (step function(i) -> the loss, still on the device; the target source; the student; the
    optimizer)."""
    from raydistill.train.targets import make_targets

    device = torch.device("cuda")
    teacher, student, e_ids, d_ids = _pair(tokenizer, eager=True)
    teacher, student = teacher.to(device), student.to(device).train()
    needs = run_needs(cfg)
    projections = None
    if needs.projections:
        from raydistill.distill.textbrewer import build_projections

        projections = build_projections(needs.tb_config).to(device)
    loss_step = LossStep(cfg, [teacher], student, e_ids, d_ids, projections)
    state = {"global_step": 0, "epoch": 0, "batch_in_epoch": 0, "best_metric": None,
             "history": []}
    targets = make_targets(cfg, needs, loss_step, device, state)
    params = [p for p in student.parameters() if p.requires_grad]
    params += list(projections.parameters()) if projections is not None else []
    optimizer = torch.optim.AdamW(params, lr=1e-3, fused=True)  # build_optimizer's, on cuda
    host = [{k: v.pin_memory() for k, v in _batch(tokenizer, SOURCES[i % 4:] + SOURCES[:i % 4],
                                                   TARGETS[i % 4:] + TARGETS[:i % 4]).items()}
            for i in range(n)]

    def step(i: int) -> torch.Tensor:
        raw = {k: v.to(device, non_blocking=True) for k, v in host[i].items()}
        batch = targets.batch(raw, student, i)
        with torch.autocast("cuda", dtype=amp):
            loss, parts = loss_step(student, batch, i, n)
        (scaler.scale(loss) if scaler else loss).backward()
        targets.after_step(loss_step, batch, parts, 0.0)
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step, targets, student, optimizer


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_kd_tb_gkd_steps_never_wait_for_the_gpu(case, tiny_tokenizer):
    """Item 3 of issue 27 on a GPU: after a warm-up step, training steps under
    ``set_sync_debug_mode("error")``, which raises at any call that waits for the GPU (a value
    read on the host, a blocking copy, a synchronize)."""
    cfg = DistillConfig(**BASE, **STEP_CASES[case], logger="none", seed=0)
    step, _, _, _ = _training_steps(cfg, tiny_tokenizer, 4)
    step(0)  # first calls: cuBLAS handles, allocator growth
    torch.cuda.synchronize()
    losses = []
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(1, 4):
            losses.append(step(i))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(math.isfinite(float(x)) for x in losses)  # read after the checked steps


def test_gkd_samples_its_targets_on_the_gpu(tiny_tokenizer):
    """``method: gkd`` with lmbda 1: every micro-batch trains on targets the student samples on
    the GPU; CUDA events time the sampling (no synchronize)."""
    cfg = DistillConfig(**BASE, method="gkd", gkd={"lmbda": 1.0, "beta": 0.5,
                                                     "max_new_tokens": 8},
                        logger="none", seed=0)
    step, targets, _, _ = _training_steps(cfg, tiny_tokenizer, 3)
    losses = [float(step(i)) for i in range(3)]
    assert all(math.isfinite(x) for x in losses)
    m = targets.metrics()
    assert m["on_policy_fraction"] == 1.0 and m["gkd_batches"] == 3
    assert m["sample_seconds"] > 0 and m["step_seconds"] >= m["sample_seconds"]


def test_fp16_with_a_grad_scaler_and_fused_adamw(tiny_tokenizer):
    """``precision: fp16`` (GPUs without bf16): fp16 autocast, a GradScaler, the fused AdamW
    that reads the scaler's inf check on the device."""
    cfg = DistillConfig(**BASE, method="kd", alpha_ce=0.5, alpha_mlm=0.5, alpha_hid=1.0,
                        precision="fp16", logger="none", seed=0)
    scaler = torch.amp.GradScaler("cuda")
    step, _, student, optimizer = _training_steps(cfg, tiny_tokenizer, 4, amp=torch.float16,
                                                  scaler=scaler)
    before = [p.detach().clone() for p in student.parameters()]
    losses = [float(step(i)) for i in range(4)]
    assert all(math.isfinite(x) for x in losses)
    assert optimizer.defaults["fused"] and math.isfinite(scaler.get_scale())
    assert any(not torch.equal(a, p) for a, p in zip(before, student.parameters()))


def test_ctranslate2_on_cuda_or_its_one_line_fallback(tiny_bart_dir, tmp_path):
    """CTranslate2 on the GPU generates what transformers does (greedy, float32); a build that
    cannot (no CUDA in the wheel, no libcublas.so.12) falls back to transformers with one
    warning of one line, before any generation."""
    pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed here")
    from transformers import AutoTokenizer

    from raydistill.models.ct2 import generate_ct2, load_translator, prepare_backend
    from raydistill.models.generate import generate_local
    from raydistill.models.layers import load_seq2seq

    tok = AutoTokenizer.from_pretrained(str(tiny_bart_dir))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        used = prepare_backend(tiny_bart_dir, "ctranslate2", "float32", tmp_path / "ct2",
                               device="cuda", samples=SOURCES)
    fallbacks = [w for w in caught if "falls back to transformers" in str(w.message)]
    if used.name == "transformers":
        assert len(fallbacks) == 1 and "\n" not in str(fallbacks[0].message)
        print(f"CTranslate2 fell back: {fallbacks[0].message}")
        return
    assert not fallbacks
    model = load_seq2seq(str(tiny_bart_dir)).eval()
    expected = generate_local(model, tok, SOURCES, num_beams=1, max_length=12)
    got = generate_ct2(load_translator(used.ct2_dir, "cuda", "float32"), tok, SOURCES,
                       generation_config=used.generation_config(), num_beams=1, max_length=12)
    assert got == expected


# ---- with Ray ----------------------------------------------------------------------------------

@pytest.fixture
def ray_gpu(ray_session):
    """The session's Ray, when it sees this machine's GPU (else every GPU request would wait for
    Ray Train's placement timeouts until the test's own)."""
    gpus = ray_session.cluster_resources().get("GPU", 0)
    if gpus < 1:
        pytest.skip(f"Ray sees {gpus} GPUs here though torch sees {torch.cuda.device_count()}")
    return ray_session


def _run_config(teacher, data_dir, out, **kw) -> DistillConfig:
    common = dict(teacher=str(teacher), student_encoder_layers=2, student_decoder_layers=1,
                  data_dir=str(data_dir), max_source_length=32, max_target_length=8,
                  val_max_target_length=8, train_batch_size=2, max_epochs=2,
                  learning_rate=1e-3, eval_beams=1, eval_batch_size=4, do_predict=False,
                  log_every_n_steps=1, seed=0, output_dir=str(out), use_gpu=True)
    return DistillConfig(**{**common, **kw})


@needs_ray
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_kd_runs_on_one_gpu_in_bf16_live_and_from_a_gpu_built_cache(
        ray_gpu, tiny_bart_dir, tiny_data_dir, tmp_path, capsys):
    from safetensors import safe_open

    from raydistill.models.teacher_cache import read_manifest
    from raydistill.pipeline import run_distill

    live = run_distill(_run_config(tiny_bart_dir, tiny_data_dir, tmp_path / "live", method="kd",
                                   alpha_hid=1.0, num_workers=1, precision="bf16"))
    history = live["val"]
    assert history and all(math.isfinite(h["train_loss"]) for h in history)
    assert all(0 < h["gpu_peak_mem_gib"] < 40 for h in history)  # measured on the worker's GPU
    with safe_open(str(tmp_path / "live" / "best_tfmr" / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F32"}  # bf16 autocast, fp32 master weights: saved in fp32

    cached = run_distill(_run_config(
        tiny_bart_dir, tiny_data_dir, tmp_path / "cached", method="kd", num_workers=1,
        precision="bf16", logit_cache_top_k=16,
        distillation={"is_caching_logits": True, "temperature": 2, "hard_label_weight": 0.5,
                      "intermediate_matches": [{"layer_T": -1, "layer_S": -1, "feature": "hidden",
                                                "loss": "hidden_mse", "weight": 1.0}]}))
    assert "teacher logits: ready in" in capsys.readouterr().out  # built here, on the GPU
    manifest = read_manifest(tmp_path / "cached" / "logit_cache")
    assert manifest["top_k"] == 16 and manifest["num_examples"] == 6
    assert all(math.isfinite(h["train_loss"]) for h in cached["val"])


@needs_ray
@pytest.mark.integration
@pytest.mark.timeout(180)
def test_in_process_fp16_memory_cache_frozen_encoder_run_resumes_on_the_cpu(
        ray_gpu, tiny_bart_dir, tiny_data_dir, tmp_path, monkeypatch):
    """``num_workers: 0`` with ``use_gpu``: the loop in this process, on the GPU, in fp16 with a
    GradScaler and fused AdamW, the teacher's logits kept in memory (``logit_cache: memory``)
    and the encoder frozen. Then its last checkpoint (written on the GPU) loads on a machine
    without CUDA (``torch.cuda.is_available`` patched to False) and trains a step there."""
    from safetensors.torch import load_file

    from raydistill.pipeline import run_distill
    from raydistill.train import loop
    from raydistill.train.checkpoint import load_training_state

    out = tmp_path / "run"
    cfg = _run_config(
        tiny_bart_dir, tiny_data_dir, out, method="kd", num_workers=0, max_failures=0,
        precision="fp16", freeze_encoder=True, logit_cache="memory", logit_cache_top_k=16,
        distillation={"is_caching_logits": True, "temperature": 2, "hard_label_weight": 0.5,
                      "intermediate_matches": [{"layer_T": -1, "layer_S": -1, "feature": "hidden",
                                                "loss": "hidden_mse", "weight": 1.0}]})
    first, second = run_distill(cfg, overwrite=True)["val"]
    assert all(math.isfinite(h["train_loss"]) for h in (first, second))
    assert first["gpu_peak_mem_gib"] > 0  # use_gpu decided the device in this process too
    assert first["logit_cache_hit_rate"] == 0.0 and second["logit_cache_hit_rate"] == 1.0
    checkpoints = sorted(p.parent for p in out.rglob("optimizer.pt"))  # out/ray_results/...
    assert checkpoints, f"no checkpoint under {out}"
    last = checkpoints[-1]
    assert (last / "scaler.pt").is_file()  # fp16: the GradScaler's state is checkpointed
    saved = torch.load(last / "optimizer.pt", map_location="cpu", weights_only=True)
    assert all(g.get("fused") for g in saved["param_groups"])
    # out/student: the student as the driver made it, before training.
    w0 = load_file(str(out / "student" / "model.safetensors"))
    w1 = load_file(str(out / "best_tfmr" / "model.safetensors"))
    enc = [k for k in w0 if ".encoder.layers." in k]
    dec = [k for k in w0 if ".decoder.layers." in k]
    assert enc and all(torch.equal(w0[k], w1[k]) for k in enc)  # freeze_encoder
    assert any(not torch.equal(w0[k], w1[k]) for k in dec)

    # The same checkpoint on a machine without CUDA.
    from transformers import AutoTokenizer

    from raydistill.models.layers import load_seq2seq

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    student = load_seq2seq(str(last))
    cpu_cfg = DistillConfig.from_dict({**cfg.to_dict(), "use_gpu": False, "precision": "fp32"})
    optimizer, scheduler = loop.build_optimizer(cpu_cfg, student, 100)
    state = load_training_state(last, student=student, optimizer=optimizer, scheduler=scheduler)
    assert state["global_step"] > 0
    moments = [s["exp_avg"] for s in optimizer.state.values()]
    assert moments and all(m.device.type == "cpu" for m in moments)
    batch = _batch(AutoTokenizer.from_pretrained(str(last)), SOURCES[:2], TARGETS[:2])
    student.train()
    student(**{k: batch[k] for k in ("input_ids", "attention_mask")},
            labels=batch["labels"]).loss.backward()
    optimizer.step()  # the restored state steps on the CPU


@needs_ray
@pytest.mark.integration
@pytest.mark.timeout(150)
def test_pseudo_label_and_cache_logits_share_the_gpu(ray_gpu, tiny_tokenizer, tiny_data_dir,
                                                     tmp_path):
    """``--num-gpus 0.5`` with two actors: both on the one GPU, the outputs complete."""
    from raydistill.cli import main
    from raydistill.models.scratch import save_model_and_tokenizer
    from raydistill.models.teacher_cache import read_manifest

    # A teacher whose outputs differ by source (at init std 0.02 a random model writes nothing,
    # and pseudo-label refuses all-empty labels), as tests/integration/test_pseudo_label.py's.
    torch.manual_seed(0)
    model = new_model("bart", len(tiny_tokenizer), pad_token_id=tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    teacher = save_model_and_tokenizer(model, tiny_tokenizer, tmp_path / "teacher")
    labels = tmp_path / "pl"
    assert main(["pseudo-label", "--teacher", str(teacher), "--data-dir",
                 str(tiny_data_dir), "--out", str(labels), "--num-workers", "2",
                 "--num-gpus", "0.5", "--num-beams", "1", "--max-length", "8",
                 "--batch-size", "2"]) == 0
    written = (labels / "train.target").read_text().splitlines()  # empty labels are dropped
    assert 0 < len(written) <= len((tiny_data_dir / "train.source").read_text().splitlines())
    cache = tmp_path / "cache"
    assert main(["cache-logits", "--teacher", str(teacher), "--data-dir",
                 str(tiny_data_dir), "--out", str(cache), "--num-workers", "2",
                 "--num-gpus", "0.5", "--top-k", "8", "--max-target-length", "8",
                 "--batch-size", "2"]) == 0
    manifest = read_manifest(cache)
    assert manifest["top_k"] == 8 and manifest["num_examples"] == 6


@needs_ray
@pytest.mark.integration
@pytest.mark.timeout(120)
def test_generation_on_the_gpu_matches_the_cpu(ray_gpu, tiny_bart_dir):
    from transformers import AutoTokenizer

    from raydistill.models.generate import generate_local, generate_parallel, measure_latency
    from raydistill.models.layers import load_seq2seq

    sources = SOURCES[:3] * 3
    model = load_seq2seq(str(tiny_bart_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_bart_dir))
    on_cpu = generate_local(model, tok, sources, num_beams=2, max_length=12)
    on_gpu, seconds = generate_parallel(str(tiny_bart_dir), sources, num_beams=2, max_length=12,
                                        num_workers=1, num_gpus=1.0)
    assert on_gpu == on_cpu and seconds > 0  # fp32 on both: the same beams
    lat = measure_latency(str(tiny_bart_dir), sources, num_beams=2, max_length=12, n=4,
                          device="cuda")
    assert lat["ms_per_example"] > 0

