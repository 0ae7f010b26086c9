"""The house's floors (DESIGN.md, README "Layout"), checked on the source so that the shape cannot drift.

A file imports only from its own floor or below; a trainer never imports a sibling trainer; models never import
data; trainers and the arenas reach data only through batches; the pure floors never import Lightning; nothing
imports the CLI; callbacks know Lightning and the lowest floor only. Every import counts, also one inside a function
(a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"lit_safe": ROOT / "lit_safe", "lit_safe.data_modules": ROOT / "data_modules",
            "lit_safe.callbacks": ROOT / "callbacks"}

TOP = {"lit_safe.cli", "lit_safe.tree_experiment"}  # entry points that compose trainers, data and models
PURE = {"lit_safe.losses", "lit_safe.rl", "lit_safe.metrics", "lit_safe.optim", "lit_safe.trees"}


def module_name(path: Path) -> str:
    for package, folder in sorted(PACKAGES.items(), key=lambda kv: -len(str(kv[1]))):
        if path.is_relative_to(folder):
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            return ".".join((package, *parts))
    raise AssertionError(path)


def floor(name: str) -> str:
    """``top``, ``trainers`` (modules, arenas, checkpointing), ``data``, ``models``, ``pure`` or ``callbacks``."""
    if name in TOP:
        return "top"
    if name.startswith("lit_safe.callbacks"):
        return "callbacks"
    if name.startswith("lit_safe.data_modules"):
        return "data"
    if name.startswith("lit_safe.models"):
        return "models"
    if name in PURE:
        return "pure"
    if name.startswith("lit_safe.modules") or name in {"lit_safe.arena", "lit_safe.video_arena",
                                                         "lit_safe.checkpointing"}:
        return "trainers"
    if name == "lit_safe":
        return "pure"
    raise AssertionError(f"{name}: no floor assigned; add it to tests/test_layout.py and the README's Layout")


# which floors each floor may import (its own floor included, except where a rule below narrows it)
ALLOWED = {
    "top": {"top", "trainers", "data", "models", "pure", "callbacks"},
    "trainers": {"trainers", "models", "pure"},
    "data": {"data", "models", "pure"},
    "models": {"models", "pure"},
    "pure": {"pure"},
    "callbacks": {"callbacks", "models", "pure"},
}


def sources() -> list[Path]:
    return sorted(p for folder in PACKAGES.values() for p in folder.rglob("*.py"))


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, imported module)`` of every ``import``/``from ... import`` of the file, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from lit_safe.modules import reward` imports a module too
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                      if (ROOT / "lit_safe" / Path(*node.module.split(".")[1:]) / f"{alias.name}.py").exists()]
    return found


def violations(path: Path) -> list[str]:
    me = module_name(path)
    mine = floor(me)
    out = []
    for line, target in imports(path):
        where = f"{path.relative_to(ROOT)}:{line} imports {target}"
        if target.split(".")[0] in ("lightning", "pytorch_lightning") and mine in ("pure", "models"):
            out.append(f"{where}: the {mine} floor never imports Lightning")
            continue
        if not target.startswith("lit_safe.") or target == "lit_safe":
            continue
        if target == "lit_safe.cli" or target.startswith("lit_safe.cli."):
            out.append(f"{where}: nothing imports the CLI")
            continue
        theirs = floor(target)
        if theirs not in ALLOWED[mine]:
            out.append(f"{where}: the {mine} floor may not import the {theirs} floor")
        elif (me.startswith("lit_safe.modules.") and target.startswith("lit_safe.modules.")
              and target != "lit_safe.modules.base" and me != "lit_safe.modules.base"):
            out.append(f"{where}: a trainer never imports a sibling trainer (shared code goes down a floor)")
        elif me == "lit_safe.modules.base" and target.startswith("lit_safe.modules."):
            out.append(f"{where}: the base module imports no trainer")
    return out


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_floors(path: Path) -> None:
    found = violations(path)
    assert not found, "\n".join(found)


def test_the_rules_catch_a_sideways_and_an_upward_import(monkeypatch) -> None:
    """The checker itself: a trainer importing a sibling and a model importing data are both reported."""
    fake = ROOT / "lit_safe" / "modules" / "reward.py"
    text = "from lit_safe.modules.cost import CostModule\nfrom lit_safe.data_modules.base import PreparedDataModule\n"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: text)
    found = violations(fake)
    assert any("sibling trainer" in v for v in found)
    assert any("trainers floor may not import the data floor" in v for v in found)
    model = ROOT / "lit_safe" / "models" / "text.py"
    text = "import lightning\nimport lit_safe.data_modules.base\n"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: text)
    found = violations(model)
    assert any("never imports Lightning" in v for v in found)
    assert any("models floor may not import the data floor" in v for v in found)


def test_file_names_are_distinct() -> None:
    """One name for one thing: no two source files share a file name (besides __init__ and base)."""
    names: dict[str, list[str]] = {}
    for path in sources():
        if path.name not in ("__init__.py", "base.py"):
            names.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert {k: v for k, v in names.items() if len(v) > 1} == {}
