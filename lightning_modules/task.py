"""The base every domain module stands on: hyperparameters, optimizer and schedule, the loss guard, the batch rule.

A domain module (a classifier, a regressor, a VAE, a GAN, an RL agent) subclasses :class:`Task` and adds its input
handling, loss and network. What it inherits:

* ``save_hyperparameters`` over the whole constructor chain, so ``load_from_checkpoint`` rebuilds any subclass; an
  ``nn.Module`` passed from Python (not from a config) is left out of the hyperparameters, its weights being in the
  state dict already (pass it again to ``load_from_checkpoint``);
* ``configure_optimizers`` through :func:`core.optim.configure`: no weight decay on biases and norms, one-cycle or
  warm-up + cosine with the run length filled from the trainer (override it for several optimizers, calling
  :func:`core.optim.configure` once per part);
* :meth:`guard`, the non-finite-loss stop that names the step, cheap on accelerators;
* :meth:`split_batch`, the one place to change how callbacks and shared code find inputs and targets;
* checkpoints whose hyperparameters rebuild an injected network without its pretrained weights
  (:mod:`core.pretrained`): the state dict holds them, so ``load_from_checkpoint`` needs no network access.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from core import optim
from core.batches import default_split
from core.guard import LossGuard
from core.pretrained import without_pretrained


class Task(LightningModule):
    """Shared base of the domain modules.

    Log without ``prog_bar=True`` (Lightning reads progress-bar values back to the host at every training and
    evaluation step, a sync that throttles accelerators); list what the ``recipe`` progress bar should show in
    :attr:`progress_bar_steps` (read every step on CPU, every 50 steps on accelerators) and
    :attr:`progress_bar_epochs` (read once after each validation).

    Args:
        optimizer: Optimizer factory, called with the parameter groups; biases and norm parameters get no decay.
        lr_scheduler: Optional scheduler factory. A ``total_steps`` left unset (``OneCycleLR``,
            ``core.optim.WarmupCosine``) is filled with the run's optimizer steps.
        scheduler_interval: Step the scheduler every optimizer ``step`` or every ``epoch``.
    """

    #: Logged values the recipe's progress bar shows (see :class:`recipes.progress.RecipeProgressBar`): per-step
    #: ones, and ones read once after each validation.
    progress_bar_steps: tuple[str, ...] = ("train/loss",)
    progress_bar_epochs: tuple[str, ...] = ("val/loss",)

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Attribute '.*' is an instance of `nn.Module`")
            # Collects the arguments of every subclass's __init__ too (Lightning walks the constructor frames).
            self.save_hyperparameters(logger=False)
        built_in_python = [name for name, value in self.hparams.items() if isinstance(value, nn.Module)]
        # A base's argument that the concrete class sets itself (NodeClassifier passes num_classes from
        # num_node_classes) is not one of its own: kept, ``type(self)(**hparams)`` would refuse it.
        own = inspect.signature(type(self).__init__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values())
        not_own = [] if takes_any else [name for name in self.hparams if name not in own and not name.startswith("_")]
        if built_in_python or not_own:
            self.remove_ignored_hparams(built_in_python + not_own)
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.loss_guard = LossGuard()

    def split_batch(self, batch: Any) -> tuple[Any, Any]:
        """``(inputs, targets)`` of a batch by :mod:`core.batches`' rule; override to change it for this module."""
        return default_split(batch)

    def guard(self, loss: torch.Tensor, name: str = "train/loss") -> torch.Tensor:
        """Stop with one line naming the step if ``loss`` is not finite; returns ``loss`` for chaining."""
        self.loss_guard.check(loss, self.global_step, self.current_epoch, name)
        return loss

    def on_fit_start(self) -> None:
        self.loss_guard.reset()

    def on_train_epoch_end(self) -> None:
        self.loss_guard.flush()  # a bad step late in the epoch is reported before the epoch's checkpoint

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = without_pretrained(checkpoint["hyper_parameters"])

    def configure_optimizers(self) -> dict[str, Any]:
        return optim.configure(self, self.optimizer, self.lr_scheduler, self.trainer, self.scheduler_interval)
