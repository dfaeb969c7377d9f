"""The four dataloader hooks of a DataModule whose splits are served by one ``_loader(split)`` method."""

from __future__ import annotations

from typing import ClassVar

from torch.utils.data import DataLoader


class SplitLoaders:
    """Mixin: ``train|val|test|predict_dataloader`` call ``self._loader(split)``. ``predict_split`` names what
    ``recipe predict`` reads (``"test"`` for datasets without a split of their own to predict)."""

    predict_split: ClassVar[str | None] = "predict"

    def _loader(self, split: str | None) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split)
