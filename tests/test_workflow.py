"""The workflow itself: lint, formatting, dry runs of every config, and the smoke DAG end to end."""

import json
import subprocess

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, SMOKE, run_snakemake, subprocess_env, venv_bin


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
    args = ["--dry-run", "--config", f"results={tmp_path}"]
    if preset:
        args = ["--configfile", str(REPO / "config.yaml"), str(REPO / "presets" / preset), *args]
    out = run_snakemake(args).stdout
    for rule in ["corpus", "tokenizer", "train_teacher", "train_judge", "sample", "distill", "evaluate", "figures"]:
        assert f"rule {rule}:" in out, f"dry run of {preset or 'config.yaml'} plans no {rule} job"


def test_dry_run_rejects_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher:\n  stepz: 3\n")
    proc = subprocess.run(
        [venv_bin("snakemake"), "-n", "--configfile", str(REPO / "config.yaml"), str(bad)],
        cwd=REPO, capture_output=True, text=True, env=subprocess_env(),
    )
    assert proc.returncode != 0
    assert "stepz" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_smoke_run_outputs(smoke_run):
    results = smoke_run
    table = pd.read_csv(results / "tables" / "results.csv")
    models = set(table["model"])
    assert {"teacher", "reference", "student-baseline", "student-full", "student-teacher_pos"} <= models
    assert (table.loc[table.model != "reference", "num_samples"] == 8).all()
    assert np.isfinite(table["gen_ppl"]).all() and (table["gen_ppl"] > 1).all()
    assert (table.loc[table.sampler == "rgas", "disc_forward_calls"] > 0).all()
    for name in ["gen_ppl_vs_nfe", "entropy_vs_nfe", "ppl_vs_entropy", "ablation"]:
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
