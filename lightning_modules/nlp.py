"""Text: classification of whole texts and next-token language modelling, each with an injected network.

:class:`TextClassifier` is a :class:`~lightning_modules.classifier.Classifier` (cross-entropy, accuracy and macro-F1,
the test confusion matrix, class probabilities from ``recipe predict``) over batches
``{"input_ids": (B, T), "attention_mask": (B, T), "labels": (B,)}`` padded per batch. Its network comes from
:mod:`lightning_modules.nets.text`: a BERT from scratch (default), any pretrained Hugging Face classifier, a BiLSTM
or a CNN. Optional layer-wise learning-rate decay for fine-tuning (:mod:`core.layer_decay`).

:class:`CausalLanguageModel` trains a GPT on ``(inputs, targets)`` blocks ``(B, T)``, the targets the inputs shifted
by one token. It reports ``val/loss`` in nats per token and ``val/perplexity`` (``exp`` of it; test likewise) and,
after each validation, writes a table of sampled continuations (:func:`core.media.log_table`), decoded by the
DataModule's ``decode`` when it has one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from core import layer_decay
from core.media import log_table
from lightning_modules.classifier import Classifier
from lightning_modules.nets.text import GPT, TransformerClassifier
from lightning_modules.task import Task

#: Builds a classifier from ``(vocab_size, num_classes, pad_token_id, max_length)``; a recipe gives its class and
#: options.
TextNetFactory = Callable[[int, int, int, int], nn.Module]
#: Builds a language model from ``(vocab_size, max_length)``.
LanguageNetFactory = Callable[[int, int], nn.Module]


class TextClassifier(Classifier):
    """Classify texts with an injected network over token ids.

    Args:
        net: Network class (with its options), called with ``(vocab_size, num_classes, pad_token_id, max_length)``:
            ``TransformerClassifier`` (default), ``PretrainedClassifier``, ``BiLSTMClassifier``, ``TextCNN``.
        vocab_size: Tokens of the tokenizer; filled from the DataModule.
        num_classes: Classes; filled from the DataModule.
        pad_token_id: Id of the padding token; filled from the DataModule.
        max_length: Longest token sequence of a batch; filled from the DataModule.
        class_names: Class names for the confusion matrix; filled from the DataModule.
        label_smoothing: Label smoothing of the training cross-entropy, in ``[0, 1)``.
        layer_decay: Layer-wise learning-rate decay in ``(0, 1]`` (0.65-0.9 is usual for fine-tuning a pretrained
            encoder): each transformer block trains at this times the rate of the block above. ``None``: off.
        **kwargs: ``optimizer``, ``lr_scheduler`` (``core.optim.WarmupCosine`` for linear warm-up then decay) and
            ``scheduler_interval`` of :class:`~lightning_modules.task.Task`.
    """

    def __init__(
        self,
        net: TextNetFactory = TransformerClassifier,
        vocab_size: int = 30522,
        num_classes: int = 2,
        pad_token_id: int = 0,
        max_length: int = 512,
        class_names: tuple[str, ...] | None = None,
        label_smoothing: float = 0.0,
        layer_decay: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, class_names=class_names, label_smoothing=label_smoothing, **kwargs)
        if vocab_size < 1 or max_length < 1:
            raise ValueError(f"vocab_size and max_length must be positive, got {vocab_size} and {max_length}")
        if not 0 <= pad_token_id < vocab_size:
            raise ValueError(f"pad_token_id {pad_token_id} is not an id of a {vocab_size}-token vocabulary")
        if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        self.layer_decay = layer_decay
        self.net = net(vocab_size, num_classes, pad_token_id, max_length)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B, num_classes) of ``{"input_ids": (B, T), "attention_mask": (B, T)}``."""
        return self.net(inputs["input_ids"], inputs["attention_mask"])

    def configure_optimizers(self) -> dict[str, Any]:
        if self.layer_decay is None:
            return super().configure_optimizers()
        return layer_decay.configure(
            self.net, self.optimizer, self.lr_scheduler, self.trainer, self.scheduler_interval, self.layer_decay
        )


class CausalLanguageModel(Task):
    """Next-token prediction with an injected language model; samples after each validation.

    Args:
        net: Network class (with its options), called with ``(vocab_size, max_length)``: ``GPT`` (default, from
            scratch) or ``PretrainedCausalLM``. Its Hugging Face model is ``net.model`` (``save_pretrained``).
        vocab_size: Tokens of the vocabulary; filled from the DataModule.
        max_length: Context length (the DataModule's block size); filled from the DataModule.
        generations: Continuations sampled after each validation (0: none).
        generation_length: Tokens per sampled continuation.
        prompt: Text the samples continue, encoded by the DataModule's ``encode`` (without one: token 0).
        temperature: Sampling temperature (> 0).
        top_k: Sample among the ``top_k`` likeliest tokens only; ``None``: all.
        **kwargs: ``optimizer``, ``lr_scheduler`` and ``scheduler_interval`` of :class:`~lightning_modules.task.Task`.
    """

    progress_bar_epochs = ("val/loss", "val/perplexity")

    def __init__(
        self,
        net: LanguageNetFactory = GPT,
        vocab_size: int = 50257,
        max_length: int = 256,
        generations: int = 2,
        generation_length: int = 200,
        prompt: str = "\n",
        temperature: float = 1.0,
        top_k: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if vocab_size < 1 or max_length < 1:
            raise ValueError(f"vocab_size and max_length must be positive, got {vocab_size} and {max_length}")
        if generations < 0 or generation_length < 1:
            raise ValueError(
                f"generations must be >= 0 and generation_length >= 1, got {generations}, {generation_length}"
            )
        if temperature <= 0 or (top_k is not None and top_k < 1):
            raise ValueError(f"temperature must be > 0 and top_k >= 1, got {temperature} and {top_k}")
        self.vocab_size, self.max_length = vocab_size, max_length
        self.generations, self.generation_length, self.prompt = generations, generation_length, prompt
        self.temperature, self.top_k = temperature, top_k
        self.net = net(vocab_size, max_length)
        # Summed and counted exactly across DDP processes, weighted by tokens (as Classifier's evaluation loss).
        self.eval_loss = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, vocab_size) of ``input_ids`` (B, T)."""
        return self.net(input_ids)

    def loss(self, batch: Any) -> tuple[torch.Tensor, int]:
        """Mean next-token cross-entropy of a batch and its token count."""
        inputs, targets = self.split_batch(batch)
        logits = self(inputs)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten()), targets.numel()  # (B * T, V) vs (B * T,)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, tokens = self.loss(batch)
        self.log("train/loss", self.guard(loss), batch_size=tokens)  # not prog_bar: see Task
        return loss

    def _evaluate(self, batch: Any, stage: str) -> None:
        loss, tokens = self.loss(batch)
        self.eval_loss[stage].update(loss, weight=tokens)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _log_evaluation(self, stage: str) -> None:
        loss = self.eval_loss[stage].compute()  # synced over processes
        self.eval_loss[stage].reset()
        self.log(f"{stage}/loss", loss)
        self.log(f"{stage}/perplexity", loss.exp())

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")
        if self.generations and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self.log_samples()

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, targets = self.split_batch(batch)
        logits = self(inputs)  # (B, T, V)
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T)
        return nll.mean(dim=1)  # (B,) nats per token of each block

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` tokens after ``input_ids`` (B, T0); returns (B, T0 + max_new_tokens).

        The context is cropped to the last ``max_length`` tokens at every step (nanoGPT's ``generate``), so samples
        may run longer than the block size, which the Hugging Face ``generate`` of a GPT-2 refuses.
        """
        was_training = self.training
        self.eval()
        ids = input_ids
        for _ in range(max_new_tokens):
            logits = self(ids[:, -self.max_length :])[:, -1, :] / temperature  # (B, V)
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = logits.float().softmax(-1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=generator).to(ids.device)], dim=1)
        self.train(was_training)
        return ids

    def log_samples(self) -> None:
        """Sample ``generations`` continuations of ``prompt`` and log them as a table ``val/samples``."""
        data = self.trainer.datamodule if self._trainer is not None else None
        encode, decode = getattr(data, "encode", None), getattr(data, "decode", None)
        prompt = (encode(self.prompt) if callable(encode) and self.prompt else None) or [0]
        start = torch.tensor([prompt] * self.generations, device=self.device)  # (generations, T0)
        # A generator of its own: sampling must not move the training run's random state.
        generator = torch.Generator(device=self.device).manual_seed(self.global_step)
        ids = self.generate(start, self.generation_length, self.temperature, self.top_k, generator)
        texts = [decode(row) if callable(decode) else " ".join(map(str, row)) for row in ids[:, len(prompt) :].tolist()]
        log_table(self.trainer, "val/samples", ["step", "prompt", "sample"],
                  [[self.global_step, self.prompt, text] for text in texts])  # fmt: skip
