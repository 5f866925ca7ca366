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


def naive_adamw(w, grads, lr, betas, eps, weight_decay):
    """torch.optim.AdamW's update written out in float64 (decoupled weight decay, bias
    correction), for a list of per-step gradients."""
    w = w.double().clone()
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        g = g.double()
        w = w * (1 - lr * weight_decay)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        w = w - lr * m_hat / (v_hat.sqrt() + eps)
    return w


def test_optimizer_is_fused_on_cpu_and_makes_adamws_update():
    cfg = DistillConfig.from_dict({"method": "sft", "student": "s", "data_dir": "d",
                                   "output_dir": "o", "learning_rate": 1e-2, "adam_beta1": 0.8,
                                   "adam_beta2": 0.95, "adam_epsilon": 1e-6, "weight_decay": 0.1,
                                   "warmup_steps": 0})
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 4, bias=False)
    w0 = model.weight.detach().clone()
    opt, _ = build_optimizer(cfg, model, total_steps=1000)  # the schedule is not stepped: lr fixed
    assert opt.param_groups[0]["fused"] is True
    grads = [torch.randn(4, 5) for _ in range(6)]
    for g in grads:
        model.weight.grad = g.clone()
        opt.step()
    want = naive_adamw(w0, grads, 1e-2, (0.8, 0.95), 1e-6, 0.1)
    torch.testing.assert_close(model.weight.detach().double(), want, rtol=1e-5, atol=1e-6)


def test_optimizer_falls_back_for_weights_the_fused_kernel_does_not_take():
    cfg = DistillConfig.from_dict({"method": "sft", "student": "s", "data_dir": "d",
                                   "output_dir": "o"})
    model = torch.nn.Linear(3, 2).to("meta")
    opt, _ = build_optimizer(cfg, model, total_steps=10)
    assert not opt.param_groups[0]["fused"]


@pytest.mark.parametrize("decay_steps", [None, 3])
def test_wsd_schedule_holds_the_peak_and_decays_only_at_the_end(decay_steps):
    """lr_scheduler: wsd: linear warm-up, the peak held, linear decay to 0 over the last
    lr_decay_steps (a tenth of the run by default); written out step by step."""
    cfg = DistillConfig.from_dict({"method": "sft", "student": "s", "data_dir": "d",
                                   "output_dir": "o", "learning_rate": 1e-3, "warmup_steps": 2,
                                   "lr_scheduler": "wsd", "lr_decay_steps": decay_steps})
    model = torch.nn.Linear(3, 2)
    opt, sched = build_optimizer(cfg, model, total_steps=20)
    decay = decay_steps or 2
    expected = [s / 2 if s < 2 else 1.0 if s <= 20 - decay else (20 - s) / decay
                for s in range(21)]
    lrs = []
    for _ in range(21):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1e-3 * e for e in expected])
    assert lrs[-1] == 0.0 and max(lrs) == pytest.approx(1e-3)


def test_lr_scheduler_is_checked():
    from raydistill.errors import ConfigError

    with pytest.raises(ConfigError, match="lr_scheduler"):
        DistillConfig.from_dict({"method": "sft", "student": "s", "data_dir": "d",
                                 "output_dir": "o", "lr_scheduler": "cosine"})
