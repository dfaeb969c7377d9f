"""TestTimeAugmentation: identity TTA is the plain prediction, views are averaged in probability space, the views are
the flips and zero-filled shifts claimed, forward comes back after every run, and bad inputs stop with one message."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, TensorDataset

from callbacks.tta import TestTimeAugmentation as TTA  # aliased: pytest would collect a name starting "Test"
from callbacks.tta import shift
from lightning_modules.audio import AudioClassifier
from lightning_modules.nets import ConvNet
from lightning_modules.vision import ImageClassifier
from recipes.cli import main


def image_model() -> ImageClassifier:
    """A random 3-class ConvNet on 1x8x8 images: position-sensitive, so flips and shifts change its output."""
    seed_everything(0)
    model = ImageClassifier(net=ConvNet(1, 3, widths=(4, 8)), num_classes=3, in_channels=1, image_size=8)
    model.set_normalization([0.3], [0.2])  # so the views really pass through the module's own normalisation
    return model.eval()


def image_loader(n: int = 12) -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=generator)
    return DataLoader(TensorDataset(images, torch.arange(n) % 3), batch_size=5)


def trainer(*callbacks) -> Trainer:
    return Trainer(
        callbacks=list(callbacks), logger=False, enable_progress_bar=False, enable_model_summary=False, max_epochs=1
    )


def predict(model: LightningModule, *callbacks) -> torch.Tensor:
    return torch.cat(trainer(*callbacks).predict(model, image_loader()))  # (N, 3) probabilities


def test_identity_tta_equals_plain_prediction_and_test_scores():
    model = image_model()
    plain = predict(model)
    tta = TTA()
    averaged = predict(model, tta)
    torch.testing.assert_close(averaged, plain)
    assert averaged.sum(dim=1).allclose(torch.ones(len(averaged)))
    plain_scores = trainer().test(model, image_loader(), verbose=False)[0]
    tta_scores = trainer(tta).test(model, image_loader(), verbose=False)[0]
    assert tta_scores.keys() == plain_scores.keys()
    for key, value in plain_scores.items():
        assert tta_scores[key] == pytest.approx(value, abs=1e-6), key


def test_prediction_is_the_mean_probability_of_the_views():
    model = image_model()
    images = torch.cat([x for x, _ in image_loader()])
    with torch.no_grad():
        by_hand = (model(images).softmax(-1) + model(images.flip(-1)).softmax(-1)) / 2  # identity and mirror
    averaged = predict(model, TTA(hflip=True))
    torch.testing.assert_close(averaged, by_hand)
    assert not averaged.allclose(predict(model), atol=1e-3)  # the mirror changed something: the test can fail


def test_audio_time_shift_views_through_test_loss():
    seed_everything(0)
    model = AudioClassifier(net=ConvNet(1, 3, widths=(4,)), num_classes=3, sample_rate=8000, num_samples=800, n_mels=16)
    model.eval()
    waves = torch.randn(6, 800, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    delayed = torch.cat([torch.zeros(6, 40), waves[:, :-40]], dim=1)  # 5 ms later at 8 kHz, silence first
    with torch.no_grad():
        probs = (model(waves).softmax(-1) + model(delayed).softmax(-1)) / 2
    expected = torch.nn.functional.nll_loss(probs.log(), labels)
    loader = DataLoader(TensorDataset(waves, labels), batch_size=6)
    scores = trainer(TTA(shifts=(40,))).test(model, loader, verbose=False)[0]
    assert scores["test/loss"] == pytest.approx(float(expected), rel=1e-5)


def test_shift_moves_by_whole_steps_and_fills_with_zeros():
    x = torch.arange(1, 10).reshape(1, 1, 3, 3)  # (B, C, H, W)
    assert shift(x, 1, -1).tolist() == [[[[0, 1, 2], [0, 4, 5], [0, 7, 8]]]]  # right by one
    assert shift(x, -1, -2).tolist() == [[[[4, 5, 6], [7, 8, 9], [0, 0, 0]]]]  # up by one
    assert shift(x, 0, -1) is x
    wave = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert shift(wave, 2, -1).tolist() == [[0.0, 0.0, 1.0, 2.0]]


def test_views_are_the_grid_of_shifts_times_the_mirror():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    views = TTA(hflip=True, shifts=(-1, 1)).views(x)
    assert len(views) == 3 * 3 * 2
    assert views[0] is x  # the identity first
    expected = {(dy, dx, flip) for dy in (0, -1, 1) for dx in (0, -1, 1) for flip in (False, True)}
    got = set()
    for dy, dx, flip in expected:
        view = shift(shift(x, dy, -2), dx, -1)
        view = view.flip(-1) if flip else view
        got.add(next(i for i, v in enumerate(views) if torch.equal(v, view)))
    assert got == set(range(18))  # every claimed view is there, each once
    assert len(TTA(shifts=(-40, 40)).views(torch.ones(2, 1, 800))) == 3  # audio: time only


@pytest.mark.parametrize("validate", [False, True])
def test_forward_is_restored_after_every_run(validate):
    model = image_model()
    tta = TTA(shifts=(1,), validate=validate)
    seen = []
    model.validation_step = lambda batch, batch_idx: seen.append("forward" in model.__dict__)  # wrapped on the instance
    for run in (trainer(tta).test, trainer(tta).predict, trainer(tta).validate):
        run(model, image_loader())
        assert "forward" not in model.__dict__
    assert seen and all(wrapped == validate for wrapped in seen)


def test_forward_is_restored_when_the_run_fails():
    model = image_model()

    def failing_step(batch, batch_idx):
        model(batch[0])
        raise RuntimeError("boom")

    model.test_step = failing_step
    with pytest.raises(RuntimeError, match="boom"):
        trainer(TTA(shifts=(1,))).test(model, image_loader())
    assert "forward" not in model.__dict__


def test_an_instance_level_forward_is_put_back():
    model = image_model()
    own = model.forward
    model.forward = own  # e.g. a user's wrapper set on the instance
    predict(model, TTA())
    assert model.__dict__["forward"] is own


def test_two_copies_are_refused():
    with pytest.raises(MisconfigurationException, match="one TestTimeAugmentation"):
        predict(image_model(), TTA(), TTA(hflip=True))


class DictInputs(LightningModule):
    """A text-like module: forward takes a dict."""

    def forward(self, inputs):
        return torch.zeros(len(inputs["input_ids"]), 2)

    def predict_step(self, batch, batch_idx):
        return self({"input_ids": batch[0]})


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        ({"input_ids": torch.zeros(2, 5, dtype=torch.long)}, "received a dict"),
        (torch.zeros(2, 5, dtype=torch.long), "torch.int64 tensor of shape (2, 5)"),  # token ids, not audio
        (torch.zeros(2, 3, 4, 8, 8), "shape (2, 3, 4, 8, 8)"),  # a video
    ],
)
def test_unsupported_inputs_are_named(inputs, named):
    with pytest.raises(MisconfigurationException, match=r"augments images .* Remove the callback") as info:
        TTA().views(inputs)
    assert named in str(info.value)


def test_unsupported_input_stops_a_predict_run_and_restores_forward():
    model = DictInputs()
    loader = DataLoader(TensorDataset(torch.zeros(4, 5, dtype=torch.long)), batch_size=2)
    with pytest.raises(MisconfigurationException, match="received a dict"):
        trainer(TTA()).predict(model, loader)
    assert "forward" not in model.__dict__


def test_run_time_misfits_are_refused():
    with pytest.raises(MisconfigurationException, match="drop hflip"):
        TTA(hflip=True).views(torch.zeros(2, 800))
    with pytest.raises(MisconfigurationException, match="out of its 8 pixels"):
        TTA(shifts=(8,)).views(torch.zeros(2, 1, 8, 8))

    class Regressor(LightningModule):
        def forward(self, x):
            return x.float().mean(dim=(1, 2, 3))  # (B,)

        def predict_step(self, batch, batch_idx):
            return self(batch[0])

    with pytest.raises(MisconfigurationException, match=r"logits \(B, num_classes\), but it returned \(5,\)"):
        trainer(TTA()).predict(Regressor(), image_loader())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shifts": (0, 1)}, "holds 0"),
        ({"shifts": (1, 1)}, "repeats an offset"),
        ({"shifts": (1.5,)}, "ints"),
        ({"shifts": (True,)}, "ints"),
        ({"hflip": "yes"}, "true or false"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TTA(**kwargs)


def test_cli_adds_the_callback_with_its_options():
    cli = main(
        ["--config", "vision/digits", "--trainer.callbacks+=callbacks.tta.TestTimeAugmentation",
         "--trainer.callbacks.shifts=[-1,1]"],
        run=False,
    )  # fmt: skip
    (tta,) = [c for c in cli.trainer.callbacks if isinstance(c, TTA)]
    assert tta.shifts == (-1, 1) and not tta.hflip
