"""Values a model needs from its data: filled by name from what the DataModule declares, never silently dropped."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.data_values import DATA_VALUES, declared
from recipes.cli import main

QUICK = ["--trainer.max_epochs=1", "--trainer.logger=false", "--trainer.enable_progress_bar=false"]


def _error(capsys, args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    return err


def test_a_datamodule_without_num_classes_stops_the_image_classifier(capsys):
    err = _error(
        capsys, ["fit", "--model=lightning_modules.vision.ImageClassifier", "--data=feature_task.IrisWithoutClassCount"]
    )
    assert "num_classes" in err and "IrisWithoutClassCount has no num_classes property" in err
    assert "--model.init_args.num_classes=" in err


def test_values_the_data_lacks_can_be_given_by_hand_and_optional_ones_stay_unset():
    hand = ["--model.init_args.num_classes=3", "--model.init_args.num_features=4"]
    cli = main(
        ["fit", "--model=feature_task.FeatureClassifier", "--data=feature_task.IrisWithoutClassCount", *hand, *QUICK]
    )
    assert (cli.model.num_classes, cli.model.hparams.num_features) == (3, 4)
    assert cli.model.class_names == ("0", "1", "2")  # class_names defaults to None: optional, not demanded


def test_a_hand_given_value_that_contradicts_the_data_is_refused(capsys):
    err = _error(
        capsys,
        [
            "fit",
            "--model=feature_task.FeatureClassifier",
            "--data=feature_task.IrisData",
            "--model.num_classes=5",
            *QUICK,
        ],
    )
    assert "num_classes=5 was given, but IrisData provides num_classes=3" in err


def test_a_hand_given_value_equal_to_the_data_is_accepted():
    cli = main(
        [
            "fit",
            "--model=feature_task.FeatureClassifier",
            "--data=feature_task.IrisData",
            "--model.num_classes=3",
            *QUICK,
        ]
    )
    assert cli.model.num_classes == 3


def test_node_values_never_fill_table_arguments(capsys):
    err = _error(
        capsys,
        ["fit", "--model=feature_task.FeatureClassifier", "--data=feature_task.IrisAsNodes", "--model.num_classes=3"],
    )
    assert "FeatureClassifier takes num_features" in err


def test_declared_reads_only_the_registry_names():
    from feature_task import IrisAsNodes, IrisData

    assert declared(IrisData()) == {
        "num_classes": 3,
        "class_names": ("setosa", "versicolor", "virginica"),
        "num_features": 4,
    }
    assert declared(IrisAsNodes()) == {"num_node_features": 4, "num_node_classes": 3}
    assert {"num_classes", "num_node_classes", "num_features", "num_node_features"} <= set(DATA_VALUES)


def test_a_module_with_its_own_dataloaders_runs_without_data():
    cli = main(["fit", "--model=feature_task.SelfContained", "--trainer.max_epochs=1", "--trainer.logger=false"])
    assert cli.datamodule is None and cli.trainer.state.finished and cli.trainer.global_step == 3


def test_config_file_leaves_filled_values_out_so_it_serves_other_data():
    cli = main(["fit", "--model=feature_task.FeatureClassifier", "--data=feature_task.IrisData", *QUICK])
    saved = yaml.safe_load((Path(cli.trainer.checkpoint_callback.dirpath) / "config.yaml").read_text())
    assert "num_classes" not in saved["model"]["init_args"] and "num_features" not in saved["model"]["init_args"]
    assert cli.model.hparams.num_classes == 3  # but the checkpoint's hyperparameters hold them
    config = str(Path(cli.trainer.checkpoint_callback.dirpath) / "config.yaml")
    test = main(["test", "--config", config, "--ckpt_path", cli.trainer.checkpoint_callback.last_model_path])
    assert "test/acc" in test.trainer.callback_metrics
