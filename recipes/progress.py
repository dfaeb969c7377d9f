"""The ``recipe`` progress bar: Lightning's, with the module's per-step values read back only when it is cheap."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar

from core import host_sync

#: What the bar shows for a module that does not say (any LightningModule works).
DEFAULT_STEPS = ("train/loss",)
DEFAULT_EPOCHS = ("val/loss",)


def _read(trainer: Trainer, keys: tuple[str, ...]) -> dict[str, float]:
    values = {key: trainer.callback_metrics.get(key) for key in keys}
    return {key: float(value) for key, value in values.items() if value is not None}


class RecipeProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` that also shows the module's ``progress_bar_steps`` (``train/loss``) and
    ``progress_bar_epochs`` (``val/loss``, ``val/acc``), logged without ``prog_bar=True``: Lightning would read those
    back to the host at every training and evaluation step, a sync that throttles accelerators. Here step values are
    read every refresh on CPU and every ``read_every`` optimizer steps on accelerators (the bar shows the last value
    read in between), and epoch values once after each validation.

    Args:
        refresh_rate: Refresh the bar every this many batches.
        read_every: On accelerators, read the step values every this many optimizer steps.
        leave: Leave the finished bar of each epoch on the terminal.
    """

    def __init__(self, refresh_rate: int = 1, read_every: int = 50, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        if read_every < 1:
            raise ValueError(f"read_every must be >= 1, got {read_every}")
        self.read_every = read_every
        self._shown: dict[str, float] = {}
        self._epoch_values: dict[str, float] = {}
        self._read_at: int | None = None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._epoch_values = _read(trainer, getattr(pl_module, "progress_bar_epochs", DEFAULT_EPOCHS))
        super().on_validation_end(trainer, pl_module)  # shows them on the training bar

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        step = trainer.global_step
        due = self._read_at is None or step < self._read_at or step - self._read_at >= self.read_every
        if due or not host_sync.reads_are_costly(pl_module.device):
            self._shown = _read(trainer, getattr(pl_module, "progress_bar_steps", DEFAULT_STEPS))
            self._read_at = step
        return {**items, **self._shown, **self._epoch_values}
