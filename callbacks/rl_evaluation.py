"""Greedy evaluation episodes of a reinforcement-learning agent, every so many environment steps."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from core.media import log_video


class RLEvaluation(Callback):
    """Play ``episodes`` greedy episodes on separate seeded environments every ``every_n_env_steps`` environment steps
    and log ``eval/mean_return``, ``eval/std_return`` and ``eval/mean_length``.

    Works with any LightningModule whose ``forward`` maps observations (B, *obs) to per-action scores (B, A) (Q-values,
    logits): the greedy action is their argmax. The environments come from the DataModule's
    ``make_env(render_mode)`` (:mod:`datamodules.rl`), so they process observations as training does
    (normalisation included) while training's environments keep their episodes; its ``env_steps`` says when to
    evaluate. Episode ``i`` is seeded with ``seed + i`` every time, so evaluations differ only by the policy.

    Evaluation runs at the end of the first training epoch (a round of interaction) that reaches each multiple of
    ``every_n_env_steps``, and at the end of the last one; the checkpoint callback sees the result, so
    ``--checkpoint.monitor=eval/mean_return --checkpoint.mode=max`` keeps the best policy.

    Args:
        every_n_env_steps: Environment steps between evaluations.
        episodes: Episodes per evaluation, played side by side with one forward pass per step.
        seed: Seed of the first evaluation episode (keep it apart from the training seeds).
        stop_at_return: Stop training once ``eval/mean_return`` reaches this (``None``: run the whole budget).
        video: Record the first episode of each evaluation (``rgb_array`` rendering, headless) as
            ``eval/video`` with :func:`core.media.log_video`.
        fps: Frames per second of the video.
    """

    def __init__(
        self,
        every_n_env_steps: int = 10_000,
        episodes: int = 10,
        seed: int = 1_000_000,
        stop_at_return: float | None = None,
        video: bool = False,
        fps: int = 30,
    ) -> None:
        if every_n_env_steps < 1:
            raise MisconfigurationException(f"every_n_env_steps must be >= 1, got {every_n_env_steps}.")
        if episodes < 1:
            raise MisconfigurationException(f"episodes must be >= 1, got {episodes}.")
        if seed < 0:
            raise MisconfigurationException(f"seed must be >= 0, got {seed}.")
        if fps < 1:
            raise MisconfigurationException(f"fps must be >= 1, got {fps}.")
        self.every_n_env_steps, self.episodes, self.seed = every_n_env_steps, episodes, seed
        self.stop_at_return, self.video, self.fps = stop_at_return, video, fps
        self._next_evaluation = every_n_env_steps
        #: ``(env_steps, mean_return)`` of every evaluation of this fit, in order.
        self.history: list[tuple[int, float]] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            every_n_env_steps=self.every_n_env_steps, episodes=self.episodes, seed=self.seed
        )

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        data = trainer.datamodule
        if stage == "fit" and not (callable(getattr(data, "make_env", None)) and hasattr(data, "env_steps")):
            raise MisconfigurationException(
                f"RLEvaluation needs a DataModule with make_env(render_mode) and env_steps (datamodules.rl), "
                f"got {type(data).__name__}."
            )

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        steps = trainer.datamodule.env_steps
        if steps < self._next_evaluation and not trainer.should_stop:
            return
        self._next_evaluation = (steps // self.every_n_env_steps + 1) * self.every_n_env_steps
        returns, lengths, frames = self.evaluate(trainer, pl_module)
        mean = float(returns.mean())
        pl_module.log_dict(
            {
                "eval/mean_return": mean,
                "eval/std_return": float(returns.std()),
                "eval/mean_length": float(lengths.mean()),
            }
        )
        self.history.append((steps, mean))
        if frames:
            log_video(trainer, "eval/video", np.stack(frames), fps=self.fps)
        if self.stop_at_return is not None and mean >= self.stop_at_return:
            trainer.should_stop = True

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[np.ndarray, np.ndarray, list]:
        """Returns and lengths (episodes,) of one greedy episode per seed, and the first episode's frames if asked."""
        data = trainer.datamodule
        envs = [data.make_env("rgb_array" if self.video and i == 0 else None) for i in range(self.episodes)]
        try:
            observations = [env.reset(seed=self.seed + i)[0] for i, env in enumerate(envs)]
            returns, lengths = np.zeros(self.episodes), np.zeros(self.episodes, dtype=np.int64)
            frames = [envs[0].render()] if self.video else []
            active = list(range(self.episodes))
            was_training = pl_module.training
            pl_module.eval()
            while active:
                batch = torch.as_tensor(np.stack([observations[i] for i in active]), device=pl_module.device)
                with torch.no_grad():
                    actions = pl_module(batch).argmax(dim=1).cpu().numpy()  # (len(active),)
                still = []
                for i, action in zip(active, actions, strict=True):
                    observations[i], reward, terminated, truncated, _ = self._step(envs[i], action, data)
                    returns[i] += reward
                    lengths[i] += 1
                    if self.video and i == 0 and not (terminated or truncated):
                        frames.append(envs[0].render())
                    if not (terminated or truncated):
                        still.append(i)
                active = still
            pl_module.train(was_training)
        finally:
            for env in envs:
                env.close()
        return returns, lengths, frames

    @staticmethod
    def _step(env: Any, action: Any, data: Any) -> tuple:
        try:
            return env.step(action)
        except Exception as err:
            raise MisconfigurationException(
                f"evaluation environment {getattr(data, 'env_id', '')} raised {type(err).__name__}: {err}"
            ) from err

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"next_evaluation": self._next_evaluation}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._next_evaluation = int(state_dict["next_evaluation"])
