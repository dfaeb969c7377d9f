"""AudioClassifier and the audio networks: shapes, SpecAugment in training only, learning pitch, checkpoints."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from audio_fake_data import write_fsdd
from lightning.pytorch import Trainer
from torch import nn

from datamodules.in_memory import TensorBatches, batch_loader
from datamodules.sampling import EpochSampler
from lightning_modules.audio import AudioClassifier
from lightning_modules.nets import ConvNet
from lightning_modules.nets.audio import M5
from recipes.cli import main

RATE = 8000


def tones(frequencies: list[float], n: int = 64, seconds: float = 0.5, seed: int = 0):
    """``n`` noisy sine clips ``(n, samples)`` whose label is the index of their pitch in ``frequencies``, at random
    loudness and phase."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(frequencies)
    t = torch.arange(round(RATE * seconds)) / RATE
    f = torch.tensor(frequencies)[labels, None] * (1 + 0.03 * torch.randn(n, 1, generator=g))
    phase = 2 * torch.pi * torch.rand(n, 1, generator=g)
    gain = 10 ** (-2 * torch.rand(n, 1, generator=g))
    clips = gain * torch.sin(2 * torch.pi * f * t + phase) + 0.05 * gain * torch.randn(n, len(t), generator=g)
    return clips, labels


def small_model(**kwargs) -> AudioClassifier:
    defaults = {"net": ConvNet(1, 2, widths=(8, 16)), "num_classes": 2, "sample_rate": RATE, "num_samples": 4000}
    return AudioClassifier(**{**defaults, "n_mels": 32, **kwargs})


@pytest.mark.parametrize("num_samples", [5000, 16000])
def test_both_networks_map_clips_to_class_logits(num_samples):
    torch.manual_seed(0)
    x = torch.randn(3, num_samples)
    cnn = AudioClassifier(num_classes=7, sample_rate=RATE, num_samples=num_samples, n_mels=40).eval()
    assert cnn.features(x).shape == (3, 1, 40, num_samples // 80 + 1)  # 10 ms hops, centred frames
    assert cnn(x).shape == (3, 7)
    m5 = AudioClassifier(net=M5(width=8), num_classes=7, sample_rate=RATE, num_samples=num_samples).eval()
    assert m5.front_end is None  # a waveform network skips the mel front end
    assert m5.features(x).shape == (3, 1, num_samples)
    assert m5(x).shape == (3, 7) and m5.net.fc.out_features == 7  # the head resized to the data's classes
    assert torch.equal(m5(x), m5(x.unsqueeze(1)))  # (B, N) and (B, 1, N) are the same clips


def test_m5_refuses_clips_too_short_for_its_pools():
    net = M5(stride=16)
    assert net(torch.randn(2, 1, net.min_samples())).shape == (2, 10)
    with pytest.raises(ValueError, match=f"at least {net.min_samples()} samples"):
        net(torch.randn(2, 1, net.min_samples() - 1))


def test_features_are_standardised_per_clip_so_loudness_does_not_matter():
    model = small_model().eval()
    x, _ = tones([300.0, 1200.0], n=4)
    features = model.features(x)
    assert torch.allclose(features.mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(features.std(dim=(1, 2, 3)), torch.ones(4), atol=1e-4)
    assert torch.allclose(model(0.01 * x), model(x), atol=1e-4)


def test_spec_augment_masks_in_training_and_never_in_evaluation():
    model = small_model(freq_mask=8, time_mask=10)
    x, _ = tones([300.0, 1200.0], n=8)
    model.eval()
    clean = model.features(x)
    assert torch.equal(model.features(x), clean)  # evaluation: no masks, deterministic
    model.train()
    torch.manual_seed(0)
    masked = model.features(x)
    changed = masked != clean
    assert changed.any() and (masked[changed] == 0).all()  # masked cells are set to 0, the standardised mean
    per_clip = changed.flatten(1).any(dim=1)
    assert per_clip.all()  # every clip gets its own masks
    assert not torch.equal(changed[0], changed[1])
    model.eval()
    assert torch.equal(model.features(x), clean)
    assert torch.equal(small_model().train().features(x), clean)  # no masks asked for: training sees the same


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="sample_rate"):
        small_model(sample_rate=0)
    with pytest.raises(ValueError, match="SpecAugment"):
        small_model(net=M5(), freq_mask=4)
    with pytest.raises(ValueError, match="frequency bins"):
        small_model(n_mels=200)

    class Odd(nn.Module):
        input_kind = "video"

    with pytest.raises(ValueError, match="input_kind"):
        small_model(net=Odd())


def _loader(x: torch.Tensor, y: torch.Tensor, train: bool):
    return batch_loader(TensorBatches(x, y), EpochSampler(len(y), shuffle=train, batch_size=32))


def test_cnn_learns_to_tell_pitches_apart():
    torch.manual_seed(0)
    pitches = [300.0, 600.0, 1200.0]
    model = small_model(
        net=ConvNet(1, 3, widths=(8, 16)),
        num_classes=3,
        num_samples=2000,
        freq_mask=4,
        time_mask=4,
        optimizer=functools.partial(torch.optim.AdamW, lr=0.01),
    )
    train, test = tones(pitches, n=96, seconds=0.25, seed=0), tones(pitches, n=60, seconds=0.25, seed=1)
    trainer = Trainer(
        max_epochs=10,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=_loader(*train, train=True))
    accuracy = trainer.test(model, _loader(*test, train=False), verbose=False)[0]["test/acc"]
    assert accuracy >= 0.95


@pytest.mark.slow  # two recipe runs through the CLI: a few seconds
def test_checkpoint_round_trip_gives_identical_probabilities_and_predict_works(tmp_path):
    write_fsdd(tmp_path)
    flags = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", f"--data.init_args.data_dir={tmp_path}"]
    fit = main(["fit", "--config", "audio/fsdd_cnn", "--trainer.max_epochs=1", *flags])
    last = Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    reloaded = AudioClassifier.load_from_checkpoint(last).eval()
    assert type(reloaded.net) is type(fit.model.net)
    assert (reloaded.hparams.sample_rate, reloaded.hparams.num_samples) == (8000, 8000)  # from the DataModule
    x, _ = tones([300.0, 900.0], n=6)
    x = torch.nn.functional.pad(x, (0, 4000))  # (6, 8000)
    fit.model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x).softmax(-1), fit.model(x).softmax(-1))
        assert not torch.equal(AudioClassifier(**reloaded.hparams).eval()(x), fit.model(x))

    predict = main(["predict", "--config", "audio/fsdd_cnn", *flags, "--ckpt_path", str(last)])
    probs = torch.load(Path(predict.trainer.default_root_dir) / "predictions.pt")
    assert probs.shape == (100, 10)  # the standard test split of the fake FSDD: indices 0-4 of 10 digits x 2 speakers
    assert torch.allclose(probs.sum(dim=1), torch.ones(100))
    test_clips = predict.datamodule.splits["test"].images
    with torch.no_grad():
        assert torch.allclose(reloaded(test_clips).softmax(-1), probs, atol=1e-6)
