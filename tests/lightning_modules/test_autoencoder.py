"""Autoencoder and VAE: the bound's terms add up, the KL and the importance-weighted bound are right, denoising noise
is training-only, the VAE learns the bundled digits, and checkpoints rebuild a model that samples the same."""

from __future__ import annotations

import functools

import pytest
import torch
from lightning.pytorch import Trainer
from torch.distributions import Normal

from datamodules.vision import DigitsDataModule
from lightning_modules.autoencoder import VAE, Autoencoder, gaussian_kl
from lightning_modules.nets.autoencoder import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder

SMALL_MLP = {
    "encoder": functools.partial(MLPEncoder, hidden=(64,)),
    "decoder": functools.partial(MLPDecoder, hidden=(64,)),
}


def trainer(**kwargs) -> Trainer:
    defaults = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return Trainer(accelerator="cpu", enable_model_summary=False, **{**defaults, **kwargs})


def digits_vae(**kwargs) -> VAE:
    return VAE(**{**SMALL_MLP, "latent_dim": 8, "in_channels": 1, "image_size": 8, "media_every_n_epochs": 0, **kwargs})


def digits_batch(n: int = 32) -> torch.Tensor:
    data = DigitsDataModule()
    data.setup("fit")
    return data.splits["val"].images[:n]  # (n, 1, 8, 8) in [0, 1]


@pytest.mark.parametrize(
    ("encoder", "decoder", "shape"),
    [
        (ConvEncoder, ConvDecoder, (1, 28, 28)),
        (ConvEncoder, ConvDecoder, (3, 32, 32)),
        (functools.partial(ConvEncoder, widths=(8,)), functools.partial(ConvDecoder, widths=(8,)), (1, 8, 8)),
        (MLPEncoder, MLPDecoder, (1, 8, 8)),
        (MLPEncoder, MLPDecoder, (13,)),
    ],
)
def test_networks_map_between_examples_and_codes(encoder, decoder, shape):
    x = torch.rand(2, *shape)
    assert encoder(shape, 10)(x).shape == (2, 10)
    assert decoder(5, shape)(torch.randn(2, 5)).shape == (2, *shape)


def test_conv_networks_refuse_sides_they_cannot_halve():
    with pytest.raises(ValueError, match="divisible by 4"):
        ConvEncoder((1, 10, 10), 4)


def test_logged_loss_is_recon_plus_beta_kl_and_nelbo_is_recon_plus_kl():
    model = digits_vae(beta=0.5)
    run = trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=2, num_sanity_val_steps=0)
    run.fit(model, DigitsDataModule())
    m = {k: float(v) for k, v in run.callback_metrics.items()}
    # Training logs the last step's batch means; validation the means over the validation batches.
    assert m["train/loss"] == pytest.approx(m["train/recon"] + 0.5 * m["train/kl"], rel=1e-5)
    assert m["val/nelbo"] == pytest.approx(m["val/recon"] + m["val/kl"], rel=1e-5)
    assert m["val/loss"] == pytest.approx(m["val/recon"] + 0.5 * m["val/kl"], rel=1e-5)
    assert m["val/kl"] > 0


def test_kl_warm_up_ramps_the_weight_linearly_to_beta():
    model = digits_vae(beta=2.0, kl_warmup_steps=4)
    assert [model.kl_weight(step) for step in range(6)] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    assert digits_vae(beta=2.0).kl_weight(0) == 2.0


def test_kl_of_the_reparameterised_posterior_matches_the_closed_form():
    torch.manual_seed(0)
    mu, log_var = torch.randn(4, 6), torch.randn(4, 6) * 0.5
    std = (0.5 * log_var).exp()
    z = mu + std * torch.randn(200_000, 4, 6)  # (S, B, D) reparameterised draws
    monte_carlo = (Normal(mu, std).log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1).mean(0)  # (B,)
    closed = gaussian_kl(mu, log_var)
    assert torch.allclose(monte_carlo, closed, atol=0.03)
    assert torch.allclose(closed, torch.distributions.kl_divergence(Normal(mu, std), Normal(0.0, 1.0)).sum(-1))


def test_importance_weighted_bound_is_the_elbo_at_k_1_and_tightens_with_k():
    torch.manual_seed(0)
    model = digits_vae().eval()
    with torch.no_grad():  # a posterior far from the true one, so there is a gap for more samples to close
        model.encoder.net[-1].weight.mul_(20)
    x = digits_batch(16).repeat(200, 1, 1, 1)  # (200 * 16, 1, 8, 8): 200 draws of each example at once
    with torch.no_grad():
        elbo = model.losses(x, "val")["nelbo"].mean()
        bounds = {k: model.importance_weighted_nll(x[: 16 * 20], k).mean() for k in (1, 5, 50)}
        k1 = model.importance_weighted_nll(x, 1).mean()
    assert float(k1) == pytest.approx(float(elbo), rel=0.005)  # the same estimator in expectation
    assert elbo > bounds[5] > bounds[50]
    assert float(elbo - bounds[50]) > 1.0  # nats: an untrained posterior leaves a clear gap to close


def test_denoising_autoencoder_sees_noise_in_training_only_and_reconstructs_the_clean_input():
    model = Autoencoder(**SMALL_MLP, latent_dim=8, in_channels=1, image_size=8, noise="masking", noise_level=0.5)
    seen = []
    model.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    x = digits_batch() + 0.01  # no exact zeros, so a masked value shows
    model.train()
    torch.manual_seed(0)
    loss = model.losses(x, "train")["loss"]
    masked = seen[-1] == 0
    assert 0.4 < float(masked.float().mean()) < 0.6
    assert torch.equal(seen[-1][~masked], x[~masked])
    # The target is the clean input: the same draw, decoded, scored against x.
    torch.manual_seed(0)
    logits = model.decoder(model.encoder(model.corrupt(x)))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
    assert torch.allclose(loss, expected)
    model.eval()
    model.losses(x, "val")
    assert torch.equal(seen[-1], x)


def test_gaussian_noise_is_added_in_training_only():
    model = Autoencoder(**SMALL_MLP, in_channels=1, image_size=8, noise="gaussian", noise_level=0.2)
    x = digits_batch()
    noisy = model.train().corrupt(x)
    assert float((noisy - x).std()) == pytest.approx(0.2, rel=0.1)
    assert torch.equal(model.eval().corrupt(x), x)


def test_binarisation_is_dynamic_in_training_and_fixed_in_evaluation():
    model = digits_vae(binarize=True)
    x = digits_batch()
    first, second = model.train().prepare(x, 0), model.prepare(x, 0)
    assert set(first.unique().tolist()) <= {0.0, 1.0} and not torch.equal(first, second)
    assert torch.equal(model.eval().prepare(x, 3), model.prepare(x, 3))


@pytest.mark.slow  # 12 epochs on the bundled digits: a few seconds
def test_vae_learns_the_digits():
    torch.manual_seed(0)
    data = DigitsDataModule(batch_size=64, translate=0)
    model = digits_vae(latent_dim=8, optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    data.setup("fit")
    with torch.no_grad():
        before = float(model.eval().losses(data.splits["val"].images, "val")["nelbo"].mean())
    run = trainer(max_epochs=12, num_sanity_val_steps=0)
    run.fit(model, data)
    after = float(run.callback_metrics["val/nelbo"])
    # 64 pixels in [0, 1] under a Bernoulli likelihood: the untrained model is near 64 * log 2 = 44 nats.
    assert before > 40
    assert after < before - 12, (before, after)


def test_checkpoint_round_trip_encodes_and_samples_the_same(tmp_path):
    model = digits_vae(encoder=functools.partial(ConvEncoder, widths=(8,)), decoder=ConvDecoder)
    run = trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0)
    run.fit(model, DigitsDataModule())
    path = tmp_path / "vae.ckpt"
    run.save_checkpoint(path)
    reloaded = VAE.load_from_checkpoint(path, weights_only=False).eval()  # hparams hold Python classes
    model.eval()
    x = digits_batch(4)
    draws = [model.sample(6, torch.Generator().manual_seed(1)), reloaded.sample(6, torch.Generator().manual_seed(1))]
    assert draws[0].shape == (6, 1, 8, 8)
    assert torch.equal(draws[0], draws[1])
    assert torch.equal(model.encode(x), reloaded.encode(x))
    assert not torch.equal(draws[1], VAE(**reloaded.hparams).eval().sample(6, torch.Generator().manual_seed(1)))


def test_bad_arguments_are_refused_with_one_message():
    with pytest.raises(ValueError, match="in_channels and image_size"):
        VAE(**SMALL_MLP)
    with pytest.raises(ValueError, match="binarize"):
        digits_vae(likelihood="gaussian", binarize=True)
    with pytest.raises(ValueError, match="noise must be"):
        Autoencoder(in_channels=1, image_size=8, noise="salt")
