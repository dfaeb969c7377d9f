"""The RL recipes through the ``recipe`` command: bad input in one line each, and CartPole solved by PPO (slow)."""

from __future__ import annotations

import importlib.util

import pytest
import rl_envs  # noqa: F401  (registers Exploding-v0)

from recipes.cli import main

QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def _error(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("INFO:")]  # Lightning's "Seed set"
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_unknown_environment_id(capsys):
    line = _error(capsys, ["fit", "--config", "rl/cartpole_ppo", *QUIET, "--data.init_args.env_id=CartPol-v1"])
    assert "unknown Gymnasium environment id 'CartPol-v1'" in line and "Did you mean: `CartPole`" in line


def test_continuous_action_space_given_to_dqn(capsys):
    line = _error(capsys, ["fit", "--config", "rl/cartpole_dqn", *QUIET, "--data.init_args.env_id=Pendulum-v1"])
    assert "DQN needs a discrete action space" in line


def test_environment_that_raises_mid_episode(capsys):
    line = _error(capsys, ["fit", "--config", "rl/cartpole_ppo", *QUIET, "--data.init_args.env_id=Exploding-v0"])
    assert "Exploding-v0 raised RuntimeError in step() after 48 environment steps: physics engine diverged" in line


@pytest.mark.skipif(importlib.util.find_spec("Box2D") is not None, reason="Box2D is installed")
def test_lunar_lander_without_box2d_says_what_to_install(capsys):
    line = _error(capsys, ["fit", "--config", "rl/lunarlander_ppo", *QUIET])
    assert "LunarLander-v3 needs an optional dependency" in line and "gymnasium[box2d]" in line


@pytest.mark.slow  # CartPole solved: about 30k environment steps, ~35 s at one thread on a busy 2-core machine
def test_cartpole_ppo_reaches_475():
    cli = main(
        [
            "fit",
            "--config",
            "rl/cartpole_ppo",
            *QUIET,
            "--trainer.enable_checkpointing=false",
            "--trainer.callbacks.init_args.every_n_env_steps=5000",
            "--trainer.callbacks.init_args.stop_at_return=475",
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert metrics["eval/mean_return"] >= 475
    assert metrics["env/steps"] <= 100_000
