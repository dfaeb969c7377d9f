"""Under DDP every sample is evaluated exactly once: each process's loaders hold their own slice of the split, and
the metrics of two processes equal one process's on the same checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fake_data import write_image_folder
from torch.utils.data import DistributedSampler

from datamodules.image_folder import ImageFolderDataModule
from datamodules.vision import DigitsDataModule
from recipes.cli import main

HERE = Path(__file__).resolve().parent


def _per_rank(dm, split: str, world_size: int) -> list[list[torch.Tensor]]:
    """The batches of ``split`` each of ``world_size`` processes would read (labels and pixel sums)."""
    ranks = []
    for rank in range(world_size):
        dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank, training=False)
        loader = getattr(dm, f"{split}_dataloader")()
        batches = [dm.on_after_batch_transfer(batch, 0) for batch in loader]
        assert len(batches) == len(loader)
        ranks.append(batches)
    dm.trainer = None
    return ranks


def _fingerprints(batches) -> list[tuple[int, float]]:
    return sorted(
        (int(y), round(float(s), 3)) for x, labels in batches for y, s in zip(labels, x.flatten(1).sum(1), strict=True)
    )


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_in_memory_evaluation_slices_cover_the_split_once(world_size):
    dm = DigitsDataModule(eval_batch_size=80)  # 360 test images: 5 batches on one process
    dm.setup("test")
    single = _fingerprints(_per_rank(dm, "test", 1)[0])
    ranks = _per_rank(dm, "test", world_size)
    assert sorted(sum((_fingerprints(r) for r in ranks), [])) == single
    assert sum(len(labels) for r in ranks for _, labels in r) == 360  # no sample twice, none left out
    # Lightning adds its own distributed sampler (which pads with repeated batches) only to loaders without one.
    assert isinstance(dm.test_dataloader().sampler, DistributedSampler)


@pytest.mark.parametrize("in_memory", [True, False])
def test_image_folder_evaluation_slices_cover_the_split_once(tmp_path, in_memory):
    write_image_folder(tmp_path, per_class=7, side=16, splits=("train", "val", "test"))  # 21 images each
    dm = ImageFolderDataModule(str(tmp_path), eval_batch_size=4, num_workers=0, in_memory=in_memory)
    dm.setup("fit")
    dm.setup("test")
    for split in ("val", "test"):
        single = _fingerprints(_per_rank(dm, split, 1)[0])
        ranks = _per_rank(dm, split, 4)
        assert sorted(sum((_fingerprints(r) for r in ranks), [])) == single and len(single) == 21


@pytest.mark.parametrize("balance", [False, True])
def test_training_ranks_take_equal_steps_from_one_shared_order(balance):
    dm = DigitsDataModule(batch_size=100, balance=balance)
    dm.setup("fit")
    n_batches = len(dm.splits["train"]) // 100  # 11: one rank gets a repeated batch
    ranks = [[labels for _, labels in r] for r in _per_rank(dm, "train", 2)]
    assert len(ranks[0]) == len(ranks[1]) == -(-n_batches // 2)
    single = [labels for _, labels in dm.train_dataloader()]
    dealt = [batch for pair in zip(*ranks, strict=True) for batch in pair]  # rank 0, rank 1, rank 0, ...
    # The one-process order dealt out, the last step of rank 1 padded with the first batch.
    assert all(torch.equal(a, b) for a, b in zip(dealt, [*single, single[0]], strict=True))


@pytest.mark.slow
def test_ddp_test_metrics_equal_one_process_on_the_same_checkpoint(tmp_path, monkeypatch):
    quiet = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    fit = main(
        ["fit", "--config", "vision/digits", "--trainer.max_epochs=1", "--trainer.limit_train_batches=3", *quiet]
    )
    test = [
        "test",
        "--config",
        "vision/digits",
        # 360 test images in 5 batches on one process (Lightning's wrapper made that 6, repeating one), on each of
        # two 180 in 3 batches. Equal slices: Lightning 2.6 averages the per-process sample counts of a sync_dist
        # mean in an integer tensor, so 180 and 181 would count as 180 and bias test/loss (torchmetrics are exact).
        "--data.init_args.eval_batch_size=80",
        "--trainer.callbacks+=eval_probe.EvalProbe",
        f"--ckpt_path={fit.trainer.checkpoint_callback.last_model_path}",
        *quiet,
    ]
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    single_dir.mkdir()
    ddp_dir.mkdir()
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("EVAL_PROBE_DIR", str(single_dir))
    main(test)

    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    python_path = os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": python_path, "EVAL_PROBE_DIR": str(ddp_dir)}
    recipe = Path(sys.executable).with_name("recipe")
    done = subprocess.run([str(recipe), *test, *ddp], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    (one,) = [json.loads(p.read_text()) for p in sorted(single_dir.glob("test_rank*.json"))]
    ranks = [json.loads(p.read_text()) for p in sorted(ddp_dir.glob("test_rank*.json"))]
    assert [r["world_size"] for r in ranks] == [2, 2] and one["world_size"] == 1
    # Every test image scored once: the two processes' samples are the single process's, none twice.
    assert len(one["samples"]) == 360
    assert [len(r["samples"]) for r in ranks] == [180, 180]
    assert sorted(map(tuple, ranks[0]["samples"] + ranks[1]["samples"])) == sorted(map(tuple, one["samples"]))
    for key in ("test/acc", "test/f1", "test/loss", "test/top5"):
        assert ranks[0]["metrics"][key] == pytest.approx(one["metrics"][key], abs=1e-6), key
        assert ranks[1]["metrics"][key] == pytest.approx(one["metrics"][key], abs=1e-6), key
    assert one["metrics"]["test/acc"] < 0.99  # a partly trained model: a repeated batch would move the metrics
