r"""Autoencoders and variational autoencoders over images or flat features, with injected encoder and decoder.

* :class:`Autoencoder`: a deterministic code, plain or denoising (Vincent et al. 2008,
  https://www.cs.toronto.edu/~larocheh/publications/icml-2008-denoising-autoencoders.pdf): Gaussian or masking noise
  corrupts the input in training only, the clean example is the target.
* :class:`VAE`: Kingma & Welling 2014 (https://arxiv.org/abs/1312.6114), a diagonal Gaussian posterior
  :math:`q(z|x) = \mathcal N(\mu(x), \sigma^2(x))` sampled by reparameterisation, a standard normal prior, a Bernoulli
  or Gaussian likelihood, the beta weight of Higgins et al. 2017 with an optional linear KL warm-up (Bowman et al.
  2016, https://arxiv.org/abs/1511.06349). Per example, in nats,

  .. math::
      \text{recon} = -\mathbb E_q \log p(x|z), \quad \text{kl} = \tfrac12 \textstyle\sum_j (\mu_j^2 + \sigma_j^2 - 1
      - \log\sigma_j^2), \quad \text{nelbo} = \text{recon} + \text{kl}, \quad \text{loss} = \text{recon} + \beta\,
      \text{kl},

  and at test time the importance-weighted bound of Burda et al. 2016 (https://arxiv.org/abs/1509.00519),
  :math:`-\log \frac1k \sum_{i=1}^k p(x, z_i) / q(z_i|x)`, logged as ``test/nll``: the number the literature reports.

Both log ``{stage}/recon`` and ``{stage}/loss`` (the VAE also ``kl`` and ``nelbo``), and every
``media_every_n_epochs`` epochs and at test time write image grids to the loggers and the run's ``media/`` folder:
inputs above their reconstructions, a latent interpolation between pairs of inputs and, for the VAE, samples from
the prior.

Binarised MNIST (``VAE(binarize=True)``): training images are binarised *dynamically*, a fresh Bernoulli draw of each
pixel every time the image is seen; validation and test images with a *fixed* draw (seeded by the batch index, so
every evaluation scores the same binary images).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric

from core.media import log_images
from lightning_modules.nets.autoencoder import ConvDecoder, ConvEncoder
from lightning_modules.task import Task

#: Builds an encoder from ``(data_shape, out_features)``; a recipe gives its class and options.
EncoderFactory = Callable[[tuple[int, ...], int], nn.Module]
#: Builds a decoder from ``(latent_dim, data_shape)``.
DecoderFactory = Callable[[int, tuple[int, ...]], nn.Module]

#: Examples shown in the reconstruction grid, pairs interpolated, and steps per interpolation.
GRID, PAIRS, STEPS = 8, 4, 8


def data_shape(in_channels: int | None, image_size: int | None, num_features: int | None) -> tuple[int, ...]:
    """``(num_features,)`` for flat features, else ``(in_channels, image_size, image_size)``; one clear error."""
    if num_features is not None:
        if num_features < 1:
            raise ValueError(f"num_features must be positive, got {num_features}")
        return (num_features,)
    if in_channels is None or image_size is None or in_channels < 1 or image_size < 1:
        raise ValueError(
            f"give in_channels and image_size (images) or num_features (flat features), got in_channels={in_channels}, "
            f"image_size={image_size}; inside a recipe the DataModule fills them"
        )
    return (in_channels, image_size, image_size)


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``log p(x | logits)`` summed over all but the first dimension: ``(B, ...) -> (B,)``; ``x`` may be soft."""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def gaussian_log_likelihood(mean: torch.Tensor, x: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """``log N(x; mean, exp(log_scale)^2)`` summed over all but the first dimension: ``(B, ...) -> (B,)``."""
    log_density = -0.5 * ((x - mean) / log_scale.exp()) ** 2 - log_scale - 0.5 * math.log(2 * math.pi)
    return log_density.flatten(1).sum(1)


def gaussian_kl(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Closed-form ``KL(N(mu, exp(log_var)) || N(0, I))`` per example: ``(B, D) -> (B,)``."""
    return 0.5 * (mu.pow(2) + log_var.exp() - 1.0 - log_var).sum(1)


class _Codec(Task):
    """What the autoencoder and the VAE share: nets built from the data's shape, the step, metrics and media."""

    progress_bar_epochs = ("val/loss",)
    #: Per-example terms each stage logs; subclasses extend.
    terms: tuple[str, ...] = ("loss", "recon")

    def __init__(
        self,
        encoder: EncoderFactory,
        decoder: DecoderFactory,
        latent_dim: int,
        code_size: int,
        in_channels: int | None,
        image_size: int | None,
        num_features: int | None,
        media_every_n_epochs: int,
        optimizer: OptimizerCallable,
        lr_scheduler: LRSchedulerCallable | None,
        scheduler_interval: Literal["step", "epoch"],
        test_terms: tuple[str, ...] = (),
    ) -> None:
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler, scheduler_interval=scheduler_interval)
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        if media_every_n_epochs < 0:
            raise ValueError(f"media_every_n_epochs must be >= 0 (0: never), got {media_every_n_epochs}")
        self.data_shape = data_shape(in_channels, image_size, num_features)
        self.latent_dim = latent_dim
        self.media_every_n_epochs = media_every_n_epochs
        self.encoder = encoder(self.data_shape, code_size)
        self.decoder = decoder(latent_dim, self.data_shape)
        # Means over the evaluation split, summed and counted exactly across DDP processes (as Classifier's loss).
        self.eval_means = nn.ModuleDict(
            {
                "val": nn.ModuleDict({name: MeanMetric() for name in self.terms}),
                "test": nn.ModuleDict({name: MeanMetric() for name in (*self.terms, *test_terms)}),
            }
        )

    # ---- what subclasses define ----

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code of each example, ``(B, *data_shape) -> (B, latent_dim)`` (a VAE: the posterior mean)."""
        raise NotImplementedError

    def mean_of(self, out: torch.Tensor) -> torch.Tensor:
        """The decoder's raw output ``(B, *data_shape)`` as an example in data space (probabilities, means)."""
        raise NotImplementedError

    def losses(self, x: torch.Tensor, stage: str) -> dict[str, torch.Tensor]:
        """Per-example terms ``(B,)`` named in :attr:`terms` for clean inputs ``x``."""
        raise NotImplementedError

    def prepare(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Inputs as the model's targets: floats in the data's range (a VAE on binary data binarises here)."""
        return x.float().div(255) if x.dtype == torch.uint8 else x

    # ---- shared ----

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Examples in data space for codes ``(B, latent_dim) -> (B, *data_shape)``."""
        return self.mean_of(self.decoder(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x`` in data space through the code (no noise, no sampling)."""
        return self.decode(self.encode(self.prepare(x, 0)))

    def shared_step(self, batch: Any, batch_idx: int, stage: str) -> dict[str, torch.Tensor]:
        x, _ = self.split_batch(batch)  # labels, if any, are ignored
        x = self.prepare(x, batch_idx)
        terms = self.losses(x, stage)
        if stage == "train":
            for name in self.terms:
                self.log(f"train/{name}", terms[name].mean(), batch_size=len(x))
        else:
            for name, metric in self.eval_means[stage].items():
                metric.update(terms[name])
                self.log(f"{stage}/{name}", metric, batch_size=len(x))
            if batch_idx == 0 and self._media_due(stage):
                self.log_media(x, stage)
        return terms

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.guard(self.shared_step(batch, batch_idx, "train")["loss"].mean())

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.shared_step(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.shared_step(batch, batch_idx, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, _ = self.split_batch(batch)
        return self.encode(self.prepare(x, batch_idx))  # (B, latent_dim) codes, for use downstream

    def _media_due(self, stage: str) -> bool:
        if self._trainer is None or self.trainer.sanity_checking or len(self.data_shape) != 3:
            return False
        if stage == "test":
            return True
        every = self.media_every_n_epochs
        last = self.current_epoch + 1 == self.trainer.max_epochs
        return every > 0 and ((self.current_epoch + 1) % every == 0 or last)

    @torch.no_grad()
    def log_media(self, x: torch.Tensor, stage: str) -> None:
        """Inputs above their reconstructions, and latent interpolations between pairs of inputs."""
        shown = x[:GRID]
        log_images(self.trainer, f"{stage}/reconstructions", torch.cat([shown, self(shown)]), nrow=len(shown))
        pairs = min(PAIRS, len(x) // 2)
        if pairs:
            z = self.encode(x[: 2 * pairs]).view(pairs, 2, -1)  # (P, 2, D)
            t = torch.linspace(0, 1, STEPS, device=x.device).view(1, STEPS, 1)
            path = z[:, :1] * (1 - t) + z[:, 1:] * t  # (P, STEPS, D)
            log_images(self.trainer, f"{stage}/interpolation", self.decode(path.flatten(0, 1)), nrow=STEPS)


class Autoencoder(_Codec):
    """Deterministic autoencoder, plain or denoising.

    Args:
        encoder: Encoder class (with its options), called with ``(data_shape, latent_dim)``; see
            :mod:`lightning_modules.nets.autoencoder`.
        decoder: Decoder class, called with ``(latent_dim, data_shape)``.
        latent_dim: Size of the code.
        in_channels: Image channels; filled from the DataModule.
        image_size: Image side; filled from the DataModule.
        num_features: Length of a flat feature vector, for data that are not images (then an MLP encoder/decoder).
        loss: ``bce``: binary cross-entropy on decoder logits (data in ``[0, 1]``, the reconstruction is their
            sigmoid); ``mse``: squared error on the decoder's output. Summed over an example, averaged over the batch.
        noise: Corruption of the input in training only: ``gaussian`` adds ``noise_level`` * N(0, 1); ``masking``
            zeroes each value with probability ``noise_level``. The loss compares with the clean input.
        noise_level: Standard deviation (gaussian) or drop probability (masking).
        media_every_n_epochs: Write image grids every this many epochs (and at the last epoch and test); 0: never.
        optimizer: Optimizer factory.
        lr_scheduler: Optional scheduler factory (``total_steps`` filled from the trainer).
        scheduler_interval: Step the scheduler every optimizer ``step`` or every ``epoch``.
    """

    def __init__(
        self,
        encoder: EncoderFactory = ConvEncoder,
        decoder: DecoderFactory = ConvDecoder,
        latent_dim: int = 16,
        in_channels: int | None = None,
        image_size: int | None = None,
        num_features: int | None = None,
        loss: Literal["bce", "mse"] = "bce",
        noise: Literal["none", "gaussian", "masking"] = "none",
        noise_level: float = 0.0,
        media_every_n_epochs: int = 5,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
    ) -> None:
        if loss not in ("bce", "mse"):
            raise ValueError(f"loss must be 'bce' or 'mse', got {loss!r}")
        if noise not in ("none", "gaussian", "masking"):
            raise ValueError(f"noise must be 'none', 'gaussian' or 'masking', got {noise!r}")
        if noise_level < 0 or (noise == "masking" and noise_level >= 1):
            raise ValueError(f"noise_level must be >= 0 (and < 1 for masking), got {noise_level}")
        super().__init__(
            encoder,
            decoder,
            latent_dim,
            latent_dim,
            in_channels,
            image_size,
            num_features,
            media_every_n_epochs,
            optimizer,
            lr_scheduler,
            scheduler_interval,
        )
        self.loss, self.noise, self.noise_level = loss, noise, noise_level

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the training noise; unchanged outside training."""
        if not self.training or self.noise == "none" or self.noise_level == 0:
            return x
        if self.noise == "gaussian":
            return x + self.noise_level * torch.randn_like(x)
        return x * (torch.rand_like(x) >= self.noise_level)  # masking noise

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def mean_of(self, out: torch.Tensor) -> torch.Tensor:
        return out.sigmoid() if self.loss == "bce" else out

    def losses(self, x: torch.Tensor, stage: str) -> dict[str, torch.Tensor]:
        out = self.decoder(self.encoder(self.corrupt(x)))  # (B, *data_shape)
        if self.loss == "bce":
            recon = -bernoulli_log_likelihood(out, x)
        else:
            recon = (out - x).pow(2).flatten(1).sum(1)
        return {"loss": recon, "recon": recon}


class VAE(_Codec):
    """Variational autoencoder with a diagonal Gaussian posterior; logs the negative ELBO and, at test, the IW-NLL.

    Args:
        encoder: Encoder class (with its options), called with ``(data_shape, 2 * latent_dim)``: means and
            log-variances; see :mod:`lightning_modules.nets.autoencoder`.
        decoder: Decoder class, called with ``(latent_dim, data_shape)``: logits (Bernoulli) or means (Gaussian).
        latent_dim: Size of the latent code.
        in_channels: Image channels; filled from the DataModule.
        image_size: Image side; filled from the DataModule.
        num_features: Length of a flat feature vector, for data that are not images.
        likelihood: ``bernoulli`` for data in ``[0, 1]`` (binary, or binarised with ``binarize``); ``gaussian`` with
            one learned scale for all dimensions (Rybkin et al. 2021, https://arxiv.org/abs/2006.13202).
        binarize: Bernoulli only: binarise inputs, dynamically in training, with a fixed draw in evaluation.
        beta: Weight of the KL term in the training loss (beta-VAE, Higgins et al. 2017); ``nelbo`` always uses 1.
        kl_warmup_steps: Ramp the KL weight linearly from 0 to ``beta`` over this many steps; 0: no warm-up.
        iw_samples: Importance samples ``k`` of the test NLL (Burda et al. used 5,000); 0 skips ``test/nll``.
        media_every_n_epochs: Write image grids every this many epochs (and at the last epoch and test); 0: never.
        optimizer: Optimizer factory.
        lr_scheduler: Optional scheduler factory (``total_steps`` filled from the trainer).
        scheduler_interval: Step the scheduler every optimizer ``step`` or every ``epoch``.
    """

    progress_bar_epochs = ("val/nelbo",)
    terms = ("loss", "recon", "kl", "nelbo")

    def __init__(
        self,
        encoder: EncoderFactory = ConvEncoder,
        decoder: DecoderFactory = ConvDecoder,
        latent_dim: int = 32,
        in_channels: int | None = None,
        image_size: int | None = None,
        num_features: int | None = None,
        likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
        binarize: bool = False,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        iw_samples: int = 100,
        media_every_n_epochs: int = 5,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
    ) -> None:
        if likelihood not in ("bernoulli", "gaussian"):
            raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        if binarize and likelihood != "bernoulli":
            raise ValueError("binarize=True makes binary data for a Bernoulli likelihood; use likelihood='bernoulli'")
        if beta < 0 or kl_warmup_steps < 0 or iw_samples < 0:
            raise ValueError(
                f"beta, kl_warmup_steps and iw_samples must be >= 0, got {beta}, {kl_warmup_steps}, {iw_samples}"
            )
        super().__init__(
            encoder,
            decoder,
            latent_dim,
            2 * latent_dim,
            in_channels,
            image_size,
            num_features,
            media_every_n_epochs,
            optimizer,
            lr_scheduler,
            scheduler_interval,
            test_terms=("nll",) if iw_samples else (),
        )
        self.likelihood, self.binarize, self.beta = likelihood, binarize, beta
        self.kl_warmup_steps, self.iw_samples = kl_warmup_steps, iw_samples
        # One scale for every dimension, in log space; learned with the rest (unused by a Bernoulli likelihood).
        self.log_scale = nn.Parameter(torch.zeros(())) if likelihood == "gaussian" else None

    def prepare(self, x: torch.Tensor, batch_idx: int) -> torch.Tensor:
        x = super().prepare(x, batch_idx)
        if not self.binarize:
            return x
        if self.training:
            return torch.bernoulli(x)  # dynamic: a fresh draw every time an image is seen
        generator = torch.Generator(device="cpu").manual_seed(batch_idx)  # fixed: the same draw at every evaluation
        return (torch.rand(x.shape, generator=generator).to(x.device) < x).to(x.dtype)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log_var)`` of ``q(z|x)``, each ``(B, latent_dim)``."""
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        return mu, log_var

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]

    def mean_of(self, out: torch.Tensor) -> torch.Tensor:
        return out.sigmoid() if self.likelihood == "bernoulli" else out

    def log_likelihood(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log p(x|z)`` per example from the decoder's raw output: ``(B, *data_shape) -> (B,)``."""
        if self.likelihood == "bernoulli":
            return bernoulli_log_likelihood(out, x)
        return gaussian_log_likelihood(out, x, self.log_scale)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` examples in data space decoded from the prior: ``(n, *data_shape)``."""
        z = torch.randn(n, self.latent_dim, generator=generator).to(self.device)
        return self.decode(z)

    def kl_weight(self, step: int) -> float:
        """The KL weight of training step ``step`` (0-based): ``beta``, ramped up linearly over ``kl_warmup_steps``."""
        if not self.kl_warmup_steps:
            return self.beta
        return self.beta * min(1.0, (step + 1) / self.kl_warmup_steps)

    def losses(self, x: torch.Tensor, stage: str) -> dict[str, torch.Tensor]:
        mu, log_var = self.posterior(x)
        z = mu + (0.5 * log_var).exp() * torch.randn_like(mu)  # reparameterisation, (B, D)
        recon = -self.log_likelihood(self.decoder(z), x)
        kl = gaussian_kl(mu, log_var)
        beta = self.kl_weight(self.global_step) if stage == "train" else self.beta
        terms = {"loss": recon + beta * kl, "recon": recon, "kl": kl, "nelbo": recon + kl}
        if stage == "test" and self.iw_samples:
            terms["nll"] = self.importance_weighted_nll(x, self.iw_samples)
        return terms

    @torch.no_grad()
    def importance_weighted_nll(self, x: torch.Tensor, k: int, chunk: int = 25) -> torch.Tensor:
        r"""``-log (1/k) sum_i p(x, z_i) / q(z_i|x)`` with ``z_i ~ q(z|x)`` per example ``(B,)``, in nats.

        An upper bound on ``-log p(x)`` that tightens as ``k`` grows and equals the negative ELBO's expectation at
        ``k = 1`` (Burda et al. 2016). Decoded ``chunk`` samples at a time to bound memory.
        """
        mu, log_var = self.posterior(x)  # (B, D)
        std = (0.5 * log_var).exp()
        log_weights = []
        for start in range(0, k, chunk):
            c = min(chunk, k - start)
            eps = torch.randn(c, *mu.shape, device=x.device, dtype=mu.dtype)  # (c, B, D)
            z = mu + std * eps
            out = self.decoder(z.flatten(0, 1))  # (c * B, *data_shape)
            target = x.expand(c, *x.shape).flatten(0, 1)
            log_px_z = self.log_likelihood(out, target).view(c, -1)  # (c, B)
            log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
            log_qz = -0.5 * (eps.pow(2) + math.log(2 * math.pi)).sum(-1) - std.log().sum(-1)
            log_weights.append(log_px_z + log_pz - log_qz)
        return math.log(k) - torch.logsumexp(torch.cat(log_weights), dim=0)

    def log_media(self, x: torch.Tensor, stage: str) -> None:
        super().log_media(x, stage)
        generator = torch.Generator().manual_seed(0)  # the same prior draws every time, to follow training
        log_images(self.trainer, f"{stage}/samples", self.sample(64, generator), nrow=8)
