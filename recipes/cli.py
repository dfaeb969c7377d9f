"""The ``recipe`` command: Lightning's CLI with our defaults, packaged recipe names and readable errors.

    recipe fit --config vision/digits                  # a packaged recipe by name
    recipe fit --config my.yaml --trainer.max_epochs=3 # any config file, any Lightning flag
    recipe test --config vision/digits --ckpt_path runs/.../best.ckpt
    recipe list                                        # every packaged recipe

Model and DataModule are chosen by ``class_path`` (subclass mode), so a user's own subclasses work unchanged.
Values that come from the data (classes, channels, vocabulary size, ...; see ``core.data_values``) are filled
from the DataModule into the model's constructor when both are instantiated, so no recipe states them.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import warnings
from pathlib import Path

import yaml
from jsonargparse import ArgumentError, ArgumentParser, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import callbacks  # noqa: F401  (imported so --help lists them among the known Callback subclasses)
from core import data_values
from recipes import catalog
from recipes.checkpoint import RecipeCheckpoint
from recipes.prediction_writer import PredictionWriter
from recipes.save_config import RecipeConfigCallback


class RecipeCLI(LightningCLI):
    """``LightningCLI`` that fills the model's data-dependent arguments from the DataModule, with a best/last
    ``RecipeCheckpoint`` set by ``--checkpoint.*`` and a ``PredictionWriter`` (``--predictions.*``) that saves what
    ``recipe predict`` returns.

    Data values (:mod:`core.data_values`): every model constructor argument named like a value the DataModule
    declares (``num_classes``, ``in_channels``, ``vocab_size``, ...) is filled from it. An argument named like a data
    value that the DataModule does not declare stops the command with one line, unless it defaults to ``None``
    (optional) or was given by hand. Without ``--data`` the model brings its own dataloaders and nothing is filled.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
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

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        # What the user wrote (flags and config files) without defaults: a data value given by hand is kept.
        self.explicit_config = parser.parse_args(args, defaults=False)

    def instantiate_classes(self) -> None:
        config = self.config.clone()
        section = config.get(str(self.subcommand), config)
        self.data_values: dict[str, object] = {}
        if section.get("data") is not None and section.get("model") is not None:
            datamodule = _instantiate_data(section.data)
            self.data_values = _fill_data_values(section.model, self._explicit_model(), datamodule)
            # The model's saved hyperparameters come from this dump (Lightning's instantiator reads it), so they
            # hold the filled values and load_from_checkpoint rebuilds the same model.
            dump = yaml.safe_load(self.parser.dump(config, skip_link_targets=False, skip_none=False, format="yaml"))
            self.config_dump = dump[self.subcommand] if self.subcommand else dump
            self.config_dump["model"].setdefault("init_args", {}).update(self.data_values)  # tuples stay tuples
            section.data = datamodule  # built once: its properties may have scanned files already
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unable to serialize instance")
            self.config_init = self.parser.instantiate(config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()
        for callback in self.trainer.callbacks:
            if isinstance(callback, RecipeConfigCallback):
                callback.data_values = self.data_values

    def _explicit_model(self):
        explicit = self.explicit_config.get(str(self.subcommand), self.explicit_config)
        model = explicit.get("model") if explicit is not None else None
        init_args = model.get("init_args") if model is not None and hasattr(model, "get") else None
        return init_args if init_args is not None else {}

    def instantiate_trainer(self, **kwargs) -> Trainer:
        extra_callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if config.get("enable_checkpointing") is False:
            # The always-on ``--checkpoint`` callback would make Lightning refuse ``enable_checkpointing=false``.
            extra_callbacks = [c for c in extra_callbacks if not isinstance(c, ModelCheckpoint)]
        return self._instantiate_trainer(config, extra_callbacks)


def _instantiate_data(data_config) -> LightningDataModule:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    return parser.instantiate(Namespace(data=data_config)).data


def _fill_data_values(model_config, explicit, datamodule: LightningDataModule) -> dict[str, object]:
    """Write the DataModule's values into the model's ``init_args``; return what was filled."""
    init_args = model_config.get("init_args")
    if init_args is None:
        return {}
    model_class = model_config.class_path.rsplit(".", 1)[-1]
    defaults = _defaults(model_config.class_path)
    provided = data_values.declared(datamodule)
    filled = {}
    for name in data_values.DATA_VALUES:
        if name not in init_args:
            continue
        given = name in explicit
        if name in provided:
            value = provided[name]
            if given and _normalise(explicit[name]) != _normalise(value):
                raise UsageError(data_values.conflict_message(name, explicit[name], value, datamodule))
            init_args[name] = value
            filled[name] = value
        elif not given and defaults.get(name, inspect.Parameter.empty) is not None:
            raise UsageError(data_values.missing_message(name, datamodule, model_class))
    return filled


def _defaults(class_path: str) -> dict[str, object]:
    """Constructor defaults of the class at ``class_path`` and of its bases (reached through ``**kwargs``)."""
    module_name, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    found: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for parameter in inspect.signature(init).parameters.values():
            found[parameter.name] = parameter.default
    return found


def _normalise(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


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
                None,  # --data is optional: a LightningModule may define its own dataloaders
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
