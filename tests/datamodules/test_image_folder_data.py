"""ImageFolderDataModule on tiny PNG folders read from the files each epoch: channels, classes, splits, statistics,
balance and bad files. The decoded, in-memory path and checkpoints are in test_image_folder_memory.py."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from fake_data import write_image_folder
from lightning.fabric.utilities.exceptions import MisconfigurationException
from PIL import Image

from datamodules.image_folder import ImageFolderDataModule

SIDE = 24


def _module(root, **kwargs) -> ImageFolderDataModule:
    kwargs = {"image_size": SIDE, "batch_size": 4, "num_workers": 0, "in_memory": False, **kwargs}
    return ImageFolderDataModule(data_dir=str(root), **kwargs)


@pytest.mark.parametrize("mode, channels", [("RGB", 3), ("L", 1)])
def test_channels_follow_the_files(tmp_path, mode, channels):
    write_image_folder(tmp_path, per_class=4, side=SIDE, mode=mode)
    dm = _module(tmp_path)
    assert dm.in_channels == channels
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, channels, SIDE, SIDE) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert len(dm.mean) == len(dm.std) == channels


def test_classes_come_from_the_train_folders(tmp_path):
    write_image_folder(tmp_path, classes=("dog", "cat", "fox"), per_class=3, side=SIDE)
    dm = _module(tmp_path)
    assert dm.class_names == ("cat", "dog", "fox") and dm.num_classes == 3
    dm.setup("fit")
    train = dm.splits["train"].dataset
    assert train.class_to_idx == {"cat": 0, "dog": 1, "fox": 2}
    assert all(path.split("/")[-2] == train.classes[target] for path, target in train.samples)


def test_without_val_folder_a_seeded_stratified_split_is_used(tmp_path):
    write_image_folder(tmp_path, per_class=8, side=SIDE)

    def split(seed: int) -> tuple[list[int], list[int], list[int]]:
        dm = _module(tmp_path, seed=seed, val_fraction=0.25)
        dm.setup("fit")
        targets = dm.splits["train"].dataset.targets
        val = dm.splits["val"].indices
        return dm.splits["train"].indices, val, [targets[i] for i in val]

    train, val, val_targets = split(0)
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(24))
    assert np.bincount(val_targets).tolist() == [2, 2, 2]  # 25% of each class
    assert split(0)[1] == val
    assert split(1)[1] != val


def test_test_stage_without_a_test_folder_is_an_error(tmp_path):
    write_image_folder(tmp_path, per_class=4, side=SIDE)
    with pytest.raises(MisconfigurationException, match="test/ laid out like train/") as err:
        _module(tmp_path).setup("test")  # never the validation images in its place
    assert "recipe validate" in str(err.value)

    write_image_folder(tmp_path / "with_test", per_class=4, side=SIDE, splits=("train", "test"))
    dm = _module(tmp_path / "with_test")
    dm.setup("test")
    assert len(dm.test_dataloader().dataset) == 12 and "val" not in dm.splits


def test_val_folder_with_fewer_classes_keeps_the_train_indices(tmp_path):
    write_image_folder(tmp_path, classes=("cat", "dog", "fox"), per_class=4, side=SIDE)
    write_image_folder(tmp_path, classes=("fox",), per_class=3, side=SIDE, splits=("val",))
    dm = _module(tmp_path)
    dm.setup("fit")
    val = dm.splits["val"]
    assert val.class_to_idx == {"cat": 0, "dog": 1, "fox": 2}
    assert val.targets == [2, 2, 2]
    assert len(dm.splits["train"]) == 12  # with val/ present, all of train/ trains


def test_val_folder_with_an_unknown_class_is_an_error(tmp_path):
    write_image_folder(tmp_path, classes=("cat", "dog"), per_class=3, side=SIDE)
    write_image_folder(tmp_path, classes=("cat", "wolf"), per_class=2, side=SIDE, splits=("val",))
    with pytest.raises(MisconfigurationException, match="wolf"):
        _module(tmp_path).setup("fit")


def test_missing_data_dir_is_an_error(tmp_path):
    with pytest.raises(MisconfigurationException, match="does not exist") as err:
        _ = _module(tmp_path / "nowhere").num_classes
    assert "--data.data_dir" in str(err.value)


def test_data_dir_without_train_folder_is_an_error(tmp_path):
    write_image_folder(tmp_path, per_class=2, side=SIDE, splits=("val",))
    with pytest.raises(MisconfigurationException, match="has no train/ folder") as err:
        _module(tmp_path).setup("fit")
    assert "--data.data_dir" in str(err.value)


def test_a_single_class_is_an_error(tmp_path):
    write_image_folder(tmp_path, classes=("cat",), per_class=2, side=SIDE)
    with pytest.raises(MisconfigurationException, match="at least two classes"):
        _ = _module(tmp_path).num_classes


def test_corrupt_image_among_the_first_files_fails_the_scan(tmp_path):
    write_image_folder(tmp_path, classes=("cat", "dog"), per_class=4, side=SIDE)
    bad = tmp_path / "train" / "cat" / "0.png"
    bad.write_bytes(b"definitely not a png" * 10)
    with pytest.raises(MisconfigurationException, match=re.escape(str(bad))):
        _ = _module(tmp_path).in_channels


def test_corrupt_training_image_fails_setup(tmp_path):
    write_image_folder(tmp_path, classes=("cat", "dog"), per_class=6, side=SIDE)
    bad = tmp_path / "train" / "cat" / "5.png"  # not among the three files per class that the scan opens
    bad.write_bytes(bad.read_bytes()[:40])  # a truncated PNG: the header reads, the pixels do not
    dm = _module(tmp_path)
    assert dm.num_classes == 2
    with pytest.raises(MisconfigurationException, match=re.escape(str(bad))):
        dm.setup("fit")  # the statistics read every training image


def test_corrupt_image_fails_when_the_dataset_loads_it(tmp_path):
    write_image_folder(tmp_path, classes=("cat", "dog"), per_class=3, side=SIDE, splits=("train", "val"))
    bad = tmp_path / "val" / "dog" / "4.png"
    bad.write_bytes(b"\x00garbage" * 20)
    dm = _module(tmp_path)
    dm.setup("fit")
    val = dm.splits["val"]
    index = [path for path, _ in val.samples].index(str(bad))
    val[0]  # a good file still loads
    with pytest.raises(MisconfigurationException, match=re.escape(str(bad))):
        val[index]


def test_normalisation_statistics_come_from_the_training_images_only(tmp_path):
    write_image_folder(tmp_path, per_class=6, side=SIDE)
    dm = _module(tmp_path, val_fraction=0.5)
    dm.setup("fit")
    samples = dm.splits["train"].dataset.samples

    def pixels(indices: list[int]) -> torch.Tensor:
        arrays = [np.asarray(Image.open(samples[i][0]).convert("RGB")) for i in indices]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255  # (N, C, H, W)

    train = pixels(dm.splits["train"].indices)
    assert torch.allclose(torch.tensor(dm.mean), train.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(torch.tensor(dm.std), train.std(dim=(0, 2, 3)), atol=1e-5)
    everything = pixels(list(range(len(samples))))
    assert not torch.allclose(torch.tensor(dm.mean), everything.mean(dim=(0, 2, 3)), atol=1e-4)


def test_eval_transform_standardises_training_images_and_is_deterministic(tmp_path):
    write_image_folder(tmp_path, per_class=6, side=SIDE)
    dm = _module(tmp_path, val_fraction=0.5, eval_batch_size=100)
    dm.setup("fit")
    # Evaluation uses the training statistics, so the training images (seen without augmentation) are standardised.
    plain = _module(tmp_path, val_fraction=0.5, augment=False, eval_batch_size=100)
    plain.setup("fit")
    train = torch.stack([plain.splits["train"][i][0] for i in range(len(plain.splits["train"]))])
    assert train.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (train.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-4
    first, _ = next(iter(dm.val_dataloader()))
    again, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(first, again)


def _imbalanced(root) -> None:
    write_image_folder(root, classes=("common", "rare"), per_class=20, side=SIDE)
    for path in sorted((root / "train" / "rare").iterdir())[4:]:
        path.unlink()  # 20 common, 4 rare


def _rare_share(dm: ImageFolderDataModule) -> float:
    sampler = dm.train_dataloader().sampler
    train = dm.splits["train"]
    drawn = [train.dataset.targets[train.indices[i]] for _ in range(100) for i in sampler]
    return float(np.mean(drawn))


def test_balance_draws_classes_uniformly(tmp_path):
    _imbalanced(tmp_path)
    dm = _module(tmp_path, balance=True, val_fraction=0.25)
    dm.setup("fit")
    torch.manual_seed(0)  # the sampler draws from the global generator, which Lightning's seed_everything sets
    assert abs(_rare_share(dm) - 0.5) < 0.05


def test_without_balance_the_imbalance_stays(tmp_path):
    _imbalanced(tmp_path)
    dm = _module(tmp_path, balance=False, val_fraction=0.25)
    dm.setup("fit")
    assert abs(_rare_share(dm) - 3 / 18) < 0.01  # 15 common and 3 rare images train
