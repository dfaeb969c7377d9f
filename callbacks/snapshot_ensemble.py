"""Snapshot ensembles: one run with a restarting cosine learning rate yields an ensemble of its cycle-end weights."""

from __future__ import annotations

import math
import os
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.func import functional_call
from torchmetrics import Metric
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from core.batches import split_batch


class SnapshotEnsemble(Callback):
    r"""Train once with a cyclic cosine learning rate and evaluate the ensemble of the weights at each cycle's end.

    Snapshot Ensembles (Huang et al. 2017, "Snapshot Ensembles: Train 1, get M for free",
    https://arxiv.org/abs/1704.00109). The run's :math:`T` optimizer steps (``trainer.estimated_stepping_batches``,
    so ``max_steps`` and gradient accumulation count) are split into :math:`M` cycles; at step :math:`t = 1..T`
    every parameter group gets the learning rate of the paper's Eq. 2,

    .. math::
        \alpha(t) = \frac{\alpha_0}{2}\left(\cos\left(\frac{\pi \,\mathrm{mod}(t-1, \lceil T/M \rceil)}
        {\lceil T/M \rceil}\right) + 1\right),

    which restarts at :math:`\alpha_0` each cycle and anneals towards zero. The weights (parameters and buffers, so
    batch-norm statistics too) after the last step of each cycle are kept as a snapshot; the last ``ensemble_size``
    of them form the ensemble, whose prediction is the mean of the members' class probabilities,
    :math:`p(y|x) = \frac{1}{m}\sum_i \mathrm{softmax}(f_i(x))`, computed in log space as
    :math:`\mathrm{logsumexp}_i \log\mathrm{softmax}(f_i(x)) - \log m`.

    At validation and test it logs ``{stage}/ensemble_acc`` and ``{stage}/ensemble_nll`` (negative log-likelihood of
    the mean probability) and ``{stage}/snapshot_{k}_acc`` / ``_nll`` for the snapshot of cycle ``k`` (1-based), on
    the first dataloader, once there is a snapshot (so ``EarlyStopping`` on them needs ``strict=False``, and a
    ``ModelCheckpoint`` monitoring them fails during the first cycle). Members run through
    ``torch.func.functional_call`` with the snapshot's state dict, so the live weights are never swapped and a crash
    cannot leave the model holding a snapshot. The module's ``forward(inputs)`` must return logits
    ``(..., num_classes)``. Inputs and class-index targets come from :func:`core.batches.split_batch`, the one rule
    for tuple, dict and graph batches (``(x, y)``; a dict's ``input`` and ``target``/``labels``/``y``; a PyG batch
    and its ``y``); a module whose batches differ defines ``split_batch(batch)`` to override it in one place.

    Snapshots are part of the callback's ``state_dict`` and so of every full checkpoint (a ``ModelCheckpoint`` with
    ``save_weights_only=True``, which leaves callback states out, is refused at fit setup): ``recipe test
    --ckpt_path ...`` (or ``trainer.test``/``validate`` with ``ckpt_path``) evaluates the saved ensemble without
    training, and ``recipe predict --ckpt_path ...`` writes the ensemble's mean probabilities, ``(N, ..., num_classes)``
    in dataloader order, with ``torch.save`` to ``<trainer.log_dir>/<predictions_filename>`` (one file per rank,
    prefixed ``rank{r}-``, under DDP). The learning rate is a pure function of ``trainer.global_step``, so a run resumed
    mid-cycle gets the same schedule and the same snapshots as an uninterrupted one.

    Each group's :math:`\alpha_0` is read at train start, after every callback's ``on_fit_start`` (where
    ``LRFinder`` applies its suggestion, so the order of the two callbacks does not matter), and kept in the param
    group under ``"initial_lr"``, torch schedulers' key for a base rate, so it travels with the optimizer's state in
    checkpoints and ``LRFinder`` reruns rescale it. A group added mid-fit (``BackboneFinetuning`` unfreezing a
    backbone) gets the :math:`\alpha_0` that keeps the ratio its rate had to group 0's current rate when it appeared.
    Iterable training data without a length works with ``max_steps``. Manual optimization (a GAN) is refused at fit
    start: its ``global_step`` counts every optimizer's steps, and its ``forward`` need not map inputs to logits.

    Unlike Lightning's ``StochasticWeightAveraging`` and ``WeightAveraging``, which average *weights* and swap the
    average into the module, this keeps separate members and averages their *predictions*; it owns the learning rate
    for the whole run, so a module that also returns an LR scheduler is refused rather than silently overridden, and
    it sets the rate per optimizer step instead of per epoch. For the same reason a Trainer takes one copy: a second
    one (other ``cycles``) would write the rate too and log the same metric names. Sharded strategies (FSDP,
    DeepSpeed) are not supported.

    Args:
        cycles: Number of cosine cycles :math:`M` (the paper uses 5-6). At least 2.
        ensemble_size: How many of the last snapshots form the ensemble (:math:`m` in the paper); ``None`` keeps all
            :math:`M`. Older snapshots are dropped, also from checkpoints.
        lr: The restart learning rate :math:`\alpha_0` for every parameter group present at train start; ``None``
            uses each group's learning rate at train start, as configured or as ``LRFinder`` set it (the paper uses a
            large one, e.g. 0.1-0.2 for SGD).
        device: Where snapshots are stored (``"cpu"`` keeps accelerator memory free while training; the members are
            copied to the module's device once per evaluation epoch and dropped after it). ``None`` keeps them on the
            module's device throughout.
        predictions_filename: File name of the ensemble's predictions written by ``predict``.
    """

    def __init__(
        self,
        cycles: int = 5,
        ensemble_size: int | None = None,
        lr: float | None = None,
        device: str | None = "cpu",
        predictions_filename: str = "ensemble_predictions.pt",
    ) -> None:
        if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 2:
            raise MisconfigurationException(
                f"cycles must be an integer >= 2 (the paper uses 5-6), got {cycles!r}; for one cosine cycle use "
                "torch.optim.lr_scheduler.CosineAnnealingLR instead."
            )
        if ensemble_size is not None and (
            isinstance(ensemble_size, bool) or not isinstance(ensemble_size, int) or not 1 <= ensemble_size <= cycles
        ):
            raise MisconfigurationException(
                f"ensemble_size must be an integer in [1, cycles={cycles}] or None for all cycles, "
                f"got {ensemble_size!r}."
            )
        if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise MisconfigurationException(
                f"lr must be a positive number or None (each parameter group's own rate), got {lr!r}."
            )
        if device is not None:
            try:
                torch.device(device)
            except (RuntimeError, TypeError) as err:
                raise MisconfigurationException(
                    f"device must be a torch device string such as 'cpu' or 'cuda', or None for the module's device, "
                    f"got {device!r}."
                ) from err
        if not predictions_filename or os.sep in predictions_filename or predictions_filename in (".", ".."):
            raise MisconfigurationException(
                f"predictions_filename must be a plain file name (it is written in the trainer's log directory), "
                f"got {predictions_filename!r}."
            )
        self._cycles = cycles
        self._ensemble_size = ensemble_size or cycles
        self._lr = None if lr is None else float(lr)
        self._device = None if device is None else torch.device(device)
        self._predictions_filename = predictions_filename

        self._total_steps: int | None = None
        self._snapshots: list[dict[str, Any]] = []  # {"cycle", "step", "state_dict"}, oldest first
        self._last_snapshot_step = 0
        self._metrics: dict[str, tuple[Metric, Metric]] = {}
        self._predictions: list[torch.Tensor] = []
        self._members_on_device: list[dict[str, torch.Tensor]] | None = None  # device copies during one evaluation

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(cycles=self._cycles)

    @property
    def snapshots(self) -> list[dict[str, torch.Tensor]]:
        """The ensemble members' state dicts, oldest first (read-only use)."""
        return [s["state_dict"] for s in self._snapshots]

    @property
    def snapshot_cycles(self) -> list[int]:
        """The 1-based cycle each member was taken at, oldest first."""
        return [s["cycle"] for s in self._snapshots]

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy)):
            raise MisconfigurationException(
                "SnapshotEnsemble needs whole state dicts and does not support sharded strategies (FSDP, DeepSpeed). "
                "Use DDP or a single device."
            )
        copies = [c for c in trainer.callbacks if isinstance(c, SnapshotEnsemble)]
        if len(copies) > 1:
            cycles = " and ".join(f"cycles={c._cycles}" for c in copies)
            raise MisconfigurationException(
                f"{len(copies)} SnapshotEnsemble callbacks ({cycles}) would all set the learning rate, each "
                "overwriting the other's schedule, and log the same metrics; keep one."
            )
        if stage != "fit":
            return
        if any(getattr(c, "save_weights_only", False) for c in trainer.checkpoint_callbacks):
            raise MisconfigurationException(
                "SnapshotEnsemble keeps its snapshots in its checkpoint state, which ModelCheckpoint(save_weights_only="
                "True) leaves out, so its checkpoints could not test or predict the ensemble; set save_weights_only="
                "False (--checkpoint.save_weights_only=false)."
            )
        # A second fit with the same callback starts a new ensemble (a resume reloads it next).
        self._snapshots, self._last_snapshot_step = [], 0

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                "SnapshotEnsemble needs automatic optimization: under manual optimization (a GAN) trainer.global_step "
                "counts every optimizer's steps and forward need not map inputs to logits. Remove it from modules "
                "that set automatic_optimization = False."
            )
        if trainer.lr_scheduler_configs:
            names = ", ".join(type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs)
            raise MisconfigurationException(
                f"SnapshotEnsemble sets the learning rate itself, but the module's configure_optimizers also returns "
                f"a scheduler ({names}); both would write the rate. Remove the scheduler (e.g. drop lr_scheduler "
                "from the recipe)."
            )
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise MisconfigurationException(
                f"SnapshotEnsemble needs a known run length to place its cycles, but the trainer estimates {total} "
                "optimizer steps. Set max_epochs with a sized dataloader, or max_steps."
            )
        total = int(total)
        length = math.ceil(total / self._cycles)
        made = math.ceil(total / length)
        if made != self._cycles:
            message = (
                f"T={total} optimizer steps in cycles of ceil(T/M)={length} steps make {made} cycles, not "
                f"cycles={self._cycles}. Train for more than M*(M-1)={self._cycles * (self._cycles - 1)} steps or a "
                "multiple of M, or lower cycles."
            )
            if not trainer.fast_dev_run:
                raise MisconfigurationException(message)
            rank_zero_warn(message + " Going on with fewer snapshots because this is a fast_dev_run.")
        if self._total_steps is not None and self._total_steps != total:
            rank_zero_warn(
                f"SnapshotEnsemble resumes a run planned for {self._total_steps} optimizer steps with {total}: the "
                "cycles move, so snapshots taken so far need not sit at the new cycle ends."
            )
        self._total_steps = total

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After every on_fit_start, LRFinder's included; a resume has restored the optimizer's alpha0 by now.
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                if self._lr is not None:
                    group["initial_lr"] = self._lr
                else:
                    group.setdefault("initial_lr", group["lr"])

    def _cycle_length(self) -> int:
        assert self._total_steps is not None
        return math.ceil(self._total_steps / self._cycles)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Called on every micro-batch, but global_step only moves on an optimizer step, so under gradient
        # accumulation every micro-batch of one step sees the same rate.
        length = self._cycle_length()
        t = trainer.global_step + 1  # the 1-based step the next optimizer.step() will take
        scale = 0.5 * (math.cos(math.pi * ((t - 1) % length) / length) + 1.0)
        for optimizer in trainer.optimizers:
            first = optimizer.param_groups[0]
            for group in optimizer.param_groups:
                if "initial_lr" not in group:  # added since the last step (BackboneFinetuning); before writing group 0
                    # Eq. 2's scale is > 0, so group 0's rate is too unless its alpha0 is 0.
                    ratio = group["lr"] / first["lr"] if first["lr"] > 0 else None
                    group["initial_lr"] = group["lr"] if ratio is None else first["initial_lr"] * ratio
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * scale

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Lightning runs ModelCheckpoint's hooks after every other callback's, so a checkpoint written on a
        # cycle-end step already holds that step's snapshot.
        step = trainer.global_step
        length = self._cycle_length()
        if step <= self._last_snapshot_step or not (step % length == 0 or step == self._total_steps):
            return
        device = self._device or pl_module.device
        state = {name: t.detach().to(device=device, copy=True) for name, t in pl_module.state_dict().items()}
        self._snapshots.append({"cycle": math.ceil(step / length), "step": step, "state_dict": state})
        self._snapshots = self._snapshots[-self._ensemble_size :]
        self._last_snapshot_step = step

    def _ensemble_log_probs(self, trainer: pl.Trainer, pl_module: pl.LightningModule, inputs: Any) -> torch.Tensor:
        """Members' log-probabilities ``(m, ..., C)`` from their logits, without touching the live weights."""
        if self._members_on_device is None:  # once per evaluation epoch, not once per batch
            self._members_on_device = [
                {name: t.to(pl_module.device) for name, t in snapshot["state_dict"].items()}
                for snapshot in self._snapshots
            ]
        members = []
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            for state in self._members_on_device:
                logits = functional_call(pl_module, state, (inputs,))  # (..., C)
                members.append(logits.float().log_softmax(dim=-1))
        return torch.stack(members)  # (m, ..., C)

    def _reset_metrics(self) -> None:
        self._metrics = {}
        self._members_on_device = None

    def _update_metrics(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, dataloader_idx: int
    ) -> None:
        if not self._snapshots or dataloader_idx != 0:
            return
        inputs, targets = split_batch(batch, pl_module)
        if targets is None:
            raise MisconfigurationException(
                "SnapshotEnsemble needs class-index targets to score the ensemble, and core.batches.split_batch found "
                "none in this batch (index 1 of a tuple, a dict's 'target'/'labels'/'y'); define split_batch(batch) "
                "on the module to say where they are."
            )
        members = self._ensemble_log_probs(trainer, pl_module, inputs)
        num_classes = members.shape[-1]
        members = members.reshape(len(self._snapshots), -1, num_classes)  # (m, N, C)
        targets = targets.reshape(-1)  # (N,)
        # log of the mean probability: Jensen makes its NLL no worse than the members' mean NLL
        ensemble = torch.logsumexp(members, dim=0) - math.log(len(self._snapshots))  # (N, C)
        names = ["ensemble", *(f"snapshot_{s['cycle']}" for s in self._snapshots)]
        if not self._metrics:
            self._metrics = {
                name: (
                    MulticlassAccuracy(num_classes, average="micro").to(pl_module.device),
                    MeanMetric().to(pl_module.device),
                )
                for name in names
            }
        for name, log_probs in zip(names, [ensemble, *members], strict=True):
            accuracy, nll = self._metrics[name]
            accuracy.update(log_probs, targets)
            nll.update(-log_probs.gather(1, targets[:, None]).squeeze(1))

    def _log_metrics(self, pl_module: pl.LightningModule, stage: str) -> None:
        # The metrics are not attributes of the module, so Lightning cannot log the objects themselves; compute()
        # syncs them across ranks, which is what logging the objects would do.
        for name, (accuracy, nll) in self._metrics.items():
            pl_module.log(f"{stage}/{name}_acc", accuracy.compute())
            pl_module.log(f"{stage}/{name}_nll", nll.compute())
        self._reset_metrics()

    def _warn_if_empty(self, stage: str) -> None:
        if not self._snapshots:
            rank_zero_warn(
                f"SnapshotEnsemble has no snapshots to {stage}: load a checkpoint of a run that trained with it "
                "(--ckpt_path) or train past the first cycle. No ensemble metrics or predictions are produced."
            )

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_metrics()

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._update_metrics(trainer, pl_module, batch, dataloader_idx)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log_metrics(pl_module, "val")

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._warn_if_empty("test")
        self._reset_metrics()

    @override
    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update_metrics(trainer, pl_module, batch, dataloader_idx)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_metrics(pl_module, "test")

    @override
    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._warn_if_empty("predict with")
        self._predictions, self._members_on_device = [], None

    @override
    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._snapshots or dataloader_idx != 0:
            return
        inputs, _ = split_batch(batch, pl_module)
        members = self._ensemble_log_probs(trainer, pl_module, inputs)  # (m, B, ..., C)
        self._predictions.append(members.exp().mean(dim=0).cpu())  # (B, ..., C)

    @override
    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._predictions:
            return
        folder = trainer.log_dir or trainer.default_root_dir
        name = self._predictions_filename
        if trainer.world_size > 1:
            name = f"rank{trainer.global_rank}-{name}"  # each rank predicted its own shard
        os.makedirs(folder, exist_ok=True)
        torch.save(torch.cat(self._predictions), os.path.join(folder, name))
        self._predictions, self._members_on_device = [], None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "snapshots": self._snapshots,
            "last_snapshot_step": self._last_snapshot_step,
            "total_steps": self._total_steps,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning calls this for fit, validate, test and predict alike when given a ckpt_path, so a checkpoint
        # alone brings the ensemble back.
        self._snapshots = state_dict["snapshots"][-self._ensemble_size :]
        if self._device is not None:
            for snapshot in self._snapshots:
                snapshot["state_dict"] = {name: t.to(self._device) for name, t in snapshot["state_dict"].items()}
        self._last_snapshot_step = state_dict["last_snapshot_step"]
        self._total_steps = state_dict["total_steps"]
