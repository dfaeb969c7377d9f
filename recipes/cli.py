"""The ``recipe`` command: Lightning's CLI with our defaults, packaged recipe names and readable errors.

    recipe fit --config vision/digits                  # a packaged recipe by name
    recipe fit --config my.yaml --trainer.max_epochs=3 # any config file, any Lightning flag
    recipe test --config vision/digits --ckpt_path runs/.../best.ckpt
    recipe list                                        # every packaged recipe

Model and DataModule are chosen by ``class_path`` (subclass mode), so a user's own subclasses work unchanged.
Sizes that come from the data (classes, channels, image size) are linked from the DataModule into the model
when both are instantiated, so no recipe states them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from jsonargparse import ArgumentError
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import callbacks  # noqa: F401  (imported so --help lists them among the known Callback subclasses)
from recipes import catalog
from recipes.checkpoint import RecipeCheckpoint
from recipes.prediction_writer import PredictionWriter
from recipes.save_config import RecipeConfigCallback

#: DataModule property -> model constructor argument, linked after the DataModule is built.
DATA_LINKS = {
    "num_classes": "num_classes",
    "num_channels": "in_channels",
    "image_size": "image_size",
    "class_names": "class_names",
}


class RecipeCLI(LightningCLI):
    """``LightningCLI`` with data-to-model links, a best/last ``RecipeCheckpoint`` set by ``--checkpoint.*`` and a
    ``PredictionWriter`` (``--predictions.*``) that saves what ``recipe predict`` returns."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in DATA_LINKS.items():
            parser.link_arguments(f"data.{source}", f"model.init_args.{target}", apply_on="instantiate")
        parser.add_lightning_class_args(RecipeCheckpoint, "checkpoint")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:02d}-{step}",
            }
        )

    def instantiate_trainer(self, **kwargs) -> Trainer:
        extra_callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if config.get("enable_checkpointing") is False:
            # The always-on ``--checkpoint`` callback would make Lightning refuse ``enable_checkpointing=false``.
            extra_callbacks = [c for c in extra_callbacks if not isinstance(c, ModelCheckpoint)]
        return self._instantiate_trainer(config, extra_callbacks)


SUBCOMMANDS = ("fit", "validate", "test", "predict")
DESCRIPTION = (
    "Run a lightning-recipes recipe: `recipe fit --config vision/digits`. `recipe list` prints the packaged "
    "recipes; `recipe fit --help` documents every option."
)


class UsageError(Exception):
    """A mistake on the command line, reported as one line without a traceback."""


def _resolve_configs(argv: list[str]) -> tuple[list[str], str | None]:
    """Turn ``--config NAME`` values that are packaged recipe names into paths; return the first recipe's name."""
    out, name = [], None
    i = 0
    while i < len(argv):
        arg = argv[i]
        value = None
        if arg in ("-c", "--config") and i + 1 < len(argv):
            value, i = argv[i + 1], i + 1
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        if value is None:
            out.append(arg)
        else:
            path = catalog.find(value)
            if path is None:
                raise UsageError(
                    f"no config file or packaged recipe named '{value}'. Give a path to a YAML file, or a recipe "
                    "name such as vision/digits (`recipe list` shows them all)."
                )
            out += ["--config", str(path)]
            name = name or catalog.recipe_name(Path(path))
        i += 1
    return out, name


def _run_name(argv: list[str], recipe: str | None) -> str:
    if recipe:
        return recipe
    picked = [argv[i + 1].rsplit(".", 1)[-1] for i, a in enumerate(argv[:-1]) if a in ("--model", "--data")]
    return "-".join(picked) or "run"


def _trainer_defaults(run_name: str) -> dict:
    run_dir = str(Path("runs") / run_name)
    return {
        "default_root_dir": run_dir,
        "logger": {
            "class_path": "recipes.wandb_logger.RecipeWandbLogger",
            "init_args": {"name": run_name, "save_dir": run_dir},
        },
    }


def _argument_message(text: str) -> str:
    """The parser's nested explanation cut to its cause when it is a class that cannot be imported or built."""
    for path, reason in reversed(re.findall(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)", text)):
        if not reason.startswith(("Parser key", "Does not validate")):
            fix = "Check the spelling and that its package is installed."
            return f"cannot use class_path '{path}': {reason.strip()}. {fix}"
    return text


def _user_message(err: BaseException) -> str:
    text = str(err)
    # DataLoader workers re-raise with the worker's whole traceback; the last line is the message that matters.
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = re.sub(r"^[\w.]+(Exception|Error): ", "", last)
    return text


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI | None:
    """Run the ``recipe`` command with ``args`` (default: ``sys.argv[1:]``) and return the ``LightningCLI``.

    With ``run=False`` the arguments carry no subcommand and the CLI only parses and instantiates model, data and
    trainer (as ``LightningCLI(run=False)`` does).

    ``recipe list`` prints the packaged recipes and returns ``None``. A user mistake (a missing config or data
    folder, an unknown class, bad labels, a NaN loss) prints one ``error:`` line and exits with status 2.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["list"]:
        print(catalog.format_table())
        return None
    try:
        argv, recipe = _resolve_configs(argv)
        # The CLI reads sys.argv rather than ``args=`` so that DDP's launcher, which re-runs sys.argv in each new
        # process, starts the workers with the resolved recipe paths.
        saved_argv, sys.argv = sys.argv, [sys.argv[0], *argv]
        try:
            return RecipeCLI(
                LightningModule,
                LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                save_config_callback=RecipeConfigCallback,
                trainer_defaults=_trainer_defaults(_run_name(argv, recipe)),
                # Parse errors raise instead of printing the whole usage, so they can be reported in a few lines.
                parser_kwargs={
                    "exit_on_error": False,
                    "description": DESCRIPTION,
                    **{cmd: {"exit_on_error": False} for cmd in SUBCOMMANDS},
                },
                run=run,
            )
        finally:
            sys.argv = saved_argv
    except ArgumentError as err:
        command = " ".join(["recipe", *argv[:1]]) if argv and argv[0] in SUBCOMMANDS else "recipe"
        message = _argument_message(str(err))
        if "required" in message and ".model" in message:
            message += " (give a recipe, e.g. --config vision/digits, or --model and --data class paths)"
        print(
            f"error: {message}\nSee `{command} --help` for every option, `recipe list` for the recipes.",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    except (UsageError, MisconfigurationException) as err:
        print(f"error: {_user_message(err)}", file=sys.stderr)
        raise SystemExit(2) from None


def console() -> None:
    """Entry point of the ``recipe`` console script (which exits with the return value, so it returns nothing)."""
    main()


if __name__ == "__main__":
    console()
