"""Networks for reinforcement learning on flat observations: a Q-network (optionally dueling) and an actor-critic.

Plain ``nn.Module``s, built from ``(observation_size, num_actions)`` by the RL modules, so a recipe picks one and its
widths by ``class_path``. Observations of any shape are flattened first: ``(B, *observation_shape)`` -> ``(B, D)``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def mlp(
    sizes: list[int], activation: Literal["tanh", "relu"], gains: tuple[float, float] | None = None
) -> nn.Sequential:
    """Linear layers of ``sizes`` with ``activation`` between them (none after the last).

    ``gains``: orthogonal initialisation with gain ``gains[0]`` for hidden layers and ``gains[1]`` for the output
    layer, zero biases (the PPO implementation details of Huang et al. 2022,
    https://iclr-blog-track.github.io/2022/03/25/ppo-implementation-details/); ``None`` keeps PyTorch's default.
    """
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        linear = nn.Linear(fan_in, fan_out)
        if gains is not None:
            nn.init.orthogonal_(linear.weight, gains[1] if i == len(sizes) - 2 else gains[0])
            nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def _check(observation_size: int, num_actions: int, hidden_sizes: tuple[int, ...], activation: str) -> None:
    if observation_size < 1 or num_actions < 1:
        raise ValueError(f"observation_size and num_actions must be >= 1, got {observation_size} and {num_actions}")
    if not hidden_sizes or min(hidden_sizes) < 1:
        raise ValueError(f"hidden_sizes must be one or more positive widths, got {hidden_sizes}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")


class QNetwork(nn.Module):
    r"""An MLP of action values :math:`Q(s, \cdot)`, with an optional dueling head.

    Dueling (`Wang et al. 2016 <https://arxiv.org/abs/1511.06581>`_): a shared trunk feeds a state value
    :math:`V(s)` and advantages :math:`A(s, a)`, combined as :math:`Q = V + A - \operatorname{mean}_a A`, which makes
    the split identifiable.

    Args:
        observation_size: Length of the flattened observation.
        num_actions: Discrete actions.
        hidden_sizes: Widths of the hidden layers.
        activation: Non-linearity between layers.
        dueling: Separate value and advantage streams after the trunk.
    """

    def __init__(
        self,
        observation_size: int,
        num_actions: int,
        hidden_sizes: tuple[int, ...] = (256, 256),
        activation: Literal["tanh", "relu"] = "relu",
        dueling: bool = False,
    ) -> None:
        super().__init__()
        _check(observation_size, num_actions, hidden_sizes, activation)
        self.dueling = dueling
        if dueling:
            self.trunk = nn.Sequential(mlp([observation_size, *hidden_sizes], activation), ACTIVATIONS[activation]())
            self.value = nn.Linear(hidden_sizes[-1], 1)
            self.advantage = nn.Linear(hidden_sizes[-1], num_actions)
        else:
            self.q = mlp([observation_size, *hidden_sizes, num_actions], activation)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        """Action values (B, num_actions) of observations (B, *observation_shape)."""
        x = observations.flatten(1).float()  # (B, D)
        if not self.dueling:
            return self.q(x)
        h = self.trunk(x)  # (B, H)
        advantage = self.advantage(h)  # (B, A)
        return self.value(h) + advantage - advantage.mean(dim=1, keepdim=True)


class ActorCritic(nn.Module):
    """Separate policy and value MLPs (no shared trunk, as SB3's and CleanRL's default for vector observations).

    Orthogonal initialisation, gain :math:`\\sqrt 2` in hidden layers, 0.01 for the policy head (near-uniform initial
    policy) and 1 for the value head.

    Args:
        observation_size: Length of the flattened observation.
        num_actions: Discrete actions.
        hidden_sizes: Widths of the hidden layers of each MLP.
        activation: Non-linearity between layers.
    """

    def __init__(
        self,
        observation_size: int,
        num_actions: int,
        hidden_sizes: tuple[int, ...] = (64, 64),
        activation: Literal["tanh", "relu"] = "tanh",
    ) -> None:
        super().__init__()
        _check(observation_size, num_actions, hidden_sizes, activation)
        sizes = [observation_size, *hidden_sizes]
        self.actor = mlp([*sizes, num_actions], activation, gains=(math.sqrt(2), 0.01))
        self.critic = mlp([*sizes, 1], activation, gains=(math.sqrt(2), 1.0))

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Action logits (B, num_actions) and state values (B,) of observations (B, *observation_shape)."""
        x = observations.flatten(1).float()  # (B, D)
        return self.actor(x), self.critic(x).squeeze(-1)
