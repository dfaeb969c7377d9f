"""Optimizers and learning-rate schedules for every domain: parameter groups, run lengths filled from the trainer.

Modules take their optimizer and scheduler as factories (``OptimizerCallable`` / ``LRSchedulerCallable``, so a recipe
picks them by ``class_path``) and hand them to :func:`configure` here, which every domain shares:

* weight decay falls on matrices and kernels only, never on biases or normalisation scales (nanoGPT's rule,
  after Loshchilov & Hutter 2019, https://arxiv.org/abs/1711.05101);
* a scheduler whose ``total_steps`` is left unset (``OneCycleLR``, :class:`WarmupCosine`) gets the run's optimizer
  step count from ``trainer.estimated_stepping_batches``, or a clear error when the run has no known length;
* a module with several optimizers (a GAN's generator and discriminator) calls :func:`configure` once per
  optimizer with the parameters of each part.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

#: The scheduler argument that holds a run length we can fill in.
RUN_LENGTH = "total_steps"


def parameter_groups(parameters: nn.Module | Iterable[nn.Parameter]) -> list[dict[str, Any]]:
    """Two groups of the trainable parameters: ``ndim >= 2`` with the optimizer's weight decay, the rest without.

    Biases, BatchNorm/LayerNorm scales and other vectors get ``weight_decay=0``: decaying them only shrinks
    the network's freedom to scale activations, it does not regularise; so do the parameters a network names in
    ``no_weight_decay()`` (:func:`exempt_from_decay`). Frozen parameters (``requires_grad=False``,
    e.g. a backbone ``BackboneFinetuning`` unfreezes later) are left out; the callback adds their group itself.
    """
    exempt = set(map(id, exempt_from_decay(parameters))) if isinstance(parameters, nn.Module) else set()
    params = parameters.parameters() if isinstance(parameters, nn.Module) else parameters
    trainable = [p for p in params if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2 and id(p) not in exempt]
    no_decay = [p for p in trainable if p.ndim < 2 or id(p) in exempt]
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def exempt_from_decay(module: nn.Module) -> list[nn.Parameter]:
    """Parameters a submodule names in its ``no_weight_decay()`` (timm's convention: names relative to it).

    A network uses it when its paper decays only some matrices, e.g. Kipf & Welling's GCN decays its first layer
    only; the optimizer's ``weight_decay`` still comes from the recipe.
    """
    exempt = []
    for submodule in module.modules():
        if callable(getattr(submodule, "no_weight_decay", None)):
            named = dict(submodule.named_parameters())
            exempt += [named[name] for name in submodule.no_weight_decay()]
    return exempt


def wants_run_length(factory: Callable) -> bool:
    """Whether a scheduler factory leaves ``total_steps`` unset for the trainer to fill."""
    keywords = getattr(factory, "keywords", None) or {}
    if RUN_LENGTH in keywords:  # the CLI's factories bind every argument, unset ones as None
        return keywords[RUN_LENGTH] is None
    target = factory.func if isinstance(factory, functools.partial) else factory
    try:
        parameter = inspect.signature(target).parameters.get(RUN_LENGTH)
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is None


def run_length(trainer: Any, scheduler_name: str) -> int:
    """The run's optimizer steps, or a clear error when the trainer cannot know them."""
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total):
        raise MisconfigurationException(
            f"{scheduler_name} needs the run length ({RUN_LENGTH}), but the trainer cannot know it: the training "
            "data has no length (an iterable dataset) and max_steps is not set. Pass --trainer.max_steps=N, or give "
            f"the scheduler's {RUN_LENGTH} yourself."
        )
    return int(total)


def build_scheduler(factory: Callable, optimizer: torch.optim.Optimizer, trainer: Any) -> Any:
    """Call a scheduler factory on ``optimizer``, filling ``total_steps`` from the trainer when it is unset."""
    if not wants_run_length(factory):
        return factory(optimizer)
    target = factory.func if isinstance(factory, functools.partial) else factory
    return factory(optimizer, **{RUN_LENGTH: run_length(trainer, getattr(target, "__name__", "the scheduler"))})


def configure(
    parameters: nn.Module | Iterable[nn.Parameter],
    optimizer: Callable,
    lr_scheduler: Callable | None,
    trainer: Any,
    interval: Literal["step", "epoch"] = "step",
) -> dict[str, Any]:
    """What ``configure_optimizers`` returns for one optimizer: ``{"optimizer": ..., "lr_scheduler": {...}}``.

    Args:
        parameters: The module (or parameters) this optimizer trains.
        optimizer: Factory called with the parameter groups.
        lr_scheduler: Optional factory called with the optimizer; ``total_steps`` is filled when left unset.
        trainer: The trainer, for the run length.
        interval: Step the scheduler every optimizer ``step`` or every ``epoch``.
    """
    built = optimizer(parameter_groups(parameters))
    if lr_scheduler is None:
        return {"optimizer": built}
    scheduler = build_scheduler(lr_scheduler, built, trainer)
    return {"optimizer": built, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}


class WarmupCosine(LambdaLR):
    r"""Linear warm-up to the optimizer's learning rate, then cosine decay: the usual transformer schedule.

    For step :math:`t` (0-based), warm-up :math:`W` and total :math:`T` optimizer steps, each group's rate is its
    base rate times

    .. math::
        f(t) = \begin{cases} (t + 1) / W & t < W \\
        r + (1 - r)\,\tfrac12\left(1 + \cos\left(\pi \frac{t - W}{\max(1, T - W)}\right)\right) & t \ge W \end{cases}

    with :math:`r` = ``min_lr_ratio``, as in ``transformers.get_cosine_schedule_with_warmup`` (Loshchilov & Hutter
    2017, https://arxiv.org/abs/1608.03983, for the cosine). A class rather than a function so a recipe can name it
    by ``class_path``; ``total_steps`` left unset is filled from the trainer.

    Args:
        optimizer: The optimizer whose groups' rates are scaled.
        warmup_steps: Steps of linear warm-up, an int, or a float in ``[0, 1)`` for a fraction of ``total_steps``.
        total_steps: Optimizer steps of the whole run; ``None`` is filled by the task layer from the trainer.
        min_lr_ratio: Final rate as a fraction of the base rate.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int | float = 0.05,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.0,
    ) -> None:
        if total_steps is None or total_steps < 1:
            raise MisconfigurationException(
                f"WarmupCosine needs total_steps >= 1, got {total_steps}; inside a recipe it is filled from the "
                "trainer, in Python pass the run's optimizer steps."
            )
        if isinstance(warmup_steps, float) and not 0.0 <= warmup_steps < 1.0:
            raise MisconfigurationException(
                f"warmup_steps as a float is a fraction of the run in [0, 1), got {warmup_steps}."
            )
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise MisconfigurationException(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}.")
        warmup = round(warmup_steps * total_steps) if isinstance(warmup_steps, float) else int(warmup_steps)
        if not 0 <= warmup <= total_steps:
            raise MisconfigurationException(f"warmup_steps ({warmup}) must lie in [0, total_steps={total_steps}].")
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup, total_steps, min_lr_ratio
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
