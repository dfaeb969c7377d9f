"""Pruning: exact schedule, global magnitude ranking, zeros that hold, checkpoints, export and rewinding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import LambdaCallback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.pruning import Pruning

# What Pruning takes by default: convolution and linear weights; not norms, biases or embeddings.
PRUNABLE = ("conv.weight", "fc1.weight", "fc2.weight")
N = 6 * 1 * 3 * 3 + 24 * 96 + 3 * 24  # 2430 prunable weights


def tiny_data(n: int = 64, seed: int = 0) -> TensorDataset:
    """4x4 one-channel images whose class (of 3) is set by the sum of their top two rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g)
    y = torch.bucketize(x[:, 0, :2].sum(dim=(1, 2)), torch.tensor([-1.0, 1.0]))
    return TensorDataset(x, y)


class TinyClassifier(LightningModule):
    """Conv + BatchNorm, linear + LayerNorm, a linear head and an embedding used as a per-class logit offset."""

    def __init__(self, lr: float = 0.02, weight_decay: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc1 = nn.Linear(6 * 4 * 4, 24)
        self.ln = nn.LayerNorm(24)
        self.fc2 = nn.Linear(24, 3)
        self.class_embed = nn.Embedding(3, 3)
        self.compute_dtype: torch.dtype | None = None  # of the last hidden activation: bf16 under autocast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(F.relu(self.bn(self.conv(x))).flatten(1))  # (B, 24)
        self.compute_dtype = h.dtype
        return self.fc2(F.relu(self.ln(h))) + self.class_embed.weight.diagonal()  # (B, 3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def train_dataloader(self):
        return DataLoader(tiny_data(), batch_size=16, shuffle=True)  # 4 steps an epoch

    def test_dataloader(self):
        return DataLoader(tiny_data(48, seed=1), batch_size=48)


def make_trainer(callbacks: list, max_epochs: int, **kwargs) -> Trainer:
    options = {"enable_checkpointing": False, **kwargs}
    return Trainer(
        accelerator="cpu",
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **options,
    )


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def prunable_zeros(module: nn.Module) -> int:
    params = dict(module.named_parameters())
    return sum(int((params[name] == 0).sum()) for name in PRUNABLE)


def magnitudes(module: nn.Module) -> torch.Tensor:
    params = dict(module.named_parameters())
    return torch.cat([params[name].detach().abs().flatten() for name in PRUNABLE])  # (N,)


def cubic(s: float, k: int, n: int) -> float:
    return s * (1 - (1 - k / n) ** 3)


@pytest.mark.parametrize("schedule", ["cubic", "linear"])
def test_rounds_follow_the_schedule_and_end_exactly_at_the_target(schedule):
    torch.manual_seed(0)
    model = TinyClassifier()
    pruning = Pruning(sparsity=0.7, start_epoch=1, end_epoch=5, frequency=2, schedule=schedule)
    zeros_at_start = {}  # epoch -> prunable zeros once that epoch's round (if any) is done
    record = LambdaCallback(
        on_train_epoch_start=lambda t, m: zeros_at_start.setdefault(t.current_epoch, prunable_zeros(m))
    )
    trainer = make_trainer([pruning, record], max_epochs=7)
    trainer.fit(model)

    targets = [cubic(0.7, k, 3) if schedule == "cubic" else 0.7 * k / 3 for k in (1, 2, 3)]
    assert [e for e, _ in pruning.rounds] == [1, 3, 5]
    assert [s for _, s in pruning.rounds] == pytest.approx(targets)
    counts = [0] + [round(s * N) for s in targets]
    assert zeros_at_start == {0: 0, 1: counts[1], 2: counts[1], 3: counts[2], 4: counts[2], 5: counts[3], 6: counts[3]}
    assert max(zeros_at_start.values()) == round(0.7 * N)  # never past the target
    # Each round prunes a_k = 1 - (1 - s_k) / (1 - s_{k-1}) of the weights still alive.
    for k in (1, 2, 3):
        alive = N - counts[k - 1]
        previous = targets[k - 2] if k > 1 else 0.0
        assert counts[k] - counts[k - 1] == pytest.approx(alive * (1 - (1 - targets[k - 1]) / (1 - previous)), abs=1)
    # Measured after the last epoch's optimizer steps, and logged as measured.
    assert pruning.num_prunable == N
    assert prunable_zeros(model) == round(0.7 * N)
    assert float(trainer.callback_metrics["pruning/sparsity"]) == pytest.approx(round(0.7 * N) / N, abs=1e-7)


def test_magnitude_ranking_is_global_across_layers():
    torch.manual_seed(0)
    model = TinyClassifier()
    before = {}  # epoch -> |w| of every prunable weight before that epoch's round
    snapshot = LambdaCallback(on_train_epoch_start=lambda t, m: before.setdefault(t.current_epoch, magnitudes(m)))
    trainer = make_trainer([snapshot, Pruning(sparsity=0.6, start_epoch=1, end_epoch=3)], max_epochs=4)
    trainer.fit(model)

    pruned = magnitudes(model) == 0
    assert int(pruned.sum()) == round(0.6 * N)
    ranked = before[3]  # the last round ranked these; earlier rounds' weights were already zero
    assert ranked[~pruned].min() >= ranked[pruned].max()
    params = dict(model.named_parameters())
    per_layer = {name.split(".")[0]: float((params[name] == 0).float().mean()) for name in PRUNABLE}
    for layer, sparsity in per_layer.items():
        assert float(trainer.callback_metrics[f"pruning/{layer}"]) == pytest.approx(sparsity, abs=1e-6)
    assert len({round(s, 4) for s in per_layer.values()}) == 3  # one global threshold, not one sparsity per layer


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_pruned_weights_stay_exactly_zero_through_adamw_with_weight_decay(precision):
    torch.manual_seed(0)
    model = TinyClassifier(lr=0.05, weight_decay=0.5)
    masks, held = {}, []

    def remember(trainer, module):
        if trainer.current_epoch == 1:
            masks.update({n: p.detach() == 0 for n, p in module.named_parameters() if n in PRUNABLE})

    def check(trainer, module, outputs, batch, batch_idx):  # after each optimizer step
        if masks:
            params = dict(module.named_parameters())
            held.append(
                all(bool((params[n][m] == 0).all() and (params[n].grad[m] == 0).all()) for n, m in masks.items())
            )

    probe = LambdaCallback(on_train_epoch_start=remember, on_train_batch_end=check)
    trainer = make_trainer(
        [Pruning(sparsity=0.5, start_epoch=1, end_epoch=1), probe], max_epochs=5, precision=precision
    )
    trainer.fit(model)

    assert len(held) == 4 * 4 and all(held)
    assert sum(int(m.sum()) for m in masks.values()) == round(0.5 * N)
    # Epoch 0's Adam moments are still nonzero at the pruned entries: without the masks AdamW would move them.
    optimizer_state = trainer.optimizers[0].state
    assert any(
        bool(optimizer_state[p]["exp_avg"][masks[n]].abs().sum() > 0) for n, p in model.named_parameters() if n in masks
    )
    if precision == "bf16-mixed":
        assert model.compute_dtype == torch.bfloat16


def test_masks_survive_a_checkpoint_into_a_fresh_trainer_and_module(tmp_path):
    torch.manual_seed(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    make_trainer(
        [Pruning(sparsity=0.6, start_epoch=1, end_epoch=5), checkpoint], max_epochs=3, enable_checkpointing=True
    ).fit(TinyClassifier())
    last = Path(tmp_path) / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    weights = saved["state_dict"]
    assert not any(k.endswith(("_orig", "_mask")) for k in weights)
    TinyClassifier().load_state_dict(weights, strict=True)
    (callback_state,) = [v for k, v in saved["callbacks"].items() if k.startswith("Pruning")]
    saved_masks = callback_state["pruned"]
    assert set(saved_masks) == set(PRUNABLE)
    assert all(torch.equal(weights[n] == 0, saved_masks[n]) for n in PRUNABLE)
    assert sum(int(m.sum()) for m in saved_masks.values()) == round(cubic(0.6, 2, 5) * N)  # rounds at epochs 1, 2

    torch.manual_seed(1)  # a fresh module with other initial weights, a fresh callback and trainer
    fresh = TinyClassifier()
    reloaded, restored_masks, held = {}, {}, []

    def on_train_start(trainer, module):
        reloaded.update(state(module))
        restored_masks.update(resumed.state_dict()["pruned"])

    def on_train_batch_end(trainer, module, outputs, batch, batch_idx):
        params = dict(module.named_parameters())
        held.append(all(bool((params[n][saved_masks[n]] == 0).all()) for n in PRUNABLE))

    probe = LambdaCallback(on_train_start=on_train_start, on_train_batch_end=on_train_batch_end)
    resumed = Pruning(sparsity=0.6, start_epoch=1, end_epoch=5)
    make_trainer([resumed, probe], max_epochs=7).fit(fresh, ckpt_path=str(last))

    assert set(reloaded) == set(weights) and all(torch.equal(reloaded[k], weights[k]) for k in weights)
    assert set(restored_masks) == set(PRUNABLE)
    assert all(torch.equal(restored_masks[n].cpu(), saved_masks[n]) for n in PRUNABLE)
    assert len(held) == 4 * 4 and all(held)  # the restored masks held through four more epochs of AdamW
    assert prunable_zeros(fresh) == round(0.6 * N)

    # Masks that do not fit the network (biases now prunable) are refused with a clear message.
    mismatched = Pruning(sparsity=0.6, start_epoch=1, end_epoch=5, prune_biases=True)
    with pytest.raises(MisconfigurationException, match="masks do not match"):
        make_trainer([mismatched], max_epochs=7).fit(TinyClassifier(), ckpt_path=str(last))


def test_pruned_checkpoint_tests_and_exports_as_the_plain_network(tmp_path):
    torch.manual_seed(0)
    model = TinyClassifier()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    make_trainer([Pruning(sparsity=0.8, end_epoch=2), checkpoint], max_epochs=3, enable_checkpointing=True).fit(model)

    exported = model.state_dict()
    assert not any(k.endswith(("_orig", "_mask")) for k in exported)
    plain = TinyClassifier()
    plain.load_state_dict(exported, strict=True)
    assert prunable_zeros(plain) == round(0.8 * N)
    x = tiny_data(8, seed=2).tensors[0]
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), model.eval()(x))

    # Testing from the checkpoint needs neither the callback nor its state.
    (from_checkpoint,) = make_trainer([], max_epochs=1).test(TinyClassifier(), ckpt_path=str(tmp_path / "last.ckpt"))
    (live,) = make_trainer([], max_epochs=1).test(model)
    assert from_checkpoint["test/loss"] == pytest.approx(live["test/loss"], abs=1e-6)


def test_weights_only_checkpoints_are_the_pruned_plain_network(tmp_path):
    # Lightning calls no callback hook for them; the zeros are in the weights themselves.
    torch.manual_seed(0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_weights_only=True)
    make_trainer([Pruning(sparsity=0.8, end_epoch=1), checkpoint], max_epochs=2, enable_checkpointing=True).fit(
        TinyClassifier()
    )
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert "callbacks" not in saved
    plain = TinyClassifier()
    plain.load_state_dict(saved["state_dict"], strict=True)
    assert prunable_zeros(plain) == round(0.8 * N)


def test_two_copies_in_one_trainer_each_get_back_their_own_masks(tmp_path):
    def copies() -> tuple[Pruning, Pruning]:
        return Pruning(sparsity=0.3, start_epoch=1, end_epoch=1), Pruning(sparsity=0.6, end_epoch=2, schedule="linear")

    def masks(callback: Pruning) -> dict[str, torch.Tensor]:
        return {n: m.clone() for n, m in callback.state_dict()["pruned"].items()}

    torch.manual_seed(0)
    light, heavy = copies()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    make_trainer([light, heavy, checkpoint], max_epochs=3, enable_checkpointing=True).fit(TinyClassifier())
    saved = {"light": masks(light), "heavy": masks(heavy)}
    assert sum(int(m.sum()) for m in saved["light"].values()) == round(0.3 * N)
    assert sum(int(m.sum()) for m in saved["heavy"].values()) == round(0.6 * N)

    torch.manual_seed(1)
    fresh_heavy, fresh_light = reversed(copies())  # the other order: states are found by key, not position
    restored = {}

    def on_train_start(trainer, module):
        restored.update(light=masks(fresh_light), heavy=masks(fresh_heavy))

    probe = LambdaCallback(on_train_start=on_train_start)
    make_trainer([fresh_heavy, fresh_light, probe], max_epochs=4).fit(
        TinyClassifier(), ckpt_path=tmp_path / "last.ckpt"
    )
    for which in ("light", "heavy"):
        assert restored[which].keys() == saved[which].keys()
        assert all(torch.equal(restored[which][n], saved[which][n]) for n in PRUNABLE), which


@pytest.mark.parametrize("rewind_to_epoch", [0, 1])
def test_rewinding_restores_unpruned_weights_to_the_saved_epoch(rewind_to_epoch):
    torch.manual_seed(0)
    model = TinyClassifier()
    before, after, optimizer_entries = {}, {}, {}

    def record_before(trainer, module):
        before[trainer.current_epoch] = state(module)

    def record_after(trainer, module):
        after[trainer.current_epoch] = state(module)
        optimizer_entries[trainer.current_epoch] = len(trainer.optimizers[0].state)

    pruning = Pruning(sparsity=0.5, start_epoch=2, end_epoch=4, frequency=2, rewind_to_epoch=rewind_to_epoch)
    callbacks = [
        LambdaCallback(on_train_epoch_start=record_before),
        pruning,
        LambdaCallback(on_train_epoch_start=record_after),
    ]
    make_trainer(callbacks, max_epochs=5).fit(model)

    reference = before[rewind_to_epoch]
    for epoch, sparsity in ((2, cubic(0.5, 1, 2)), (4, 0.5)):
        rewound = after[epoch]
        pruned = {n: rewound[n] == 0 for n in PRUNABLE}
        assert sum(int(m.sum()) for m in pruned.values()) == round(sparsity * N)
        for key, value in rewound.items():
            if key in pruned:
                assert torch.equal(value[~pruned[key]], reference[key][~pruned[key]])
                assert not torch.equal(before[epoch][key], reference[key])  # training had moved them
            else:  # biases, norm scales, embeddings and BatchNorm statistics rewind too
                assert torch.equal(value, reference[key]), key
        assert optimizer_entries[epoch] == 0  # AdamW's moments and step counts start afresh


@pytest.mark.parametrize(
    ("flags", "layers"),
    [
        ({}, {"conv", "fc1", "fc2"}),
        (
            {"prune_biases": True, "prune_norms": True, "prune_embeddings": True},
            {"conv", "bn", "fc1", "ln", "fc2", "class_embed"},
        ),
    ],
)
def test_norms_biases_and_embeddings_are_excluded_unless_asked(flags, layers):
    torch.manual_seed(0)
    model = TinyClassifier()
    pruning = Pruning(sparsity=0.5, end_epoch=0, **flags)
    trainer = make_trainer([pruning], max_epochs=1)
    trainer.fit(model)

    logged = {k for k in trainer.callback_metrics if k.startswith("pruning/")}
    assert logged == {f"pruning/{layer}" for layer in layers} | {"pruning/sparsity"}
    chosen = {
        n: p for n, p in model.named_parameters() if n.split(".")[0] in layers and (flags or n.endswith("weight"))
    }
    assert pruning.num_prunable == sum(p.numel() for p in chosen.values())
    assert sum(int((p == 0).sum()) for p in chosen.values()) == round(0.5 * pruning.num_prunable)
    for layer in layers:
        params = [p for n, p in chosen.items() if n.split(".")[0] == layer]
        measured = sum(int((p == 0).sum()) for p in params) / sum(p.numel() for p in params)
        assert float(trainer.callback_metrics[f"pruning/{layer}"]) == pytest.approx(measured, abs=1e-6)
    assert all(bool((p != 0).all()) for n, p in model.named_parameters() if n not in chosen)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sparsity": 1.0, "end_epoch": 3}, r"sparsity must be in \(0, 1\)"),
        ({"sparsity": 0.0, "end_epoch": 3}, r"sparsity must be in \(0, 1\)"),
        ({"sparsity": 0.5, "end_epoch": 3, "start_epoch": -1}, "start_epoch must be >= 0"),
        ({"sparsity": 0.5, "end_epoch": 2, "start_epoch": 3}, r"end_epoch \(2\) must be >= start_epoch \(3\)"),
        ({"sparsity": 0.5, "end_epoch": 3, "frequency": 0}, "frequency must be"),
        ({"sparsity": 0.5, "end_epoch": 5, "frequency": 2}, "must be a multiple of frequency"),
        ({"sparsity": 0.5, "end_epoch": 3, "schedule": "exponential"}, "schedule must be 'cubic' or 'linear'"),
        ({"sparsity": 0.5, "end_epoch": 3, "start_epoch": 1, "rewind_to_epoch": 2}, "rewind_to_epoch must be in"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(MisconfigurationException, match=message):
        Pruning(**kwargs)


def test_a_network_without_prunable_weights_or_a_short_run_is_reported():
    class NormOnly(TinyClassifier):
        def __init__(self):
            super().__init__()
            for name in ("conv", "fc1", "fc2", "class_embed"):
                delattr(self, name)

    with pytest.raises(MisconfigurationException, match="no prunable parameter"):
        make_trainer([Pruning(sparsity=0.5, end_epoch=0)], max_epochs=1).fit(NormOnly())
    with pytest.warns(UserWarning, match="training stops after 2 epochs"):
        make_trainer([Pruning(sparsity=0.5, start_epoch=1, end_epoch=3)], max_epochs=2).fit(TinyClassifier())


@pytest.mark.slow
def test_digits_recipe_keeps_its_accuracy_at_80_percent_sparsity():
    from recipes.cli import main

    fit = main(["fit", "--config", "vision/digits_pruned", "--trainer.logger=false"])
    net = fit.model.net
    prunable = [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    total = sum(w.numel() for w in prunable)
    assert sum(int((w == 0).sum()) for w in prunable) == round(0.8 * total)
    assert float(fit.trainer.callback_metrics["val/acc"]) >= 0.95
    # The dense recipe, without the callback, tests the pruned checkpoint as it is.
    last = str(Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt")
    test = main(["test", "--config", "vision/digits", "--trainer.logger=false", "--ckpt_path", last])
    assert float(test.trainer.callback_metrics["test/acc"]) >= 0.95
