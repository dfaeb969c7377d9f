"""OGB's ``ogbn-arxiv`` (Hu et al. 2020, https://arxiv.org/abs/2005.00687): 169,343 papers, 128 features, 40 subject
classes, split by publication year; trained on neighbour-sampled subgraphs (Hamilton et al. 2017) through PyG's
``LightningNodeData`` and ``NeighborLoader``, for graphs too large for full-batch training on one accelerator.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from datamodules.gnn import check_graph, require_files

NAME = "ogbn-arxiv"
FOLDER = "ogbn_arxiv"  # OGB's folder name for the dataset


def _quiet_ogb() -> None:
    # ogb imports `outdated`, whose import starts a thread that asks PyPI for a newer version.
    os.environ.setdefault("OUTDATED_IGNORE", "1")


class OgbnArxivDataModule(LightningDataModule):
    """``ogbn-arxiv`` with neighbour sampling: each batch is the sampled ``len(num_neighbors)``-hop neighbourhood of
    ``batch_size`` seed nodes, the seeds first (only they are scored). The citation edges are made undirected, as in
    OGB's GraphSAGE baseline. Validation and test sample neighbourhoods too (``eval_num_neighbors``, all neighbours
    by default), which matches full-graph inference for ``-1`` fan-outs.

    ``prepare_data`` downloads the dataset to ``data_dir/ogbn_arxiv`` (about 80 MB); ``setup`` only reads it.

    Args:
        data_dir: Folder holding ``ogbn_arxiv/`` as OGB lays it out.
        batch_size: Seed nodes per training batch.
        num_neighbors: Neighbours sampled per node at each hop during training; as many hops as network layers.
        eval_batch_size: Seed nodes per validation, test and prediction batch.
        eval_num_neighbors: Neighbours per hop when evaluating; -1 takes them all.
        num_workers: Loader worker processes.
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 1024,
        num_neighbors: tuple[int, ...] = (15, 10, 5),
        eval_batch_size: int = 4096,
        eval_num_neighbors: tuple[int, ...] = (-1, -1, -1),
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if len(num_neighbors) != len(eval_num_neighbors):
            raise ValueError(
                f"num_neighbors {num_neighbors} and eval_num_neighbors {eval_num_neighbors} differ in hops"
            )
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch sizes must be at least 1, got {batch_size} and {eval_batch_size}")
        self.data_dir, self.batch_size, self.num_neighbors = data_dir, batch_size, tuple(num_neighbors)
        self.eval_batch_size, self.eval_num_neighbors = eval_batch_size, tuple(eval_num_neighbors)
        self.num_workers = num_workers
        self._graph: Any = None
        self._split: dict[str, torch.Tensor] = {}
        self._loaders: Any = None

    def _dataset(self) -> Any:
        _quiet_ogb()
        from ogb.nodeproppred import PygNodePropPredDataset
        from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
        from torch_geometric.data.storage import GlobalStorage

        # ogb 1.3.6 loads its processed file with torch.load's default, weights-only since torch 2.6: allow PyG's
        # storage classes, the only non-tensor objects in it.
        with torch.serialization.safe_globals([DataEdgeAttr, DataTensorAttr, GlobalStorage]):
            return PygNodePropPredDataset(NAME, root=self.data_dir)

    def prepare_data(self) -> None:
        self._dataset()  # OGB downloads when the folder is missing

    @property
    def graph(self) -> Any:
        """The undirected graph with flat labels, read on first use; never downloads."""
        if self._graph is None:
            from torch_geometric.transforms import ToUndirected

            folder = os.path.join(self.data_dir, FOLDER)
            require_files(folder, ["RELEASE_v1.txt", "raw/edge.csv.gz", "raw/node-feat.csv.gz"], NAME)
            dataset = self._dataset()
            graph = ToUndirected()(dataset[0])
            graph.y = graph.y.view(-1)  # OGB stores (N, 1)
            check_graph(graph, f"{NAME} ({folder})")
            self._split = dataset.get_idx_split()
            self._graph = graph
        return self._graph

    @property
    def num_node_features(self) -> int:
        return int(self.graph.num_node_features)

    @property
    def num_node_classes(self) -> int:
        return 40  # arxiv's subject areas, fixed by the dataset (some may be absent from a small sample)

    def setup(self, stage: str) -> None:
        if self._loaders is not None:
            return
        from torch_geometric import typing as pyg_typing
        from torch_geometric.data.lightning import LightningNodeData

        if not (pyg_typing.WITH_PYG_LIB or pyg_typing.WITH_TORCH_SPARSE):
            raise MisconfigurationException(
                "neighbour sampling needs pyg-lib (or torch-sparse), which is not installed. Install the wheel for "
                "your torch and CUDA: pip install pyg-lib -f https://data.pyg.org/whl/torch-<version>+<cuda>.html"
            )
        graph = self.graph
        self._loaders = LightningNodeData(
            graph,
            input_train_nodes=self._split["train"],
            input_val_nodes=self._split["valid"],
            input_test_nodes=self._split["test"],
            loader="neighbor",
            num_neighbors=list(self.num_neighbors),
            batch_size=self.batch_size,
            eval_loader_kwargs={"num_neighbors": list(self.eval_num_neighbors), "batch_size": self.eval_batch_size},
            num_workers=self.num_workers,
            pin_memory=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loaders.train_dataloader()

    def val_dataloader(self) -> DataLoader:
        return self._loaders.val_dataloader()

    def test_dataloader(self) -> DataLoader:
        return self._loaders.test_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self._loaders.predict_dataloader()
