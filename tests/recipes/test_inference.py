"""A trained model used outside the trainer: the checkpoint alone reproduces ``recipe predict``, offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pretrained_net
import pytest
import torch
from PIL import Image

from lightning_modules.vision import ImageClassifier
from recipes.cli import main

QUICK = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false"]
NO_LOGGER = ["--trainer.logger=false"]


def _predictions(cli) -> torch.Tensor:
    return torch.load(Path(cli.trainer.default_root_dir) / "predictions.pt")


def test_a_reloaded_model_on_raw_digits_gives_the_probabilities_of_recipe_predict():
    fit = main(["fit", "--config", "vision/digits", *QUICK, *NO_LOGGER])
    ckpt = fit.trainer.checkpoint_callback.last_model_path
    predicted = _predictions(main(["predict", "--config", "vision/digits", *NO_LOGGER, "--ckpt_path", ckpt]))

    model = ImageClassifier.load_from_checkpoint(ckpt).eval()
    assert not torch.equal(model.input_std, torch.ones_like(model.input_std))  # the training split's statistics
    raw, _ = fit.datamodule.load_split(train=False)  # the test split as scikit-learn gives it, in [0, 1]
    with torch.no_grad():
        probs = model(raw).softmax(dim=1)
    assert torch.allclose(probs, predicted, atol=1e-5)


def test_a_reloaded_model_on_image_files_gives_the_probabilities_of_recipe_predict(fake_data_root):
    data = ["--data=datamodules.vision.ImageFolderDataModule", f"--data.data_dir={fake_data_root}"]
    model = ["--model=lightning_modules.vision.ImageClassifier"]
    fit = main(["fit", *model, *data, *QUICK, *NO_LOGGER])
    ckpt = fit.trainer.checkpoint_callback.last_model_path
    predict = main(["predict", *model, *data, *NO_LOGGER, "--ckpt_path", ckpt])
    files = predict.datamodule.predict_files  # test/ when there is no predict/ folder, in row order

    reloaded = ImageClassifier.load_from_checkpoint(ckpt).eval()
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in files])  # (N, H, W, C) uint8
    with torch.no_grad():
        probs = reloaded(torch.from_numpy(pixels).permute(0, 3, 1, 2)).softmax(dim=1)
    assert torch.allclose(probs, _predictions(predict), atol=1e-5)


@pytest.fixture
def offline(monkeypatch):
    def cut_off() -> None:
        monkeypatch.setattr(pretrained_net, "NETWORK", False)

    return cut_off


def test_a_pretrained_network_reloads_without_network_access(fake_data_root, offline):
    args = [
        "--model=lightning_modules.vision.ImageClassifier",
        "--model.net=pretrained_net.PretrainedNet",
        "--model.net.init_args.weights=FAKE_V1",
        "--data=datamodules.vision.ImageFolderDataModule",
        f"--data.data_dir={fake_data_root}",
        *NO_LOGGER,
    ]
    fetches = pretrained_net.FETCHES
    fit = main(["fit", *args, *QUICK])
    assert pretrained_net.FETCHES == fetches + 1  # the run starts from the pretrained weights
    ckpt = fit.trainer.checkpoint_callback.last_model_path
    reference = float(main(["test", *args, "--ckpt_path", ckpt]).trainer.callback_metrics["test/acc"])

    offline()
    reloaded = ImageClassifier.load_from_checkpoint(ckpt).eval()  # hyperparameters still name the network
    batch = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded(batch), fit.model.eval()(batch))
    test = main(["test", *args, "--ckpt_path", ckpt])  # the recipe's weights argument is dropped for a checkpoint
    assert float(test.trainer.callback_metrics["test/acc"]) == reference
    with pytest.raises(ConnectionError):  # the stand-in does stand for a download
        pretrained_net.PretrainedNet(weights="FAKE_V1")
