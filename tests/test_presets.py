"""presets/paper.yaml: validates against the schema and holds the paper's numbers (docs/method.md sections 1-5);
the paper-scale paths: a released teacher used as is or fine-tuned, a pretrained tokenizer without the corpus."""

import re

import pytest
import torch

from didi import config
from didi.model import DiT, DiTConfig, num_params
from conftest import REPO

OWT_DOCS = 8_013_769          # OpenWebText documents; MDLM/DUO hold out the last 100,000
GPT2_VOCAB = 50_257


def paper() -> dict:
    return config.load([REPO / "config.yaml", REPO / "presets" / "paper.yaml"])


def test_paper_preset_is_the_paper_setup():
    cfg = paper()
    assert cfg["corpus"]["source"] == "hf:Skylion007/openwebtext"
    assert abs(cfg["corpus"]["validation_fraction"] * OWT_DOCS - 100_000) < 100
    assert cfg["tokenizer"]["pretrained"] == "gpt2" and cfg["data"]["seq_len"] == 1024 and cfg["data"]["wrap"]
    m = cfg["model"]
    assert (m["hidden"], m["layers"], m["heads"], m["cond_dim"], m["dropout"]) == (768, 12, 12, 128, 0.1)
    assert not m["time_conditioning"]
    t = cfg["teacher"]
    assert (t["batch_size"], t["lr"], t["warmup_steps"], t["ema"], t["steps"]) == (512, 3e-4, 2500, 0.9999, 1_000_000)
    assert (t["betas"], t["adam_eps"], t["weight_decay"], t["grad_clip"], t["bf16"]) == ([0.9, 0.999], 1e-8, 0, 1, True)
    assert cfg["sampling"]["nfe"] == [2**k for k in range(3, 11)] and cfg["sampling"]["num_samples"] >= 512
    assert cfg["judge"]["pretrained"] == "gpt2-large"
    d = cfg["distill"]
    assert (d["iterations"], d["student_lr"], d["discriminator_lr"], d["group_size"]) == (10_000, 1e-6, 1e-5, 4)
    # DDP splits global batches evenly over the GPUs of a job
    gpus = cfg["resources"]["gpu"]
    assert gpus >= 1 and t["batch_size"] % gpus == 0 and (d["batch_size"] * d["group_size"]) % gpus == 0
    assert d["batch_size"] % gpus == 0


def test_paper_teacher_has_169m_parameters():
    cfg = paper()
    vocab = GPT2_VOCAB + 2  # + [PAD] + [MASK]
    with torch.device("meta"):  # shapes only, no memory
        model = DiT(DiTConfig.from_config(cfg["model"], vocab, cfg["data"]["seq_len"]))
    assert 168e6 < num_params(model) < 171e6


# ---------------------------------------------------------------------------------------------- paper-scale paths
def dry_run(tmp_path, *presets: str, targets: tuple[str, ...] = ()) -> str:
    from conftest import run_snakemake

    files = [str(REPO / "config.yaml"), *(p if p.startswith("/") else str(REPO / p) for p in presets)]
    return run_snakemake(["--dry-run", "--printshellcmds", "--configfile", *files,
                          "--config", f"results={tmp_path / 'results'}", "--", *targets]).stdout


def released_teacher(tmp_path, finetune_steps: int) -> str:
    """presets/paper-released-teacher.yaml with its init_from pointed at a stand-in converted teacher."""
    (tmp_path / "converted").mkdir(exist_ok=True)
    override = tmp_path / f"released-{finetune_steps}.yaml"
    override.write_text(f"teacher:\n  init_from: {tmp_path / 'converted'}\n  finetune_steps: {finetune_steps}\n")
    return str(override)


def planned_rules(out: str) -> list[str]:
    return re.findall(r"^rule (\w+):$", out, re.M)


def test_released_teacher_preset_imports_the_teacher_instead_of_training(tmp_path):
    """paper + paper-released-teacher: the teacher job imports the converted model (`didi import-teacher`, no GPU,
    no token blocks), nothing runs train-teacher, and distillation reads the imported teacher."""
    preset = config.read_yaml(REPO / "presets" / "paper-released-teacher.yaml")["teacher"]
    assert preset["finetune_steps"] == 0 and preset["init_from"]
    out = dry_run(tmp_path, "presets/paper.yaml", "presets/paper-released-teacher.yaml", released_teacher(tmp_path, 0))
    teacher_job = re.search(r"^rule train_teacher:\n((?:    .*\n)+)Shell command: (.*)$", out, re.M)
    assert teacher_job, out[-3000:]
    assert " -m didi import-teacher " in teacher_job.group(2) and "torch.distributed" not in teacher_job.group(2)
    assert f"input: {tmp_path / 'converted'}, " in teacher_job.group(1) and "gpu=" not in teacher_job.group(1)
    assert "didi train-teacher" not in out
    assert f"--teacher {tmp_path / 'results'}/teacher/ema" in out  # distill (and check-inputs) read it
    cfg = config.load([REPO / "config.yaml", REPO / "presets" / "paper.yaml", REPO / "presets" /
                       "paper-released-teacher.yaml", released_teacher(tmp_path, 0)])
    assert config.imports_teacher(cfg) and cfg["teacher"]["steps"] == 1_000_000  # the preset leaves steps alone


def test_released_teacher_finetune_trains_the_stated_steps_not_a_million(tmp_path):
    """finetune_steps N > 0: train_teacher runs (torchrun, the GPUs) and trains N steps from init_from, never
    teacher.steps; the stated N reaches the command."""
    override = released_teacher(tmp_path, 5000)
    out = dry_run(tmp_path, "presets/paper.yaml", "presets/paper-released-teacher.yaml", override,
                  targets=(str(tmp_path / "results" / "teacher" / "metrics.json"),))
    assert " -m didi train-teacher " in out and "didi import-teacher" not in out
    assert '\\"finetune_steps\\": 5000' in out or '"finetune_steps": 5000' in out
    cfg = config.load([REPO / "config.yaml", REPO / "presets" / "paper.yaml", override])
    assert not config.imports_teacher(cfg) and config.teacher_steps(cfg["teacher"]) == 5000
    assert config.teacher_steps(paper()["teacher"]) == 1_000_000  # without init_from: the from-scratch budget


def test_finetune_steps_without_init_from_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher:\n  finetune_steps: 10\n")
    with pytest.raises(config.ConfigError, match="teacher.finetune_steps: set, but teacher.init_from is null"):
        config.load([REPO / "config.yaml", bad])
    missing = tmp_path / "missing.yaml"
    missing.write_text(f"teacher:\n  init_from: {tmp_path / 'nothing-here'}\n  finetune_steps: 0\n")
    with pytest.raises(config.ConfigError, match="teacher.init_from: file or directory not found: .*didi convert"):
        config.load([REPO / "config.yaml", missing])


def test_pretrained_tokenizer_does_not_need_the_corpus(tmp_path):
    """With tokenizer.pretrained (GPT-2, the paper) building the tokenizer plans no corpus job (no OpenWebText
    download); a trained BPE (config.yaml) still reads the corpus."""
    paper_out = dry_run(tmp_path, "presets/paper.yaml", targets=(str(tmp_path / "results" / "tokenizer"),))
    assert planned_rules(paper_out) == ["tokenizer"]
    default_out = dry_run(tmp_path, targets=(str(tmp_path / "results" / "tokenizer"),))
    assert sorted(planned_rules(default_out)) == ["corpus", "tokenizer"]
