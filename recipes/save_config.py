"""Save the resolved recipe beside the checkpoints and send it, nested, to the loggers once; to W&B also the recipe
files themselves, as an artifact."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from recipes import catalog


class RecipeConfigCallback(SaveConfigCallback):
    """``SaveConfigCallback`` that writes ``config.yaml`` into the checkpoint folder.

    Lightning's version writes to ``trainer.log_dir``, which for W&B is the shared run directory, so the second
    run of a recipe would find the first one's file there. Checkpoints live in a folder per run, and a config
    beside them is what ``recipe test --config ... --ckpt_path ...`` wants. Hyperparameter logging by the module
    and DataModule is switched off (``save_hyperparameters(logger=False)``), so this is the only place the
    config reaches the loggers: once, nested as ``model``/``data``/``trainer``, not flattened.

    A W&B run also gets the artifact ``recipe-<recipe name>`` (type ``recipe``): ``config.yaml``, the resolved
    config that ``recipe fit --config config.yaml`` runs again, and each ``--config`` file as given, under
    ``recipes/<domain>/<name>.yaml`` for packaged recipes and overlays. Identical files make no new version.
    """

    def __init__(self, parser, config, config_filename: str = "config.yaml", overwrite: bool = True, multifile=False):
        super().__init__(parser, config, config_filename, overwrite, multifile, save_to_log_dir=False)
        #: Model arguments the ``recipe`` command filled from the DataModule; set by the command after it builds us.
        self.data_values: dict = {}

    def reusable_config(self) -> dict:
        """The resolved config without the values filled from the data: theirs would read as hand-given values
        that contradict the next dataset, so this one runs again with other data."""
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        init_args = (config.get("model") or {}).get("init_args") or {}
        for name in self.data_values:
            init_args.pop(name, None)
        return config

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
            if isinstance(logger, WandbLogger):
                self._log_recipe_artifact(logger)

    def _recipe_files(self) -> list[Path]:
        """The ``--config`` files of this command, in the order given (a recipe's bases first)."""
        given = self.config.get("config") or []
        return [Path(str(getattr(p, "absolute", p))) for p in (given if isinstance(given, list) else [given])]

    def _log_recipe_artifact(self, logger: WandbLogger) -> None:
        import wandb

        files = self._recipe_files()
        # Named after the run, which the ``recipe`` command names after the recipe given (not an overlay stacked on
        # it, nor the base it extends). Artifact names take letters, digits, '-', '_' and '.': "vision/digits"
        # becomes "recipe-vision-digits".
        recipe = logger.experiment.name or (catalog.recipe_name(files[-1]) if files else "run")
        artifact = wandb.Artifact("recipe-" + re.sub(r"[^\w.-]+", "-", recipe), type="recipe")
        for path in files:
            if path.is_file():
                artifact.add_file(str(path), name=f"recipes/{catalog.recipe_name(path)}.yaml")
        # wandb copies a file into its staging area as it is added, so the temporary one may go at once.
        with tempfile.TemporaryDirectory() as folder:
            resolved = os.path.join(folder, "config.yaml")
            with open(resolved, "w") as f:
                yaml.safe_dump(self.reusable_config(), f, sort_keys=False)
            artifact.add_file(resolved, name="config.yaml")
        logger.experiment.log_artifact(artifact)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        folder = getattr(checkpoint, "dirpath", None) or trainer.log_dir or trainer.default_root_dir
        if trainer.is_global_zero and folder:
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, self.config_filename), "w") as f:
                yaml.safe_dump(self.reusable_config(), f, sort_keys=False)
