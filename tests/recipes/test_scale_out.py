"""Distribution and precision go through Lightning's Trainer, proven on CPU: DDP over gloo and bf16 autocast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_modules.vision import ImageClassifier
from recipes.cli import main

TESTS = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_digits_ddp_scores_each_sample_once_equals_one_process_and_checkpoints_once(tmp_path):
    recipe = Path(sys.executable).with_name("recipe")
    # 287 validation images: 144 and 143, in 3 batches of 48 each: uneven slices, which bias a sync_dist mean.
    eval_batches = "--data.init_args.eval_batch_size=48"
    quiet = ["--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    args = [
        str(recipe),
        "fit",
        "--config",
        "vision/digits",
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
        "--trainer.max_epochs=2",
        "--trainer.callbacks+=rank_probe.RankProbe",
        eval_batches,
        f"--trainer.default_root_dir={tmp_path}",
        *quiet,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "version_0"  # the run's own directory, shared by both processes
    ranks = [json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints, checkpoints  # one best, one last: rank zero only

    # One process validating the same weights (last.ckpt is written after the last validation)...
    last = f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    one = main(["validate", "--config", "vision/digits", eval_batches, last, *quiet])
    val = one.datamodule.splits["val"]
    sums = val.images.flatten(1).double().sum(1)
    everything = sorted((int(y), round(float(s), 3)) for y, s in zip(val.labels, sums, strict=True))
    # ...scores the samples the two processes scored between them, each once...
    assert sorted(len(r["val_samples"]) for r in ranks) == [143, 144]
    assert sorted(map(tuple, ranks[0]["val_samples"] + ranks[1]["val_samples"])) == everything
    # ...and both processes report its metrics, synchronised.
    for key in ("val/acc", "val/f1", "val/loss", "val/top5"):
        for rank in ranks:
            assert rank["metrics"][key] == pytest.approx(float(one.trainer.callback_metrics[key]), abs=1e-6), key
    assert 0.5 < ranks[0]["metrics"]["val/acc"] < 0.995  # trained, yet imperfect: a sample twice would show
    reloaded = ImageClassifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert reloaded.hparams.num_classes == 10


def test_digits_bf16_mixed_precision_trains_in_bfloat16():
    # A few small steps: what bf16-mixed must do is visible at once, and a CPU without native bf16 (an AVX2-only
    # x86) emulates it slowly, so the test stays short everywhere.
    cli = main(
        [
            "--config",
            "vision/digits",
            "--trainer.precision=bf16-mixed",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=1",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_checkpointing=false",
            "--data.init_args.batch_size=16",
            "--data.init_args.eval_batch_size=16",
        ],
        run=False,
    )
    seen = set()
    cli.model.net.fc.register_forward_hook(lambda module, args, out: seen.add(out.dtype))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 3
    assert seen == {torch.bfloat16}  # every forward, training and validation, ran under bf16 autocast
    assert all(p.dtype == torch.float32 for p in cli.model.parameters())  # master weights stay fp32
    for key in ("train/loss", "val/loss"):
        assert torch.isfinite(cli.trainer.callback_metrics[key]), key


@pytest.mark.slow
def test_digits_recipe_reaches_97_percent_validation_accuracy():
    cli = main(["fit", "--config", "vision/digits", "--trainer.logger=false", "--trainer.enable_progress_bar=false"])
    assert float(cli.trainer.checkpoint_callback.best_model_score) >= 0.97
    assert float(cli.trainer.callback_metrics["val/acc"]) >= 0.97
    test = main(
        [
            "test",
            "--config",
            "vision/digits",
            "--trainer.logger=false",
            "--ckpt_path",
            cli.trainer.checkpoint_callback.best_model_path,
        ]
    )
    assert float(test.trainer.callback_metrics["test/acc"]) >= 0.96


@pytest.mark.slow
def test_one_failing_rank_ends_the_whole_job_with_its_message(tmp_path):
    # Rank 0, the process the user started: Lightning's launcher already ends the job when a child it started fails,
    # but left the children waiting in their next collective when the first process failed.
    bad_rank = 0
    recipe = Path(sys.executable).with_name("recipe")
    args = [
        str(recipe),
        "fit",
        "--model=feature_task.NaNOnRank",
        f"--model.bad_rank={bad_rank}",
        "--data=feature_task.IrisData",
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
        "--trainer.max_epochs=20",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    start = time.monotonic()
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    assert "error: train/loss is nan at step 1" in done.stderr, done.stderr[-3000:]
    assert time.monotonic() - start < 200  # no process left waiting in a collective for its 30-minute timeout
