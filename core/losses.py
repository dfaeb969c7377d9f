"""Classification losses every classifier shares: cross-entropy, focal loss, class weights and distillation.

* Focal loss (Lin et al. 2017, https://arxiv.org/abs/1708.02002) down-weights examples the model already gets
  right: ``-sum_c w_c y_c (1 - p_c)^gamma log p_c`` for targets ``y`` (one-hot, smoothed or mixed) and class
  weights ``w``. At ``gamma = 0`` it is cross-entropy, with PyTorch's conventions for label smoothing and weights
  (a weighted mean over the batch, normalised by the weights of the true classes). torchvision has only the binary
  (sigmoid) focal loss, so the multi-class one is written here.
* Knowledge distillation (Hinton et al. 2015, https://arxiv.org/abs/1503.02531): ``T^2 KL(softmax(t / T) ||
  softmax(s / T))`` between teacher logits ``t`` and student logits ``s``. The ``T^2`` keeps the soft targets'
  gradients at the scale of the hard-label loss's when the temperature changes, as the paper prescribes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_targets(targets: torch.Tensor, num_classes: int, label_smoothing: float = 0.0) -> torch.Tensor:
    """Class indices (B,) or class distributions (B, C) as distributions (B, C), smoothed towards uniform."""
    if targets.ndim == 1:
        targets = F.one_hot(targets, num_classes).to(torch.float32)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return targets


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float = 2.0,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean focal loss of ``logits`` (B, C) against class indices (B,) or distributions (B, C).

    Args:
        logits: Unnormalised scores (B, C).
        targets: Class indices (B,) or class distributions (B, C) (mixup, CutMix).
        gamma: Focusing exponent; 0 gives cross-entropy, Lin et al. use 2.
        weight: Per-class weights (C,), or ``None`` for 1.
        label_smoothing: Share of each target spread evenly over the classes, in ``[0, 1)``.
    """
    log_p = logits.float().log_softmax(dim=-1)  # (B, C)
    y = soft_targets(targets, logits.shape[-1], label_smoothing)  # (B, C)
    per_class = -y * log_p  # (B, C)
    if gamma:
        per_class = per_class * (1.0 - log_p.exp()).pow(gamma)
    if weight is not None:
        per_class = per_class * weight
    total = per_class.sum()
    if targets.ndim == 1 and weight is not None:
        return total / weight[targets].sum()  # PyTorch's weighted mean for class indices
    return total / len(targets)


def classification_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma: float = 0.0,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy (``gamma`` 0, through PyTorch's fused kernel) or focal loss; arguments as :func:`focal_loss`."""
    if gamma == 0:
        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing)
    return focal_loss(logits, targets, gamma, weight, label_smoothing)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch (both (B, C))."""
    student = (student_logits.float() / temperature).log_softmax(dim=-1)
    teacher = (teacher_logits.float() / temperature).log_softmax(dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2
