"""``recipe export``: the written file reloads without this package and gives the checkpoint's probabilities."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning
import pytest
import torch

from lightning_modules.audio import AudioClassifier
from lightning_modules.autoencoder import Autoencoder
from lightning_modules.vision import ImageClassifier
from recipes.cli import main

#: The largest accuracy drop int8 may cost on the digits test split, and the least share of unchanged predictions.
INT8_MAX_DROP, INT8_MIN_AGREEMENT = 0.02, 0.95

#: Runs the exported file in a fresh interpreter in which this project's packages and Lightning cannot be imported.
RELOAD = """
import sys
for name in ("recipes", "core", "lightning_modules", "datamodules", "callbacks", "lightning"):
    sys.modules[name] = None  # an import of any of them now fails
import numpy as np, torch
path, fmt, inputs, out = sys.argv[1:]
x = torch.load(inputs)
if fmt == "torchscript":
    probs = torch.jit.load(path)(x).detach().numpy()
else:
    import onnxruntime as ort
    probs = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"inputs": x.numpy()})[0]
np.save(out, probs)
"""


def _export(*args: str) -> None:
    assert main(["export", *args]) is None


def _reload_elsewhere(path: Path, fmt: str, inputs: torch.Tensor, tmp: Path) -> torch.Tensor:
    torch.save(inputs, tmp / "inputs.pt")
    out = tmp / "probs.npy"
    subprocess.run([sys.executable, "-c", RELOAD, str(path), fmt, str(tmp / "inputs.pt"), str(out)], check=True)
    import numpy as np

    return torch.from_numpy(np.load(out))


def _error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def _hand_written_checkpoint(module: lightning.pytorch.LightningModule, path: Path) -> str:
    """A checkpoint as `recipe fit` writes one (class path among the hyperparameters), without a training run."""
    cls = type(module)
    # Classes (the optimizer factory, a default network) are left out, their defaults rebuild them: a class would
    # need unsafe unpickling to load.
    plain = (bool, int, float, str, tuple, list, dict, type(None))
    hparams = {k: v for k, v in module.hparams.items() if isinstance(v, plain)}
    hparams["_class_path"] = f"{cls.__module__}.{cls.__qualname__}"
    version = lightning.__version__
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": version}, path
    )
    return str(path)


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory) -> str:
    """The digits recipe trained for 40 steps (about 90% test accuracy): a checkpoint with real statistics."""
    root = tmp_path_factory.mktemp("digits_run")
    fit = main(
        [
            "fit",
            "--config=vision/digits",
            "--trainer.max_steps=40",
            "--trainer.limit_val_batches=1",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={root}",
        ]
    )
    return fit.trainer.checkpoint_callback.last_model_path


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_export_reloads_without_this_package_and_gives_the_checkpoints_probabilities(
    digits_checkpoint, fmt, tmp_path
):
    output = tmp_path / f"digits.{fmt}"
    _export("--ckpt_path", digits_checkpoint, "--format", fmt, "--output", str(output))
    model = ImageClassifier.load_from_checkpoint(digits_checkpoint).eval()
    assert not torch.equal(model.input_std, torch.ones_like(model.input_std))  # normalisation must travel inside
    images = torch.rand(5, 1, 8, 8)  # another batch size than the export's example
    with torch.no_grad():
        expected = model(images).softmax(dim=1)
    assert torch.allclose(_reload_elsewhere(output, fmt, images, tmp_path), expected, atol=1e-5)


@pytest.mark.slow
def test_int8_keeps_the_accuracy_and_carries_the_class_names(digits_checkpoint, tmp_path, capsys):
    output = tmp_path / "digits.int8.onnx"
    _export("--ckpt_path", digits_checkpoint, "--format", "int8", "--output", str(output))
    report = capsys.readouterr().out
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(output))
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)  # really quantized
    assert json.loads({p.key: p.value for p in model.metadata_props}["class_names"]) == [str(i) for i in range(10)]

    from datamodules.vision import DigitsDataModule

    data = DigitsDataModule()
    data.setup("test")
    images, labels = data.splits["test"].images, data.splits["test"].labels
    checkpoint = ImageClassifier.load_from_checkpoint(digits_checkpoint).eval()
    float_bytes = sum(t.numel() * t.element_size() for t in checkpoint.state_dict().values())
    assert output.stat().st_size < 0.4 * float_bytes  # int8 weights: about a quarter, plus scales and the graph
    with torch.no_grad():
        before = checkpoint(images).argmax(dim=1)
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    after = torch.from_numpy(session.run(None, {"inputs": images.numpy()})[0]).argmax(dim=1)
    accuracy_before, accuracy_after = (before == labels).float().mean(), (after == labels).float().mean()
    assert accuracy_before > 0.6  # a model with something to lose
    assert accuracy_after >= accuracy_before - INT8_MAX_DROP
    assert (before == after).float().mean() >= INT8_MIN_AGREEMENT
    assert f"checkpoint {accuracy_before:.4f}, int8 {accuracy_after:.4f}" in report  # the command says the same


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_audio_export_holds_the_log_mel_front_end(fmt, tmp_path):
    torch.manual_seed(0)
    model = AudioClassifier(num_classes=4, sample_rate=8000, num_samples=4000).eval()
    ckpt = _hand_written_checkpoint(model, tmp_path / "audio.ckpt")
    _export("--ckpt_path", ckpt, "--format", fmt)
    waveforms = torch.randn(3, 4000) * 0.1
    with torch.no_grad():
        expected = model(waveforms).softmax(dim=1)
    output = tmp_path / f"audio{'.onnx' if fmt == 'onnx' else '.torchscript.pt'}"
    assert torch.allclose(_reload_elsewhere(output, fmt, waveforms, tmp_path), expected, atol=1e-5)


def test_int8_refuses_an_audio_model_and_names_the_format_that_works(capsys, tmp_path):
    model = AudioClassifier(num_classes=4, sample_rate=8000, num_samples=4000)
    err = _error(capsys, "--ckpt_path", _hand_written_checkpoint(model, tmp_path / "a.ckpt"), "--format", "int8")
    assert "int8 supports image classifiers" in err and "--format onnx" in err


def test_a_missing_checkpoint_is_one_error_line(capsys):
    err = _error(capsys, "--ckpt_path", "nowhere.ckpt", "--format", "onnx")
    assert "no checkpoint file at 'nowhere.ckpt'" in err


def test_an_unknown_format_names_the_formats(capsys):
    err = _error(capsys, "--ckpt_path", "x.ckpt", "--format", "tflite")
    assert "invalid choice: 'tflite' (choose from 'onnx', 'torchscript', 'int8')" in err


def test_a_module_that_is_not_a_one_tensor_classifier_is_refused(capsys, tmp_path):
    ckpt = _hand_written_checkpoint(Autoencoder(in_channels=1, image_size=8), tmp_path / "ae.ckpt")
    err = _error(capsys, "--ckpt_path", ckpt, "--format", "onnx")
    assert "not Autoencoder" in err and "ImageClassifier" in err
    assert not (tmp_path / "ae.onnx").exists()


def test_an_existing_output_is_not_overwritten(capsys, tmp_path):
    ckpt = _hand_written_checkpoint(ImageClassifier(num_classes=3, in_channels=1, image_size=8), tmp_path / "m.ckpt")
    (tmp_path / "m.onnx").write_text("keep me")
    err = _error(capsys, "--ckpt_path", ckpt, "--format", "onnx")
    assert "m.onnx exists. Pass --overwrite" in err
    assert (tmp_path / "m.onnx").read_text() == "keep me"


def test_int8_without_data_asks_for_a_recipe(capsys, tmp_path):
    ckpt = _hand_written_checkpoint(ImageClassifier(num_classes=3, in_channels=1, image_size=8), tmp_path / "m.ckpt")
    err = _error(capsys, "--ckpt_path", ckpt, "--format", "int8")
    assert "no config.yaml beside" in err and "--config RECIPE" in err


def test_data_flags_are_refused_where_no_data_is_read(capsys):
    err = _error(capsys, "--ckpt_path", "x.ckpt", "--format", "onnx", "--data.data_dir", "somewhere")
    assert "--format onnx needs none" in err
