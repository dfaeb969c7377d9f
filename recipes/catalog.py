"""The packaged recipes: find one by name (``vision/digits``) and describe them all for ``recipe list``.

Recipes ship inside the ``recipes`` package as ``<domain>/<name>.yaml`` so ``pip install`` users can run them
without a clone. A recipe's first comment line is its one-line description. Overlays in ``overlays/`` (debug
switches to stack on any recipe) are found by name the same way but are not recipes of their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

RECIPES_DIR = Path(__file__).resolve().parent
OVERLAYS = "overlays"


@dataclass(frozen=True)
class Recipe:
    name: str
    domain: str
    path: Path
    data: str
    model: str
    description: str


def recipe_paths() -> list[Path]:
    """Every packaged recipe YAML (overlays excluded), sorted by name."""
    return sorted(p for p in RECIPES_DIR.glob("*/*.yaml") if p.parent.name != OVERLAYS)


def find(name: str) -> Path | None:
    """Path of a config: an existing file as given, else the packaged recipe or overlay called ``name``."""
    if os.path.isfile(name):
        return Path(name)
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    stem = stem.removeprefix("recipes/")
    candidate = RECIPES_DIR / f"{stem}.yaml"
    return candidate if "/" in stem and candidate.is_file() else None


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
    config = yaml.safe_load(text) or {}
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
