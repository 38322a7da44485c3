"""`didi bench` on synthetic tokens and the GPU check script (on CPU: reduced size, CUDA-only parts skipped).
No timing is asserted: these check what is measured, on what, and what the outputs say."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO
from didi import bench, cli, config, gpucheck
from didi.model import DiT, DiTConfig

L = 32  # not 16, so the GPU check's NFE-16 and NFE-L sampler parts are distinct


def tiny_cfg() -> dict:
    cfg = config.load()
    cfg["tokenizer"]["vocab_size"] = 300
    cfg["data"]["seq_len"] = L
    cfg["model"] = {"hidden": 32, "layers": 1, "heads": 2, "cond_dim": 16, "mlp_ratio": 2, "dropout": 0.0,
                    "time_conditioning": False}
    cfg["teacher"].update(batch_size=4, bf16=False, compile=False)
    cfg["sampling"]["batch_size"] = 2
    cfg["distill"].update(nfe=[4], batch_size=2, group_size=2, discriminator_trainable_blocks=1)
    return config.validate(cfg)


TINY_YAML = """\
tokenizer: {vocab_size: 300}
data: {seq_len: 32}
model: {hidden: 32, layers: 1, heads: 2, cond_dim: 16, mlp_ratio: 2, dropout: 0.0}
teacher: {batch_size: 4}
sampling: {nfe: [8, 32], batch_size: 2}
distill: {nfe: [4], teacher_pool_nfe: 32, batch_size: 2, group_size: 2, discriminator_trainable_blocks: 1}
"""


def test_synthetic_blocks_are_seeded_uniform_ids_of_the_tokenizer_never_mask():
    cfg = tiny_cfg()
    blocks = bench.synthetic_blocks(cfg, 400)
    assert blocks.shape == (400, L) and blocks.dtype == np.uint16
    assert blocks.min() == 0 and blocks.max() == 299  # every id of len(tokenizer) = 300 can occur, [MASK] = 300 not
    counts = np.bincount(blocks.ravel(), minlength=300)
    expected = blocks.size / 300  # 42.7 per id
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 299 + 5 * np.sqrt(2 * 299)  # 299 degrees of freedom: a uniform draw passes, a skewed one fails
    assert np.array_equal(blocks, bench.synthetic_blocks(cfg, 400))
    assert not np.array_equal(blocks, bench.synthetic_blocks({**cfg, "seed": cfg["seed"] + 1}, 400))


def test_paper_preset_benchmarks_the_169m_dit_with_gpt2_vocabulary_offline():
    """The number the preset states: GPT-2's 50,257 ids + [PAD] = len(tokenizer); + [MASK] = the model vocab."""
    cfg = config.load([config.DEFAULT_CONFIG, REPO / "presets" / "paper.yaml"])
    assert cfg["tokenizer"]["pretrained"] == "gpt2" and cfg["tokenizer"]["vocab_size"] == 50_257 + 1
    with torch.device("meta"):  # the shapes only: no 700 MB allocation
        model = DiT(DiTConfig.from_config(cfg["model"], cfg["tokenizer"]["vocab_size"] + 1, cfg["data"]["seq_len"]))
    assert model.config.vocab_size == 50_259 and model.config.seq_len == 1024
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(169.6e6, rel=1e-3)
    assert bench.per_gpu_batch(cfg) == 64  # 512 global over 8 GPUs
    blocks = bench.synthetic_blocks(cfg, 3)
    assert blocks.shape == (3, 1024) and blocks.max() < 50_258


def test_bench_on_synthetic_tokens_reads_no_dataset_and_no_tokenizer(tmp_path, monkeypatch):
    from didi import data

    def no_files(*args, **kwargs):
        raise AssertionError("synthetic benchmarks must not read tokens or a tokenizer")

    monkeypatch.setattr(data, "load_pretrained_tokenizer", no_files)
    monkeypatch.setattr(data, "load_blocks", no_files)
    cfg = tiny_cfg()
    res = bench.run_bench(cfg, None, None, tmp_path, nfe=[2, L], warmup_steps=1, timed_steps=1)
    assert res["tokens"] == "synthetic"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "distill.json", "speedup.json", "teacher.json"]
    for name in ("bench", "teacher", "distill", "speedup"):
        assert json.loads((tmp_path / f"{name}.json").read_text())["tokens"] == "synthetic"
    fresh = DiT(DiTConfig.from_config(cfg["model"], 301, L))  # vocab = tokenizer.vocab_size + [MASK]
    assert res["teacher"]["parameters"] == sum(p.numel() for p in fresh.parameters())
    assert res["teacher"]["training"]["global_batch"] == 4 and res["distill"]["iterations"] == 1
    assert res["distill"]["discriminator_warmup_iterations_per_s"] > 0
    assert res["distill"]["warmup_speedup"] == pytest.approx(
        res["distill"]["discriminator_warmup_iterations_per_s"] / res["distill"]["iterations_per_s"])
    assert [row["nfe"] for row in res["speedup"]["student"]] == [4]


def test_bench_cli_takes_synthetic_tokens_or_a_dataset_not_both(tmp_path):
    yaml = tmp_path / "tiny.yaml"
    yaml.write_text(TINY_YAML)
    common = ["bench", "--configfile", str(config.DEFAULT_CONFIG), "--configfile", str(yaml), "--out-dir",
              str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="not both"):
        cli.main([*common, "--synthetic-tokens", "--tokens", str(tmp_path)])
    with pytest.raises(SystemExit, match="go together"):
        cli.main([*common, "--tokens", str(tmp_path)])
    cli.main([*common, "--synthetic-tokens", "--sections", "teacher", "--nfe", "2", "--warmup-steps", "1",
              "--timed-steps", "1", "--teacher-batch", "3"])
    teacher = json.loads((tmp_path / "out" / "teacher.json").read_text())
    assert teacher["tokens"] == "synthetic" and teacher["training"]["global_batch"] == 3


CUDA_ONLY = {"nccl", "teacher_train_compile", "distill_float32"}
PARTS = ["teacher_train", "sampler_nfe16_float64", "sampler_nfe16_float32", "distill", "distill_float32", "rgas_nfe16",
         "nccl", "torchrun_teacher", "torchrun_distill", f"sampler_nfe{L}_float64", f"sampler_nfe{L}_float32",
         "teacher_train_compile"]


def test_gpu_check_script_runs_on_cpu_and_says_what_it_skipped(tmp_path):
    """scripts/gpu_check.sh as CI runs it: reduced size, no CUDA; the real torchrun commands still run."""
    yaml = tmp_path / "tiny.yaml"
    yaml.write_text(TINY_YAML)
    out = tmp_path / "check.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--out", str(out), "--configfile", str(config.DEFAULT_CONFIG),
         "--configfile", str(yaml), "--warmup-steps", "1", "--timed-steps", "2", "--distill-iterations", "1",
         "--sample-batch", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["tokens"] == "synthetic" and res["cuda"] is False and "provenance" in res
    assert sorted(res["parts"]) == sorted(PARTS)
    for name, part in res["parts"].items():
        assert "error" not in part, (name, part)
        assert part["wall_s"] >= 0
        if name in CUDA_ONLY:
            assert part["skipped"] == "no CUDA"
        else:
            assert part["peak_memory_gib"] is None  # no CUDA: nothing to measure, and it says so
    parts = res["parts"]
    fresh = DiT(DiTConfig.from_config(tiny_cfg()["model"], 301, L))
    assert res["size"]["parameters"] == sum(p.numel() for p in fresh.parameters()) and res["size"]["vocab"] == 301
    assert parts["teacher_train"]["timed_steps"] == 2 and parts["teacher_train"]["global_batch"] == 4
    assert parts["teacher_train"]["tokens_per_s"] > 0 and parts["teacher_train"]["mfu"] is None
    for nfe in (16, L):
        for precision in ("float64", "float32"):
            part = parts[f"sampler_nfe{nfe}_{precision}"]
            assert part["nfe"] == nfe and part["precision"] == precision and part["num_samples"] == 2
            assert 1 <= part["network_calls"] <= nfe + 1
    assert parts["distill"]["iterations"] == 1 and parts["distill"]["iterations_per_s"] > 0
    rgas = parts["rgas_nfe16"]
    assert rgas["nfe"] == 16 and rgas["rgas"]["disc_forward_calls"] > 0 and rgas["rgas_overhead"] > 0
    assert parts["torchrun_teacher"]["world_size"] == 1 and parts["torchrun_distill"]["device"] == "cpu"
    for name in PARTS:  # the table names every part
        assert name in proc.stdout
    assert "skipped: no CUDA" in proc.stdout


def test_a_failing_part_is_recorded_and_the_check_goes_on(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (pretend)")

    monkeypatch.setattr(bench, "bench_distill", broken)
    monkeypatch.setattr(gpucheck, "torchrun", lambda command, out_dir: {"summary": f"stub {command[0]}"})
    monkeypatch.setattr(gpucheck, "tiny_dataset", lambda root, seed, seq_len: 300)
    out = tmp_path / "check.json"
    gpucheck.gpu_check(tiny_cfg(), out, ["tiny"], 1, 1, 1, 4, 2, None)
    parts = json.loads(out.read_text())["parts"]
    assert sorted(parts) == sorted(PARTS)
    assert parts["distill"]["error"] == "RuntimeError: out of memory (pretend)"
    assert parts["rgas_nfe16"]["rgas_overhead"] > 0  # the parts after the failure still ran
    assert parts[f"sampler_nfe{L}_float32"]["nfe"] == L


def test_parts_runs_only_the_parts_named_and_rejects_unknown_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(gpucheck, "torchrun", lambda command, out_dir: {"summary": f"stub {command[0]}"})
    monkeypatch.setattr(gpucheck, "tiny_dataset", lambda root, seed, seq_len: 300)
    out = tmp_path / "check.json"
    gpucheck.gpu_check(tiny_cfg(), out, ["tiny"], 1, 1, 1, 4, 2, None, only=["torchrun_distill", "distill"])
    parts = json.loads(out.read_text())["parts"]
    assert list(parts) == ["distill", "torchrun_distill"]  # the table's order, not the argument's
    assert parts["distill"]["bf16"] is False  # no CUDA: nothing autocasts, and it says so
    assert "torchrun_teacher failed" in parts["torchrun_distill"]["error"]  # said, not a crash
    with pytest.raises(ValueError, match="unknown part.*sampler_nfe7"):
        gpucheck.gpu_check(tiny_cfg(), out, ["tiny"], 1, 1, 1, 4, 2, None, only=["distill", "sampler_nfe7"])


def test_the_torchrun_smoke_runs_the_checked_configs_precision_paths():
    checked = config.load([config.DEFAULT_CONFIG, config.REPO_ROOT / "presets" / "paper.yaml"])
    checked["teacher"]["bf16"] = False
    checked["teacher"]["compile"] = True
    tiny = gpucheck.tiny_config(checked, 300)
    assert tiny["distill"]["bf16"] is True and tiny["teacher"]["bf16"] is False  # the paper preset's, then this edit
    assert tiny["teacher"]["compile"] is True  # torch.compile under DDP: the smoke runs it when the config does
    assert tiny["data"]["seq_len"] == 32 and tiny["seed"] == checked["seed"]
    assert "bf16" not in gpucheck.tiny_config(config.load(), 300)["distill"]  # absent stays absent (false)


def test_bench_commits_runs_each_commit_on_its_own_code(tmp_path):
    """scripts/bench_commits.sh in a scratch repository whose second commit reports 1000x the distillation rate:
    the ratio shows each run imported its own worktree's didi, not the working directory's."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["cp", "-r", str(REPO / "didi"), str(REPO / "scripts"), str(REPO / "config.yaml"),
                    str(REPO / "workflow"), str(repo)], check=True)
    (repo / "tiny.yaml").write_text(TINY_YAML)
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    bench_py = repo / "didi" / "bench.py"
    source = bench_py.read_text()
    marker = 'return {"iterations_per_s": iterations / seconds,'
    assert marker in source
    bench_py.write_text(source.replace(marker, 'return {"iterations_per_s": 1000 * iterations / seconds,'))
    subprocess.run([*git, "commit", "-qam", "b"], check=True)
    run = subprocess.run(
        ["bash", "scripts/bench_commits.sh", "HEAD~1", "HEAD", str(tmp_path / "ab"), "--", "--configfile",
         "config.yaml", "--configfile", "tiny.yaml", "--synthetic-tokens", "--sections", "distill",
         "--timed-steps", "2"],
        cwd=repo, capture_output=True, text=True, env={**os.environ, "ROUNDS": "1", "PYTHON": sys.executable},
        timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    rates = [float(line.split("distillation: ")[1].split()[0]) for line in run.stdout.splitlines()]
    assert len(rates) == 2 and rates[1] / rates[0] > 100
    runs = sorted(p for p in (tmp_path / "ab").iterdir() if p.is_dir())
    assert len(runs) == 2 and all(json.loads((run / "distill.json").read_text()) for run in runs)
