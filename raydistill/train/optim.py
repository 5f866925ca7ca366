"""The optimizer and learning-rate schedule of a run (AdamW, linear warm-up, linear or WSD decay)."""

from __future__ import annotations

import functools

import torch

from raydistill.config import DistillConfig


def build_optimizer(cfg: DistillConfig, student: torch.nn.Module, total_steps: int,
                    projections=None, tb_config=None):
    """AdamW over the trainable student weights (and TextBrewer projections, at their own
    rate) + linear warmup to ``learning_rate``, then the config's ``lr_scheduler``."""

    groups = [{"params": [p for p in student.parameters() if p.requires_grad],
               "weight_decay": cfg.weight_decay}]
    if projections is not None:
        from raydistill.distill.textbrewer import projection_param_groups

        groups += projection_param_groups(tb_config, projections, cfg.learning_rate)
    kw = dict(lr=cfg.learning_rate, eps=cfg.adam_epsilon, betas=(cfg.adam_beta1, cfg.adam_beta2))
    params = [p for g in groups for p in g["params"]]
    # The fused kernel: one pass over all weights instead of a Python loop over them (on CPU,
    # 13 against 63 ms a step for 7 M weights here); the same update (test_optimizer).
    fused = bool(params) and all(p.is_floating_point() and p.device.type in _FUSED_DEVICES
                                 for p in params)
    optimizer = torch.optim.AdamW(groups, fused=fused or None, **kw)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, cfg.warmup_steps, total_steps,
                                     _decay_steps(cfg, total_steps)))


def _decay_steps(cfg: DistillConfig, total_steps: int) -> int:
    if cfg.lr_scheduler == "linear":
        return total_steps - cfg.warmup_steps
    return cfg.lr_decay_steps or max(1, total_steps // 10)


def lr_factor(warmup: int, total: int, decay: int, step: int) -> float:
    """The learning rate at ``step`` as a fraction of the peak: linear warm-up over ``warmup``
    steps, the peak held, then linear decay to 0 over the last ``decay`` steps before ``total``
    (``decay = total - warmup`` is transformers' linear schedule)."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, min(1.0, (total - step) / max(1, decay)))


_FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused AdamW runs (mps/xpu: left to torch's default)
