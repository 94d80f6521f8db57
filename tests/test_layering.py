"""Imports point one way: simulations -> actors -> events. The public API (`rejoin`) stands on
actors and events and never loads the simulation; only its command line (`rejoin/cli`), the
front of both the product and its simulation, imports simulations."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
COMMAND_LINE = ROOT / "rejoin" / "cli"
FORBIDDEN = {
    "events": {"actors", "simulations", "rejoin"},
    "actors": {"simulations", "rejoin"},
    "simulations": set(),
    "rejoin": {"simulations"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_never_imports_the_layers_above_it(package: str) -> None:
    offending = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
        if COMMAND_LINE not in path.parents
    }
    assert {path: names for path, names in offending.items() if names} == {}
