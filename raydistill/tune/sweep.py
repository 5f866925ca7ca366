"""``raydistill tune``: a Ray Tune sweep whose trials are whole ``distill`` runs.

Ray Train V2 trainers cannot be handed to a ``Tuner``. Each trial is instead a small Tune
function, the *driver* (``trial_driver``): it builds the trial's ``DistillConfig`` from the
sampled values, makes the trial's student in the trial's own folder, and fits a
``TorchTrainer`` whose validation reports reach Tune through ``TuneReportCallback`` (so ASHA can
stop it early). The driver asks for 0.01 CPU; the trial's workers ask for their own.

Generation latency is measured after the sweep, one trial at a time in this process: measured
inside concurrent trials it would mostly say how busy the machine was.

A sweep's ``output_dir``::

    sweep.json              base config + tune section + experiment path (read by --resume)
    ray_results/<name>/     Tune's experiment: state for --resume, per-trial results, TBX events
    trials/<trial_id>/      one distill run: student/ tensorboard/ ray_results/ best_tfmr/ ...
    results.csv results.md pareto.png best/
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raydistill.config import DistillConfig, config_field_names, load_config, merge
from raydistill.errors import ConfigError, ModelError
from raydistill.tune.report import best_row, summarize_trial, write_report

SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
SEARCH_ALGS = ("random", "grid", "optuna", "hyperopt")
SCHEDULERS = ("fifo", "asha")
ASHA_KEYS = ("grace_period", "reduction_factor", "max_t")
DRIVER_CPU = 0.01  # the trial driver only waits on its TorchTrainer; {"cpu": 0} is refused
SWEEP_FILE = "sweep.json"
LATENCY_REPEATS = 3
ATTEMPTS_FILE = "attempts.log"
# Keys the sweep itself decides for every trial.
OWNED_KEYS = ("output_dir", "run_name", "storage_path")
# The SummarizationDistiller objective's knobs: read only by method kd without `distillation:`.
SD_KEYS = ("alpha_ce", "alpha_mlm", "alpha_hid", "temperature", "normalize_hidden",
           "supervise_forward")
# Only these dict-valued config keys take dotted sub-keys (`distillation.kd_loss_weight`).
NESTED_KEYS = ("distillation",)


@dataclass(frozen=True)
class Dimension:
    """One searched config key: ``kind`` is one of SPACE_KINDS; ``values`` the list or (lo, hi)."""

    key: str
    kind: str
    values: tuple

    def representatives(self) -> tuple:
        """Values that bound what a trial may get (checked before Ray starts)."""
        if self.kind == "randint":  # Tune's randint excludes hi, as range()
            return (self.values[0], self.values[1] - 1)
        return self.values

    def to_tune(self, enumerate_choices: bool = False):
        from ray import tune

        if self.kind == "grid" or (self.kind == "choice" and enumerate_choices):
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        lo, hi = self.values
        return {"uniform": tune.uniform, "loguniform": tune.loguniform,
                "randint": tune.randint}[self.kind](lo, hi)


@dataclass(frozen=True)
class TuneSettings:
    """The ``tune:`` section of a config, validated (see docs/tune.md for each key)."""

    search_space: tuple[Dimension, ...]
    num_samples: int = 1
    search_alg: str = "random"
    scheduler: str = "fifo"
    grace_period: int = 1
    reduction_factor: float = 4
    max_t: int = 100
    metric: str | None = None  # default: the config's val_metric (rouge2 / bleu)
    mode: str = "max"
    max_concurrent_trials: int | None = None  # default: what the cluster fits at once
    max_failures: int = 0  # trial restarts (the trial's workers use the config's max_failures)
    output_dir: str | None = None  # default: the config's output_dir
    storage_path: str | None = None  # Tune's experiment storage; default output_dir/ray_results
    latency_examples: int = 16  # val sources timed per trial (batch 1)

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.search_space]


def _closest(name: str, options) -> str:
    close = difflib.get_close_matches(name, sorted(options), n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; valid keys: {', '.join(sorted(options))}"


def _number(where: str, value: Any, kind: type = float) -> float | int:
    if isinstance(value, str) and kind is float:
        try:  # YAML 1.1 reads 1e-4 as a string
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
    if not ok or isinstance(value, bool):
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{where}={value!r} must be {what}")
    return value


def parse_dimension(key: str, spec: Any) -> Dimension:
    """``temperature: {uniform: [1, 8]}`` -> Dimension (``parse_tune_section`` checks the key)."""
    where = f"tune.search_space.{key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where} must be one of {{grid: [...]}}, {{choice: [...]}}, "
                          f"{{uniform: [lo, hi]}}, {{loguniform: [lo, hi]}}, {{randint: [lo, hi]}} "
                          f"(got {spec!r})")
    (kind, values), = spec.items()
    if kind not in SPACE_KINDS:
        raise ConfigError(f"{where}: unknown kind {kind!r}{_closest(str(kind), SPACE_KINDS)}")
    if kind in ("grid", "choice"):
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{kind} must be a non-empty list of values")
        return Dimension(key, kind, tuple(values))
    if not isinstance(values, list) or len(values) != 2:
        raise ConfigError(f"{where}.{kind} must be [lo, hi] (got {values!r})")
    num = int if kind == "randint" else float
    lo, hi = (_number(f"{where}.{kind}[{i}]", v, num) for i, v in enumerate(values))
    if not lo < hi:
        raise ConfigError(f"{where}.{kind}: lo={lo} must be below hi={hi}")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{where}.loguniform: lo={lo} must be > 0 (a log scale has no 0)")
    return Dimension(key, kind, (lo, hi))


def parse_tune_section(data: dict[str, Any] | None, cfg: DistillConfig) -> TuneSettings:
    """Validate the ``tune:`` section against ``cfg``; raises ConfigError naming the key and fix."""
    if not isinstance(data, dict):
        raise ConfigError("the config needs a `tune:` section with a search_space "
                          "(see jobs/configs/tune_summarization.yaml)")
    fields = {f.name for f in dataclasses.fields(TuneSettings)} | {"search_space"}
    for key in data:
        if key not in fields:
            raise ConfigError(f"tune: unknown key {key!r}{_closest(str(key), fields)}")
    space = data.get("search_space")
    if not isinstance(space, dict) or not space:
        raise ConfigError("tune.search_space must map config keys to a search, for example "
                          "temperature: {uniform: [1.0, 8.0]}")
    dims = tuple(parse_dimension(str(k), v) for k, v in space.items())
    for dim in dims:
        _check_space_key(dim.key, cfg)
    kw = {k: v for k, v in data.items() if k != "search_space"}
    for key in ("num_samples", "grace_period", "max_t", "max_concurrent_trials", "max_failures",
                "latency_examples"):
        if kw.get(key) is not None:
            _number(f"tune.{key}", kw[key], int)
    if "reduction_factor" in kw:
        kw["reduction_factor"] = _number("tune.reduction_factor", kw["reduction_factor"])
    settings = TuneSettings(search_space=dims, **kw)
    _check_settings(settings, cfg)
    return settings


def _check_space_key(key: str, cfg: DistillConfig) -> None:
    fields = config_field_names()
    head, _, sub = key.partition(".")
    if head not in fields:
        raise ConfigError(f"tune.search_space: {key!r} is not a config key{_closest(head, fields)}")
    if head in OWNED_KEYS:
        raise ConfigError(f"tune.search_space: {key!r} cannot be searched: the sweep sets it for "
                          "every trial (set tune.output_dir / tune.storage_path instead)")
    if sub and head not in NESTED_KEYS:
        raise ConfigError(f"tune.search_space: {key!r}: only {', '.join(NESTED_KEYS)}.* keys "
                          "take a dotted sub-key")
    if head == "distillation":
        from raydistill.distill.textbrewer import DistillationConfig

        if not sub:
            raise ConfigError("tune.search_space: search distillation.<key> (for example "
                              "distillation.kd_loss_weight), not the whole section")
        valid = [f.name for f in dataclasses.fields(DistillationConfig)]
        if sub not in valid:
            raise ConfigError(f"tune.search_space: {key!r}: {sub!r} is not a DistillationConfig "
                              f"key{_closest(sub, valid)}")
        if cfg.method != "kd" or cfg.distillation is None:
            raise ConfigError(f"tune.search_space: {key!r} has no effect: the TextBrewer objective "
                              "runs only with method: kd and a `distillation:` section; add one")
    if head in SD_KEYS and (cfg.method != "kd" or cfg.distillation is not None):
        alt = f"; search distillation.{head} instead" if head == "temperature" else ""
        raise ConfigError(f"tune.search_space: {key!r} has no effect: it belongs to the "
                          "SummarizationDistiller objective (method: kd without a `distillation:` "
                          f"section){alt}")
    if head in ("student_encoder_layers", "student_decoder_layers") and cfg.student:
        raise ConfigError(f"tune.search_space: {key!r} has no effect with student: set; drop "
                          "student: so each trial runs make_student on the teacher")


def _check_settings(s: TuneSettings, cfg: DistillConfig) -> None:
    def choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            raise ConfigError(f"tune.{key}={value!r} is not allowed: choose one of "
                              f"{', '.join(allowed)}")

    choice("search_alg", s.search_alg, SEARCH_ALGS)
    choice("scheduler", s.scheduler, SCHEDULERS)
    choice("mode", s.mode, ("max", "min"))
    for key in ("num_samples", "grace_period", "max_t", "latency_examples"):
        if getattr(s, key) < 1:
            raise ConfigError(f"tune.{key}={getattr(s, key)} is out of range: it must be >= 1")
    if s.max_concurrent_trials is not None and s.max_concurrent_trials < 1:
        raise ConfigError(f"tune.max_concurrent_trials={s.max_concurrent_trials} must be >= 1 "
                          "(or left out to fit the cluster)")
    if s.max_failures < -1:
        raise ConfigError(f"tune.max_failures={s.max_failures} must be >= 0 (-1: retry forever)")
    if s.scheduler == "asha":
        if not s.reduction_factor > 1:
            raise ConfigError(f"tune.reduction_factor={s.reduction_factor} must be > 1 "
                              "(ASHA keeps 1/reduction_factor of the trials at each rung)")
        if s.max_t < s.grace_period:
            raise ConfigError(f"tune.max_t={s.max_t} must be >= grace_period={s.grace_period} "
                              "(both count validation reports)")
    else:
        default = TuneSettings(search_space=())
        changed = [k for k in ASHA_KEYS if getattr(s, k) != getattr(default, k)]
        if changed:
            raise ConfigError(f"tune.{changed[0]} has no effect with scheduler: {s.scheduler}; "
                              "set scheduler: asha")
    reported = reported_metrics(cfg)
    if s.metric is not None and s.metric not in reported:
        raise ConfigError(f"tune.metric={s.metric!r} is not reported by validation"
                          f"{_closest(s.metric, reported)}")
    if s.search_alg == "grid":
        for d in s.search_space:
            if d.kind not in ("grid", "choice"):
                raise ConfigError(f"tune.search_space.{d.key}: {d.kind} has no values to "
                                  "enumerate with search_alg: grid; use grid/choice or "
                                  "search_alg: random")
    if s.search_alg in ("optuna", "hyperopt"):
        if importlib.util.find_spec(s.search_alg) is None:
            raise ConfigError(f"tune.search_alg: {s.search_alg} needs the {s.search_alg} package: "
                              f"pip install {s.search_alg} (or use search_alg: random)")
        for d in s.search_space:
            if d.kind == "grid":
                raise ConfigError(f"tune.search_space.{d.key}: {s.search_alg} does not take grid; "
                                  "use choice")
    _check_trial_points(s, cfg)


def reported_metrics(cfg: DistillConfig) -> list[str]:
    """Names a validation report holds that make sense to optimise."""
    from raydistill.eval.metrics import ROUGE_KEYS

    names = [cfg.val_metric, "best_" + cfg.val_metric]
    names += [f"val_{k}" for k in ROUGE_KEYS] if cfg.task == "summarization" else ["val_bleu"]
    return names


def _check_trial_points(s: TuneSettings, cfg: DistillConfig) -> None:
    """Every grid/choice value and every range bound must give a valid trial config."""
    layers = _teacher_layers(cfg)
    first = {d.key: d.representatives()[0] for d in s.search_space}
    points = [first] + [{**first, d.key: v} for d in s.search_space for v in d.representatives()]
    for point in points:
        try:
            trial = trial_config(cfg, nest(point), cfg.output_dir)
        except ConfigError as err:
            shown = ", ".join(f"{k}={v!r}" for k, v in point.items())
            raise ConfigError(f"tune.search_space gives an invalid trial config ({shown}): {err}") \
                from None
        for side, key in ((0, "student_encoder_layers"), (1, "student_decoder_layers")):
            value = getattr(trial, key)
            if layers is not None and value is not None and value > layers[side]:
                raise ConfigError(f"tune.search_space.{key}: {value} layers is more than the "
                                  f"teacher's {layers[side]}; keep values <= {layers[side]}")


def _teacher_layers(cfg: DistillConfig) -> tuple[int, int] | None:
    if not cfg.teacher_paths:
        return None
    path = Path(cfg.teacher_paths[0]) / "config.json"
    if not path.is_file():
        return None  # preflight names the missing teacher
    c = json.loads(path.read_text())
    enc = c.get("encoder_layers", c.get("num_layers"))
    dec = c.get("decoder_layers", c.get("num_decoder_layers", enc))
    return (int(enc), int(dec)) if enc is not None and dec is not None else None


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"distillation.temperature": 4}`` -> ``{"distillation": {"temperature": 4}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The inverse of ``nest``."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def trial_config(base: DistillConfig, sampled: dict[str, Any],
                 output_dir: str | Path) -> DistillConfig:
    """The trial's config: ``base`` with the sampled (nested) values merged in, in its folder."""
    data = merge(base.to_dict(), sampled)
    data.update(output_dir=str(output_dir), run_name=None)
    cfg = DistillConfig.from_dict(data, source="tune trial")
    if cfg.method == "kd" and cfg.distillation is not None:
        from raydistill.distill.textbrewer import DistillationConfig

        DistillationConfig.from_dict(cfg.distillation)
    return cfg


def param_space(settings: TuneSettings) -> dict[str, Any]:
    """Tune's param_space: the searched keys, nested as in the config."""
    enumerate_choices = settings.search_alg == "grid"
    return nest({d.key: d.to_tune(enumerate_choices) for d in settings.search_space})


def expected_trials(settings: TuneSettings) -> int:
    """How many trials the sweep makes: num_samples x every grid combination."""
    enumerated = ("grid", "choice") if settings.search_alg == "grid" else ("grid",)
    return settings.num_samples * math.prod(
        len(d.values) for d in settings.search_space if d.kind in enumerated)


def default_max_concurrent(cfg: DistillConfig, settings: TuneSettings,
                           cluster: dict[str, float]) -> int:
    """Trials that fit the cluster at once: its CPUs (GPUs) over what one trial asks for."""
    def largest(key: str) -> Any:
        dims = [d for d in settings.search_space if d.key == key]
        return max(dims[0].representatives()) if dims else getattr(cfg, key)

    workers, cpus = largest("num_workers"), largest("cpus_per_worker")
    fit = int(cluster.get("CPU", 1) // (workers * cpus + DRIVER_CPU))
    if cfg.use_gpu:
        fit = min(fit, int(cluster.get("GPU", 0) // workers))
    return max(1, fit)


def load_sweep(path: str | Path,
               overrides: list[str] | None = None) -> tuple[DistillConfig, TuneSettings]:
    """YAML + overrides -> (base config, tune settings), all checked before Ray starts."""
    from raydistill.train.run import preflight

    cfg, extras = load_config(path, overrides, extra_keys=("tune",))
    settings = parse_tune_section(extras.get("tune"), cfg)
    # The sweep scores on val only (run `raydistill evaluate best/` for test); the sweep checks
    # its own output_dir below, so preflight's emptiness check is skipped.
    preflight(cfg.replace(do_predict=False), overwrite=True)
    return cfg, settings


# ---- the trial driver ---------------------------------------------------------------------

def trial_driver(config: dict[str, Any], base: dict[str, Any], trials_dir: str) -> None:
    """A Tune function trainable: one trial = one TorchTrainer fit of the sampled config."""
    import ray
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from raydistill.train.checkpoint import write_json_atomic
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
    layers = prepare_student(cfg, out, resume=True)
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
    trainer = build_trainer(cfg, Path(out), layers, storage_path=storage, run_name=run_name,
                            callbacks=[callback])
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

    from raydistill.train.checkpoint import write_json_atomic
    from raydistill.train.run import init_ray

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
        write_json_atomic(out / SWEEP_FILE, {"config": cfg.to_dict(),
                                             "tune": _settings_dict(settings),
                                             "experiment_path": experiment})
    init_ray(address)
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, base=cfg.to_dict(), trials_dir=str(out / "trials")),
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
    from raydistill.data.files import read_split
    from raydistill.eval.generate import measure_latency
    from raydistill.train.checkpoint import write_json_atomic

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
    sources = read_split(cfg.data_dir, "val", cfg.n_val).sources
    # The fastest of a few passes: whatever else runs on the machine only ever adds time.
    runs = [measure_latency(str(trial_dir / "best_tfmr"), sources, num_beams=cfg.eval_beams,
                            max_length=cfg.eval_max_gen_length or cfg.val_max_target_length,
                            max_source_length=cfg.max_source_length, n=settings.latency_examples)
            for _ in range(LATENCY_REPEATS)]
    result = {"parameters": int(runs[0]["parameters"]),
              "ms_per_example": round(min(float(r["ms_per_example"]) for r in runs), 3)}
    write_json_atomic(cache, {**result, "checkpoint_path": used, "best_reported": checkpoints[0]})
    return result


def _export_checkpoint(path: str, dst: Path) -> bool:
    """Copy a Train checkpoint's model + tokenizer files (no optimizer state) to ``dst``."""
    from ray.train import Checkpoint

    from raydistill.train.checkpoint import model_files, replace_dir_atomic

    try:
        with Checkpoint(path).as_directory() as src:
            files = model_files(src)
            if not any(f.name == "config.json" for f in files):
                return False
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
            for f in files:
                shutil.copy2(f, tmp / f.name)
    except (FileNotFoundError, OSError):
        return False  # deleted by Train's num_to_keep: the caller tries the next best
    replace_dir_atomic(tmp, dst)
    return True


def _copy_best(src: Path, dst: Path, row: dict[str, Any]) -> None:
    from raydistill.train.checkpoint import replace_dir_atomic, write_json_atomic

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
