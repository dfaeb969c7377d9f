"""TextClassifier and CausalLanguageModel: network shapes, layer-wise rates, learning, and checkpoints that carry the
tokenizer (``recipe predict --ckpt_path`` with nothing but the checkpoint)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from nlp_fake_data import phrases, write_labelled, write_sms, write_text

from core import layer_decay
from datamodules.nlp import TextClassificationDataModule, TokenBatches
from lightning_modules.nets.text import GPT, BiLSTMClassifier, PretrainedCausalLM, TextCNN, TransformerClassifier
from lightning_modules.nlp import CausalLanguageModel, TextClassifier
from recipes.cli import main

QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
TINY_BERT = {"hidden_size": 16, "num_layers": 2, "num_heads": 2, "intermediate_size": 32}
TINY_GPT = {"n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0}


def _padded(ids: torch.Tensor, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids`` (B, T) and its mask, then the same with ``extra`` padding tokens appended."""
    return torch.cat([ids, torch.zeros(len(ids), extra, dtype=torch.long)], 1), torch.cat(
        [torch.ones_like(ids), torch.zeros(len(ids), extra, dtype=torch.long)], 1
    )


@pytest.mark.parametrize(
    "net",
    [
        lambda: BiLSTMClassifier(50, 3, 0, 64, embedding_dim=8, hidden_size=8),
        lambda: TextCNN(50, 3, 0, 64, embedding_dim=8, channels=4),
        pytest.param(lambda: TransformerClassifier(50, 3, 0, 64, **TINY_BERT), marks=pytest.mark.slow),
    ],
    ids=["bilstm", "cnn", "transformer"],
)
def test_classifiers_give_logits_that_padding_does_not_change(net):
    torch.manual_seed(0)
    model = net().eval()
    ids = torch.randint(1, 50, (4, 7))
    short = model(ids, torch.ones_like(ids))
    assert short.shape == (4, 3)
    assert torch.allclose(model(*_padded(ids, 5)), short, atol=1e-5)


@pytest.mark.slow  # builds a transformers GPT-2 (the library's model code takes seconds to import)
def test_gpt_predicts_each_token_from_the_ones_before_it():
    torch.manual_seed(0)
    net = GPT(20, 16, **TINY_GPT).eval()
    ids = torch.randint(0, 20, (2, 10))
    logits = net(ids)
    assert logits.shape == (2, 10, 20)
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 20
    assert torch.allclose(net(changed)[:, :6], logits[:, :6], atol=1e-5)  # causal: the past ignores the future
    assert not torch.allclose(net(changed)[:, 6:], logits[:, 6:])


class _Encoder(torch.nn.Module):
    """Parameter names as in a Hugging Face encoder: embeddings, two numbered blocks, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = torch.nn.Embedding(10, 4)
        self.layer = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(2))
        self.classifier = torch.nn.Linear(4, 2)


def test_layer_decay_scales_rates_by_depth_and_keeps_biases_undecayed():
    groups = layer_decay.parameter_groups(_Encoder(), decay=0.5)
    scale = {(g["layer"], "weight_decay" in g): g["lr_scale"] for g in groups}
    assert scale[(3, False)] == 1.0 and scale[(2, False)] == 0.5 and scale[(1, False)] == 0.25
    assert scale[(0, False)] == 0.125  # the embeddings, below the first block
    assert all(p.ndim == 1 for g in groups if "weight_decay" in g for p in g["params"])
    optimizer = torch.optim.AdamW(groups, lr=0.1)
    for group in optimizer.param_groups:
        group["lr"] *= group["lr_scale"]
    assert sorted({g["lr"] for g in optimizer.param_groups}) == pytest.approx([0.0125, 0.025, 0.05, 0.1])


def test_a_cnn_from_scratch_separates_two_phrase_classes(tmp_path):
    csv_path, _ = write_labelled(tmp_path, rows=120)
    data = TextClassificationDataModule(path=str(csv_path), batch_size=16)
    net = functools.partial(TextCNN, embedding_dim=16, channels=16)
    model = TextClassifier(net, data.vocab_size, data.num_classes, data.pad_token_id, data.max_length,
                           optimizer=functools.partial(torch.optim.AdamW, lr=0.01))  # fmt: skip
    trainer = Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=data)
    result = trainer.test(model, datamodule=data, verbose=False)[0]
    assert result["test/acc"] == 1.0, result  # the two topics share no words
    unseen = data.encode(["the striker scored twice", "the lab measured the cells"])
    batch = TokenBatches(unseen, None, data.pad_token_id)[[0, 1]]
    expected = [data.classes.index(c) for c in ("sports", "science")]
    assert model.eval()(batch).argmax(1).tolist() == expected


def test_predict_from_the_checkpoint_alone_tokenizes_as_training_did(tmp_path):
    train = write_sms(tmp_path, rows=60)
    model = ["--model=lightning_modules.nlp.TextClassifier", "--model.net=lightning_modules.nets.text.BiLSTMClassifier",
             "--model.net.init_args.embedding_dim=8", "--model.net.init_args.hidden_size=8"]  # fmt: skip
    data = [
        "--data=datamodules.nlp.TextClassificationDataModule",
        f"--data.path={train}",
        "--data.columns=[label,text]",
    ]
    fit = main(["fit", *model, *data, "--trainer.max_epochs=1", *QUIET])
    ckpt = Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    new = tmp_path / "new.txt"
    new.write_text("WIN a FREE holiday now\nsee you at lunch\n")  # one text a line
    train.unlink()  # the checkpoint must be enough: tokenizer and class names travel in it
    predict = main(["predict", *model, *data, *QUIET, f"--data.predict_path={new}",
                    f"--ckpt_path={ckpt}"])  # fmt: skip
    written = torch.load(Path(predict.trainer.default_root_dir) / "predictions.pt")
    assert written.shape == (2, 2) and torch.allclose(written.sum(1), torch.ones(2))
    live = fit.model.eval()
    batch = next(iter(predict.datamodule.predict_dataloader()))
    with torch.no_grad():
        assert torch.allclose(written, live(batch).softmax(-1), atol=1e-6)
        reloaded = TextClassifier.load_from_checkpoint(ckpt).eval()
        assert torch.equal(reloaded(batch), live(batch))


@pytest.mark.slow  # a GPT-2 from transformers and a few hundred steps: seconds
def test_char_gpt_learns_far_below_uniform_and_reloads_identically(tmp_path):
    text = write_text(tmp_path)
    net = [
        "--model.net=lightning_modules.nets.text.GPT",
        *(f"--model.net.init_args.{k}={v}" for k, v in TINY_GPT.items()),
    ]
    cli = main([
        "fit", "--model=lightning_modules.nlp.CausalLanguageModel", *net, "--model.generation_length=20",
        "--model.optimizer=torch.optim.AdamW", "--model.optimizer.init_args.lr=0.003",
        "--data=datamodules.text_lm.TextDataModule", f"--data.path={text}", "--data.block_size=32",
        "--data.batch_size=16", "--data.stride=1", "--trainer.max_epochs=2", *QUIET,
    ])  # fmt: skip
    vocab = cli.datamodule.vocab_size
    loss = float(cli.trainer.callback_metrics["val/loss"])
    assert loss < 0.25 * math.log(vocab), (loss, math.log(vocab))  # a repeated text: well below uniform
    assert float(cli.trainer.callback_metrics["val/perplexity"]) == pytest.approx(math.exp(loss), rel=1e-4)
    samples = sorted(Path(cli.trainer.default_root_dir).rglob("val_samples_step*.csv"))
    assert samples and "sample" in samples[-1].read_text().splitlines()[0]
    ckpt = Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    reloaded = CausalLanguageModel.load_from_checkpoint(ckpt).eval()
    ids = torch.tensor([cli.datamodule.encode("First Citizen:\nBefore we")])
    with torch.no_grad():
        assert torch.equal(reloaded(ids), cli.model.eval()(ids))
    out = reloaded.generate(ids, 5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, ids.shape[1] + 5) and torch.equal(out[:, : ids.shape[1]], ids)
    reloaded.net.model.save_pretrained(tmp_path / "hf")  # a Hugging Face model: generate and save_pretrained work
    pretrained = PretrainedCausalLM(vocab, 32, name_or_path=str(tmp_path / "hf")).eval()  # by path, as by name
    with torch.no_grad():
        assert torch.allclose(pretrained(ids), reloaded(ids), atol=1e-6)


def test_phrases_are_two_disjoint_vocabularies():
    words = {label: {w for text, y in phrases(40) if y == label for w in text.split()} - {"and", "the", "a"}
             for label in ("sports", "science")}  # fmt: skip
    assert not words["sports"] & words["science"]
