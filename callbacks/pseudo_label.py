"""Pseudo-labelling: train on the model's confident predictions for unlabelled examples as well as on the labels."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from typing_extensions import override

from core.batches import split_batch

#: What a DataModule offers for pseudo-labelling (``InMemoryImageDataModule(labelled_fraction=...)`` does).
PROTOCOL = ("unlabelled_dataloader", "set_pseudo_labels")


class PseudoLabel(Callback):
    r"""Label the DataModule's unlabelled examples with the model's confident predictions and train on them too.

    Pseudo-labelling (`Lee 2013 <https://www.researchgate.net/publication/280581078>`_, "Pseudo-Label: The Simple and
    Efficient Semi-Supervised Learning Method for Deep Neural Networks") trains on the class the network predicts for
    an unlabelled example as if it were the true label. Here, at the end of the last training batch of every
    ``every_n_epochs``-th epoch from ``start_epoch - 1`` on, the module in eval mode scores the whole unlabelled pool,
    :math:`p = \mathrm{softmax}(f(x))` (N, C), and the examples with :math:`\max_c p_c \ge` ``threshold`` join the
    training set of the following epochs with label :math:`\arg\max_c p_c`, replacing the previous pseudo-labels
    (an example whose confidence fell below the threshold leaves again).

    Lee's own rule differs in two ways, both chosen here on purpose. He labels every unlabelled example at every
    weight update and weights their loss by :math:`\alpha(t)`, ramped from 0 to 3 between epochs :math:`T_1` and
    :math:`T_2`. That weight lives inside the module's loss, which a callback made for any LightningModule does not
    touch; instead a confidence threshold keeps the unconfident, most often wrong, labels out (FixMatch's rule, Sohn
    et al. 2020, https://arxiv.org/abs/2001.07685, with its :math:`\tau = 0.95`, applied offline as in classic
    self-training), and ``start_epoch`` plays the part of :math:`T_1`: the labels alone train the model until then.
    Refreshing a whole epoch at a time lets the DataModule serve pseudo-labelled examples as ordinary ones.

    The DataModule holds the pseudo-labels and provides two public methods (``InMemoryImageDataModule`` with
    ``labelled_fraction < 1`` does):

    * ``unlabelled_dataloader()``: batches shaped like training batches (the inputs found by
      :func:`core.batches.split_batch`; targets ignored), always in the same order, every process reading all of it;
    * ``set_pseudo_labels(indices, labels)``: positions (K,) in that order and classes (K,) to train on from the next
      training loader on.

    It keeps them in its ``state_dict``, so checkpoints carry them and a resumed run trains on the same examples.
    Since the refresh runs before the epoch-end validation, a checkpoint written there already holds the new labels.
    This callback keeps no state of its own: its schedule depends on the epoch alone.

    Lightning builds the training loader once, unless ``Trainer(reload_dataloaders_every_n_epochs=1)`` rebuilds it at
    every epoch start; that setting is required, and checked when fitting starts. Under DDP every process scores the
    pool and process 0's labels are broadcast, so all train on the same set. Augmentation done in the DataModule's
    ``on_after_batch_transfer`` is off while scoring (the trainer is out of its training state), so labels come from
    clean inputs. A scheduler sized from the epoch length (one-cycle) needs ``max_steps``, as epochs grow once
    pseudo-labels join.

    Args:
        threshold: Lowest top-class probability, in ``(0, 1]``, for which an unlabelled example gets a pseudo-label.
        every_n_epochs: Refresh the pseudo-labels every this many epochs.
        start_epoch: The first 0-based epoch that trains on pseudo-labels (labelled at the end of the epoch before);
            at least 1, as an untrained model's guesses are noise.
    """

    def __init__(self, threshold: float = 0.95, every_n_epochs: int = 1, start_epoch: int = 1) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
            raise ValueError(
                f"threshold must be a probability in (0, 1], got {threshold!r}: the top-class probability an "
                "unlabelled example needs for a pseudo-label (0.95 keeps only confident ones)."
            )
        for name, value in (("every_n_epochs", every_n_epochs), ("start_epoch", start_epoch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        self.threshold = float(threshold)
        self.every_n_epochs = every_n_epochs
        self.start_epoch = start_epoch
        self._refreshed_epoch: int | None = None  # the epoch whose end labelled the pool last (once per epoch)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._refreshed_epoch = None  # a second fit counts its epochs from 0 again
        datamodule = trainer.datamodule
        missing = [name for name in PROTOCOL if not callable(getattr(datamodule, name, None))]
        if missing:
            raise MisconfigurationException(
                f"PseudoLabel needs a DataModule with an unlabelled pool: {type(datamodule).__name__} lacks "
                f"{', '.join(missing)}(). Use one that has them, e.g. DigitsDataModule(labelled_fraction=0.1), or add "
                "unlabelled_dataloader() and set_pseudo_labels(indices, labels) to yours."
            )
        if trainer.reload_dataloaders_every_n_epochs != 1:
            raise MisconfigurationException(
                "PseudoLabel changes the training set between epochs, but the Trainer rebuilds its training loader "
                f"every {trainer.reload_dataloaders_every_n_epochs} epochs (0: never). Set "
                "trainer.reload_dataloaders_every_n_epochs: 1."
            )
        datamodule.unlabelled_dataloader()  # a DataModule without a pool says so now, not epochs into the run

    def _due(self, epoch: int) -> bool:
        """Whether the end of ``epoch`` labels the pool for the epoch after it."""
        following = epoch + 1
        return following >= self.start_epoch and (following - self.start_epoch) % self.every_n_epochs == 0

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # The epoch's last batch: before the epoch-end validation and the checkpoints written there.
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._refresh(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._refresh(trainer, pl_module)  # an epoch cut short (on_train_batch_start returned -1) has no last batch

    def _refresh(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self._refreshed_epoch == epoch or not self._due(epoch):
            return
        self._refreshed_epoch = epoch
        indices, labels = self._label(trainer, pl_module)
        indices, labels = trainer.strategy.broadcast((indices, labels), src=0)
        trainer.datamodule.set_pseudo_labels(indices, labels)
        count = len(indices)
        pl_module.log("pseudo_label/count", float(count), on_step=False, on_epoch=True, batch_size=1)
        if count:  # near 1: one class swallows the pool, the confirmation bias pseudo-labelling is prone to
            share = torch.bincount(labels).max().item() / count
            pl_module.log("pseudo_label/top_class_share", share, on_step=False, on_epoch=True, batch_size=1)

    @torch.no_grad()
    def _label(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[Tensor, Tensor]:
        """Pool positions (K,) whose top-class probability reaches the threshold, and those classes (K,)."""
        # Per module, so parts kept in eval mode on purpose (a frozen backbone's BatchNorm) stay so afterwards.
        modes = {module: module.training for module in pl_module.modules()}
        was_training = trainer.training
        positions, classes, seen = [], [], 0
        try:
            pl_module.eval()
            trainer.training = False  # DataModules augment only while the trainer trains
            with trainer.precision_plugin.forward_context():
                for batch in trainer.datamodule.unlabelled_dataloader():
                    batch = trainer.precision_plugin.convert_input(trainer.strategy.batch_to_device(batch))
                    logits = pl_module(split_batch(batch, pl_module)[0])
                    if not isinstance(logits, Tensor) or logits.ndim != 2 or not logits.is_floating_point():
                        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                        raise MisconfigurationException(
                            f"PseudoLabel reads class logits (B, C) from pl_module(inputs), got {shape}. Give the "
                            "module a forward that returns logits, or a split_batch(batch) that finds its inputs."
                        )
                    confidence, predicted = logits.float().softmax(dim=-1).max(dim=-1)  # (B,), (B,)
                    keep = confidence >= self.threshold
                    positions.append(torch.nonzero(keep).flatten().cpu() + seen)
                    classes.append(predicted[keep].cpu())
                    seen += len(logits)
        finally:
            trainer.training = was_training
            for module, mode in modes.items():
                module.training = mode
        if not positions:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        return torch.cat(positions), torch.cat(classes)
