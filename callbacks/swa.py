"""Stochastic weight averaging (SWA) and exponential moving averages (EMA) of a model's weights."""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import chain
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn, get_swa_multi_avg_fn, update_bn
from typing_extensions import override

from core.batches import split_batch


def _steps(trainer: pl.Trainer, including_current: bool = False) -> int:
    """Training batches that ended in an optimizer step, Lightning's own count (its loggers' step).

    Not ``trainer.global_step``: under manual optimization that counts every ``optimizer.step()``, a GAN's two per
    batch; under automatic optimization the two are equal, gradient accumulation included. Lightning increments the
    count after ``on_train_batch_end``, hence ``including_current`` for the batch that is ending.
    """
    loop = trainer.fit_loop.epoch_loop
    return loop._batches_that_stepped + int(including_current and not loop._should_accumulate())


def _holds(group: dict[str, Any], averaged: set[int]) -> bool:
    """Whether an optimizer's param group holds averaged parameters (ids in ``averaged``)."""
    return any(id(p) in averaged for p in group["params"])


def _overlap(a: str | None, b: str | None) -> bool:
    """Whether the submodules at attribute paths ``a`` and ``b`` (``None``: the whole module) share weights."""
    return a is None or b is None or a == b or a.startswith(f"{b}.") or b.startswith(f"{a}.")


def _average_weights_only_checkpoints(trainer: pl.Trainer) -> None:
    """Make the weights-only checkpoints this trainer writes hold the average of every SWA callback attached to it.

    Lightning builds a weights-only checkpoint (``ModelCheckpoint(save_weights_only=True)``,
    ``trainer.save_checkpoint(path, weights_only=True)``) without calling any callback hook, so ``on_save_checkpoint``
    never sees it. Its ``state_dict`` is written in the checkpoint connector's ``dump_checkpoint``, which is wrapped
    here once per trainer. The wrapper asks ``trainer.callbacks`` at every save, so it stays in place harmlessly.
    """
    connector = trainer._checkpoint_connector
    if getattr(connector.dump_checkpoint, "_writes_swa_averages", False):
        return
    dump = connector.dump_checkpoint

    def dump_checkpoint(weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = dump(weights_only)
        if weights_only:  # a full checkpoint gets the average in SWA.on_save_checkpoint, with the raw weights
            for callback in trainer.callbacks:
                if isinstance(callback, SWA) and callback.n_averaged > 0:
                    callback._write_average(trainer, trainer.lightning_module, checkpoint)
        return checkpoint

    dump_checkpoint._writes_swa_averages = True  # type: ignore[attr-defined]
    connector.dump_checkpoint = dump_checkpoint


class SWA(Callback):
    r"""Average the weights visited late in training, and evaluate and checkpoint the average.

    SWA (`Izmailov et al. 2018 <https://arxiv.org/abs/1803.05407>`_) keeps the equal-weight running mean
    :math:`\bar w_n = \bar w_{n-1} + (w_n - \bar w_{n-1}) / n` of the weights at its update points (every epoch end
    by default), while the learning rate anneals from its value at the start of averaging to a constant ``swa_lr``
    (:class:`torch.optim.swa_utils.SWALR`'s schedule, counted in steps). In ``"ema"`` mode the average is
    :math:`\bar w_n = d\,\bar w_{n-1} + (1 - d)\,w_n` with :math:`\bar w_1 = w_1`. BatchNorm statistics are then
    recomputed for the averaged weights with :func:`torch.optim.swa_utils.update_bn` over the training data.

    Why not Lightning's own: ``StochasticWeightAveraging`` validates the raw weights, averages only at epoch starts,
    replaces only epoch-interval schedulers, and pairs parameters by position; ``WeightAveraging`` deep-copies the
    whole LightningModule, pairs by position, validates its average before any update has happened (the initial
    weights), keeps the average in the model's dtype and never recomputes BatchNorm statistics. Here the average is
    a dict of fp32 tensors keyed by parameter/buffer name, the averaging arithmetic is torch's
    (``get_swa_multi_avg_fn`` / ``get_ema_multi_avg_fn``), and:

    * validation and every checkpoint's ``state_dict`` hold the averaged weights once one update has happened, so the
      best and last checkpoints are SWA models that ``recipe test`` or ``load_from_checkpoint`` use as they are;
      weights-only checkpoints (``ModelCheckpoint(save_weights_only=True)``) too, although Lightning calls no
      callback hook for them (see ``_average_weights_only_checkpoints``);
    * the live (raw) weights of the averaged (sub)module travel in this callback's checkpoint state, so a resumed run
      continues the raw trajectory and the same average; after ``fit`` the module holds the average;
    * the learning rate is written before each step as a pure function of the steps taken since averaging began, so
      it overrides any scheduler, step-wise ones such as OneCycle included, and survives resume.

    A *step* here is a training batch that ended in an optimizer step: an optimizer step under automatic optimization
    (``trainer.global_step``, gradient accumulation included), a batch under manual optimization, where
    ``global_step`` counts every ``optimizer.step()`` and would count a GAN's two optimizers twice per batch.

    Training styles:

    * GANs (manual optimization, several optimizers): ``module="generator"`` averages the generator alone (the usual
      EMA generator): only its parameters and floating-point buffers are averaged, swapped in for validation, written
      into checkpoints (under their ``state_dict`` names, ``generator.*``) and handed back, and ``swa_lr`` anneals
      only the parameter groups that hold averaged parameters.
    * ``update_bn`` runs the LightningModule's ``forward`` on each training batch's inputs, found by
      :func:`core.batches.split_batch` (the one rule for tuple, dict, graph and RL batches, which a module overrides
      by defining ``split_batch(batch)``). That is meaningless for an averaged submodule (a generator takes noise),
      under manual optimization, or in an epoch that never ends: there, if the averaged weights hold BatchNorm layers,
      ``update_bn=True`` stops at fit start; with ``update_bn=False`` their running statistics are averaged instead.
      The pass reads the DataModule's ``unaugmented_train_dataloader()`` when it has one (images read from files are
      augmented by their transforms, whatever the trainer's state); otherwise the training loader, with the trainer
      out of its training state, which turns off augmentation done in ``on_after_batch_transfer``.
    * Endless epochs (an iterable dataset without a length, trained for ``max_steps``, as in RL): give ``swa_start``
      as a fraction, ``update_every_n_steps`` and, with ``swa_lr``, ``annealing_steps``; an epoch ``swa_start`` > 0,
      epoch-end updates or ``annealing_epochs`` stop at fit start, since the epoch they wait for never comes.
    * A parameter group added mid-fit (``BackboneFinetuning`` unfreezing a backbone) anneals from a start lr that
      keeps the ratio its lr had to group 0's current lr when it appeared.
    * Pruning: with ``keep_zeros``, entries exactly zero in the live weights (pruned ones) are zero in the average
      that is validated, checkpointed and handed back, so the SWA model is as sparse as the pruned one.
    * Two copies in one Trainer must average disjoint submodules (an EMA of a GAN's generator and an SWA of its
      discriminator): validation and checkpoints hold one set of weights, and copies averaging the same weights would
      each restore the other's average as the live weights, so they stop at fit setup.

    Args:
        swa_start: When averaging begins. An ``int`` is a 0-based epoch: its end is the first update. A ``float`` in
            ``(0, 1)`` is a fraction of the run: averaging begins once that fraction of the steps of ``max_epochs``
            or of ``max_steps`` (counted as the trainer counts them) has passed, whichever comes first.
        swa_lr: Learning rate of the averaging phase, one value for every parameter group that holds averaged
            parameters, or ``None`` to leave the module's own schedule in charge (usual with EMA).
        annealing_epochs: Epochs (may be fractional) over which the learning rate moves from its value at the start
            of averaging to ``swa_lr``.
        annealing_steps: Steps over which it does so; overrides ``annealing_epochs``, and is needed when the epoch
            length is unknown.
        annealing_strategy: ``"cos"`` or ``"linear"`` annealing, as in ``SWALR``.
        mode: ``"swa"`` for the equal-weight mean, ``"ema"`` for an exponential moving average.
        ema_decay: Decay :math:`d` of the EMA, in ``[0, 1)``.
        update_every_n_steps: Update every this many steps after the start. ``None``: at the end of every epoch in
            ``"swa"`` mode (the paper's choice), after every step in ``"ema"`` mode.
        update_bn: Recompute BatchNorm running statistics for the averaged weights over one pass of the training
            data (without augmentation) before they are validated, checkpointed or handed back.
        module: Attribute path of the submodule to average (e.g. ``"generator"``), or ``None`` for the whole module.
        keep_zeros: Zero the average wherever the live weights are exactly zero (pruned), when it is evaluated,
            checkpointed or handed back; the running average itself is untouched.
        device: Where the average lives: ``None`` for the model's device (also after a resume, whose checkpoint holds
            it on CPU), or e.g. ``"cpu"`` to spare GPU memory at the price of a device-to-host copy per update.
    """

    def __init__(
        self,
        swa_start: int | float = 0.75,
        swa_lr: float | None = None,
        annealing_epochs: float = 1.0,
        annealing_steps: int | None = None,
        annealing_strategy: Literal["cos", "linear"] = "cos",
        mode: Literal["swa", "ema"] = "swa",
        ema_decay: float = 0.999,
        update_every_n_steps: int | None = None,
        update_bn: bool = True,
        module: str | None = None,
        keep_zeros: bool = True,
        device: str | None = None,
    ) -> None:
        if isinstance(swa_start, bool) or not isinstance(swa_start, (int, float)):
            raise MisconfigurationException(
                f"swa_start must be an epoch (int) or a fraction (float), got {swa_start!r}."
            )
        if isinstance(swa_start, int) and swa_start < 0:
            raise MisconfigurationException(f"swa_start={swa_start} is a negative epoch; give an epoch >= 0.")
        if isinstance(swa_start, float) and not 0.0 <= swa_start < 1.0:
            raise MisconfigurationException(
                f"swa_start={swa_start} is not a fraction of training in [0, 1); give e.g. 0.75, or an int epoch."
            )
        if swa_lr is not None and not swa_lr > 0:
            raise MisconfigurationException(f"swa_lr must be a positive learning rate or None, got {swa_lr}.")
        if not annealing_epochs >= 0:
            raise MisconfigurationException(f"annealing_epochs must be >= 0, got {annealing_epochs}.")
        if annealing_steps is not None and (
            isinstance(annealing_steps, bool) or not isinstance(annealing_steps, int) or annealing_steps < 0
        ):
            raise MisconfigurationException(
                f"annealing_steps must be an int >= 0, or None to use annealing_epochs, got {annealing_steps!r}."
            )
        if annealing_strategy not in ("cos", "linear"):
            raise MisconfigurationException(
                f"annealing_strategy must be 'cos' or 'linear', got {annealing_strategy!r}."
            )
        if mode not in ("swa", "ema"):
            raise MisconfigurationException(f"mode must be 'swa' or 'ema', got {mode!r}.")
        if not 0.0 <= ema_decay < 1.0:
            raise MisconfigurationException(f"ema_decay must be in [0, 1), got {ema_decay}; 0.999 is usual.")
        if update_every_n_steps is not None and update_every_n_steps < 1:
            raise MisconfigurationException(f"update_every_n_steps must be >= 1 or None, got {update_every_n_steps}.")
        if module is not None and (not isinstance(module, str) or not module):
            raise MisconfigurationException(
                f"module must be the attribute path of a submodule such as 'generator', or None, got {module!r}."
            )
        self.swa_start = swa_start
        self.swa_lr = swa_lr
        self.annealing_epochs = annealing_epochs
        self.annealing_steps = annealing_steps
        self.annealing_strategy = annealing_strategy
        self.mode = mode
        self.ema_decay = ema_decay
        self.update_every_n_steps = update_every_n_steps or (1 if mode == "ema" else None)
        self.update_bn = update_bn
        self.module = module
        self.keep_zeros = keep_zeros
        self.device = torch.device(device) if device is not None else None
        self._avg_fn = get_ema_multi_avg_fn(ema_decay) if mode == "ema" else get_swa_multi_avg_fn()

        self._average: dict[str, Tensor] = {}  # name -> fp32 average of a parameter or floating-point buffer
        self._n_averaged = 0
        self._start_step: int | None = None  # step at which the averaging phase began
        self._start_after = (math.inf, math.inf)  # a fractional start: (step, trainer.global_step) that reach it
        self._last_update_step = -1
        self._start_lrs: list[list[float | None]] | None = None  # per optimizer, per group: lr when averaging began
        self._anneal_steps = 0
        self._eval_state: dict[str, Tensor] | None = None  # average with recomputed BN stats, for _eval_key
        self._eval_key: tuple[int, tuple[int, ...]] | None = None  # (n_averaged, live zeros per parameter)
        self._live_backup: dict[str, Tensor] | None = None  # raw weights while the average is swapped in
        self._misplaced = False  # loaded from a checkpoint (on CPU), not yet moved beside the weights (device=None)

    @property
    @override
    def state_key(self) -> str:
        keys: dict[str, Any] = {"mode": self.mode, "swa_start": self.swa_start}
        if self.module is not None:  # two copies (an EMA of each network) coexist; older checkpoints keep their key
            keys["module"] = self.module
        return self._generate_state_key(**keys)

    @property
    def n_averaged(self) -> int:
        """How many weight vectors the average holds."""
        return self._n_averaged

    @property
    def average(self) -> dict[str, Tensor]:
        """The fp32 average, keyed like the LightningModule's ``state_dict`` (parameters and floating buffers)."""
        return dict(self._average)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy)):
            raise MisconfigurationException(
                "SWA needs the full weights on every rank; it does not support sharded strategies (FSDP, DeepSpeed). "
                "Use --trainer.strategy=ddp or drop the SWA callback."
            )
        if self.module is not None:
            try:
                pl_module.get_submodule(self.module)
            except AttributeError as err:
                raise MisconfigurationException(
                    f"SWA's module={self.module!r} is not a submodule of {type(pl_module).__name__}; give the "
                    "attribute path of the network to average, e.g. 'generator'."
                ) from err
        copies = [c for c in trainer.callbacks if isinstance(c, SWA)]
        for i, first in enumerate(copies):
            second = next((c for c in copies[i + 1 :] if _overlap(first.module, c.module)), None)
            if second is not None:
                raise MisconfigurationException(
                    f"Two SWA callbacks average the same weights (module={first.module!r} and "
                    f"module={second.module!r}), but validation and checkpoints hold one set of weights and each would "
                    "restore the other's average as the live weights. Keep one, or give each its own submodule (e.g. "
                    "'generator', 'discriminator')."
                )
        _average_weights_only_checkpoints(trainer)
        # A second fit with the same callback averages afresh (a resume reloads the state next).
        self._average, self._n_averaged, self._start_step, self._last_update_step = {}, 0, None, -1
        self._start_lrs, self._eval_state, self._eval_key, self._live_backup = None, None, None, None
        self._misplaced = False

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.train_dataloader is None:  # loaded early, as trainer.estimated_stepping_batches does
            trainer.fit_loop.setup_data()
        steps_per_epoch = 0.0  # no training data (limit_train_batches=0): nothing to schedule
        if trainer.train_dataloader is not None:
            steps_per_epoch = trainer.num_training_batches / trainer.accumulate_grad_batches
        endless = math.isinf(steps_per_epoch)
        self._check_style(pl_module, endless)
        if self.annealing_steps is not None or endless:  # endless: annealing_steps, or no swa_lr to anneal to
            self._anneal_steps = self.annealing_steps or 0
        else:
            self._anneal_steps = max(1, round(self.annealing_epochs * steps_per_epoch)) if self.annealing_epochs else 0
        if self._start_step is None and isinstance(self.swa_start, float):
            by_epochs = math.inf
            if not endless and trainer.max_epochs not in (None, -1):  # as trainer.estimated_stepping_batches
                by_epochs = math.ceil(steps_per_epoch) * max(trainer.max_epochs, 1)
            by_steps = trainer.max_steps if trainer.max_steps != -1 else math.inf
            if math.isinf(min(by_epochs, by_steps)):
                raise MisconfigurationException(
                    f"SWA's swa_start={self.swa_start} is a fraction of the run, but this run has no known length "
                    "(max_epochs=-1 without max_steps). Give swa_start as an epoch (int), or set max_epochs/max_steps."
                )
            # max_steps counts trainer.global_step, which under manual optimization is not this callback's step.
            self._start_after = tuple(
                math.inf if math.isinf(n) else int(self.swa_start * n) for n in (by_epochs, by_steps)
            )

    def _check_style(self, pl_module: pl.LightningModule, endless: bool) -> None:
        """Stop at fit start, with what to set, where an option would wait for what this run never does."""
        never = "but this run's epoch never ends (an iterable dataset without a length, trained for max_steps)"
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self._target(pl_module).modules())
        if self.update_bn and has_bn:
            reason = None
            if self.module is not None:
                reason = f"module={self.module!r} is averaged, which that forward need not drive (a generator's G(z))"
            elif not pl_module.automatic_optimization:
                reason = "under manual optimization the forward need not take the training inputs (a GAN's G(z))"
            elif endless:
                reason = "this run's epoch never ends (an iterable dataset without a length), so there is no pass"
            if reason is not None:
                raise MisconfigurationException(
                    "SWA's update_bn=True recomputes BatchNorm statistics by running the LightningModule's forward on "
                    f"one pass of the training inputs, but {reason}. Set update_bn=False: the BatchNorm running "
                    "statistics are then averaged like the weights."
                )
        if endless and isinstance(self.swa_start, int) and self.swa_start > 0:
            raise MisconfigurationException(
                f"SWA's swa_start={self.swa_start} is an epoch, {never}. Give swa_start as a fraction, e.g. 0.75."
            )
        if endless and self.update_every_n_steps is None:
            raise MisconfigurationException(
                f"SWA in 'swa' mode updates at epoch ends unless update_every_n_steps is set, {never}. "
                "Set update_every_n_steps, e.g. 10."
            )
        if endless and self.swa_lr is not None and self.annealing_steps is None and self.annealing_epochs > 0:
            raise MisconfigurationException(
                f"SWA anneals the lr over annealing_epochs={self.annealing_epochs}, {never}. Set annealing_steps."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._place(pl_module)  # a resume restored the average before the module moved to its device

    def _place(self, pl_module: pl.LightningModule) -> None:
        """With ``device=None``, move an average that a checkpoint brought back on CPU beside the weights it averages,
        once, so that updates never copy between host and device."""
        if not self._misplaced:
            return
        live = dict(self._named_state(pl_module))
        self._average = {name: t.to(live[name].device) if name in live else t for name, t in self._average.items()}
        self._misplaced = False

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start_step is None and isinstance(self.swa_start, int) and trainer.current_epoch >= self.swa_start:
            self._start_step = _steps(trainer)

    def _in_phase(self, step: int) -> bool:
        return self._start_step is not None and step >= self._start_step

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = _steps(trainer)
        if self._start_step is None and isinstance(self.swa_start, float):
            by_steps, by_global_step = self._start_after
            if step >= by_steps or trainer.global_step >= by_global_step:
                self._start_step = step
        if self.swa_lr is None or not self._in_phase(step):
            return
        averaged = {id(p) for p in self._target(pl_module).parameters()}
        if self._start_lrs is None:
            self._start_lrs = [
                [group["lr"] if _holds(group, averaged) else None for group in opt.param_groups]
                for opt in trainer.optimizers
            ]
            rank_zero_info(f"SWA: averaging from step {step}, lr annealing to {self.swa_lr}.")
        for optimizer, start_lrs in zip(trainer.optimizers, self._start_lrs, strict=True):
            groups = optimizer.param_groups
            for group in groups[len(start_lrs) :]:  # added mid-fit, e.g. by BackboneFinetuning, before any lr is set
                if not _holds(group, averaged):
                    start_lrs.append(None)
                elif start_lrs[0] is not None and groups[0]["lr"] > 0:
                    start_lrs.append(start_lrs[0] * group["lr"] / groups[0]["lr"])
                else:
                    start_lrs.append(group["lr"])
        # Steps taken in the phase, +1: the lr used by the step about to happen, as SWALR after its first step().
        t = 1.0 if self._anneal_steps == 0 else min(1.0, (step - self._start_step + 1) / self._anneal_steps)
        keep = 1.0 - t if self.annealing_strategy == "linear" else (1.0 + math.cos(math.pi * t)) / 2.0
        for optimizer, start_lrs in zip(trainer.optimizers, self._start_lrs, strict=True):
            for group, start_lr in zip(optimizer.param_groups, start_lrs, strict=True):
                if start_lr is not None:
                    group["lr"] = self.swa_lr + (start_lr - self.swa_lr) * keep

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = _steps(trainer, including_current=True)
        if not self._in_phase(step) or step <= max(self._start_step, self._last_update_step):
            return  # no optimizer step since the last update (gradient accumulation), or not averaging yet
        if self.update_every_n_steps is not None:
            due = (step - self._start_step) % self.update_every_n_steps == 0
        else:
            # The epoch's last batch, before its validation runs, so validation sees this epoch's average.
            last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
            due = last or (trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps)
        if due:
            self._update(pl_module, step)

    def _target(self, pl_module: nn.Module) -> nn.Module:
        return pl_module.get_submodule(self.module) if self.module is not None else pl_module

    def _named_state(self, pl_module: nn.Module) -> Iterator[tuple[str, Tensor]]:
        # Every name, tied ones included (an embedding shared with an output layer appears under both names in the
        # state_dict), so checkpoints carry the average under each of them; prefixed as in the module's state_dict.
        prefix = f"{self.module}." if self.module is not None else ""
        target = self._target(pl_module)
        named = chain(target.named_parameters(remove_duplicate=False), target.named_buffers(remove_duplicate=False))
        saved = target.state_dict(keep_vars=True).keys()  # non-persistent buffers are never checkpointed: skipped
        for name, tensor in named:
            if name in saved:
                yield prefix + name, tensor

    @torch.no_grad()
    def _update(self, pl_module: pl.LightningModule, step: int) -> None:
        live = {name: t for name, t in self._named_state(pl_module) if t.is_floating_point()}
        if self._n_averaged == 0:
            device = self.device
            self._average = {
                name: t.detach().to(device or t.device, torch.float32, copy=True) for name, t in live.items()
            }
        else:
            if live.keys() != self._average.keys():
                raise MisconfigurationException(
                    "SWA: the module's parameters changed names since averaging began "
                    f"({sorted(live.keys() ^ self._average.keys())[:5]}). Keep the architecture fixed while averaging."
                )
            self._place(pl_module)  # reloaded mid-fit (LRFinder's reruns restore a checkpoint at an epoch start)
            names = list(self._average)
            averaged = [self._average[name] for name in names]
            current = [live[name].detach().to(averaged[i].device, torch.float32) for i, name in enumerate(names)]
            self._avg_fn(averaged, current, self._n_averaged)
        self._n_averaged += 1
        self._last_update_step = step

    def _bn_batches(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterator[Any]:
        # Through the strategy, so the DataModule's device-side transforms (scaling) apply.
        plain = getattr(trainer.datamodule, "unaugmented_train_dataloader", None)
        for batch in plain() if plain is not None else trainer.train_dataloader:
            batch = trainer.precision_plugin.convert_input(trainer.strategy.batch_to_device(batch))
            yield split_batch(batch, pl_module)[0]

    @torch.no_grad()
    def _evaluation_state(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        """The average (cast to the module's dtypes, live zeros kept), with BatchNorm statistics recomputed; cached."""
        live = dict(self._named_state(pl_module))
        zeros: dict[str, Tensor] = {}
        if self.keep_zeros:
            raw = {**live, **(self._live_backup or {})}  # the raw weights, also while the average is swapped in
            prefix = f"{self.module}." if self.module is not None else ""
            names = {prefix + n for n, _ in self._target(pl_module).named_parameters(remove_duplicate=False)}
            zeros = {name: raw[name] == 0 for name in names if name in self._average}
        # Pruning adds zeros between updates, so the cache is keyed by the zeros too (counted in one device sync).
        counts = tuple(torch.stack([m.sum() for m in zeros.values()]).tolist()) if zeros else ()
        key = (self._n_averaged, counts)
        if self._eval_state is not None and self._eval_key == key:
            return self._eval_state
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self._target(pl_module).modules())
        state = {}
        for name, t in live.items():
            if name in self._average:
                state[name] = self._average[name].to(t.device, t.dtype)
                if name in zeros:  # out of place: ``to`` may return the running average itself
                    state[name] = state[name].masked_fill(zeros[name], 0.0)
        if self.update_bn and has_bn and trainer.train_dataloader is not None:
            backup = {name: t.detach().clone() for name, t in live.items()}
            # DataModules augment only while the trainer is training (the case at train end, or at an epoch-end
            # checkpoint without validation); the statistics are for the un-augmented training data.
            was_training = trainer.training
            try:
                self._load_into(pl_module, state)
                trainer.training = False
                with trainer.precision_plugin.forward_context():
                    update_bn(self._bn_batches(trainer, pl_module), pl_module)
                state = {name: t.detach().clone() for name, t in self._named_state(pl_module) if name in state}
            finally:
                trainer.training = was_training
                self._load_into(pl_module, backup)
        self._eval_state, self._eval_key = state, key
        return state

    @torch.no_grad()
    def _load_into(self, pl_module: nn.Module, state: dict[str, Tensor]) -> None:
        for name, tensor in self._named_state(pl_module):
            if name in state:
                tensor.copy_(state[name])

    def _swap_in_average(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = self._evaluation_state(trainer, pl_module)
        self._live_backup = {name: t.detach().clone() for name, t in self._named_state(pl_module) if name in state}
        self._load_into(pl_module, state)

    def _restore_live(self, pl_module: pl.LightningModule) -> None:
        if self._live_backup is not None:
            self._load_into(pl_module, self._live_backup)
            self._live_backup = None

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and self._n_averaged > 0:
            self._swap_in_average(trainer, pl_module)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_live(pl_module)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_live(pl_module)  # never leave the average where the raw weights belong

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = _steps(trainer)
        if (
            self.update_every_n_steps is None
            and self._in_phase(step)
            and step > max(self._start_step, self._last_update_step)
        ):
            self._update(pl_module, step)  # training stopped between update points
        if self._n_averaged > 0:
            self._load_into(pl_module, self._evaluation_state(trainer, pl_module))
            rank_zero_info(f"SWA: the module now holds the {self.mode.upper()} of {self._n_averaged} weight vectors.")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "n_averaged": self._n_averaged,
            "start_step": self._start_step,
            "last_update_step": self._last_update_step,
            "start_lrs": self._start_lrs,
            "average": {name: t.detach().to("cpu", copy=True) for name, t in self._average.items()},  # no alias
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._n_averaged = state_dict["n_averaged"]
        self._start_step = state_dict["start_step"]
        self._last_update_step = state_dict["last_update_step"]
        self._start_lrs = state_dict["start_lrs"]
        # Copies: the running average is updated in place and must not write into the caller's dict.
        self._average = {name: t.to(self.device or t.device, copy=True) for name, t in state_dict["average"].items()}
        self._misplaced = self.device is None
        self._eval_state, self._eval_key = None, None

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._n_averaged == 0:
            return
        # Checkpoints are evaluated, reloaded and exported as the average; the raw weights ride along for resuming.
        checkpoint["callbacks"][self.state_key]["live_state_dict"] = self._write_average(trainer, pl_module, checkpoint)

    def _write_average(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> dict[str, Tensor]:
        """Put the evaluated average into ``checkpoint["state_dict"]``; return the raw entries of the averaged
        (sub)module, whose names it shares with no other SWA callback's."""
        state = checkpoint["state_dict"]
        prefix = f"{self.module}." if self.module is not None else ""
        live = {name: t for name, t in state.items() if name.startswith(prefix)}
        if self._live_backup is not None:  # saved mid-validation, while the average is swapped in
            live.update({name: t.clone() for name, t in self._live_backup.items()})
        evaluation = self._evaluation_state(trainer, pl_module)
        checkpoint["state_dict"] = {name: evaluation.get(name, t) for name, t in state.items()}
        return live

    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        live = checkpoint.get("callbacks", {}).get(self.state_key, {}).get("live_state_dict")
        if trainer.state.fn == "fit" and live is not None:
            # Lightning has just loaded the average into the module; training resumes from the raw weights. Only this
            # callback's (sub)module: another SWA's raw weights are its to restore.
            prefix = f"{self.module}." if self.module is not None else ""
            own = {name[len(prefix) :]: t for name, t in live.items() if name.startswith(prefix)}
            self._target(pl_module).load_state_dict(own)
