"""The documentation against the code: the generated references (docs/configuration.md from the schema and
config.yaml, docs/cli.md from argparse), the README's commands against the Makefile, `make clean`'s promise to keep
other runs, and docs/method.md in the repository (no reference to a file outside it)."""

import importlib.util
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO

REGENERATE = "run `python scripts/gen_docs.py` (or `make docs`)"


def gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def schema_keys(node: dict, schema: dict, prefix: str = "") -> list[str]:
    """Every dotted key the schema names (sections and their keys), following $ref."""
    keys = []
    for key, prop in node.get("properties", {}).items():
        while "$ref" in prop:
            target = schema
            for part in prop["$ref"].lstrip("#/").split("/"):
                target = target[part]
            prop = {**target, **{k: v for k, v in prop.items() if k != "$ref"}}
        keys.append(prefix + key)
        keys += schema_keys(prop, schema, f"{prefix}{key}.")
    return keys


# ---------------------------------------------------------------------------------------------- generated references
def test_configuration_md_is_the_generated_one():
    assert (REPO / "docs" / "configuration.md").read_text() == gen_docs().configuration_md(), (
        f"docs/configuration.md differs from the schema/config.yaml: {REGENERATE}")


def test_cli_md_is_the_generated_one():
    assert (REPO / "docs" / "cli.md").read_text() == gen_docs().cli_md(), (
        f"docs/cli.md differs from the didi commands' argparse parsers: {REGENERATE}")


def test_configuration_md_documents_every_schema_key_and_no_other():
    """Each key of the schema has its row (or section) in the section of its parent, and no row names a key the
    schema lacks: a check of the generator itself."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    text = gen_docs().configuration_md()
    sections = dict(re.findall(r"^## `([\w.]+)`\n(.*?)(?=^## |\Z)", text, re.M | re.S))
    sections[""] = text.split("## Top level", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for section, body in sections.items():
        if "Free names" in body:  # distill.variants: names of config.yaml, not schema keys
            continue
        for key in re.findall(r"^\| `(\w+)` \|", body, re.M):
            documented.add(f"{section}.{key}" if section else key)
    expected = {k for k in schema_keys(schema, schema) if not k.startswith("distill.variants.")}
    assert documented == expected
    assert "`finetune_steps` | integer or null (>= 0) | optional | (not set)" in text


def test_cli_md_documents_every_command_and_argument():
    from didi import cli

    text = gen_docs().cli_md()
    generator = gen_docs()
    for name, (module, _) in cli.MODULES.items():
        assert f"\n## didi {name}\n" in text, name
        body = text.split(f"\n## didi {name}\n", 1)[1].split("\n## didi ", 1)[0]
        for action in generator.command_parser(name, module)._actions:
            for flag in action.option_strings:
                assert f"`{flag}`" in body, (name, flag)


def test_configuration_comments_are_read_from_config_yaml(tmp_path):
    """The comment parser: a comment above a key (same indentation), at the end of its line, and its continuation
    lines (same column); the file's header is nobody's."""
    path = tmp_path / "c.yaml"
    path.write_text("# header\nseed: 1   # the seed\nsection:\n  # above a\n  a: 1    # end of a\n"
                    "          # more a\n  b: '#x'  # b's\n\n  # loose\nc: 2\n")
    comments = gen_docs().yaml_comments(path)
    assert comments == {"seed": "the seed", "section.a": "above a end of a more a", "section.b": "b's"}


# ---------------------------------------------------------------------------------------------- README and Makefile
def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):(?!=)", (REPO / "Makefile").read_text(), re.M))


def test_readme_commands_are_makefile_targets():
    """`make reproduce` and `make test` (the README's two commands) and every other `make X` the README or docs/
    show exist in the Makefile."""
    targets = make_targets()
    assert {"reproduce", "test", "clean", "clean-all", "docs", "setup"} <= targets
    readme = (REPO / "README.md").read_text()
    assert "make reproduce" in readme and "make test" in readme
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text()
        shown = set(re.findall(r"`make ([a-z][\w-]*)", text)) | set(re.findall(r"^\s*make ([a-z][\w-]*)", text, re.M))
        assert shown <= targets, f"{doc.name} shows make target(s) the Makefile lacks: {sorted(shown - targets)}"


def fake_runs(root):
    """A repository copy's results/: the default run's outputs, results/paper and another run, a stray file."""
    shutil.copy(REPO / "Makefile", root / "Makefile")
    for d in ("results/corpus", "results/teacher/ema", "results/logs/sample", "results/paper/logs",
              "results/paper/teacher/ema", "results/seed2/logs", ".snakemake/metadata"):
        (root / d).mkdir(parents=True)
    for f in ("results/teacher/ema/model.safetensors", "results/paper/teacher/ema/model.safetensors",
              "results/stray.json", "report.html"):
        (root / f).write_text("x")


def make(root, *args) -> str:
    proc = subprocess.run(["make", "--no-print-directory", *args], cwd=root, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_clean_keeps_results_paper_and_other_runs(tmp_path):
    fake_runs(tmp_path)
    out = make(tmp_path, "clean")
    assert (tmp_path / "results/paper/teacher/ema/model.safetensors").exists()
    assert (tmp_path / "results/seed2/logs").is_dir() and (tmp_path / ".snakemake/metadata").is_dir()
    for gone in ("results/corpus", "results/teacher", "results/logs", "results/stray.json", "report.html"):
        assert not (tmp_path / gone).exists(), gone
    assert "KEPT the other runs: results/paper results/seed2" in out and "make clean-all" in out


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("how", [["clean-all"], ["clean", "CLEAN_PAPER=1"]])
def test_make_clean_all_deletes_every_run(how, tmp_path):
    fake_runs(tmp_path)
    out = make(tmp_path, *how)
    assert not (tmp_path / "results").exists() and not (tmp_path / ".snakemake").exists()
    assert not (tmp_path / "report.html").exists() and "results/paper included" in out


# ---------------------------------------------------------------------------------------------- the method page
def test_method_page_is_in_the_repository():
    """docs/method.md exists with its sections, and nothing in the repository points at a method page outside it."""
    text = (REPO / "docs" / "method.md").read_text()
    for heading in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6."):
        assert heading in text
    assert "arXiv 2509.25035" in text
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    offenders = []
    for name in tracked + [str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")]:
        path = REPO / name
        if name == "tests/test_docs.py":
            continue
        if path.suffix in {".py", ".md", ".yaml", ".smk", ".rst", ".toml", ".sh"} and path.is_file():
            if "shared/method.md" in path.read_text(errors="replace"):
                offenders.append(name)
    assert not offenders, f"files citing a method page outside the repository: {sorted(set(offenders))}"
