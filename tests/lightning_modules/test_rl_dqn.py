"""DQN: the double-DQN Huber loss on a fixed batch, the target-network schedule, epsilon, dueling heads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from lightning_modules.nets.rl import QNetwork
from lightning_modules.rl import DQN

TRAINER = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}


def _batch(seed: int = 0, size: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(size, 4, generator=g),
        "actions": torch.randint(2, (size,), generator=g),
        "rewards": torch.randn(size, generator=g),
        "next_observations": torch.randn(size, 4, generator=g),
        "terminated": (torch.rand(size, generator=g) < 0.3).float(),
        "weights": torch.rand(size, generator=g),
        "env_steps": torch.tensor(100),
        "progress": torch.tensor(0.5),
        "episode_return": torch.tensor(float("nan")),
        "episode_length": torch.tensor(float("nan")),
    }


@pytest.mark.parametrize("double", [True, False])
def test_loss_is_the_weighted_huber_loss_of_the_td_error(double):
    torch.manual_seed(0)
    model = DQN(observation_shape=(4,), num_actions=2, gamma=0.9, double=double)
    model.target.q[0].weight.data.add_(0.5)  # a target network that differs from the online one
    model.on_train_epoch_start()
    b = _batch()
    q = model.q(b["observations"])[torch.arange(8), b["actions"]]
    chooser = model.q if double else model.target
    a_next = chooser(b["next_observations"]).argmax(1)
    next_q = model.target(b["next_observations"])[torch.arange(8), a_next]
    y = b["rewards"] + 0.9 * (1 - b["terminated"]) * next_q
    expected = (b["weights"] * F.huber_loss(q, y.detach(), reduction="none")).mean()
    model.log = lambda *args, **kwargs: None  # no trainer attached
    assert torch.allclose(model.training_step(b, 0), expected)


class _TargetIsOnline(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[int, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        same = all(
            torch.equal(t, o) for t, o in zip(pl_module.target.parameters(), pl_module.q.parameters(), strict=True)
        )
        self.seen.append((trainer.global_step, same))


def test_target_network_syncs_every_interval_of_optimizer_steps():
    model = DQN(observation_shape=(4,), num_actions=2, target_update_interval=3)
    probe = _TargetIsOnline()
    loader = DataLoader([_batch(i) for i in range(8)], batch_size=None)
    Trainer(max_steps=8, callbacks=[probe], **TRAINER).fit(model, loader)
    # Copied at steps 3 and 6 (and equal at the start): the online network moves on after each step.
    assert probe.seen == [(s, s % 3 == 0) for s in range(8)]


def test_epsilon_falls_linearly_then_stays():
    model = DQN(observation_shape=(4,), num_actions=2, start_epsilon=1.0, final_epsilon=0.1, exploration_fraction=0.5)
    assert [round(model.epsilon(p), 6) for p in (0.0, 0.25, 0.5, 0.9)] == [1.0, 0.55, 0.1, 0.1]
    greedy = model(torch.zeros(1000, 4)).argmax(1)
    acted = model.act(torch.zeros(1000, 4), progress=1.0)["actions"]
    assert 0.02 < (acted != greedy).float().mean() < 0.09  # epsilon 0.1, half of the random picks are greedy anyway


def test_dueling_head_is_value_plus_centred_advantage():
    net = QNetwork(4, 3, hidden_sizes=(16,), dueling=True)
    x = torch.randn(5, 4)
    h = net.trunk(x)
    a = net.advantage(h)
    assert torch.allclose(net(x), net.value(h) + a - a.mean(1, keepdim=True))


def test_continuous_actions_are_refused_in_one_line():
    with pytest.raises(ValueError, match="DQN needs a discrete action space") as info:
        DQN(observation_shape=(3,), num_actions=None)
    assert "\n" not in str(info.value)


def test_checkpoint_rebuilds_the_module(tmp_path):
    model = DQN(net=QNetwork, observation_shape=(4,), num_actions=2, gamma=0.95)
    trainer = Trainer(max_steps=1, **TRAINER)
    trainer.fit(model, DataLoader([_batch()], batch_size=None))
    trainer.save_checkpoint(tmp_path / "dqn.ckpt")
    loaded = DQN.load_from_checkpoint(tmp_path / "dqn.ckpt", weights_only=False)  # hparams hold classes
    x = torch.randn(3, 4)
    assert loaded.gamma == 0.95 and torch.equal(loaded(x), model(x))
    assert torch.equal(loaded.target(x), model.target(x))
