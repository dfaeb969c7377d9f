"""A user's project as the tests imagine it: a classifier over flat feature vectors built on the shared task layer,
DataModules for scikit-learn's bundled iris, and a LightningModule that brings its own data."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.classifier import Classifier


# ---- the measure of success of the task layer: a new kind of input is its network plus input handling ----
class FeatureClassifier(Classifier):
    """Classify flat feature vectors ``(B, num_features)`` with an MLP (or any injected network).

    Args:
        net: ``(B, num_features) -> (B, num_classes)``; default: one hidden layer of ``hidden`` units.
        num_features: Length of a feature vector; filled from the DataModule.
        hidden: Width of the default network's hidden layer.
        **kwargs: :class:`Classifier`'s ``num_classes``, ``class_names``, ``label_smoothing``, optimizer and schedule.
    """

    def __init__(self, net: nn.Module | None = None, num_features: int = 4, hidden: int = 32, **kwargs) -> None:
        super().__init__(**kwargs)
        self.net = net or nn.Sequential(
            nn.Linear(num_features, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, self.num_classes)
        )
        self.example_input_array = torch.zeros(2, num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---- data ----
def iris_splits(seed: int = 0) -> dict[str, TensorDataset]:
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    iris = load_iris()
    x = torch.tensor(iris.data, dtype=torch.float32)
    y = torch.tensor(iris.target)
    train, rest = train_test_split(range(len(y)), test_size=0.4, stratify=iris.target, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=iris.target[rest], random_state=seed)
    mean, std = x[train].mean(0), x[train].std(0)  # training rows only
    x = (x - mean) / std
    return {name: TensorDataset(x[idx], y[idx]) for name, idx in (("train", train), ("val", val), ("test", test))}


class IrisData(LightningDataModule):
    """Iris (150 rows, 4 features, 3 classes), standardised with training statistics."""

    def __init__(self, batch_size: int = 16, label_offset: int = 0) -> None:
        super().__init__()
        self.batch_size, self.label_offset = batch_size, label_offset
        self.splits: dict[str, TensorDataset] = {}

    num_features = 4

    @property
    def num_classes(self) -> int:
        return 3

    @property
    def class_names(self) -> tuple[str, ...]:
        return ("setosa", "versicolor", "virginica")

    def setup(self, stage: str) -> None:
        self.splits = iris_splits()
        for split in self.splits.values():
            split.tensors = (split.tensors[0], split.tensors[1] + self.label_offset)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["train"], batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], batch_size=64)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["test"], batch_size=64)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


class IrisWithoutClassCount(LightningDataModule):
    """Three classes of iris, but no ``num_classes`` property: a model must not silently assume a count."""

    def setup(self, stage: str) -> None:
        self.splits = iris_splits()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["train"], batch_size=16)


class SelfContained(LightningModule):
    """A LightningModule with its own dataloaders, as in Lightning's examples: no DataModule at all."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Linear(4, 3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss)
        return loss

    def train_dataloader(self) -> DataLoader:
        return DataLoader(iris_splits()["train"], batch_size=30)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class IrisAsNodes(IrisWithoutClassCount):
    """Declares graph-node values only: a table model must not mistake node features for its own."""

    num_node_features = 4
    num_node_classes = 3


class NaNOnRank(FeatureClassifier):
    """A ``FeatureClassifier`` whose loss turns NaN on one DDP rank from its second step: one process fails."""

    def __init__(self, bad_rank: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bad_rank = bad_rank

    def forward(self, x):
        out = super().forward(x)
        if self.training and self.global_rank == self.bad_rank and self.global_step >= 1:
            out = out * float("nan")
        return out
