"""The ``recipe`` command: Lightning's CLI with our defaults, packaged recipe names and readable errors.

    recipe fit --config vision/digits                  # a packaged recipe by name
    recipe fit --config my.yaml --trainer.max_epochs=3 # any config file, any Lightning flag
    recipe test --config vision/digits --ckpt_path runs/.../best.ckpt
    recipe list                                        # every packaged recipe
    recipe export --ckpt_path runs/.../last.ckpt --format onnx  # a deployable model file (see recipes.export)

Model and DataModule are chosen by ``class_path`` (subclass mode), so a user's own subclasses work unchanged.
Values that come from the data (classes, channels, vocabulary size, ...; see ``core.data_values``) are filled
from the DataModule into the model's constructor when both are instantiated, so no recipe states them.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from recipes import catalog
from recipes.errors import UsageError

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningCLI

SUBCOMMANDS = ("fit", "validate", "test", "predict")
DESCRIPTION = (
    "Run a lightning-recipes recipe: `recipe fit --config vision/digits`. `recipe list` prints the packaged "
    "recipes; `recipe fit --help` documents every option."
)


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
            for part in catalog.expand(path):  # a recipe that extends another stacks on it
                out += ["--config", str(part)]
            name = name or catalog.recipe_name(Path(path))
        i += 1
    return out, name


def _run_name(argv: list[str], recipe: str | None) -> str:
    if recipe:
        return recipe
    picked = []
    for i, arg in enumerate(argv):
        if arg in ("--model", "--data") and i + 1 < len(argv):
            picked.append(argv[i + 1].rsplit(".", 1)[-1])
        elif arg.startswith(("--model=", "--data=")):  # the same flags written with '='
            picked.append(arg.split("=", 1)[1].rsplit(".", 1)[-1])
    return "-".join(picked) or "run"


def _argument_message(text: str) -> str:
    """The parser's nested explanation cut to one line: the dotted key and the innermost reason.

    jsonargparse explains a bad nested value with a tree of every type it tried (25 lines for one wrong enum); the
    user needs the key, what it expected and what it got.
    """
    for path, reason in reversed(re.findall(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)", text)):
        if not reason.startswith(("Parser key", "Does not validate")):
            fix = "Check the spelling and that its package is installed."
            return f"cannot use class_path '{path}': {reason.strip()}. {fix}"
    keys = re.findall(r'Parser key "([^"]+)"', text)
    reasons = [
        _plain(r)
        for r in re.findall(r"^\s*- (.+)$", text, re.M)
        if not r.startswith(("Problem with given class_path", "Expected a <class 'NoneType'>"))
    ]
    given = re.findall(r"Given value: (.+)$", text, re.M)
    if keys and reasons:
        value = f" (given {_clip(given[0].strip())})" if given and "Namespace(" not in given[0] else ""
        hint = ""
        if keys[-1] == "weights":  # null cannot reach a nested enum from the command line; the overlay can
            hint = ". To build the network without pretrained weights, add --config overlays/no_pretrained"
        return f"{'.'.join(keys)}: {reasons[0]}{value}{hint}"
    lines = [_plain(line.strip()) for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[:2]) if len(lines) > 1 and keys else (lines[0] if lines else text)


def _plain(reason: str) -> str:
    """A parser reason without the type dump before it and the value dump after it."""
    reason = re.sub(r"^Type .*? expects a function or a callable class: ", "", reason)
    reason = re.sub(r"\s*Got value: .*$", "", reason)
    return re.sub(r"\(given (\{.*\})\)$", lambda m: f"(given {_clip(m.group(1))})", reason)


def _clip(value: str, width: int = 80) -> str:
    return value if len(value) <= width else value[: width - 3] + "..."


def _user_message(err: BaseException) -> str:
    text = str(err)
    # DataLoader workers re-raise with the worker's whole traceback; the last line is the message that matters.
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = re.sub(r"^[\w.]+(Exception|Error): ", "", last)
    return text


HELP = f"""usage: recipe {{fit,validate,test,predict,list,export}} [--config RECIPE] [options]

{DESCRIPTION}

subcommands:
  fit        train a model (validation each epoch, best and last checkpoints, a directory per run)
  validate   score a checkpoint on the validation split
  test       score a checkpoint on the test split (metrics, confusion matrix)
  predict    write a checkpoint's predictions to predictions.pt
  list       print the packaged recipes
  export     write a checkpoint as an ONNX, TorchScript or int8 ONNX file (`recipe export --help`)

`recipe fit --help` documents every option; `recipe fit --model.help CLASS` the options of one class.
"""


def _report(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2) from None


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI | None:
    """Run the ``recipe`` command with ``args`` (default: ``sys.argv[1:]``) and return the ``LightningCLI``.

    With ``run=False`` the arguments carry no subcommand and the CLI only parses and instantiates model, data and
    trainer (as ``LightningCLI(run=False)`` does).

    ``recipe list`` prints the packaged recipes and returns ``None``, as ``recipe --help`` prints the overview; both
    answer without importing Lightning. ``recipe export ...`` runs :mod:`recipes.export` and returns ``None``.
    A user mistake (a missing config or data folder, an unknown class, a bad value, bad labels, a NaN loss) prints
    one ``error:`` line and exits with status 2.
    """
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["list"]:
        print(catalog.format_table())
        return None
    if argv in (["--help"], ["-h"]):
        print(HELP)
        return None
    from jsonargparse import ArgumentError
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    if argv[:1] == ["export"]:
        from recipes import export

        try:
            export.main(argv[1:])
        except (UsageError, MisconfigurationException) as err:
            _report(_user_message(err))
        return None

    from recipes.recipe_cli import RUN_DIR_ENV, cli_kwargs

    inherited_run_dir = RUN_DIR_ENV in os.environ
    try:
        argv, recipe = _resolve_configs(argv)
        # The CLI reads sys.argv rather than ``args=`` so that DDP's launcher, which re-runs sys.argv in each new
        # process, starts the workers with the resolved recipe paths.
        saved_argv, sys.argv = sys.argv, [sys.argv[0], *argv]
        try:
            from recipes.recipe_cli import RecipeCLI

            return RecipeCLI(
                **cli_kwargs(_run_name(argv, recipe), DESCRIPTION, SUBCOMMANDS),
                run=run,
                only_subcommand=argv[0] if argv and argv[0] in SUBCOMMANDS else None,
            )
        finally:
            sys.argv = saved_argv
            if not inherited_run_dir:  # the next command in this process starts a run of its own
                os.environ.pop(RUN_DIR_ENV, None)
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
        _report(_user_message(err))


def console() -> None:
    """Entry point of the ``recipe`` console script (which exits with the return value, so it returns nothing)."""
    main()


if __name__ == "__main__":
    console()
