"""PseudoLabel: exactly the confident examples, val/test untouched, the loader rebuilt with them, resume, errors."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.pseudo_label import PseudoLabel
from datamodules.in_memory import InMemoryImageDataModule

THRESHOLD = 0.8
CODES = 2000


class CodedData(InMemoryImageDataModule):
    """Every pixel of an image holds its code, ``i + 1`` for training image ``i`` and ``1001 + i`` for test image ``i``,
    so any batch says which images it holds (translation pads with zeros, which the largest pixel ignores)."""

    channels, side = 1, 4
    classes = ("a", "b", "c")

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        n, first = (120, 1) if train else (30, 1001)
        codes = torch.arange(first, first + n, dtype=torch.float32)
        return codes.view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone(), torch.arange(n) % 3  # (N, 1, 4, 4), (N,)


def codes(images: torch.Tensor) -> torch.Tensor:
    return images.amax(dim=(1, 2, 3)).round().long()  # (B,)


def confidence(code: torch.Tensor) -> torch.Tensor:
    return 0.55 + 0.1 * (code % 5)  # 0.55, 0.65, 0.75 | 0.85, 0.95: two in five reach THRESHOLD


def predicted(code: torch.Tensor) -> torch.Tensor:
    return (code // 5) % 3  # unrelated to the true label (code - 1) % 3, as a model's mistakes are


class TableModel(LightningModule):
    """Known probabilities: the image with code ``c`` gets class ``predicted(c)`` with ``confidence(c)``, the other two
    classes share the rest. A trainable offset added to every logit leaves them unchanged."""

    def __init__(self) -> None:
        super().__init__()
        code = torch.arange(CODES)
        top = confidence(code)
        probs = ((1 - top) / 2).unsqueeze(1).repeat(1, 3)  # (CODES, 3)
        probs[code, predicted(code)] = top
        self.register_buffer("table", probs.log())
        self.offset = nn.Parameter(torch.zeros(1))
        self.served: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)  # epoch -> batches
        self.scored_clean = True  # every image scored outside training was unaugmented

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.scored_clean &= bool((x.amin(dim=(1, 2, 3)) == x.amax(dim=(1, 2, 3))).all())
        return self.table[codes(x)] + self.offset  # (B, 3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        assert self.training  # scoring the pool hands the train mode back
        self.served[self.current_epoch].append((codes(x), y))
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def data(**kwargs) -> CodedData:
    # One batch holds a whole epoch, so an epoch's batch shows the whole training set.
    return CodedData(**{"val_fraction": 0.2, "labelled_fraction": 0.25, "batch_size": 1000, "translate": 1, **kwargs})


def fit(model, dm, callback, max_epochs: int, **kwargs) -> Trainer:
    options = {"enable_checkpointing": False, "reload_dataloaders_every_n_epochs": 1, **kwargs}
    ckpt_path = options.pop("ckpt_path", None)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=[callback, *options.pop("callbacks", [])],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **options,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def expected(dm: CodedData) -> tuple[set[int], dict[int, int]]:
    """The pool positions whose confidence reaches THRESHOLD, and the class each should get."""
    pool = codes(dm.unlabelled.images)
    keep = torch.nonzero(confidence(pool) >= THRESHOLD).flatten()
    return set(keep.tolist()), {int(i): int(predicted(pool[i])) for i in keep}


def epoch_codes(model: TableModel, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    batches = model.served[epoch]
    return torch.cat([c for c, _ in batches]), torch.cat([y for _, y in batches])


def test_only_examples_at_or_above_the_threshold_get_pseudo_labels_with_the_predicted_class():
    dm, model = data(), TableModel()
    trainer = fit(model, dm, PseudoLabel(threshold=THRESHOLD, start_epoch=1), max_epochs=2)
    indices, labels = dm.pseudo_labels
    keep, classes = expected(dm)
    pool_confidence = confidence(codes(dm.unlabelled.images))
    assert len(keep) and len(keep) < len(dm.unlabelled)  # the table puts examples on both sides of the threshold
    assert (pool_confidence[indices] >= THRESHOLD).all()  # never one under the threshold ...
    assert set(indices.tolist()) == keep  # ... and every one above it
    assert {
        int(i): int(c) for i, c in zip(indices, labels, strict=True)
    } == classes  # the model's class, not the hidden one
    assert model.scored_clean  # scored without the DataModule's random translation, in eval mode
    assert trainer.callback_metrics["pseudo_label/count"] == len(keep)


def test_the_rebuilt_loader_serves_labelled_plus_pseudo_labelled_examples():
    dm, model = data(), TableModel()
    fit(model, dm, PseudoLabel(threshold=THRESHOLD, start_epoch=2), max_epochs=3)
    labelled = codes(dm.splits["train"].images)
    pool = codes(dm.unlabelled.images)
    keep, classes = expected(dm)
    for epoch in (0, 1):  # before start_epoch: the labelled images alone, with their labels
        served, targets = epoch_codes(model, epoch)
        assert sorted(served.tolist()) == sorted(labelled.tolist())
        assert torch.equal(targets, (served - 1) % 3)
    served, targets = epoch_codes(model, 2)
    assert len(served) == len(labelled) + len(keep)
    assert sorted(served.tolist()) == sorted(labelled.tolist() + pool[sorted(keep)].tolist())
    position = {int(c): i for i, c in enumerate(pool)}
    for code, target in zip(served.tolist(), targets.tolist(), strict=True):
        truth = (code - 1) % 3
        assert target == (classes[position[code]] if code in position else truth)


def test_validation_and_test_splits_never_change_and_are_never_trained_on():
    reference = data(labelled_fraction=1.0)
    reference.setup("fit")
    dm, model = data(), TableModel()
    fit(model, dm, PseudoLabel(threshold=0.5, start_epoch=1), max_epochs=3)  # 0.5: the whole pool is labelled
    assert len(dm.pseudo_labels[0]) == len(dm.unlabelled)
    for split in ("val", "test"):
        assert torch.equal(dm.splits[split].images, reference.splits[split].images)
        assert torch.equal(dm.splits[split].labels, reference.splits[split].labels)
    held_out = set(codes(dm.splits["val"].images).tolist()) | set(codes(dm.splits["test"].images).tolist())
    trained = {code for epoch in model.served for code in epoch_codes(model, epoch)[0].tolist()}
    assert trained == set(codes(reference.splits["train"].images).tolist())  # labelled + pool: the training split
    assert trained.isdisjoint(held_out)
    assert dm.normalization == reference.normalization  # statistics from all training images, labelled or not


def test_refreshes_follow_every_n_epochs_from_start_epoch(monkeypatch):
    dm, model = data(), TableModel()
    refreshed = []
    set_labels = dm.set_pseudo_labels

    def record(indices, labels):
        refreshed.append(dm.trainer.current_epoch)
        set_labels(indices, labels)

    monkeypatch.setattr(dm, "set_pseudo_labels", record)
    fit(model, dm, PseudoLabel(threshold=THRESHOLD, every_n_epochs=2, start_epoch=2), max_epochs=6)
    assert refreshed == [1, 3, 5]  # labelled at the end of the epoch before epochs 2, 4 and 6


def test_resumed_run_trains_on_the_pseudo_labels_of_its_checkpoint(tmp_path: Path):
    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, monitor="val/loss")
    dm, model = data(), TableModel()
    fit(
        model,
        dm,
        PseudoLabel(threshold=THRESHOLD, start_epoch=1),
        max_epochs=2,
        callbacks=[checkpoints],
        enable_checkpointing=True,
    )
    saved = torch.load(tmp_path / "epoch=0.ckpt", weights_only=False)["CodedData"]
    # Written at epoch 0's validation end, after that epoch's refresh: the labels epoch 1 trained on.
    assert torch.equal(saved["pseudo_indices"], dm.pseudo_labels[0])

    # A fresh DataModule and callback that would label nothing themselves: the labels come from the checkpoint.
    resumed_dm, resumed = data(), TableModel()
    callback = PseudoLabel(threshold=1.0, start_epoch=1)
    fit(resumed, resumed_dm, callback, max_epochs=2, ckpt_path=str(tmp_path / "epoch=0.ckpt"))
    assert list(resumed.served) == [1]
    assert torch.equal(epoch_codes(resumed, 1)[0].sort().values, epoch_codes(model, 1)[0].sort().values)
    assert torch.equal(epoch_codes(resumed, 1)[1].sort().values, epoch_codes(model, 1)[1].sort().values)


@pytest.mark.parametrize(
    "kwargs",
    [{"threshold": 0.0}, {"threshold": 1.5}, {"threshold": True}, {"every_n_epochs": 0}, {"start_epoch": 0}],
)
def test_bad_arguments_are_refused_in_init(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        PseudoLabel(**kwargs)


class PlainData(LightningDataModule):
    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(8, 1, 4, 4), torch.zeros(8, dtype=torch.long)), batch_size=4)


@pytest.mark.parametrize(
    ("make_data", "options", "message"),
    [
        (PlainData, {}, "lacks unlabelled_dataloader, set_pseudo_labels"),
        (lambda: data(labelled_fraction=1.0), {}, "no unlabelled pool"),
        (data, {"reload_dataloaders_every_n_epochs": 0}, "reload_dataloaders_every_n_epochs: 1"),
    ],
)
def test_fit_stops_at_once_without_a_pool_or_loader_rebuilds(make_data, options, message):
    model = TableModel()
    with pytest.raises(MisconfigurationException, match=message):
        fit(model, make_data(), PseudoLabel(), max_epochs=1, **options)
    assert not model.served  # before any training step


def test_a_module_without_class_logits_is_told_what_forward_must_return():
    class Scalar(TableModel):
        def forward(self, x):
            logits = super().forward(x)
            return logits if self.training else logits.sum(dim=-1)  # (B,) outside training

    with pytest.raises(MisconfigurationException, match=r"class logits \(B, C\)"):
        fit(Scalar(), data(), PseudoLabel(start_epoch=1), max_epochs=2)
