"""DiDi-Instruct: distil a masked-diffusion teacher into a few-step student (method.md section 2).

One iteration (`distill_step`):
 1. B positive rows (real data, or teacher samples), each repeated G times: one group = G student samples.
 2. tau per row ~ Uniform(0,1) or Beta(2,2), clamped.
 3. The student generates by ancestral sampling: 1 -> tau -> end ("score decomposition", log p = ell_1 + ell_2),
    or one-shot 1 -> end (baseline). end is alpha = 1 (no [MASK] survives) or t0.
 4. Student samples and positives are corrupted at alpha(tau) (coupled) or at independent times.
 5. One discriminator step: BCE with label smoothing on masked positions.
 6. Reward from the just-updated discriminator: clipped log-odds averaged over the masked positions of a row.
 7. Grouped normalisation -> advantage A, clipped.
 8. Weight omega(tau) (clipped) and optionally 1 / pi(tau).
 9. Student loss = -mean(w * A * log p) + kl_coef * KL(teacher || student) [or Jeffrey] - entropy_coef * H.
10. AdamW steps with warm-up and clipping for student and discriminator; EMA of the student.

The core (`build_state`, `distill_step`, `run_distillation`) works on any denoiser module
`model(z [B,L], sigma [B]) -> logits [B,L,V+1]` and any discriminator `D(z, sigma) -> [B,L]`, so tests can run it
on a toy world whose answers are known exactly. `didi distill` wires it to files, checkpoints and DDP.
DDP: every draw of a row comes from its global group's generator (seed, iteration, group) and masked-position means
use counts summed over ranks, so N ranks reproduce one process on the same global batch (with dropout 0).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from didi import config as config_mod
from didi import distributed, io
from didi.diffusion import LogLinearSchedule, corrupt, sample_categorical

log = logging.getLogger("didi.distill")

# keys of cfg["distill"] that do not change the trajectory: a checkpoint stays valid when only they change
NON_TRAJECTORY_KEYS = ("iterations", "log_every", "checkpoint_every", "nfe", "run", "variants", "rgas",
                       "teacher_pool_size", "teacher_pool_nfe")


# ---------------------------------------------------------------------------------------------- small pieces
def real_log_probs(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """log p(v | z) over the REAL tokens only ([MASK] suppressed, the SUBS rule), float32 [..., V]."""
    if mask_id != logits.shape[-1] - 1:
        raise ValueError(f"[MASK] must be the last id (mask_id={mask_id}, vocab={logits.shape[-1]})")
    return torch.log_softmax(logits[..., :mask_id].float(), dim=-1)


def sample_tau(n: int, distribution: str, clip, generator: torch.Generator, device):
    """tau [n] from Uniform(0,1) or Beta(2,2), clamped to `clip`; and pi(tau), the density it was drawn from.

    Beta(2,2) is drawn as the median of three uniforms (density 6 t (1 - t)), so it uses the explicit generator.
    """
    if distribution == "uniform":
        tau = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        pi = torch.ones_like(tau)
    elif distribution == "beta22":
        tau = torch.rand(n, 3, generator=generator, device=device, dtype=torch.float64).median(dim=1).values
        pi = None
    else:
        raise ValueError(f"unknown tau distribution {distribution!r}")
    tau = tau.clamp(*clip)
    if pi is None:
        pi = 6.0 * tau * (1.0 - tau)
    return tau.float(), pi.float()


def grouped_advantages(rewards: torch.Tensor, group_size: int, clip: float) -> torch.Tensor:
    """(R - mean_group) / (std_group + 1e-8), clipped to [-clip, clip]; groups are G consecutive rows.

    std is the unbiased sample standard deviation (torch's default), as in GRPO implementations.
    """
    r = rewards.view(-1, group_size)
    a = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + 1e-8)
    return a.clamp(-clip, clip).view(-1)


def smoothed_bce(logits_real, mask_real, logits_fake, mask_fake, smoothing: float, counts=None) -> torch.Tensor:
    """Balanced BCE on masked positions: real targets 1 - s, student targets s; each side averaged on its own.
    counts: (real, fake) divisors in place of this batch's masked counts (DDP: the global counts / world size),
    each at least 1 / world size (no masked position: a loss of 0)."""
    bce = F.binary_cross_entropy_with_logits
    bce_real = bce(logits_real, torch.full_like(logits_real, 1.0 - smoothing), reduction="none")
    bce_fake = bce(logits_fake, torch.full_like(logits_fake, smoothing), reduction="none")
    n_real, n_fake = counts if counts is not None else (mask_real.sum().clamp(min=1), mask_fake.sum().clamp(min=1))
    real = (bce_real * mask_real).sum() / n_real
    fake = (bce_fake * mask_fake).sum() / n_fake
    return 0.5 * (real + fake)


def masked_row_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row mean of values [B, L] over positions where mask [B, L] is true (0 for a row with none)."""
    mask = mask.float()
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def divergence(student_lp: torch.Tensor, teacher_lp: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """Per-position divergence between teacher and student token distributions [..., V] -> [...].

    forward_kl: KL(teacher || student). jeffrey: (1 - beta) KL(teacher || student) + beta KL(student || teacher)
    (beta = 0 is the forward KL, beta = 1 the reverse, as in the official config).
    """
    forward = (teacher_lp.exp() * (teacher_lp - student_lp)).sum(-1)
    if kind == "forward_kl":
        return forward
    if kind == "jeffrey":
        reverse = (student_lp.exp() * (student_lp - teacher_lp)).sum(-1)
        return (1.0 - beta) * forward + beta * reverse
    raise ValueError(f"unknown regularizer {kind!r}")


def lr_at(iteration: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up over `warmup` iterations, then constant."""
    return base_lr * min(1.0, (iteration + 1) / warmup) if warmup > 0 else base_lr


DISCRIMINATOR_INIT = 2**31 - 1  # a key no iteration number reaches


def iteration_seed(seed: int, *keys: int) -> int:
    """A seed for (iteration, group, ...) so that a resumed run draws exactly what an uninterrupted one draws."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint64)[0] % (2**63))


GROUP_NOISE = 1  # iteration_seed(seed, it, GROUP_NOISE, g): the draws of global group g at iteration it


def group_generators(seed: int, iteration: int, groups: range, device) -> list[torch.Generator]:
    """One generator per group (prompt) of the GLOBAL batch, seeded by (seed, iteration, global group index): every
    draw of a row is then the same whichever rank holds it, so N ranks reproduce one process on the same batch."""
    return [torch.Generator(device=device).manual_seed(iteration_seed(seed, iteration, GROUP_NOISE, g))
            for g in groups]


def draw_rows(generator, n: int, draw: Callable) -> torch.Tensor:
    """draw(gen, rows: slice) -> tensor for those rows, for n rows. `generator` is one generator for all rows, or a
    list with one per group of n / len(list) consecutive rows (each group drawn from its own generator)."""
    if isinstance(generator, torch.Generator):
        return draw(generator, slice(0, n))
    per = n // len(generator)
    if per * len(generator) != n:
        raise ValueError(f"{n} rows do not split into {len(generator)} equal groups")
    return torch.cat([draw(g, slice(i * per, (i + 1) * per)) for i, g in enumerate(generator)])


def draw_tau(n: int, distribution: str, clip, generator, device):
    """sample_tau for n rows, per group when given one generator per group (see draw_rows)."""
    both = draw_rows(generator, n, lambda g, r: torch.stack(
        sample_tau(r.stop - r.start, distribution, clip, g, device), dim=1))
    return both[:, 0], both[:, 1]


def global_sum(x: torch.Tensor, dist: distributed.DistInfo) -> torch.Tensor:
    """Sum over ranks of a (non-differentiated) tensor; the tensor itself for one process."""
    return distributed.all_reduce_mean(x.detach().double()) * dist.world_size if dist.enabled else x.detach().double()


# ---------------------------------------------------------------------------------------------- the rollout
def student_step(student: nn.Module, z: torch.Tensor, t: torch.Tensor, alpha_next: torch.Tensor,
                 schedule: LogLinearSchedule, mask_id: int, generator, single_pass: bool,
                 precision: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ancestral step t -> s of the student, with the log-probability of what it drew.

    Each masked position is revealed with probability (alpha_s - alpha_t) / (1 - alpha_t) and its token drawn from
    p(. | z_t) (exactly the ancestral step of method.md section 1). Returns (z_s, ell [B], log_probs [B, L, V]) with
    ell = sum over newly revealed positions of log p(token | z_t), differentiable. `single_pass` draws the sample
    from the same forward pass that the gradient goes through (on-policy); otherwise the sample is drawn from a
    separate no-grad pass and the log-prob recomputed (the official code's way; differs under dropout).
    `generator`: one generator, or one per group of rows (draw_rows).
    """
    sigma = schedule.sigma(t)
    if single_pass:
        log_probs = real_log_probs(student(z, sigma), mask_id)
        draw_from = log_probs.detach()
    else:
        with torch.no_grad():
            draw_from = real_log_probs(student(z, sigma), mask_id)
        log_probs = real_log_probs(student(z, sigma), mask_id)
    alpha_t = schedule.alpha(t)
    reveal_prob = ((alpha_next - alpha_t) / (1.0 - alpha_t)).clamp(0.0, 1.0)
    masked = z == mask_id
    n = z.shape[0]
    uniforms = draw_rows(generator, n, lambda g, r: torch.rand(z[r].shape, generator=g, device=z.device))
    reveal = masked & (uniforms < reveal_prob[:, None])
    probs = draw_from.exp()
    tokens = draw_rows(generator, n, lambda g, r: sample_categorical(probs[r], g, precision))
    z_next = torch.where(reveal, tokens, z)
    token_lp = log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # tokens < mask_id: drawn over real ids
    ell = torch.where(reveal, token_lp, 0.0).sum(dim=1)
    return z_next, ell, log_probs


def rollout(student, rows: int, seq_len: int, tau: torch.Tensor, schedule, mask_id: int, method: dict, t0: float,
            generator, precision: str, device) -> dict:
    """The student's few-step generation from all-[MASK]; returns sample, log p, and the states it passed through."""
    z1 = torch.full((rows, seq_len), mask_id, dtype=torch.long, device=device)
    one = torch.ones(rows, device=device)
    end = schedule.alpha(torch.full((rows,), 0.0 if method["finish_at_alpha_one"] else t0, device=device))
    step = dict(schedule=schedule, mask_id=mask_id, generator=generator, single_pass=method["on_policy_single_pass"],
                precision=precision)
    if method["score_decomposition"]:
        z_tau, ell1, lp1 = student_step(student, z1, one, schedule.alpha(tau), **step)
        x, ell2, lp2 = student_step(student, z_tau, tau, end, **step)
        return {"x": x, "logp": ell1 + ell2, "states": [(z1, one, lp1), (z_tau, tau, lp2)]}
    x, ell, lp1 = student_step(student, z1, one, end, **step)
    # one-shot: the only state the student acted in is z_1, so the regulariser is taken there alone
    return {"x": x, "logp": ell, "states": [(z1, one, lp1)]}


# ---------------------------------------------------------------------------------------------- state + step
@dataclasses.dataclass
class DistillState:
    student: nn.Module
    student_ema: nn.Module
    teacher: Callable
    discriminator: nn.Module
    opt_student: torch.optim.Optimizer
    opt_disc: torch.optim.Optimizer
    schedule: LogLinearSchedule
    cfg: dict                 # cfg["distill"]
    method: dict              # the variant's switches
    mask_id: int
    seq_len: int
    precision: str = "float64"
    dist: distributed.DistInfo = dataclasses.field(default_factory=distributed.DistInfo)
    iteration: int = 0
    history: dict = dataclasses.field(default_factory=dict)


def build_state(teacher: nn.Module, cfg_distill: dict, method: dict, schedule: LogLinearSchedule, mask_id: int,
                seq_len: int, discriminator: nn.Module | None = None, precision: str = "float64",
                dist: distributed.DistInfo | None = None, seed: int = 0) -> DistillState:
    """Student, EMA student and (by default) discriminator initialised from the teacher's weights, explicitly,
    AFTER the teacher was loaded (the official code copied an uninitialised network: method.md section 6).
    The discriminator head (and its spectral-norm vectors) are drawn from `seed`, the same on every rank."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher).train()
    for p in student.parameters():
        p.requires_grad_(True)
    student_ema = copy.deepcopy(student).eval()
    for p in student_ema.parameters():
        p.requires_grad_(False)
    if discriminator is None:
        from didi.discriminator import Discriminator

        torch.manual_seed(iteration_seed(seed, DISCRIMINATOR_INIT))
        discriminator = Discriminator.from_teacher(teacher, cfg_distill["discriminator_trainable_blocks"])
    discriminator.train()
    # weight decay 0: decay would pull the student away from the teacher it starts as
    opt_student = torch.optim.AdamW(student.parameters(), lr=cfg_distill["student_lr"], weight_decay=0.0)
    opt_disc = torch.optim.AdamW([p for p in discriminator.parameters() if p.requires_grad],
                                 lr=cfg_distill["discriminator_lr"], weight_decay=0.0)
    return DistillState(student, student_ema, teacher, discriminator, opt_student, opt_disc, schedule, cfg_distill,
                        method, mask_id, seq_len, precision, dist or distributed.DistInfo())


def _sync_grads(params) -> None:
    """DDP by hand: average gradients over ranks (one small all-reduce per tensor; a no-op for one process)."""
    for p in params:
        if p.grad is not None:
            p.grad.copy_(distributed.all_reduce_mean(p.grad))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def distill_step(state: DistillState, positives: torch.Tensor, generator) -> dict:
    """One DiDi-Instruct iteration on this rank's rows. positives [b, L]: the positive rows (b prompts), each is
    repeated G times. generator: one torch.Generator, or a list of b (one per prompt = group: group_generators).

    Under DDP every loss is this rank's share of the GLOBAL loss (masked-position means divide by the count summed
    over ranks, times world size), so the gradients averaged over ranks are those of one process with all rows.
    Returns float statistics whose mean over ranks is the global value."""
    cfg, method, sched, mask_id = state.cfg, state.method, state.schedule, state.mask_id
    G = cfg["group_size"]
    device = positives.device
    real = positives.repeat_interleave(G, dim=0)
    rows = real.shape[0]
    for opt, base in ((state.opt_student, cfg["student_lr"]), (state.opt_disc, cfg["discriminator_lr"])):
        for group in opt.param_groups:
            group["lr"] = lr_at(state.iteration, base, cfg["warmup_steps"])

    # 2-3. time and student rollout
    tau, pi = draw_tau(rows, method["tau_distribution"], cfg["tau_clip"], generator, device)
    roll = rollout(state.student, rows, state.seq_len, tau, sched, mask_id, method, cfg["t0"], generator,
                   state.precision, device)
    x_fake = roll["x"]

    # 4. corruption: student samples at alpha(tau); positives at the same alpha (coupled) or their own time
    alpha_fake = sched.alpha(tau)
    z_fake = draw_rows(generator, rows, lambda g, r: corrupt(x_fake[r], alpha_fake[r], mask_id, g))
    if method["coupled_time"]:
        tau_real = tau
    else:
        tau_real = draw_tau(rows, method["tau_distribution"], cfg["tau_clip"], generator, device)[0]
    alpha_real = sched.alpha(tau_real)
    z_real = draw_rows(generator, rows, lambda g, r: corrupt(real[r], alpha_real[r], mask_id, g))
    mask_fake, mask_real = z_fake == mask_id, z_real == mask_id
    # means over masked positions of the global batch: counts summed over ranks (world x share, see docstring)
    world = state.dist.world_size
    n_real = global_sum(mask_real.sum(), state.dist).clamp(min=1)
    n_fake = global_sum(mask_fake.sum(), state.dist).clamp(min=1)

    # 5. one discriminator step
    D = state.discriminator
    D.train()
    logits_real = D(z_real, sched.sigma(tau_real))
    logits_fake = D(z_fake, sched.sigma(tau))
    d_loss = smoothed_bce(logits_real, mask_real.float(), logits_fake, mask_fake.float(), cfg["label_smoothing"],
                          counts=((n_real / world).float(), (n_fake / world).float()))
    state.opt_disc.zero_grad(set_to_none=True)
    d_loss.backward()
    d_params = [p for p in D.parameters() if p.requires_grad]
    _sync_grads(d_params)
    torch.nn.utils.clip_grad_norm_(d_params, cfg["discriminator_grad_clip"])
    state.opt_disc.step()
    with torch.no_grad():
        correct = ((logits_real > 0) & mask_real).sum() + ((logits_fake < 0) & mask_fake).sum()
        d_acc = world * correct.double() / (n_real + n_fake)

    # 6. reward from the just-updated discriminator (eval mode: no dropout, spectral norm uses its stored vectors)
    with torch.no_grad():
        D.eval()
        token_reward = D(z_fake, sched.sigma(tau)).clamp(-cfg["reward_clip"], cfg["reward_clip"])
        D.train()
        reward = masked_row_mean(token_reward, mask_fake)
        # 7-8. grouped advantage and time weight
        advantage = grouped_advantages(reward, G, cfg["advantage_clip"])
        weight = sched.omega(tau).clamp(*cfg["omega_clip"]) if method["omega"] else torch.ones_like(tau)
        if method["importance_weight"]:
            weight = weight / pi

    # 9. student loss
    pg_loss = -(weight * advantage * roll["logp"]).mean()
    kl = torch.zeros((), device=device)
    entropy = torch.zeros((), device=device)
    for z, t, student_lp in roll["states"]:
        masked = z == mask_id  # where() rather than multiply: outputs at unmasked positions are irrelevant, maybe inf
        count = (global_sum(masked.sum(), state.dist).clamp(min=1) / world).to(student_lp.dtype)
        if method["kl_coef"] > 0:
            with torch.no_grad():
                teacher_lp = real_log_probs(state.teacher(z, sched.sigma(t)), mask_id)
            div = divergence(student_lp, teacher_lp, method["regularizer"], method["jeffrey_beta"])
            kl = kl + torch.where(masked, div, 0.0).sum() / count
        ent = -(student_lp.exp() * student_lp).sum(-1)
        entropy = entropy + torch.where(masked, ent, 0.0).sum() / count
    kl, entropy = kl / len(roll["states"]), entropy / len(roll["states"])
    loss = pg_loss + method["kl_coef"] * kl - method["entropy_coef"] * entropy

    # 10. student update + EMA
    state.opt_student.zero_grad(set_to_none=True)
    loss.backward()
    s_params = list(state.student.parameters())
    _sync_grads(s_params)
    grad_norm = torch.nn.utils.clip_grad_norm_(s_params, cfg["student_grad_clip"])
    state.opt_student.step()
    update_ema(state.student_ema, state.student, cfg["ema"])
    state.iteration += 1

    return {
        "student_loss": loss.item(), "pg_loss": pg_loss.item(), "kl": kl.item(), "entropy": entropy.item(),
        "reward": reward.mean().item(), "d_loss": d_loss.item(), "d_acc": d_acc.item(),
        "grad_norm": float(grad_norm), "logp": roll["logp"].mean().item(),
        "fake_mask_left": (x_fake == mask_id).float().mean().item(),
    }


# ---------------------------------------------------------------------------------------------- checkpoints
def trajectory_hash(cfg_distill: dict, method: dict, seed: int, teacher: nn.Module, positives: np.ndarray) -> str:
    """What a checkpoint must agree with to be resumed: the config (not the iteration count: extending a run is a
    resume), and fingerprints of the teacher's weights and of the positives (a retrained teacher starts afresh)."""
    keep = {k: v for k, v in cfg_distill.items() if k not in NON_TRAJECTORY_KEYS and k != "method"}
    with torch.no_grad():
        teacher_sums = [round(float(p.double().sum()), 6) for p in teacher.parameters()]
    head = np.asarray(positives[:256]).astype(np.int64)
    positives_sums = [list(positives.shape), int(head.sum()), int((head[:, ::2] * 3).sum())]
    return io.config_hash({"distill": keep, "method": method, "seed": seed, "teacher": teacher_sums, "data": positives_sums})


def save_checkpoint(ckpt_dir: Path, state: DistillState, tag: str) -> None:
    with io.atomic_dir(ckpt_dir) as tmp:
        io.save_tensors(tmp / "student.safetensors", state.student.state_dict())
        io.save_tensors(tmp / "student_ema.safetensors", state.student_ema.state_dict())
        io.save_tensors(tmp / "discriminator.safetensors", state.discriminator.state_dict())
        torch.save({"opt_student": state.opt_student.state_dict(), "opt_disc": state.opt_disc.state_dict(),
                    "iteration": state.iteration, "history": state.history, "tag": tag}, tmp / "state.pt")


def load_checkpoint(ckpt_dir: Path, state: DistillState, tag: str) -> bool:
    """Restore state from ckpt_dir if it exists and was made by the same trajectory config; True if resumed."""
    if not (ckpt_dir / "state.pt").exists():
        return False
    meta = torch.load(ckpt_dir / "state.pt", map_location="cpu", weights_only=True)
    if meta["tag"] != tag:
        log.warning("checkpoint %s was made by a different configuration; starting afresh", ckpt_dir)
        return False
    device = str(next(state.student.parameters()).device)
    for name, module in (("student", state.student), ("student_ema", state.student_ema),
                         ("discriminator", state.discriminator)):
        module.load_state_dict(io.load_tensors(ckpt_dir / f"{name}.safetensors", device), strict=True)
    state.opt_student.load_state_dict(meta["opt_student"])
    state.opt_disc.load_state_dict(meta["opt_disc"])
    state.iteration, state.history = int(meta["iteration"]), meta["history"]
    return True


# ---------------------------------------------------------------------------------------------- the loop
def check_replicas_identical(state: DistillState) -> None:
    """DDP must leave every rank with bit-identical student, EMA and discriminator: compare exact float64 sums."""
    modules = (state.student, state.student_ema, state.discriminator)
    sums = torch.stack([t.detach().double().sum() for m in modules for t in m.state_dict().values()]).cpu()
    gathered = [None] * state.dist.world_size
    torch.distributed.all_gather_object(gathered, sums)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError("DDP ranks ended with different distillation weights")
    if state.dist.is_main:
        log.info("weights identical on all %d ranks", state.dist.world_size)


def run_distillation(teacher: nn.Module, positives, cfg_distill: dict, method: dict, schedule: LogLinearSchedule,
                     mask_id: int, seed: int, device="cpu", discriminator: nn.Module | None = None,
                     precision: str = "float64", checkpoint_dir: str | Path | None = None,
                     dist: distributed.DistInfo | None = None, progress: bool = True) -> DistillState:
    """Distil for cfg_distill["iterations"] iterations (resuming from checkpoint_dir when it holds a checkpoint).

    positives [N, L] (tensor or array): the discriminator's positive pool (real data, or teacher samples); each
    iteration draws cfg["batch_size"] rows of it, shared across ranks, and this rank takes its slice.
    """
    dist = dist or distributed.DistInfo(device=torch.device(device))
    # rows are read per iteration (a memory-mapped .npy stays on disk: paper-scale token files do not fit in RAM)
    positives = positives.numpy() if isinstance(positives, torch.Tensor) else positives
    seq_len = positives.shape[1]
    state = build_state(teacher, cfg_distill, method, schedule, mask_id, seq_len, discriminator, precision, dist,
                        seed)
    tag = trajectory_hash(cfg_distill, method, seed, teacher, positives)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and load_checkpoint(ckpt, state, tag):
        log.info("resumed from %s at iteration %d", ckpt, state.iteration)
    total, B = cfg_distill["iterations"], cfg_distill["batch_size"]
    mine = distributed.shard_rows(B, dist)
    bar = io.Progress(total, every=cfg_distill["log_every"], desc="distill", unit="it", start=state.iteration,
                      logger=log, enabled=progress and dist.is_main)
    dev = torch.device(device)
    while state.iteration < total:
        it = state.iteration
        # the same rows on every rank (then sliced), and one generator per global group (prompt): a row's draws do
        # not depend on the number of ranks. Dropout masks are drawn per rank (seeded, but a 2-rank run matches a
        # 1-rank one only with dropout 0, as for the teacher).
        shared = torch.Generator().manual_seed(iteration_seed(seed, it))
        idx = torch.randint(positives.shape[0], (B,), generator=shared)[mine]
        gen = group_generators(seed, it, range(mine.start, mine.stop), dev)
        torch.manual_seed(iteration_seed(seed, it, dist.rank, 1))
        rows = torch.as_tensor(np.asarray(positives[idx.numpy()]).astype(np.int64))
        stats = distill_step(state, rows.to(dev), gen)
        keys = sorted(stats)
        reduced = distributed.all_reduce_mean(torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=dev))
        for k, v in zip(keys, reduced.tolist()):
            state.history.setdefault(k, []).append(v)
        bar.update(state.iteration, reward=stats["reward"], d_acc=stats["d_acc"], loss=stats["student_loss"])
        if ckpt is not None and (state.iteration % cfg_distill["checkpoint_every"] == 0 or state.iteration == total):
            if dist.is_main:
                save_checkpoint(ckpt, state, tag)
            distributed.barrier()
    if dist.enabled:
        check_replicas_identical(state)
    state.history["seconds_this_run"] = [bar.elapsed()]
    state.history["iterations_this_run"] = [bar.total - bar.start_step]
    return state


# ---------------------------------------------------------------------------------------------- files + CLI
def load_positives(tokens_path, pool_path, positives: str) -> np.ndarray:
    if positives == "data":
        return np.load(tokens_path, mmap_mode="r")
    if pool_path is None:
        raise ValueError("positives: teacher needs --teacher-pool (teacher samples generated by the teacher_pool rule)")
    return np.load(pool_path)


def summary(history: dict, last: int = 20) -> dict:
    """Means over the whole run and over its last `last` iterations (the curves themselves go in `history`)."""
    curves = {k: v for k, v in history.items() if k not in ("seconds_this_run", "iterations_this_run") and v}
    return {
        "mean_reward": float(np.mean(curves["reward"])), "mean_d_accuracy": float(np.mean(curves["d_acc"])),
        "final_means_over": last, **{f"final_{k}": float(np.mean(v[-last:])) for k, v in curves.items()},
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    config_mod.add_arguments(p)
    p.add_argument("--teacher", required=True, help="teacher model directory (save_dit format)")
    p.add_argument("--tokens", required=True, help="training token blocks [N, L] (.npy)")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory ([MASK] = len(tokenizer))")
    p.add_argument("--variant", required=True, help="a name in distill.variants")
    p.add_argument("--teacher-pool", default=None, help="teacher samples [N, L] (.npy) for positives: teacher")
    p.add_argument("--out-dir", required=True)


def mask_id_of(tokenizer_dir) -> int:
    """[MASK] = len(tokenizer): the id after the tokenizer's own (data.special_ids gives the same for ours)."""
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))


def run(args: argparse.Namespace) -> int:
    from didi.discriminator import save_discriminator
    from didi.model import load_dit, save_dit

    cfg = config_mod.from_args(args)
    cfg_distill = cfg["distill"]
    method = config_mod.variant_method(cfg, args.variant)
    info = distributed.init()
    if not info.is_main:
        logging.getLogger("didi").setLevel(logging.WARNING)  # one log, rank 0's; other ranks report only problems
    out = Path(args.out_dir)
    teacher, teacher_cfg = load_dit(args.teacher, info.device)
    mask_id = mask_id_of(args.tokenizer)
    vocab = teacher.config.vocab_size
    if vocab != mask_id + 1:
        raise ValueError(f"teacher vocab {vocab} != len(tokenizer) + 1 = {mask_id + 1}")
    positives = load_positives(args.tokens, args.teacher_pool, method["positives"])
    schedule = LogLinearSchedule(cfg["diffusion"]["eps"])
    if info.is_main:
        log.info("variant %s on %s x%d: %s", args.variant, info.device, info.world_size, method)
    t_start = time.perf_counter()
    state = run_distillation(teacher, positives, cfg_distill, method, schedule, mask_id, cfg["seed"], info.device,
                             precision=cfg["diffusion"]["sampling_precision"], checkpoint_dir=out / "checkpoints",
                             dist=info)
    seconds = time.perf_counter() - t_start
    if info.is_main:
        extra = {"distill": {"variant": args.variant, "method": method, "iterations": state.iteration,
                             "teacher": str(args.teacher)}}
        save_dit(out / "student", state.student_ema, extra)
        save_dit(out / "student_raw", state.student, extra)
        save_discriminator(out / "discriminator", state.discriminator, extra)
        ran = state.history["iterations_this_run"][0]
        metrics = {
            "variant": args.variant, "method": method, "iterations": state.iteration,
            "iterations_this_run": ran, "wall_clock_s": seconds,
            "iterations_per_s": ran / max(state.history["seconds_this_run"][0], 1e-9) if ran else None,
            "world_size": info.world_size, "device": str(info.device),
            "history": {k: v for k, v in state.history.items() if k not in ("seconds_this_run", "iterations_this_run")},
            **summary(state.history),
        }
        io.write_metrics(out / "metrics.json", metrics, cfg)
    distributed.barrier()
    distributed.shutdown()
    return 0


def benchmark_distill(teacher, tokens, cfg: dict, iterations: int, variant: str = "full") -> dict:
    """Distillation iterations/s of `variant` (one untimed warm-up iteration first). teacher: a DiT or a model
    directory; tokens: [N, L] array or a .npy path."""
    from didi.model import load_dit

    device = io.default_device()
    if isinstance(teacher, (str, Path)):
        teacher, _ = load_dit(teacher, device)
    else:
        teacher = copy.deepcopy(teacher).to(device)  # distillation freezes its teacher: leave the caller's alone
    if isinstance(tokens, (str, Path)):
        tokens = np.load(tokens, mmap_mode="r")
    variants = cfg["distill"]["variants"]
    method = config_mod.variant_method(cfg, variant) if variant in variants else cfg["distill"]["method"]
    if method["positives"] == "teacher":  # the throughput does not depend on where the positives come from
        method = {**method, "positives": "data"}
    mask_id = teacher.config.vocab_size - 1
    cfg_distill = {**cfg["distill"], "iterations": 1}
    state = run_distillation(teacher, tokens, cfg_distill, method, LogLinearSchedule(cfg["diffusion"]["eps"]), mask_id,
                             cfg["seed"], device, precision=cfg["diffusion"]["sampling_precision"], progress=False)
    positives = torch.as_tensor(np.asarray(tokens[: cfg["distill"]["batch_size"]]).astype(np.int64)).to(device)
    gen = torch.Generator(device=device).manual_seed(cfg["seed"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iterations):
        distill_step(state, positives, gen)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"iterations_per_s": iterations / seconds, "iterations": iterations, "seconds": seconds,
            "variant": variant, "batch_size": cfg["distill"]["batch_size"], "group_size": cfg["distill"]["group_size"],
            "device": str(device)}


COMMANDS = {"distill": (add_arguments, run)}
