"""The workflow itself: lint, formatting, dry runs of every config, and the smoke DAG end to end."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, SMOKE, run_snakemake, subprocess_env, venv_bin
from didi import tables


def test_snakemake_lint_clean():
    proc = run_snakemake(["--lint"])
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr


def test_snakefmt_clean():
    proc = subprocess.run([venv_bin("snakefmt"), "--check", str(REPO)], capture_output=True, text=True, env=subprocess_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("preset", [None, "smoke.yaml", "paper.yaml"])
def test_dry_run(preset, tmp_path):
    if preset and not (REPO / "presets" / preset).exists():
        pytest.fail(f"presets/{preset} is missing")
    args = ["--dry-run", "--printshellcmds", "--config", f"results={tmp_path}"]
    if preset:
        args = ["--configfile", str(REPO / "config.yaml"), str(REPO / "presets" / preset), *args]
    out = run_snakemake(args).stdout
    for rule in ["corpus", "tokenizer", "train_teacher", "train_judge", "sample", "distill", "evaluate", "figures"]:
        assert f"rule {rule}:" in out, f"dry run of {preset or 'config.yaml'} plans no {rule} job"
    # didi runs through Snakemake's own Python, never a `didi` found on PATH; distillation checks its inputs first
    commands = [line for line in out.splitlines() if line.startswith("Shell command:") and "didi" in line]
    assert commands and all(" -m didi " in line for line in commands)
    assert f" -m didi check-inputs --teacher {tmp_path}/teacher/ema --tokens {tmp_path}/tokens/train.json" in out
    assert "/samples/exact/" not in out  # the exact denoiser exists only in the exact world


BAD_CONFIGS = {  # preset text -> what the error must name (besides the file)
    "teacher:\n  stepz: 3\n": "unknown key teacher.stepz",
    "distill:\n  run: [full, nosuchvariant]\n": "distill.run: undefined variant(s) ['nosuchvariant']",
    "distill:\n  run: [full]\n  rgas:\n    variants: [omega]\n": "distill.rgas.variants: ['omega'] not in distill.run",
    "sampling:\n  nfe: [8, 100]\n": "sampling.nfe: NFE [100] > data.seq_len = 64",
    "distill:\n  nfe: [8, 65]\n": "distill.nfe: NFE [65] > data.seq_len = 64",
    "sampling:\n  temperature_nfe: 128\n": "sampling.temperature_nfe: NFE [128] > data.seq_len",
    "distill:\n  teacher_pool_nfe: 128\n": "distill.teacher_pool_nfe: NFE [128] > data.seq_len",
}


@pytest.mark.parametrize("text", list(BAD_CONFIGS))
def test_dry_run_rejects_bad_config_naming_file_and_key(text, tmp_path):
    """Every check (schema and cross-key) runs before any job, in didi.config.validate: short, file and key named."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    proc = subprocess.run(
        [venv_bin("snakemake"), "-n", "--configfile", str(REPO / "config.yaml"), str(bad)],
        cwd=REPO, capture_output=True, text=True, env=subprocess_env(),
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert BAD_CONFIGS[text] in out and str(bad) in out
    assert "Job stats" not in out and len(out.splitlines()) < 30  # no schema dump, no job planned


def fake_finished_run(tmp_path, preset_args):
    """Every output of the smoke DAG as an empty file/directory, recorded by `snakemake --touch` (with params):
    what a finished run looks like to the rerun triggers, without running anything."""
    results = tmp_path / "results"
    args = [*preset_args, "--config", f"results={results}"]
    summary = run_snakemake(["--directory", str(tmp_path), "--summary", *args]).stdout
    for line in summary.splitlines()[1:]:
        path = Path(line.split("\t")[0])
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.mkdir(parents=True, exist_ok=True)
    run_snakemake(["--directory", str(tmp_path), "--touch", "--cores", "1", *args])
    return results


def planned_jobs(tmp_path, results, preset_args, edit: str) -> dict[str, int]:
    edited = tmp_path / "edit.yaml"
    edited.write_text(edit)
    out = run_snakemake(["--directory", str(tmp_path), "-n", *preset_args, str(edited), "--config",
                         f"results={results}"]).stdout
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", out, re.M) if rule != "total"}


def test_edits_rerun_only_the_steps_whose_outputs_they_change(tmp_path):
    """Logging cadence reruns nothing; an inference-only key reruns only the files that use it; one new NFE point
    samples one new file (not the other points, the teacher pool or teacher_pos); a training key retrains."""
    results = fake_finished_run(tmp_path, SMOKE)
    after = {"table": 1, "figures": 1, "cost": 1, "all": 1}
    assert planned_jobs(tmp_path, results, SMOKE, "teacher:\n  log_every: 3\n  checkpoint_every: 7\n") == {}
    assert planned_jobs(tmp_path, results, SMOKE, "distill:\n  log_every: 3\n  checkpoint_every: 7\n") == {}
    # the smoke preset has one RGAS variant at two student NFEs and two seeds: its four RGAS files are resampled,
    # nothing trains
    assert planned_jobs(tmp_path, results, SMOKE, "distill:\n  rgas:\n    h_start: 1.0\n") == {
        "sample": 4, "evaluate": 4, **after}
    assert planned_jobs(tmp_path, results, SMOKE, "sampling:\n  nfe: [4, 8, 32]\n") == {
        "sample": 1, "evaluate": 1, **after}
    # which student weights are sampled (config.yaml: ema): every student file ((3 variants + 1 RGAS) x 2 NFEs x
    # 2 seeds), no teacher file, no distillation (the run wrote both weights)
    assert planned_jobs(tmp_path, results, SMOKE, "distill:\n  student_weights: raw\n") == {
        "sample": 16, "evaluate": 16, **after}
    # one more distillation seed: one distillation per variant and its files, nothing else retrains
    more = planned_jobs(tmp_path, results, SMOKE, "distill:\n  seeds: [1234, 7, 8]\n")
    assert more == {"distill": 3, "sample": 8, "evaluate": 8, "dynamics": 1, **after}, more
    retrain = planned_jobs(tmp_path, results, SMOKE, "teacher:\n  lr: 1.0e-3\n")
    assert retrain["train_teacher"] == 1 and retrain["distill"] >= 1 and retrain["teacher_pool"] == 1


def test_rerun_appends_to_the_log_with_a_header(tmp_path):
    """The corpus step twice (forced), with no venv on PATH (a bare `.venv/bin/snakemake`): the log holds the last
    run, its history both, each after a dated header naming the command."""
    corpus = tmp_path / "texts"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i}.txt").write_text(f"document number {i} " * 20)
    args = ["--cores", "1", *SMOKE, "--config", f"results={tmp_path / 'results'}", f"corpus={{source: {corpus}}}",
            "--forcerun", "corpus", "--until", "corpus"]
    bare = {**subprocess_env(), "PATH": "/usr/bin:/bin"}  # neither `didi` nor `torchrun` can be found
    for _ in range(2):
        proc = subprocess.run([venv_bin("snakemake"), "--directory", str(tmp_path), *args], cwd=REPO, env=bare,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    header = re.compile(r"^=== \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \S+ -m didi corpus --config-json CONFIG", re.M)
    history = (tmp_path / "results" / "logs" / "corpus.log.history").read_text()
    assert len(header.findall(history)) == 2 and history.count("corpus train: 11 documents") == 2, history
    log = (tmp_path / "results" / "logs" / "corpus.log").read_text()
    assert len(header.findall(log)) == 1 and "corpus train: 11 documents" in log, log


@pytest.mark.slow
def test_smoke_run_outputs(smoke_run):
    results = smoke_run
    table = pd.read_csv(results / "tables" / "results.csv")
    models = set(table["model"])
    seeded = {f"student-{v}-seed{s}" for v in ("baseline", "full", "teacher_pos") for s in (1234, 7)}
    pooled = {"student-baseline", "student-full", "student-teacher_pos"}
    assert {"teacher", "reference"} | seeded | pooled <= models
    assert set(table.loc[table.model.isin(seeded), "distill_seed"]) == {1234, 7}
    assert (table.loc[table.model.isin(pooled), "seeds"] == 2).all()
    assert table.loc[table.model.isin(pooled), "distill_seed"].isna().all()
    seeds_table = (results / "tables" / "seeds_table.md").read_text()
    assert "full rgas: all three targets on" in seeds_table and "of 2 seeds" in seeds_table
    assert (table.loc[table.model.isin(set(table.model) - pooled - {"reference"}), "num_samples"] == 8).all()
    assert np.isfinite(table["gen_ppl"]).all() and (table["gen_ppl"] > 1).all()
    assert (table.loc[table.sampler == "rgas", "disc_forward_calls"] > 0).all()
    for name in tables.FIGURES:
        for ext in ("png", "pdf"):
            assert (results / "figures" / f"{name}.{ext}").stat().st_size > 1000
    assert (results / "tables" / "results.csv.provenance.json").exists()
    teacher = json.loads((results / "teacher" / "metrics.json").read_text())
    assert "git_commit" in teacher["provenance"] and teacher["provenance"]["config"]["teacher"]["steps"] == 40
    ids = np.load(results / "samples" / "teacher" / "ancestral_float64_nfe32_T1.00.npy")
    assert ids.shape == (8, 32)
    for log in (results / "logs").rglob("*.log"):
        assert log.stat().st_size > 0, f"{log} is empty: the rule's log: gets nothing"


@pytest.mark.slow
def test_smoke_report(smoke_run, tmp_path):
    report = tmp_path / "report.html"
    run_snakemake([*SMOKE, "--config", f"results={smoke_run}", "--report", str(report)])
    html = report.read_text(errors="replace")
    assert report.stat().st_size > 10_000 and "gen_ppl_vs_nfe" in html
    # opened as a reader opens it: headless Chromium renders the report and every figure at report width, and each
    # screenshot must show something (`.ci/run` installs Chromium; elsewhere the check is skipped without one)
    shots = tmp_path / "shots"
    figures = sorted((smoke_run / "figures").glob("*.png"))
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "report_screenshot.py"), str(report), *map(str, figures),
                           "--out-dir", str(shots), "--min-scale", "0.4"], capture_output=True, text=True)
    if proc.returncode == 2 and not os.environ.get("CI"):
        pytest.skip("no Chromium: " + proc.stderr.strip().splitlines()[0])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(list(shots.glob("*.png"))) == len(figures) + 1
