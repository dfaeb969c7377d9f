"""Each callback under each training style: it works, or it stops at fit start with one clear line.

Styles: manual optimization with two optimizers (a GAN, whose ``forward`` is ``G(z)``, not applied to the training
inputs); an endless iterable dataset trained for ``max_steps`` (RL); parameter groups added mid-fit
(``BackboneFinetuning``); and the pairs LRFinder + SnapshotEnsemble and SWA + Pruning.
"""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import BackboneFinetuning, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from callbacks import SWA, LRFinder, Pruning, SnapshotEnsemble
from tests.callbacks.style_modules import BackboneHead, StreamClassifier, TinyGAN, blob_loader, real_points

BATCHES = 4  # per epoch, for real_points() and blob_loader() with their defaults


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets run fastest on one thread (two OpenMP threads fight on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    seed_everything(0)
    yield
    torch.set_num_threads(threads)


def make_trainer(callbacks: list, **kwargs) -> Trainer:
    options = {
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
    }
    return Trainer(callbacks=callbacks, **{**options, **kwargs})


class Record(Callback):
    """Per training batch (1-based count): every optimizer's group lrs at its start, the module state at its end;
    and the state each epoch's validation sees."""

    def __init__(self) -> None:
        self.batches = 0
        self.lrs: dict[int, list[list[float]]] = {}
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.validated: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs[self.batches + 1] = [[g["lr"] for g in opt.param_groups] for opt in trainer.optimizers]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1
        self.states[self.batches] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            self.validated[trainer.current_epoch] = {k: v.clone() for k, v in pl_module.state_dict().items()}


def ema(states: list[torch.Tensor], decay: float) -> torch.Tensor:
    average = states[0].double()
    for state in states[1:]:
        average = decay * average + (1 - decay) * state.double()
    return average


def cosine(start: float, end: float, t: float) -> float:
    """SWALR's cosine annealing from ``start`` to ``end`` at the fraction ``t`` of the way."""
    return end + (start - end) * (1 + math.cos(math.pi * min(t, 1.0))) / 2


# --- A GAN: manual optimization, two optimizers, forward = G(z) ---------------------------------------------------


def test_swa_ema_of_a_gan_generator_counts_batches_not_optimizer_steps(tmp_path):
    swa = SWA(swa_start=1, mode="ema", ema_decay=0.5, update_every_n_steps=2, update_bn=False, module="generator")
    record, checkpoint = Record(), ModelCheckpoint(dirpath=tmp_path, save_last=True)
    model = TinyGAN()
    trainer = make_trainer([record, swa, checkpoint], max_epochs=3, enable_checkpointing=True)
    trainer.fit(model, real_points(), real_points())

    assert trainer.global_step == 2 * 3 * BATCHES  # two optimizer steps per batch
    updates = [6, 8, 10, 12]  # from epoch 1 (batch 4 on), every second batch
    assert swa.n_averaged == len(updates)
    live, final = record.states[12], model.state_dict()
    generator = {k for k, v in live.items() if k.startswith("generator.") and v.is_floating_point()}
    assert set(swa.average) == generator and "generator.1.running_var" in generator  # BN statistics too
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    validated = record.validated[2]  # the last epoch's validation
    for name in generator:
        expected = ema([record.states[b][name] for b in updates], 0.5)
        for average in (swa.average[name], final[name], saved[name], validated[name]):
            torch.testing.assert_close(average.double(), expected, atol=1e-6, rtol=0)
    for name in [k for k in live if k.startswith("discriminator.")]:  # the live discriminator, untouched
        assert all(torch.equal(state[name], live[name]) for state in (final, saved, validated))


def test_swa_lr_anneals_only_the_averaged_generators_optimizer():
    swa = SWA(
        swa_start=0.5, swa_lr=0.001, annealing_steps=2, update_every_n_steps=1, update_bn=False, module="generator"
    )
    record = Record()
    trainer = make_trainer([swa, record], max_epochs=3)
    trainer.fit(TinyGAN(lr=0.02), real_points(), real_points())

    start = 6  # half of 12 batches, although global_step reaches 24
    assert swa.n_averaged == 12 - start
    for batch, (generator, discriminator) in record.lrs.items():
        step = batch - 1  # batches done before this one
        expected = 0.02 if step < start else cosine(0.02, 0.001, (step - start + 1) / 2)
        assert generator == [pytest.approx(expected, rel=1e-12)], batch
        assert discriminator == [0.02], batch


@pytest.mark.parametrize("kwargs", [{"module": "generator"}, {}], ids=["submodule", "whole-module"])
def test_swa_batchnorm_pass_on_a_gan_stops_at_fit_start(kwargs):
    trainer = make_trainer([SWA(**kwargs)], max_epochs=2)
    with pytest.raises(MisconfigurationException, match="Set update_bn=False"):
        trainer.fit(TinyGAN(), real_points(), real_points())
    assert trainer.global_step == 0


def test_snapshot_ensemble_and_lr_finder_refuse_a_gan_at_fit_start():
    model = TinyGAN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for callback in (SnapshotEnsemble(cycles=2), LRFinder(num_training=10)):
        trainer = make_trainer([callback], max_epochs=2)
        with pytest.raises(MisconfigurationException, match="needs automatic optimization"):
            trainer.fit(model, real_points(), real_points())
        assert trainer.global_step == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # no range test ran


def test_pruned_weights_of_a_gan_stay_zero_through_both_optimizers():
    pruning = Pruning(sparsity=0.5, start_epoch=1, end_epoch=1)
    masks: dict[str, torch.Tensor] = {}
    held, moved = [], {"generator": 0, "discriminator": 0}

    class Check(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:  # after the round
                masks.update({n: p.detach() == 0 for n, p in pl_module.named_parameters() if n.endswith("weight")})

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            params = dict(pl_module.named_parameters())
            if masks:
                held.append(all(bool((params[n][m] == 0).all()) for n, m in masks.items()))
                for net in moved:
                    changed = [not torch.equal(p, self.before[n]) for n, p in params.items() if n.startswith(net)]
                    moved[net] += any(changed)

    trainer = make_trainer([pruning, Check()], max_epochs=3)
    trainer.fit(TinyGAN(), real_points(), real_points())

    pruned = sum(int(m.sum()) for m in masks.values())
    assert pruned == round(0.5 * pruning.num_prunable)
    assert {n.split(".")[0] for n, m in masks.items() if m.any()} == {"generator", "discriminator"}  # one global rank
    assert len(held) == 2 * BATCHES and all(held)
    assert moved == {"generator": 2 * BATCHES, "discriminator": 2 * BATCHES}  # both optimizers stepped every batch


# --- An endless iterable dataset trained for max_steps (RL) --------------------------------------------------------


def test_swa_on_an_endless_epoch_schedules_in_steps():
    swa = SWA(swa_start=0.5, swa_lr=0.01, annealing_steps=3, update_every_n_steps=2, update_bn=False)
    record = Record()
    trainer = make_trainer([swa, record], max_steps=12, val_check_interval=4)
    model = StreamClassifier(lr=0.1)
    trainer.fit(model)

    assert math.isinf(trainer.num_training_batches) and trainer.global_step == 12
    updates = [8, 10, 12]  # from step 6, every second step
    assert swa.n_averaged == len(updates)
    for name, average in swa.average.items():  # BatchNorm statistics averaged too (update_bn=False)
        expected = torch.stack([record.states[s][name] for s in updates]).mean(0)
        torch.testing.assert_close(average, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(model.state_dict()[name], expected, atol=1e-6, rtol=0)
    for batch, (lrs,) in record.lrs.items():  # head and backbone groups, from 0.1 and 0.025
        step = batch - 1
        t = (step - 6 + 1) / 3
        expected = [0.1, 0.025] if step < 6 else [cosine(0.1, 0.01, t), cosine(0.025, 0.01, t)]
        assert lrs == pytest.approx(expected, rel=1e-12), batch


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"swa_start": 2, "update_every_n_steps": 1, "update_bn": False}, "swa_start=2 is an epoch"),
        ({"swa_start": 0.5, "update_bn": False}, "Set update_every_n_steps"),
        ({"swa_start": 0.5, "swa_lr": 0.01, "update_every_n_steps": 1, "update_bn": False}, "Set annealing_steps"),
        ({"swa_start": 0.5, "update_every_n_steps": 1}, "Set update_bn=False"),
    ],
    ids=["epoch-start", "epoch-end-updates", "annealing-epochs", "batchnorm-pass"],
)
def test_swa_on_an_endless_epoch_stops_at_fit_start_when_it_would_wait_for_an_epoch(kwargs, message):
    trainer = make_trainer([SWA(**kwargs)], max_steps=12, val_check_interval=4)
    with pytest.raises(MisconfigurationException, match=message):
        trainer.fit(StreamClassifier())
    assert trainer.global_step == 0


def test_snapshot_ensemble_on_an_endless_epoch_places_its_cycles_in_max_steps():
    ensemble, record = SnapshotEnsemble(cycles=2), Record()
    trainer = make_trainer([ensemble, record], max_steps=8, val_check_interval=4)
    trainer.fit(StreamClassifier(lr=0.1))

    assert trainer.global_step == 8 and ensemble.snapshot_cycles == [1, 2]
    for batch, (lrs,) in record.lrs.items():  # Eq. 2 with T = max_steps = 8 in cycles of 4
        scale = 0.5 * (math.cos(math.pi * ((batch - 1) % 4) / 4) + 1)
        assert lrs == pytest.approx([0.1 * scale, 0.025 * scale], rel=1e-12), batch
    for snapshot, step in zip(ensemble.snapshots, (4, 8), strict=True):
        assert all(torch.equal(t, record.states[step][k]) for k, t in snapshot.items())
    assert 0.0 <= float(trainer.callback_metrics["val/ensemble_acc"]) <= 1.0


def test_lr_finder_on_an_endless_epoch_tests_then_trains_max_steps_with_its_suggestion():
    finder, record = LRFinder(min_lr=1e-3, max_lr=1.0, num_training=10), Record()
    trainer = make_trainer([finder, record], max_steps=6)
    trainer.fit(StreamClassifier(lr=0.1))

    (result,) = finder.history
    assert len(result.losses) == 10 and result.suggestion is not None
    assert trainer.global_step == 6 and record.batches == 6  # the test's own steps are not counted
    assert record.lrs[1] == [[result.suggestion, pytest.approx(result.suggestion / 4, rel=1e-12)]]
    with pytest.raises(MisconfigurationException, match="rerun_at_epochs=\\[1\\] never come"):
        make_trainer([LRFinder(num_training=10, rerun_at_epochs=(1,))], max_steps=6).fit(StreamClassifier())


def test_pruning_on_an_endless_epoch_prunes_at_epoch_0_and_refuses_later_rounds():
    pruning = Pruning(sparsity=0.5, end_epoch=0)
    model = StreamClassifier()
    make_trainer([pruning], max_steps=4).fit(model)
    weights = [model.backbone[0].weight, model.head.weight]
    assert sum(int((w == 0).sum()) for w in weights) == round(0.5 * pruning.num_prunable)

    trainer = make_trainer([Pruning(sparsity=0.5, start_epoch=0, end_epoch=2)], max_steps=4)
    with pytest.raises(MisconfigurationException, match=r"epochs \[1, 2\], but this run's epoch never ends"):
        trainer.fit(StreamClassifier())
    assert trainer.global_step == 0


# --- Parameter groups added mid-fit (BackboneFinetuning) -----------------------------------------------------------


def unfreeze_at(epoch: int) -> BackboneFinetuning:
    # The backbone joins the optimizer as a second group at 0.1 of group 0's current lr (backbone_initial_ratio_lr).
    return BackboneFinetuning(unfreeze_backbone_at_epoch=epoch)


def test_snapshot_ensemble_gives_a_group_added_mid_fit_its_ratio_of_the_restart_lr():
    ensemble, record = SnapshotEnsemble(cycles=2), Record()
    trainer = make_trainer([unfreeze_at(2), ensemble, record], max_epochs=4)
    trainer.fit(BackboneHead(lr=0.1, batch_norm=False), blob_loader(), blob_loader(seed=1))

    def eq2(step: int) -> float:  # 16 steps in cycles of 8
        return 0.5 * (math.cos(math.pi * ((step - 1) % 8) / 8) + 1)

    for step, (lrs,) in record.lrs.items():
        expected = [0.1 * eq2(step)] if step <= 8 else [0.1 * eq2(step), 0.01 * eq2(step)]
        assert lrs == pytest.approx(expected, rel=1e-12), step
    assert [g["initial_lr"] for g in trainer.optimizers[0].param_groups] == pytest.approx([0.1, 0.01], rel=1e-12)
    assert ensemble.snapshot_cycles == [1, 2]


def test_swa_anneals_a_group_added_mid_fit_from_its_ratio_of_the_start_lr():
    swa, record = SWA(swa_start=1, swa_lr=0.02, annealing_epochs=2, update_bn=False), Record()
    trainer = make_trainer([unfreeze_at(2), swa, record], max_epochs=4)
    trainer.fit(BackboneHead(lr=0.1, batch_norm=False), blob_loader(), blob_loader(seed=1))

    # From step 4 the head anneals from 0.1 over 8 steps; the backbone appears at step 8, when the head's lr was
    # cosine(0.1, 0.02, 4/8), at 0.1 of it: so it starts from 0.1 * 0.1 = 0.01 and anneals towards 0.02 alike.
    for batch, (lrs,) in record.lrs.items():
        step = batch - 1
        t = (step - 4 + 1) / 8
        head = 0.1 if step < 4 else cosine(0.1, 0.02, t)
        expected = [head] if step < 8 else [head, cosine(0.01, 0.02, t)]
        assert lrs == pytest.approx(expected, rel=1e-12), batch
    assert swa.n_averaged == 3 and "backbone.0.weight" in swa.average


# --- Pairs of callbacks --------------------------------------------------------------------------------------------


def test_lr_finder_and_snapshot_ensemble_give_the_same_run_in_either_order():
    runs = []
    for order in ("finder first", "ensemble first"):
        seed_everything(0)
        finder, ensemble = LRFinder(min_lr=1e-3, max_lr=3.0, num_training=12), SnapshotEnsemble(cycles=2)
        callbacks = [finder, ensemble] if order == "finder first" else [ensemble, finder]
        trainer = make_trainer(callbacks, max_epochs=2)
        model = BackboneHead(lr=0.1)
        trainer.fit(model, blob_loader(shuffle=True), blob_loader(seed=1))
        alpha0 = [g.get("initial_lr") for g in trainer.optimizers[0].param_groups]
        runs.append((finder.history[0].suggestion, alpha0, model.state_dict()))

    (suggestion, alpha0, weights), (other_suggestion, other_alpha0, other_weights) = runs
    assert suggestion == other_suggestion and suggestion != 0.1
    assert alpha0 == other_alpha0 == pytest.approx([suggestion, suggestion / 4], rel=1e-12)  # the ratio is kept
    assert all(torch.equal(weights[k], other_weights[k]) for k in weights)


def test_swa_average_keeps_the_zeros_pruning_made_inside_the_averaging_window(tmp_path):
    pruning, swa = Pruning(sparsity=0.5, start_epoch=1, end_epoch=3), SWA(swa_start=1, swa_lr=0.05)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    model = BackboneHead(lr=0.1)
    trainer = make_trainer([pruning, swa, checkpoint], max_epochs=5, enable_checkpointing=True)
    trainer.fit(model, blob_loader(), blob_loader(seed=1))

    prunable = ("backbone.0.weight", "head.weight")
    target = round(0.5 * pruning.num_prunable)
    final, saved = model.state_dict(), torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    assert sum(int((final[n] == 0).sum()) for n in prunable) == target
    assert sum(int((saved[n] == 0).sum()) for n in prunable) == target
    for name in prunable:  # the average elsewhere; the running average itself still holds the pruned entries
        zero = final[name] == 0
        torch.testing.assert_close(final[name][~zero], swa.average[name][~zero], atol=1e-6, rtol=0)
        assert bool((swa.average[name][zero] != 0).any())
