#!/usr/bin/env python3
"""Write docs/configuration.md and docs/cli.md from the code, so they cannot go stale.

    python scripts/gen_docs.py            # (re)write both files (`make docs`)
    python scripts/gen_docs.py --check    # exit 1, naming the stale file(s), when a committed file differs

docs/configuration.md: every config section and key of workflow/schemas/config.schema.yaml (type and allowed values,
required or optional, the schema's description) with its default from config.yaml (and that line's comment there) and
its value in presets/paper.yaml. docs/cli.md: every `didi` command of didi/cli.py with the arguments its argparse
parser declares. tests/test_docs.py runs `--check`'s comparison.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT = REPO / "config.yaml"
PAPER = REPO / "presets" / "paper.yaml"
CONFIG_DOC = REPO / "docs" / "configuration.md"
CLI_DOC = REPO / "docs" / "cli.md"
REGENERATE = "`python scripts/gen_docs.py` (`make docs`)"
MISSING = object()


# ---------------------------------------------------------------------------------------------- config.yaml comments
def _split_comment(text: str) -> tuple[str, str | None]:
    """`value  # comment` -> (value, comment), ignoring a # inside quotes."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip(), text[i + 1:].strip()
    return text.rstrip(), None


def yaml_comments(path: Path) -> dict[str, str]:
    """{dotted key: its comment} of a YAML file written like config.yaml: the comment lines just above a key (at its
    indentation), the comment at the end of its line, and the comment lines continuing that one (same column)."""
    comments: dict[str, list[str]] = {}
    stack: list[tuple[int, str]] = []
    above: list[str] = []
    above_indent = -1
    last_key, last_column = None, -1
    for raw in path.read_text().splitlines():
        if not raw.strip():
            above, last_key = [], None
            continue
        indent = len(raw) - len(raw.lstrip())
        if raw.lstrip().startswith("#"):
            text = raw.strip()[1:].strip()
            if last_key is not None and indent == last_column:
                comments[last_key].append(text)  # continues the comment at the end of the key's line
            elif not stack:
                continue  # the file's header, before its first key
            else:
                if not above:
                    above_indent = indent
                above.append(text)
                last_key = None
            continue
        match = re.match(r"^(\s*)([A-Za-z0-9_]+):(.*)$", raw)
        if not match:
            above, last_key = [], None
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        key = ".".join(name for _, name in stack)
        _, inline = _split_comment(match.group(3))
        lines = above if above and above_indent == indent else []
        comments[key] = [*lines, *([inline] if inline else [])]
        above = []
        last_key = key if inline else None
        last_column = raw.index("#", len(match.group(1)) + len(match.group(2)) + 1) if inline else -1
    return {k: " ".join(v) for k, v in comments.items() if v}


# ---------------------------------------------------------------------------------------------- schema -> markdown
def resolve(node: dict, schema: dict) -> dict:
    """A property's schema with its $ref merged in (local keys such as description win)."""
    if "$ref" not in node:
        return node
    target = schema
    for part in node["$ref"].lstrip("#/").split("/"):
        target = target[part]
    return {**resolve(target, schema), **{k: v for k, v in node.items() if k != "$ref"}}


def _bounds(node: dict) -> str:
    parts = []
    for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in node:
            parts.append(f"{sign} {node[key]}")
    return ", ".join(parts)


def type_of(node: dict, schema: dict) -> str:
    node = resolve(node, schema)
    if "enum" in node:
        return "one of " + " \\| ".join(f"`{v}`" for v in node["enum"])
    if "const" in node:
        return f"`{node['const']}`"
    if "oneOf" in node:
        return " or ".join(type_of(option, schema) for option in node["oneOf"])
    kinds = node.get("type", "any")
    kinds = " or ".join(kinds) if isinstance(kinds, list) else kinds
    if "array" in kinds and "items" in node:
        item = type_of(node["items"], schema)
        size = ""
        if "minItems" in node and node.get("minItems") == node.get("maxItems"):
            size = f" of {node['minItems']}"
        elif "minItems" in node:
            size = f", at least {node['minItems']}"
        kinds = kinds.replace("array", f"list{size} of ({item})")
    bounds = _bounds(node)
    return f"{kinds} ({bounds})" if bounds else kinds


def show(value) -> str:
    if value is MISSING:
        return "(not set)"
    text = json.dumps(value) if not isinstance(value, str) else value
    return f"`{text}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def describe(prop: dict, comment: str | None) -> str:
    """The schema's description, then the key's comment in config.yaml."""
    parts = [prop.get("description", "").strip()]
    if comment:
        parts.append(f"_config.yaml:_ {comment}")
    return "<br>".join(p for p in parts if p)


def presets_setting(dotted: str) -> list[str]:
    """The presets that set a key config.yaml leaves out (an optional section such as corpus.synthetic)."""
    return [f"`presets/{p.name}`" for p in sorted((REPO / "presets").glob("*.yaml"))
            if lookup(yaml.safe_load(p.read_text()) or {}, dotted) is not MISSING]


def lookup(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def is_section(node: dict) -> bool:
    """An object with named keys, or a map of free names to objects (distill.variants)."""
    return node.get("type") == "object" and ("properties" in node or isinstance(node.get("additionalProperties"), dict))


def section_markdown(name: str, node: dict, schema: dict, default: dict, paper: dict, comments: dict) -> list[str]:
    """One `## name` section: a table of its plain keys, then a section per nested object."""
    node = resolve(node, schema)
    lines = [f"## `{name}`", ""]
    about = describe(node, comments.get(name)).replace("<br>", " ")
    if about:
        lines += [about, ""]
    if lookup(default, name) is MISSING:
        setting = presets_setting(name)
        lines += [f"Not in config.yaml (optional){': set by ' + ', '.join(setting) if setting else ''}.", ""]
    required = set(node.get("required", []))
    nested = []
    if "properties" in node:
        lines += ["| key | type | | default (config.yaml) | presets/paper.yaml | description |", "|---|---|---|---|---|---|"]
        for key, prop in node["properties"].items():
            full = f"{name}.{key}"
            prop_r = resolve(prop, schema)
            if is_section(prop_r):
                nested.append((full, prop_r))
                lines.append(f"| `{key}` | object | {'required' if key in required else 'optional'} | | | "
                             f"section [`{full}`](#{anchor(full)}) |")
                continue
            description = describe(prop_r, comments.get(full))
            paper_value = lookup(paper, full)
            lines.append(
                f"| `{key}` | {cell(type_of(prop, schema))} | {'required' if key in required else 'optional'} "
                f"| {cell(show(lookup(default, full)))} | {cell(show(paper_value) if paper_value is not MISSING else '')}"
                f" | {cell(description)} |"
            )
        lines.append("")
    else:  # a map of free names (distill.variants): each entry's value
        extra = resolve(node.get("additionalProperties", {}), schema)
        lines += [f"Free names (pattern `{node.get('propertyNames', {}).get('pattern', '.*')}`), each a "
                  f"[`{extra.get('title', 'distill.method')}`](#{anchor('distill.method')})-style mapping of "
                  "overrides. Defined in config.yaml:", ""]
        lines += ["| name | value (config.yaml) | description |", "|---|---|---|"]
        for key, value in (lookup(default, name) or {}).items():
            lines.append(f"| `{key}` | {cell(show(value))} | {cell(comments.get(f'{name}.{key}', ''))} |")
        lines.append("")
    for full, prop in nested:
        lines += section_markdown(full, prop, schema, default, paper, comments)
    return lines


def anchor(name: str) -> str:
    return re.sub(r"[^a-z0-9_ -]", "", name.lower()).replace(" ", "-")


def configuration_md() -> str:
    schema = yaml.safe_load(SCHEMA.read_text())
    default = yaml.safe_load(DEFAULT.read_text())
    paper = yaml.safe_load(PAPER.read_text())
    comments = yaml_comments(DEFAULT)
    top_required = set(schema.get("required", []))
    lines = [
        "# Configuration reference",
        "",
        f"Generated by {REGENERATE} from `workflow/schemas/config.schema.yaml` (types, allowed values, ",
        "descriptions) and `config.yaml` (defaults and their comments); `tests/test_docs.py` fails when this file and",
        "the generated one differ. Do not edit it by hand: edit the schema or `config.yaml`, then regenerate.",
        "",
        "A run's config is `config.yaml`, then every `--configfile` preset merged on top in order (nested keys one",
        "by one), then `--config` overrides (values arrive as strings: put numbers and booleans in a small YAML file).",
        "`didi.config.validate` checks the merged config before any job runs: unknown keys and wrong types are errors",
        "that name the file and the key. The `presets/paper.yaml` column shows the paper-scale value where that preset",
        "sets one.",
        "",
        f"{schema.get('description', '').strip()}",
        "",
        "## Top level",
        "",
        "| key | type | | default (config.yaml) | presets/paper.yaml | description |",
        "|---|---|---|---|---|---|",
    ]
    sections = []
    for key, prop in schema["properties"].items():
        prop_r = resolve(prop, schema)
        need = "required" if key in top_required else "optional"
        if is_section(prop_r):
            sections.append((key, prop_r))
            lines.append(f"| `{key}` | object | {need} | | | section [`{key}`](#{anchor(key)}) |")
        else:
            paper_value = lookup(paper, key)
            description = describe(prop_r, comments.get(key))
            lines.append(f"| `{key}` | {cell(type_of(prop, schema))} | {need} | {cell(show(lookup(default, key)))} | "
                         f"{cell(show(paper_value) if paper_value is not MISSING else '')} | {cell(description)} |")
    lines.append("")
    for key, prop in sections:
        lines += section_markdown(key, prop, schema, default, paper, comments)
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------- argparse -> markdown
def command_parser(name: str, module: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"didi {name}", add_help=False,
                                     formatter_class=lambda prog: argparse.HelpFormatter(prog, width=110))
    add_arguments, _ = importlib.import_module(module).COMMANDS[name]
    add_arguments(parser)
    return parser


def argument_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| argument | required | default | choices | help |", "|---|---|---|---|---|"]
    exclusive = {id(a): g for g in parser._mutually_exclusive_groups for a in g._group_actions}
    for action in parser._actions:
        flags = ", ".join(f"`{f}`" for f in action.option_strings) or f"`{action.dest}`"
        if action.option_strings and action.nargs != 0:
            flags += f" `{action.metavar or action.dest.upper()}`"
        group = exclusive.get(id(action))
        required = "yes" if action.required else "one of the group" if group is not None and group.required else ""
        default = "" if action.default in (None, argparse.SUPPRESS) or action.nargs == 0 else f"`{action.default}`"
        choices = ", ".join(f"`{c}`" for c in action.choices) if action.choices else ""
        help_text = (action.help or "") + (" (repeatable)" if isinstance(action, argparse._AppendAction) else "")
        if group is not None:
            others = [o.option_strings[0] for o in group._group_actions if o is not action]
            help_text += f" (not with {', '.join(others)})"
        rows.append(f"| {flags} | {required} | {cell(default)} | {cell(choices)} | {cell(help_text)} |")
    return rows


def cli_md() -> str:
    from didi import cli

    lines = [
        "# `didi` commands",
        "",
        f"Generated by {REGENERATE} from the argparse parsers of `didi/cli.py`'s commands; `tests/test_docs.py`",
        "fails when this file and the generated one differ. Do not edit it by hand.",
        "",
        "`didi <command> ...` (or `python -m didi <command> ...`; the workflow rules run the latter through the Python",
        "that runs Snakemake). Every command that reads the config takes `--configfile FILE` (repeatable, merged in",
        "order on top of nothing: pass `config.yaml` first) or `--config-json` (what the workflow rules pass). The",
        "training commands run under `torchrun` for several GPUs (`python -m torch.distributed.run --standalone",
        "--nproc-per-node N -m didi train-teacher ...`).",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    lines += [f"| [`{name}`](#didi-{name}) | {cell(help_text)} |" for name, (_, help_text) in cli.MODULES.items()]
    lines.append("")
    for name, (module, help_text) in cli.MODULES.items():
        parser = command_parser(name, module)
        usage = parser.format_usage().strip().removeprefix("usage: ")
        lines += [f"## didi {name}", "", f"{help_text} (`{module}`).", "", "```", usage, "```", ""]
        lines += argument_rows(parser) + [""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------- main
GENERATED = {CONFIG_DOC: configuration_md, CLI_DOC: cli_md}


def stale() -> list[Path]:
    return [path for path, make in GENERATED.items() if not path.exists() or path.read_text() != make()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 naming the stale files")
    args = parser.parse_args(argv)
    if args.check:
        old = stale()
        for path in old:
            print(f"{path.relative_to(REPO)} is stale: run {REGENERATE}", file=sys.stderr)
        return 1 if old else 0
    for path, make in GENERATED.items():
        path.write_text(make())
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
