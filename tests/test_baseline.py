"""The autoregressive GPT-2 baseline (didi/baseline.py): its sampler's distribution on an enumerable case, NFE
counting, training and exact resume, sample files in the diffusion samplers' format, rows through the table and the
figures, the benchmark section, and the workflow planning it at both scales."""

import itertools
import json

import numpy as np
import pytest
import scipy.stats
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer
from test_tables import FIXTURE, REFERENCE, eval_json
from test_train import L, tiny_cfg, workspace  # noqa: F401 (workspace: the teacher tests' fixture)

from conftest import REPO, run_snakemake
from didi import baseline, bench, evaluate, judge, runtime, tables

SPECIAL = {"bos": 0, "eos": 1, "pad": 2}


def tiny_lm(seed: int = 0):
    """3 tokens, context 3: every sequence BOS x1 x2 can be enumerated. EOS (1) is a likely token, so a sampler that
    stopped at EOS (and padded with 2) would show up as missing (1, x) sequences."""
    torch.manual_seed(seed)
    model = judge.new_gpt2(3, SPECIAL, n_positions=3, n_embd=8, n_layer=1, n_head=1, dropout=0.0).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(6.0)  # tied head: peaked, position-dependent next-token distributions
    return model


@torch.no_grad()
def exact_probabilities(model, temperature: float) -> dict:
    """P(x1, x2 | BOS) at `temperature`, from full (uncached) forward passes of every sequence."""
    out = {}
    for x1, x2 in itertools.product(range(3), repeat=2):
        logits = model(input_ids=torch.tensor([[0, x1, x2]])).logits[0].double() / temperature
        logp = torch.log_softmax(logits, dim=-1)
        out[(x1, x2)] = float(torch.exp(logp[0, x1] + logp[1, x2]))
    return out


def chi_square(ids: np.ndarray, probs: dict) -> float:
    counts = {key: 0 for key in probs}
    for row in ids:
        counts[(int(row[1]), int(row[2]))] += 1
    n = len(ids)
    return sum((counts[k] - n * p) ** 2 / (n * p) for k, p in probs.items())


def test_generate_draws_the_exact_sequence_distribution_at_its_temperature():
    model = tiny_lm()
    n, temperature = 6000, 0.7
    exact = exact_probabilities(model, temperature)
    assert min(exact.values()) > 5 / n, "every cell needs an expected count for the chi-square bound"
    torch.manual_seed(123)
    ids, calls = baseline.generate(model, n, 3, SPECIAL["bos"], temperature)
    assert calls == 2  # NFE = L - 1: the prefill on BOS, then one cached call per further token
    ids = ids.numpy()
    assert ids.shape == (n, 3) and (ids[:, 0] == SPECIAL["bos"]).all()
    bound = scipy.stats.chi2.ppf(1 - 1e-6, df=8)  # false alarm 1e-6
    assert chi_square(ids, exact) < bound
    # the bound has power: the same samples are rejected against the temperature-1 distribution
    assert chi_square(ids, exact_probabilities(model, 1.0)) > 5 * bound


def test_generate_is_reproducible_from_the_seed():
    model = tiny_lm()
    torch.manual_seed(7)
    a, _ = baseline.generate(model, 50, 3, 0, 1.0)
    torch.manual_seed(7)
    b, _ = baseline.generate(model, 50, 3, 0, 1.0)
    torch.manual_seed(8)
    c, _ = baseline.generate(model, 50, 3, 0, 1.0)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(workspace):
    cfg = tiny_cfg(steps=60, checkpoint_every=20)
    cfg["sampling"]["batch_size"] = 4
    info = baseline.train_baseline(cfg, workspace / "tokens", workspace / "tokenizer", workspace / "baseline")
    return cfg, info


def test_baseline_trains_on_the_teachers_budget_and_learns(workspace, trained):
    cfg, info = trained
    t = cfg["teacher"]
    assert info["steps"] == t["steps"] and info["tokens_seen"] == t["steps"] * t["batch_size"] * L
    # the repeat language over the L - 1 scored tokens: a perfect model pays log 40 once (perplexity 40^(1/15) ~ 1.3),
    # a unigram model about log 40 on each of 14 words (perplexity ~ 31)
    assert info["heldout_ppl"] < 10.0, info
    model, tokenizer, loaded = judge.load_judge(workspace / "baseline", baseline.INFO)
    assert loaded["provenance"]["config"]["teacher"]["steps"] == t["steps"]
    assert model.config.n_embd == cfg["model"]["hidden"] and model.config.n_layer == cfg["model"]["layers"]
    assert model.config.n_positions == L and model.config.vocab_size == len(tokenizer)
    assert (workspace / "baseline" / "model" / "model.safetensors").exists()


def test_killed_run_resumes_to_the_same_weights(workspace, tmp_path):
    cfg = tiny_cfg(steps=12)
    cfg["model"]["dropout"] = 0.1  # dropout masks are drawn from (seed, step): they repeat after a resume too
    a = baseline.train_baseline(cfg, workspace / "tokens", workspace / "tokenizer", tmp_path / "a")
    assert baseline.train_baseline(cfg, workspace / "tokens", workspace / "tokenizer", tmp_path / "b",
                                   max_steps=6) is None  # "killed" two steps after the step-4 checkpoint
    assert not (tmp_path / "b" / "model").exists()
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["step_000000004"]
    b = baseline.train_baseline(cfg, workspace / "tokens", workspace / "tokenizer", tmp_path / "b")
    wa, wb = (load_file(str(tmp_path / r / "model" / "model.safetensors")) for r in "ab")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=0.0, rtol=0.0, msg=k)
    assert a["loss_curve"] == b["loss_curve"] and a["heldout_ppl"] == b["heldout_ppl"]
    assert a["resumed_from_step"] is None and b["resumed_from_step"] == 4


def test_seeded_apart_from_teacher_and_judge(trained):
    cfg, info = trained
    # the judge seeds with `seed` (init) and `seed + 1` (batches); the teacher with runtime.seed(seed, stream)
    assert info["seed"] == runtime.seed(cfg["seed"], baseline.BASELINE_SEED_STREAM)
    assert info["seed"] not in (cfg["seed"], cfg["seed"] + 1, runtime.seed(cfg["seed"], runtime.INIT),
                                runtime.seed(cfg["seed"], runtime.DATA_ORDER))


# ---------------------------------------------------------------------------------------------- samples
def test_sample_files_in_the_diffusion_format_with_counted_nfe(workspace, trained):
    cfg, _ = trained
    stem = workspace / "samples" / "gpt2" / f"ar_float32_nfe{L - 1}_T1.00"
    meta = baseline.sample_to_files(cfg, workspace / "baseline", workspace / "tokenizer", stem, 1.0, 10)
    ids = np.load(f"{stem}.npy")
    assert ids.shape == (10, L) and (ids[:, 0] == 0).all()
    assert meta["nfe"] == L - 1 and meta["network_calls"] == 3 * (L - 1)  # 3 batches of <= 4
    assert meta["sampler"] == "ar" and meta["precision"] == "float32" and meta["cache"] is True
    texts = [json.loads(line)["text"] for line in open(f"{stem}.jsonl")]
    assert len(texts) == 10
    fields = evaluate.sample_fields(stem, json.loads(open(f"{stem}.json").read()))
    assert (fields["model"], fields["sampler"], fields["precision"], fields["nfe"], fields["temperature"]) == \
        ("gpt2", "ar", "float32", L - 1, 1.0)
    again = baseline.sample_to_files(cfg, workspace / "baseline", workspace / "tokenizer", stem, 1.0, 10)
    assert np.array_equal(np.load(f"{stem}.npy"), ids) and again["seed"] == meta["seed"]


def test_bench_section_times_baseline_teacher_and_student(workspace, trained, tmp_path):
    cfg, _ = trained
    cfg["distill"]["nfe"] = [2, 4]
    out = bench.run_bench(cfg, workspace / "tokens", workspace / "tokenizer", tmp_path, sections=["baseline"],
                          baseline_dir=workspace / "baseline")["baseline"]
    assert out["baseline"]["network_calls"] == L - 1 and out["teacher_full_nfe"]["nfe"] == L
    assert [r["nfe"] for r in out["student"]] == [2, 4]
    for r in out["student"]:
        ratio = r["student"]["samples_per_s"] / out["baseline"]["samples_per_s"]
        assert r["speedup_vs_baseline"] == pytest.approx(ratio)
    assert out["baseline_vs_teacher_full"] == pytest.approx(
        out["baseline"]["samples_per_s"] / out["teacher_full_nfe"]["samples_per_s"])
    assert json.loads((tmp_path / "baseline.json").read_text())["baseline"]["nfe"] == L - 1


# ---------------------------------------------------------------------------------------------- table, figures
BASELINE_ROWS = [eval_json("gpt2", "ar", "float32", 127, t, ppl, h)
                 for t, ppl, h in [(1.0, 55.5, 4.9), (0.8, 30.25, 4.5), (0.9, 41.0, 4.7)]]


def test_baseline_rows_pass_through_table_and_figures(tmp_path):
    paths = []
    for i, ev in enumerate([*FIXTURE, *BASELINE_ROWS, REFERENCE]):
        paths.append(tmp_path / "eval" / f"{i}.json")
        paths[-1].parent.mkdir(exist_ok=True)
        paths[-1].write_text(json.dumps(ev))
    path = tmp_path / "results.csv"
    tables.write_csv(path, tables.build_table(paths))
    df = tables.read_table(path)
    ar = df[df["model"] == "gpt2"]
    assert list(ar["sampler"]) == ["ar"] * 3 and list(ar["nfe"]) == [127] * 3 and list(ar["variant"]) == [""] * 3
    main = tables.main_table_md(df)
    line = next(x for x in main.splitlines() if x.startswith("| gpt2 ar float32"))
    assert "55.50 (4.900)" in line and "30.25" not in main  # T = 1 in the table, the sweep only in the frontier
    assert "NFE 127" in main
    fig = tables.plot_metric_vs_nfe(df, "gen_ppl", "gen-PPL", log_y=True)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "gpt2 ar float32" in labels
    fig = tables.plot_ppl_vs_entropy(df)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "gpt2 ar float32 NFE 127, T sweep" in labels
    assert "gpt2" not in tables.ablation_table_md(df)
    tables.draw_all(df, tmp_path / "figures", tmp_path)
    assert (tmp_path / "figures" / "ppl_vs_entropy.png").stat().st_size > 5000


# ---------------------------------------------------------------------------------------------- workflow
@pytest.mark.parametrize("preset", [None, "paper.yaml"])
def test_workflow_plans_the_baseline(preset, tmp_path):
    args = ["--dry-run", "--config", f"results={tmp_path}"]
    if preset:
        args = ["--configfile", str(REPO / "config.yaml"), str(REPO / "presets" / preset), *args]
    out = run_snakemake(args).stdout
    seq_len = 1024 if preset else 64
    assert "rule train_baseline:" in out
    for t in ("0.70", "0.80", "0.90", "1.00"):
        assert f"{tmp_path}/eval/gpt2/ar_float32_nfe{seq_len - 1}_T{t}.json" in out
    assert "rule sample_baseline:" in out


def test_pretrained_baseline_from_a_local_directory(workspace, tmp_path):
    """`baseline.pretrained` names a model directory: nothing is trained, the pointer loads through the judge's
    loader, its held-out perplexity is measured, and it samples like a trained one."""
    torch.manual_seed(0)
    model = judge.new_gpt2(42, {"bos": 0, "eos": 0, "pad": 1}, L, 16, 1, 2)
    model.save_pretrained(str(tmp_path / "hub"))
    AutoTokenizer.from_pretrained(str(workspace / "tokenizer")).save_pretrained(str(tmp_path / "hub"))
    cfg = tiny_cfg()
    cfg["baseline"]["pretrained"] = str(tmp_path / "hub")
    info = baseline.prepare_pretrained_baseline(cfg, workspace / "tokens", tmp_path / "out")
    assert not info["trained"] and info["path"] == str((tmp_path / "hub").resolve())
    assert 20 < info["heldout_ppl"] < 80  # an untrained model over 42 ids: about uniform
    assert not (tmp_path / "out" / "model").exists()
    meta = baseline.sample_to_files(cfg, tmp_path / "out", workspace / "tokenizer", tmp_path / "s" / "x", 1.0, 4)
    assert meta["weights"] == "pretrained" and meta["network_calls"] == L - 1

    cfg["data"]["seq_len"] = 2 * L  # longer than the model's context
    with pytest.raises(Exception, match="context"):
        baseline.prepare_pretrained_baseline(cfg, workspace / "tokens", tmp_path / "out2")
