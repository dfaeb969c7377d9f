"""What Lightning costs on top of a hand-written loop, and how close the MNIST network runs to this CPU's peak.

Part 1, Lightning overhead on ``vision/digits``. The recipe is instantiated through ``recipes.cli.main``
exactly as ``recipe fit --config vision/digits --trainer.logger=false`` builds it (network, optimizer, one-cycle
schedule, seed, DataModule), and the recipe's own Trainer fits the recipe's LightningModule. A deep copy of the
freshly initialised network is trained alongside by a plain PyTorch loop on the same DataModule's loaders, with
the DataModule's batch transform written out by hand (float, per-image random translate, normalisation by the
training statistics) and the same parameter groups, optimizer, scheduler and label smoothing. The two are
interleaved: one plain epoch runs between two Lightning epochs, outside Lightning's timed spans, so a neighbour's
load on the shared cores falls on both sides alike. Per epoch two times are taken on both sides:

* ``train``: the training batches only (Lightning: ``on_train_epoch_start`` to the last ``on_train_batch_end``);
* ``epoch``: training plus a validation pass. Lightning's also holds what the recipe does at each epoch end
  (validation metrics, the best/last checkpoints it writes): one ``on_train_epoch_start`` to the next.

The ratio is Lightning / plain of the medians over the epochs after ``--warmup``. It is measured twice: with the
recipe's defaults (progress bar on; the model summary prints once per fit, outside the epochs) and with
``enable_progress_bar=False`` so the bar's share shows. Neither side has a logger (``--trainer.logger=false``). The
headline figure is printed on a line of its own for scripts to read:

    overhead ratio (train, progress bar off): 1.10

It is the cost of Lightning per epoch at a fixed number of steps, not a time to reach an accuracy: that comparison
(a whole ``vision/mnist`` fit to 99% against a lean loop) is ``benchmarks/mnist_vs_recipe.py``.

Part 2, the ``vision/mnist`` network's throughput. The network is built from ``recipes/vision/mnist.yaml`` the
same way and trained on random 28x28 batches of the recipe's batch size with the recipe's optimizer, in fp32 and
under ``torch.autocast("cpu", dtype=torch.bfloat16)``, channels-last (as the recipe runs) and contiguous. The
achieved FLOP/s (training FLOPs per sample from ``torch.utils.flop_counter.FlopCounterMode`` over one forward and
backward, convolutions and matmuls only) is compared with this machine's measured matmul peak (square fp32 and
bf16 matmuls, each measured within ``--peak-seconds``). On a CPU without native bf16 (no AVX-512 BF16, AMX or Arm
BF16: ``core.precision.cpu_has_native_bf16``) PyTorch emulates bf16 an order of magnitude slower than fp32, so the
bf16 peak is measured on a side it can finish in time and the bf16 training rows are skipped, with a line saying
so. ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2`` makes an AVX-512 machine behave as an AVX2-only one.

    uv run python benchmarks/overhead.py                          # both parts, under a minute on 2 idle cores
    uv run python benchmarks/overhead.py --epochs 12 --skip-mnist # overhead only, more epochs
    uv run python benchmarks/overhead.py --skip-digits --steps 40

Arguments:
    --epochs       Epochs per fit in part 1 (both sides). Default: 8.
    --warmup       Leading epochs left out of the medians. Default: 1.
    --steps        Timed training steps per configuration in part 2. Default: 20.
    --matmul-size  Largest side of the square matmuls that measure the peak. Default: 2048.
    --peak-seconds About how long each dtype's peak is measured; the side shrinks below --matmul-size when one
                   product would not fit. Default: 2.
    --recipe-arg   Extra ``recipe fit`` argument for part 1, e.g. ``--recipe-arg=--data.init_args.batch_size=128``
                   (the plain loop follows the module's and DataModule's settings); repeatable.
    --skip-digits  Skip part 1.
    --skip-mnist   Skip part 2.

Everything runs in one process, after the imports; part 2 takes about as long on any CPU. Interleaving keeps the
ratios fair on a shared machine, but the absolute numbers (and the peak) drop while another job runs: see the busy
share printed at the start.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from typing_extensions import override

from core.precision import cpu_has_native_bf16
from datamodules.in_memory import random_hflip, random_translate
from recipes.cli import main as recipe_command

DIGITS = "vision/digits"
MNIST = "vision/mnist"


def build_recipe(recipe: str, root_dir: str, *overrides: str) -> LightningCLI:
    """Build a packaged recipe as ``recipe fit --config RECIPE --trainer.logger=false`` does, without running it."""
    args = ["--config", recipe, "--trainer.logger=false", f"--trainer.default_root_dir={root_dir}", *overrides]
    return recipe_command(args, run=False)


def param_groups(net: nn.Module) -> list[dict]:
    """The ImageClassifier's groups: weight decay on matrices and kernels, none on biases and norm scales."""
    params = [p for p in net.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2]},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def plain_epochs(
    net: nn.Module, module: LightningModule, datamodule: LightningDataModule, epochs: int
) -> Iterator[tuple[float, float, float]]:
    """Train ``net`` by hand as the recipe's module and DataModule would, one epoch per ``next()``.

    Yields:
        (training seconds, training + validation seconds, validation accuracy) of each epoch.
    """
    if module.mix is not None:
        raise NotImplementedError("the plain loop does not mirror mixup/CutMix; benchmark a recipe without them")
    datamodule.setup("fit")
    hp, data_hp = module.hparams, datamodule.hparams
    mean, std = (torch.tensor(s).view(1, -1, 1, 1) for s in datamodule.normalization)
    memory_format = torch.channels_last if hp.channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format)

    def transform(images: torch.Tensor, train: bool) -> torch.Tensor:  # on_after_batch_transfer, then forward's
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        if train and data_hp.translate:
            x = random_translate(x, data_hp.translate)
        if train and data_hp.hflip:
            x = random_hflip(x)
        return ((x - mean) / std).contiguous(memory_format=memory_format)

    train_loader, val_loader = datamodule.train_dataloader(), datamodule.val_dataloader()
    optimizer = module.optimizer(param_groups(net))
    scheduler = None
    if module.lr_scheduler is not None:
        fill = {}
        if getattr(module.lr_scheduler, "keywords", {}).get("total_steps", 0) is None:
            fill["total_steps"] = epochs * len(train_loader)  # what the module fills in from the trainer
        scheduler = module.lr_scheduler(optimizer, **fill)

    for _ in range(epochs):
        start = time.perf_counter()
        net.train()
        for images, labels in train_loader:
            loss = F.cross_entropy(net(transform(images, True)), labels, label_smoothing=hp.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
        train_seconds = time.perf_counter() - start
        net.eval()
        correct = total = 0
        with torch.no_grad():
            for images, labels in val_loader:
                correct += (net(transform(images, False)).argmax(-1) == labels).sum().item()
                total += len(labels)
        yield train_seconds, time.perf_counter() - start, correct / total


class InterleavedEpochTimer(Callback):
    """Time each Lightning training epoch, and run and time one plain epoch before each, outside the timed spans.

    Args:
        plain: The plain loop's epochs (:func:`plain_epochs`), advanced once per Lightning epoch.
    """

    def __init__(self, plain: Iterator[tuple[float, float, float]]) -> None:
        self.plain = plain
        self.lightning_train: list[float] = []
        self.lightning_epoch: list[float] = []
        self.plain_train: list[float] = []
        self.plain_epoch: list[float] = []
        self.plain_accuracy = 0.0
        self._start: float | None = None
        self._last_batch_end = 0.0

    def _close_epoch(self) -> None:
        end = time.perf_counter()
        if self._start is not None:
            self.lightning_epoch.append(end - self._start)
            self.lightning_train.append(self._last_batch_end - self._start)
        self._start = None

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close_epoch()  # the previous epoch ends where this one starts: its checkpoints are written by then
        train_seconds, epoch_seconds, self.plain_accuracy = next(self.plain)
        self.plain_train.append(train_seconds)
        self.plain_epoch.append(epoch_seconds)
        self._start = time.perf_counter()

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        self._last_batch_end = time.perf_counter()

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close_epoch()


def _median(seconds: list[float], warmup: int) -> float:
    return statistics.median(seconds[warmup:])


def digits_overhead(epochs: int, warmup: int, extra: list[str]) -> None:
    variants = {
        "recipe defaults (progress bar on)": extra,
        "enable_progress_bar=False": [*extra, "--trainer.enable_progress_bar=false"],
    }
    rows, train_ratios = [], {}
    for label, overrides in variants.items():
        with tempfile.TemporaryDirectory() as root:
            cli = build_recipe(DIGITS, root, f"--trainer.max_epochs={epochs}", *overrides)
            # A copy of the freshly seeded network: both sides start from the same weights.
            timer = InterleavedEpochTimer(plain_epochs(copy.deepcopy(cli.model.net), cli.model, cli.datamodule, epochs))
            cli.trainer.callbacks.append(timer)
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        accuracy = f"{timer.plain_accuracy:.1%} / {float(cli.trainer.callback_metrics['val/acc']):.1%}"
        rows.append((label, "train", timer.plain_train, timer.lightning_train, accuracy))
        rows.append(("", "epoch", timer.plain_epoch, timer.lightning_epoch, ""))
        train_ratios[label] = _median(timer.lightning_train, warmup) / _median(timer.plain_train, warmup)

    datamodule = cli.datamodule
    print(
        f"\n== Lightning overhead per epoch: {DIGITS} ({type(cli.model.net).__name__}, batch "
        f"{datamodule.hparams.batch_size}, {len(datamodule.train_dataloader())} steps/epoch), epochs interleaved with "
        "the plain loop"
    )
    print(f"   median s/epoch over epochs {warmup + 1}-{epochs}; train = training batches, epoch = + validation")
    print("   (and for Lightning its epoch-end metrics and best/last checkpoints); no logger on either side.")
    print("   Time per epoch at equal steps, not time to an accuracy (benchmarks/mnist_vs_recipe.py times that).")
    print(f"   {'Lightning trainer':<35}{'part':<7}{'plain':>8}{'Lightning':>11}{'ratio':>7}{'val acc P / L':>16}")
    for label, part, plain, lightning, accuracy in rows:
        p, lt = _median(plain, warmup), _median(lightning, warmup)
        print(f"   {label:<35}{part:<7}{p:>8.3f}{lt:>11.3f}{lt / p:>7.2f}{accuracy:>16}")
    # One line in a fixed format: other checks read it.
    print(f"overhead ratio (train, progress bar off): {train_ratios['enable_progress_bar=False']:.2f}")


def matmul_peak(dtype: torch.dtype, max_size: int, seconds: float) -> tuple[float, int]:
    """FLOP/s of the fastest of a few square ``dtype`` matmuls measured within about ``seconds``, and their side.

    The side doubles from 128 towards ``max_size`` while the next side's product (8x the work) would take under a
    tenth of ``seconds``; products of the side reached then repeat, at most ten, until ``seconds`` run out. A dtype
    the CPU only emulates (bf16 without native support takes minutes over ten 2048 products) is measured on a side it
    can finish rather than stalling the benchmark.
    """
    size = min(128, max_size)
    while True:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b  # warm-up: oneDNN builds its kernel for the shape
        start = time.perf_counter()
        a @ b
        best = time.perf_counter() - start
        if 2 * size > max_size or 8 * best > seconds / 10:
            break
        size *= 2
    deadline = time.perf_counter() + seconds
    for _ in range(9):
        if time.perf_counter() > deadline:
            break
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best, size


def training_flops_per_sample(net: nn.Module, batch: int, side: int, channels: int) -> float:
    """Convolution and matmul FLOPs of one forward and backward pass, per sample."""
    net = copy.deepcopy(net)
    x = torch.randn(batch, channels, side, side)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    return counter.get_total_flops() / batch


def training_step(
    net: nn.Module, module: LightningModule, x: torch.Tensor, bf16: bool, channels_last: bool
) -> Callable[[], None]:
    """One training step (forward, loss, backward, the recipe's optimizer) of a copy of ``net`` on the batch ``x``."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = copy.deepcopy(net).to(memory_format=memory_format).train()
    optimizer = module.optimizer(param_groups(net))
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, module.hparams.num_classes, (len(x),))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def mnist_throughput(steps: int, matmul_size: int, peak_seconds: float, bf16: bool, rounds: int = 4) -> None:
    """Time the MNIST network's training steps against the matmul peaks; bf16 autocast too when ``bf16``."""
    with tempfile.TemporaryDirectory() as root:
        cli = build_recipe(MNIST, root)
    module, datamodule = cli.model, cli.datamodule
    net, batch = module.net, datamodule.hparams.batch_size
    side, channels = datamodule.image_size, datamodule.in_channels
    n_params = sum(p.numel() for p in net.parameters())
    flops = training_flops_per_sample(net, batch, side, channels)
    peaks = {dtype: matmul_peak(dtype, matmul_size, peak_seconds) for dtype in (torch.float32, torch.bfloat16)}

    x = torch.randn(batch, channels, side, side)
    precisions = (False, True) if bf16 else (False,)
    configs = [(channels_last, autocast) for channels_last in (True, False) for autocast in precisions]
    steppers = {config: training_step(net, module, x, config[1], config[0]) for config in configs}
    seconds: dict[tuple[bool, bool], list[float]] = {config: [] for config in configs}
    for step in steppers.values():
        for _ in range(3):  # warm-up: oneDNN picks and caches its kernels per shape and format
            step()
    for _ in range(rounds):  # configurations take turns, so a neighbour's load falls on all of them
        for config, step in steppers.items():
            for _ in range(-(-steps // rounds)):
                start = time.perf_counter()
                step()
                seconds[config].append(time.perf_counter() - start)

    print(
        f"\n== {MNIST} network: {type(net).__name__}, {n_params:,} parameters, batch {batch}, "
        f"random {side}x{side} inputs, the recipe's optimizer"
    )
    print(f"   training FLOPs/sample (forward + backward, convolutions and matmuls): {flops / 1e6:.2f} MFLOP")
    (fp32_peak, fp32_side), (bf16_peak, bf16_side) = peaks[torch.float32], peaks[torch.bfloat16]
    print(
        f"   peak: fastest square matmul within {peak_seconds:g} s per dtype: fp32 {fp32_peak / 1e9:.0f} GFLOP/s "
        f"({fp32_side}x{fp32_side}), bf16 {bf16_peak / 1e9:.0f} GFLOP/s ({bf16_side}x{bf16_side})"
        + ("" if bf16 else ", emulated")
    )
    print("   samples/s from the median step time; share of the peak of the same precision")
    print(f"   {'precision':<15}{'layout':<15}{'samples/s':>10}{'GFLOP/s':>9}{'of peak':>9}")
    for (channels_last, autocast), times in seconds.items():
        rate = batch / statistics.median(times)
        achieved = rate * flops
        layout = "channels_last" if channels_last else "contiguous"
        precision = "bf16 autocast" if autocast else "fp32"
        peak = bf16_peak if autocast else fp32_peak
        print(f"   {precision:<15}{layout:<15}{rate:>10,.0f}{achieved / 1e9:>9.1f}{achieved / peak:>9.1%}")
    if not bf16:
        print(
            "   bf16 autocast rows skipped: this CPU has no native bf16 (no AVX-512 BF16, AMX or Arm BF16, or "
            "ONEDNN_MAX_CPU_ISA caps oneDNN below them), so PyTorch emulates it far slower than fp32"
        )


def busy_share(seconds: float = 1.0) -> float | None:
    """Share of the machine's CPU time spent by other processes over ``seconds`` (``None`` off Linux)."""
    try:
        with open("/proc/stat") as f:
            before = [int(v) for v in f.readline().split()[1:]]
        time.sleep(seconds)
        with open("/proc/stat") as f:
            after = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    delta = [b - a for a, b in zip(before, after, strict=True)]
    idle = delta[3] + delta[4]  # idle and iowait
    return 1.0 - idle / max(sum(delta), 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8, help="epochs per fit in part 1 (default: 8)")
    parser.add_argument("--warmup", type=int, default=1, help="leading epochs left out of the medians (default: 1)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration in part 2 (default: 20)")
    parser.add_argument(
        "--matmul-size", type=int, default=2048, help="largest side of the peak matmuls (default: 2048)"
    )
    parser.add_argument(
        "--peak-seconds", type=float, default=2.0, help="seconds to measure each dtype's matmul peak (default: 2)"
    )
    parser.add_argument(
        "--recipe-arg", action="append", default=[], help="extra `recipe fit` argument for part 1; repeatable"
    )
    parser.add_argument("--skip-digits", action="store_true", help="skip part 1 (Lightning overhead)")
    parser.add_argument("--skip-mnist", action="store_true", help="skip part 2 (MNIST network throughput)")
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.epochs <= args.warmup:
        parser.error("--epochs must exceed --warmup, and --warmup must be >= 0")
    if args.steps < 1 or args.matmul_size < 1 or args.peak_seconds <= 0:
        parser.error("--steps, --matmul-size and --peak-seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    busy = busy_share()
    bf16 = cpu_has_native_bf16()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{'native' if bf16 else 'no native'} bf16"
        + (f", {busy:.0%} busy with other work at start" if busy is not None else "")
        + (": expect noisy absolute numbers" if busy is not None and busy > 0.1 else "")
    )
    if not args.skip_digits:
        digits_overhead(args.epochs, args.warmup, args.recipe_arg)
    if not args.skip_mnist:
        mnist_throughput(args.steps, args.matmul_size, args.peak_seconds, bf16)


if __name__ == "__main__":
    main()
