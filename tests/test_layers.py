"""The shape of the package: no import circle between any two modules, and the layers of
pyproject.toml's import-linter contracts (cli > demo > the three systems, independent of each
other > vlm > data > engine and backbones > config, progress, threads, images)."""

from __future__ import annotations

from pathlib import Path

import grimp
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def import_circles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every set of modules that import each other round a circle (strongly connected components
    of more than one module, Tarjan's algorithm; grimp gives the graph, deferred imports included)."""
    order: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        order[module] = lowest[module] = len(order)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in order:
                visit(imported)
                lowest[module] = min(lowest[module], lowest[imported])
            elif imported in on_stack:
                lowest[module] = min(lowest[module], order[imported])
        if lowest[module] == order[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in order:
            visit(module)
    return circles


def test_no_module_imports_itself_round_a_circle():
    graph = grimp.build_graph("visionloom", include_external_packages=False, cache_dir=None)
    assert len(graph.modules) > 50  # the whole package was read
    assert import_circles(graph) == []


def test_the_circle_finder_finds_a_circle():
    graph = grimp.ImportGraph()
    for module in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(module)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.a")
    assert import_circles(graph) == [["p.a", "p.b", "p.c"]]


def test_the_layers_hold():
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_the_root_command_only_joins_the_systems_commands():
    root = (ROOT / "src" / "visionloom" / "cli.py").read_text().splitlines()
    assert len(root) <= 150
    for system in ("backbones", "data", "retrieval", "grounding", "pruning", "vlm", "demo"):
        assert (ROOT / "src" / "visionloom" / system / "cli.py").is_file()
