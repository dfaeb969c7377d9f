"""LRFinder: the ladder, the suggestions against a known stability limit, state left untouched, one-cycle rescaled."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from callbacks.lr_finder import LRFinder, _suggest
from tests.callbacks.lr_helpers import LeastSquares, TinyClassifier, assert_same, least_squares_data, snapshot

METHODS = ("steep", "valley", "minimum/10")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets run fastest on one thread; on a busy 2-core machine two OpenMP threads spinning against each other
    make a 16-wide BatchNorm a thousand times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _trainer(callbacks, max_epochs: int = 1, **kwargs) -> Trainer:
    return Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=kwargs.pop("logger", False),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=kwargs.pop("enable_checkpointing", False),
        **kwargs,
    )


def _gradient_descent_loss(x, y, lr: float, steps: int) -> float:
    """Mean squared error after ``steps`` full-batch gradient-descent steps from w = 0 (the modules' start)."""
    w = torch.zeros(x.shape[1], 1, dtype=torch.float64)
    for _ in range(steps):
        w = w - lr * 2 * x.T @ (x @ w - y) / len(x)
    return float(F.mse_loss(x @ w, y))


def test_suggestion_rules_on_a_known_curve():
    lrs = np.geomspace(1e-3, 1e4, 8).tolist()
    smoothed = [5.0, 4.0, 6.0, 3.0, 2.0, 1.0, 2.0, 8.0]
    # steep: central differences against log LR are smallest at index 3 ((2 - 6) / 2 steps); valley: the longest
    # strictly decreasing subsequence is 5, 4, 3, 2, 1 (indices 0 to 5), whose middle is index 2; minimum at 5.
    assert _suggest(lrs, smoothed, skip=0) == {"steep": lrs[3], "valley": lrs[2], "minimum/10": lrs[5] / 10}
    assert _suggest(lrs, smoothed, skip=6) == dict.fromkeys(METHODS)  # two points are too few


def test_ladder_has_exactly_num_training_geometric_points():
    x, y, L = least_squares_data()
    finder = LRFinder(min_lr=1e-3 / L, max_lr=1 / L, num_training=25, divergence_threshold=None)
    model = LeastSquares(x, y, lr=0.1 / L)
    _trainer([finder]).fit(model)

    (result,) = finder.history
    assert len(result.ladder) == len(result.lrs) == len(result.losses) == 25 and not result.diverged
    assert result.lrs[0] == 1e-3 / L and result.lrs[-1] == 1 / L
    ratios = np.asarray(result.lrs[1:]) / np.asarray(result.lrs[:-1])
    np.testing.assert_allclose(ratios, 1000 ** (1 / 24), rtol=1e-12)
    # The optimizer really stepped with those LRs, one point per step, then trained with the suggestion.
    np.testing.assert_allclose(model.lrs_used[:25], result.lrs, rtol=1e-15)
    assert model.lrs_used[25] == result.suggestion


@pytest.mark.parametrize("method", METHODS)
def test_suggestion_is_stable_and_beats_the_smallest_lr(method):
    x, y, L = least_squares_data()
    min_lr = 1e-3 / L
    finder = LRFinder(min_lr=min_lr, max_lr=100 / L, num_training=100, method=method)
    model = LeastSquares(x, y, lr=0.1 / L)
    _trainer([finder]).fit(model)

    (result,) = finder.history
    # Past 2/L gradient descent diverges: the test stops early and records only the points it evaluated.
    assert result.diverged and 2 / L < result.lrs[-1] < 100 / L
    assert result.lrs == result.ladder[: len(result.losses)] and len(result.smoothed) == len(result.losses) < 100
    suggestion = result.suggestion
    assert min_lr <= suggestion < 2 / L
    assert _gradient_descent_loss(x, y, suggestion, 20) < _gradient_descent_loss(x, y, min_lr, 20)
    # and on the range test's own curve, the smoothed loss there is below its value at the smallest LR
    assert np.interp(np.log(suggestion), np.log(result.lrs), result.smoothed) < result.smoothed[0]
    assert model.lrs_used[len(result.losses)] == suggestion  # applied to the optimizer


def test_negative_loss_gives_the_same_test_as_the_unshifted_loss():
    x, y, L = least_squares_data()
    results = {}
    for shift in (0.0, -100.0):
        finder = LRFinder(min_lr=1e-3 / L, max_lr=100 / L, num_training=100)
        _trainer([finder]).fit(LeastSquares(x, y, lr=0.1 / L, shift=shift))
        results[shift] = finder.history[0]
    plain, shifted = results[0.0], results[-100.0]
    assert max(shifted.smoothed[:-1]) < 0  # negative all the way until it diverges
    assert len(shifted.losses) == len(plain.losses) > 50  # a sign-blind stop rule would quit after a few points
    np.testing.assert_allclose(np.asarray(shifted.smoothed) + 100, plain.smoothed, rtol=1e-9)
    assert shifted.suggestions == plain.suggestions


def test_gradient_accumulation_makes_one_point_per_optimizer_step():
    x, y, L = least_squares_data()
    runs = {}
    for batches in (1, 4):  # four quarter batches accumulated are one full-batch step
        finder = LRFinder(min_lr=1e-3 / L, max_lr=100 / L, num_training=60)
        _trainer([finder], accumulate_grad_batches=batches).fit(LeastSquares(x, y, lr=0.1 / L, batches=batches))
        runs[batches] = finder.history[0]
    assert len(runs[4].losses) == len(runs[1].losses) > 30
    np.testing.assert_allclose(runs[4].losses, runs[1].losses, rtol=1e-9)
    assert runs[4].suggestions == pytest.approx(runs[1].suggestions, rel=1e-12)


class _Snapshots(Callback):
    """Snapshots the trainer at the hooks where LRFinder runs; place one before and one after it."""

    def __init__(self, epochs: tuple[int, ...]) -> None:
        self.epochs, self.taken = epochs, {}

    def _take(self, trainer, pl_module, when):
        rows = len(trainer.logger.experiment.metrics) if trainer.logger else 0
        self.taken[when] = (snapshot(trainer, pl_module), rows)

    def on_fit_start(self, trainer, pl_module):
        self._take(trainer, pl_module, "fit_start")

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch in self.epochs:
            self._take(trainer, pl_module, trainer.current_epoch)


@pytest.mark.parametrize("threshold", [1.0, None], ids=["stops-on-divergence", "full-ladder"])
def test_range_test_leaves_everything_but_the_lr_as_it_was(tmp_path, threshold):
    """Both ways a test ends: the probe's exception mid-epoch, and the fit loop's own end (``on_train_end`` runs)."""
    seed_everything(0)
    before, after = _Snapshots((2,)), _Snapshots((2,))
    finder = LRFinder(min_lr=1e-4, max_lr=10.0, num_training=30, rerun_at_epochs=(2,), divergence_threshold=threshold)
    logger = CSVLogger(tmp_path, name="csv")
    model = TinyClassifier(one_cycle=True)
    _trainer([before, finder, after], max_epochs=3, logger=logger, log_every_n_steps=1).fit(model)

    assert [r.epoch for r in finder.history] == [0, 2]
    assert all(r.diverged == (threshold is not None) for r in finder.history)
    for when in ("fit_start", 2):
        (state_before, rows_before), (state_after, rows_after) = before.taken[when], after.taken[when]
        assert_same(state_before, state_after)
        assert rows_before == rows_after  # nothing reached the logger
    rerun = before.taken[2][0]  # a real mid-run state: momentum buffers, gradients, logged and accumulated metrics
    assert rerun["global_step"] == 12 and rerun["optimizer_state"] and rerun["logged_metrics"]
    assert all(g is not None for g in rerun["grads"]) and int(rerun["metric"]["tp"].sum()) > 0
    log_dir = Path(logger.log_dir)
    assert {p.name for p in (log_dir / "media").iterdir()} == {"lr_find_epoch_0.png", "lr_find_epoch_2.png"}
    assert not list(tmp_path.rglob("*.ckpt"))  # the temporary checkpoints are gone
    assert model.global_step == 18  # 3 epochs of 6 batches, none lost to the tests


class _SetLrs(Callback):
    def __init__(self, lrs_at: dict[str, list[float]]) -> None:
        self.lrs_at = lrs_at

    def _set(self, trainer, key):
        if key in self.lrs_at:
            for group, lr in zip(trainer.optimizers[0].param_groups, self.lrs_at[key], strict=True):
                group["lr"] = lr

    def on_fit_start(self, trainer, pl_module):
        self._set(trainer, "fit_start")

    def on_train_epoch_start(self, trainer, pl_module):
        self._set(trainer, f"epoch_{trainer.current_epoch}")


class _RecordLrs(Callback):
    def __init__(self) -> None:
        self.lrs_at = {}

    def on_fit_start(self, trainer, pl_module):
        self.lrs_at["fit_start"] = [g["lr"] for g in trainer.optimizers[0].param_groups]

    def on_train_epoch_start(self, trainer, pl_module):
        self.lrs_at[f"epoch_{trainer.current_epoch}"] = [g["lr"] for g in trainer.optimizers[0].param_groups]


def test_training_with_the_finder_equals_training_with_its_lr():
    """The strongest form of "leaves everything as it was": the same weights, bit for bit, as a run that sets the
    finder's LRs by hand (same data order, dropout masks, momentum, BatchNorm statistics)."""
    seed_everything(0)
    finder, record = LRFinder(min_lr=1e-4, max_lr=10.0, num_training=30, rerun_at_epochs=(2,)), _RecordLrs()
    with_finder = TinyClassifier()
    _trainer([finder, record], max_epochs=3).fit(with_finder)
    chosen = {k: v for k, v in record.lrs_at.items() if k in ("fit_start", "epoch_2")}
    assert chosen["fit_start"] != [0.05, 0.0125] and chosen["fit_start"][0] == finder.history[0].suggestion
    assert chosen["fit_start"][1] == pytest.approx(chosen["fit_start"][0] / 4)  # the groups' ratio is kept

    seed_everything(0)
    by_hand = TinyClassifier()
    _trainer([_SetLrs(chosen)], max_epochs=3).fit(by_hand)
    for (name, a), b in zip(with_finder.state_dict().items(), by_hand.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_one_cycle_max_lr_is_rescaled_and_the_schedule_follows(tmp_path):
    seed_everything(0)
    finder = LRFinder(min_lr=1e-4, max_lr=10.0, num_training=30, rerun_at_epochs=(2,))
    model = TinyClassifier(one_cycle=True)
    trainer = _trainer([finder], max_epochs=4, default_root_dir=tmp_path)
    trainer.fit(model)

    first, second = (r.suggestion for r in finder.history)
    assert first != 0.05
    groups = trainer.optimizers[0].param_groups
    assert [g["max_lr"] for g in groups] == pytest.approx([second, second / 4], rel=1e-12)
    for g in groups:  # OneCycleLR's own relations
        assert g["initial_lr"] == pytest.approx(g["max_lr"] / 25, rel=1e-12)
        assert g["min_lr"] == pytest.approx(g["initial_lr"] / 1e4, rel=1e-12)

    def reference(max_lr: float) -> list[list[float]]:
        params = [{"params": [torch.zeros(1, requires_grad=True)]} for _ in range(2)]
        optimizer = torch.optim.SGD(params, lr=1.0, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[max_lr, max_lr / 4], total_steps=24)
        lrs = []
        for _ in range(24):
            lrs.append([g["lr"] for g in optimizer.param_groups])
            optimizer.step()
            scheduler.step()
        return lrs

    # Range-test steps pass through training_step too: drop them.
    n1, n2 = (len(r.losses) for r in finder.history)
    trained = model.lrs_used[n1 : n1 + 12] + model.lrs_used[n1 + 12 + n2 :]
    assert len(trained) == 24
    np.testing.assert_allclose(trained[:12], reference(first)[:12], rtol=1e-12)
    np.testing.assert_allclose(trained[12:], reference(second)[12:], rtol=1e-12)
    media = {p.name for p in (tmp_path / "media").iterdir()}
    assert media == {"lr_find_epoch_0.png", "lr_find_epoch_2.png"}
    assert min(p.stat().st_size for p in (tmp_path / "media").iterdir()) > 10_000


class _FailsDuringRangeTest(LeastSquares):
    def training_step(self, batch, batch_idx):
        if self.global_step == 5:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_temporary_checkpoint_is_removed_when_the_range_test_raises(tmp_path):
    x, y, L = least_squares_data()
    model = _FailsDuringRangeTest(x, y, lr=0.1 / L)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        _trainer([LRFinder(min_lr=1e-3 / L, max_lr=1 / L, num_training=20)], default_root_dir=tmp_path).fit(model)
    assert model.lrs_used  # it failed inside the range test
    assert not list(tmp_path.rglob("*.ckpt")) and not list(Path.cwd().rglob("*.ckpt"))
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())  # weights restored all the same


def test_resumed_run_skips_the_initial_test_and_keeps_the_history(tmp_path):
    seed_everything(0)
    finder = LRFinder(min_lr=1e-4, max_lr=10.0, num_training=20)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _trainer([finder, checkpoint], enable_checkpointing=True).fit(TinyClassifier())

    resumed_finder, model = LRFinder(min_lr=1e-4, max_lr=10.0, num_training=20), TinyClassifier()
    trainer = _trainer([resumed_finder], max_epochs=2)
    trainer.fit(model, ckpt_path=tmp_path / "last.ckpt")
    assert len(model.lrs_used) == 6  # one epoch of training, no range-test steps
    assert [r.suggestion for r in resumed_finder.history] == [finder.history[0].suggestion]
    assert model.lrs_used[0][0] == pytest.approx(finder.history[0].suggestion)


class _ReturnsNothing(LeastSquares):
    def training_step(self, batch, batch_idx):
        super().training_step(batch, batch_idx)


def test_a_training_step_without_loss_is_reported():
    x, y, L = least_squares_data()
    with pytest.raises(MisconfigurationException, match="Return the loss tensor"):
        _trainer([LRFinder(min_lr=1e-3 / L, max_lr=1 / L, num_training=10)]).fit(_ReturnsNothing(x, y, lr=1e-3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_lr": 0.0}, "0 < min_lr < max_lr"),
        ({"min_lr": 1.0, "max_lr": 0.1}, "0 < min_lr < max_lr"),
        ({"max_lr": math.inf}, "0 < min_lr < max_lr"),
        ({"num_training": 5}, "num_training >= 10"),
        ({"method": "fastest"}, "method must be one of"),
        ({"rerun_at_epochs": (0,)}, "distinct epochs >= 1"),
        ({"rerun_at_epochs": (3, 3)}, "distinct epochs >= 1"),
        ({"divergence_threshold": 0.0}, "divergence_threshold must be > 0"),
        ({"smoothing": 1.0}, r"smoothing must be in \[0, 1\)"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(MisconfigurationException, match=message):
        LRFinder(**kwargs)


def test_state_dict_round_trip():
    x, y, L = least_squares_data()
    finder = LRFinder(min_lr=1e-3 / L, max_lr=100 / L, num_training=50)
    _trainer([finder]).fit(LeastSquares(x, y, lr=0.1 / L))
    copy = LRFinder(min_lr=1e-3 / L, max_lr=100 / L, num_training=50)
    copy.load_state_dict(finder.state_dict())
    assert copy.history == finder.history and copy.history[0].suggestion is not None


def test_two_copies_in_one_trainer_each_get_back_their_own_history(tmp_path):
    x, y, L = least_squares_data()

    def copies() -> tuple[LRFinder, LRFinder]:
        coarse = LRFinder(min_lr=1e-3 / L, max_lr=100 / L, num_training=10, smoothing=0.5)
        fine = LRFinder(min_lr=1e-2 / L, max_lr=10 / L, num_training=12, method="steep", smoothing=0.5)
        return coarse, fine

    coarse, fine = copies()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _trainer([coarse, fine, checkpoint], enable_checkpointing=True, default_root_dir=tmp_path).fit(
        LeastSquares(x, y, lr=0.1 / L)
    )
    assert [len(coarse.history[0].ladder), len(fine.history[0].ladder)] == [10, 12]
    assert coarse.history[0].ladder[0] == pytest.approx(1e-3 / L) and fine.history[0].ladder[0] == pytest.approx(
        1e-2 / L
    )

    fresh_coarse, fresh_fine = copies()
    resumed = _trainer([fresh_fine, fresh_coarse], default_root_dir=tmp_path / "resumed")  # the other order
    resumed.fit(LeastSquares(x, y, lr=0.1 / L), ckpt_path=tmp_path / "last.ckpt")
    assert fresh_coarse.history == coarse.history and fresh_fine.history == fine.history


@pytest.mark.slow
def test_digits_recipe_learns_with_the_found_lr():
    from recipes.cli import main

    cli = main(["fit", "--config", "vision/digits_lr_find", "--trainer.logger=false"])
    finder = next(c for c in cli.trainer.callbacks if isinstance(c, LRFinder))
    (result,) = finder.history
    assert 1e-4 < result.suggestion < 1e-1
    groups = cli.trainer.optimizers[0].param_groups
    assert [g["max_lr"] for g in groups] == pytest.approx([result.suggestion] * len(groups))
    assert float(cli.trainer.callback_metrics["val/acc"]) > 0.95
