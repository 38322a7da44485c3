"""Where along tau does a group's reward tell its samples apart?

(docs/distillation-study.md, "A trust region to the teacher, pooled advantages, and where the SOTU reward is blind".)

With one tau per group (the default), a group's G samples are judged at the same noise level. This script rolls out
the DAG's distilled `full` student (raw weights) in groups of G at fixed noise levels, reads each sample's reward
from that run's discriminator exactly as the distillation does (reward_corruptions corruptions at tau), and reports
per tau: the mean within-group standard deviation of the reward, the within-group correlation of the reward with the
world's log-likelihood per token (the judge on text, the chain on the exact world), and the time weight
w(tau) = omega(tau) / pi(tau) the policy gradient multiplies the advantage by. Normalising each group by its own
std (advantage_scale: group) gives every group unit-scale advantages; `pooled` scales them by the group's spread.

    python scripts/reward_spread.py --configfile config.yaml --results results [--groups 32]
    python scripts/reward_spread.py --configfile config.yaml presets/synthetic.yaml --results results/synthetic
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from didi import config, objective
from didi.diffusion import LogLinearSchedule
from didi.discriminator import load_discriminator
from didi.model import load_dit
from didi.study import load_world

TAUS = (0.05, 0.15, 0.3, 0.5, 0.7, 0.85, 0.95)


@torch.no_grad()
def spread_by_tau(cfg: dict, results: Path, variant: str = "full", groups: int = 32, taus=TAUS, seed: int = 0,
                  distill_seed: int | None = None):
    """One dict per tau: the mean within-group std of the reward (`group_std`), its within-group correlation with
    the world's log-likelihood per token (`corr`) and the policy gradient's time weight there (`weight`), for the
    run of `variant` distilled with `distill_seed` (default: the first of distill.seeds)."""
    distill_cfg, method = cfg["distill"], config.variant_method(cfg, variant)
    world = load_world(cfg, results)
    run = results / "distill" / variant / f"seed{config.distill_seeds(cfg)[0] if distill_seed is None else distill_seed}"
    student, _ = load_dit(run / "student_raw")
    disc = load_discriminator(run / "discriminator").eval()
    student.eval()
    schedule, G, seq_len = LogLinearSchedule(cfg["diffusion"]["eps"]), distill_cfg["group_size"], cfg["data"]["seq_len"]
    rows, gen, out = groups * G, torch.Generator().manual_seed(seed), []
    for t in taus:
        tau = torch.full((rows,), float(t))
        x = objective.rollout(student, rows, seq_len, tau, schedule, world.mask_id, method, distill_cfg["t0"], gen,
                              distill_cfg["rollout_precision"], "cpu")["x"]
        z = [objective.corrupt_rows(x, tau, schedule, world.mask_id, gen)
             for _ in range(distill_cfg["reward_corruptions"])]
        reward = objective.rewards(disc, z, tau, schedule, world.mask_id, distill_cfg["reward_clip"], method)
        pi = objective.tau_density(tau[:1], method["tau_distribution"])
        out.append({"tau": float(t), "group_std": reward.view(-1, G).std(dim=1).mean().item(),
                    "corr": objective.within_group_correlation(reward, world.reward(x), G).item(),
                    "weight": objective.time_weight(schedule, tau[:1], pi, method, distill_cfg["omega_clip"]).item()})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configfile", nargs="+", default=["config.yaml"])
    p.add_argument("--results", default="results")
    p.add_argument("--variant", default="full")
    p.add_argument("--groups", type=int, default=32, help="groups of G samples per noise level")
    p.add_argument("--taus", type=float, nargs="+", default=list(TAUS))
    p.add_argument("--seed", type=int, default=0, help="seed of the rollouts and corruptions drawn here")
    p.add_argument("--distill-seed", type=int, default=None, help="which distillation (default: distill.seeds[0])")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = config.load(args.configfile)
    rows = spread_by_tau(cfg, Path(args.results), args.variant, args.groups, args.taus, args.seed, args.distill_seed)
    print(f"{'tau':>5} {'group std':>10} {'corr':>6} {'w(tau)':>7}")
    for r in rows:
        print(f"{r['tau']:5.2f} {r['group_std']:10.4f} {r['corr']:6.2f} {r['weight']:7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
