"""RLEvaluation: greedy episodes on seeded environments at the right step counts, the logged values, stopping at a
target return, video, and a refusal for data without environments."""

from __future__ import annotations

from pathlib import Path

import pytest
import rl_envs  # noqa: F401  (registers Chooser-v0)
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from callbacks.rl_evaluation import RLEvaluation
from datamodules.rl import RolloutDataModule
from lightning_modules.rl import PPO

TRAINER = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}


class _Fixed(PPO):
    """A PPO whose greedy action is always ``choice`` (it still trains; only forward is pinned)."""

    def __init__(self, choice: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.choice = choice

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        scores = torch.zeros(len(observations), 2, device=observations.device)
        scores[:, self.choice] = 1.0
        return scores


def _fit(callback: RLEvaluation, choice: int = 1, total_steps: int = 60, root: Path | None = None) -> Trainer:
    data = RolloutDataModule("Chooser-v0", num_envs=2, total_steps=total_steps, rollout_steps=5, batch_size=10,
                             update_epochs=1)  # fmt: skip
    trainer = Trainer(max_epochs=-1, callbacks=[callback], default_root_dir=root, **TRAINER)
    trainer.fit(_Fixed(choice, observation_shape=(2,), num_actions=2), data)
    return trainer


def test_evaluates_at_each_multiple_of_the_interval_and_at_the_end():
    evaluation = RLEvaluation(every_n_env_steps=25, episodes=3)
    trainer = _fit(evaluation)
    # Rounds of 2 x 5 steps end at 10, 20, ..., 60: the first past 25, the first past 50, and the last.
    assert [steps for steps, _ in evaluation.history] == [30, 50, 60]
    assert all(mean == 5.0 for _, mean in evaluation.history)  # the greedy action earns 1 in each of 5 steps
    metrics = trainer.callback_metrics
    assert metrics["eval/mean_return"] == 5.0 and metrics["eval/std_return"] == 0.0
    assert metrics["eval/mean_length"] == 5.0


def test_the_greedy_action_is_the_argmax_of_forward():
    evaluation = RLEvaluation(every_n_env_steps=1000, episodes=2)
    _fit(evaluation, choice=0, total_steps=10)
    assert evaluation.history == [(10, 0.0)]


def test_stops_training_once_the_target_return_is_reached():
    evaluation = RLEvaluation(every_n_env_steps=20, episodes=2, stop_at_return=5.0)
    trainer = _fit(evaluation, total_steps=1000)
    assert trainer.datamodule.env_steps == 20 and evaluation.history == [(20, 5.0)]


def test_records_the_first_episode_as_a_video(tmp_path):
    _fit(RLEvaluation(every_n_env_steps=1000, episodes=2, video=True), total_steps=10, root=tmp_path)
    (gif,) = (tmp_path / "media").glob("eval_video_step*.gif")
    from PIL import Image

    assert Image.open(gif).n_frames == 5  # the reset frame and one per step but the last (Chooser ends at step 5)


def test_needs_a_datamodule_with_environments():
    from torch.utils.data import DataLoader

    trainer = Trainer(max_steps=1, callbacks=[RLEvaluation()], **TRAINER)
    with pytest.raises(MisconfigurationException, match="RLEvaluation needs a DataModule with make_env"):
        trainer.fit(PPO(observation_shape=(2,), num_actions=2), DataLoader([torch.zeros(2)]))


def test_checks_its_arguments():
    with pytest.raises(MisconfigurationException, match="every_n_env_steps must be >= 1"):
        RLEvaluation(every_n_env_steps=0)
