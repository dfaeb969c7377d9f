"""Text DataModules: reading the file formats, splits, tokenizers that travel in the state dict, dynamic padding,
length-grouped batches and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from nlp_fake_data import write_labelled, write_sms, write_text

from datamodules import text_tokenizers
from datamodules.nlp import LengthGroupedSampler, TextClassificationDataModule
from datamodules.text_lm import TextDataModule


def _sms(tmp_path, **kwargs) -> TextClassificationDataModule:
    data = TextClassificationDataModule(path=str(write_sms(tmp_path, rows=80)), columns=["label", "text"], **kwargs)
    data.setup("fit")
    return data


def test_headerless_tsv_reads_quotes_as_text_and_splits_are_seeded_and_stratified(tmp_path):
    data = _sms(tmp_path, seed=3)
    assert data.class_names == ("ham", "spam") and data.num_classes == 2
    sizes = {k: len(v[0]) for k, v in data._splits.items()}
    assert sum(sizes.values()) == 80 and sizes["test"] == 8 and sizes["val"] == 8
    assert any(text.endswith('"ok') for texts, _ in data._splits.values() for text in texts)  # the stray quote
    for _, y in data._splits.values():
        assert y.mean() == pytest.approx(0.25, abs=0.05)  # 1 in 4 is spam in every split
    again = _sms(tmp_path, seed=3)
    assert again._splits["test"][0] == data._splits["test"][0]
    assert _sms(tmp_path, seed=4)._splits["test"][0] != data._splits["test"][0]


def test_csv_and_jsonl_give_the_same_rows(tmp_path):
    csv_path, jsonl_path = write_labelled(tmp_path)
    a, b = (TextClassificationDataModule(path=str(p)) for p in (csv_path, jsonl_path))
    for data in (a, b):
        data.setup("fit")
    assert a.class_names == b.class_names == ("science", "sports")
    assert a._splits["train"][0] == b._splits["train"][0]
    assert np.array_equal(a._splits["train"][1], b._splits["train"][1])


def test_trained_tokenizer_round_trips_through_the_state_dict_without_the_data(tmp_path):
    data = _sms(tmp_path, max_vocab=100)
    text = "Call NOW to claim your prize"
    ids = data.encode([text])[0]
    assert ids[0] == data._fitted().cls_token_id and ids[-1] == data._fitted().sep_token_id
    assert data.decode(ids) == text.lower()
    assert data.pad_token_id == 0 and data.vocab_size <= 100
    state = data.state_dict()
    restored = TextClassificationDataModule(path=str(tmp_path / "gone.tsv"), columns=["label", "text"])
    restored.load_state_dict(state)  # no file read: the checkpoint is enough
    assert restored.encode([text]) == [ids]
    assert (restored.vocab_size, restored.pad_token_id, restored.class_names) == (
        data.vocab_size, data.pad_token_id, data.class_names)  # fmt: skip
    files = text_tokenizers.to_files(data._fitted())
    again = text_tokenizers.from_files(files)
    assert text_tokenizers.to_files(again)["tokenizer.json"] == files["tokenizer.json"]
    assert again([text])["input_ids"] == [ids]


def test_batches_are_padded_to_their_longest_text_and_cut_at_max_length(tmp_path):
    data = _sms(tmp_path, max_length=8, batch_size=8)
    lengths = [len(ids) for ids in data._split("train").ids]
    assert max(lengths) == 8  # longer texts were cut
    for batch in data.train_dataloader():
        mask = batch["attention_mask"]
        assert batch["input_ids"].shape == mask.shape and mask.shape[1] == int(mask.sum(1).max())
        assert torch.all(batch["input_ids"][mask == 0] == data.pad_token_id)
    batch = next(iter(data.val_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


def test_length_grouped_batches_are_seeded_resumable_and_cover_every_text_once():
    lengths = torch.randint(1, 200, (1000,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=10, group_batches=20, seed=5)
    epochs = [list(sampler) for _ in range(3)]
    assert sorted(i for batch in epochs[0] for i in batch) == list(range(1000))
    assert epochs[0] != epochs[1]
    resumed = LengthGroupedSampler(lengths, batch_size=10, group_batches=20, seed=5)
    resumed.set_epoch(2)
    assert list(resumed) == epochs[2]  # epoch 2's batches without iterating epochs 0 and 1

    def padding(batches):  # share of a padded batch that is padding
        return 1 - sum(sum(lengths[i] for i in b) for b in batches) / sum(len(b) * max(lengths[i] for i in b)
                                                                           for b in batches)  # fmt: skip

    plain = [list(range(i, i + 10)) for i in range(0, 1000, 10)]
    assert padding(epochs[0]) < 0.1 < 0.4 < padding(plain)


@pytest.mark.parametrize(
    ("write", "kwargs", "expected"),
    [
        (lambda p: p.write_text("body,label\nhello,a\nbye,b\n"), {}, "column 'text'"),
        (lambda p: p.write_text("text,kind\nhello,a\nbye,b\n"), {}, "column 'label'"),
        (lambda p: p.write_text(""), {}, "holds no rows"),
        (lambda p: p.write_text("text,label\nhello,a\nbye,b\nhi,c\n"), {"classes": ["a", "b"]}, "label 'c' in row 3"),
        (lambda p: None, {}, "does not exist"),
    ],
    ids=["missing-text-column", "missing-label-column", "empty-file", "unknown-label", "missing-file"],
)
def test_bad_input_stops_with_one_line_naming_the_problem(tmp_path, write, kwargs, expected):
    path = tmp_path / "texts.csv"
    write(path)
    data = TextClassificationDataModule(path=str(path), **kwargs)
    with pytest.raises(MisconfigurationException, match=expected) as info:
        data.setup("fit")
    assert "\n" not in str(info.value)


def test_char_text_splits_90_10_and_targets_are_inputs_shifted_by_one(tmp_path):
    path = write_text(tmp_path)
    text = path.read_text()
    data = TextDataModule(path=str(path), block_size=16, batch_size=4, stride=3)
    data.setup("fit")
    assert data.vocab_size == len(set(text)) and data.max_length == 16
    assert data.decode(data._stream("train").tolist()) == text[: int(len(text) * 0.9)]
    assert data.decode(data._stream("val").tolist()) == text[int(len(text) * 0.9) :]
    train = data._windows("train")
    assert len(train) == len(range(0, len(data._stream("train")) - 16, 3))
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == y.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
    restored = TextDataModule(path=str(tmp_path / "gone.txt"))
    restored.load_state_dict(data.state_dict())
    assert restored.vocab_size == data.vocab_size and restored.encode("First") == data.encode("First")


def test_token_level_trains_a_byte_bpe_on_the_training_text(tmp_path):
    data = TextDataModule(path=str(write_text(tmp_path)), level="token", max_vocab=300, block_size=8)
    data.setup("fit")
    assert 257 <= data.vocab_size <= 300
    assert data.decode(data.encode("Speak, speak. résolu")) == "Speak, speak. résolu"  # any byte encodes


def test_text_too_short_for_a_block_names_the_fix(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("to be or not to be " * 3)
    with pytest.raises(MisconfigurationException, match="block_size"):
        TextDataModule(path=str(path), block_size=32).setup("fit")
