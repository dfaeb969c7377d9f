r"""Generative adversarial networks with manual optimization: DCGAN by default, non-saturating, hinge or WGAN-GP.

Goodfellow et al. 2014 (https://arxiv.org/abs/1406.2661) with the DCGAN networks of Radford et al. 2016
(:mod:`lightning_modules.nets.gan`). With :math:`D` the discriminator's unbounded score, :math:`x` real and
:math:`\tilde x = G(z)` generated images, the losses, averaged over the batch:

* ``non_saturating`` (Goodfellow et al.'s practical choice): :math:`L_D = \mathrm{softplus}(-D(x)) +
  \mathrm{softplus}(D(\tilde x))`, :math:`L_G = \mathrm{softplus}(-D(\tilde x))`;
* ``hinge`` (Lim & Ye 2017; Miyato et al. 2018): :math:`L_D = \max(0, 1 - D(x)) + \max(0, 1 + D(\tilde x))`,
  :math:`L_G = -D(\tilde x)`;
* ``wasserstein`` (Arjovsky et al. 2017): :math:`L_D = D(\tilde x) - D(x)`, :math:`L_G = -D(\tilde x)`, with the
  gradient penalty of WGAN-GP (Gulrajani et al. 2017, https://arxiv.org/abs/1704.00028)
  :math:`\lambda\,\mathbb E[(\lVert\nabla_{\hat x} D(\hat x)\rVert_2 - 1)^2]` on :math:`\hat x = \epsilon x + (1 -
  \epsilon)\tilde x`, :math:`\epsilon \sim U[0, 1]` per example (``gradient_penalty`` = :math:`\lambda`, any loss).

Each training batch takes one discriminator step; the generator steps after every ``n_critic``-th (5 in WGAN-GP).
Class conditioning (``conditional=True``) feeds the batch's labels to both networks. The generator's EMA, the usual
network to sample from, comes from the shared callback: ``callbacks.SWA(mode="ema", module="generator",
update_bn=False)``, which swaps it in for validation and writes it into checkpoints. Samples are drawn with batch
norm on the statistics of the generated batch (:meth:`GAN.sample_from`): an EMA's averaged running statistics do not
fit its averaged weights.

Quality, with ``classifier_checkpoint`` (a ``vision/*`` recipe's checkpoint on the same data): at each validation
(and test), FID between the split's images and ``quality_samples`` generated ones, on the classifier's penultimate
features, and class coverage, the share of classes the classifier finds among them
(:mod:`lightning_modules.sample_quality`), as ``val/fid`` and ``val/class_coverage``. Sample grids from one fixed noise
batch go to the loggers and the run's ``media/`` folder every ``media_every_n_epochs`` epochs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from core import optim
from core.media import log_images
from lightning_modules.nets.gan import DCGANDiscriminator, DCGANGenerator
from lightning_modules.sample_quality import SampleQuality, load_classifier
from lightning_modules.task import Task

#: Builds a generator from ``(latent_dim, in_channels, image_size, num_classes)`` (0 classes: unconditional).
GeneratorFactory = Callable[[int, int, int, int], nn.Module]
#: Builds a discriminator from ``(in_channels, image_size, num_classes)``.
DiscriminatorFactory = Callable[[int, int, int], nn.Module]

#: Images in the fixed-noise sample grid.
GRID = 64


@contextmanager
def batch_statistics(module: nn.Module) -> Iterator[None]:
    """Run ``module``'s batch norm layers on the statistics of the batch at hand, leaving their running ones as they
    are (momentum 0 and the counter restored), whatever the module's mode."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.train(True)
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        yield
    finally:
        for m, (training, momentum, count) in zip(norms, saved, strict=True):
            m.train(training)
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def discriminator_loss(kind: str, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The discriminator's (critic's) loss from its scores ``(B,)`` of real and generated images."""
    if kind == "non_saturating":
        return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()
    if kind == "hinge":
        return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()
    return fake_scores.mean() - real_scores.mean()  # wasserstein


def generator_loss(kind: str, fake_scores: torch.Tensor) -> torch.Tensor:
    """The generator's loss from the discriminator's scores ``(B,)`` of its images."""
    return F.softplus(-fake_scores).mean() if kind == "non_saturating" else -fake_scores.mean()


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor
) -> torch.Tensor:
    r""":math:`\mathbb E[(\lVert\nabla_{\hat x} D(\hat x)\rVert_2 - 1)^2]` on random interpolates of ``real`` and
    ``fake`` ``(B, C, H, W)``, differentiable in the critic's parameters (Gulrajani et al. 2017)."""
    eps = torch.rand(len(real), *[1] * (real.ndim - 1), device=real.device, dtype=real.dtype)  # (B, 1, 1, 1)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grads,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return (grads.flatten(1).norm(2, dim=1) - 1).pow(2).mean()


class GAN(Task):
    """A GAN of an injected generator and discriminator, trained by manual optimization.

    Args:
        generator: Generator class (with its options), called with ``(latent_dim, in_channels, image_size,
            num_classes)``, ``num_classes`` 0 when unconditional; its forward takes ``(z, labels)`` and returns images
            in ``[-1, 1]``. See :mod:`lightning_modules.nets.gan`.
        discriminator: Discriminator class, called with ``(in_channels, image_size, num_classes)``; its forward takes
            ``(images, labels)`` and returns one score per image ``(B,)``.
        latent_dim: Size of the noise vector, drawn from N(0, I).
        in_channels: Image channels; filled from the DataModule.
        image_size: Image side; filled from the DataModule.
        num_classes: Classes of the data; filled from the DataModule. Needed with ``conditional``.
        conditional: Condition both networks on the class label.
        loss: ``non_saturating``, ``hinge`` or ``wasserstein``.
        gradient_penalty: Weight of the WGAN-GP gradient penalty on the discriminator; 0 turns it off.
        n_critic: Discriminator steps per generator step.
        generator_optimizer: Optimizer factory of the generator (DCGAN: Adam, lr 2e-4, betas (0.5, 0.999)).
        discriminator_optimizer: Optimizer factory of the discriminator; ``None``: the generator's.
        classifier_checkpoint: Checkpoint of an ``ImageClassifier`` trained on the same data, for FID features and
            class coverage; loaded when fitting, validating or testing. ``None``: no quality metrics.
        fid_features: ``classifier`` (offline) or ``inception`` (needs ``torch-fidelity`` and a download).
        quality_samples: Generated images per evaluation for FID and coverage.
        media_every_n_epochs: Write the fixed-noise sample grid every this many epochs (and at the last); 0: never.
    """

    progress_bar_steps = ("train/d_loss", "train/g_loss")
    progress_bar_epochs = ("val/fid", "val/class_coverage")

    def __init__(
        self,
        generator: GeneratorFactory = DCGANGenerator,
        discriminator: DiscriminatorFactory = DCGANDiscriminator,
        latent_dim: int = 100,
        in_channels: int = 1,
        image_size: int = 28,
        num_classes: int | None = None,
        conditional: bool = False,
        loss: Literal["non_saturating", "hinge", "wasserstein"] = "non_saturating",
        gradient_penalty: float = 0.0,
        n_critic: int = 1,
        generator_optimizer: OptimizerCallable = torch.optim.Adam,
        discriminator_optimizer: OptimizerCallable | None = None,
        classifier_checkpoint: str | None = None,
        fid_features: Literal["classifier", "inception"] = "classifier",
        quality_samples: int = 1000,
        media_every_n_epochs: int = 1,
    ) -> None:
        super().__init__(optimizer=generator_optimizer)
        if loss not in ("non_saturating", "hinge", "wasserstein"):
            raise ValueError(f"loss must be 'non_saturating', 'hinge' or 'wasserstein', got {loss!r}")
        if conditional and (num_classes is None or num_classes < 2):
            raise ValueError(f"conditional=True needs num_classes >= 2 (filled from the data), got {num_classes}")
        if latent_dim < 1 or n_critic < 1 or quality_samples < 2 or gradient_penalty < 0 or media_every_n_epochs < 0:
            raise ValueError(
                "latent_dim and n_critic must be >= 1, quality_samples >= 2, gradient_penalty and media_every_n_epochs "
                f">= 0; got {latent_dim}, {n_critic}, {quality_samples}, {gradient_penalty}, {media_every_n_epochs}"
            )
        if fid_features not in ("classifier", "inception"):
            raise ValueError(f"fid_features must be 'classifier' or 'inception', got {fid_features!r}")
        self.automatic_optimization = False
        self.latent_dim, self.conditional, self.loss_kind = latent_dim, conditional, loss
        self.gp_weight, self.n_critic = gradient_penalty, n_critic
        self.generator_optimizer = generator_optimizer
        self.discriminator_optimizer = discriminator_optimizer or generator_optimizer
        self.classifier_checkpoint, self.fid_features = classifier_checkpoint, fid_features
        self.quality_samples, self.media_every_n_epochs = quality_samples, media_every_n_epochs
        self.num_classes = num_classes
        classes = num_classes if conditional else 0
        self.generator = generator(latent_dim, in_channels, image_size, classes)
        self.discriminator = discriminator(in_channels, image_size, classes)
        # One noise batch for every sample grid, so the grids show one set of draws improving over training.
        fixed = torch.randn(GRID, latent_dim, generator=torch.Generator().manual_seed(0))
        self.register_buffer("fixed_noise", fixed, persistent=False)
        self.quality: SampleQuality | None = None  # a plain object: the classifier stays out of checkpoints

    # ---- sampling ----

    def _labels(self, n: int, labels: torch.Tensor | None) -> torch.Tensor | None:
        if not self.conditional:
            return None
        return labels if labels is not None else torch.arange(n, device=self.device) % self.num_classes

    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images in ``[-1, 1]`` for noise ``(B, latent_dim)``; conditional: labels ``(B,)``, cycling classes if
        ``None``. The generator as it is: batch norm as its mode says (training uses this)."""
        labels = self._labels(len(z), labels)
        return self.generator(z) if labels is None else self.generator(z, labels)

    @torch.no_grad()
    def sample_from(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images in ``[0, 1]`` ``(B, C, H, W)`` for noise ``(B, latent_dim)``, batch norm on this batch's statistics.

        As DCGAN's reference code samples: the running statistics of an EMA generator are averages of the raw
        generator's, which do not match the averaged weights (measured here: an EMA DCGAN in eval mode drew one grey
        blob for every noise vector), and nothing feeds a generator the noise it would need to recompute them.
        Running statistics are left untouched. Draw batches of at least 64.
        """
        with batch_statistics(self.generator):
            return self.generate(z, labels).add(1).div(2)

    def sample(
        self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` images in ``[0, 1]``, ``(n, C, H, W)``, from fresh noise (see :meth:`sample_from`)."""
        return self.sample_from(torch.randn(n, self.latent_dim, generator=generator).to(self.device), labels)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.generate(z, labels)

    # ---- training ----

    def score(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The discriminator's scores ``(B,)``."""
        return self.discriminator(images) if labels is None else self.discriminator(images, labels)

    def configure_optimizers(self) -> list[dict[str, Any]]:
        return [
            optim.configure(self.generator, self.generator_optimizer, None, self.trainer),
            optim.configure(self.discriminator, self.discriminator_optimizer, None, self.trainer),
        ]

    def _step(self, optimizer: Any, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = self.split_batch(batch)
        real = images * 2 - 1  # [0, 1] -> [-1, 1], the generator's tanh range
        labels = labels if self.conditional else None
        g_opt, d_opt = self.optimizers()

        self.toggle_optimizer(d_opt)  # only the discriminator's parameters need gradients here
        with torch.no_grad():
            fake = self.generate(torch.randn(len(real), self.latent_dim, device=self.device), labels)
        d_loss = discriminator_loss(self.loss_kind, self.score(real, labels), self.score(fake, labels))
        if self.gp_weight:
            penalty = gradient_penalty(lambda x: self.score(x, labels), real, fake)
            self.log("train/gradient_penalty", penalty, batch_size=len(real))
            d_loss = d_loss + self.gp_weight * penalty
        self._step(d_opt, self.guard(d_loss, "train/d_loss"))
        self.untoggle_optimizer(d_opt)
        # train/loss is the discriminator's, computed every batch: what the recipe's progress bar and checks read.
        self.log_dict({"train/d_loss": d_loss, "train/loss": d_loss}, batch_size=len(real))

        if (batch_idx + 1) % self.n_critic == 0:
            self.toggle_optimizer(g_opt)
            fake = self.generate(torch.randn(len(real), self.latent_dim, device=self.device), labels)
            g_loss = self.guard(generator_loss(self.loss_kind, self.score(fake, labels)), "train/g_loss")
            self._step(g_opt, g_loss)
            self.untoggle_optimizer(g_opt)
            self.log("train/g_loss", g_loss, batch_size=len(real))

    # ---- evaluation ----

    def setup(self, stage: str) -> None:
        if self.classifier_checkpoint is not None and self.quality is None and stage in ("fit", "validate", "test"):
            self.quality = SampleQuality(load_classifier(self.classifier_checkpoint), self.fid_features)

    def evaluation_step(self, batch: Any, batch_idx: int, stage: str) -> None:
        images, _ = self.split_batch(batch)
        if self.quality is not None:
            self.quality.to(self.device).update_real(images)
        if batch_idx > 0:
            return
        # The first batch draws the generated side; SWA(module="generator") has swapped the EMA in by now.
        if self.quality is not None:
            for start in range(0, self.quality_samples, 500):
                n = min(500, self.quality_samples - start)
                self.quality.update_fake(self.sample(n))
        if self._media_due(stage):
            log_images(self.trainer, f"{stage}/samples", self.sample_from(self.fixed_noise), nrow=8)

    def _evaluation_end(self, stage: str) -> None:
        if self.quality is None or self.trainer.sanity_checking:
            if self.quality is not None:
                self.quality.fid.reset()
                self.quality.counts.zero_()
            return
        fid, coverage = self.quality.compute(lambda t: self.trainer.strategy.reduce(t, reduce_op="sum"))
        self.log_dict({f"{stage}/fid": fid, f"{stage}/class_coverage": coverage})

    def _media_due(self, stage: str) -> bool:
        if self.trainer.sanity_checking:
            return False
        if stage == "test":
            return True
        every, epoch = self.media_every_n_epochs, self.current_epoch + 1
        return every > 0 and (epoch % every == 0 or epoch == self.trainer.max_epochs)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.evaluation_step(batch, batch_idx, "test")

    def on_validation_epoch_end(self) -> None:
        self._evaluation_end("val")

    def on_test_epoch_end(self) -> None:
        self._evaluation_end("test")
