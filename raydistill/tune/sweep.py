"""``raydistill tune``: a Ray Tune sweep whose trials are whole ``distill`` runs.

The ``tune:`` section and each trial's config: ``raydistill.tune.space``. Here: the run.

Ray Train V2 trainers cannot be handed to a ``Tuner``. Each trial is instead a small Tune
function, the *driver* (``trial_driver``): it builds the trial's ``DistillConfig`` from the
sampled values, makes the trial's student in the trial's own folder, and fits a
``TorchTrainer`` whose validation reports reach Tune through ``TuneReportCallback`` (so ASHA can
stop it early). The driver asks for 0.01 CPU; the trial's workers ask for their own.

Generation latency is measured after the sweep, one trial at a time, on the device the trials
trained on (this process on CPU; with ``use_gpu``, a Ray task holding one whole GPU): measured
inside concurrent trials it would mostly say how busy the machine was.

A sweep's ``output_dir``::

    sweep.json              base config + tune section + experiment path (read by --resume)
    ray_results/<name>/     Tune's experiment: state for --resume, per-trial results, TBX events
    trials/<trial_id>/      one distill run: student/ tensorboard/ ray_results/ best_tfmr/ ...
    shared_stages/          a staged config's stages before the last, trained once for all trials
    results.csv results.md pareto.png best/
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from raydistill.config import DistillConfig
from raydistill.errors import ConfigError, ModelError
from raydistill.tune.report import best_row, summarize_trial, write_report
from raydistill.tune.space import (  # noqa: F401 (load_sweep & co. are this module's API too)
    DRIVER_CPU,
    Dimension,
    TuneSettings,
    default_max_concurrent,
    expected_trials,
    flatten,
    largest_value,
    load_sweep,
    nest,
    param_space,
    parse_dimension,
    parse_tune_section,
    reported_metrics,
    trial_config,
)

SWEEP_FILE = "sweep.json"
SHARED_DIR = "shared_stages"  # a staged sweep's stages before the last, trained once
LATENCY_REPEATS = 3
ATTEMPTS_FILE = "attempts.log"


# ---- the trial driver ---------------------------------------------------------------------

def trial_driver(config: dict[str, Any], base: dict[str, Any], trials_dir: str,
                 layers: dict[str, Any] | None = None) -> None:
    """A Tune function trainable: one trial = one TorchTrainer fit of the sampled config.
    ``layers``: the teacher layers a shared stage's student was copied from (staged sweeps)."""
    import ray
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raydistill.atomic import write_json_atomic
    from raydistill.train.run import prepare_student

    trial_id = ray.tune.get_context().get_trial_id()
    out = Path(trials_dir) / trial_id
    out.mkdir(parents=True, exist_ok=True)
    cfg = trial_config(DistillConfig.from_dict(base), config, out)
    restarted = (out / "student" / "config.json").exists()
    with open(out / ATTEMPTS_FILE, "a", encoding="utf-8") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} start restarted={restarted}\n")
    write_json_atomic(out / "hparams.json", cfg.to_dict())
    # resume=True: a restarted trial keeps the student its checkpoints were trained from.
    layers = prepare_student(cfg, out, resume=True, layers=layers)
    # The fit runs in a child task that knows this cluster's address. When ASHA stops the
    # trial, Tune kills this actor and with it the Train controller; Train's detached
    # PlacementGroupCleaner (which inherits the task's environment) then asks the state API
    # whether the controller is dead. Without an address it auto-detects the cluster, which
    # fails where several local Ray instances share a machine: the workers' placement group
    # then stays reserved and the next trial waits for its CPUs forever.
    env = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    fit = ray.remote(num_cpus=0, max_retries=0)(fit_trial).options(runtime_env={"env_vars": env})
    ray.get(fit.remote(cfg.to_dict(), str(out), layers, f"train_{trial_id}", TuneReportCallback()))


def fit_trial(config: dict[str, Any], out: str, layers: dict[str, Any], run_name: str,
              callback) -> None:
    """Build and fit the trial's TorchTrainer; its reports reach Tune through ``callback``."""
    from raydistill.train.run import build_trainer

    cfg = DistillConfig.from_dict(config)
    # The run's name is fixed per trial, so a restarted trial's run restores its checkpoint.
    storage = cfg.storage_path or str(Path(out) / "ray_results")
    # The trial driver's sliver of a CPU comes out of its workers' share: a trial whose workers
    # ask for every CPU of the machine is still placed (the threads stay cpus_per_worker).
    trainer = build_trainer(cfg, Path(out), layers, storage_path=storage, run_name=run_name,
                            callbacks=[callback], cpu_reserve=DRIVER_CPU)
    result = trainer.fit()
    if result.error:
        raise result.error


def trial_dirname(trial) -> str:
    """Tune's folder for a trial: its id (short, and the same as trials/<trial_id>)."""
    return f"trial_{trial.trial_id}"


# ---- the sweep ----------------------------------------------------------------------------

def sweep_paths(cfg: DistillConfig, settings: TuneSettings) -> tuple[Path, str, str]:
    """(output_dir, Tune storage_path, experiment name); names are deterministic."""
    out = Path(settings.output_dir or cfg.output_dir).resolve()
    storage = settings.storage_path or str(out / "ray_results")
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    return out, storage, cfg.run_name or out.name


def run_sweep(cfg: DistillConfig, settings: TuneSettings, *, resume: str | None = None,
              overwrite: bool = False, address: str | None = None,
              callbacks: list | None = None) -> dict[str, Any]:
    """Run (or with ``resume`` continue) the sweep; returns a summary (rows, best, interrupted).

    ``callbacks`` are Tune callbacks; they are saved with the experiment and restored with it.
    """
    import ray
    from ray import tune

    from raydistill.atomic import write_json_atomic
    from raydistill.console import log_to
    from raydistill.runtime import init_ray
    from raydistill.train.run import resolve_models

    out, storage, name = sweep_paths(cfg, settings)
    experiment = f"{storage}/{name}"
    if resume:
        out, experiment = _resume_target(Path(resume), out, experiment)
        if (out / SWEEP_FILE).exists():  # continue that sweep, whatever the config says now
            info = json.loads((out / SWEEP_FILE).read_text())
            started = DistillConfig.from_dict(info["config"])
            if started != cfg or _settings_dict(settings) != info["tune"]:
                print(f"[tune] --resume: the config differs from the one {out} started with; "
                      f"continuing with that one ({SWEEP_FILE})", flush=True)
            cfg, settings = started, parse_tune_section(info["tune"], started)
    else:
        _prepare_fresh(out, experiment, overwrite)
    staged = cfg  # sweep.json keeps the config as given; the trials run its last stage
    cfg, layers = shared_stages(cfg, out, address)
    # Hub ids -> local snapshots, once, here: every trial (and its workers) loads local folders.
    run_cfg, models = resolve_models(cfg)
    if not resume:
        write_json_atomic(out / SWEEP_FILE, {"config": staged.to_dict(),
                                             "tune": _settings_dict(settings),
                                             "experiment_path": experiment, "models": models})
    log_to(out / "ray.log")  # Ray's and Tune's own lines (the console keeps raydistill's)
    init_ray(address)
    check_trial_fits(cfg, settings)
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, base=run_cfg.to_dict(), trials_dir=str(out / "trials"),
                             layers=layers),
        {"cpu": DRIVER_CPU})
    if resume:
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        limit = settings.max_concurrent_trials or default_max_concurrent(
            cfg, settings, ray.cluster_resources())
        tuner = _make_tuner(cfg, settings, trainable, storage, name, limit, callbacks)
    t0 = time.time()
    grid = tuner.fit()
    seconds = time.time() - t0
    return finish_sweep(cfg, settings, out, grid.experiment_path, seconds)


def shared_stages(cfg: DistillConfig, out: Path,
                  address: str | None) -> tuple[DistillConfig, dict[str, Any] | None]:
    """A staged config (``stages:``) sweeps its last stage: the stages before it train once,
    here, into ``output_dir/shared_stages/`` (finished ones are reused when a sweep resumes),
    and every trial starts from their best student. Returns (the trials' base config: the last
    stage's, the teacher layers its student was copied from). A config without stages: itself."""
    if not cfg.stages:
        return cfg, None
    from raydistill.stage_plan import plan_stages
    from raydistill.train.chain import train_chain

    stages = plan_stages(cfg.replace(output_dir=str(out / SHARED_DIR)))
    records = train_chain(stages[:-1], resume=True, address=address) if len(stages) > 1 else []
    print(f"[tune] every trial runs {stages[-1].name} from "
          + (f"{stages[-1].cfg.student}" if records else "the base's student"), flush=True)
    return stages[-1].cfg, records[-1]["layers"] if records else None


def check_trial_fits(cfg: DistillConfig, settings: TuneSettings) -> None:
    """The largest trial the space can sample against the cluster, before any trial starts."""
    from raydistill.runtime import check_resources

    from raydistill.errors import ConfigError

    dims = [d for d in settings.search_space if d.key == "num_workers"]
    if min(dims[0].representatives() if dims else [cfg.num_workers]) == 0:
        raise ConfigError("num_workers: 0 trains in the process that starts it; a sweep's "
                          "trials need Ray Train workers: set num_workers >= 1")
    workers, cpus = largest_value(cfg, settings, "num_workers"), largest_value(cfg, settings,
                                                                                "cpus_per_worker")
    gpu = 1.0 if cfg.use_gpu else 0.0
    check_resources("a tune trial", workers * cpus, workers * gpu, per_unit_cpus=cpus,
                    per_unit_gpus=gpu,
                    fix=f"use fewer workers (num_workers={workers}) or fewer CPUs per worker "
                        f"(cpus_per_worker={cpus}) in the config or the search space")


def _settings_dict(settings: TuneSettings) -> dict[str, Any]:
    data = dataclasses.asdict(settings)
    data["search_space"] = {d.key: {d.kind: list(d.values)} for d in settings.search_space}
    return data


def _prepare_fresh(out: Path, experiment: str, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"output_dir {out} is not empty; pass --resume {out} to continue "
                              "that sweep, --overwrite to start over there, or choose another "
                              "output_dir")
        if not (out / SWEEP_FILE).exists():
            raise ConfigError(f"--overwrite: {out} holds no sweep ({SWEEP_FILE} missing); "
                              "refusing to delete it; choose another output_dir")
        for child in ("trials", "best", "ray_results"):
            shutil.rmtree(out / child, ignore_errors=True)
        for child in ("results.csv", "results.md", "pareto.png", SWEEP_FILE):
            (out / child).unlink(missing_ok=True)
        if "://" not in experiment:
            shutil.rmtree(experiment, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _resume_target(d: Path, out: Path, experiment: str) -> tuple[Path, str]:
    """--resume DIR: DIR is a sweep's output_dir (holding sweep.json) or Tune's experiment path."""
    from ray.tune import Tuner

    if (d / SWEEP_FILE).exists():
        out, experiment = d.resolve(), json.loads((d / SWEEP_FILE).read_text())["experiment_path"]
    elif Tuner.can_restore(str(d)):
        experiment = str(d.resolve()) if "://" not in str(d) else str(d)
    else:
        raise ConfigError(f"--resume {d}: no sweep there (neither {SWEEP_FILE} nor a Tune "
                          "experiment); pass the sweep's output_dir")
    if not Tuner.can_restore(experiment):
        raise ConfigError(f"--resume {d}: the Tune experiment {experiment} cannot be restored "
                          "(no experiment state); start the sweep again without --resume")
    return out, experiment


def _make_tuner(cfg: DistillConfig, settings: TuneSettings, trainable, storage: str, name: str,
                limit: int, callbacks: list | None):
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    metric = settings.metric or cfg.val_metric
    if settings.search_alg in ("random", "grid"):
        # The generator takes the concurrency limit itself; seeded so samples repeat.
        search_alg, tune_limit = BasicVariantGenerator(max_concurrent=limit,
                                                       random_state=cfg.seed), None
    elif settings.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg, tune_limit = OptunaSearch(seed=cfg.seed), limit
    else:
        from ray.tune.search.hyperopt import HyperOptSearch

        search_alg, tune_limit = HyperOptSearch(random_state_seed=cfg.seed), limit
    scheduler = None
    if settings.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # time_attr: one training_iteration per validation report.
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=settings.max_t,
                                  grace_period=settings.grace_period,
                                  reduction_factor=settings.reduction_factor)
    return tune.Tuner(
        trainable,
        param_space=param_space(settings),
        tune_config=tune.TuneConfig(metric=metric, mode=settings.mode, search_alg=search_alg,
                                    scheduler=scheduler, num_samples=settings.num_samples,
                                    max_concurrent_trials=tune_limit,
                                    trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=name, storage_path=storage, callbacks=callbacks,
                                  failure_config=tune.FailureConfig(
                                      max_failures=settings.max_failures)),
    )


def finish_sweep(cfg: DistillConfig, settings: TuneSettings, out: Path, experiment: str,
                 seconds: float) -> dict[str, Any]:
    """Results of every trial -> best checkpoints, latency, results.*, pareto.png, best/."""
    from ray.tune import ExperimentAnalysis

    metric = settings.metric or cfg.val_metric
    analysis = ExperimentAnalysis(experiment, default_metric=metric, default_mode=settings.mode)
    trials = sorted(analysis.trials, key=lambda t: t.trial_id)
    unfinished = [t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")]
    # The search algorithm makes trials as slots free up: an interrupted sweep may not have
    # created all of them yet.
    interrupted = bool(unfinished) or len(trials) < expected_trials(settings)
    summary: dict[str, Any] = {"experiment_path": experiment, "output_dir": str(out),
                               "tune_seconds": round(seconds, 1), "interrupted": interrupted,
                               "trials": len(trials), "unfinished": unfinished,
                               "finished": [t.trial_id for t in trials
                                            if t.trial_id not in unfinished],
                               "rows": [],
                               "best": None}
    if interrupted:  # Ctrl-C: keep it quick; the report is written when the sweep completes
        return summary
    rows = []
    for trial in trials:
        df = analysis.trial_dataframes.get(trial.trial_id)
        history = df.to_dict("records") if df is not None else []
        row = summarize_trial(trial.trial_id, trial.status, flatten(trial.config), history,
                              metric, settings.mode, settings.keys)
        row["trial_dir"] = str(out / "trials" / trial.trial_id)
        row.update(_measure_trial(Path(row["trial_dir"]), row.pop("checkpoints"), settings))
        rows.append(row)
    best = best_row(rows, settings.mode)
    if best is not None:
        _copy_best(Path(best["trial_dir"]) / "best_tfmr", out / "best", best)
    rows = write_report(rows, out, metric=metric, mode=settings.mode, keys=settings.keys,
                        best_id=best["trial_id"] if best else None)
    summary.update(rows=rows, best=best)
    return summary


def _measure_trial(trial_dir: Path, checkpoints: list[str],
                   settings: TuneSettings) -> dict[str, Any]:
    """Export the trial's best checkpoint to best_tfmr/ and time generation (cached)."""
    from raydistill.atomic import write_json_atomic

    empty = {"parameters": None, "ms_per_example": None}
    if not checkpoints or not (trial_dir / "hparams.json").exists():
        return empty
    cache = trial_dir / "latency.json"
    if cache.exists() and (trial_dir / "best_tfmr").exists():  # measured by an earlier finish
        cached = json.loads(cache.read_text())
        if cached.get("best_reported") == checkpoints[0]:
            return {k: cached[k] for k in empty}
    used = None
    for path in checkpoints:  # best first; Train keeps only the top checkpoints_to_keep
        if _export_checkpoint(path, trial_dir / "best_tfmr"):
            used = path
            break
    if used is None:
        return empty
    cfg = DistillConfig.from_dict(json.loads((trial_dir / "hparams.json").read_text()))
    if cfg.use_gpu:  # on a GPU, as the trials trained: a task holding one whole GPU, alone
        import ray

        from raydistill.runtime import init_ray

        init_ray()
        task = ray.remote(num_cpus=1, num_gpus=1, max_retries=0)(latency_runs)
        runs = ray.get(task.remote(str(trial_dir), cfg.to_dict(), settings.latency_examples))
    else:
        runs = latency_runs(str(trial_dir), cfg.to_dict(), settings.latency_examples)
    result = {"parameters": int(runs[0]["parameters"]),
              "ms_per_example": round(min(float(r["ms_per_example"]) for r in runs), 3)}
    write_json_atomic(cache, {**result, "checkpoint_path": used, "best_reported": checkpoints[0]})
    return result


def latency_runs(trial_dir: str, config: dict[str, Any], n: int) -> list[dict[str, float]]:
    """``LATENCY_REPEATS`` batch-1 timings of the trial's best_tfmr on the device its config
    trained on (``generation_device``), with its generation backend and compute type."""
    from raydistill.data.files import read_split
    from raydistill.models.generate import measure_latency
    from raydistill.train.device import generation_device

    cfg = DistillConfig.from_dict(config)
    sources = read_split(cfg.data_dir, "val", cfg.n_val).sources
    # The fastest of a few passes: whatever else runs on the machine only ever adds time.
    return [measure_latency(str(Path(trial_dir) / "best_tfmr"), sources, num_beams=cfg.eval_beams,
                            max_length=cfg.eval_max_gen_length or cfg.val_max_target_length,
                            max_source_length=cfg.max_source_length, n=n,
                            device=generation_device(cfg.use_gpu),
                            backend=cfg.generation_backend, compute_type=cfg.compute_type,
                            ct2_cache_dir=cfg.ct2_cache_dir)
            for _ in range(LATENCY_REPEATS)]


def _export_checkpoint(path: str, dst: Path) -> bool:
    """Copy a Train checkpoint's model + tokenizer files (no optimizer state) to ``dst``."""
    from ray.train import Checkpoint

    from raydistill.atomic import replace_dir_atomic
    from raydistill.train.checkpoint import export_model, model_files

    try:
        with Checkpoint(path).as_directory() as src:
            if not any(f.name == "config.json" for f in model_files(src)):
                return False
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
            export_model(src, tmp)  # a sharded student's shards gathered into safetensors
    except (FileNotFoundError, OSError):
        return False  # deleted by Train's num_to_keep: the caller tries the next best
    replace_dir_atomic(tmp, dst)
    return True


def _copy_best(src: Path, dst: Path, row: dict[str, Any]) -> None:
    from raydistill.atomic import replace_dir_atomic, write_json_atomic

    if not (src / "config.json").exists():
        raise ModelError(f"best trial {row['trial_id']}: {src} holds no model")
    tmp = Path(tempfile.mkdtemp(prefix=".best.", dir=dst.parent))
    shutil.copytree(src, tmp, dirs_exist_ok=True)
    finite = {k: v for k, v in row.items() if not isinstance(v, float) or math.isfinite(v)}
    write_json_atomic(tmp / "raydistill_sweep_best.json", finite)
    replace_dir_atomic(tmp, dst)


__all__ = ["Dimension", "TuneSettings", "parse_dimension", "parse_tune_section", "trial_config",
           "param_space", "default_max_concurrent", "load_sweep", "run_sweep", "finish_sweep",
           "trial_driver", "fit_trial", "nest", "flatten", "reported_metrics", "expected_trials"]
