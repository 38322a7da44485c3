"""The study runner's pure parts: its diversity metric, its gap table and its row overrides."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from didi import config, study


def test_positional_entropy_sees_collapse_that_unigram_entropy_does_not():
    one_sequence = np.tile(np.arange(6), (50, 1))  # every sample the same sequence of 6 distinct tokens
    assert study.positional_entropy(one_sequence) == 0.0
    four_way = np.repeat(np.arange(4), 25)[:, None].repeat(3, axis=1)  # each position: 4 tokens, 25 each
    assert study.positional_entropy(four_way) == pytest.approx(math.log(4))


def test_gap_table_by_hand():
    rows = []
    for k, teacher, student in ((4, 2.0, 1.5), (8, 1.6, 1.5), (32, 1.2, 1.1)):
        rows.append({"name": "teacher", "seed": 0, "model": "teacher", "K": k, "nll": teacher, "entropy": 2.0,
                     "positional_entropy": 3.0})
        for seed, shift in ((0, 0.0), (1, 0.2)):
            rows.append({"name": "row", "seed": seed, "model": "ema", "K": k, "nll": student + shift,
                         "entropy": 1.9, "positional_entropy": 2.9})
    table = study.gap_table(pd.DataFrame(rows), [4, 8, 32], seq_len=32).set_index("row")
    assert table.loc["row", "nll@4"] == pytest.approx(1.6)  # mean over the two seeds
    assert table.loc["row", "spread@4"] == pytest.approx(0.2)
    assert table.loc["row", "closed@4"] == pytest.approx((2.0 - 1.6) / (2.0 - 1.2))
    assert table.loc["row", "closed@8"] == pytest.approx((1.6 - 1.6) / (1.6 - 1.2))
    assert table.loc["teacher", "closed@4"] == 0.0 and "closed@32" not in table.columns
    assert table.loc["row", "entropy@8"] == pytest.approx(1.9) and table.loc["teacher", "entropy@32"] == 2.0
    assert "denoiser_closed@4" not in table.columns  # no exact denoiser scored
    assert not any(c.startswith(("beats@", "mauve@")) for c in table.columns)  # no intervals, no MAUVE scored
    # intervals: a seed beats the teacher at K when its upper bound is below the teacher's lower bound
    bounded = pd.DataFrame(rows).assign(ppl_lo=lambda f: np.exp(f.nll) * 0.95, ppl_hi=lambda f: np.exp(f.nll) * 1.05,
                                        mauve=0.9, seconds=[math.nan, 10.0, 20.0] * 3,
                                        reward_judge_corr=[math.nan, 0.1, 0.3] * 3)
    table = study.gap_table(bounded, [4, 8, 32], seq_len=32).set_index("row")
    assert table.loc["row", "beats@4"] == 1.0  # exp(1.5) and exp(1.7): both x 1.05 below exp(2.0) x 0.95
    assert table.loc["row", "beats@8"] == 0.0 and "beats@4" in table.columns
    assert table.loc["row", "seconds"] == 15.0 and table.loc["row", "reward_judge_corr"] == pytest.approx(0.2)
    assert table.loc["row", "mauve@8"] == 0.9
    # a `<row>_shuffled` row is the row's control: the paired difference of NLL, seed by seed
    control = [{**r, "name": "row_shuffled", "nll": r["nll"] + 0.1 * (r["seed"] + 1)} for r in rows
               if r["name"] == "row"]
    table = study.gap_table(pd.DataFrame(rows + control), [4, 8, 32], seq_len=32).set_index("row")
    assert table.loc["row", "minus_control@8"] == pytest.approx(-0.15)  # mean of -0.1 and -0.2
    assert "minus_control@8" not in table.columns or np.isnan(table.loc["row_shuffled", "minus_control@8"])
    exact = [{"name": "exact_denoiser", "seed": 0, "model": "exact", "K": k, "nll": nll, "entropy": 2.0,
              "positional_entropy": 3.0} for k, nll in ((4, 1.8), (8, 1.4), (32, 1.0))]
    table = study.gap_table(pd.DataFrame(rows + exact), [4, 8, 32], seq_len=32).set_index("row")
    assert table.loc["row", "denoiser_closed@4"] == pytest.approx((2.0 - 1.6) / (2.0 - 1.8))
    assert table.loc["row", "denoiser_closed@32"] == pytest.approx((1.2 - 1.2) / (1.2 - 1.0))
    assert table.loc["exact_denoiser", "denoiser_closed@8"] == pytest.approx(1.0)
    # `--only` into a fresh directory scores no teacher: the means stand, no share of a gap is claimed
    students = pd.DataFrame([r for r in rows if r["name"] == "row"])
    table = study.gap_table(students, [4, 8, 32], seq_len=32).set_index("row")
    assert table.loc["row", "nll@4"] == pytest.approx(1.6)
    assert not any(c.startswith("closed@") for c in table.columns)


def test_only_and_seeds_select_jobs_and_name_what_matches_nothing():
    jobs = [("teacher", {}, 1234), ("row", {"a": 1}, 0), ("row", {"a": 1}, 1), ("row_shuffled", {}, 0),
            ("row_shuffled", {}, 1)]
    assert study.selected(jobs, None, None) == jobs
    assert study.selected(jobs, ["row", "row_shuffled"], [1]) == [jobs[2], jobs[4]]
    assert study.selected(jobs, None, [0]) == [jobs[1], jobs[3]]
    assert study.selected(jobs, ["none"], None) == []  # re-tabulate only
    with pytest.raises(ValueError, match="no row named rwo"):
        study.selected(jobs, ["rwo"], None)
    with pytest.raises(ValueError, match="--seeds: 1234 not among"):
        study.selected(jobs, ["row"], [1234])


def test_scored_ks_keep_k_equal_l_to_the_rows_and_models_at_length_names():
    assert study.scored_ks("recipe", "ema", [8, 16, 256], 256, None) == [8, 16, 256]  # no at_length: all at L
    assert study.scored_ks("teacher", "teacher", [8, 16, 256], 256, ["teacher"]) == [8, 16, 256]
    assert study.scored_ks("recipe", "raw", [8, 16, 256], 256, ["teacher"]) == [8, 16]
    assert study.scored_ks("recipe", "raw", [8, 16, 256], 256, []) == [8, 16]
    assert study.scored_ks("recipe", "ema", [8, 16, 256], 256, ["recipe"]) == [8, 16, 256]  # a row: all its models
    assert study.scored_ks("recipe", "raw", [8, 16, 256], 256, ["recipe/raw"]) == [8, 16, 256]  # that model alone
    assert study.scored_ks("recipe", "ema", [8, 16, 256], 256, ["recipe/raw"]) == [8, 16]
    assert study.scored_ks("recipe_shuffled", "raw", [8, 16, 256], 256, ["recipe/raw"]) == [8, 16]


def test_at_length_names_of_no_row_are_an_error():
    study.check_at_length(None, ["teacher", "recipe"])
    study.check_at_length(["teacher", "recipe/raw", "recipe"], ["teacher", "recipe"])
    with pytest.raises(ValueError, match="no row named recipee, recipee/raw"):
        study.check_at_length(["recipee/raw", "recipee", "teacher"], ["teacher", "recipe"])


def test_check_spec_rejects_an_unknown_override_or_at_length_name_before_any_job():
    cfg = config.load()
    spec = {"ks": [8], "samples": 8, "base": {"iterations": 4}, "at_length": ["teacher", "row/raw"],
            "rows": {"row": {"seeds": [0], "overrides": {"student_lr": 1e-5}}}}
    study.check_spec(cfg, spec)
    with pytest.raises(config.ConfigError, match="studnet_lr"):
        study.check_spec(cfg, {**spec, "rows": {"row": {"seeds": [0], "overrides": {"studnet_lr": 1e-5}}}})
    with pytest.raises(ValueError, match="no row named rwo/raw"):
        study.check_spec(cfg, {**spec, "at_length": ["rwo/raw"]})


def test_row_overrides_merge_and_unknown_keys_are_named():
    cfg = config.load()
    distill_cfg, method = study.row_config(cfg, {"student_lr": 1e-5, "method": {"tau_per_group": True}})
    assert distill_cfg["student_lr"] == 1e-5 and method["tau_per_group"] is True
    assert method["positives"] == cfg["distill"]["method"]["positives"]
    with pytest.raises(config.ConfigError, match="studnet_lr"):
        study.row_config(cfg, {"studnet_lr": 1e-5})
    with pytest.raises(config.ConfigError, match="tau_per_gruop"):
        study.row_config(cfg, {"method": {"tau_per_gruop": True}})


@pytest.mark.slow
def test_study_on_a_text_corpus_scores_with_the_workflow_judge(smoke_run, tmp_path):
    """On a text corpus the study's likelihood is the DAG's judge: it scores a sample file exactly as `didi evaluate`
    did (log gen-PPL), and the oracle row's reward is that likelihood (its logged correlation with it is 1)."""
    import json
    import subprocess

    from conftest import REPO, SMOKE, subprocess_env, venv_bin

    cfg = config.load([REPO / "config.yaml", REPO / "presets" / "smoke.yaml"], {"results": str(smoke_run)})
    world = study.load_world(cfg, smoke_run)
    assert list(world.references) == ["teacher"] == study.reference_rows(cfg)  # no exact denoiser on text
    stem = "teacher/ancestral_float64_nfe32_T1.00"
    evaluated = json.loads((smoke_run / "eval" / f"{stem}.json").read_text())
    ids = np.load(smoke_run / "samples" / f"{stem}.npy")
    scored = world.score(ids)
    assert scored["nll"] == pytest.approx(math.log(evaluated["gen_ppl"]), rel=1e-9)
    # the interval and MAUVE are the evaluation's own (same bootstrap, same reference text, same k-means seed)
    assert (scored["ppl_lo"], scored["ppl_hi"]) == pytest.approx((evaluated["gen_ppl_lo"], evaluated["gen_ppl_hi"]),
                                                                 rel=1e-9)
    assert scored["mauve"] == pytest.approx(evaluated["mauve"], rel=1e-6)
    per_token = -np.asarray(evaluated["per_sample_nll"]) / np.asarray(evaluated["per_sample_tokens"])
    assert world.reward(torch.as_tensor(ids.astype(np.int64))).numpy() == pytest.approx(per_token, rel=1e-5)

    rows = tmp_path / "rows.yaml"
    rows.write_text("ks: [4]\nsamples: 8\nat_length: [teacher, oracle_judge_reward/raw]\nbase: {iterations: 4}\n"
                    "rgas_ks: [4]\n"
                    "rgas: {mild: {h_start: 1.0, h_end: 1.0}}\n"
                    "rows:\n  oracle_judge_reward: {overrides: {method: {reward_source: exact}}, seeds: [0]}\n")
    out = tmp_path / "study"
    subprocess.run([venv_bin("didi"), "study", "--configfile", SMOKE[1], "--configfile", SMOKE[2],
                    "--results", str(smoke_run), "--rows", str(rows), "--out", str(out)],
                   check=True, env=subprocess_env(), cwd=REPO, timeout=600)
    lines = pd.read_csv(out / "results.csv")
    guided = {f"{cfg['distill']['student_weights']}+rgas:mild", "teacher+rgas:mild"}  # RGAS with the row's D
    assert set(zip(lines.name, lines.model)) == {("teacher", "teacher"), ("oracle_judge_reward", "ema"),
                                                 ("oracle_judge_reward", "raw")} | {("oracle_judge_reward", m)
                                                                                    for m in guided}
    assert sorted(lines.K.unique()) == [4, 32] and (lines.invalid == 0).all()
    # K = L (32) for what `at_length` names only: the teacher and the trained row's raw student, not its EMA
    assert sorted(lines[lines.name == "teacher"].K.unique()) == [4, 32]
    assert sorted(lines[(lines.name == "oracle_judge_reward") & (lines.model == "raw")].K.unique()) == [4, 32]
    assert sorted(lines[(lines.name == "oracle_judge_reward") & (lines.model == "ema")].K.unique()) == [4]
    assert sorted(lines[lines.model.isin(guided)].K.unique()) == [4]  # at rgas_ks only
    history = json.loads((out / "histories.json").read_text())["oracle_judge_reward/0"]
    assert len(history["reward_exact_corr"]) == 4 and np.allclose(history["reward_exact_corr"], 1.0, atol=1e-4)
    trained = lines[lines.name == "oracle_judge_reward"]
    assert np.allclose(trained.reward_judge_corr, 1.0, atol=1e-4) and (trained.seconds > 0).all()
    assert (lines.ppl_lo < np.exp(lines.nll)).all() and (np.exp(lines.nll) < lines.ppl_hi).all()
    assert (out / "table.md").read_text().count("oracle_judge_reward") == 4  # EMA, raw and the two RGAS models


def test_rgas_settings_merge_over_the_config_and_name_unknown_keys():
    cfg = config.load()
    settings = study.rgas_settings(cfg, {"rgas": {"mild": {"h_start": 3.0, "h_end": 4.0}, "paper": None}})
    assert settings["mild"]["h_start"] == 3.0 and settings["mild"]["candidates"] == cfg["distill"]["rgas"]["candidates"]
    assert settings["paper"] == {k: v for k, v in cfg["distill"]["rgas"].items() if k != "variants"}
    assert study.rgas_settings(cfg, {}) == {}
    with pytest.raises(config.ConfigError, match="h_strat"):
        study.rgas_settings(cfg, {"rgas": {"typo": {"h_strat": 3.0}}})


def test_score_model_with_unguided_rgas_is_the_ancestral_score():
    """RGAS with h = 0 and M = 1 draws what the plain sampler draws (tests/test_rgas.py), so the study scores both
    alike; any guidance changes the samples (and so, here, the scores)."""
    from didi.discriminator import Discriminator
    from didi.model import DiT, DiTConfig

    vocab, seq_len = 6, 8
    torch.manual_seed(0)
    model = DiT(DiTConfig(vocab + 1, seq_len, hidden=16, layers=1, heads=2, cond_dim=8, dropout=0.0))
    disc = Discriminator.from_teacher(model, 1)
    cfg = {"seed": 3, "data": {"seq_len": seq_len}, "diffusion": config.load()["diffusion"]}

    def likelihood(ids):  # any function of the samples: here the sum of their ids as an "NLL"
        return {"nll": ids.sum(1).astype(float), "tokens": np.full(len(ids), seq_len),
                "invalid": np.zeros(len(ids), dtype=np.int64)}

    world = study.World(model, vocab, likelihood, {}, config.load()["evaluation"], cfg["seed"])
    plain = study.score_model(model, cfg, [2, 4], 64, world)
    unguided = study.score_model(model, cfg, [2, 4], 64, world, disc,
                                 {"h_start": 0.0, "h_end": 0.0, "candidates": 1, "tilt_fraction": 0.5,
                                  "reading": "paper"})
    assert unguided == plain
    guided = study.score_model(model, cfg, [2, 4], 64, world, disc,
                               {"h_start": 30.0, "h_end": 40.0, "candidates": 4, "tilt_fraction": 0.5,
                                "reading": "paper"})
    assert guided[4]["nll"] != plain[4]["nll"]


def load_script(name: str):
    """scripts/<name>.py as a module (scripts/ is not a package)."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_reward_spread_script_reads_the_dag_run(smoke_run):
    """scripts/reward_spread.py on the smoke DAG's `full` run: per tau a non-negative within-group spread of the
    reward, a correlation in [-1, 1] and the policy gradient's time weight omega(tau) / pi(tau) by hand."""
    from conftest import REPO

    script = load_script("reward_spread")
    cfg = config.load([REPO / "config.yaml", REPO / "presets" / "smoke.yaml"], {"results": str(smoke_run)})
    method = config.variant_method(cfg, "full")
    assert method["tau_distribution"] == "beta22" and method["importance_weight"] and method["omega"]
    rows = script.spread_by_tau(cfg, smoke_run, "full", groups=4, taus=(0.05, 0.5))
    lo, hi = cfg["distill"]["omega_clip"]
    for row in rows:
        t = row["tau"]
        assert row["weight"] == pytest.approx(min(max(1 / t, lo), hi) / (6 * t * (1 - t)), rel=1e-5)
        assert row["group_std"] >= 0 and -1 <= row["corr"] <= 1
    assert [r["tau"] for r in rows] == [0.05, 0.5]


def test_reward_ceiling_script_runs_on_the_dag_run(smoke_run):
    """scripts/reward_ceiling.py on the smoke DAG: five checkpoints over the discriminator-only run, each with a
    one-corruption and an eight-corruption correlation in [-1, 1] at each read-out noise level (the script crashed
    on the dataclass `load_world` returns before)."""
    from conftest import REPO

    script = load_script("reward_ceiling")
    cfg = config.load([REPO / "config.yaml", REPO / "presets" / "smoke.yaml"], {"results": str(smoke_run)})
    points = script.ceiling(cfg, smoke_run, {}, {}, batch=4, steps=4, held_out_rows=16, report=lambda *a, **k: None)
    assert [p["step"] for p in points] == [0, 1, 2, 3, 4]
    for point in points:
        for t in (0.1, 0.4, 0.7):
            assert all(-1 <= point[t][k] <= 1 for k in ("one", "eight"))


def test_ranking_vs_gain_script_reads_gains_by_hand_and_counts_a_run_once(tmp_path):
    """scripts/ranking_vs_gain.py: the gain is the teacher's NLL minus the model's at K; a control row is left out;
    the same run kept in two directories under two names counts once (the copy that scored more models)."""
    script = load_script("ranking_vs_gain")

    def write(directory, runs):  # runs: {(name, seed): (reward-judge corr per iteration, {model: nll at K 8})}
        directory.mkdir()
        lines = [{"name": "teacher", "seed": 0, "model": "teacher", "K": 8, "nll": 5.0}]
        lines += [{"name": n, "seed": s, "model": m, "K": k, "nll": nll + (k == 16)}
                  for (n, s), (_, nlls) in runs.items() for m, nll in nlls.items() for k in (8, 16)]
        pd.DataFrame(lines).to_csv(directory / "results.csv", index=False)
        (directory / "histories.json").write_text(json.dumps(
            {"teacher/0": {}, **{f"{n}/{s}": {"reward_exact_corr": corr} for (n, s), (corr, _) in runs.items()}}))

    curve = [float("nan")] * 10 + [0.0] * 140 + [0.3] * 10  # the last 150: mean 0.02; warm-up NaN skipped
    write(tmp_path / "a", {("recipe", 1): (curve, {"raw": 4.9}),
                           ("control_shuffled_advantages", 1): ([0.5] * 150, {"raw": 4.0}),
                           ("other", 2): ([0.1] * 150, {"raw": 5.1, "raw+rgas:h3": 4.8})})
    write(tmp_path / "b", {("full", 1): (curve, {"raw": 4.9, "raw+rgas:h3": 4.7, "teacher+rgas:h3": 4.8})})
    table = script.runs(tmp_path, 8).set_index(["name", "seed"]).sort_index()
    assert list(table.index) == [("full", 1), ("other", 2)]  # recipe/1 is full/1; the control is left out
    assert table.loc[("full", 1), "corr"] == pytest.approx(0.02)
    assert table.loc[("full", 1), "raw"] == pytest.approx(0.1)
    assert table.loc[("full", 1), "raw+rgas:h3"] == pytest.approx(0.3)
    assert table.loc[("other", 2), "raw"] == pytest.approx(-0.1)
    assert np.isnan(table.loc[("other", 2), "teacher+rgas:h3"])  # not scored in that run


def test_every_committed_study_spec_is_valid_on_this_code():
    """The study's records in docs/study name the command that reruns them: each rows file's rows (and the config
    beside it, where a study has one) must still be accepted, and `at_length` must name rows that exist."""
    import yaml

    from conftest import REPO

    specs = sorted((REPO / "docs" / "study").rglob("rows.yaml"))
    assert len(specs) >= 20
    for rows in specs:
        spec = yaml.safe_load(rows.read_text())
        own = rows.parent / "config.yaml"
        cfg = config.load([REPO / "config.yaml"] + ([own] if own.exists() else []))
        try:
            study.check_spec(cfg, spec)
        except ValueError as err:
            pytest.fail(f"{rows}: {err}")
