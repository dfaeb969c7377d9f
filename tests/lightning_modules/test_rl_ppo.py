"""PPO: the clipped surrogate against its formula, the whole loss on a fixed batch, acting, checkpoints."""

from __future__ import annotations

import math

import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from lightning_modules.rl import PPO, clipped_policy_loss

TRAINER = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}


def test_clipped_loss_matches_the_formula_on_a_fixed_batch():
    ratios = torch.tensor([1.5, 0.5, 1.1, 0.7])
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0])
    old = torch.tensor([-0.3, -1.2, -0.7, -2.0])
    # min(r A, clip(r, .8, 1.2) A): 1.5 -> 1.2 (clipped); 0.5 -> 0.5; 1.1 * -1 -> -1.1; 0.7 * -1 -> -0.8 (clipped).
    expected = -(1.2 + 0.5 - 1.1 - 0.8) / 4
    loss = clipped_policy_loss(old + ratios.log(), old, advantages, clip_range=0.2)
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def _batch(model: PPO, size: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    observations = torch.randn(size, 4, generator=g)
    with torch.no_grad():
        acted = model.act(observations, progress=0.0)
    return {
        "observations": observations,
        "actions": acted["actions"],
        "log_probs": acted["log_probs"] + 0.1 * torch.randn(size, generator=g),  # an older policy
        "values": acted["values"],
        "advantages": torch.randn(size, generator=g),
        "returns": torch.randn(size, generator=g),
        "env_steps": torch.tensor(1000),
        "progress": torch.tensor(0.25),
        "episode_return": torch.tensor(20.0),
        "episode_length": torch.tensor(20.0),
    }


def test_loss_is_clipped_surrogate_plus_value_minus_entropy():
    torch.manual_seed(0)
    model = PPO(observation_shape=(4,), num_actions=3, clip_range=0.1, value_coef=0.7, entropy_coef=0.05)
    b = _batch(model)
    logits, values = model.net(b["observations"])
    policy = torch.distributions.Categorical(logits=logits)
    a = b["advantages"]
    a = (a - a.mean()) / (a.std() + 1e-8)
    expected = (
        clipped_policy_loss(policy.log_prob(b["actions"]), b["log_probs"], a, 0.1)
        + 0.7 * ((values - b["returns"]) ** 2).mean()
        - 0.05 * policy.entropy().mean()
    )
    model.on_train_epoch_start()
    model.log = lambda *args, **kwargs: None  # no trainer attached
    assert torch.allclose(model.training_step(b, 0), expected)


def test_act_samples_from_the_policy_and_forward_is_its_logits():
    torch.manual_seed(0)
    model = PPO(observation_shape=(4,), num_actions=3)
    x = torch.randn(5, 4)
    out = model.act(x, progress=0.0)
    assert out["actions"].shape == out["log_probs"].shape == out["values"].shape == (5,)
    expected = torch.log_softmax(model(x), dim=1)[torch.arange(5), out["actions"]]
    assert torch.allclose(out["log_probs"], expected)


def test_learning_rate_and_clip_anneal_with_progress(tmp_path):
    model = PPO(observation_shape=(4,), num_actions=2, anneal_lr=True, anneal_clip=True,
                optimizer=lambda params: torch.optim.Adam(params, lr=0.01))  # fmt: skip
    trainer = Trainer(max_steps=1, **TRAINER)
    trainer.fit(model, DataLoader([_batch(model)], batch_size=None))  # progress 0.25: three quarters left
    assert math.isclose(trainer.optimizers[0].param_groups[0]["lr"], 0.0075)
    trainer.save_checkpoint(tmp_path / "ppo.ckpt")
    loaded = PPO.load_from_checkpoint(tmp_path / "ppo.ckpt", weights_only=False)  # hparams hold classes
    x = torch.randn(3, 4)
    assert loaded.anneal_lr and torch.equal(loaded(x), model(x))
