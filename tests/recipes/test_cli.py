"""The ``recipe`` command end to end on tiny offline data: smoke runs, checkpoints, loggers and bad input."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from recipe_flags import offline_overrides
from wandb_records import run_name, wait_for_config

from lightning_modules.vision import ImageClassifier
from recipes import catalog
from recipes.cli import main

QUICK = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false"]
NO_LOGGER = ["--trainer.logger=false"]


def _checkpoints(cli) -> dict[str, Path]:
    folder = Path(cli.trainer.checkpoint_callback.dirpath)
    return {p.name: p for p in folder.glob("*.ckpt")}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Speed knobs only (smaller images, no loader workers, the unfreeze epoch inside a 2-epoch run): which recipes get a
# smoke run is the glob over the catalog, not this table.
FASTER = {
    "vision/cifar10": [
        "--data.init_args.batch_size=16",
        "--data.init_args.eval_batch_size=50",
        "--model.init_args.net.init_args.widths=[16,32,64]",
    ],
    "vision/digits_lr_find": ["--trainer.callbacks.init_args.num_training=20"],
    "autoencoder/cifar10_vae": ["--data.init_args.batch_size=16", "--model.init_args.iw_samples=2"],
    "autoencoder/mnist_vae": ["--model.init_args.iw_samples=5"],
    "gan/cifar10_dcgan": ["--data.init_args.batch_size=16"],
    "vision/imagefolder_finetune": [
        "--data.init_args.image_size=32",
        "--data.init_args.num_workers=0",
        "--trainer.max_epochs=2",
        "--trainer.callbacks.init_args.unfreeze_backbone_at_epoch=1",
    ],
}
#: Recipes whose loaders sample neighbours: PyG does that with pyg-lib or torch-sparse, compiled packages from PyG's own
#: wheel index (not on PyPI as wheels), which a GPU user installs.
NEEDS_NEIGHBOR_SAMPLING = {"gnn/arxiv_sage"}
#: Recipes whose environment needs an optional extra (``pip install "gymnasium[box2d]"``).
NEEDS_BOX2D = {"rl/lunarlander_ppo"}


def _neighbor_sampling() -> bool:
    import torch_geometric.typing

    return torch_geometric.typing.WITH_PYG_LIB or torch_geometric.typing.WITH_TORCH_SPARSE


#: What a generative model's test run logs and the image grid it saves (a smoke run has no classifier checkpoint, so a
#: GAN logs no FID or coverage).
GENERATIVE = {
    "VAE": ({"test/nelbo", "test/nll", "test/recon", "test/kl"}, "test_samples"),
    "Autoencoder": ({"test/loss", "test/recon"}, "test_reconstructions"),
    "GAN": (set(), "test_samples"),
}

SMOKE = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=5", "--trainer.enable_progress_bar=false"]


@pytest.mark.slow  # a whole fit and test per packaged recipe: 2-4 s each, a third of the quick loop's time
@pytest.mark.parametrize("path", catalog.recipe_paths(), ids=[catalog.recipe_name(p) for p in catalog.recipe_paths()])
def test_smoke_fit_then_test_from_checkpoint(path, fake_data_root):
    """Smoke run of every packaged recipe: a short fit, then ``recipe test`` from its last checkpoint."""
    recipe = catalog.recipe_name(path)
    if recipe in NEEDS_NEIGHBOR_SAMPLING and not _neighbor_sampling():
        pytest.skip("neighbour sampling needs pyg-lib or torch-sparse (PyG's wheel index), not installable offline")
    if recipe in NEEDS_BOX2D and importlib.util.find_spec("Box2D") is None:
        pytest.skip("LunarLander needs Box2D: pip install 'gymnasium[box2d]'")
    flags = [*offline_overrides(path, fake_data_root), *FASTER.get(recipe, [])]
    fit = main(["fit", "--config", recipe, *SMOKE, *flags])
    checkpoints = _checkpoints(fit)
    assert "last.ckpt" in checkpoints
    assert (Path(fit.trainer.checkpoint_callback.dirpath) / "config.yaml").is_file()
    assert torch.isfinite(fit.trainer.callback_metrics["train/loss"])
    if recipe.startswith("rl/"):  # the environment is the data: no test split (RLEvaluation plays greedy episodes)
        assert fit.trainer.callback_metrics["env/steps"] > 0
        return

    ckpt = str(checkpoints["last.ckpt"])
    test = main(["test", "--config", recipe, *flags, "--ckpt_path", ckpt])
    metrics = set(test.trainer.callback_metrics)
    if "test/perplexity" in metrics:  # a language model: loss and perplexity, no classes
        assert "test/loss" in metrics and torch.isfinite(test.trainer.callback_metrics["test/loss"])
        return
    generative = GENERATIVE.get(type(test.model).__name__)
    if generative is not None:
        keys, grid = generative
        assert keys <= set(test.trainer.callback_metrics)
        assert all(torch.isfinite(test.trainer.callback_metrics[k]) for k in keys)
        assert list(Path(test.trainer.default_root_dir).rglob(f"{grid}_step*.png")), f"the {grid} grid is saved"
        return
    if getattr(test.datamodule, "target_kind", "classification") == "regression":
        assert {"test/rmse", "test/mae", "test/r2", "test/loss"} <= set(test.trainer.callback_metrics)
        return
    assert {"test/acc", "test/loss", "test/f1"} <= set(test.trainer.callback_metrics)
    media = list(Path(test.trainer.default_root_dir).rglob("test_confusion_matrix.png"))
    assert media, "the confusion matrix is saved as an image"


def test_checkpoint_round_trip_gives_identical_predictions():
    fit = main(["fit", "--config", "vision/digits", *QUICK, *NO_LOGGER])
    best = fit.trainer.checkpoint_callback.best_model_path
    reloaded = ImageClassifier.load_from_checkpoint(best).eval()
    assert type(reloaded.net) is type(fit.model.net)
    batch = torch.randn(16, 1, 8, 8)
    fit.model.eval()
    with torch.no_grad():
        # One epoch: the best checkpoint is the final weights, so it reproduces the live model exactly...
        assert torch.equal(reloaded(batch), fit.model(batch))
        last = ImageClassifier.load_from_checkpoint(str(Path(best).parent / "last.ckpt")).eval()
        assert torch.equal(last(batch), fit.model(batch))
        # ...and a freshly initialised model does not.
        assert not torch.equal(ImageClassifier(**reloaded.hparams).eval()(batch), fit.model(batch))


def test_last_checkpoint_is_the_final_epoch_even_when_it_is_not_the_best():
    # Monitoring the epoch number with mode=min makes epoch 0 the only "best": Lightning 2.6 alone would then keep
    # last.ckpt at epoch 0.
    quick = ["--trainer.max_epochs=3", "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false"]
    best_is_epoch_0 = ["--checkpoint.monitor=epoch", "--checkpoint.mode=min"]
    fit = main(["fit", "--config", "vision/digits", *quick, *NO_LOGGER, *best_is_epoch_0])
    last = torch.load(fit.trainer.checkpoint_callback.last_model_path, weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 6)
    best = torch.load(fit.trainer.checkpoint_callback.best_model_path, weights_only=False)
    assert best["epoch"] == 0
    assert Path(fit.trainer.checkpoint_callback.last_model_path).name == "last.ckpt"


def test_predict_saves_class_probabilities():
    fit = main(["fit", "--config", "vision/digits", *QUICK, *NO_LOGGER])
    ckpt = fit.trainer.checkpoint_callback.best_model_path
    predict = main(["predict", "--config", "vision/digits", *NO_LOGGER, "--ckpt_path", ckpt])
    probs = torch.load(Path(predict.trainer.default_root_dir) / "predictions.pt")
    assert probs.shape == (360, 10)  # the test split, one row of class probabilities each
    assert torch.allclose(probs.sum(dim=1), torch.ones(360))


@pytest.mark.slow  # a whole recipe run (and W&B's service, where logged): seconds
def test_checkpoint_rebuilds_an_injected_torchvision_network(fake_data_root):
    args = [
        "fit",
        "--model=lightning_modules.vision.ImageClassifier",
        "--model.net=torchvision.models.resnet18",
        "--data=datamodules.vision.ImageFolderDataModule",
        f"--data.data_dir={fake_data_root}",
        "--data.image_size=32",
        "--data.num_workers=0",
        *QUICK,
        *NO_LOGGER,
    ]
    fit = main(args)
    last = str(Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt")
    reloaded = ImageClassifier.load_from_checkpoint(last).eval()
    assert type(reloaded.net).__name__ == "ResNet"
    assert reloaded.net.fc.out_features == 3  # three class folders
    batch = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded(batch), fit.model.eval()(batch))


def test_model_and_data_by_class_path_without_a_recipe(fake_data_root):
    cli = main(
        [
            "fit",
            "--model",
            "lightning_modules.vision.ImageClassifier",
            "--data",
            "datamodules.vision.ImageFolderDataModule",
            "--data.data_dir",
            str(fake_data_root),
            "--data.num_workers=0",
            *QUICK,
            *NO_LOGGER,
        ]
    )
    assert cli.model.hparams.num_classes == 3
    assert cli.model.hparams.class_names == ("cat", "dog", "fox")
    assert cli.trainer.state.finished


@pytest.mark.slow  # a whole recipe run (and W&B's service, where logged): seconds
def test_wandb_runs_offline_with_the_nested_config_once(capsys):
    cli = main(["fit", "--config", "vision/digits", *QUICK])
    out = capsys.readouterr()
    assert "wandb sync" in out.out + out.err
    cli.trainer.logger.close()  # the run stays open after fit for a later test stage; finished, its file is complete
    runs = list(Path("runs/vision/digits").glob("version_*/wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    config = wait_for_config(runs[0], "model")
    assert config["model"]["class_path"] == "lightning_modules.vision.ImageClassifier"
    assert config["model"]["init_args"]["net"]["class_path"] == "lightning_modules.nets.CompactResNet"
    assert config["model"]["init_args"]["num_classes"] == 10
    assert config["data"]["class_path"] == "datamodules.vision.DigitsDataModule"
    assert config["trainer"]["max_epochs"] == 1
    # Nested, and only once: no flattened keys and no copy of the module's hyperparameters at the top level.
    assert not any("/" in key or "." in key for key in config)
    assert "num_classes" not in config and "net" not in config
    assert cli.trainer.logger.name == "lightning-recipes"
    # Read from the file: touching ``logger.experiment`` after the run has finished would start a new one.
    assert run_name(runs[0]) == "vision/digits"
    assert (Path(cli.trainer.checkpoint_callback.dirpath) / "config.yaml").is_file()


def test_checkpointing_can_be_switched_off():
    cli = main(["fit", "--config", "vision/digits", *QUICK, *NO_LOGGER, "--trainer.enable_checkpointing=false"])
    assert cli.trainer.checkpoint_callback is None
    assert not list(Path("runs").rglob("*.ckpt"))


@pytest.mark.slow  # a whole recipe run (and W&B's service, where logged): seconds
def test_wandb_test_run_gets_the_confusion_matrix_image_and_table():
    fit = main(["fit", "--config", "vision/digits", *QUICK, *NO_LOGGER])
    test = main(["test", "--config", "vision/digits", "--ckpt_path", fit.trainer.checkpoint_callback.best_model_path])
    run_files = Path(test.trainer.logger.save_dir) / "wandb"
    images = list(run_files.glob("offline-run-*/files/media/images/test/confusion_matrix*.png"))
    tables = list(run_files.glob("offline-run-*/files/media/table/test/confusion_matrix_table*.table.json"))
    assert len(images) == 1 and len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["actual", "predicted", "count"]
    assert sum(row[2] for row in table["data"]) == 360  # every test image counted once


def test_fast_dev_run_overlay_stacks_on_a_recipe():
    cli = main(["fit", "--config", "vision/digits", "--config", "overlays/fast_dev_run"])
    assert cli.trainer.fast_dev_run and cli.trainer.global_step == 1
    assert cli.trainer.logger is None


def test_csv_logger_replaces_wandb(tmp_path):
    logger = ["--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path}", "--trainer.log_every_n_steps=1"]
    cli = main(["fit", "--config", "vision/digits", *QUICK, *logger])
    with open(Path(cli.trainer.logger.log_dir) / "metrics.csv") as f:
        columns = next(csv.reader(f))
    assert {"val/acc", "val/loss", "train/loss"} <= set(columns)
    assert not list(Path("runs/vision/digits").glob("*/wandb"))


# ---- bad input: one clear message, exit status 2, nothing written is lost ----


def _error(capsys, args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_missing_config_names_the_fix(capsys):
    err = _error(capsys, ["fit", "--config", "vision/nonexistent"])
    assert "no config file or packaged recipe named 'vision/nonexistent'" in err
    assert "recipe list" in err
    assert "Traceback" not in err


def test_a_missing_checkpoint_is_one_line_and_leaves_no_run_directory(capsys):
    err = _error(capsys, ["test", "--config", "vision/digits", "--ckpt_path", "runs/typo/last.ckpt", *NO_LOGGER])
    assert err.startswith("error: no checkpoint file at 'runs/typo/last.ckpt'") and "Traceback" not in err
    assert not Path("runs").exists()


def test_no_recipe_and_no_model_says_what_to_give(capsys):
    err = _error(capsys, ["fit"])
    assert "--config vision/digits" in err and "recipe list" in err
    assert len(err.strip().splitlines()) == 2


def test_unknown_class_path_is_reported_briefly(capsys):
    err = _error(capsys, ["fit", "--config", "vision/digits", "--model=lightning_modules.vision.NoSuchModel"])
    assert "cannot use class_path 'lightning_modules.vision.NoSuchModel'" in err
    assert "has no attribute 'NoSuchModel'" in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 2  # the problem, then where to look for the options


def test_missing_image_folder_names_the_flag(capsys, tmp_path):
    err = _error(
        capsys,
        [
            "fit",
            "--model=lightning_modules.vision.ImageClassifier",
            "--data=datamodules.vision.ImageFolderDataModule",
            f"--data.data_dir={tmp_path / 'nowhere'}",
        ],
    )
    assert err.startswith("error: image folder") and "--data.data_dir" in err
    assert len(err.strip().splitlines()) == 1


def test_unreadable_image_is_named(capsys, tmp_path):
    from fake_data import write_image_folder

    root = write_image_folder(tmp_path / "images", per_class=4)
    bad = root / "train" / "dog" / "zz_broken.png"
    bad.write_bytes(b"not a png at all")
    args = [
        "fit",
        "--model=lightning_modules.vision.ImageClassifier",
        "--data=datamodules.vision.ImageFolderDataModule",
        f"--data.data_dir={root}",
        "--data.image_size=16",
        *QUICK,
        *NO_LOGGER,
    ]
    err = _error(capsys, args)  # default loader workers: the message is unwrapped from the worker's traceback
    assert "zz_broken.png" in err and "Remove or replace the file" in err
    assert len(err.strip().splitlines()) == 1


def test_labels_outside_the_classes_are_refused(capsys, tmp_path):
    from fake_data import write_mnist

    write_mnist(tmp_path, label_offset=5)
    err = _error(
        capsys, ["fit", "--config", "vision/mnist", f"--data.init_args.data_dir={tmp_path}", *QUICK, *NO_LOGGER]
    )
    assert "labels range from" in err and "[0, 9]" in err


@pytest.mark.slow  # a whole recipe run (and W&B's service, where logged): seconds
def test_nan_loss_stops_cleanly_and_keeps_checkpoints(capsys):
    first = main(["fit", "--config", "vision/digits", *QUICK, *NO_LOGGER])
    before = {name: _sha(path) for name, path in _checkpoints(first).items()}
    err = _error(
        capsys,
        ["fit", "--config", "vision/digits", *QUICK, *NO_LOGGER, "--model.init_args.net=broken_nets.NaNAfter"],
    )
    assert "train/loss is nan" in err and "Lower the learning rate" in err
    after = {name: _sha(path) for name, path in _checkpoints(first).items()}
    assert after == before
    reloaded = ImageClassifier.load_from_checkpoint(str(_checkpoints(first)["last.ckpt"]))
    assert all(torch.isfinite(p).all() for p in reloaded.parameters())
