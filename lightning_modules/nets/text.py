"""Networks over token ids: plain ``nn.Module`` s, no Lightning, no data code.

Every classifier here takes ``(vocab_size, num_classes, pad_token_id, max_length)`` first, so a LightningModule
builds it from the data's values (a recipe names the class and its own options only), and maps
``input_ids`` (B, T) long and ``attention_mask`` (B, T) (1 for tokens, 0 for padding) to logits (B, num_classes):

* :class:`TransformerClassifier`: a BERT encoder built from a ``transformers.BertConfig`` and trained from scratch
  (Devlin et al. 2019, https://arxiv.org/abs/1810.04805); ``.model`` is a Hugging Face model (``save_pretrained``).
* :class:`PretrainedClassifier`: any ``AutoModelForSequenceClassification`` by hub name or local path.
* :class:`BiLSTMClassifier`: embeddings, a bidirectional LSTM, masked max-and-mean pooling.
* :class:`TextCNN`: embeddings, parallel 1-D convolutions of several widths, max over time (Kim 2014,
  https://arxiv.org/abs/1408.5882).

Language models take ``(vocab_size, max_length)`` and map ``input_ids`` (B, T) to next-token logits (B, T, V):

* :class:`GPT`: a GPT-2 (Radford et al. 2019) built from a ``transformers.GPT2Config``, from scratch;
* :class:`PretrainedCausalLM`: any ``AutoModelForCausalLM`` by hub name or local path.

Both keep the Hugging Face model as ``.model``, so ``generate`` and ``save_pretrained`` work on it.
"""

from __future__ import annotations

import torch
from torch import nn


def _hf():
    import transformers  # imported when a network is built: ``recipe --help`` need not load it

    transformers.logging.set_verbosity_error()  # "some weights were newly initialised" is the point of fine-tuning
    return transformers


class TransformerClassifier(nn.Module):
    """A BERT encoder from scratch, its ``[CLS]`` vector through BERT's pooler and a linear head.

    Args:
        vocab_size: Tokens in the vocabulary; filled from the data.
        num_classes: Classes; filled from the data.
        pad_token_id: Id of the padding token; filled from the data.
        max_length: Longest sequence, the size of the position table; filled from the data.
        hidden_size: Width of the token vectors.
        num_layers: Transformer blocks.
        num_heads: Attention heads per block (must divide ``hidden_size``).
        intermediate_size: Width of each block's feed-forward layer.
        dropout: Dropout on embeddings, attention weights and block outputs.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        pad_token_id: int = 0,
        max_length: int = 512,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 2,
        intermediate_size: int = 512,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide hidden_size ({hidden_size})")
        transformers = _hf()
        config = transformers.BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            max_position_embeddings=max_length,
            pad_token_id=pad_token_id,
            num_labels=num_classes,
        )
        self.model = transformers.BertForSequenceClassification(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, num_classes)


class PretrainedClassifier(nn.Module):
    """A Hugging Face sequence classifier by name (``distilbert-base-uncased``) or local path, a new head sized to
    ``num_classes``.

    Its tokenizer is the DataModule's (``--data.init_args.tokenizer`` with the same name). A checkpoint holds the
    fine-tuned weights: rebuilt from it, ``pretrained`` is off and only the model's configuration is read (from
    the Hugging Face cache, or the local folder).

    Args:
        vocab_size: Tokens of the DataModule's tokenizer; the embedding table grows when the tokenizer has more.
        num_classes: Classes; filled from the data.
        pad_token_id: Id of the padding token; filled from the data.
        max_length: Longest sequence; filled from the data (the model's own limit must be at least this).
        name_or_path: Hub name or folder written by ``save_pretrained``.
        pretrained: Load the pretrained weights (``False``: the same architecture, randomly initialised).
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        pad_token_id: int = 0,
        max_length: int = 512,
        name_or_path: str = "distilbert-base-uncased",
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        transformers = _hf()
        auto = transformers.AutoModelForSequenceClassification
        if pretrained:
            # A checkpoint with a head of another size (a sentiment model for a topic task) gets a new head.
            self.model = auto.from_pretrained(name_or_path, num_labels=num_classes, ignore_mismatched_sizes=True)
        else:
            self.model = auto.from_config(transformers.AutoConfig.from_pretrained(name_or_path, num_labels=num_classes))
        if vocab_size > self.model.get_input_embeddings().num_embeddings:
            self.model.resize_token_embeddings(vocab_size)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and max_length > limit:
            raise ValueError(f"max_length {max_length} exceeds {name_or_path}'s {limit} positions; lower it")
        self.model.config.pad_token_id = pad_token_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, num_classes)


class _Embedded(nn.Module):
    """Token embeddings whose padding row stays zero, with dropout."""

    def __init__(self, vocab_size: int, dim: int, pad_token_id: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=pad_token_id)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.embedding(input_ids))  # (B, T, D)


class BiLSTMClassifier(nn.Module):
    """Embeddings, a bidirectional LSTM over the unpadded tokens, then the max and the mean of its outputs over the
    real tokens, concatenated, through a linear head.

    Args:
        vocab_size: Tokens in the vocabulary; filled from the data.
        num_classes: Classes; filled from the data.
        pad_token_id: Id of the padding token; filled from the data.
        max_length: Unused (an LSTM has no position table); taken so every classifier here is built alike.
        embedding_dim: Width of the token embeddings.
        hidden_size: LSTM units per direction.
        num_layers: Stacked LSTM layers.
        dropout: Dropout on embeddings, between LSTM layers and before the head.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        pad_token_id: int = 0,
        max_length: int = 512,
        embedding_dim: int = 128,
        hidden_size: int = 128,
        num_layers: int = 1,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.embed = _Embedded(vocab_size, embedding_dim, pad_token_id, dropout)
        self.lstm = nn.LSTM(
            embedding_dim,
            hidden_size,
            num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * hidden_size, num_classes))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(input_ids), lengths, batch_first=True,
                                                   enforce_sorted=False)  # fmt: skip
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=input_ids.shape[1])  # (B, T, 2H)
        mask = attention_mask.unsqueeze(-1).bool()  # (B, T, 1)
        mean = out.masked_fill(~mask, 0).sum(1) / mask.sum(1).clamp_min(1)  # (B, 2H)
        top = out.masked_fill(~mask, float("-inf")).amax(1).nan_to_num(0.0, neginf=0.0)  # (B, 2H)
        return self.head(torch.cat([top, mean], dim=-1))  # (B, num_classes)


class TextCNN(nn.Module):
    """Kim's CNN: embeddings, one 1-D convolution per width with ReLU, max over the real tokens, linear head.

    Args:
        vocab_size: Tokens in the vocabulary; filled from the data.
        num_classes: Classes; filled from the data.
        pad_token_id: Id of the padding token; filled from the data.
        max_length: Unused (convolutions need no position table); taken so every classifier here is built alike.
        embedding_dim: Width of the token embeddings.
        channels: Filters per width.
        kernel_sizes: Widths of the filters, in tokens.
        dropout: Dropout on embeddings and before the head.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        pad_token_id: int = 0,
        max_length: int = 512,
        embedding_dim: int = 128,
        channels: int = 100,
        kernel_sizes: tuple[int, ...] = (3, 4, 5),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if not kernel_sizes or min(kernel_sizes) < 1:
            raise ValueError(f"kernel_sizes must be positive widths, got {kernel_sizes}")
        self.embed = _Embedded(vocab_size, embedding_dim, pad_token_id, dropout)
        # Padded on both sides so a text shorter than the widest filter still yields a value per filter.
        self.convs = nn.ModuleList(nn.Conv1d(embedding_dim, channels, k, padding=k // 2) for k in kernel_sizes)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels * len(kernel_sizes), num_classes))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids).transpose(1, 2)  # (B, D, T)
        pooled = []
        for conv in self.convs:
            h = torch.relu(conv(x))[..., : input_ids.shape[1]]  # (B, channels, T)
            pooled.append(h.masked_fill(attention_mask.unsqueeze(1) == 0, 0.0).amax(-1))  # ReLU >= 0: 0 is neutral
        return self.head(torch.cat(pooled, dim=-1))  # (B, num_classes)


class GPT(nn.Module):
    """A GPT-2 from scratch: learned positions, pre-norm blocks, the output layer tied to the token embeddings.

    Initialised as GPT-2 (and nanoGPT): normal(0, 0.02), residual projections scaled by ``1/sqrt(2 * n_layer)``.

    Args:
        vocab_size: Tokens in the vocabulary; filled from the data.
        max_length: Context length (the block size); filled from the data.
        n_layer: Transformer blocks.
        n_head: Attention heads per block (must divide ``n_embd``).
        n_embd: Width of the token vectors.
        dropout: Dropout on embeddings, attention weights and residual branches.
    """

    def __init__(
        self,
        vocab_size: int,
        max_length: int = 256,
        n_layer: int = 6,
        n_head: int = 6,
        n_embd: int = 384,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_head ({n_head}) must divide n_embd ({n_embd})")
        transformers = _hf()
        config = transformers.GPT2Config(
            vocab_size=vocab_size,
            n_positions=max_length,
            n_layer=n_layer,
            n_head=n_head,
            n_embd=n_embd,
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            activation_function="gelu",  # exact GELU, one kernel (nanoGPT's); GPT-2's tanh form is 8 on CPU
            bos_token_id=0,
            eos_token_id=0,
        )
        self.model = transformers.GPT2LMHeadModel(config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits  # (B, T, V)


class PretrainedCausalLM(nn.Module):
    """A Hugging Face causal language model by name (``gpt2``) or local path.

    Args:
        vocab_size: Tokens of the DataModule's tokenizer; the embedding table grows when the tokenizer has more.
        max_length: Context length; filled from the data (the model's own limit must be at least this).
        name_or_path: Hub name or folder written by ``save_pretrained``.
        pretrained: Load the pretrained weights (``False``: the same architecture, randomly initialised).
    """

    def __init__(self, vocab_size: int, max_length: int = 256, name_or_path: str = "gpt2",
                 pretrained: bool = True) -> None:  # fmt: skip
        super().__init__()
        transformers = _hf()
        auto = transformers.AutoModelForCausalLM
        if pretrained:
            self.model = auto.from_pretrained(name_or_path)
        else:
            self.model = auto.from_config(transformers.AutoConfig.from_pretrained(name_or_path))
        if vocab_size > self.model.get_input_embeddings().num_embeddings:
            self.model.resize_token_embeddings(vocab_size)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and max_length > limit:
            raise ValueError(f"max_length {max_length} exceeds {name_or_path}'s {limit} positions; lower it")

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits  # (B, T, V)
