"""Audio DataModules on tiny WAV folders: splits, lengths and rates, training order, augmentation and bad files."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile
import torch
from audio_fake_data import tone, write_audio_folder, write_fsdd, write_speech_commands
from lightning.fabric.utilities.exceptions import MisconfigurationException

from datamodules import audio_files
from datamodules.audio import AudioFolderDataModule, FSDDDataModule
from datamodules.audio_speech_commands import SpeechCommandsDataModule
from datamodules.in_memory import TensorBatches
from datamodules.sampling import stratified_split


def _speakers(dm: FSDDDataModule, split: str) -> list[tuple[str, int]]:
    dm._split(split)
    names = [path.rsplit("/", 1)[1].removesuffix(".wav").split("_") for path in dm.split_files[split]]
    return [(speaker, int(index)) for _, speaker, index in names]


def test_fsdd_standard_split_tests_indices_0_to_4(tmp_path):
    write_fsdd(tmp_path, speakers=("alice", "bob"), indices=8)
    dm = FSDDDataModule(str(tmp_path), val_fraction=0.25)
    dm.setup("fit")
    test = _speakers(dm, "test")
    assert len(test) == 10 * 2 * 5 and {index for _, index in test} == {0, 1, 2, 3, 4}
    train, val = _speakers(dm, "train"), _speakers(dm, "val")
    assert all(index >= 5 for _, index in train + val)
    assert (len(train), len(val)) == (40, 20)  # indices 5-7 of 10 digits x 2 speakers, a quarter validating
    labels = dm.splits["val"].labels
    assert torch.bincount(labels, minlength=10).tolist() == [2] * 10  # stratified: a quarter of each digit's six
    assert (dm.num_classes, dm.class_names[3], dm.sample_rate, dm.num_samples) == (10, "3", 8000, 8000)


def test_fsdd_test_speakers_are_held_out_whole(tmp_path):
    write_fsdd(tmp_path, speakers=("alice", "bob", "carol"), indices=6)
    dm = FSDDDataModule(str(tmp_path), test_speakers=["bob"])
    test = _speakers(dm, "test")
    assert {speaker for speaker, _ in test} == {"bob"} and len(test) == 10 * 6  # every index, 0-4 included
    trained = {speaker for speaker, _ in _speakers(dm, "train") + _speakers(dm, "val")}
    assert trained == {"alice", "carol"}
    assert len(_speakers(dm, "train")) + len(_speakers(dm, "val")) == 2 * 10 * 6
    with pytest.raises(MisconfigurationException, match=r"\['dave'\].*'alice', 'bob', 'carol'"):
        FSDDDataModule(str(tmp_path), test_speakers=["dave"]).setup("fit")


def test_fsdd_missing_folder_and_misnamed_file_are_named(tmp_path):
    with pytest.raises(MisconfigurationException, match="recordings does not exist.*--data.data_dir"):
        FSDDDataModule(str(tmp_path / "nowhere")).setup("fit")
    write_fsdd(tmp_path, indices=6)
    (tmp_path / "recordings" / "seven.wav").write_bytes(b"")
    with pytest.raises(MisconfigurationException, match=re.escape(str(tmp_path / "recordings" / "seven.wav"))):
        FSDDDataModule(str(tmp_path)).setup("fit")


def test_stratified_split_is_seeded_and_keeps_small_classes_in_validation():
    labels = [0] * 10 + [1] * 20 + [2] * 2
    train, val = (part.tolist() for part in stratified_split(labels, 0.2, seed=0))
    assert sorted(train + val) == list(range(32)) and [labels[i] for i in val] == [0, 0] + [1] * 4
    assert [p.tolist() for p in stratified_split(labels, 0.2, seed=0)] == [train, val]
    assert stratified_split(labels, 0.2, seed=1)[1].tolist() != val
    kept = stratified_split(labels, 0.2, seed=0, keep_one=True)[1].tolist()
    assert [labels[i] for i in kept].count(2) == 1  # round(0.4) is 0; keep_one holds one out anyway


@pytest.mark.parametrize(("rate", "seconds"), [(8000, 0.3), (22050, 0.5), (44100, 2.5)])
def test_clips_come_out_at_the_target_rate_and_length(tmp_path, rate, seconds):
    path = tmp_path / "clip.flac"
    soundfile.write(path, tone(440.0, rate, seconds, channels=2), rate)
    wave = audio_files.load_audio(str(path), 16000)
    assert wave.ndim == 1 and len(wave) == round(16000 * seconds)  # resampled, stereo mixed to mono
    spectrum = torch.fft.rfft(wave).abs()
    assert abs(int(spectrum.argmax()) * 16000 / len(wave) - 440.0) < 5  # the pitch survives resampling
    clip = audio_files.read_clip(str(path), 16000, 16000)
    assert clip.shape == (16000,)


def test_fix_length_centres_the_recording():
    wave = torch.arange(1.0, 7.0)
    assert audio_files.fix_length(wave, 10).tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 0, 0]
    assert audio_files.fix_length(wave, 3).tolist() == [2, 3, 4]


def test_random_shift_moves_each_clip_by_its_own_offset():
    torch.manual_seed(0)
    x = torch.arange(1.0, 101.0).repeat(16, 1)  # (16, 100)
    shifted = audio_files.random_shift(x, 10)
    offsets = set()
    for row in shifted:
        start = int((row > 0).nonzero()[0])  # leading zeros: shifted later; else the first value says how far earlier
        offset = start if start else 1 - int(row[0])
        assert abs(offset) <= 10
        valid = torch.arange(100) - offset
        inside = (valid >= 0) & (valid < 100)
        assert torch.equal(row[inside], x[0, valid[inside]]) and (row[~inside] == 0).all()
        offsets.add(offset)
    assert len(offsets) > 5  # each clip its own offset


def test_time_shift_only_in_training(tmp_path):
    write_fsdd(tmp_path, indices=6)
    dm = FSDDDataModule(str(tmp_path), time_shift=0.2)

    class Stage:
        training = True

    clips = torch.randn(4, 8000)
    dm.trainer = Stage()
    assert not torch.equal(dm.on_after_batch_transfer((clips, torch.zeros(4)), 0)[0], clips)
    Stage.training = False
    assert torch.equal(dm.on_after_batch_transfer((clips, torch.zeros(4)), 0)[0], clips)


def test_training_order_is_seeded_and_changes_each_epoch(tmp_path):
    write_fsdd(tmp_path, indices=8)

    def orders(seed: int) -> list[list[int]]:
        dm = FSDDDataModule(str(tmp_path), batch_size=8, shuffle_seed=seed)
        dm.setup("fit")
        loader = dm.train_dataloader()
        return [torch.cat([y for _, y in loader]).tolist() for _ in range(2)]

    first, second = orders(0)
    assert first != second and orders(0) == [first, second] and orders(1)[0] != first


def test_audio_folder_classes_splits_and_resampling(tmp_path):
    write_audio_folder(tmp_path / "audio_folder", per_class=5, sample_rate=11025)
    dm = AudioFolderDataModule(str(tmp_path), sample_rate=8000, duration=0.5, val_fraction=0.2)
    assert dm.class_names == ("high", "low", "mid") and (dm.num_samples, dm.sample_rate) == (4000, 8000)
    dm.setup("fit")
    assert isinstance(dm.splits["train"], TensorBatches)
    assert dm.splits["train"].images.shape == (12, 4000) and torch.bincount(dm.splits["val"].labels).tolist() == [1] * 3
    clips, labels = next(iter(dm.test_dataloader()))
    assert clips.shape == (15, 4000) and labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5


def test_audio_folder_read_from_files_matches_memory(tmp_path):
    write_audio_folder(tmp_path / "audio_folder", per_class=3, sample_rate=8000, channels=1)
    memory = AudioFolderDataModule(str(tmp_path), sample_rate=8000, in_memory=True)
    files = AudioFolderDataModule(str(tmp_path), sample_rate=8000, in_memory=False, eval_batch_size=100)
    clips, labels = next(iter(files.test_dataloader()))
    assert isinstance(files.splits["test"], audio_files.AudioFiles)
    assert torch.equal(clips, memory._split("test").images) and torch.equal(labels, memory.splits["test"].labels)


def test_audio_folder_class_names_travel_with_the_checkpoint(tmp_path):
    write_audio_folder(tmp_path / "audio_folder", per_class=2, sample_rate=8000, channels=1, splits=("test",))
    dm = AudioFolderDataModule(str(tmp_path), sample_rate=8000)
    dm.load_state_dict({"class_names": ("high", "low", "mid")})  # no train/: the classes come from the checkpoint
    assert dm.num_classes == 3 and len(dm.test_dataloader().dataset) == 6
    with pytest.raises(MisconfigurationException, match="trained on the classes"):
        AudioFolderDataModule(str(tmp_path), class_names=("a", "b")).load_state_dict({"class_names": ("x", "y")})


def test_audio_folder_without_audio_names_the_folder(tmp_path):
    with pytest.raises(MisconfigurationException, match="audio_folder does not exist"):
        _ = AudioFolderDataModule(str(tmp_path)).num_classes
    for name in ("cat", "dog"):
        (tmp_path / "audio_folder" / "train" / name).mkdir(parents=True)
        (tmp_path / "audio_folder" / "train" / name / "0.png").write_bytes(b"not audio")
    with pytest.raises(MisconfigurationException, match=re.escape(str(tmp_path / "audio_folder" / "train" / "cat"))):
        AudioFolderDataModule(str(tmp_path)).setup("fit")


@pytest.mark.parametrize("kind", ["garbage", "empty", "zero_rate"])
def test_bad_audio_file_is_named(tmp_path, kind):
    write_audio_folder(tmp_path / "audio_folder", per_class=2, sample_rate=8000, channels=1)
    bad = tmp_path / "audio_folder" / "train" / "low" / "zz_bad.wav"
    if kind == "garbage":
        bad.write_bytes(b"RIFF not really a wave file" * 4)
    elif kind == "empty":
        soundfile.write(bad, np.zeros(0, dtype=np.float32), 8000)
    else:
        soundfile.write(bad, tone(300.0, 8000, 0.2), 8000)
        data = bytearray(bad.read_bytes())
        data[24:28] = (0).to_bytes(4, "little")  # the WAV header's sample rate
        bad.write_bytes(bytes(data))
    with pytest.raises(MisconfigurationException, match=re.escape(str(bad))) as err:
        AudioFolderDataModule(str(tmp_path), sample_rate=8000).setup("fit")
    assert "Remove or replace the file" in str(err.value) and "\n" not in str(err.value)


def test_rates_that_cannot_be_resampled_to_are_refused():
    with pytest.raises(ValueError, match="sample_rate"):
        AudioFolderDataModule(sample_rate=0)
    with pytest.raises(ValueError, match="sample_rate"):
        FSDDDataModule(sample_rate=-8000)


def test_speech_commands_uses_the_official_lists(tmp_path):
    write_speech_commands(tmp_path, words=("no", "yes"), per_word=4)
    dm = SpeechCommandsDataModule(str(tmp_path), num_workers=0, download=False)
    dm.prepare_data()  # the files are in place: nothing is downloaded
    dm.setup("fit")
    assert dm.num_classes == 35 and dm.class_names[dm.class_names.index("yes")] == "yes"
    names = {
        split: [p.rsplit("/", 2)[1] + "/" + p.rsplit("/", 1)[1] for p in dm.split_files[split]]
        for split in ("train", "val")
    }
    dm._split("test")
    val_list = (tmp_path / "SpeechCommands" / "speech_commands_v0.02" / "validation_list.txt").read_text().split()
    assert sorted(names["val"]) == sorted(val_list)
    assert len(names["train"]) == 4 and len(dm.split_files["test"]) == 2  # _background_noise_ is not a word
    assert set(dm.splits["train"].labels.tolist()) == {dm.class_names.index("no"), dm.class_names.index("yes")}


def test_bad_file_is_one_error_line_from_the_recipe_command(tmp_path, capsys):
    from recipes.cli import main

    write_audio_folder(tmp_path / "audio_folder", per_class=2, sample_rate=8000, channels=1)
    bad = tmp_path / "audio_folder" / "train" / "mid" / "broken.wav"
    bad.write_bytes(b"\x00" * 64)
    args = [
        "fit",
        "--config",
        "audio/audiofolder_cnn",
        f"--data.init_args.data_dir={tmp_path}",
        "--trainer.logger=false",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--trainer.enable_progress_bar=false"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: cannot read audio") and str(bad) in err
    assert len(err.strip().splitlines()) == 1
