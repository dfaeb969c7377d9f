"""What Lightning costs on top of a hand-written loop, and how close the MNIST network runs to this CPU's peak.

Part 1, Lightning overhead on ``vision/digits``. The recipe is instantiated through ``recipes.cli.RecipeCLI``
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
``enable_progress_bar=False`` so the bar's share shows. Neither side has a logger (``--trainer.logger=false``).

Part 2, the ``vision/mnist`` network's throughput. The network is built from ``recipes/vision/mnist.yaml`` the
same way and trained on random 28x28 batches of the recipe's batch size with the recipe's optimizer, in fp32 and
under ``torch.autocast("cpu", dtype=torch.bfloat16)``, channels-last (as the recipe runs) and contiguous. The
achieved FLOP/s (training FLOPs per sample from ``torch.utils.flop_counter.FlopCounterMode`` over one forward and
backward, convolutions and matmuls only) is compared with this machine's measured matmul peak (square fp32 and
bf16 matmuls).

    uv run python benchmarks/overhead.py                          # both parts, under a minute on 2 idle cores
    uv run python benchmarks/overhead.py --epochs 12 --skip-mnist # overhead only, more epochs
    uv run python benchmarks/overhead.py --skip-digits --steps 40

Arguments:
    --epochs       Epochs per fit in part 1 (both sides). Default: 8.
    --warmup       Leading epochs left out of the medians. Default: 1.
    --steps        Timed training steps per configuration in part 2. Default: 20.
    --matmul-size  Side of the square matmuls that measure the peak. Default: 2048.
    --recipe-arg   Extra ``recipe fit`` argument for part 1, e.g. ``--recipe-arg=--data.init_args.batch_size=128``
                   (the plain loop follows the module's and DataModule's settings); repeatable.
    --skip-digits  Skip part 1.
    --skip-mnist   Skip part 2.

Everything runs in one process, after the imports. Interleaving keeps the ratios fair on a shared machine, but
the absolute numbers (and the peak) drop while another job runs: see the busy share printed at the start.
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
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from typing_extensions import override

from datamodules.in_memory import random_hflip, random_translate
from recipes import catalog
from recipes.cli import RecipeCLI

DIGITS = "vision/digits"
MNIST = "vision/mnist"
PEAK = (torch.float32, torch.bfloat16)


def build_recipe(recipe: str, root_dir: str, *overrides: str) -> RecipeCLI:
    """Build a packaged recipe as ``recipe fit --config RECIPE --trainer.logger=false`` does (no config.yaml saved)."""
    args = ["--config", str(catalog.find(recipe)), "--trainer.logger=false", f"--trainer.default_root_dir={root_dir}"]
    return RecipeCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=None,
        args=[*args, *overrides],
        run=False,
    )


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
    mean, std = datamodule.mean, datamodule.std
    memory_format = torch.channels_last if hp.channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format)

    def transform(images: torch.Tensor, train: bool) -> torch.Tensor:  # the DataModule's on_after_batch_transfer
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
    rows = []
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

    datamodule = cli.datamodule
    print(
        f"\n== Lightning overhead: {DIGITS} ({type(cli.model.net).__name__}, batch {datamodule.hparams.batch_size}, "
        f"{len(datamodule.train_dataloader())} steps/epoch), epochs interleaved with the plain loop"
    )
    print(f"   median s/epoch over epochs {warmup + 1}-{epochs}; train = training batches, epoch = + validation")
    print("   (and for Lightning its epoch-end metrics and best/last checkpoints); no logger on either side")
    print(f"   {'Lightning trainer':<35}{'part':<7}{'plain':>8}{'Lightning':>11}{'ratio':>7}{'val acc P / L':>16}")
    for label, part, plain, lightning, accuracy in rows:
        p, lt = _median(plain, warmup), _median(lightning, warmup)
        print(f"   {label:<35}{part:<7}{p:>8.3f}{lt:>11.3f}{lt / p:>7.2f}{accuracy:>16}")


def matmul_peaks(size: int, reps: int = 8) -> dict[torch.dtype, float]:
    """FLOP/s of a square ``size`` matmul in fp32 and bf16: the best of ``reps``, the two dtypes alternating."""
    operands = {dtype: (torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)) for dtype in PEAK}
    best = dict.fromkeys(PEAK, float("inf"))
    for rep in range(reps + 2):  # two warm-up products each
        for dtype, (a, b) in operands.items():
            start = time.perf_counter()
            a @ b
            if rep >= 2:
                best[dtype] = min(best[dtype], time.perf_counter() - start)
    return {dtype: 2 * size**3 / seconds for dtype, seconds in best.items()}


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


def mnist_throughput(steps: int, matmul_size: int, rounds: int = 4) -> None:
    with tempfile.TemporaryDirectory() as root:
        cli = build_recipe(MNIST, root)
    module, datamodule = cli.model, cli.datamodule
    net, batch = module.net, datamodule.hparams.batch_size
    side, channels = datamodule.image_size, datamodule.in_channels
    n_params = sum(p.numel() for p in net.parameters())
    flops = training_flops_per_sample(net, batch, side, channels)
    peaks = matmul_peaks(matmul_size)

    x = torch.randn(batch, channels, side, side)
    configs = [(channels_last, bf16) for channels_last in (True, False) for bf16 in (False, True)]
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
    print(
        f"   peak: {matmul_size}x{matmul_size} matmul, best of 8: fp32 {peaks[torch.float32] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peaks[torch.bfloat16] / 1e9:.0f} GFLOP/s"
    )
    print("   samples/s from the median step time; share of the peak of the same precision")
    print(f"   {'precision':<15}{'layout':<15}{'samples/s':>10}{'GFLOP/s':>9}{'of peak':>9}")
    for (channels_last, bf16), times in seconds.items():
        rate = batch / statistics.median(times)
        achieved = rate * flops
        layout = "channels_last" if channels_last else "contiguous"
        precision = "bf16 autocast" if bf16 else "fp32"
        peak = peaks[torch.bfloat16 if bf16 else torch.float32]
        print(f"   {precision:<15}{layout:<15}{rate:>10,.0f}{achieved / 1e9:>9.1f}{achieved / peak:>9.1%}")


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
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the peak matmuls (default: 2048)")
    parser.add_argument(
        "--recipe-arg", action="append", default=[], help="extra `recipe fit` argument for part 1; repeatable"
    )
    parser.add_argument("--skip-digits", action="store_true", help="skip part 1 (Lightning overhead)")
    parser.add_argument("--skip-mnist", action="store_true", help="skip part 2 (MNIST network throughput)")
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.epochs <= args.warmup:
        parser.error("--epochs must exceed --warmup, and --warmup must be >= 0")
    if args.steps < 1 or args.matmul_size < 1:
        parser.error("--steps and --matmul-size must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    busy = busy_share()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs"
        + (f", {busy:.0%} busy with other work at start" if busy is not None else "")
        + (": expect noisy absolute numbers" if busy is not None and busy > 0.1 else "")
    )
    if not args.skip_digits:
        digits_overhead(args.epochs, args.warmup, args.recipe_arg)
    if not args.skip_mnist:
        mnist_throughput(args.steps, args.matmul_size)


if __name__ == "__main__":
    main()
