"""Each run has a directory of its own that holds everything it writes, and one W&B run."""

from __future__ import annotations

from pathlib import Path

import pytest
from wandb_records import wait_for_config

from recipes.cli import main

QUICK = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false"]


def test_two_fits_never_overwrite_each_other_and_say_where_they_went(capsys):
    first = main(["fit", "--config", "vision/digits", *QUICK, "--trainer.logger=false"])
    second = main(["fit", "--config", "vision/digits", *QUICK, "--trainer.logger=false", "--seed_everything=1"])
    dirs = [Path(cli.trainer.checkpoint_callback.dirpath).parent for cli in (first, second)]
    assert [d.name for d in dirs] == ["version_0", "version_1"] and dirs[0].parent == dirs[1].parent
    lasts = [d / "checkpoints" / "last.ckpt" for d in dirs]
    assert all(p.is_file() for p in lasts) and lasts[0].read_bytes() != lasts[1].read_bytes()
    assert all((d / "checkpoints" / "config.yaml").is_file() for d in dirs)
    out = capsys.readouterr().out
    assert f"run directory: {dirs[1]}" in out
    assert f"last checkpoint: {Path(second.trainer.checkpoint_callback.last_model_path)}" in out
    assert "best checkpoint: " in out and "(val/acc=" in out and "final val/acc: " in out


@pytest.mark.slow  # a whole recipe run (and W&B's service, where logged): seconds
def test_fit_then_test_in_one_process_is_one_wandb_run_under_the_root_dir(tmp_path):
    root = tmp_path / "elsewhere"
    cli = main(["fit", "--config", "vision/digits", *QUICK, f"--trainer.default_root_dir={root}"])
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    runs = list(root.glob("version_0/wandb/offline-run-*/run-*.wandb"))
    assert len(runs) == 1, runs  # the test stage logged into the run fit opened
    cli.trainer.logger.close()
    assert wait_for_config(runs[0], "model")["model"]["init_args"]["num_classes"] == 10
    assert not Path("runs").exists()  # nothing escaped the root dir
    again = main(["fit", "--config", "vision/digits", *QUICK, f"--trainer.default_root_dir={root}"])
    again.trainer.logger.close()
    assert len(list(root.glob("version_*/wandb/offline-run-*"))) == 2  # a new command, a new run


def test_run_named_by_class_paths_with_either_flag_form():
    from recipes.cli import _run_name

    assert _run_name(
        ["fit", "--model=lightning_modules.autoencoder.VAE", "--data", "datamodules.vision.MNIST"], None
    ) == ("VAE-MNIST")
