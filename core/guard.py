"""Stop training on a non-finite loss with one line naming the step, without a host sync every step on accelerators.

A NaN or infinite loss never recovers: the next optimizer step writes NaN into every weight, and the checkpoints
written after it are worthless. So the guard stops the run and says where it went wrong. Reading a tensor's value
on the host (``torch.isfinite(loss).item()``) waits for the accelerator to finish all queued work, which costs
throughput on GPUs; there the guard keeps the first bad step in a device tensor and reads it once every
``check_every`` steps (and at epoch ends). On CPU the read is free, so every step is checked.
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from core import host_sync

ADVICE = (
    "Lower the learning rate, add gradient clipping (--trainer.gradient_clip_val=1.0) or train in 32-bit precision; "
    "checkpoints written so far are intact."
)


class LossGuard:
    """Raise ``MisconfigurationException`` (reported by ``recipe`` as one ``error:`` line) on a non-finite loss.

    Use one guard per LightningModule and call :meth:`check` with every loss it optimises; call :meth:`flush` at the
    end of each training epoch so a bad step late in an epoch is reported before its checkpoint is written.

    Args:
        check_every: On accelerators, read the device-side record every this many calls. On CPU every call is read.
        defer: Keep the record on the device and read it every ``check_every`` calls; ``None``: on accelerators only.
    """

    def __init__(self, check_every: int = 50, defer: bool | None = None) -> None:
        if check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        self.check_every = check_every
        self.defer = defer
        self._calls = 0
        self._first_bad: torch.Tensor | None = None  # (3,): step, epoch, value of the first non-finite loss; step -1
        self._name = "loss"

    def check(self, loss: torch.Tensor, step: int, epoch: int, name: str = "train/loss") -> None:
        """Record ``loss`` taken at optimizer step ``step`` of epoch ``epoch``; raise once a bad one is seen."""
        if not (self.defer if self.defer is not None else host_sync.reads_are_costly(loss.device)):
            if not torch.isfinite(loss).all():
                self._raise(name, float(loss.detach().float().flatten()[0]), step, epoch)
            return
        detached = loss.detach().float().flatten()[0]
        if self._first_bad is None or self._first_bad.device != detached.device:
            self._first_bad = torch.tensor([-1.0, -1.0, 0.0], device=detached.device)
        # torch.full launches a fill kernel; torch.tensor(host value) would copy synchronously on the stream.
        here = torch.stack(
            [torch.full((), float(step), device=detached.device), torch.full((), float(epoch), device=detached.device)]
            + [detached]
        )
        fresh = (self._first_bad[0] < 0) & ~torch.isfinite(detached)
        self._first_bad = torch.where(fresh, here, self._first_bad)  # no sync: stays on the device
        self._name = name
        self._calls += 1
        if self._calls % self.check_every == 0:
            self.flush()

    def flush(self) -> None:
        """Read the device-side record (one host sync) and raise if a non-finite loss was seen since the start."""
        if self._first_bad is None:
            return
        step, epoch, value = self._first_bad.tolist()
        if step >= 0:
            self._raise(self._name, value, int(step), int(epoch))

    def reset(self) -> None:
        """Forget what was recorded (a new fit)."""
        self._calls, self._first_bad = 0, None

    @staticmethod
    def _raise(name: str, value: float, step: int, epoch: int) -> None:
        raise MisconfigurationException(f"{name} is {value} at step {step} (epoch {epoch}). {ADVICE}")
