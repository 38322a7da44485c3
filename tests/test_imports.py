"""The didi package's import graph: no module reaches itself through its imports (those inside functions too)."""

import ast

from conftest import REPO


def didi_imports(path) -> set[str]:
    """The didi modules a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "didi":
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("didi."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("didi.")}
    return names


def test_no_import_cycle():
    modules = {p.stem: p for p in (REPO / "didi").glob("*.py")}
    graph = {name: didi_imports(path) & set(modules) - {name} for name, path in modules.items()}

    def cycle_from(start, node, path):
        for nxt in sorted(graph[node]):
            if nxt == start:
                return path + [nxt]
            if nxt not in path:
                found = cycle_from(start, nxt, path + [nxt])
                if found:
                    return found
        return None

    cycles = [c for c in (cycle_from(name, name, [name]) for name in sorted(graph)) if c]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
