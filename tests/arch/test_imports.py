"""The layering of ``src/edgewire``: no two modules import each other, directly or
round a longer loop, not even lazily inside a function or under TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

import edgewire

ROOT = Path(edgewire.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The edgewire modules ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_no_import_cycles_in_the_package() -> None:
    cycles = _cycles(import_graph())
    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle() -> None:
    # The check itself must be able to fail.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_leaf_modules_import_nothing_of_edgewire_above_them() -> None:
    graph = import_graph()
    assert graph["edgewire.ports"] <= {"edgewire.errors"}
    assert graph["edgewire.errors"] == set()
    assert graph["edgewire.serve.model"] <= {"edgewire.errors", "edgewire.fsutil"}
    # The store knows nothing of formats: no backend, no onnx parsing of its own.
    assert not any(m.startswith("edgewire.serve.backends.") for m in graph["edgewire.serve.store"])
    assert "edgewire.agent.server" not in set().union(
        *(deps for name, deps in graph.items() if name.startswith("edgewire.agent."))
    )


def test_the_docs_list_every_port_of_the_table() -> None:
    from edgewire.ports import markdown_list

    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text("utf-8")
    block = text.split("<!-- ports:begin -->\n", 1)[1].split("\n<!-- ports:end -->", 1)[0]
    assert block == markdown_list(), "docs/protocol.md: paste edgewire.ports.markdown_list()"


def test_every_port_names_importable_pieces() -> None:
    import importlib

    from edgewire.ports import PORTS, load_attr

    for spec in PORTS:
        importlib.import_module(spec.codec)
        assert callable(load_attr(spec.handler))
        if spec.load_client is not None:
            assert load_attr(spec.load_client) is not None
