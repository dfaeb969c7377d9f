"""Knowledge distillation (Hinton et al. 2015, https://arxiv.org/abs/1503.02531) for any classifier: the options and
the frozen teacher.

The student's training loss becomes ``alpha * T^2 KL(teacher_T || student_T) + (1 - alpha) * hard``, where ``hard``
is the classifier's own loss on the labels (cross-entropy, with its label smoothing, focal term and class weights)
and ``_T`` marks a softmax at temperature ``T``. The teacher is any classifier checkpoint of this collection (its
class is read from the checkpoint). It is loaded when fitting starts, frozen, kept in eval mode and outside the
student's module tree, so it gets no gradient, is not moved into the optimizer, and is never written into the
student's checkpoint: the student reloads and predicts on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import nn

from core.checkpoints import load_module


@dataclass
class Distillation:
    """Distil a teacher checkpoint into the classifier being trained.

    Args:
        teacher: Path of the teacher's checkpoint, any classifier of this collection with the same classes
            (``runs/vision/digits/version_0/checkpoints/last.ckpt``).
        temperature: Softmax temperature ``T`` of both sides of the soft-target term; Hinton et al. use 2-20.
        alpha: Weight of the soft-target term; ``1 - alpha`` weighs the loss on the labels. 0 trains on the labels
            alone (the teacher is still loaded).
        cache_logits: Keep the teacher's logits of each training input, keyed by its bytes, and reuse them in later
            epochs instead of running the teacher again. For in-memory data without augmentation, where an input
            repeats exactly every epoch; with augmentation the inputs never repeat and the run stops with an error.
    """

    teacher: str
    temperature: float = 4.0
    alpha: float = 0.9
    cache_logits: bool = False

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"distillation temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {self.alpha}")


class Teacher:
    """The frozen teacher of a :class:`Distillation`: loads the checkpoint once and answers with its logits.

    A plain object, not an ``nn.Module`` attribute of the student, so Lightning neither trains, moves, wraps in
    DDP, nor saves it.
    """

    def __init__(self, options: Distillation, num_classes: int) -> None:
        if not os.path.isfile(options.teacher):
            raise MisconfigurationException(
                f"no teacher checkpoint at '{options.teacher}'. Train the teacher first (for vision/digits_distill: "
                "`recipe fit --config vision/digits`) or give its path: --model.init_args.distillation.teacher PATH."
            )
        module = load_module(options.teacher)
        teacher_classes = getattr(module, "num_classes", None)
        if teacher_classes != num_classes:
            raise MisconfigurationException(
                f"the teacher {options.teacher} has {teacher_classes} classes but the student has {num_classes}. "
                "Distil a teacher trained on the same classes."
            )
        self.module: nn.Module = module.eval().requires_grad_(False)
        self.cache: dict[bytes, torch.Tensor] | None = {} if options.cache_logits else None
        self.hits = 0
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> Teacher:
        if device != self.device:  # called every step: moves only when the student has moved
            self.module.to(device)
            self.device = device
        return self

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's logits (B, C) of ``inputs``; from the cache where an input was seen before."""
        self.module.eval()  # in case anything switched it to training mode
        if self.cache is None:
            return self.module(inputs).float()
        if not isinstance(inputs, torch.Tensor):
            raise MisconfigurationException(
                f"cache_logits needs tensor inputs, got {type(inputs).__name__}. Set distillation.cache_logits false."
            )
        keys = [row.numpy().tobytes() for row in inputs.detach().cpu()]
        missing = [i for i, key in enumerate(keys) if key not in self.cache]
        if missing:
            computed = self.module(inputs[missing]).float()  # (M, C)
            for i, row in zip(missing, computed, strict=True):
                self.cache[keys[i]] = row
        self.hits += len(keys) - len(missing)
        return torch.stack([self.cache[key] for key in keys])  # (B, C)

    def check_cache(self, epoch: int) -> None:
        """After a second epoch, a cache that was never hit means the inputs change (augmentation): stop."""
        if self.cache is not None and epoch >= 1 and self.hits == 0:
            raise MisconfigurationException(
                "distillation.cache_logits found no training input twice in two epochs: the inputs are augmented "
                "(or not held in memory). Turn augmentation off or set distillation.cache_logits false."
            )
