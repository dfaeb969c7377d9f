"""``core.media``: every function writes its file with the right content, TensorBoard and W&B get the media in their
own types, bad input is refused with one clear message, and ranks other than zero write nothing."""

from __future__ import annotations

import csv
import io
import json
import math
import struct
import time
import wave
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from PIL import Image
from wandb_records import records

from core.media import log_audio, log_figure, log_images, log_table, log_video, media_dir

matplotlib.use("Agg")

RATE = 8000


def make_trainer(root: Path, logger=False) -> Trainer:
    return Trainer(
        logger=logger,
        default_root_dir=str(root),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def constant_images() -> torch.Tensor:
    """Four grey 8x8 images, image ``i`` filled with ``i`` (so ``value_range=(0, 3)`` maps it to ``i * 85``)."""
    return torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 8, 8)  # (N, C, H, W)


def tones() -> torch.Tensor:
    """Two 0.1 s clips at 440 and 880 Hz, amplitude 0.5."""
    t = torch.arange(800) / RATE
    return 0.5 * torch.sin(2 * math.pi * torch.tensor([[440.0], [880.0]]) * t).unsqueeze(1)  # (N, 1, T)


def distinct_frames() -> torch.Tensor:
    """Five 8x12 RGB frames, each a different flat colour (a GIF merges identical consecutive frames)."""
    return (torch.arange(5, dtype=torch.uint8) * 50).view(5, 1, 1, 1).expand(5, 3, 8, 12).contiguous()  # (T, C, H, W)


def figure():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    return fig


def test_images_become_one_png_grid(tmp_path):
    path = log_images(make_trainer(tmp_path), "val/samples", constant_images(), nrow=2, value_range=(0, 3))
    assert path == str(tmp_path / "media" / "val_samples_step000000.png")
    grid = np.asarray(Image.open(path))
    # make_grid: 2-pixel padding around and between, so 2 + 2 * (8 + 2) on each side; grey repeated to RGB.
    assert grid.shape == (22, 22, 3)
    assert grid[0, 0].tolist() == [0, 0, 0]  # padding
    corners = [grid[2 + 10 * r : 10 + 10 * r, 2 + 10 * c : 10 + 10 * c] for r in (0, 1) for c in (0, 1)]
    assert [np.unique(image).tolist() for image in corners] == [[0], [85], [170], [255]]  # row by row


def test_uint8_images_are_read_as_0_to_255(tmp_path):
    images = torch.full((3, 3, 4, 4), 255, dtype=torch.uint8)  # (N, C, H, W)
    grid = np.asarray(Image.open(log_images(make_trainer(tmp_path), "val/x", images, nrow=8)))
    assert grid.shape == (8, 20, 3) and grid[2:6, 2:6].min() == 255


def test_audio_clips_become_16_bit_wavs(tmp_path):
    clips = tones()
    clips[1, 0, :10] = 1.5  # past full scale: clipped, not wrapped to the opposite sign
    paths = log_audio(make_trainer(tmp_path), "val/speech", clips, sample_rate=RATE)
    assert paths == [str(tmp_path / "media" / f"val_speech_step000000_{i}.wav") for i in (0, 1)]
    for path, clip in zip(paths, clips.clamp(-1, 1)[:, 0], strict=True):
        with wave.open(path) as f:
            assert (f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()) == (1, 2, RATE, 800)
            samples = np.frombuffer(f.readframes(800), dtype="<i2") / 32767
        np.testing.assert_allclose(samples, clip.numpy(), atol=1 / 32767)


def test_table_becomes_a_csv(tmp_path):
    rows = [["a cat", 0.5], ["a dog, barking", 2]]
    path = log_table(make_trainer(tmp_path), "val/captions", ["text", "score"], rows)
    assert path == str(tmp_path / "media" / "val_captions_step000000.csv")
    with open(path, newline="") as f:
        assert list(csv.reader(f)) == [["text", "score"], ["a cat", "0.5"], ["a dog, barking", "2"]]


@pytest.mark.parametrize("layout", ["TCHW", "THWC"])
def test_frames_become_a_gif_with_every_frame(tmp_path, layout):
    frames = distinct_frames() if layout == "TCHW" else distinct_frames().permute(0, 2, 3, 1)
    path = log_video(make_trainer(tmp_path), "val/rollout", frames, fps=10)
    assert path == str(tmp_path / "media" / "val_rollout_step000000.gif")
    with Image.open(path) as gif:
        assert (gif.n_frames, gif.size, gif.info["duration"]) == (5, (12, 8), 100)
        gif.seek(3)
        assert np.asarray(gif.convert("RGB"))[0, 0].tolist() == [150, 150, 150]


def test_figures_overwrite_and_samples_keep_one_file_per_step(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    trainer = make_trainer(tmp_path)
    for step in (0, 120):
        monkeypatch.setattr(Trainer, "global_step", property(lambda self, step=step: step))
        fig = figure()
        path = log_figure(trainer, "test/confusion_matrix", fig)
        assert path == str(tmp_path / "media" / "test_confusion_matrix.png")
        assert not plt.fignum_exists(fig.number)  # closed, so a long run does not pile up figures
        log_images(trainer, "val/samples", constant_images(), value_range=(0, 3))
    names = sorted(p.name for p in (tmp_path / "media").iterdir())
    assert names == ["test_confusion_matrix.png", "val_samples_step000000.png", "val_samples_step000120.png"]


def tensorboard_values(log_dir: str) -> dict:
    """Every summary value in the event files, by tag (the TFRecord framing read by hand: tensorboard itself, with its
    EventAccumulator, is not installed; the protos come from tensorboardX, which writes the same wire format)."""
    from tensorboardX.proto.event_pb2 import Event

    values = {}
    for file in Path(log_dir).glob("events.out.tfevents.*"):
        data, pos = file.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + length])  # after length and its CRC
            pos += 12 + length + 4  # and the data's CRC
            values.update({value.tag: value for value in event.summary.value})
    return values


def test_tensorboard_gets_image_audio_and_text(tmp_path):
    logger = TensorBoardLogger(save_dir=str(tmp_path), name="tb")
    trainer = make_trainer(tmp_path, logger)
    log_images(trainer, "val/samples", constant_images(), nrow=2, value_range=(0, 3))
    log_audio(trainer, "val/speech", tones(), sample_rate=RATE)
    log_table(trainer, "val/captions", ["text", "score"], [["a|b", 1], ["x" * 500, 2]])
    log_figure(trainer, "test/curve", figure())
    log_video(trainer, "val/rollout", distinct_frames())  # file only: TensorBoard's video needs moviepy
    logger.experiment.close()  # flush() left the last event unwritten once under load; close() waits for the writer

    values = tensorboard_values(logger.log_dir)
    assert set(values) == {"val/samples", "val/speech/0", "val/speech/1", "val/captions/text_summary", "test/curve"}
    image = values["val/samples"].image
    assert (image.width, image.height) == (22, 22)
    assert np.asarray(Image.open(io.BytesIO(image.encoded_image_string))).shape == (22, 22, 3)
    audio = values["val/speech/1"].audio
    assert (audio.sample_rate, audio.length_frames, audio.content_type) == (RATE, 800, "audio/wav")
    with wave.open(io.BytesIO(audio.encoded_audio_string)) as f:
        assert (f.getframerate(), f.getnframes()) == (RATE, 800)
    text = values["val/captions/text_summary"].tensor.string_val[0].decode()
    lines = text.splitlines()
    assert lines[0] == "| text | score |" and lines[2] == "| a\\|b | 1 |"
    assert lines[3] == "| " + "x" * 199 + "… | 2 |"  # long cells cut to 200 characters
    # Files land in the TensorBoard run's own folder.
    assert media_dir(trainer) == str(Path(logger.log_dir) / "media")
    assert len(list(Path(media_dir(trainer)).iterdir())) == 6  # 1 grid, 2 clips, 1 csv, 1 figure, 1 gif


def wandb_history(run_file: Path) -> dict:
    """The logged values of an offline run, as ``{(key, field): value}`` (``("val/samples", "captions")``)."""
    from wandb.proto import wandb_internal_pb2

    values = {}
    for raw in records(run_file):
        record = wandb_internal_pb2.Record.FromString(raw)
        if record.WhichOneof("record_type") == "history":
            values.update({tuple(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return values


@pytest.mark.slow  # a whole recipe run (and W&B's service, where logged): seconds
def test_wandb_offline_run_gets_the_media(tmp_path):
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    trainer = make_trainer(tmp_path, logger)
    log_images(trainer, "val/samples", constant_images(), nrow=2, captions=list("abcd"), value_range=(0, 3))
    log_audio(trainer, "val/speech", tones(), sample_rate=RATE, captions=["low", "high"])
    log_table(trainer, "val/captions", ["text", "score"], [["a cat", 0.5], ["a dog", 2.0]])
    log_video(trainer, "val/rollout", distinct_frames(), fps=10)
    logger.experiment.finish()

    wanted = {
        "image": "media/images/val/samples_*.png",
        "clip 0": "media/audio/val/speech/0_*.wav",
        "clip 1": "media/audio/val/speech/1_*.wav",
        "table": "media/table/val/captions_*.table.json",
        "video": "media/videos/val/rollout_*.gif",
    }
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    deadline = time.monotonic() + 10  # wandb-core may still be writing when finish() returns on a loaded machine
    while True:
        found = {name: list(run.glob(f"files/{pattern}")) for name, pattern in wanted.items()}
        history = wandb_history(next(run.glob("run-*.wandb")))
        if (all(found.values()) and ("val/rollout", "_type") in history) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert all(len(paths) == 1 for paths in found.values()), found
    assert np.asarray(Image.open(found["image"][0])).shape == (22, 22, 3)
    assert json.loads(found["table"][0].read_text())["data"] == [["a cat", 0.5], ["a dog", 2.0]]
    with Image.open(found["video"][0]) as gif:
        assert gif.n_frames == 5
    with wave.open(str(found["clip 1"][0])) as f:
        assert (f.getframerate(), f.getnframes()) == (RATE, 800)
    # Native types, with the captions: the grid's joined in grid order, one per clip.
    assert history[("val/samples", "_type")] == "images/separated"
    assert history[("val/samples", "captions")] == ["a | b | c | d"]
    assert history[("val/speech/1", "_type")] == "audio-file" and history[("val/speech/1", "caption")] == "high"
    assert history[("val/captions", "_type")] == "table-file"
    assert history[("val/rollout", "_type")] == "videos"


# Each bad call, and what its message must say: the shape or value expected and the one received.
BAD_INPUT = {
    "images-not-4d": (lambda t: log_images(t, "k", torch.rand(3, 8, 8)), r"\(N, C, H, W\).*got shape \(3, 8, 8\)"),
    "images-4-channels": (lambda t: log_images(t, "k", torch.rand(2, 4, 8, 8)), r"C 1 or 3"),
    "images-int64": (lambda t: log_images(t, "k", torch.ones(2, 3, 8, 8, dtype=torch.long)), r"float or uint8"),
    "images-captions": (lambda t: log_images(t, "k", torch.rand(2, 3, 8, 8), captions=["a"]), r"expected 2 captions"),
    "images-range": (lambda t: log_images(t, "k", torch.rand(2, 3, 8, 8), value_range=(1, 0)), r"low < high"),
    "audio-1d": (lambda t: log_audio(t, "k", torch.rand(800), RATE), r"\(N, T\) or \(N, 1, T\).*shape \(800,\)"),
    "audio-stereo": (lambda t: log_audio(t, "k", torch.rand(2, 2, 800), RATE), r"mono.*shape \(2, 2, 800\)"),
    "audio-int": (lambda t: log_audio(t, "k", torch.zeros(2, 800, dtype=torch.int16), RATE), r"float"),
    "audio-rate": (lambda t: log_audio(t, "k", torch.rand(2, 800), 0), r"sample_rate must be a positive"),
    "audio-captions": (lambda t: log_audio(t, "k", torch.rand(2, 800), RATE, ["a", "b", "c"]), r"expected 2 captions"),
    "table-short-row": (lambda t: log_table(t, "k", ["a", "b"], [[1, 2], [3]]), r"2 cells.*row 1 has 1"),
    "video-3d": (lambda t: log_video(t, "k", torch.zeros(8, 8, 3, dtype=torch.uint8)), r"\(T, H, W, C\).*\(8, 8, 3\)"),
    "video-float": (lambda t: log_video(t, "k", torch.zeros(2, 8, 8, 3)), r"uint8.*got torch.float32"),
    "video-5-channels": (lambda t: log_video(t, "k", torch.zeros(2, 5, 8, 8, dtype=torch.uint8)), r"C 1 or 3"),
    "video-fps": (lambda t: log_video(t, "k", distinct_frames(), fps=0), r"fps must be positive"),
}


@pytest.mark.parametrize(("call", "message"), list(BAD_INPUT.values()), ids=list(BAD_INPUT))
def test_bad_input_is_refused_with_the_shape_or_value_expected(tmp_path, call, message):
    trainer = make_trainer(tmp_path)
    with pytest.raises(ValueError, match=message):
        call(trainer)
    assert not (tmp_path / "media").exists() or not any((tmp_path / "media").iterdir())


def test_other_ranks_write_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    trainer = make_trainer(tmp_path)
    results = [
        log_figure(trainer, "test/curve", figure()),
        log_images(trainer, "val/samples", constant_images()),
        log_audio(trainer, "val/speech", tones(), sample_rate=RATE),
        log_table(trainer, "val/captions", ["a"], [[1]]),
        log_video(trainer, "val/rollout", distinct_frames()),
    ]
    assert results == [None] * 5
    assert not (tmp_path / "media").exists()
