"""Tokenizers of the text DataModules: a pretrained one by name or path, or one trained on the training split with
the ``tokenizers`` library; either way a ``transformers`` fast tokenizer, saved as its files' bytes so a checkpoint
carries it (``recipe test|predict --ckpt_path`` then needs no training data and no network to tokenize).

Trained tokenizers: WordPiece with BERT's normalisation and ``[CLS] text [SEP]`` framing for classification (Wu et
al. 2016, https://arxiv.org/abs/1609.08144), byte-level BPE for language modelling (GPT-2's, Radford et al. 2019).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def pretrained(name_or_path: str):
    """``AutoTokenizer`` of a hub name or local folder, with a padding token (a GPT-2's end-of-text when it lacks
    one)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool = True, min_frequency: int = 2):
    """A ``tokenizers.Tokenizer`` (WordPiece) trained on ``texts``: ``[PAD]`` is id 0, every text framed as
    ``[CLS] ... [SEP]``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tokenizer


#: The ``transformers`` roles of :func:`wordpiece`'s special tokens (``tokenizer_config.json`` keys).
WORDPIECE_ROLES = {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                   "mask_token": "[MASK]"}  # fmt: skip


def train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool = True, min_frequency: int = 2):
    """:func:`wordpiece` as a ``transformers`` fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=wordpiece(texts, vocab_size, lowercase, min_frequency), **WORDPIECE_ROLES
    )


def train_byte_bpe(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts`` (every byte encodable, no unknown token); id 0 pads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def to_files(tokenizer) -> dict[str, bytes]:
    """The files ``save_pretrained`` writes for ``tokenizer``, by name: what a checkpoint stores."""
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        files = {}
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as f:
                files[name] = f.read()
    return files


def from_files(files: dict[str, bytes]):
    """The tokenizer :func:`to_files` saved."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as folder:
        for name, content in files.items():
            with open(os.path.join(folder, os.path.basename(name)), "wb") as f:
                f.write(content)
        return AutoTokenizer.from_pretrained(folder)
