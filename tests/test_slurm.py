"""The SLURM profiles against a real SLURM: the one-host cluster of `.ci/slurm.sh up` (run by .ci/run).

Tests marked `slurm` skip, saying why, where no SLURM answers; CI starts one, so there they run. The profile dry run
needs no cluster.
"""

import hashlib
import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, SMOKE, run_snakemake, subprocess_env, venv_bin

TEST_PROFILE = REPO / "profiles" / "slurm-test"


def slurm_node_state() -> str | None:
    """The state of this host's node as sinfo reports it (`idle`, `mix`, `down*`, ...), or None without SLURM."""
    if shutil.which("sinfo") is None:
        return None
    try:
        proc = subprocess.run(["sinfo", "--noheader", "--format", "%t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    states = proc.stdout.split()
    return states[0] if proc.returncode == 0 and states else None


def require_slurm() -> None:
    state = slurm_node_state()
    if state is None:
        pytest.skip("no SLURM cluster answers (sinfo missing or slurmctld down): run `bash .ci/slurm.sh up` as root")
    if not state.startswith(("idle", "mix")):
        pytest.skip(f"the SLURM node is {state!r}, not idle: see `sinfo -N -l` and /var/log/slurm/")


def submitted_jobs(snakemake_output: str) -> dict[str, tuple[str, Path]]:
    """{slurm job id: (rule, its SLURM log)} from snakemake's output lines such as
    `Job 3 has been submitted with SLURM jobid 7 (log: .../slurm_logs/rule_tokenize/train/7.log).`"""
    found = re.findall(r"submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.?$", snakemake_output, re.M)
    jobs = {}
    for job_id, log in found:
        rule = next(part for part in Path(log).parts if part.startswith("rule_")).removeprefix("rule_")
        jobs[job_id] = (rule, Path(log))
    return jobs


def slurm_job_state(job_id: str) -> str | None:
    """COMPLETED/FAILED/... while slurmctld still remembers the job (MinJobAge), else None."""
    proc = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=20)
    match = re.search(r"JobState=(\S+)", proc.stdout)
    return match.group(1) if match else None


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_through_slurm(args: list[str], workdir: Path, timeout: int) -> str:
    proc = subprocess.run(
        [venv_bin("snakemake"), "--profile", str(TEST_PROFILE), *args],
        cwd=workdir, env=subprocess_env(), capture_output=True, text=True, timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted(workdir.rglob("slurm_logs/**/*.log")))
        pytest.fail(f"snakemake through SLURM failed ({proc.returncode}):\n{out[-6000:]}\n{logs[-6000:]}")
    return out


SLURM_PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
FILLED = {"EDIT-account": "acct", "EDIT-cpu": "cpu-part", "EDIT-gpu": "gpu-part"}  # what a user puts in


def filled_profile(tmp_path: Path) -> Path:
    """A copy of profiles/slurm with every EDIT-... value filled in, as a user does before the first run."""
    text = SLURM_PROFILE.read_text()
    for placeholder, value in FILLED.items():
        text = text.replace(f'"{placeholder}"', f'"{value}"')
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(text)
    return profile


def job_resources(dry_run_output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, {resource: value}) of every job a dry run plans."""
    jobs = []
    for m in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", dry_run_output, re.M):
        line = re.search(r"^    resources: (.*)$", m.group(2), re.M)
        pairs = [item.split("=", 1) for item in line.group(1).split(", ")] if line else []
        jobs.append((m.group(1), {k: v for k, v in pairs}))
    return jobs


def gpu_rules_in_source() -> set[str]:
    """Every rule of workflow/rules/*.smk whose resources declare `gpu` (in either branch of an if)."""
    rules = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for m in re.finditer(r"^(\s*)rule (\w+):\n((?:\1    .*\n|\s*\n)+)", smk.read_text(), re.M):
            if re.search(r"^\s+gpu=", m.group(3), re.M):
                rules.add(m.group(2))
    return rules


def test_slurm_profile_dry_run_paper(tmp_path):
    """The filled-in cluster profile parses, and the paper preset's GPU rules get the GPU partition and 8 GPUs."""
    out = run_snakemake(
        ["--profile", str(filled_profile(tmp_path)), "--dry-run", "--configfile", str(REPO / "config.yaml"),
         str(REPO / "presets" / "paper.yaml"), "--config", f"results={tmp_path}"]
    ).stdout
    blocks = {m.group(1): m.group(2) for m in re.finditer(r"^rule (\w+):\n((?:    .*\n)+)", out, re.M)}
    teacher = blocks["train_teacher"]
    assert "slurm_partition=gpu-part" in teacher and "gpu=8" in teacher and "nodes=1" in teacher
    assert "slurm_account=acct" in teacher
    assert "runtime=2880" in teacher and "mem_mb=64000" in teacher
    assert "slurm_partition=cpu-part" in blocks["corpus"] and "gpu=" not in blocks["corpus"]
    assert "gpu=1" in blocks["sample"] and "slurm_partition=gpu-part" in blocks["sample"]
    assert "-m torch.distributed.run --standalone --nproc-per-node 8" in out  # torchrun, through this Python


def test_slurm_profile_puts_every_gpu_rule_on_the_gpu_partition():
    """Every rule that declares a `gpu` resource has the GPU partition in the profile's set-resources."""
    import yaml

    profile = yaml.safe_load(SLURM_PROFILE.read_text())
    gpu_partition = profile["set-resources"]["train_teacher"]["slurm_partition"]
    cpu_partition = profile["default-resources"]["slurm_partition"]
    assert gpu_partition != cpu_partition
    declared = gpu_rules_in_source()
    assert {"train_teacher", "distill", "sample", "train_baseline", "sample_baseline", "bench",
            "bench_synthetic"} <= declared
    missing = sorted(r for r in declared if profile["set-resources"].get(r, {}).get("slurm_partition") != gpu_partition)
    assert not missing, f"rules requesting a GPU without the GPU partition in {SLURM_PROFILE}: {missing}"


PRESETS = {  # name -> preset files on top of config.yaml
    "config.yaml": [],
    "smoke": ["presets/smoke.yaml"],
    "synthetic": ["presets/synthetic.yaml"],
    "paper": ["presets/paper.yaml"],
    "paper-released-teacher": ["presets/paper.yaml", "presets/paper-released-teacher.yaml"],
    "paper-released-teacher-finetune": ["presets/paper.yaml", "presets/paper-released-teacher.yaml"],
}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_job_requesting_a_gpu_runs_on_the_gpu_partition(preset, tmp_path):
    """A dry run of each preset (all, bench, bench_synthetic) with the filled-in profile: every job that asks for
    GPUs goes to the GPU partition, and every job of a rule that never asks for one to the CPU partition."""
    files = [str(REPO / f) for f in PRESETS[preset]]
    if preset.startswith("paper-released"):  # the converted teacher the preset points at, here a stand-in
        (tmp_path / "converted").mkdir()
        steps = 500 if preset.endswith("finetune") else 0
        (tmp_path / "released.yaml").write_text(
            f"teacher:\n  init_from: {tmp_path / 'converted'}\n  finetune_steps: {steps}\n")
        files.append(str(tmp_path / "released.yaml"))
    results = tmp_path / "results"
    out = run_snakemake(
        ["--profile", str(filled_profile(tmp_path)), "--dry-run", "--configfile", str(REPO / "config.yaml"), *files,
         "--config", f"results={results}", "--", "all", "bench", "bench_synthetic"]
    ).stdout
    jobs = job_resources(out)
    assert len(jobs) > 10 and {"train_teacher", "bench", "bench_synthetic"} <= {rule for rule, _ in jobs}
    gpu_rules = gpu_rules_in_source()
    wrong = []
    for rule, resources in jobs:
        gpus = int(resources.get("gpu", "0"))
        want = "gpu-part" if gpus > 0 else "cpu-part" if rule not in gpu_rules else None
        if want and resources.get("slurm_partition") != want:
            wrong.append((rule, resources.get("gpu"), resources.get("slurm_partition")))
    assert not wrong, f"jobs on the wrong partition (rule, gpu, partition): {sorted(set(wrong))}"
    requesting = {rule for rule, resources in jobs if int(resources.get("gpu", "0")) > 0}
    if preset.startswith("paper"):  # the paper preset asks for GPUs: every GPU rule planned here gets them
        imported = preset == "paper-released-teacher"  # train_teacher then runs `didi import-teacher`: no GPU
        assert requesting == {rule for rule, _ in jobs} & gpu_rules - ({"train_teacher"} if imported else set())
        assert {"distill", "sample", "evaluate", "train_baseline", "sample_baseline", "bench"} <= requesting
        assert ("train_teacher" in requesting) == (not imported)


def test_profile_with_placeholders_is_rejected_before_any_job(tmp_path):
    """The shipped profile still holds EDIT-... values: a dry run already stops, naming the file and every key."""
    proc = subprocess.run(
        [venv_bin("snakemake"), "--profile", str(REPO / "profiles" / "slurm"), "--dry-run", "--configfile",
         str(REPO / "config.yaml"), str(REPO / "presets" / "paper.yaml"), "--config", f"results={tmp_path}"],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert str(SLURM_PROFILE) in out and "placeholder" in out
    for key in ("default-resources.slurm_account = 'EDIT-account'", "default-resources.slurm_partition = 'EDIT-cpu'",
                "set-resources.train_teacher.slurm_partition = 'EDIT-gpu'",
                "set-resources.sample_baseline.slurm_partition = 'EDIT-gpu'"):
        assert key in out, key
    assert "Job stats" not in out and "rule corpus" not in out  # nothing planned, nothing submitted


def test_profile_placeholder_check_reads_the_profiles_on_the_command_line(tmp_path):
    """didi.config.check_profiles: `--profile DIR`, `--profile=FILE` and $SNAKEMAKE_PROFILE; a filled-in copy and
    commented-out EDIT lines pass."""
    from didi import config

    filled = filled_profile(tmp_path)
    config.check_profiles(["--profile", str(filled), "-n"])
    config.check_profiles([f"--profile={filled / 'config.yaml'}"])
    config.check_profiles([], None)
    assert "# slurm-qos" in SLURM_PROFILE.read_text()  # the commented EDIT lines are not values
    for argv, env in ((["--profile", str(SLURM_PROFILE.parent)], None), ([f"--profile={SLURM_PROFILE}"], None),
                      ([], str(SLURM_PROFILE.parent))):
        with pytest.raises(config.ConfigError, match="slurm_account = 'EDIT-account'"):
            config.check_profiles(argv, env)
    config.check_profiles(["--profile", str(filled)], str(SLURM_PROFILE.parent))  # --profile wins over the env


@pytest.mark.slurm
def test_slurm_resources_reach_sbatch(tmp_path):
    """A two-rule workflow through sbatch: each job runs inside its own SLURM allocation, sized by the rule's
    portable resources (threads -> CPUs, mem_mb -> memory, runtime -> time limit)."""
    require_slurm()
    (tmp_path / "Snakefile").write_text(textwrap.dedent(
        """
        rule all:
            input: "second.txt"

        rule first:
            output: "first.txt"
            threads: 2
            resources: mem_mb=700, runtime=7, gpu=0
            shell:
                "echo $SLURM_JOB_ID $(squeue -h -j $SLURM_JOB_ID -o '%C %m %l') > {output}"

        rule second:
            input: "first.txt"
            output: "second.txt"
            shell: "echo $SLURM_JOB_ID > {output}"
        """
    ))
    out = run_through_slurm([], tmp_path, timeout=300)
    jobs = submitted_jobs(out)
    assert sorted(rule for rule, _ in jobs.values()) == ["first", "second"], out[-3000:]
    ids = {rule: job for job, (rule, _) in jobs.items()}
    # What each job saw: its own SLURM job id, and squeue's CPUs, memory and time limit for that job.
    assert (tmp_path / "first.txt").read_text().split() == [ids["first"], "2", "700M", "7:00"]
    assert (tmp_path / "second.txt").read_text().split() == [ids["second"]]
    for job_id, (rule, log) in jobs.items():
        assert log == tmp_path / ".snakemake" / "slurm_logs" / f"rule_{rule}" / f"{job_id}.log" and log.exists()
        assert slurm_job_state(job_id) in ("COMPLETED", None)
    assert slurm_job_state(ids["second"]) == "COMPLETED"


def deterministic_outputs(results: Path) -> dict[str, str]:
    """Checksums of the outputs that depend only on the config and seed (no timings, no provenance): the corpus
    split, token blocks, teacher weights, distilled students and discriminators, and every sample file."""
    files = [*sorted(results.glob("tokens/*.npy")), *sorted(results.glob("teacher/*/model.safetensors")),
             *sorted(results.glob("distill/*/*/model.safetensors")), *sorted(results.glob("samples/*/*.npy"))]
    out = {str(p.relative_to(results)): sha256(p) for p in files}
    stats = json.loads((results / "corpus" / "stats.json").read_text())
    out["corpus/stats.json"] = json.dumps({k: v for k, v in stats.items() if k != "provenance"}, sort_keys=True)
    return out


@pytest.mark.slurm
@pytest.mark.slow
def test_smoke_workflow_through_slurm(smoke_run, tmp_path):
    """The whole smoke DAG submitted job by job with sbatch gives the same corpus split, token blocks, teacher and
    student weights and samples, bit for bit, as the local run of the same config."""
    require_slurm()
    results = tmp_path / "results"
    workdir = tmp_path / "work"  # .snakemake/ (locks, slurm_logs) of this run, apart from the repo's
    workdir.mkdir()
    out = run_through_slurm(
        ["--snakefile", str(REPO / "Snakefile"), *SMOKE, "--config", f"results={results}"], workdir, timeout=1200
    )
    jobs = submitted_jobs(out)
    rules = {rule for rule, _ in jobs.values()}
    assert {"corpus", "tokenizer", "tokenize", "train_teacher", "sample", "distill", "evaluate", "table"} <= rules
    for job_id, (rule, log) in jobs.items():  # each job's own SLURM log, named by its SLURM job id
        assert log.is_relative_to(workdir / ".snakemake" / "slurm_logs") and log.name == f"{job_id}.log"
        assert log.exists()
    known = {job_id: slurm_job_state(job_id) for job_id in jobs}
    assert all(state in ("COMPLETED", None) for state in known.values()), known
    assert "COMPLETED" in known.values()  # slurmctld still remembers the recent ones (MinJobAge)
    local, remote = deterministic_outputs(smoke_run), deterministic_outputs(results)
    assert len(local) >= 8 and local.keys() == remote.keys()
    differing = [name for name in local if local[name] != remote[name]]
    assert not differing, f"outputs differ between the local and the SLURM run: {differing}"
