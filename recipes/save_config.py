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
        #: Model arguments the ``recipe`` command filled from the DataModule; set by the command after it builds us.
        self.data_values: dict = {}

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # The logged copy includes the values filled from the data (num_classes, ...): it describes the run. The
        # config.yaml beside the checkpoints leaves them out, so it can be reused with other data.
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        model = config.get("model")
        if isinstance(model, dict) and self.data_values:
            init_args = model.setdefault("init_args", {})
            init_args.update({k: list(v) if isinstance(v, tuple) else v for k, v in self.data_values.items()})
        for logger in trainer.loggers:
            logger.log_hyperparams(config)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        folder = getattr(checkpoint, "dirpath", None) or trainer.log_dir or trainer.default_root_dir
        if trainer.is_global_zero and folder:
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, self.config_filename)
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            init_args = (config.get("model") or {}).get("init_args") or {}
            for name in self.data_values:  # their defaults would read as hand-given values that contradict the data
                init_args.pop(name, None)
            with open(path, "w") as f:
                yaml.safe_dump(config, f, sort_keys=False)
