"""Flags and overlays that let packaged recipes run on this offline CPU machine."""

from __future__ import annotations

from pathlib import Path

import yaml


def offline_overrides(path, data_root) -> list[str]:
    """Flags that let any recipe instantiate on this machine: CPU, no logger, local data, no weight download."""
    config = yaml.safe_load(path.read_text())
    flags = ["--trainer.accelerator=cpu", "--trainer.logger=false"]
    data = (config.get("data") or {}).get("class_path") or ""
    if not data.startswith("datamodules.rl."):  # environments are made, not read from a data folder
        flags.append(f"--data.init_args.data_dir={data_root}")
    net = ((config.get("model") or {}).get("init_args") or {}).get("net") or {}
    if "weights" in (net.get("init_args") or {}):
        flags.append(f"--config={no_pretrained_weights()}")
    net = net if isinstance(net, dict) else {}
    if "name_or_path" in (net.get("init_args") or {}) or str(net.get("class_path", "")).endswith(
        "PretrainedClassifier"
    ):
        tiny = f"{data_root}/tiny_distilbert"  # a Hugging Face model by name: the tiny one nlp_fake_data saves
        flags += [f"--model.init_args.net.init_args.name_or_path={tiny}", f"--data.init_args.tokenizer={tiny}"]
    if "dataset" in ((config.get("data") or {}).get("init_args") or {}):  # a Hugging Face dataset: a local CSV
        flags += ["--data.init_args.dataset=null", "--data.init_args.path=text_classification/topics.csv"]
    if ((config.get("model") or {}).get("init_args") or {}).get("distillation"):
        flags.append(f"--model.init_args.distillation.teacher={digits_teacher(data_root)}")
    return flags


def digits_teacher(data_root) -> str:
    """A ``vision/digits`` checkpoint written by ``recipe fit`` (two steps), made once per session: the teacher of
    the distillation recipes."""
    from recipes.cli import main

    root = Path(data_root) / "digits_teacher"
    found = sorted(root.glob("version_*/checkpoints/last.ckpt"))
    if found:
        return str(found[0])
    quick = ["--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false"]
    fit = main(
        ["fit", "--config", "vision/digits", *quick, "--trainer.logger=false", f"--trainer.default_root_dir={root}"]
    )
    return fit.trainer.checkpoint_callback.last_model_path


def no_pretrained_weights() -> str:
    """The packaged overlay that turns off pretrained weights (the command line cannot say None for a nested enum)."""
    return "overlays/no_pretrained"
