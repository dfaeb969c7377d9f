"""Resuming replays the data: epoch k of a run resumed from last.ckpt reads the batches of epoch k of an uninterrupted
run, in the same order, and the global seed (``--seed_everything``) changes the order unless ``shuffle_seed`` pins
it. Shuffling is on throughout; augmentation is off, so equal batches mean equal samples."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F
from fake_data import write_image_folder
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules.image_folder import ImageFolderDataModule
from datamodules.vision import DigitsDataModule


class Recorder(LightningModule):
    """Learns nothing; records each training batch as the pixel sums of its images, per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 3)
        self.seen: dict[int, list[list[float]]] = defaultdict(list)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen[self.current_epoch].append(x.flatten(1).sum(dim=1).tolist())
        return F.cross_entropy(self.layer(x.flatten(1).mean(dim=1, keepdim=True)), y % 3)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(dm, root, max_epochs: int, ckpt_path: str | None = None) -> Recorder:
    model = Recorder()
    trainer = Trainer(
        default_root_dir=root,
        max_epochs=max_epochs,
        accelerator="cpu",
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=root, save_last=True)],
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model


def _digits(balance: bool):
    return lambda root: DigitsDataModule(batch_size=128, translate=0, balance=balance)


def _folder(in_memory: bool, balance: bool = False):
    def make(root):
        if not (root / "train").exists():
            write_image_folder(root, per_class=20, side=8)
        return ImageFolderDataModule(
            str(root), batch_size=8, num_workers=0, augment=False, in_memory=in_memory, balance=balance
        )

    return make


@pytest.mark.parametrize(
    "make",
    [_digits(False), _digits(True), _folder(True), _folder(False), _folder(False, balance=True)],
    ids=["digits", "digits-balanced", "folder-in-memory", "folder-files", "folder-files-balanced"],
)
def test_resumed_run_replays_the_uninterrupted_order(tmp_path, make):
    data = tmp_path / "data"
    data.mkdir()
    full = _fit(make(data), tmp_path / "full", max_epochs=3)
    assert full.seen[0] != full.seen[1] != full.seen[2]  # shuffled anew each epoch

    first = _fit(make(data), tmp_path / "stopped", max_epochs=1)
    resumed = _fit(make(data), tmp_path / "resumed", max_epochs=3, ckpt_path=str(tmp_path / "stopped" / "last.ckpt"))
    assert first.seen[0] == full.seen[0]
    assert sorted(resumed.seen) == [1, 2]
    assert resumed.seen[1] == full.seen[1] and resumed.seen[2] == full.seen[2]


@pytest.mark.parametrize("make", [_digits(False), _folder(True), _folder(False)], ids=["digits", "memory", "files"])
def test_seed_everything_changes_the_order_and_shuffle_seed_pins_it(tmp_path, monkeypatch, make):
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # seed_everything writes it; restored after the test

    def first_epoch(global_seed: int, shuffle_seed: int | None = None) -> list[list[int]]:
        seed_everything(global_seed)
        dm = make(tmp_path)
        dm.hparams.shuffle_seed = shuffle_seed
        dm.setup("fit")
        return [dm.on_after_batch_transfer(batch, 0)[0].flatten(1).sum(1).tolist() for batch in dm.train_dataloader()]

    assert first_epoch(1) == first_epoch(1)
    assert first_epoch(1) != first_epoch(2)
    assert first_epoch(1, shuffle_seed=7) == first_epoch(2, shuffle_seed=7)


def test_epoch_k_trains_on_the_kth_permutation_of_the_seed(tmp_path, monkeypatch):
    # The orders the recipes trained on before resuming replayed them (a RandomSampler with a seeded generator gives
    # one permutation per epoch under Lightning, which never reads a sampler to its end), so the measured results of
    # the README still reproduce.
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    dm = DigitsDataModule(batch_size=64, translate=0)
    seen = _fit(dm, tmp_path, max_epochs=3).seen
    dm.trainer = None
    train, generator = dm.splits["train"], torch.Generator().manual_seed(0)
    for epoch in range(3):
        order = torch.randperm(len(train), generator=generator)
        batches = [order[i : i + 64] for i in range(0, len(train) - 63, 64)]
        expected = [dm.on_after_batch_transfer(train[b], 0)[0].flatten(1).sum(dim=1).tolist() for b in batches]
        assert seen[epoch] == expected
