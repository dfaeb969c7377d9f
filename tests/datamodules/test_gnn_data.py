"""Graph DataModules on tiny files in their libraries' raw formats: loading, masks, folds and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gnn_fake_data import write_ogbn_arxiv, write_planetoid, write_tu
from lightning.fabric.utilities.exceptions import MisconfigurationException

from datamodules.gnn import KarateClubDataModule, PlanetoidDataModule, check_graph
from datamodules.gnn_arxiv import OgbnArxivDataModule
from datamodules.gnn_tu import TUFoldDataModule


@pytest.fixture
def root(tmp_path):
    write_planetoid(tmp_path, "Cora")
    write_tu(tmp_path, "MUTAG")
    return tmp_path


def test_planetoid_reads_the_raw_files_with_the_public_split(root):
    data = PlanetoidDataModule(str(root), "Cora")
    assert (data.num_node_features, data.num_node_classes) == (12, 3)
    data.setup("fit")
    graph = next(iter(data.train_dataloader()))
    assert graph.num_nodes == 536 and int(graph.target_mask.sum()) == 6
    assert torch.allclose(graph.x.sum(dim=1)[graph.x.sum(dim=1) > 0], torch.ones(1))  # NormalizeFeatures
    assert "train_mask" not in graph  # the view carries only its own stage's mask


def test_each_stage_scores_its_own_nodes_of_one_shared_graph(root):
    data = PlanetoidDataModule(str(root), "Cora")
    data.setup("fit")
    train, val, test = (
        next(iter(loader())) for loader in (data.train_dataloader, data.val_dataloader, data.test_dataloader)
    )
    masks = torch.stack([train.target_mask, val.target_mask, test.target_mask])
    assert masks.sum(dim=1).tolist() == [6, 500, 30]
    assert int(masks.sum(dim=0).max()) == 1  # disjoint
    assert train.x.data_ptr() == test.x.data_ptr()  # views, not copies
    assert "target_mask" not in next(iter(data.predict_dataloader()))  # predict scores every node


def test_setup_never_downloads_a_missing_dataset(tmp_path):
    with pytest.raises(MisconfigurationException, match="Planetoid CiteSeer not found.*data_dir"):
        PlanetoidDataModule(str(tmp_path), "CiteSeer").setup("fit")
    with pytest.raises(MisconfigurationException, match="TU dataset MUTAG not found"):
        TUFoldDataModule(str(tmp_path)).setup("fit")
    with pytest.raises(MisconfigurationException, match="ogbn-arxiv not found"):
        OgbnArxivDataModule(str(tmp_path)).num_node_features  # noqa: B018


def test_a_split_mask_that_selects_nothing_is_refused(tmp_path):
    write_planetoid(tmp_path, "Cora")
    data = PlanetoidDataModule(str(tmp_path), "Cora")
    graph = data.load()
    graph.val_mask[:] = False
    data.load = lambda: graph
    with pytest.raises(MisconfigurationException, match="val split .* selects no node"):
        data.setup("fit")


def test_graph_checks_refuse_missing_features_and_out_of_range_edges():
    from torch_geometric.data import Data

    with pytest.raises(MisconfigurationException, match="no node features"):
        check_graph(Data(edge_index=torch.tensor([[0], [1]]), num_nodes=2), "g")
    with pytest.raises(MisconfigurationException, match="edge indices from 0 to 5 but 3 nodes"):
        check_graph(Data(x=torch.ones(3, 1), edge_index=torch.tensor([[0, 1], [5, 2]])), "g")


def test_tu_graphs_without_node_labels_are_refused(tmp_path):
    write_tu(tmp_path, "MUTAG")
    (tmp_path / "MUTAG" / "raw" / "MUTAG_node_labels.txt").unlink()
    with pytest.raises(MisconfigurationException, match="graph 0 of MUTAG .* no node features"):
        TUFoldDataModule(str(tmp_path)).setup("fit")


def test_tu_edges_to_missing_nodes_are_refused(tmp_path):
    write_tu(tmp_path, "MUTAG")
    edges = tmp_path / "MUTAG" / "raw" / "MUTAG_A.txt"
    edges.write_text(edges.read_text() + "1, 100000\n")
    with pytest.raises(MisconfigurationException, match="MUTAG"):
        TUFoldDataModule(str(tmp_path)).setup("fit")


def test_folds_partition_the_graphs_and_keep_the_class_balance(root):
    data = TUFoldDataModule(str(root), "MUTAG", num_folds=5, seed=3)
    folds = data.folds()
    together = np.sort(np.concatenate(folds))
    assert together.tolist() == list(range(40))  # every graph in exactly one fold
    labels = data.dataset.y.numpy()
    assert [int(labels[f].sum()) for f in folds] == [4] * 5  # 20 of class 1 spread evenly
    assert [f.tolist() for f in TUFoldDataModule(str(root), "MUTAG", num_folds=5, seed=3).folds()] == [
        f.tolist() for f in folds
    ]  # seeded


@pytest.mark.parametrize("val_share", [0.0, 0.25])
def test_fold_splits_are_disjoint_and_validate_as_asked(root, val_share):
    data = TUFoldDataModule(str(root), "MUTAG", fold=2, num_folds=5, val_share=val_share)
    data.setup("fit")
    train, val, test = (set(data.splits[s].tolist()) for s in ("train", "val", "test"))
    assert test == set(data.folds()[2].tolist())
    assert not train & test
    if val_share:
        assert not val & train and not val & test and len(val) == 8  # a quarter of the 32 training graphs
    else:
        assert val == test  # the GIN paper's protocol
    assert (data.num_node_features, data.num_classes) == (7, 2)
    batch = next(iter(data.train_dataloader()))
    assert batch.num_graphs == min(32, len(train)) and batch.y.max() <= 1


def test_karate_club_masks_are_disjoint_and_seeded():
    data = KarateClubDataModule(seed=1)
    graph = data.graph
    masks = torch.stack([graph.train_mask, graph.val_mask, graph.test_mask])
    assert masks.sum(dim=1).tolist() == [4, 10, 20] and masks.sum(dim=0).tolist() == [1] * 34
    assert (data.num_node_features, data.num_node_classes) == (34, 4)
    assert torch.equal(KarateClubDataModule(seed=1).graph.val_mask, graph.val_mask)


def test_arxiv_reads_ogb_files_as_an_undirected_graph(tmp_path):
    write_ogbn_arxiv(tmp_path)
    data = OgbnArxivDataModule(str(tmp_path), batch_size=8, num_neighbors=(3, 2), eval_num_neighbors=(-1, -1))
    assert (data.num_node_features, data.num_node_classes) == (8, 40)
    graph = data.graph
    assert graph.y.dim() == 1 and graph.is_undirected()


def test_arxiv_sampling_without_pyg_lib_says_what_to_install(tmp_path, monkeypatch):
    from torch_geometric import typing as pyg_typing

    write_ogbn_arxiv(tmp_path)
    monkeypatch.setattr(pyg_typing, "WITH_PYG_LIB", False)
    monkeypatch.setattr(pyg_typing, "WITH_TORCH_SPARSE", False)
    with pytest.raises(MisconfigurationException, match="pip install pyg-lib"):
        OgbnArxivDataModule(str(tmp_path)).setup("fit")
