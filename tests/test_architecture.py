"""The walls between rmp's packages, read from the source (every import, lazy ones included).

Data flows faces -> commands -> training / convert -> snn -> report; each package may import
only what ALLOWED names for it, and no module may reach itself again through its imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rmp_cli

ROOT = Path(rmp_cli.__file__).parent
FACES = {"cli", "app", "__main__"}
# Package (or root module) -> what it may import besides itself. `errors` is the one leaf every
# package shares: RmpError is how any layer says "bad input" in one line.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "__init__": set(),
    "config": {"errors"},
    "snn": {"errors"},
    "models": {"errors"},
    "runs": {"errors", "__init__"},
    "data": {"errors", "runs"},
    "convert": {"errors", "snn", "models"},
    "training": {"errors", "config", "data", "models", "runs"},
    "report": {"errors", "runs"},
    "tracking": {"errors", "config", "runs"},
    "commands": {"errors", "config", "convert", "data", "models", "report", "runs", "snn"}
    | {"training", "tracking"},
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(name: str, modules: set[str]) -> str:
    """`from rmp_cli.snn import kernels` names the module rmp_cli.snn.kernels; `from
    rmp_cli.snn.network import SpikingNet` names rmp_cli.snn.network."""
    return name if name in modules else name.rsplit(".", 1)[0]


def imports_of(path: Path, modules: set[str]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("rmp_cli")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rmp_cli"):
            found |= {resolve(f"{node.module}.{a.name}", modules) for a in node.names}
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    modules = set(files)
    return {name: imports_of(path, modules) - {name} for name, path in files.items()}


def area(module: str) -> str:
    """The package (or root module) a module belongs to: rmp_cli.snn.kernels.cpu_if -> snn."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def wall_breaches(graph: dict[str, set[str]]) -> list[str]:
    breaches = []
    for module, imported in sorted(graph.items()):
        here = area(module)
        if here in FACES:
            continue
        allowed = ALLOWED.get(here)
        if allowed is None:
            breaches.append(f"{module}: package {here} has no entry in ALLOWED")
            continue
        for target in sorted(imported):
            there = area(target)
            if there != here and there not in allowed:
                breaches.append(f"{module} imports {target} ({here} may not import {there})")
    return breaches


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each once (depth-first search over modules)."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_packages_import_only_what_their_wall_allows() -> None:
    assert wall_breaches(import_graph()) == []


def test_no_import_circles() -> None:
    assert cycles(import_graph()) == []


def test_the_engine_stands_alone() -> None:
    graph = import_graph()
    snn = {t for m, ts in graph.items() if area(m) == "snn" for t in ts}
    assert {area(t) for t in snn} <= {"snn", "errors"}
    models = {t for m, ts in graph.items() if area(m) == "models" for t in ts}
    assert not {t for t in models if area(t) == "snn"}
    report = {t for m, ts in graph.items() if area(m) == "report" for t in ts}
    assert not {t for t in report if area(t) == "snn"}


def test_commands_are_the_only_package_that_joins_the_layers() -> None:
    reach: dict[str, set[str]] = {}
    for module, imported in import_graph().items():
        reach.setdefault(area(module), {area(module)}).update(area(t) for t in imported)
    layers = {"runs", "training", "convert", "snn", "report"}
    assert {a for a, seen in reach.items() if layers <= seen and a not in FACES} == {"commands"}


def test_root_keeps_only_the_faces_config_and_errors() -> None:
    root_modules = {p.stem for p in ROOT.glob("*.py")}
    assert root_modules == FACES | {"__init__", "config", "errors"}


def test_layers_csv_metrics_are_the_probes_columns() -> None:
    """report/ may not import the engine, so layers.csv states its metric columns itself."""
    from rmp_cli.report.layer_report import METRICS
    from rmp_cli.snn.probes import COLUMNS

    assert tuple(METRICS) == tuple(COLUMNS)


# --- the checks themselves catch what they are for -------------------------------------------
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "rmp_cli"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_forbidden_import_is_a_breach(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "snn/__init__.py": "",
            "snn/net.py": "def f():\n    from rmp_cli.config import compose_config\n",
            "config.py": "",
        },
    )
    assert wall_breaches(import_graph(root)) == [
        "rmp_cli.snn.net imports rmp_cli.config (snn may not import config)"
    ]


@pytest.mark.parametrize("lazy", [False, True])
def test_a_circle_is_found(tmp_path: Path, lazy: bool) -> None:
    pad = "def f():\n    " if lazy else ""
    root = _tree(
        tmp_path,
        {
            "snn/__init__.py": "",
            "snn/a.py": f"{pad}from rmp_cli.snn.b import x\n",
            "snn/b.py": f"{pad}from rmp_cli.snn import a\n",
        },
    )
    assert cycles(import_graph(root)) == [["rmp_cli.snn.a", "rmp_cli.snn.b", "rmp_cli.snn.a"]]
