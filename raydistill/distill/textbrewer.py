"""TextBrewer's configs and GeneralDistiller's total loss, as typed, frozen, validated pieces.

A TextBrewer JSON (``TrainingConfig`` / ``DistillationConfig``) loads as it is with
``from_json_file``. The objective :func:`textbrewer_loss` reproduces
``GeneralDistiller.compute_loss`` (and ``MultiTeacherDistiller`` when given several teachers):

    L = w_kd(step) * KD(select(logits_S), select(logits_T), T) + sum_i w_i * match_i + w_hl(step) * sum(losses)

It reads the adaptor dicts (``results_S`` / ``results_T``) in TextBrewer's format; for seq2seq:

* ``logits`` (B, T_tgt, V) decoder logits; ``logits_mask`` (B, T_tgt) real target positions
  (KD is computed over those positions only, like TextBrewer's ``select_logits_with_mask``);
* ``hidden``: list of (B, L_i, D) (encoder embeddings + layers, then decoder embeddings + layers),
  ``hidden_mask``: list of (B, L_i) aligned with it;
* ``attention``: list of (B, heads, L_i, L_i) (encoder then decoder self-attention),
  ``attention_mask``: list of (B, L_i) aligned with it;
* ``losses``: list of scalar tensors (hard-label CE); ``labels`` (B, T_tgt) for probability_shift.

Deviations from TextBrewer (all documented where they happen): per-layer masks
(``hidden_mask``/``attention_mask``) instead of one ``inputs_mask``, because encoder and decoder
lengths differ (``inputs_mask`` is still used when they are absent); all-padding masks give 0,
not nan; configs are validated, frozen and create no directories.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from raydistill.distill.losses import KD_LOSS_MAP, MATCH_LOSS_MAP, PAIR_LOSSES
from raydistill.distill.schedulers import (
    build_temperature_scheduler,
    check_weight_scheduler,
    normalize_temperature_spec,
    scheduled_weight,
)
from raydistill.errors import ConfigError
from raydistill.textbrewer_training import (  # noqa: F401 (TrainingConfig: public here too)
    TrainingConfig,
    _check_keys,
    _closest,
    _FromDict,
    _is_int,
    _is_number,
    _jsonable,
    _require,
)

FEATURES = ("hidden", "attention")
"""Intermediate features an adaptor can return (TextBrewer's ``presets.FEATURES``)."""

Layer = Union[int, tuple[int, int]]
ProjSpec = tuple[str, int, int, dict]


# ---- IntermediateMatch ----------------------------------------------------------------------

def linear_projection(dim_in: int, dim_out: int) -> nn.Module:
    """``nn.Linear(dim_in, dim_out)`` initialized as TextBrewer: weight ~ N(0, 0.02), bias 0."""
    module = nn.Linear(dim_in, dim_out, bias=True)
    nn.init.normal_(module.weight, mean=0.0, std=0.02)
    nn.init.zeros_(module.bias)
    return module


def projection_with_activation(activation: str) -> Callable[[int, int], nn.Module]:
    """A builder of ``Sequential(Linear, activation)`` (e.g. 'ReLU', 'Tanh'), initialized as TextBrewer."""
    act_cls = getattr(nn, activation)

    def projection(dim_in: int, dim_out: int) -> nn.Module:
        return nn.Sequential(linear_projection(dim_in, dim_out), act_cls())

    return projection


PROJ_MAP: dict[str, Callable[[int, int], nn.Module]] = {
    "linear": linear_projection,
    "relu": projection_with_activation("ReLU"),
    "tanh": projection_with_activation("Tanh"),
}
"""``proj[0]`` -> builder ``(dim_S, dim_T) -> module`` mapping student features to the teacher's size."""

_MATCH = "IntermediateMatch"  # message prefix; DistillationConfig swaps in 'intermediate_matches[i]'


@dataclass(frozen=True)
class IntermediateMatch:
    """One ``intermediate_matches`` entry (TextBrewer's argument order).

    layer_T / layer_S: index into the adaptor's ``hidden`` or ``attention`` list (negative
    counts from the end); a pair ``[i, j]`` for the two-layer losses fsp/gram/mmd/nst.
    feature: 'hidden' or 'attention'. loss: a MATCH_LOSS_MAP key. weight: >= 0.
    proj: optional ``[name, dim_S, dim_T]`` or ``[name, dim_S, dim_T, {"lr": ...}]`` with name in
    PROJ_MAP; it maps the student feature (last dim dim_S) to dim_T. Stored with the dict always
    present, as TextBrewer does.
    """

    layer_T: Layer
    layer_S: Layer
    weight: float
    loss: str
    feature: str
    proj: Optional[ProjSpec] = None

    def __post_init__(self) -> None:
        _require(self.feature in FEATURES,
                 f"{_MATCH}.feature={self.feature!r} is unknown{_closest(str(self.feature), FEATURES)}"
                 f"; use 'hidden' or 'attention'")
        _require(isinstance(self.loss, str) and self.loss in MATCH_LOSS_MAP,
                 f"{_MATCH}.loss={self.loss!r} is unknown{_closest(str(self.loss), list(MATCH_LOSS_MAP))}"
                 f"; use one of {', '.join(MATCH_LOSS_MAP)}")
        _require(_is_number(self.weight) and self.weight >= 0, f"{_MATCH}.weight={self.weight!r} must be a number >= 0")
        for key in ("layer_T", "layer_S"):
            object.__setattr__(self, key, self._check_layer(key, getattr(self, key)))
        object.__setattr__(self, "proj", self._check_proj(self.proj))

    def _check_layer(self, key: str, value: object) -> Layer:
        if self.loss in PAIR_LOSSES:
            ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) for v in value)
            _require(ok, f"{_MATCH}.{key}={value!r}: loss {self.loss!r} compares two layers; give two ints, e.g. [0, 2]")
            return (value[0], value[1])  # type: ignore[index]
        _require(_is_int(value), f"{_MATCH}.{key}={value!r} must be one int (a list of two is only for fsp/gram/mmd/nst)")
        return value  # type: ignore[return-value]

    def _check_proj(self, proj: object) -> Optional[ProjSpec]:
        if proj is None or (isinstance(proj, (list, tuple)) and len(proj) == 0):
            return None  # TextBrewer: `if proj:`
        usage = "write it as [name, dim_S, dim_T] or [name, dim_S, dim_T, {'lr': 1e-3}]"
        _require(isinstance(proj, (list, tuple)) and len(proj) in (3, 4), f"{_MATCH}.proj={proj!r} is malformed; {usage}")
        name, dim_S, dim_T = proj[0], proj[1], proj[2]  # type: ignore[index]
        _require(isinstance(name, str) and name in PROJ_MAP,
                 f"{_MATCH}.proj[0]={name!r} is unknown{_closest(str(name), list(PROJ_MAP))}; use one of {', '.join(PROJ_MAP)}")
        _require(_is_int(dim_S) and dim_S > 0 and _is_int(dim_T) and dim_T > 0,
                 f"{_MATCH}.proj={proj!r}: dim_S and dim_T must be positive ints; {usage}")
        options = proj[3] if len(proj) == 4 else {}  # type: ignore[index,arg-type]
        _require(isinstance(options, Mapping), f"{_MATCH}.proj[3]={options!r} must be a dict of optimizer options; {usage}")
        _require("params" not in options, f"{_MATCH}.proj[3] must not set 'params' (the projection's own parameters are used)")
        lr = options.get("lr")
        _require(lr is None or (_is_number(lr) and lr > 0), f"{_MATCH}.proj[3]['lr']={lr!r} must be a number > 0")
        return (name, dim_S, dim_T, dict(options))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "IntermediateMatch":
        """Build from a TextBrewer match dict; names unknown or missing keys."""
        _require(isinstance(data, Mapping), f"{_MATCH} must be a dict, got {data!r}")
        valid = [f.name for f in dataclasses.fields(cls)]
        _check_keys(_MATCH, data, valid)
        missing = [k for k in valid[:5] if k not in data]
        _require(not missing, f"{_MATCH}: missing key(s) {', '.join(missing)} (required: {', '.join(valid[:5])})")
        return cls(**data)


# ---- DistillationConfig ---------------------------------------------------------------------

@dataclass(frozen=True)
class DistillationConfig(_FromDict):
    """TextBrewer's ``DistillationConfig``: same fields, defaults and total loss (see module doc).

    temperature: > 0. temperature_scheduler: 'none', 'constant', ['flsw', beta, gamma(, eps)] or
    ['cwsm', beta]. *_weight: >= 0. *_weight_scheduler: 'none'/'constant', 'linear_decay',
    'linear_growth' (these replace the weight, 1->0 / 0->1, as in TextBrewer). kd_loss_type:
    'ce' or 'mse'. intermediate_matches: list of match dicts (or IntermediateMatch), stored as a
    tuple. is_caching_logits is accepted for TextBrewer files; the trainer decides whether to use it.
    """

    temperature: float = 4
    temperature_scheduler: Union[str, tuple] = "none"
    hard_label_weight: float = 0
    hard_label_weight_scheduler: str = "none"
    kd_loss_type: str = "ce"
    kd_loss_weight: float = 1
    kd_loss_weight_scheduler: str = "none"
    probability_shift: bool = False
    intermediate_matches: Optional[Sequence[Union[IntermediateMatch, Mapping[str, Any]]]] = None
    is_caching_logits: bool = False

    def __post_init__(self) -> None:
        name = type(self).__name__
        _require(_is_number(self.temperature) and self.temperature > 0,
                 f"{name}.temperature={self.temperature!r} must be a number > 0 (typically 1-10; TextBrewer's default is 4)")
        try:
            spec = normalize_temperature_spec(self.temperature_scheduler)
        except ConfigError as err:
            raise ConfigError(f"{name}.{err}") from None
        object.__setattr__(self, "temperature_scheduler", spec)
        for key in ("kd_loss_weight", "hard_label_weight"):
            value = getattr(self, key)
            _require(_is_number(value) and value >= 0, f"{name}.{key}={value!r} must be a number >= 0")
            check_weight_scheduler(f"{name}.{key}_scheduler", getattr(self, f"{key}_scheduler"))
        _require(self.kd_loss_type in KD_LOSS_MAP,
                 f"{name}.kd_loss_type={self.kd_loss_type!r} is unknown{_closest(str(self.kd_loss_type), list(KD_LOSS_MAP))}"
                 "; use 'ce' or 'mse'")
        for key in ("probability_shift", "is_caching_logits"):
            _require(isinstance(getattr(self, key), bool), f"{name}.{key}={getattr(self, key)!r} must be true or false")
        object.__setattr__(self, "intermediate_matches", self._build_matches(self.intermediate_matches))
        self._check_something_is_weighted()

    @staticmethod
    def _build_matches(matches: object) -> tuple[IntermediateMatch, ...]:
        if matches is None:
            return ()
        _require(isinstance(matches, (list, tuple)),
                 f"DistillationConfig.intermediate_matches={matches!r} must be a list of dicts")
        built = []
        for i, match in enumerate(matches):  # type: ignore[arg-type]
            try:
                built.append(match if isinstance(match, IntermediateMatch) else IntermediateMatch.from_dict(match))
            except ConfigError as err:
                raise ConfigError(str(err).replace(_MATCH, f"intermediate_matches[{i}]", 1)) from None
        return tuple(built)

    def _check_something_is_weighted(self) -> None:
        # linear_growth/decay replace the weight, so a base of 0 with them still trains.
        kd_on = self.kd_loss_weight > 0 or self.kd_loss_weight_scheduler not in ("none", "constant")
        hl_on = self.hard_label_weight > 0 or self.hard_label_weight_scheduler not in ("none", "constant")
        match_on = any(m.weight > 0 for m in self.intermediate_matches)  # type: ignore[union-attr]
        _require(kd_on or hl_on or match_on,
                 "DistillationConfig: all loss weights are 0 (kd_loss_weight, hard_label_weight, intermediate_matches"
                 " weights); set kd_loss_weight > 0 (TextBrewer's default is 1)")


# ---- projections ----------------------------------------------------------------------------

def build_projections(config: DistillationConfig) -> nn.ModuleList:
    """One module per intermediate match (None where the match has no ``proj``), in match order.

    Seed torch before calling to get TextBrewer's exact initial weights for the same seed.
    """
    return nn.ModuleList([
        PROJ_MAP[m.proj[0]](m.proj[1], m.proj[2]) if m.proj is not None else None  # type: ignore[misc]
        for m in config.intermediate_matches  # type: ignore[union-attr]
    ])


def projection_param_groups(config: DistillationConfig, projections: Sequence[Optional[nn.Module]],
                            default_lr: float) -> list[dict[str, Any]]:
    """Optimizer param groups for the projections: ``{'params', 'lr', **proj[3]}`` per projection.

    A match's ``proj[3]`` options (its own ``lr``, ``weight_decay``, ...) override ``default_lr``,
    as TextBrewer's ``optimizer.add_param_group({'params': ..., **proj[3]})``.
    """
    matches: tuple[IntermediateMatch, ...] = config.intermediate_matches  # type: ignore[assignment]
    _require(len(projections) == len(matches),
             f"projections has {len(projections)} entries but the config has {len(matches)}"
             " intermediate_matches; build them with build_projections(config)")
    return [
        {"params": list(proj.parameters()), "lr": default_lr, **match.proj[3]}
        for match, proj in zip(matches, projections)
        if proj is not None and match.proj is not None
    ]


# ---- the objective --------------------------------------------------------------------------

def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def select_logits_with_mask(logits: Tensor, mask: Optional[Tensor]) -> Tensor:
    """(B, T, V) logits + (B, T) mask -> (N, V) kept positions in row-major order (TextBrewer's).

    2-D logits (B, V), or no mask, come back unchanged.
    """
    if mask is None or logits.dim() != 3:
        return logits
    return logits[mask.to(torch.bool)]


def probability_shift(logits: Tensor, labels: Tensor) -> Tensor:
    """TextBrewer's ``probability_shift_`` without the in-place write: per position, swap the
    logit of the true label with the largest logit so the label becomes the argmax.

    logits (N, V) with labels (N,), or (B, T, V) with labels (B, T). A negative label (e.g. -100)
    leaves its row unchanged (TextBrewer's 3-D rule, also applied to 2-D here).
    """
    flat = logits.reshape(-1, logits.size(-1)).clone()
    max_position = flat.argmax(dim=-1)
    labels = labels.reshape(-1).to(max_position.device)
    labels = torch.where(labels < 0, max_position, labels)
    index = torch.arange(flat.size(0), device=flat.device)
    max_value = flat[index, max_position].clone()
    truth_value = flat[index, labels].clone()
    flat[index, max_position] = truth_value
    flat[index, labels] = max_value
    return flat.view(logits.shape)


def average_teacher_logits(results_T: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Average the teachers' ``logits`` as MultiTeacherDistiller (``sum(l_T) / len(l_T)``).

    Returns ``{'logits': mean, 'logits_mask': <first teacher's mask, if any>}`` (TextBrewer selects
    every teacher's logits with the first teacher's mask).
    """
    _require(len(results_T) > 0, "average_teacher_logits needs at least one teacher's results")
    per_teacher = [_as_list(r["logits"]) for r in results_T]
    mean = [sum(group) / len(group) for group in zip(*per_teacher)]
    out: dict[str, Any] = {"logits": mean if isinstance(results_T[0]["logits"], (list, tuple)) else mean[0]}
    if "logits_mask" in results_T[0]:
        out["logits_mask"] = results_T[0]["logits_mask"]
    return out


def _kd_reads_mask(config: DistillationConfig, l_S: Tensor, l_T: Tensor, mask_S: Optional[Tensor],
                   mask_T: Optional[Tensor], label: Optional[Tensor]) -> bool:
    """Whether the KD loss can take the mask instead of selected logits: (B, T, V) logits of the
    same positions under one mask, labels (for probability_shift) of those positions, and no
    dynamic temperature scheduler (flsw/cwsm read the selected logits as a whole). The masked
    loss weights positions instead of selecting them: the same value, without reading the mask
    on the host (a selection waits for the GPU) and, chunked, without (N, V) copies."""
    return (config.temperature_scheduler in ("none", "constant")
            and l_S.dim() == 3 and l_S.shape == l_T.shape
            and mask_S is not None and mask_T is not None and mask_S.shape == l_S.shape[:-1]
            and (label is None or label.shape == mask_S.shape)
            and (mask_S is mask_T or torch.equal(mask_S.bool(), mask_T.bool())))


def _kd_loss(config: DistillationConfig, results_S: Mapping[str, Any], results_T: Mapping[str, Any],
             labels_mask: Optional[Tensor]) -> tuple[Tensor, Union[float, Tensor]]:
    """Sum of KD losses over the logits pairs, and the (mean) temperature used last (a 0-d
    tensor for a per-position scheduler: read on the host only when the loop logs it)."""
    logits_S, logits_T = _as_list(results_S["logits"]), _as_list(results_T["logits"])
    masks_S = _as_list(results_S.get("logits_mask", labels_mask))
    # Teacher logits from a cache carry no mask: use the student's, as TextBrewer does then.
    masks_T = _as_list(results_T["logits_mask"]) if "logits_mask" in results_T else masks_S
    labels = _as_list(results_S.get("labels")) if config.probability_shift else [None] * len(logits_S)
    _require(not config.probability_shift or labels[0] is not None,
             "DistillationConfig.probability_shift=True needs 'labels' in the student adaptor's output")
    scheduler = build_temperature_scheduler(config.temperature_scheduler)
    kd_loss = KD_LOSS_MAP[config.kd_loss_type]
    total, temperature = None, config.temperature
    for i, (l_S, l_T) in enumerate(zip(logits_S, logits_T)):
        mask_S, mask_T = masks_S[i if len(masks_S) > 1 else 0], masks_T[i if len(masks_T) > 1 else 0]
        label = labels[i if len(labels) > 1 else 0]
        if _kd_reads_mask(config, l_S, l_T, mask_S, mask_T, label):
            # The same value as selecting the kept positions first (below).
            if label is not None:  # a negative label leaves its row as it is
                l_T = probability_shift(l_T, label)
            temperature = scheduler(l_S, l_T, config.temperature)
            loss = kd_loss(l_S, l_T, temperature, mask=mask_S)
            total = loss if total is None else total + loss
            continue
        l_S, l_T = select_logits_with_mask(l_S, mask_S), select_logits_with_mask(l_T, mask_T)
        if config.probability_shift:
            if mask_T is not None and label.dim() == 2 and label.shape == mask_T.shape:
                label = label[mask_T.to(torch.bool)]  # the same positions as the selected logits
            l_T = probability_shift(l_T, label)
        temperature = scheduler(l_S, l_T, config.temperature)
        loss = kd_loss(l_S, l_T, temperature)
        total = loss if total is None else total + loss
    if isinstance(temperature, Tensor):  # per-position (flsw/cwsm): log the mean
        temperature = (temperature.detach().float().mean() if temperature.numel()
                       else float(config.temperature))
    return total, temperature  # type: ignore[return-value]


def _feature_mask(results: Mapping[str, Any], feature: str, layer: int) -> Optional[Tensor]:
    """The (B, L) mask aligned with ``results[feature][layer]``, else TextBrewer's ``inputs_mask``."""
    masks = results.get(f"{feature}_mask")
    if masks is None:
        return results.get("inputs_mask")
    return masks[layer] if isinstance(masks, (list, tuple)) else masks


def _pick(results: Mapping[str, Any], who: str, i: int, match: IntermediateMatch, layer: Layer) -> list[Tensor]:
    features = results.get(match.feature)
    _require(features is not None,
             f"intermediate_matches[{i}] needs {match.feature!r} from the {who} adaptor, which returned only {sorted(results)}")
    picked = []
    for idx in (layer if isinstance(layer, tuple) else (layer,)):
        _require(-len(features) <= idx < len(features),
                 f"intermediate_matches[{i}].layer_{who[0].upper()}={idx} is out of range: the {who} has"
                 f" {len(features)} {match.feature} entries (0..{len(features) - 1})")
        picked.append(features[idx])
    return picked


def textbrewer_loss(
    config: DistillationConfig,
    results_S: Mapping[str, Any],
    results_T: Union[Mapping[str, Any], Sequence[Mapping[str, Any]]],
    *,
    step: int,
    total_steps: int,
    projections: Optional[Sequence[Optional[nn.Module]]] = None,
    labels_mask: Optional[Tensor] = None,
    sync_logs: bool = True,
) -> tuple[Tensor, dict[str, Any]]:
    """TextBrewer's total loss for one batch; returns ``(loss, logs)``.

    results_S / results_T: adaptor dicts (module doc). A list of teacher dicts averages their
    logits (MultiTeacherDistiller; no intermediate matches then). step: optimizer updates done
    so far (0-based), total_steps: all updates; they drive the weight schedulers exactly as
    TextBrewer's loop. projections: from :func:`build_projections` (needed when a match has
    ``proj``). labels_mask: (B, T_tgt) KD positions for a side whose dict has no ``logits_mask``.
    logs: TextBrewer's ``unweighted_*`` losses plus the weights and (mean) temperature used.
    Terms are added in TextBrewer's order: KD, matches, hard-label losses.
    sync_logs=False leaves the logged losses as detached 0-d tensors: reading one waits for the
    device, so a training loop reads them only when it logs.
    """
    if isinstance(results_T, (list, tuple)):
        _require(not config.intermediate_matches,
                 "intermediate_matches need a single teacher (TextBrewer's MultiTeacherDistiller has none); pass one results_T")
        results_T = average_teacher_logits(results_T)
    kd_weight = scheduled_weight(config.kd_loss_weight, config.kd_loss_weight_scheduler, step, total_steps)
    hl_weight = scheduled_weight(config.hard_label_weight, config.hard_label_weight_scheduler, step, total_steps)
    logs: dict[str, Any] = {"kd_loss_weight": kd_weight, "hard_label_weight": hl_weight}
    total: Optional[Tensor] = None

    if "logits" in results_S and "logits" in results_T:
        kd, logs["temperature"] = _kd_loss(config, results_S, results_T, labels_mask)
        total = kd * kd_weight
        logs["unweighted_kd_loss"] = kd.detach()

    matches = config.intermediate_matches
    if matches and projections is not None:
        _require(len(projections) == len(matches),  # type: ignore[arg-type]
                 f"projections has {len(projections)} entries for {len(matches)} intermediate_matches;"  # type: ignore[arg-type]
                 " build them with build_projections(config)")
    for i, match in enumerate(matches):  # type: ignore[arg-type]
        inter_S = _pick(results_S, "student", i, match, match.layer_S)
        inter_T = _pick(results_T, "teacher", i, match, match.layer_T)
        proj = projections[i] if projections is not None else None
        _require(match.proj is None or proj is not None,
                 f"intermediate_matches[{i}] has proj={list(match.proj or [])}; pass projections=build_projections(config)")
        if proj is not None:
            inter_S = [proj(s) for s in inter_S]
        first_S = match.layer_S[0] if isinstance(match.layer_S, tuple) else match.layer_S
        mask = _feature_mask(results_S, match.feature, first_S)  # student's mask, as TextBrewer
        if match.loss in PAIR_LOSSES:
            loss = MATCH_LOSS_MAP[match.loss](inter_S, inter_T, mask=mask)
        else:
            loss = MATCH_LOSS_MAP[match.loss](inter_S[0], inter_T[0], mask=mask)
        total = loss * match.weight if total is None else total + loss * match.weight
        name_S = "-".join(map(str, match.layer_S)) if isinstance(match.layer_S, tuple) else str(match.layer_S)
        name_T = "-".join(map(str, match.layer_T)) if isinstance(match.layer_T, tuple) else str(match.layer_T)
        logs[f"unweighted_{match.feature}_{match.loss}_{name_S}_{name_T}"] = loss.detach()

    if "losses" in results_S:
        hard = sum(loss.mean() for loss in _as_list(results_S["losses"]))
        total = hard * hl_weight if total is None else total + hard * hl_weight
        logs["unweighted_hard_label_loss"] = hard.detach() if isinstance(hard, Tensor) else float(hard)

    _require(isinstance(total, Tensor),
             "textbrewer_loss: nothing to optimize; the adaptors returned no 'logits' (both), 'losses' or matched features")
    if sync_logs:
        logs = {k: float(v) for k, v in logs.items()}
    return total, logs  # type: ignore[return-value]


__all__ = [
    "FEATURES",
    "PROJ_MAP",
    "DistillationConfig",
    "IntermediateMatch",
    "TrainingConfig",
    "average_teacher_logits",
    "build_projections",
    "linear_projection",
    "probability_shift",
    "projection_param_groups",
    "projection_with_activation",
    "select_logits_with_mask",
    "textbrewer_loss",
]
