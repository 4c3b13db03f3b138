"""The service's import graph: no circle, and each layer keeps away from the other's framework.

Every import counts, wherever it is written: at the top, inside a function, or under
``if TYPE_CHECKING:`` (a circle a type checker has to untangle is a circle all the same).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parent.parent / "service"


def module_name(path: Path) -> str:
    """``service/models/loader.py`` → ``service.models.loader``; a package is its ``__init__``."""
    parts = path.relative_to(SERVICE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(SERVICE.rglob("*.py"))}


def imported_names(name: str, path: Path) -> list[str]:
    """Every module ``name`` imports (``from X import y``: X, and X.y when y is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            found.append(source)
            found.extend(f"{source}.{alias.name}" for alias in node.names)
    return found


def service_graph() -> dict[str, set[str]]:
    """Module → the service modules it imports."""
    return {name: {target for target in imported_names(name, path)
                   if target in MODULES and target != name}
            for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str] | None:
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target in on_stack:
                return stack[stack.index(target):] + [target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_every_kind_of_import():
    graph = service_graph()
    assert "service.errors" in graph["service.config"]                  # relative, top level
    assert "service.models.preprocess" in graph["service.models.manifest"]  # a package
    assert "service.models.graph" in graph["service.models.session_pool"]  # inside a function
    assert "service.metrics" in graph["service.web.app"]                # from .. import name


def test_there_is_no_import_circle():
    cycle = find_cycle(service_graph())
    if cycle:
        print("import circle:", " -> ".join(cycle))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_config_imports_nothing_of_the_service_but_errors():
    assert service_graph()["service.config"] <= {"service", "service.errors"}


@pytest.mark.parametrize("layer, framework", [("service.models", "cherrypy"),
                                              ("service.web", "tensorflow")])
def test_layers_keep_away_from_the_other_framework(layer, framework):
    offenders = sorted(name for name, path in MODULES.items()
                       if (name == layer or name.startswith(layer + "."))
                       and any(target.split(".")[0] == framework
                               for target in imported_names(name, path)))
    assert not offenders, f"{framework} imported by {offenders}"


def test_the_cluster_parent_loads_no_framework():
    """The parent forks the workers: TensorFlow's threads would not survive the fork, and
    prometheus_client picks its multiprocess mode when first imported -- in each worker."""
    code = ("import sys, service.__main__, service.cluster.launch\n"
            "print(sorted(m for m in ('tensorflow', 'cherrypy', 'prometheus_client', 'numpy')"
            " if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=SERVICE.parent, text=True,
                            capture_output=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"
