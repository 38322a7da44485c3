"""The exact-likelihood world: the Markov chain (didi.synthetic), its corpus source and tokenizer, the exact judge,
its rows in the results table, and the training-dynamics figure."""

import json
import math

import numpy as np
import pytest

from conftest import REPO, run_snakemake
from didi import config, data, evaluate, synthetic, tables
from didi.synthetic import MarkovSpec, MarkovWorld

SPEC = {"vocab_size": 8, "order": 1, "branching": 2, "leak": 0.1, "concentration": 1.0, "seed": 3}


# ---------------------------------------------------------------------------------------------- the chain
@pytest.mark.parametrize("order", [1, 2])
def test_expected_nll_matches_monte_carlo(order):
    world = MarkovWorld(MarkovSpec(**{**SPEC, "order": order}))
    x = world.sample(4000, 12, seed=1)
    nll = -world.token_log_probs(x)  # [n, L]
    exact = world.expected_nll_per_position(12)
    # every position, and the per-token mean, within 4 standard errors of the Monte-Carlo mean
    se = nll.std(axis=0, ddof=1) / math.sqrt(len(x))
    assert np.all(np.abs(nll.mean(axis=0) - exact) < 4 * se + 1e-12)
    per_seq = nll.mean(axis=1)
    assert abs(per_seq.mean() - world.nll_per_token(12)) < 4 * per_seq.std(ddof=1) / math.sqrt(len(x))
    # the first `order` positions are uniform: exactly log V
    assert np.allclose(exact[:order], math.log(8))


def test_transition_rows_are_distributions_with_the_leak():
    world = MarkovWorld(MarkovSpec(**{**SPEC, "order": 2}))
    assert world.transition.shape == (64, 8)
    assert np.allclose(world.transition.sum(axis=1), 1.0)
    assert world.transition.min() >= 0.1 / 8 - 1e-12  # every state keeps its leak mass
    # exactly `branching` states get more than the leak
    assert ((world.transition > 0.1 / 8 + 1e-9).sum(axis=1) <= 2).all()


def test_log_prob_by_hand():
    world = MarkovWorld(MarkovSpec(**SPEC))
    x = np.array([[3, 5, 1]])
    expected = -math.log(8) + math.log(world.transition[3, 5]) + math.log(world.transition[5, 1])
    assert world.log_prob(x)[0] == pytest.approx(expected)


def test_sampling_is_deterministic_in_the_seed():
    world = MarkovWorld(MarkovSpec(**SPEC))
    assert np.array_equal(world.sample(50, 10, seed=7), MarkovWorld(MarkovSpec(**SPEC)).sample(50, 10, seed=7))
    assert not np.array_equal(world.sample(50, 10, seed=7), world.sample(50, 10, seed=8))
    other_table = MarkovWorld(MarkovSpec(**{**SPEC, "seed": 4}))
    assert not np.allclose(world.transition, other_table.transition)


def test_samples_follow_the_transition_table():
    world = MarkovWorld(MarkovSpec(**SPEC))
    x = world.sample(20000, 2, seed=0)
    first = x[:, 0] == 2
    freq = np.bincount(x[first, 1], minlength=8) / first.sum()
    assert np.abs(freq - world.transition[2]).max() < 0.03


def test_exact_denoiser_is_the_posterior_by_enumeration():
    """Every masked position's distribution equals the posterior summed over all chains that agree with the
    visible states (V = 3, 5 chain positions: 243 chains), for every visibility pattern."""
    import itertools

    import torch

    spec = {**SPEC, "vocab_size": 3}
    world, n = MarkovWorld(MarkovSpec(**spec)), 5
    boundary, mask = 3, 5  # states 0..2, EOS = BOS 3, [PAD] 4, [MASK] 5
    denoiser = synthetic.ExactDenoiser(world, n + 2, mask, boundary)
    chains = np.array(list(itertools.product(range(3), repeat=n)))
    joint = np.exp(world.log_prob(chains))
    rng = np.random.default_rng(0)
    blocks = []
    for pattern in itertools.product([False, True], repeat=n):
        visible = np.array(pattern)
        truth = chains[rng.choice(len(chains), p=joint)]
        blocks.append([boundary, *np.where(visible, truth, mask), boundary])
    blocks = torch.tensor(blocks)
    probs = denoiser(blocks, torch.zeros(len(blocks))).double().softmax(-1).numpy()
    for row, block in enumerate(blocks.numpy()):
        x = block[1:-1]
        agree = np.all((chains == x) | (x == mask), axis=1)
        for i in np.flatnonzero(x == mask):
            posterior = np.bincount(chains[agree, i], weights=joint[agree], minlength=3) / joint[agree].sum()
            assert probs[row, i + 1, :3] == pytest.approx(posterior, rel=1e-5)
            assert probs[row, i + 1, 3:].sum() < 1e-6
        assert probs[row, 0, boundary] == probs[row, -1, boundary] == pytest.approx(1.0)


def test_exact_denoiser_refuses_what_it_cannot_condition_on():
    import torch

    with pytest.raises(ValueError, match="order-1"):
        synthetic.ExactDenoiser(MarkovWorld(MarkovSpec(**{**SPEC, "order": 2})), 7, 10, 8)
    denoiser = synthetic.ExactDenoiser(MarkovWorld(MarkovSpec(**SPEC)), 7, 10, 8)
    with pytest.raises(ValueError, match="visible id >= 8"):
        denoiser(torch.tensor([[8, 1, 9, 10, 10, 10, 8]]), torch.zeros(1))


@pytest.mark.parametrize("key, value", [("branching", 0), ("branching", 9), ("leak", 1.0), ("leak", -0.1),
                                        ("order", 0), ("order", 8)])
def test_bad_parameters_raise_naming_the_parameter(key, value):
    with pytest.raises(ValueError, match=key):
        MarkovWorld(MarkovSpec(**{**SPEC, key: value}))


def test_states_out_of_range_are_errors():
    world = MarkovWorld(MarkovSpec(**SPEC))
    with pytest.raises(ValueError, match="states must be in"):
        world.token_log_probs(np.array([[1, 8]]))


# ---------------------------------------------------------------------------------------------- corpus source
def synthetic_cfg(tmp_path, num_sequences=60, seq_len=12, wrap=False) -> dict:
    return config.load(overrides={
        "results": str(tmp_path),
        "corpus": {"source": synthetic.SOURCE, "validation_fraction": 0.25,
                   "synthetic": {**SPEC, "num_sequences": num_sequences}},
        "data": {"seq_len": seq_len, "wrap": wrap},
        "judge": {"kind": "exact"},
        # sweeps within L (checked on a whole config)
        "sampling": {"nfe": [2, 4], "temperature_nfe": 2},
        "distill": {"nfe": [2], "teacher_pool_nfe": 4},
    })


def test_tokens_rows_are_the_chain_sequences(tmp_path):
    cfg = synthetic_cfg(tmp_path)
    data.build_corpus(cfg, tmp_path / "corpus")
    tokenizer = data.build_tokenizer(cfg, tmp_path / "corpus", tmp_path / "tokenizer")
    assert len(tokenizer) == 10  # 8 states + EOS (= BOS) + [PAD]
    special = data.special_ids(tokenizer)
    assert (special["eos"], special["pad"], special["mask"]) == (8, 9, 10)
    chain = MarkovWorld(MarkovSpec(**SPEC)).sample(60, 10, seed=cfg["seed"])  # L - 2 = 10 states each
    for split in ("train", "validation"):
        data.tokenize_split(cfg, tmp_path / "corpus", tmp_path / "tokenizer", split, tmp_path / f"{split}.npy")
        blocks = np.load(tmp_path / f"{split}.npy")
        ids = [int(i) for i in data.read_split(tmp_path / "corpus", split)["id"]]
        assert blocks.shape == (len(ids), 12)
        assert (blocks[:, 0] == 8).all() and (blocks[:, -1] == 8).all()
        assert np.array_equal(blocks[:, 1:-1], chain[ids])  # each row IS its document's chain sequence
    stats = json.loads((tmp_path / "corpus" / "stats.json").read_text())
    assert stats["documents"] == {"train": 45, "validation": 15}


def test_state_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    synthetic.state_tokenizer(8, data.EOS_TOKEN, data.PAD_TOKEN).save_pretrained(str(tmp_path))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    text = f"{data.EOS_TOKEN} s3 s0 s7 {data.EOS_TOKEN}"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == [8, 3, 0, 7, 8]
    assert data.decode(tokenizer, np.array([ids + [9]])) == [text]  # [PAD] dropped


def test_missing_synthetic_section_is_named():
    with pytest.raises(ValueError, match="corpus.synthetic"):
        synthetic.spec_from_corpus({"source": synthetic.SOURCE})


def test_synthetic_config_keys_are_validated(tmp_path):
    with pytest.raises(config.ConfigError, match="corpus.synthetic"):
        config.load(overrides={"corpus": {"synthetic": {**SPEC, "num_sequences": 10, "lek": 0.1}}})


# ---------------------------------------------------------------------------------------------- exact judge
def exact_judge(tmp_path, **data_overrides) -> dict:
    info = synthetic.exact_judge_info(synthetic_cfg(tmp_path, **data_overrides))
    (tmp_path / "judge.json").write_text(json.dumps(info))
    return info


def test_exact_judge_scores_real_blocks_at_the_floor(tmp_path):
    cfg = synthetic_cfg(tmp_path)
    info = exact_judge(tmp_path)
    world = MarkovWorld(MarkovSpec(**SPEC))
    assert info["nll_floor"] == pytest.approx(world.nll_per_token(10))
    states = world.sample(3000, 10, seed=5)
    blocks = np.concatenate([np.full((3000, 1), 8), states, np.full((3000, 1), 8)], axis=1)
    row, name, _ = evaluate.judged(["unused"] * 3000, blocks, tmp_path, cfg, None)
    assert name == info["name"] and row["invalid_tokens"] == 0 and row["scored_tokens"] == 30000
    assert row["total_nll"] == pytest.approx(-world.log_prob(states).sum())
    assert row["gen_ppl"] == pytest.approx(math.exp(row["gen_nll"]))
    se = np.std(row["per_sample_nll"], ddof=1) / 10 / math.sqrt(3000)
    assert abs(row["gen_nll"] - info["nll_floor"]) < 4 * se
    assert row["gen_ppl_lo"] <= row["gen_ppl"] <= row["gen_ppl_hi"]


def test_non_state_tokens_score_the_floor_and_are_counted(tmp_path):
    info = exact_judge(tmp_path, seq_len=6)
    world = MarkovWorld(MarkovSpec(**SPEC))
    V, floor = 8, info["invalid_log_prob"]
    assert floor == pytest.approx(math.log(0.1 / 8))
    block = np.array([[8, 3, 9, 5, 1, 8]])  # a [PAD] at chain position 2
    scores = synthetic.score_blocks(world, block, floor)
    # s3 uniform; [PAD] at the floor; s5 after a non-state restarts the chain (uniform); s1 | s5 from the table
    expected = -(-math.log(V) + floor - math.log(V) + world.log_transition[5, 1])
    assert scores["nll"][0] == pytest.approx(expected)
    assert scores["invalid"][0] == 1 and scores["tokens"][0] == 4


def test_exact_judge_needs_the_synthetic_blocks(tmp_path):
    with pytest.raises(ValueError, match="data.wrap false"):
        synthetic.exact_judge_info(synthetic_cfg(tmp_path, wrap=True))


def test_exact_rows_in_the_results_table(tmp_path):
    def ev(model, nfe, nll, invalid):
        return {"model": model, "variant": "", "sampler": "ancestral", "precision": "float64", "nfe": nfe,
                "temperature": 1.0, "seed": 0, "gen_ppl": math.exp(nll), "gen_nll": nll, "nll_floor": 0.8,
                "invalid_tokens": invalid, "entropy": 2.0, "num_samples": 4, "scored_tokens": 40,
                "judge": "exact", "weights": "ema", "provenance": {"config_hash": "h", "git_commit": "c"}}

    df = tables.typed(__import__("pandas").DataFrame(
        [tables.row_from_eval(e) for e in (ev("teacher", 2, 1.5, 3), ev("teacher", 32, 0.9, 0),
                                           {**ev("reference", None, 0.81, 0), "sampler": ""})],
        columns=tables.COLUMNS))
    text = tables.main_table_md(df)
    assert "floor (its entropy per token): 0.8000; real held-out sequences: 0.8100" in text
    assert "1.5000 [3]" in text and "0.9000 [0]" in text
    assert "exact denoiser" not in text  # said only when its rows are there
    with_exact = tables.typed(__import__("pandas").DataFrame(
        [tables.row_from_eval(e) for e in (ev("teacher", 2, 1.5, 3), ev("exact", 2, 1.2, 0))], columns=tables.COLUMNS))
    assert "Model `exact` is the chain's own exact denoiser" in tables.main_table_md(with_exact)
    tables.write_csv(tmp_path / "r.csv", df)
    back = tables.read_table(tmp_path / "r.csv")
    assert back["invalid_tokens"].tolist() == [3, 0, 0] and back["nll_floor"].tolist() == [0.8] * 3


# ---------------------------------------------------------------------------------------------- dynamics
def test_moving_average_small_case():
    assert np.allclose(tables.moving_average([1, 3, 5, 7], 2), [1, 2, 4, 6])
    # NaN (a discriminator warm-up's student-side values) is skipped, and a window of NaN only stays NaN
    smoothed = tables.moving_average([np.nan, np.nan, 3, 5, 7], 2)
    assert np.isnan(smoothed[:2]).all() and np.allclose(smoothed[2:], [3, 4, 6])


def test_dynamics_figure_from_fake_histories(tmp_path):
    rng = np.random.default_rng(0)
    for variant in ("baseline", "full"):
        history = {k: rng.normal(size=40).tolist() for k, _ in tables.DYNAMICS}
        (tmp_path / variant).mkdir()
        (tmp_path / variant / "metrics.json").write_text(json.dumps({"history": history}))
    (tmp_path / "teacher.json").write_text(json.dumps({"loss_curve": [[10, 3.0], [20, 2.0]],
                                                       "eval_curve": [[20, 2.1]]}))
    (tmp_path / "judge.json").write_text(json.dumps({"loss_curve": [[5, 4.0], [10, 3.5]], "heldout_ppl": 30.0}))
    rounds = [{"index": i, "start": 20 * i, "teacher_nfe": 64 >> i, "student_nfe": 32 >> i,
               "loss_curve": rng.normal(size=20).tolist()} for i in range(3)]
    (tmp_path / "sdtt.json").write_text(json.dumps({"rounds": rounds}))
    out = tmp_path / "figures"
    tables.draw_dynamics([tmp_path / "baseline" / "metrics.json", tmp_path / "full" / "metrics.json"],
                         tmp_path / "teacher.json", tmp_path / "judge.json", out, tmp_path / "sdtt.json")
    for ext in ("png", "pdf"):
        assert (out / f"dynamics.{ext}").stat().st_size > 5000
    # SDTT's panel: one curve pair (raw, smoothed) per round, each over its own steps
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    tables.plot_sdtt_rounds(ax, {"rounds": rounds})
    assert [line.get_label() for line in ax.lines if not line.get_label().startswith("_")] == [
        "64 -> 32 steps", "32 -> 16 steps", "16 -> 8 steps"]
    assert ax.lines[2].get_xdata()[0] == 21 and len(ax.lines[2].get_xdata()) == 20
    plt.close(fig)


def test_dry_run_plans_the_exact_world_and_the_dynamics_figure(tmp_path):
    out = run_snakemake(["--configfile", str(REPO / "config.yaml"), str(REPO / "presets" / "synthetic.yaml"),
                         "--dry-run", "--config", f"results={tmp_path}"]).stdout
    for rule in ["corpus", "tokenizer", "train_teacher", "train_judge", "reference", "distill", "evaluate",
                 "table", "figures", "dynamics"]:
        assert f"rule {rule}:" in out
    assert (REPO / "workflow" / "report" / "dynamics.rst").exists()
    # the chain's exact denoiser is sampled over the NFE sweep, from the judge's record of the chain
    for k in (2, 4, 8, 32):
        assert f"{tmp_path}/samples/exact/ancestral_float64_nfe{k}_T1.00.npy" in out
    assert f"--model-dir {tmp_path}/judge/judge.json" in run_snakemake(
        ["--configfile", str(REPO / "config.yaml"), str(REPO / "presets" / "synthetic.yaml"), "--dry-run",
         "--printshellcmds", "--config", f"results={tmp_path}", "--", f"{tmp_path}/samples/exact/"
         "ancestral_float64_nfe4_T1.00.npy"]).stdout


def test_exact_denoiser_samples_to_files(tmp_path):
    """`didi sample` on an exact judge's judge.json: blocks [BOS] + states + [EOS]; in one step every position is
    drawn from the chain's marginal there, so the first state is uniform."""
    from didi.sample import sample_to_files

    cfg = synthetic_cfg(tmp_path)
    exact_judge(tmp_path)
    synthetic.state_tokenizer(8, data.EOS_TOKEN, data.PAD_TOKEN).save_pretrained(str(tmp_path / "tokenizer"))
    cfg["sampling"]["batch_size"] = 1000
    meta = sample_to_files(cfg, tmp_path / "judge.json", tmp_path / "tokenizer", tmp_path / "one", nfe=1,
                           precision="float64", temperature=1.0, num_samples=4000)
    ids = np.load(tmp_path / "one.npy")
    assert ids.shape == (4000, 12) and meta["weights"] == "exact"
    assert (ids[:, [0, -1]] == 8).all() and (ids[:, 1:-1] < 8).all()
    first = np.bincount(ids[:, 1], minlength=8) / 4000
    assert np.abs(first - 1 / 8).max() < 4 * math.sqrt(1 / 8 * 7 / 8 / 4000)
    with pytest.raises(ValueError, match="not an exact judge"):
        (tmp_path / "lm").mkdir()
        (tmp_path / "lm" / "judge.json").write_text(json.dumps({"kind": "lm"}))
        sample_to_files(cfg, tmp_path / "lm" / "judge.json", tmp_path / "tokenizer", tmp_path / "x", nfe=1,
                        precision="float64", temperature=1.0, num_samples=4)


@pytest.mark.slow
def test_synthetic_preset_end_to_end(tmp_path):
    """The exact world's whole DAG (shortened) to the table and the report: every row scored by the chain."""
    import pandas as pd

    shorter = tmp_path / "shorter.yaml"
    shorter.write_text("teacher: {steps: 200, eval_every: 100, checkpoint_every: 100}\n"
                       "distill: {iterations: 4, log_every: 2, checkpoint_every: 2, warmup_steps: 2, nfe: [2],\n"
                       "          run: [baseline, full, teacher_pos]}\n"
                       "sampling: {nfe: [2, 32], temperatures: [1.0], temperature_nfe: 2, num_samples: 16,\n"
                       "           batch_size: 16}\n")
    results = tmp_path / "results"
    args = ["--configfile", str(REPO / "config.yaml"), str(REPO / "presets" / "synthetic.yaml"), str(shorter),
            "--config", f"results={results}"]
    run_snakemake([*args, "--cores", "2"])
    table = pd.read_csv(results / "tables" / "results.csv")
    floor = json.loads((results / "judge" / "judge.json").read_text())["nll_floor"]
    assert (table["judge"] == "exact-markov-V32-k1-b2-leak0.05").all()
    assert np.allclose(table["nll_floor"], floor)
    assert np.allclose(table["gen_nll"], np.log(table["gen_ppl"]))
    ref = table[table.model == "reference"].iloc[0]
    assert abs(ref["gen_nll"] - floor) < 0.25 and ref["invalid_tokens"] == 0
    assert {"teacher", "exact", "student-full-seed1234", "student-baseline-seed1234"} <= set(table.model)
    exact = table[table.model == "exact"].set_index("nfe")
    assert (exact["invalid_tokens"] == 0).all()  # the data's denoiser puts states at every chain position
    assert exact.loc[2, "gen_nll"] > exact.loc[32, "gen_nll"]  # its factorisation error shrinks with K
    assert (results / "figures" / "dynamics.png").stat().st_size > 5000
    report = tmp_path / "report.html"
    run_snakemake([*args, "--report", str(report)])
    assert "dynamics" in report.read_text(errors="replace")
