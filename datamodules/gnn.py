"""Node classification on one graph held whole: Planetoid's citation graphs (Cora, CiteSeer, PubMed) and Zachary's
karate club, trained full-batch with train/val/test node masks.

Each stage's loader yields the whole graph once, as a view that shares its tensors and carries the stage's mask as
``target_mask``: the model scores only those nodes (``lightning_modules.gnn.scored_nodes``), while every node still
passes messages, which is what transductive training means. ``predict`` yields the graph without a mask: the
probabilities of every node.

The graph checks shared by every graph DataModule (node features present, edge indices in range) live here too.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Literal

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from datamodules.sampling import balanced_loss_weights
from datamodules.split_loaders import SplitLoaders

STAGE_MASKS = {"train": "train_mask", "val": "val_mask", "test": "test_mask"}


def check_graph(data: Any, source: str) -> None:
    """Refuse a graph the networks cannot read, with one line naming ``source`` and the fix."""
    if data.x is None:
        raise MisconfigurationException(
            f"{source} has no node features (x). Use a dataset with node attributes or labels, or add features with "
            "a transform such as torch_geometric.transforms.OneHotDegree."
        )
    edges = data.edge_index
    if edges is not None and edges.numel() > 0 and (int(edges.min()) < 0 or int(edges.max()) >= data.num_nodes):
        raise MisconfigurationException(
            f"{source} has edge indices from {int(edges.min())} to {int(edges.max())} but {data.num_nodes} nodes. "
            "The edge list refers to nodes that do not exist: fix or re-download the dataset files."
        )


def check_masks(data: Any, source: str) -> None:
    """Refuse a split mask that selects no node: its stage would score nothing."""
    for stage, name in STAGE_MASKS.items():
        mask = getattr(data, name, None)
        if mask is None or int(mask.sum()) == 0:
            raise MisconfigurationException(
                f"the {stage} split of {source} ({name}) selects no node. Give every split at least one node."
            )


def require_files(folder: str, names: list[str], what: str) -> None:
    """Stop with the fix when raw files are missing: ``setup`` reads, it never downloads."""
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise MisconfigurationException(
            f"{what} not found: {folder} lacks {', '.join(missing)}. Pass --data.init_args.data_dir=DIR holding it, "
            "or run `recipe fit` once online so prepare_data downloads it."
        )


def _the_graph(items: list[Any]) -> Any:
    return items[0]


class NodeGraphDataModule(SplitLoaders, LightningDataModule):
    """Base of full-batch node classification: subclasses implement :meth:`load` (a ``Data`` with ``x``,
    ``edge_index``, ``y`` and the three split masks) without downloading.

    Args:
        data_dir: Folder holding the dataset (and where ``prepare_data`` downloads it).
    """

    predict_split = None  # ``recipe predict`` reads this split

    def __init__(self, data_dir: str = "data") -> None:
        super().__init__()
        self.data_dir = data_dir
        self._graph: Any = None

    def load(self) -> Any:
        """The whole graph with its masks, read from ``data_dir`` (never downloaded)."""
        raise NotImplementedError

    @property
    def graph(self) -> Any:
        """The checked graph, loaded on first use (the data values need it before ``setup``)."""
        if self._graph is None:
            graph = self.load()
            source = f"{type(self).__name__} ({self.data_dir})"
            check_graph(graph, source)
            check_masks(graph, source)
            self._graph = graph
        return self._graph

    @property
    def num_node_features(self) -> int:
        return int(self.graph.num_node_features)

    @property
    def num_node_classes(self) -> int:
        return int(self.graph.y.max()) + 1

    @property
    def class_weights(self) -> torch.Tensor:
        """Per-class loss weights ``N / (C * count)`` (C,) of the training split (scikit-learn's "balanced")."""
        return balanced_loss_weights(self.graph.y[self.graph.train_mask], self.num_node_classes)

    def setup(self, stage: str) -> None:
        self.graph  # noqa: B018 - loads and checks once; later stages reuse it

    def stage_view(self, stage: str | None) -> Any:
        """The graph with ``target_mask`` set to ``stage``'s mask (no mask for ``None``); tensors are shared."""
        view = copy.copy(self.graph)
        for name in STAGE_MASKS.values():
            del view[name]  # the model must not mistake another stage's mask for its own
        if stage is not None:
            view.target_mask = self.graph[STAGE_MASKS[stage]]
        return view

    def _loader(self, stage: str | None) -> DataLoader:
        return DataLoader([self.stage_view(stage)], batch_size=1, collate_fn=_the_graph)


class PlanetoidDataModule(NodeGraphDataModule):
    """Planetoid citation graphs (Yang et al. 2016, https://arxiv.org/abs/1603.08861) as in Kipf & Welling 2017:
    bag-of-words node features, row-normalised (PyG's ``NormalizeFeatures``), and the public split (20 labelled
    nodes per class for training, 500 for validation, 1,000 for test).

    ``data_dir/<name>/raw/ind.<name>.*`` is read where present; ``prepare_data`` downloads it otherwise. PyG writes
    its processed copy beside ``raw/``, so ``data_dir`` must be writable.

    Args:
        data_dir: Folder holding ``<name>/raw``.
        name: ``Cora`` (2,708 nodes, 7 classes), ``CiteSeer`` (3,327, 6) or ``PubMed`` (19,717, 3).
        split: ``public`` (the Planetoid split) or ``full`` (every node outside validation and test trains).
        normalize_features: Scale each node's features to sum to one.
    """

    FILES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")

    def __init__(
        self,
        data_dir: str = "data",
        name: Literal["Cora", "CiteSeer", "PubMed"] = "Cora",
        split: Literal["public", "full"] = "public",
        normalize_features: bool = True,
    ) -> None:
        super().__init__(data_dir)
        if name not in ("Cora", "CiteSeer", "PubMed"):
            raise ValueError(f"name must be Cora, CiteSeer or PubMed, got {name!r}")
        if split not in ("public", "full"):
            raise ValueError(f"split must be 'public' or 'full', got {split!r}")
        self.name, self.split, self.normalize_features = name, split, normalize_features

    def _dataset(self) -> Any:
        from torch_geometric.datasets import Planetoid
        from torch_geometric.transforms import NormalizeFeatures

        transform = NormalizeFeatures() if self.normalize_features else None
        return Planetoid(self.data_dir, self.name, split=self.split, transform=transform)

    def prepare_data(self) -> None:
        self._dataset()  # PyG downloads only the files that are missing

    def load(self) -> Any:
        raw = os.path.join(self.data_dir, self.name, "raw")
        require_files(raw, [f"ind.{self.name.lower()}.{f}" for f in self.FILES], f"Planetoid {self.name}")
        return self._dataset()[0]


class KarateClubDataModule(NodeGraphDataModule):
    """Zachary's karate club (34 members, 4 communities, one-hot identity features), bundled with PyG: offline.

    Training uses PyG's one labelled member per community, as in Kipf & Welling's semi-supervised demo; the other
    30 members are split by a seeded permutation into validation (a third) and test (the rest).

    Args:
        data_dir: Unused (the graph ships with torch-geometric); accepted so shared data flags apply.
        seed: Seed of the validation/test split.
    """

    def __init__(self, data_dir: str = "data", seed: int = 0) -> None:
        super().__init__(data_dir)
        self.seed = seed

    def load(self) -> Any:
        from torch_geometric.datasets import KarateClub

        data = KarateClub()[0]
        rest = (~data.train_mask).nonzero().view(-1)
        order = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(self.seed))]
        num_val = len(rest) // 3
        data.val_mask = torch.zeros_like(data.train_mask)
        data.val_mask[order[:num_val]] = True
        data.test_mask = torch.zeros_like(data.train_mask)
        data.test_mask[order[num_val:]] = True
        return data
