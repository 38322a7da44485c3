"""The GPT-2 judge: trained locally or pretrained from a directory, its held-out perplexity, load_judge."""

import json
import math
import random

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from didi import cli, config, data, judge, runtime

SUBJECTS = ["the president", "the congress", "our nation", "the people", "the treasury"]
VERBS = ["shall protect", "will support", "must defend", "has approved"]
OBJECTS = ["the union.", "the law.", "our commerce.", "the constitution.", "peace."]


def grammar_docs(n: int, seed: int) -> list[str]:
    """Text with strong local structure, so a few training steps must beat a uniform guess by far."""
    rng = random.Random(seed)
    return [" ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}".capitalize()
                     for _ in range(rng.randint(3, 10))) for _ in range(n)]


def run(command: str, cfg: dict, *args: str) -> None:
    assert cli.main([command, "--config-json", json.dumps(cfg), *args]) == 0


JUDGE = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64, "seq_len": 32, "steps": 60, "batch_size": 8,
         "lr": 3.0e-3, "warmup_steps": 5, "eval_batches": 2, "log_every": 20}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("judge")
    source = root / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in grammar_docs(60, seed=0)))
    cfg = config.deep_merge(config.load(), {"corpus": {"source": str(source), "validation_fraction": 0.2},
                                            "tokenizer": {"vocab_size": 320, "min_frequency": 2},
                                            "data": {"seq_len": 32}, "judge": JUDGE})
    run("corpus", cfg, "--out-dir", str(root / "corpus"))
    run("tokenizer", cfg, "--corpus-dir", str(root / "corpus"), "--out-dir", str(root / "tokenizer"))
    return root, cfg


@pytest.fixture(scope="module")
def trained(corpus):
    root, cfg = corpus
    run("train-judge", cfg, "--corpus-dir", str(root / "corpus"), "--tokenizer", str(root / "tokenizer"),
        "--out-dir", str(root / "judge"))
    return root, cfg


def validation_blocks(root, tokenizer, seq_len):
    return judge.judge_blocks(tokenizer, data.read_split(root / "corpus", "validation"), seq_len)


def test_trained_judge_learns_and_round_trips(trained):
    root, cfg = trained
    info = json.loads((root / "judge" / "judge.json").read_text())
    assert info["trained"] is True and info["steps"] == JUDGE["steps"] and "provenance" in info
    vocab = info["vocab"]
    # a uniform guess scores `vocab`; the untrained net is close to it, the trained one far below
    assert info["heldout_ppl_init"] > 0.5 * vocab
    assert 1.0 < info["heldout_ppl"] < 0.1 * vocab
    assert (root / "judge" / "model" / "model.safetensors").exists()

    model, tokenizer, loaded_info = judge.load_judge(root / "judge")
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert loaded_info["heldout_ppl"] == info["heldout_ppl"]
    assert len(tokenizer) == vocab == model.config.vocab_size
    blocks = validation_blocks(root, tokenizer, JUDGE["seq_len"])
    ppl, tokens = judge.heldout_perplexity(model, blocks, JUDGE["batch_size"], JUDGE["eval_batches"],
                                           tokenizer.pad_token_id, torch.device("cpu"))
    assert tokens == info["heldout_tokens"] == min(len(blocks), 16) * (JUDGE["seq_len"] - 1)
    assert ppl == pytest.approx(info["heldout_ppl"], rel=1e-5)  # the saved weights are the trained ones


def test_training_is_deterministic_given_the_seed(trained, tmp_path):
    root, cfg = trained
    short = config.deep_merge(cfg, {"judge": {"steps": 3}})
    for name in ("a", "b"):
        run("train-judge", short, "--corpus-dir", str(root / "corpus"), "--tokenizer", str(root / "tokenizer"),
            "--out-dir", str(tmp_path / name))
    a, b = (json.loads((tmp_path / n / "judge.json").read_text()) for n in ("a", "b"))
    assert a["heldout_ppl"] == b["heldout_ppl"] and a["final_train_loss"] == b["final_train_loss"]


def test_killed_run_resumes_to_the_same_weights(corpus, tmp_path):
    """The judge draws dropout and its batch rows statefully (torch's global generator, its own): the checkpoint keeps
    both generators' states, so a run killed after a checkpoint ends bit-identical to the uninterrupted one."""
    from safetensors.torch import load_file

    root, cfg = corpus
    cfg = config.deep_merge(cfg, {"judge": {"steps": 12, "checkpoint_every": 4, "log_every": 2}})
    inputs = (root / "corpus", root / "tokenizer")
    a = judge.train_judge(cfg, *inputs, tmp_path / "a")
    assert judge.train_judge(cfg, *inputs, tmp_path / "b", max_steps=6) is None  # "killed" after the step-4 checkpoint
    assert not (tmp_path / "b" / "judge.json").exists()
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["step_000000004"]
    torch.manual_seed(99)  # whatever the global generator holds now, the checkpoint's state replaces it
    b = judge.train_judge(cfg, *inputs, tmp_path / "b")
    assert a["resumed_from_step"] is None and b["resumed_from_step"] == 4
    wa, wb = (load_file(str(tmp_path / r / "model" / "model.safetensors")) for r in "ab")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=0.0, rtol=0.0, msg=k)
    assert a["loss_curve"] == b["loss_curve"] and a["heldout_ppl"] == b["heldout_ppl"]
    assert a["final_train_loss"] == a["loss_curve"][-1][1] and [s for s, _ in a["loss_curve"]] == list(range(2, 13, 2))

    # judge.steps shapes the path (the cosine schedule spans the run): a longer run starts over
    longer = judge.train_judge(config.deep_merge(cfg, {"judge": {"steps": 16}}), *inputs, tmp_path / "b")
    assert longer["resumed_from_step"] is None


def test_pretrained_branch_points_at_a_local_directory(corpus, tmp_path):
    root, cfg = corpus
    tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=24, n_embd=16, n_layer=1, n_head=2))
    gpt2.save_pretrained(str(tmp_path / "gpt2-tiny"))
    tokenizer.save_pretrained(str(tmp_path / "gpt2-tiny"))

    pre = config.deep_merge(cfg, {"judge": {"pretrained": str(tmp_path / "gpt2-tiny")}})
    run("train-judge", pre, "--corpus-dir", str(root / "corpus"), "--tokenizer", str(root / "tokenizer"),
        "--out-dir", str(tmp_path / "judge"))
    info = json.loads((tmp_path / "judge" / "judge.json").read_text())
    assert info["trained"] is False and info["path"] == str((tmp_path / "gpt2-tiny").resolve())
    assert info["seq_len"] == 24  # judge.seq_len (32) capped at the model's context
    assert not (tmp_path / "judge" / "model").exists()
    # an untrained net with 0.02-scale weights predicts nearly uniformly: perplexity ~ vocab
    assert info["heldout_ppl"] == pytest.approx(len(tokenizer), rel=0.1)

    model, _, _ = judge.load_judge(tmp_path / "judge")
    for name, tensor in gpt2.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)


def test_heldout_perplexity_exact_for_a_uniform_model():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    with torch.no_grad():
        model.lm_head.weight.zero_()  # tied to the token embedding: every logit is exactly 0
    blocks = np.array([[0, 5, 6, 7, 0], [0, 9, 0, 2, 2], [0, 1, 1, 1, 0]], dtype=np.uint16)
    ppl, tokens = judge.heldout_perplexity(model, blocks, batch_size=2, max_batches=1, pad_id=2,
                                           device=torch.device("cpu"))
    assert tokens == 4 + 2  # first token of each row not scored; only the first batch; PAD labels excluded
    assert ppl == pytest.approx(50.0, rel=1e-6)
    _, all_tokens = judge.heldout_perplexity(model, blocks, batch_size=2, max_batches=5, pad_id=None,
                                             device=torch.device("cpu"))
    assert all_tokens == 3 * 4


def test_learning_rate_schedule():
    def lr(step):
        return runtime.cosine_lr(step, 1.0, 4, 20, judge.MIN_LR_FRACTION)

    lrs = [lr(s) for s in range(20)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))  # non-increasing after warm-up
    assert lr(20) == pytest.approx(judge.MIN_LR_FRACTION)
    assert lr(12) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
