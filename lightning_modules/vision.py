"""Image classification: one LightningModule for any classification network.

Techniques: label smoothing (Szegedy et al. 2016, https://arxiv.org/abs/1512.00567), mixup (Zhang et al. 2018,
https://arxiv.org/abs/1710.09412) and CutMix (Yun et al. 2019, https://arxiv.org/abs/1905.04899) from
``torchvision.transforms.v2``, AdamW without weight decay on biases and norm parameters (Loshchilov & Hutter 2019),
and run-length-aware schedulers such as one-cycle (Smith & Topin 2018) that get ``total_steps`` from the trainer.
What is not about images (the step, metrics, media, optimizer, errors) lives in
:class:`lightning_modules.classifier.Classifier`.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchvision.transforms import v2

from lightning_modules.classifier import Classifier
from lightning_modules.distillation import Distillation
from lightning_modules.nets import CompactResNet, adapt_classifier

#: Stage widths of the default network (see ``net``).
DEFAULT_WIDTHS = (32, 64, 128)


class ImageClassifier(Classifier):
    """Classify images with an injected network.

    Args:
        net: The network, ``(B, C, H, W) -> (B, num_classes)`` logits. Any torchvision classification model works
            (``torchvision.models.resnet18`` with ``weights: IMAGENET1K_V1`` for transfer learning): its head and stem
            are resized to ``num_classes`` / ``in_channels`` when they differ. Default: ``CompactResNet`` with the
            widths of the digits recipe, ``(32, 64, 128)``: a quarter of its own default's compute, which trains a
            folder of 6,000 small images for 8 epochs in under two minutes on two CPU cores.
        num_classes: Number of classes; filled from the DataModule by the ``recipe`` command.
        in_channels: Image channels; filled from the DataModule.
        image_size: Image side in pixels; filled from the DataModule, used for the model summary's example input.
        optimizer: Optimizer factory; biases and norm parameters get no weight decay.
        lr_scheduler: Optional scheduler factory. A ``total_steps`` left unset (one-cycle) is filled from the trainer.
        scheduler_interval: Step the scheduler every optimizer ``step`` or every ``epoch``.
        label_smoothing: Label smoothing of the cross-entropy, in ``[0, 1)``.
        focal_gamma: Focal loss's exponent for the training loss (2 is usual); 0 keeps cross-entropy.
        class_weighted: Weight the training loss by the DataModule's ``class_weights``, for imbalanced classes.
        distillation: Learn from a teacher checkpoint too (``teacher``, ``temperature``, ``alpha``); see
            :class:`lightning_modules.distillation.Distillation`.
        mixup_alpha: Beta(alpha, alpha) for mixup; 0 turns it off.
        cutmix_alpha: Beta(alpha, alpha) for CutMix; 0 turns it off. With both on, each batch picks one at random.
        channels_last: Run the network in channels-last memory format (faster convolutions on CPUs and tensor cores).
        class_names: Names for the confusion matrix axes; indices are used when not given.

    Input normalisation belongs to the model: ``forward`` takes images as the DataModule yields them (uint8, or
    floats in ``[0, 1]``) and subtracts ``input_mean`` / divides by ``input_std``, buffers that travel in every
    checkpoint. At the start of ``fit`` they are taken from the DataModule's ``normalization`` property (per-channel
    ``(mean, std)`` of the training split) when it has one, so ``ImageClassifier.load_from_checkpoint(path)`` applied
    to raw images gives the probabilities ``recipe predict`` gives.
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
        focal_gamma: float = 0.0,
        class_weighted: bool = False,
        distillation: Distillation | None = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        channels_last: bool = False,
        class_names: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            class_names=class_names,
            label_smoothing=label_smoothing,
            focal_gamma=focal_gamma,
            class_weighted=class_weighted,
            distillation=distillation,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            scheduler_interval=scheduler_interval,
        )
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha} and {cutmix_alpha}")
        net = net if net is not None else CompactResNet(in_channels, num_classes, widths=DEFAULT_WIDTHS)
        self.net = adapt_classifier(net, num_classes=num_classes, in_channels=in_channels)
        head = [name for name, m in self.net.named_modules() if isinstance(m, nn.Linear)][-1]
        self._head = head.split(".")[0]
        self.channels_last = channels_last
        self.register_buffer("input_mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("input_std", torch.ones(1, in_channels, 1, 1))
        self.example_input_array = torch.zeros(2, in_channels, image_size, image_size)
        mixers = [
            m(alpha=a, num_classes=num_classes) for m, a in ((v2.MixUp, mixup_alpha), (v2.CutMix, cutmix_alpha)) if a
        ]
        self.mix = v2.RandomChoice(mixers) if mixers else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        x = (x - self.input_mean) / self.input_std  # (B, C, H, W)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    @property
    def backbone(self) -> nn.Module:
        """The network without its classifier head: what ``BackboneFinetuning`` freezes and later unfreezes."""
        return nn.ModuleList(m for name, m in self.net.named_children() if name != self._head)

    def set_normalization(self, mean, std) -> None:
        """Set the per-channel input statistics ``forward`` normalises with (sequences of ``in_channels`` floats)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if mean.shape != self.input_mean.shape or std.shape != self.input_std.shape:
            raise ValueError(
                f"normalization statistics for {mean.shape[1]} channels given to a model of "
                f"{self.input_mean.shape[1]} input channels"
            )
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp_min(1e-6))

    def setup(self, stage: str) -> None:
        # In setup, not on_fit_start: callbacks' on_fit_start (an LR range test) already runs the model. The
        # DataModule's setup, which computes the training split's statistics, has run by now.
        super().setup(stage)
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        stats = getattr(datamodule, "normalization", None) if stage == "fit" else None
        if stats is not None:
            self.set_normalization(*stats)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def training_batch(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mix is None:
            return inputs, targets
        return self.mix(inputs, targets)  # soft targets (B, num_classes)
