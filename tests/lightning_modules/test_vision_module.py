"""ImageClassifier: the numbers its techniques must produce and the errors bad batches must raise."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import BackboneFinetuning
from torch import nn
from torchvision.models import resnet18

import core.metrics
from datamodules.vision import DigitsDataModule
from lightning_modules.nets import CompactResNet
from lightning_modules.vision import ImageClassifier


def tiny_net(num_classes: int = 10) -> nn.Module:
    # No batch norm, so a forward pass in train mode is a pure function of the input.
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, num_classes))


def batch(n: int = 16, classes: int = 10):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, classes, (n,), generator=generator)


def trainer(**kwargs) -> Trainer:
    defaults = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return Trainer(accelerator="cpu", **{**defaults, **kwargs})


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_training_loss_is_label_smoothed_cross_entropy(smoothing):
    model = ImageClassifier(net=tiny_net(), num_classes=10, in_channels=1, image_size=8, label_smoothing=smoothing)
    x, y = batch()
    loss = model.training_step((x, y), 0)
    log_p = F.log_softmax(model(x), dim=1)
    # Szegedy et al.: the target is (1 - s) on the label plus s spread evenly over all classes.
    expected = (1 - smoothing) * F.nll_loss(log_p, y) - smoothing * log_p.mean(dim=1).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixup_and_cutmix_train_on_mixed_soft_targets(mixup, cutmix):
    model = ImageClassifier(
        net=tiny_net(), num_classes=10, in_channels=1, image_size=8, mixup_alpha=mixup, cutmix_alpha=cutmix
    )
    x, y = batch()
    torch.manual_seed(3)
    loss = model.training_step((x, y), 0)
    torch.manual_seed(3)
    mixed_x, soft = model.mix(x, y)
    assert soft.shape == (16, 10) and torch.allclose(soft.sum(dim=1), torch.ones(16))
    assert not torch.equal(mixed_x, x)
    assert float(loss) == pytest.approx(float(F.cross_entropy(model(mixed_x), soft)), rel=1e-6)


def test_no_mixing_by_default():
    assert ImageClassifier(net=tiny_net(), in_channels=1, image_size=8).mix is None


@pytest.mark.parametrize("bad", [10, -1])
def test_labels_outside_num_classes_raise_a_clear_error(bad):
    model = ImageClassifier(net=tiny_net(), num_classes=10, in_channels=1, image_size=8)
    x, y = batch()
    y[3] = bad
    with pytest.raises(MisconfigurationException, match=r"labels must lie in \[0, 9\]"):
        model.training_step((x, y), 0)
    with pytest.raises(MisconfigurationException, match="num_classes=10"):
        model.validation_step((x, y), 0)


def test_nan_loss_raises_with_the_fix():
    model = ImageClassifier(net=tiny_net(), num_classes=10, in_channels=1, image_size=8)
    x, y = batch()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(MisconfigurationException, match="train/loss is nan.*Lower the learning rate"):
        model.training_step((x, y), 0)


@pytest.mark.parametrize(("classes", "has_top5"), [(3, False), (5, False), (6, True), (10, True)])
def test_top5_only_when_more_than_five_classes(classes, has_top5):
    model = ImageClassifier(net=tiny_net(classes), num_classes=classes, in_channels=1, image_size=8)
    assert ("val/top5" in model.val_metrics.keys(keep_base=False)) == has_top5
    assert {"val/acc", "val/f1"} <= set(model.val_metrics.keys(keep_base=False))
    assert set(model.test_metrics.keys(keep_base=False)) == {
        k.replace("val/", "test/") for k in model.val_metrics.keys(keep_base=False)
    }


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="num_classes"):
        ImageClassifier(num_classes=1)
    with pytest.raises(ValueError, match="label_smoothing"):
        ImageClassifier(label_smoothing=1.0)
    with pytest.raises(ValueError, match="class_names"):
        ImageClassifier(num_classes=3, class_names=("a", "b"))


def test_no_weight_decay_on_biases_and_norms_and_one_cycle_gets_the_run_length():
    model = ImageClassifier(
        net=CompactResNet(in_channels=1, widths=(8,), stem_width=8),
        in_channels=1,
        image_size=8,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1),
        lr_scheduler=functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=1e-2),
    )
    data = DigitsDataModule(batch_size=256)
    fit = trainer(max_epochs=2, limit_val_batches=0)
    fit.fit(model, datamodule=data)
    optimizer = fit.optimizers[0]
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.ndim >= 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    scheduler = fit.lr_scheduler_configs[0]
    assert scheduler.interval == "step"
    assert scheduler.scheduler.total_steps == fit.estimated_stepping_batches == fit.global_step


def test_torchvision_model_is_fitted_to_the_data():
    model = ImageClassifier(net=resnet18(weights=None), num_classes=4, in_channels=1, image_size=32)
    assert model.net.fc.out_features == 4 and model.net.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    backbone_params = {id(p) for p in model.backbone.parameters()}
    assert not {id(p) for p in model.net.fc.parameters()} & backbone_params
    assert len(backbone_params) == len(list(model.net.parameters())) - 2  # all but the head's weight and bias


def test_backbone_finetuning_freezes_then_unfreezes_the_backbone():
    class Snapshot(Callback):
        def __init__(self):
            self.stem = []

        def on_train_epoch_end(self, trainer, pl_module):
            self.stem.append(pl_module.net.stem[0].weight.detach().clone())

    torch.manual_seed(0)
    model = ImageClassifier(net=CompactResNet(1, 10, widths=(16,), stem_width=8), in_channels=1, image_size=8)
    initial = model.net.stem[0].weight.detach().clone()
    snapshot = Snapshot()
    fit = trainer(
        max_epochs=2, limit_val_batches=0, callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=1), snapshot]
    )
    fit.fit(model, datamodule=DigitsDataModule(batch_size=128))
    assert torch.equal(snapshot.stem[0], initial)  # frozen during epoch 0
    assert not torch.equal(snapshot.stem[1], initial)  # trained once unfrozen
    assert len(fit.optimizers[0].param_groups) > 2  # the backbone joined as its own group


def test_confusion_matrix_counts_every_test_image(monkeypatch):
    logged = {}

    def capture(trainer, key, figure, table=None):
        logged[key] = table

    monkeypatch.setattr(core.metrics, "log_figure", capture)
    torch.manual_seed(0)
    model = ImageClassifier(net=CompactResNet(1, 10, widths=(16,), stem_width=8), in_channels=1, image_size=8)
    data = DigitsDataModule(eval_batch_size=50)
    results = trainer().test(model, datamodule=data)[0]
    columns, rows = logged["test/confusion_matrix"]
    assert tuple(columns) == ("actual", "predicted", "count")
    assert sum(count for _, _, count in rows) == len(data.splits["test"]) == 360
    correct = sum(count for actual, predicted, count in rows if actual == predicted)
    assert correct / 360 == pytest.approx(results["test/acc"], abs=1e-6)  # the matrix's diagonal is the accuracy
