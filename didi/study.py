"""`didi study`: the distillation study (docs/distillation-study.md), on the exact world or on a text corpus.

    didi study --configfile config.yaml --configfile presets/synthetic.yaml --results results/synthetic \
        --rows docs/study/rows.yaml --out docs/study --jobs 2
    didi study --configfile config.yaml --results results --rows docs/study/sotu/rows.yaml --out docs/study/sotu

A row is a set of overrides of the `distill` section (its `method` switches included) and a list of seeds. For each
(row, seed) the results directory's teacher is distilled with `distill.run_distillation`, exactly as the `distill` rule
does, then the EMA and the raw student sample `samples` sequences at each K of `ks` (and K = L; only for the rows, or
`row/model`s, in `at_length` where the spec lists them) and the world's likelihood scores them (`World`): on the exact
world the chain itself (true NLL per chain token, `synthetic.score_blocks`), on a text corpus the workflow's judge (NLL
per judged token, the log of gen-PPL, by the evaluation's own `evaluate.gen_ppl`). Beside it: unigram entropy per sample
(`evaluate.entropy_stats`, as everywhere) and the entropy of each position's token distribution ACROSS samples, which
falls when a sampler collapses onto a few sequences (per-sample unigram entropy does not see that). The same likelihood
is the reward of `reward_source: exact` (the oracle row) and what the logged `reward_exact_corr` correlates the reward
with.
The teacher is scored the same way (row "teacher"), and on the exact world the chain's exact denoiser too (row
"exact_denoiser"): sampled in K steps it carries the factorisation error alone, the best any denoiser reaches at K.
Outputs: results.csv (one line per row, seed, model, K), histories.json (the per-iteration curves), table.md (means
over seeds, the shares of the teacher's few-step gap NLL(teacher@K) - NLL(teacher@L) and of its denoiser error
NLL(teacher@K) - NLL(exact@K) each row closes) and dynamics.png.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import yaml

from didi import config, data, evaluate, io, synthetic
from didi.diffusion import LogLinearSchedule, sample
from didi.distill import run_distillation
from didi.distill_cli import load_positives
from didi.model import load_dit, mask_id_of
from didi.objective import within_group_correlation
from didi.rgas import guidance, rgas_sample

log = logging.getLogger("didi.study")


def positional_entropy(ids: np.ndarray) -> float:
    """Mean over positions of the entropy (nats) of the tokens that the samples hold at that position."""
    return float(np.mean([data.entropy_of_counts(np.unique(column, return_counts=True)[1])
                          for column in np.asarray(ids).T]))


@dataclasses.dataclass
class World:
    """What a study measures against: the teacher, and a likelihood of token blocks, ids [n, L] ->
    {"nll" [n] sums (nats), "tokens" [n] scored tokens, "invalid" [n]}: the chain's, or the judge's."""
    teacher: torch.nn.Module
    mask_id: int
    likelihood: Callable[[np.ndarray], dict]
    references: dict  # rows scored without training: name -> (model column, model)
    evaluation: dict  # the config's evaluation section: the interval's resamples and confidence, MAUVE's settings
    seed: int
    reference_features: np.ndarray | None = None  # the judge's features of real text (MAUVE's Q); None: no MAUVE

    def reward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-likelihood per scored token of each sample [rows] (the oracle's reward)."""
        scored = self.likelihood(x.cpu().numpy())
        return torch.as_tensor(-scored["nll"] / np.maximum(scored["tokens"], 1), dtype=torch.float32,
                               device=x.device)

    def score(self, ids: np.ndarray) -> dict:
        """NLL per scored token, its gen-PPL interval (the evaluation's bootstrap over samples), entropies, and on a
        text world MAUVE against real text (evaluate's settings, on the judge's features)."""
        scored = self.likelihood(ids)
        lo, hi = evaluate.bootstrap_ppl(scored["nll"], scored["tokens"], self.evaluation["bootstrap"],
                                        self.evaluation["confidence"], self.seed)
        out = {"nll": float(scored["nll"].sum() / scored["tokens"].sum()), "ppl_lo": lo, "ppl_hi": hi,
               "invalid": int(scored["invalid"].sum()), "entropy": evaluate.entropy_stats(ids)["entropy"],
               "positional_entropy": positional_entropy(ids), "mauve": None}
        if self.reference_features is not None:
            n = min(len(ids), len(self.reference_features))
            out["mauve"] = evaluate.mauve_from_features(scored["features"][:n], self.reference_features[:n],
                                                        self.evaluation["mauve"], self.seed)["mauve"]
        return out


@dataclasses.dataclass
class LikelihoodReward:
    """The study's reward hook (distill.RewardHook): the world's log-likelihood per token of each student sample,
    x [rows, L] -> [rows] (World.reward). The reward's within-group correlation with it is logged
    (reward_exact_corr); with method["reward_source"] "exact" (the oracle row) it is the reward itself."""
    likelihood: Callable[[torch.Tensor], torch.Tensor]
    method: dict
    stats = ("reward_exact_corr",)

    def __call__(self, x: torch.Tensor, reward: torch.Tensor, group_size: int) -> tuple[torch.Tensor, dict]:
        exact = self.likelihood(x)
        if self.method["reward_source"] == "exact":
            reward = exact
        return reward, {"reward_exact_corr": within_group_correlation(reward, exact, group_size).item()}


@torch.no_grad()
def score_model(model, cfg: dict, ks: list[int], n: int, world: World, discriminator=None,
                rgas: dict | None = None) -> dict:
    """{K: score} of n samples at each K; the same noise for every model at a K (common random numbers).
    With `rgas` (distill.rgas's guidance keys) and a discriminator the K-step sampler is RGAS (didi.rgas)."""
    model.eval()
    seq_len, out = cfg["data"]["seq_len"], {}
    schedule, diffusion = LogLinearSchedule(cfg["diffusion"]["eps"]), cfg["diffusion"]
    for k in ks:
        generator = torch.Generator().manual_seed(cfg["seed"] + k)
        if rgas is None:
            ids = sample(model, n, seq_len, k, schedule, world.mask_id, generator,
                         precision=diffusion["sampling_precision"], cache=False, t_end=diffusion["sampling_t_end"]).ids
        else:
            ids = rgas_sample(model, discriminator.eval(), n, seq_len, k, schedule, world.mask_id, generator,
                              precision=diffusion["sampling_precision"], t_end=diffusion["sampling_t_end"],
                              **guidance(rgas)).ids
        out[k] = world.score(ids.numpy())
    return out


def rgas_settings(cfg: dict, spec: dict) -> dict:
    """label -> RGAS guidance of a study spec's `rgas` entries, each on top of the config's distill.rgas."""
    base = guidance(cfg["distill"]["rgas"])
    settings = {label: {**base, **(entry or {})} for label, entry in (spec.get("rgas") or {}).items()}
    for label, entry in settings.items():
        unknown = sorted(set(entry) - set(base))
        if unknown:
            raise config.ConfigError(f"study rgas {label!r}: unknown keys {unknown} (known: {sorted(base)})")
    return settings


def row_config(cfg: dict, overrides: dict) -> tuple[dict, dict]:
    """(distill section, method) of a row: `overrides` on top of the config's distill section and method."""
    overrides = dict(overrides)
    method = config.deep_merge(cfg["distill"]["method"], overrides.pop("method", {}))
    distill_cfg = config.deep_merge(cfg["distill"], overrides)
    unknown = sorted(set(overrides) - set(cfg["distill"])) + sorted(set(method) - set(cfg["distill"]["method"]))
    if unknown:
        raise config.ConfigError(f"study row: unknown distill keys {unknown}")
    return distill_cfg, method


def reference_rows(cfg: dict) -> list[str]:
    """Rows scored without training: the teacher, and on a first-order exact world the chain's exact denoiser (it is
    written for first-order chains)."""
    return ["teacher", "exact_denoiser"] if config.scores_exact_denoiser(cfg) else ["teacher"]


def load_world(cfg: dict, results: Path) -> World:
    """The World of a results directory: the exact world's chain (judge.kind exact), else the workflow's judge
    (results/judge), which scores the decoded samples as `didi evaluate` does."""
    teacher, _ = load_dit(results / "teacher" / "ema")
    tokenizer_dir = results / "tokenizer"
    tokenizer = data.load_pretrained_tokenizer(str(tokenizer_dir))
    mask_id = mask_id_of(teacher, tokenizer, results / "teacher" / "ema", tokenizer_dir)
    references = {"teacher": ("teacher", teacher)}
    if config.is_exact_judge(cfg["judge"]):
        chain = synthetic.MarkovWorld(synthetic.spec_from_corpus(cfg["corpus"]))
        floor = synthetic.invalid_log_prob(chain.spec)
        if "exact_denoiser" in reference_rows(cfg):  # state_tokenizer: EOS = V
            references["exact_denoiser"] = ("exact", synthetic.ExactDenoiser(chain, cfg["data"]["seq_len"], mask_id,
                                                                             chain.vocab_size))
        return World(teacher, mask_id, lambda ids: synthetic.score_blocks(chain, ids, floor), references,
                     cfg["evaluation"], cfg["seed"])
    judge, judge_tokenizer, _ = evaluate.load_judge(results / "judge")
    evaluation = cfg["evaluation"]

    def judge_scores(texts: list[str]) -> dict:
        return evaluate.gen_ppl(texts, judge, judge_tokenizer, evaluation["batch_size"], evaluation["eos_policy"],
                                max_length=cfg["data"]["seq_len"])

    def judge_likelihood(ids: np.ndarray) -> dict:
        scored = judge_scores(data.decode(tokenizer, ids))
        return {"nll": scored["nll"], "tokens": scored["tokens"], "invalid": np.zeros(len(ids), dtype=np.int64),
                "features": scored["features"]}

    reference = None  # MAUVE's Q: the real text the DAG's evaluation compares every model with
    if evaluation["mauve"]["enabled"] and (results / "reference" / "a.jsonl").exists():
        reference = judge_scores(evaluate.read_jsonl_texts(results / "reference" / "a.jsonl"))["features"]
    return World(teacher, mask_id, judge_likelihood, references, evaluation, cfg["seed"], reference)


def row_positives(results: Path, method: dict) -> np.ndarray:
    """The discriminator's positives of a row: training blocks or the teacher's pool, as the distill rule reads."""
    return load_positives(results / "tokens" / "train.npy", results / "samples" / "teacher" / "pool.npy",
                          method["positives"])


def run_one(cfg: dict, results: Path, name: str, overrides: dict, seed: int, ks: list[int], n: int,
            rgas: dict | None = None, rgas_ks: list[int] | None = None, at_length: list[str] | None = None) -> dict:
    """Distil one (row, seed) and score its EMA and raw students (and, for each of `rgas`'s settings, the student
    of distill.student_weights and the teacher sampled by RGAS with the row's discriminator: models
    `<weights>+rgas:<label>` and `teacher+rgas:<label>`, the second telling the guidance's share from the
    student's), at each K of `rgas_ks` (default: `ks`); K = L only where `scored_ks` keeps it."""
    torch.set_num_threads(1)
    logging.getLogger("didi.evaluate").setLevel(logging.WARNING)  # no judge progress line for every reward
    world = load_world(cfg, results)

    def ks_of(model: str) -> list[int]:
        return scored_ks(name, model, ks, cfg["data"]["seq_len"], at_length)

    if name in world.references:  # nothing to train: the teacher, or the data's own denoiser
        column, model = world.references[name]
        scores = {column: score_model(model, cfg, ks_of(column), n, world)}
        return {"name": name, "seed": seed, "scores": scores, "history": {}}
    distill_cfg, method = row_config(cfg, overrides)
    positives = row_positives(results, method)
    start = time.perf_counter()
    state = run_distillation(world.teacher, positives, distill_cfg, method, LogLinearSchedule(cfg["diffusion"]["eps"]),
                             world.mask_id, seed, progress=False, reward_hook=LikelihoodReward(world.reward, method))
    seconds = time.perf_counter() - start
    scores = {m: score_model(model, cfg, ks_of(m), n, world) for m, model in (("ema", state.student_ema),
                                                                        ("raw", state.student))}
    weights = distill_cfg["student_weights"]
    guided = state.student_ema if weights == "ema" else state.student
    for label, settings in (rgas or {}).items():
        for m, model in ((f"{weights}+rgas:{label}", guided), (f"teacher+rgas:{label}", world.teacher)):
            scores[m] = score_model(model, cfg, rgas_ks or ks, n, world, state.discriminator, settings)
    log.info("%s seed %d: %.0f s, EMA NLL %s", name, seed, seconds,
             " ".join(f"K{k}={v['nll']:.3f}" for k, v in scores["ema"].items()))
    history = {k: v for k, v in state.history.items() if k != "resumed_from_iteration"}
    return {"name": name, "seed": seed, "scores": scores, "history": history, "seconds": seconds}


# the window at the end of a run over which its reward's correlation with the world's likelihood is averaged
LAST_ITERATIONS = 150


def last_mean(curve: list) -> float:
    """Mean of the finite values among a curve's last LAST_ITERATIONS (NaN when there are none)."""
    tail = np.asarray(curve[-LAST_ITERATIONS:], dtype=np.float64)
    tail = tail[np.isfinite(tail)]
    return float(tail.mean()) if len(tail) else math.nan


def gap_table(frame: pd.DataFrame, ks: list[int], seq_len: int) -> pd.DataFrame:
    """Mean (and spread over seeds) of the true NLL per row, model and K; the share of the teacher's few-step gap
    closed: (NLL(teacher@K) - NLL(row@K)) / (NLL(teacher@K) - NLL(teacher@L)); and, when the exact denoiser was
    scored, the share of the teacher's DENOISER error at K closed: (NLL(teacher@K) - NLL(row@K)) /
    (NLL(teacher@K) - NLL(exact@K)), 1 where a row samples as well as the data's own denoiser does in K steps."""
    teacher = frame[frame.model == "teacher"].groupby("K").nll.mean()
    teacher_lo = frame[frame.model == "teacher"].groupby("K").ppl_lo.mean() if "ppl_lo" in frame else None
    exact = frame[frame.model == "exact"].groupby("K").nll.mean()
    rows = []
    for (name, model), part in frame.groupby(["name", "model"], sort=False):
        entry = {"row": name, "model": model, "seeds": part.seed.nunique()}
        for k in ks:
            at = part[part.K == k]
            entry[f"nll@{k}"] = at.nll.mean()
            entry[f"spread@{k}"] = at.nll.max() - at.nll.min()
            if teacher_lo is not None and k in teacher_lo.index and model != "teacher":
                # the share of seeds below the teacher at K with the 95 % intervals apart
                entry[f"beats@{k}"] = float((at.ppl_hi < teacher_lo[k]).mean())
            if k != seq_len and {k, seq_len} <= set(teacher.index):  # no reference scored (--only): no share
                entry[f"closed@{k}"] = (teacher[k] - at.nll.mean()) / (teacher[k] - teacher[seq_len])
            if k in exact.index:
                entry[f"denoiser_closed@{k}"] = (teacher[k] - at.nll.mean()) / (teacher[k] - exact[k])
        for k in ks:  # the entropy condition holds at each K
            entry[f"entropy@{k}"] = part[part.K == k].entropy.mean()
        for k in ks:
            entry[f"positional_entropy@{k}"] = part[part.K == k].positional_entropy.mean()
        if "mauve" in part and part.mauve.notna().any():
            for k in ks:
                entry[f"mauve@{k}"] = part[part.K == k].mauve.mean()
        for column in ("reward_judge_corr", "seconds"):
            if column in part:
                entry[column] = part[column].mean()
        control = frame[(frame.name == f"{name}{CONTROL_SUFFIX}") & (frame.model == model)]
        for k in ks if len(control) else []:
            # the row minus its shuffled-advantage control, seed by seed (paired: same seed, same samples' noise)
            paired = part[part.K == k].merge(control[control.K == k], on="seed", suffixes=("", "_control"))
            entry[f"minus_control@{k}"] = (paired.nll - paired.nll_control).mean() if len(paired) else math.nan
        rows.append(entry)
    return pd.DataFrame(rows)


# a row named `<row>_shuffled` is `<row>`'s shuffled-advantage control (gap_table pairs them)
CONTROL_SUFFIX = "_shuffled"


def add_arguments(p: argparse.ArgumentParser) -> None:
    config.add_arguments(p)
    p.add_argument("--results", required=True,
                   help="the workflow's results directory (teacher, tokens; on a text corpus the judge)")
    p.add_argument("--rows", required=True,
                   help="YAML: {ks: [...], samples: N, at_length: [row or row/model, ...] (optional), "
                        "base: {overrides}, rows: {name: {seeds, overrides}}}")
    p.add_argument("--out", required=True)
    p.add_argument("--only", nargs="*", default=None, help="run only these rows (others are kept from results.csv)")
    p.add_argument("--seeds", nargs="*", type=int, default=None,
                   help="run only these seeds of the rows run (a seed added to a row's list, without its others)")
    p.add_argument("--jobs", type=int, default=1, help="rows run in parallel, one thread each")


def selected(jobs: list[tuple], only: list[str] | None, seeds: list[int] | None) -> list[tuple]:
    """The (name, overrides, seed) jobs of the rows in `only` (all when None) and the seeds in `seeds` (all when
    None); a name or seed that no job has is an error, not a silent no-op (`--only none` runs nothing on purpose)."""
    unknown = sorted(set(only or ()) - {name for name, _, _ in jobs} - {"none"})
    if unknown:
        raise ValueError(f"--only: no row named {', '.join(unknown)}")
    jobs = [j for j in jobs if not only or j[0] in only]
    missing = sorted(set(seeds or ()) - {seed for _, _, seed in jobs})
    if missing:
        raise ValueError(f"--seeds: {', '.join(map(str, missing))} not among the seeds of the rows run")
    return [j for j in jobs if seeds is None or j[2] in seeds]


def row_overrides(spec: dict) -> dict[str, dict]:
    """{row: its overrides of the distill section}: the spec's `base`, then the row's own on top."""
    base = spec.get("base", {})
    return {name: config.deep_merge(base, row.get("overrides") or {}) for name, row in spec["rows"].items()}


def scored_ks(name: str, model: str, ks: list[int], seq_len: int, at_length: list[str] | None) -> list[int]:
    """The Ks a row's model is scored at: `ks` (which holds L), K = L only where `at_length` names the row (all its
    models) or `row/model` (that model alone), every model when there is no `at_length`. At L = 256 sampling a student
    in L steps costs more than distilling it, so a spec may keep K = L to the teacher, whose few-step gap the shares
    measure against, and to the student each row samples."""
    keep = at_length is None or name in at_length or f"{name}/{model}" in at_length
    return ks if keep else [k for k in ks if k != seq_len]


def check_at_length(at_length: list[str] | None, rows: list[str]) -> None:
    """A name in `at_length` (`row` or `row/model`) whose row is not among `rows` would silently drop K = L from
    every model: an error instead."""
    unknown = sorted(entry for entry in at_length or () if entry.split("/", 1)[0] not in rows)
    if unknown:
        raise ValueError(f"at_length: no row named {', '.join(unknown)}")


def check_spec(cfg: dict, spec: dict) -> None:
    """Every row's overrides known to the distill section and `at_length` naming rows that exist, checked before any
    job starts (a typo would otherwise surface only when its row's job does, hours into a study)."""
    for overrides in row_overrides(spec).values():
        row_config(cfg, overrides)
    check_at_length(spec.get("at_length"), reference_rows(cfg) + list(spec["rows"]))


def run(args: argparse.Namespace) -> int:
    cfg = config.from_args(args)
    spec = yaml.safe_load(Path(args.rows).read_text())
    seq_len = cfg["data"]["seq_len"]
    ks = sorted(set(spec["ks"]) | {seq_len})
    rgas = rgas_settings(cfg, spec)  # RGAS settings every trained row is also scored with
    references = reference_rows(cfg)
    overrides_of = row_overrides(spec)
    jobs = [(name, {}, cfg["seed"]) for name in references] + [
        (name, overrides_of[name], seed) for name, row in spec["rows"].items() for seed in row["seeds"]]
    try:
        check_spec(cfg, spec)
    except ValueError as err:
        raise SystemExit(f"didi study: {args.rows}: {err}") from None
    try:
        jobs = selected(jobs, args.only, args.seeds)
    except ValueError as err:
        raise SystemExit(f"didi study: {err}") from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv, histories_path = out / "results.csv", out / "histories.json"
    lines = pd.read_csv(csv) if csv.exists() else pd.DataFrame()
    histories = io.read_json(histories_path) if histories_path.exists() else {}
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, cfg, Path(args.results), name, overrides, seed, ks, spec["samples"], rgas,
                               spec.get("rgas_ks"), spec.get("at_length"))
                   for name, overrides, seed in jobs]
        for future in concurrent.futures.as_completed(futures):
            result = future.result()
            run_fields = {"seconds": result.get("seconds", math.nan),
                          "reward_judge_corr": last_mean(result["history"].get("reward_exact_corr", []))}
            new = pd.DataFrame([{"name": result["name"], "seed": result["seed"], "model": model, "K": k, **s,
                                 **run_fields}
                                for model, by_k in result["scores"].items() for k, s in by_k.items()])
            if len(lines):
                lines = lines[~((lines.name == result["name"]) & (lines.seed == result["seed"]))]
            lines = pd.concat([lines, new], ignore_index=True)
            histories[f"{result['name']}/{result['seed']}"] = result["history"]
            with io.atomic_path(csv) as tmp:  # after every row: a long study loses nothing when stopped
                lines.to_csv(tmp, index=False)
            io.write_json(histories_path, histories, indent=None)  # compact: 5,000-iteration curves per row
    order = references + list(spec["rows"])
    lines["order"] = lines.name.map({n: i for i, n in enumerate(order)})
    table = gap_table(lines.sort_values(["order", "seed"]), ks, seq_len)
    io.write_text(out / "table.md", table.to_markdown(index=False, floatfmt=".3f") + "\n")
    io.write_provenance_beside(csv, cfg)
    draw_study_dynamics(histories, spec.get("dynamics_rows", []), Path(args.results) / "teacher" / "metrics.json",
                        out)
    return 0


def draw_study_dynamics(histories: dict, rows: list[str], teacher_metrics: Path, out: Path) -> None:
    """dynamics.{png,pdf}: the curves of the named rows (first seed each) beside the teacher's loss curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from didi.tables import plot_dynamics, save_figure

    chosen = {}
    for name in rows:
        runs = sorted(k for k in histories if k.split("/")[0] == name)
        if runs:
            chosen[name] = histories[runs[0]]
    teacher = io.read_json(teacher_metrics) if teacher_metrics.exists() else None
    fig = plot_dynamics(chosen, teacher, None)
    save_figure(fig, out, "dynamics")
    plt.close(fig)


COMMANDS = {"study": (add_arguments, run)}
