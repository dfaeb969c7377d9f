"""Character-level GPT on tiny-shakespeare: nanoGPT's documented CPU run through our recipe, then the recipe's default.

    uv run python benchmarks/char_gpt.py --text input.txt              # both runs
    uv run python benchmarks/char_gpt.py --text input.txt --only nanogpt --threads 1

(a) ``nanogpt``: the configuration of nanoGPT's README for a CPU ("baby GPT", https://github.com/karpathy/nanoGPT):
4 layers, 4 heads, width 128, block 64, batch 12, 2,000 iterations, no dropout, learning rate 1e-3 with 100 warm-up
iterations and cosine decay to 1e-4 at iteration 2,000, AdamW (0.9, 0.99) with weight decay 0.1 on matrices,
gradients clipped at 1.0, windows at random offsets (``stride=1``). nanoGPT reports validation loss 1.88 (its estimate
on 20 random batches; ours scores the whole validation text).

(b) ``recipe``: ``nlp/shakespeare_char_gpt`` as packaged. Target: at most 1.70 nats/char within 15 minutes on two
CPU cores.

Each prints the final validation loss (nats per character, the whole last 10% of the text), the best one, the
optimizer steps and the wall time of ``fit``.
"""

from __future__ import annotations

import argparse
import time

import torch

from recipes.cli import main

QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
RECIPE = "nlp/shakespeare_char_gpt"
NANOGPT_CPU = [
    "--trainer.max_steps=2000",
    "--trainer.val_check_interval=250",
    "--trainer.gradient_clip_val=1.0",
    "--trainer.precision=32",
    "--model.init_args.net.init_args.n_layer=4",
    "--model.init_args.net.init_args.n_head=4",
    "--model.init_args.net.init_args.n_embd=128",
    "--model.init_args.net.init_args.dropout=0.0",
    "--model.init_args.optimizer.init_args.lr=0.001",
    "--model.init_args.optimizer.init_args.betas=[0.9,0.99]",
    "--model.init_args.optimizer.init_args.weight_decay=0.1",
    "--model.init_args.lr_scheduler.init_args.warmup_steps=0.05",  # 100 of 2,000 iterations
    "--model.init_args.lr_scheduler.init_args.min_lr_ratio=0.1",
    "--data.init_args.block_size=64",
    "--data.init_args.batch_size=12",
    "--data.init_args.stride=1",
]
RUNS = {"nanogpt": NANOGPT_CPU, "recipe": []}


def run(name: str, text: str) -> dict[str, float]:
    start = time.perf_counter()
    cli = main(["fit", "--config", RECIPE, f"--data.init_args.path={text}", *QUIET, *RUNS[name]])
    seconds = time.perf_counter() - start
    checkpoint = cli.trainer.checkpoint_callback
    return {
        "val_loss": float(cli.trainer.callback_metrics["val/loss"]),
        "best_val_loss": float(checkpoint.best_model_score),
        "steps": cli.trainer.global_step,
        "seconds": seconds,
    }


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", required=True, help="tiny-shakespeare's input.txt")
    parser.add_argument("--only", choices=sorted(RUNS), help="one of the two runs")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {name: run(name, args.text) for name in ([args.only] if args.only else RUNS)}
    print(f"\ncharacter-level GPT on {args.text}, {torch.get_num_threads()} thread(s)")
    for name, r in results.items():
        print(f"  {name:8s} val loss {r['val_loss']:.4f} nats/char (best {r['best_val_loss']:.4f})  "
              f"{r['steps']} steps  {r['seconds']:.0f} s")  # fmt: skip


if __name__ == "__main__":
    cli()
