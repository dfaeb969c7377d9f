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
    mean, std = dm.normalization
    assert len(mean) == len(std) == channels
    assert 0.0 <= images.min() and images.max() <= 1.0  # pixels in [0, 1]: the model standardises


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
    mean, std = (torch.tensor(s) for s in dm.normalization)

    def pixels(indices: list[int]) -> torch.Tensor:
        arrays = [np.asarray(Image.open(samples[i][0]).convert("RGB")) for i in indices]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255  # (N, C, H, W)

    train = pixels(dm.splits["train"].indices)
    assert torch.allclose(mean, train.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(std, train.std(dim=(0, 2, 3)), atol=1e-5)
    everything = pixels(list(range(len(samples))))
    assert not torch.allclose(mean, everything.mean(dim=(0, 2, 3)), atol=1e-4)


def test_statistics_standardise_the_unaugmented_training_images(tmp_path):
    write_image_folder(tmp_path, per_class=6, side=SIDE)
    dm = _module(tmp_path, val_fraction=0.5, eval_batch_size=100)
    dm.setup("fit")
    mean, std = (torch.tensor(s).view(1, -1, 1, 1) for s in dm.normalization)
    # What SWA's BatchNorm pass reads: every training image once, in order, never augmented.
    plain, _ = next(iter(dm.unaugmented_train_dataloader()))
    again, _ = next(iter(dm.unaugmented_train_dataloader()))
    assert len(plain) == len(dm.splits["train"]) and torch.equal(plain, again)
    standardised = (plain - mean) / std
    assert standardised.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (standardised.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-4
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


def test_swa_batchnorm_statistics_come_from_the_unaugmented_files(tmp_path):
    from lightning.pytorch import Trainer, seed_everything
    from torch.optim.swa_utils import update_bn

    from callbacks import SWA
    from lightning_modules.nets import CompactResNet
    from lightning_modules.vision import ImageClassifier

    seed_everything(0)
    write_image_folder(tmp_path, per_class=6, side=SIDE)
    dm = _module(tmp_path, crop_scale=0.1, batch_size=6)  # strong crops: augmented statistics would differ

    def model() -> ImageClassifier:
        net = CompactResNet(in_channels=3, num_classes=3, widths=(8,), stem_width=8)
        return ImageClassifier(net=net, num_classes=3, in_channels=3, image_size=SIDE)

    trained, swa = model(), SWA(swa_start=1, swa_lr=0.05)
    # No validation: the statistics are computed at train end, while the trainer (and the files' transforms) train.
    trainer = Trainer(max_epochs=2, limit_val_batches=0, callbacks=[swa], logger=False, enable_checkpointing=False)
    trainer.fit(trained, datamodule=dm)

    reference = model()
    reference.load_state_dict({**reference.state_dict(), **swa.average}, strict=True)
    reference.set_normalization(*dm.normalization)
    update_bn((x for x, _ in dm.unaugmented_train_dataloader()), reference)
    bn, ref_bn = trained.net.stem[1], reference.net.stem[1]
    torch.testing.assert_close(bn.running_var, ref_bn.running_var, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bn.running_mean, ref_bn.running_mean, atol=1e-5, rtol=1e-4)
