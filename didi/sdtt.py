"""SDTT, Self-Distillation Through Time (Deschenaux & Gulcehre, arXiv 2410.21035; reference code jdeschena/sdtt,
`src/sdtt/core/distill/multi_round_sdtt.py`, class `MultiRoundSDTT`): the few-step baseline of DiDi-Instruct.
docs/sdtt.md describes it and every switch where paper and reference code differ.

Teacher and student start as the same MDLM. Round r distils a teacher that samples with K_r = start_nfe / n^r
steps (step dt_r = (1 - t_end) / K_r, n = teacher_steps = 2) into a student that samples with K_r / n steps:
 1. x from the data, t ~ U[t_min, 1] (antithetic over the global batch), z_t = corrupt(x, alpha(t)).
 2. Target (`teacher_target`): the frozen teacher takes n ancestral steps of size dt from z_t; at each position it
    unmasks, the target is the teacher's log p(x0) of that step; positions still masked after the n steps get the
    last step's prediction.
 3. Student (`student_log_probs`): its log p(x0) at z_t (one step of size n dt from the same state).
 4. Loss (`divergence`): kl_bwd = KL(student || teacher) (reference default), kl_fwd, mse, tvd, l1_log, averaged
    over the masked positions of z_t. AdamW, warm-up, clipping, EMA.
 5. Every steps_per_round steps dt grows n-fold and the student's raw weights (or its EMA: teacher_on_growth) become
    the new teacher; the optimiser carries on (reset_optimizer). The last round's student samples with min_nfe steps.

The maths are the plain functions below (`round_plan`, `teacher_times`, `teacher_target`, `student_log_probs`,
`divergence`); `sdtt_step` is one optimiser step, `run_sdtt` the resumable loop (checkpoints, DDP, wandb), and the
`didi distill-sdtt` command (files in, files out) is `run` at the bottom.
DDP: every draw of a row comes from its own generator (seed, step, global row) and masked-position means divide by
the count summed over ranks, so N ranks reproduce one process on the same global batch (with dropout 0).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from didi import config, distributed, io, runtime
from didi.diffusion import LogLinearSchedule, ancestral_step, corrupt, subs_log_probs
from didi.objective import draw_rows

log = logging.getLogger("didi.sdtt")

DIVERGENCES = ("kl_bwd", "kl_fwd", "mse", "tvd", "l1_log")
TIME_GRIDS = ("code", "fixed")
# streams of seeds, runtime.seed(config seed, STREAM, ...): its own numbers, so no draw repeats another module's
ROWS, TIME, ROW_NOISE, DROPOUT = 100, 101, 102, 103


# ---------------------------------------------------------------------------------------------- rounds
@dataclasses.dataclass(frozen=True)
class Round:
    index: int
    teacher_nfe: int   # K_r: the teacher's sampling steps; its step is dt
    student_nfe: int   # K_r / teacher_steps: the steps this round's student is trained to sample with
    dt: float          # (1 - t_end) / K_r
    start: int         # first optimiser step of the round (the teacher is swapped just before it, r >= 1)
    stop: int          # one past its last step


def round_plan(start_nfe: int, min_nfe: int, steps_per_round: int, t_end: float, teacher_steps: int = 2) -> list[Round]:
    """The rounds that take a teacher of start_nfe steps down to a student of min_nfe steps, each n = teacher_steps
    times fewer steps than the last (1024 -> 8 with n = 2: 7 rounds; 64 -> 8: 3)."""
    if teacher_steps < 2 or min_nfe < 1 or steps_per_round < 1:
        raise ValueError(f"need teacher_steps >= 2, min_nfe >= 1, steps_per_round >= 1, got {teacher_steps}, "
                         f"{min_nfe}, {steps_per_round}")
    rounds, k = [], start_nfe
    while k > min_nfe:
        if k % teacher_steps:
            break
        r = len(rounds)
        rounds.append(Round(r, k, k // teacher_steps, (1 - t_end) / k, r * steps_per_round, (r + 1) * steps_per_round))
        k //= teacher_steps
    if k != min_nfe or not rounds:
        raise ValueError(f"sdtt: start_nfe {start_nfe} is not min_nfe {min_nfe} times a power >= 1 of "
                         f"teacher_steps {teacher_steps}")
    return rounds


def plan_of(cfg: dict) -> list[Round]:
    """The rounds of a whole config (sdtt.start_nfe null: data.seq_len, one step per position)."""
    s = cfg["sdtt"]
    start = s["start_nfe"] if s["start_nfe"] is not None else cfg["data"]["seq_len"]
    return round_plan(start, s["min_nfe"], s["steps_per_round"], cfg["diffusion"]["sampling_t_end"],
                      s["teacher_steps"])


def round_of(step: int, rounds: list[Round]) -> Round:
    """The round optimiser step `step` (0-based) belongs to."""
    if not 0 <= step < rounds[-1].stop:
        raise ValueError(f"step {step} is outside the {len(rounds)} rounds (0..{rounds[-1].stop - 1})")
    return rounds[step // (rounds[0].stop - rounds[0].start)]


def swap_steps(rounds: list[Round]) -> list[int]:
    """The steps before which the student becomes the teacher (dt grows): the start of every round but the first."""
    return [r.start for r in rounds[1:]]


# ---------------------------------------------------------------------------------------------- the maths
def draw_times(n: int, t_min: float, antithetic: bool, generator: torch.Generator, device) -> torch.Tensor:
    """t [n] float64 in [t_min, 1]; antithetic (the reference's): one u, row i gets (u + i / n) mod 1."""
    if antithetic:
        u = (torch.rand(1, generator=generator, dtype=torch.float64) + torch.arange(n, dtype=torch.float64) / n) % 1
    else:
        u = torch.rand(n, generator=generator, dtype=torch.float64)
    return (t_min + (1 - t_min) * u).to(device)


def teacher_times(t: torch.Tensor, dt: float, n: int, grid: str, t_floor: float):
    """(start, end) times [n, B] of the teacher's n ancestral steps from t [B] (float64), end clamped at 0 (alpha 1:
    every position revealed; the reference's negative end time does the same).

    fixed: t -> t - dt -> ... -> t - n dt (the paper: n contiguous steps of size dt).
    code:  the reference's `ts = t_start * space + (1 - t_start) * t_end`, space = linspace(1, 0, n),
           t_end = t - n dt, ts clamped at t_floor, each step ts_i -> ts_i - dt. For n = 2 the steps start at
           t + (1 - t)(t - 2 dt) and (1 - t)(t - 2 dt): not at t, and not contiguous."""
    t = t.to(torch.float64)
    if grid == "fixed":
        i = torch.arange(n, dtype=torch.float64, device=t.device)[:, None]
        starts = (t[None] - i * dt).clamp(min=0.0)
    elif grid == "code":
        space = torch.linspace(1, 0, n, dtype=torch.float64, device=t.device)[:, None]
        t_end = t[None] - dt * n
        starts = (t[None] * space + (1 - t[None]) * t_end).clamp(min=t_floor)
    else:
        raise ValueError(f"sdtt.time_grid must be one of {TIME_GRIDS}, got {grid!r}")
    return starts, (starts - dt).clamp(min=0.0)


@torch.no_grad()
def teacher_target(teacher_fn, z: torch.Tensor, t: torch.Tensor, dt: float, n: int, schedule: LogLinearSchedule,
                   mask_id: int, generator, grid: str = "fixed", t_floor: float = 1e-5, precision: str = "float64"):
    """The SDTT target [B, L, V+1] (SUBS log-probs) of the teacher's n ancestral steps from z (times teacher_times):
    at a position revealed in step i, the teacher's log p(x0) at step i; at one still masked after n steps, the last
    step's; at one observed in z, the first call's point mass (the loss never reads it).

    generator: one torch.Generator, or a list of one per row (objective.draw_rows: a row's draws then do not depend
    on the rows beside it). Returns (target, revealed_at [B, L] long: the step 0..n-1 that revealed a masked position,
    n for one still masked, -1 for an observed one)."""
    starts, ends = teacher_times(t, dt, n, grid, t_floor)
    current, target = z, None
    revealed_at = torch.where(z == mask_id, n, -1)
    for i in range(n):
        log_p = subs_log_probs(teacher_fn(current, schedule.sigma(starts[i]).float()), current, mask_id)
        a_t, a_s = schedule.alpha(starts[i]), schedule.alpha(ends[i])
        nxt = draw_rows(generator, z.shape[0], lambda g, r: ancestral_step(
            log_p[r], current[r], a_t[r], a_s[r], mask_id, g, precision))
        revealed = (current == mask_id) & (nxt != mask_id)
        target = log_p.clone() if target is None else torch.where(revealed[..., None], log_p, target)
        revealed_at = torch.where(revealed, i, revealed_at)
        current = nxt
    still = current == mask_id  # the last step's prediction there (log_p is that step's)
    return torch.where(still[..., None], log_p, target), revealed_at


def student_log_probs(student_fn, z: torch.Tensor, t: torch.Tensor, schedule: LogLinearSchedule, mask_id: int):
    """The student's SUBS log p(x0 | z_t) [B, L, V+1]: its one step of size n dt from z_t reads this distribution."""
    return subs_log_probs(student_fn(z, schedule.sigma(t).float()), z, mask_id)


def divergence(student: torch.Tensor, target: torch.Tensor, kind: str, mask_id: int) -> torch.Tensor:
    """Per-position divergence [M] between log-probs [M, V+1] of the student and the teacher's target, over the
    real tokens ([MASK] has log-prob -inf on both sides and is left out; a -inf of one side only counts).

    kl_bwd: KL(student || teacher) = sum p_s (log p_s - log p_t) (the reference's default `kl-bwd`);
    kl_fwd: KL(teacher || student); mse: mean over the V+1 entries of (log p_s - log p_t)^2 (the reference's
    F.mse_loss on log-probs, whose [MASK] entries agree); tvd: 1/2 sum |p_s - p_t| (the paper's total variation);
    l1_log: sum |log p_s - log p_t|, what the reference's `tvd` mode computes (an L1 distance of LOG-probs)."""
    keep = torch.ones(student.shape[-1], dtype=torch.bool, device=student.device)
    keep[mask_id] = False
    ls, lt = student[:, keep], target[:, keep]

    def kl(lp, lq):  # sum p (log p - log q), 0 where p = 0
        return torch.where(lp > -math.inf, lp.exp() * (lp - lq), 0.0).sum(-1)

    if kind == "kl_bwd":
        return kl(ls, lt)
    if kind == "kl_fwd":
        return kl(lt, ls)
    if kind == "mse":
        return (ls - lt).pow(2).sum(-1) / student.shape[-1]
    if kind == "tvd":
        return 0.5 * (ls.exp() - lt.exp()).abs().sum(-1)
    if kind == "l1_log":
        return (ls - lt).abs().sum(-1)
    raise ValueError(f"sdtt.divergence must be one of {DIVERGENCES}, got {kind!r}")


# ---------------------------------------------------------------------------------------------- state + step
@dataclasses.dataclass
class SDTTState:
    student: nn.Module
    student_ema: nn.Module
    teacher: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LogLinearSchedule
    sdtt_cfg: dict           # cfg["sdtt"]
    rounds: list
    mask_id: int
    t_min: float             # training times t ~ U[t_min, 1] (diffusion.t_min)
    antithetic: bool
    t_floor: float           # diffusion.sampling_t_end: the grid's end, the code time grid's floor
    dist: distributed.DistInfo = dataclasses.field(default_factory=distributed.DistInfo)
    step: int = 0
    ema_updates: int = 0     # EMA updates since the EMA was (re)started (its decay warm-up counts them)
    history: dict = dataclasses.field(default_factory=dict)


def new_optimizer(model: nn.Module, sdtt_cfg: dict) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=sdtt_cfg["lr"], betas=tuple(sdtt_cfg["betas"]),
                             eps=sdtt_cfg["adam_eps"], weight_decay=sdtt_cfg["weight_decay"])


def build_state(teacher: nn.Module, sdtt_cfg: dict, rounds: list, schedule: LogLinearSchedule, mask_id: int,
                t_min: float, antithetic: bool, t_floor: float, dist: distributed.DistInfo | None = None) -> SDTTState:
    """Student and EMA start as copies of the teacher; the teacher is a frozen copy (swapped rounds overwrite it)."""
    teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    student_ema = copy.deepcopy(teacher).eval().requires_grad_(False)
    return SDTTState(student, student_ema, teacher, new_optimizer(student, sdtt_cfg), schedule, sdtt_cfg, rounds,
                     mask_id, t_min, antithetic, t_floor, dist or distributed.DistInfo())


def grow(state: SDTTState) -> None:
    """The start of a new round: the student's raw weights (teacher_on_growth raw, the reference's default) or its
    EMA (ema: the DiDi authors' SDTT config; then student and EMA restart from it as well, as the reference's
    use_ema_on_growth) become the teacher; reset_optimizer: a fresh AdamW (its warm-up restarts)."""
    cfg = state.sdtt_cfg
    with torch.no_grad():
        if cfg["teacher_on_growth"] == "ema":
            state.student.load_state_dict(state.student_ema.state_dict())
            state.ema_updates = 0
        state.teacher.load_state_dict(state.student.state_dict())
    if cfg["reset_optimizer"]:
        state.optimizer = new_optimizer(state.student, cfg)


def sdtt_step(state: SDTTState, x: torch.Tensor, t: torch.Tensor, generators) -> dict:
    """One optimiser step on this rank's rows x [b, L] at times t [b] (drawn for the global batch, sliced);
    generators: one per row (its corruption and the teacher's draws). The loss is this rank's share of the global
    masked-position mean (its sum / (global count / world size)), so rank-averaged gradients are one process's.
    Returns float statistics whose mean over ranks is the global value."""
    cfg, sched, mask_id, dist = state.sdtt_cfg, state.schedule, state.mask_id, state.dist
    rnd = round_of(state.step, state.rounds)
    device = x.device
    # the learning rate: warm-up from the run's start (or from the round's with reset_optimizer)
    lr_step = state.step - (rnd.start if cfg["reset_optimizer"] else 0)
    lr = runtime.warmup_lr(lr_step, cfg["lr"], cfg["warmup_steps"])
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    z = draw_rows(generators, x.shape[0], lambda g, r: corrupt(x[r], sched.alpha(t[r]), mask_id, g))
    masked = z == mask_id

    teacher_fn = runtime.model_fn_of(state.teacher, device, cfg["bf16"])
    student_fn = runtime.model_fn_of(state.student, device, cfg["bf16"])

    target, revealed_at = teacher_target(teacher_fn, z, t, rnd.dt, cfg["teacher_steps"], sched, mask_id, generators,
                                         cfg["time_grid"], state.t_floor, cfg["teacher_precision"])
    state.student.train()
    pred = student_log_probs(student_fn, z, t, sched, mask_id)
    dtype = torch.float64 if cfg["loss_precision"] == "float64" else torch.float32
    per_position = divergence(pred[masked].to(dtype), target[masked].to(dtype), cfg["divergence"], mask_id)
    count = distributed.all_reduce_sum(masked.sum()).clamp(min=1) / dist.world_size
    loss = per_position.sum() / count.to(per_position.dtype)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = list(state.student.parameters())
    for p in params:
        if p.grad is not None:
            p.grad.copy_(distributed.all_reduce_mean(p.grad))
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"] if cfg["grad_clip"] > 0 else math.inf)
    state.optimizer.step()
    state.ema_updates += 1
    # the reference's EMA (MDLM's): decay min(ema, (1 + n) / (10 + n)) over its n updates since it was started
    runtime.ema_update(state.student_ema, state.student, cfg["ema"], state.ema_updates, warmup=cfg["ema_warmup"])
    state.step += 1
    revealed = ((revealed_at >= 0) & (revealed_at < cfg["teacher_steps"])).sum()
    return {"loss": loss.item(), "grad_norm": float(grad_norm), "lr": lr,
            "masked_fraction": masked.double().mean().item(),
            # masked positions the teacher revealed in its steps (the rest take its last prediction)
            "revealed_fraction": (revealed.double() / count).item()}


# ---------------------------------------------------------------------------------------------- the loop
def resume_identity(sdtt_cfg: dict, rounds: list, diffusion: dict, seed: int, teacher: nn.Module,
                    tokens: np.ndarray) -> dict:
    """What a checkpoint must agree with: the keys of the SDTT step (stages.STEPS["distill_sdtt"]: the same keys
    whose edit reruns it), the rounds, fingerprints of the starting teacher's weights and of the data, and the code
    `didi distill-sdtt` runs."""
    with torch.no_grad():
        teacher_sums = [round(float(p.double().sum()), 6) for p in teacher.parameters()]
    head = np.asarray(tokens[:256]).astype(np.int64)
    return runtime.step_identity("distill_sdtt", {"seed": seed, "sdtt": sdtt_cfg, "diffusion": diffusion},
                                 rounds=[dataclasses.asdict(r) for r in rounds], teacher=teacher_sums,
                                 data=[list(tokens.shape), int(head.sum()), int((head[:, ::2] * 3).sum())])


def run_sdtt(teacher: nn.Module, tokens, sdtt_cfg: dict, rounds: list, schedule: LogLinearSchedule, mask_id: int,
             seed: int, diffusion: dict, device="cpu", checkpoint_dir: str | Path | None = None,
             dist: distributed.DistInfo | None = None, progress: bool = True, wandb_run=None,
             on_round_end: Callable[[Round, SDTTState], None] | None = None,
             stop_at: int | None = None) -> SDTTState:
    """All rounds (resuming from checkpoint_dir when it holds a checkpoint of the same identity; history
    "resumed_from_step" says where, or None). tokens [N, L] (array or tensor; read per step, so a memory-mapped
    file stays on disk); diffusion: cfg["diffusion"] (t_min, antithetic, sampling_t_end).
    on_round_end(round, state): called on every rank after a round's last step, before that step's checkpoint
    (rank 0 saves the round's students there). stop_at: stop after that many steps (as a kill would)."""
    dist = dist or distributed.DistInfo(device=torch.device(device))
    dev = torch.device(device)
    tokens = tokens.numpy() if isinstance(tokens, torch.Tensor) else tokens
    state = build_state(teacher, sdtt_cfg, rounds, schedule, mask_id, diffusion["t_min"], diffusion["antithetic"],
                        diffusion["sampling_t_end"], dist)
    identity = resume_identity(sdtt_cfg, rounds, diffusion, seed, teacher, tokens)
    modules = {"student": state.student, "student_ema": state.student_ema, "teacher": state.teacher}
    total = rounds[-1].stop
    resumed = None
    if checkpoint_dir is not None:
        resumed = runtime.resume(Path(checkpoint_dir), identity, modules, dev, dist, max_step=total)
    if resumed is not None:
        state.optimizer.load_state_dict(resumed["optimizer"])
        state.step, state.history = int(resumed["step"]), resumed["history"]
        state.ema_updates = int(resumed["ema_updates"])
    state.history.setdefault("round_seconds", [0.0] * len(rounds))
    state.history.setdefault("teacher_calls", 0)
    batch = sdtt_cfg["batch_size"]
    mine = distributed.shard_rows(batch, dist)
    stop = total if stop_at is None else min(total, stop_at)
    bar = io.Progress(total, every=sdtt_cfg["log_every"], desc="sdtt", unit="step", start=state.step, logger=log,
                      enabled=progress and dist.is_main)
    swaps = set(swap_steps(rounds))
    while state.step < stop:
        step, rnd = state.step, round_of(state.step, rounds)
        t0 = time.perf_counter()
        if step in swaps:
            grow(state)
            if dist.is_main:
                log.info("step %d: round %d/%d, teacher %s -> %d steps (dt %.4g), student %d steps", step,
                         rnd.index + 1, len(rounds), sdtt_cfg["teacher_on_growth"], rnd.teacher_nfe, rnd.dt,
                         rnd.student_nfe)
        # the same rows and times on every rank (then sliced), one generator per global row
        idx = torch.randint(tokens.shape[0], (batch,), generator=runtime.generator(seed, ROWS, step))
        t = draw_times(batch, state.t_min, state.antithetic, runtime.generator(seed, TIME, step), dev)[mine]
        gens = [runtime.generator(seed, ROW_NOISE, step, row, device=dev) for row in range(mine.start, mine.stop)]
        torch.manual_seed(runtime.seed(seed, DROPOUT, step, dist.rank))
        x = torch.as_tensor(np.asarray(tokens[idx[mine].numpy()]).astype(np.int64)).to(dev)
        stats = sdtt_step(state, x, t, gens)
        keys = sorted(stats)
        reduced = distributed.all_reduce_mean(torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=dev))
        for k, v in zip(keys, reduced.tolist()):
            state.history.setdefault(k, []).append(v)
        state.history["teacher_calls"] += sdtt_cfg["teacher_steps"]
        state.history["round_seconds"][rnd.index] += time.perf_counter() - t0
        if wandb_run is not None:
            wandb_run.log({**{f"sdtt/{k}": v for k, v in zip(keys, reduced.tolist())}, "sdtt/round": rnd.index},
                          step=state.step)
        bar.update(state.step, round=f"{rnd.index + 1}/{len(rounds)}", nfe=rnd.student_nfe,
                   loss=state.history["loss"][-1])
        round_done = state.step == rnd.stop
        if round_done and on_round_end is not None:
            on_round_end(rnd, state)
        if checkpoint_dir is not None and (state.step % sdtt_cfg["checkpoint_every"] == 0 or round_done):
            if dist.is_main:
                runtime.save_checkpoint(Path(checkpoint_dir), state.step, modules, {
                    "optimizer": state.optimizer.state_dict(), "history": state.history,
                    "ema_updates": state.ema_updates}, identity)
            distributed.barrier()
    if dist.enabled:
        runtime.check_replicas_identical([state.student, state.student_ema, state.teacher], dist)
    state.history["seconds_this_run"] = bar.elapsed()
    state.history["steps_this_run"] = state.step - bar.start_step
    state.history["resumed_from_step"] = None if resumed is None else int(resumed["step"])
    return state


# ---------------------------------------------------------------------------------------------- workflow helpers
def student_subdir(cfg: dict, nfe) -> str:
    """The students of a run, relative to its directory: nfe{K}/student (EMA) or nfe{K}/student_raw, as
    sdtt.student_weights says, for the round whose student samples with K = nfe steps."""
    nfes = [r.student_nfe for r in plan_of(cfg)]
    if int(nfe) not in nfes:
        raise ValueError(f"no SDTT round trains a student for {nfe} steps (rounds: {nfes})")
    return f"nfe{int(nfe)}/{config.STUDENT_DIRS[cfg['sdtt']['student_weights']]}"


# ---------------------------------------------------------------------------------------------- the command
RUN_KEYS = ("seconds_this_run", "steps_this_run", "resumed_from_step", "round_seconds", "teacher_calls")


def round_summary(history: dict, rounds: list, last: int = 50) -> list[dict]:
    """Per round: its NFEs, dt, steps, wall-clock, loss curve, first and final loss (mean of its last `last`)."""
    out = []
    for r in rounds:
        loss = history.get("loss", [])[r.start:r.stop]
        out.append({**dataclasses.asdict(r), "seconds": history["round_seconds"][r.index],
                    "first_loss": loss[0] if loss else None,
                    "final_loss": float(np.mean(loss[-last:])) if loss else None, "final_means_over": last,
                    "loss_curve": loss,
                    "revealed_fraction":
                        float(np.mean(history["revealed_fraction"][r.start:r.stop])) if loss else None})
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    config.add_arguments(p)
    p.add_argument("--teacher", required=True, help="teacher model directory (save_dit format)")
    p.add_argument("--tokens", required=True, help="training token blocks [N, L] (.npy)")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory ([MASK] = len(tokenizer))")
    p.add_argument("--out-dir", required=True, help="nfe{K}/{student,student_raw}/ per round, metrics.json, "
                                                     "checkpoints/")


def student_dirs(out_dir: str | Path, nfe: int) -> dict[str, Path]:
    """Where a round's students are published: out/nfe{K}/student (EMA) and out/nfe{K}/student_raw."""
    base = Path(out_dir) / f"nfe{nfe}"
    return {weights: base / name for weights, name in config.STUDENT_DIRS.items()}


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from didi.model import load_dit, mask_id_of, save_dit

    cfg = config.from_args(args)
    if "sdtt" not in cfg:
        raise config.ConfigError("didi distill-sdtt needs an `sdtt:` config section")
    sdtt_cfg, diffusion = cfg["sdtt"], cfg["diffusion"]
    info = runtime.start_process()
    out = Path(args.out_dir)
    teacher, teacher_json = load_dit(args.teacher, info.device)
    mask_id = mask_id_of(teacher, AutoTokenizer.from_pretrained(args.tokenizer), args.teacher, args.tokenizer)
    tokens = np.load(args.tokens, mmap_mode="r")
    seq_len = teacher.config.seq_len
    start_nfe = sdtt_cfg["start_nfe"] if sdtt_cfg["start_nfe"] is not None else seq_len
    rounds = round_plan(start_nfe, sdtt_cfg["min_nfe"], sdtt_cfg["steps_per_round"], diffusion["sampling_t_end"],
                        sdtt_cfg["teacher_steps"])
    if info.is_main:
        log.info("SDTT on %s x%d: %d rounds of %d steps, teacher %d -> student %d steps, %s, grid %s, teacher on "
                 "growth %s", info.device, info.world_size, len(rounds), sdtt_cfg["steps_per_round"], start_nfe,
                 rounds[-1].student_nfe, sdtt_cfg["divergence"], sdtt_cfg["time_grid"], sdtt_cfg["teacher_on_growth"])
    wandb_run = runtime.start_wandb(cfg, out, "distill-sdtt") if info.is_main else None
    snapshots = out / "checkpoints" / "rounds"  # beside the checkpoints: a resumed run republishes finished rounds

    def extra(rnd: Round, weights: str) -> dict:
        return {"sdtt": {"round": rnd.index, "nfe": rnd.student_nfe, "teacher_nfe": rnd.teacher_nfe,
                         "steps": rnd.stop, "weights": weights, "teacher": str(args.teacher),
                         "divergence": sdtt_cfg["divergence"], "time_grid": sdtt_cfg["time_grid"],
                         "teacher_on_growth": sdtt_cfg["teacher_on_growth"]}}

    def save_round(rnd: Round, state: SDTTState) -> None:
        if info.is_main:
            dirs = student_dirs(snapshots, rnd.student_nfe)
            save_dit(dirs["ema"], state.student_ema, extra(rnd, "ema"))
            save_dit(dirs["raw"], state.student, extra(rnd, "raw"))
            log.info("round %d done: student for %d steps saved (loss %.4g)", rnd.index + 1, rnd.student_nfe,
                     state.history["loss"][-1])

    t_start = time.perf_counter()
    state = run_sdtt(teacher, tokens, sdtt_cfg, rounds, LogLinearSchedule(diffusion["eps"]), mask_id, cfg["seed"],
                     diffusion, info.device, checkpoint_dir=out / "checkpoints", dist=info, wandb_run=wandb_run,
                     on_round_end=save_round)
    seconds = time.perf_counter() - t_start
    if info.is_main:
        for rnd in rounds:  # publish every round's students (those of rounds finished before a resume included)
            for weights, src in student_dirs(snapshots, rnd.student_nfe).items():
                with io.atomic_dir(student_dirs(out, rnd.student_nfe)[weights]) as tmp:
                    shutil.copytree(src, tmp, dirs_exist_ok=True)
        h = state.history
        ran = h["steps_this_run"]
        metrics = {
            "method": "sdtt", "sdtt": sdtt_cfg, "teacher": str(args.teacher), "teacher_config": teacher_json["model"],
            "steps": state.step, "steps_this_run": ran, "resumed_from_step": h["resumed_from_step"],
            "wall_clock_s": float(sum(h["round_seconds"])), "wall_clock_this_run_s": seconds,
            "steps_per_s": ran / max(h["seconds_this_run"], 1e-9) if ran else None,
            "teacher_forward_calls": h["teacher_calls"],
            "teacher_forward_rows": h["teacher_calls"] * sdtt_cfg["batch_size"],
            "student_nfes": [r.student_nfe for r in rounds],
            "world_size": info.world_size, "device": str(info.device),
            "rounds": round_summary(h, rounds),
            "history": {k: v for k, v in h.items() if k not in RUN_KEYS},
        }
        io.write_metrics(out / "metrics.json", metrics, cfg)
        log.info("done: %d rounds, %d steps in %.0f s, students for %s steps -> %s", len(rounds), state.step,
                 metrics["wall_clock_s"], metrics["student_nfes"], out)
    if wandb_run:
        wandb_run.finish()
    distributed.barrier()
    distributed.shutdown()
    return 0


COMMANDS = {"distill-sdtt": (add_arguments, run)}
