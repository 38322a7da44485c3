"""The results table from evaluation JSON files, and the figures and markdown tables drawn from it."""

import json

import pandas as pd
import pytest

from didi import cli, tables

CFG = json.dumps({"seed": 1})


def eval_json(model, sampler, precision, nfe, temperature, gen_ppl, entropy, **extra):
    variant = model.removeprefix("student-") if model.startswith("student-") else ""
    return {
        "model": model, "variant": variant, "sampler": sampler, "precision": precision, "nfe": nfe,
        "temperature": temperature, "seed": 5, "gen_ppl": gen_ppl, "gen_ppl_lo": gen_ppl * 0.9,
        "gen_ppl_hi": gen_ppl * 1.1, "entropy": entropy, "entropy_std": 0.05, "mauve": 0.5, "num_samples": 64,
        "scored_tokens": 64 * 127, "network_calls": nfe, "seconds": 2.5, "tokens_per_s": 1000.0,
        "judge": "local-gpt2-4L-256d", "weights": "ema",
        "sample_provenance": {"config": {"sampling": {"nfe": nfe}}},
        "provenance": {"config": {"seed": 1}, "config_hash": "evalhash", "git_commit": "abc123"},
        **extra,
    }


FIXTURE = [
    eval_json("teacher", "ancestral", "float64", 8, 1.0, 812.5, 4.812),
    eval_json("teacher", "ancestral", "float64", 16, 1.0, 401.25, 4.905),
    eval_json("teacher", "ancestral", "float32", 8, 1.0, 700.0, 4.7),
    eval_json("teacher", "ancestral", "float32", 16, 1.0, 350.0, 4.8),
    eval_json("teacher", "ancestral", "float64", 16, 0.8, 150.75, 4.3),
    eval_json("teacher", "ancestral", "float64", 16, 0.9, 250.0, 4.6),
    eval_json("student-baseline", "ancestral", "float64", 8, 1.0, 903.9, 4.95),
    eval_json("student-baseline", "ancestral", "float64", 16, 1.0, 411.5, 4.97),
    eval_json("student-full", "ancestral", "float64", 8, 1.0, 88.3, 4.61),
    eval_json("student-full", "ancestral", "float64", 16, 1.0, 44.04, 4.62),
    eval_json("student-full", "rgas", "float64", 8, 1.0, 62.2, 4.55, disc_forward_calls=16, disc_backward_calls=4),
    eval_json("student-full", "rgas", "float64", 16, 1.0, 38.2, 4.58, disc_forward_calls=32, disc_backward_calls=8),
]
REFERENCE = {
    "model": "reference", "variant": "", "sampler": "", "precision": "", "nfe": None, "temperature": None,
    "weights": "", "seed": 1, "gen_ppl": 33.33, "gen_ppl_lo": 30.0, "gen_ppl_hi": 36.0, "entropy": 5.012,
    "entropy_std": 0.1, "mauve": 0.987, "num_samples": 64, "scored_tokens": 8000, "judge": "local-gpt2-4L-256d",
    "provenance": {"config": {"seed": 1}, "config_hash": "refhash", "git_commit": "abc123"},
}


@pytest.fixture
def results_csv(tmp_path):
    paths = []
    for i, ev in enumerate(FIXTURE):
        path = tmp_path / "eval" / f"{i}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(ev))
        paths.append(str(path))
    ref = tmp_path / "reference" / "metrics.json"
    ref.parent.mkdir()
    ref.write_text(json.dumps(REFERENCE))
    out = tmp_path / "tables" / "results.csv"
    assert cli.main(["table", "--evals", *paths, "--reference", str(ref), "--out", str(out), "--config-json", CFG]) == 0
    return out


def test_results_table_has_exactly_the_documented_columns(results_csv):
    df = tables.read_table(results_csv)
    assert list(df.columns) == tables.COLUMNS
    # The module docstring documents exactly these columns, in this order ("    name[, name]  description").
    documented = []
    for line in tables.__doc__.splitlines():
        if line.startswith("    ") and not line.startswith("     "):
            documented += [name.strip() for name in line.strip().split("  ")[0].split(",")]
    assert documented == tables.COLUMNS
    assert len(df) == len(FIXTURE) + 1
    assert list(df["model"]) == [ev["model"] for ev in FIXTURE] + ["reference"]  # order of --evals, reference last
    assert (results_csv.parent / "results.csv.provenance.json").exists()


def test_results_table_values(results_csv):
    df = tables.read_table(results_csv)
    teacher = df.iloc[0]
    assert teacher["variant"] == "" and teacher["sampler"] == "ancestral" and teacher["nfe"] == 8
    assert teacher["gen_ppl"] == pytest.approx(812.5) and teacher["gen_ppl_hi"] == pytest.approx(812.5 * 1.1)
    assert teacher["sampling_seconds"] == 2.5 and teacher["disc_forward_calls"] == 0
    assert teacher["git_commit"] == "abc123" and len(teacher["config_hash"]) == 12
    assert df.iloc[0]["config_hash"] != df.iloc[1]["config_hash"]  # different sampling configs
    rgas = df[(df["model"] == "student-full") & (df["sampler"] == "rgas")]
    assert list(rgas["disc_forward_calls"]) == [16, 32] and list(rgas["variant"]) == ["full", "full"]
    ref = df[df["model"] == "reference"].iloc[0]
    assert ref["sampler"] == "" and pd.isna(ref["nfe"]) and ref["mauve"] == pytest.approx(0.987)
    assert ref["config_hash"] == "refhash"


def test_figures_and_markdown_from_fixture_table(results_csv, tmp_path):
    fig_dir = tmp_path / "figures"
    assert cli.main(["figures", "--table", str(results_csv), "--out-dir", str(fig_dir), "--config-json", CFG]) == 0
    for name in tables.FIGURES:
        png, pdf = (fig_dir / f"{name}.png").read_bytes(), (fig_dir / f"{name}.pdf").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000
        assert pdf.startswith(b"%PDF") and len(pdf) > 1000
    main = (results_csv.parent / "main_table.md").read_text()
    assert "| teacher ancestral float64" in main and "NFE 8" in main and "NFE 16" in main
    for cell in ("812.50 (4.812)", "401.25 (4.905)", "700.00 (4.700)", "62.20 (4.550)", "44.04 (4.620)"):
        assert cell in main
    assert "150.75" not in main  # temperature 0.8 belongs to the frontier, not the main table
    assert "33.33 (5.012)" in main and "0.987" in main  # the reference line
    ablation = (results_csv.parent / "ablation_table.md").read_text()
    lines = [line for line in ablation.splitlines() if line.startswith("| ")]
    assert lines[0].split("|")[1].strip() == "variant"
    rows = {line.split("|")[1].strip(): line for line in lines[1:]}
    assert list(rows) == ["baseline", "full", "full +RGAS"]
    assert "903.90 (4.950)" in rows["baseline"] and "411.50 (4.970)" in rows["baseline"]
    assert "88.30 (4.610)" in rows["full"] and "38.20 (4.580)" in rows["full +RGAS"]
    assert "812.50" not in ablation  # teacher rows are not in the ablation


def test_figures_without_student_or_reference_rows(tmp_path):
    """Early in a project only the teacher exists: every fixed output name is still written."""
    df = pd.DataFrame([tables.row_from_eval(ev) for ev in FIXTURE[:2]], columns=tables.COLUMNS)
    tables.draw_all(df, tmp_path / "figures", tmp_path / "tables")
    for name in tables.FIGURES:
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 0
    assert "no student rows" in (tmp_path / "tables" / "ablation_table.md").read_text()
    assert "812.50 (4.812)" in (tmp_path / "tables" / "main_table.md").read_text()


def test_ablation_figure_marks_the_teacher_at_the_students_nfes_and_precision(results_csv):
    """The bar a student must beat: the float64 teacher (not float32, not T = 0.8/0.9) at each student NFE."""
    for order in (1, -1):  # the row order of the table must not matter
        check_teacher_marks(tables.plot_ablation(pd.read_csv(results_csv).iloc[::order]))


def check_teacher_marks(fig):
    for ax, metric in zip(fig.axes, ("gen_ppl", "entropy")):
        marks = [c for c in ax.collections if c.get_label() == "teacher, same NFE"]
        assert len(marks) == 1
        segments = marks[0].get_segments()
        expected = {"gen_ppl": [812.5, 401.25], "entropy": [4.812, 4.905]}[metric]
        assert [round(float(s[0][1]), 3) for s in segments] == expected
        assert [round(float(s[:, 0].mean()), 6) for s in segments] == [0.0, 1.0]  # centred on the NFE groups


def test_network_calls_are_per_sampling_batch():
    """A file of 64 samples in batches of 32 at NFE 8 ran 16 generator calls: the table says 8 per batch."""
    summed = eval_json("teacher", "ancestral", "float64", 8, 1.0, 100.0, 4.0, network_calls=16, batch_size=32)
    assert tables.calls_per_batch(summed) == 8
    cached = {**summed, "network_calls": 13, "num_samples": 48}  # 2 batches (32 + 16), 13 calls with the cache
    assert tables.calls_per_batch(cached) == 6.5
    assert tables.calls_per_batch({**summed, "network_calls_per_batch": 7.5}) == 7.5  # the sample meta's own figure
    assert tables.calls_per_batch(eval_json("teacher", "ancestral", "float64", 8, 1.0, 1.0, 1.0)) == 8


def test_a_fractional_calls_per_batch_passes_through_the_table(tmp_path):
    """A cached sampler averages e.g. 6.5 calls per batch: the typed table keeps it (it once failed an integer cast)."""
    ev = {**eval_json("teacher", "ancestral", "float64", 8, 1.0, 100.0, 4.0, network_calls=13, batch_size=32),
          "num_samples": 48}
    path = tmp_path / "e.json"
    path.write_text(json.dumps(ev))
    table = tables.build_table([path])
    assert table.loc[0, "network_calls_per_batch"] == 6.5 and str(table["nfe"].dtype) == "Int64"


def seeded_eval(seed, sampler, nfe, gen_ppl, entropy, lo=None, hi=None, seconds=2.5):
    ev = eval_json(f"student-full-seed{seed}", sampler, "float64", nfe, 1.0, gen_ppl, entropy, variant="full",
                   distill_seed=seed, seconds=seconds)
    ev.update({k: v for k, v in (("gen_ppl_lo", lo), ("gen_ppl_hi", hi)) if v is not None})
    return ev


def seeded_table(tmp_path, evals):
    paths = []
    for i, ev in enumerate(evals):
        path = tmp_path / f"{i}.json"
        path.write_text(json.dumps(ev))
        paths.append(path)
    return tables.build_table(paths)


def test_pooled_rows_mean_the_seeds_nll_and_keep_their_spread(tmp_path):
    """Two seeds at gen-PPL 100 and 400: the pool is exp(mean log) = 200 (not the arithmetic 250), its spread 100 to
    400, its counts summed; one seed alone (NFE 16 here) gets no pooled row; non-students are left alone."""
    df = seeded_table(tmp_path, [
        eval_json("teacher", "ancestral", "float64", 8, 1.0, 150.0, 4.0),
        seeded_eval(5, "ancestral", 8, 100.0, 3.9), seeded_eval(6, "ancestral", 8, 400.0, 4.1),
        seeded_eval(5, "ancestral", 16, 90.0, 3.9)])
    pooled = df[df["seeds"].notna()]
    assert len(pooled) == 1
    row = pooled.iloc[0]
    assert row["model"] == "student-full" and pd.isna(row["distill_seed"]) and row["seeds"] == 2
    assert row["gen_ppl"] == pytest.approx(200.0) and row["entropy"] == pytest.approx(4.0)
    assert (row["gen_ppl_seed_min"], row["gen_ppl_seed_max"]) == (100.0, 400.0)
    assert row["num_samples"] == 128 and pd.isna(row["gen_ppl_lo"])
    assert list(df.loc[df["model"] == "student-full-seed5", "distill_seed"]) == [5, 5]
    # the figures draw the pool instead of its seeds: seed 5 at NFE 16 (no pool) stays
    drawn = tables.one_row_per_setting(df)
    assert set(drawn["model"]) == {"teacher", "student-full", "student-full-seed5"}
    assert list(drawn.loc[drawn["model"] == "student-full-seed5", "nfe"]) == [16]


def test_seed_targets_by_hand(tmp_path):
    """Teacher 140 [133, 147] at 8, 120 at 16, 100 at L = 64 (entropy 4.0). Seed 5: 120 [115, 125] at 8 (apart),
    95 at 16 (<= 100), entropy 3.95 (0.9875 >= 0.98): all three. Seed 6: 130 [124, 136] at 8 (overlaps 133), 101 at
    16 (> 100), entropy 3.9 (0.975): none."""
    teacher = [eval_json("teacher", "ancestral", "float64", k, 1.0, p, 4.0) for k, p in ((8, 140.0), (16, 120.0),
                                                                                          (64, 100.0))]
    teacher[0].update(gen_ppl_lo=133.0, gen_ppl_hi=147.0)
    df = seeded_table(tmp_path, teacher + [
        seeded_eval(5, "ancestral", 8, 120.0, 3.95, 115.0, 125.0), seeded_eval(5, "ancestral", 16, 95.0, 3.96),
        seeded_eval(6, "ancestral", 8, 130.0, 3.9, 124.0, 136.0), seeded_eval(6, "ancestral", 16, 101.0, 4.0)])
    targets = tables.seed_targets(df).set_index("seed")
    assert targets.loc[5, ["apart@8", "below_L@16", "entropy", "all"]].tolist() == [True, True, True, True]
    assert targets.loc[6, ["apart@8", "below_L@16", "entropy", "all"]].tolist() == [False, False, False, False]
    assert targets.loc[5, "entropy_ratio"] == pytest.approx(0.988, abs=1e-3)
    text = tables.seeds_table_md(df)
    assert "full ancestral: all three targets on 1 of 2 seeds" in text
    assert "intervals apart at NFE 8 on 1 of 2" in text


def test_speedups_are_ratios_of_seconds_per_sample(tmp_path):
    """The teacher at L takes 8 s per 64 samples, the AR baseline 4 s, each student seed 1 s: 8x and 4x."""
    df = seeded_table(tmp_path, [
        eval_json("teacher", "ancestral", "float64", 64, 1.0, 100.0, 4.0, seconds=8.0),
        eval_json("gpt2", "ar", "float32", 63, 1.0, 60.0, 4.0, seconds=4.0),
        seeded_eval(5, "ancestral", 8, 120.0, 3.95, seconds=1.0), seeded_eval(6, "ancestral", 8, 120.0, 3.95,
                                                                              seconds=1.0)])
    fast = tables.speedups(df).set_index("model")
    assert fast.loc["student-full", "vs_teacher@64"] == pytest.approx(8.0)
    assert fast.loc["student-full", "vs_ar"] == pytest.approx(4.0)


def test_cost_table_by_hand(tmp_path):
    """Two DiDi seeds of 100 s and 300 s, SDTT 400 s: the ratio is 400 / 200 = 2; each student's gen-PPL at the
    second student NFE (16) against the teacher at L (100): seed 5 (95) reaches it, seed 6 (101) and SDTT (130) not."""
    df = seeded_table(tmp_path, [
        eval_json("teacher", "ancestral", "float64", 64, 1.0, 100.0, 4.0),
        seeded_eval(5, "ancestral", 8, 120.0, 3.9), seeded_eval(5, "ancestral", 16, 95.0, 3.9),
        seeded_eval(6, "ancestral", 8, 125.0, 3.9), seeded_eval(6, "ancestral", 16, 101.0, 3.9),
        {**eval_json("student-sdtt", "ancestral", "float64", 16, 1.0, 130.0, 3.9), "variant": "sdtt"}])
    runs = [{"variant": "full", "seed": 5, "wall_clock_s": 100.0}, {"variant": "full", "seed": 6, "wall_clock_s": 300.0}]
    table = tables.cost_table(runs, {"wall_clock_s": 400.0}, df).set_index("distillation")
    assert table["reaches_teacher@64"].tolist() == [True, False, False]
    assert table.loc["SDTT", "gen_ppl@16"] == 130.0 and table.loc["DiDi-Instruct full seed 6", "gen_ppl@16"] == 101.0
    assert "wall-clock per distillation: 2.00" in tables.cost_table_md(runs, {"wall_clock_s": 400.0}, df)


def test_headline_table_pools_seeds_and_keeps_the_rest(tmp_path):
    """The pooled student shows its mean and seed range, not its seeds; the teacher its bootstrap interval; the
    float32 teacher rows stay out (the headline precision is the students'); time per sample from the pooled rows
    counts every seed's samples."""
    df = seeded_table(tmp_path, [
        eval_json("teacher", "ancestral", "float64", 8, 1.0, 140.0, 3.9, seconds=6.4),
        eval_json("teacher", "ancestral", "float32", 8, 1.0, 120.0, 3.8),
        seeded_eval(5, "ancestral", 8, 100.0, 3.9, seconds=1.28), seeded_eval(6, "ancestral", 8, 400.0, 4.1,
                                                                              seconds=1.28)])
    text = tables.headline_table_md(df)
    rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")]
                                              for line in text.splitlines()[2:])}
    assert rows["DiDi-Instruct full, mean of 2 seeds"] == ["200.0 [100.0, 400.0] (4.00)", "20.0 ms @ NFE 8"]
    assert rows["teacher (MDLM)"] == ["140.0 [126.0, 154.0] (3.90)", "100.0 ms @ NFE 8"]
    assert len(rows) == 2 and "120.0" not in text
