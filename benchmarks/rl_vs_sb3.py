"""CartPole-v1 solved by our PPO recipe and by Stable-Baselines3's PPO (rl-zoo hyperparameters), side by side.

    uv run --group bench python benchmarks/rl_vs_sb3.py                 # both, seed 0
    uv run --group bench python benchmarks/rl_vs_sb3.py --seeds 0 1 2   # several seeds
    uv run python benchmarks/rl_vs_sb3.py --only ours                   # without SB3 installed

Both train with the same hyperparameters (``recipes/rl/cartpole_ppo.yaml`` is the zoo's ``CartPole-v1`` entry: 8
environments, 32 steps each per rollout, 20 epochs of minibatches of 256, gamma 0.98, lambda 0.8, learning rate
1e-3 and clip range 0.2 both annealed linearly, 64-64 tanh networks), are evaluated the same way (10 greedy episodes
on separate seeded environments every ``--eval-every`` environment steps) and stop once the mean greedy return
reaches ``--target``. Printed: the environment steps and the wall time (training and evaluation, no start-up) at
which each first reached it. One torch thread each, one after the other in this process.
"""

from __future__ import annotations

import argparse
import time

import torch

from recipes.cli import main

QUIET = [
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.enable_checkpointing=false",
]


def ours(seed: int, target: float, eval_every: int, budget: int) -> tuple[int | None, float]:
    cli = main(
        [
            "--config",
            "rl/cartpole_ppo",
            *QUIET,
            f"--seed_everything={seed}",
            f"--data.init_args.seed={seed}",
            f"--data.init_args.total_steps={budget}",
            f"--trainer.callbacks.init_args.every_n_env_steps={eval_every}",
            f"--trainer.callbacks.init_args.stop_at_return={target}",
        ],
        run=False,
    )
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    seconds = time.perf_counter() - start
    (evaluation,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "RLEvaluation"]
    solved = [steps for steps, mean in evaluation.history if mean >= target]
    return (solved[0] if solved else None), seconds


def sb3(seed: int, target: float, eval_every: int, budget: int) -> tuple[int | None, float]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold
    from stable_baselines3.common.env_util import make_vec_env

    def linear(start: float):
        return lambda remaining: remaining * start  # the zoo's lin_ schedules

    envs = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    model = PPO(
        "MlpPolicy",
        envs,
        n_steps=32,
        batch_size=256,
        n_epochs=20,
        gamma=0.98,
        gae_lambda=0.8,
        ent_coef=0.0,
        learning_rate=linear(1e-3),
        clip_range=linear(0.2),
        seed=seed,
        device="cpu",
    )
    stop = StopTrainingOnRewardThreshold(reward_threshold=target)
    evaluation = EvalCallback(
        make_vec_env("CartPole-v1", n_envs=1, seed=1_000_000 + seed),
        callback_on_new_best=stop,
        n_eval_episodes=10,
        eval_freq=max(1, eval_every // 8),  # counted in vector steps
        deterministic=True,
        verbose=0,
    )
    start = time.perf_counter()
    model.learn(total_timesteps=budget, callback=evaluation)
    seconds = time.perf_counter() - start
    solved = evaluation.best_mean_reward >= target
    return (model.num_timesteps if solved else None), seconds


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--target", type=float, default=475.0)
    parser.add_argument("--eval-every", type=int, default=5_000, help="environment steps between evaluations")
    parser.add_argument("--budget", type=int, default=100_000, help="environment steps at most")
    parser.add_argument("--only", choices=["ours", "sb3"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = {"ours": ("ours (Lightning)", ours), "sb3": ("Stable-Baselines3", sb3)}
    if args.only:
        runs = {args.only: runs[args.only]}
    print(f"{'':20s} {'seed':>4s} {'env steps to ' + str(args.target):>22s} {'wall s':>8s}")
    for seed in args.seeds:
        for name, run in runs.values():
            steps, seconds = run(seed, args.target, args.eval_every, args.budget)
            shown = str(steps) if steps is not None else f"not in {args.budget}"
            print(f"{name:20s} {seed:>4d} {shown:>22s} {seconds:>8.1f}", flush=True)


if __name__ == "__main__":
    main_()
