"""Networks over table rows: numbers ``x_num`` (B, num_continuous) float and category indices ``x_cat``
(B, len(cardinalities)) long, index 0 of each column kept for unseen and missing values.

Every network here takes ``(num_continuous, cardinalities, out_features)`` first, so a LightningModule builds it
from the data's sizes (a recipe names the class and its own options only), and returns ``(B, out_features)`` or,
for an ensemble such as TabM, ``(B, k, out_features)``: one prediction per member.

* :class:`TabularMLP`: category embeddings concatenated with the numbers, then the MLP of
  Gorishniy et al. 2021 (https://arxiv.org/abs/2106.11959), from ``rtdl_revisiting_models``.
* :class:`FTTransformer`: the FT-Transformer of the same paper, ``rtdl_revisiting_models.FTTransformer``.
* :class:`TabM`: TabM (Gorishniy et al. 2024, https://arxiv.org/abs/2410.24210), ``tabm.TabM``, with the
  piecewise-linear number embeddings of Gorishniy et al. 2022 (https://arxiv.org/abs/2203.05556),
  ``rtdl_num_embeddings.PiecewiseLinearEmbeddings``, whose bins come from the training numbers
  (:meth:`TabM.fit_bins`).
"""

from __future__ import annotations

from typing import Any

import rtdl_num_embeddings
import rtdl_revisiting_models
import tabm
import torch
from torch import nn


def _present(x: torch.Tensor) -> torch.Tensor | None:
    """``x``, or ``None`` for a table without columns of its kind: the rtdl and tabm modules want ``None`` then."""
    return x if x.shape[-1] > 0 else None


class TabularMLP(nn.Module):
    """MLP over category embeddings and numbers: ``(B, num_continuous), (B, n_cat) -> (B, out_features)``.

    Each category column gets its own ``d_embedding``-wide embedding table (``CategoricalEmbeddings``); the
    embeddings, flattened, join the numbers as the MLP's input.

    Args:
        num_continuous: Numeric columns after preprocessing; filled from the data.
        cardinalities: Categories per categorical column, the unseen index included; filled from the data.
        out_features: Outputs per row (classes, or 1 for regression); set by the LightningModule.
        d_embedding: Width of each category embedding.
        n_blocks: Hidden blocks (linear, ReLU, dropout).
        d_block: Width of each hidden block.
        dropout: Dropout after each hidden block.
    """

    def __init__(
        self,
        num_continuous: int,
        cardinalities: tuple[int, ...],
        out_features: int,
        d_embedding: int = 8,
        n_blocks: int = 2,
        d_block: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_continuous == 0 and not cardinalities:
            raise ValueError("a table needs at least one numeric or categorical column")
        self.embeddings = (
            rtdl_revisiting_models.CategoricalEmbeddings(list(cardinalities), d_embedding) if cardinalities else None
        )
        d_in = num_continuous + len(cardinalities) * d_embedding
        self.mlp = rtdl_revisiting_models.MLP(
            d_in=d_in, d_out=out_features, n_blocks=n_blocks, d_block=d_block, dropout=dropout
        )

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        parts = [x_num]
        if self.embeddings is not None:
            parts.append(self.embeddings(x_cat).flatten(1))  # (B, n_cat, d) -> (B, n_cat * d)
        return self.mlp(torch.cat(parts, dim=1))  # (B, out_features)


class FTTransformer(nn.Module):
    """FT-Transformer: every column a token, a [CLS] token read out: ``-> (B, out_features)``.

    Args:
        num_continuous: Numeric columns after preprocessing; filled from the data.
        cardinalities: Categories per categorical column, the unseen index included; filled from the data.
        out_features: Outputs per row (classes, or 1 for regression); set by the LightningModule.
        n_blocks: Transformer blocks; the paper's default width, heads and dropouts for that depth are used
            (``FTTransformer.get_default_kwargs``).
        d_block: Token width; ``None`` keeps the default for ``n_blocks`` (96, 128, 192, ... for 1, 2, 3, ...).
    """

    def __init__(
        self,
        num_continuous: int,
        cardinalities: tuple[int, ...],
        out_features: int,
        n_blocks: int = 3,
        d_block: int | None = None,
    ) -> None:
        super().__init__()
        config: dict[str, Any] = rtdl_revisiting_models.FTTransformer.get_default_kwargs(n_blocks)
        if d_block is not None:
            config.update(d_block=d_block, _is_default=False)
        self.net = rtdl_revisiting_models.FTTransformer(
            n_cont_features=num_continuous, cat_cardinalities=list(cardinalities), d_out=out_features, **config
        )

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        return self.net(_present(x_num), _present(x_cat))  # (B, out_features)


class TabM(nn.Module):
    """TabM: ``k`` MLPs sharing most weights (BatchEnsemble-style), one prediction each: ``-> (B, k, out_features)``.

    Train on the mean of the ``k`` members' losses and predict with the mean of their predictions (probabilities
    for classification), as the paper does; :class:`lightning_modules.tabular.TabularModel` does both.

    Numbers pass through piecewise-linear embeddings (version "B", the TabM paper's). Their bins must be quantiles
    of the *training* numbers: until :meth:`fit_bins` is called the bins are an even grid over ``[-3, 3]``, the
    range of standardised numbers. The bins travel in the state dict (extra state), so a reloaded network rebuilds
    the fitted embedding before its weights are loaded.

    Args:
        num_continuous: Numeric columns after preprocessing; filled from the data.
        cardinalities: Categories per categorical column, the unseen index included; filled from the data.
        out_features: Outputs per row (classes, or 1 for regression); set by the LightningModule.
        k: Ensemble members.
        n_blocks: Hidden blocks of each member.
        d_block: Width of the hidden blocks.
        dropout: Dropout after each hidden block.
        n_bins: Bins per numeric column (fewer where a column has fewer distinct values).
        d_embedding: Width of each number's embedding; 0 turns the embeddings off (plain numbers).
    """

    def __init__(
        self,
        num_continuous: int,
        cardinalities: tuple[int, ...],
        out_features: int,
        k: int = 32,
        n_blocks: int = 2,
        d_block: int = 256,
        dropout: float = 0.1,
        n_bins: int = 48,
        d_embedding: int = 16,
    ) -> None:
        super().__init__()
        if n_bins < 2:
            raise ValueError(f"n_bins must be at least 2, got {n_bins}")
        self.n_bins, self.d_embedding = n_bins, d_embedding
        self.bins: list[torch.Tensor] | None = None
        if d_embedding > 0 and num_continuous > 0:
            self.bins = [torch.linspace(-3.0, 3.0, n_bins + 1) for _ in range(num_continuous)]
        self.net = tabm.TabM.make(
            n_num_features=num_continuous,
            cat_cardinalities=list(cardinalities),
            d_out=out_features,
            num_embeddings=self._embeddings(self.bins) if self.bins is not None else None,
            k=k,
            n_blocks=n_blocks,
            d_block=d_block,
            dropout=dropout,
        )

    def _embeddings(self, bins: list[torch.Tensor]) -> nn.Module:
        return rtdl_num_embeddings.PiecewiseLinearEmbeddings(bins, self.d_embedding, activation=False, version="B")

    @torch.no_grad()
    def fit_bins(self, x_num: torch.Tensor) -> None:
        """Bins from the training numbers ``x_num`` (N, num_continuous): ``n_bins`` quantile bins per column."""
        if self.bins is None:
            return
        device = next(self.parameters()).device
        x_num = x_num.float().cpu()
        # compute_bins refuses a column with one value (a constant feature, or a short training split): such a
        # column carries no information, so it gets the two edges around its value, one bin, instead.
        varied = torch.tensor([len(column.unique()) > 1 for column in x_num.T], dtype=torch.bool)
        n_bins = max(2, min(self.n_bins, len(x_num) - 1))  # compute_bins needs fewer bins than rows
        fitted = iter(rtdl_num_embeddings.compute_bins(x_num[:, varied], n_bins=n_bins) if varied.any() else [])
        self.bins = [
            next(fitted).cpu() if keep else torch.stack([column[0] - 1, column[0] + 1])
            for keep, column in zip(varied.tolist(), x_num.T, strict=True)
        ]
        # A fresh embedding: its linear part starts as the plain linear embedding, as after __init__.
        self.net.num_module = self._embeddings(self.bins).to(device)

    def get_extra_state(self) -> dict[str, Any]:
        return {"bins": [b.tolist() for b in self.bins] if self.bins is not None else None}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        # Called before the children's weights are loaded (load_state_dict visits a module before its children),
        # so the embedding is rebuilt with the saved bins and then receives its saved weights.
        if state.get("bins") is None:
            return
        device = next(self.parameters()).device
        self.bins = [torch.tensor(b) for b in state["bins"]]
        self.net.num_module = self._embeddings(self.bins).to(device)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        return self.net(_present(x_num), _present(x_cat))  # (B, k, out_features)
