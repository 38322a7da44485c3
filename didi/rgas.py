"""RGAS: reward-guided ancestral sampling with the DiDi-Instruct discriminator (docs/method.md section 3).

The K-step ancestral sampler of `didi.diffusion.sample`, with the discriminator D as a reward:
- steps i < tilt_fraction * K, gradient tilting: D reads a soft input (softmax of the student's logits at masked
  positions, the exact one-hot at unmasked ones); reward = sum of D's logits over the masked positions;
  g = d reward / d logits, zero at unmasked positions, clamped to [-1, 1]; the step draws from
  softmax(logits + h_i g), h_i rising linearly from h_start to h_end over these steps.
- the remaining steps, re-ranking: M candidate next states; each scored by D at the NEXT noise level (sum of
  logits over all positions); one is chosen by SAMPLING from softmax(scores), not argmax.
`reading` "code" is the authors' pre-release code instead: h runs linearly from h_start to h_end over ALL K steps
and a re-ranking step draws from softmax(h_i x scores) (its defaults there: h 0.2 -> 1.0, M = 1).
Observed tokens are never changed (ancestral_step copies them; the tilt is zero there). Draws go through the same
`ancestral_step` and generator as the plain sampler, and h = 0 needs no D call and M = 1 no choice, so with
h = 0 and M = 1 RGAS draws exactly what `diffusion.sample` draws for the same seed.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from didi.diffusion import (LogLinearSchedule, ancestral_step, denoised_log_probs, sample_categorical,
                            subs_log_probs)


@dataclasses.dataclass
class RGASResult:
    ids: torch.Tensor          # [n, L] long, no [MASK] left
    nfe: int                   # K sampler steps
    network_calls: int         # generator (student) calls, incl. a final noise-removal call when one is needed
    seconds: float             # wall-clock of the whole call, discriminator included
    disc_forward_calls: int    # discriminator forward passes (tilting and re-ranking)
    disc_backward_calls: int   # discriminator backward passes (tilting)


READINGS = ("paper", "code")
GUIDANCE_KEYS = ("h_start", "h_end", "candidates", "tilt_fraction", "reading")


def guidance(rgas_cfg: dict) -> dict:
    """rgas_sample's guidance keywords from a config's distill.rgas section."""
    return {key: rgas_cfg[key] for key in GUIDANCE_KEYS}


def tilting_steps(nfe: int, tilt_fraction: float) -> int:
    """The first ceil(tilt_fraction * K) steps tilt; the rest re-rank."""
    return math.ceil(tilt_fraction * nfe - 1e-9)


def h_schedule(nfe: int, tilt_fraction: float, h_start: float, h_end: float, reading: str = "paper") -> list:
    """Guidance strength per step. "paper": linear from h_start to h_end over the tilting steps, None for the
    re-ranking steps (they draw from softmax(scores)). "code" (the authors' pre-release code): linear from h_start
    at step 0 to h_end at step K - 1 over ALL steps; a tilting step tilts with its h, a re-ranking step draws from
    softmax(h x scores)."""
    n_tilt = tilting_steps(nfe, tilt_fraction)
    if reading == "paper":
        return [h_start + (h_end - h_start) * i / max(1, n_tilt - 1) if i < n_tilt else None for i in range(nfe)]
    if reading == "code":
        return [h_start + (h_end - h_start) * i / max(1, nfe - 1) for i in range(nfe)]
    raise ValueError(f"unknown RGAS reading {reading!r} (known: {', '.join(READINGS)})")


def tilt_direction(discriminator, log_p: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor, mask_id: int):
    """g = d/d logits of sum_{masked l} D(soft input)_l, zero at observed positions, clamped to [-1, 1]."""
    masked = z == mask_id
    logits = log_p.detach().float().requires_grad_(True)
    with torch.enable_grad():
        one_hot = torch.nn.functional.one_hot(z, log_p.shape[-1]).float()
        probs = torch.where(masked[..., None], logits.softmax(-1), one_hot)
        reward = torch.where(masked, discriminator.forward_soft(probs, sigma), 0.0).sum()
        (g,) = torch.autograd.grad(reward, logits)  # grads of D's own parameters are not needed
    return torch.where(masked[..., None], g, 0.0).clamp(-1.0, 1.0)


@torch.no_grad()
def rgas_sample(model_fn, discriminator, num_samples: int, seq_len: int, nfe: int, schedule: LogLinearSchedule,
                mask_id: int, generator: torch.Generator | None, device="cpu", precision: str = "float64",
                h_start: float = 30.0, h_end: float = 40.0, candidates: int = 4, tilt_fraction: float = 0.5,
                temperature: float = 1.0, t_end: float = 1e-5, reading: str = "paper") -> RGASResult:
    """K = nfe RGAS steps from all-[MASK] on schedule.grid(K, t_end), then MDLM's argmax noise removal.
    reading: how h is scheduled and whether it scales the re-ranking (h_schedule)."""
    device = torch.device(device)
    start = time.perf_counter()
    times = schedule.grid(nfe, t_end)
    alphas, sigmas = schedule.alpha(times), schedule.sigma(times)
    hs, n_tilt = h_schedule(nfe, tilt_fraction, h_start, h_end, reading), tilting_steps(nfe, tilt_fraction)
    calls = d_forward = d_backward = 0

    def sigma_at(i: int, rows: int) -> torch.Tensor:
        return torch.full((rows,), float(sigmas[i]), device=device, dtype=torch.float32)

    z = torch.full((num_samples, seq_len), mask_id, dtype=torch.long, device=device)
    for i in range(nfe):
        log_p = denoised_log_probs(model_fn, z, sigma_at(i, num_samples), mask_id, temperature)
        calls += 1
        h, tilting = hs[i], i < n_tilt
        if tilting and h > 0 and (z == mask_id).any():
            g = tilt_direction(discriminator, log_p, z, sigma_at(i, num_samples), mask_id)
            d_forward, d_backward = d_forward + 1, d_backward + 1
            log_p = (log_p + h * g.to(log_p.dtype)).log_softmax(-1)  # -inf entries stay -inf; observed rows unchanged
        if tilting or candidates <= 1:
            z = ancestral_step(log_p, z, alphas[i], alphas[i + 1], mask_id, generator, precision)
            continue
        # re-ranking: M candidates per sample (rows b*M .. b*M+M-1), scored at the next noise level
        M = candidates
        z_rep = z.repeat_interleave(M, dim=0)
        cand = ancestral_step(log_p.repeat_interleave(M, dim=0), z_rep, alphas[i], alphas[i + 1], mask_id,
                              generator, precision)
        scores = discriminator(cand, sigma_at(i + 1, num_samples * M)).float().sum(dim=1).view(num_samples, M)
        if reading == "code":  # softmax(h x scores)
            scores = h * scores
        d_forward += 1
        choice = sample_categorical(torch.softmax(scores.double(), dim=-1), generator, precision)
        z = cand.view(num_samples, M, seq_len)[torch.arange(num_samples, device=device), choice]

    still_masked = z == mask_id
    if still_masked.any():
        log_p = subs_log_probs(model_fn(z, sigma_at(nfe, num_samples)), z, mask_id, temperature)
        calls += 1
        z = torch.where(still_masked, log_p.argmax(dim=-1), z)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return RGASResult(ids=z, nfe=nfe, network_calls=calls, seconds=time.perf_counter() - start,
                      disc_forward_calls=d_forward, disc_backward_calls=d_backward)
