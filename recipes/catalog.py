"""The packaged recipes: find one by name (``vision/digits``) and describe them all for ``recipe list``.

Recipes ship inside the ``recipes`` package as ``<domain>/<name>.yaml`` so ``pip install`` users can run them
without a clone. A recipe's first comment line is its one-line description. A recipe that is another one plus a
change says so on a comment line ``# extends: <domain>/<name>`` and holds only the change: the command stacks the
base before it (``--config base --config recipe``), so a comparison between the two stays valid when the base
changes. Overlays in ``overlays/`` (debug
switches to stack on any recipe) are found by name the same way but are not recipes of their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

RECIPES_DIR = Path(__file__).resolve().parent
OVERLAYS = "overlays"
#: W&B sweep configs (``wandb sweep recipes/sweeps/<name>.yaml``), which run recipes but are none themselves.
SWEEPS = "sweeps"


@dataclass(frozen=True)
class Recipe:
    name: str
    domain: str
    path: Path
    data: str
    model: str
    description: str


def recipe_paths() -> list[Path]:
    """Every packaged recipe YAML (overlays and sweeps excluded), sorted by name."""
    return sorted(p for p in RECIPES_DIR.glob("*/*.yaml") if p.parent.name not in (OVERLAYS, SWEEPS))


def find(name: str) -> Path | None:
    """Path of a config: an existing file as given, else the packaged recipe or overlay called ``name``."""
    if os.path.isfile(name):
        return Path(name)
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    stem = stem.removeprefix("recipes/")
    candidate = RECIPES_DIR / f"{stem}.yaml"
    return candidate if "/" in stem and candidate.is_file() else None


def bases(path: Path) -> list[Path]:
    """The recipes ``path`` extends (its ``# extends:`` comment lines at the top), resolved to paths."""
    found = []
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.lstrip("# ").startswith("extends:"):
            name = line.split("extends:", 1)[1].strip()
            base = find(name)
            if base is None:
                raise FileNotFoundError(f"{path} extends '{name}', which is not a packaged recipe or a file")
            found.append(base)
    return found


def expand(path: Path) -> list[Path]:
    """The configs to stack for ``path``: its bases (recursively, in order), then ``path`` itself."""
    return [p for base in bases(path) for p in expand(base)] + [Path(path)]


def merged(path: Path) -> dict:
    """The recipe's YAML with its bases merged in, as the stacked configs resolve (mappings merge, the rest
    replaces)."""

    def merge(into: dict, update: dict) -> dict:
        for key, value in update.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value
        return into

    config: dict = {}
    for part in expand(path):
        merge(config, yaml.safe_load(part.read_text()) or {})
    return config


def recipe_name(path: Path) -> str:
    """``vision/digits`` for a packaged recipe, the file stem for any other config."""
    path = path.resolve()
    if path.parent.parent == RECIPES_DIR:
        return f"{path.parent.name}/{path.stem}"
    return path.stem


def _short(class_path: str | None) -> str:
    return class_path.rsplit(".", 1)[-1] if class_path else "-"


def describe(path: Path) -> Recipe:
    text = path.read_text()
    config = merged(path)
    first = text.splitlines()[0] if text else ""
    description = first.lstrip("#").strip() if first.startswith("#") else ""
    model = config.get("model") or {}
    net = (model.get("init_args") or {}).get("net") or {}
    model_name = _short(model.get("class_path"))
    if isinstance(net, dict) and net.get("class_path"):
        model_name += f"({_short(net['class_path'])})"
    return Recipe(
        name=recipe_name(path),
        domain=path.parent.name,
        path=path,
        data=_short((config.get("data") or {}).get("class_path")),
        model=model_name,
        description=description,
    )


def format_table() -> str:
    recipes = [describe(p) for p in recipe_paths()]
    header = ("recipe", "domain", "data", "model", "description")
    rows = [header] + [(r.name, r.domain, r.data, r.model, r.description) for r in recipes]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4] for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
