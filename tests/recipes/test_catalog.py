"""Every packaged recipe parses and instantiates; ``recipe list`` and recipe names resolve."""

from __future__ import annotations

import importlib.util

import pytest
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from recipe_flags import offline_overrides

from recipes import catalog
from recipes.cli import main

RECIPES = catalog.recipe_paths()
#: Recipes whose environment needs an optional extra (``pip install "gymnasium[box2d]"``).
NEEDS_BOX2D = {"rl/lunarlander_ppo"}


def test_recipes_are_packaged():
    names = {catalog.recipe_name(p) for p in RECIPES}
    assert {"vision/digits", "vision/mnist", "vision/cifar10", "vision/imagefolder_finetune"} <= names
    assert not any(name.startswith("overlays/") for name in names)


@pytest.mark.parametrize("path", RECIPES, ids=[catalog.recipe_name(p) for p in RECIPES])
def test_recipe_parses_and_instantiates(path, fake_data_root):
    if catalog.recipe_name(path) in NEEDS_BOX2D and importlib.util.find_spec("Box2D") is None:
        pytest.skip("LunarLander needs Box2D: pip install 'gymnasium[box2d]'")
    config = catalog.merged(path)
    cli = main(["--config", str(path), *offline_overrides(path, fake_data_root)], run=False)
    assert isinstance(cli.model, LightningModule)
    assert isinstance(cli.datamodule, LightningDataModule)
    assert isinstance(cli.trainer, Trainer)
    assert type(cli.model).__name__ == config["model"]["class_path"].rsplit(".", 1)[-1]
    assert type(cli.datamodule).__name__ == config["data"]["class_path"].rsplit(".", 1)[-1]
    # Data-dependent sizes are linked from the DataModule, never typed in a recipe.
    assert "num_classes" not in path.read_text()
    if hasattr(cli.datamodule, "num_classes") and "num_classes" in cli.model.hparams:  # an autoencoder takes none
        assert cli.model.hparams.num_classes == cli.datamodule.num_classes
    description = catalog.describe(path).description
    assert description, f"{path} needs a first-line comment describing it"


def test_recipe_list_prints_every_recipe(capsys):
    assert main(["list"]) is None
    out = capsys.readouterr().out
    for path in RECIPES:
        recipe = catalog.describe(path)
        line = next(line for line in out.splitlines() if line.startswith(recipe.name + " "))
        assert recipe.domain in line and recipe.data in line and recipe.model in line
        assert recipe.description in line
    assert "DigitsDataModule" in out and "ImageClassifier(CompactResNet)" in out


@pytest.mark.parametrize("name", ["vision/digits", "vision/digits.yaml", "recipes/vision/digits.yaml"])
def test_packaged_recipe_found_by_name(name):
    assert catalog.find(name) == catalog.RECIPES_DIR / "vision" / "digits.yaml"


def test_unknown_recipe_name_is_not_found():
    assert catalog.find("vision/nope") is None
    assert catalog.find("digits") is None  # a bare stem is ambiguous across domains
