"""One recipe of each domain through the ``recipe`` command with W&B offline: the offline run file holds the nested
config once, the domain's media and its metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rl_envs  # noqa: F401  (registers Chooser-v0, which renders frames without pygame)
from recipe_flags import offline_overrides
from wandb_records import history, media, wait_for_config, wait_for_exit

from recipes import catalog
from recipes.cli import main

TINY = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]
#: A classifier's test media: the confusion matrix (image and table) and the first predictions (a table).
CLASSIFIER = {"test/confusion_matrix": "images/separated", "test/confusion_matrix_table": "table-file"}
CLASSIFIER |= {"test/predictions": "table-file"}

# recipe: (extra flags, whether media come at test, the metric looked for, the media keys and their W&B types, the
# type of the misclassified examples when the inputs can be shown (the key appears when a test prediction is wrong)).
DOMAINS = {
    "vision/digits": ([], True, "val/acc", CLASSIFIER, "images/separated"),
    "audio/fsdd_cnn": ([], True, "val/acc", CLASSIFIER, "audio-file"),
    "nlp/sms_spam_transformer": ([], True, "val/acc", CLASSIFIER, "table-file"),
    "tabular/breast_cancer": ([], True, "val/acc", CLASSIFIER, "table-file"),
    "gnn/karate_gcn": ([], True, "val/acc", CLASSIFIER, None),  # a graph: no medium shows a node
    "autoencoder/digits_ae": ([], False, "val/loss", {"val/reconstructions": "images/separated"}, None),
    "gan/digits_dcgan": ([], False, "train/loss", {"val/samples": "images/separated"}, None),
    "rl/cartpole_ppo": (
        [
            "--data.init_args.env_id=Chooser-v0",
            "--data.init_args.num_envs=2",
            "--data.init_args.total_steps=40",
            "--data.init_args.rollout_steps=5",
            "--data.init_args.batch_size=10",
            "--data.init_args.update_epochs=1",
            "--trainer.max_epochs=-1",
            "--trainer.callbacks.init_args.every_n_env_steps=20",
            "--trainer.callbacks.init_args.episodes=2",
            "--trainer.callbacks.init_args.video=true",
        ],
        False,
        "eval/mean_return",
        {"eval/video": "videos"},
        None,
    ),
}


def _wrong_predictions(run_dir: Path) -> int:
    """Off-diagonal count of the test confusion matrix table W&B saved: the examples the model got wrong."""
    (table,) = run_dir.glob("files/media/table/test/confusion_matrix_table*.table.json")
    rows = json.loads(table.read_text())["data"]
    return sum(count for actual, predicted, count in rows if actual != predicted)


@pytest.mark.slow  # a fit (and test) with W&B's service per domain: 2-6 s each
@pytest.mark.parametrize("recipe", list(DOMAINS))
def test_offline_run_holds_config_media_and_metrics(recipe, fake_data_root):
    extra, tested, metric, expected_media, misclassified = DOMAINS[recipe]
    path = catalog.find(recipe)
    flags = [f for f in offline_overrides(path, fake_data_root) if f != "--trainer.logger=false"]
    cli = main(["fit", "--config", recipe, *flags, *TINY, *extra])
    if tested:  # the same trainer, so the same W&B run
        cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    cli.trainer.logger.close()

    (run_file,) = Path(cli.trainer.default_root_dir).glob("wandb/offline-run-*/run-*.wandb")
    config = wait_for_config(run_file, "model")
    assert config["model"]["class_path"] == catalog.merged(path)["model"]["class_path"]
    assert config["data"]["class_path"] == catalog.merged(path)["data"]["class_path"]
    assert "trainer" in config and not any("/" in key or "." in key for key in config)  # nested, not flattened

    values = history(wait_for_exit(run_file))
    assert metric in values, f"{metric} not logged; logged: {sorted(values)}"
    logged_media = media(values)
    assert "histogram" not in logged_media.values()  # no gradients or parameters unless the recipe asks (watch)
    for key, kind in expected_media.items():
        assert logged_media.get(key) == kind, f"{key} should be a {kind}; media logged: {logged_media}"
    if misclassified is not None and _wrong_predictions(run_file.parent):
        kinds = {kind for key, kind in logged_media.items() if key.startswith("test/misclassified")}
        assert kinds == {misclassified}, logged_media
    files = list(run_file.parent.glob("files/media/**/*.*"))
    assert files, "W&B keeps the media files beside the run"
