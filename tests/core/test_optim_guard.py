"""Shared optimizer pieces and the loss guard: the numbers they must produce and the errors they must raise."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from core import optim
from core.guard import LossGuard


def test_parameter_groups_leave_vectors_and_frozen_parameters_undecayed():
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    net[2].weight.requires_grad_(False)
    decay, no_decay = optim.parameter_groups(net)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim == 1 for p in no_decay["params"])
    assert len(no_decay["params"]) == 4  # both biases (the frozen weight's bias still trains), norm scale and shift


@pytest.mark.parametrize(("warmup", "minimum"), [(10, 0.0), (0.25, 0.1), (0, 0.0)])
def test_warmup_cosine_follows_its_formula(warmup, minimum):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    schedule = optim.WarmupCosine(opt, warmup_steps=warmup, total_steps=40, min_lr_ratio=minimum)
    w = round(warmup * 40) if isinstance(warmup, float) else warmup
    for t in range(40):
        if t < w:
            expected = 2.0 * (t + 1) / w
        else:
            expected = 2.0 * (minimum + (1 - minimum) * 0.5 * (1 + math.cos(math.pi * (t - w) / (40 - w))))
        assert opt.param_groups[0]["lr"] == pytest.approx(expected), t
        opt.step()
        schedule.step()
    state = schedule.state_dict()  # a checkpoint round trip keeps the position
    again = optim.WarmupCosine(opt, warmup_steps=warmup, total_steps=40, min_lr_ratio=minimum)
    again.load_state_dict(state)
    assert again.last_epoch == 40


class _Trainer:
    def __init__(self, total):
        self.estimated_stepping_batches = total


def test_run_length_is_filled_only_when_left_unset():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    built = optim.build_scheduler(functools.partial(optim.WarmupCosine, warmup_steps=2), opt, _Trainer(30))
    assert built.total_steps == 30
    one_cycle = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=1.0, total_steps=7)
    assert optim.build_scheduler(one_cycle, opt, _Trainer(30)).total_steps == 7
    step_lr = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3)
    assert optim.build_scheduler(step_lr, opt, _Trainer(math.inf)).step_size == 3  # needs no run length


def test_an_unknown_run_length_says_to_set_max_steps():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    one_cycle = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=1.0)
    with pytest.raises(MisconfigurationException, match=r"OneCycleLR needs the run length.*--trainer.max_steps"):
        optim.build_scheduler(one_cycle, opt, _Trainer(math.inf))


def test_guard_names_the_first_bad_step_at_once_on_cpu():
    guard = LossGuard()
    guard.check(torch.tensor(1.0), step=0, epoch=0)
    with pytest.raises(MisconfigurationException, match=r"train/loss is nan at step 4 \(epoch 1\)\. Lower"):
        guard.check(torch.tensor(float("nan")), step=4, epoch=1)


def test_deferred_guard_reads_the_device_record_every_n_calls_and_names_the_first_bad_step():
    guard = LossGuard(check_every=5, defer=True)
    losses = [1.0, 0.5, float("inf"), float("nan"), 0.2]
    for step, value in enumerate(losses[:4]):
        guard.check(torch.tensor(value), step=step, epoch=0)  # no read yet: nothing raised
    with pytest.raises(MisconfigurationException, match=r"train/loss is inf at step 2 \(epoch 0\)"):
        guard.check(torch.tensor(losses[4]), step=4, epoch=0)
    guard.reset()
    guard.check(torch.tensor(float("nan")), step=9, epoch=3, name="g/loss")
    with pytest.raises(MisconfigurationException, match=r"g/loss is nan at step 9 \(epoch 3\)"):
        guard.flush()  # at epoch end
