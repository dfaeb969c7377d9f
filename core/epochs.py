"""Whether a run's training epoch ever ends: callbacks that schedule in epochs must know before training starts."""

from __future__ import annotations

import math
from typing import Any


def epoch_never_ends(trainer: Any) -> bool:
    """True when the training data has no length (an iterable dataset trained for ``max_steps``).

    The training loader is set up now if it is not yet, as ``trainer.estimated_stepping_batches`` would do.
    """
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()
    return trainer.train_dataloader is not None and math.isinf(trainer.num_training_batches)
