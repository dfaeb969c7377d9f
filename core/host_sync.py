"""Where reading a tensor's value on the host is costly.

``.item()``, ``float(t)`` or ``.tolist()`` on an accelerator tensor wait until the device has finished all queued
work, so a read every step throttles a GPU; on CPU the value is already there. The per-step checks and displays
(the loss guard, the label check, the progress bar's loss) read every step where it is free and every so many steps
where it is not, deciding by this one function, which tests replace to exercise the accelerator path on CPU.
"""

from __future__ import annotations

import torch


def reads_are_costly(device: torch.device) -> bool:
    """Whether reading a value of a tensor on ``device`` back to Python waits for the device."""
    return device.type != "cpu"
