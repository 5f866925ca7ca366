"""parallel: fsdp against ddp, in plain torch (2 gloo processes, no Ray): the worker loop's own
``run_epoch`` on tiny BART / T5 / Marian students (tests/unit/train/fsdp_worker.py runs it).

What a sharded run must keep of a DDP one: the same losses and final weights (within the
tolerance measured below: float sums in another order), through gradient accumulation,
clipping over sharded gradients, frozen embeddings and tied output layers; a checkpoint
(each rank its shard) that resumes exactly, on 2 workers or on 1; an exported whole model
that generates what the sharded student generated; a sharded teacher giving the replicated
teacher's targets; gkd sampling from a sharded student or teacher drawing DDP's very samples;
a TextBrewer section whose projections train (whole on every rank) and resume as with DDP.
The config checks are at the end.
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

from raydistill.config import DistillConfig
from raydistill.errors import ConfigError
from raydistill.models.scratch import new_model, save_model_and_tokenizer
from raydistill.models.student import make_student
from raydistill.train.device import check_sharding

WORKER = Path(__file__).with_name("fsdp_worker.py")
# Measured on this CPU (torch 2.13, gloo, 4 AdamW steps at lr 1e-2, clipped): fsdp's losses
# within 9.6e-7 of DDP's and its final weights within 3.6e-6 (max abs; BART 2.4e-7 / 3.6e-6,
# T5 4.8e-7 / 1.4e-6, Marian 1.3e-9 / 2.2e-7; gkd on-policy 2.8e-9 / 4.4e-7, seq_kd from a
# sharded teacher 1.8e-9 / 4.3e-7, both with the very samples DDP drew; the TextBrewer section
# 9.5e-7 / 1.5e-6, its projections 4.3e-8). The bounds leave at least half an order of magnitude.
TOL, WEIGHT_TOL = 5e-6, 5e-5
# fp16 weights against fp32 ones, the same steps: losses within 3.6e-5 of the fp32 run's (measured)
FP16_TOL = 2e-4
VAL = ["the cat sat on the mat .", "a dog ran in the park .", "birds sing in the morning ."]
METHODS = {  # arch -> the config keys of its run (dropout on: the RNG must resume too)
    "bart": dict(method="kd", alpha_hid=1.0, freeze_embeds=True),
    "t5": dict(method="sft", eval_beams=2),  # validation's beam search in lockstep too
    "marian": dict(method="gkd", gkd={"lmbda": 0.0, "beta": 0.5, "max_new_tokens": 8}),
}
LAYERS = {"bart": (2, 1), "t5": (1, 1), "marian": (1, 1)}  # student (encoder, decoder) layers
# gkd that samples, from the sharded student (on-policy, every micro-batch) or from the sharded
# teacher (seq_kd). Their Marian pair has EOS's logit raised by EOS_BIAS (about 15% a token
# for these random models), so that the ranks' samples end at different lengths: the rank done
# first keeps stepping in lockstep, and must draw nothing then.
SAMPLING = {
    "onpolicy": dict(method="gkd", gkd={"lmbda": 1.0, "beta": 0.5, "max_new_tokens": 8}),
    "seqkd": dict(method="gkd", teacher_parallel="fsdp",
                  gkd={"lmbda": 0.0, "seq_kd": True, "beta": 0.5, "max_new_tokens": 8}),
}
EOS_BIAS = 4.0
# A TextBrewer section with hidden-state matches through trained projections (the encoder's
# at its own learning rate), beside the KD and hard-label losses.
TB = dict(method="kd", distillation={
    "temperature": 2.0, "hard_label_weight": 0.5, "kd_loss_weight": 1.0,
    "intermediate_matches": [
        {"layer_T": 2, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1.0,
         "proj": ["linear", 32, 32, {"lr": 5e-3}]},
        {"layer_T": 5, "layer_S": 4, "feature": "hidden", "loss": "hidden_mse", "weight": 1.0,
         "proj": ["tanh", 32, 32]}]})

# Layerdrop: each worker must skip the same layers (train/layerdrop.py), or a sharded layer's
# all-gather waits for a worker that skipped it; the BART student has 2 + 1 layers.
LAYERDROP = dict(method="sft", encoder_layerdrop=0.5, decoder_layerdrop=0.5)

# fp16 (GPUs without bf16) with a sharded student, on the CPU standing in for such a GPU: the
# weights gathered in fp16, the loss scaled by a ShardedGradScaler; at optimizer step 3 one
# rank's shard of the gradients overflows (INF_AT: [step, rank]).
INF_AT = [3, 1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(spec: dict, world: int, tmp: Path) -> dict:
    """Start ``world`` worker processes as torchrun would and return rank 0's results."""
    spec_file = tmp / f"spec_{world}.json"
    spec = {**spec, "results": str(tmp / f"results_{world}.json")}
    spec_file.write_text(json.dumps(spec))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_port()),
           "WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(spec_file)],
                              env={**env, "RANK": str(r)}) for r in range(world)]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0] * world, codes
    return json.loads(Path(spec["results"]).read_text())


def job(name: str, tmp: Path, model: dict, **config) -> dict:
    base = dict(data_dir="d", output_dir=str(tmp / name), logger="none", seed=0,
                task="translation", teacher=model["teacher"], train_batch_size=2,
                gradient_accumulation_steps=2, max_grad_norm=0.5, learning_rate=1e-2,
                val_check_steps=2, eval_beams=1, val_max_target_length=8,
                log_every_n_steps=100, teacher_dtype="fp32")
    return {"name": name, "out": str(tmp / name), "student": model["student"],
            "e_ids": model["e_ids"], "d_ids": model["d_ids"], "total_steps": 4, "batches": 8,
            "val": VAL, "config": {**base, **config}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tokenizer):
    """Every run at once (one start of the processes): per arch ddp and fsdp; bart with a
    sharded teacher; bart resumed from its step-2 checkpoint on 2 workers, then on 1."""
    tmp = tmp_path_factory.mktemp("fsdp")
    models = {}
    for arch in METHODS:
        torch.manual_seed(0)
        teacher = new_model(arch, len(tiny_tokenizer), encoder_layers=2, decoder_layers=2,
                            d_model=32, ffn_dim=64, pad_token_id=tiny_tokenizer.pad_token_id)
        t_dir = save_model_and_tokenizer(teacher, tiny_tokenizer, tmp / f"{arch}_teacher")
        e, d = LAYERS[arch]
        _, e_ids, d_ids = make_student(str(t_dir), e=e, d=d, save_path=tmp / f"{arch}_student")
        tiny_tokenizer.save_pretrained(tmp / f"{arch}_student")
        models[arch] = {"teacher": str(t_dir), "student": str(tmp / f"{arch}_student"),
                        "e_ids": e_ids, "d_ids": d_ids}
    eos = {k: _raise_eos(v, tmp / f"marian_eos_{k}", tiny_tokenizer.eos_token_id)
           for k, v in models["marian"].items() if k in ("teacher", "student")}
    models["marian_eos"] = {**models["marian"], **eos}
    jobs = [job(f"{arch}_{mode}", tmp, models[arch], parallel=mode, **kw)
            for arch, kw in METHODS.items() for mode in ("ddp", "fsdp")]
    jobs.append(job("bart_teacher_fsdp", tmp, models["bart"], parallel="fsdp",
                    teacher_parallel="fsdp", **METHODS["bart"]))
    for name, kw in SAMPLING.items():
        jobs.append(job(f"{name}_ddp", tmp, models["marian_eos"], parallel="ddp",
                        **{**kw, "teacher_parallel": "replicate"}))
        jobs.append(job(f"{name}_fsdp", tmp, models["marian_eos"], parallel="fsdp", **kw))
    jobs += [job(f"tb_{mode}", tmp, models["bart"], parallel=mode, **TB)
             for mode in ("ddp", "fsdp")]
    jobs += [job(f"layerdrop_{mode}", tmp, models["bart"], parallel=mode, **LAYERDROP)
             for mode in ("ddp", "fsdp")]
    jobs += [job(f"bart_gc_{mode}", tmp, models["bart"], parallel=mode, gradient_checkpointing=True,
                 **METHODS["bart"]) for mode in ("ddp", "fsdp")]
    jobs.append({**job("bart_fp16", tmp, models["bart"], parallel="fsdp", precision="fp16",
                       **METHODS["bart"]), "fp16_on_cpu": True, "inf_at": INF_AT})
    jobs.append({**job("tb_resumed", tmp, models["bart"], parallel="fsdp", **TB),
                 "resume": str(tmp / "tb_fsdp" / "step_2")})
    resume = str(tmp / "bart_fsdp" / "step_2")
    jobs.append({**job("bart_resumed", tmp, models["bart"], parallel="fsdp", **METHODS["bart"]),
                 "resume": resume})
    two = launch({"jobs": jobs}, 2, tmp)
    one = launch({"jobs": [{**job("bart_one_worker", tmp, models["bart"], parallel="fsdp",
                                  **METHODS["bart"]), "resume": resume}]}, 1, tmp)
    return tmp, {**two, **one}, models


def _raise_eos(src: str, dst: Path, eos: int) -> str:
    """A copy of the model folder ``src`` whose EOS logit is raised by EOS_BIAS."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(src)
    model.final_logits_bias[0, eos] = EOS_BIAS
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return str(dst)


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("arch", list(METHODS))
def test_fsdp_gives_ddp_losses_and_final_weights(runs, arch):
    tmp, results, _ = runs
    ddp, fsdp = results[f"{arch}_ddp"], results[f"{arch}_fsdp"]
    assert len(ddp["losses"]) == len(fsdp["losses"]) == 4
    assert max(abs(a - b) for a, b in zip(ddp["losses"], fsdp["losses"])) < TOL
    assert ddp["reports"] == fsdp["reports"] == [2, 4]
    assert ddp["bucket_views"] == 1  # parallel.ddp_kwargs: one copy of the gradients
    assert ddp["generated"] == fsdp["generated"]  # validation's outputs, rank 0's share
    w_ddp = load_file(str(tmp / f"{arch}_ddp" / "final.safetensors"))
    w_fsdp = load_file(str(tmp / f"{arch}_fsdp" / "final.safetensors"))
    start = load_file(str(Path(runs[2][arch]["student"]) / "model.safetensors"))
    moved = max(float((w_fsdp[k] - start[k]).abs().max()) for k in start)
    assert moved > 1e-3  # the steps changed the weights: the comparison is not of two copies
    assert _max_diff(w_ddp, w_fsdp) < WEIGHT_TOL
    if arch == "bart":  # freeze_embeds: the (tied) embeddings never moved, sharded or not
        assert torch.equal(w_fsdp["model.shared.weight"], start["model.shared.weight"])


@pytest.mark.parametrize("name", list(SAMPLING))
def test_fsdp_samples_what_ddp_samples_and_gives_its_losses_and_weights(runs, name):
    """gkd sampling from a sharded model: the student on-policy (lmbda 1), the sharded teacher
    (seq_kd). Token for token DDP's samples: a rank whose rows ended first stepped on in
    lockstep without drawing (its RNG stayed where DDP's is)."""
    tmp, results, _ = runs
    ddp, fsdp = results[f"{name}_ddp"], results[f"{name}_fsdp"]
    assert len(fsdp["samples"]) == 8  # 4 steps of 2 micro-batches, every one sampled
    assert fsdp["samples"] == ddp["samples"]
    # in some micro-batch the ranks' samples have different lengths: one finished first
    assert any(len({len(rank[0]) for rank in both}) > 1 for both in fsdp["samples"])
    assert max(abs(a - b) for a, b in zip(ddp["losses"], fsdp["losses"])) < TOL
    w_fsdp = load_file(str(tmp / f"{name}_fsdp" / "final.safetensors"))
    start = load_file(str(Path(runs[2]["marian_eos"]["student"]) / "model.safetensors"))
    assert max(float((w_fsdp[k] - start[k]).abs().max()) for k in start) > 1e-3  # it trained
    assert _max_diff(load_file(str(tmp / f"{name}_ddp" / "final.safetensors")), w_fsdp) < WEIGHT_TOL
    assert ddp["generated"] == fsdp["generated"]


def test_a_distillation_section_trains_its_projections_as_ddp_does_and_resumes(runs):
    """TextBrewer matches through projections: whole and equal on every rank, trained as with
    ddp; their weights and AdamW state are in the sharded checkpoint (the resume is exact)."""
    from raydistill.distill.textbrewer import DistillationConfig, build_projections

    tmp, results, _ = runs
    ddp, fsdp, resumed = results["tb_ddp"], results["tb_fsdp"], results["tb_resumed"]
    assert ddp["projections_agree"] and fsdp["projections_agree"] and resumed["projections_agree"]
    assert max(abs(a - b) for a, b in zip(ddp["losses"], fsdp["losses"])) < TOL
    for name in ("final", "projections"):
        assert _max_diff(load_file(str(tmp / "tb_ddp" / f"{name}.safetensors")),
                         load_file(str(tmp / "tb_fsdp" / f"{name}.safetensors"))) < WEIGHT_TOL
        assert _max_diff(load_file(str(tmp / "tb_fsdp" / f"{name}.safetensors")),
                         load_file(str(tmp / "tb_resumed" / f"{name}.safetensors"))) == 0.0
    assert resumed["losses"] == fsdp["losses"][2:]
    torch.manual_seed(0)  # the run's seed: every rank's initial projections
    start = build_projections(DistillationConfig.from_dict(TB["distillation"])).state_dict()
    trained = load_file(str(tmp / "tb_fsdp" / "projections.safetensors"))
    assert min(float((trained[k] - start[k]).abs().max()) for k in start) > 1e-4


def test_a_sharded_teacher_gives_the_replicated_teachers_targets(runs):
    tmp, results, _ = runs
    replicated, sharded = results["bart_fsdp"], results["bart_teacher_fsdp"]
    assert max(abs(a - b) for a, b in zip(replicated["losses"], sharded["losses"])) < TOL
    assert _max_diff(load_file(str(tmp / "bart_fsdp" / "final.safetensors")),
                     load_file(str(tmp / "bart_teacher_fsdp" / "final.safetensors"))) < WEIGHT_TOL


def test_a_sharded_checkpoint_resumes_exactly(runs):
    """Killed after its step-2 checkpoint (a new worker loads it: weights, AdamW state,
    schedule, RNG, data position) and run to step 4: bit for bit the run that never stopped."""
    tmp, results, _ = runs
    ckpt = tmp / "bart_fsdp" / "step_2"
    assert sorted(p.name for p in (ckpt / "sharded").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp"]  # each rank wrote its own shard
    manifest = json.loads((ckpt / "files.json").read_text())
    assert {"sharded/__0_0.distcp", "sharded/__1_0.distcp", "sharded/.metadata",
            "trainer_state.json", "config.json"} <= set(manifest)
    assert not (ckpt / "model.safetensors").exists() and not (ckpt / "optimizer.pt").exists()
    whole, resumed = results["bart_fsdp"], results["bart_resumed"]
    assert resumed["losses"] == whole["losses"][2:]
    assert resumed["reports"] == [4]
    assert _max_diff(load_file(str(tmp / "bart_fsdp" / "final.safetensors")),
                     load_file(str(tmp / "bart_resumed" / "final.safetensors"))) == 0.0


def test_a_two_worker_checkpoint_resumes_on_one_worker(runs):
    tmp, results, _ = runs
    one = results["bart_one_worker"]
    assert one["reports"] == [4] and len(one["losses"]) == 2
    assert all(l == l and l < 100 for l in one["losses"])  # finite: it trains on
    # The one worker's step 3 starts from the 2-worker step-2 state; its batches are both of
    # the 2 workers' (the same examples), so its first loss is near their mean.
    two = results["bart_fsdp"]["losses"]
    assert abs(one["losses"][0] - two[2]) < 1.0


def test_the_exported_student_is_whole_tied_and_generates_what_the_sharded_one_did(runs, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from raydistill.models.generate import generate_local
    from raydistill.train.checkpoint import export_model

    tmp, results, _ = runs
    export_model(tmp / "bart_fsdp" / "step_4", tmp_path / "best")
    assert (tmp_path / "best" / "model.safetensors").is_file()
    assert (tmp_path / "best" / "tokenizer.json").is_file()
    assert not list((tmp_path / "best").glob("*.distcp")) and not (tmp_path / "best" / "sharded").exists()
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "best")
    assert model.lm_head.weight.data_ptr() == model.model.shared.weight.data_ptr()  # tied
    final = load_file(str(tmp / "bart_fsdp" / "final.safetensors"))
    assert _max_diff({k: v for k, v in model.state_dict().items() if k in final}, final) == 0.0
    sources, preds = results["bart_fsdp"]["generated"][-1]  # rank 0's share at step 4
    assert len(sources) == 2  # 3 rows on 2 ranks: rank 0 has 2 (rank 1 one, padded to 2)
    tok = AutoTokenizer.from_pretrained(tmp_path / "best")
    assert generate_local(model, tok, sources, num_beams=1, max_length=8) == preds


def test_layerdrop_skips_the_same_layers_on_every_worker_and_gives_ddps_losses(runs):
    tmp, results, _ = runs
    ddp, fsdp = results["layerdrop_ddp"], results["layerdrop_fsdp"]
    assert ddp["layers_agree"] and fsdp["layers_agree"]
    assert ddp["layers"] == fsdp["layers"]
    forwards = 4 * 2  # 4 steps of 2 micro-batches, 3 layers each when none is dropped
    assert 0 < len(fsdp["layers"]) < 3 * forwards
    assert max(abs(a - b) for a, b in zip(ddp["losses"], fsdp["losses"])) < TOL
    w_ddp = load_file(str(tmp / "layerdrop_ddp" / "final.safetensors"))
    w_fsdp = load_file(str(tmp / "layerdrop_fsdp" / "final.safetensors"))
    assert _max_diff(w_ddp, w_fsdp) < WEIGHT_TOL


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_gradient_checkpointing_recomputes_the_same_training(runs, mode):
    """Layers that recompute their activations in the backward pass (dropout's masks too) train
    as the same run without: its losses and final weights, with ddp and fsdp."""
    tmp, results, _ = runs
    plain, gc = results[f"bart_{mode}"], results[f"bart_gc_{mode}"]
    assert gc["checkpointing"] and not plain["checkpointing"]
    assert max(abs(a - b) for a, b in zip(plain["losses"], gc["losses"])) < TOL
    assert _max_diff(load_file(str(tmp / f"bart_{mode}" / "final.safetensors")),
                     load_file(str(tmp / f"bart_gc_{mode}" / "final.safetensors"))) < WEIGHT_TOL


def test_fp16_shards_skip_together_when_one_ranks_gradient_overflows(runs):
    """Whether a step overflowed is agreed over the ranks (each sees only its shard): the
    step where rank 1's shard holds an inf changes no rank's weights and halves the scale;
    the other steps train, near the fp32 run's losses."""
    _, results, _ = runs
    fp16, fp32 = results["bart_fp16"], results["bart_fsdp"]
    assert fp16["gathered"] == ["torch.float16"] and fp16["masters"] == ["torch.float32"]
    step = INF_AT[0] - 1
    assert fp16["moved"][0] == fp16["moved"][1]  # every rank took, or skipped, the same steps
    assert not fp16["moved"][0][step] and fp16["moved"][0][step + 1]
    assert fp16["scales"][step] == fp16["scales"][step - 1] / 2
    assert fp16["moved"][0][0] or fp16["moved"][0][1]  # it trains
    before_skip = INF_AT[0]  # the losses of steps 1-3: computed before any step differed
    assert max(abs(a - b) for a, b in zip(fp16["losses"][:before_skip],
                                          fp32["losses"][:before_skip])) < FP16_TOL


# ---- what fsdp refuses, in one line -----------------------------------------------------

@pytest.mark.parametrize("kw,msg", [
    (dict(parallel="fsdp", num_workers=0), "set num_workers >= 1"),
    (dict(teacher_parallel="fsdp", num_workers=0), "teacher_parallel: fsdp shards over"),
])
def test_unsupported_fsdp_combinations_are_one_line_errors(kw, msg):
    cfg = DistillConfig(**{"teacher": "t", "data_dir": "d", "output_dir": "o", "num_workers": 2,
                           **kw})
    with pytest.raises(ConfigError) as err:
        check_sharding(cfg)
    assert msg in str(err.value) and "\n" not in str(err.value)


def test_supported_fsdp_configs_pass_and_unknown_values_are_refused():
    for kw in (dict(parallel="fsdp"), dict(teacher_parallel="fsdp"),
               dict(parallel="fsdp", method="gkd", gkd={"lmbda": 0.0}),
               dict(parallel="fsdp", teacher_parallel="fsdp", method="gkd",
                    gkd={"lmbda": 0.5, "seq_kd": True}),
               dict(parallel="fsdp", teacher_parallel="fsdp", **TB),
               dict(parallel="fsdp", encoder_layerdrop=0.1, decoder_layerdrop=0.2),
               dict(parallel="fsdp", precision="fp16"),
               dict(teacher_parallel="fsdp", encoder_layerdrop=0.1)):
        check_sharding(DistillConfig(teacher="t", data_dir="d", output_dir="o", num_workers=2, **kw))
    with pytest.raises(ConfigError, match="parallel='zero3' is not allowed"):
        DistillConfig(teacher="t", data_dir="d", output_dir="o", parallel="zero3")

