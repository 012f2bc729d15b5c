"""The import graph runs one way: no cycles; the core (vlbert/) imports neither the tasks nor the
feature extraction, except the `vlbert` command, which dispatches to every stage; features never
import the tasks. Read statically from every import statement, those inside functions included."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"vlbert": REPO / "vlbert", "vlbert.features": REPO / "features", "vlbert.tasks": REPO / "tasks"}


def import_graph() -> dict[str, set[str]]:
    files = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            files[".".join([package, *parts])] = path
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in files and t != name}
    return graph


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in graph[name]:
            within_package = target.startswith(name + ".") or name.startswith(target + ".")
            if state.get(target) == 1 and not within_package:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def test_imports_run_one_way():
    graph = import_graph()
    core = [m for m in graph if not m.startswith(("vlbert.tasks", "vlbert.features")) and m != "vlbert.cli"]
    assert not [(m, t) for m in core for t in graph[m] if t.startswith(("vlbert.tasks", "vlbert.features"))]
    assert not [(m, t) for m in graph if m.startswith("vlbert.features") for t in graph[m] if t.startswith("vlbert.tasks")]
