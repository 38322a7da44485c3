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


def test_slurm_profile_dry_run_paper(tmp_path):
    """The cluster profile parses, and the paper preset's GPU rules get the GPU partition and 8 GPUs."""
    out = run_snakemake(
        ["--profile", str(REPO / "profiles" / "slurm"), "--dry-run", "--configfile", str(REPO / "config.yaml"),
         str(REPO / "presets" / "paper.yaml"), "--config", f"results={tmp_path}"]
    ).stdout
    blocks = {m.group(1): m.group(2) for m in re.finditer(r"^rule (\w+):\n((?:    .*\n)+)", out, re.M)}
    teacher = blocks["train_teacher"]
    assert "slurm_partition=EDIT-gpu" in teacher and "gpu=8" in teacher and "nodes=1" in teacher
    assert "runtime=2880" in teacher and "mem_mb=64000" in teacher
    assert "slurm_partition=EDIT-cpu" in blocks["corpus"] and "gpu=" not in blocks["corpus"]
    assert "gpu=1" in blocks["sample"] and "slurm_partition=EDIT-gpu" in blocks["sample"]
    assert "-m torch.distributed.run --standalone --nproc-per-node 8" in out  # torchrun, through this Python


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
