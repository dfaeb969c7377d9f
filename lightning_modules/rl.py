"""Deep Q-learning (DQN) and proximal policy optimisation (PPO) for discrete actions, trained by Lightning's loop.

The environment interaction is data (:mod:`datamodules.rl`): the DataModule calls :meth:`act` of the module being
trained for every environment step and serves what it collected as batches, so a module here only says how to act
and how to learn from a batch. ``forward`` is inference: per-action scores (Q-values or logits) whose argmax is the
greedy policy, which the evaluation callback (:class:`callbacks.RLEvaluation`) plays.

Both log ``train/loss``, ``env/steps`` (the environment steps behind the current batch; at the end of fit, the run's
count) and ``train/episode_return`` / ``train/episode_length`` (training episodes finished in the latest round), these
once per epoch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from lightning_modules.nets.rl import ActorCritic, QNetwork
from lightning_modules.task import Task

#: Builds a network from ``(observation_size, num_actions)``; a recipe gives its class and options.
NetFactory = Callable[[int, int], nn.Module]


def _discrete(num_actions: int | None, algorithm: str) -> int:
    if num_actions is None:
        raise ValueError(
            f"{algorithm} needs a discrete action space, but this environment's actions are continuous "
            "(its DataModule gives action_dim, no num_actions); pick an environment with Discrete actions"
        )
    if num_actions < 1:
        raise ValueError(f"num_actions must be >= 1, got {num_actions}")
    return num_actions


class RLTask(Task):
    """What DQN and PPO share: logging and the progress bar's keys.

    ``train/loss`` is logged every step; the other training values are summed over the epoch (one or more rounds of
    interaction) and logged once at its end as means, with ``env/steps`` and the last round's episode statistics.
    Each ``self.log`` call costs Lightning a fraction of a millisecond, as much as a small network's optimizer step.
    """

    progress_bar_steps = ("train/loss",)
    progress_bar_epochs = ("eval/mean_return",)

    def on_train_epoch_start(self) -> None:
        self._epoch_sums: dict[str, torch.Tensor] = {}
        self._epoch_batches = 0
        self._epoch_info: dict[str, torch.Tensor] = {}

    def log_step(self, batch: dict[str, Any], loss: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
        """Log ``loss`` as ``train/loss`` now; add ``values`` (scalars) to the epoch's means."""
        self.log("train/loss", loss, batch_size=len(batch["actions"]))
        for key, value in values.items():
            self._epoch_sums[key] = self._epoch_sums.get(key, 0.0) + value.detach()
        self._epoch_batches += 1
        self._epoch_info = {k: batch[k] for k in ("env_steps", "episode_return", "episode_length")}

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if not self._epoch_batches:
            return
        values = {key: total / self._epoch_batches for key, total in self._epoch_sums.items()}
        values["env/steps"] = self._epoch_info["env_steps"].float()
        if not math.isnan(float(self._epoch_info["episode_return"])):  # NaN: no episode ended in the last round
            values["train/episode_return"] = self._epoch_info["episode_return"]
            values["train/episode_length"] = self._epoch_info["episode_length"]
        self.log_dict(values)


class DQN(RLTask):
    r"""Deep Q-learning (`Mnih et al. 2015 <https://www.nature.com/articles/nature14236>`_) with a target network,
    double-DQN targets (`van Hasselt et al. 2016 <https://arxiv.org/abs/1509.06461>`_), the Huber loss and a linear
    epsilon-greedy schedule; dueling heads come with the network (``QNetwork(dueling=true)``) and prioritised replay
    with the DataModule (``ReplayDataModule(prioritized=true)``: the batch's importance weights scale the loss and
    its TD errors go back as priorities).

    .. math::
        y = r + \gamma (1 - d)\, Q_{\bar\theta}\big(s', \arg\max_{a'} Q_\theta(s', a')\big), \qquad
        \mathcal L = \operatorname{mean}_i\, w_i\, \operatorname{Huber}(Q_\theta(s_i, a_i) - y_i)

    Args:
        net: Q-network class (with its options), called with ``(observation_size, num_actions)``.
        observation_shape: Shape of one observation; filled from the DataModule.
        num_actions: Discrete actions; filled from the DataModule (``None`` there: continuous actions, refused).
        gamma: Discount factor.
        target_update_interval: Optimizer steps between target-network updates.
        tau: Target update :math:`\bar\theta \leftarrow \tau\theta + (1 - \tau)\bar\theta`; 1 copies.
        double: Double-DQN targets (the online network picks :math:`a'`, the target network values it).
        start_epsilon: Exploration rate at the start.
        final_epsilon: Exploration rate once ``exploration_fraction`` of the step budget is done.
        exploration_fraction: Fraction of the budget over which epsilon falls linearly.
        optimizer: Optimizer factory (Adam by default: no weight decay in value learning).
        **kwargs: ``lr_scheduler`` and ``scheduler_interval`` of :class:`Task`.
    """

    def __init__(
        self,
        net: NetFactory = QNetwork,
        observation_shape: tuple[int, ...] = (4,),
        num_actions: int | None = None,
        gamma: float = 0.99,
        target_update_interval: int = 500,
        tau: float = 1.0,
        double: bool = True,
        start_epsilon: float = 1.0,
        final_epsilon: float = 0.05,
        exploration_fraction: float = 0.1,
        optimizer: OptimizerCallable = torch.optim.Adam,
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer=optimizer, **kwargs)
        num_actions = _discrete(num_actions, "DQN")
        if not 0.0 <= gamma <= 1.0 or not 0.0 < tau <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1] and tau in (0, 1], got {gamma} and {tau}")
        if target_update_interval < 1:
            raise ValueError(f"target_update_interval must be >= 1, got {target_update_interval}")
        if not (0.0 <= final_epsilon <= 1.0 and 0.0 <= start_epsilon <= 1.0 and 0.0 < exploration_fraction <= 1.0):
            raise ValueError(
                "epsilons must lie in [0, 1] and exploration_fraction in (0, 1], got "
                f"{start_epsilon}, {final_epsilon}, {exploration_fraction}"
            )
        self.gamma, self.tau, self.double, self.target_update_interval = gamma, tau, double, target_update_interval
        self.epsilons = (start_epsilon, final_epsilon, exploration_fraction)
        self.num_actions = num_actions
        self.q = net(math.prod(observation_shape), num_actions)
        self.target = copy.deepcopy(self.q).requires_grad_(False)  # no gradients, no optimizer group

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        """Q-values (B, num_actions) of observations (B, *observation_shape)."""
        return self.q(observations)

    def epsilon(self, progress: float) -> float:
        start, final, fraction = self.epsilons
        return start + (final - start) * min(1.0, progress / fraction)

    def act(self, observations: torch.Tensor, progress: float) -> dict[str, torch.Tensor]:
        """Epsilon-greedy actions (B,) for observations (B, *observation_shape) at ``progress`` of the budget."""
        greedy = self(observations).argmax(dim=1)
        explore = torch.rand(len(greedy), device=greedy.device) < self.epsilon(progress)
        random = torch.randint(self.num_actions, greedy.shape, device=greedy.device)
        return {"actions": torch.where(explore, random, greedy)}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        q = self.q(batch["observations"]).gather(1, batch["actions"][:, None]).squeeze(1)  # (B,)
        with torch.no_grad():
            next_target = self.target(batch["next_observations"])  # (B, A)
            chooser = self.q(batch["next_observations"]) if self.double else next_target
            next_q = next_target.gather(1, chooser.argmax(dim=1, keepdim=True)).squeeze(1)  # (B,)
            targets = batch["rewards"] + self.gamma * (1.0 - batch["terminated"]) * next_q
        td = q - targets
        loss = (batch["weights"] * F.huber_loss(q, targets, reduction="none")).mean()
        if "update_priorities" in batch:  # prioritised replay: the data side re-weights what it samples
            batch["update_priorities"](td)
        self.log_step(batch, loss, {"train/q": q.mean()})
        return self.guard(loss)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # global_step already counts this batch's optimizer step here.
        if self.global_step % self.target_update_interval == 0:
            with torch.no_grad():
                for target, online in zip(self.target.parameters(), self.q.parameters(), strict=True):
                    target.lerp_(online, self.tau)


def clipped_policy_loss(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> torch.Tensor:
    r"""PPO's clipped surrogate, to minimise: :math:`-\operatorname{mean}\min(\rho A, \operatorname{clip}(\rho,
    1-\epsilon, 1+\epsilon) A)` with :math:`\rho = \pi(a|s) / \pi_{old}(a|s)`; all inputs (B,)."""
    ratio = (log_probs - old_log_probs).exp()
    return -torch.min(ratio * advantages, ratio.clamp(1.0 - clip_range, 1.0 + clip_range) * advantages).mean()


class PPO(RLTask):
    r"""Proximal policy optimisation (`Schulman et al. 2017 <https://arxiv.org/abs/1707.06347>`_) for discrete
    actions: the clipped surrogate, a value loss and an entropy bonus,

    .. math::
        \mathcal L = \mathcal L^{clip} + c_v\, \operatorname{mean}(V(s) - \hat R)^2 - c_e\, \operatorname{mean}
        \mathcal H[\pi(\cdot|s)]

    over minibatches of a rollout (the DataModule serves several epochs of them and computes GAE), advantages
    normalised per minibatch. Learning rate and clip range optionally anneal linearly to zero over the step budget
    (SB3's ``lin_`` schedules). Clip gradients with the trainer's ``gradient_clip_val`` (0.5 in the recipes).

    Args:
        net: Actor-critic class (with its options), called with ``(observation_size, num_actions)``, returning
            ``(logits, values)``.
        observation_shape: Shape of one observation; filled from the DataModule.
        num_actions: Discrete actions; filled from the DataModule.
        clip_range: :math:`\epsilon` of the clipped surrogate.
        value_coef: :math:`c_v`.
        entropy_coef: :math:`c_e`.
        normalize_advantages: Standardise advantages within each minibatch.
        anneal_lr: Scale the optimizer's learning rate by the fraction of the budget left.
        anneal_clip: Scale ``clip_range`` likewise.
        optimizer: Optimizer factory (Adam by default).
        **kwargs: ``lr_scheduler`` and ``scheduler_interval`` of :class:`Task`.
    """

    def __init__(
        self,
        net: NetFactory = ActorCritic,
        observation_shape: tuple[int, ...] = (4,),
        num_actions: int | None = None,
        clip_range: float = 0.2,
        value_coef: float = 0.5,
        entropy_coef: float = 0.0,
        normalize_advantages: bool = True,
        anneal_lr: bool = False,
        anneal_clip: bool = False,
        optimizer: OptimizerCallable = torch.optim.Adam,
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer=optimizer, **kwargs)
        num_actions = _discrete(num_actions, "PPO")
        if not 0.0 < clip_range < 1.0:
            raise ValueError(f"clip_range must lie in (0, 1), got {clip_range}")
        if value_coef < 0 or entropy_coef < 0:
            raise ValueError(f"value_coef and entropy_coef must be >= 0, got {value_coef} and {entropy_coef}")
        if anneal_lr and kwargs.get("lr_scheduler") is not None:
            raise ValueError("anneal_lr and lr_scheduler both set the learning rate; choose one")
        self.clip_range, self.value_coef, self.entropy_coef = clip_range, value_coef, entropy_coef
        self.normalize_advantages, self.anneal_lr, self.anneal_clip = normalize_advantages, anneal_lr, anneal_clip
        self.net = net(math.prod(observation_shape), num_actions)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        """Action logits (B, num_actions) of observations (B, *observation_shape)."""
        return self.net(observations)[0]

    def act(self, observations: torch.Tensor, progress: float) -> dict[str, torch.Tensor]:
        """Sampled actions, their log-probabilities and the state values, each (B,)."""
        logits, values = self.net(observations)
        policy = torch.distributions.Categorical(logits=logits, validate_args=False)
        actions = policy.sample()
        return {"actions": actions, "log_probs": policy.log_prob(actions), "values": values}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        left = 1.0 - float(batch["progress"])
        if self.anneal_lr:
            for group in self.optimizers().param_groups:
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * left
        logits, values = self.net(batch["observations"])  # (B, A), (B,)
        policy = torch.distributions.Categorical(logits=logits, validate_args=False)
        log_probs = policy.log_prob(batch["actions"])
        advantages = batch["advantages"]
        if self.normalize_advantages and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        clip = self.clip_range * (left if self.anneal_clip else 1.0)
        policy_loss = clipped_policy_loss(log_probs, batch["log_probs"], advantages, clip)
        value_loss = F.mse_loss(values, batch["returns"])
        entropy = policy.entropy().mean()
        loss = policy_loss + self.value_coef * value_loss - self.entropy_coef * entropy
        with torch.no_grad():
            log_ratio = log_probs - batch["log_probs"]
            approx_kl = ((log_ratio.exp() - 1) - log_ratio).mean()  # Schulman's low-variance estimator
            clipped = ((log_ratio.exp() - 1).abs() > clip).float().mean()
        self.log_step(
            batch,
            loss,
            {
                "train/policy_loss": policy_loss,
                "train/value_loss": value_loss,
                "train/entropy": entropy,
                "train/approx_kl": approx_kl,
                "train/clip_fraction": clipped,
            },
        )
        return self.guard(loss)
