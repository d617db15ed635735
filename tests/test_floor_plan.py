"""The floor plan: no import circle among the project's modules, and imports point down the
floors (native <- stepsvc <- topology; loadtest and bench may use them all).

Read from the source with an AST walk (every ``import``, at module level or inside a function,
``TYPE_CHECKING`` blocks included): what a reader follows, not only what runs first. Modules
loaded by name (``stepsvc.cli``'s command list, ``importlib``) are not imports.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("native", "stepsvc", "topology", "loadtest", "bench")
#: What each top-level package may import of the others.
FLOORS: dict[str, frozenset[str]] = {
    "native": frozenset(),
    "stepsvc": frozenset({"native"}),
    "topology": frozenset({"native", "stepsvc"}),
    "loadtest": frozenset({"native", "stepsvc", "topology"}),
    "bench": frozenset({"native", "stepsvc", "topology", "loadtest"}),
}
#: The allowed exceptions, each with its reason.
EXCEPTIONS = {
    # `stepchain bench NAME` lists the installed benchmarks by name (a trimmed install has none)
    ("stepsvc.cli", "bench"),
}
#: The rooms of stepsvc, bottom first: a room imports only rooms on its floor or below
#: (stepsvc/__init__.py says the same in words).
STEPSVC_FLOORS: dict[str, int] = {
    "limits": 0, "ports": 0, "cli_args": 0, "protocol": 0,
    "frames": 1, "routing": 2, "step": 3, "telemetry": 4, "http": 5, "client": 6,
    "serve": 7, "cli": 8,
}
#: The step's config and its graph are the model every room reads, routing included.
STEPSVC_MODEL = frozenset({"stepsvc.step.config", "stepsvc.step.graph"})
MAX_LINES = 500
MAX_LOOSE_MODULES = 6


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _is_module(name: str) -> bool:
    if name in MODULES:
        return True
    # a compiled extension (native._native) is a module too, though not one of ours to walk
    package, _, leaf = name.rpartition(".")
    folder = ROOT.joinpath(*package.split("."))
    return bool(package) and any(folder.glob(f"{leaf}.*.so"))


def _imports(name: str, path: Path) -> Iterator[str]:
    """The project modules `name` imports: `from pkg import mod` names pkg.mod, `from pkg import
    symbol` names pkg."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.partition(".")[0] in PACKAGES:
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            if base.partition(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield full if _is_module(full) else base


@functools.cache
def _graph() -> dict[str, set[str]]:
    return {name: {dep for dep in _imports(name, path) if dep in MODULES and dep != name}
            for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle_among_the_projects_modules() -> None:
    assert _cycles(_graph()) == []


def test_imports_point_down_the_floors() -> None:
    upward = sorted(
        f"{name} imports {dep}"
        for name, deps in _graph().items() for dep in deps
        if (top := name.partition(".")[0]) != (dep_top := dep.partition(".")[0])
        and dep_top not in FLOORS[top] and (name, dep_top) not in EXCEPTIONS)
    assert upward == []


def _room(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "stepsvc"


def test_stepsvc_rooms_import_only_their_floor_and_below() -> None:
    upward = sorted(
        f"{name} imports {dep}"
        for name, deps in _graph().items() if name.startswith("stepsvc.")
        for dep in deps if dep.startswith("stepsvc.") and dep not in STEPSVC_MODEL
        and STEPSVC_FLOORS[_room(dep)] > STEPSVC_FLOORS[_room(name)])
    assert upward == []


def test_every_stepsvc_room_has_a_floor() -> None:
    rooms = {_room(name) for name in MODULES if name.startswith("stepsvc.")}
    assert rooms == set(STEPSVC_FLOORS)


#: The rooms of topology, bottom first (topology/__init__.py says the same in words): the
#: pipeline model, the backend interface, the backends and live load side by side (none imports
#: another), what builds on them (jobs, netns), the HTTP service, the commands.
TOPOLOGY_FLOORS: dict[str, int] = {
    "pipeline": 0, "backend": 1, "kube": 2, "local": 2, "load": 2, "jobs": 3, "netns": 3,
    "service": 4, "cli": 5, "jobs_cli": 5,
}


def test_topology_rooms_import_only_rooms_below_them() -> None:
    upward = sorted(
        f"{name} imports {dep}"
        for name, deps in _graph().items() if name.startswith("topology.")
        for dep in deps if dep.startswith("topology.") and _room(dep) != _room(name)
        and TOPOLOGY_FLOORS[_room(dep)] >= TOPOLOGY_FLOORS[_room(name)])
    assert upward == []


def test_every_topology_room_has_a_floor() -> None:
    rooms = {_room(name) for name in MODULES if name.startswith("topology.")}
    assert rooms == set(TOPOLOGY_FLOORS)


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", ("native", "stepsvc", "topology", "loadtest", "bench"))
def test_no_module_is_over_the_line_limit(package: str) -> None:
    long = {name: n for name, path in MODULES.items() if name.partition(".")[0] == package
            and (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.parametrize("package", ["stepsvc", "topology"])
def test_few_loose_modules_beside_the_subpackages(package: str) -> None:
    loose = sorted(p.name for p in (ROOT / package).glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= MAX_LOOSE_MODULES, loose


def test_the_demo_reads_files_that_exist() -> None:
    """`make demo` names the shipped photographs by path (ROOT / ...), which no import rewrite
    sees: after the console moved into topology/service/ it failed with FileNotFoundError."""
    import runpy

    demo = runpy.run_path(str(ROOT / "examples" / "demo.py"))  # main() runs only as __main__
    assert (demo["SAMPLES"] / "astronaut.jpg").is_file()
    assert demo["PIPELINE"].is_file()
