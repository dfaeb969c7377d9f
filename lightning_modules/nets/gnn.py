"""Graph networks: node classifiers ``(x, edge_index) -> (N, out_channels)`` and a graph classifier
``(x, edge_index, batch) -> (G, out_channels)``, built from torch-geometric's layers and models.

Every network takes ``(in_channels, out_channels, ...)`` first, so a LightningModule builds it from the data's
sizes: a recipe names the network by ``class_path`` with only its own hyperparameters in ``init_args``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GINConv, global_add_pool
from torch_geometric.nn.models import GAT, GCN, MLP, GraphSAGE


class GCNNet(nn.Module):
    """Graph convolutional network of Kipf & Welling 2017 (https://arxiv.org/abs/1609.02907).

    ``H' = act(D^-1/2 (A + I) D^-1/2 H W)`` per layer, with dropout on the input features too, as in the paper's
    code (PyG's ``GCN`` drops out between layers only).

    Args:
        in_channels: Features of a node; filled from the data.
        out_channels: Classes of a node; filled from the data.
        hidden_channels: Width of the hidden layers (16 in the paper).
        num_layers: Graph convolutions, the output layer included (2 in the paper).
        dropout: Dropout probability on the input and between layers (0.5 in the paper).
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int = 16, num_layers: int = 2, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.gnn = GCN(in_channels, hidden_channels, num_layers, out_channels, dropout=dropout)

    def reset_parameters(self) -> None:
        self.gnn.reset_parameters()

    def no_weight_decay(self) -> list[str]:
        # The paper's code decays the first layer's weights only (PyG's example does the same).
        return [name for name, _ in self.named_parameters() if not name.startswith("gnn.convs.0.")]

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        x = F.dropout(x, self.dropout, self.training)  # (N, in_channels)
        return self.gnn(x, edge_index)  # (N, out_channels)


class GATNet(nn.Module):
    """Graph attention network of Veličković et al. 2018 (https://arxiv.org/abs/1710.10903).

    Hidden layers concatenate ``heads`` attention heads of ``hidden_channels`` each, with ELU; the output layer
    averages one head. Dropout hits the input, the hidden features and the attention coefficients alike.

    Args:
        in_channels: Features of a node; filled from the data.
        out_channels: Classes of a node; filled from the data.
        hidden_channels: Features per head in the hidden layers (8 in the paper).
        heads: Attention heads of the hidden layers (8 in the paper).
        num_layers: Attention layers, the output layer included (2 in the paper).
        dropout: Dropout probability of inputs, features and attention (0.6 in the paper).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 8,
        heads: int = 8,
        num_layers: int = 2,
        dropout: float = 0.6,
    ) -> None:
        super().__init__()
        self.dropout = dropout
        # PyG's GAT splits hidden_channels over the heads, and its last layer has one head without concatenation.
        self.gnn = GAT(
            in_channels, hidden_channels * heads, num_layers, out_channels, dropout=dropout, act="elu", heads=heads
        )

    def reset_parameters(self) -> None:
        self.gnn.reset_parameters()

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        x = F.dropout(x, self.dropout, self.training)  # (N, in_channels)
        return self.gnn(x, edge_index)  # (N, out_channels)


class SAGENet(nn.Module):
    """GraphSAGE of Hamilton et al. 2017 (https://arxiv.org/abs/1706.02216) with mean aggregation and batch norm,
    the OGB leaderboard baseline for ``ogbn-arxiv`` (3 layers of 256, dropout 0.5).

    Args:
        in_channels: Features of a node; filled from the data.
        out_channels: Classes of a node; filled from the data.
        hidden_channels: Width of the hidden layers.
        num_layers: SAGE layers, the output layer included; neighbour sampling needs as many fan-outs.
        dropout: Dropout probability between layers.
        batch_norm: Batch norm after each hidden layer.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 256,
        num_layers: int = 3,
        dropout: float = 0.5,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        norm = "batch_norm" if batch_norm else None
        self.gnn = GraphSAGE(in_channels, hidden_channels, num_layers, out_channels, dropout=dropout, norm=norm)

    def reset_parameters(self) -> None:
        self.gnn.reset_parameters()

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.gnn(x, edge_index)  # (N, out_channels)


class GINNet(nn.Module):
    """Graph isomorphism network of Xu et al. 2019 (https://arxiv.org/abs/1810.00826) for graph classification.

    ``h_v' = MLP((1 + eps) h_v + sum_{u in N(v)} h_u)`` with a two-layer MLP and batch norm. The readout follows the
    paper's code: each layer's node features (the input's included) are sum-pooled over the graph, mapped to class
    scores by a linear layer with dropout, and the scores of all layers are added.

    Args:
        in_channels: Features of a node; filled from the data.
        out_channels: Classes of a graph; filled from the data.
        hidden_channels: Width of every GIN layer (64 in the paper's search space, 32 the other choice).
        num_layers: Layers counted as in the paper, the input layer included: ``num_layers - 1`` GIN layers (5).
        dropout: Dropout before each layer's linear readout (0.5, the other choice 0).
        train_eps: Learn ``eps`` (GIN) instead of fixing it at 0 (GIN-0, the paper's best on most sets).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int = 64,
        num_layers: int = 5,
        dropout: float = 0.5,
        train_eps: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"num_layers counts the input layer and must be at least 2, got {num_layers}")
        self.dropout = dropout
        widths = [in_channels] + [hidden_channels] * (num_layers - 1)
        self.convs = nn.ModuleList(
            GINConv(MLP([width, hidden_channels, hidden_channels], norm="batch_norm"), train_eps=train_eps)
            for width in widths[:-1]
        )
        # GIN's MLP ends linear; the paper's code normalises and activates each layer's output.
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden_channels) for _ in self.convs)
        self.readouts = nn.ModuleList(nn.Linear(width, out_channels) for width in widths)

    def reset_parameters(self) -> None:
        for module in [*self.convs, *self.norms, *self.readouts]:
            module.reset_parameters()

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        layers = [x]  # each (N, width)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            layers.append(F.relu(norm(conv(layers[-1], edge_index))))
        scores = [
            F.dropout(readout(global_add_pool(h, batch)), self.dropout, self.training)  # (G, out_channels)
            for readout, h in zip(self.readouts, layers, strict=True)
        ]
        return torch.stack(scores).sum(dim=0)  # (G, out_channels)
