"""A lean hand-written PyTorch loop that reaches 99% MNIST test accuracy: the yardstick for ``vision/mnist``.

No Lightning, no DataLoader: the 60,000 training images are normalised once into one channels-last float
tensor and sliced by a fresh permutation each epoch. The network is the classic ~20k-parameter two-conv CNN
with batch norm (conv-BN-ReLU-pool twice, then a linear head on the flattened 32x7x7 map), trained with
SGD + Nesterov momentum under a one-cycle schedule (Smith & Topin 2018, https://arxiv.org/abs/1708.07120).
It reads the official idx files with torchvision and never downloads.

    uv run python benchmarks/mnist_lean.py --data-dir ../shared/data           # fp32
    uv run python benchmarks/mnist_lean.py --data-dir ../shared/data --bf16    # bf16 autocast on CPU
    uv run python benchmarks/mnist_lean.py --data-dir ../shared/data --repeats 3

Arguments:
    --data-dir      Folder holding ``MNIST/raw`` (torchvision's layout). Default: ``data``.
    --epochs        Passes over the training set. Default: 4.
    --batch-size    Training batch size. Default: 256.
    --max-lr        Peak learning rate of the one-cycle schedule. Default: 0.2.
    --widths        Channels of the two conv stages. Default: 16 32.
    --bf16          Run forward and loss under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
    --seed          Seed of the initial weights and the batch order. Default: 0.
    --repeats       Train this many times (seeds seed, seed+1, ...) and report each run and the median.

Printed: training wall time (the epochs only, excluding data loading and the test pass) and test accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn


def load_mnist(data_dir: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official train and test splits as normalised float (N, 1, 28, 28) channels-last tensors and int64 labels."""
    from torchvision.datasets import MNIST

    train = MNIST(data_dir, train=True, download=False)
    test = MNIST(data_dir, train=False, download=False)
    x_train = train.data.unsqueeze(1).float().div_(255)  # (60000, 1, 28, 28)
    x_test = test.data.unsqueeze(1).float().div_(255)  # (10000, 1, 28, 28)
    # Statistics of the training split only.
    mean, std = x_train.mean(), x_train.std()
    x_train = ((x_train - mean) / std).contiguous(memory_format=torch.channels_last)
    x_test = ((x_test - mean) / std).contiguous(memory_format=torch.channels_last)
    return x_train, train.targets.long(), x_test, test.targets.long()


def lean_cnn(widths: tuple[int, int] = (16, 32), num_classes: int = 10) -> nn.Sequential:
    """Two conv-BN-ReLU-maxpool stages and a linear head on the flattened 7x7 map (~20k parameters at 16, 32)."""
    c1, c2 = widths
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1, bias=False),
        nn.BatchNorm2d(c1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # (B, c1, 14, 14)
        nn.Conv2d(c1, c2, 3, padding=1, bias=False),
        nn.BatchNorm2d(c2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # (B, c2, 7, 7)
        nn.Flatten(),  # (B, c2 * 49)
        nn.Linear(c2 * 49, num_classes),
    )


def train(args: argparse.Namespace, data: tuple[torch.Tensor, ...], seed: int) -> tuple[float, float]:
    """Train once; return (training seconds, test accuracy)."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    net = lean_cnn(tuple(args.widths)).to(memory_format=torch.channels_last)
    # Weight decay on kernels and the head's matrix only, not on biases or batch-norm scales.
    decay = [p for p in net.parameters() if p.ndim >= 2]
    no_decay = [p for p in net.parameters() if p.ndim < 2]
    optimizer = torch.optim.SGD(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.max_lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
    )
    steps_per_epoch = -(-len(y_train) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.max_lr, total_steps=args.epochs * steps_per_epoch
    )

    start = time.perf_counter()
    net.train()
    for _ in range(args.epochs):
        order = torch.randperm(len(y_train))
        for i in range(0, len(order), args.batch_size):
            index = order[i : i + args.batch_size]
            x, y = x_train[index], y_train[index]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    seconds = time.perf_counter() - start

    net.eval()
    correct = 0
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        for i in range(0, len(y_test), 2000):
            correct += (net(x_test[i : i + 2000]).argmax(-1) == y_test[i : i + 2000]).sum().item()
    return seconds, correct / len(y_test)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data", help="folder holding MNIST/raw (default: data)")
    parser.add_argument("--epochs", type=int, default=4, help="passes over the training set (default: 4)")
    parser.add_argument("--batch-size", type=int, default=256, help="training batch size (default: 256)")
    parser.add_argument("--max-lr", type=float, default=0.2, help="one-cycle peak learning rate (default: 0.2)")
    parser.add_argument("--widths", type=int, nargs=2, default=[16, 32], help="conv channels (default: 16 32)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for forward and loss")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and batch order (default: 0)")
    parser.add_argument("--repeats", type=int, default=1, help="independent runs, seeds seed.. (default: 1)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.repeats < 1:
        parser.error("--epochs, --batch-size and --repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = load_mnist(args.data_dir)
    n_params = sum(p.numel() for p in lean_cnn(tuple(args.widths)).parameters())
    precision = "bf16 autocast" if args.bf16 else "fp32"
    print(
        f"lean MNIST CNN: {n_params:,} parameters, {precision}, {torch.get_num_threads()} threads, "
        f"{args.epochs} epochs of batch {args.batch_size}, max_lr {args.max_lr}"
    )
    times, accs = [], []
    for r in range(args.repeats):
        seconds, acc = train(args, data, args.seed + r)
        times.append(seconds)
        accs.append(acc)
        print(f"  run {r}: train {seconds:6.2f} s  ({seconds / args.epochs:.2f} s/epoch)  test acc {acc:.2%}")
    if args.repeats > 1:
        print(f"  median: train {statistics.median(times):6.2f} s  test acc {statistics.median(accs):.2%}")


if __name__ == "__main__":
    main()
