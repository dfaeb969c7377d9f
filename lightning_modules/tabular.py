"""Classification and regression over table rows ``(x_num, x_cat)`` with an injected network.

One module for both target kinds, chosen by ``target_kind`` (filled from the DataModule, like the sizes):

* classification: cross-entropy (optionally class-weighted, with label smoothing); accuracy, macro-AUROC and
  macro-F1 per stage; the test confusion matrix as image and table; ``predict`` returns class probabilities
  ``(B, num_classes)``;
* regression: mean squared error on the target standardised with the training split's mean and std (kept as
  buffers in the checkpoint); RMSE, MAE and R2 in the target's own units; ``predict`` returns values ``(B,)`` in
  those units.

A network may return one prediction per row ``(B, out)`` or one per ensemble member ``(B, k, out)`` (TabM): the
loss is the mean of the members' losses and the prediction the mean of their probabilities (classification) or
values (regression), as in the TabM paper (https://arxiv.org/abs/2410.24210).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanMetric, MeanSquaredError, R2Score
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from core import host_sync
from core.examples import ExampleCollector
from core.losses import classification_loss
from core.metrics import log_confusion_matrix, per_stage
from lightning_modules.nets.tabular import TabularMLP
from lightning_modules.task import Task

#: Builds a network from ``(num_continuous, cardinalities, out_features)``; a recipe gives its class and options.
NetFactory = Callable[[int, tuple[int, ...], int], nn.Module]


class TabularModel(Task):
    """A table model for classification or regression; the network comes in by ``class_path``.

    Args:
        net: Network class (with its options): called with ``(num_continuous, cardinalities, out_features)``;
            see :mod:`lightning_modules.nets.tabular` (``TabularMLP``, ``FTTransformer``, ``TabM``).
        num_continuous: Numeric columns after preprocessing; filled from the DataModule.
        cardinalities: Categories per categorical column, the unseen index included; filled from the DataModule.
        target_kind: ``classification`` or ``regression``; filled from the DataModule.
        num_classes: Classes (classification); filled from the DataModule.
        class_names: Class names for the confusion matrix; filled from the DataModule.
        label_smoothing: Label smoothing of the training cross-entropy, in ``[0, 1)``.
        class_weighted: Weight the training cross-entropy by the DataModule's ``class_weights`` (inverse class
            frequency of the training split), the loss counterpart of ``--data.init_args.balance``.
        focal_gamma: Focal loss's exponent for the training loss (Lin et al. 2017; 2 is usual); 0 keeps
            cross-entropy (:mod:`core.losses`, shared with every classifier).
        **kwargs: ``optimizer``, ``lr_scheduler`` and ``scheduler_interval`` of :class:`Task`.
    """

    def __init__(
        self,
        net: NetFactory = TabularMLP,
        num_continuous: int = 0,
        cardinalities: tuple[int, ...] = (),
        target_kind: Literal["classification", "regression"] = "classification",
        num_classes: int | None = None,
        class_names: tuple[str, ...] | None = None,
        label_smoothing: float = 0.0,
        class_weighted: bool = False,
        focal_gamma: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if target_kind not in ("classification", "regression"):
            raise ValueError(f"target_kind must be 'classification' or 'regression', got {target_kind!r}")
        self.classify = target_kind == "classification"
        if self.classify and (num_classes is None or num_classes < 2):
            raise ValueError(f"classification needs num_classes >= 2, got {num_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma}")
        self.focal_gamma = focal_gamma
        self.num_classes, self.label_smoothing, self.class_weighted = num_classes, label_smoothing, class_weighted
        self.class_names = tuple(class_names) if class_names else tuple(map(str, range(num_classes or 0)))
        self.net = net(num_continuous, tuple(cardinalities), num_classes if self.classify else 1)
        # Training-split target statistics (regression) and class weights: filled at fit start, kept in checkpoints.
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))
        self.register_buffer("loss_weights", torch.ones(num_classes or 1))
        if self.classify:
            evaluation = {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "auroc": MulticlassAUROC(num_classes, average="macro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
            }
            train = {"acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False)}
            self.test_confusion = MulticlassConfusionMatrix(num_classes)
            # The first test predictions and misclassified rows (preprocessed numbers and category codes) as tables.
            self.test_examples = ExampleCollector(16)
        else:
            evaluation = {"rmse": MeanSquaredError(squared=False), "mae": MeanAbsoluteError(), "r2": R2Score()}
            train = {"rmse": MeanSquaredError(squared=False)}
        self.train_metrics, self.val_metrics, self.test_metrics = per_stage(evaluation, train)
        # Summed and counted exactly across DDP processes, as Classifier's evaluation loss.
        self.eval_loss = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})
        self.progress_bar_epochs = ("val/loss", "val/acc" if self.classify else "val/rmse")
        # One argument, the (x_num, x_cat) pair: Lightning unpacks a tuple example into positional arguments.
        self.example_input_array = (
            (torch.zeros(2, num_continuous), torch.zeros(2, len(cardinalities), dtype=torch.long)),
        )

    def setup(self, stage: str) -> None:
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage != "fit" or data is None:
            return
        # What the network and loss take from the training split (a checkpoint restored afterwards overrides it).
        if callable(getattr(self.net, "fit_bins", None)) and hasattr(data, "train_continuous"):
            self.net.fit_bins(data.train_continuous)
        standardization = getattr(data, "target_standardization", None)
        if not self.classify and standardization is not None:
            self.target_mean.fill_(standardization[0])
            self.target_std.fill_(standardization[1])
        if self.classify and self.class_weighted:
            weights = getattr(data, "class_weights", None)
            if weights is None:
                raise MisconfigurationException(
                    f"class_weighted needs class_weights from the DataModule, which {type(data).__name__} lacks. "
                    "Set --model.init_args.class_weighted=false."
                )
            self.loss_weights.copy_(weights)

    def members(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The network's raw outputs as ``(B, k, out)``: ``k`` = 1 for a single network."""
        out = self.net(*inputs)
        return out if out.ndim == 3 else out.unsqueeze(1)  # (B, out) -> (B, 1, out)

    def combine(self, members: torch.Tensor) -> torch.Tensor:
        """The ensemble prediction: log of the mean member probability (B, C), or the mean value (B,) in target
        units."""
        if self.classify:
            k = members.shape[1]
            return torch.logsumexp(members.log_softmax(-1), dim=1) - torch.log(torch.tensor(float(k)))  # (B, C)
        return members.mean(dim=1).squeeze(-1) * self.target_std + self.target_mean  # (B,)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Inference: class log-probabilities (B, num_classes) or values (B,) in the target's units."""
        return self.combine(self.members(inputs))

    def loss(self, members: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean of the members' losses: cross-entropy or focal, or squared error on the standardised target."""
        b, k, out = members.shape
        if self.classify:
            return classification_loss(
                members.reshape(b * k, out),  # (B * k, C)
                targets.repeat_interleave(k),
                self.focal_gamma,
                self.loss_weights if self.class_weighted else None,
                self.label_smoothing,
            )
        standardised = ((targets - self.target_mean) / self.target_std).unsqueeze(1)  # (B, 1)
        return F.mse_loss(members.squeeze(-1), standardised.expand(b, k))

    def check_targets(self, targets: torch.Tensor, batch_idx: int) -> None:
        """Refuse class indices outside ``[0, num_classes)`` (on accelerators only each epoch's first batch)."""
        if not self.classify or (batch_idx > 0 and host_sync.reads_are_costly(targets.device)):
            return
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= self.num_classes:
            raise MisconfigurationException(
                f"labels must lie in [0, {self.num_classes - 1}] for num_classes={self.num_classes}, but a batch "
                f"holds labels from {low} to {high}. Let num_classes come from the DataModule."
            )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = self.split_batch(batch)
        self.check_targets(targets, batch_idx)
        members = self.members(inputs)  # (B, k, out)
        loss = self.guard(self.loss(members, targets))
        self.train_metrics.update(self.combine(members.detach()), targets)
        self.log("train/loss", loss, batch_size=len(targets))  # not prog_bar: see Task
        return loss

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self.log_dict(self.train_metrics)

    def evaluation_step(self, batch: Any, batch_idx: int, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Score one validation or test batch; returns ``(prediction, targets)``."""
        inputs, targets = self.split_batch(batch)
        self.check_targets(targets, batch_idx)
        prediction = self(inputs)
        if self.classify:
            loss = F.nll_loss(prediction, targets)  # of the ensemble's mean probability
        else:
            loss = F.mse_loss(
                (prediction - self.target_mean) / self.target_std, (targets - self.target_mean) / self.target_std
            )
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(prediction, targets)
        self.eval_loss[stage].update(loss, weight=len(targets))
        self.log(f"{stage}/loss", self.eval_loss[stage], batch_size=len(targets))
        self.log_dict(metrics, batch_size=len(targets))
        return prediction, targets

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        prediction, targets = self.evaluation_step(batch, batch_idx, "test")
        if self.classify:
            self.test_confusion.update(prediction, targets)
            self.test_examples.update(self.split_batch(batch)[0], prediction, targets)

    def on_test_epoch_end(self) -> None:
        if not self.classify:
            return
        matrix = self.test_confusion.compute()  # (C, C), summed over ranks
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            log_confusion_matrix(self.trainer, "test/confusion_matrix", matrix, self.class_names)
            self.test_examples.log(self.trainer, "test", self.class_names)
        self.test_confusion.reset()
        self.test_examples.reset()

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, _ = self.split_batch(batch)
        prediction = self(inputs)
        return prediction.exp() if self.classify else prediction  # (B, C) probabilities or (B,) values
