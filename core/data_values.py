"""The values a model needs from its data, each with one name and one meaning across every domain.

A DataModule declares what it provides by having a property (or attribute) of that name; the ``recipe`` command
fills the model constructor argument of the same name, whatever the model is, ours or a user's. The names are
chosen so that values of different meaning cannot meet: a node's features are ``num_node_features``, never a
table's ``num_features``; the classes of a node are ``num_node_classes``, while ``num_classes`` always counts the
classes of one whole example (an image, a clip, a text, a table row, a graph).

Where the value comes from matters for ``recipe predict`` on another machine: values read from files on disk
(an image folder's classes and colour mode, a vocabulary built from the training split) need the data present
when the command starts; values fixed by the dataset (MNIST's ten classes) do not.
"""

from __future__ import annotations

import inspect
from typing import Any

#: name -> meaning. A DataModule property of one of these names is filled into the model argument of that name.
DATA_VALUES: dict[str, str] = {
    "num_classes": "classes of the target of one example (an image, clip, text, table row or whole graph)",
    "class_names": "names of those classes, in index order",
    "in_channels": "channels of one image (1 grayscale, 3 colour)",
    "image_size": "side of a square image in pixels",
    "num_features": "length of one flat feature vector",
    "num_continuous": "numeric columns of a table, after preprocessing (missing-value indicators included)",
    "cardinalities": "categories of each categorical column of a table (the index kept for unseen values included)",
    "target_kind": "'classification' or 'regression': what the table's target is",
    "vocab_size": "tokens in the vocabulary",
    "pad_token_id": "id of the padding token",
    "max_length": "longest token sequence a batch holds",
    "sample_rate": "audio samples per second",
    "num_samples": "audio samples of one clip",
    "num_node_features": "features of one graph node",
    "num_edge_features": "features of one graph edge",
    "num_node_classes": "classes of one graph node (node classification)",
    "observation_shape": "shape of one environment observation",
    "num_actions": "discrete actions of an environment",
    "action_dim": "dimensions of a continuous action",
}


def declared(datamodule: Any) -> dict[str, Any]:
    """The data values ``datamodule`` declares: its properties and attributes named in :data:`DATA_VALUES`.

    Only names the object's class or instance defines are read (``inspect.getattr_static``, so a property that
    raises by mistake is not mistaken for an absent one). Reading a property may scan files: its error (a missing
    folder, an unreadable file) goes to the user as is.
    """
    values = {}
    for name in DATA_VALUES:
        try:
            inspect.getattr_static(datamodule, name)
        except AttributeError:
            continue
        values[name] = getattr(datamodule, name)
    return values


def missing_message(name: str, datamodule: Any, model_class: str) -> str:
    """The one line that says a model argument needs a value the DataModule does not declare, and the fixes."""
    return (
        f"{model_class} takes {name} ({DATA_VALUES[name]}) from the data, but {type(datamodule).__name__} has no "
        f"{name} property. Add one to the DataModule, or pass it by hand: --model.init_args.{name}=VALUE."
    )


def conflict_message(name: str, given: Any, provided: Any, datamodule: Any) -> str:
    """The one line that says a hand-given value disagrees with what the DataModule declares."""
    return (
        f"model {name}={given!r} was given, but {type(datamodule).__name__} provides {name}={provided!r}. Drop "
        f"--model.init_args.{name} (it comes from the data), or fix the DataModule."
    )
