"""How much can the discriminator's reward say about a sample?

(docs/distillation-study.md, "Where the reward's noise comes from".)

Train the discriminator ALONE (student frozen at the teacher) on many of the teacher's two-step rollouts against the
positives, then report, on 512 fresh rollouts through tau = 0.6, the correlation of the reward with each sample's
log-likelihood (the exact world's chain, or on a text corpus the workflow's judge), read at fixed noise levels from
one corruption and averaged over 8.

    python scripts/reward_ceiling.py --results results/synthetic --batch 256 --steps 400 \
        [--overrides '{"method": {"discriminator_level": "sequence"}, "label_smoothing": 0.0}']

Needs a DAG's teacher, tokens and pool (snakemake ... presets/synthetic.yaml; or --configfile config.yaml
--results results for SOTU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from didi import config, objective
from didi.diffusion import LogLinearSchedule
from didi.distill import build_state, optimiser_step
from didi.study import load_world, row_config, row_positives


def ceiling(cfg: dict, results: Path, base: dict, overrides: dict, batch: int, steps: int, seed: int = 0,
            held_out_rows: int = 512, report=print) -> list[dict]:
    """Train the discriminator alone on `steps` batches of the teacher's rollouts; at five points of the run, the
    correlation of its reward with the world's log-likelihood per token of `held_out_rows` fresh rollouts, read at
    t = 0.1, 0.4, 0.7 from one corruption (`one`) and averaged over eight (`eight`). One dict per point."""
    world = load_world(cfg, results)
    teacher, mask_id, seq_len = world.teacher, world.mask_id, cfg["data"]["seq_len"]
    distill_cfg, method = row_config(cfg, config.deep_merge(base, overrides))
    positives = torch.as_tensor(np.asarray(row_positives(results, method)).astype(np.int64))
    schedule = LogLinearSchedule(cfg["diffusion"]["eps"])
    state = build_state(teacher, distill_cfg, method, schedule, mask_id, seq_len, seed=seed)
    D = state.discriminator
    train_gen, eval_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)

    def teacher_rollout(n, tau, gen):
        with torch.no_grad():
            return objective.rollout(teacher, n, seq_len, tau, schedule, mask_id, method, distill_cfg["t0"], gen,
                                     distill_cfg["rollout_precision"], "cpu")["x"]

    n = held_out_rows
    held_out = teacher_rollout(n, torch.full((n,), 0.6), eval_gen)
    truth = world.reward(held_out).numpy()  # log-likelihood per scored token: the chain's, or the judge's

    def correlations(step: int) -> dict:
        out = {"step": step}
        with torch.no_grad():
            for t_read in (0.1, 0.4, 0.7):
                t = torch.full((n,), t_read)
                r = torch.stack([objective.rewards(D, [objective.corrupt_rows(held_out, t, schedule, mask_id,
                                                                              eval_gen)],
                                                   t, schedule, mask_id, distill_cfg["reward_clip"], method)
                                 for _ in range(8)])
                out[t_read] = {"one": float(np.corrcoef(r[0], truth)[0, 1]),
                               "eight": float(np.corrcoef(r.mean(0), truth)[0, 1])}
        D.train()
        return out

    def count(mask):
        return mask.sum().clamp(min=1)

    points, start = [], time.perf_counter()
    for step in range(steps + 1):
        if step % max(steps // 4, 1) == 0:
            points.append(correlations(step))
            report(f"step {step:5d} {time.perf_counter() - start:6.0f} s  corr(reward, log-lik.)  " + "  ".join(
                f"t={t}: {v['one']:.2f} (1) {v['eight']:.2f} (8)" for t, v in points[-1].items() if t != "step"),
                   flush=True)
        if step == steps:
            break
        tau, _ = objective.draw_tau(batch, method, distill_cfg["tau_clip"], train_gen, "cpu")
        fake = teacher_rollout(batch, tau, train_gen)
        real = positives[torch.randint(len(positives), (batch,), generator=train_gen)]
        z_fake, z_real, tau_real = objective.corrupt_both(fake, real, tau, schedule, mask_id, method,
                                                          distill_cfg["tau_clip"], train_gen)
        loss, _, _ = objective.discriminator_loss(D, z_real, tau_real, z_fake, tau, schedule, mask_id,
                                                  distill_cfg["label_smoothing"], count, method)
        optimiser_step(state.opt_disc, loss, [p for p in D.parameters() if p.requires_grad],
                       distill_cfg["discriminator_grad_clip"])
    return points


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configfile", nargs="+", default=["config.yaml", "presets/synthetic.yaml"])
    p.add_argument("--results", default="results/synthetic")
    p.add_argument("--rows", default="docs/study/rows.yaml", help="the study's rows file: its `base` is the start")
    p.add_argument("--overrides", default="{}", help="JSON overrides of the distill section, as a study row's")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = config.load(args.configfile)
    base = yaml.safe_load(Path(args.rows).read_text())["base"]
    ceiling(cfg, Path(args.results), base, json.loads(args.overrides), args.batch, args.steps, args.seed)


if __name__ == "__main__":
    main()
