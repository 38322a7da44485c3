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

from didi import stages

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


def validate(cfg: dict, source: str = "config", partial: bool = False, sweeps: bool = False) -> dict:
    """Raise ConfigError listing every schema violation (key path + message); return cfg unchanged.

    `partial=True` accepts a config holding only some top-level sections (each one complete): workflow rules pass
    just the sections their step depends on, so editing one section reruns only the steps that read it.
    `sweeps=True` (a whole run's config: the Snakefile, `load`) also checks every NFE against L.
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
    check_cross_keys(cfg, source, nfe=sweeps)
    return cfg


def check_cross_keys(cfg: dict, source: str = "config", nfe: bool = True) -> None:
    """Checks between keys the schema cannot express (each runs when the sections it reads are present):
    variants named in distill.run are defined, RGAS variants are trained, no variant rewards with the study's oracle
    (reward_source exact), and (`nfe`: a whole run's config, checked by the Snakefile and `load`) no NFE of a sweep
    exceeds L: K steps over L < K positions leave steps with nothing to unmask, so the extra steps only add network
    calls."""
    problems = []
    if "distill" in cfg:
        d = cfg["distill"]
        unknown = [v for v in d["run"] if v not in d["variants"]]
        if unknown:
            problems.append(f"distill.run: undefined variant(s) {unknown} (defined: {list(d['variants'])})")
        untrained = [v for v in d["rgas"]["variants"] if v not in d["run"]]
        if untrained:
            problems.append(f"distill.rgas.variants: {untrained} not in distill.run {d['run']}")
        # `didi distill` has no likelihood to reward with: the oracle is a `didi study` row's override
        oracle = [f"distill.variants.{v}" if "reward_source" in over else "distill.method"
                  for v, over in d["variants"].items() if {**d["method"], **over}["reward_source"] == "exact"]
        for key in dict.fromkeys(oracle):
            problems.append(f"{key}.reward_source: exact needs a world's likelihood, which only `didi study` has (set "
                            "it in a study row's method overrides); `didi distill` rewards with the discriminator")
    if "judge" in cfg and "data" in cfg and not is_exact_judge(cfg["judge"]) and not cfg["judge"]["pretrained"]:
        # a judge that cannot see a whole sample scores a cut sample: every gen-PPL would be of the cut
        judge, seq_len = cfg["judge"], cfg["data"]["seq_len"]
        for key in ("n_positions", "seq_len"):
            if judge[key] < seq_len:
                problems.append(f"judge.{key}: {judge[key]} < data.seq_len = {seq_len} (the judge must see a whole "
                                f"sample: set judge.n_positions and judge.seq_len to at least {seq_len})")
    if nfe and "data" in cfg:
        seq_len = cfg["data"]["seq_len"]
        nfe_keys = {}
        if "sampling" in cfg:
            nfe_keys["sampling.nfe"] = cfg["sampling"]["nfe"]
            nfe_keys["sampling.temperature_nfe"] = [cfg["sampling"]["temperature_nfe"]]
        if "distill" in cfg:
            nfe_keys["distill.nfe"] = cfg["distill"]["nfe"]
            nfe_keys["distill.teacher_pool_nfe"] = [cfg["distill"]["teacher_pool_nfe"]]
        for key, values in nfe_keys.items():
            too_many = [k for k in values if k > seq_len]
            if too_many:
                problems.append(f"{key}: NFE {too_many} > data.seq_len = {seq_len} (at most one step per position)")
    if "teacher" in cfg and cfg["teacher"].get("finetune_steps") is not None and not cfg["teacher"]["init_from"]:
        problems.append("teacher.finetune_steps: set, but teacher.init_from is null (it counts the steps trained "
                        "from a released teacher; presets/paper-released-teacher.yaml)")
    if problems:
        raise ConfigError(f"{source}: invalid config:\n  " + "\n  ".join(problems))


def teacher_steps(teacher_cfg: dict) -> int:
    """The steps `didi train-teacher` trains: teacher.finetune_steps when it starts from a released teacher
    (teacher.init_from) and says how many, else teacher.steps (the from-scratch budget, which a locally trained AR
    baseline also reads)."""
    finetune = teacher_cfg.get("finetune_steps")
    return finetune if teacher_cfg["init_from"] and finetune is not None else teacher_cfg["steps"]


def imports_teacher(cfg: dict) -> bool:
    """True when the released teacher of teacher.init_from is used as is (teacher.finetune_steps: 0): the
    workflow then imports it (rule import_teacher) instead of training (rule train_teacher)."""
    return bool(cfg["teacher"]["init_from"]) and cfg["teacher"].get("finetune_steps") == 0


def is_exact_judge(judge: dict) -> bool:
    """Is the judge the synthetic chain itself (judge.kind exact), not a GPT-2? The one place that decides it, for
    the config's judge section and for a judge.json alike (both carry `kind`; a GPT-2 judge's judge.json has none)."""
    return judge.get("kind", "lm") == "exact"


def scores_exact_denoiser(cfg: dict) -> bool:
    """Is the chain's exact denoiser (synthetic.ExactDenoiser: the factorisation error alone) a reference model of
    this config? With the exact judge on a first-order chain, the only one it is written for."""
    return is_exact_judge(cfg["judge"]) and cfg["corpus"].get("synthetic", {}).get("order") == 1


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
            hint = (" (a released MDLM/DUO checkpoint converted by `didi convert`: docs/paper-scale.md, step 4)"
                    if key == "teacher.init_from" else "")
            raise ConfigError(f"{source}: {key}: file or directory not found: {value}{hint}")


def load(paths: list[str | Path] | None = None, overrides: dict | None = None) -> dict:
    """config.yaml, then each preset in `paths` merged on top, then `overrides`; validated."""
    paths = [Path(p) for p in (paths or [DEFAULT_CONFIG])]
    cfg: dict = {}
    for path in paths:
        cfg = deep_merge(cfg, read_yaml(path))
    if overrides:
        cfg = deep_merge(cfg, overrides)
    return validate(cfg, source=", ".join(str(p) for p in paths), sweeps=True)


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


def step_sections(cfg: dict, step: str) -> dict:
    """Every config section `step`'s command reads (what the rule passes as --config-json; didi/stages.py's table)."""
    return sections(cfg, *stages.step_names(cfg, step))


def check_inputs(teacher_dir: str | Path, tokens_stats: str | Path, tokenizer_dir: str | Path) -> dict:
    """Distillation reads a teacher, token blocks and a tokenizer made by separate steps: they must agree on L and
    on the vocabulary (real ids + [MASK] = len(tokenizer) + 1). Raise ConfigError naming the file that disagrees."""
    from transformers import AutoTokenizer

    from didi import io  # here, not at the top: the Snakefile imports this module, and io imports torch

    teacher_json, tokens_json = Path(teacher_dir) / "config.json", Path(tokens_stats)
    teacher, tokens = io.read_json(teacher_json), io.read_json(tokens_json)
    if "model" not in teacher:
        raise ConfigError(f"{teacher_json}: not a didi model directory's config (no 'model' section)")
    teacher = teacher["model"]  # the DiTConfig that save_dit writes
    vocab = len(AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)) + 1
    problems = []
    if teacher["seq_len"] != tokens["seq_len"]:
        problems.append(f"L: {teacher_json} says seq_len {teacher['seq_len']}, {tokens_json} says {tokens['seq_len']}")
    if teacher["vocab_size"] != vocab:
        problems.append(f"vocabulary: {teacher_json} says vocab_size {teacher['vocab_size']}, the tokenizer "
                        f"{tokenizer_dir} gives {vocab} (len + [MASK])")
    if tokens["vocab"] != vocab:
        problems.append(f"vocabulary: {tokens_json} says vocab {tokens['vocab']}, the tokenizer {tokenizer_dir} "
                        f"gives {vocab} (len + [MASK])")
    if problems:
        raise ConfigError("distillation inputs disagree (rerun the step that made the stale file):\n  "
                          + "\n  ".join(problems))
    return {"seq_len": teacher["seq_len"], "vocab_size": vocab}


def add_check_inputs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, help="teacher model directory (config.json)")
    parser.add_argument("--tokens", required=True, help="token stats of the training blocks (tokens/train.json)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory")


def run_check_inputs(args: argparse.Namespace) -> int:
    agreed = check_inputs(args.teacher, args.tokens, args.tokenizer)
    print(f"inputs agree: L = {agreed['seq_len']}, vocabulary = {agreed['vocab_size']} ({args.teacher}, "
          f"{args.tokens}, {args.tokenizer})")
    return 0


COMMANDS = {"check-inputs": (add_check_inputs_arguments, run_check_inputs)}


# ---------------------------------------------------------------------------------------------- cluster profiles
PLACEHOLDER = "EDIT"


def profile_placeholders(profile_file: str | Path) -> list[str]:
    """`key.path = 'EDIT-...'` for every value of a Snakemake profile still holding a placeholder (comments are not
    values, so the optional `# slurm-qos: "EDIT"` lines do not count)."""
    found = []

    def walk(node, where):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{where}.{key}" if where else str(key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")
        elif isinstance(node, str) and node.startswith(PLACEHOLDER):
            found.append(f"{where} = {node!r}")
        elif isinstance(node, str) and "=" in node and node.split("=", 1)[1].startswith(PLACEHOLDER):
            found.append(f"{where} = {node!r}")  # the list form of resources: `- slurm_account=EDIT-account`

    walk(read_yaml(profile_file), "")
    return found


def profile_files(argv: list[str], env_profile: str | None = None) -> list[Path]:
    """The profile file(s) of a Snakemake command line (`--profile X`, `--profile=X`, `--workflow-profile X`) or of
    $SNAKEMAKE_PROFILE, resolved the way Snakemake resolves them (a directory holding config.yaml, or the file)."""
    from snakemake.cli import get_profile_dir

    given = any(arg == "--profile" or arg.startswith("--profile=") for arg in argv)
    names = [env_profile] if env_profile and not given else []
    for i, arg in enumerate(argv):
        for flag in ("--profile", "--workflow-profile"):
            if arg == flag and i + 1 < len(argv):
                names.append(argv[i + 1])
            elif arg.startswith(flag + "="):
                names.append(arg.split("=", 1)[1])
    files = []
    for name in names:
        entry = get_profile_dir(name) if name and name != "none" else None
        if entry is not None:
            files.append(Path(entry[1]))
    return files


def check_profiles(argv: list[str], env_profile: str | None = None) -> None:
    """Stop before any job is planned or submitted when a profile on the command line still has `EDIT-...`
    placeholders (profiles/slurm/config.yaml as shipped): name the file and every key to fill in."""
    problems = []
    for path in profile_files(argv, env_profile):
        left = profile_placeholders(path)
        if left:
            problems.append(f"{path}: still has placeholder value(s) to replace with your cluster's:\n    "
                            + "\n    ".join(left))
    if problems:
        raise ConfigError("\n".join(problems) + "\n  Fill them in (`sinfo -s` lists partitions, `sacctmgr show assoc "
                          "user=$USER` your accounts; delete slurm_account if your site has none): "
                          "docs/paper-scale.md, step 5.")


def from_args(args: argparse.Namespace) -> dict:
    if getattr(args, "config_json", None):
        try:
            cfg = json.loads(args.config_json)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--config-json: not valid JSON: {err}") from err
        return validate(cfg, source="--config-json", partial=True)
    return load(getattr(args, "configfile", None))


def distill_seeds(cfg: dict) -> list[int]:
    """The distillation seeds: distill.seeds, or the config seed alone when it is null."""
    return list(cfg["distill"]["seeds"] or [cfg["seed"]])


STUDENT_MODEL = re.compile(r"student-(?P<variant>[A-Za-z0-9_]+)(?:-seed(?P<seed>\d+))?")


def student_model(variant: str, seed: int) -> str:
    """The model name of a distilled student (sample and evaluation directories, the results table)."""
    return f"student-{variant}-seed{seed}"


def parse_student_model(model: str, seeded: bool = True) -> tuple[str, int | None] | None:
    """(variant, distillation seed) of a distilled student's model name, student-<variant>-seed<seed>; None for any
    other model. seeded=False also reads student-<variant>, a student of a run without seeds (SDTT's,
    student-sdtt; a pooled row of the results table), as (variant, None)."""
    match = STUDENT_MODEL.fullmatch(model)
    if match is None or (seeded and match["seed"] is None):
        return None
    return match["variant"], int(match["seed"]) if match["seed"] else None


# a distillation's two students, each in a directory of its own: the EMA's and the raw weights' (distill.student_weights
# and sdtt.student_weights say which one the sampling rules read)
STUDENT_DIRS = {"ema": "student", "raw": "student_raw"}


def variant_method(cfg: dict, variant: str) -> dict:
    """The distillation switches of one variant: distill.method with the variant's overrides on top."""
    variants = cfg["distill"]["variants"]
    if variant not in variants:
        raise ConfigError(f"distill.variants: unknown variant {variant!r} (known: {', '.join(variants)})")
    return deep_merge(cfg["distill"]["method"], variants[variant])
