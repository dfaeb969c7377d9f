"""``core.examples``: the collector keeps the first predictions and the first wrong examples of a test run, stops
reading once full, and the misclassified examples come out in the medium their inputs call for."""

from __future__ import annotations

import csv
import wave
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from core.examples import ExampleCollector, log_misclassified

NAMES = ("cat", "dog", "fox")


def make_trainer(root: Path) -> Trainer:
    return Trainer(logger=False, default_root_dir=str(root), enable_checkpointing=False, enable_progress_bar=False)


def _scores(predicted: list[int]) -> torch.Tensor:
    """Logits (B, 3) whose argmax is ``predicted``, with confidence softmax([2, 0, 0]) = 0.7870."""
    logits = torch.zeros(len(predicted), 3)
    logits[torch.arange(len(predicted)), torch.tensor(predicted)] = 2.0
    return logits


def _rows(path: str) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_collector_keeps_the_first_predictions_and_the_first_wrong_inputs(tmp_path):
    collector = ExampleCollector(limit=3)
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 4, 4) / 4  # image i filled with i / 4
    collector.update(images[:2], _scores([0, 2]), torch.tensor([0, 1]))  # index 1 wrong (dog taken for a fox)
    collector.update(images[2:], _scores([1, 1]), torch.tensor([0, 1]))  # index 2 wrong (cat taken for a dog)
    assert [row[:3] for row in collector.predictions] == [[0, 0, 0], [1, 1, 2], [2, 0, 1]]
    assert collector.predictions[0][3] == pytest.approx(0.7870, abs=1e-4)

    trainer = make_trainer(tmp_path)
    collector.log(trainer, "test", NAMES)
    media = tmp_path / "media"
    table = _rows(str(next(media.glob("test_predictions_step*.csv"))))
    assert table == [
        ["index", "actual", "predicted", "confidence"],
        ["0", "cat", "cat", "0.787"],
        ["1", "dog", "fox", "0.787"],
        ["2", "cat", "dog", "0.787"],
    ]
    (grid,) = media.glob("test_misclassified_step*.png")
    pixels = Image.open(grid).convert("L")
    # Two images side by side (2-pixel padding): the wrong ones, image 1 (grey 64) then image 2 (grey 128).
    assert pixels.size == (2 * 4 + 3 * 2, 4 + 2 * 2)
    assert pixels.getpixel((2, 2)) == 64 and pixels.getpixel((8, 2)) == 128
    assert collector.predictions == []  # reset after logging, ready for the next test run


def test_collector_stops_reading_once_full():
    collector = ExampleCollector(limit=1)
    collector.update(torch.zeros(2, 1, 4, 4), _scores([1, 1]), torch.tensor([0, 0]))
    reads = []

    class Watched(torch.Tensor):  # records any work on the scores (each a kernel, and a host read after it)
        def softmax(self, *args, **kwargs):
            reads.append("softmax")
            return super().softmax(*args, **kwargs)

    collector.update(torch.zeros(2, 1, 4, 4), _scores([1, 1]).as_subclass(Watched), torch.tensor([0, 0]))
    assert len(collector.predictions) == 1 and not reads


def test_graph_inputs_give_the_table_but_no_media(tmp_path):
    collector = ExampleCollector(limit=4)
    collector.update(object(), _scores([1, 0]), torch.tensor([0, 0]))  # a graph batch: nothing to show
    collector.log(make_trainer(tmp_path), "test", NAMES)
    assert [p.name.split("_step")[0] for p in (tmp_path / "media").iterdir()] == ["test_predictions"]


def test_waveforms_become_captioned_clips(tmp_path):
    clips = torch.zeros(2, 80).uniform_(-0.5, 0.5)
    paths = log_misclassified(make_trainer(tmp_path), "test/misclassified", clips, [1, 2], [0, 0], NAMES, 8000)
    assert len(paths) == 2
    with wave.open(paths[1]) as f:
        assert (f.getframerate(), f.getnframes()) == (8000, 80)


def test_token_ids_are_decoded_without_their_padding(tmp_path):
    inputs = {"input_ids": torch.tensor([[5, 6, 0], [7, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}
    decode = lambda ids: "".join(chr(ord("a") + i) for i in ids)  # noqa: E731
    path = log_misclassified(make_trainer(tmp_path), "test/misclassified", inputs, [1, 0], [0, 1], NAMES, None, decode)
    assert _rows(path) == [["text", "actual", "predicted"], ["fg", "cat", "dog"], ["h", "dog", "cat"]]


def test_feature_groups_become_rows(tmp_path):
    inputs = (torch.tensor([[0.5, -1.0]]), torch.tensor([[3]]))  # numbers (N, 2), category codes (N, 1)
    path = log_misclassified(make_trainer(tmp_path), "test/misclassified", inputs, [1], [0])
    assert _rows(path) == [["x0_0", "x0_1", "x1_0", "actual", "predicted"], ["0.5", "-1.0", "3.0", "0", "1"]]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (torch.zeros(2, 3, 4, 4, 4), "cannot show inputs (2, 3, 4, 4, 4)"),
        ({"pixel_values": torch.zeros(2, 3)}, "cannot show inputs dict"),
        (torch.zeros(3, 5), "inputs hold 3 examples for 2 predictions"),
    ],
)
def test_inputs_no_medium_shows_are_refused(tmp_path, inputs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        log_misclassified(make_trainer(tmp_path), "test/misclassified", inputs, [1, 0], [0, 1])


def test_limit_must_not_be_negative():
    with pytest.raises(ValueError, match="limit must be >= 0 examples, got -1"):
        ExampleCollector(limit=-1)
