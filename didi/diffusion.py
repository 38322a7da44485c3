"""Masked (absorbing-state) diffusion maths, MDLM style (docs/method.md section 1), apart from any network.

A denoiser is any `model_fn(z [B, L] long, sigma [B] float) -> logits [B, L, V+1]` whose last id is [MASK].
Everything here runs on the denoiser's device; random draws go through an explicit `torch.Generator`, which may
live on that device or on the CPU (draws are then moved over).

- `LogLinearSchedule`: alpha(t) = 1 - (1 - eps) t, sigma(t) = -log alpha(t), omega(t) = -alpha'/(1 - alpha) = 1/t.
- `corrupt`: the forward process q(z_t | x) = alpha onehot(x) + (1 - alpha) onehot([MASK]), per position.
- `subs_log_probs`: SUBS parameterisation ([MASK] never predicted, observed tokens carried over).
- `mdlm_loss` / `elbo_nats`: the continuous-time ELBO (a per-token NLL bound in nats).
- `sample_categorical`, `ancestral_step`, `sample`: the K-step ancestral sampler, float64 by default; the
  "float32" precision reproduces MDLM's low-precision Gumbel sampling (which truncates the tail, see
  Zheng et al. 2024) for comparison with the paper's numbers.
"""

from __future__ import annotations

import dataclasses
import time

import torch

PRECISIONS = ("float64", "float32")


# ---------------------------------------------------------------------------------------------- schedule
def _as_t(t) -> torch.Tensor:
    return t if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=torch.float64)


@dataclasses.dataclass(frozen=True)
class LogLinearSchedule:
    """alpha(t) = 1 - (1 - eps) t on t in [0, 1]: alpha(0) = 1 (clean), alpha(1) = eps (almost all [MASK])."""

    eps: float = 1e-3

    def __post_init__(self):
        if not 0.0 <= self.eps < 1.0:
            raise ValueError(f"diffusion.eps must be in [0, 1), got {self.eps}")

    def alpha(self, t):
        return 1 - (1 - self.eps) * _as_t(t)

    def dalpha(self, t):
        return torch.full_like(_as_t(t), -(1 - self.eps))

    def sigma(self, t):
        """The noise level the network is conditioned on: -log alpha(t) (log1p keeps it exact near t = 0)."""
        return -torch.log1p(-(1 - self.eps) * _as_t(t))

    def omega(self, t):
        """-alpha'(t) / (1 - alpha(t)) = (1 - eps) / ((1 - eps) t) = 1/t: the ELBO's time weight.

        Written in its simplified form so it is exactly 1/t (the general form rounds differently)."""
        return 1.0 / _as_t(t)

    def grid(self, K: int, t_end: float = 1e-5) -> torch.Tensor:
        """K + 1 sampling times t_i = 1 - i (1 - t_end) / K, float64, from exactly 1 down to exactly t_end."""
        if K < 1:
            raise ValueError(f"number of steps must be >= 1, got {K}")
        i = torch.arange(K + 1, dtype=torch.float64)
        times = 1 - i * (1 - t_end) / K
        times[-1] = t_end  # 1 - (1 - t_end) is not exactly t_end in floating point
        return times


# ---------------------------------------------------------------------------------------------- helpers
def _uniform(shape, generator: torch.Generator | None, device, dtype=torch.float64) -> torch.Tensor:
    """U[0, 1) draws from `generator` (on its own device), delivered on `device`."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def _per_row(value, batch: int, device, dtype) -> torch.Tensor:
    """A float, 0-d tensor or [B] tensor as a [B] tensor."""
    return torch.as_tensor(value, dtype=dtype).to(device).reshape(-1).expand(batch)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"sampling precision must be one of {PRECISIONS}, got {precision!r}")


# ---------------------------------------------------------------------------------------------- forward process
def corrupt(x: torch.Tensor, alpha, mask_id: int, generator: torch.Generator | None) -> torch.Tensor:
    """z: each position of x [B, L] kept with probability alpha[b] (independently), else [MASK]."""
    alpha = _per_row(alpha, x.shape[0], x.device, torch.float64)
    keep = _uniform(x.shape, generator, x.device) < alpha[:, None]
    return torch.where(keep, x, mask_id)


def subs_log_probs(logits: torch.Tensor, z: torch.Tensor, mask_id: int, temperature: float = 1.0) -> torch.Tensor:
    """SUBS: log p(x_l | z) [B, L, V+1]. At masked positions a softmax over real tokens ([MASK] logit -inf first,
    so log p([MASK]) = -inf); at observed positions a point mass on the observed token (0 there, -inf elsewhere).

    Entries are true -inf: combine log-probs of two models with torch.xlogy / masking, not p * (log p - log q)."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logits = logits.to(dtype)
    if temperature != 1.0:
        logits = logits / temperature
    logits = logits.index_fill(-1, torch.tensor([mask_id], device=logits.device), float("-inf"))
    log_p = logits.log_softmax(-1)
    masked = z == mask_id
    # out of place, so autograd keeps log_softmax's output; the scatter below then acts on our own copy
    log_p = log_p.masked_fill(~masked[..., None], float("-inf"))
    carry = torch.where(masked, float("-inf"), 0.0).to(dtype)  # at masked rows z = [MASK]: stays -inf
    return log_p.scatter_(-1, z[..., None], carry[..., None])


# ---------------------------------------------------------------------------------------------- ELBO
def mdlm_loss(model_fn, x: torch.Tensor, schedule: LogLinearSchedule, mask_id: int,
              generator: torch.Generator | None, t_min: float = 1e-3, antithetic: bool = True,
              rows: slice = slice(None)):
    """MDLM continuous-time ELBO, per token: E_t E_z [ omega(t) sum_{l masked} -log p(x_l | z_t) ] / L,
    t ~ U[t_min, 1] (antithetic: one stratified draw per row across the batch), averaged over the B x L tokens.

    `rows`: t and the masks are drawn for the whole batch x, then only these rows are evaluated (the loss is the
    per-token mean over them). A DDP rank passes its share of the global batch, so a row's noise does not depend
    on how the batch is split and the mean over ranks is the one-process loss.

    Returns (loss tensor with grad, {"nll_bound": float, "masked_fraction": float})."""
    B = x.shape[0]
    u = _uniform((B,), generator, x.device)
    if antithetic:  # row i gets t in the i-th of B equal strata: lower variance, same expectation
        u = (u / B + torch.arange(B, device=x.device, dtype=torch.float64) / B) % 1.0
    t = t_min + (1 - t_min) * u
    z = corrupt(x, schedule.alpha(t), mask_id, generator)[rows]
    x, t = x[rows], t[rows]
    log_p = subs_log_probs(model_fn(z, schedule.sigma(t).float()), z, mask_id)
    log_p_x = log_p.gather(-1, x[..., None]).squeeze(-1)
    masked = z == mask_id
    nll = torch.where(masked, -log_p_x, 0.0)  # observed positions cost nothing (carry-over)
    weight = schedule.omega(t).to(nll.dtype)  # -alpha'/(1 - alpha) > 0
    loss = (weight[:, None] * nll).sum() / x.numel()
    stats = {"nll_bound": float(loss.detach()), "masked_fraction": float(masked.float().mean())}
    return loss, stats


@torch.no_grad()
def elbo_nats(model_fn, x: torch.Tensor, schedule: LogLinearSchedule, mask_id: int,
              generator: torch.Generator | None, t_min: float = 1e-3, num_t: int = 1) -> float:
    """Validation bound (nats/token): mdlm_loss averaged over `num_t` antithetic draws of t (and masks)."""
    total = 0.0
    for _ in range(num_t):
        total += mdlm_loss(model_fn, x, schedule, mask_id, generator, t_min, antithetic=True)[0].item()
    return total / num_t


# ---------------------------------------------------------------------------------------------- sampling
def denoise_rows(model_fn, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """model_fn(z [B, L], sigma [B]) for any function that treats rows independently and deterministically (a
    network in eval mode, or without active dropout: the caller decides). When all B rows are the same input, as at
    the all-[MASK] start of every sampler and of the student's rollout, it runs on one row and the output is
    broadcast (a view): the same function for 1/B of the cost, equal to the batched call up to float rounding."""
    if z.shape[0] > 1 and bool((z == z[:1]).all()) and bool((sigma == sigma[:1]).all()):
        out = model_fn(z[:1], sigma[:1])
        return out.expand(z.shape[0], *out.shape[1:])
    return model_fn(z, sigma)


def denoised_log_probs(model_fn, z: torch.Tensor, sigma: torch.Tensor, mask_id: int,
                       temperature: float = 1.0) -> torch.Tensor:
    """The samplers' SUBS log-probs [B, L, V+1] of model_fn at (z, sigma), identical rows run once (denoise_rows)."""
    return denoise_rows(lambda z, sigma: subs_log_probs(model_fn(z, sigma), z, mask_id, temperature), z, sigma)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None, precision: str = "float64") -> torch.Tensor:
    """One index per row of probs [..., V] (non-negative, not necessarily normalised, positive sum).

    float64: exact inverse-CDF sampling (one float64 uniform per row against the float64 cumulative sum), so
      a token of probability p is drawn with probability p up to float64 rounding, however small p is.
    float32: MDLM's `_sample_categorical`, (probs / (1e-10 - log(rand + 1e-10))).argmax() with float32 probs and
      float32 uniforms: Gumbel-max whose noise is capped (rand <= 1 - 2^-24), so tokens more than ~1e7 times less
      likely than the top one are (almost) never drawn: the tail is truncated. This is the paper's regime."""
    _check_precision(precision)
    if precision == "float32":
        p = probs.to(torch.float32)
        noise = _uniform(p.shape, generator, p.device, torch.float32)
        noise = noise.add_(1e-10).log_().neg_().add_(1e-10)  # = 1e-10 - log(rand + 1e-10), in place
        return torch.div(p, noise, out=noise).argmax(dim=-1)
    V = probs.shape[-1]
    cdf = probs.to(torch.float64).reshape(-1, V).cumsum(dim=-1)
    u = _uniform((cdf.shape[0], 1), generator, cdf.device) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u, right=True).squeeze(-1)  # first v with cdf[v] > u: never a zero-mass v
    over = idx == V  # u * total rounded up to total: take the last token with positive mass
    if over.any():
        positive = cdf[over] > torch.cat([cdf.new_zeros(int(over.sum()), 1), cdf[over, :-1]], dim=1)
        idx[over] = V - 1 - positive.flip(-1).to(torch.int8).argmax(dim=-1)
    return idx.reshape(probs.shape[:-1])


def ancestral_step(log_p_x0: torch.Tensor, z_t: torch.Tensor, alpha_t, alpha_s, mask_id: int,
                   generator: torch.Generator | None, precision: str = "float64", score: torch.Tensor | None = None):
    """One reverse step t -> s (alpha_s > alpha_t). Per masked position draw from weights
    (alpha_s - alpha_t) p(v | z_t) for real v and (1 - alpha_s) for staying [MASK]; observed positions are copied.
    alpha_t, alpha_s: floats or [B] tensors; log_p_x0: SUBS log-probs [B, L, V+1] (the draw never differentiates).

    score: log-probs [B, L, V+1] (usually log_p_x0 itself, with grad): then returns (z_s, ell) with ell [B] the sum
    over the positions revealed in this step of score[token], differentiable in score (a policy's log-likelihood
    of its own draw, up to the reveal probabilities, which do not depend on the model)."""
    _check_precision(precision)
    dtype = torch.float64 if precision == "float64" else torch.float32
    B = z_t.shape[0]
    masked = z_t == mask_id
    if not masked.any():
        return z_t.clone() if score is None else (z_t.clone(), score.new_zeros(B))
    row = masked.nonzero(as_tuple=True)[0]
    alpha_t = _per_row(alpha_t, B, z_t.device, dtype)[row]
    alpha_s = _per_row(alpha_s, B, z_t.device, dtype)[row]
    # only the masked rows, [M, V+1], built in place: at paper scale these are the big tensors
    weights = log_p_x0.detach()[masked].to(dtype).exp_().mul_((alpha_s - alpha_t)[:, None])
    weights[:, mask_id] = 1 - alpha_s
    drawn = sample_categorical(weights, generator, precision)
    z_s = z_t.clone()
    z_s[masked] = drawn
    if score is None:
        return z_s
    revealed = drawn != mask_id
    token_score = score[masked].gather(-1, drawn[:, None]).squeeze(-1)
    ell = score.new_zeros(B).index_add(0, row, torch.where(revealed, token_score, 0.0))
    return z_s, ell


@dataclasses.dataclass
class SampleResult:
    ids: torch.Tensor      # [n, L] long, on the sampling device, no [MASK] left
    nfe: int               # K, the number of sampler steps
    network_calls: int     # real model_fn calls (K, fewer with the cache, +1 for a final noise removal)
    seconds: float         # wall-clock of the whole call


@torch.no_grad()
def sample(model_fn, num_samples: int, seq_len: int, nfe: int, schedule: LogLinearSchedule, mask_id: int,
           generator: torch.Generator | None, device="cpu", precision: str = "float64", cache: bool = True,
           temperature: float = 1.0, t_end: float = 1e-5) -> SampleResult:
    """K = nfe ancestral steps on schedule.grid(K, t_end), from all-[MASK].

    cache: when a step changed no token, the next step reuses the last network output instead of calling the
      network again. Valid only for time-unconditional denoisers (the caller decides).
    noise removal: if any position is still [MASK] after the last step, one more call (or the cached output)
      fills each such position with the ARGMAX of its distribution over real tokens, as MDLM does; it is not
      counted in nfe but is counted in network_calls."""
    _check_precision(precision)
    device = torch.device(device)
    start = time.perf_counter()
    times = schedule.grid(nfe, t_end)
    alphas, sigmas = schedule.alpha(times), schedule.sigma(times)

    def denoise(z, i):
        sigma = torch.full((num_samples,), float(sigmas[i]), device=device, dtype=torch.float32)
        return denoised_log_probs(model_fn, z, sigma, mask_id, temperature)

    z = torch.full((num_samples, seq_len), mask_id, dtype=torch.long, device=device)
    calls, log_p, log_p_is_current = 0, None, False
    for i in range(nfe):
        if not (cache and log_p_is_current):
            log_p, calls = denoise(z, i), calls + 1
        z_next = ancestral_step(log_p, z, alphas[i], alphas[i + 1], mask_id, generator, precision)
        log_p_is_current = torch.equal(z_next, z)
        z = z_next

    still_masked = z == mask_id
    if still_masked.any():
        if not (cache and log_p_is_current):
            log_p, calls = denoise(z, nfe), calls + 1
        z = torch.where(still_masked, log_p.argmax(dim=-1), z)  # [MASK] has log-prob -inf: never chosen

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return SampleResult(ids=z, nfe=nfe, network_calls=calls, seconds=time.perf_counter() - start)
