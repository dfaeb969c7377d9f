"""The shared classification losses equal their formulas: focal loss, class weights and distillation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from core.losses import classification_loss, distillation_loss, focal_loss


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g) * 2
    targets = torch.tensor([0, 1, 2, 3, 1, 1])
    soft = torch.softmax(torch.randn(6, 4, generator=g), dim=-1)
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0])
    return logits, targets, soft, weight


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("soft_targets", [False, True])
def test_focal_loss_at_gamma_zero_is_pytorchs_cross_entropy(batch, smoothing, weighted, soft_targets):
    logits, targets, soft, weight = batch
    y = soft if soft_targets else targets
    w = weight if weighted else None
    expected = F.cross_entropy(logits, y, weight=w, label_smoothing=smoothing)
    assert torch.allclose(focal_loss(logits, y, gamma=0.0, weight=w, label_smoothing=smoothing), expected, atol=1e-6)


def test_focal_loss_is_its_formula_on_a_fixed_batch(batch):
    logits, targets, _, weight = batch
    p_true = logits.softmax(-1)[torch.arange(6), targets]
    per_example = -((1 - p_true) ** 2) * p_true.log()
    assert torch.allclose(focal_loss(logits, targets, gamma=2.0), per_example.mean(), atol=1e-6)
    # Class weights: a weighted mean, normalised by the weights of the true classes as PyTorch's cross-entropy.
    w = weight[targets]
    expected = (w * per_example).sum() / w.sum()
    assert torch.allclose(focal_loss(logits, targets, gamma=2.0, weight=weight), expected, atol=1e-6)


def test_focal_loss_down_weights_easy_examples():
    confident = torch.tensor([[6.0, 0.0], [0.0, 0.5]])  # an easy example, then a hard one, both of class 0
    targets = torch.tensor([0, 0])
    per_ce = F.cross_entropy(confident, targets, reduction="none")
    easy_share_ce = per_ce[0] / per_ce.sum()
    easy = focal_loss(confident[:1], targets[:1], gamma=2.0)
    hard = focal_loss(confident[1:], targets[1:], gamma=2.0)
    assert easy / (easy + hard) < easy_share_ce / 100


def test_classification_loss_picks_cross_entropy_or_focal(batch):
    logits, targets, _, weight = batch
    assert torch.equal(classification_loss(logits, targets), F.cross_entropy(logits, targets))
    assert torch.equal(
        classification_loss(logits, targets, gamma=2.0, weight=weight), focal_loss(logits, targets, 2.0, weight)
    )


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_loss_is_t_squared_kl_of_the_softened_distributions(batch, temperature):
    student, _, _, _ = batch
    teacher = torch.randn(6, 4, generator=torch.Generator().manual_seed(1)) * 3
    p_t = (teacher / temperature).softmax(-1)
    log_p_s = (student / temperature).log_softmax(-1)
    kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
    assert torch.allclose(distillation_loss(student, teacher, temperature), temperature**2 * kl, atol=1e-5)
    assert distillation_loss(teacher, teacher, temperature).abs() < 1e-6
