"""Training, the first half of ``raydistill distill``: check inputs -> student -> datasets ->
TorchTrainer.fit -> outputs (``raydistill.pipeline.run_distill`` then scores the test split).

Everything that can be wrong with the input is checked before Ray starts a worker. Outputs
(``best_tfmr/``, ``metrics.json``, ...) are written under temporary names and renamed into
place, so a run killed at any moment leaves the previous ones readable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from raydistill.atomic import recover_dir, replace_dir_atomic, write_json_atomic
from raydistill.config import DistillConfig
from raydistill.console import log_to
from raydistill.errors import ConfigError, ModelError
from raydistill.hub import resolve_model
from raydistill.runtime import (
    check_output_dir,
    check_resources,
    init_ray_during,
    launch_time,
    run_start,
)
from raydistill.train.device import actor_gpus, check_gpu_request, check_sharding
from raydistill.train.preflight import check_models, check_vocabularies

# This module imports neither torch nor transformers at the top: the input checks read files
# only, and the heavy imports run on a helper thread while Ray starts (run_training).

BEST_INFO = "raydistill_best.json"
def resolve_models(cfg: DistillConfig) -> tuple[DistillConfig, dict[str, Any]]:
    """``teacher`` / ``teachers`` / ``student`` Hub ids -> their local snapshots, once, here on
    the driver (a copy of ``cfg``; local folders stay as they are).

    The copy is what travels to the workers, so they never download. Also returns what
    ``hparams.json`` records of each model: the reference as given, the Hub id, the revision
    asked for, the commit it resolved to, and the local path.
    """
    changes: dict[str, Any] = {}
    records: dict[str, Any] = {}
    if cfg.teachers:
        found = [resolve_model(t, f"teachers[{i}]", cfg.model_cache_dir)
                 for i, t in enumerate(cfg.teachers)]
        changes["teachers"] = [r.path for r in found]
        records["teachers"] = [r.record() for r in found]
    elif cfg.teacher:
        found_one = resolve_model(cfg.teacher, "teacher", cfg.model_cache_dir)
        changes["teacher"], records["teacher"] = found_one.path, found_one.record()
    if cfg.student:
        found_one = resolve_model(cfg.student, "student", cfg.model_cache_dir)
        changes["student"], records["student"] = found_one.path, found_one.record()
    return dataclasses.replace(cfg, **changes), records


def preflight(cfg: DistillConfig, *, overwrite: bool = False,
              resume: bool = False) -> tuple[DistillConfig, dict[str, Any]]:
    """All the input checks, before any cluster resource is spent. Returns ``cfg`` with its
    models resolved and what ``hparams.json`` records of them (``resolve_models``)."""
    from raydistill.data.files import validate_data_dir

    splits = ("train", "val", "test") if cfg.do_predict else ("train", "val")
    validate_data_dir(cfg.data_dir, splits)  # first: a typo here must not wait for a download
    cfg, models = resolve_models(cfg)  # every model folder checked, Hub ids found or fetched
    check_models(cfg)
    check_vocabularies(cfg)
    check_gpu_request(cfg)  # use_gpu with num_workers: 0 needs a GPU here; compute_type
    check_sharding(cfg)  # parallel / teacher_parallel: fsdp and what they do not support
    if cfg.caches_logits:  # layer_T ranges: check_models above
        from raydistill.models.teacher_cache import check_cacheable
        from raydistill.distill.textbrewer import DistillationConfig

        check_cacheable(DistillationConfig.from_dict(cfg.distillation or {}))
    out = Path(cfg.output_dir)
    check_output_dir(out, overwrite=overwrite, resume=resume)
    if resume:
        check_same_models(out, models)
    return cfg, models


def check_same_models(out: Path, records: dict[str, Any]) -> None:
    """--resume: a Hub id must still resolve to the commit the run started from."""
    path = out / "hparams.json"
    before = json.loads(path.read_text()).get("models", {}) if path.is_file() else {}
    for key, now in records.items():
        pairs = zip(before.get(key) or [], now) if isinstance(now, list) else [(before.get(key), now)]
        for i, (old, new) in enumerate(pairs):
            if old and old.get("commit") and old.get("ref") == new["ref"] \
                    and old["commit"] != new["commit"]:
                where = f"{key}[{i}]" if isinstance(now, list) else key
                raise ConfigError(f"--resume: {where}: {new['ref']} now resolves to commit "
                                  f"{new['commit']}, but this run started from {old['commit']}; "
                                  f"pin it with {where}={new['id']}@{old['commit']}")


def prepare_student(cfg: DistillConfig, out: Path, resume: bool,
                    layers: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the initial student to ``out/student`` (make_student or a copy); returns layer ids:
    the teacher layers make_student copied, or for a saved student ``layers`` (what an earlier
    stage's make_student copied; None: its layers pair with the teacher's first ones)."""
    from raydistill.models.layers import load_seq2seq
    from raydistill.models.student import make_student
    from raydistill.models.vocab import keep_vocab_map

    student_dir = out / "student"
    layers_file = out / "student_layers.json"
    if resume and (student_dir / "config.json").exists() and layers_file.exists():
        return json.loads(layers_file.read_text())
    tmp = Path(tempfile.mkdtemp(prefix=".student.", dir=out))
    if cfg.student:
        import torch

        # fp32 master weights, whatever dtype the checkpoint was saved in.
        model = load_seq2seq(cfg.student, dtype=torch.float32)
        model.save_pretrained(tmp)
        _save_tokenizer(cfg.student, tmp)
        e_ids, d_ids = (layers or {}).get("e_layer_ids"), (layers or {}).get("d_layer_ids")
    else:
        _, e_ids, d_ids = make_student(cfg.teacher_paths[0], e=cfg.student_encoder_layers,
                                       d=cfg.student_decoder_layers, save_path=tmp,
                                       trim_vocab=cfg.trim_vocab, keep_vocab=cfg.keep_vocab)
    if not any(tmp.glob("tokenizer*")) and cfg.teacher_paths:
        _save_tokenizer(cfg.teacher_paths[0], tmp)
    maps = keep_vocab_map(tmp, cfg.student)  # a trimmed student's new id -> teacher id (FSMT: 2)
    replace_dir_atomic(tmp, student_dir)
    layers = {"e_layer_ids": e_ids, "d_layer_ids": d_ids, **maps}
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


def run_training(cfg: DistillConfig, *, overwrite: bool = False, resume: bool = False,
                 address: str | None = None, student_layers: dict[str, Any] | None = None,
                 ) -> tuple[DistillConfig, Path, dict[str, Any]]:
    """Check inputs -> student -> TorchTrainer.fit -> best_tfmr and metrics.json.

    Returns the config with its models resolved, the output folder and the summary written to
    ``metrics.json``. Hub ids are resolved first, once: the rest of the run (student, caches,
    workers) sees local snapshot folders; ``hparams.json`` keeps the config as given plus each
    model's id and commit. (``raydistill.pipeline.run_distill`` adds the test split.)
    ``student_layers``: the teacher layers a saved ``student`` was copied from (a stage's).
    """
    started, since = run_start(time.time())
    given = cfg
    cfg, models = preflight(cfg, overwrite=overwrite, resume=resume)
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log_to(out / "ray.log")  # Ray's own lines of this run (the console keeps raydistill's)
    recover_dir(out / "best_tfmr")
    storage = cfg.storage_path or str(out / "ray_results")
    run_name = cfg.run_name or out.name
    if not resume:
        clear_previous_run(storage, run_name, owned=cfg.storage_path is None or overwrite)

    def prepare() -> dict[str, Any]:  # the inputs are checked; this needs torch, transformers
        layers = prepare_student(cfg, out, resume, student_layers)
        write_json_atomic(out / "hparams.json", {**given.to_dict(), "models": models})
        write_json_atomic(out / "git_log.json", git_log())
        return layers

    t_ray = time.time()
    layers = init_ray_during(prepare, address, beside=import_training_stack)
    check_workers(cfg, "distill")
    t_data = time.time()
    trainer = build_trainer(cfg, out, layers, storage_path=storage, run_name=run_name,
                            started=(started, since))
    t0 = time.time()
    # Where the seconds before training go (the workers add theirs at the first step).
    print(f"[raydistill] start-up: {t_ray - started:.1f} s imports and checks, "
          f"{t_data - t_ray:.1f} s student and Ray, "
          f"{t0 - t_data:.1f} s datasets; "
          + ("training in this process (num_workers: 0)" if cfg.num_workers == 0 else
             "starting the workers") + f" {t0 - started:.1f} s after {since}", flush=True)
    try:
        result = trainer.fit()
    except Exception as err:  # Ray raises worker failures from fit(); keep input errors one line
        raise_worker_error(err)
    train_seconds = time.time() - t0
    if cfg.num_workers == 0:  # Ray's local mode keeps no checkpoints: the run kept its own
        from raydistill.train.checkpoint import local_result

        result = local_result(local_run_dir(cfg, storage, run_name))
    if result.error:
        raise_worker_error(result.error)
    return cfg, out, export_outputs(cfg, out, result, train_seconds)


def import_training_stack() -> None:
    """What build_trainer and the loop import (torch, transformers, Ray Train, Ray Data), while
    a local Ray starts. Not before joining: a `ray job submit` driver that had imported Ray
    Train then could not import raydistill from the job's working_dir (test_cluster.py)."""
    import ray.train.torch  # noqa: F401

    import raydistill.data.tokenize  # noqa: F401
    import raydistill.train.loop  # noqa: F401


def check_workers(cfg: DistillConfig, what: str) -> None:
    """The Train workers' request against the cluster, before any worker starts."""
    if cfg.num_workers == 0:  # this process trains: its CPUs are held, its GPU checked (preflight)
        return
    gpu = 1.0 if cfg.use_gpu else 0.0
    fix = ("set use_gpu: false, or run on a cluster with GPUs" if cfg.use_gpu and
           not ray_has_gpus() else
           f"use fewer workers (num_workers={cfg.num_workers}) or fewer CPUs per worker "
           f"(cpus_per_worker={cfg.cpus_per_worker})")
    check_resources(what, cfg.num_workers * cfg.cpus_per_worker, cfg.num_workers * gpu,
                    per_unit_cpus=cfg.cpus_per_worker, per_unit_gpus=gpu, fix=fix)


def ray_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0.0) > 0


def prebuilds_logit_cache(cfg: DistillConfig) -> bool:
    """Cached logits built before training (Parquet), joined to the train rows by id."""
    return cfg.caches_logits and cfg.logit_cache == "parquet"


def clear_previous_run(storage: str, run_name: str, owned: bool) -> None:
    """A fresh run must not silently continue an old one: Ray resumes a run found by its name.

    The default storage (inside output_dir) and ``--overwrite`` clear it; a shared
    ``storage_path`` holding a run of that name is an error instead.
    """
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(storage if "://" in storage else str(Path(storage).resolve()))
    run_path = f"{path.rstrip('/')}/{run_name}"
    if fs.get_file_info(run_path).type == pafs.FileType.NotFound:
        return
    if not owned:
        raise ConfigError(f"{storage}/{run_name} already holds a run named {run_name!r}; pass "
                          "--resume to continue it, --overwrite to replace it, or set run_name")
    fs.delete_dir(run_path)


def raise_worker_error(error: BaseException) -> None:
    """Re-raise a worker's input error (e.g. a NaN loss) as the one-line error it was."""
    from raydistill.errors import TrainingError

    for line in str(error).splitlines():
        if "TrainingError: " in line:
            raise TrainingError(line.split("TrainingError: ", 1)[1].strip()) from error
    raise error


def build_trainer(cfg: DistillConfig, out: Path, layers: dict[str, Any], *, storage_path: str,
                  run_name: str, callbacks: list | None = None,
                  logit_cache_dir: str | Path | None = None, cpu_reserve: float = 0.0,
                  started: tuple[float, str] | None = None):
    """Datasets (tokenized once) + the TorchTrainer for ``cfg``; ``out/student`` must exist.

    ``cpu_reserve``: logical CPUs the workers leave to a process that already holds them (a
    Tune trial's driver): each worker asks for ``cpus_per_worker - cpu_reserve / num_workers``
    and still runs ``cpus_per_worker`` threads, so a trial fits the CPUs its config names.

    With cached logits the teacher's top-k go to ``logit_cache_dir`` (default
    ``<output_dir>/logit_cache``; a shared folder lets several runs, e.g. Tune trials, reuse it:
    the cache is keyed by content, so sharing is safe).

    ``started``: (when, what) the first optimizer step's time is counted from (run_start);
    default the launch of this process.
    """
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raydistill.data.files import read_split, split_dataset
    from raydistill.data.plan import plan_mode
    from raydistill.data.tokenize import tokenized_split
    from raydistill.train.loop import steps_per_epoch, train_loop_per_worker

    check_sharding(cfg)  # a sweep trial's keys too
    student_dir = str(out / "student")
    train_split = read_split(cfg.data_dir, "train", cfg.n_train)
    n_train = len(train_split)
    if n_train < cfg.world_size:
        raise ConfigError(f"n_train={n_train} examples is fewer than num_workers={cfg.num_workers}; "
                          "use fewer workers or more data")
    # Tokenize once, before the workers take the CPUs: every epoch then reads the object store.
    train_ds = tokenized_split(train_split, student_dir, cfg.max_source_length,
                               cfg.max_target_length, num_actors=cfg.num_tokenize_workers)
    val_ds = split_dataset(cfg.data_dir, "val", cfg.n_val).materialize()
    datasets = {"train": train_ds, "val": val_ds}
    cached = prebuilds_logit_cache(cfg)
    if cached:  # the teacher runs now, while the CPUs/GPUs are still free
        from raydistill.models.teacher_cache import load_cache

        t0 = time.perf_counter()
        cache_dir = prepare_logit_cache(cfg, student_dir, train_ds,
                                        logit_cache_dir or Path(cfg.output_dir).resolve() / "logit_cache")
        datasets["teacher_logits"] = load_cache(cache_dir)
        print(f"[raydistill] teacher logits: ready in {time.perf_counter() - t0:.1f} s "
              "(build or reuse, then load)", flush=True)
    mode = plan_mode(cfg.max_tokens_per_batch, cfg.sortish_sampler, cached)
    plan = None
    if mode is None:  # fixed-size batches streamed from an equal split of the rows
        batches, opt_steps = steps_per_epoch(n_train, cfg.world_size, cfg.train_batch_size,
                                             cfg.gradient_accumulation_steps)
        total_steps = cfg.max_steps or cfg.max_epochs * opt_steps
    else:  # every epoch's batches planned from the lengths; workers pull their rows by id
        spec, lengths, counts = plan_epochs(cfg, mode, train_ds, out)
        batches = counts[0]
        accum = cfg.gradient_accumulation_steps
        total_steps = cfg.max_steps or sum(max(1, -(-c // accum)) for c in counts)
        plan = {"spec": dataclasses.asdict(spec), "lengths": ray.put(lengths), "counts": counts,
                "cached_logits": cached}
    launch = started or (launch_time(), "launch")
    run = {"student_init": student_dir, "tokenizer": student_dir, "output_dir": str(out),
           "run_name": run_name, "total_steps": total_steps, "batches_per_epoch": batches,
           "local_run_dir": local_run_dir(cfg, storage_path, run_name),
           "plan": plan, "launch_time": launch[0], "launched_by": launch[1], **layers}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**cfg.to_dict(), "_run": run},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={
                                         "CPU": cfg.cpus_per_worker - cpu_reserve / cfg.world_size}),
        run_config=RunConfig(
            name=run_name, storage_path=storage_path, callbacks=callbacks,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoints_to_keep,
                                               checkpoint_score_attribute=cfg.val_metric,
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
        ),
        datasets=datasets,
        # A planned run gives every worker the whole (materialized) train set to pull rows from.
        dataset_config=DataConfig(datasets_to_split=["train"] if plan is None else []),
    )


def local_run_dir(cfg: DistillConfig, storage_path: str, run_name: str) -> str | None:
    """Where a run in this process (num_workers: 0) keeps its checkpoints; None for workers."""
    if cfg.num_workers:
        return None
    if "://" in storage_path:
        raise ConfigError(f"num_workers: 0 keeps its checkpoints on this machine's disk, not at "
                          f"storage_path={storage_path}; use a local storage_path or "
                          "num_workers >= 1")
    return str(Path(storage_path).resolve() / run_name)


def plan_epochs(cfg: DistillConfig, mode: str, train_ds, out: Path):
    """Lengths (sorted by id) -> the plan spec, and each epoch's batches per worker.

    Writes ``out/batch_plan.json`` and warns when examples exceed the token budget alone.
    """
    import numpy as np
    import ray

    from raydistill.data.batching import padding_fraction
    from raydistill.data.plan import PlanSpec, epoch_plan

    cols: dict[str, list] = {"id": [], "src_len": [], "tgt_len": []}
    # The materialized blocks read straight from the object store: a select_columns +
    # iter_batches would start a Ray Data execution and its tasks (2 s of start-up here).
    for ref in train_ds.to_arrow_refs():
        block = ray.get(ref)
        for c in cols:
            cols[c].append(block.column(c).to_numpy())
    ids, src, tgt = (np.concatenate(cols[c]) for c in ("id", "src_len", "tgt_len"))
    # Sorted by id: the plan must not depend on the block order of this run's tokenization,
    # or a resumed run (which tokenizes again) would see another plan.
    order = np.argsort(ids, kind="stable")
    lengths = np.stack([ids[order], src[order], tgt[order]]).astype(np.int64)
    spec = PlanSpec(mode=mode, num_workers=cfg.world_size, seed=cfg.seed,
                    batch_size=cfg.train_batch_size, max_tokens=cfg.max_tokens_per_batch)
    # With max_steps the schedule needs no epoch count; epoch 0 is planned for the summary.
    epochs = 1 if cfg.max_steps else cfg.max_epochs
    plans = [epoch_plan(lengths[1], lengths[2], spec, e) for e in range(epochs)]
    counts = [len(p.batches) // cfg.world_size for p in plans]
    summary = {"mode": mode, "num_workers": cfg.world_size, "examples": int(len(ids)),
               "max_tokens_per_batch": cfg.max_tokens_per_batch,
               "train_batch_size": None if mode == "token_budget" else cfg.train_batch_size,
               "batches_per_worker": counts, "num_oversized": plans[0].num_oversized,
               "num_repeated": plans[0].num_repeated,
               "padding_fraction_source": round(padding_fraction(plans[0].batches, lengths[1]), 4)}
    write_json_atomic(out / "batch_plan.json", summary)
    if plans[0].num_oversized:
        print(f"[raydistill] warning: {plans[0].num_oversized} examples exceed "
              f"max_tokens_per_batch={cfg.max_tokens_per_batch} alone (each gets a batch of its "
              "own, over budget); raise max_tokens_per_batch or lower max_source_length/"
              "max_target_length", flush=True)
    if plans[0].num_repeated:
        print(f"[raydistill] warning: {plans[0].num_repeated} batches are repeated so that "
              f"{cfg.num_workers} workers get as many batches; add data or use fewer workers",
              flush=True)
    print(f"[raydistill] batch plan: {mode}, {counts[0]} batches per worker per epoch, "
          f"source padding {summary['padding_fraction_source']:.1%}", flush=True)
    return spec, lengths, counts


def prepare_logit_cache(cfg: DistillConfig, student_dir: str, train_ds,
                        cache_dir: str | Path) -> Path:
    """Build (or reuse, when its key matches) the teacher's top-k logits for ``train_ds`` (at a
    trimmed student's kept ids) and the teacher hidden states ``intermediate_matches`` read."""
    import ray
    from transformers import AutoConfig, AutoTokenizer

    from raydistill.models.teacher_cache import cache_key, cached_hidden_layers, ensure_cache
    from raydistill.distill.textbrewer import DistillationConfig
    from raydistill.models.layers import layer_counts, teacher_dtype_label
    from raydistill.models.vocab import vocab_maps

    hidden = cached_hidden_layers(DistillationConfig.from_dict(cfg.distillation or {}),
                                  layer_counts(AutoConfig.from_pretrained(cfg.teacher_paths[0])))
    maps = vocab_maps(student_dir)  # a trimmed student's (none: not trimmed)
    key = cache_key(cfg.teacher_paths, student_dir, cfg.data_dir, split="train", n=cfg.n_train,
                    max_source_length=cfg.max_source_length, hidden_layers=hidden,
                    max_target_length=cfg.max_target_length, **maps,
                    teacher_dtype=teacher_dtype_label(cfg.teacher_dtype, cfg.use_gpu))
    pad_id = AutoTokenizer.from_pretrained(student_dir).pad_token_id
    actors, free_gpus = cache_actors(cfg), ray.available_resources().get("GPU", 0.0)
    ensure_cache(train_ds, cache_dir, key, teachers=cfg.teacher_paths, pad_token_id=pad_id,
                 top_k=cfg.logit_cache_top_k, batch_size=cfg.eval_batch_size, **maps,
                 num_workers=actors, num_cpus=cfg.cpus_per_worker,
                 num_gpus=actor_gpus(cfg.use_gpu, actors, free_gpus))  # teachers share GPUs
    return Path(cache_dir)


def cache_actors(cfg: DistillConfig) -> int:
    """Teacher actors for a cache build: every worker-sized slot free now (training has not
    started, so a 1-worker run on an 8-GPU node builds with 8 teachers), at least num_workers."""
    import ray

    free = ray.available_resources()
    slots = free.get("GPU", 0.0) if cfg.use_gpu else free.get("CPU", 0.0) / cfg.cpus_per_worker
    return max(cfg.num_workers, int(slots))


def export_outputs(cfg: DistillConfig, out: Path, result, train_seconds: float) -> dict[str, Any]:
    """best checkpoint -> best_tfmr (never replacing a better one); the history -> metrics.json."""
    from raydistill.train.checkpoint import STATE_FILE, export_model

    metric = cfg.val_metric
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if m.get(metric) is not None]
    if not scored:
        raise RuntimeError("training reported no checkpoint with a validation metric")
    best_ckpt, best_metrics = max(scored, key=lambda cm: cm[1][metric])
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "best_tfmr" / BEST_INFO
    prev_value = json.loads(previous.read_text())[metric] if previous.exists() else None
    if prev_value is None or best_metrics[metric] > prev_value:
        tmp = Path(tempfile.mkdtemp(prefix=".best_tfmr.", dir=out))
        with best_ckpt.as_directory() as src:
            export_model(src, tmp)  # a sharded student's shards gathered into safetensors
        write_json_atomic(tmp / BEST_INFO, {metric: best_metrics[metric],
                                            "step": best_metrics.get("step")})
        replace_dir_atomic(tmp, out / "best_tfmr")
    with result.checkpoint.as_directory() as latest:
        state = json.loads((Path(latest) / STATE_FILE).read_text())
    history = state["history"]
    summary = {"val": history, "resumed_from": state.get("resumed_from", []),
               "final_step": state["global_step"], "best": {metric: max(best_metrics[metric], prev_value or -1e9)},
               "train_seconds": round(train_seconds, 2), "checkpoint": _uri(cfg.storage_path, result.checkpoint.path)}
    write_json_atomic(out / "metrics.json", summary)
    return summary


def _uri(storage: str | None, path: str) -> str:
    """Ray gives checkpoint paths without their scheme; put ``s3://`` etc. back."""
    if not storage or "://" not in storage:
        return path
    scheme = storage.split("://", 1)[0]
    return f"{scheme}://{path}" if scheme == "file" else f"{scheme}://{path.lstrip('/')}"
