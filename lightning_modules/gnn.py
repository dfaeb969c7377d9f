"""Graph learning on the shared classifier: node classification (GCN, GAT, GraphSAGE) and graph classification
(GIN), with the metrics, confusion matrix, label check, loss guard and probabilities of
:class:`lightning_modules.classifier.Classifier`.

The network is a factory ``net(in_channels, out_channels)``: a recipe names it by ``class_path`` with only its own
hyperparameters, and the sizes come from the data (``num_node_features`` and ``num_node_classes`` or
``num_classes``), so they are never written twice.

Which nodes count. A node-level batch is one graph in which only some nodes are scored, and :func:`scored_nodes`
says which: the nodes of ``target_mask`` in a full-batch graph (the DataModule sets it to the stage's train, val or
test mask), or the first ``batch_size`` nodes of a neighbour-sampled subgraph (PyG's ``NeighborLoader`` puts the
seed nodes first; the others are there only as their neighbourhood). ``forward`` and the targets of
:meth:`NodeClassifier.split_batch` both keep those nodes only, so the loss, the metrics and the predictions see the
stage's nodes and nothing else. A graph with neither (``recipe predict`` on a whole graph) scores every node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from lightning_modules.classifier import Classifier
from lightning_modules.distillation import Distillation
from lightning_modules.nets.gnn import GCNNet, GINNet

#: A network factory: called with ``(in_channels, out_channels)`` from the data's sizes.
GraphNetFactory = Callable[[int, int], nn.Module]


def scored_nodes(data: Any) -> torch.Tensor | slice:
    """The nodes of a node-level batch whose predictions count: ``target_mask`` when the graph has one, the
    ``batch_size`` seed nodes of a neighbour-sampled subgraph, else every node."""
    if "target_mask" in data:
        return data.target_mask
    if "batch_size" in data:
        return slice(0, data.batch_size)
    return slice(None)


class NodeClassifier(Classifier):
    """Classify the nodes of a graph with a message-passing network, trained full-batch or on sampled subgraphs.

    Args:
        net: Network factory ``(num_node_features, num_node_classes) -> module`` whose module maps
            ``(x (N, F), edge_index (2, E))`` to logits ``(N, C)``: ``lightning_modules.nets.gnn.GCNNet`` (default),
            ``GATNet``, ``SAGENet`` or any class taking the two sizes first.
        num_node_features: Features of a node; filled from the DataModule.
        num_node_classes: Classes of a node; filled from the DataModule.
        optimizer: Optimizer factory; biases and norm parameters get no weight decay.
        lr_scheduler: Optional scheduler factory.
        scheduler_interval: Step the scheduler every optimizer ``step`` or every ``epoch``.
        label_smoothing: Label smoothing of the training cross-entropy, in ``[0, 1)``.
        focal_gamma: Focal loss's exponent for the training loss (2 is usual); 0 keeps cross-entropy.
        class_weighted: Weight the training loss by the DataModule's ``class_weights``, for imbalanced classes.
        distillation: Learn from a teacher checkpoint too (``teacher``, ``temperature``, ``alpha``); see
            :class:`lightning_modules.distillation.Distillation`.
        class_names: Names for the confusion matrix axes; indices are used when not given.
    """

    def __init__(
        self,
        net: GraphNetFactory = GCNNet,
        num_node_features: int = 1433,
        num_node_classes: int = 7,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "epoch",
        label_smoothing: float = 0.0,
        focal_gamma: float = 0.0,
        class_weighted: bool = False,
        distillation: Distillation | None = None,
        class_names: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_node_classes,
            class_names=class_names,
            label_smoothing=label_smoothing,
            focal_gamma=focal_gamma,
            class_weighted=class_weighted,
            distillation=distillation,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            scheduler_interval=scheduler_interval,
        )
        if num_node_features < 1:
            raise ValueError(f"num_node_features must be at least 1, got {num_node_features}")
        self.net = net(num_node_features, num_node_classes)

    def split_batch(self, batch: Any) -> tuple[Any, torch.Tensor | None]:
        """The graph as inputs, the labels of its scored nodes (:func:`scored_nodes`) as targets."""
        targets = batch.y[scored_nodes(batch)] if "y" in batch else None
        return batch, targets

    def forward(self, data: Any) -> torch.Tensor:
        logits = self.net(data.x, data.edge_index)  # (N, C) for every node of the graph
        return logits[scored_nodes(data)]  # (n_scored, C)


class GraphClassifier(Classifier):
    """Classify whole graphs, batched by PyG's ``DataLoader`` (one disconnected graph per batch).

    Args:
        net: Network factory ``(num_node_features, num_classes) -> module`` whose module maps
            ``(x (N, F), edge_index (2, E), batch (N,))`` to logits ``(G, C)``; default
            ``lightning_modules.nets.gnn.GINNet`` (GIN-0 with the sum readout over all layers).
        num_node_features: Features of a node; filled from the DataModule.
        num_classes: Classes of a graph; filled from the DataModule.
        optimizer: Optimizer factory; biases and norm parameters get no weight decay.
        lr_scheduler: Optional scheduler factory (the GIN paper halves the rate every 50 epochs: ``StepLR``).
        scheduler_interval: Step the scheduler every optimizer ``step`` or every ``epoch``.
        label_smoothing: Label smoothing of the training cross-entropy, in ``[0, 1)``.
        focal_gamma: Focal loss's exponent for the training loss (2 is usual); 0 keeps cross-entropy.
        class_weighted: Weight the training loss by the DataModule's ``class_weights``, for imbalanced classes.
        distillation: Learn from a teacher checkpoint too (``teacher``, ``temperature``, ``alpha``); see
            :class:`lightning_modules.distillation.Distillation`.
        class_names: Names for the confusion matrix axes; indices are used when not given.
    """

    def __init__(
        self,
        net: GraphNetFactory = GINNet,
        num_node_features: int = 7,
        num_classes: int = 2,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "epoch",
        label_smoothing: float = 0.0,
        focal_gamma: float = 0.0,
        class_weighted: bool = False,
        distillation: Distillation | None = None,
        class_names: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            class_names=class_names,
            label_smoothing=label_smoothing,
            focal_gamma=focal_gamma,
            class_weighted=class_weighted,
            distillation=distillation,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            scheduler_interval=scheduler_interval,
        )
        if num_node_features < 1:
            raise ValueError(f"num_node_features must be at least 1, got {num_node_features}")
        self.net = net(num_node_features, num_classes)

    def forward(self, data: Any) -> torch.Tensor:
        return self.net(data.x, data.edge_index, data.batch)  # (G, C)
