"""InMemoryImageDataModule: seeded stratified split, train-only statistics, batching, balance and augmentation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer

from datamodules.in_memory import InMemoryImageDataModule, random_hflip, random_translate
from datamodules.vision import DigitsDataModule


class IndexedData(InMemoryImageDataModule):
    """Every pixel of image ``i`` holds ``i``, so a split's images reveal which indices it took.

    Labels cycle through three classes of different sizes (60 / 30 / 10 images) to make stratification visible.
    """

    channels, side = 1, 4
    classes = ("a", "b", "c")
    n = 100

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(self.n if train else 10, dtype=torch.float32)
        images = index.view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone()  # (N, 1, 4, 4)
        labels = torch.zeros(len(index), dtype=torch.long)
        labels[60:90], labels[90:] = 1, 2
        return images, labels


class ImbalancedData(InMemoryImageDataModule):
    """A 90/10 two-class training set."""

    channels, side = 1, 4
    classes = ("common", "rare")

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        n = 1000 if train else 20
        labels = (torch.arange(n) % 10 == 0).long()  # 10% rare
        images = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        return images, labels


def _indices(dm: InMemoryImageDataModule, split: str) -> torch.Tensor:
    return dm.splits[split].images[:, 0, 0, 0].long()


def test_val_split_is_stratified_disjoint_and_covers_the_fraction():
    dm = IndexedData(val_fraction=0.2, seed=3)
    dm.setup("fit")
    train, val = _indices(dm, "train"), _indices(dm, "val")
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(IndexedData.n))
    # Each class contributes its own share: 12 of 60, 6 of 30, 2 of 10.
    assert torch.bincount(dm.splits["val"].labels, minlength=3).tolist() == [12, 6, 2]
    assert len(val) == round(0.2 * IndexedData.n)
    # Labels travel with their images.
    for split in ("train", "val"):
        idx = _indices(dm, split)
        expected = (idx >= 60).long() + (idx >= 90).long()
        assert torch.equal(dm.splits[split].labels, expected)


def test_val_split_depends_on_the_seed_only():
    def val_of(seed: int) -> list[int]:
        dm = IndexedData(seed=seed, val_fraction=0.2)
        dm.setup("fit")
        return _indices(dm, "val").tolist()

    assert val_of(0) == val_of(0)
    assert val_of(0) != val_of(1)


def test_setup_is_idempotent():
    dm = IndexedData()
    dm.setup("fit")
    splits, stats = dict(dm.splits), dm.normalization
    dm.setup("fit")
    dm.setup("test")
    assert all(dm.splits[name] is splits[name] for name in ("train", "val", "test"))
    assert dm.normalization == stats


def test_dataloader_before_setup_is_an_error():
    with pytest.raises(RuntimeError, match="setup"):
        IndexedData().train_dataloader()


def test_normalisation_statistics_come_from_the_training_split_only():
    dm = DigitsDataModule(val_fraction=0.3)
    dm.setup("fit")
    train = dm.splits["train"].images.float()  # digits are already floats in [0, 1]
    mean, std = (torch.tensor(s) for s in dm.normalization)
    assert torch.allclose(mean, train.mean(dim=(0, 2, 3)), atol=1e-6)
    assert torch.allclose(std, train.std(dim=(0, 2, 3)), atol=1e-6)
    # Statistics over train + val differ, so the assertion above could catch a leak.
    both = torch.cat([train, dm.splits["val"].images.float()])
    assert not torch.allclose(mean, both.mean(dim=(0, 2, 3)), atol=1e-4)


def test_train_batches_have_the_configured_size_and_dtype():
    dm = DigitsDataModule(batch_size=50)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    n_train = len(dm.splits["train"])
    assert len(batches) == n_train // 50  # the ragged last batch is dropped
    for images, labels in batches:
        assert images.shape == (50, 1, 8, 8) and images.dtype == torch.float32
        assert labels.shape == (50,) and labels.dtype == torch.int64
    # The order is seeded: a second loader from the same seed draws the same batches.
    first_again = next(iter(dm.train_dataloader()))
    assert torch.equal(first_again[1], batches[0][1])
    # Evaluation keeps every image, in order.
    val_images = torch.cat([images for images, _ in dm.val_dataloader()])
    assert torch.equal(val_images, dm.splits["val"].images)


def test_after_transfer_leaves_pixels_unaugmented_outside_training():
    dm = DigitsDataModule(translate=2, hflip=True)
    dm.setup("fit")
    batch = (dm.splits["train"].images, dm.splits["train"].labels)
    x, labels = dm.on_after_batch_transfer(batch, 0)  # no trainer attached
    assert torch.equal(labels, batch[1]) and torch.equal(x, batch[0])  # pixels in [0, 1]: the model standardises
    dm.trainer = SimpleNamespace(training=False)
    x_eval, _ = dm.on_after_batch_transfer(batch, 0)
    assert torch.equal(x_eval, x)
    assert torch.equal(dm.on_after_batch_transfer(batch, 0)[0], x_eval)


@pytest.mark.parametrize("translate, hflip", [(2, False), (0, True)])
def test_after_transfer_augments_while_training(translate, hflip):
    dm = DigitsDataModule(translate=translate, hflip=hflip)
    dm.setup("fit")
    batch = (dm.splits["train"].images[:256], dm.splits["train"].labels[:256])
    plain, _ = dm.on_after_batch_transfer(batch, 0)
    dm.trainer = SimpleNamespace(training=True)
    augmented, labels = dm.on_after_batch_transfer(batch, 0)
    assert augmented.shape == plain.shape and torch.equal(labels, batch[1])
    changed = (augmented != plain).flatten(1).any(dim=1)
    assert changed.float().mean() > 0.3  # many images moved, not just one


def test_after_transfer_off_when_no_augmentation_is_configured():
    dm = DigitsDataModule(translate=0, hflip=False)
    dm.setup("fit")
    batch = (dm.splits["train"].images[:64], dm.splits["train"].labels[:64])
    plain, _ = dm.on_after_batch_transfer(batch, 0)
    dm.trainer = SimpleNamespace(training=True)
    assert torch.equal(dm.on_after_batch_transfer(batch, 0)[0], plain)


class _Recorder(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(64, 10)
        self.seen: dict[str, list[torch.Tensor]] = {"train": [], "val": []}

    def training_step(self, batch, batch_idx):
        self.seen["train"].append(batch[0].clone())
        return torch.nn.functional.cross_entropy(self.layer(batch[0].flatten(1)), batch[1])

    def validation_step(self, batch, batch_idx):
        self.seen["val"].append(batch[0].clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_a_real_trainer_augments_training_batches_only():
    dm = DigitsDataModule(batch_size=128, translate=2)
    model = _Recorder()
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    dm.trainer = None
    # The same seed draws the same first batch again; without a trainer it is only normalised.
    plain_train, _ = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    plain_val, _ = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    (train,), (val,) = model.seen["train"], model.seen["val"]
    assert train.shape == plain_train.shape and not torch.equal(train, plain_train)
    assert torch.equal(val, plain_val)


def test_random_translate_shifts_each_image_by_its_own_offset():
    torch.manual_seed(0)
    b, side, p, centre = 512, 9, 2, 4
    x = torch.zeros(b, 2, side, side)
    x[:, 0, centre, centre] = 1.0  # channel 0: a marker that shows the shift
    x[:, 1] = torch.rand(b, side, side) + 1.0  # channel 1: content that must move with it
    out = random_translate(x, p)
    assert out.shape == x.shape
    shifts = []
    for image, moved in zip(x, out, strict=True):
        (rows, cols) = torch.nonzero(moved[0] == 1.0, as_tuple=True)
        assert len(rows) == 1
        dy, dx = int(rows[0]) - centre, int(cols[0]) - centre
        assert -p <= dy <= p and -p <= dx <= p
        # The whole image moved by (dy, dx), every channel alike, and the uncovered border is zero.
        expected = torch.zeros_like(image)
        src = image[:, max(0, -dy) : side - max(0, dy), max(0, -dx) : side - max(0, dx)]
        expected[:, max(0, dy) : side - max(0, -dy), max(0, dx) : side - max(0, -dx)] = src
        assert torch.equal(moved, expected)
        shifts.append((dy, dx))
    assert len(set(shifts)) == (2 * p + 1) ** 2  # all 25 offsets occur across 512 images
    assert {dy for dy, _ in shifts} == set(range(-p, p + 1))


def test_random_translate_differs_between_images_of_one_batch():
    torch.manual_seed(1)
    x = torch.zeros(64, 1, 7, 7)
    x[:, 0, 3, 3] = 1.0
    positions = {tuple(torch.nonzero(image[0]).flatten().tolist()) for image in random_translate(x, 1)}
    assert len(positions) > 3


def test_random_hflip_mirrors_about_half_of_the_images():
    torch.manual_seed(0)
    x = torch.rand(2000, 3, 5, 6)
    out = random_hflip(x)
    same = (out == x).flatten(1).all(dim=1)
    mirrored = (out == x.flip(-1)).flatten(1).all(dim=1)
    assert torch.all(same ^ mirrored)  # each output is exactly one of the two
    assert 0.45 < mirrored.float().mean().item() < 0.55


def _class_share(dm: InMemoryImageDataModule, epochs: int) -> float:
    loader = dm.train_dataloader()
    labels = torch.cat([labels for _ in range(epochs) for _, labels in loader])
    return labels.float().mean().item()  # share of the rare class 1


def test_balance_draws_classes_uniformly():
    dm = ImbalancedData(balance=True, batch_size=100)
    dm.setup("fit")
    assert abs(_class_share(dm, epochs=5) - 0.5) < 0.05


def test_without_balance_the_imbalance_stays():
    dm = ImbalancedData(balance=False, batch_size=100)
    dm.setup("fit")
    assert abs(_class_share(dm, epochs=5) - 0.1) < 0.02


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"eval_batch_size": 0}, {"val_fraction": 0.0}, {"val_fraction": 1.0}, {"translate": -1}],
)
def test_invalid_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        IndexedData(**kwargs)


def test_reflect_translation_fills_the_border_with_image_content():
    torch.manual_seed(0)
    images = torch.ones(64, 3, 8, 8)
    reflected = random_translate(images, 2, mode="reflect")
    assert torch.equal(reflected, images)  # a constant image mirrors into itself: no black border
    zero_filled = random_translate(images, 2)
    assert (zero_filled == 0).any()  # most shifts uncover a zero border
    gradient = torch.arange(8.0).expand(1, 1, 8, 8).repeat(32, 1, 1, 1)  # columns 0..7
    for image in random_translate(gradient, 2, mode="reflect"):
        assert set(image.unique().tolist()) <= set(range(8))  # only values from the image itself
