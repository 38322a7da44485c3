"""The DiDi-Instruct objective (docs/method.md section 2) as plain functions: no files, no DDP, no optimisers.

`distill.distill_step` strings them together into one iteration (recipe steps 1..10 there). Every switch of a
variant is a key of the `method` dict (config distill.method + the variant's overrides), read where it acts.

A denoiser is any `model(z [B, L], sigma [B]) -> logits [B, L, V+1]` ([MASK] = the last id), a discriminator any
`D(z, sigma) -> [B, L]` logits. `generator`: one torch.Generator for all rows, or a list of one per group of rows
(`draw_rows`), so that a group's draws do not depend on which other groups share the batch.
Masked-position means divide by a `count(mask)` the caller passes: this batch's count for one process, the global
count divided by the world size under DDP.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from didi.diffusion import LogLinearSchedule, ancestral_step, corrupt, denoise_rows


# ---------------------------------------------------------------------------------------------- randomness
def draw_rows(generator, n: int, draw: Callable):
    """draw(gen, rows: slice) -> a tensor (or tuple of tensors) for those rows, for n rows. `generator` is one
    generator for all rows, or a list with one per group of n / len(list) consecutive rows."""
    if isinstance(generator, torch.Generator):
        return draw(generator, slice(0, n))
    per = n // len(generator)
    if per * len(generator) != n:
        raise ValueError(f"{n} rows do not split into {len(generator)} equal groups")
    parts = [draw(g, slice(i * per, (i + 1) * per)) for i, g in enumerate(generator)]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(column) for column in zip(*parts))
    return torch.cat(parts)


def sample_tau(n: int, distribution: str, clip, generator: torch.Generator, device):
    """tau [n] from Uniform(0,1) or Beta(2,2), clamped to `clip`; and pi(tau), the density it was drawn from.

    Beta(2,2) is drawn as the median of three uniforms (density 6 t (1 - t)), so it uses the explicit generator.
    """
    if distribution == "uniform":
        tau = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    elif distribution == "beta22":
        tau = torch.rand(n, 3, generator=generator, device=device, dtype=torch.float64).median(dim=1).values
    else:
        raise ValueError(f"unknown tau distribution {distribution!r}")
    tau = tau.clamp(*clip)
    return tau.float(), tau_density(tau, distribution).float()


def tau_density(tau: torch.Tensor, distribution: str) -> torch.Tensor:
    """pi(tau): 1 for Uniform(0,1), 6 t (1 - t) for Beta(2,2) (at the clamped tau, as the code weights it)."""
    return torch.ones_like(tau) if distribution == "uniform" else 6.0 * tau * (1.0 - tau)


def stratified_taus(n: int, count: int, clip, generator, device, group_size: int) -> list[torch.Tensor]:
    """`count` noise levels per group of `group_size` rows, one in each of `count` equal strata of `clip`:
    tau_k = lo + (k + u_k) (hi - lo) / count. The reward then averages the discriminator over the whole range of t,
    as the integral KL does, instead of reading it at the rollout's one tau; the G samples of a group share the
    levels, so the grouped advantage still compares them at equal noise."""
    lo, hi = clip
    u = draw_rows(generator, n // group_size,
                  lambda g, r: torch.rand(r.stop - r.start, count, generator=g, device=device, dtype=torch.float64))
    taus = lo + (torch.arange(count, device=device, dtype=torch.float64) + u) * (hi - lo) / count
    return [column.float().repeat_interleave(group_size) for column in taus.unbind(dim=1)]


def draw_tau(n: int, method: dict, clip, generator, device, group_size: int = 1):
    """sample_tau with the method's distribution for n rows, per group when given one generator per group.

    method["tau_per_group"]: one tau for each group of `group_size` consecutive rows, so that the grouped advantage
    compares the G samples of a prompt at one noise level instead of ranking noise levels."""
    shared = group_size if method["tau_per_group"] else 1
    tau, pi = draw_rows(generator, n // shared, lambda g, r: sample_tau(r.stop - r.start, method["tau_distribution"],
                                                                        clip, g, device))
    return tau.repeat_interleave(shared), pi.repeat_interleave(shared)


# ---------------------------------------------------------------------------------------------- the rollout
def real_log_probs(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """log p(v | z) over the REAL tokens only ([MASK] suppressed, the SUBS rule), float32 [..., V]."""
    if mask_id != logits.shape[-1] - 1:
        raise ValueError(f"[MASK] must be the last id (mask_id={mask_id}, vocab={logits.shape[-1]})")
    return torch.log_softmax(logits[..., :mask_id].float(), dim=-1)


def with_mask_column(log_probs: torch.Tensor) -> torch.Tensor:
    """[..., V] real-token log-probs -> [..., V+1] with log p([MASK]) = -inf (what ancestral_step reads)."""
    return torch.cat([log_probs, log_probs.new_full((*log_probs.shape[:-1], 1), float("-inf"))], dim=-1)


def deterministic(model) -> bool:
    """Whether each output row of `model` is a fixed function of its input row: eval mode, or no active dropout."""
    return not any(isinstance(m, nn.Dropout) and m.training and m.p > 0 for m in getattr(model, "modules", list)())


def student_forward(student: nn.Module, mask_id: int) -> Callable:
    """(z, sigma) -> the student's real-token log-probs [B, L, V]; identical rows (the all-[MASK] start) run in one
    pass when the student is deterministic (its gradient sums over them)."""
    def forward(z, sigma):
        return real_log_probs(student(z, sigma), mask_id)

    return functools.partial(denoise_rows, forward) if deterministic(student) else forward


def student_step(student: nn.Module, z: torch.Tensor, t: torch.Tensor, alpha_next: torch.Tensor,
                 schedule: LogLinearSchedule, mask_id: int, generator, method: dict, precision: str):
    """One ancestral step t -> s of the student (diffusion.ancestral_step), with ell [B] = the sum over newly
    revealed positions of log p(token | z_t), differentiable. Returns (z_s, ell, log_probs [B, L, V]).

    method["on_policy_single_pass"]: the sample is drawn from the same forward pass that the gradient goes through;
    otherwise it is drawn from a separate no-grad pass and scored by a second one (the official code's way;
    differs under dropout)."""
    sigma = schedule.sigma(t)
    forward = student_forward(student, mask_id)
    if method["on_policy_single_pass"]:
        log_probs = draw_from = forward(z, sigma)
    else:
        with torch.no_grad():
            draw_from = forward(z, sigma)
        log_probs = forward(z, sigma)
    draw_from, score = with_mask_column(draw_from), with_mask_column(log_probs)
    alpha_t = schedule.alpha(t)
    z_next, ell = draw_rows(generator, z.shape[0], lambda g, r: ancestral_step(
        draw_from[r], z[r], alpha_t[r], alpha_next[r], mask_id, g, precision, score=score[r]))
    return z_next, ell, log_probs


def rollout(student, rows: int, seq_len: int, tau: torch.Tensor, schedule, mask_id: int, method: dict, t0: float,
            generator, precision: str, device) -> dict:
    """The student's few-step generation from all-[MASK]; returns the sample x, log p(x) and the states
    (z, t, log_probs) it acted in. score_decomposition: 1 -> tau -> end (log p = ell_1 + ell_2), else one-shot
    1 -> end. end is alpha = 1 (finish_at_alpha_one: no [MASK] survives) or t0."""
    z1 = torch.full((rows, seq_len), mask_id, dtype=torch.long, device=device)
    one = torch.ones(rows, device=device)
    end = schedule.alpha(torch.full((rows,), 0.0 if method["finish_at_alpha_one"] else t0, device=device))
    step = dict(schedule=schedule, mask_id=mask_id, generator=generator, method=method, precision=precision)
    if method["score_decomposition"]:
        z_tau, ell1, lp1 = student_step(student, z1, one, schedule.alpha(tau), **step)
        x, ell2, lp2 = student_step(student, z_tau, tau, end, **step)
        return {"x": x, "logp": ell1 + ell2, "states": [(z1, one, lp1), (z_tau, tau, lp2)]}
    x, ell, lp1 = student_step(student, z1, one, end, **step)
    # one-shot: the only state the student acted in is z_1, so the regulariser is taken there alone
    return {"x": x, "logp": ell, "states": [(z1, one, lp1)]}


# ---------------------------------------------------------------------------------------------- discriminator
def corrupt_rows(x, tau, schedule, mask_id: int, generator):
    """x [rows, L] corrupted at alpha(tau) per row, each group's masks from its own generator."""
    alpha = schedule.alpha(tau)
    return draw_rows(generator, x.shape[0], lambda g, r: corrupt(x[r], alpha[r], mask_id, g))


def corrupt_both(x_fake, real, tau, schedule, mask_id: int, method: dict, clip, generator):
    """Student samples corrupted at alpha(tau); positives at the same time (coupled_time) or their own tau.
    Returns (z_fake, z_real, tau_real)."""
    n = x_fake.shape[0]
    z_fake = corrupt_rows(x_fake, tau, schedule, mask_id, generator)
    tau_real = tau if method["coupled_time"] else draw_tau(n, method, clip, generator, x_fake.device)[0]
    alpha_real = schedule.alpha(tau_real)
    z_real = draw_rows(generator, n, lambda g, r: corrupt(real[r], alpha_real[r], mask_id, g))
    return z_fake, z_real, tau_real


def reward_corruptions(x, z_fake, tau, times: str, count: int, clip, schedule, mask_id: int, generator,
                       group_size: int) -> tuple[list, torch.Tensor | list]:
    """The corruptions of the student samples x [rows, L] that the reward reads, and their noise levels (`rewards`'
    z_fakes and tau). times "rollout": z_fake (x corrupted at the rollout's tau for the discriminator) and count - 1
    further corruptions at tau; "stratified": count fresh corruptions, one in each stratum of clip
    (stratified_taus)."""
    if times == "stratified":
        taus = stratified_taus(x.shape[0], count, clip, generator, x.device, group_size)
        return [corrupt_rows(x, t, schedule, mask_id, generator) for t in taus], taus
    return [z_fake] + [corrupt_rows(x, tau, schedule, mask_id, generator) for _ in range(count - 1)], tau


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


def judged_positions(z: torch.Tensor, mask_id: int, method: dict) -> torch.Tensor:
    """Where the discriminator's per-token logits are trained and read as reward: the masked positions (paper and
    code), or every position (method["discriminator_positions"] == "all": the visible tokens are where a few-step
    sample's inconsistencies show, and a logit trained there ranks the samples of a group)."""
    if method["discriminator_positions"] == "all":
        return torch.ones_like(z, dtype=torch.bool)
    return z == mask_id


def discriminator_loss(D, z_real, tau_real, z_fake, tau, schedule, mask_id: int, smoothing: float,
                       count: Callable, method: dict):
    """(smoothed BCE, the number of D's classifications that are right, the number it made).

    method["discriminator_level"] "token" (paper and code): every judged position's logit is a classification of
    its sequence. "sequence": one logit per sequence, the SUM of the per-token logits over the judged positions; at
    the BCE optimum (smoothing 0) it is the log density ratio of the whole noisy sequence, which is additive over
    positions where the data is (a Markov chain's log-likelihood is a sum over neighbours); measured in
    docs/distillation-study.md."""
    mask_real, mask_fake = judged_positions(z_real, mask_id, method), judged_positions(z_fake, mask_id, method)
    logits_real = D(z_real, schedule.sigma(tau_real))
    logits_fake = D(z_fake, schedule.sigma(tau))
    if method["discriminator_level"] == "sequence":
        logits_real, logits_fake = (logits_real * mask_real).sum(1), (logits_fake * mask_fake).sum(1)
        mask_real = mask_fake = torch.ones_like(logits_real, dtype=torch.bool)
    loss = smoothed_bce(logits_real, mask_real.float(), logits_fake, mask_fake.float(), smoothing,
                        counts=(count(mask_real).float(), count(mask_fake).float()))
    with torch.no_grad():
        correct = ((logits_real > 0) & mask_real).sum() + ((logits_fake < 0) & mask_fake).sum()
    return loss, correct, mask_real.sum() + mask_fake.sum()


# ---------------------------------------------------------------------------------------------- reward -> weights
def masked_row_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row mean of values [B, L] over positions where mask [B, L] is true (0 for a row with none)."""
    mask = mask.float()
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


@torch.no_grad()
def rewards(D, z_fakes: list, tau, schedule, mask_id: int, clip: float, method: dict) -> torch.Tensor:
    """Per row: the discriminator's clipped log-odds averaged over the row's judged positions (summed, at
    discriminator_level "sequence": the sequence's logit), then over the given corruptions of the same student
    samples (several: the part of the reward that depends on WHICH positions were masked averages out). tau [rows]:
    the noise level of every corruption, or a list with one per corruption (stratified_taus). D in eval mode: no
    dropout, spectral norm uses its stored vectors."""
    was_training = D.training
    D.eval()
    taus = tau if isinstance(tau, (list, tuple)) else [tau] * len(z_fakes)
    total = 0.0
    for z, t in zip(z_fakes, taus, strict=True):
        token_reward, judged = D(z, schedule.sigma(t)).clamp(-clip, clip), judged_positions(z, mask_id, method)
        if method["discriminator_level"] == "sequence":
            total = total + (token_reward * judged).sum(dim=1)
        else:
            total = total + masked_row_mean(token_reward, judged)
    D.train(was_training)
    return total / len(z_fakes)


def within_group_correlation(a: torch.Tensor, b: torch.Tensor, group_size: int) -> torch.Tensor:
    """Correlation of a and b [rows] after removing each group's mean: how well a ranks the samples of a group as b
    does (what a grouped advantage uses of a reward)."""
    a = a.view(-1, group_size) - a.view(-1, group_size).mean(dim=1, keepdim=True)
    b = b.view(-1, group_size) - b.view(-1, group_size).mean(dim=1, keepdim=True)
    return (a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12)


def grouped_advantages(rewards: torch.Tensor, group_size: int, clip: float, scale: str = "group",
                       reduce_sum: Callable = lambda x: x) -> torch.Tensor:
    """(R - mean_group) / (std + 1e-8), clipped to [-clip, clip]; groups are G consecutive rows.

    scale "group": each group's own unbiased standard deviation (torch's default), as in GRPO implementations, the
    paper and the authors' code. "pooled": one standard deviation for the whole batch, the root of the mean of the
    groups' unbiased variances (the within-group spread pooled over groups; reduce_sum sums over DDP ranks), so that a
    group whose rewards hardly differ (a tau at which the discriminator sees almost nothing) gets advantages near 0
    instead of noise blown up to unit scale. With equal group variances the two are the same.
    "leave_one_out": R_i - the mean of the group's OTHER rewards, not divided by any std (RLOO: Kool et al. 2019,
    Ahmadian et al. 2024; the std division is what Dr. GRPO, Liu et al. 2025, drops as a bias): unbiased, and a
    group whose rewards hardly differ moves the student little.
    """
    r = rewards.view(-1, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale == "leave_one_out":  # R_i - (sum - R_i) / (G - 1) = G / (G - 1) (R_i - mean)
        return (centred * group_size / (group_size - 1)).clamp(-clip, clip).view(-1)
    if scale == "group":
        std = r.std(dim=1, keepdim=True)
    elif scale == "pooled":
        squares = reduce_sum(centred.square().sum())
        dof = reduce_sum(torch.tensor(float(r.shape[0] * (group_size - 1)), device=r.device))
        std = (squares / dof).sqrt().to(r.dtype)
    else:
        raise ValueError(f"distill.method.advantage_scale: unknown {scale!r} (group | pooled | leave_one_out)")
    a = centred / (std + 1e-8)
    return a.clamp(-clip, clip).view(-1)


def shuffled(advantage: torch.Tensor, generator) -> torch.Tensor:
    """The control of the study: advantages permuted across this batch's rows, so the reward carries no information
    about the sample it is paired with; what the student does then is drift, not learning."""
    first = generator if isinstance(generator, torch.Generator) else generator[0]
    return advantage[torch.randperm(advantage.shape[0], generator=first, device=first.device)]


def advantages(rewards: torch.Tensor, group_size: int, clip: float, method: dict, generator,
               reduce_sum: Callable = lambda x: x) -> torch.Tensor:
    """grouped_advantages with method["advantage_scale"], then `shuffled` when method["shuffle_advantages"]."""
    advantage = grouped_advantages(rewards, group_size, clip, method["advantage_scale"], reduce_sum)
    return shuffled(advantage, generator) if method["shuffle_advantages"] else advantage


def time_weight(schedule, tau, pi, method: dict, omega_clip) -> torch.Tensor:
    """omega(tau) clamped to omega_clip (method["omega"], else 1), divided by pi(tau) if importance_weight."""
    weight = schedule.omega(tau).clamp(*omega_clip) if method["omega"] else torch.ones_like(tau)
    return weight / pi if method["importance_weight"] else weight


# ---------------------------------------------------------------------------------------------- student loss
def policy_gradient_loss(weight, advantage, logp) -> torch.Tensor:
    """-mean(w A log p): its gradient is the score-function estimate of the weighted advantage's gradient."""
    return -(weight * advantage * logp).mean()


def rescored_states(student, states, schedule, mask_id: int) -> list:
    """The states a rollout acted in, (z, t, log_probs), with log_probs read again from `student` as it is now
    (with grad): what a further update on the same rollouts reads (method["student_epochs"])."""
    forward = student_forward(student, mask_id)
    return [(z, t, forward(z, schedule.sigma(t))) for z, t, _ in states]


def token_log_probs(states, x: torch.Tensor, mask_id: int) -> torch.Tensor:
    """[B, L]: each position's log-probability, under the log_probs of the state whose step revealed it, of the
    token it took (0 where no step revealed one). Its row sums are the rollout's log p = ell_1 + ell_2."""
    following = [z for z, _, _ in states[1:]] + [x]
    total = torch.zeros(x.shape, dtype=states[0][2].dtype, device=x.device)
    for (z, _, log_probs), z_next in zip(states, following):
        revealed = (z == mask_id) & (z_next != mask_id)
        token = log_probs.gather(-1, torch.where(revealed, z_next, 0)[..., None]).squeeze(-1)
        total = total + torch.where(revealed, token, 0.0)
    return total


def clipped_policy_gradient_loss(weight, advantage, token_logp, rollout_token_logp, clip: float) -> tuple:
    """PPO's clipped surrogate (Schulman et al. 2017) with per-token ratios r = p_now / p_rollout of the revealed
    tokens, as GRPO takes them: -mean over rows of the sum over tokens of min(r w A, clip(r, 1 - clip, 1 + clip) w A).
    At r = 1 its gradient is policy_gradient_loss's. Returns (loss, share of revealed tokens whose ratio is clipped)."""
    ratio = (token_logp - rollout_token_logp).exp()
    weighted = (weight * advantage).detach()[:, None]
    surrogate = torch.minimum(ratio * weighted, ratio.clamp(1 - clip, 1 + clip) * weighted)
    revealed = rollout_token_logp != 0
    clipped = ((ratio - 1).abs() > clip) & revealed
    return -surrogate.sum(-1).mean(), clipped.sum() / revealed.sum().clamp(min=1)


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


def regulariser(states, teacher, schedule, mask_id: int, method: dict, count: Callable):
    """(divergence to the teacher, student entropy), each a mean over the masked positions of every state the
    student acted in, averaged over the states. With method["kl_coef"] == 0 the divergence is still measured (it
    is logged), but without a gradient."""
    kl = entropy = torch.zeros((), device=states[0][0].device)
    for z, t, student_lp in states:
        masked = z == mask_id  # where() rather than multiply: outputs at unmasked positions are irrelevant, maybe inf
        n = count(masked).to(student_lp.dtype)
        with torch.no_grad():
            teacher_lp = denoise_rows(lambda z, s: real_log_probs(teacher(z, s), mask_id), z, schedule.sigma(t))
        lp = student_lp if method["kl_coef"] > 0 else student_lp.detach()
        div = divergence(lp, teacher_lp, method["regularizer"], method["jeffrey_beta"])
        kl = kl + torch.where(masked, div, 0.0).sum() / n
        ent = -(student_lp.exp() * student_lp).sum(-1)
        entropy = entropy + torch.where(masked, ent, 0.0).sum() / n
    return kl / len(states), entropy / len(states)
