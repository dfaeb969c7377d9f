"""Classification over any input: the step, loss, metrics, media and prediction output every classifier shares.

A classifier of a new kind of input (images, clips, texts, table rows, graphs) subclasses :class:`Classifier`
and brings its network and, where needed, its input handling (``forward``, :meth:`Classifier.training_batch`
for batch-level augmentation such as mixup). It inherits:

* cross-entropy with label smoothing (Szegedy et al. 2016, https://arxiv.org/abs/1512.00567) on logits
  ``(B, num_classes)`` and class-index or soft targets, or focal loss (``focal_gamma``), optionally weighted by the
  DataModule's per-class ``class_weights`` (:mod:`core.losses`);
* knowledge distillation from a teacher checkpoint (``distillation``, :mod:`lightning_modules.distillation`);
* accuracy (train) and accuracy, macro-F1 and top-5 (val/test) as per-stage torchmetrics collections;
* labels checked against ``num_classes`` with one clear message, on every batch on CPU and on the first batch of
  each epoch on accelerators (a check reads the labels on the host);
* the non-finite-loss stop, optimizer groups and schedules of :class:`lightning_modules.task.Task`;
* the test confusion matrix as an image and a table, the first test predictions as a table and the first
  misclassified test inputs as images, clips or texts (:mod:`core.examples`), to every logger and the run's
  ``media/`` folder;
* ``predict_step`` returning class probabilities ``(B, num_classes)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from core import host_sync
from core.examples import ExampleCollector
from core.losses import classification_loss, distillation_loss
from core.metrics import log_confusion_matrix, per_stage
from lightning_modules.distillation import Distillation, Teacher
from lightning_modules.task import Task


class Classifier(Task):
    """Single-label classification with ``num_classes`` classes; subclasses set the network.

    Args:
        num_classes: Number of classes; filled from the DataModule by the ``recipe`` command.
        class_names: Names for the confusion matrix axes, in index order; indices are used when not given.
        label_smoothing: Label smoothing of the training cross-entropy, in ``[0, 1)``.
        focal_gamma: Focal loss's focusing exponent (Lin et al. 2017; 2 is usual) for the training loss; 0 keeps
            cross-entropy.
        class_weighted: Weight the training loss by the DataModule's ``class_weights`` (per-class ``N / (C *
            count)`` of the training split, scikit-learn's "balanced"), for imbalanced classes.
        distillation: Learn from a teacher checkpoint as well as from the labels (Hinton et al. 2015); see
            :class:`lightning_modules.distillation.Distillation`.
        **kwargs: ``optimizer``, ``lr_scheduler`` and ``scheduler_interval`` of :class:`Task`.

    Validation and test losses stay the plain cross-entropy whatever the training loss, so runs compare.
    """

    progress_bar_epochs = ("val/loss", "val/acc")
    #: Test examples shown beside the confusion matrix: this many first predictions (``test/predictions``) and
    #: misclassified inputs (``test/misclassified``); a subclass sets 0 to show none.
    media_examples = 16

    def __init__(
        self,
        num_classes: int = 2,
        class_names: tuple[str, ...] | None = None,
        label_smoothing: float = 0.0,
        focal_gamma: float = 0.0,
        class_weighted: bool = False,
        distillation: Distillation | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        self.num_classes = num_classes
        self.class_names = tuple(class_names) if class_names is not None else tuple(map(str, range(num_classes)))
        if focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma}")
        self.label_smoothing = label_smoothing
        self.focal_gamma = focal_gamma
        self.class_weighted = class_weighted
        self.distillation = distillation
        self.teacher: Teacher | None = None  # loaded when fitting starts; never a submodule (see Teacher)
        # Not persistent: taken from the DataModule whenever fitting starts, and absent from older checkpoints.
        self.register_buffer("loss_weights", torch.ones(num_classes), persistent=False)
        evaluation = {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        }
        if num_classes > 5:
            evaluation["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        # Training tracks accuracy only, without per-step input validation (labels are range-checked already):
        # macro-F1 and validation would cost more than the update of a small network.
        train = {"acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False)}
        self.train_metrics, self.val_metrics, self.test_metrics = per_stage(evaluation, train)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.test_examples = ExampleCollector(self.media_examples)
        # The evaluation loss as a metric: summed and counted exactly across DDP processes (a sync_dist mean of a
        # logged tensor weights the processes by integer-averaged sample counts, biased when the slices differ).
        self.eval_loss = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})

    def setup(self, stage: str) -> None:
        # In setup, not on_fit_start: callbacks' on_fit_start (an LR range test) already trains.
        if stage != "fit":
            return
        if self.class_weighted:
            datamodule = self.trainer.datamodule if self._trainer is not None else None
            weights = getattr(datamodule, "class_weights", None)
            if weights is None:
                raise MisconfigurationException(
                    f"class_weighted needs the DataModule's class_weights, which {type(datamodule).__name__} does not "
                    "give. Set --model.init_args.class_weighted=false, or use --data.init_args.balance where offered."
                )
            self.loss_weights.copy_(torch.as_tensor(weights, dtype=torch.float32))
        if self.distillation is not None and self.teacher is None:
            self.teacher = Teacher(self.distillation, self.num_classes)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss on the labels: cross-entropy or focal, label-smoothed and class-weighted as configured."""
        weight = self.loss_weights if self.class_weighted else None
        return classification_loss(logits, targets, self.focal_gamma, weight, self.label_smoothing)

    def training_loss(self, inputs: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """:meth:`loss`, mixed with the distillation term when a teacher is set."""
        hard = self.loss(logits, targets)
        if self.teacher is None:
            return hard
        options = self.distillation
        soft = distillation_loss(logits, self.teacher.to(logits.device).logits(inputs), options.temperature)
        if self._trainer is not None and self.trainer.training:  # also callable outside a loop, as the tests do
            self.log("train/soft_loss", soft, batch_size=len(logits))
        return options.alpha * soft + (1.0 - options.alpha) * hard

    def training_batch(self, inputs: Any, targets: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """Inputs and loss targets of a training batch: override for batch-level augmentation (mixup's soft
        targets ``(B, num_classes)``). Metrics always use the original class indices."""
        return inputs, targets

    def check_targets(self, targets: torch.Tensor, batch_idx: int) -> None:
        """Refuse class indices outside ``[0, num_classes)`` with the fix."""
        # Reading the labels costs a host sync on accelerators: there only each epoch's first batch is checked.
        if batch_idx > 0 and host_sync.reads_are_costly(targets.device):
            return
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= self.num_classes:
            raise MisconfigurationException(
                f"labels must lie in [0, {self.num_classes - 1}] for num_classes={self.num_classes}, but a batch "
                f"holds labels from {low} to {high}. Fix the dataset's labels or let num_classes come from the "
                "DataModule."
            )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = self.split_batch(batch)
        self.check_targets(targets, batch_idx)
        inputs, loss_targets = self.training_batch(inputs, targets)
        logits = self(inputs)  # (B, num_classes)
        loss = self.guard(self.training_loss(inputs, logits, loss_targets))
        self.train_metrics.update(logits.detach(), targets)
        # Not prog_bar: Lightning reads progress-bar values to the host every step. The recipe's progress bar shows
        # ``progress_bar_steps`` (train/loss) instead, read every step on CPU and every 50 on accelerators.
        self.log("train/loss", loss, batch_size=len(targets))
        return loss

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        # Logged once per epoch (Lightning computes and resets them): a per-step log_dict costs ~0.4 ms a step,
        # a tenth of the step time of a small network on CPU.
        self.log_dict(self.train_metrics)
        if self.teacher is not None:
            self.teacher.check_cache(self.current_epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # The student reloads on its own: its checkpoint neither holds the teacher nor asks for it.
        if checkpoint.get("hyper_parameters", {}).get("distillation") is not None:
            checkpoint["hyper_parameters"]["distillation"] = None

    def evaluation_step(self, batch: Any, batch_idx: int, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Score one validation or test batch; returns ``(logits, targets)``."""
        inputs, targets = self.split_batch(batch)
        self.check_targets(targets, batch_idx)
        logits = self(inputs)
        loss = F.cross_entropy(logits, targets)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(logits, targets)
        self.eval_loss[stage].update(loss, weight=len(targets))
        self.log(f"{stage}/loss", self.eval_loss[stage], batch_size=len(targets))
        self.log_dict(metrics, batch_size=len(targets))  # not prog_bar: see Task.progress_bar_epochs
        return logits, targets

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        logits, targets = self.evaluation_step(batch, batch_idx, "test")
        self.test_confusion.update(logits, targets)
        self.test_examples.update(self.split_batch(batch)[0], logits, targets)

    def on_test_epoch_end(self) -> None:
        matrix = self.test_confusion.compute()  # (num_classes, num_classes), summed over ranks
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            log_confusion_matrix(self.trainer, "test/confusion_matrix", matrix, self.class_names)
            # Waveforms need their rate (an audio module's ``sample_rate``), token ids the DataModule's ``decode``.
            decode = getattr(self.trainer.datamodule, "decode", None)
            self.test_examples.log(self.trainer, "test", self.class_names, getattr(self, "sample_rate", None), decode)
        self.test_confusion.reset()
        self.test_examples.reset()

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, _ = self.split_batch(batch)
        return self(inputs).softmax(dim=-1)  # (B, num_classes) class probabilities
