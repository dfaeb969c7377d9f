"""Node and graph classifiers: which nodes count, checkpoints, and learning on bundled and fake graphs."""

from __future__ import annotations

import functools

import pytest
import torch
from gnn_fake_data import write_tu
from lightning.pytorch import Trainer, seed_everything

from core.optim import parameter_groups
from datamodules.gnn import KarateClubDataModule
from datamodules.gnn_tu import TUFoldDataModule
from lightning_modules.gnn import GraphClassifier, NodeClassifier, scored_nodes
from lightning_modules.nets.gnn import GATNet, GCNNet, GINNet, SAGENet


def _trainer(tmp_path, epochs: int, **kwargs) -> Trainer:
    return Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        log_every_n_steps=1,
        **kwargs,
    )


@pytest.mark.parametrize("net", [GCNNet, GATNet, SAGENet])
def test_node_networks_map_every_node_to_class_scores(net):
    x, edges = torch.randn(6, 5), torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 4, 5]])
    assert net(5, 3).eval()(x, edges).shape == (6, 3)


def test_gin_maps_each_graph_of_a_batch_to_class_scores():
    x, edges = torch.randn(7, 4), torch.tensor([[0, 1, 3, 4, 5], [1, 2, 4, 5, 6]])
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    assert GINNet(4, 2, hidden_channels=8).eval()(x, edges, batch).shape == (2, 2)


def test_gcn_decays_its_first_layer_only_as_in_the_paper():
    net = GCNNet(5, 3)
    decayed, undecayed = parameter_groups(net)
    first, second = net.gnn.convs
    assert [id(p) for p in decayed["params"]] == [id(first.lin.weight)]
    assert undecayed["weight_decay"] == 0.0 and {id(second.lin.weight), id(first.bias)} <= set(
        map(id, undecayed["params"])
    )


def test_only_the_stage_nodes_are_scored():
    data = KarateClubDataModule()
    view = data.stage_view("val")
    model = NodeClassifier(num_node_features=34, num_node_classes=4).eval()
    inputs, targets = model.split_batch(view)
    assert torch.equal(targets, view.y[view.target_mask]) and len(targets) == 10
    assert model(inputs).shape == (10, 4)
    # A neighbour-sampled batch scores its seed nodes, which NeighborLoader puts first.
    view = data.stage_view(None)
    view.batch_size = 3
    assert scored_nodes(view) == slice(0, 3) and model(view).shape == (3, 4)


def test_loss_and_metrics_ignore_the_labels_of_other_stages(tmp_path):
    seed_everything(0)
    model = NodeClassifier(num_node_features=34, num_node_classes=4)
    data = KarateClubDataModule()
    before = _trainer(tmp_path, 1).validate(model, data, verbose=False)[0]
    graph = data.graph
    outside = ~graph.val_mask
    graph.y[outside] = (graph.y[outside] + 1) % 4  # every label the validation stage must not read is now wrong
    after = _trainer(tmp_path, 1).validate(model, data, verbose=False)[0]
    assert after == before
    graph.y[graph.val_mask] = (graph.y[graph.val_mask] + 1) % 4  # ...while its own labels do count
    assert _trainer(tmp_path, 1).validate(model, data, verbose=False)[0]["val/loss"] != before["val/loss"]


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    seed_everything(0)
    make = functools.partial(
        NodeClassifier, net=functools.partial(GATNet, heads=2), num_node_features=34, num_node_classes=4
    )
    model = make()
    data = KarateClubDataModule()
    trainer = _trainer(tmp_path, 3)
    trainer.fit(model, data)
    path = tmp_path / "final.ckpt"
    trainer.save_checkpoint(path)
    reloaded = NodeClassifier.load_from_checkpoint(path, weights_only=False).eval()
    graph = data.stage_view(None)
    with torch.no_grad():
        assert torch.equal(reloaded(graph), model.eval()(graph))
        fresh = make().eval()
        assert not torch.equal(fresh(graph), model(graph))
    # Its hyperparameters are its own constructor's (none of the base's it sets itself, such as num_classes).
    assert "num_classes" not in reloaded.hparams
    NodeClassifier(**reloaded.hparams)


@pytest.mark.slow
def test_gcn_learns_the_karate_club_communities_from_four_labels(tmp_path):
    seed_everything(0)
    model = NodeClassifier(num_node_features=34, num_node_classes=4)
    data = KarateClubDataModule()
    trainer = _trainer(tmp_path, 100, enable_checkpointing=False)
    trainer.fit(model, data)
    assert trainer.test(model, data, verbose=False)[0]["test/acc"] >= 0.7


@pytest.mark.slow
def test_gin_learns_fake_mutag(tmp_path):
    seed_everything(0)
    write_tu(tmp_path, "MUTAG")
    data = TUFoldDataModule(str(tmp_path), num_folds=4, batch_size=8)
    model = GraphClassifier(net=functools.partial(GINNet, hidden_channels=16), num_node_features=7, num_classes=2)
    trainer = _trainer(tmp_path, 15, enable_checkpointing=False)
    trainer.fit(model, data)
    assert trainer.test(model, data, verbose=False)[0]["test/acc"] >= 0.9
