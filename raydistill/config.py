"""The run configuration: one YAML file -> a frozen, validated dataclass.

``DistillConfig`` is built once (YAML + ``key=value`` overrides), validated in ``__post_init__``
and never mutated; ``to_dict()`` is what travels to Ray Train workers as ``train_loop_config``
and what Tune's ``param_space`` overrides (same keys).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from raydistill.errors import ConfigError

METHODS = ("sft", "kd", "pl", "gkd")
# kd_loss: the divergence of the kd objective's logit term (raydistill.distill.losses).
KD_LOSSES = ("kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")
TASKS = ("summarization", "translation")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOGGERS = ("tensorboard", "wandb", "none")
LOGIT_CACHES = ("parquet", "memory")
LR_SCHEDULERS = ("linear", "wsd")
# generation_backend / compute_type (raydistill.models.ct2 reads them from here).
BACKENDS = ("transformers", "ctranslate2")
COMPUTE_TYPES = ("float32", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "float16",
                 "bfloat16")


@dataclass(frozen=True)
class DistillConfig:
    """Every knob of ``raydistill distill``. Names follow the seq2seq-distillation scripts."""

    # What to train, from what.
    # sft (no teacher) | kd (SummarizationDistiller or TextBrewer objective) | pl (sft on
    # pseudo-labels) | gkd (on-policy distillation: the student learns the teacher's
    # distributions on its own samples; the gkd: section)
    method: str = "kd"
    teacher: str | None = None  # a folder or a Hub id (org/name, org/name@revision)
    teachers: list[str] | None = None  # several teachers: logits averaged (TextBrewer multi-teacher)
    student: str | None = None  # a saved student; otherwise make_student(teacher, e, d)
    # teacher/teachers/student may be folders or Hub ids (org/name, org/name@revision), resolved
    # once on the driver into this cache (None: $HF_HUB_CACHE, else Hugging Face's default).
    model_cache_dir: str | None = None
    student_encoder_layers: int | None = None  # shrinking the teacher (None: all)
    student_decoder_layers: int | None = None  # the same, decoder (None: all)
    # A data folder: the student made from the teacher keeps only the vocabulary its train split uses
    trim_vocab: str | None = None  # (docs/methods.md: kd / gkd gather the teacher's logits)
    keep_vocab: int | None = None  # with trim_vocab: only the N most frequent data tokens (+ specials, characters, BPE intermediates)
    data_dir: str = ""  # train/val/test splits: docs/data.md (required)
    task: str = "summarization"  # summarization (ROUGE-2) or translation (BLEU)
    output_dir: str = ""  # best_tfmr/, metrics.json, hparams.json, ... (required)
    storage_path: str | None = None  # Ray Train checkpoints/results (local, NFS, s3://, gs://)
    run_name: str | None = None  # default: the output_dir's name (deterministic, so restarts resume)

    # Ray.
    # 0: train in this process (Ray Train's local mode: no worker processes to start, the fastest
    # start-up; no restarts on failure); >= 1: that many Ray Train workers (DDP).
    num_workers: int = 1
    use_gpu: bool = False  # one GPU per Train worker, or this process's
    cpus_per_worker: int = 1  # CPUs (torch threads) per Train worker
    max_failures: int = 0  # FailureConfig: restarts from the latest checkpoint
    parallel: str = "ddp"  # ddp: a whole student per worker; fsdp: sharded over them (docs/fsdp.md)
    teacher_parallel: str = "replicate"  # fsdp: the frozen teacher sharded too
    reshard_after_forward: bool = True  # fsdp: free a layer's gathered weights after its forward

    # Data.
    n_train: int | None = None  # examples used per split (None: all)
    n_val: int | None = None  # validation examples generated at each validation
    n_test: int | None = None  # test examples scored at the end
    max_source_length: int = 1024  # source tokens kept
    max_target_length: int = 56  # train target tokens kept
    val_max_target_length: int = 142  # val target tokens kept
    test_max_target_length: int = 142  # test target tokens kept
    train_batch_size: int = 8  # examples per batch, per worker
    eval_batch_size: int = 16  # examples per generation batch
    max_tokens_per_batch: int | None = None  # token-budget batches instead of a fixed batch size
    sortish_sampler: bool = False  # fixed-size batches grouped by length
    # Ray Data tokenizer actors, for a train split of more than 20,000 examples (smaller
    # ones are tokenized in the driver, faster than starting actors).
    num_tokenize_workers: int = 1

    # Optimisation.
    max_epochs: int = 1  # passes over the train split
    max_steps: int | None = None  # optimizer steps; overrides max_epochs when set
    learning_rate: float = 5e-5  # AdamW's peak learning rate
    weight_decay: float = 0.0  # AdamW's
    adam_epsilon: float = 1e-8  # AdamW's
    adam_beta1: float = 0.9  # AdamW's
    adam_beta2: float = 0.999  # 0.98 (fairseq, Marian) suits transformers trained from scratch
    warmup_steps: int = 0  # linear warmup, in optimizer steps
    # linear: warm up, then decay to 0 at the last step. wsd (warmup-stable-decay): warm up, hold
    # learning_rate, decay to 0 over the last lr_decay_steps only (default: a tenth of the run),
    # so a run extended by raising max_steps keeps the schedule of the steps it already took.
    lr_scheduler: str = "linear"
    lr_decay_steps: int | None = None  # wsd's final decay (None: a tenth of the run)
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 1.0  # gradient clipping
    seed: int = 42  # initialization, data order, sampling
    precision: str = "auto"  # auto: bf16 on GPUs that have it, else fp16 with a scaler; fp32 on CPU
    # The frozen teachers' weights (the student trains in fp32): auto = bf16 on a GPU that has
    # it, fp16 on other GPUs, fp32 on CPU. KD losses are computed in fp32 either way.
    teacher_dtype: str = "auto"

    # Student regularisation and freezing (finetune.py).
    freeze_encoder: bool = False  # the student's encoder is not trained
    freeze_embeds: bool = False  # nor its embeddings
    gradient_checkpointing: bool = False  # recompute layer activations in backward: less memory
    label_smoothing: float = 0.0  # on the hard-label loss
    dropout: float | None = None  # None: the model's own
    attention_dropout: float | None = None  # None: the model's own
    encoder_layerdrop: float | None = None  # None: the model's own; same layers on every worker
    decoder_layerdrop: float | None = None  # None: the model's own; same layers on every worker

    # SummarizationDistiller objective (method: kd without a `distillation:` section).
    alpha_ce: float = 0.8  # the KD term's weight (x T^2)
    alpha_mlm: float = 0.2  # the hard-label CE's weight
    alpha_hid: float = 0.0  # the hidden-state MSE's weight
    temperature: float = 2.0  # KD temperature T
    normalize_hidden: bool = False  # layer-norm hidden states before the MSE
    supervise_forward: bool = False  # LAYERS_TO_SUPERVISE instead of the copied layers
    # The divergence of its logit term (x T^2): kl (the original's), reverse_kl, jsd (kd_beta),
    # skew_kl / skew_reverse_kl (kd_alpha), tvd.
    kd_loss: str = "kl"
    kd_beta: float = 0.5  # jsd's mixing weight, in [0, 1]
    kd_alpha: float = 0.1  # skew_*'s skew, in [0, 1)

    # On-policy distillation (method: gkd), TRL's GKDConfig names: lmbda, beta, temperature,
    # max_new_tokens, seq_kd, plus top_p / top_k for sampling (GKD_DEFAULTS).
    gkd: dict | None = None

    # Staged recipes (raydistill.stages): the keys each stage changes, in order; every stage
    # after the first starts from the previous stage's best student.
    stages: list | None = None

    # TextBrewer-compatible objective: a DistillationConfig / TrainingConfig dict.
    # TextBrewer's DistillationConfig: method: kd then optimizes TextBrewer's objective
    # (docs/textbrewer.md).
    distillation: dict | None = None
    training: dict | None = None  # TextBrewer's TrainingConfig: mapped onto the keys here
    # distillation.is_caching_logits: teacher logits kept per position (None: reuse a cache of
    # any k, build with 64), and where: "parquet" (built before training, reusable across runs)
    # or "memory" (recorded during the first epoch, as TextBrewer does).
    logit_cache_top_k: int | None = None
    logit_cache: str = "parquet"  # parquet | memory (see above)

    # Validation and test.
    val_check_interval: float = 1.0  # fraction of an epoch
    val_check_steps: int | None = None  # validate + checkpoint every N optimizer steps instead
    eval_beams: int = 2  # beams of validation and test generation
    length_penalty: float = 1.0  # generation's length penalty
    eval_max_gen_length: int | None = None  # default: val/test_max_target_length
    num_eval_workers: int = 1  # Ray Data actors of test generation
    do_predict: bool = True  # score best_tfmr on the test split at the end
    # Test generation and Tune's latency column (validation inside the workers stays on
    # transformers): ctranslate2 converts best_tfmr once per compute type into ct2_cache_dir
    # (None: $RAYDISTILL_CT2_CACHE, else ~/.cache/raydistill/ctranslate2).
    generation_backend: str = "transformers"
    compute_type: str = "float32"  # ctranslate2's: int8 fastest on CPU
    ct2_cache_dir: str | None = None  # converted models (None: see above)

    # Logging and checkpoints.
    logger: str = "tensorboard"  # tensorboard | wandb (also TensorBoard) | none
    log_dir: str | None = None  # TensorBoard events; default output_dir/tensorboard
    log_every_n_steps: int = 10  # a step line every N optimizer steps
    checkpoints_to_keep: int = 2  # best by the val metric, plus the latest

    def __post_init__(self) -> None:
        _check_types(self)
        if self.training:  # TextBrewer's TrainingConfig keys onto ours
            from raydistill.textbrewer_training import apply_training_section

            apply_training_section(self)
        for key, allowed in (
                ("method", METHODS), ("task", TASKS), ("precision", PRECISIONS),
                ("teacher_dtype", PRECISIONS), ("logger", LOGGERS), ("logit_cache", LOGIT_CACHES),
                ("lr_scheduler", LR_SCHEDULERS), ("generation_backend", BACKENDS),
                ("compute_type", COMPUTE_TYPES), ("parallel", ("ddp", "fsdp")),
                ("teacher_parallel", ("replicate", "fsdp"))):
            _choice(key, getattr(self, key), allowed)
        if not self.data_dir:
            raise ConfigError("data_dir is required: set data_dir: PATH in the config or data_dir=PATH")
        if not self.output_dir:
            raise ConfigError("output_dir is required: set output_dir: PATH in the config or output_dir=PATH")
        if self.method in ("kd", "gkd") and not (self.teacher or self.teachers):
            raise ConfigError(f"method: {self.method} needs teacher: PATH (or teachers: [PATH, ...])")
        _choice("kd_loss", self.kd_loss, KD_LOSSES)
        if not 0.0 <= self.kd_beta <= 1.0:
            raise ConfigError(f"kd_beta={self.kd_beta} is out of range: it must be in [0, 1]")
        if not 0.0 <= self.kd_alpha < 1.0:
            raise ConfigError(f"kd_alpha={self.kd_alpha} is out of range: it must be in [0, 1)")
        _check_gkd(self)
        if self.method in ("sft", "pl") and not (self.student or self.teacher):
            raise ConfigError(f"method: {self.method} needs student: PATH (or teacher: PATH to shrink)")
        _at_least("num_workers", self.num_workers, 0)
        if self.num_workers == 0 and self.max_failures:
            raise ConfigError(f"max_failures={self.max_failures} needs Ray Train workers to "
                              "restart; num_workers: 0 trains in this process (resume it with "
                              "--resume instead): set num_workers >= 1 or max_failures: 0")
        for key in ("cpus_per_worker", "train_batch_size", "eval_batch_size",
                    "max_epochs", "gradient_accumulation_steps", "max_source_length",
                    "max_target_length", "val_max_target_length", "test_max_target_length",
                    "eval_beams", "num_eval_workers", "num_tokenize_workers", "log_every_n_steps",
                    "checkpoints_to_keep"):
            _at_least(key, getattr(self, key), 1)
        for key in ("max_steps", "max_tokens_per_batch", "n_train", "n_val", "n_test",
                    "student_encoder_layers", "student_decoder_layers", "eval_max_gen_length",
                    "val_check_steps", "logit_cache_top_k", "lr_decay_steps"):
            if getattr(self, key) is not None:
                _at_least(key, getattr(self, key), 1)
        for key in ("warmup_steps", "max_failures", "seed"):
            _at_least(key, getattr(self, key), 0)
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate={self.learning_rate} is out of range: it must be > 0")
        for key in ("weight_decay", "max_grad_norm", "alpha_ce", "alpha_mlm", "alpha_hid"):
            _at_least(key, getattr(self, key), 0.0)
        for key in ("label_smoothing", "dropout", "attention_dropout", "encoder_layerdrop",
                    "decoder_layerdrop", "adam_beta1", "adam_beta2"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value < 1.0:
                raise ConfigError(f"{key}={value} is out of range: it must be in [0, 1)")
        if not self.temperature > 0:
            raise ConfigError(f"temperature={self.temperature} is out of range: it must be > 0")
        if not 0.0 < self.val_check_interval <= 1.0:
            raise ConfigError(
                f"val_check_interval={self.val_check_interval} is out of range: it must be in (0, 1]"
                " (a fraction of an epoch)")
        if self.logit_cache == "memory" and not self.caches_logits:
            raise ConfigError("logit_cache: memory keeps cached teacher logits, but this run caches "
                              "none; set distillation: {is_caching_logits: true} with method: kd, "
                              "or drop logit_cache")
        if self.keep_vocab is not None and not (self.trim_vocab and self.keep_vocab >= 1):
            raise ConfigError(f"keep_vocab={self.keep_vocab} needs trim_vocab: DATA_DIR and N >= 1")
        if self.trim_vocab and self.student:
            raise ConfigError("trim_vocab trims the student a run makes from its teacher; a saved "
                              "student is trimmed by make-student --trim-vocab: drop trim_vocab")
        if self.stages is not None:  # every stage's config, validated now
            from raydistill.stage_plan import plan_stages

            plan_stages(self)
        if self.method == "kd" and self.distillation is None and \
                self.alpha_ce + self.alpha_mlm + self.alpha_hid == 0:
            raise ConfigError("alpha_ce, alpha_mlm and alpha_hid are all 0: nothing to train; "
                              "set at least one above 0")

    @property
    def world_size(self) -> int:
        """Training processes: num_workers, or 1 for num_workers: 0 (this process)."""
        return max(1, self.num_workers)

    @property
    def val_metric(self) -> str:
        return "rouge2" if self.task == "summarization" else "bleu"

    @property
    def teacher_paths(self) -> list[str]:
        return list(self.teachers or ([self.teacher] if self.teacher else []))

    @property
    def caches_logits(self) -> bool:
        """kd with ``distillation: {is_caching_logits: true}``: the teacher runs once, before
        training (``logit_cache: parquet``) or during the first epoch (``memory``)."""
        return self.method == "kd" and bool((self.distillation or {}).get("is_caching_logits"))

    @property
    def uses_teacher(self) -> bool:
        return self.method in ("kd", "gkd")

    @property
    def gkd_settings(self) -> GKDSettings:
        """The ``gkd:`` section with TRL's defaults filled in."""
        return GKDSettings(**(self.gkd or {}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> DistillConfig:
        """Build from a (possibly nested) dict; unknown keys are errors naming the closest key."""
        flat = _flatten_sections(data)
        known = {f.name for f in dataclasses.fields(cls)}
        for key in flat:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else "; see docs/config.md"
                raise ConfigError(f"{source}: unknown config key {key!r}{hint}")
        return cls(**_coerce_numbers(cls, flat))

    def replace(self, **changes: Any) -> DistillConfig:
        """A validated copy with ``changes`` (the original is never mutated)."""
        return DistillConfig.from_dict({**self.to_dict(), **changes})


@dataclass(frozen=True)
class GKDSettings:
    """``method: gkd`` (Agarwal et al. 2024; TRL's GKDConfig names and defaults).

    lmbda: the fraction of batches whose targets the student samples (0: supervised, 1: fully
    on-policy); beta: the generalized JSD's (0 forward KL, 1 reverse KL); temperature: sampling
    and loss; max_new_tokens: the sampled targets' length cap; seq_kd: targets of the other
    batches sampled from the teacher instead of the data's; top_p / top_k: sampling (top_k 0: off).
    """

    lmbda: float = 0.5  # fraction of on-policy batches
    beta: float = 0.5  # 0: forward KL, 1: reverse KL
    temperature: float = 0.9  # of sampling and of the loss
    max_new_tokens: int = 128  # sampled targets' cap
    seq_kd: bool = False  # other batches: the teacher's samples
    top_p: float = 1.0  # nucleus sampling
    top_k: int = 0  # 0: off



def _check_gkd(cfg: DistillConfig) -> None:
    if cfg.gkd is not None and cfg.method != "gkd":
        raise ConfigError(f"gkd: section given with method: {cfg.method}; set method: gkd, or "
                          "drop the gkd: section")
    if cfg.method != "gkd":
        return
    if (cfg.distillation or {}).get("is_caching_logits"):
        raise ConfigError("method: gkd with distillation.is_caching_logits: on-policy batches are "
                          "sequences the student samples, which no cache of the teacher's logits "
                          "holds; they need the live teacher: drop the distillation: section")
    if cfg.distillation is not None:
        raise ConfigError("method: gkd trains on the divergence of the gkd: section; drop the "
                          "distillation: section (or use method: kd)")
    if cfg.alpha_hid > 0:
        raise ConfigError(f"alpha_hid={cfg.alpha_hid} has no effect with method: gkd (on a sampled "
                          "sequence only the logits are matched); set alpha_hid: 0")
    known = [f.name for f in dataclasses.fields(GKDSettings)]
    for key in cfg.gkd or {}:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (keys: {', '.join(known)})"
            raise ConfigError(f"gkd.{key} is not a gkd key{hint}")
    hints = typing.get_type_hints(GKDSettings)
    for key, value in (cfg.gkd or {}).items():
        if not _matches(value, hints[key]):
            raise ConfigError(f"gkd.{key}={value!r} has the wrong type: expected "
                              f"{_type_name(hints[key])}")
    g = cfg.gkd_settings
    for key, ok, rule in (("lmbda", 0.0 <= g.lmbda <= 1.0, "in [0, 1]"),
                          ("beta", 0.0 <= g.beta <= 1.0, "in [0, 1]"),
                          ("temperature", g.temperature > 0, "> 0"),
                          ("max_new_tokens", g.max_new_tokens >= 1, ">= 1"),
                          ("top_p", 0.0 < g.top_p <= 1.0, "in (0, 1]"),
                          ("top_k", g.top_k >= 0, ">= 0 (0: off)")):
        if not ok:
            raise ConfigError(f"gkd.{key}={getattr(g, key)} is out of range: it must be {rule}")


# Sections a YAML may use for readability; their keys are flattened (``model: {teacher: x}``).
SECTIONS = ("model", "data", "optim", "train", "eval", "ray", "objective", "logging")


def _flatten_sections(data: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _coerce_numbers(cls: type, flat: dict[str, Any]) -> dict[str, Any]:
    """YAML 1.1 reads ``1e-4`` as a string; accept such numbers for float fields."""
    hints = typing.get_type_hints(cls)
    out = dict(flat)
    for key, value in flat.items():
        if isinstance(value, str) and float in typing.get_args(hints[key]) + (hints[key],):
            try:
                out[key] = float(value)
            except ValueError:
                pass  # left as is: the type check names it
    return out


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed: choose one of {', '.join(allowed)}")


def _at_least(key: str, value: Any, low: float) -> None:
    if value < low:
        raise ConfigError(f"{key}={value} is out of range: it must be >= {low}")


def _check_types(cfg: DistillConfig) -> None:
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not _matches(value, hints[f.name]):
            raise ConfigError(
                f"{f.name}={value!r} has the wrong type: expected {_type_name(hints[f.name])}")


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["learning_rate=1e-4", "distillation.temperature=8"]`` -> nested dict (YAML-typed values)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not key=value (for example learning_rate=1e-4)")
        key, raw = pair.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into a copy of ``base``."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML mapping, naming file, line and column when it does not parse."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass the path of a YAML file "
                          "(examples in jobs/configs/)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = (err.problem or err.context or "invalid YAML").strip()
        raise ConfigError(f"{path}{where}: YAML does not parse ({problem}); fix the syntax there") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at the top level")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None,
                extra_keys: tuple[str, ...] = ()) -> tuple[DistillConfig, dict[str, Any]]:
    """YAML file + ``key=value`` overrides -> (validated config, the other top-level sections).

    ``extra_keys`` names top-level sections some commands own (``tune`` for ``raydistill tune``);
    they are returned apart instead of being rejected as unknown keys.
    """
    data = merge(read_yaml(path), parse_overrides(overrides or []))
    extras = {k: data.pop(k) for k in extra_keys if k in data}
    # `distillation.temperature=8` as an override lands in the nested dict; keep it there.
    return DistillConfig.from_dict(data, source=str(path)), extras


def config_field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(DistillConfig)]


__all__ = ["DistillConfig", "load_config", "parse_overrides", "read_yaml", "merge",
           "config_field_names", "GKDSettings", "KD_LOSSES", "METHODS", "TASKS"]
