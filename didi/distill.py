"""DiDi-Instruct: distil a masked-diffusion teacher into a few-step student (docs/method.md section 2).

One iteration (`distill_step`):
 1. B positive rows (real data, or teacher samples), each repeated G times: one group = G student samples.
 2. tau per row ~ Uniform(0,1) or Beta(2,2), clamped.
 3. The student generates by ancestral sampling: 1 -> tau -> end ("score decomposition", log p = ell_1 + ell_2),
    or one-shot 1 -> end (baseline). end is alpha = 1 (no [MASK] survives) or t0.
 4. Student samples and positives are corrupted at alpha(tau) (coupled) or at independent times.
 5. One discriminator step: BCE with label smoothing on masked positions.
 6. Reward from the just-updated discriminator: clipped log-odds averaged over the masked positions of a row.
 7. Grouped normalisation -> advantage A (by each group's std, one pooled over the groups, or leave-one-out), clipped.
 8. Weight omega(tau) (clipped) and optionally 1 / pi(tau).
 9. Student loss = -mean(w * A * log p) + kl_coef * KL(teacher || student) [or Jeffrey] - entropy_coef * H.
10. AdamW steps with warm-up and clipping for student and discriminator (student_epochs > 1: further student
    steps on the same rollouts with PPO's clipped ratio); EMA of the student.

The objective's pieces are plain functions in didi/objective.py; here are the state, the step that strings them
together (`distill_step`, the steps above numbered in it) and the loop with checkpoints (`run_distillation`); the
`didi distill` command (files in, files out) is didi/distill_cli.py. The core works on any denoiser
`model(z [B,L], sigma [B]) -> logits [B,L,V+1]` and any discriminator `D(z, sigma) -> [B,L]`, so tests can run it
on a toy world whose answers are known exactly. The recipe's variations are the config's switches, read where they
act, and a caller's `reward_hook` (RewardHook), which sees step 6's reward and may put another in its place.
DDP: every draw of a row comes from its global group's generator (seed, iteration, group) and masked-position means
use counts summed over ranks, so N ranks reproduce one process on the same global batch (with dropout 0).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from didi import distributed, io, objective, runtime
from didi.diffusion import LogLinearSchedule

log = logging.getLogger("didi.distill")

# streams of seeds, runtime.seed(config seed, STREAM, ...): each kind of draw has its own
SHARED_ROWS, GROUP_NOISE, DROPOUT, DISCRIMINATOR_INIT = 0, 1, 2, 3
RUN_KEYS = ("seconds_this_run", "iterations_this_run", "resumed_from_iteration")  # not per-iteration curves


def group_generators(seed: int, iteration: int, groups: range, device) -> list[torch.Generator]:
    """One generator per group (prompt) of the GLOBAL batch, seeded by (seed, iteration, global group index): every
    draw of a row is then the same whichever rank holds it, so N ranks reproduce one process on the same batch."""
    return [runtime.generator(seed, GROUP_NOISE, iteration, g, device=device) for g in groups]


# ---------------------------------------------------------------------------------------------- state + step
class RewardHook(Protocol):
    """A caller's variation of step 6 (run_distillation's `reward_hook`): called with the student's samples
    x [rows, L], their reward [rows] and the group size G, it returns the reward the advantages use (the same, or
    one in its place) and {name: float} statistics logged with the iteration's; `stats` names them (NaN in a
    discriminator warm-up iteration, which reads no reward). method["reward_source"] other than "discriminator"
    needs one that supplies that reward."""
    stats: tuple[str, ...]

    def __call__(self, x: torch.Tensor, reward: torch.Tensor, group_size: int) -> tuple[torch.Tensor, dict]: ...


@dataclasses.dataclass
class DistillState:
    student: nn.Module
    student_ema: nn.Module
    teacher: Callable
    discriminator: nn.Module
    opt_student: torch.optim.Optimizer
    opt_disc: torch.optim.Optimizer
    schedule: LogLinearSchedule
    distill_cfg: dict         # cfg["distill"]
    method: dict              # the variant's switches
    mask_id: int
    seq_len: int
    dist: distributed.DistInfo = dataclasses.field(default_factory=distributed.DistInfo)
    iteration: int = 0
    history: dict = dataclasses.field(default_factory=dict)
    reward_hook: RewardHook | None = None


def build_state(teacher: nn.Module, distill_cfg: dict, method: dict, schedule: LogLinearSchedule, mask_id: int,
                seq_len: int, discriminator: nn.Module | None = None, dist: distributed.DistInfo | None = None,
                seed: int = 0, reward_hook: RewardHook | None = None) -> DistillState:
    """Student, EMA student and (by default) discriminator initialised from the teacher's weights, explicitly,
    AFTER the teacher was loaded (the official code copied an uninitialised network: docs/method.md section 6).
    The discriminator head (and its spectral-norm vectors) are drawn from `seed`, the same on every rank."""
    if method["reward_source"] != "discriminator" and reward_hook is None:
        raise ValueError(f"distill.method.reward_source {method['reward_source']!r} needs a likelihood to reward "
                         "with: a reward_hook that supplies it (none was given)")
    teacher.eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    student_ema = copy.deepcopy(student).eval().requires_grad_(False)
    if discriminator is None:
        from didi.discriminator import Discriminator

        torch.manual_seed(runtime.seed(seed, DISCRIMINATOR_INIT))
        discriminator = Discriminator.from_teacher(teacher, distill_cfg["discriminator_trainable_blocks"])
    discriminator.train()
    # weight decay 0: decay would pull the student away from the teacher it starts as
    opt_student = torch.optim.AdamW(student.parameters(), lr=distill_cfg["student_lr"], weight_decay=0.0)
    opt_disc = torch.optim.AdamW([p for p in discriminator.parameters() if p.requires_grad],
                                 lr=distill_cfg["discriminator_lr"], weight_decay=0.0)
    return DistillState(student, student_ema, teacher, discriminator, opt_student, opt_disc, schedule, distill_cfg,
                        method, mask_id, seq_len, dist or distributed.DistInfo(), reward_hook=reward_hook)


def optimiser_step(optimizer, loss, params: list, clip: float) -> torch.Tensor:
    """Backward, average the gradients over ranks (DDP by hand; a no-op for one process), clip, step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for p in params:
        if p.grad is not None:
            p.grad.copy_(distributed.all_reduce_mean(p.grad))
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    return grad_norm


# What a discriminator warm-up iteration does not compute: NaN in the history (plots leave a gap; summaries skip it)
WARMUP_STATS = {"student_loss": math.nan, "pg_loss": math.nan, "kl": math.nan, "entropy": math.nan,
                "reward": math.nan, "grad_norm": 0.0}


def set_learning_rates(state: DistillState) -> int:
    """This iteration's rates of both optimisers (warm-up; lr_schedule linear_decay, the authors' code: each falls
    linearly to ~0 at the end of its own steps). Returns the student's iteration: negative in the first
    distill_cfg["discriminator_warmup"] iterations, which train the discriminator alone (the student holds still, so
    its first rewards come from a discriminator that already tells its samples from the positives)."""
    distill_cfg = state.distill_cfg
    student_iteration = state.iteration - distill_cfg["discriminator_warmup"]
    decay = distill_cfg["lr_schedule"] == "linear_decay"
    for opt, lr, step, steps in (
            (state.opt_student, distill_cfg["student_lr"], max(student_iteration, 0), distill_cfg["iterations"]),
            (state.opt_disc, distill_cfg["discriminator_lr"], state.iteration,
             distill_cfg["iterations"] + distill_cfg["discriminator_warmup"])):
        for group in opt.param_groups:
            group["lr"] = runtime.warmup_lr(step, lr, distill_cfg["warmup_steps"], steps if decay else None)
    return student_iteration


def discriminator_steps(state: DistillState, z_real, tau_real, z_fake, tau, count) -> tuple:
    """distill_cfg["discriminator_steps"] updates on the same corrupted batch; returns (last loss, accuracy)."""
    D, distill_cfg = state.discriminator, state.distill_cfg
    D.train()
    for _ in range(distill_cfg["discriminator_steps"]):
        d_loss, correct, judged = objective.discriminator_loss(D, z_real, tau_real, z_fake, tau, state.schedule,
                                                               state.mask_id, distill_cfg["label_smoothing"], count,
                                                               state.method)
        optimiser_step(state.opt_disc, d_loss, [p for p in D.parameters() if p.requires_grad],
                       distill_cfg["discriminator_grad_clip"])
    d_acc = state.dist.world_size * correct.double() / distributed.all_reduce_sum(judged).clamp(min=1)
    return d_loss, d_acc


def reward_of(state: DistillState, views: tuple) -> torch.Tensor:
    """The discriminator's reward of each student sample, read on its corruptions `views` = (z_fakes, taus)
    (objective.reward_corruptions)."""
    return objective.rewards(state.discriminator, *views, state.schedule, state.mask_id,
                             state.distill_cfg["reward_clip"], state.method)


def further_student_updates(state: DistillState, roll: dict, weight, advantage, count) -> float:
    """method["student_epochs"] - 1 more student updates on this iteration's rollouts, each reading their
    log-probabilities afresh: PPO's clipped surrogate (objective.clipped_policy_gradient_loss, ratio to the student
    that drew them, method["ratio_clip"]) plus the same regulariser. Returns the last update's clipped share."""
    method, sched, mask_id = state.method, state.schedule, state.mask_id
    rollout_logp = objective.token_log_probs(roll["states"], roll["x"], mask_id).detach()
    for _ in range(method["student_epochs"] - 1):
        states = objective.rescored_states(state.student, roll["states"], sched, mask_id)
        pg_loss, clipped = objective.clipped_policy_gradient_loss(
            weight, advantage, objective.token_log_probs(states, roll["x"], mask_id), rollout_logp,
            method["ratio_clip"])
        kl, entropy = objective.regulariser(states, state.teacher, sched, mask_id, method, count)
        optimiser_step(state.opt_student, pg_loss + method["kl_coef"] * kl - method["entropy_coef"] * entropy,
                       list(state.student.parameters()), state.distill_cfg["student_grad_clip"])
    return clipped.item()


def distill_step(state: DistillState, positives: torch.Tensor, generator) -> dict:
    """One DiDi-Instruct iteration on this rank's rows. positives [b, L]: the positive rows (b prompts), each is
    repeated G times. generator: one torch.Generator, or a list of b (one per prompt = group: group_generators).

    Under DDP every loss is this rank's share of the GLOBAL loss (masked-position means divide by the count summed
    over ranks, divided by the world size), so the gradients averaged over ranks are those of one process with all
    rows. Returns float statistics whose mean over ranks is the global value.
    distill.bf16: the networks' linears run under bf16 autocast on CUDA (every loss and draw stays float32 or more:
    the networks return float32 logits); a no-op on the CPU."""
    with runtime.autocast(positives.device, state.distill_cfg.get("bf16", False)):
        return _iteration(state, positives, generator)


def _iteration(state: DistillState, positives: torch.Tensor, generator) -> dict:
    """distill_step's body (steps 1-10 of the module's docstring)."""
    distill_cfg, method, sched, mask_id = state.distill_cfg, state.method, state.schedule, state.mask_id
    G, clip, device = distill_cfg["group_size"], distill_cfg["tau_clip"], positives.device

    def count(mask):  # masked positions of the global batch / world size (at least 1 / world size)
        return distributed.all_reduce_sum(mask.sum()).clamp(min=1) / state.dist.world_size

    student_iteration = set_learning_rates(state)  # < 0: the discriminator's warm-up, the student holds still
    # 1. positives, each repeated G times (one group = G student samples)
    real = positives.repeat_interleave(G, dim=0)
    rows = real.shape[0]
    # 2-3. time and student rollout
    tau, pi = objective.draw_tau(rows, method, clip, generator, device, G)
    with torch.set_grad_enabled(student_iteration >= 0):
        roll = objective.rollout(state.student, rows, state.seq_len, tau, sched, mask_id, method, distill_cfg["t0"],
                                 generator, distill_cfg["rollout_precision"], device)
    stats = {"logp": roll["logp"].mean().item(), "fake_mask_left": (roll["x"] == mask_id).float().mean().item(),
             **({"clip_fraction": math.nan} if method["student_epochs"] > 1 else {})}  # set at step 10
    # 4. corruption of student samples and positives
    z_fake, z_real, tau_real = objective.corrupt_both(roll["x"], real, tau, sched, mask_id, method, clip, generator)
    if student_iteration < 0:  # the discriminator's warm-up: its step is all there is (no reward, no student loss)
        d_loss, d_acc = discriminator_steps(state, z_real, tau_real, z_fake, tau, count)
        state.iteration += 1
        hooked = dict.fromkeys(state.reward_hook.stats, math.nan) if state.reward_hook is not None else {}
        return {**WARMUP_STATS, **stats, "d_loss": d_loss.item(), "d_acc": d_acc.item(), **hooked}
    # 5-6. discriminator step(s); the reward from the just-updated discriminator (reward_before_update: the one
    # before), on the corruptions of the student's samples that reward_times draws
    views = objective.reward_corruptions(roll["x"], z_fake, tau, distill_cfg["reward_times"],
                                         distill_cfg["reward_corruptions"], clip, sched, mask_id, generator, G)
    reward = reward_of(state, views) if method["reward_before_update"] else None
    d_loss, d_acc = discriminator_steps(state, z_real, tau_real, z_fake, tau, count)
    reward = reward_of(state, views) if reward is None else reward
    hooked = {}
    if state.reward_hook is not None:  # the caller's observer of the reward, which may replace it
        reward, hooked = state.reward_hook(roll["x"], reward, G)
    # 7. grouped advantage (shuffle_advantages: permuted across rows)
    advantage = objective.advantages(reward, G, distill_cfg["advantage_clip"], method, generator,
                                     distributed.all_reduce_sum)
    # 8. time weight omega(tau), optionally / pi(tau)
    weight = objective.time_weight(sched, tau, pi, method, distill_cfg["omega_clip"])
    # 9. student loss: policy gradient + regulariser to the teacher - entropy bonus
    pg_loss = objective.policy_gradient_loss(weight, advantage, roll["logp"])
    kl, entropy = objective.regulariser(roll["states"], state.teacher, sched, mask_id, method, count)
    loss = pg_loss + method["kl_coef"] * kl - method["entropy_coef"] * entropy
    # 10. student update (clipping), student_epochs - 1 more on the same rollouts, and its EMA
    grad_norm = optimiser_step(state.opt_student, loss, list(state.student.parameters()),
                               distill_cfg["student_grad_clip"])
    if method["student_epochs"] > 1:
        stats["clip_fraction"] = further_student_updates(state, roll, weight, advantage, count)
    runtime.ema_update(state.student_ema, state.student, distill_cfg["ema"], student_iteration, warmup=False)
    state.iteration += 1
    return {"student_loss": loss.item(), "pg_loss": pg_loss.item(), "kl": kl.item(), "entropy": entropy.item(),
            "reward": reward.mean().item(), "d_loss": d_loss.item(), "d_acc": d_acc.item(),
            "grad_norm": float(grad_norm), **stats, **hooked}


# ---------------------------------------------------------------------------------------------- the loop
def resume_identity(distill_cfg: dict, method: dict, seed: int, schedule: LogLinearSchedule, teacher: nn.Module,
                    positives: np.ndarray) -> dict:
    """What a checkpoint must agree with to be resumed: the distill step's keys of distill_cfg and of the diffusion
    section (stages.STEPS["distill"]: the schedule's eps) with what the rule adds per run (the variant's switches
    `method`, the run's seed); not the iteration count (extending a run is a resume), unless the learning rate
    decays over the run (lr_schedule linear_decay: its length is then part of every iteration's rate); fingerprints
    of the teacher's weights and of the positives (a retrained teacher starts afresh); the code `didi distill`
    runs."""
    sections = {"seed": seed, "distill": distill_cfg, "diffusion": {"eps": schedule.eps}}
    decay_length = distill_cfg["iterations"] if distill_cfg["lr_schedule"] != "constant" else None
    with torch.no_grad():
        teacher_sums = [round(float(p.double().sum()), 6) for p in teacher.parameters()]
    head = np.asarray(positives[:256]).astype(np.int64)
    positives_sums = [list(positives.shape), int(head.sum()), int((head[:, ::2] * 3).sum())]
    return runtime.step_identity("distill", sections, method=method, decay_length=decay_length, teacher=teacher_sums,
                                 data=positives_sums)


def run_distillation(teacher: nn.Module, positives, distill_cfg: dict, method: dict, schedule: LogLinearSchedule,
                     mask_id: int, seed: int, device="cpu", discriminator: nn.Module | None = None,
                     checkpoint_dir: str | Path | None = None, dist: distributed.DistInfo | None = None,
                     progress: bool = True, wandb_run=None, reward_hook: RewardHook | None = None) -> DistillState:
    """Distil for distill_cfg["iterations"] student iterations after distill_cfg["discriminator_warmup"]
    discriminator-only ones (resuming from checkpoint_dir when it holds a checkpoint of
    the same identity; history["resumed_from_iteration"] says where, or None). reward_hook: see RewardHook.

    positives [N, L] (tensor or array): the discriminator's positive pool (real data, or teacher samples); each
    iteration draws distill_cfg["batch_size"] rows of it, shared across ranks, and this rank takes its slice.
    """
    dist = dist or distributed.DistInfo(device=torch.device(device))
    # rows are read per iteration (a memory-mapped .npy stays on disk: paper-scale token files do not fit in RAM)
    positives = positives.numpy() if isinstance(positives, torch.Tensor) else positives
    state = build_state(teacher, distill_cfg, method, schedule, mask_id, positives.shape[1], discriminator, dist,
                        seed, reward_hook)
    identity = resume_identity(distill_cfg, method, seed, schedule, teacher, positives)
    modules = {"student": state.student, "student_ema": state.student_ema, "discriminator": state.discriminator}
    resumed = None
    if checkpoint_dir is not None:
        resumed = runtime.resume(Path(checkpoint_dir), identity, modules, dist.device, dist)
    if resumed is not None:
        state.opt_student.load_state_dict(resumed["opt_student"])
        state.opt_disc.load_state_dict(resumed["opt_disc"])
        state.iteration, state.history = int(resumed["step"]), resumed["history"]
    # the discriminator's warm-up iterations come before the student's `iterations`
    total, batch_size = distill_cfg["discriminator_warmup"] + distill_cfg["iterations"], distill_cfg["batch_size"]
    mine = distributed.shard_rows(batch_size, dist)
    bar = io.Progress(total, every=distill_cfg["log_every"], desc="distill", unit="it", start=state.iteration,
                      logger=log, enabled=progress and dist.is_main)
    dev = torch.device(device)
    while state.iteration < total:
        it = state.iteration
        # the same rows on every rank (then sliced), and one generator per global group (prompt): a row's draws do
        # not depend on the number of ranks. Dropout masks are drawn per rank (seeded, but a 2-rank run matches a
        # 1-rank one only with dropout 0, as for the teacher).
        idx = torch.randint(positives.shape[0], (batch_size,), generator=runtime.generator(seed, SHARED_ROWS, it))
        gen = group_generators(seed, it, range(mine.start, mine.stop), dev)
        torch.manual_seed(runtime.seed(seed, DROPOUT, it, dist.rank))
        rows = torch.as_tensor(np.asarray(positives[idx[mine].numpy()]).astype(np.int64))
        stats = distill_step(state, rows.to(dev), gen)
        keys = sorted(stats)
        reduced = distributed.all_reduce_mean(torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=dev))
        for k, v in zip(keys, reduced.tolist()):
            state.history.setdefault(k, []).append(v)
        if wandb_run is not None:
            wandb_run.log({f"distill/{k}": v for k, v in zip(keys, reduced.tolist()) if math.isfinite(v)},
                          step=state.iteration)
        bar.update(state.iteration, reward=stats["reward"], d_acc=stats["d_acc"], loss=stats["student_loss"])
        if checkpoint_dir is not None and (state.iteration % distill_cfg["checkpoint_every"] == 0
                                           or state.iteration == total):
            if dist.is_main:
                runtime.save_checkpoint(Path(checkpoint_dir), state.iteration, modules, {
                    "opt_student": state.opt_student.state_dict(), "opt_disc": state.opt_disc.state_dict(),
                    "history": state.history}, identity)
            distributed.barrier()
    if dist.enabled:
        runtime.check_replicas_identical(list(modules.values()), dist)
    state.history["seconds_this_run"] = [bar.elapsed()]
    state.history["iterations_this_run"] = [bar.total - bar.start_step]
    state.history["resumed_from_iteration"] = [None if resumed is None else int(resumed["step"])]
    return state
