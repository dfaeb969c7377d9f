"""Image classification: one LightningModule for any classification network.

Techniques: label smoothing (Szegedy et al. 2016, https://arxiv.org/abs/1512.00567), mixup (Zhang et al. 2018,
https://arxiv.org/abs/1710.09412) and CutMix (Yun et al. 2019, https://arxiv.org/abs/1905.04899) from
``torchvision.transforms.v2``, AdamW without weight decay on biases and norm parameters (Loshchilov & Hutter 2019),
and run-length-aware schedulers such as one-cycle (Smith & Topin 2018) that get ``total_steps`` from the trainer.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)
from torchvision.transforms import v2

from core.media import log_figure
from lightning_modules.nets import CompactResNet, adapt_classifier


def _wants_total_steps(factory) -> bool:
    """Whether a scheduler factory leaves ``total_steps`` (one-cycle's run length) unset for us to fill."""
    keywords = getattr(factory, "keywords", None) or {}
    if "total_steps" in keywords:  # the CLI's factories bind every argument, unset ones as None
        return keywords["total_steps"] is None
    try:
        parameter = inspect.signature(factory).parameters.get("total_steps")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is None


class ImageClassifier(LightningModule):
    """Classify images with an injected network.

    Args:
        net: The network, ``(B, C, H, W) -> (B, num_classes)`` logits. Any torchvision classification model works
            (``torchvision.models.resnet18`` with ``weights: IMAGENET1K_V1`` for transfer learning): its head and stem
            are resized to ``num_classes`` / ``in_channels`` when they differ. Default: ``CompactResNet``.
        num_classes: Number of classes; linked from the DataModule by the ``recipe`` command.
        in_channels: Image channels; linked from the DataModule.
        image_size: Image side in pixels; linked from the DataModule, used for the model summary's example input.
        optimizer: Optimizer factory; biases and norm parameters get no weight decay.
        lr_scheduler: Optional scheduler factory. A ``total_steps`` left unset (one-cycle) is filled from the trainer.
        scheduler_interval: Step the scheduler every optimizer ``step`` or every ``epoch``.
        label_smoothing: Label smoothing of the cross-entropy, in ``[0, 1)``.
        mixup_alpha: Beta(alpha, alpha) for mixup; 0 turns it off.
        cutmix_alpha: Beta(alpha, alpha) for CutMix; 0 turns it off. With both on, each batch picks one at random.
        channels_last: Run the network in channels-last memory format (faster convolutions on CPUs and tensor cores).
        class_names: Names for the confusion matrix axes; indices are used when not given.
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        channels_last: bool = False,
        class_names: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha} and {cutmix_alpha}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Attribute 'net' is an instance of `nn.Module`")
            self.save_hyperparameters(logger=False)
        if isinstance(self.hparams.get("net"), nn.Module):
            # Built in Python rather than from a config (where ``net`` is its class_path): the module's weights are
            # in the state dict already, so pass ``net=`` again to ``load_from_checkpoint`` instead of pickling it.
            self.remove_ignored_hparams(["net"])
        net = net if net is not None else CompactResNet(in_channels=in_channels, num_classes=num_classes)
        self.net = adapt_classifier(net, num_classes=num_classes, in_channels=in_channels)
        head = [name for name, m in self.net.named_modules() if isinstance(m, nn.Linear)][-1]
        self._head = head.split(".")[0]
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.example_input_array = torch.zeros(2, in_channels, image_size, image_size)

        mixers = [
            m(alpha=a, num_classes=num_classes) for m, a in ((v2.MixUp, mixup_alpha), (v2.CutMix, cutmix_alpha)) if a
        ]
        self.mix = v2.RandomChoice(mixers) if mixers else None

        # Training tracks accuracy only: macro-F1 and top-5 on every step would cost more than they tell.
        # Per-step input validation is skipped here (labels are range-checked in the step already): it costs more
        # than the update itself for a small network.
        self.train_metrics = MetricCollection(
            {"acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False)}, prefix="train/"
        )
        eval_metrics = {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        }
        if num_classes > 5:
            eval_metrics["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        self.val_metrics = MetricCollection(eval_metrics, prefix="val/")
        self.test_metrics = self.val_metrics.clone(prefix="test/")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    @property
    def backbone(self) -> nn.Module:
        """The network without its classifier head: what ``BackboneFinetuning`` freezes and later unfreezes."""
        return nn.ModuleList(m for name, m in self.net.named_children() if name != self._head)

    def setup(self, stage: str) -> None:
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def _check_targets(self, y: torch.Tensor, batch_idx: int) -> None:
        # Checking costs a host sync on accelerators, so there only the first batch of an epoch is checked;
        # on CPU every batch is.
        if y.device.type != "cpu" and batch_idx > 0:
            return
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= self.hparams.num_classes:
            raise MisconfigurationException(
                f"labels must lie in [0, {self.hparams.num_classes - 1}] for num_classes={self.hparams.num_classes}, "
                f"but a batch holds labels from {low} to {high}. Fix the dataset's labels or let num_classes come "
                "from the DataModule."
            )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        self._check_targets(y, batch_idx)
        target = y
        if self.mix is not None:
            x, target = self.mix(x, y)  # soft targets (B, num_classes)
        logits = self(x)
        loss = F.cross_entropy(logits, target, label_smoothing=self.hparams.label_smoothing)
        if not torch.isfinite(loss):
            raise MisconfigurationException(
                f"train/loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}). Lower the "
                "learning rate, add gradient clipping (--trainer.gradient_clip_val=1.0) or train in 32-bit precision; "
                "checkpoints written so far are intact."
            )
        self.train_metrics.update(logits.detach(), y)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(y))
        return loss

    def on_train_epoch_end(self) -> None:
        # Logged once per epoch (Lightning computes and resets them): a per-step log_dict costs ~0.4 ms a step,
        # a tenth of the step time of a small network on CPU.
        self.log_dict(self.train_metrics)

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, stage: str) -> torch.Tensor:
        x, y = batch
        self._check_targets(y, batch_idx)
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(logits, y)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True)
        self.log_dict(metrics, prog_bar=stage == "val")
        return logits

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        logits = self._eval_step(batch, batch_idx, "test")
        self.test_confusion.update(logits, batch[1])

    def on_test_epoch_end(self) -> None:
        matrix = self.test_confusion.compute()  # (num_classes, num_classes), summed over ranks
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            names = self.hparams.class_names or tuple(str(i) for i in range(self.hparams.num_classes))
            figure, _ = self.test_confusion.plot(matrix.cpu(), labels=list(names))
            rows = [
                [names[t], names[p], int(matrix[t, p])]
                for t in range(len(names))
                for p in range(len(names))
                if matrix[t, p] > 0
            ]
            log_figure(self.trainer, "test/confusion_matrix", figure, table=(("actual", "predicted", "count"), rows))
        self.test_confusion.reset()

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor] | torch.Tensor, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(dim=-1)  # (B, num_classes) class probabilities

    def configure_optimizers(self):
        # nanoGPT's rule: weight decay on matrices and kernels only, never on biases or norm scales.
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim < 2]
        optimizer = self.optimizer([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
        if self.lr_scheduler is None:
            return optimizer
        fill = (
            {"total_steps": int(self.trainer.estimated_stepping_batches)}
            if _wants_total_steps(self.lr_scheduler)
            else {}
        )
        scheduler = self.lr_scheduler(optimizer, **fill)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval},
        }
