"""The worker's optimizer: AdamW with the configured betas, epsilon and schedule."""

from __future__ import annotations

import pytest
import torch

from raydistill.config import DistillConfig
from raydistill.train.loop import build_optimizer


def test_optimizer_takes_betas_and_schedule_from_config():
    cfg = DistillConfig.from_dict({"method": "sft", "student": "s", "data_dir": "d",
                                   "output_dir": "o", "learning_rate": 1e-3, "adam_beta1": 0.8,
                                   "adam_beta2": 0.98, "adam_epsilon": 1e-9, "warmup_steps": 4})
    model = torch.nn.Linear(3, 2)
    model.bias.requires_grad_(False)  # frozen weights are left out
    opt, sched = build_optimizer(cfg, model, total_steps=10)
    group = opt.param_groups[0]
    assert group["betas"] == (0.8, 0.98) and group["eps"] == 1e-9
    assert [p.shape for p in group["params"]] == [model.weight.shape]
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    # linear warmup over 4 steps, then linear decay to 0 at step 10
    assert lrs[:5] == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[7] == pytest.approx(1e-3 * 3 / 6)
