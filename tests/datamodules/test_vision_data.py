"""Digits, MNIST and CIFAR-10 DataModules read from tiny files in each dataset's real on-disk format."""

from __future__ import annotations

import os
import pickle
import re
from types import SimpleNamespace
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
import torchvision.datasets.mnist
from fake_data import write_cifar10, write_mnist
from lightning.fabric.utilities.exceptions import MisconfigurationException

from datamodules.vision import CIFAR10DataModule, DigitsDataModule, MNISTDataModule


@pytest.fixture
def no_network(monkeypatch):
    """Make torchvision's downloads fail as they do offline, and count the attempts."""
    calls = []

    def refuse(url, *args, **kwargs):
        calls.append(url)
        raise URLError("network disabled in tests")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", refuse)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", refuse)
    return calls


# Digits -------------------------------------------------------------------------------------------------------------


def test_digits_sizes_and_pixel_range():
    dm = DigitsDataModule()
    dm.setup("fit")
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 1, 8)
    for split in ("train", "val", "test"):
        images = dm.splits[split].images
        assert images.shape[1:] == (1, 8, 8)
        assert images.min() >= 0.0 and images.max() <= 1.0
    assert dm.splits["train"].images.max() == 1.0  # scaled from 0-16, not left in raw units
    assert set(dm.splits["test"].labels.tolist()) == set(range(10))


def test_digits_test_split_is_disjoint_from_train_and_val():
    from sklearn.datasets import load_digits

    dm = DigitsDataModule(test_fraction=0.25)
    dm.setup("fit")

    def rows(split: str) -> list[bytes]:
        return [image.numpy().tobytes() for image in dm.splits[split].images]

    fit, test = rows("train") + rows("val"), rows("test")
    assert set(fit).isdisjoint(test)  # the 1,797 digits images are all distinct, so this compares indices
    full = load_digits().images.astype(np.float32) / 16.0
    assert sorted(fit + test) == sorted(image[None].tobytes() for image in full)  # a partition: nothing lost
    assert abs(len(test) - 0.25 * len(full)) <= 1  # scikit-learn rounds the test share up


def _rows(images: torch.Tensor) -> list[bytes]:
    return [image.numpy().tobytes() for image in images]


def test_digits_labelled_fraction_keeps_a_stratified_share_and_leaves_val_and_test_alone():
    full, semi = DigitsDataModule(), DigitsDataModule(labelled_fraction=0.1)
    full.setup("fit")
    semi.setup("fit")
    labelled, pool = semi.splits["train"], semi.unlabelled
    per_class = torch.bincount(full.splits["train"].labels, minlength=10)
    assert torch.bincount(labelled.labels, minlength=10).tolist() == [round(0.1 * n) for n in per_class.tolist()]
    # Labelled + pool is the whole training split, nothing more: validation and test are the same tensors.
    assert sorted(_rows(labelled.images) + _rows(pool.images)) == sorted(_rows(full.splits["train"].images))
    for split in ("val", "test"):
        assert torch.equal(semi.splits[split].images, full.splits[split].images)
        assert torch.equal(semi.splits[split].labels, full.splits[split].labels)
    assert (pool.labels == -1).all()  # the pool's labels are held back
    assert semi.normalization == full.normalization  # from every training image, labelled or not
    assert semi.class_weights.shape == (10,)  # of the labelled images the model trains on first
    # Seeded: the same draw again, another one with another seed.
    again, other = DigitsDataModule(labelled_fraction=0.1), DigitsDataModule(labelled_fraction=0.1, seed=1)
    again.setup("fit")
    other.setup("fit")
    assert torch.equal(again.splits["train"].images, labelled.images)
    assert not torch.equal(other.splits["train"].images[: len(labelled)], labelled.images)


def test_digits_tiny_labelled_fraction_keeps_every_class():
    dm = DigitsDataModule(labelled_fraction=0.001)  # round(0.001 * 115) is 0: one image of each class stays labelled
    dm.setup("fit")
    assert torch.bincount(dm.splits["train"].labels, minlength=10).tolist() == [1] * 10


def test_digits_pseudo_labels_join_the_next_training_loader_and_the_checkpoint_state():
    dm = DigitsDataModule(labelled_fraction=0.1, batch_size=4096)  # one batch: the whole training set
    dm.setup("fit")
    assert dm.state_dict() == {} and dm.pseudo_label_accuracy() is None
    order = torch.cat([images for images, _ in dm.unlabelled_dataloader()])
    assert torch.equal(order, dm.unlabelled.images)  # positions index the unlabelled loader's fixed order
    indices, labels = torch.tensor([5, 0, 17]), torch.tensor([3, 3, 9])
    dm.set_pseudo_labels(indices, labels)
    images, targets = next(iter(dm.train_dataloader()))  # shuffled
    assert len(targets) == len(dm.splits["train"]) + 3
    served = dict(zip(_rows(images), targets.tolist(), strict=True))
    expected = dict(zip(_rows(dm.splits["train"].images), dm.splits["train"].labels.tolist(), strict=True))
    expected.update(zip(_rows(dm.unlabelled.images[indices]), labels.tolist(), strict=True))
    assert served == expected  # the labelled images with their labels, the three pool images with theirs
    state = dm.state_dict()
    restored = DigitsDataModule(labelled_fraction=0.1)
    restored.load_state_dict(state)  # before setup, as `recipe test --ckpt_path` restores: waits for the fit restore
    assert not restored.splits
    restored.setup("fit")
    restored.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(restored.pseudo_labels, (indices, labels), strict=True))
    assert 0.0 <= dm.pseudo_label_accuracy() <= 1.0
    dm.set_pseudo_labels(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))  # cleared
    assert len(next(iter(dm.train_dataloader()))[1]) == len(dm.splits["train"])


@pytest.mark.parametrize(
    ("indices", "labels", "message"),
    [
        ([0, 1], [0], "1-D indices and labels of one length"),
        ([0, 0], [1, 1], "with repeats"),
        ([-1], [1], "distinct positions"),
        ([10_000], [1], "distinct positions"),
        ([0], [10], "outside the 10 classes"),
        ([0], [0.9], "must be integers"),
    ],
)
def test_digits_bad_pseudo_labels_are_refused(indices, labels, message):
    dm = DigitsDataModule(labelled_fraction=0.1)
    dm.setup("fit")
    with pytest.raises(MisconfigurationException, match=message):
        dm.set_pseudo_labels(torch.tensor(indices), torch.tensor(labels))


def test_digits_without_a_pool_or_with_another_pool_say_how_to_fix_it():
    full = DigitsDataModule()
    full.setup("fit")
    for call in (full.unlabelled_dataloader, lambda: full.set_pseudo_labels(torch.tensor([0]), torch.tensor([0]))):
        with pytest.raises(MisconfigurationException, match="labelled_fraction below 1"):
            call()
    semi = DigitsDataModule(labelled_fraction=0.1)
    semi.setup("fit")
    semi.set_pseudo_labels(torch.tensor([0]), torch.tensor([0]))
    other = DigitsDataModule(labelled_fraction=0.5)
    other.setup("fit")
    with pytest.raises(MisconfigurationException, match="resume with the labelled_fraction"):
        other.load_state_dict(semi.state_dict())
    full.trainer = SimpleNamespace(state=SimpleNamespace(fn="test"))  # testing a pseudo-labelled run's checkpoint
    full.load_state_dict(semi.state_dict())  # with the fully labelled recipe: nothing to restore, nothing refused
    with pytest.raises(ValueError, match="labelled_fraction must be in"):
        DigitsDataModule(labelled_fraction=0.0)


# MNIST --------------------------------------------------------------------------------------------------------------


def test_mnist_reads_idx_files_and_uses_the_official_test_split(tmp_path, no_network):
    write_mnist(tmp_path, n_train=200, n_test=40)
    dm = MNISTDataModule(data_dir=str(tmp_path), val_fraction=0.1)
    dm.prepare_data()  # the files are there: nothing to download
    assert no_network == []
    dm.setup("fit")
    train, val, test = dm.splits["train"], dm.splits["val"], dm.splits["test"]
    assert (len(train), len(val), len(test)) == (180, 20, 40)
    for split in (train, val, test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (1, 28, 28)
    raw = tmp_path / "MNIST" / "raw"
    test_labels = np.frombuffer((raw / "t10k-labels-idx1-ubyte").read_bytes()[8:], dtype=np.uint8)
    test_images = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes()[16:], dtype=np.uint8)
    assert test.labels.tolist() == test_labels.tolist()
    assert torch.equal(test.images, torch.from_numpy(test_images.reshape(40, 1, 28, 28).copy()))


def test_mnist_missing_files_name_the_path_and_the_option(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(MisconfigurationException) as err:
        dm.setup("fit")
    assert os.path.join(str(tmp_path / "nowhere"), "MNIST", "raw") in str(err.value)
    assert "data_dir" in str(err.value)


def test_mnist_labels_out_of_range_are_an_error(tmp_path):
    write_mnist(tmp_path, n_train=50, n_test=10, label_offset=5)
    dm = MNISTDataModule(data_dir=str(tmp_path))
    with pytest.raises(MisconfigurationException, match=re.escape("outside [0, 9]")):
        dm.setup("fit")


def test_mnist_truncated_file_is_reported_as_corrupt(tmp_path, no_network):
    write_mnist(tmp_path, n_train=50, n_test=10)
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    dm = MNISTDataModule(data_dir=str(tmp_path))
    with pytest.raises(MisconfigurationException, match="corrupt") as err:
        dm.prepare_data()
        dm.setup("fit")
    assert "not found" not in str(err.value) and "downloading it failed" not in str(err.value)
    assert no_network == []


def test_mnist_failed_download_says_what_to_do(tmp_path, no_network):
    dm = MNISTDataModule(data_dir=str(tmp_path))
    with pytest.raises(MisconfigurationException) as err:
        dm.prepare_data()
    message = str(err.value)
    assert "downloading it failed" in message and "network disabled in tests" in message
    assert os.path.join(str(tmp_path), "MNIST", "raw") in message and "--data.data_dir" in message
    assert no_network  # the download was attempted, and refused


# CIFAR-10 -----------------------------------------------------------------------------------------------------------


def _pickled(folder, name: str) -> dict:
    with open(folder / name, "rb") as f:
        return pickle.load(f, encoding="latin1")


def test_cifar10_reads_the_pickled_batches_in_order(tmp_path, no_network):
    write_cifar10(tmp_path, n_per_batch=30, n_test=40)
    folder = tmp_path / "cifar-10-batches-py"
    dm = CIFAR10DataModule(data_dir=str(tmp_path), pin_memory=False)
    dm.prepare_data()  # the batches are there (their checksums are not the release's): nothing to download
    assert no_network == []

    images, labels = dm.load_split(train=True)
    entries = [_pickled(folder, f"data_batch_{i}") for i in range(1, 6)]
    assert images.shape == (150, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [label for entry in entries for label in entry["labels"]]
    expected = np.concatenate([entry["data"] for entry in entries]).reshape(150, 3, 32, 32)
    assert torch.equal(images, torch.from_numpy(expected))

    dm.setup("fit")
    test = _pickled(folder, "test_batch")
    assert dm.splits["test"].labels.tolist() == test["labels"]
    assert dm.splits["test"].images.shape == (40, 3, 32, 32)
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 150
    assert dm.num_classes == 10 and dm.class_names[0] == "airplane"


def test_cifar10_normalisation_is_per_channel_from_the_training_split(tmp_path):
    write_cifar10(tmp_path, n_per_batch=20, n_test=10)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_fraction=0.5, pin_memory=False)
    dm.setup("fit")
    train = dm.splits["train"].images.float() / 255
    mean, std = (torch.tensor(s) for s in dm.normalization)
    assert mean.shape == (3,)
    assert torch.allclose(mean, train.mean(dim=(0, 2, 3)), atol=1e-6)
    assert torch.allclose(std, train.std(dim=(0, 2, 3)), atol=1e-6)
    both = torch.cat([train, dm.splits["val"].images.float() / 255])
    assert not torch.allclose(mean, both.mean(dim=(0, 2, 3)), atol=1e-4)


def test_cifar10_missing_batch_names_the_file(tmp_path):
    write_cifar10(tmp_path, n_per_batch=10, n_test=10)
    missing = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    missing.unlink()
    dm = CIFAR10DataModule(data_dir=str(tmp_path))
    with pytest.raises(MisconfigurationException, match=re.escape(str(missing))) as err:
        dm.setup("fit")
    assert "--data.data_dir" in str(err.value)


def test_cifar10_truncated_pickle_names_the_file(tmp_path):
    write_cifar10(tmp_path, n_per_batch=10, n_test=10)
    corrupt = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])
    dm = CIFAR10DataModule(data_dir=str(tmp_path))
    with pytest.raises(MisconfigurationException, match=re.escape(str(corrupt))) as err:
        dm.setup("fit")
    assert "corrupt" in str(err.value)


def test_cifar10_batch_of_the_wrong_structure_names_the_file(tmp_path):
    write_cifar10(tmp_path, n_per_batch=10, n_test=10)
    wrong = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    wrong.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(MisconfigurationException, match=re.escape(str(wrong))):
        CIFAR10DataModule(data_dir=str(tmp_path)).setup("fit")


def test_cifar10_failed_download_says_what_to_do(tmp_path, no_network):
    dm = CIFAR10DataModule(data_dir=str(tmp_path))
    with pytest.raises(MisconfigurationException) as err:
        dm.prepare_data()
    message = str(err.value)
    assert "downloading it failed" in message and "network disabled in tests" in message
    assert os.path.join(str(tmp_path), "cifar-10-batches-py") in message and "--data.data_dir" in message
    assert len(no_network) == 1


@pytest.mark.parametrize("cls", [DigitsDataModule, MNISTDataModule, CIFAR10DataModule], ids=lambda c: c.__name__)
def test_every_in_memory_datamodule_keeps_all_base_options(cls):
    import inspect

    from datamodules.in_memory import InMemoryImageDataModule

    base = set(inspect.signature(InMemoryImageDataModule.__init__).parameters) - {"self"}
    assert base <= set(cls().hparams), f"{cls.__name__} drops {sorted(base - set(cls().hparams))}"
    assert base <= set(inspect.signature(cls.__init__).parameters)  # and the CLI can set each of them
