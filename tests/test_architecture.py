"""The package's structure: CONTRACT import paths, and imports that never run upward.

Layers, bottom to top (README "Architecture"): each module imports only from its own layer and
the layers below it. The walk covers every import statement in every module (also imports
inside functions), so a violation anywhere fails.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import speechbrain_memristor

PACKAGE = Path(speechbrain_memristor.__file__).parent
NAME = "speechbrain_memristor"

# Layer of each top-level entry of the package (a folder or a module), bottom first.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("util",),
    ("config",),
    ("physics",),
    ("crossbar",),
    ("layers",),
    ("convert", "rules", "coverage", "mappings"),
    ("brain",),
    ("studies",),
    ("app",),
)
LEVEL = {entry: level for level, entries in enumerate(LAYERS) for entry in entries}
# The package root re-exports the public API (and the glue lazily): it stands above all.
ROOT_LEVEL = len(LAYERS)
# Only these layers may import SpeechBrain (the glue, the studies and the app).
SPEECHBRAIN_LAYERS = {"brain", "studies", "app"}


def modules() -> list[tuple[str, Path]]:
    """(dotted name, path) of every module of the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((".".join((NAME, *parts)), path))
    return found


def level_of(dotted: str) -> int:
    parts = dotted.split(".")
    if len(parts) == 1:
        return ROOT_LEVEL
    if parts[1] not in LEVEL:
        raise AssertionError(f"{dotted}: its top-level entry {parts[1]!r} has no layer in LAYERS")
    return LEVEL[parts[1]]


def imported_modules(path: Path, dotted: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    is_package = path.name == "__init__.py"
    package = dotted if is_package else dotted.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
    return found


def test_every_module_has_a_layer():
    names = [dotted for dotted, _ in modules()]
    assert len(names) > 30  # the walk sees the package (not an empty folder)
    for dotted in names:
        level_of(dotted)


def test_no_import_runs_upward_and_only_the_glue_imports_speechbrain():
    problems = []
    for dotted, path in modules():
        level = level_of(dotted)
        entry = dotted.split(".")[1] if "." in dotted else ""
        for line, target in imported_modules(path, dotted):
            if target == NAME or target.startswith(f"{NAME}."):
                if level_of(target) > level:
                    problems.append(f"{path.relative_to(PACKAGE)}:{line} imports {target}")
            elif (
                target.split(".")[0] in ("speechbrain", "hyperpyyaml")
                and level != ROOT_LEVEL
                and entry not in SPEECHBRAIN_LAYERS
            ):
                problems.append(f"{path.relative_to(PACKAGE)}:{line} imports {target}")
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The walk itself works: a synthetic physics module importing the crossbar is flagged."""
    fake = tmp_path / "noise.py"
    fake.write_text("from speechbrain_memristor.crossbar import Crossbar\n", encoding="utf-8")
    imports = imported_modules(fake, f"{NAME}.physics.noise")
    assert imports == [(1, f"{NAME}.crossbar")]
    assert level_of(imports[0][1]) > level_of(f"{NAME}.physics.noise")
    relative = tmp_path / "read.py"
    relative.write_text("from ..layers import base\n", encoding="utf-8")
    assert imported_modules(relative, f"{NAME}.crossbar.read") == [(1, f"{NAME}.layers")]


# (import path, name) of every CONTRACT name as documented in README and DESIGN.
CONTRACT = [
    (NAME, "HardwareConfig"),
    (NAME, "convert"),
    (NAME, "set_execution"),
    (NAME, "program"),
    (NAME, "MemristorLinear"),
    (NAME, "Crossbar"),
    (NAME, "MemristorHook"),
    (NAME, "MemristorBrain"),
    (f"{NAME}.config", "HardwareConfig"),
    (f"{NAME}.brain", "MemristorHook"),
    (f"{NAME}.brain", "MemristorBrain"),
]


@pytest.mark.parametrize(("module_name", "name"), CONTRACT)
def test_contract_names_import_from_their_documented_paths(module_name, name):
    value = getattr(importlib.import_module(module_name), name)
    assert callable(value)
    assert value.__name__ == name or (name in ("convert", "program") and inspect.isfunction(value))


def test_contract_names_are_the_same_objects_everywhere():
    from speechbrain_memristor.brain import MemristorBrain, MemristorHook
    from speechbrain_memristor.config import HardwareConfig
    from speechbrain_memristor.convert import convert, program, set_execution
    from speechbrain_memristor.crossbar import Crossbar
    from speechbrain_memristor.layers.linear import MemristorLinear

    package = speechbrain_memristor
    assert package.HardwareConfig is HardwareConfig and package.Crossbar is Crossbar
    assert package.convert is convert and package.program is program
    assert package.set_execution is set_execution and package.MemristorLinear is MemristorLinear
    assert package.MemristorHook is MemristorHook and package.MemristorBrain is MemristorBrain
    assert set(package.__all__) >= {name for _, name in CONTRACT}


def test_physics_knows_nothing_of_torch_modules():
    for dotted, path in modules():
        if level_of(dotted) <= LEVEL["physics"]:
            assert "torch.nn" not in path.read_text(encoding="utf-8"), dotted
