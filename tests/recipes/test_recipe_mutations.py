"""Property test: a recipe mutated as users mistype them ends in a short ``error:`` message, never a traceback.

Mutations, drawn with a fixed seed over every packaged recipe's leaf values: a wrong type, an unknown key beside a
known one, an out-of-range number, a required value removed. Each mutated recipe is parsed and instantiated
(``run=False``: model, DataModule and trainer are built, nothing trains); it either builds or stops with at most two
short lines (the problem, then where to look) and exit status 2.
"""

from __future__ import annotations

import copy
import random

import pytest
import yaml
from recipe_flags import offline_overrides

from recipes import catalog
from recipes.cli import main

OUT_OF_RANGE = (-3, -0.5, 2.5, 10**9)


def _leaves(tree, path=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, (*path, key))
    elif not isinstance(tree, list):
        yield path, tree


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _delete(tree, path):
    for key in path[:-1]:
        tree = tree[key]
    del tree[path[-1]]


def _mutations(seed: int = 0, count: int = 24):
    rng = random.Random(seed)
    recipes = {p: catalog.merged(p) for p in catalog.recipe_paths()}  # a recipe with the recipes it extends
    drawn = []
    while len(drawn) < count:
        path = rng.choice(sorted(recipes))
        config = copy.deepcopy(recipes[path])
        leaves = [(p, v) for p, v in _leaves(config) if p[0] in ("model", "data", "trainer", "checkpoint")]
        where, value = rng.choice(leaves)
        kind = rng.choice(["type", "unknown", "range", "missing"])
        if kind == "type":
            _set(config, where, "not-a-number" if isinstance(value, (int, float)) else {"nested": [1, 2]})
        elif kind == "unknown":
            _set(config, (*where[:-1], "no_such_option"), 1)
        elif kind == "range":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            _set(config, where, rng.choice(OUT_OF_RANGE))
        else:
            _delete(config, where)
        drawn.append((f"{catalog.recipe_name(path)}:{kind}:{'.'.join(map(str, where))}", config))
    return drawn


@pytest.mark.parametrize(("name", "config"), _mutations(), ids=[n for n, _ in _mutations()])
def test_a_mutated_recipe_builds_or_says_what_is_wrong_in_a_line(name, config, tmp_path, capsys, fake_data_root):
    path = tmp_path / "mutated.yaml"
    path.write_text(yaml.safe_dump(config))
    offline = offline_overrides(path, fake_data_root)  # CPU, no logger, fake data, no weight download
    try:
        main(["--config", str(path), *offline], run=False)
    except SystemExit as exit_info:
        assert exit_info.code == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert lines[0].startswith("error: ") and len(lines) <= 2, err
        assert "Traceback" not in err and "Namespace(" not in err and len(lines[0]) < 500, err
