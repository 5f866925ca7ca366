"""``parallel: fsdp`` on one GPU: the paths FSDP2 takes only there, in a world of one process
(nccl), through the product's own loop (tests/unit/train/fsdp_worker.py builds the worker's
``Worker`` and runs ``run_epoch``, as tests/unit/train/test_parallel.py does with 2 gloo
processes on the CPU).

On cuda the sharded student gathers bf16 weights and reduces fp32 gradients
(``MixedPrecisionPolicy``; in a world of one FSDP2 casts and copies them: nccl's
reduce-scatter itself needs 2 GPUs), its checkpoint goes through torch.distributed.checkpoint
from CUDA shards, ``export_whole`` gathers those shards, and validation and gkd's on-policy
sampling generate through the sharded model on the GPU. Checked here, for a tiny BART (kd with
hidden-state MSE), T5 (the same) and Marian (gkd, ``lmbda: 1``):

- fsdp in bf16 gives the losses of a whole student under bf16 autocast (``parallel: ddp``),
  within BF16_TOL; its masters and AdamW moments stay fp32, and its layers compute with bf16
  weights;
- a sharded checkpoint loads into a fresh sharded student and resumes exactly;
- ``export_whole`` gives a folder that ``from_pretrained`` loads on the CPU, with the masters'
  fp32 weights, that generates what the sharded student generated;
- gkd samples every micro-batch through the sharded student and trains on it;
- ``precision: fp16`` gathers fp16 weights and skips the step whose gradient overflowed.

The same tests run on the CPU (gloo, fp32: the losses within test_parallel's TOL of ddp's) in
``bash bench/gpu_check.sh --rehearsal``, which ``make test`` runs: it sets GPU_CHECK_REHEARSAL,
without which the CPU variant skips (it would otherwise run twice in ``make test``). The worker
runs in a process of its own, so no process group is left in this one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from raydistill.models.scratch import new_model, save_model_and_tokenizer
from raydistill.models.student import make_student

WORKER = Path(__file__).resolve().parents[1] / "unit" / "train" / "fsdp_worker.py"

needs_ray = pytest.mark.needs_ray  # tests/conftest.py skips it, saying why, without Ray
in_rehearsal = pytest.mark.skipif(
    os.environ.get("GPU_CHECK_REHEARSAL") != "1",
    reason="the CPU variant runs in bash bench/gpu_check.sh --rehearsal (GPU_CHECK_REHEARSAL=1)")

# fp32 on the CPU: test_parallel.py's bound for fsdp against ddp (float sums in another order).
TOL = 5e-6
# bf16 on the GPU: fsdp computes with bf16 weights throughout (norms and softmax included),
# ddp under autocast with fp32 weights (norms and softmax in fp32); bf16 keeps 8 bits of
# mantissa (relative rounding 2^-9). Measured by the same jobs emulated on this CPU (FSDP2's
# bf16 MixedPrecisionPolicy over gloo against CPU bf16 autocast, a bf16 teacher): relative
# differences of 7.9e-5 to 3.4e-3 (BART, its weights at std 0.3) and 5.2e-5 to 5.0e-4 (T5)
# over the 4 steps. The bound is test_cuda.py's for bf16 against fp32, 9x the largest: room
# for the GPU's other kernels, while a sharded student that skipped a step is far outside it.
BF16_TOL = 3e-2
VAL = ["the cat sat on the mat .", "a dog ran in the park .", "birds sing in the morning ."]
KD = dict(method="kd", alpha_hid=1.0)  # kd with the hidden-state MSE (and CE, KL)
GKD = dict(method="gkd", gkd={"lmbda": 1.0, "beta": 0.5, "max_new_tokens": 8})
LAYERS = {"bart": (2, 1), "t5": (1, 1), "marian": (1, 1)}  # student (encoder, decoder) layers


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(spec: dict, tmp: Path) -> dict:
    """One worker process (rank 0 of 1), started as torchrun would; its results."""
    spec = {**spec, "results": str(tmp / "results.json")}
    (tmp / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_port()),
           "WORLD_SIZE": "1", "RANK": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(WORKER), str(tmp / "spec.json")], env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.returncode
    return json.loads(Path(spec["results"]).read_text())


def _models(tokenizer, tmp: Path) -> dict[str, dict]:
    """Per arch a 2-2 teacher (d_model 32) and its student, saved with the tokenizer. BART's
    matrices are drawn at std 0.3 (its student copies them): at init's 0.02 a random model
    writes nothing but special tokens, and the export's generation would compare empty texts."""
    models = {}
    for arch, (e, d) in LAYERS.items():
        torch.manual_seed(0)
        teacher = new_model(arch, len(tokenizer), encoder_layers=2, decoder_layers=2,
                            d_model=32, ffn_dim=64, pad_token_id=tokenizer.pad_token_id)
        if arch == "bart":
            with torch.no_grad():
                for p in teacher.parameters():
                    if p.dim() == 2:
                        p.normal_(0.0, 0.3)
        t_dir = save_model_and_tokenizer(teacher, tokenizer, tmp / f"{arch}_teacher")
        _, e_ids, d_ids = make_student(str(t_dir), e=e, d=d, save_path=tmp / f"{arch}_student")
        tokenizer.save_pretrained(tmp / f"{arch}_student")
        models[arch] = {"teacher": str(t_dir), "student": str(tmp / f"{arch}_student"),
                        "e_ids": e_ids, "d_ids": d_ids}
    return models


def _job(name: str, tmp: Path, model: dict, device: str, **config) -> dict:
    """test_parallel.py's job, at lr 1e-3 (4 AdamW steps), in the GPU's dtypes on cuda: bf16
    (fsdp: its MixedPrecisionPolicy; ddp: autocast) and the teacher in teacher_dtype auto."""
    gpu = device == "cuda"
    base = dict(data_dir="d", output_dir=str(tmp / name), logger="none", seed=0,
                task="translation", teacher=model["teacher"], train_batch_size=2,
                gradient_accumulation_steps=2, max_grad_norm=0.5, learning_rate=1e-3,
                val_check_steps=2, eval_beams=1, val_max_target_length=8,
                log_every_n_steps=100, precision="bf16" if gpu else "fp32",
                teacher_dtype="auto" if gpu else "fp32", use_gpu=gpu)
    return {"name": name, "out": str(tmp / name), "student": model["student"],
            "e_ids": model["e_ids"], "d_ids": model["d_ids"], "total_steps": 4, "batches": 8,
            "val": VAL, "config": {**base, **config}}


@pytest.fixture(scope="module", params=[
    pytest.param("cpu", marks=[needs_ray, in_rehearsal]),
    pytest.param("cuda", marks=[pytest.mark.gpu, needs_ray]),
])
def runs(request, tmp_path_factory, tiny_tokenizer):
    """Every job in one worker process: BART and T5 kd with ddp and fsdp, BART resumed from
    its fsdp step-2 checkpoint, Marian gkd on-policy with fsdp."""
    device = request.param
    if device == "cuda" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16: parallel: fsdp would train it in fp32")
    tmp = tmp_path_factory.mktemp(f"fsdp_{device}")
    models = _models(tiny_tokenizer, tmp)
    jobs = [_job(f"{arch}_{mode}", tmp, models[arch], device, parallel=mode, **KD)
            for arch in ("bart", "t5") for mode in ("ddp", "fsdp")]
    jobs.append({**_job("bart_resumed", tmp, models["bart"], device, parallel="fsdp", **KD),
                 "resume": str(tmp / "bart_fsdp" / "step_2")})
    jobs.append(_job("marian_gkd", tmp, models["marian"], device, parallel="fsdp", **GKD))
    jobs.append({**_job("bart_fp16", tmp, models["bart"], device, parallel="fsdp",
                        **{**KD, "precision": "fp16"}),
                 "inf_at": [3, 0] if device == "cuda" else None})  # fp32 on the CPU: unscaled
    return device, tmp, launch({"device": device, "jobs": jobs}, tmp)


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("arch", ["bart", "t5"])
def test_fsdp_kd_gives_the_whole_students_losses_in_the_gpus_dtypes(runs, arch):
    device, tmp, results = runs
    ddp, fsdp = results[f"{arch}_ddp"], results[f"{arch}_fsdp"]
    assert len(ddp["losses"]) == len(fsdp["losses"]) == 4
    assert all(x == x and abs(x) < 1e4 for x in fsdp["losses"])  # finite
    assert ddp["reports"] == fsdp["reports"] == [2, 4]
    if device == "cuda":
        for a, b in zip(ddp["losses"], fsdp["losses"]):
            assert b == pytest.approx(a, rel=BF16_TOL)
        assert fsdp["gathered"] == ["torch.bfloat16"]  # the layers computed with bf16 weights
        assert ddp["gathered"] == ["torch.float32"]  # autocast casts per op, not the weights
    else:
        assert max(abs(a - b) for a, b in zip(ddp["losses"], fsdp["losses"])) < TOL
        assert fsdp["gathered"] == ["torch.float32"]
    assert fsdp["masters"] == fsdp["moments"] == ["torch.float32"]  # fp32 masters, fp32 AdamW
    assert fsdp["masters_sharded"] and not ddp["masters_sharded"]
    start = load_file(str(tmp / f"{arch}_student" / "model.safetensors"))
    final = load_file(str(tmp / f"{arch}_fsdp" / "final.safetensors"))
    assert {v.dtype for v in final.values()} == {torch.float32}
    assert max(float((final[k] - start[k]).abs().max()) for k in start) > 1e-4  # it trained


def test_fp16_gathers_fp16_weights_and_skips_the_step_whose_gradient_overflowed(runs):
    """``precision: fp16`` (GPUs without bf16) with a sharded student: fp16 weights gathered,
    fp32 masters, the loss scaled by ``parallel.grad_scaler``; an inf put into the gradient
    before step 3 skips that step and halves the scale. On the CPU fp16 is fp32, unscaled."""
    device, _, results = runs
    run = results["bart_fp16"]
    assert run["masters"] == ["torch.float32"]
    if device == "cpu":
        assert run["gathered"] == ["torch.float32"] and run["scales"] == []
        return
    assert run["gathered"] == ["torch.float16"]
    assert run["moved"][0][2] is False and run["moved"][0][3] is True
    assert run["scales"][2] == run["scales"][1] / 2
    assert all(x == x and abs(x) < 1e4 for x in run["losses"])  # finite


def test_a_sharded_checkpoint_written_on_the_device_resumes_exactly(runs, tmp_path):
    """Its step-2 checkpoint (each tensor a shard on the device when saved) loads into a fresh
    sharded student: the weights are the checkpoint's bit for bit, and the next step's loss is
    the uninterrupted run's (same weights, batch and RNG: the same forward). On the CPU the
    rest of the run is too; on a GPU a backward pass may add in another order (atomics), so
    the last step is held to BF16_TOL there."""
    from raydistill.train.checkpoint import export_model

    device, tmp, results = runs
    ckpt = tmp / "bart_fsdp" / "step_2"
    assert sorted(p.name for p in (ckpt / "sharded").iterdir()) == [".metadata", "__0_0.distcp"]
    export_model(ckpt, tmp_path / "step_2")  # on the CPU, without a process group
    saved = load_file(str(tmp_path / "step_2" / "model.safetensors"))  # tied weights once
    loaded = load_file(str(tmp / "bart_resumed" / "loaded.safetensors"))
    assert _max_diff({k: loaded[k] for k in saved}, saved) == 0.0
    whole, resumed = results["bart_fsdp"], results["bart_resumed"]
    assert resumed["reports"] == [4] and len(resumed["losses"]) == 2
    assert resumed["losses"][0] == whole["losses"][2]
    if device == "cpu":
        assert resumed["losses"] == whole["losses"][2:]
        assert _max_diff(load_file(str(tmp / "bart_fsdp" / "final.safetensors")),
                         load_file(str(tmp / "bart_resumed" / "final.safetensors"))) == 0.0
    else:
        assert resumed["losses"][1] == pytest.approx(whole["losses"][3], rel=BF16_TOL)


def test_the_exported_student_loads_on_the_cpu_and_generates_what_the_sharded_one_did(
        runs, tmp_path):
    """``export_whole`` of the step-4 shards: a Hugging Face folder with the fp32 masters.
    Its greedy generation is compared with the sharded student's at step 4 (validation's, on
    rank 0) in the dtype that student computed in: fp32 on the CPU; on the GPU a copy whose
    parameters are cast to bf16 (what the MixedPrecisionPolicy gathers: buffers stay fp32), on
    cuda, so the comparison is exact in both (random tiny models have near ties, which an
    fp32 argmax may break otherwise)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from raydistill.models.generate import generate_local
    from raydistill.train.checkpoint import export_model

    device, tmp, results = runs
    export_model(tmp / "bart_fsdp" / "step_4", tmp_path / "best")
    assert not (tmp_path / "best" / "sharded").exists()
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "best")  # on the CPU
    assert model.lm_head.weight.data_ptr() == model.model.shared.weight.data_ptr()  # tied
    final = load_file(str(tmp / "bart_fsdp" / "final.safetensors"))
    assert _max_diff({k: v for k, v in model.state_dict().items() if k in final}, final) == 0.0
    sources, preds = results["bart_fsdp"]["generated"][-1]
    assert len(sources) == len(VAL) and any(preds)  # one rank: every row; not all empty
    tok = AutoTokenizer.from_pretrained(tmp_path / "best")
    on_cpu = generate_local(model, tok, sources, num_beams=1, max_length=8)
    if device == "cpu":
        assert on_cpu == preds
        return
    model.to("cuda")
    for p in model.parameters():  # tied weights are one parameter: cast once, still tied
        p.data = p.data.to(torch.bfloat16)
    assert generate_local(model, tok, sources, num_beams=1, max_length=8, device="cuda") == preds
    same = sum(a == b for a, b in zip(on_cpu, preds))
    print(f"fp32 on the CPU: {same}/{len(preds)} greedy outputs as the bf16 sharded student's")


def test_gkd_samples_through_the_sharded_student_on_the_device(runs):
    device, tmp, results = runs
    gkd = results["marian_gkd"]
    assert len(gkd["samples"]) == 8  # 4 steps of 2 micro-batches, every one on-policy
    assert all(len(rows) == 2 for ranks in gkd["samples"] for rows in ranks)  # 2 rows each
    assert len(gkd["losses"]) == 4 and all(x == x and abs(x) < 1e4 for x in gkd["losses"])
    assert gkd["gathered"] == (["torch.bfloat16"] if device == "cuda" else ["torch.float32"])
    assert gkd["reports"] == [2, 4]
