"""The W&B sweeps in ``recipes/sweeps/`` run offline: two configurations sampled from each, expanded into the command
line ``wandb agent`` would start (wandb's own ``${args}`` macros), and run through ``recipe fit`` with the sampled
values reaching the model, the data and the seed."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import yaml
from wandb.sdk.launch.sweeps import utils as sweep_utils

from recipes import catalog
from recipes.cli import main

SWEEPS = sorted((catalog.RECIPES_DIR / "sweeps").glob("*.yaml"))
#: Tiny runs: the sampled values must be applied, not trained to convergence.
TINY = [
    "--trainer.logger=false",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.enable_checkpointing=false",
]
#: An RL recipe's epochs are rounds of interaction: a short budget instead.
TINY_RL = ["--data.init_args.total_steps=512", "--trainer.max_epochs=-1", "--trainer.callbacks.init_args.episodes=1"]
#: The metrics the sweeps rank runs by, as the recipes log them.
LOGGED = {"digits": "val/acc", "breast_cancer": "val/acc", "cartpole_ppo": "eval/mean_return"}


def _sample(spec: dict, rng: random.Random):
    """One value of a parameter, as W&B's random search draws it, for the distributions our sweeps use."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    kind = spec.get("distribution")
    low, high = spec["min"], spec["max"]
    if kind == "log_uniform_values":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    if kind == "uniform":
        return rng.uniform(low, high)
    if kind == "int_uniform":
        return rng.randint(low, high)
    raise AssertionError(f"the test samples no {kind!r} distribution: add it here or use one it knows")


def _agent_command(sweep: dict, values: dict) -> list[str]:
    """The command line ``wandb agent`` starts for ``values``: wandb's own macro expansion of the sweep's command."""
    command = sweep_utils.create_sweep_command(list(sweep["command"]))
    macros = sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    macros["env"] = ["/usr/bin/env"]  # as the agent sets it on Linux and macOS
    expanded: list[str] = []
    for chunk in map(str, command):
        expanded += macros.get(chunk[2:-1], []) if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return expanded


def _value(config, dotted: str):
    for key in dotted.split("."):
        config = config[key]
    return config


def _built(obj, field: str):
    """A constructor argument as the built object holds it: its saved hyperparameters, else its attribute."""
    hparams = getattr(obj, "hparams", {})
    return hparams[field] if field in hparams else getattr(obj, field)


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_is_well_formed(path: Path):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] in {"random", "bayes", "grid"}
    assert sweep["metric"]["name"] == LOGGED[path.stem] and sweep["metric"]["goal"] == "maximize"
    command = sweep["command"]
    assert command[:3] == ["${env}", "recipe", "fit"] and command[-1] == "${args}"
    assert catalog.find(command[command.index("--config") + 1]) is not None, "the sweep runs a packaged recipe"


@pytest.mark.slow  # two short fits per sweep: 2-6 s each
@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_two_sampled_configurations_train_with_their_values(path: Path):
    sweep = yaml.safe_load(path.read_text())
    rng = random.Random(path.stem)
    for _ in range(2):
        values = {name: _sample(spec, rng) for name, spec in sweep["parameters"].items()}
        command = _agent_command(sweep, values)
        assert command[:3] == ["/usr/bin/env", "recipe", "fit"]
        assert {f"--{name}={value}" for name, value in values.items()} <= set(command)  # ${args}: --key=value
        tiny = TINY + (TINY_RL if "rl/" in " ".join(command) else [])
        cli = main([*command[2:], *tiny])
        config = cli.config["fit"]
        for name, value in values.items():
            assert _value(config, name) == pytest.approx(value), name  # parsed from the flag W&B wrote
        for name, value in values.items():  # and built into the run's model and data
            owner = {"model": cli.model, "data": cli.datamodule}.get(name.split(".")[0])
            if owner is not None and name.count(".") == 2:  # an argument of the module itself, not of its parts
                assert _built(owner, name.split(".")[-1]) == pytest.approx(value), name
        groups = cli.trainer.optimizers[0].param_groups
        for name, value in values.items():  # optimizer and schedule values reach the optimizer's groups
            if ".optimizer.init_args." in name or ".lr_scheduler.init_args." in name:
                field = name.split(".")[-1]
                # The step's learning rate moves with the schedule; schedulers keep the starting one as initial_lr.
                field = "initial_lr" if field == "lr" and "initial_lr" in groups[0] else field
                assert max(group[field] for group in groups) == pytest.approx(value), name
        assert cli.trainer.state.finished and cli.trainer.global_step > 0
