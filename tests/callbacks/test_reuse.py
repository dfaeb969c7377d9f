"""One callback object, two fits (a seed sweep in a notebook): the second run must not inherit the first's state.
And figures logged from rank zero must not wait on the other ranks."""

from __future__ import annotations

import matplotlib
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks import SWA, LRFinder, Pruning, SnapshotEnsemble
from core.media import log_figure

matplotlib.use("Agg")


class Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def fit(callback, max_epochs: int) -> tuple[Tiny, Trainer]:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=generator), torch.randint(0, 3, (64,), generator=generator)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)  # 4 steps an epoch
    model = Tiny()
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, loader, loader)
    return model, trainer


def test_swa_averages_afresh():
    swa = SWA(swa_start=1, swa_lr=0.01, update_bn=False)
    fit(swa, max_epochs=4)
    assert swa.n_averaged == 3
    model, _ = fit(swa, max_epochs=2)
    assert swa.n_averaged == 1
    torch.testing.assert_close(swa.average["net.0.weight"], model.net[0].weight.detach())


def test_snapshot_ensemble_starts_a_new_ensemble():
    ensemble = SnapshotEnsemble(cycles=2)
    fit(ensemble, max_epochs=4)  # 16 steps: snapshots at steps 8 and 16
    model, trainer = fit(ensemble, max_epochs=2)  # 8 steps: snapshots at 4 and 8, of the new model
    assert len(ensemble.snapshots) == 2
    for name, tensor in model.state_dict().items():
        assert torch.equal(ensemble.snapshots[-1][name].to(tensor.device), tensor), name


def test_pruning_starts_from_a_dense_network():
    pruning = Pruning(sparsity=0.5, start_epoch=1, end_epoch=1)
    first, _ = fit(pruning, max_epochs=2)
    assert (first.net[0].weight == 0).float().mean() > 0.3
    second, _ = fit(pruning, max_epochs=1)  # ends before the first round: nothing may be pruned
    assert int((second.net[0].weight == 0).sum()) == 0
    assert int((second.net[3].weight == 0).sum()) == 0


def test_lr_finder_tests_afresh():
    finder = LRFinder(min_lr=1e-4, max_lr=1.0, num_training=10, rerun_at_epochs=(1,))
    fit(finder, max_epochs=2)
    assert [r.epoch for r in finder.history] == [0, 1]
    fit(finder, max_epochs=2)
    assert [r.epoch for r in finder.history] == [0, 1]


def test_log_figure_never_broadcasts(monkeypatch, tmp_path):
    # Under DDP only rank zero calls log_figure; a collective call inside it (trainer.log_dir broadcasts) hangs.
    import matplotlib.pyplot as plt

    trainer = Trainer(accelerator="cpu", logger=False, default_root_dir=tmp_path)

    def no_collectives(*args, **kwargs):
        raise AssertionError("log_figure called a collective operation")

    monkeypatch.setattr(trainer.strategy, "broadcast", no_collectives)
    figure, _ = plt.subplots()
    path = log_figure(trainer, "lr_find/epoch_0", figure)
    assert path == str(tmp_path / "media" / "lr_find_epoch_0.png")


@pytest.fixture(autouse=True)
def _seed():
    seed_everything(0)
