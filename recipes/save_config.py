"""Save the resolved recipe beside the checkpoints and send it, nested, to the loggers once."""

from __future__ import annotations

import os

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback


class RecipeConfigCallback(SaveConfigCallback):
    """``SaveConfigCallback`` that writes ``config.yaml`` into the checkpoint folder.

    Lightning's version writes to ``trainer.log_dir``, which for W&B is the shared run directory, so the second
    run of a recipe would find the first one's file there. Checkpoints live in a folder per run, and a config
    beside them is what ``recipe test --config ... --ckpt_path ...`` wants. Hyperparameter logging by the module
    and DataModule is switched off (``save_hyperparameters(logger=False)``), so this is the only place the
    config reaches the loggers: once, nested as ``model``/``data``/``trainer``, not flattened.
    """

    def __init__(self, parser, config, config_filename: str = "config.yaml", overwrite: bool = True, multifile=False):
        super().__init__(parser, config, config_filename, overwrite, multifile, save_to_log_dir=False)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # The logged copy includes the values linked from the data (num_classes, ...): it describes the run.
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_link_targets=False))
        for logger in trainer.loggers:
            logger.log_hyperparams(config)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        folder = getattr(checkpoint, "dirpath", None) or trainer.log_dir or trainer.default_root_dir
        if trainer.is_global_zero and folder:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, self.config_filename)
            self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=self.multifile)
