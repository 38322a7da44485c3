"""Load, merge and validate workflow configs.

The same schema (workflow/schemas/config.schema.yaml) validates the config in the Snakefile and in every
`didi` command, and errors name the file, the key path and the offending value.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from pathlib import Path

import jsonschema
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = REPO_ROOT / "config.yaml"


class ConfigError(ValueError):
    """A config that is malformed, has unknown keys, wrong types, or points at missing files."""


def deep_merge(base: dict, override: dict) -> dict:
    """Recursively update a copy of `base` with `override` (as Snakemake merges --configfile)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _key_path(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "<top level>"


def _describe(err: jsonschema.ValidationError) -> str:
    if err.validator == "additionalProperties":
        extra = re.findall(r"'([^']+)' was unexpected", err.message)
        keys = ", ".join(extra) or err.message
        where = _key_path(err)
        prefix = "" if where == "<top level>" else where + "."
        return f"unknown key {prefix}{keys}" if extra else f"{where}: {err.message}"
    return f"{_key_path(err)}: {err.message}"


def validate(cfg: dict, source: str = "config", partial: bool = False) -> dict:
    """Raise ConfigError listing every schema violation (key path + message); return cfg unchanged.

    `partial=True` accepts a config holding only some top-level sections (each one complete): workflow rules pass
    just the sections their step depends on, so editing one section reruns only the steps that read it.
    """
    schema = _schema()
    if partial:
        schema["required"] = []
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = "\n  ".join(_describe(e) for e in errors)
        raise ConfigError(f"{source}: invalid config:\n  {lines}")
    check_paths(cfg, source)
    check_variants(cfg, source)
    return cfg


def check_variants(cfg: dict, source: str = "config") -> None:
    """Variants named in distill.run and distill.rgas.variants must be defined / trained."""
    if "distill" not in cfg:
        return
    d = cfg["distill"]
    unknown = [v for v in d["run"] if v not in d["variants"]]
    if unknown:
        raise ConfigError(f"{source}: distill.run: undefined variant(s) {unknown} (defined: {list(d['variants'])})")
    untrained = [v for v in d["rgas"]["variants"] if v not in d["run"]]
    if untrained:
        raise ConfigError(f"{source}: distill.rgas.variants: {untrained} not in distill.run")


def is_local_path(value: str) -> bool:
    """Hub names look like `name` or `org/name`; local paths start with /, ./, ../ or ~, or exist."""
    return value.startswith(("/", "./", "../", "~")) or Path(value).exists()


def check_paths(cfg: dict, source: str = "config") -> None:
    """Files the config points at must exist (hub names and the built-in corpus are not paths)."""
    keys = {"corpus": "source", "tokenizer": "pretrained", "judge": "pretrained", "teacher": "init_from"}
    candidates = {f"{section}.{key}": cfg[section][key] for section, key in keys.items() if section in cfg}
    for key, value in candidates.items():
        if value is None or value == "sotu" or value.startswith(("hf:", "synthetic:")):
            continue
        must_be_path = key in ("corpus.source", "teacher.init_from")
        if (must_be_path or is_local_path(value)) and not Path(value).expanduser().exists():
            raise ConfigError(f"{source}: {key}: file or directory not found: {value}")


def load(paths: list[str | Path] | None = None, overrides: dict | None = None) -> dict:
    """config.yaml, then each preset in `paths` merged on top, then `overrides`; validated."""
    paths = [Path(p) for p in (paths or [DEFAULT_CONFIG])]
    cfg: dict = {}
    for path in paths:
        cfg = deep_merge(cfg, read_yaml(path))
    if overrides:
        cfg = deep_merge(cfg, overrides)
    return validate(cfg, source=", ".join(str(p) for p in paths))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--configfile (repeatable, merged in order; default config.yaml) or --config-json (from Snakemake rules)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--configfile", action="append", help="YAML config(s), merged in order (default: config.yaml)")
    group.add_argument("--config-json", help="the full config as a JSON string (what the workflow rules pass)")


def sections(cfg: dict, *names: str) -> dict:
    """The named top-level sections of a config (what a workflow rule passes to its command)."""
    missing = [n for n in names if n not in cfg]
    if missing:
        raise ConfigError(f"config has no section(s): {', '.join(missing)}")
    return {name: cfg[name] for name in names}


def from_args(args: argparse.Namespace) -> dict:
    if getattr(args, "config_json", None):
        try:
            cfg = json.loads(args.config_json)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--config-json: not valid JSON: {err}") from err
        return validate(cfg, source="--config-json", partial=True)
    return load(getattr(args, "configfile", None))


def variant_method(cfg: dict, variant: str) -> dict:
    """The distillation switches of one variant: distill.method with the variant's overrides on top."""
    variants = cfg["distill"]["variants"]
    if variant not in variants:
        raise ConfigError(f"distill.variants: unknown variant {variant!r} (known: {', '.join(variants)})")
    return deep_merge(cfg["distill"]["method"], variants[variant])
