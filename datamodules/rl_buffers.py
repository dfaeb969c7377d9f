"""The data structures of reinforcement learning: a replay buffer, running observation statistics and GAE."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    ends: torch.Tensor,
    last_values: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    r"""Generalised advantage estimates (Schulman et al. 2016, https://arxiv.org/abs/1506.02438), (T, N).

    .. math::
        \delta_t = r_t + \gamma (1 - e_t) V(s_{t+1}) - V(s_t), \qquad
        \hat A_t = \delta_t + \gamma \lambda (1 - e_t) \hat A_{t+1}

    where :math:`e_t` is 1 when the transition at step :math:`t` ended its episode (the environment then reset, so
    :math:`s_{t+1}` starts the next one and is not bootstrapped).

    Args:
        rewards: (T, N) rewards of T steps of N environments.
        values: (T, N) value estimates :math:`V(s_t)` at collection.
        ends: (T, N) bool, the episode ended at this step (terminated or truncated).
        last_values: (N,) :math:`V(s_T)` of the observations after the last step.
        gamma: Discount factor.
        lam: GAE's :math:`\lambda`.
    """
    advantages = torch.zeros_like(rewards)
    next_values, next_advantage = last_values, torch.zeros_like(last_values)
    for t in reversed(range(len(rewards))):
        carry = gamma * (1.0 - ends[t].float())  # (N,)
        delta = rewards[t] + carry * next_values - values[t]
        next_advantage = advantages[t] = delta + carry * lam * next_advantage
        next_values = values[t]
    return advantages


class RunningMeanStd:
    """Mean and variance of every observation seen, merged batch by batch (Chan et al.'s parallel algorithm, as in
    SB3's ``VecNormalize``), float64."""

    def __init__(self, clip: float = 10.0, epsilon: float = 1e-8) -> None:
        self.mean: np.ndarray | float = 0.0
        self.var: np.ndarray | float = 1.0
        self.count = 0.0
        self.clip, self.epsilon = clip, epsilon

    def update(self, batch: np.ndarray) -> None:
        """Merge a batch (B, *obs) into the statistics."""
        batch_mean, batch_var, n = batch.mean(axis=0), batch.var(axis=0), len(batch)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.count = total

    def normalize(self, observations: np.ndarray) -> np.ndarray:
        if self.count == 0:
            return observations
        z = (observations - self.mean) / np.sqrt(self.var + self.epsilon)
        return np.clip(z, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        # Tensors, not numpy arrays: a checkpoint then loads with torch.load(weights_only=True).
        return {"mean": torch.as_tensor(self.mean), "var": torch.as_tensor(self.var), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.var = np.asarray(state["mean"]), np.asarray(state["var"])
        self.count = float(state["count"])


class ReplayBuffer:
    """A ring buffer of transitions ``(observation, action, reward, next_observation, terminated)``.

    Uniform sampling draws indices with replacement from the filled part; prioritised sampling draws index ``i`` with
    probability :math:`p_i^\\alpha / \\sum_j p_j^\\alpha` and returns importance weights
    :math:`(N P(i))^{-\\beta} / \\max_j (N P(j))^{-\\beta}` (Schaul et al. 2016). New transitions get the largest
    priority so far, so each is sampled soon. Proportional sampling here costs O(capacity) per batch (numpy's
    ``choice``), no sum tree: a few milliseconds at 10^5 transitions, small beside the optimizer step.

    Args:
        capacity: Transitions held; the oldest are overwritten once full.
        observation_shape: Shape of one observation.
        prioritized: Keep priorities and sample by them.
        alpha: Prioritisation exponent.
    """

    FIELDS = ("observations", "actions", "rewards", "next_observations", "terminated")

    def __init__(
        self, capacity: int, observation_shape: tuple[int, ...], prioritized: bool = False, alpha: float = 0.6
    ) -> None:
        self.capacity, self.prioritized, self.alpha = capacity, prioritized, alpha
        self.data = {
            "observations": np.zeros((capacity, *observation_shape), np.float32),
            "actions": np.zeros(capacity, np.int64),
            "rewards": np.zeros(capacity, np.float32),
            "next_observations": np.zeros((capacity, *observation_shape), np.float32),
            "terminated": np.zeros(capacity, np.float32),
        }
        self.priorities = np.zeros(capacity, np.float64) if prioritized else None
        self.max_priority = 1.0
        self.position, self.size = 0, 0

    def __len__(self) -> int:
        return self.size

    def add(self, *columns: np.ndarray) -> None:
        """Add a batch of N transitions, one array (N, ...) per field in :attr:`FIELDS` order."""
        n = len(columns[0])
        indices = (self.position + np.arange(n)) % self.capacity  # wraps around, overwriting the oldest
        for name, column in zip(self.FIELDS, columns, strict=True):
            self.data[name][indices] = column
        if self.priorities is not None:
            self.priorities[indices] = self.max_priority
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(
        self, batch_size: int, rng: np.random.Generator, beta: float = 1.0
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """``batch_size`` transitions, their indices and importance weights (ones when sampling uniformly)."""
        if self.priorities is None:
            indices = rng.integers(0, self.size, batch_size)
            weights = np.ones(batch_size, np.float32)
        else:
            scaled = self.priorities[: self.size] ** self.alpha
            probabilities = scaled / scaled.sum()
            indices = rng.choice(self.size, batch_size, p=probabilities)
            weights = (self.size * probabilities[indices]) ** -beta
            weights = (weights / weights.max()).astype(np.float32)
        return {name: column[indices] for name, column in self.data.items()}, indices, weights

    def update_priorities(self, indices: np.ndarray, td_errors: torch.Tensor) -> None:
        """Set the priorities of sampled transitions to their absolute TD errors (plus a little, so none is zero)."""
        priorities = td_errors.detach().abs().cpu().double().numpy() + 1e-6
        self.priorities[indices] = priorities
        self.max_priority = max(self.max_priority, float(priorities.max()))

    def state_dict(self) -> dict[str, Any]:
        # Only the filled part: a checkpoint early in training stays small.
        # Tensors, not numpy arrays: a checkpoint then loads with torch.load(weights_only=True).
        held = {name: torch.from_numpy(column[: self.size].copy()) for name, column in self.data.items()}
        priorities = None if self.priorities is None else torch.from_numpy(self.priorities[: self.size].copy())
        return {"data": held, "priorities": priorities, "max_priority": self.max_priority, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.size = len(state["data"]["actions"])
        if self.size > self.capacity:
            raise ValueError(
                f"the checkpoint's buffer holds {self.size} transitions, more than capacity {self.capacity}"
            )
        for name, column in state["data"].items():
            self.data[name][: self.size] = np.asarray(column)
        if self.priorities is not None and state["priorities"] is not None:
            self.priorities[: self.size] = np.asarray(state["priorities"])
        self.max_priority, self.position = float(state["max_priority"]), int(state["position"])
