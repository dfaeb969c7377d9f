"""``recipe export``: a checkpoint as one deployable file that runs without this package.

    recipe export --ckpt_path runs/vision/digits/version_0/checkpoints/last.ckpt --format onnx
    recipe export --ckpt_path CKPT --format torchscript
    recipe export --ckpt_path CKPT --format int8 [--config vision/mnist --data.data_dir DIR]

The file takes inputs as the DataModule yields them (images as float32 ``(B, C, H, W)`` in ``[0, 1]``, waveforms as
float32 ``(B, num_samples)``), with any batch size, and returns class probabilities ``(B, num_classes)``: the
module's input normalisation (or log-mel front end) is inside it, and so is the softmax. The class names travel in
the file's metadata (ONNX ``metadata_props["class_names"]``, TorchScript extra file ``class_names.json``).

* ``onnx``: ``torch.onnx.export`` (the ``torch.export``-based exporter); run it with ``onnxruntime.InferenceSession``.
* ``torchscript``: the module traced; run it with ``torch.jit.load``. PyTorch deprecates TorchScript since 2.10,
  so prefer ``onnx`` for new deployments.
* ``int8``: the ONNX model with static int8 quantization by ONNX Runtime (``quantize_static``: QDQ format, int8
  per-channel weights, uint8 activations calibrated on a few training batches); run it with onnxruntime, whose
  CPU kernels then compute convolutions and matrix products in int8. Why this path: torch 2.11 deprecates
  ``torch.ao.quantization`` (FX graph mode, which also cannot trace a network whose control flow reads shapes, as
  ``CompactResNet`` does) and moved PT2E quantization to ``torchao``, whose int8 kernels come from compiling with
  Inductor at load time rather than from a file that reloads anywhere. int8 files are about 3.5x smaller than the
  float weights; whether they are faster depends on the network (``benchmarks/export_models.py`` measures it): on
  one CPU thread, 3x faster than float ONNX for digits' CompactResNet, 1.6x slower for MNIST's 16-channel ConvNet,
  whose narrow convolutions ONNX Runtime's float kernels run better than its int8 ones.

Every export is checked before the command returns: the file is reloaded with its runtime and compared with the
checkpoint (the largest probability difference for onnx and torchscript; test accuracy of both for int8).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn

from core.checkpoints import load_module
from lightning_modules.classifier import Classifier
from recipes import catalog
from recipes.errors import UsageError

Format = Literal["onnx", "torchscript", "int8"]
FORMATS: tuple[str, ...] = get_args(Format)
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "int8": ".int8.onnx"}
INPUT_NAME, OUTPUT_NAME = "inputs", "probabilities"
#: Largest probability difference an ONNX or TorchScript export may show against the checkpoint (float32 reordering).
TOLERANCE = 1e-4


class Probabilities(nn.Module):
    """A classifier's ``forward`` followed by the softmax: ``(B, ...) -> (B, num_classes)`` probabilities.

    Args:
        logits: The module whose ``forward`` gives class logits ``(B, num_classes)`` from raw inputs.
    """

    def __init__(self, logits: nn.Module) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.logits(inputs).softmax(dim=-1)


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The export options and the ``--data.*`` flags (which go to the DataModule's parser unchanged)."""
    parser = _Parser(
        prog="recipe export",
        description="Write a checkpoint as one file that runs without this package: raw inputs as the DataModule "
        "yields them (images: float32 (batch, C, H, W) in [0, 1]) in, class probabilities out, normalisation inside.",
    )
    parser.add_argument("--ckpt_path", required=True, metavar="PATH", help="checkpoint written by `recipe fit`")
    parser.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="onnx; torchscript (deprecated by PyTorch since 2.10: prefer onnx); int8 (statically quantized ONNX)",
    )
    parser.add_argument(
        "--output",
        metavar="FILE",
        help="file to write; default: beside the checkpoint, <stem>.onnx|.torchscript.pt|.int8.onnx",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="RECIPE",
        help="int8 only: recipe name or YAML whose data section gives the calibration and test data; default: the "
        "config.yaml beside the checkpoint. --data.* flags (e.g. --data.data_dir DIR) change single values",
    )
    parser.add_argument(
        "--calibration_batches", type=int, default=8, metavar="N", help="int8 only: training batches to calibrate"
    )
    args, rest = parser.parse_known_args(argv)
    # A "--data.x value" flag's value is the next word; "--data.x=value" is one word.
    takes_next = [a.startswith("--data.") and "=" not in a for a in rest]
    data_flags = [a for i, a in enumerate(rest) if a.startswith("--data.") or (i and takes_next[i - 1])]
    others = [a for a in rest if a not in data_flags]
    if others:
        raise UsageError(f"recipe export does not take '{others[0]}'. See `recipe export --help`.")
    if args.calibration_batches < 1:
        raise UsageError(f"--calibration_batches must be at least 1, got {args.calibration_batches}")
    if args.format != "int8" and (args.config or data_flags):
        raise UsageError(f"--config and --data.* give int8's calibration data; --format {args.format} needs none")
    return args, data_flags


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one `error:` line through the recipe command, not argparse's usage
        raise UsageError(f"{message}. See `recipe export --help`.")


def main(argv: list[str]) -> Path:
    """Run ``recipe export`` with ``argv`` (the words after ``export``); returns the written file's path."""
    args, data_flags = parse(argv)
    module = load_module(args.ckpt_path)
    example = _example_input(module, args.format, args.ckpt_path)
    output = _output_path(args.ckpt_path, args.format, args.output, args.overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    class_names = list(getattr(module, "class_names", []))
    wrapped = Probabilities(module).eval()
    if args.format in ("onnx", "torchscript"):
        write, load = (to_onnx, _onnx_runner) if args.format == "onnx" else (to_torchscript, _torchscript_runner)
        write(wrapped, example, output, class_names)
        gap = _check_close(module, load(output), example)
        runtime = "onnxruntime" if args.format == "onnx" else "torch.jit.load"
        print(f"reloaded with {runtime}: probabilities within {gap:.1e} of the checkpoint's")
    else:
        data = calibration_data(module, args.ckpt_path, args.config, data_flags, args.calibration_batches)
        given = tuple(data.calibration[0].shape[1:])
        if given != tuple(example.shape[1:]):
            raise UsageError(
                f"the data gives inputs of shape (batch, {', '.join(map(str, given))}) but the checkpoint's model "
                f"takes (batch, {', '.join(map(str, example.shape[1:]))}); give --config the recipe it was trained on"
            )
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "model.onnx"
            to_onnx(wrapped, example, fp32, class_names)
            quantize_int8(fp32, output, data.calibration)
        before, after, agree = _accuracies(module, _onnx_runner(output), data.test)
        print(
            f"test accuracy on {sum(len(y) for _, y in data.test)} examples: checkpoint {before:.4f}, "
            f"int8 {after:.4f}; same class for {agree:.2%}"
        )
    size = output.stat().st_size / 2**20
    shape = ", ".join(["batch", *map(str, example.shape[1:])])
    print(
        f"wrote {output} ({size:.2f} MiB): input '{INPUT_NAME}' float32 ({shape}) -> output '{OUTPUT_NAME}' "
        f"(batch, {len(class_names) or '?'})"
    )
    return output


def _example_input(module: LightningModule, fmt: str, path: str) -> torch.Tensor:
    """A batch of the module's raw input (its ``example_input_array`` shape), or one line on why it cannot export."""
    example = getattr(module, "example_input_array", None)
    name = type(module).__name__
    if not isinstance(module, Classifier) or not isinstance(example, torch.Tensor):
        raise UsageError(
            f"recipe export writes classifiers of one input tensor (ImageClassifier, AudioClassifier), not {name} "
            f"('{path}'). Export it from Python with torch.onnx.export on the module."
        )
    if fmt == "int8" and getattr(module, "front_end", None) is not None:
        # Static quantization would also quantize the mel filter bank's MatMul, whose inputs span ~10 decades.
        raise UsageError(f"--format int8 supports image classifiers; export this {name} with --format onnx")
    return torch.rand(2, *example.shape[1:])  # in [0, 1], the range of images as DataModules yield them


def _output_path(ckpt_path: str, fmt: str, output: str | None, overwrite: bool) -> Path:
    path = Path(output) if output else Path(ckpt_path).with_suffix(SUFFIXES[fmt])
    if path.exists() and not overwrite:
        raise UsageError(f"{path} exists. Pass --overwrite to replace it, or --output to write elsewhere.")
    return path


def to_onnx(model: nn.Module, example: torch.Tensor, path: Path, class_names: list[str]) -> None:
    """Write ``model`` as one ONNX file with a dynamic batch dimension and the class names in its metadata."""
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)  # inside torch.export
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            dynamic_shapes=({0: batch},),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            verbose=False,
        )
    program.model.metadata_props["class_names"] = json.dumps(class_names)
    program.save(str(path), external_data=False)  # weights inside: one file to ship


def to_torchscript(model: Probabilities, example: torch.Tensor, path: Path, class_names: list[str]) -> None:
    """Write ``model`` traced as TorchScript, with the class names as the extra file ``class_names.json``."""
    with warnings.catch_warnings():
        # PyTorch and Lightning deprecate TorchScript (said once in `recipe export --help`), and the tracer warns
        # about shape-dependent Python branches, which the check after export covers for other batch sizes.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*(to_torchscript|Converting a tensor to a Python).*")
        # Lightning's to_torchscript traces a LightningModule without touching its (absent) trainer, which plain
        # torch.jit.trace would; the softmax wrapper around the traced module is then scripted.
        traced = model.logits.to_torchscript(method="trace", example_inputs=example)
        scripted = torch.jit.script(Probabilities(traced))
        torch.jit.save(scripted, str(path), _extra_files={"class_names.json": json.dumps(class_names)})


def quantize_int8(fp32: Path, output: Path, calibration: list[torch.Tensor]) -> None:
    """Statically quantize the ONNX model at ``fp32`` to int8 with ONNX Runtime, calibrated on ``calibration``.

    The graph is first optimised (batch norms folded into convolutions) so that the quantized convolutions are the
    fused ones. QDQ format with int8 per-channel weights and uint8 activations (min-max ranges), the layout ONNX
    Runtime fuses into int8 ``QLinearConv`` and ``QGemm`` kernels on x86 and ARM CPUs. On x86 CPUs without VNNI
    its u8s8 kernels may saturate; ONNX Runtime then recommends ``reduce_range``, not needed on current CPUs.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration)

        def get_next(self) -> dict | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch.numpy()}

    prepared = fp32.with_suffix(".prepared.onnx")
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(
        str(prepared),
        str(output),
        Batches(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        # The softmax stays float: 8-bit probabilities would tie classes of close scores.
        op_types_to_quantize=["Conv", "Gemm", "MatMul", "Add", "Relu", "MaxPool", "GlobalAveragePool", "ReduceMax"],
    )


def _torchscript_runner(path: Path):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated", category=DeprecationWarning)
        return torch.jit.load(str(path))


def _onnx_runner(path: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])


@torch.no_grad()
def _check_close(module: LightningModule, exported, example: torch.Tensor) -> float:
    """Refuse an export whose probabilities differ from the checkpoint's (a trace that fixed a shape, say)."""
    inputs = torch.rand(3, *example.shape[1:])  # another batch size than the one exported with
    expected = module(inputs).softmax(dim=-1)
    gap = float((exported(inputs) - expected).abs().max())
    if gap > TOLERANCE:
        raise UsageError(
            f"the exported model's probabilities differ from the checkpoint's by up to {gap:.2g} (> {TOLERANCE}); "
            "this network does not export faithfully in this format. Try another --format."
        )
    return gap


@torch.no_grad()
def _accuracies(module: LightningModule, exported, test: list[tuple[torch.Tensor, torch.Tensor]]):
    """Accuracy of the checkpoint and of the exported model on ``test``, and the share of equal predictions."""
    right_before = right_after = same = total = 0
    for inputs, targets in test:
        before, after = module(inputs).argmax(dim=-1), exported(inputs).argmax(dim=-1)
        right_before += int((before == targets).sum())
        right_after += int((after == targets).sum())
        same += int((before == after).sum())
        total += len(targets)
    return right_before / total, right_after / total, same / total


@dataclass
class EvaluationData:
    """Raw inputs as the model receives them: calibration batches and labelled test batches."""

    calibration: list[torch.Tensor]
    test: list[tuple[torch.Tensor, torch.Tensor]]


def calibration_data(
    module: LightningModule, ckpt_path: str, configs: list[str], data_flags: list[str], batches: int
) -> EvaluationData:
    """The first ``batches`` training batches (unaugmented) and the test split of the recipe's DataModule."""
    datamodule = _datamodule(ckpt_path, configs, data_flags)
    datamodule.prepare_data()
    for stage in ("fit", "test"):
        datamodule.setup(stage)

    def inputs_and_targets(batch) -> tuple[torch.Tensor, torch.Tensor]:
        # The DataModule's own device-side step (uint8 to [0, 1] floats); without a trainer it does not augment.
        inputs, targets = module.split_batch(datamodule.on_after_batch_transfer(batch, 0))
        return inputs.float(), targets

    calibration = []
    for batch in datamodule.train_dataloader():
        calibration.append(inputs_and_targets(batch)[0])
        if len(calibration) == batches:
            break
    test = [inputs_and_targets(batch) for batch in datamodule.test_dataloader()]
    return EvaluationData(calibration, test)


def _datamodule(ckpt_path: str, configs: list[str], data_flags: list[str]) -> LightningDataModule:
    """The DataModule of ``configs`` (default: the run's ``config.yaml`` beside the checkpoint) and ``data_flags``."""
    from jsonargparse import ArgumentError, ArgumentParser

    paths = []
    for name in configs or []:
        path = catalog.find(name)
        if path is None:
            raise UsageError(f"no config file or packaged recipe named '{name}' (`recipe list` shows them all)")
        paths.append(path)
    if not paths:
        beside = Path(ckpt_path).parent / "config.yaml"
        if not beside.is_file():
            raise UsageError(
                f"--format int8 calibrates on the recipe's data, and there is no config.yaml beside {ckpt_path}. "
                "Give --config RECIPE (e.g. vision/digits) and any --data.* flags (e.g. --data.data_dir DIR)."
            )
        paths.append(beside)
    sections = [catalog.merged(path).get("data") for path in paths]
    sections = [section for section in sections if section]
    if not sections:
        raise UsageError(f"{', '.join(map(str, paths))} has no data section to calibrate int8 on; give --config")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    try:
        parsed = parser.parse_args([f"--data={json.dumps(section)}" for section in sections] + data_flags)
        return parser.instantiate_classes(parsed).data
    except (ArgumentError, ValueError, TypeError) as err:
        raise UsageError(f"cannot build the DataModule: {str(err).strip().splitlines()[0]}") from None
