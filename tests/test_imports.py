"""The didi package's import graph: no module reaches itself through its imports (those inside functions too)."""

from conftest import REPO
from didi.runtime import didi_imports  # the code identity's reading of the same graph


def test_no_import_cycle():
    modules = {p.stem: p for p in (REPO / "didi").glob("*.py")}
    graph = {name: didi_imports(path.read_text()) & set(modules) - {name} for name, path in modules.items()}

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
