"""The one dependency direction (shared/ARCHITECTURE.md, "Layers"), checked on the code itself.

The wire layer is at the bottom and imports msgspec and the standard library
only; the server and the kernel side stand on it and never import each other;
inside each, no import (at module level, in a function, or for type checking
only) closes a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"alphaflow_live": REPO / "alphaflow_live", "alphaflow_server": REPO / "server" / "alphaflow_server"}
# backoff: retry delays, for the kernel client's reconnects and the server's lease retries.
# trusted: the schema's unchecked twins, for decoding the server's own frames.
WIRE_LAYER = frozenset(
    f"alphaflow_live.{name}"
    for name in ("protocol", "codes", "state", "metrics", "backoff", "trusted", "deltas")
)
HEAVY = ("pandas", "numpy", "anywidget", "ipywidgets")


def modules() -> dict[str, Path]:
    found = {}
    for package, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = modules()


def imports_of(name: str, path: Path) -> Iterator[str]:
    """Every module ``name`` imports anywhere in its file, resolved to an absolute name."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                # ``from . import frames`` imports a submodule; ``from .protocol import X`` a name.
                submodule = f"{module}.{alias.name}"
                yield submodule if submodule in MODULES else module


def graph() -> dict[str, set[str]]:
    return {
        name: {target for target in imports_of(name, path) if target in MODULES and target != name}
        for name, path in MODULES.items()
    }


def test_there_is_code_to_check() -> None:
    assert {"alphaflow_live.client", "alphaflow_server.app", *WIRE_LAYER} <= set(MODULES)


def test_no_import_closes_a_cycle() -> None:
    edges = graph()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = [*path[path.index(node) :], node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        for target in sorted(edges[node]):
            visit(target, [*path, node])
        done.add(node)

    for module in sorted(edges):
        visit(module, [])


def test_the_server_imports_only_the_wire_layer_of_the_kernel_side() -> None:
    crossings = [
        f"{name} imports {target}"
        for name, targets in graph().items()
        if name.startswith("alphaflow_server")
        for target in targets
        if target.startswith("alphaflow_live") and target not in WIRE_LAYER and target != "alphaflow_live"
    ]

    assert crossings == []


def test_the_kernel_side_never_imports_the_server() -> None:
    crossings = [
        f"{name} imports {target}"
        for name, path in MODULES.items()
        if name.startswith("alphaflow_live")
        for target in imports_of(name, path)
        if target.split(".")[0] == "alphaflow_server"
    ]

    assert crossings == []


def test_the_wire_layer_stands_on_msgspec_and_the_standard_library_alone() -> None:
    allowed = {"msgspec", "__future__"} | set(sys.stdlib_module_names)
    outside = [
        f"{name} imports {target}"
        for name in sorted(WIRE_LAYER)
        for target in imports_of(name, MODULES[name])
        if target not in WIRE_LAYER and target.split(".")[0] not in allowed
    ]

    assert outside == []


def loaded_after(statement: str) -> set[str]:
    """The top-level modules a fresh interpreter holds after ``statement``."""
    probe = f"import sys\n{statement}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True, cwd=REPO
    )
    return set(result.stdout.split())


def test_the_server_app_loads_no_pandas_numpy_or_widgets() -> None:
    loaded = loaded_after("import alphaflow_server.app")

    assert "websockets" in loaded, "the probe imported the server"
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_the_wire_layer_loads_not_even_websockets() -> None:
    loaded = loaded_after("import " + ", ".join(sorted(WIRE_LAYER)))

    assert "msgspec" in loaded
    assert loaded.isdisjoint({"websockets", *HEAVY}), sorted(loaded & {"websockets", *HEAVY})


def test_connecting_loads_no_widgets_until_one_is_shown() -> None:
    loaded = loaded_after("import alphaflow_live as afl; afl.connect")

    assert "pandas" in loaded and "websockets" in loaded
    assert loaded.isdisjoint({"anywidget", "ipywidgets", "alphaflow_server"})
