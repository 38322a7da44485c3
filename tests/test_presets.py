"""presets/paper.yaml: validates against the schema and holds the paper's numbers (method.md sections 1-5)."""

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
