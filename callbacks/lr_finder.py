"""The learning-rate range test (Smith 2015, https://arxiv.org/abs/1506.01186) run inside ``fit``, as fastai's
``lr_find``: train briefly while the LR climbs a geometric ladder, read a good LR off the loss curve, apply it.

Ladder and smoothing, for ``N = num_training`` points, loss ``l_k`` at point ``k`` and ``beta = smoothing``::

    lr_k = min_lr * (max_lr / min_lr) ** (k / (N - 1)),  k = 0 .. N-1     (exactly N points, both ends included)
    m_k  = beta * m_{k-1} + (1 - beta) * l_k,  m_{-1} = 0,   s_k = m_k / (1 - beta ** (k + 1))

``s_k`` is the bias-corrected running mean, so ``s(l + c) = s(l) + c``: nothing below assumes a positive loss.
"""

from __future__ import annotations

import copy
import math
import os
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers.logger import DummyLogger
from lightning.pytorch.loops import _Loop
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch.optim.lr_scheduler import OneCycleLR
from torchmetrics import Metric
from typing_extensions import override

from core.epochs import epoch_never_ends
from core.media import log_figure

Method = Literal["steep", "valley", "minimum/10"]
# Keys of a param group that hold a learning rate; one-cycle adds the last three.
_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
# What a nested fit-loop run changes that a checkpoint does not restore: logged metrics and loop restart flags.
_METRIC_DICTS = ("_callback_metrics", "_logged_metrics", "_progress_bar_metrics")
_LOOP_FLAGS = ("_restarting", "_loaded_from_state_dict", "_resuming_from_checkpoint", "_restart_stage")


@dataclass
class RangeTest:
    """One range test: the ladder it climbed, the losses it saw and what each method suggests.

    ``losses`` and ``smoothed`` cover the evaluated points only, a prefix of ``ladder`` (``lrs``): shorter than
    ``ladder`` when the loss diverged and the test stopped early.
    """

    epoch: int
    ladder: list[float]
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    diverged: bool = False
    suggestions: dict[str, float | None] = field(default_factory=dict)
    method: str = "valley"

    @property
    def lrs(self) -> list[float]:
        return self.ladder[: len(self.losses)]

    @property
    def suggestion(self) -> float | None:
        """The LR the chosen method picked and the callback applied; ``None``: too few points, LR left unchanged."""
        return self.suggestions.get(self.method)


class _Diverged(Exception):
    """Raised by the probe to leave the fit loop at once (``should_stop`` would wait for ``min_epochs``)."""


class _Probe(Callback):
    """The only callback attached during a range test: sets each point's LR and records its loss."""

    def __init__(self, finder: LRFinder, result: RangeTest, optimizer: torch.optim.Optimizer, scales: list[float]):
        self._finder, self._result, self._optimizer, self._scales = finder, result, optimizer, scales
        self._start_step: int | None = None
        self._window: list[float] = []
        self._mean = 0.0
        self._best, self._start, self._noise = math.inf, math.nan, math.nan

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if self._start_step is None:
            self._start_step = trainer.global_step
        lr = self._result.ladder[trainer.global_step - self._start_step]
        for group, scale in zip(self._optimizer.param_groups, self._scales, strict=True):
            group["lr"] = lr * scale

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            raise MisconfigurationException(
                "LRFinder reads the loss from what training_step returns, but it returned "
                f"{type(outputs).__name__}. Return the loss tensor (or a dict with a 'loss' key)."
            )
        self._window.append(float(loss))
        if trainer.global_step - self._start_step == len(self._result.losses):
            return  # accumulating gradients: the point ends with the optimizer step
        # Automatic optimization divides each micro-batch loss by the accumulation count; undo it for the mean.
        scale = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
        diverged = self._record(sum(self._window) * scale / len(self._window))
        self._window.clear()
        if trainer.strategy.reduce_boolean_decision(diverged, all=False):
            self._result.diverged = True
            raise _Diverged

    def _record(self, loss: float) -> bool:
        """Append one point; whether the loss has diverged."""
        result, beta, warmup = self._result, self._finder._smoothing, self._finder._warmup
        self._mean = beta * self._mean + (1 - beta) * loss
        smoothed = self._mean / (1 - beta ** (len(result.losses) + 1))
        result.losses.append(loss)
        result.smoothed.append(smoothed)
        if not math.isfinite(smoothed):
            return True
        if len(result.losses) < warmup:
            return False
        if len(result.losses) == warmup:
            self._start, self._noise = float(np.mean(result.losses)), float(np.std(result.losses))
        self._best = min(self._best, smoothed)
        threshold = self._finder._divergence_threshold
        # Differences and a standard deviation only: the same decision for a shifted or rescaled loss.
        return threshold is not None and smoothed - self._best > threshold * max(self._start - self._best, self._noise)


class LRFinder(Callback):
    r"""Run the LR range test before training (and again at chosen epochs) and train with what it suggests.

    Smith, "Cyclical Learning Rates for Training Neural Networks" (2015), https://arxiv.org/abs/1506.01186; the
    suggestions follow fastai's ``lr_find``. The test trains for ``num_training`` optimizer steps through Lightning's
    own fit loop (so precision, clipping, accumulation and strategies apply) while the LR climbs the geometric
    ladder in the module docstring, with every other callback and the loggers detached and no validation. Then
    everything is put back: weights, buffers, train/eval modes, torchmetrics states and gradients; optimizer,
    scheduler and precision states (through a temporary checkpoint under the log dir, deleted even on error);
    torch / numpy / python RNG; loop counters and data loaders; callbacks, loggers and logged metrics. Only the
    learning rate changes:

    * LR of each param group ``g``, relative to the largest (``ref_g`` = one-cycle's ``max_lr``, else the group's
      ``initial_lr`` when it has one, the base rate that torch schedulers and ``SnapshotEnsemble`` anneal from, else
      ``lr``): during the test ``lr_g = lr_k * ref_g / max(ref)``; afterwards every LR a group or scheduler holds
      (``lr``, ``initial_lr``, ``max_lr``, ``min_lr``, ``base_lrs``) is multiplied by ``suggestion / max(ref)``.
      For ``OneCycleLR`` that sets ``max_lr = suggestion`` and keeps ``initial_lr = max_lr / div_factor`` and
      ``min_lr = initial_lr / final_div_factor``; the current LR is recomputed by the scheduler's own ``get_lr``
      at its current step. Absolute floors such as ``CosineAnnealingLR``'s ``eta_min`` are left alone.
    * Suggestions, on the finite smoothed losses after the first ``w = max(3, num_training // 10)`` points
      (fastai skips the first tenth too): ``steep``: argmin of ``ds/dlog(lr)`` (central differences); ``valley``
      (fastai's default): the longest strictly decreasing subsequence of ``s`` is the valley, and its middle point
      (the geometric mean of its end LRs) is picked; ``minimum/10``: the LR at ``argmin s``, divided by 10.
    * Divergence: with ``l0`` and ``sd0`` the mean and standard deviation of the first ``w`` raw losses (where the
      loss starts and how noisy it is) and ``s*`` the lowest smoothed loss since, the test stops once
      ``s_k - s* > divergence_threshold * max(l0 - s*, sd0)`` (with 1: climbed back by as much as it fell), or
      on a non-finite loss; later ladder points are not evaluated. Differences and a spread only, so a shifted
      or rescaled loss, negative ones included, stops at the same point.

    Where it departs from Lightning's ``LearningRateFinder`` (``tuner/lr_finder.py``, Lightning 2.6), whose
    save/restore-through-a-checkpoint approach it keeps:

    * Its ``_ExponentialLR`` jumps from ``min_lr`` to ``min_lr * r**2`` (``r = (max_lr/min_lr)**(1/N)``), so its N
      LRs are not geometric; it also stops at ``max_epochs``, so a short epoch budget cuts the ladder.
    * It only has the steepest-gradient suggestion, taken against LR rather than log LR.
    * Its stop rule ``s > 4 * best`` assumes a positive loss (a loss shifted by -100 stops after two steps), and
      its bias correction counts ``global_step``, which is wrong for a test later in training.
    * It sets every group to one LR and, when applying, writes ``group["lr"]`` only: a one-cycle scheduler
      overwrites it from its unchanged ``max_lr`` at the next step, so the suggestion is lost.
    * After it, ``trainer.ckpt_path`` names its deleted temporary checkpoint and ``callback_metrics`` hold the
      test's losses; validation runs inside the test, and torchmetrics states the test's steps updated stay so.

    The module's own ``on_train_start`` / ``on_train_epoch_*`` / ``on_train_end`` hooks do run during the test (the
    fit loop calls them); their effects on weights and metric states are undone, other side effects are not. A run
    resumed from a checkpoint skips the initial test: the restored optimizer already holds the LR.

    Iterable training data without a length works with ``max_steps``; ``rerun_at_epochs`` there, or manual optimization
    (a GAN: several optimizers, no single loss per step), stop at fit start, before any test. With ``SnapshotEnsemble``,
    in either order, the suggestion becomes the ensemble's restart rate (the ``initial_lr`` it keeps). The first test
    draws random numbers (data order, dropout) from the RNG as it was at fit setup, so callbacks drawing some in their
    ``on_fit_start`` (an early data iterator's seed) change nothing whether they come before or after this one.

    Args:
        min_lr: First LR of the ladder.
        max_lr: Last LR of the ladder.
        num_training: Number of ladder points, one optimizer step each.
        method: Which suggestion is applied: ``"steep"``, ``"valley"`` or ``"minimum/10"``.
        rerun_at_epochs: Epochs (>= 1) at whose start the test runs again from the then-current weights.
        divergence_threshold: ``tau`` of the stop rule; ``None`` evaluates the whole ladder.
        smoothing: ``beta`` of the running mean, in ``[0, 1)``. The default (fastai's and Lightning's) averages
            over ~50 points, so the smoothed curve lags the raw one and its minimum sits at a larger LR; lower it
            for short or noise-free ladders.
    """

    def __init__(
        self,
        min_lr: float = 1e-7,
        max_lr: float = 10.0,
        num_training: int = 100,
        method: Method = "valley",
        rerun_at_epochs: tuple[int, ...] = (),
        divergence_threshold: float | None = 1.0,
        smoothing: float = 0.98,
    ) -> None:
        if not 0 < min_lr < max_lr < math.inf:
            raise MisconfigurationException(f"LRFinder needs 0 < min_lr < max_lr, got min_lr={min_lr}, max_lr={max_lr}")
        if num_training < 10:
            raise MisconfigurationException(
                f"LRFinder needs num_training >= 10 points for a smoothed curve, got {num_training}"
            )
        if method not in get_args(Method):
            raise MisconfigurationException(f"LRFinder method must be one of {get_args(Method)}, got {method!r}")
        epochs = tuple(rerun_at_epochs)
        if any(not isinstance(e, int) or e < 1 for e in epochs) or len(set(epochs)) != len(epochs):
            raise MisconfigurationException(
                f"rerun_at_epochs must hold distinct epochs >= 1 (the test before training is always run), got {epochs}"
            )
        if divergence_threshold is not None and not divergence_threshold > 0:
            raise MisconfigurationException(
                f"divergence_threshold must be > 0, or None to never stop early; got {divergence_threshold}"
            )
        if not 0 <= smoothing < 1:
            raise MisconfigurationException(f"smoothing must be in [0, 1), got {smoothing}")
        self._min_lr, self._max_lr, self._num_training = float(min_lr), float(max_lr), num_training
        self._method: Method = method
        self._rerun_at_epochs = frozenset(epochs)
        self._divergence_threshold = divergence_threshold
        self._smoothing = smoothing
        self._warmup = max(3, num_training // 10)
        self._history: list[RangeTest] = []
        self._setup_rng: dict[str, Any] = {}  # torch / numpy / python RNG states at fit setup

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            min_lr=self._min_lr, max_lr=self._max_lr, num_training=self._num_training, method=self._method
        )

    @property
    def history(self) -> tuple[RangeTest, ...]:
        """Every range test this callback ran, oldest first."""
        return tuple(self._history)

    @property
    def ladder(self) -> list[float]:
        """The ``num_training`` LRs a test climbs, geometric from ``min_lr`` to ``max_lr`` (both exact)."""
        return np.geomspace(self._min_lr, self._max_lr, self._num_training).tolist()

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # a second fit with the same callback tests afresh (a resume reloads the history next)
            self._history = []
            self._setup_rng = _collect_rng_states()

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                f"LRFinder reads one loss per optimizer step and needs automatic optimization, but "
                f"{type(pl_module).__name__} sets automatic_optimization = False (a GAN steps several optimizers per "
                "batch). Remove LRFinder and set the learning rates in configure_optimizers."
            )
        if self._rerun_at_epochs:
            if epoch_never_ends(trainer):
                raise MisconfigurationException(
                    f"LRFinder's rerun_at_epochs={sorted(self._rerun_at_epochs)} never come: this run's epoch never "
                    "ends (an iterable dataset without a length, trained for max_steps). Drop rerun_at_epochs."
                )
        if trainer.fast_dev_run:
            rank_zero_warn("LRFinder: skipping the range test under fast_dev_run.")
        elif trainer.ckpt_path is not None:
            rank_zero_info("LRFinder: resuming from a checkpoint, whose optimizer already holds the LR; no test.")
        else:
            with isolate_rng():
                # Random numbers as at fit setup, so that callbacks drawing some in their on_fit_start before this
                # one (SnapshotEnsemble's early data iterator draws its seed) change neither data order nor dropout.
                _set_rng_states(self._setup_rng)
                self.range_test(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch in self._rerun_at_epochs and not trainer.fast_dev_run and all(r.epoch != epoch for r in self._history):
            self.range_test(trainer, pl_module)

    def range_test(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> RangeTest:
        """Run one range test now, apply its suggestion and plot it; returns the result (also in ``history``)."""
        if len(trainer.optimizers) != 1:
            raise MisconfigurationException(
                f"LRFinder works with one optimizer, but configure_optimizers returned {len(trainer.optimizers)}."
            )
        optimizer = trainer.optimizers[0]
        references = _reference_lrs(trainer, optimizer)
        top = max(references)
        if not top > 0:
            raise MisconfigurationException("LRFinder: every param group has LR 0, so there is no LR ratio to keep.")
        result = RangeTest(epoch=trainer.current_epoch, ladder=self.ladder, method=self._method)
        probe = _Probe(self, result, optimizer, [r / top for r in references])
        with isolate_rng(), _restored(trainer, pl_module):
            _run_fit_loop(trainer, probe, self._num_training)
        result = trainer.strategy.broadcast(result)  # every rank applies rank 0's choice
        result.suggestions = _suggest(result.lrs, result.smoothed, self._warmup)
        self._history.append(result)
        stopped = f"diverged after {len(result.losses)}" if result.diverged else f"all {len(result.losses)}"
        if result.suggestion is None:
            rank_zero_warn(
                f"LRFinder: too few finite losses ({stopped} of {self._num_training} points), so the LR is left "
                "as configured. Lower min_lr, raise num_training or divergence_threshold."
            )
        else:
            _apply(trainer, optimizer, result.suggestion, references)
            rank_zero_info(f"LRFinder: {self._method} suggests lr={result.suggestion:.3g} ({stopped} points); applied.")
        if trainer.is_global_zero:
            log_figure(trainer, f"lr_find/epoch_{result.epoch}", _plot(result))
        return result

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [asdict(r) for r in self._history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._history = [RangeTest(**r) for r in state_dict.get("history", [])]


def _one_cycle(trainer: pl.Trainer, optimizer: torch.optim.Optimizer) -> OneCycleLR | None:
    for config in trainer.lr_scheduler_configs:
        if isinstance(config.scheduler, OneCycleLR) and config.scheduler.optimizer is optimizer:
            return config.scheduler
    return None


def _reference_key(group: dict[str, Any], one_cycle: OneCycleLR | None) -> str:
    """The LR of a group that its schedule is anchored to, and that the suggestion replaces."""
    return "max_lr" if one_cycle is not None else "initial_lr" if "initial_lr" in group else "lr"


def _reference_lrs(trainer: pl.Trainer, optimizer: torch.optim.Optimizer) -> list[float]:
    one_cycle = _one_cycle(trainer, optimizer)
    return [float(group[_reference_key(group, one_cycle)]) for group in optimizer.param_groups]


def _apply(trainer: pl.Trainer, optimizer: torch.optim.Optimizer, lr: float, references: list[float]) -> None:
    """Give the largest reference LR the value ``lr``; scale every other LR the groups and schedulers hold alike."""
    one_cycle = _one_cycle(trainer, optimizer)
    top = max(references)
    factors = []
    for group, reference in zip(optimizer.param_groups, references, strict=True):
        key = _reference_key(group, one_cycle)
        target = lr * (reference / top)  # exactly ``lr`` for the largest group
        factors.append(target / reference if reference else 0.0)
        for name in _LR_KEYS:
            if name in group:
                group[name] = target if name == key else group[name] * factors[-1]
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if scheduler.optimizer is not optimizer:
            continue
        if hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [base * f for base, f in zip(scheduler.base_lrs, factors, strict=True)]
        if scheduler is one_cycle:
            # One-cycle's LR at its current step, from its own phases and the rescaled initial/max/min LRs.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="To get the last learning rate", category=UserWarning)
                lrs = scheduler.get_lr()
            for group, value in zip(optimizer.param_groups, lrs, strict=True):
                group["lr"] = value
        if hasattr(scheduler, "_last_lr"):  # what get_last_lr() (and LearningRateMonitor) report
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _run_fit_loop(trainer: pl.Trainer, probe: _Probe, num_training: int) -> None:
    """Train ``num_training`` optimizer steps with only ``probe`` attached; the caller restores everything."""
    fit_loop = trainer.fit_loop
    trainer.strategy.lr_scheduler_configs = []
    trainer.callbacks = [probe]
    trainer.loggers = [DummyLogger()] if trainer.loggers else []
    trainer.limit_val_batches = 0
    trainer.should_stop = False
    # A loader of its own: the run's iterator (made early by ``estimated_stepping_batches``) stays where it was.
    fit_loop._combined_loader = fit_loop._data_fetcher = None
    fit_loop.max_epochs = -1  # the ladder, not the epoch budget, decides the length
    fit_loop.epoch_loop.max_steps = trainer.global_step + num_training
    try:
        fit_loop.run()
    except _Diverged:
        pass


@contextmanager
def _restored(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterator[None]:
    """Put back everything a nested ``fit_loop.run()`` changes, even when it raises."""
    fit_loop, connector = trainer.fit_loop, trainer._logger_connector
    attributes = [
        (obj, name, getattr(obj, name))
        for obj, names in (
            (trainer, ("callbacks", "loggers", "limit_val_batches", "should_stop", "val_check_batch")),
            (trainer.strategy, ("lr_scheduler_configs",)),
            (fit_loop, ("max_epochs", "max_batches", "_last_train_dl_reload_epoch")),
            (fit_loop, ("_combined_loader", "_data_fetcher", "_combined_loader_states_to_load")),
            (fit_loop.epoch_loop, ("max_steps",)),
            # Restoring a checkpoint points ``trainer.ckpt_path`` at it and marks every loop as restarting.
            (trainer._checkpoint_connector, ("_ckpt_path",)),
            *((loop, _LOOP_FLAGS) for loop in _loops(fit_loop)),
            (connector, ("_first_loop_iter", "_current_fx", *_METRIC_DICTS)),
        )
        for name in names
        if hasattr(obj, name)
    ]
    attributes = [(obj, name, dict(v) if name in _METRIC_DICTS else v) for obj, name, v in attributes]
    result_keys = set(fit_loop.epoch_loop._results)
    modes = [(m, m.training) for m in pl_module.modules()]
    grads = [(p, None if p.grad is None else p.grad.clone()) for p in pl_module.parameters()]
    metrics = [m for m in pl_module.modules() if isinstance(m, Metric)]
    # One deepcopy for all metrics keeps the states that MetricCollection compute groups share shared.
    metric_states = copy.deepcopy([(m.metric_state, m._update_count, m._computed) for m in metrics])
    grad_enabled = torch.is_grad_enabled()
    log_dir = trainer.log_dir or trainer.default_root_dir
    ckpt = trainer.strategy.broadcast(os.path.join(log_dir, f".lr_find_{uuid.uuid4().hex}.ckpt"))
    trainer.save_checkpoint(ckpt)
    try:
        yield
    finally:
        fetcher = fit_loop._data_fetcher
        try:
            # Callbacks and schedulers go back first: the checkpoint restores their states in place.
            for obj, name, value in attributes:
                setattr(obj, name, value)
            trainer._checkpoint_connector.restore(ckpt)
        finally:
            trainer.strategy.remove_checkpoint(ckpt)
        for obj, name, value in attributes:
            setattr(obj, name, value)
        if fetcher is not None and fetcher is not fit_loop._data_fetcher:
            fetcher.teardown()
        results = fit_loop.epoch_loop._results
        for key in set(results) - result_keys:
            del results[key]
        results.reset()
        for module, mode in modes:
            module.training = mode
        for param, grad in grads:
            param.grad = grad
        for metric, (state, count, computed) in zip(metrics, metric_states, strict=True):
            for name, value in state.items():
                setattr(metric, name, value)
            metric._update_count, metric._computed = count, computed
        torch.set_grad_enabled(grad_enabled)


def _loops(loop: _Loop) -> list[_Loop]:
    """``loop`` and every loop nested in it."""
    found = [loop]
    for child in vars(loop).values():
        if isinstance(child, _Loop):
            found += _loops(child)
    return found


def _suggest(lrs: list[float], smoothed: list[float], skip: int) -> dict[str, float | None]:
    """Each method's suggestion from the finite smoothed losses after the first ``skip`` points."""
    lr, s = np.asarray(lrs[skip:], dtype=float), np.asarray(smoothed[skip:], dtype=float)
    finite = np.isfinite(s)
    lr, s = lr[finite], s[finite]
    if len(s) < 3:
        return dict.fromkeys(get_args(Method))
    slope = np.gradient(s, np.log(lr))  # ds / dlog(lr)
    start, end = _longest_descent(s)
    return {
        "steep": float(lr[np.argmin(slope)]),
        "valley": float(lr[start + (end - start) // 2]),
        "minimum/10": float(lr[np.argmin(s)] / 10),
    }


def _longest_descent(s: np.ndarray) -> tuple[int, int]:
    """First and last index of the longest strictly decreasing subsequence of ``s`` (earliest one on ties)."""
    length = np.ones(len(s), dtype=int)
    previous = np.arange(len(s))
    for i in range(1, len(s)):
        higher = s[:i] > s[i]
        if higher.any():
            j = int(np.argmax(np.where(higher, length[:i], 0)))
            length[i], previous[i] = length[j] + 1, j
    end = start = int(np.argmax(length))
    while previous[start] != start:
        start = int(previous[start])
    return start, end


def _plot(result: RangeTest):
    """Loss against LR (log axis) with every method's suggestion, the applied one drawn solid."""
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses, ".", color="0.7", markersize=3, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", label="smoothed loss")
    for (name, lr), color in zip(result.suggestions.items(), ("C1", "C2", "C4"), strict=False):
        if lr is not None:
            chosen = name == result.method
            label = f"{name}: {lr:.2g}" + (" (applied)" if chosen else "")
            ax.axvline(lr, color=color, ls="-" if chosen else ":", lw=2 if chosen else 1, label=label)
    smoothed = np.asarray(result.smoothed)
    smoothed = smoothed[np.isfinite(smoothed)]
    if len(smoothed):
        # Frame the descent: the blow-up at the end would otherwise flatten the curve to a line.
        best = int(np.argmin(smoothed))
        raw = np.asarray(result.losses)
        low, high = min(smoothed[best], raw[np.isfinite(raw)].min()), smoothed[: best + 1].max()
        margin = 0.2 * (high - low) or 0.1 * abs(low) or 1.0
        ax.set_ylim(low - margin, high + margin)
    ax.set_xscale("log")
    ax.set_xlim(result.ladder[0], result.ladder[-1])
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    stopped = f", diverged after {len(result.losses)} of {len(result.ladder)} points" if result.diverged else ""
    ax.set_title(f"LR range test at epoch {result.epoch}{stopped}")
    ax.legend(fontsize=8)
    return figure
