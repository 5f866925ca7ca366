"""The step line: its figures, and no autograd warning for loss parts that still carry a graph."""

import warnings

import torch

from raydistill.config import DistillConfig
from raydistill.train.logger import Logger, format_duration


def test_step_line_of_parts_that_require_grad(capsys):
    cfg = DistillConfig(method="sft", student="s", data_dir="d", output_dir="o", logger="none")
    log = Logger(cfg, {"total_steps": 8})
    w = torch.tensor(2.0, requires_grad=True)
    parts = {"kd": w * 0.25, "ce": torch.tensor(1.5)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the UserWarning of float() on a grad tensor fails
        log.step({"global_step": 8, "epoch": 0}, w * 1.0, parts, lr=1e-3, temperature=2.0,
                 tok_s=1234.4, eta_s=135)
    line = capsys.readouterr().out.strip()
    assert line == ("[raydistill] step 8/8 epoch 0 loss=2.0000 kd=0.5000 ce=1.5000 lr=0.001 T=2 "
                    "tok/s=1234 eta=2m15s")


def test_format_duration():
    assert [format_duration(s) for s in (45, 135, 7260)] == ["45s", "2m15s", "2h01m"]
