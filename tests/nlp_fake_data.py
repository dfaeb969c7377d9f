"""Small texts in the real formats, generated offline, at the paths the NLP recipes read under ``data_dir``: the SMS
Spam Collection's header-less TSV, tiny-shakespeare's ``input.txt``, a CSV and a JSONL of labelled texts, and a tiny
randomly initialised DistilBERT with its tokenizer saved by ``save_pretrained`` (the ``from_pretrained`` path)."""

from __future__ import annotations

import json
import random
from pathlib import Path

HAM = ["ok see you at home later", "are we still on for lunch tomorrow", "i will call you when i get there",
       "thanks for the lovely dinner", "sorry i missed your call", "can you pick up some milk"]  # fmt: skip
SPAM = ["WINNER you have won a FREE prize call now", "urgent claim your cash reward txt WIN to 80086",
        "free entry to win a holiday reply YES", "you have been selected for a 1000 pound award call now"]  # fmt: skip
#: Two phrase classes that share no words: a learnable task for a model trained from scratch.
TOPICS = {
    "sports": ["the team won the match", "a late goal in the final", "the striker scored twice",
               "fans cheered the coach"],
    "science": ["the lab measured the cells", "a new telescope found a planet", "the study tested a vaccine",
                "physicists observed particles"],
}  # fmt: skip
SHAKESPEARE = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?

All:
Resolved. resolved.
"""
TINY_MODEL = "tiny_distilbert"


def phrases(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` ``(text, label)`` pairs of two topics, each text two phrases of its topic."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = list(TOPICS)[i % 2]
        rows.append((f"{rng.choice(TOPICS[label])} and {rng.choice(TOPICS[label])}", label))
    return rows


def write_sms(root: Path, rows: int = 60) -> Path:
    """``root/sms_spam/SMSSpamCollection``: ``label<TAB>text``, no header, a stray quote as in the real file."""
    folder = Path(root) / "sms_spam"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    lines = []
    for i in range(rows):
        spam = i % 4 == 0
        text = rng.choice(SPAM if spam else HAM)
        quote = ' "ok' if i == 5 else ""  # an unmatched quote: read as text, not as the start of a quoted field
        lines.append(f"{'spam' if spam else 'ham'}\t{text}{quote}")
    path = folder / "SMSSpamCollection"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_text(root: Path, repeats: int = 12) -> Path:
    """``root/tinyshakespeare/input.txt``: a few lines of the play, repeated."""
    folder = Path(root) / "tinyshakespeare"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "input.txt"
    path.write_text(SHAKESPEARE * repeats)
    return path


def write_labelled(root: Path, rows: int = 48) -> tuple[Path, Path]:
    """``root/text_classification/topics.csv`` and ``topics.jsonl``: ``text,label`` rows of two topics."""
    folder = Path(root) / "text_classification"
    folder.mkdir(parents=True, exist_ok=True)
    pairs = phrases(rows)
    csv_path, jsonl_path = folder / "topics.csv", folder / "topics.jsonl"
    csv_path.write_text("text,label\n" + "".join(f'"{t}",{y}\n' for t, y in pairs))
    jsonl_path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in pairs))
    return csv_path, jsonl_path


def write_tiny_model(root: Path, dim: int = 16, hidden: int = 32, positions: int = 512) -> Path:
    """``root/tiny_distilbert``: a randomly initialised one-layer DistilBERT encoder (no head, as the hub's
    ``distilbert-base-uncased``) and a WordPiece tokenizer of the fake texts, in the files ``save_pretrained`` writes,
    loadable by ``AutoTokenizer`` / ``AutoModelForSequenceClassification.from_pretrained``.

    Written with ``tokenizers`` and ``safetensors`` alone: importing a ``transformers`` model class takes seconds.
    """
    import torch
    from safetensors.torch import save_file

    from datamodules.text_tokenizers import WORDPIECE_ROLES, wordpiece

    folder = Path(root) / TINY_MODEL
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = wordpiece([t for t, _ in phrases(40)] + HAM + SPAM, vocab_size=200, min_frequency=1)
    tokenizer.save(str(folder / "tokenizer.json"))
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": positions, **WORDPIECE_ROLES}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    vocab = tokenizer.get_vocab_size()
    config = {"model_type": "distilbert", "architectures": ["DistilBertModel"], "vocab_size": vocab, "dim": dim,
              "n_layers": 1, "n_heads": 2, "hidden_dim": hidden, "max_position_embeddings": positions,
              "pad_token_id": tokenizer.token_to_id("[PAD]")}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    generator = torch.Generator().manual_seed(0)
    shapes = {"embeddings.word_embeddings.weight": (vocab, dim),
              "embeddings.position_embeddings.weight": (positions, dim),
              "embeddings.LayerNorm.weight": (dim,), "embeddings.LayerNorm.bias": (dim,)}  # fmt: skip
    layer = "transformer.layer.0."
    for name in ("q_lin", "k_lin", "v_lin", "out_lin"):
        shapes |= {f"{layer}attention.{name}.weight": (dim, dim), f"{layer}attention.{name}.bias": (dim,)}
    shapes |= {f"{layer}ffn.lin1.weight": (hidden, dim), f"{layer}ffn.lin1.bias": (hidden,),
               f"{layer}ffn.lin2.weight": (dim, hidden), f"{layer}ffn.lin2.bias": (dim,)}  # fmt: skip
    for norm in ("sa_layer_norm", "output_layer_norm"):
        shapes |= {f"{layer}{norm}.weight": (dim,), f"{layer}{norm}.bias": (dim,)}
    weights = {
        "distilbert." + name: torch.ones(shape) if "norm" in name.lower() and name.endswith("weight")
        else torch.zeros(shape) if len(shape) == 1 else torch.randn(shape, generator=generator) * 0.02
        for name, shape in shapes.items()
    }  # fmt: skip
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def write_nlp_fakes(root: Path) -> None:
    """Every file the NLP recipes read under ``--data.init_args.data_dir=root`` (and ``root/tiny_distilbert``)."""
    write_sms(root)
    write_text(root)
    write_labelled(root)
    write_tiny_model(root)
