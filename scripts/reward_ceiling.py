"""How much can the discriminator's reward say about a sample?

(docs/distillation-study.md, "Where the reward's noise comes from".)

On the exact world, train the discriminator ALONE (student frozen at the teacher) on many of the teacher's two-step
rollouts against the positives, then report, on 512 fresh rollouts through tau = 0.6, the correlation of the reward
with each sample's true log-likelihood, read at fixed noise levels from one corruption and averaged over 8.

    python scripts/reward_ceiling.py --results results/synthetic --batch 256 --steps 400 \
        [--overrides '{"method": {"discriminator_level": "sequence"}, "label_smoothing": 0.0}']

Needs the synthetic preset's teacher, tokens and pool (snakemake ... presets/synthetic.yaml).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from didi import config, objective, synthetic
from didi.diffusion import LogLinearSchedule
from didi.distill import build_state, optimiser_step
from didi.study import load_world, row_config, row_positives


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="results/synthetic")
    p.add_argument("--rows", default="docs/study/rows.yaml", help="the study's rows file: its `base` is the start")
    p.add_argument("--overrides", default="{}", help="JSON overrides of the distill section, as a study row's")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = config.load(["config.yaml", "presets/synthetic.yaml"])
    results = Path(args.results)
    teacher, mask_id, world, floor = load_world(cfg, results)
    seq_len = cfg["data"]["seq_len"]
    base = yaml.safe_load(Path(args.rows).read_text())["base"]
    distill_cfg, method = row_config(cfg, config.deep_merge(base, json.loads(args.overrides)))
    positives = torch.as_tensor(np.asarray(row_positives(results, method)).astype(np.int64))
    schedule = LogLinearSchedule(cfg["diffusion"]["eps"])
    state = build_state(teacher, distill_cfg, method, schedule, mask_id, seq_len, seed=args.seed)
    D = state.discriminator
    train_gen, eval_gen = torch.Generator().manual_seed(args.seed), torch.Generator().manual_seed(args.seed + 1)

    def teacher_rollout(n, tau, gen):
        with torch.no_grad():
            return objective.rollout(teacher, n, seq_len, tau, schedule, mask_id, method, distill_cfg["t0"], gen,
                                     distill_cfg["rollout_precision"], "cpu")["x"]

    n = 512
    held_out = teacher_rollout(n, torch.full((n,), 0.6), eval_gen)
    scored = synthetic.score_blocks(world, held_out.numpy(), floor)
    truth = -scored["nll"] / scored["tokens"]

    def correlations() -> str:
        out = []
        with torch.no_grad():
            for t_read in (0.1, 0.4, 0.7):
                t = torch.full((n,), t_read)
                r = torch.stack([objective.rewards(D, [objective.corrupt_rows(held_out, t, schedule, mask_id,
                                                                              eval_gen)],
                                                   t, schedule, mask_id, distill_cfg["reward_clip"], method)
                                 for _ in range(8)])
                one, eight = np.corrcoef(r[0], truth)[0, 1], np.corrcoef(r.mean(0), truth)[0, 1]
                out.append(f"t={t_read}: {one:.2f} (1) {eight:.2f} (8)")
        D.train()
        return "  ".join(out)

    def count(mask):
        return mask.sum().clamp(min=1)

    start = time.perf_counter()
    for step in range(args.steps + 1):
        if step % max(args.steps // 4, 1) == 0:
            print(f"step {step:5d} {time.perf_counter() - start:6.0f} s  corr(reward, true log-lik.)  {correlations()}",
                  flush=True)
        if step == args.steps:
            break
        tau, _ = objective.draw_tau(args.batch, method, distill_cfg["tau_clip"], train_gen, "cpu")
        fake = teacher_rollout(args.batch, tau, train_gen)
        real = positives[torch.randint(len(positives), (args.batch,), generator=train_gen)]
        z_fake, z_real, tau_real = objective.corrupt_both(fake, real, tau, schedule, mask_id, method,
                                                          distill_cfg["tau_clip"], train_gen)
        loss, _, _ = objective.discriminator_loss(D, z_real, tau_real, z_fake, tau, schedule, mask_id,
                                                  distill_cfg["label_smoothing"], count, method)
        optimiser_step(state.opt_disc, loss, [p for p in D.parameters() if p.requires_grad],
                       distill_cfg["discriminator_grad_clip"])


if __name__ == "__main__":
    main()
