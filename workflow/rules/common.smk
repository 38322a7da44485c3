# Helpers shared by the rules: how a rule runs `didi`, the config it hands each command, output paths, targets.
import json
import os
import sys

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from didi.config import (
    STUDENT_DIRS,
    distill_seeds,
    parse_student_model,
    step_sections,
    student_model,
    scores_exact_denoiser,
    variant_method,
)
from didi.diffusion import PRECISIONS
from didi.rgas import guidance
from didi.sdtt import plan_of as sdtt_plan, student_subdir as sdtt_student_subdir
from didi.stages import outputs_relevant
from didi.tables import FIGURES, TABLES  # what `didi figures` writes

R = config["results"]
ENVS = "../../envs/didi.yaml"
SAMPLE_STEM = "{sampler}_{precision}_nfe{nfe}_T{temperature}"
# the AR baseline (baseline.smk): model gpt2, sampler ar, float32 multinomial, NFE = L - 1 generated tokens
BASELINE_NFE = config["data"]["seq_len"] - 1
BASELINE_STEM = f"gpt2/ar_float32_nfe{BASELINE_NFE}_T{{temperature}}"

# `didi` and torchrun through the Python that runs Snakemake (no virtual environment to activate), or through the
# conda env's Python under --sdm conda (envs/didi.yaml installs didi).
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
PYTHON = "python" if USE_CONDA else sys.executable
LAUNCHERS = {
    "{DIDI}": f"{PYTHON} -m didi",
    "{TORCHRUN}": f"{PYTHON} -m torch.distributed.run --standalone",
}


def logged(command):
    """A rule's shell command: {DIDI}/{TORCHRUN} resolved, its output in the log after a header line (UTC date and
    the command, config JSON elided), and also APPENDED to `<log>.history`: Snakemake empties the log: file before
    each run, the history keeps the record of every run before it (a killed run's last lines included).
    """
    for placeholder, launcher in LAUNCHERS.items():
        command = command.replace(placeholder, launcher)
    shown = command.replace("{params.config_json:q}", "CONFIG")
    header = f"\"=== $(date -u +%Y-%m-%dT%H:%M:%SZ)\" '{shown}'"
    keep = "tee -a {log}.history >> {log}"
    return f"echo {header} | {keep}; ( {command} ) 2>&1 | {keep}"  # "( (" not "((": bash arithmetic


class Untracked:
    """A param value that Snakemake hands to the shell but does not compare for its params rerun trigger (it
    records only values of builtin types): the whole config sections a command reads."""

    def __init__(self, text):
        self.text = text

    def __str__(self):
        return self.text


def command_config(step):
    """A param: every config section the step's command reads, as JSON for `--config-json` (untracked)."""
    return Untracked(json.dumps(step_sections(config, step), sort_keys=True))


def relevant(step):
    """A param: the config the step's outputs depend on (didi.stages.STEPS lists what they do not depend on);
    editing any other key reruns nothing."""
    return json.dumps(outputs_relevant(config, step), sort_keys=True)


# the models the diffusion sampler (rule sample) draws from; gpt2 (the AR baseline) has rules of its own
DIFFUSION_MODELS = r"teacher|exact|student-sdtt|student-[A-Za-z0-9_]+-seed\d+"


wildcard_constraints:
    model=f"gpt2|{DIFFUSION_MODELS}",
    variant=r"[A-Za-z0-9_]+",
    seed=r"\d+",
    sampler=r"ancestral|rgas|ar",
    precision="|".join(PRECISIONS),
    nfe=r"\d+",
    temperature=r"\d+\.\d+",
    split=r"train|validation",


def fmt_temperature(t):
    return f"{float(t):.2f}"


def train_procs():
    """Processes per node for torchrun: one per GPU, or one on CPU."""
    return max(1, config["resources"]["gpu"])


def runtime(kind):
    return config["resources"]["runtime"][kind]


def teacher_sample_stems():
    """(precision, nfe, temperature) of every teacher sample file: the NFE sweep at each sampling precision, plus
    the temperature sweep at one NFE for the PPL-vs-entropy frontier."""
    s = config["sampling"]
    stems = {(p, k, fmt_temperature(1.0)) for p in s["precisions"] for k in s["nfe"]}
    default_precision = config["diffusion"]["sampling_precision"]
    stems |= {
        (default_precision, s["temperature_nfe"], fmt_temperature(t))
        for t in s["temperatures"]
    }
    return sorted(stems)


def distill_runs():
    """(variant, seed) of every distillation: each variant of distill.run once per distillation seed."""
    return [(v, s) for v in config["distill"]["run"] for s in distill_seeds(config)]


def distill_dir(variant, seed):
    return f"{R}/distill/{variant}/seed{seed}"


def sdtt_nfes():
    """The SDTT students' sampling steps, one per round, largest first (32, 16, 8 for L = 64, sdtt.min_nfe 8)."""
    return [r.student_nfe for r in sdtt_plan(config)]


def sdtt_student_dir(nfe):
    """The model directory of the SDTT student for `nfe` steps (EMA or raw: sdtt.student_weights)."""
    return f"{R}/distill/sdtt/{sdtt_student_subdir(config, nfe)}"


def sdtt_samples():
    """SDTT's students, each at the NFE its round trained it for, where the students' or teacher's sweep has it."""
    wanted = set(config["distill"]["nfe"]) | set(config["sampling"]["nfe"])
    precision = config["diffusion"]["sampling_precision"]
    return [
        ("student-sdtt", "ancestral", precision, k, fmt_temperature(1.0))
        for k in sorted(set(sdtt_nfes()) & wanted)
    ]


def student_samples():
    """(model, sampler, precision, nfe, temperature) for every distilled student over the student NFE sweep."""
    d = config["distill"]
    precision = config["diffusion"]["sampling_precision"]
    out = []
    for variant, seed in distill_runs():
        samplers = ["ancestral"] + (
            ["rgas"] if variant in d["rgas"]["variants"] else []
        )
        for sampler in samplers:
            out += [
                (
                    student_model(variant, seed),
                    sampler,
                    precision,
                    k,
                    fmt_temperature(1.0),
                )
                for k in d["nfe"]
            ]
    return out


def baseline_samples():
    """The AR baseline at T = 1 and over the teacher's temperature sweep (the PPL-vs-entropy frontier)."""
    temperatures = {
        fmt_temperature(t) for t in [1.0, *config["sampling"]["temperatures"]]
    }
    return [("gpt2", "ar", "float32", BASELINE_NFE, t) for t in sorted(temperatures)]


def exact_denoiser_samples():
    """The exact world's own denoiser over the NFE sweep (judge.kind exact, first-order chains): the best any
    denoiser does in K steps, i.e. the factorisation error alone (didi.synthetic.ExactDenoiser).
    """
    if not scores_exact_denoiser(config):
        return []
    precision = config["diffusion"]["sampling_precision"]
    return [
        ("exact", "ancestral", precision, k, fmt_temperature(1.0))
        for k in config["sampling"]["nfe"]
    ]


def all_sample_keys():
    teacher = [("teacher", "ancestral", p, k, t) for p, k, t in teacher_sample_stems()]
    return (
        teacher
        + exact_denoiser_samples()
        + student_samples()
        + sdtt_samples()
        + baseline_samples()
    )


def eval_files():
    return [
        f"{R}/eval/{m}/{s}_{p}_nfe{k}_T{t}.json" for m, s, p, k, t in all_sample_keys()
    ]


def final_outputs():
    return (
        [f"{R}/tables/results.csv"]
        + [f"{R}/figures/{f}.{ext}" for f in FIGURES for ext in ("png", "pdf")]
        + [f"{R}/tables/{t}.md" for t in TABLES]
        + [f"{R}/teacher/metrics.json", f"{R}/judge/judge.json"]
        + [f"{R}/figures/dynamics.{ext}" for ext in ("png", "pdf")]
        + [f"{R}/tables/distill_cost.md"]
    )


def variants_needing_teacher_pool():
    d = config["distill"]
    return [
        v
        for v in d["run"]
        if {**d["method"], **d["variants"].get(v, {})}["positives"] == "teacher"
    ]


def parent_of(key, of="output"):
    """A param: the directory of one of the rule's files (derived, so no path prefix is hard-coded twice)."""

    def directory_of(wildcards, input, output):
        return os.path.dirname((input if of == "input" else output)[key])

    return directory_of


def student_dir():
    """Which weights of a distilled student the sampling rules read (distill.student_weights): the EMA or raw."""
    return STUDENT_DIRS[config["distill"]["student_weights"]]


def sample_inputs(wildcards):
    """Generator weights (+ discriminator for RGAS) of the model a sample file comes from: the teacher's
    sampling.weights, a student's distill.student_weights; for model "exact" the exact judge's chain.
    """
    weights = config["sampling"]["weights"]
    if wildcards.model == "exact":  # the chain, as judge.json records it
        return {"model": rules.train_judge.output.judge, "tokenizer": f"{R}/tokenizer"}
    if wildcards.model == "student-sdtt":
        return {
            "model": sdtt_student_dir(wildcards.nfe),
            "metrics": f"{R}/distill/sdtt/metrics.json",
            "tokenizer": f"{R}/tokenizer",
        }
    if wildcards.model == "teacher":
        inputs = {
            "model": f"{R}/teacher/{weights}",
            "metrics": f"{R}/teacher/metrics.json",
        }
    else:
        run = distill_dir(*parse_student_model(wildcards.model))
        inputs = {"model": f"{run}/{student_dir()}", "metrics": f"{run}/metrics.json"}
        if wildcards.sampler == "rgas":
            inputs["discriminator"] = f"{run}/discriminator"
    return {**inputs, "tokenizer": f"{R}/tokenizer"}


def distill_inputs(wildcards):
    inputs = {
        "teacher": f"{R}/teacher/ema",
        "tokens": f"{R}/tokens/train.npy",
        "token_stats": f"{R}/tokens/train.json",
        "tokenizer": f"{R}/tokenizer",
    }
    if wildcards.variant in variants_needing_teacher_pool():
        inputs["pool"] = f"{R}/samples/teacher/pool.npy"
    return inputs


def rgas_params(wildcards):
    """A param of RGAS sample files only: the guidance settings (which variants get RGAS names other files)."""
    if wildcards.sampler != "rgas":
        return ""
    return json.dumps(guidance(config["distill"]["rgas"]), sort_keys=True)


def bench_inputs(wildcards):
    """The teacher, the first RGAS variant's student and discriminator for the speed-up section, and the judge for
    the distillation-cost section."""
    inputs = {
        "tokens": f"{R}/tokens/train.npy",
        "tokenizer": f"{R}/tokenizer",
        "teacher": f"{R}/teacher/ema",
        "baseline": f"{R}/baseline/baseline.json",
        "judge": f"{R}/judge/judge.json",
    }
    guided = config["distill"]["rgas"]["variants"]
    if guided:
        run = distill_dir(guided[0], distill_seeds(config)[0])
        inputs["student"] = f"{run}/{student_dir()}"
        inputs["discriminator"] = f"{run}/discriminator"
    return inputs
