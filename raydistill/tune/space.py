"""The sweep's configuration: the ``tune:`` section, its search space, and each trial's config.

Everything here runs before Ray starts: ``load_sweep`` reads the YAML, checks every searched key
against ``DistillConfig`` (and the teacher, for student depths), and returns the base config and
``TuneSettings``; ``param_space`` and ``trial_config`` turn them into Tune's space and each
trial's ``DistillConfig``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raydistill.config import DistillConfig, config_field_names, load_config, merge
from raydistill.errors import ConfigError

SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
SEARCH_ALGS = ("random", "grid", "optuna", "hyperopt")
SCHEDULERS = ("fifo", "asha")
ASHA_KEYS = ("grace_period", "reduction_factor", "max_t")
DRIVER_CPU = 0.01  # the trial driver only waits on its TorchTrainer; {"cpu": 0} is refused
# Keys the sweep itself decides for every trial.
OWNED_KEYS = ("output_dir", "run_name", "storage_path")
# The SummarizationDistiller objective's knobs: read only by method kd without `distillation:`.
SD_KEYS = ("alpha_ce", "alpha_mlm", "alpha_hid", "temperature", "normalize_hidden",
           "supervise_forward", "kd_loss", "kd_beta", "kd_alpha")
# Only these dict-valued config keys take dotted sub-keys (`distillation.kd_loss_weight`).
NESTED_KEYS = ("distillation", "gkd")


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
    if cfg.stages:  # the search space sets the last stage's keys (the stages before: shared)
        from raydistill.stage_plan import plan_stages

        cfg = plan_stages(cfg)[-1].cfg
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
        raise ConfigError(f"tune.search_space: {key!r}: only distillation.* keys (and gkd.* "
                          "keys, with method: gkd) take a dotted sub-key")
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
    if head == "gkd":
        from raydistill.config import GKDSettings

        valid = [f.name for f in dataclasses.fields(GKDSettings)]
        if not sub:
            raise ConfigError("tune.search_space: search gkd.<key> (for example gkd.beta), not "
                              "the whole section")
        if sub not in valid:
            raise ConfigError(f"tune.search_space: {key!r}: {sub!r} is not a gkd key"
                              f"{_closest(sub, valid)}")
        if cfg.method != "gkd":
            raise ConfigError(f"tune.search_space: {key!r} has no effect: the gkd: section is "
                              "read only with method: gkd; set it")
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
    from raydistill.metrics import ROUGE_KEYS

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


def largest_value(cfg: DistillConfig, settings: TuneSettings, key: str) -> Any:
    """The largest value of ``key`` a trial can have (the config's, or the search's)."""
    dims = [d for d in settings.search_space if d.key == key]
    return max(dims[0].representatives()) if dims else getattr(cfg, key)


def default_max_concurrent(cfg: DistillConfig, settings: TuneSettings,
                           cluster: dict[str, float]) -> int:
    """Trials that fit the cluster at once: its CPUs (GPUs) over what one trial asks for."""
    workers = largest_value(cfg, settings, "num_workers")
    cpus = largest_value(cfg, settings, "cpus_per_worker")
    # Counted with the driver's sliver, as if it came on top: on a 2-CPU machine one 1-CPU
    # trial at a time, which leaves the driver and Ray's own tasks room (the trial itself asks
    # for exactly workers x cpus: see build_trainer's cpu_reserve).
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


__all__ = ["ASHA_KEYS", "DRIVER_CPU", "Dimension", "SCHEDULERS", "SEARCH_ALGS", "SPACE_KINDS",
           "TuneSettings", "default_max_concurrent", "largest_value", "expected_trials", "flatten", "load_sweep",
           "nest", "param_space", "parse_dimension", "parse_tune_section", "reported_metrics",
           "trial_config"]
