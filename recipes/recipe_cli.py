"""The ``LightningCLI`` behind the ``recipe`` command: data values filled into the model, a directory per run,
best/last checkpoints, saved predictions and a summary at the end. Imported only when a subcommand runs, so
``recipe list`` and ``recipe --help`` answer without loading Lightning."""

from __future__ import annotations

import importlib
import inspect
import os
import warnings
from pathlib import Path

import yaml
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import callbacks  # noqa: F401  (imported so --help lists them among the known Callback subclasses)
from core import data_values
from core.precision import warn_if_bf16_emulated
from core.pretrained import pretrained_keys, turned_off
from recipes.checkpoint import RecipeCheckpoint
from recipes.errors import UsageError
from recipes.prediction_writer import PredictionWriter
from recipes.progress import RecipeProgressBar
from recipes.save_config import RecipeConfigCallback

#: Set by the first process of a run to its run directory, so processes that Lightning's DDP launcher starts
#: (which inherit the environment) write into the same one.
RUN_DIR_ENV = "RECIPES_RUN_DIR"
WANDB_LOGGER = "recipes.wandb_logger.RecipeWandbLogger"


class RecipeCLI(LightningCLI):
    """``LightningCLI`` that fills the model's data-dependent arguments from the DataModule, with a best/last
    ``RecipeCheckpoint`` set by ``--checkpoint.*`` and a ``PredictionWriter`` (``--predictions.*``) that saves what
    ``recipe predict`` returns.

    Data values (:mod:`core.data_values`): every model constructor argument named like a value the DataModule
    declares (``num_classes``, ``in_channels``, ``vocab_size``, ...) is filled from it. An argument named like a data
    value that the DataModule does not declare stops the command with one line, unless it defaults to ``None``
    (optional) or was given by hand. Without ``--data`` the model brings its own dataloaders and nothing is filled.
    """

    def __init__(self, *args, only_subcommand: str | None = None, **kwargs) -> None:
        # Building a subcommand's parser walks every class signature (0.2 s each): build only the one asked for.
        self._only_subcommand = only_subcommand
        if only_subcommand is not None and "parser_kwargs" in kwargs:
            others = set(LightningCLI.subcommands()) - {only_subcommand}
            kwargs["parser_kwargs"] = {k: v for k, v in kwargs["parser_kwargs"].items() if k not in others}
        super().__init__(*args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:
        every = LightningCLI.subcommands()
        only = getattr(self, "_only_subcommand", None)
        return {only: every[only]} if only in every else every

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
        ckpt_path = section.get("ckpt_path")
        if ckpt_path and not ckpt_path.startswith(("last", "best", "hpc", "registry")) and "://" not in ckpt_path:
            if not os.path.isfile(ckpt_path):  # before the run directory is made: a typo leaves nothing behind
                raise UsageError(
                    f"no checkpoint file at '{ckpt_path}'. Give the path of a .ckpt file: `recipe fit` prints the best "
                    "and last ones, under the run's checkpoints/ folder."
                )
        self.run_dir = _place_run(section)
        if section.get("ckpt_path") and section.get("model") is not None:
            # The checkpoint holds the network's weights: build it without fetching pretrained ones (no network).
            items = dict(section.model.items())
            for key in pretrained_keys(items):
                section.model[key] = turned_off(items[key])
        self.data_values: dict[str, object] = {}
        if section.get("data") is not None and section.get("model") is not None:
            datamodule = _built("the DataModule", lambda: _instantiate_data(section.data))
            _restore_data_state(datamodule, section.get("ckpt_path"))
            self.data_values = _fill_data_values(section.model, self._explicit_model(), datamodule)
            # The model's saved hyperparameters come from this dump (Lightning's instantiator reads it), so they
            # hold the filled values and load_from_checkpoint rebuilds the same model.
            dump = yaml.safe_load(self.parser.dump(config, skip_link_targets=False, skip_none=False, format="yaml"))
            self.config_dump = dump[self.subcommand] if self.subcommand else dump
            self.config_dump["model"].setdefault("init_args", {}).update(self.data_values)  # tuples stay tuples
            section.data = datamodule  # built once: its properties may have scanned files already
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unable to serialize instance")
            self.config_init = _built("the model, DataModule or trainer", lambda: self.parser.instantiate(config))
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self._add_configure_optimizers_method_to_model(self.subcommand)
        self.trainer = self.instantiate_trainer()
        warn_if_bf16_emulated(self.trainer)
        for callback in self.trainer.callbacks:
            if isinstance(callback, RecipeConfigCallback):
                callback.data_values = self.data_values

    def _explicit_model(self):
        explicit = self.explicit_config.get(str(self.subcommand), self.explicit_config)
        model = explicit.get("model") if explicit is not None else None
        init_args = model.get("init_args") if model is not None and hasattr(model, "get") else None
        return init_args if init_args is not None else {}

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            # Lightning stops the other processes when a child of its DDP launcher fails, but not when this, the
            # first process, fails: they would wait in their next collective until its timeout. End them now.
            from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
            from lightning.pytorch.trainer.connectors.signal_connector import _get_sigkill_signal

            launcher = getattr(self.trainer.strategy, "launcher", None)
            if isinstance(launcher, _SubprocessScriptLauncher):
                launcher.kill(_get_sigkill_signal())
            raise

    def after_fit(self) -> None:
        """Say where the run went and how it ended: the one thing a user looks for after training."""
        if not self.trainer.is_global_zero:
            return
        lines = [f"run directory: {os.path.abspath(self.run_dir)}"]
        checkpoint = self.trainer.checkpoint_callback
        if isinstance(checkpoint, ModelCheckpoint):
            if checkpoint.best_model_path:
                score = checkpoint.best_model_score
                value = f" ({checkpoint.monitor}={float(score):.4f})" if score is not None else ""
                lines.append(f"best checkpoint: {checkpoint.best_model_path}{value}")
            if checkpoint.last_model_path:
                lines.append(f"last checkpoint: {checkpoint.last_model_path}")
            final = self.trainer.callback_metrics.get(checkpoint.monitor) if checkpoint.monitor else None
            if final is not None:
                lines.append(f"final {checkpoint.monitor}: {float(final):.4f}")
        print("\n".join(lines))

    def instantiate_trainer(self, **kwargs) -> Trainer:
        extra_callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if config.get("enable_checkpointing") is False:
            # The always-on ``--checkpoint`` callback would make Lightning refuse ``enable_checkpointing=false``.
            extra_callbacks = [c for c in extra_callbacks if not isinstance(c, ModelCheckpoint)]
        given = config.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in [*given, *extra_callbacks]
        ):
            extra_callbacks.append(RecipeProgressBar())  # shows train/loss without a host sync every step
        return self._instantiate_trainer(config, extra_callbacks)


def _restore_data_state(datamodule: LightningDataModule, ckpt_path: str | None) -> None:
    """Give the DataModule its checkpointed state (fitted preprocessing, class names) before the data values are read:
    Lightning restores it only after ``setup``, too late for the model's sizes, and ``recipe test|predict`` must not
    need the training data a checkpoint already summarises."""
    if not ckpt_path or not os.path.isfile(ckpt_path):  # "last", "best" and the like are Lightning's to resolve
        return
    import torch

    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    state = checkpoint.get(type(datamodule).__qualname__)
    if state:
        datamodule.load_state_dict(state)


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


def cli_kwargs(run_name: str, description: str, subcommands: tuple[str, ...]) -> dict:
    """The ``RecipeCLI`` arguments of the ``recipe`` command."""
    from lightning.pytorch import LightningModule

    return {
        "model_class": LightningModule,
        "datamodule_class": None,  # --data is optional: a LightningModule may define its own dataloaders
        "subclass_mode_model": True,
        "subclass_mode_data": True,
        "save_config_callback": RecipeConfigCallback,
        "trainer_defaults": {
            "default_root_dir": str(Path("runs") / run_name),
            "logger": {"class_path": WANDB_LOGGER, "init_args": {"name": run_name}},
        },
        # Parse errors raise instead of printing the whole usage, so they can be reported in a few lines.
        "parser_kwargs": {
            "exit_on_error": False,
            "description": description,
            **{cmd: {"exit_on_error": False} for cmd in subcommands},
        },
    }


def _place_run(section) -> str:
    """Give this run a directory of its own under ``trainer.default_root_dir`` and point logs and checkpoints there.

    ``<root>/version_N`` with the next free N, as Lightning's loggers number their versions, so a second run of a
    recipe never overwrites the first one's ``last.ckpt`` or ``config.yaml``. The first process of a run picks it
    and leaves it in the environment, which the processes Lightning's DDP launcher starts inherit; under torchrun or
    SLURM every process starts on its own, so the job id names the directory instead.
    """
    trainer = section.trainer
    root = trainer.get("default_root_dir") or "runs"
    run_dir = os.environ.get(RUN_DIR_ENV)
    if run_dir is None:
        job = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("SLURM_JOB_ID")
        if job and job != "none":
            run_dir = os.path.join(root, f"job_{job}")
        else:
            taken = [p.name for p in Path(root).glob("version_*")] if os.path.isdir(root) else []
            numbers = [int(n.split("_", 1)[1]) for n in taken if n.split("_", 1)[1].isdigit()]
            run_dir = os.path.join(root, f"version_{max(numbers, default=-1) + 1}")
        os.makedirs(run_dir, exist_ok=True)  # claimed at once: a second command started now gets the next number
        os.environ[RUN_DIR_ENV] = run_dir
    trainer.default_root_dir = run_dir
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, Namespace) and logger.get("class_path") == WANDB_LOGGER:
            if logger.init_args.get("save_dir") is None:
                logger.init_args.save_dir = run_dir
    checkpoint = section.get("checkpoint")
    if checkpoint is not None and checkpoint.get("dirpath") is None:
        checkpoint.dirpath = os.path.join(run_dir, "checkpoints")
    return run_dir


def _built(what: str, build):
    """Run ``build``; a constructor's ``ValueError``/``TypeError`` (a bad value in the recipe) becomes one line
    naming the class that refused it, however deeply the config parser wrapped it."""
    try:
        return build()
    except (ValueError, TypeError) as err:
        root: BaseException = err
        while root.__cause__ is not None:
            root = root.__cause__
        if isinstance(root, UsageError) or type(root).__name__ == "MisconfigurationException":
            raise root from None
        lines = [line.strip() for line in str(root).strip().splitlines() if line.strip()]
        owner = _raising_class(root) or what
        raise UsageError(f"{owner}: {lines[0] if lines else type(root).__name__}") from err


def _raising_class(err: BaseException) -> str | None:
    """The class whose ``__init__`` raised ``err`` (the innermost one), if any."""
    owner, tb = None, err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "__init__" and "self" in tb.tb_frame.f_locals:
            owner = type(tb.tb_frame.f_locals["self"]).__name__
        tb = tb.tb_next
    return owner
