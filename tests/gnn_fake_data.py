"""Tiny graph datasets in their libraries' raw on-disk formats, so the real loaders read them offline.

Planetoid (``ind.<name>.x/tx/allx/y/ty/ally/graph/test.index``, pickled scipy and numpy arrays, as
``torch_geometric.io.planetoid`` reads them), TU (``NAME_A.txt``, ``NAME_graph_indicator.txt``, ...) and OGB's
``ogbn-arxiv`` CSV layout. The labels are learnable: node features carry a class signal and edges join mostly nodes
of one class, so a learning test can demand a real accuracy.
"""

from __future__ import annotations

import gzip
import pickle
from collections import defaultdict
from pathlib import Path

import numpy as np
import scipy.sparse as sp

PLANETOID = {"Cora": "cora", "CiteSeer": "citeseer", "PubMed": "pubmed"}


def _homophilous_graph(labels: np.ndarray, rng: np.random.Generator, degree: int = 3) -> list[tuple[int, int]]:
    """Undirected edges, each node joined to ``degree`` random nodes, four in five of them of its own class."""
    edges = []
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    for node, label in enumerate(labels):
        for _ in range(degree):
            pool = by_class[label] if rng.random() < 0.8 else np.arange(len(labels))
            other = int(rng.choice(pool))
            if other != node:
                edges.append((node, other))
    return edges


def _class_features(labels: np.ndarray, num_features: int, rng: np.random.Generator) -> np.ndarray:
    """Binary bag-of-words-like features: each class switches on its own block of words more often."""
    probs = np.full((len(labels), num_features), 0.1)
    block = num_features // (labels.max() + 1)
    for node, label in enumerate(labels):
        probs[node, label * block : (label + 1) * block] = 0.5
    return (rng.random(probs.shape) < probs).astype(np.float32)


def write_planetoid(root: Path, name: str, num_classes: int = 3, num_features: int = 12, seed: int = 0) -> None:
    """Write ``root/<name>/raw`` with 6 training nodes, the 500 validation nodes PyG's loader expects after them,
    and 30 test nodes listed in shuffled order in ``test.index``, as the real files are."""
    rng = np.random.default_rng(seed)
    num_train, num_val, num_test = 2 * num_classes, 500, 30
    num_nodes = num_train + num_val + num_test
    labels = np.concatenate([np.arange(num_train) % num_classes, rng.integers(0, num_classes, num_val + num_test)])
    features = _class_features(labels, num_features, rng)
    one_hot = np.eye(num_classes, dtype=np.int64)[labels]
    graph: dict[int, list[int]] = defaultdict(list)
    for a, b in _homophilous_graph(labels, rng):
        graph[a].append(b)
        graph[b].append(a)
    test_nodes = np.arange(num_train + num_val, num_nodes)
    order = rng.permutation(test_nodes)  # tx row i belongs to node order[i]
    prefix = PLANETOID[name]
    items = {
        "x": sp.csr_matrix(features[:num_train]),
        "y": one_hot[:num_train],
        "allx": sp.csr_matrix(features[: num_train + num_val]),
        "ally": one_hot[: num_train + num_val],
        "tx": sp.csr_matrix(features[order]),
        "ty": one_hot[order],
        "graph": graph,
    }
    folder = root / name / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for key, value in items.items():
        with open(folder / f"ind.{prefix}.{key}", "wb") as f:
            pickle.dump(value, f)
    (folder / f"ind.{prefix}.test.index").write_text("".join(f"{i}\n" for i in order))


def write_tu(root: Path, name: str = "MUTAG", num_graphs: int = 40, num_node_labels: int = 7, seed: int = 0) -> None:
    """Write ``root/<name>/raw`` in the TU format: class 1 graphs are rings rich in node label 1, class 0 graphs are
    paths rich in label 0; graph labels are written as -1/1, as MUTAG's are."""
    rng = np.random.default_rng(seed)
    edges, indicator, node_labels, graph_labels = [], [], [], []
    first = 1  # TU node ids start at 1
    for graph in range(num_graphs):
        label = graph % 2
        size = int(rng.integers(5, 10))
        nodes = range(first, first + size)
        pairs = [(i, i + 1) for i in nodes[:-1]] + ([(nodes[-1], nodes[0])] if label else [])
        for a, b in pairs:
            edges += [(a, b), (b, a)]
        indicator += [graph + 1] * size
        favoured = 1 if label else 0
        node_labels += [favoured if rng.random() < 0.7 else int(rng.integers(0, num_node_labels)) for _ in nodes]
        graph_labels.append(1 if label else -1)
        first += size
    folder = root / name / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}_A.txt").write_text("".join(f"{a}, {b}\n" for a, b in edges))
    (folder / f"{name}_graph_indicator.txt").write_text("".join(f"{g}\n" for g in indicator))
    (folder / f"{name}_graph_labels.txt").write_text("".join(f"{y}\n" for y in graph_labels))
    (folder / f"{name}_node_labels.txt").write_text("".join(f"{y}\n" for y in node_labels))


def _csv_gz(path: Path, rows: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.writelines(",".join(str(v) for v in row) + "\n" for row in rows.reshape(len(rows), -1))


def write_ogbn_arxiv(root: Path, num_nodes: int = 60, num_features: int = 8, seed: int = 0) -> None:
    """Write ``root/ogbn_arxiv`` in OGB's raw CSV layout (labels among arxiv's 40 classes, a time split)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, num_nodes)
    edges = np.array(_homophilous_graph(labels, rng))
    folder = root / "ogbn_arxiv"
    raw = folder / "raw"
    _csv_gz(raw / "edge.csv.gz", edges)
    _csv_gz(raw / "node-feat.csv.gz", rng.normal(size=(num_nodes, num_features)).round(4) + labels[:, None])
    _csv_gz(raw / "node-label.csv.gz", labels)
    _csv_gz(raw / "node_year.csv.gz", rng.integers(2000, 2020, num_nodes))
    _csv_gz(raw / "num-node-list.csv.gz", np.array([num_nodes]))
    _csv_gz(raw / "num-edge-list.csv.gz", np.array([len(edges)]))
    order = rng.permutation(num_nodes)
    cut = [int(num_nodes * 0.6), int(num_nodes * 0.8)]
    for split, idx in zip(("train", "valid", "test"), np.split(order, cut), strict=True):
        _csv_gz(folder / "split" / "time" / f"{split}.csv.gz", np.sort(idx))
    (folder / "RELEASE_v1.txt").write_text("fake ogbn-arxiv for offline tests\n")


def write_gnn_fakes(root: Path) -> None:
    """Every graph dataset the gnn recipes read, in ``root``: Planetoid's three, MUTAG and ogbn-arxiv."""
    root = Path(root)
    for seed, name in enumerate(PLANETOID):
        write_planetoid(root, name, seed=seed)
    write_tu(root, "MUTAG")
    write_ogbn_arxiv(root)
