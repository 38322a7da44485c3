"""Across the SOTU study's runs: does a run whose reward ranks real text gain more?

(docs/distillation-study.md, "Where issue 9's targets stand".)

For every token-level distillation run under docs/study/sotu/ (shuffled-advantage controls, the oracle and the
sequence-level discriminator left out: their reward is not the recipe's), reads the reward's within-group
correlation with the judge over the run's last 150 iterations from histories.json and the gain over the teacher at
K = 8 (the teacher's judge NLL minus the model's, nats per token) from results.csv, for the raw student, the raw
student with RGAS and the teacher guided by the run's discriminator; prints the Spearman rank correlation of each
gain with the reward's correlation, over the runs that scored that model. A run kept in two study directories
(possibly under two row names: the same seed, reward curve and student) counts once.

    python scripts/ranking_vs_gain.py [--study docs/study/sotu] [--k 8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from didi import io

LEFT_OUT = ("control", "shuffled", "oracle", "sequence")
MODELS = {"raw": "raw student", "raw+rgas:h3": "raw student + RGAS (h 3 -> 4)",
          "teacher+rgas:h3": "teacher + RGAS with the run's discriminator"}


def runs(study: Path, k: int) -> pd.DataFrame:
    rows = []
    for histories_path in sorted(study.rglob("histories.json")):
        scores = pd.read_csv(histories_path.with_name("results.csv"))
        at_k = scores[scores.K == k]
        teacher = at_k[at_k.model == "teacher"].nll
        if teacher.empty:  # no reference at this K: no gain to read
            continue
        for key, history in io.read_json(histories_path).items():
            name, seed = key.rsplit("/", 1)
            if name == "teacher" or any(word in name for word in LEFT_OUT):
                continue
            run = at_k[(at_k.name == name) & (at_k.seed == int(seed))]
            corr = np.asarray(history["reward_exact_corr"], dtype=float)[-150:]
            entry = {"name": name, "seed": int(seed), "corr": float(np.nanmean(corr))}
            for model in MODELS:
                nll = run[run.model == model].nll
                entry[model] = float(teacher.iloc[0] - nll.iloc[0]) if len(nll) else np.nan
            rows.append(entry)
    table = pd.DataFrame(rows)
    table["scored"] = table[list(MODELS)].notna().sum(axis=1)  # of a run kept twice, keep the better-scored copy
    same_run = ["seed", "corr", "raw"]  # the same training run: same seed, same curves, same student
    return table.sort_values("scored", ascending=False).drop_duplicates(same_run).drop(columns="scored")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", type=Path, default=Path("docs/study/sotu"))
    p.add_argument("--k", type=int, default=8)
    args = p.parse_args()
    table = runs(args.study, args.k)
    for model, label in MODELS.items():
        scored = table.dropna(subset=[model])
        rho = scored["corr"].corr(scored[model], method="spearman")
        print(f"{label}: Spearman {rho:.2f} over {len(scored)} runs (gain at K = {args.k} vs reward-judge corr)")


if __name__ == "__main__":
    main()
