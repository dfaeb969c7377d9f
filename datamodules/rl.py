"""Interaction with Gymnasium environments served to Lightning as training data.

Two DataModules over seeded ``gymnasium.vector.SyncVectorEnv`` environments, served in *rounds* of interaction
(``rounds_per_epoch`` of them make a training epoch), so the Trainer's loop, checkpoints and loggers work unchanged:

* :class:`ReplayDataModule` (DQN and other off-policy learners): a round steps the environments ``train_frequency``
  times into a replay buffer, then yields ``gradient_steps`` minibatches sampled from it (uniformly, or
  prioritised as in Schaul et al. 2016, https://arxiv.org/abs/1511.05952).
* :class:`RolloutDataModule` (PPO and other on-policy learners): a round collects ``rollout_steps`` steps per
  environment, computes advantages by GAE (Schulman et al. 2016, https://arxiv.org/abs/1506.02438), then yields the
  rollout ``update_epochs`` times in shuffled minibatches. One round per epoch, so the next rollout is collected by
  the policy after its last update (Lightning fetches one batch ahead within an epoch, never across).

Acting: the data side asks ``trainer.lightning_module.act(observations, progress)`` for actions at every step. The
module is reached through the trainer (never imported), acts with its current weights, and any module that has an
``act`` method gets these DataModules for free; ``act`` returns a dict with ``actions`` (and, for rollouts,
``log_probs`` and ``values``). ``progress`` is the fraction of the step budget done, for schedules (epsilon, learning
rate) that follow it. What goes back from module to data (the priorities of prioritised replay) travels in the batch
as a callable.

The budget: after the round that reaches ``total_steps`` environment steps the DataModule sets
``trainer.should_stop``, so a recipe stops by itself. The replay buffer, the step count, observation-normalisation
statistics and the sampling generator are saved in checkpoints; a resumed run continues from them (environments
start new episodes, seeded by the step count).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset

from datamodules.rl_buffers import ReplayBuffer, RunningMeanStd, gae

Batch = dict[str, Any]


def check_env_id(env_id: str) -> None:
    """Raise a one-line ``ValueError`` when ``env_id`` is not a registered Gymnasium environment."""
    try:
        gym.spec(env_id)
    except gym.error.Error as err:
        raise ValueError(
            f"unknown Gymnasium environment id {env_id!r}: {err} (`python -c 'import gymnasium; "
            "gymnasium.pprint_registry()'` lists them)"
        ) from None


def make_env(env_id: str, render_mode: str | None = None) -> gym.Env:
    """``gymnasium.make(env_id)``, with a missing optional dependency (Box2D, MuJoCo) said in one line."""
    try:
        return gym.make(env_id, render_mode=render_mode)
    except gym.error.DependencyNotInstalled as err:
        raise MisconfigurationException(f"{env_id} needs an optional dependency: {err}") from None


class _Epoch(IterableDataset):
    """An iterable over one epoch's batches, made afresh by ``make()`` each epoch (it has no length)."""

    def __init__(self, make: Callable[[], Iterator[Batch]]) -> None:
        self.make = make

    def __iter__(self) -> Iterator[Batch]:
        return self.make()


class EnvironmentDataModule(LightningDataModule):
    """What both DataModules share: the environments, the acting loop, the budget, normalisation and state.

    Args:
        env_id: A registered Gymnasium id, e.g. ``CartPole-v1``.
        num_envs: Environments stepped side by side.
        total_steps: Environment steps (summed over environments) after which training stops.
        seed: Seeds environment ``i`` with ``seed + i``, and the sampling generator.
        normalize_observations: Standardise observations by running mean and variance of those seen in training
            (clipped to +-10, as SB3's ``VecNormalize``); the statistics are saved in checkpoints.
        rounds_per_epoch: Rounds of interaction per training epoch. Epoch ends are where Lightning checkpoints and
            evaluation callbacks run, and each costs as much as dozens of small optimizer steps: take several rounds
            per epoch when rounds are short. For on-policy rollouts keep 1: within an epoch Lightning fetches one batch
            ahead, so the next rollout would be collected before the previous one's last minibatch is trained on.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        total_steps: int,
        seed: int,
        normalize_observations: bool,
        rounds_per_epoch: int,
    ) -> None:
        super().__init__()
        check_env_id(env_id)
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if rounds_per_epoch < 1:
            raise ValueError(f"rounds_per_epoch must be >= 1, got {rounds_per_epoch}")
        self.env_id, self.num_envs, self.total_steps, self.seed = env_id, num_envs, total_steps, seed
        self.normalize_observations, self.rounds_per_epoch = normalize_observations, rounds_per_epoch
        self._spaces: tuple[gym.Space, gym.Space] | None = None
        self._envs: SyncVectorEnv | None = None
        self._observations: np.ndarray | None = None  # (N, *obs) raw, the next ones to act on
        self._episode = np.zeros((2, num_envs))  # running return and length of each environment's episode
        self._finished: list[tuple[float, int]] = []  # (return, length) of episodes finished this round
        self.env_steps = 0
        self.obs_stats = RunningMeanStd()
        self.rng = np.random.default_rng(seed)

    # ---- what the model takes from the data (core.data_values) ----

    def _space(self, i: int) -> gym.Space:
        if self._spaces is None:
            env = make_env(self.env_id)
            self._spaces = (env.observation_space, env.action_space)
            env.close()
        return self._spaces[i]

    @property
    def observation_shape(self) -> tuple[int, ...]:
        return tuple(self._space(0).shape)

    @property
    def num_actions(self) -> int | None:
        """Discrete actions, or ``None`` for a continuous action space (see :attr:`action_dim`)."""
        space = self._space(1)
        return int(space.n) if isinstance(space, gym.spaces.Discrete) else None

    @property
    def action_dim(self) -> int | None:
        """Dimensions of a continuous (``Box``) action, or ``None`` for discrete actions."""
        space = self._space(1)
        return int(np.prod(space.shape)) if isinstance(space, gym.spaces.Box) else None

    # ---- environments ----

    def start(self) -> None:
        """Make and reset the environments, at the first round rather than in ``setup``: Lightning restores a
        checkpoint's state after ``setup``, and a resumed run seeds its episodes by the restored step count."""
        # SAME_STEP: a finished episode's environment resets inside the same step, its last observation in the info.
        self._envs = SyncVectorEnv(
            [lambda: make_env(self.env_id) for _ in range(self.num_envs)], autoreset_mode=AutoresetMode.SAME_STEP
        )
        offset = self.env_steps  # a resumed run starts episodes the first run has not seen
        self._observations = self._call("reset", seed=[self.seed + offset + i for i in range(self.num_envs)])[0]
        self._episode[:] = 0

    def teardown(self, stage: str) -> None:
        if self._envs is not None:
            self._envs.close()
            self._envs = None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> tuple:
        try:
            return getattr(self._envs, method)(*args, **kwargs)
        except Exception as err:
            raise MisconfigurationException(
                f"environment {self.env_id} raised {type(err).__name__} in {method}() after {self.env_steps} "
                f"environment steps: {err}"
            ) from err

    def normalize(self, observations: np.ndarray) -> np.ndarray:
        """Observations as the learner sees them: standardised by the running statistics when enabled."""
        return self.obs_stats.normalize(observations) if self.normalize_observations else observations

    def make_env(self, render_mode: str | None = None) -> gym.Env:
        """A separate environment for evaluation whose observations are normalised as in training (by the statistics
        at the time of each step, which evaluation does not update); seed it with ``reset(seed=...)``."""
        env = make_env(self.env_id, render_mode)
        if self.normalize_observations:
            # A closure, not the bound method: the wrapper deep-copies its arguments, and with them this DataModule.
            stats = self.obs_stats
            env = gym.wrappers.TransformObservation(env, lambda obs: stats.normalize(obs), env.observation_space)
        return env

    @property
    def progress(self) -> float:
        """Fraction of the step budget done, in ``[0, 1]``."""
        return min(1.0, self.env_steps / self.total_steps)

    def act(self, observations: np.ndarray) -> dict[str, torch.Tensor]:
        """Ask the module being trained what to do (see the module docstring for why through the trainer)."""
        module = self.trainer.lightning_module
        with torch.no_grad():
            out = module.act(torch.as_tensor(observations, device=module.device), self.progress)
        return {k: v.cpu() for k, v in out.items()}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Step every environment; return ``(observations, rewards, terminated, ended, final_observations)``, raw.

        ``ended`` is terminated or truncated; ``final_observations`` are the last observations of the episodes that
        ended (the environment has reset already and ``observations`` starts the next episode), else the next ones.
        """
        observations, rewards, terminated, truncated, info = self._call("step", actions)
        ended = terminated | truncated
        final = observations.copy()
        if ended.any():
            for i in np.flatnonzero(ended):
                final[i] = info["final_obs"][i]
        if self.normalize_observations:
            self.obs_stats.update(observations)
        self._episode += np.stack([rewards, np.ones(self.num_envs)])
        for i in np.flatnonzero(ended):
            self._finished.append((float(self._episode[0, i]), int(self._episode[1, i])))
            self._episode[:, i] = 0
        self.env_steps += self.num_envs
        self._observations = observations
        return observations, rewards.astype(np.float32), terminated, ended, final

    def _round_info(self) -> Batch:
        """Scalars every batch of a round carries: the step count, progress and the round's finished episodes."""
        returns, lengths = zip(*self._finished, strict=True) if self._finished else ((np.nan,), (np.nan,))
        return {
            "env_steps": torch.tensor(self.env_steps),
            "progress": torch.tensor(self.progress),
            "episode_return": torch.tensor(float(np.mean(returns))),
            "episode_length": torch.tensor(float(np.mean(lengths))),
        }

    def _round(self) -> Iterator[Batch]:
        raise NotImplementedError

    def _epoch(self) -> Iterator[Batch]:
        if self._envs is None:
            self.start()
        for _ in range(self.rounds_per_epoch):
            if self.env_steps >= self.total_steps:  # e.g. a run resumed from its final checkpoint
                self.trainer.should_stop = True
                return
            yield from self._round()
            self._finished.clear()
            if self.env_steps >= self.total_steps:
                self.trainer.should_stop = True  # as EarlyStopping does: the epoch loop ends after this batch
                return

    def train_dataloader(self) -> DataLoader:
        # batch_size=None: the rounds yield whole batches. No workers: acting needs the module in this process.
        return DataLoader(_Epoch(self._epoch), batch_size=None, num_workers=0)

    # ---- checkpoint state ----

    def state_dict(self) -> dict[str, Any]:
        return {
            "env_steps": self.env_steps,
            "obs_stats": self.obs_stats.state_dict(),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.env_steps = int(state["env_steps"])
        self.obs_stats.load_state_dict(state["obs_stats"])
        self.rng.bit_generator.state = state["rng"]


class ReplayDataModule(EnvironmentDataModule):
    """Experience replay: each round ``train_frequency`` environment steps into the buffer, then ``gradient_steps``
    sampled minibatches (none until the buffer holds ``learning_starts`` transitions).

    A batch holds ``observations`` (B, *obs), ``actions`` (B,), ``rewards`` (B,), ``next_observations`` (B, *obs),
    ``terminated`` (B,) float (1 where the episode *terminated*: a time-limit truncation still bootstraps),
    ``weights`` (B,) importance-sampling weights (ones for uniform replay), ``update_priorities`` (a callable taking
    the batch's TD errors, prioritised replay only), and the round's scalars ``env_steps``, ``progress``,
    ``episode_return``, ``episode_length`` (NaN when no episode ended this round).

    Args:
        env_id: A registered Gymnasium id, e.g. ``CartPole-v1``.
        num_envs: Environments stepped side by side.
        total_steps: Environment steps after which training stops.
        buffer_size: Transitions the buffer holds; the oldest are overwritten.
        batch_size: Transitions per minibatch.
        learning_starts: Environment steps before the first minibatch.
        train_frequency: Environment steps per round (rounded up to a multiple of ``num_envs``).
        gradient_steps: Minibatches (optimizer steps) per round.
        prioritized: Sample transitions with probability proportional to ``|TD error|^alpha``.
        alpha: Prioritisation exponent (0 is uniform).
        beta: Importance-sampling exponent at the start, annealed linearly to 1 over the budget.
        seed: Seeds the environments and the sampling generator.
        normalize_observations: Standardise observations by the running mean and variance of those seen in training
            (clipped to +-10); the statistics are saved in checkpoints.
        rounds_per_epoch: Rounds per training epoch: checkpoints and evaluation run at epoch ends, each costing as
            much as dozens of small optimizer steps.
    """

    def __init__(
        self,
        env_id: str = "CartPole-v1",
        num_envs: int = 1,
        total_steps: int = 50_000,
        buffer_size: int = 100_000,
        batch_size: int = 64,
        learning_starts: int = 1_000,
        train_frequency: int = 256,
        gradient_steps: int = 128,
        prioritized: bool = False,
        alpha: float = 0.6,
        beta: float = 0.4,
        seed: int = 0,
        normalize_observations: bool = False,
        rounds_per_epoch: int = 1,
    ) -> None:
        super().__init__(env_id, num_envs, total_steps, seed, normalize_observations, rounds_per_epoch)
        for name, value in (
            ("buffer_size", buffer_size),
            ("batch_size", batch_size),
            ("gradient_steps", gradient_steps),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if train_frequency < 1 or learning_starts < 0:
            raise ValueError(
                f"train_frequency must be >= 1 and learning_starts >= 0, got {train_frequency}, {learning_starts}"
            )
        if not (0.0 <= alpha <= 1.0 and 0.0 <= beta <= 1.0):
            raise ValueError(f"alpha and beta must lie in [0, 1], got {alpha} and {beta}")
        self.buffer_size, self.batch_size, self.learning_starts = (
            buffer_size,
            batch_size,
            max(learning_starts, batch_size),
        )
        self.train_frequency, self.gradient_steps = train_frequency, gradient_steps
        self.prioritized, self.alpha, self.beta = prioritized, alpha, beta
        self.buffer: ReplayBuffer | None = None

    def start(self) -> None:
        if self.buffer is None:
            self.buffer = ReplayBuffer(self.buffer_size, self.observation_shape, self.prioritized, self.alpha)
        super().start()

    def _collect(self, steps: int) -> None:
        for _ in range(-(-steps // self.num_envs)):  # ceil: whole vector steps
            observations = self._observations
            actions = self.act(self.normalize(observations))["actions"].numpy()
            _, rewards, terminated, _, final = self.step(actions)
            self.buffer.add(observations, actions, rewards, final, terminated)

    def _round(self) -> Iterator[Batch]:
        self._collect(max(self.train_frequency, self.learning_starts - len(self.buffer)))
        info = self._round_info()
        beta = self.beta + (1.0 - self.beta) * self.progress
        for _ in range(self.gradient_steps):
            batch, indices, weights = self.buffer.sample(self.batch_size, self.rng, beta)
            batch["observations"] = self.normalize(batch["observations"])
            batch["next_observations"] = self.normalize(batch["next_observations"])
            out = {k: torch.from_numpy(v) for k, v in batch.items()}
            out["weights"] = torch.from_numpy(weights)
            if self.prioritized:
                out["update_priorities"] = lambda td, i=indices: self.buffer.update_priorities(i, td)
            yield {**out, **info}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "buffer": self.buffer.state_dict() if self.buffer is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("buffer") is not None:
            self.buffer = ReplayBuffer(self.buffer_size, self.observation_shape, self.prioritized, self.alpha)
            self.buffer.load_state_dict(state["buffer"])


class RolloutDataModule(EnvironmentDataModule):
    """On-policy rollouts: each round ``rollout_steps`` steps of every environment, advantages by GAE, then
    ``update_epochs`` passes over the rollout in shuffled minibatches of ``batch_size``.

    A batch holds ``observations`` (B, *obs), ``actions`` (B,), ``log_probs`` (B,) and ``values`` (B,) at
    collection, ``advantages`` (B,), ``returns`` (B,) (advantages + values, the value targets), and the round's
    scalars ``env_steps``, ``progress``, ``episode_return``, ``episode_length``. A time-limit truncation is
    bootstrapped: the value of the episode's last observation is added, discounted, to its last reward.

    Args:
        env_id: A registered Gymnasium id, e.g. ``CartPole-v1``.
        num_envs: Environments stepped side by side.
        total_steps: Environment steps after which training stops.
        rollout_steps: Steps of each environment per rollout (the rollout holds ``num_envs * rollout_steps``).
        batch_size: Transitions per minibatch; the last minibatch of a pass may be smaller.
        update_epochs: Passes over each rollout.
        gamma: Discount factor.
        gae_lambda: GAE's lambda: 0 is one-step TD, 1 Monte Carlo returns.
        seed: Seeds the environments and the minibatch shuffling.
        normalize_observations: Standardise observations by the running mean and variance of those seen in training
            (clipped to +-10); the statistics are saved in checkpoints.
        rounds_per_epoch: Rounds per training epoch; keep 1: within an epoch Lightning fetches one batch ahead, so
            the next rollout would be collected before the last minibatch of this one is trained on.
    """

    def __init__(
        self,
        env_id: str = "CartPole-v1",
        num_envs: int = 8,
        total_steps: int = 100_000,
        rollout_steps: int = 32,
        batch_size: int = 256,
        update_epochs: int = 20,
        gamma: float = 0.98,
        gae_lambda: float = 0.8,
        seed: int = 0,
        normalize_observations: bool = False,
        rounds_per_epoch: int = 1,
    ) -> None:
        super().__init__(env_id, num_envs, total_steps, seed, normalize_observations, rounds_per_epoch)
        for name, value in (
            ("rollout_steps", rollout_steps),
            ("batch_size", batch_size),
            ("update_epochs", update_epochs),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not (0.0 <= gamma <= 1.0 and 0.0 <= gae_lambda <= 1.0):
            raise ValueError(f"gamma and gae_lambda must lie in [0, 1], got {gamma} and {gae_lambda}")
        self.rollout_steps, self.batch_size, self.update_epochs = rollout_steps, batch_size, update_epochs
        self.gamma, self.gae_lambda = gamma, gae_lambda

    def _collect(self) -> dict[str, torch.Tensor]:
        columns: dict[str, list] = {
            k: [] for k in ("observations", "actions", "log_probs", "values", "rewards", "ends")
        }
        for _ in range(self.rollout_steps):
            observations = self.normalize(self._observations)
            out = self.act(observations)
            _, rewards, terminated, ended, final = self.step(out["actions"].numpy())
            truncated = ended & ~terminated
            if truncated.any():  # the episode did not end, time did: bootstrap from its last state
                last_values = self.act(self.normalize(final[truncated]))["values"].numpy()
                rewards[truncated] += self.gamma * last_values
            for key, value in (("observations", observations), ("rewards", rewards), ("ends", ended)):
                columns[key].append(torch.as_tensor(value))
            for key in ("actions", "log_probs", "values"):
                columns[key].append(out[key])
        rollout = {k: torch.stack(v) for k, v in columns.items()}  # (T, N, ...)
        last_values = self.act(self.normalize(self._observations))["values"]  # (N,)
        rollout["advantages"] = gae(
            rollout["rewards"], rollout["values"], rollout["ends"], last_values, self.gamma, self.gae_lambda
        )
        rollout["returns"] = rollout["advantages"] + rollout["values"]
        del rollout["rewards"], rollout["ends"]
        return {k: v.flatten(0, 1) for k, v in rollout.items()}  # (T, N, ...) -> (T * N, ...)

    def _round(self) -> Iterator[Batch]:
        rollout = self._collect()
        info = self._round_info()
        size = len(rollout["actions"])
        for _ in range(self.update_epochs):
            order = torch.from_numpy(self.rng.permutation(size))
            for start in range(0, size, self.batch_size):
                indices = order[start : start + self.batch_size]
                yield {**{k: v[indices] for k, v in rollout.items()}, **info}
