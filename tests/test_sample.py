"""`didi sample` (didi/sample.py): the three output files, their contents, reproducibility, NFE accounting."""

import json

import numpy as np
import pytest
import torch

from didi import cli, config, data, sample
from didi.model import DiT, DiTConfig, save_dit
from test_train import L, make_tokenizer  # the same 42-id word-level tokenizer as the training tests

MASK = 42


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    make_tokenizer(root / "tokenizer")
    torch.manual_seed(0)
    for name, time_conditioning in (("uncond", False), ("cond", True)):
        model = DiT(DiTConfig(vocab_size=MASK + 1, seq_len=L, hidden=32, layers=1, heads=2, cond_dim=16,
                              dropout=0.0, time_conditioning=time_conditioning))
        # the output layer is zero-initialised (uniform predictions); give the network some opinions
        torch.nn.init.normal_(model.output_layer.linear.weight, std=0.1)
        save_dit(root / name, model, {"tokenizer_vocab": MASK, "mask_id": MASK, "seq_len": L})
    return root


def small_cfg(batch_size: int = 2) -> dict:
    cfg = config.load()
    cfg["sampling"]["batch_size"] = batch_size
    return cfg


def test_cli_writes_ids_text_and_metadata(workspace, tmp_path):
    cfg = config.sections(small_cfg(), "seed", "diffusion", "sampling")  # what the workflow rule passes
    stem = tmp_path / "teacher" / "ancestral_float64_nfe4_T1.00"
    assert cli.main(["sample", "--config-json", json.dumps(cfg), "--model-dir", str(workspace / "uncond"),
                     "--tokenizer", str(workspace / "tokenizer"), "--nfe", "4", "--precision", "float64",
                     "--temperature", "1.0", "--num-samples", "5", "--sampler", "ancestral", "--out", str(stem)]) == 0
    ids = np.load(f"{stem}.npy")
    assert ids.shape == (5, L) and ids.dtype == np.uint16
    assert ids.min() >= 0 and ids.max() < MASK  # real tokens only: no [MASK] left
    lines = [json.loads(line) for line in open(f"{stem}.jsonl")]
    tokenizer = data.load_pretrained_tokenizer(str(workspace / "tokenizer"))
    assert [line["text"] for line in lines] == data.decode(tokenizer, ids)
    meta = json.loads(open(f"{stem}.json").read())
    assert meta["nfe"] == 4 and meta["num_samples"] == 5 and meta["seq_len"] == L
    assert meta["sampler"] == "ancestral" and meta["precision"] == "float64" and meta["temperature"] == 1.0
    # 3 batches (2 + 2 + 1) of at most 4 steps + 1 noise removal each; the cache can only save calls
    assert 3 <= meta["network_calls"] <= 3 * (4 + 1)
    assert meta["disc_forward_calls"] == 0 and meta["tokens_per_s"] > 0
    assert meta["seed"] == sample.file_seed(cfg["seed"], stem) and "provenance" in meta


def test_same_name_reproduces_and_other_names_differ(workspace, tmp_path):
    cfg = small_cfg(batch_size=4)
    kwargs = dict(nfe=8, precision="float64", temperature=1.0, num_samples=4)
    a = sample.sample_to_files(cfg, workspace / "uncond", workspace / "tokenizer", tmp_path / "x" / "s", **kwargs)
    b = sample.sample_to_files(cfg, workspace / "uncond", workspace / "tokenizer", tmp_path / "y" / "s", **kwargs)
    c = sample.sample_to_files(cfg, workspace / "uncond", workspace / "tokenizer", tmp_path / "x" / "t", **kwargs)
    assert a["seed"] == b["seed"] != c["seed"]
    assert np.array_equal(np.load(tmp_path / "x" / "s.npy"), np.load(tmp_path / "y" / "s.npy"))
    assert not np.array_equal(np.load(tmp_path / "x" / "s.npy"), np.load(tmp_path / "x" / "t.npy"))


def test_cache_only_for_time_unconditional_models(workspace, tmp_path):
    """K = 4 L steps: most steps unmask nothing. A time-unconditional model reuses its last output then; a
    time-conditional one must call the network at every step. Batches of one sample, so "nothing changed" is
    about one sequence."""
    cfg = small_cfg(batch_size=1)
    kwargs = dict(nfe=4 * L, precision="float64", temperature=1.0, num_samples=3)
    uncond = sample.sample_to_files(cfg, workspace / "uncond", workspace / "tokenizer", tmp_path / "u", **kwargs)
    cond = sample.sample_to_files(cfg, workspace / "cond", workspace / "tokenizer", tmp_path / "c", **kwargs)
    assert uncond["cache"] and not cond["cache"]
    # a new call happens only after a step that unmasked something (at most L of them) or at the start, so at
    # most L + 1 calls per sequence, far fewer than K
    assert 3 <= uncond["network_calls"] <= 3 * (L + 1) < 3 * 4 * L
    assert 3 * 4 * L <= cond["network_calls"] <= 3 * (4 * L + 1)
    cfg["diffusion"]["cache"] = False
    off = sample.sample_to_files(cfg, workspace / "uncond", workspace / "tokenizer", tmp_path / "o", **kwargs)
    assert not off["cache"] and 3 * 4 * L <= off["network_calls"] <= 3 * (4 * L + 1)


def test_wrong_tokenizer_and_rgas_without_discriminator_are_errors(workspace, tmp_path):
    cfg = small_cfg()
    with pytest.raises(ValueError, match="needs --discriminator"):
        sample.sample_to_files(cfg, workspace / "uncond", workspace / "tokenizer", tmp_path / "r", 4, "float64", 1.0,
                               2, sampler="rgas")
    other = tmp_path / "model"
    save_dit(other, DiT(DiTConfig(vocab_size=50, seq_len=L, hidden=32, layers=1, heads=2, cond_dim=16)))
    with pytest.raises(ValueError, match="len\\(tokenizer\\) \\+ 1"):
        sample.sample_to_files(cfg, other, workspace / "tokenizer", tmp_path / "w", 4, "float64", 1.0, 2)


def test_rgas_writes_files_and_counts_discriminator_calls(workspace, tmp_path):
    from didi.discriminator import Discriminator, save_discriminator
    from didi.model import load_dit

    teacher, _ = load_dit(workspace / "uncond")
    save_discriminator(tmp_path / "disc", Discriminator.from_teacher(teacher, trainable_blocks=1))
    cfg = small_cfg(batch_size=2)  # includes distill.rgas: tilting in the first half of the steps, re-ranking after
    stem = tmp_path / "student-full" / "rgas_float64_nfe4_T1.00"
    meta = sample.sample_to_files(cfg, workspace / "uncond", workspace / "tokenizer", stem, 4, "float64", 1.0, 4,
                                  sampler="rgas", discriminator_dir=tmp_path / "disc")
    ids = np.load(f"{stem}.npy")
    assert ids.shape == (4, L) and ids.max() < MASK
    assert meta["sampler"] == "rgas" and meta["discriminator_dir"] == str(tmp_path / "disc")
    # 2 batches: at least one generator call per step, and the discriminator was used in both halves
    assert 2 * 4 <= meta["network_calls"] <= 2 * (4 + 1)
    assert meta["disc_backward_calls"] > 0 and meta["disc_forward_calls"] > meta["disc_backward_calls"]
