"""Imports run one way: data flows spec -> runs -> VM -> output disk -> results -> reports, and
each layer imports only from the layers below it (docs/architecture.md draws them).

Read from the source with `ast`, function-local imports included: a lazy import is no way
around a layer. cli.py is the top and may import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "vmharness"

# Top to bottom. A module may import its own layer and those below, never one above.
LAYERS: list[set[str]] = [
    {"cli"},
    {"condor"},
    {"engine"},
    {"rundir"},
    {"report", "state", "hosts"},
    {"results"},
    {"vm"},
    {"images"},
    {"spec"},
    {"wire", "errors", "__init__"},  # wire/ (file formats) imports nothing of vmharness
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def unit_of(module: str) -> str:
    """'vmharness.engine.attempt' -> 'engine'; 'vmharness' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every vmharness import in a file (or in `source`, read as
    if it were that file)."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    text = path.read_text() if source is None else source
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, mod) for line, mod in found if mod.split(".")[0] == "vmharness"]


SOURCES = sorted(p for p in SRC.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    units = {unit_of(module_name(p)) for p in SOURCES}
    assert units <= set(LEVEL), f"put {sorted(units - set(LEVEL))} in a layer"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_import_runs_uphill(path: Path) -> None:
    mine = LEVEL[unit_of(module_name(path))]
    uphill = [
        f"{path.relative_to(SRC)}:{line} imports {mod}"
        for line, mod in imports_of(path)
        if LEVEL.get(unit_of(mod), len(LAYERS)) < mine
    ]
    assert not uphill, "\n".join(uphill)


def test_the_checker_sees_an_uphill_import() -> None:
    """The rule can fail: a lazy import of the engine in a results module is caught."""
    probe = SRC / "results" / "probe.py"
    found = imports_of(probe, "def f():\n    from ..engine import attempt\n")
    assert found == [(2, "vmharness.engine")]
    assert LEVEL[unit_of(found[0][1])] < LEVEL["results"]
    assert imports_of(SRC / "report" / "x.py", "from vmharness.spec import Run\n") == [
        (1, "vmharness.spec")
    ]
