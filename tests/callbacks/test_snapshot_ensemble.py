"""SnapshotEnsemble: Eq. 2 at every step, snapshots at cycle ends, the probability-mean ensemble, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, Dataset

from callbacks.snapshot_ensemble import SnapshotEnsemble
from recipes.cli import main

BASE_LRS = (0.2, 0.05)  # TinyClassifier's two parameter groups
DIGITS_SNAPSHOT = str(Path(__file__).parents[2] / "recipes" / "vision" / "digits_snapshot.yaml")


def eq2(t: int, total: int, cycles: int, alpha0: float) -> float:
    """Huang et al. 2017, Eq. 2, at the 1-based optimizer step ``t`` of ``total``."""
    length = math.ceil(total / cycles)
    return alpha0 / 2 * (math.cos(math.pi * ((t - 1) % length) / length) + 1)


class Blobs(Dataset):
    """Three overlapping Gaussian blobs in 4-D: learnable, but not perfectly, so members disagree a little."""

    def __init__(self, n: int = 64, seed: int = 0, as_dict: bool = False) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 3
        centres = torch.randn(3, 4, generator=generator)
        self.x = centres[self.y] + 1.2 * torch.randn(n, 4, generator=generator)  # (n, 4)
        self.as_dict = as_dict

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return {"features": self.x[i], "label": self.y[i]} if self.as_dict else (self.x[i], self.y[i])


def loader(n: int = 64, batch_size: int = 16, seed: int = 0, as_dict: bool = False) -> DataLoader:
    return DataLoader(Blobs(n, seed, as_dict), batch_size=batch_size, shuffle=False)


class TinyClassifier(LightningModule):
    """An MLP with batch norm (so snapshots must carry buffers), two parameter groups with different rates."""

    def __init__(self, with_scheduler: bool = False, as_dict: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
        self.with_scheduler = with_scheduler
        self.as_dict = as_dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 3) logits

    def _loss(self, batch) -> torch.Tensor:
        x, y = (batch["features"], batch["label"]) if self.as_dict else batch
        return F.cross_entropy(self(x), y)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._loss(batch)

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch))

    def test_step(self, batch, batch_idx: int) -> None:
        self.log("test/loss", self._loss(batch))

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self(batch["features"] if self.as_dict else batch[0])

    def configure_optimizers(self):
        first, last = self.net[0], self.net[3]
        rest = [p for name, p in self.net.named_parameters() if not name.startswith(("0.", "3."))]
        optimizer = torch.optim.SGD(
            [{"params": [*first.parameters(), *rest], "lr": 0.2}, {"params": last.parameters(), "lr": 0.05}],
            momentum=0.9,
        )
        if not self.with_scheduler:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=5)}


class KeyedClassifier(TinyClassifier):
    """Dict batches whose keys the batch rule does not know as inputs: the module says where they are, once."""

    def __init__(self) -> None:
        super().__init__(as_dict=True)

    def split_batch(self, batch):
        return batch["features"], batch["label"]


class StepProbe(Callback):
    """Record every optimizer step's learning rates, and the live weights after the steps in ``capture_at``."""

    def __init__(self, capture_at: tuple[int, ...] = ()) -> None:
        self.lrs: list[tuple[int, list[float]]] = []  # (1-based step, per-group lr)
        self.capture_at = set(capture_at)
        self.captured: dict[int, dict[str, torch.Tensor]] = {}

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        self.lrs.append((trainer.global_step + 1, [group["lr"] for group in optimizer.param_groups]))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step in self.capture_at and step not in self.captured:
            self.captured[step] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def make_trainer(**kwargs) -> Trainer:
    defaults = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    return Trainer(**{**defaults, **kwargs})


def member_probabilities(model: LightningModule, states: list[dict[str, torch.Tensor]], x: torch.Tensor):
    """Each snapshot's softmax ``(m, N, C)``, computed the plain way: load the weights into the model, run it."""
    live = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    probs = []
    with torch.no_grad():
        for state in states:
            model.load_state_dict(state)
            probs.append(model(x).softmax(dim=-1))
    model.load_state_dict(live)
    return torch.stack(probs)


class Run:
    """One finished fit: its trainer, module, callback, probe and the folder of its per-epoch checkpoints."""

    def __init__(self, folder: Path, callback: SnapshotEnsemble, capture_at: tuple[int, ...], **trainer_kwargs):
        self.folder, self.callback = folder, callback
        self.probe = StepProbe(capture_at)
        every_epoch = ModelCheckpoint(dirpath=folder, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
        seed_everything(0)
        self.model = TinyClassifier()
        self.trainer = make_trainer(
            callbacks=[callback, self.probe, every_epoch], enable_checkpointing=True, **trainer_kwargs
        )
        self.trainer.fit(self.model, loader(), loader(seed=1, batch_size=64))


ENDS = (7, 14, 20)  # 4 batches x 5 epochs = 20 steps in 3 cycles of ceil(20/3) = 7, the last one 6 steps long


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Run:
    """Three cycles over 20 steps, each parameter group at its own configured rate."""
    return Run(tmp_path_factory.mktemp("plain"), SnapshotEnsemble(cycles=3), ENDS, max_epochs=5)


@pytest.fixture(scope="module")
def accumulated(tmp_path_factory) -> Run:
    """Two batches per step and max_steps=7 (cycles of 3: ends 3, 6, 7), lr overriding both groups, last 2 kept."""
    callback = SnapshotEnsemble(cycles=3, ensemble_size=2, lr=0.1)
    return Run(
        tmp_path_factory.mktemp("acc"), callback, (3, 6, 7), max_epochs=10, max_steps=7, accumulate_grad_batches=2
    )


@pytest.mark.parametrize(("run", "total", "cycles", "lr"), [("plain", 20, 3, None), ("accumulated", 7, 3, 0.1)])
def test_learning_rate_follows_eq2_at_every_optimizer_step(run, total, cycles, lr, request):
    run = request.getfixturevalue(run)
    assert run.trainer.global_step == total
    assert [step for step, _ in run.probe.lrs] == list(range(1, total + 1))  # one record per optimizer step
    for step, lrs in run.probe.lrs:
        expected = [eq2(step, total, cycles, lr or base) for base in BASE_LRS]
        assert lrs == pytest.approx(expected, abs=1e-12, rel=0), f"step {step}"
    # Restarts: the first step of each cycle is back at alpha0.
    length = math.ceil(total / cycles)
    restarts = [lrs for step, lrs in run.probe.lrs if (step - 1) % length == 0]
    assert restarts == [[lr or base for base in BASE_LRS]] * cycles


@pytest.mark.parametrize(("run", "ends", "kept"), [("plain", ENDS, [1, 2, 3]), ("accumulated", (3, 6, 7), [2, 3])])
def test_snapshots_are_the_live_weights_at_each_cycle_end(run, ends, kept, request):
    run = request.getfixturevalue(run)
    assert run.callback.snapshot_cycles == kept
    assert len(run.callback.snapshots) == len(kept)
    for cycle, snapshot in zip(kept, run.callback.snapshots, strict=True):
        live = run.probe.captured[ends[cycle - 1]]
        assert snapshot.keys() == live.keys()  # parameters and batch-norm buffers
        for name, tensor in snapshot.items():
            assert tensor.device.type == "cpu"
            assert torch.equal(tensor, live[name]), f"cycle {cycle}: {name}"
    first, last = run.callback.snapshots[0], run.callback.snapshots[-1]
    assert not torch.equal(first["net.0.weight"], last["net.0.weight"])


def test_ensemble_is_the_mean_of_member_probabilities(plain):
    val = loader(seed=1, batch_size=64)  # one batch of 64
    live = {k: v.clone() for k, v in plain.model.state_dict().items()}
    metrics = plain.trainer.validate(plain.model, val, verbose=False)[0]

    x, y = val.dataset.x, val.dataset.y
    probs = member_probabilities(plain.model, plain.callback.snapshots, x)  # (3, 64, 3)
    mean = probs.mean(dim=0)  # (64, 3): the paper's average of softmax outputs
    nll = float(-mean[torch.arange(64), y].log().mean())
    assert metrics["val/ensemble_acc"] == pytest.approx(float((mean.argmax(1) == y).float().mean()), abs=1e-6)
    assert metrics["val/ensemble_nll"] == pytest.approx(nll, abs=1e-5)
    member_nlls = [metrics[f"val/snapshot_{k}_nll"] for k in (1, 2, 3)]
    for k, member in zip((1, 2, 3), probs, strict=True):
        assert metrics[f"val/snapshot_{k}_nll"] == pytest.approx(float(-member[torch.arange(64), y].log().mean()))
        assert metrics[f"val/snapshot_{k}_acc"] == pytest.approx(float((member.argmax(1) == y).float().mean()))
    # Jensen: -log of a mean probability is at most the mean of the members' -log probabilities.
    assert metrics["val/ensemble_nll"] <= sum(member_nlls) / 3 + 1e-7
    # Averaging logits instead (a normalised geometric mean of probabilities) is a different model.
    geometric = torch.stack([p.log() for p in probs]).mean(0).softmax(-1)  # (64, 3)
    assert float(-geometric[torch.arange(64), y].log().mean()) != pytest.approx(nll, abs=1e-4)
    # functional_call ran the members: the live weights are untouched.
    assert all(torch.equal(v, live[k]) for k, v in plain.model.state_dict().items())


def test_resuming_mid_cycle_reproduces_the_uninterrupted_snapshots(plain):
    resumed = SnapshotEnsemble(cycles=3)
    seed_everything(1)  # another initialisation: weights, optimizer state and snapshots come from the checkpoint
    trainer = make_trainer(max_epochs=5, callbacks=[resumed])
    # After epoch index 2 the run is at step 12 of 20, halfway through cycle 2 (steps 8-14), with one snapshot.
    checkpoint = torch.load(plain.folder / "epoch=2.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 12 and len(checkpoint["callbacks"][resumed.state_key]["snapshots"]) == 1
    trainer.fit(TinyClassifier(), loader(), loader(seed=1, batch_size=64), ckpt_path=plain.folder / "epoch=2.ckpt")
    assert trainer.global_step == 20
    assert resumed.snapshot_cycles == [1, 2, 3]
    for cycle, (a, b) in enumerate(zip(plain.callback.snapshots, resumed.snapshots, strict=True), start=1):
        for name in a:
            assert torch.equal(a[name], b[name]), f"cycle {cycle}: {name}"  # bit for bit, not merely close


@pytest.mark.parametrize("as_dict", [False, True])
def test_test_and_predict_load_the_ensemble_from_a_checkpoint(plain, as_dict, tmp_path):
    last = plain.folder / "epoch=4.ckpt"
    data = loader(seed=2, batch_size=32, as_dict=as_dict)
    x, y = data.dataset.x, data.dataset.y
    probs = member_probabilities(TinyClassifier(), plain.callback.snapshots, x).mean(0)  # (64, 3)

    module = KeyedClassifier if as_dict else TinyClassifier
    fresh = SnapshotEnsemble(cycles=3)
    trainer = make_trainer(callbacks=[fresh], default_root_dir=tmp_path)
    metrics = trainer.test(module(), data, ckpt_path=last, verbose=False)[0]
    assert fresh.snapshot_cycles == [1, 2, 3]
    assert metrics["test/ensemble_acc"] == pytest.approx(float((probs.argmax(1) == y).float().mean()))
    assert metrics["test/ensemble_nll"] == pytest.approx(float(-probs[torch.arange(64), y].log().mean()), abs=1e-5)
    assert {f"test/snapshot_{k}_acc" for k in (1, 2, 3)} <= set(metrics)

    trainer = make_trainer(callbacks=[SnapshotEnsemble(cycles=3)], default_root_dir=tmp_path / "predict")
    trainer.predict(module(), data, ckpt_path=last)
    written = torch.load(tmp_path / "predict" / "ensemble_predictions.pt")
    assert written.shape == (64, 3)
    assert torch.allclose(written, probs, atol=1e-6)
    assert torch.allclose(written.sum(1), torch.ones(64), atol=1e-6)


def test_without_snapshots_test_warns_and_logs_no_ensemble():
    trainer = make_trainer(callbacks=[SnapshotEnsemble(cycles=3)])
    with pytest.warns(UserWarning, match="no snapshots"):
        metrics = trainer.test(TinyClassifier(), loader(), verbose=False)[0]
    assert not any("ensemble" in k for k in metrics)


def test_a_module_with_its_own_scheduler_is_refused():
    seed_everything(0)
    trainer = make_trainer(max_epochs=5, callbacks=[SnapshotEnsemble(cycles=3)])
    with pytest.raises(MisconfigurationException, match=r"also returns a scheduler \(StepLR\)"):
        trainer.fit(TinyClassifier(with_scheduler=True), loader())


def test_a_run_too_short_for_its_cycles_is_refused():
    # 6 steps in cycles of ceil(6/5)=2 make only 3 cycles.
    trainer = make_trainer(max_steps=6, callbacks=[SnapshotEnsemble(cycles=5)])
    with pytest.raises(MisconfigurationException, match="make 3 cycles, not cycles=5"):
        trainer.fit(TinyClassifier(), loader())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cycles": 1}, "cycles must be an integer >= 2"),
        ({"cycles": 2.5}, "cycles must be an integer >= 2"),
        ({"cycles": 3, "ensemble_size": 4}, r"ensemble_size must be an integer in \[1, cycles=3\]"),
        ({"ensemble_size": 0}, "ensemble_size must be"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"device": "gpu0"}, "device must be a torch device string"),
        ({"predictions_filename": "out/p.pt"}, "predictions_filename must be a plain file name"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(MisconfigurationException, match=message):
        SnapshotEnsemble(**kwargs)


def test_weights_only_checkpoints_are_refused_at_fit_start(tmp_path):
    # They leave callback states out, so they would hold no snapshots to test or predict with.
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_weights_only=True)
    trainer = make_trainer(max_epochs=5, callbacks=[SnapshotEnsemble(cycles=3), checkpoint], enable_checkpointing=True)
    with pytest.raises(MisconfigurationException, match=r"save_weights_only=True\) leaves out"):
        trainer.fit(TinyClassifier(), loader())
    assert trainer.global_step == 0 and not list(tmp_path.iterdir())


def test_two_copies_in_one_trainer_are_refused():
    # Both would write the learning rate (the last one's cycles win, so the other's snapshots miss its cycle ends)
    # and log the same val/ensemble_* names.
    trainer = make_trainer(max_epochs=5, callbacks=[SnapshotEnsemble(cycles=2), SnapshotEnsemble(cycles=4)])
    with pytest.raises(MisconfigurationException, match=r"2 SnapshotEnsemble callbacks \(cycles=2 and cycles=4\)"):
        trainer.fit(TinyClassifier(), loader())
    assert trainer.global_step == 0


@pytest.mark.slow  # a whole recipe run (and W&B's service, where logged): seconds
def test_recipe_test_logs_the_ensemble_of_a_checkpoint():
    # The packaged recipe cut to 10 steps (5 cycles of 2) with a narrow network, so this stays quick.
    quick = [
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--model.init_args.net.init_args.stem_width=8",
        "--model.init_args.net.init_args.widths=[8,8,8]",
    ]
    short = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=10", "--trainer.num_sanity_val_steps=0"]
    fit_cli = main(["fit", "--config", DIGITS_SNAPSHOT, *quick, *short])
    callback = next(c for c in fit_cli.trainer.callbacks if isinstance(c, SnapshotEnsemble))
    assert callback.snapshot_cycles == [1, 2, 3, 4, 5]
    ckpt = Path(fit_cli.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    test_cli = main(["test", "--config", DIGITS_SNAPSHOT, "--ckpt_path", str(ckpt), *quick])
    metrics = test_cli.trainer.callback_metrics
    assert 0.0 <= float(metrics["test/ensemble_acc"]) <= 1.0
    assert {f"test/snapshot_{k}_acc" for k in range(1, 6)} <= set(metrics)
    # The members are the checkpoint's, not the freshly built model's: the last snapshot is the final weights.
    assert float(metrics["test/snapshot_5_acc"]) == pytest.approx(float(metrics["test/acc"]), abs=1e-6)


@pytest.mark.slow
def test_digits_snapshot_ensemble_learns_and_beats_its_members():
    cli = main(["fit", "--config", DIGITS_SNAPSHOT, "--trainer.logger=false", "--trainer.enable_progress_bar=false"])
    metrics = cli.trainer.callback_metrics
    members = [float(metrics[f"val/snapshot_{k}_acc"]) for k in range(1, 6)]
    assert float(metrics["val/ensemble_acc"]) >= 0.97
    assert float(metrics["val/ensemble_acc"]) >= sum(members) / len(members)
