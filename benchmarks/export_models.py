"""Exported models against their checkpoint: file size, CPU latency per batch and test accuracy, per format.

    uv run python benchmarks/export_models.py --recipe vision/digits
    uv run python benchmarks/export_models.py --recipe vision/mnist --data_dir /tmp/mnist   # the folder holding MNIST/
    uv run python benchmarks/export_models.py --ckpt_path runs/.../last.ckpt               # a checkpoint of your own

Without ``--ckpt_path`` the recipe is trained first (``recipe fit``, its full schedule) and its best checkpoint is
used. Then ``recipe export`` writes the ONNX, TorchScript and int8 ONNX files (int8 calibrated on the recipe's first
8 training batches) and each is scored on the whole test split and timed on one batch of test images: the median of
``--runs`` calls after 3 warm-up calls, with 1 and 2 threads (torch's intra-op threads; ONNX Runtime's
``intra_op_num_threads``). The checkpoint row runs the LightningModule in eager PyTorch; its size is the ``.ckpt``
file, which also holds the optimizer state, so the ``weights`` row gives the float32 parameters and buffers alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from core.checkpoints import load_module
from recipes.cli import main
from recipes.export import SUFFIXES, calibration_data

QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
FORMATS = ("onnx", "torchscript", "int8")


def train(recipe: str, data_dir: str | None, root: Path) -> str:
    """Fit ``recipe`` into ``root`` and return its best checkpoint."""
    data = [f"--data.init_args.data_dir={data_dir}"] if data_dir else []
    fit = main(["fit", "--config", recipe, *QUIET, *data, f"--trainer.default_root_dir={root}"])
    return fit.trainer.checkpoint_callback.best_model_path


def onnx_runner(path: Path, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"inputs": x.numpy()})[0])


def torch_runner(model: Callable, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        torch.set_num_threads(threads)
        with torch.no_grad():
            return model(x)

    return run


def median_ms(run: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, runs: int) -> float:
    for _ in range(3):
        run(batch)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def accuracy(run: Callable[[torch.Tensor], torch.Tensor], test: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    right = sum(int((run(x).argmax(dim=-1) == y).sum()) for x, y in test)
    return right / sum(len(y) for _, y in test)


def main_benchmark() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="vision/digits", help="recipe to train when no --ckpt_path is given")
    parser.add_argument("--ckpt_path", help="checkpoint to export; its run's config.yaml gives the data")
    parser.add_argument("--data_dir", help="--data.data_dir of the recipe (MNIST: the folder holding MNIST/)")
    parser.add_argument("--out", default="runs/export_benchmark", help="folder for the run and the exported files")
    parser.add_argument("--batch", type=int, default=256, help="images per timed batch")
    parser.add_argument("--runs", type=int, default=30, help="timed calls per format and thread count")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to time")
    args = parser.parse_args()

    out = Path(args.out) / args.recipe.replace("/", "_")
    ckpt = args.ckpt_path or train(args.recipe, args.data_dir, out / "runs")
    files = {fmt: out / f"model{SUFFIXES[fmt]}" for fmt in FORMATS}
    for fmt, path in files.items():
        main(["export", "--ckpt_path", ckpt, "--format", fmt, "--output", str(path), "--overwrite"])

    module = load_module(ckpt)
    test = calibration_data(module, ckpt, [], [], batches=1).test
    images = torch.cat([x for x, _ in test])
    batch = images[: args.batch]
    weights = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    rows = [("checkpoint (eager)", Path(ckpt).stat().st_size, lambda t: torch_runner(module, t))]
    rows.append(("weights (float32)", weights, None))
    with torch.no_grad():
        scripted = torch.jit.load(str(files["torchscript"]))
    rows += [
        ("onnx", files["onnx"].stat().st_size, lambda t: onnx_runner(files["onnx"], t)),
        ("torchscript", files["torchscript"].stat().st_size, lambda t: torch_runner(scripted, t)),
        ("int8 (onnx)", files["int8"].stat().st_size, lambda t: onnx_runner(files["int8"], t)),
    ]
    threads_header = " | ".join(f"ms/batch {t} thr" for t in args.threads)
    print(f"\n{args.recipe}: {len(images)} test images, batch {len(batch)}, median of {args.runs} calls")
    print(f"| format | size (KiB) | {threads_header} | test acc |")
    print("|---|---:|" + "---:|" * len(args.threads) + "---:|")
    for name, size, make in rows:
        if make is None:
            print(f"| {name} | {size / 1024:.0f} |" + " |" * len(args.threads) + " |")
            continue
        latencies = " | ".join(f"{median_ms(make(t), batch, args.runs):.2f}" for t in args.threads)
        print(f"| {name} | {size / 1024:.0f} | {latencies} | {accuracy(make(1), test):.4f} |")


if __name__ == "__main__":
    main_benchmark()
