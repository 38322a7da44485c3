"""docs/architecture.md's import rules hold: every didi/*.py imports only the didi modules its row names (at the top
or inside a function), every module has a row, and the core imports only the core and serves no command."""

import ast
import re
from pathlib import Path

import pytest

from didi.runtime import didi_import_statements  # the code identity's reading of the imports

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "didi"
# the package's entry points, not ideas: `python -m didi` runs cli.main
ENTRY = {"__init__": set(), "__main__": {"cli"}}


def tables() -> dict[str, dict[str, set[str]]]:
    """{'core' | 'commands': {module: the didi modules it may import}} from the page's two tables under
    '## Which file holds which idea' (the first is the core's)."""
    section = PAGE.read_text().split("## Which file holds which idea", 1)[1].split("\n## ", 1)[0]
    found, current = [], None
    for line in section.splitlines():
        if not line.startswith("|"):
            current = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "file":
            assert cells[-1] == "may import (didi)", line
            current = {}
            found.append(current)
            continue
        if current is None or set(cells[0]) <= {"-"}:
            continue
        modules = re.findall(r"`([A-Za-z_]+)\.py`", cells[0])
        assert modules, f"docs/architecture.md: a row names no `file.py`: {line}"
        allowed = {m.strip() for m in cells[-1].split(",")} - {"-", ""}
        for module in modules:
            assert module not in current, f"docs/architecture.md: two rows for {module}.py"
            current[module] = allowed
    assert len(found) == 2, "docs/architecture.md: expected two tables (the core, the commands) under the section"
    return {"core": found[0], "commands": found[1]}


def didi_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, the didi module imported, the statement) for every import of a didi module in `path`, anywhere."""
    source = path.read_text()
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}:{node.lineno}: a relative import (write `from didi import ...`)"
    return didi_import_statements(source, str(path))


def modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py"))


def test_every_module_has_one_row_and_every_row_a_module():
    rows = tables()
    both = set(rows["core"]) & set(rows["commands"])
    assert not both, f"docs/architecture.md: in both tables: {sorted(both)}"
    documented = set(rows["core"]) | set(rows["commands"])
    missing = [m for m in modules() if m not in documented and m not in ENTRY]
    assert not missing, f"docs/architecture.md: no row for didi/{{{', '.join(missing)}}}.py"
    stale = sorted(documented - set(modules()))
    assert not stale, f"docs/architecture.md: rows for files that do not exist: {stale}"
    unknown = {m: sorted(a - documented) for table in rows.values() for m, a in table.items() if a - documented}
    assert not unknown, f"docs/architecture.md: 'may import' names modules without a row: {unknown}"


@pytest.mark.parametrize("module", modules())
def test_a_module_imports_only_what_its_row_names(module):
    rows = tables()
    allowed = ENTRY[module] if module in ENTRY else {**rows["core"], **rows["commands"]}.get(module)
    if allowed is None:
        pytest.skip(f"{module}.py has no row (test_every_module_has_one_row_and_every_row_a_module fails)")
    bad = [f"line {line}: {text}" for line, imported, text in didi_imports(PACKAGE / f"{module}.py")
           if imported not in allowed]
    assert not bad, (f"didi/{module}.py imports didi modules its row in docs/architecture.md does not name "
                     f"(may import: {', '.join(sorted(allowed)) or '-'}):\n  " + "\n  ".join(bad))


def test_the_core_imports_only_the_core_and_serves_no_command():
    core = tables()["core"]
    outside = {m: sorted(allowed - set(core)) for m, allowed in core.items() if allowed - set(core)}
    assert not outside, f"docs/architecture.md: core rows that may import outside the core: {outside}"
    serving = [m for m in core if re.search(r"^COMMANDS\s*=", (PACKAGE / f"{m}.py").read_text(), re.MULTILINE)]
    assert not serving, f"core modules that define COMMANDS (move them to the commands table): {serving}"


def test_cli_runs_only_modules_of_the_commands_table():
    """cli.py imports a command's module by name (importlib): each is a row of the commands table and serves it."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    table = next(node.value for node in tree.body
                 if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "MODULES")
    commands = tables()["commands"]
    for name, entry in zip(table.keys, table.values):
        module = entry.elts[0].value
        assert module.startswith("didi.") and module[5:] in commands, (name.value, module)
        source = (PACKAGE / f"{module[5:]}.py").read_text()
        assert re.search(rf"^COMMANDS\s*=.*?[\"']{re.escape(name.value)}[\"']", source, re.MULTILINE | re.DOTALL), \
            f"{module} does not serve `didi {name.value}`"
