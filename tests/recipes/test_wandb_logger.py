"""What a recipe sends W&B besides metrics, read back from the offline run file: the recipe as an artifact, the best
checkpoint as one when asked for, and gradient histograms from ``watch``; and the logger's refusals of bad values."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from wandb_records import artifacts, history, media, wait_for_exit

from recipes import catalog
from recipes.cli import main
from recipes.wandb_logger import RecipeWandbLogger

QUICK = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false"]
LOGGER = "--trainer.logger.init_args."


def _md5(path: Path) -> str:
    """A file's digest as W&B's artifact manifest writes it (base64 of the MD5)."""
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


@pytest.mark.slow  # a recipe run with W&B's service: seconds
def test_recipe_best_checkpoint_and_gradients_reach_the_offline_run(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # artifact staging, kept for `wandb sync`
    watch = [f"{LOGGER}watch=gradients", f"{LOGGER}watch_log_freq=1", "--trainer.log_every_n_steps=1"]
    overlay = tmp_path / "short.yaml"  # a user's file stacked on the recipe: it travels too, the name stays
    overlay.write_text("trainer:\n  limit_val_batches: 2\n")
    recipe = ["--config", "vision/digits", "--config", str(overlay)]
    cli = main(["fit", *recipe, *QUICK, f"{LOGGER}log_model=best", *watch])
    cli.trainer.logger.close()
    (run_file,) = Path(cli.trainer.default_root_dir).glob("wandb/offline-run-*/run-*.wandb")
    found = wait_for_exit(run_file)
    logged = {a.type: a for a in artifacts(found)}
    assert set(logged) == {"recipe", "model"}

    recipe = logged["recipe"]
    assert recipe.name == "recipe-vision-digits"
    files = {entry.path: entry.digest for entry in recipe.manifest.contents}
    assert set(files) == {"config.yaml", "recipes/vision/digits.yaml", "recipes/short.yaml"}
    assert files["recipes/vision/digits.yaml"] == _md5(catalog.find("vision/digits"))
    assert files["recipes/short.yaml"] == _md5(overlay)
    checkpoints = Path(cli.trainer.checkpoint_callback.dirpath)
    assert files["config.yaml"] == _md5(checkpoints / "config.yaml")  # the resolved recipe that runs again

    model = logged["model"]  # the best checkpoint only, not last.ckpt too
    assert model.name == f"model-{run_file.stem.removeprefix('run-')}"
    assert set(model.aliases) == {"best", "latest"}
    (entry,) = model.manifest.contents
    best = Path(cli.trainer.checkpoint_callback.best_model_path)
    assert entry.path == "model.ckpt" and entry.digest == _md5(best)
    metadata = json.loads(model.metadata)
    assert metadata["original_filename"] == best.name and metadata["monitor"] == "val/acc"
    assert metadata["score"] == pytest.approx(float(cli.trainer.checkpoint_callback.best_model_score))

    histograms = {key for key, kind in media(history(found)).items() if kind == "histogram"}
    names = {name for name, p in cli.model.named_parameters() if p.requires_grad}
    assert histograms and {key.removeprefix("gradients/") for key in histograms} <= names
    assert all(key.startswith("gradients/") for key in histograms)  # gradients asked for, not parameters


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"watch": "grads"}, "watch must be 'gradients', 'parameters', 'all' or null"),
        ({"watch_log_freq": 0}, "watch_log_freq must be a positive number of training steps"),
        ({"log_model": "yes"}, "log_model must be one of false, true, 'all', 'best'"),
        ({"log_model": 1}, "log_model must be one of false, true, 'all', 'best'"),
    ],
)
def test_bad_values_are_refused_with_the_choices(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RecipeWandbLogger(offline=True, **kwargs)


def test_bad_watch_value_from_the_command_line_is_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", "vision/digits", f"{LOGGER}watch=grads"])
    err = capsys.readouterr().err
    assert "watch" in err and "grads" in err and "Traceback" not in err
