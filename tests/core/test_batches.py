"""The one batch rule: inputs and targets of tuple, dict, graph and other batches, and a module's override."""

from __future__ import annotations

import torch

from core.batches import default_split, split_batch


def test_tuples_hold_inputs_then_targets():
    x, y = torch.randn(4, 3), torch.arange(4)
    assert default_split((x, y)) == (x, y)
    assert default_split([x]) == (x, None)


def test_a_tokenizer_batch_gives_its_features_as_inputs_and_labels_as_targets():
    batch = {"input_ids": torch.ones(2, 5), "attention_mask": torch.ones(2, 5), "labels": torch.tensor([0, 1])}
    inputs, targets = default_split(batch)
    assert set(inputs) == {"input_ids", "attention_mask"} and torch.equal(targets, batch["labels"])


def test_a_dict_with_an_input_key_gives_that_value():
    batch = {"input": torch.zeros(2, 3), "target": torch.tensor([1, 0]), "index": torch.tensor([7, 8])}
    inputs, targets = default_split(batch)
    assert inputs is batch["input"] and targets is batch["target"]
    assert default_split({"x": 1})[1] is None  # no target key: a predict batch


def test_a_pyg_graph_is_the_inputs_and_its_y_the_targets():
    from torch_geometric.data import Batch, Data

    graph = Data(x=torch.randn(3, 2), edge_index=torch.tensor([[0, 1], [1, 2]]), y=torch.tensor([1]))
    batch = Batch.from_data_list([graph, graph])
    inputs, targets = default_split(batch)
    assert inputs is batch and torch.equal(targets, torch.tensor([1, 1]))


def test_anything_else_is_inputs_alone_and_a_module_overrides_the_rule():
    observations = torch.randn(8, 4)
    assert default_split(observations) == (observations, None)

    class Agent:
        def split_batch(self, batch):
            return batch["obs"], batch["returns"]

    assert split_batch({"obs": 1, "returns": 2, "target": 3}, Agent()) == (1, 2)
    assert split_batch({"obs": 1, "target": 3}, object()) == ({"obs": 1}, 3)
