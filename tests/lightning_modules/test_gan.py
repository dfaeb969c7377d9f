"""GAN: the optimizers step as n_critic says, the gradient penalty is its formula, the generator's EMA is its closed
form, quality metrics come from a classifier checkpoint, and checkpoints rebuild a generator that samples the same."""

from __future__ import annotations

import functools

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from callbacks import SWA
from datamodules.vision import DigitsDataModule
from lightning_modules.gan import GAN, discriminator_loss, gradient_penalty
from lightning_modules.nets.gan import DCGANDiscriminator, DCGANGenerator, halvings
from lightning_modules.sample_quality import SampleQuality
from lightning_modules.vision import ImageClassifier

SMALL = {
    "generator": functools.partial(DCGANGenerator, width=8),
    "discriminator": functools.partial(DCGANDiscriminator, width=8),
    "latent_dim": 4,
    "in_channels": 1,
    "image_size": 8,
    "num_classes": 10,
    "media_every_n_epochs": 0,
    "generator_optimizer": functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.999)),
}


def trainer(**kwargs) -> Trainer:
    defaults = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return Trainer(accelerator="cpu", enable_model_summary=False, **{**defaults, **kwargs})


@pytest.mark.parametrize(("side", "n"), [(8, 1), (28, 2), (32, 3), (64, 4)])
def test_dcgan_nets_halve_down_to_the_coarsest_map_and_back(side, n):
    assert halvings(side) == n
    g = DCGANGenerator(16, 3, side, num_classes=10)
    d = DCGANDiscriminator(3, side, num_classes=10, norm="layer")
    labels = torch.tensor([0, 9])
    images = g(torch.randn(2, 16), labels)
    assert images.shape == (2, 3, side, side) and images.abs().max() <= 1
    assert d(images, labels).shape == (2,)


@pytest.mark.parametrize("n_critic", [1, 3])
def test_optimizers_step_as_n_critic_says(n_critic):
    model = GAN(**SMALL, loss="wasserstein", gradient_penalty=10.0, n_critic=n_critic)
    run = trainer(max_epochs=1, limit_train_batches=6, limit_val_batches=0)
    run.fit(model, DigitsDataModule(batch_size=16))
    g_opt, d_opt = (o.optimizer if hasattr(o, "optimizer") else o for o in run.optimizers)
    steps = [int(next(iter(opt.state.values()))["step"]) for opt in (g_opt, d_opt)]
    assert steps == [6 // n_critic, 6]
    assert run.global_step == 6 + 6 // n_critic  # Lightning counts every optimizer step under manual optimization
    assert torch.isfinite(run.callback_metrics["train/gradient_penalty"])


def test_gradient_penalty_matches_its_formula():
    torch.manual_seed(0)
    real, fake = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    w = torch.randn(1, 1, 4, 4, requires_grad=True)
    # A linear critic has the gradient w everywhere: the penalty is (|w| - 1)^2 exactly, and differentiable in w.
    penalty = gradient_penalty(lambda x: (x * w).sum((1, 2, 3)), real, fake)
    assert float(penalty) == pytest.approx(float((w.norm() - 1) ** 2), rel=1e-5)
    penalty.backward()
    assert torch.allclose(w.grad, 2 * (w.norm() - 1) * w / w.norm())
    # A quadratic critic D(x) = |x|^2 / 2 has the gradient x_hat itself, at the interpolate of the same draw.
    torch.manual_seed(1)
    penalty = gradient_penalty(lambda x: 0.5 * x.pow(2).sum((1, 2, 3)), real, fake)
    torch.manual_seed(1)
    eps = torch.rand(5, 1, 1, 1)
    x_hat = eps * real + (1 - eps) * fake
    assert float(penalty) == pytest.approx(float((x_hat.flatten(1).norm(dim=1) - 1).pow(2).mean()), rel=1e-5)


@pytest.mark.parametrize("kind", ["non_saturating", "hinge", "wasserstein"])
def test_discriminator_losses_prefer_real_scored_high(kind):
    high, low = torch.full((4,), 3.0), torch.full((4,), -3.0)
    assert discriminator_loss(kind, high, low) < discriminator_loss(kind, low, high)


class RecordGenerator(Callback):
    """The generator's live weights after every training batch."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        state = pl_module.generator.state_dict()
        self.weights.append({f"generator.{k}": v.detach().clone() for k, v in state.items() if v.is_floating_point()})


def test_generator_ema_is_its_closed_form_and_is_what_a_checkpoint_samples(tmp_path):
    decay = 0.6
    ema = SWA(mode="ema", module="generator", swa_start=0.0, ema_decay=decay, update_bn=False)
    record = RecordGenerator()
    model = GAN(**SMALL, conditional=True)
    run = trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=0, callbacks=[ema, record])
    run.fit(model, DigitsDataModule(batch_size=16))
    # avg_n = d^(n-1) w_1 + (1 - d) sum_{i>=2} d^(n-i) w_i: the first update copies, the rest blend.
    n = len(record.weights)
    for name, average in ema.average.items():
        expected = decay ** (n - 1) * record.weights[0][name]
        for i in range(1, n):
            expected = expected + (1 - decay) * decay ** (n - 1 - i) * record.weights[i][name]
        assert torch.allclose(average, expected, atol=1e-6), name
    assert not any(name.startswith("discriminator") for name in ema.average)
    # After fit the module holds the EMA; the checkpoint holds it too and rebuilds a generator that samples the same.
    path = tmp_path / "gan.ckpt"
    run.save_checkpoint(path)
    reloaded = GAN.load_from_checkpoint(path, weights_only=False).eval()  # hparams hold Python classes
    model.eval()
    labels = torch.arange(6)
    one, two = (m.sample(6, labels, torch.Generator().manual_seed(0)) for m in (model, reloaded))
    assert one.shape == (6, 1, 8, 8) and 0 <= float(one.min()) and float(one.max()) <= 1
    assert torch.equal(one, two)
    assert torch.allclose(
        reloaded.generator.state_dict()["project.0.weight"], ema.average["generator.project.0.weight"]
    )


def test_sampling_uses_the_batch_statistics_and_leaves_the_running_ones_untouched():
    model = GAN(**SMALL).eval()
    norm = model.generator.project[2]
    with torch.no_grad():
        norm.running_mean.fill_(5.0)  # running statistics far from any batch's, as an EMA's may be
    before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    z = torch.randn(64, 4)
    images = model.sample_from(z)
    changed = {k for k, v in before.items() if not torch.equal(model.generator.state_dict()[k], v)}
    assert not changed, f"sampling changed {sorted(changed)}"
    assert not model.generator.training
    model.generator.train()
    assert torch.allclose(images, model.generate(z).add(1).div(2).detach(), atol=1e-6)  # = train-mode batch norm


@pytest.fixture(scope="module")
def classifier_checkpoint(tmp_path_factory):
    """A briefly trained digits classifier. Made in Python, its hyperparameters hold the AdamW class, which a safe
    (``weights_only``) load refuses unless allowed; a ``recipe fit`` checkpoint holds class paths instead."""
    path = tmp_path_factory.mktemp("classifier") / "digits.ckpt"
    torch.manual_seed(0)
    model = ImageClassifier(num_classes=10, in_channels=1, image_size=8)
    run = trainer(max_epochs=2, limit_val_batches=0)
    run.fit(model, DigitsDataModule())
    run.save_checkpoint(path)
    return str(path)


def test_quality_metrics_rank_real_images_above_noise(classifier_checkpoint):
    data = DigitsDataModule()
    data.setup("fit")
    real, held_out = data.splits["train"].images[:400], data.splits["val"].images
    with torch.serialization.safe_globals([torch.optim.AdamW]):
        quality = SampleQuality(ImageClassifier.load_from_checkpoint(classifier_checkpoint))
    scores = {}
    for name, fake in (("real", held_out), ("noise", torch.rand(300, 1, 8, 8))):
        quality.update_real(real)
        quality.update_fake(fake)
        scores[name] = [float(v) for v in quality.compute()]
    assert scores["real"][0] < scores["noise"][0] / 5  # FID of held-out digits far below that of noise
    assert scores["real"][1] == 1.0  # every digit is found among real digits
    assert scores["noise"][1] < 1.0


def test_gan_logs_fid_and_coverage_and_keeps_the_classifier_out_of_its_checkpoint(classifier_checkpoint, tmp_path):
    model = GAN(**SMALL, classifier_checkpoint=classifier_checkpoint, quality_samples=50)
    run = trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=2, num_sanity_val_steps=0)
    with torch.serialization.safe_globals([torch.optim.AdamW]):
        run.fit(model, DigitsDataModule(batch_size=16))
    metrics = run.callback_metrics
    assert float(metrics["val/fid"]) > 0 and 0 < float(metrics["val/class_coverage"]) <= 1
    path = tmp_path / "gan.ckpt"
    run.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert all(name.split(".")[0] in ("generator", "discriminator") for name in state)


def test_bad_arguments_are_refused_with_one_message():
    with pytest.raises(ValueError, match="conditional=True needs num_classes"):
        GAN(**{**SMALL, "num_classes": None}, conditional=True)
    with pytest.raises(ValueError, match="loss must be"):
        GAN(**SMALL, loss="least_squares")
