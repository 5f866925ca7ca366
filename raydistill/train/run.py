"""``raydistill distill``: check inputs -> student -> datasets -> TorchTrainer.fit -> outputs.

Everything that can be wrong with the input is checked before Ray starts a worker. Outputs
(``best_tfmr/``, ``metrics.json``, ...) are written under temporary names and renamed into
place, so a run killed at any moment leaves the previous ones readable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from raydistill.config import DistillConfig
from raydistill.errors import ConfigError, ModelError
from raydistill.train.checkpoint import (
    STATE_FILE,
    recover_dir,
    replace_dir_atomic,
    write_json_atomic,
    write_text_atomic,
)

BEST_INFO = "raydistill_best.json"
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
    "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
}


def check_model_dir(path: str, key: str) -> None:
    """A model folder must exist and hold a config and weights (checked without loading)."""
    p = Path(path)
    if not p.is_dir():
        raise ModelError(f"{key}: {path} does not exist; pass a folder written by save_pretrained "
                         "(or by raydistill make-student)")
    has_weights = any(p.glob("*.safetensors")) or any(p.glob("*.bin")) or any(
        p.glob("*.safetensors.index.json"))
    if not (p / "config.json").is_file() or not has_weights:
        raise ModelError(f"{key}: {path} holds no model (needs config.json and *.safetensors); "
                         "pass a folder written by save_pretrained")


def _vocab_size(path: str) -> int:
    cfg = json.loads((Path(path) / "config.json").read_text())
    if cfg.get("model_type") == "encoder-decoder":
        return int(cfg["decoder"]["vocab_size"])
    return int(cfg.get("tgt_vocab_size") or cfg.get("decoder_vocab_size") or cfg["vocab_size"])


def preflight(cfg: DistillConfig, *, overwrite: bool = False, resume: bool = False) -> None:
    """All the input checks, before any cluster resource is spent."""
    from raydistill.data.files import validate_data_dir

    splits = ("train", "val", "test") if cfg.do_predict else ("train", "val")
    validate_data_dir(cfg.data_dir, splits)
    for i, path in enumerate(cfg.teacher_paths):
        check_model_dir(path, "teacher" if not cfg.teachers else f"teachers[{i}]")
    if cfg.student:
        check_model_dir(cfg.student, "student")
    sizes = {p: _vocab_size(p) for p in cfg.teacher_paths + ([cfg.student] if cfg.student else [])}
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"{p}: {v}" for p, v in sizes.items())
        raise ModelError(f"teacher and student vocabularies differ ({shown}); KD compares logits "
                         "token by token, so all models must share one tokenizer")
    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()) and not (overwrite or resume):
        raise ConfigError(f"output_dir {out} is not empty; pass --resume to continue that run, "
                          "--overwrite to start over there, or choose another output_dir")
    if resume and not (out / "hparams.json").exists():
        raise ConfigError(f"--resume: {out} holds no earlier run (no hparams.json); drop --resume")


def prepare_student(cfg: DistillConfig, out: Path, resume: bool) -> dict[str, Any]:
    """Write the initial student to ``out/student`` (make_student or a copy); returns layer ids."""
    from raydistill.models.layers import load_seq2seq
    from raydistill.models.student import make_student

    student_dir = out / "student"
    layers_file = out / "student_layers.json"
    if resume and (student_dir / "config.json").exists() and layers_file.exists():
        return json.loads(layers_file.read_text())
    tmp = Path(tempfile.mkdtemp(prefix=".student.", dir=out))
    if cfg.student:
        model = load_seq2seq(cfg.student)
        model.save_pretrained(tmp)
        _save_tokenizer(cfg.student, tmp)
        e_ids = d_ids = None
    else:
        _, e_ids, d_ids = make_student(cfg.teacher_paths[0], e=cfg.student_encoder_layers,
                                       d=cfg.student_decoder_layers, save_path=tmp)
    if not any(tmp.glob("tokenizer*")) and cfg.teacher_paths:
        _save_tokenizer(cfg.teacher_paths[0], tmp)
    replace_dir_atomic(tmp, student_dir)
    layers = {"e_layer_ids": e_ids, "d_layer_ids": d_ids}
    write_json_atomic(layers_file, layers)
    return layers


def _save_tokenizer(src: str, dst: Path) -> None:
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    except (OSError, ValueError) as err:
        raise ModelError(f"{src}: no tokenizer found ({err}); save one with "
                         "tokenizer.save_pretrained into that folder") from None


def git_log() -> dict[str, str]:
    """Repo, branch and commit of the code that ran (like the seq2seq scripts' git_log.json)."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"repo_id": git("rev-parse", "--show-toplevel"), "repo_sha": git("rev-parse", "HEAD"),
            "repo_branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "hostname": os.uname().nodename}


def init_ray(address: str | None = None) -> None:
    """Join ``address`` (or $RAY_ADDRESS) when given; otherwise start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, runtime_env={"env_vars": RAY_ENV}, log_to_driver=True)
    quiet_ray_data()


def quiet_ray_data() -> None:
    """Ray Data's per-operator progress bars flood logs that are not terminals."""
    import sys

    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    ctx.enable_operator_progress_bars = False


def run_distill(cfg: DistillConfig, *, overwrite: bool = False, resume: bool = False,
                address: str | None = None) -> dict[str, Any]:
    """Run the whole job; returns the summary written to ``metrics.json``."""
    preflight(cfg, overwrite=overwrite, resume=resume)
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    recover_dir(out / "best_tfmr")
    storage = cfg.storage_path or str(out / "ray_results")
    run_name = cfg.run_name or out.name
    if not resume and not cfg.storage_path and (Path(storage) / run_name).exists():
        # A fresh run must not silently continue the old one (Ray resumes a run by its name).
        shutil.rmtree(Path(storage) / run_name)

    layers = prepare_student(cfg, out, resume)
    write_json_atomic(out / "hparams.json", cfg.to_dict())
    write_json_atomic(out / "git_log.json", git_log())

    init_ray(address)
    trainer = build_trainer(cfg, out, layers, storage_path=storage, run_name=run_name)
    t0 = time.time()
    result = trainer.fit()
    train_seconds = time.time() - t0
    if result.error:
        raise result.error
    summary = export_outputs(cfg, out, result, train_seconds)
    if cfg.do_predict:
        summary["test"] = run_test(cfg, out)
        write_json_atomic(out / "metrics.json", summary)
    return summary


def build_trainer(cfg: DistillConfig, out: Path, layers: dict[str, Any], *, storage_path: str,
                  run_name: str, callbacks: list | None = None):
    """Datasets (tokenized once) + the TorchTrainer for ``cfg``; ``out/student`` must exist."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raydistill.data.files import read_split, split_dataset
    from raydistill.data.tokenize import tokenize_dataset
    from raydistill.train.loop import steps_per_epoch, train_loop_per_worker

    student_dir = str(out / "student")
    n_train = len(read_split(cfg.data_dir, "train", cfg.n_train).sources)
    if n_train < cfg.num_workers:
        raise ConfigError(f"n_train={n_train} examples is fewer than num_workers={cfg.num_workers}; "
                          "use fewer workers or more data")
    # Tokenize once, before the workers take the CPUs: every epoch then reads the object store.
    train_ds = tokenize_dataset(split_dataset(cfg.data_dir, "train", cfg.n_train), student_dir,
                                cfg.max_source_length, cfg.max_target_length,
                                num_actors=cfg.num_tokenize_workers).materialize()
    val_ds = split_dataset(cfg.data_dir, "val", cfg.n_val).materialize()
    batches, opt_steps = steps_per_epoch(n_train, cfg.num_workers, cfg.train_batch_size,
                                         cfg.gradient_accumulation_steps)
    total_steps = cfg.max_steps or cfg.max_epochs * opt_steps
    run = {"student_init": student_dir, "tokenizer": student_dir, "output_dir": str(out),
           "run_name": run_name, "total_steps": total_steps, "batches_per_epoch": batches,
           **layers}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**cfg.to_dict(), "_run": run},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(
            name=run_name, storage_path=storage_path, callbacks=callbacks,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep,
                                               checkpoint_score_attribute=cfg.val_metric,
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
        ),
        datasets={"train": train_ds, "val": val_ds},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


def export_outputs(cfg: DistillConfig, out: Path, result, train_seconds: float) -> dict[str, Any]:
    """best checkpoint -> best_tfmr (never replacing a better one); the history -> metrics.json."""
    metric = cfg.val_metric
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if m.get(metric) is not None]
    if not scored:
        raise RuntimeError("training reported no checkpoint with a validation metric")
    best_ckpt, best_metrics = max(scored, key=lambda cm: cm[1][metric])
    previous = out / "best_tfmr" / BEST_INFO
    prev_value = json.loads(previous.read_text())[metric] if previous.exists() else None
    if prev_value is None or best_metrics[metric] > prev_value:
        tmp = Path(tempfile.mkdtemp(prefix=".best_tfmr.", dir=out))
        with best_ckpt.as_directory() as src:
            for f in Path(src).iterdir():
                if f.suffix != ".pt" and f.name not in (STATE_FILE, "rng_states.json") and f.is_file():
                    shutil.copy2(f, tmp / f.name)
        write_json_atomic(tmp / BEST_INFO, {metric: best_metrics[metric],
                                            "step": best_metrics.get("step")})
        replace_dir_atomic(tmp, out / "best_tfmr")
    with result.checkpoint.as_directory() as latest:
        history = json.loads((Path(latest) / STATE_FILE).read_text())["history"]
    summary = {"val": history, "best": {metric: max(best_metrics[metric], prev_value or -1e9)},
               "train_seconds": round(train_seconds, 2), "checkpoint": result.checkpoint.path}
    write_json_atomic(out / "metrics.json", summary)
    return summary


def run_test(cfg: DistillConfig, out: Path) -> dict[str, Any]:
    """Score best_tfmr on the test split with ``evaluate`` (parallel generation)."""
    from raydistill.eval.evaluate import evaluate

    results = evaluate(str(out / "best_tfmr"), cfg.data_dir, split="test", task=cfg.task,
                       out_dir=str(out), num_beams=cfg.eval_beams,
                       length_penalty=cfg.length_penalty,
                       max_length=cfg.eval_max_gen_length or cfg.test_max_target_length,
                       max_source_length=cfg.max_source_length, batch_size=cfg.eval_batch_size,
                       num_workers=cfg.num_eval_workers, num_gpus=1.0 if cfg.use_gpu else 0.0,
                       n=cfg.n_test)
    flat = {**results["scores"], "n_examples": results["n_examples"],
            "gen_seconds": results["gen_seconds"]}
    lines = [f"{k}: {v}" for k, v in flat.items()]
    write_text_atomic(out / "test_results.txt", "\n".join(lines) + "\n")
    return results
