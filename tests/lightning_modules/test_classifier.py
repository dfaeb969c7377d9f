"""The shared task layer through a classifier of a new kind of input: flat feature vectors (``tests/feature_task.py``).

``FeatureClassifier`` is its network and input handling only; everything below is inherited.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import pytest
import torch
from feature_task import FeatureClassifier, IrisData
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer, seed_everything

from recipes.cli import main

FEATURES = ["--model=feature_task.FeatureClassifier", "--data=feature_task.IrisData", "--trainer.logger=false"]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def test_a_new_input_kind_is_a_short_module():
    source = inspect.getsource(FeatureClassifier)
    code = [line for line in source.splitlines() if line.strip() and not line.strip().startswith(("#", '"""'))]
    assert len(source.splitlines()) < 60 and len(code) < 25


@pytest.mark.slow  # a whole recipe run (and W&B's service, where logged): seconds
def test_feature_classifier_learns_iris_and_inherits_metrics_media_and_reload():
    seed_everything(0)
    optimizer = ["--model.optimizer=AdamW", "--model.optimizer.lr=0.02"]
    schedule = ["--model.lr_scheduler=OneCycleLR", "--model.lr_scheduler.max_lr=0.02"]
    fit = main(["fit", *FEATURES, *QUIET, *optimizer, *schedule, "--trainer.max_epochs=30"])
    model = fit.model
    assert (model.num_classes, model.hparams.num_features) == (3, 4)  # filled from the DataModule
    assert model.class_names == ("setosa", "versicolor", "virginica")
    metrics = fit.trainer.callback_metrics
    assert float(metrics["val/acc"]) >= 0.9 and {"val/f1", "train/acc", "train/loss"} <= set(metrics)
    # Optimizer and schedule behaviour: no decay on vectors; one-cycle's run length from the trainer.
    decayed, plain = fit.trainer.optimizers[0].param_groups
    assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"])
    assert all(p.ndim == 2 for p in decayed["params"]) and decayed["weight_decay"] == 0.01
    assert fit.trainer.lr_scheduler_configs[0].scheduler.total_steps == fit.trainer.global_step

    last = fit.trainer.checkpoint_callback.last_model_path
    test = main(["test", *FEATURES, *QUIET, "--ckpt_path", last])
    assert float(test.trainer.callback_metrics["test/acc"]) >= 0.9
    assert list(Path(test.trainer.default_root_dir).rglob("media/test_confusion_matrix.png"))

    reloaded = FeatureClassifier.load_from_checkpoint(last).eval()
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model.eval()(x))
    predict = main(["predict", *FEATURES, *QUIET, "--ckpt_path", last])
    probs = torch.load(Path(predict.trainer.default_root_dir) / "predictions.pt")
    assert probs.shape == (30, 3) and torch.allclose(probs.sum(1), torch.ones(30))


def test_labels_outside_the_classes_stop_with_the_fix():
    model = FeatureClassifier(num_features=4, num_classes=3)
    trainer = Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(MisconfigurationException, match=r"labels must lie in \[0, 2\].*from 1 to 3"):
        trainer.fit(model, datamodule=IrisData(label_offset=1))


def test_non_finite_loss_names_the_step():
    model = FeatureClassifier(num_features=4, num_classes=3, optimizer=functools.partial(torch.optim.SGD, lr=1e6))
    trainer = Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(MisconfigurationException, match=r"train/loss is (nan|inf) at step \d+ \(epoch \d\)"):
        trainer.fit(model, datamodule=IrisData())
