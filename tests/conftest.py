"""Every test runs in its own empty folder, offline, with no W&B credentials: the run directories the recipe
command writes (``runs/...``) land there, and W&B must choose offline mode by itself."""

from __future__ import annotations

import logging
import os
import sys

import pytest


@pytest.fixture(autouse=True)
def log_to_this_tests_stderr():
    """Point Lightning's log handlers at the stream of the running test: a handler bound at import to an earlier
    test's captured (now closed) stream prints '--- Logging error ---' tracebacks into the next test's output."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.stream = sys.stderr  # not setStream: it flushes the old, closed stream


@pytest.fixture(autouse=True)
def isolated_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    # W&B stages artifacts (the recipe, checkpoints) in its data folder until `wandb sync`: the test's, not ~/.local.
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    yield tmp_path
    # WandbLogger switches offline mode on through the environment; do not let it leak into the next test.
    os.environ.pop("WANDB_MODE", None)


@pytest.fixture(scope="session")
def fake_data_root(tmp_path_factory):
    """One folder holding tiny datasets in their libraries' on-disk formats: MNIST, CIFAR-10, image folders, tables
    (Adult, California housing), graphs (Planetoid, TU, OGB) and audio (FSDD `recordings/`, `audio_folder/`,
    `SpeechCommands/`) and text (SMS-style TSV, a text file, a tiny Hugging Face model)."""
    from audio_fake_data import write_audio_fakes
    from fake_data import write_cifar10, write_image_folder, write_mnist
    from gnn_fake_data import write_gnn_fakes
    from nlp_fake_data import write_nlp_fakes
    from tabular_fake_data import write_tabular_fakes

    root = tmp_path_factory.mktemp("data")
    write_mnist(root)
    write_cifar10(root)
    write_image_folder(root, per_class=6, side=32, splits=("train", "val", "test"))
    write_tabular_fakes(root)
    write_gnn_fakes(root)
    write_audio_fakes(root)
    write_nlp_fakes(root)
    return root


def pytest_configure(config):
    # Under pytest-xdist each worker is a process of its own: one thread of intra-op parallelism each, so two workers
    # on two cores do not fight over them (each would otherwise start as many threads as there are cores).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
