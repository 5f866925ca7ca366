"""Rank 0's record of a run: the step line on the console, TensorBoard events, wandb."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from raydistill.config import DistillConfig


class Logger:
    """Rank 0's console lines, TensorBoard events and (optionally) wandb."""

    def __init__(self, cfg: DistillConfig, run: dict[str, Any]) -> None:
        self.cfg = cfg
        self.total = run["total_steps"]
        self.tb = None
        self.wandb = None
        if cfg.logger in ("tensorboard", "wandb"):
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=cfg.log_dir or str(Path(run["output_dir"]) / "tensorboard"))
        if cfg.logger == "wandb":
            import wandb

            os.environ.setdefault("WANDB_DIR", str(Path(run["output_dir"])))
            # Offline unless the user logged in (an API key is configured).
            mode = "online" if os.environ.get("WANDB_API_KEY") else os.environ.get("WANDB_MODE", "offline")
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "raydistill"),
                                    name=run.get("run_name"), config=cfg.to_dict(), mode=mode,
                                    resume="allow")

    def step(self, state, loss, parts, lr: float, temperature: float, tok_s: float,
             eta_s: float | None = None) -> None:
        step = state["global_step"]
        parts = {k: _scalar(v) for k, v in parts.items()}  # a part may still carry its graph
        loss = _scalar(loss)
        comps = " ".join(f"{k}={v:.4f}" for k, v in parts.items())
        eta = f" eta={format_duration(eta_s)}" if eta_s is not None else ""
        print(f"[raydistill] step {step}/{self.total} epoch {state['epoch']} "
              f"loss={loss:.4f} {comps} lr={lr:.3g} T={temperature:g} tok/s={tok_s:.0f}"
              f"{eta}", flush=True)
        values = {"train/loss": loss, "train/lr": lr, "train/temperature": temperature,
                  "train/tokens_per_s": tok_s} | {f"train/{k}": v for k, v in parts.items()}
        self._log(values, step)

    def validation(self, metrics: dict[str, Any]) -> None:
        shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "final"}
        print("[raydistill] validation " + " ".join(f"{k}={v:.4g}" for k, v in shown.items()),
              flush=True)
        self._log({f"val/{k}": v for k, v in shown.items()}, metrics["step"])

    def _log(self, values: dict[str, float], step: int) -> None:
        if self.tb:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def format_duration(seconds: float) -> str:
    """45 -> '45s', 135 -> '2m15s', 7260 -> '2h01m'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _scalar(value) -> float:
    """A float of a loss or loss part, without autograd's warning for a tensor that requires
    grad."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
