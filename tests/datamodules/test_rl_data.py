"""The RL data side: GAE, the replay buffer, observation statistics, the step budget, resume and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import rl_envs  # noqa: F401  (registers Chooser-v0 and Exploding-v0)
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer

from datamodules.rl import ReplayDataModule, RolloutDataModule
from datamodules.rl_buffers import ReplayBuffer, RunningMeanStd, gae
from lightning_modules.rl import DQN, PPO

TRAINER = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}


def test_gae_equals_a_hand_computed_example():
    # Environment 0 ends its episode at step 1 (no bootstrap across it); environment 1 never ends.
    rewards = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])  # (T=3, N=2)
    values = torch.tensor([[0.5, 0.0], [0.4, 0.0], [0.3, 0.0]])
    ends = torch.tensor([[False, False], [True, False], [False, False]])
    last = torch.tensor([0.2, 1.0])
    # gamma 0.9, lambda 0.8. Env 0: d2 = 1 + .9*.2 - .3 = .88; d1 = 1 - .4 = .6 (ended); d0 = 1 + .9*.4 - .5 = .86,
    # A0 = .86 + .72*.6. Env 1: d2 = 1 + .9*1 = 1.9; A1 = .72*1.9; A0 = .72*A1.
    expected = torch.tensor([[0.86 + 0.72 * 0.6, 0.72 * 0.72 * 1.9], [0.6, 0.72 * 1.9], [0.88, 1.9]])
    assert torch.allclose(gae(rewards, values, ends, last, gamma=0.9, lam=0.8), expected)


def _add(buffer: ReplayBuffer, values: list[float]) -> None:
    x = np.array(values, np.float32)[:, None]  # (n, 1) observations
    n = len(values)
    buffer.add(x, np.zeros(n, np.int64), x[:, 0], x + 100, np.zeros(n, np.float32))


def test_replay_buffer_wraps_over_the_oldest():
    buffer = ReplayBuffer(5, (1,))
    _add(buffer, [0, 1, 2])
    _add(buffer, [3, 4, 5, 6])  # 5 and 6 overwrite 0 and 1
    assert len(buffer) == 5 and buffer.position == 2
    assert buffer.data["observations"][:, 0].tolist() == [5, 6, 2, 3, 4]
    assert buffer.data["next_observations"][:, 0].tolist() == [105, 106, 102, 103, 104]


def test_replay_buffer_samples_uniformly_from_the_filled_part():
    buffer = ReplayBuffer(100, (1,))
    _add(buffer, list(range(10)))
    batch, indices, weights = buffer.sample(20_000, np.random.default_rng(0))
    counts = np.bincount(batch["observations"][:, 0].astype(int), minlength=10)
    assert len(counts) == 10  # nothing from the empty slots
    assert np.abs(counts / 20_000 - 0.1).max() < 0.01
    assert (batch["rewards"] == batch["observations"][:, 0]).all()  # fields of one transition stay together
    assert (weights == 1).all()


def test_prioritised_replay_samples_by_priority_and_corrects_with_weights():
    buffer = ReplayBuffer(4, (1,), prioritized=True, alpha=1.0)
    _add(buffer, [0, 1, 2, 3])
    buffer.update_priorities(np.arange(4), torch.tensor([1.0, 1.0, 2.0, 4.0]))
    batch, indices, weights = buffer.sample(40_000, np.random.default_rng(0), beta=1.0)
    frequency = np.bincount(indices, minlength=4) / 40_000
    assert np.allclose(frequency, [1 / 8, 1 / 8, 2 / 8, 4 / 8], atol=0.01)
    assert np.allclose(weights[indices == 3], 0.25) and np.allclose(weights[indices == 0], 1.0)  # (N P)^-1 / max


def test_prioritised_replay_gets_the_td_errors_of_its_batches_back():
    data = ReplayDataModule("CartPole-v1", learning_starts=32, train_frequency=16, gradient_steps=3, batch_size=8,
                            prioritized=True)  # fmt: skip
    Trainer(max_epochs=2, **TRAINER).fit(DQN(observation_shape=(4,), num_actions=2), data)
    priorities = data.buffer.priorities[: len(data.buffer)]
    assert len(data.buffer) == 48 and len(np.unique(priorities)) > 10  # sampled ones hold their own |TD error|


def test_running_statistics_match_numpy_over_batches():
    data = np.random.default_rng(0).normal(3.0, 2.0, (1000, 3))
    stats = RunningMeanStd()
    for chunk in np.array_split(data, 7):
        stats.update(chunk)
    assert np.allclose(stats.mean, data.mean(0)) and np.allclose(stats.var, data.var(0))


def test_data_values_come_from_the_environment():
    cartpole = RolloutDataModule("CartPole-v1")
    assert (cartpole.observation_shape, cartpole.num_actions, cartpole.action_dim) == ((4,), 2, None)
    pendulum = ReplayDataModule("Pendulum-v1")
    assert (pendulum.num_actions, pendulum.action_dim) == (None, 1)


def test_unknown_environment_id_is_one_line():
    with pytest.raises(ValueError, match="unknown Gymnasium environment id 'CartPol-v1'.*Did you mean") as info:
        RolloutDataModule("CartPol-v1")
    assert "\n" not in str(info.value)


def test_an_environment_that_raises_mid_episode_stops_with_one_line():
    data = RolloutDataModule("Exploding-v0", num_envs=1, rollout_steps=4, batch_size=4, update_epochs=1)
    model = PPO(observation_shape=data.observation_shape, num_actions=data.num_actions)
    with pytest.raises(MisconfigurationException, match="Exploding-v0 raised RuntimeError in step.. after 6 env"):
        Trainer(max_epochs=3, **TRAINER).fit(model, data)


def test_rollouts_stop_by_themselves_at_the_step_budget():
    data = RolloutDataModule("Chooser-v0", num_envs=2, total_steps=50, rollout_steps=10, batch_size=8, update_epochs=2)
    model = PPO(observation_shape=data.observation_shape, num_actions=data.num_actions)
    trainer = Trainer(max_epochs=-1, **TRAINER)
    trainer.fit(model, data)
    assert data.env_steps == 60  # three rounds of 2 x 10 steps: the round that reaches 50 is the last
    assert trainer.current_epoch == 3 and trainer.global_step == 3 * 2 * 3  # 2 passes of ceil(20 / 8) minibatches
    assert trainer.callback_metrics["env/steps"] == 60
    assert trainer.callback_metrics["train/episode_return"] >= 0  # Chooser's episodes last 5 steps


class _Snapshotting(ReplayDataModule):
    """Notes what it holds when its first round starts, after any checkpoint has been restored."""

    def start(self) -> None:
        held = len(self.buffer) if self.buffer is not None else 0
        self.snapshot = (self.env_steps, self.obs_stats.count, held)
        self.restored = (
            np.array(self.obs_stats.mean),
            self.buffer.data["observations"][:held].copy() if held else None,
        )
        super().start()


def test_resume_restores_buffer_step_count_and_statistics(tmp_path):
    def replay():
        return _Snapshotting(
            "CartPole-v1", total_steps=10_000, learning_starts=64, train_frequency=32, gradient_steps=2,
            batch_size=16, normalize_observations=True, seed=3,
        )  # fmt: skip

    first = replay()
    model = DQN(observation_shape=(4,), num_actions=2)
    trainer = Trainer(max_epochs=3, **TRAINER)
    trainer.fit(model, first)
    assert first.snapshot == (0, 0, 0) and first.env_steps == 64 + 2 * 32
    trainer.save_checkpoint(tmp_path / "run.ckpt")

    second = replay()
    resumed = Trainer(max_epochs=4, **TRAINER)
    # weights_only=False: the hyperparameters hold the optimizer class given in Python (the DataModule's are tensors).
    resumed.fit(DQN(observation_shape=(4,), num_actions=2), second, ckpt_path=tmp_path / "run.ckpt", weights_only=False)
    assert second.snapshot == (128, first.obs_stats.count, 128)
    mean, observations = second.restored
    assert np.allclose(mean, first.obs_stats.mean)
    assert np.array_equal(observations, first.buffer.data["observations"][:128])
    assert second.env_steps == 128 + 32  # one more round: continued rather than restarted
