"""The workflow's steps, one table (`STEPS`): per step, the config sections its command reads, the keys among them
that do not change its outputs, the keys a checkpoint may differ in from the run that resumes it, and the module
whose code writes its checkpoints.

Three things are derived from it, so they cannot disagree:
- `outputs_relevant`: the keys that change a step's outputs. A rule hands its command every section it reads
  (config.step_sections) but lists only these as params, Snakemake's rerun trigger: editing any other key reruns
  nothing.
- `resume_relevant`: the keys a checkpoint must share with the run to be resumed (runtime.step_identity): the same
  keys less `resumes_across`, a run's length (extending a finished run is a resume) and what only evaluates it.
- `Step.runs`: the code identity of those checkpoints, the source of that module and of every didi module it imports
  (runtime.code_version): editing a module the step does not run keeps its checkpoints.
A key not listed as ignored counts as changing both the outputs and the checkpoints (the safe side).

Plain data and dict functions: the Snakefile reads it without torch, and the core's training loops read it too.
"""

from __future__ import annotations

import dataclasses

ALL = "*"  # every key of a section


@dataclasses.dataclass(frozen=True)
class Step:
    reads: tuple[str, ...]   # the config sections the step's command reads
    # {section: keys (or ALL)} that do not change its outputs: logging and checkpoint cadence, evaluation cadence that
    # does not touch the weights (a separate noise stream), experiment tracking, inference-only keys of a training
    # step, the sweep lists that name OTHER files, and keys a rule adds per job in their place
    ignored: dict = dataclasses.field(default_factory=dict)
    # {section: keys} that change its outputs but not its checkpoints' steps: a resumed run may differ in them
    resumes_across: dict = dataclasses.field(default_factory=dict)
    runs: str | None = None  # the didi module that writes its checkpoints (resumable steps only)
    synthetic_reads: tuple[str, ...] = ()  # more sections it reads with a synthetic corpus (corpus.source synthetic:)


# the sampling step's inference-only keys of the diffusion section, which training does not read
SAMPLING_KEYS = ("sampling_t_end", "sampling_precision", "cache")

STEPS: dict[str, Step] = {
    # the synthetic corpus (didi/synthetic.py) draws sequences of data.seq_len - 2 states, and its tokenizer and
    # exact judge are built from corpus.synthetic
    "corpus": Step(("seed", "corpus"), synthetic_reads=("data",)),
    "tokenizer": Step(("seed", "tokenizer"), synthetic_reads=("corpus",)),
    "tokenize": Step(("data",), {"data": ("num_proc",)}),
    "train_teacher": Step(
        ("seed", "data", "model", "diffusion", "teacher", "wandb"),
        {"data": ("num_proc",), "diffusion": SAMPLING_KEYS, "teacher": ("log_every", "checkpoint_every", "eval_every"),
         "wandb": ALL},
        # its length (a constant learning rate after the warm-up: a finished run is extended), the size of its
        # evaluations and compilation, which leave its steps alone
        resumes_across={"teacher": ("steps", "finetune_steps", "eval_batches", "compile")},
        runs="train",
    ),
    "train_judge": Step(
        ("seed", "judge", "data", "wandb"),
        {"judge": ("log_every", "checkpoint_every"), "data": ("num_proc",), "wandb": ALL},
        resumes_across={"judge": ("eval_batches",)},  # not judge.steps: its cosine schedule spans the run
        runs="judge",
        synthetic_reads=("corpus",),
    ),
    # one file per (sampler, precision, nfe, temperature): the sweep lists name other files; precision comes
    # from the file name, RGAS's settings are added per file by the rule (distill.rgas, RGAS files only)
    "sample": Step(
        ("seed", "diffusion", "sampling", "distill"),
        {"diffusion": ("t_min", "antithetic", "sampling_precision"),
         "sampling": ("nfe", "precisions", "temperatures", "temperature_nfe", "num_samples"), "distill": ALL},
    ),
    "teacher_pool": Step(
        ("seed", "diffusion", "sampling", "distill"),
        {"diffusion": ("t_min", "antithetic", "sampling_precision"),
         "sampling": ("nfe", "precisions", "temperatures", "temperature_nfe", "num_samples", "weights"),
         "distill": ALL},
    ),
    # one run per variant and seed: the rule adds the variant's switches (variant_method) as a param of its own and
    # the seed is in the run's path; of the diffusion section distillation reads eps alone (the schedule; the
    # rollout has distill.rollout_precision); t_min and antithetic reach it through the teacher, and are kept here
    # too (ignoring them would rerun every existing distillation once, for nothing)
    "distill": Step(
        ("seed", "diffusion", "distill", "wandb"),
        {"diffusion": SAMPLING_KEYS,
         "distill": ("log_every", "checkpoint_every", "nfe", "seeds", "run", "rgas", "method", "variants",
                     "teacher_pool_size", "teacher_pool_nfe", "student_weights"),
         "wandb": ALL},
        # iterations: not with a decaying rate (distill.resume_identity); t_min, antithetic: read by the teacher alone
        resumes_across={"distill": ("iterations",), "diffusion": ("t_min", "antithetic")},
        runs="distill_cli",
    ),
    # a released teacher used as is (teacher.finetune_steps: 0): the checks of the import read these
    "import_teacher": Step(
        ("seed", "data", "model", "teacher"),
        {"data": ("num_proc",), "teacher": ("log_every", "checkpoint_every", "eval_every", "eval_batches")},
    ),
    # SDTT (didi/sdtt.py): one run, a student per round
    "distill_sdtt": Step(
        ("seed", "diffusion", "sdtt", "wandb"),
        {"diffusion": ("sampling_precision", "cache"), "sdtt": ("log_every", "checkpoint_every", "student_weights"),
         "wandb": ALL},
        runs="sdtt",
    ),
    # the AR baseline: the teacher's budget (teacher.steps, never finetune_steps) and recipe, not its cadence nor its
    # DiT-only switches
    "train_baseline": Step(
        ("seed", "data", "model", "teacher", "baseline"),
        {"data": ("num_proc",), "teacher": ("log_every", "checkpoint_every", "eval_every", "bf16", "compile",
                                            "init_from", "finetune_steps")},
        resumes_across={"teacher": ("steps", "eval_batches")},  # as the teacher's (its held-out perplexity at the end)
        runs="baseline",
    ),
    # one file per temperature (in its name); num_samples is a command-line argument
    "sample_baseline": Step(
        ("seed", "data", "sampling"),
        {"data": ("num_proc", "wrap"), "sampling": ("nfe", "precisions", "temperatures", "temperature_nfe",
                                                    "weights")},
    ),
    "reference": Step(("seed", "evaluation")),
    "evaluate": Step(("seed", "evaluation")),
    "table": Step(("seed",)),
    "figures": Step(("seed",)),
    "dynamics": Step(("seed",)),
    "cost": Step(("seed",)),
    # tokenizer: vocab_size for --synthetic-tokens; resources: gpu sets the per-GPU batch timed (bench.per_gpu_batch);
    # sdtt, evaluation: the distill_cost section (didi/cost.py) distils with SDTT too and judges as evaluate does
    "bench": Step(
        ("seed", "tokenizer", "data", "model", "diffusion", "teacher", "sampling", "distill", "sdtt", "evaluation",
         "resources"),
        {"resources": ("sample_gpu", "threads", "mem_mb", "runtime")},
    ),
}


def step_names(cfg: dict, step: str) -> tuple[str, ...]:
    """The sections `step`'s command reads (with corpus.source synthetic:..., its synthetic_reads too)."""
    names = STEPS[step].reads
    if str(cfg.get("corpus", {}).get("source", "")).startswith("synthetic:"):
        names += STEPS[step].synthetic_reads
    return names


def _part(cfg: dict, step: str, skipped: dict) -> dict:
    """cfg's sections that `step` reads, less the keys `skipped` names ({section: keys or ALL})."""
    part = {}
    for name in step_names(cfg, step):
        skip = skipped.get(name, ())
        if skip == ALL:
            continue
        value = cfg[name]
        part[name] = {k: v for k, v in value.items() if k not in skip} if isinstance(value, dict) else value
    return part


def outputs_relevant(cfg: dict, step: str) -> dict:
    """The part of the sections `step` reads that changes its outputs (the rule's params: Snakemake's rerun
    trigger)."""
    return _part(cfg, step, STEPS[step].ignored)


def resume_relevant(cfg: dict, step: str) -> dict:
    """The part of the sections `step` reads that its checkpoints must share with the run that resumes them:
    outputs_relevant less the step's resumes_across."""
    skipped = dict(STEPS[step].ignored)
    for name, keys in STEPS[step].resumes_across.items():
        skipped[name] = ALL if skipped.get(name) == ALL else (*skipped.get(name, ()), *keys)
    return _part(cfg, step, skipped)
