"""Tiny Gymnasium environments for the RL tests, registered on import: one whose best action is known, one that
raises mid-episode."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

LENGTH = 5


class Chooser(gym.Env):
    """Five steps; action 1 earns 1, action 0 nothing. Observations count the steps: (t, 1) float32."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, render_mode: str | None = None, explode_at: int | None = None) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.render_mode, self.explode_at, self.t, self.total = render_mode, explode_at, 0, 0

    def _obs(self) -> np.ndarray:
        return np.array([self.t, 1.0], np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.total += 1
        if self.explode_at is not None and self.total >= self.explode_at:
            raise RuntimeError("physics engine diverged")
        return self._obs(), float(action), self.t >= LENGTH, False, {}

    def render(self) -> np.ndarray:
        frame = np.zeros((8, 8, 3), np.uint8)
        frame[:, : self.t + 1] = 255  # a bar that grows with the step
        return frame


for _id, _kwargs in (("Chooser-v0", {}), ("Exploding-v0", {"explode_at": 7})):
    if _id not in gym.registry:
        gym.register(_id, entry_point=Chooser, kwargs=_kwargs)
