"""What the training step keeps on the device until a line is due, and its one read.

Reading a device value on the host (``float(loss)``, ``.item()``, ``if tensor:``) waits for every
queued kernel: a GPU then runs dry until the host queues the next step. So the loop adds each
micro-batch's loss (and the tokens of sampled targets) to a small tensor on the device, after the
backward pass, and reads it, together with the last loss and its components, in one ``tolist()``
when a log line or a validation report needs them. A non-finite loss is caught at that read:
the tally remembers the first step that had one.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from raydistill.errors import TrainingError

_LOSS, _TOKENS, _BAD_STEP, _BAD_LOSS = range(4)


class StepTally:
    """Per worker: the loss sum since the last validation, the tokens/s correction of sampled
    targets since the last line, and the first non-finite loss with its step, on the device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
        # Made on the device (zeros, fill): no copy from the host, which would wait there.
        self.values = torch.zeros(4, dtype=dtype, device=device)
        self.values[_BAD_STEP].fill_(-1)
        self.losses = 0  # micro-batches in the loss sum (a host count)

    def add_loss(self, loss: torch.Tensor, step: int) -> None:
        """Adds a micro-batch's loss (queued behind its backward pass; no read)."""
        v, value = self.values, loss.detach().to(self.values.dtype)
        v[_LOSS].add_(value)
        first = torch.logical_and(~torch.isfinite(value), v[_BAD_STEP] < 0)
        v[_BAD_LOSS].copy_(torch.where(first, value, v[_BAD_LOSS]))
        v[_BAD_STEP].copy_(torch.where(first, step, v[_BAD_STEP]))
        self.losses += 1

    def add_tokens(self, count: torch.Tensor | int) -> None:
        """Adds target tokens that only the device knows (sampled targets minus the data's)."""
        self.values[_TOKENS].add_(count)

    def read(self, extra: list[torch.Tensor]) -> tuple[dict[str, float], list[float]]:
        """The one host read: ({"loss_sum", "tokens", "bad_step", "bad_loss"}, the values of
        ``extra``, 0-d tensors on this device). Starts a new window for the tokens."""
        parts = [self.values]
        if extra:
            parts.append(torch.stack([e.detach().to(self.values.dtype).reshape(())
                                      for e in extra]))
        values = torch.cat(parts).tolist() if extra else self.values.tolist()
        self.values[_TOKENS].zero_()
        own = dict(zip(("loss_sum", "tokens", "bad_step", "bad_loss"), values[:4]))
        return own, values[4:]

    def reset_loss(self) -> None:
        """A validation report took the loss mean: start the next one."""
        self.values[_LOSS].zero_()
        self.losses = 0


def read_step(tally: StepTally, last_loss: torch.Tensor | None,
              parts: dict[str, Any]) -> tuple[dict[str, float], float, dict[str, Any]]:
    """The one host read of a log line or a report: (the tally's sums, the last micro-batch's
    loss, its components as numbers). Raises ``TrainingError`` when a loss since the last read
    was not finite."""
    parts = dict(parts)
    device = tally.values.device.type
    on_device = [k for k, v in parts.items()
                 if isinstance(v, torch.Tensor) and v.device.type == device]
    last = [last_loss] if last_loss is not None else []
    sums, values = tally.read(last + [parts[k] for k in on_device])
    loss = values.pop(0) if last else float("nan")
    parts.update(zip(on_device, values))
    parts = {k: float(v) for k, v in parts.items()}  # the rest are numbers or host tensors
    check_finite(sums, parts)
    return sums, loss, parts


def check_finite(read: dict[str, float], parts: dict[str, Any]) -> None:
    """Raises ``TrainingError`` when a loss since the last read was not finite, naming its step
    and the components (of the last micro-batch) that are not finite either."""
    if math.isfinite(read["loss_sum"]):
        return
    bad = [k for k, v in parts.items() if isinstance(v, float) and not math.isfinite(v)]
    raise TrainingError(
        f"loss became {read['bad_loss']} at step {int(read['bad_step'])} (component "
        f"{', '.join(bad) or 'loss'}); lower learning_rate, set max_grad_norm, or use precision: "
        "fp32/bf16 instead of fp16")


__all__ = ["StepTally", "check_finite", "read_step"]
