"""Log media from any domain: figures, image grids, audio clips, tables and short videos.

Every call first writes a file under ``media_dir(trainer)``, so a run with ``--trainer.logger=false`` or a CSV logger
still keeps its media, then hands the same content to each logger that can show it: W&B its native types, TensorBoard
its image, audio and text summaries. Every function runs on rank zero alone (returning ``None`` elsewhere) and makes
no collective call, so any hook may call it on every rank.

File names are the key with ``/`` replaced by ``_``. A figure overwrites its file (``test_confusion_matrix.png``: the
latest is the one wanted); samples carry the global step (``val_samples_step000120.png``) so what the model produced
over training stays on disk; a second call at the same step overwrites the first. wandb, matplotlib, torchvision and
PIL are imported inside the functions, so importing this module costs no more than Lightning itself.
"""

from __future__ import annotations

import csv
import os
import wave
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

# Longest cell TensorBoard's markdown table shows; the CSV and W&B keep the full text.
_MAX_CELL = 200


def media_dir(trainer: pl.Trainer) -> str:
    """``<trainer.log_dir>/media``, computed on this rank alone.

    ``trainer.log_dir`` broadcasts from rank zero, so it must be read on every rank; the loggers here run on rank zero
    only, and reading it there would leave rank zero waiting for the others forever under DDP.
    """
    logger = trainer.loggers[0] if trainer.loggers else None
    if logger is None:
        log_dir = trainer.default_root_dir
    elif isinstance(logger, (TensorBoardLogger, CSVLogger)):
        log_dir = logger.log_dir
    else:
        log_dir = logger.save_dir or trainer.default_root_dir
    return os.path.join(log_dir, "media")


def _publish(
    trainer: pl.Trainer,
    key: str,
    suffixes: Sequence[str],
    write: Callable[[list[str]], None],
    wandb: Callable[[WandbLogger, list[str], int], None] | None = None,
    tensorboard: Callable[[Any, list[str], int], None] | None = None,
    stamped: bool = True,
) -> list[str]:
    """Write ``<media_dir>/<key>[_step<step>]<suffix>`` for each suffix, then hand them to each logger that can show it.

    ``write(paths)`` writes the files; ``wandb(logger, paths, step)`` runs for each ``WandbLogger`` and
    ``tensorboard(summary_writer, paths, step)`` for each ``TensorBoardLogger``.
    """
    step = trainer.global_step
    stem = os.path.join(media_dir(trainer), key.replace("/", "_") + (f"_step{step:06d}" if stamped else ""))
    paths = [stem + suffix for suffix in suffixes]
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    write(paths)
    for logger in trainer.loggers:
        if wandb is not None and isinstance(logger, WandbLogger):
            wandb(logger, paths, step)
        elif tensorboard is not None and isinstance(logger, TensorBoardLogger):
            tensorboard(logger.experiment, paths, step)
    return paths


def _check_captions(captions: Sequence[str] | None, count: int) -> None:
    if captions is not None and len(captions) != count:
        raise ValueError(f"expected {count} captions, one per item, got {len(captions)}")


@rank_zero_only
def log_figure(
    trainer: pl.Trainer,
    key: str,
    figure: Any,
    table: tuple[Sequence[str], Sequence[Sequence[Any]]] | None = None,
) -> str:
    """Log ``figure`` under ``key`` to every logger and save it as ``<media_dir>/<key>.png`` (overwritten each call).

    Args:
        trainer: The running trainer (its loggers and log directory are used).
        key: Metric-style name such as ``"test/confusion_matrix"``.
        figure: A matplotlib figure; it is closed afterwards.
        table: Optional ``(columns, rows)`` also sent to W&B as a ``wandb.Table`` under ``<key>_table``.

    Returns:
        The path of the saved PNG (``None`` on other ranks).
    """
    import matplotlib.pyplot as plt

    def to_wandb(logger: WandbLogger, paths: list[str], step: int) -> None:
        logger.log_image(key=key, images=paths, step=step)
        if table is not None:
            columns, rows = table
            logger.log_table(key=key + "_table", columns=list(columns), data=[list(r) for r in rows], step=step)

    try:
        (path,) = _publish(
            trainer,
            key,
            [".png"],
            write=lambda paths: figure.savefig(paths[0], dpi=120, bbox_inches="tight"),
            wandb=to_wandb,
            tensorboard=lambda writer, paths, step: writer.add_figure(key, figure, global_step=step, close=False),
            stamped=False,
        )
    finally:
        plt.close(figure)
    return path


@rank_zero_only
def log_images(
    trainer: pl.Trainer,
    key: str,
    images: torch.Tensor | np.ndarray,
    nrow: int = 8,
    captions: Sequence[str] | None = None,
    value_range: tuple[float, float] | None = None,
) -> str:
    """Log a batch of images as one grid, saved as ``<media_dir>/<key>_step<step>.png``.

    Args:
        trainer: The running trainer.
        key: Metric-style name such as ``"val/samples"``.
        images: ``(N, C, H, W)`` with C 1 or 3, float or uint8. A grey batch becomes a grey RGB grid.
        nrow: Images per row of the grid; the grid is ``torchvision.utils.make_grid``'s, 2-pixel black padding.
        captions: One per image; W&B shows them under the grid, joined in grid order (row by row).
        value_range: ``(low, high)`` mapped to black and white, values outside clipped. Default ``(0, 1)`` for
            float images and ``(0, 255)`` for uint8.

    Returns:
        The path of the PNG (``None`` on other ranks).
    """
    from PIL import Image
    from torchvision.utils import make_grid

    images = torch.as_tensor(images).detach().cpu()
    if images.ndim != 4 or images.shape[0] == 0 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, C, H, W) with N >= 1 and C 1 or 3, got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"images must be float or uint8, got {images.dtype}")
    if nrow < 1:
        raise ValueError(f"nrow must be at least 1, got {nrow}")
    low, high = value_range or ((0.0, 255.0) if images.dtype == torch.uint8 else (0.0, 1.0))
    if not low < high:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
    _check_captions(captions, len(images))

    # make_grid clips to the range and rescales to [0, 1] on a copy; it repeats a single channel to three.
    grid = make_grid(images.float(), nrow=nrow, normalize=True, value_range=(low, high))  # (3, H', W')
    pixels = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # (H', W', 3)

    def to_wandb(logger: WandbLogger, paths: list[str], step: int) -> None:
        extra = {"caption": [" | ".join(captions)]} if captions else {}
        logger.log_image(key=key, images=paths, step=step, **extra)

    return _publish(
        trainer,
        key,
        [".png"],
        write=lambda paths: Image.fromarray(pixels).save(paths[0]),
        wandb=to_wandb,
        tensorboard=lambda writer, paths, step: writer.add_image(key, pixels, global_step=step, dataformats="HWC"),
    )[0]


@rank_zero_only
def log_audio(
    trainer: pl.Trainer,
    key: str,
    clips: torch.Tensor | np.ndarray,
    sample_rate: int,
    captions: Sequence[str] | None = None,
) -> list[str]:
    """Log mono audio clips, each saved as a 16-bit PCM WAV ``<media_dir>/<key>_step<step>_<i>.wav``.

    Args:
        trainer: The running trainer.
        key: Metric-style name such as ``"val/samples"``; W&B and TensorBoard get clip ``i`` under ``<key>/<i>``.
        clips: ``(N, T)`` or ``(N, 1, T)`` float in ``[-1, 1]``; values outside are clipped.
        sample_rate: Samples per second.
        captions: One per clip, shown by W&B.

    Returns:
        The paths of the WAV files, one per clip (``None`` on other ranks).
    """
    clips = torch.as_tensor(clips).detach().cpu()
    shape = tuple(clips.shape)
    if clips.ndim == 3 and clips.shape[1] == 1:
        clips = clips[:, 0]  # (N, 1, T) -> (N, T)
    if clips.ndim != 2 or 0 in clips.shape or not clips.is_floating_point():
        raise ValueError(
            f"clips must be float (N, T) or (N, 1, T), one 1-D mono clip per row, got {clips.dtype} of shape {shape}"
        )
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive number of samples per second, got {sample_rate}")
    _check_captions(captions, len(clips))
    # 16-bit PCM is what every player, W&B and TensorBoard read; clipping first, as TensorBoard does, keeps a small
    # overshoot from wrapping around to the opposite sign.
    pcm = (clips.float().clamp(-1, 1) * 32767).round().to(torch.int16).numpy()  # (N, T)

    def write(paths: list[str]) -> None:
        for path, clip in zip(paths, pcm, strict=True):
            with wave.open(path, "wb") as f:
                f.setnchannels(1)
                f.setsampwidth(2)
                f.setframerate(sample_rate)
                f.writeframes(clip.astype("<i2").tobytes())

    def to_wandb(logger: WandbLogger, paths: list[str], step: int) -> None:
        import wandb

        # One clip per key, as in TensorBoard: wandb refuses a *list* of clips unless soundfile is installed, even
        # when they come from files it never decodes.
        named = captions or [None] * len(paths)
        media = {f"{key}/{i}": wandb.Audio(path, sample_rate, named[i]) for i, path in enumerate(paths)}
        logger.log_metrics(media, step=step)

    def to_tensorboard(writer: Any, paths: list[str], step: int) -> None:
        # tensorboardX's add_audio encodes with soundfile, which is often missing; the WAV bytes are written already,
        # so hand them over as the summary add_audio would build (the same proto in torch's writer and tensorboardX).
        if type(writer).__module__.startswith("tensorboardX"):
            from tensorboardX.proto.summary_pb2 import Summary
        else:
            from tensorboard.compat.proto.summary_pb2 import Summary
        for i, path in enumerate(paths):
            with open(path, "rb") as f:
                wav = f.read()
            audio = Summary.Audio(
                sample_rate=sample_rate,
                num_channels=1,
                length_frames=pcm.shape[1],
                encoded_audio_string=wav,
                content_type="audio/wav",
            )
            writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=f"{key}/{i}", audio=audio)]), step)

    suffixes = [f"_{i}.wav" for i in range(len(pcm))]
    return _publish(trainer, key, suffixes, write=write, wandb=to_wandb, tensorboard=to_tensorboard)


def _markdown(columns: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        text = " ".join(str(value).split())  # a newline would end the table row
        text = text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 1] + "…"
        return text.replace("|", "\\|")  # escaped after cutting, so no escape is cut in half

    lines = ["| " + " | ".join(map(cell, columns)) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


@rank_zero_only
def log_table(trainer: pl.Trainer, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Log a table of samples (text, predictions, scores), saved as ``<media_dir>/<key>_step<step>.csv``.

    Args:
        trainer: The running trainer.
        key: Metric-style name such as ``"val/generations"``; TensorBoard shows it as ``<key>/text_summary``.
        columns: Column names.
        rows: ``(R, len(columns))`` cells of any type; TensorBoard's markdown table cuts cells to 200 characters.

    Returns:
        The path of the CSV file (``None`` on other ranks).
    """
    columns = [str(c) for c in columns]
    rows = [list(row) for row in rows]
    if not columns:
        raise ValueError("columns must name at least one column")
    for i, row in enumerate(rows):
        if len(row) != len(columns):
            raise ValueError(f"every row must have {len(columns)} cells, one per column; row {i} has {len(row)}")

    def write(paths: list[str]) -> None:
        with open(paths[0], "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)

    return _publish(
        trainer,
        key,
        [".csv"],
        write=write,
        wandb=lambda logger, paths, step: logger.log_table(key=key, columns=columns, data=rows, step=step),
        tensorboard=lambda writer, paths, step: writer.add_text(key, _markdown(columns, rows), global_step=step),
    )[0]


@rank_zero_only
def log_video(trainer: pl.Trainer, key: str, frames: torch.Tensor | np.ndarray, fps: int = 30) -> str:
    """Log a short clip, saved as an animated GIF ``<media_dir>/<key>_step<step>.gif`` (PIL only, no ffmpeg).

    TensorBoard gets nothing: its video summary needs moviepy. W&B gets a ``wandb.Video`` of the GIF file.

    Args:
        trainer: The running trainer.
        key: Metric-style name such as ``"val/rollout"``.
        frames: ``(T, H, W, C)`` or ``(T, C, H, W)`` uint8 with C 1 or 3; when both readings fit, channels last.
        fps: Frames per second. GIF delays are whole hundredths of a second and browsers slow delays under 20 ms
            down, so rates above 50 play slower than asked. Identical consecutive frames are merged into one.

    Returns:
        The path of the GIF (``None`` on other ranks).
    """
    from PIL import Image

    frames = torch.as_tensor(frames).detach().cpu()
    shape = tuple(frames.shape)
    if frames.ndim == 4 and frames.shape[-1] not in (1, 3) and frames.shape[1] in (1, 3):
        frames = frames.permute(0, 2, 3, 1)  # (T, C, H, W) -> (T, H, W, C)
    if frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[-1] not in (1, 3) or frames.dtype != torch.uint8:
        raise ValueError(
            f"frames must be uint8 (T, H, W, C) or (T, C, H, W) with T >= 1 and C 1 or 3, got {frames.dtype} of "
            f"shape {shape}"
        )
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    pixels = frames.numpy()
    pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels  # PIL wants (H, W) for grey

    def write(paths: list[str]) -> None:
        pictures = [Image.fromarray(frame) for frame in pixels]
        pictures[0].save(paths[0], save_all=True, append_images=pictures[1:], duration=1000 / fps, loop=0)

    return _publish(
        trainer,
        key,
        [".gif"],
        write=write,
        wandb=lambda logger, paths, step: logger.log_video(key=key, videos=paths, step=step),
    )[0]
