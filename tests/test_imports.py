"""No import circle among the project's own modules (src/tvrbench, baselines, benchmarks).

Every module is parsed with ``ast`` (nothing is imported), imports inside functions included, so
a circle hidden behind a function-level import is found too. ``if TYPE_CHECKING:`` imports are
left out: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"tvrbench": ROOT / "src" / "tvrbench", "baselines": ROOT / "baselines"}
SCRIPTS = ROOT / "benchmarks"
#: Function-level imports that still close a circle, to be moved down a layer (remove an entry
#: when its import is gone; test_known_back_edges_still_exist says when). None left.
KNOWN_BACK_EDGES: set[tuple[str, str]] = set()


def module_files() -> dict[str, Path]:
    """Dotted module name → file, for the package, the baselines and the benchmark scripts."""
    files: dict[str, Path] = {}
    for name, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [name, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    for path in sorted(SCRIPTS.glob("*.py")):
        files[f"benchmarks.{path.stem}"] = path
    return files


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name ``module`` imports, at any depth, ``TYPE_CHECKING`` blocks excepted."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (a ``from a import b`` counts ``a.b`` when that
    is a module, else ``a``)."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = {name for name in imported_names(path, module) if name in files}
        graph[module] = targets - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, …, a]`` of ``graph``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if start in state:
            continue
        path: list[str] = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_function_level_imports_are_seen(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import tvrbench.hidden\n"
        "def f():\n    from tvrbench.bench import stress\n    from . import sibling\n"
    )
    names = imported_names(path, "tvrbench.bench.m")
    assert {"tvrbench.bench.stress", "tvrbench.bench.sibling"} <= names
    assert "tvrbench.hidden" not in names


def test_known_back_edges_still_exist():
    graph = import_graph()
    gone = [edge for edge in KNOWN_BACK_EDGES if edge[1] not in graph.get(edge[0], set())]
    assert not gone, f"no longer imported, remove from KNOWN_BACK_EDGES: {gone}"


def test_no_import_cycle():
    graph = import_graph()
    assert "tvrbench.bench.stress" in graph and "tvrbench.metrics" in graph
    for source, target in KNOWN_BACK_EDGES:
        graph[source].discard(target)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def script_violations(path: Path, scripts: set[str]) -> list[str]:
    """What breaks issue 21's rule in benchmark script ``path``: an import of another script
    (``benchmarks.x`` or, run from benchmarks/, a bare ``x``) and any use of ``sys.path``
    (the scripts import only the installed packages, ``tvrbench`` and ``baselines``)."""
    found = sorted(
        f"imports {name}"
        for name in imported_names(path, f"benchmarks.{path.stem}")
        if name.split(".")[0] == "benchmarks" or name.split(".")[0] in scripts
    )
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "path"
            and isinstance(node.value, ast.Name)
            and node.value.id == "sys"
        ):
            found.append(f"sys.path at line {node.lineno}")
    return found


def test_script_rule_finds_planted_violations(tmp_path):
    path = tmp_path / "bench.py"
    path.write_text(
        "import sys\nsys.path.insert(0, '..')\nfrom train_step import x\n"
        "def f():\n    from benchmarks.scoring import y\n    import tvrbench.metrics\n"
    )
    assert script_violations(path, {"train_step", "scoring"}) == [
        "imports benchmarks.scoring",
        "imports benchmarks.scoring.y",
        "imports train_step",
        "imports train_step.x",
        "sys.path at line 2",
    ]


def test_benchmark_scripts_import_only_the_installed_packages():
    scripts = sorted(SCRIPTS.glob("*.py"))
    assert len(scripts) >= 4
    stems = {p.stem for p in scripts}
    broken = {p.name: v for p in scripts if (v := script_violations(p, stems))}
    assert not broken, f"benchmark scripts importing scripts or editing sys.path: {broken}"
