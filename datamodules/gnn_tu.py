"""Graph classification on the TU benchmark collection (Morris et al. 2020, https://chrsmrrs.github.io/datasets/)
with seeded, stratified k-fold cross-validation as in the GIN paper (Xu et al. 2019, https://arxiv.org/abs/1810.00826).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule
from torch_geometric.loader import DataLoader

from datamodules.gnn import check_graph, require_files
from datamodules.sampling import balanced_loss_weights
from datamodules.split_loaders import SplitLoaders


class TUFoldDataModule(SplitLoaders, LightningDataModule):
    """One fold of stratified k-fold cross-validation over a TU dataset (MUTAG, PROTEINS, ...).

    The graphs are split by scikit-learn's ``StratifiedKFold`` (shuffled with ``seed``) into ``num_folds`` folds;
    fold ``fold`` is the test set and the others train. Model selection: the GIN paper reports the validation
    accuracy of the 10 held-out folds at the single epoch where their mean is best, i.e. it selects on the test
    folds, which flatters the result. Here ``val_share > 0`` (the default) holds out a stratified share of the
    training folds instead, so ``test/acc`` of the checkpoint chosen on ``val/acc`` is an honest estimate;
    ``val_share=0`` validates on the test fold itself, the paper's protocol. Run every ``fold`` in
    ``range(num_folds)`` and average ``test/acc`` for the cross-validated accuracy.

    Node features are the one-hot node labels (``NAME_node_labels.txt``) or the node attributes the dataset ships.

    Args:
        data_dir: Folder holding ``<name>/raw/<name>_A.txt`` etc. (``prepare_data`` downloads them when missing).
        name: TU dataset name, e.g. ``MUTAG`` (188 molecules, 2 classes) or ``PROTEINS`` (1,113 proteins, 2).
        fold: Index of the test fold, in ``[0, num_folds)``.
        num_folds: Folds of the cross-validation (10 in the GIN paper).
        seed: Seed of the fold assignment and of the validation share.
        val_share: Share of the training folds held out for validation; 0 validates on the test fold.
        batch_size: Graphs per training batch (the GIN paper searches 32 and 128).
        num_workers: Loader worker processes.
    """

    predict_split = "test"  # ``recipe predict`` reads this split

    def __init__(
        self,
        data_dir: str = "data",
        name: str = "MUTAG",
        fold: int = 0,
        num_folds: int = 10,
        seed: int = 0,
        val_share: float = 0.1,
        batch_size: int = 32,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if num_folds < 2:
            raise ValueError(f"num_folds must be at least 2, got {num_folds}")
        if not 0 <= fold < num_folds:
            raise ValueError(f"fold must lie in [0, {num_folds - 1}] for num_folds={num_folds}, got {fold}")
        if not 0.0 <= val_share < 1.0:
            raise ValueError(f"val_share must be in [0, 1), got {val_share}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.data_dir, self.name, self.fold, self.num_folds = data_dir, name, fold, num_folds
        self.seed, self.val_share, self.batch_size, self.num_workers = seed, val_share, batch_size, num_workers
        self._dataset: Any = None
        self.splits: dict[str, torch.Tensor] = {}

    def _tu(self) -> Any:
        from torch_geometric.datasets import TUDataset

        return TUDataset(self.data_dir, self.name)

    def prepare_data(self) -> None:
        self._tu()  # PyG downloads only when the raw files are missing

    @property
    def dataset(self) -> Any:
        """The checked dataset, read on first use (the data values need it before ``setup``); never downloads."""
        if self._dataset is None:
            raw = os.path.join(self.data_dir, self.name, "raw")
            needed = [f"{self.name}_{part}.txt" for part in ("A", "graph_indicator", "graph_labels")]
            require_files(raw, needed, f"TU dataset {self.name}")
            try:
                dataset = self._tu()
            except (IndexError, RuntimeError) as error:  # PyG's reader indexes nodes by the edge list
                raise MisconfigurationException(
                    f"the TU files under {raw} do not fit together ({error}): an edge refers to a node missing from "
                    f"{self.name}_graph_indicator.txt. Fix or re-download them, and delete {self.name}/processed."
                ) from error
            for index in range(len(dataset)):
                check_graph(dataset[index], f"graph {index} of {self.name} ({raw})")
            self._dataset = dataset
        return self._dataset

    @property
    def num_node_features(self) -> int:
        return int(self.dataset.num_node_features)

    @property
    def num_classes(self) -> int:
        return int(self.dataset.num_classes)

    @property
    def class_weights(self) -> torch.Tensor:
        """Per-class loss weights ``N / (C * count)`` (C,) of the training split (scikit-learn's "balanced")."""
        self.setup("fit")
        return balanced_loss_weights(self.dataset.y[self.splits["train"]], self.num_classes)

    def folds(self) -> list[np.ndarray]:
        """The test indices of every fold: a seeded, stratified partition of the graphs."""
        from sklearn.model_selection import StratifiedKFold

        labels = self.dataset.y.numpy()
        splitter = StratifiedKFold(self.num_folds, shuffle=True, random_state=self.seed)
        return [test for _, test in splitter.split(np.zeros(len(labels)), labels)]

    def setup(self, stage: str) -> None:
        if self.splits:
            return
        from sklearn.model_selection import train_test_split

        folds = self.folds()
        test = folds[self.fold]
        train = np.concatenate([f for i, f in enumerate(folds) if i != self.fold])
        if self.val_share > 0:
            labels = self.dataset.y.numpy()
            train, val = train_test_split(
                train, test_size=self.val_share, stratify=labels[train], random_state=self.seed
            )
        else:
            val = test  # the GIN paper's protocol: model selection on the test fold
        self.splits = {
            name: torch.as_tensor(np.sort(idx)) for name, idx in (("train", train), ("val", val), ("test", test))
        }

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(
            self.dataset[self.splits[split]],
            batch_size=self.batch_size,
            shuffle=split == "train",
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
