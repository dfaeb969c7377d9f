"""ImageFolderDataModule: small sets decoded once into memory at the files' own size, and checkpoints that carry the
preprocessing, so test and predict need no train/ folder and never recompute it from other images."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fake_data import write_image_folder
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from PIL import Image
from torch.utils.data import Subset

from datamodules import image_folder
from datamodules.image_folder import ImageFolderDataModule
from datamodules.in_memory import TensorBatches
from lightning_modules.nets import ConvNet
from lightning_modules.vision import ImageClassifier
from recipes.cli import main

CLASSES = ("cat", "dog", "fox")


def _module(root, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(data_dir=str(root), **{"batch_size": 8, "num_workers": 0, **kwargs})


def _eval_batches(dm: ImageFolderDataModule, split: str) -> torch.Tensor:
    dm.trainer = None
    loader = getattr(dm, f"{split}_dataloader")()
    return torch.cat([dm.on_after_batch_transfer(batch, 0)[0] for batch in loader])


def test_image_size_follows_the_files(tmp_path):
    write_image_folder(tmp_path, per_class=4, side=12, mode="L")
    dm = _module(tmp_path)
    assert (dm.image_size, dm.in_channels, dm.num_classes) == (12, 1, 3)
    dm.setup("fit")
    images, _ = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert images.shape == (8, 1, 12, 12) and images.dtype == torch.float32


def test_files_of_different_sizes_ask_for_an_image_size(tmp_path):
    write_image_folder(tmp_path, classes=("cat",), per_class=3, side=12)
    write_image_folder(tmp_path, classes=("dog",), per_class=3, side=20)
    with pytest.raises(MisconfigurationException, match="image_size") as err:
        _ = _module(tmp_path).image_size
    assert "12x12" in str(err.value) and "20x20" in str(err.value)
    dm = _module(tmp_path, image_size=16)
    dm.setup("fit")
    assert dm.splits["train"].images.shape[1:] == (3, 16, 16)  # every image resized and cropped to the side


def test_a_small_set_is_decoded_once(tmp_path, monkeypatch):
    write_image_folder(tmp_path, per_class=10, side=8)  # 30 files: 24 train, 6 validation
    decoded = []
    convert = Image.Image.convert
    monkeypatch.setattr(Image.Image, "convert", lambda image, *a, **k: decoded.append(1) or convert(image, *a, **k))
    dm = _module(tmp_path)
    dm.setup("fit")
    train, val = dm.splits["train"], dm.splits["val"]
    assert isinstance(train, TensorBatches) and train.images.dtype == torch.uint8
    assert (len(train), len(val)) == (24, 6)
    after_setup = len(decoded)
    assert after_setup <= 30 + 24  # every file once, and the statistics sample
    for _ in range(3):  # epochs
        assert sum(len(labels) for _, labels in dm.train_dataloader()) == 24
        assert sum(len(labels) for _, labels in dm.val_dataloader()) == 6
    assert len(decoded) == after_setup


def test_in_memory_by_default_below_the_budget_only(tmp_path, monkeypatch):
    write_image_folder(tmp_path, per_class=4, side=8)
    dm = _module(tmp_path)
    dm.setup("fit")
    assert isinstance(dm.splits["train"], TensorBatches)
    monkeypatch.setattr(image_folder, "MEMORY_BUDGET", 8 * 8 * 3 * 5)  # five images' pixels
    dm = _module(tmp_path)
    dm.setup("fit")
    assert isinstance(dm.splits["train"], Subset)


def test_memory_and_files_give_the_same_evaluation_batches(tmp_path):
    write_image_folder(tmp_path, per_class=6, side=10, splits=("train", "val", "test"))
    memory, from_files = _module(tmp_path, in_memory=True), _module(tmp_path, in_memory=False)
    for dm in (memory, from_files):
        dm.setup("fit")
        dm.setup("test")
    assert memory.normalization == from_files.normalization
    for split in ("val", "test"):
        assert torch.allclose(_eval_batches(memory, split), _eval_batches(from_files, split), atol=1e-5)


def test_decoded_training_batches_are_augmented_on_the_device(tmp_path):
    write_image_folder(tmp_path, per_class=20, side=16)
    dm = _module(tmp_path, batch_size=48)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    plain, _ = dm.on_after_batch_transfer(batch, 0)
    dm.trainer = SimpleNamespace(training=True)
    torch.manual_seed(0)
    augmented, labels = dm.on_after_batch_transfer(batch, 0)
    assert augmented.shape == plain.shape and torch.equal(labels, batch[1])
    assert (augmented != plain).flatten(1).any(dim=1).float().mean() > 0.5  # most images shifted or flipped
    dm.hparams.augment = False
    assert torch.equal(dm.on_after_batch_transfer(batch, 0)[0], plain)


# ---- checkpoints ----------------------------------------------------------------------------------------------------


def _trainer(root) -> Trainer:
    return Trainer(
        default_root_dir=root,
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _model() -> ImageClassifier:
    return ImageClassifier(net=ConvNet(in_channels=3, num_classes=3, widths=(8,)), num_classes=3, image_size=8)


NET = ["--model.net=lightning_modules.nets.ConvNet", "--model.net.widths=[8]"]
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.fixture
def trained(tmp_path):
    """A folder with train/ and test/, and the last checkpoint of one epoch of ``recipe fit`` on it."""
    write_image_folder(tmp_path / "a", per_class=12, side=8, splits=("train", "test"))
    model, data = "--model=lightning_modules.vision.ImageClassifier", "--data=datamodules.vision.ImageFolderDataModule"
    fit = main(["fit", model, *NET, data, f"--data.data_dir={tmp_path / 'a'}", "--trainer.max_epochs=1", *QUIET])
    return tmp_path / "a", fit.trainer.checkpoint_callback.last_model_path


def _test(root, ckpt: str, **kwargs) -> tuple[dict[str, float], ImageFolderDataModule]:
    dm = _module(root, **kwargs)
    trainer = _trainer(root.parent / "test_run")
    trainer.test(_model(), datamodule=dm, ckpt_path=ckpt, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}, dm


def test_checkpoint_carries_the_preprocessing(trained):
    _, ckpt = trained
    state = torch.load(ckpt, weights_only=False)["ImageFolderDataModule"]
    assert state["class_names"] == CLASSES and state["mode"] == "RGB" and state["image_size"] == 8
    model = torch.load(ckpt, weights_only=False)["state_dict"]
    assert model["input_mean"].shape == model["input_std"].shape == (1, 3, 1, 1)
    assert model["input_std"].min() < 1.0  # set from the training images, not the identity


def test_test_from_a_checkpoint_needs_no_train_folder(trained, tmp_path):
    data, ckpt = trained
    reference, _ = _test(data, ckpt)
    shutil.copytree(data / "test", tmp_path / "b" / "test")
    metrics, dm = _test(tmp_path / "b", ckpt, class_names=CLASSES)
    assert metrics == pytest.approx(reference, abs=1e-6)
    assert dm.mean is None  # no statistics recomputed: the model's checkpoint holds them


def test_test_uses_the_checkpoint_statistics_not_the_train_folder_at_hand(trained, tmp_path):
    data, ckpt = trained
    reference, _ = _test(data, ckpt)
    shutil.copytree(data, tmp_path / "c")
    for path in (tmp_path / "c" / "train").rglob("*.png"):  # other training images: other statistics
        Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    metrics, dm = _test(tmp_path / "c", ckpt)
    assert metrics == pytest.approx(reference, abs=1e-6)
    assert dm.mean is None  # no statistics recomputed: the model's checkpoint holds them


def test_class_names_that_contradict_the_checkpoint_are_an_error(trained):
    data, ckpt = trained
    with pytest.raises(MisconfigurationException, match="trained on the classes"):
        _test(data, ckpt, class_names=("dog", "cat", "fox"))


def test_without_train_folder_the_values_come_from_class_names_and_the_files(tmp_path):
    write_image_folder(tmp_path, per_class=2, side=10, mode="L", splits=("test",))
    with pytest.raises(MisconfigurationException, match="class_names"):
        _ = _module(tmp_path).num_classes
    dm = _module(tmp_path, class_names=CLASSES)
    assert (dm.num_classes, dm.class_names, dm.in_channels, dm.image_size) == (3, CLASSES, 1, 10)
    dm.setup("test")
    images, labels = next(iter(dm.test_dataloader()))  # the statistics are the model's: test/ alone is enough
    assert images.shape == (6, 1, 10, 10) and labels.tolist() == [0, 0, 1, 1, 2, 2] and dm.mean is None


def test_recipe_predict_reads_unlabelled_files_with_the_checkpoint(trained, tmp_path):
    _, ckpt = trained
    images = write_image_folder(tmp_path / "src", per_class=2, side=8)  # six images, copied without class folders
    predict = tmp_path / "new" / "predict"
    predict.mkdir(parents=True)
    for i, path in enumerate(sorted((images / "train").rglob("*.png"))):
        shutil.copy(path, predict / f"img{i}.png")
    args = [
        "predict",
        "--model=lightning_modules.vision.ImageClassifier",
        *NET,
        "--data=datamodules.vision.ImageFolderDataModule",
        f"--data.data_dir={tmp_path / 'new'}",
        "--data.init_args.class_names=[cat, dog, fox]",
        *QUIET,
        f"--ckpt_path={ckpt}",
    ]
    cli = main(args)
    probs = torch.load(cli.trainer.default_root_dir + "/predictions.pt")
    assert probs.shape == (6, 3) and torch.allclose(probs.sum(dim=1), torch.ones(6))
    assert [p.rsplit("/", 1)[-1] for p in cli.datamodule.predict_files] == sorted(f"img{i}.png" for i in range(6))
