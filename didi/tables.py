"""The tidy results table, and every figure and markdown table drawn from it (and only from it).

`didi table` writes one row per evaluation JSON (`didi evaluate` / `didi reference`), in the order the files are
given (the workflow lists the teacher first, then the students in `distill.run` order), with exactly these columns:

    model                 "teacher", "student-<variant>-seed<seed>" (one distillation), "student-<variant>" (its
                          seeds pooled), "gpt2" (the AR baseline) or "reference" (held-out text)
    variant               distillation variant ("" for the teacher, the AR baseline and the reference)
    distill_seed          distillation seed of a student row (empty for pooled rows and every other model)
    sampler               "ancestral", "rgas" or "ar" (the AR baseline: one token per call) ("" for the reference)
    precision             categorical sampling precision, "float64" or "float32" ("" for the reference)
    nfe                   generator network function evaluations (steps K); empty for the reference
    temperature           softmax temperature of the sampler; empty for the reference
    seed                  sampling seed (the reference: the seed that picked its blocks)
    gen_ppl               judge perplexity, corpus-level token-weighted exp(sum NLL / sum tokens)
    gen_ppl_lo, gen_ppl_hi  bootstrap percentile confidence interval (resampling samples), evaluation.confidence
    entropy               mean over samples of the per-sample unigram entropy of the generated ids (nats)
    entropy_std           sample standard deviation of that per-sample entropy
    mauve                 MAUVE against held-out real text on judge features (the reference: set a vs set b)
    num_samples           samples scored (every generated sample)
    scored_tokens         judge tokens scored in total
    network_calls_per_batch  generator forward passes actually run per sampling batch (<= nfe with the
                          unchanged-state cache; a file of 2 batches at NFE 8 makes 16 calls, 8 per batch)
    disc_forward_calls    discriminator forward passes over the whole file (RGAS; 0 otherwise)
    disc_backward_calls   discriminator backward passes over the whole file (RGAS gradient tilting; 0 otherwise)
    sampling_seconds      wall-clock of sampling
    tokens_per_s          generated tokens per second of sampling wall-clock
    judge                 judge identifier (hub name/directory, or local-gpt2-<layers>L-<width>d)
    weights               generator weights sampled: "ema" or "raw"
    config_hash           hash of the sampling config and the evaluation config of the row
    git_commit            code version that computed the evaluation
    gen_nll               judge NLL per scored token (nats) = log gen_ppl; under `judge.kind: exact` the true NLL
    nll_floor             exact judge only: the data's own NLL per token (no model beats it in expectation)
    invalid_tokens        exact judge only: non-state ids at chain positions (each scored log(leak / V))
    seeds                 pooled rows: the distillation seeds pooled (one row per seed stands above them)
    gen_ppl_seed_min, gen_ppl_seed_max  pooled rows: the lowest and highest seed's gen_ppl (the seed spread)

A pooled row (`pooled_rows`, one per variant, sampler, precision, NFE and temperature with two or more seeds) holds
the mean over seeds: gen_ppl = exp(mean gen_nll), entropy and MAUVE the means; its bootstrap interval is empty
(each seed's row has its own).

`didi figures` reads that CSV and writes figures/{gen_ppl_vs_nfe, entropy_vs_nfe, ppl_vs_entropy, precision_regime,
ablation}.{png,pdf}
and tables/{headline_table, main_table, ablation_table, seeds_table}.md (markdown via pandas `to_markdown`, i.e. `tabulate`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from didi import config, io

log = logging.getLogger("didi.tables")

COLUMNS = [
    "model", "variant", "distill_seed", "sampler", "precision", "nfe", "temperature", "seed",
    "gen_ppl", "gen_ppl_lo", "gen_ppl_hi", "entropy", "entropy_std", "mauve",
    "num_samples", "scored_tokens", "network_calls_per_batch", "disc_forward_calls", "disc_backward_calls",
    "sampling_seconds", "tokens_per_s", "judge", "weights", "config_hash", "git_commit",
    "gen_nll", "nll_floor", "invalid_tokens", "seeds", "gen_ppl_seed_min", "gen_ppl_seed_max",
]
# network_calls_per_batch is a mean over batches (a cached step calls no network), so it stays a float
INTEGER_COLUMNS = ["nfe", "distill_seed", "seed", "seeds", "num_samples", "scored_tokens", "disc_forward_calls", "disc_backward_calls",
                   "invalid_tokens"]
FIGURES = ["gen_ppl_vs_nfe", "entropy_vs_nfe", "ppl_vs_entropy", "precision_regime", "ablation"]
TABLES = ["headline_table", "main_table", "ablation_table", "seeds_table"]


def calls_per_batch(ev: dict) -> float | None:
    """Generator calls per sampling batch: the sample file's own figure, or its total over its batches."""
    if "network_calls_per_batch" in ev:
        return ev["network_calls_per_batch"]
    if "network_calls" in ev and ev.get("batch_size"):
        return ev["network_calls"] / -(-ev["num_samples"] // ev["batch_size"])
    return ev.get("nfe")


def _first(d: dict, *keys, default=None):
    """The first of `keys` present in `d` (sample files name a few counters in more than one way)."""
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return default


def row_from_eval(ev: dict) -> dict:
    """One results-table row from an evaluation JSON."""
    prov = ev.get("provenance", {})
    sample_prov = ev.get("sample_provenance")
    # The row depends on how the samples were made and how they were judged: hash both configs together.
    if sample_prov:
        config_hash = io.config_hash([sample_prov.get("config"), prov.get("config")])
    else:
        config_hash = prov.get("config_hash")
    is_reference = ev.get("model") == "reference"
    row = {
        "model": ev["model"],
        "variant": ev.get("variant") or "",
        "distill_seed": ev.get("distill_seed"),
        "sampler": ev.get("sampler") or "",
        "precision": ev.get("precision") or "",
        "nfe": None if ev.get("nfe") is None else int(ev["nfe"]),
        "temperature": None if ev.get("temperature") is None else float(ev["temperature"]),
        "seed": ev.get("seed"),
        "gen_ppl": ev["gen_ppl"],
        "gen_ppl_lo": ev.get("gen_ppl_lo"),
        "gen_ppl_hi": ev.get("gen_ppl_hi"),
        "entropy": ev["entropy"],
        "entropy_std": ev.get("entropy_std"),
        "mauve": ev.get("mauve"),
        "num_samples": ev["num_samples"],
        "scored_tokens": ev["scored_tokens"],
        "network_calls_per_batch": None if is_reference else calls_per_batch(ev),
        "disc_forward_calls": _first(ev, "disc_forward_calls", "discriminator_forward_calls",
                                     default=None if is_reference else 0),
        "disc_backward_calls": _first(ev, "disc_backward_calls", "discriminator_backward_calls",
                                      default=None if is_reference else 0),
        "sampling_seconds": _first(ev, "sampling_seconds", "seconds"),
        "tokens_per_s": _first(ev, "tokens_per_s", "tokens_per_second"),
        "judge": ev.get("judge", ""),
        "weights": ev.get("weights") or "",
        "config_hash": config_hash or "",
        "git_commit": prov.get("git_commit", ""),
        "gen_nll": ev.get("gen_nll", float(np.log(ev["gen_ppl"]))),
        "nll_floor": ev.get("nll_floor"),
        "invalid_tokens": ev.get("invalid_tokens"),
        "seeds": None, "gen_ppl_seed_min": None, "gen_ppl_seed_max": None,
    }
    assert list(row) == COLUMNS
    return row


def build_table(eval_paths: list[str | Path], reference: str | Path | None = None) -> pd.DataFrame:
    paths = list(eval_paths) + ([reference] if reference else [])
    rows = typed(pd.DataFrame([row_from_eval(io.read_json(p)) for p in paths], columns=COLUMNS))
    return typed(pd.concat([rows, pooled_rows(rows)], ignore_index=True)) if len(rows) else rows


POOL_KEYS = ["variant", "sampler", "precision", "nfe", "temperature", "weights"]


def pooled_rows(df: pd.DataFrame) -> pd.DataFrame:
    """One row per student setting (POOL_KEYS) distilled with two or more seeds: the mean over its seeds (gen_ppl
    as exp of the mean NLL per token) and the seed spread; counts are summed, timings averaged."""
    seeded = df[df["distill_seed"].notna()]
    out = []
    for _, g in seeded.groupby(POOL_KEYS, sort=False, dropna=False):
        if g["distill_seed"].nunique() < 2:
            continue
        first = g.iloc[0]
        row = {c: first[c] for c in COLUMNS}
        nll = float(g["gen_nll"].mean())
        row.update({
            "model": f"student-{first['variant']}", "distill_seed": None, "gen_ppl": float(np.exp(nll)),
            "gen_ppl_lo": None, "gen_ppl_hi": None, "gen_nll": nll, "entropy": float(g["entropy"].mean()),
            "entropy_std": None, "mauve": float(g["mauve"].mean()) if g["mauve"].notna().all() else None,
            "num_samples": int(g["num_samples"].sum()), "scored_tokens": int(g["scored_tokens"].sum()),
            "network_calls_per_batch": float(g["network_calls_per_batch"].mean()),
            "disc_forward_calls": int(g["disc_forward_calls"].sum()),
            "disc_backward_calls": int(g["disc_backward_calls"].sum()),
            "sampling_seconds": float(g["sampling_seconds"].mean()), "tokens_per_s": float(g["tokens_per_s"].mean()),
            "invalid_tokens": None if g["invalid_tokens"].isna().all() else int(g["invalid_tokens"].sum()),
            "seeds": int(g["distill_seed"].nunique()), "gen_ppl_seed_min": float(g["gen_ppl"].min()),
            "gen_ppl_seed_max": float(g["gen_ppl"].max()),
        })
        out.append(row)
    return pd.DataFrame(out, columns=COLUMNS)


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """Counts as nullable integers (the reference row has no NFE), so the CSV says 8, not 8.0."""
    return df.astype({col: "Int64" for col in INTEGER_COLUMNS})


def write_csv(path: str | Path, df: pd.DataFrame) -> None:
    with io.atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def read_table(path: str | Path) -> pd.DataFrame:
    # Empty strings (teacher variant, reference sampler) must stay strings, not NaN.
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    for col in ("model", "variant", "sampler", "precision", "judge", "weights", "config_hash", "git_commit"):
        df[col] = df[col].astype(object).fillna("").astype(str)  # an all-empty column is read as float64
    return typed(df)


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--evals", nargs="+", required=True, help="evaluation JSON files")
    parser.add_argument("--reference", help="reference metrics.json (real held-out text)")
    parser.add_argument("--out", required=True, help="results CSV")
    config.add_arguments(parser)


def run_table(args: argparse.Namespace) -> int:
    cfg = config.from_args(args)
    df = build_table(args.evals, args.reference)
    write_csv(args.out, df)
    io.write_provenance_beside(args.out, cfg)
    log.info("results table: %d rows -> %s", len(df), args.out)
    return 0


# ---------------------------------------------------------------------------------------------- selections
def generated(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["model"] != "reference"]


def at_temperature_one(df: pd.DataFrame) -> pd.DataFrame:
    return df[np.isclose(df["temperature"].astype(float), 1.0)]


def reference_row(df: pd.DataFrame):
    ref = df[df["model"] == "reference"]
    return ref.iloc[0] if len(ref) else None


def line_label(model: str, sampler: str, precision: str) -> str:
    return f"{model} {sampler} {precision}"


def one_row_per_setting(df: pd.DataFrame) -> pd.DataFrame:
    """The table without the per-seed student rows of settings that have a pooled row (figures draw the pool)."""
    pooled = df[df["seeds"].notna()]
    if pooled.empty:
        return df
    keys = set(pooled[POOL_KEYS].astype(str).itertuples(index=False, name=None))
    in_pool = np.array([k in keys for k in df[POOL_KEYS].astype(str).itertuples(index=False, name=None)], dtype=bool)
    return df[~(df["distill_seed"].notna().to_numpy() & in_pool)]


STYLES = {  # (model kind, sampler) -> colour and marker: every kind of line distinct without its label
    ("teacher", "ancestral"): ("tab:blue", "o"), ("student", "ancestral"): ("tab:orange", "s"),
    ("student", "rgas"): ("tab:green", "^"), ("sdtt", "ancestral"): ("tab:purple", "D"),
    ("gpt2", "ar"): ("tab:red", "*"), ("exact", "ancestral"): ("tab:gray", "v"),
}


def line_style(model: str, sampler: str, precision: str) -> dict:
    """matplotlib keywords of a line: colour and marker by kind of model and sampler, dashed for float32."""
    kind = "sdtt" if model.startswith("student-sdtt") else model.split("-")[0]
    colour, marker = STYLES.get((kind, sampler), (None, "o"))
    style = {"marker": marker, "markersize": 12 if marker == "*" else 6,
             "linestyle": "--" if precision == "float32" else "-"}
    return {**style, "color": colour} if colour else style


def fmt_cell(ppl: float, entropy: float) -> str:
    return f"{ppl:.2f} ({entropy:.3f})"


# ---------------------------------------------------------------------------------------------- figures
def save_figure(fig, out_dir: Path, name: str) -> None:
    for ext in ("png", "pdf"):
        with io.atomic_path(out_dir / f"{name}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} rows in the results table", ha="center", va="center", transform=ax.transAxes)


def headline_precision(df: pd.DataFrame) -> str:
    """The sampling precision of the headline figures: the students' (sampled at diffusion.sampling_precision
    only), else the first generated row's."""
    rows = generated(df)
    rows = rows[rows["sampler"] != "ar"]
    students = rows[rows["model"].str.startswith("student-")]
    return (students if len(students) else rows)["precision"].iloc[0] if len(rows) else "float64"


def plot_metric_vs_nfe(df: pd.DataFrame, metric: str, ylabel: str, log_y: bool, precisions: str = "headline"):
    """One line per (model, sampler, precision) at temperature 1; gen-PPL gets CI error bars; reference line.
    precisions "headline": the students' precision and the AR baseline (the other regime has a figure of its own);
    "regimes": the models sampled at more than one precision, each precision a line (float32 dashed)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    rows = at_temperature_one(generated(one_row_per_setting(df)))
    if precisions == "headline":
        rows = rows[(rows["precision"] == headline_precision(df)) | (rows["sampler"] == "ar")]
    else:
        multi = rows.groupby(["model", "sampler"])["precision"].transform("nunique") > 1
        rows = rows[multi]
    for (model, sampler, precision), g in rows.groupby(["model", "sampler", "precision"], sort=False):
        g = g.sort_values("nfe")
        yerr = None
        if metric == "gen_ppl" and g["gen_ppl_lo"].notna().all():
            yerr = np.vstack([g["gen_ppl"] - g["gen_ppl_lo"], g["gen_ppl_hi"] - g["gen_ppl"]])
        label = line_label(model, sampler, precision)
        pooled = g["seeds"].notna().all()
        if pooled:
            label += f" (mean of {int(g['seeds'].iloc[0])} seeds)"
        line = ax.errorbar(g["nfe"], g[metric], yerr=yerr, capsize=3, label=label, **line_style(model, sampler, precision))
        if pooled and metric == "gen_ppl":  # the seed spread: lowest to highest seed
            ax.fill_between(g["nfe"].astype(float), g["gen_ppl_seed_min"], g["gen_ppl_seed_max"],
                            color=line.lines[0].get_color(), alpha=0.2, linewidth=0)
    ref = reference_row(df)
    if ref is not None:
        ax.axhline(ref[metric], color="black", linestyle="--", linewidth=1, label="real text (reference)")
    if rows.empty:
        _empty(ax, "generated")
    else:
        ax.set_xscale("log", base=2)
        nfes = list(rows.loc[rows["sampler"] != "ar", "nfe"].unique())
        # the AR baseline's NFE (L - 1) gets a tick only where it would not print on top of another (L)
        nfes = sorted(nfes + [k for k in rows.loc[rows["sampler"] == "ar", "nfe"].unique()
                              if all(abs(k - t) > 0.1 * t for t in nfes)])
        ax.set_xticks(nfes, [str(int(k)) for k in nfes])
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("NFE (generator network calls)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: lines stay visible
    return fig


def plot_ppl_vs_entropy(df: pd.DataFrame):
    """Temperature sweeps as labelled lines, the other generated rows as points, the reference as a star."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    rows = generated(df)
    keys = ["model", "sampler", "precision", "nfe"]
    swept = rows.groupby(keys, sort=False)["temperature"].transform("nunique") > 1
    for (model, sampler, precision, nfe), g in rows[swept].groupby(keys, sort=False):
        g = g.sort_values("temperature")
        label = f"{line_label(model, sampler, precision)} NFE {int(nfe)}, T sweep"
        ax.plot(g["entropy"], g["gen_ppl"], marker="o", label=label)
        for _, r in g.iterrows():
            ax.annotate(f"T={r['temperature']:.2f}", (r["entropy"], r["gen_ppl"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    for (model, sampler, precision), g in at_temperature_one(rows[~swept]).groupby(keys[:3], sort=False):
        ax.scatter(g["entropy"], g["gen_ppl"], s=14, label=f"{line_label(model, sampler, precision)} (T=1, NFE sweep)")
        for _, r in g.iterrows():
            ax.annotate(str(int(r["nfe"])), (r["entropy"], r["gen_ppl"]), textcoords="offset points", xytext=(3, -8),
                        fontsize=6, color="gray")
    ref = reference_row(df)
    if ref is not None:
        ax.scatter([ref["entropy"]], [ref["gen_ppl"]], marker="*", s=120, color="black", label="real text (reference)")
    if rows.empty:
        _empty(ax, "generated")
    ax.set_yscale("log")
    ax.set_xlabel("unigram entropy (nats)")
    ax.set_ylabel("generative perplexity")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def ablation_rows(df: pd.DataFrame) -> pd.DataFrame:
    rows = at_temperature_one(one_row_per_setting(df))
    rows = rows[rows["model"].str.startswith("student-")].copy()
    multi_precision = rows["precision"].nunique() > 1
    rows["label"] = [
        r.variant
        + (f" +{r.sampler.upper()}" if r.sampler != "ancestral" else "")
        + (f" {r.precision}" if multi_precision else "")
        for r in rows.itertuples()
    ]
    return rows


def plot_ablation(df: pd.DataFrame):
    """Grouped bars: NFE groups, one bar per student variant; gen-PPL (log, CI) and entropy panels."""
    import matplotlib.pyplot as plt

    rows = ablation_rows(df)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    if rows.empty:
        for ax in axes:
            _empty(ax, "student")
        return fig
    labels = list(dict.fromkeys(rows["label"]))
    nfes = sorted(rows["nfe"].unique())
    width = 0.8 / len(labels)
    ref = reference_row(df)
    # the teacher at the same NFEs (ancestral, the students' precision): the bar a student has to beat
    teacher = at_temperature_one(df[(df["model"] == "teacher") & (df["sampler"] == "ancestral")
                                    & df["precision"].isin(rows["precision"].unique())])
    teacher = teacher.drop_duplicates("nfe").set_index("nfe")
    panels = ((axes[0], "gen_ppl", "generative perplexity"), (axes[1], "entropy", "unigram entropy (nats)"))
    for ax, metric, ylabel in panels:
        for j, label in enumerate(labels):
            g = rows[rows["label"] == label].set_index("nfe").reindex(nfes)
            x = np.arange(len(nfes)) + (j - (len(labels) - 1) / 2) * width
            yerr = None
            if metric == "gen_ppl" and g["gen_ppl_lo"].notna().any():
                yerr = np.vstack([g["gen_ppl"] - g["gen_ppl_lo"], g["gen_ppl_hi"] - g["gen_ppl"]])
            ax.bar(x, g[metric], width=width, yerr=yerr, capsize=2, label=label)
        at = [(i, teacher.at[nfe, metric]) for i, nfe in enumerate(nfes) if nfe in teacher.index]
        if at:
            ax.hlines([y for _, y in at], [i - 0.45 for i, _ in at], [i + 0.45 for i, _ in at], color="black",
                      linewidth=2, label="teacher, same NFE")
        if ref is not None:
            ax.axhline(ref[metric], color="black", linestyle="--", linewidth=1, label="real text")
        ax.set_xticks(np.arange(len(nfes)), [str(int(k)) for k in nfes])
        ax.set_xlabel("NFE")
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_yscale("log")
    # Entropy differences between variants are small: the axis starts 0.5 nats below the lowest bar, not at 0.
    low = min(rows["entropy"].min(), ref["entropy"] if ref is not None else np.inf)
    axes[1].set_ylim(bottom=max(0.0, low - 0.5))
    handles, names = axes[0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.12, 1, 1))  # room below the axes for the legend
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 5), fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------- markdown
def nfe_pivot(rows: pd.DataFrame, index: str) -> pd.DataFrame:
    """Rows `index` x NFE columns, each cell "gen-PPL (entropy)"; rows keep their order in the table."""
    rows = rows.assign(cell=[fmt_cell(p, e) for p, e in zip(rows["gen_ppl"], rows["entropy"])])
    order = list(dict.fromkeys(rows[index]))
    table = rows.pivot(index=index, columns="nfe", values="cell").reindex(order).fillna("")
    table.columns = [f"NFE {int(k)}" for k in table.columns]
    table.index.name = index
    return table


def main_table_md(df: pd.DataFrame) -> str:
    rows = at_temperature_one(generated(df))
    lines = ["Generative perplexity (entropy, nats) at temperature 1, by model and NFE.", ""]
    if rows.empty:
        lines.append("(no generated rows in the results table)")
    else:
        label = [line_label(m, s, p) for m, s, p in zip(rows["model"], rows["sampler"], rows["precision"])]
        lines.append(nfe_pivot(rows.assign(label=label), "label").rename_axis("model sampler precision").to_markdown())
    ref = reference_row(df)
    if ref is not None:
        mauve = "" if pd.isna(ref["mauve"]) else f", MAUVE(a, b) {ref['mauve']:.3f}"
        lines += ["", f"Real held-out text (reference): gen-PPL {fmt_cell(ref['gen_ppl'], ref['entropy'])}{mauve}, "
                      f"{int(ref['num_samples'])} samples."]
    return "\n".join(lines + exact_nll_lines(df)) + "\n"


def exact_nll_lines(df: pd.DataFrame) -> list[str]:
    """Under the exact judge: gen-NLL (nats/token) by model and NFE, with the data's floor and invalid tokens."""
    floor = df["nll_floor"].dropna()
    rows = at_temperature_one(generated(df))
    if floor.empty or rows.empty:
        return []
    label = [line_label(m, s, p) for m, s, p in zip(rows["model"], rows["sampler"], rows["precision"])]
    rows = rows.assign(label=label, cell=[f"{n:.4f} [{int(i)}]" for n, i in zip(rows["gen_nll"],
                                                                              rows["invalid_tokens"].fillna(0))])
    order = list(dict.fromkeys(rows["label"]))
    table = rows.pivot(index="label", columns="nfe", values="cell").reindex(order).fillna("")
    table.columns = [f"NFE {int(k)}" for k in table.columns]
    ref = reference_row(df)
    real = "" if ref is None else f"; real held-out sequences: {ref['gen_nll']:.4f}"
    exact = (" Model `exact` is the chain's own exact denoiser sampled in K steps: its factorisation error alone, the "
             "best any denoiser does at K." if (rows["model"] == "exact").any() else "")
    return ["", f"Exact judge: true NLL per chain position (nats/token) [invalid tokens], by model and NFE. "
                f"The data's floor (its entropy per token): {floor.iloc[0]:.4f}{real}.{exact}", "",
            table.rename_axis("model sampler precision").to_markdown()]


def ablation_table_md(df: pd.DataFrame) -> str:
    rows = ablation_rows(df)
    lines = ["Distillation variants: generative perplexity (entropy, nats) at temperature 1, by NFE.", ""]
    if rows.empty:
        lines.append("(no student rows in the results table)")
    else:
        lines.append(nfe_pivot(rows, "label").rename_axis("variant").to_markdown())
    return "\n".join(lines) + "\n"


ENTROPY_TARGET = 0.98  # a student's entropy at least this share of the teacher's at K = L (docs/method.md)


def seed_targets(df: pd.DataFrame) -> pd.DataFrame:
    """Per distilled student (variant, seed, sampler) at temperature 1, the three targets against the teacher
    (ancestral, the students' precision), with K1 < K2 the students' two smallest NFEs and L the teacher's largest:
    `apart@K1`: its K1-step gen-PPL interval lies wholly below the teacher's at K1; `below_L@K2`: its K2-step gen-PPL
    is at most the teacher's at L; `entropy`: its lowest entropy over its NFEs is at least ENTROPY_TARGET x the
    teacher's at L. Empty when there are no seeded students or fewer than two student NFEs."""
    rows = at_temperature_one(generated(df))
    students = rows[rows["distill_seed"].notna()]
    if students.empty or students["nfe"].nunique() < 2:
        return pd.DataFrame()
    precision = students["precision"].iloc[0]
    teacher = rows[(rows["model"] == "teacher") & (rows["sampler"] == "ancestral") & (rows["precision"] == precision)]
    teacher = teacher.drop_duplicates("nfe").set_index("nfe")
    k1, k2 = sorted(students["nfe"].unique())[:2]
    if teacher.empty or k1 not in teacher.index:
        return pd.DataFrame()
    at_l = teacher.loc[teacher.index.max()]
    out = []
    for (variant, seed, sampler), g in students.groupby(["variant", "distill_seed", "sampler"], sort=False):
        g = g.set_index("nfe")
        if not {k1, k2} <= set(g.index):
            continue
        entropy_ratio = g["entropy"].min() / at_l["entropy"]
        entry = {
            "variant": variant, "seed": int(seed), "sampler": sampler,
            f"student@{k1}": f"{g.at[k1, 'gen_ppl']:.1f} [{g.at[k1, 'gen_ppl_lo']:.1f}, {g.at[k1, 'gen_ppl_hi']:.1f}]",
            f"teacher@{k1}": (f"{teacher.at[k1, 'gen_ppl']:.1f} [{teacher.at[k1, 'gen_ppl_lo']:.1f}, "
                              f"{teacher.at[k1, 'gen_ppl_hi']:.1f}]"),
            f"apart@{k1}": bool(g.at[k1, "gen_ppl_hi"] < teacher.at[k1, "gen_ppl_lo"]),
            f"student@{k2}": round(float(g.at[k2, "gen_ppl"]), 1),
            f"teacher@{int(at_l.name)}": round(float(at_l["gen_ppl"]), 1),
            f"below_L@{k2}": bool(g.at[k2, "gen_ppl"] <= at_l["gen_ppl"]),
            "entropy_ratio": round(float(entropy_ratio), 3),
            "entropy": bool(entropy_ratio >= ENTROPY_TARGET),
        }
        entry["all"] = entry[f"apart@{k1}"] and entry[f"below_L@{k2}"] and entry["entropy"]
        out.append(entry)
    return pd.DataFrame(out)


def seconds_per_sample(row) -> float:
    """Sampling wall-clock per sample of a row; a pooled row holds its seeds' mean seconds over their summed
    samples, so its seeds count back in."""
    return row["sampling_seconds"] / row["num_samples"] * (row["seeds"] if pd.notna(row["seeds"]) else 1)


def speedups(df: pd.DataFrame) -> pd.DataFrame:
    """Sampling wall-clock of the pooled (or only) student at each of its NFEs against the teacher at L and the AR
    baseline, from the same run: ratios of seconds per sample (the same sample count and batch size)."""
    rows = at_temperature_one(generated(one_row_per_setting(df)))
    students = rows[rows["model"].str.startswith("student-") & (rows["sampler"] == "ancestral")]
    teacher = rows[(rows["model"] == "teacher") & (rows["sampler"] == "ancestral")]
    if students.empty or teacher.empty:
        return pd.DataFrame()
    precision = students["precision"].iloc[0]
    teacher = teacher[teacher["precision"] == precision]
    at_l = teacher.loc[teacher["nfe"].idxmax()]
    ar = rows[rows["sampler"] == "ar"]
    out = []
    for _, r in students.iterrows():
        entry = {"model": r["model"], "nfe": int(r["nfe"]), "seconds_per_sample": seconds_per_sample(r),
                 f"vs_teacher@{int(at_l['nfe'])}": seconds_per_sample(at_l) / seconds_per_sample(r)}
        if len(ar):
            entry["vs_ar"] = seconds_per_sample(ar.iloc[0]) / seconds_per_sample(r)
        out.append(entry)
    return pd.DataFrame(out)


def headline_label(r) -> str:
    """What a headline row is, in words."""
    if r.model == "teacher":
        return "teacher (MDLM)"
    if r.sampler == "ar":
        return "AR baseline (GPT-2)"
    if r.model == "student-sdtt":
        return "SDTT student"
    seeds = f", mean of {int(r.seeds)} seeds" if pd.notna(r.seeds) else (
        f", seed {int(r.distill_seed)}" if pd.notna(r.distill_seed) else "")
    return f"DiDi-Instruct {r.variant}{' + RGAS' if r.sampler == 'rgas' else ''}{seeds}"


def headline_table_md(df: pd.DataFrame) -> str:
    """The README's table: teacher, each student (pooled over seeds where there are several), SDTT and the AR
    baseline at temperature 1 and the headline precision; each cell gen-PPL [95 % interval, or the lowest and highest
    seed for a pool] (entropy); the last column the sampling wall-clock per sample at the row's smallest NFE."""
    rows = at_temperature_one(generated(one_row_per_setting(df)))
    rows = rows[(rows["precision"] == headline_precision(df)) | (rows["sampler"] == "ar")]
    rows = rows[rows["model"].isin(["teacher", "gpt2", "student-sdtt"]) | rows["seeds"].notna()
                | (rows["model"].str.startswith("student-") & rows["distill_seed"].notna())]
    if rows.empty:
        return "(no generated rows in the results table)\n"
    cells, order, per_sample = {}, [], {}
    for _, r in rows.iterrows():
        label = headline_label(r)
        if label not in order:
            order.append(label)
        pooled = pd.notna(r.seeds)
        lo, hi = (r.gen_ppl_seed_min, r.gen_ppl_seed_max) if pooled else (r.gen_ppl_lo, r.gen_ppl_hi)
        span = f" [{lo:.1f}, {hi:.1f}]" if pd.notna(lo) else ""
        cells.setdefault(label, {})[int(r.nfe)] = f"{r.gen_ppl:.1f}{span} ({r.entropy:.2f})"
        seconds = seconds_per_sample(r)
        if int(r.nfe) <= min(cells[label]):
            per_sample[label] = f"{1000 * seconds:.1f} ms @ NFE {int(r.nfe)}"
    nfes = sorted({k for c in cells.values() for k in c})
    table = pd.DataFrame([[cells[lab].get(k, "") for k in nfes] + [per_sample[lab]] for lab in order],
                         index=order, columns=[f"NFE {k}" for k in nfes] + ["sampling time per sample"])
    return table.rename_axis("model").to_markdown() + "\n"


def seeds_table_md(df: pd.DataFrame) -> str:
    targets = seed_targets(df)
    lines = ["Each distillation seed against the teacher (temperature 1): gen-PPL [95 % interval] at the smallest "
             "student NFE with `apart` true when the intervals do not overlap, the next NFE against the teacher at "
             f"K = L, and the student's lowest entropy over its NFEs as a share of the teacher's at L (target >= "
             f"{ENTROPY_TARGET}).", ""]
    if targets.empty:
        return "\n".join(lines + ["(no seeded student rows in the results table)"]) + "\n"
    lines.append(targets.to_markdown(index=False))
    lines.append("")
    for (variant, sampler), g in targets.groupby(["variant", "sampler"], sort=False):
        apart = [c for c in g.columns if c.startswith("apart@")][0]
        lines.append(f"- {variant} {sampler}: all three targets on {int(g['all'].sum())} of {len(g)} seeds; below the "
                     f"teacher with intervals apart at NFE {apart.split('@')[1]} on {int(g[apart].sum())} of {len(g)}.")
    fast = speedups(df)
    if not fast.empty:
        lines += ["", "Sampling wall-clock per sample, as a speed-up (same run, same sample count):", "",
                  fast.to_markdown(index=False, floatfmt=".3g")]
    return "\n".join(lines) + "\n"


def draw_all(df: pd.DataFrame, out_dir: str | Path, tables_dir: str | Path, cfg: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir, tables_dir = Path(out_dir), Path(tables_dir)
    figures = {
        "gen_ppl_vs_nfe": plot_metric_vs_nfe(df, "gen_ppl", "generative perplexity", log_y=True),
        "entropy_vs_nfe": plot_metric_vs_nfe(df, "entropy", "unigram entropy (nats)", log_y=False),
        "ppl_vs_entropy": plot_ppl_vs_entropy(df),
        "precision_regime": plot_metric_vs_nfe(df, "gen_ppl", "generative perplexity", log_y=True,
                                               precisions="regimes"),
        "ablation": plot_ablation(df),
    }
    for name, fig in figures.items():
        save_figure(fig, out_dir, name)
        plt.close(fig)
    io.write_text(tables_dir / "main_table.md", main_table_md(df))
    io.write_text(tables_dir / "ablation_table.md", ablation_table_md(df))
    io.write_text(tables_dir / "seeds_table.md", seeds_table_md(df))
    io.write_text(tables_dir / "headline_table.md", headline_table_md(df))
    if cfg is not None:
        for name in TABLES:
            io.write_provenance_beside(tables_dir / f"{name}.md", cfg)


# ---------------------------------------------------------------------------------------------- training dynamics
DYNAMICS = [  # (history key of distill metrics.json, panel title)
    ("reward", "reward (discriminator log-odds)"), ("d_acc", "discriminator accuracy"),
    ("d_loss", "discriminator loss"), ("pg_loss", "policy-gradient loss"), ("kl", "KL to the teacher"),
    ("entropy", "student entropy"), ("grad_norm", "student grad norm"),
    ("reward_exact_corr", "reward vs likelihood (chain or judge; within-group corr.)"),
]


def moving_average(values, window: int) -> np.ndarray:
    """Trailing mean over the last `window` values (fewer at the start), so a curve keeps its length. NaN values
    (what a discriminator warm-up iteration does not compute) are skipped; a window of NaN only is NaN."""
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    cumsum = np.concatenate([[0.0], np.cumsum(np.where(finite, v, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    i = np.arange(1, len(v) + 1)
    start = np.maximum(0, i - window)
    n = counts[i] - counts[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (cumsum[i] - cumsum[start]) / n, np.nan)


def smooth_window(n: int) -> int:
    return max(1, n // 20)


def plot_dynamics(distill: dict[str, dict], teacher: dict | None, judge: dict | None, sdtt: dict | None = None):
    """Per-variant distillation curves over iterations (moving averages, the raw values faint), the teacher's and
    judge's loss curves, and SDTT's loss per round. `distill`: variant -> its metrics.json `history`; teacher, judge,
    sdtt: their metrics."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 4, figsize=(17, 10))
    axes = axes.ravel()
    for ax in axes[len(DYNAMICS) + 3:]:
        ax.set_axis_off()
    plot_sdtt_rounds(axes[len(DYNAMICS) + 2], sdtt)
    for ax, (key, title) in zip(axes, DYNAMICS):
        for j, (variant, history) in enumerate(distill.items()):
            values = history.get(key) or []
            if not values:
                continue
            x = np.arange(1, len(values) + 1)
            color = f"C{j % 10}"
            ax.plot(x, values, color=color, alpha=0.2, linewidth=0.7)
            ax.plot(x, moving_average(values, smooth_window(len(values))), color=color, label=variant)
        if not ax.lines:
            _empty(ax, key)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("distillation iteration")
        ax.grid(True, alpha=0.3)
    ax = axes[len(DYNAMICS)]
    if teacher and teacher.get("loss_curve"):
        steps, loss = zip(*teacher["loss_curve"])
        ax.plot(steps, loss, label="train loss (bound)")
    if teacher and teacher.get("eval_curve"):
        steps, nats = zip(*teacher["eval_curve"])
        ax.plot(steps, nats, marker="o", label="validation bound (EMA)")
    if judge and judge.get("block_nll_floor") is not None:
        ax.axhline(judge["block_nll_floor"], color="black", linestyle="--", linewidth=1, label="data floor (exact)")
    if not ax.lines:
        _empty(ax, "teacher")
    ax.set_yscale("log")  # the first steps sit far above the rest of the curve
    ax.set_title("teacher: nats/token", fontsize=9)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    ax = axes[len(DYNAMICS) + 1]
    if judge and judge.get("loss_curve"):
        steps, loss = zip(*judge["loss_curve"])
        ax.plot(steps, loss, label="train loss")
        ax.axhline(np.log(judge["heldout_ppl"]), color="black", linestyle="--", linewidth=1, label="held-out NLL")
        ax.set_yscale("log")
    elif judge and judge.get("nll_floor") is not None:
        ax.text(0.5, 0.5, f"exact judge: nothing trained\ndata floor {judge['nll_floor']:.4f} nats/token",
                ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        _empty(ax, "judge training")
    ax.set_title("judge: nats/token", fontsize=9)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    for ax in axes[len(DYNAMICS):len(DYNAMICS) + 2]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="lower center", ncol=min(len(names), 8), fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def plot_sdtt_rounds(ax, sdtt: dict | None) -> None:
    """SDTT's training loss over its steps, one colour per round (the teacher swapped at each boundary)."""
    rounds = (sdtt or {}).get("rounds") or []
    for r in rounds:
        loss = r.get("loss_curve") or []
        if loss:
            x = np.arange(r["start"] + 1, r["start"] + len(loss) + 1)
            ax.plot(x, loss, color=f"C{r['index'] % 10}", alpha=0.2, linewidth=0.7)
            ax.plot(x, moving_average(loss, smooth_window(len(loss))), color=f"C{r['index'] % 10}",
                    label=f"{r['teacher_nfe']} -> {r['student_nfe']} steps")
    if not ax.lines:
        _empty(ax, "SDTT")
    else:
        ax.legend(fontsize=7)
    ax.set_title("SDTT: divergence to the 2-step teacher, per round", fontsize=9)
    ax.set_xlabel("SDTT step")
    ax.grid(True, alpha=0.3)


def draw_dynamics(distill_metrics: list[str | Path], teacher: str | Path | None, judge: str | Path | None,
                  out_dir: str | Path, sdtt: str | Path | None = None) -> None:
    """figures/dynamics.{png,pdf} from distill/<variant>/seed<seed>/metrics.json, teacher/metrics.json and
    judge/judge.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = {}
    for path in distill_metrics:
        run = io.read_json(path)
        name = run.get("variant", Path(path).parent.name)
        histories[name if run.get("seed") is None else f"{name} seed {run['seed']}"] = run.get("history", {})
    fig = plot_dynamics(histories, io.read_json(teacher) if teacher else None, io.read_json(judge) if judge else None,
                        io.read_json(sdtt) if sdtt else None)
    save_figure(fig, Path(out_dir), "dynamics")
    plt.close(fig)


def add_dynamics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--distill", nargs="*", default=[], help="distill/<variant>/seed<seed>/metrics.json files")
    parser.add_argument("--teacher", help="teacher/metrics.json")
    parser.add_argument("--judge", help="judge/judge.json")
    parser.add_argument("--sdtt", help="distill/sdtt/metrics.json (SDTT's loss per round)")
    parser.add_argument("--out-dir", required=True, help="figures directory (writes dynamics.png and .pdf)")
    config.add_arguments(parser)


def run_dynamics(args: argparse.Namespace) -> int:
    draw_dynamics(args.distill, args.teacher, args.judge, args.out_dir, args.sdtt)
    log.info("training dynamics of %d distillation runs -> %s", len(args.distill), args.out_dir)
    return 0


def add_figures_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", required=True, help="results CSV (didi table)")
    parser.add_argument("--out-dir", required=True, help="figures directory")
    parser.add_argument("--tables-dir", help="markdown tables directory (default: the results CSV's directory)")
    config.add_arguments(parser)


def run_figures(args: argparse.Namespace) -> int:
    cfg = config.from_args(args)
    df = read_table(args.table)
    tables_dir = args.tables_dir or Path(args.table).parent
    draw_all(df, args.out_dir, tables_dir, cfg)
    log.info("figures -> %s, markdown tables -> %s (%d rows)", args.out_dir, tables_dir, len(df))
    return 0


# ---------------------------------------------------------------------------------------------- distillation cost
def cost_table(distill_metrics: list[dict], sdtt_metrics: dict | None, df: pd.DataFrame) -> pd.DataFrame:
    """Per distillation (each DiDi-Instruct seed, SDTT): its wall-clock, and its student's gen-PPL at the students'
    second NFE (16 by default) against the teacher's at K = L (the quality the paper's cost claim is about); sampled
    with the plain ancestral sampler at temperature 1."""
    rows = at_temperature_one(generated(df))
    rows = rows[rows["sampler"] == "ancestral"]
    teacher = rows[rows["model"] == "teacher"]
    students = rows[rows["model"].str.startswith("student-")]
    if teacher.empty or students.empty:
        return pd.DataFrame()
    teacher = teacher[teacher["precision"] == students["precision"].iloc[0]]
    at_l = teacher.loc[teacher["nfe"].idxmax()]
    k = sorted(students["nfe"].unique())[1] if students["nfe"].nunique() > 1 else students["nfe"].min()

    def quality(model: str) -> float:
        at = students[(students["model"] == model) & (students["nfe"] == k)]
        return float(at["gen_ppl"].iloc[0]) if len(at) else float("nan")

    runs = [(f"DiDi-Instruct {m.get('variant', '')} seed {m['seed']}", f"student-{m.get('variant')}-seed{m['seed']}",
             m) for m in distill_metrics]
    if sdtt_metrics:
        runs.append(("SDTT", "student-sdtt", sdtt_metrics))
    out = []
    for name, model, m in runs:
        ppl = quality(model)
        out.append({"distillation": name, "wall_clock_s": round(float(m["wall_clock_s"]), 1),
                    f"gen_ppl@{k}": round(ppl, 1), f"teacher@{int(at_l['nfe'])}": round(float(at_l["gen_ppl"]), 1),
                    f"reaches_teacher@{int(at_l['nfe'])}": bool(ppl <= at_l["gen_ppl"])})
    return pd.DataFrame(out)


def cost_table_md(distill_metrics: list[dict], sdtt_metrics: dict | None, df: pd.DataFrame) -> str:
    table = cost_table(distill_metrics, sdtt_metrics, df)
    lines = ["Distillation cost: wall-clock of each distillation (as it ran, `metrics.json`) and the quality its "
             "student reaches (plain ancestral sampling, temperature 1) against the teacher at K = L.", ""]
    if table.empty:
        return "\n".join(lines + ["(no distillation rows in the results table)"]) + "\n"
    lines.append(table.to_markdown(index=False))
    didi = table[table["distillation"].str.startswith("DiDi")]
    sdtt = table[table["distillation"] == "SDTT"]
    if len(didi) and len(sdtt):
        ratio = sdtt["wall_clock_s"].iloc[0] / didi["wall_clock_s"].mean()
        lines += ["", f"SDTT / DiDi-Instruct wall-clock per distillation: {ratio:.2f} (one run, the same machine; the "
                      f"paper claims DiDi-Instruct is more than 20x cheaper than SDTT at its scale)."]
    return "\n".join(lines) + "\n"


def add_cost_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--distill", nargs="*", default=[], help="distill/<variant>/seed<seed>/metrics.json files")
    parser.add_argument("--sdtt", help="distill/sdtt/metrics.json")
    parser.add_argument("--table", required=True, help="results CSV (didi table)")
    parser.add_argument("--out", required=True, help="markdown file")
    config.add_arguments(parser)


def run_cost(args: argparse.Namespace) -> int:
    cfg = config.from_args(args)
    text = cost_table_md([io.read_json(p) for p in args.distill], io.read_json(args.sdtt) if args.sdtt else None,
                         read_table(args.table))
    io.write_text(args.out, text)
    io.write_provenance_beside(args.out, cfg)
    log.info("distillation cost -> %s", args.out)
    return 0


COMMANDS = {
    "cost": (add_cost_arguments, run_cost),
    "table": (add_table_arguments, run_table),
    "figures": (add_figures_arguments, run_figures),
    "dynamics": (add_dynamics_arguments, run_dynamics),
}
