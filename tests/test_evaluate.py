"""Evaluation metrics against hand computations on a tiny GPT-2 judge built here (no hub downloads)."""

import json
import math

import numpy as np
import pytest
import torch

from didi import evaluate


EOS = "<|endoftext|>"
CHARS = "abcdefgh "
CONTEXT = 8  # judge n_positions: long samples are scored in chunks


def char_tokenizer():
    """The judge's tokenizer: one token per character; EOS = 0, [PAD] = 1, 'a'..'h' = 2..9, ' ' = 10."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {EOS: 0, "[PAD]": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token="[PAD]")


def pair_tokenizer():
    """A generator tokenizer unlike the judge's: one token per pair of letters."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {EOS: 0, "[PAD]": 1, "ab": 2, "cd": 3, "ef": 4, "gh": 5, " ": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token="[PAD]")


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A random tiny GPT-2 with large weights (peaked, position-dependent predictions), saved with its tokenizer and
    a judge.json pointer, so the real loading path is used."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer = char_tokenizer()
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=CONTEXT, n_embd=16, n_layer=2, n_head=2,
                     initializer_range=0.6, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    model = GPT2LMHeadModel(cfg).eval()
    root = tmp_path_factory.mktemp("judge")
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "judge.json").write_text(json.dumps({"path": str(root / "model"), "trained": True, "heldout_ppl": 1.0}))
    return root


@pytest.fixture(scope="module")
def judge(judge_dir):
    return evaluate.load_judge(judge_dir)


def hand_nll(model, chunks):
    """-sum log p(token) over (chunk ids, scored positions in that chunk), running the judge on each chunk alone."""
    total = 0.0
    with torch.no_grad():
        for ids, positions in chunks:
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            total -= sum(float(logp[p - 1, ids[p]]) for p in positions)
    return total


E = 0  # judge EOS id
a, b, c, d, e, f, g, h, sp = range(2, 11)
# text, judge ids written by hand, and per policy the scored (chunk, positions) lists (chunks of CONTEXT tokens).
CASES = [
    ("abc", [a, b, c], {"truncate": [([a, b, c], [1, 2])], "keep": [([a, b, c], [1, 2])],
                        "first_in_text": [([a, b, c], [1, 2])], "mdlm": [([a, b, c], [1, 2])]}),
    (f"ab{EOS}c{EOS}d", [a, b, E, c, E, d], {                   # EOS mid-text, no BOS
        "truncate": [([a, b, E], [1, 2])],
        "keep": [([a, b, E, c, E, d], [1, 2, 3, 4, 5])],
        "first_in_text": [([a, b, E, c, E, d], [1, 2, 3, 5])],  # EOS after the first one is not scored
        "mdlm": [([a, b, E, c, E, d], [1, 2, 3, 5])],           # cumsum(x == eos) = 0 0 1 1 2 2
    }),
    (f"{EOS}ab{EOS}cd", [E, a, b, E, c, d], {                   # BOS-led: the policies differ
        "truncate": [([E, a, b, E], [1, 2, 3])],                 # the first EOS past position 0 is scored, then stop
        "keep": [([E, a, b, E, c, d], [1, 2, 3, 4, 5])],
        "first_in_text": [([E, a, b, E, c, d], [1, 2, 3, 4, 5])],
        "mdlm": [([E, a, b, E, c, d], [1, 2, 4, 5])],           # the BOS is the first EOS: position 3 is the second
    }),
    ("abcdefgh abcd", [a, b, c, d, e, f, g, h, sp, a, b, c, d], {   # no EOS, two judge chunks
        "truncate": [([a, b, c, d, e, f, g, h], [1, 2, 3, 4, 5, 6, 7]), ([sp, a, b, c, d], [1, 2, 3, 4])],
        "keep": [([a, b, c, d, e, f, g, h], [1, 2, 3, 4, 5, 6, 7]), ([sp, a, b, c, d], [1, 2, 3, 4])],
        "first_in_text": [([a, b, c, d, e, f, g, h], [1, 2, 3, 4, 5, 6, 7]), ([sp, a, b, c, d], [1, 2, 3, 4])],
        "mdlm": [([a, b, c, d, e, f, g, h], [1, 2, 3, 4, 5, 6, 7]), ([sp, a, b, c, d], [1, 2, 3, 4])],
    }),
    ("a", [a], {"truncate": [], "keep": [], "first_in_text": [], "mdlm": []}),
    (f"{EOS}abcdefgh{EOS}a", [E, a, b, c, d, e, f, g, h, E, a], {
        "truncate": [([E, a, b, c, d, e, f, g], [1, 2, 3, 4, 5, 6, 7]), ([h, E], [1])],
        "keep": [([E, a, b, c, d, e, f, g], [1, 2, 3, 4, 5, 6, 7]), ([h, E, a], [1, 2])],
        "first_in_text": [([E, a, b, c, d, e, f, g], [1, 2, 3, 4, 5, 6, 7]), ([h, E, a], [1, 2])],
        "mdlm": [([E, a, b, c, d, e, f, g], [1, 2, 3, 4, 5, 6, 7]), ([h, E, a], [2])],
    }),
]


def test_tokenizer_matches_hand_ids(judge):
    _, tokenizer, _ = judge
    for text, ids, _ in CASES:
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids


@pytest.mark.parametrize("policy", ["mdlm", "first_in_text", "truncate", "keep"])
def test_gen_ppl_equals_hand_computation(judge, policy):
    model, tokenizer, _ = judge
    texts = [t for t, _, _ in CASES]
    expected_nll = np.array([hand_nll(model, scored[policy]) for _, _, scored in CASES])
    expected_tokens = np.array([sum(len(p) for _, p in scored[policy]) for _, _, scored in CASES])
    out = evaluate.gen_ppl(texts, model, tokenizer, batch_size=2, eos_policy=policy)
    np.testing.assert_array_equal(out["tokens"], expected_tokens)
    np.testing.assert_allclose(out["nll"], expected_nll, rtol=1e-5, atol=1e-5)
    assert out["total_tokens"] == expected_tokens.sum()
    assert out["ppl"] == pytest.approx(math.exp(expected_nll.sum() / expected_tokens.sum()), rel=1e-5)
    # The judge is sensitive enough that scoring the wrong positions would show: shift every target by one.
    shifted = hand_nll(model, [(ids, [p - 1 for p in pos if p >= 2]) for ids, pos in CASES[2][2][policy]])
    assert abs(shifted - expected_nll[2]) > 0.1


def test_eos_policies_differ_only_where_text_follows_an_eos(judge):
    model, tokenizer, _ = judge
    texts = [t for t, _, _ in CASES]
    trunc = evaluate.gen_ppl(texts, model, tokenizer, 4, "truncate")
    keep = evaluate.gen_ppl(texts, model, tokenizer, 4, "keep")
    first_in_text = evaluate.gen_ppl(texts, model, tokenizer, 4, "first_in_text")
    mdlm = evaluate.gen_ppl(texts, model, tokenizer, 4, "mdlm")
    np.testing.assert_array_equal(keep["tokens"] - trunc["tokens"], [0, 3, 2, 0, 0, 1])
    np.testing.assert_array_equal(keep["tokens"] - first_in_text["tokens"], [0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(keep["tokens"] - mdlm["tokens"], [0, 1, 1, 0, 0, 1])  # BOS-led rows lose an EOS


def test_official_policy_truncates_to_L_and_scores_the_first_padding_eos(judge):
    """MDLM's compute_generative_perplexity (GPT-2 judge, pad = EOS): rows cut to L = 6 judge tokens, each batch of 3
    padded to its longest with EOS; a short row without an EOS gets its first padding EOS scored."""
    model, tokenizer, _ = judge
    texts = ["abc", f"{EOS}ab{EOS}cd", "abcdefgh", "ab"]
    expected = [
        [([a, b, c, E], [1, 2, 3])],            # padded to 6 with EOS; the first padding EOS is scored
        [([E, a, b, E, c, d], [1, 2, 4, 5])],   # BOS-led: no later EOS scored
        [([a, b, c, d, e, f], [1, 2, 3, 4, 5])],  # longer than L after retokenisation: truncated to 6
        [([a, b], [1])],                        # alone in the second batch: nothing to pad
    ]
    out = evaluate.gen_ppl(texts, model, tokenizer, batch_size=3, eos_policy="official", max_length=6)
    np.testing.assert_array_equal(out["tokens"], [3, 4, 5, 1])
    np.testing.assert_allclose(out["nll"], [hand_nll(model, chunks) for chunks in expected], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["judge_tokens"], [3, 6, 8, 2])  # retokenised lengths, before cut and pad
    # "mdlm" on the same texts: no cut, no padding.
    mdlm = evaluate.gen_ppl(texts, model, tokenizer, batch_size=3, eos_policy="mdlm")
    np.testing.assert_array_equal(mdlm["tokens"], [2, 4, 7, 1])
    with pytest.raises(ValueError, match="max_length"):
        evaluate.gen_ppl(texts, model, tokenizer, batch_size=3, eos_policy="official")


def test_batch_size_does_not_change_the_result(judge):
    model, tokenizer, _ = judge
    texts = [t for t, _, _ in CASES] * 2 + ["ab", f"{EOS}hgfedcba{EOS}"]  # 12 samples, 15 chunks
    results = [evaluate.gen_ppl(texts, model, tokenizer, bs, "truncate") for bs in (1, 5, 7, 64)]
    for r in results[1:]:
        np.testing.assert_array_equal(r["tokens"], results[0]["tokens"])
        np.testing.assert_allclose(r["nll"], results[0]["nll"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r["features"], results[0]["features"], rtol=1e-4, atol=1e-5)
        assert len(r["nll"]) == len(texts)


def test_retokenisation_with_a_different_generator_tokenizer(judge):
    """Generator ids (letter pairs) decode to text that the judge scores with its own (character) tokens."""
    model, tokenizer, _ = judge
    gen_tok = pair_tokenizer()
    gen_ids = [[0, 2, 3, 4], [2, 5, 6, 3]]  # <eos> ab cd ef  /  ab gh ' ' cd
    texts = [gen_tok.decode(row) for row in gen_ids]
    assert texts == [f"{EOS}abcdef", "abgh cd"]
    judge_ids = [[E, a, b, c, d, e, f], [a, b, g, h, sp, c, d]]
    out = evaluate.gen_ppl(texts, model, tokenizer, batch_size=3, eos_policy="truncate")
    np.testing.assert_array_equal(out["tokens"], [6, 6])  # the generator's counts would have been 3 and 3
    np.testing.assert_array_equal(out["judge_tokens"], [7, 7])
    expected = [hand_nll(model, [(ids, list(range(1, len(ids))))]) for ids in judge_ids]
    np.testing.assert_allclose(out["nll"], expected, rtol=1e-5, atol=1e-5)


def test_bootstrap_interval():
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 50, size=40)
    nll = tokens * rng.uniform(1.0, 3.0, size=40)
    lo, hi = evaluate.bootstrap_ppl(nll, tokens, 500, 0.95, seed=3)
    point = math.exp(nll.sum() / tokens.sum())
    assert lo < point < hi
    assert (lo, hi) == evaluate.bootstrap_ppl(nll, tokens, 500, 0.95, seed=3)  # seeded
    narrow = evaluate.bootstrap_ppl(nll, tokens, 500, 0.5, seed=3)
    assert lo < narrow[0] < narrow[1] < hi
    # Equal per-token NLL in every sample: every resample has the same ratio, the interval collapses.
    lo, hi = evaluate.bootstrap_ppl(2.0 * tokens, tokens, 200, 0.95, seed=3)
    assert lo == pytest.approx(math.exp(2.0)) and hi == pytest.approx(math.exp(2.0))


def test_unigram_entropy_hand_values():
    assert evaluate.unigram_entropy([1, 1, 2, 2]) == pytest.approx(math.log(2))
    assert evaluate.unigram_entropy([5, 5, 5, 5]) == 0.0
    assert evaluate.unigram_entropy([1, 2, 3, 4]) == pytest.approx(math.log(4))
    assert evaluate.unigram_entropy([7, 7, 7, 9]) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    stats = evaluate.entropy_stats(np.array([[1, 1, 2, 2], [5, 5, 5, 5], [1, 2, 3, 4]]))
    values = [math.log(2), 0.0, math.log(4)]
    assert stats["per_sample_entropy"] == pytest.approx(values)
    assert stats["entropy"] == pytest.approx(np.mean(values))
    assert stats["entropy_std"] == pytest.approx(np.std(values, ddof=1))


MAUVE_CFG = {"enabled": True, "num_buckets": "auto", "kmeans_num_redo": 2, "kmeans_max_iter": 50, "scaling_factor": 5}


def test_mauve_on_constructed_features():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(60, 16))
    same_distribution = rng.normal(size=(60, 16))
    far = rng.normal(size=(60, 16))
    far[:, 0] += 8.0
    assert evaluate.mauve_from_features(p, p, MAUVE_CFG, seed=1)["mauve"] == pytest.approx(1.0)
    assert evaluate.mauve_from_features(p, same_distribution, MAUVE_CFG, seed=1)["mauve"] > 0.9
    out = evaluate.mauve_from_features(p, far, MAUVE_CFG, seed=1)
    assert out["mauve"] < 0.1
    assert out["mauve_seed"] == 1 and out["mauve_num_buckets"] == 6


def test_frontier_area_matches_mauve_without_ties():
    import mauve

    rng = np.random.default_rng(1)
    p, q = rng.normal(size=(50, 8)), rng.normal(size=(50, 8)) + 0.3
    out = mauve.compute_mauve(p_features=p, q_features=q, num_buckets=5, seed=2, kmeans_num_redo=1,
                              kmeans_max_iter=50)
    assert evaluate.frontier_area(out.divergence_curve) == pytest.approx(out.mauve, abs=1e-12)


def test_mauve_with_judge_features(judge):
    """Real text over letters {a, b}; the same source again is ~1, text over {g, h} is low (4 buckets for 40)."""
    model, tokenizer, _ = judge
    rng = np.random.default_rng(0)

    def texts(letters):
        return ["".join(rng.choice(list(letters), size=7)) for _ in range(40)]

    real, real_again, other = texts("ab"), texts("ab"), texts("gh")
    score = lambda p, q: evaluate.mauve_score(p, q, model, tokenizer, MAUVE_CFG, seed=0, batch_size=8)["mauve"]
    assert score(real, real) == pytest.approx(1.0)
    assert score(real, real_again) > 0.9
    assert score(real, other) < 0.2


def test_score_mask_rules():
    assert evaluate.score_mask([0, 2, 0, 3, 0], 0, "truncate").tolist() == [False, True, True, False, False]
    assert evaluate.score_mask([0, 2, 0, 3, 0], 0, "keep").tolist() == [False, True, True, True, True]
    assert evaluate.score_mask([0, 0, 3], 0, "truncate").tolist() == [False, True, False]
    assert evaluate.score_mask([0, 2, 0, 3, 0], 0, "first_in_text").tolist() == [False, True, True, True, False]
    assert evaluate.score_mask([0, 2, 0, 3, 0], 0, "mdlm").tolist() == [False, True, False, True, False]
    assert evaluate.score_mask([2, 2, 0, 3, 0], 0, "mdlm").tolist() == [False, True, True, True, False]
    assert evaluate.score_mask([2, 2, 3], 0, "mdlm").tolist() == [False, True, True]
    with pytest.raises(ValueError, match="eos_policy"):
        evaluate.score_mask([1, 2], 0, "drop")


def eval_config(seed=7):
    return {"seed": seed, "evaluation": {"eos_policy": "truncate", "batch_size": 4, "bootstrap": 50,
                                         "confidence": 0.9, "mauve": MAUVE_CFG}}


def test_evaluate_command_writes_every_field(judge_dir, judge, tmp_path):
    from didi import cli

    model, tokenizer, _ = judge
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 11, size=(24, 6))
    texts = ["".join(CHARS[i - 2] for i in row) for row in ids]
    stem = tmp_path / "samples" / "student-full-seed7" / "rgas_float64_nfe8_T1.00"
    stem.parent.mkdir(parents=True)
    np.save(f"{stem}.npy", ids)
    evaluate.write_jsonl_texts(f"{stem}.jsonl", texts)
    meta = {"nfe": 8, "network_calls": 7, "disc_forward_calls": 12, "disc_backward_calls": 4, "seconds": 1.5,
            "tokens_per_s": 96.0, "precision": "float64", "temperature": 1.0, "sampler": "rgas", "weights": "ema",
            "seed": 11, "provenance": {"config": {"sampling": 1}, "config_hash": "abc"}}
    (tmp_path / "samples" / "student-full-seed7" / "rgas_float64_nfe8_T1.00.json").write_text(json.dumps(meta))
    ref_dir = tmp_path / "reference"
    evaluate.write_jsonl_texts(ref_dir / "a.jsonl", ["".join(rng.choice(list("abcd"), 6)) for _ in range(30)])
    out = tmp_path / "eval.json"
    cfg = eval_config()
    assert cli.main(["evaluate", "--samples", str(stem), "--judge", str(judge_dir), "--reference", str(ref_dir),
                     "--out", str(out), "--config-json", json.dumps(cfg)]) == 0
    got = json.loads(out.read_text())
    for key, value in meta.items():
        if key != "provenance":
            assert got[key] == value
    assert got["sample_provenance"] == meta["provenance"]
    assert got["model"] == "student-full-seed7" and got["variant"] == "full" and got["distill_seed"] == 7
    assert got["num_samples"] == 24 and len(got["per_sample_nll"]) == 24
    direct = evaluate.gen_ppl(texts, model, tokenizer, 4, "truncate")
    assert got["gen_ppl"] == pytest.approx(direct["ppl"], rel=1e-6)
    assert got["scored_tokens"] == direct["total_tokens"] == 24 * 5
    assert got["gen_ppl_lo"] <= got["gen_ppl"] <= got["gen_ppl_hi"]
    assert got["entropy"] == pytest.approx(evaluate.entropy_stats(ids)["entropy"])
    assert 0.0 < got["mauve"] <= 1.0 and got["mauve_samples"] == 24 and got["mauve_seed"] == 7
    assert got["judge"].startswith("local-gpt2") and got["provenance"]["config"] == cfg


def test_reference_blocks_are_disjoint_and_seeded():
    a1, b1 = evaluate.pick_reference_blocks(50, 20, seed=3)
    a2, b2 = evaluate.pick_reference_blocks(50, 20, seed=3)
    assert np.array_equal(a1, a2) and np.array_equal(b1, b2)
    assert len(set(a1) | set(b1)) == 40
    with pytest.raises(ValueError, match=r"val\.npy: 30 held-out blocks.*need 40"):
        evaluate.pick_reference_blocks(30, 20, seed=3, source="val.npy")


def test_reference_command(judge_dir, tmp_path):
    from didi import cli, data

    tok_dir = tmp_path / "tokenizer"
    char_tokenizer().save_pretrained(tok_dir)
    rng = np.random.default_rng(0)
    blocks = rng.integers(2, 11, size=(50, 6)).astype(np.uint16)
    blocks[:, 0] = 0
    np.save(tmp_path / "validation.npy", blocks)
    out_dir = tmp_path / "reference"
    args = ["reference", "--tokens", str(tmp_path / "validation.npy"), "--tokenizer", str(tok_dir),
            "--judge", str(judge_dir), "--num-samples", "20", "--out-dir", str(out_dir),
            "--config-json", json.dumps(eval_config())]
    assert cli.main(args) == 0
    metrics = json.loads((out_dir / "metrics.json").read_text())
    a_ids, b_ids = np.load(out_dir / "a.npy"), np.load(out_dir / "b.npy")
    assert a_ids.shape == b_ids.shape == (20, 6)
    assert not set(metrics["a_blocks"]) & set(metrics["b_blocks"])
    np.testing.assert_array_equal(a_ids, blocks[metrics["a_blocks"]])
    assert evaluate.read_jsonl_texts(out_dir / "a.jsonl") == data.decode(char_tokenizer(), a_ids)
    assert metrics["model"] == "reference" and metrics["num_samples"] == 20 and metrics["mauve"] is not None
    with pytest.raises(ValueError, match="validation.npy: 50 held-out blocks"):
        cli.main([*args[:8], "30", *args[9:]])
