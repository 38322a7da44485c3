"""MDLM maths against exact enumeration on a tiny world, plus sampler precision.

The tiny world: L = 3 positions, 3 real symbols, [MASK] = 3, a fixed random joint q(x) over the 27 sequences.
Its EXACT denoiser is the data posterior p(x_l | z) = q(x_l | observed part of z), a table over the 4^3 states.
Truths are computed here by enumeration (every mask pattern, every sampler state), never by Monte Carlo.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from didi.diffusion import (
    LogLinearSchedule,
    ancestral_step,
    corrupt,
    denoise_rows,
    elbo_nats,
    mdlm_loss,
    sample,
    sample_categorical,
    subs_log_probs,
)

L, S = 3, 3          # positions, real symbols
MASK = S             # [MASK] id; model vocab = S + 1
STATES = np.array(list(itertools.product(range(S + 1), repeat=L)))     # all 64 z, row-major base 4
SEQS = np.array(list(itertools.product(range(S), repeat=L)))           # all 27 x, row-major base 3


def state_index(z):
    return sum(z[..., l] * (S + 1) ** (L - 1 - l) for l in range(L))


def seq_index(x):
    return sum(x[..., l] * S ** (L - 1 - l) for l in range(L))


@pytest.fixture(scope="module")
def q():
    return np.random.default_rng(0).dirichlet(np.full(len(SEQS), 0.7))


def posterior_table(q):
    """probs[state, l, v] = q(x_l = v | the OTHER observed positions of z); at masked l this is the exact
    denoiser (at observed l it is unused: SUBS carries the token over)."""
    probs = np.zeros((len(STATES), L, S))
    for i, z in enumerate(STATES):
        for l in range(L):
            fits = np.all((SEQS == z) | (z == MASK) | (np.arange(L) == l), axis=1)
            for v in range(S):
                probs[i, l, v] = q[fits & (SEQS[:, l] == v)].sum()
            probs[i, l] /= probs[i, l].sum()
    return probs


def random_table(seed):
    """An imperfect denoiser: arbitrary conditionals."""
    logits = np.random.default_rng(seed).normal(scale=1.5, size=(len(STATES), L, S))
    return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)


def table_model(probs, calls=None):
    """model_fn(z, sigma) -> logits [B, L, S + 1] looked up from a probability table (the [MASK] logit is 0 and
    must be removed by SUBS). Ignores sigma: time-unconditional, as the exact denoiser is."""
    logits = torch.cat([torch.from_numpy(np.log(probs)), torch.zeros(len(STATES), L, 1, dtype=torch.float64)], -1)

    def model_fn(z, sigma):
        assert sigma.shape == (z.shape[0],)
        if calls is not None:
            calls.append(1)
        return logits[state_index(z)]

    return model_fn


# ---------------------------------------------------------------------------------------------- schedule etc.
def test_schedule():
    s = LogLinearSchedule(eps=1e-3)
    t = torch.linspace(1e-3, 1, 1001, dtype=torch.float64)
    assert s.alpha(0.0) == 1 and abs(float(s.alpha(1.0)) - 1e-3) < 1e-15
    torch.testing.assert_close(s.sigma(t), -torch.log(s.alpha(t)), rtol=1e-12, atol=0)
    h = 1e-6
    torch.testing.assert_close(s.dalpha(t), (s.alpha(t + h) - s.alpha(t - h)) / (2 * h), rtol=1e-6, atol=0)
    assert torch.equal(s.omega(t), 1 / t)  # exactly
    torch.testing.assert_close(s.omega(t), -s.dalpha(t) / (1 - s.alpha(t)), rtol=1e-9, atol=0)
    with pytest.raises(ValueError):
        LogLinearSchedule(eps=1.0)


@pytest.mark.parametrize("K,t_end", [(1, 0.0), (7, 1e-5), (1024, 1e-5)])
def test_grid(K, t_end):
    g = LogLinearSchedule().grid(K, t_end)
    assert g.dtype == torch.float64 and g.shape == (K + 1,)
    assert g[0] == 1.0 and g[-1] == t_end  # exact endpoints
    torch.testing.assert_close(g[:-1] - g[1:], torch.full((K,), (1 - t_end) / K, dtype=torch.float64))


def test_corrupt_keeps_each_position_with_probability_alpha():
    gen = torch.Generator().manual_seed(0)
    alphas = torch.tensor([0.05, 0.3, 0.7, 0.95], dtype=torch.float64)
    x = torch.randint(0, 50, (4000, 64), generator=gen)
    alpha = alphas.repeat_interleave(1000)
    z = corrupt(x, alpha, 50, gen)
    kept = z != 50
    assert torch.equal(z[kept], x[kept]) and torch.all(z[~kept] == 50)
    for a, rows in zip(alphas.tolist(), kept.view(4, 1000, 64)):
        se = math.sqrt(a * (1 - a) / rows.numel())
        assert abs(rows.float().mean().item() - a) < 5 * se
    # same seed, same draw; a scalar alpha; the endpoints
    assert torch.equal(corrupt(x, alpha, 50, torch.Generator().manual_seed(3)),
                       corrupt(x, alpha, 50, torch.Generator().manual_seed(3)))
    assert torch.equal(corrupt(x, 1.0, 50, gen), x)
    assert torch.all(corrupt(x, 0.0, 50, gen) == 50)


def test_subs_log_probs():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen, requires_grad=True)
    z = torch.tensor([[6, 2, 6, 0, 6], [1, 6, 6, 6, 3]])
    masked = z == 6
    out = subs_log_probs(logits, z, 6)
    assert out.dtype == torch.float32
    assert torch.all(out[..., 6] == -math.inf)  # [MASK] is never predicted
    torch.testing.assert_close(out[masked][:, :6], logits[masked][:, :6].log_softmax(-1))
    carried = out[~masked]  # observed positions: point mass on the observed token
    assert torch.equal(carried.exp(), torch.nn.functional.one_hot(z[~masked], 7).float())
    hot = subs_log_probs(logits, z, 6, temperature=0.5)
    torch.testing.assert_close(hot[masked][:, :6], (logits[masked][:, :6] / 0.5).log_softmax(-1))
    # gradients reach masked positions only and stay finite despite the -inf entries
    out.gather(-1, torch.where(masked, 0, z)[..., None]).sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad[~masked] == 0) and torch.any(logits.grad[masked] != 0)


# ---------------------------------------------------------------------------------------------- ELBO
def exact_bound(probs, schedule, t_min=0.0, nodes=32):
    """Per-sequence continuous-time bound (nats per SEQUENCE), exact: the expectation over all 2^L mask
    patterns is a finite sum and the time integral of each pattern's weight omega(t) (1-alpha)^k alpha^(L-k) is a
    polynomial of degree L-1 in t, which Gauss-Legendre integrates exactly. Uses the library's SUBS and schedule."""
    model_fn = table_model(probs)
    patterns = torch.tensor(list(itertools.product([False, True], repeat=L)))           # [8, L]
    x = torch.from_numpy(SEQS)[:, None, :].expand(-1, len(patterns), -1)               # [27, 8, L]
    z = torch.where(patterns[None], MASK, x)
    flat = z.reshape(-1, L)
    log_p = subs_log_probs(model_fn(flat, torch.zeros(len(flat))), flat, MASK)
    nll = -log_p.gather(-1, x.reshape(-1, L, 1)).reshape(len(SEQS), len(patterns), L)
    cost = torch.where(patterns[None], nll, 0.0).sum(-1)                                 # [27, 8]
    u, w = np.polynomial.legendre.leggauss(nodes)
    t = torch.from_numpy(t_min + (1 - t_min) * (u + 1) / 2)
    w = torch.from_numpy(w * (1 - t_min) / 2)
    alpha, k = schedule.alpha(t)[:, None], patterns.sum(-1)[None].double()
    weight = (w[:, None] * schedule.omega(t)[:, None] * (1 - alpha) ** k * alpha ** (L - k)).sum(0)   # [8]
    return (cost * weight).sum(-1).numpy()


def order_log_probs(probs):
    """log p_sigma(x) [6 orders, 27]: the denoiser used autoregressively in each unmasking order."""
    out = np.zeros((math.factorial(L), len(SEQS)))
    for o, order in enumerate(itertools.permutations(range(L))):
        for i, x in enumerate(SEQS):
            z = np.full(L, MASK)
            for l in order:
                out[o, i] += np.log(probs[state_index(z), l, x[l]])
                z[l] = x[l]
    return out


def test_elbo_with_exact_denoiser_equals_nll_as_eps_to_zero(q):
    bound = exact_bound(posterior_table(q), LogLinearSchedule(eps=0.0))
    np.testing.assert_allclose(bound, -np.log(q), rtol=0, atol=1e-9)  # every sequence, not just on average


def test_elbo_with_eps_drops_the_prior_term(q):
    """eps = 1e-3: alpha(1) = eps, so the bound misses the t = 1 prior term and is slightly LOWER than -log q(x),
    by about eps * sum_l -log q(x_l) (the all-masked part of the integral beyond alpha = eps)."""
    nll = -np.log(q)
    bound = exact_bound(posterior_table(q), LogLinearSchedule(eps=1e-3))
    gap = nll - bound
    marginals = np.stack([np.bincount(SEQS[:, l], weights=q, minlength=S) for l in range(L)])   # [L, S]
    unigram_nll = -np.log(marginals[np.arange(L), SEQS]).sum(-1)
    assert np.all(gap > 0)
    np.testing.assert_allclose(gap, 1e-3 * unigram_nll, rtol=0.01)
    entropy = float(q @ nll)
    assert 0 < entropy - float(q @ bound) < 1e-2


def test_elbo_of_an_imperfect_denoiser(q):
    """For any denoiser (eps -> 0) the bound is the average over unmasking orders of -log p_order(x): so it is >= the
    NLL of the model's own (order-mixture) distribution for every x, and its q-average is >= the data entropy.
    It is NOT >= -log q(x) sequence by sequence."""
    probs = random_table(1)
    bound = exact_bound(probs, LogLinearSchedule(eps=0.0))
    log_p_orders = order_log_probs(probs)
    np.testing.assert_allclose(bound, -log_p_orders.mean(0), rtol=0, atol=1e-9)
    model_nll = -np.log(np.exp(log_p_orders).mean(0))
    assert np.all(bound >= model_nll - 1e-12) and np.any(bound > model_nll + 1e-3)
    nll = -np.log(q)
    assert q @ bound > q @ nll + 0.1
    assert np.any(bound < nll)  # a counterexample to "bound >= -log q(x) for every x"


def shuffled_world_batch(reps, gen):
    """Every sequence `reps` times, rows in random order (antithetic strata are assigned by row)."""
    x = torch.from_numpy(SEQS).repeat(reps, 1)
    return x[torch.randperm(len(x), generator=gen)]


@pytest.mark.parametrize("antithetic", [True, False])
def test_mdlm_loss_monte_carlo_converges_to_the_exact_bound(antithetic):
    schedule, t_min = LogLinearSchedule(eps=1e-3), 1e-3
    probs = random_table(2)
    # t ~ U[t_min, 1]: the estimator's mean is the integral over [t_min, 1] / (1 - t_min), per token
    target = exact_bound(probs, schedule, t_min).mean() / (L * (1 - t_min))
    model_fn, gen = table_model(probs), torch.Generator().manual_seed(0)
    values, masked = [], []
    for _ in range(30):
        loss, stats = mdlm_loss(model_fn, shuffled_world_batch(100, gen), schedule, MASK, gen, t_min, antithetic)
        assert stats["nll_bound"] == loss.item()
        values.append(loss.item())
        masked.append(stats["masked_fraction"])
    values = np.array(values)
    se = values.std(ddof=1) / math.sqrt(len(values))
    assert se < 0.01 * target
    assert abs(values.mean() - target) < 4 * se, (values.mean(), target, se)
    # E[1 - alpha(t)] = (1 - eps) E[t] = (1 - eps)(1 + t_min)/2
    assert abs(np.mean(masked) - (1 - 1e-3) * (1 + t_min) / 2) < 0.01


def test_antithetic_times_are_stratified():
    """Antithetic: the B times fall one in each of B equal strata of [t_min, 1] (read back from sigma)."""
    schedule, t_min, B = LogLinearSchedule(), 1e-3, 64
    seen = []

    def model_fn(z, sigma):
        seen.append(sigma.double())
        return torch.zeros(*z.shape, S + 1)

    gen = torch.Generator().manual_seed(0)
    for antithetic in (True, False):
        mdlm_loss(model_fn, torch.zeros(B, L, dtype=torch.long), schedule, MASK, gen, t_min, antithetic)
    strata = []
    for sigma in seen:
        t = -torch.expm1(-sigma) / (1 - schedule.eps)
        assert torch.all((t >= t_min - 1e-6) & (t <= 1 + 1e-6))
        strata.append(torch.floor((t - t_min) / (1 - t_min) * B).clamp(0, B - 1).long())
    assert torch.equal(strata[0].sort().values, torch.arange(B))
    assert not torch.equal(strata[1].sort().values, torch.arange(B))  # i.i.d. times collide (P ~ 1 - 1e-27)


def test_elbo_nats_and_gradients():
    schedule, t_min = LogLinearSchedule(), 1e-3
    probs = random_table(3)
    target = exact_bound(probs, schedule, t_min).mean() / (L * (1 - t_min))
    gen = torch.Generator().manual_seed(0)
    value = elbo_nats(table_model(probs), shuffled_world_batch(100, gen), schedule, MASK, gen, t_min, num_t=20)
    assert isinstance(value, float) and abs(value - target) < 0.02 * target
    # a learnable denoiser: finite gradients through SUBS and the -inf entries
    table = torch.zeros(len(STATES), L, S + 1, requires_grad=True)
    loss, _ = mdlm_loss(lambda z, sigma: table[state_index(z)], shuffled_world_batch(4, gen), schedule, MASK, gen)
    loss.backward()
    assert torch.isfinite(table.grad).all() and table.grad.abs().sum() > 0
    assert torch.all(table.grad[..., MASK] == 0)  # the [MASK] logit is not a prediction


# ---------------------------------------------------------------------------------------------- sampler
def exact_sampler_distribution(probs, K, eps=1e-3, t_end=1e-5):
    """The K-step ancestral sampler's output distribution over the 27 sequences, by enumeration of its 64 states:
    per masked position move to v w.p. (a_s - a_t)/(1 - a_t) p(v | z), stay [MASK] w.p. (1 - a_s)/(1 - a_t),
    positions independent given z; then positions still masked get the argmax of p(. | z)."""
    times = 1 - np.arange(K + 1) * (1 - t_end) / K
    times[-1] = t_end
    alphas = 1 - (1 - eps) * times
    dist = np.zeros(len(STATES))
    dist[state_index(np.full(L, MASK))] = 1.0
    for a_t, a_s in zip(alphas[:-1], alphas[1:]):
        step = np.zeros((len(STATES), len(STATES)))
        for i, z in enumerate(STATES):
            for j, z_next in enumerate(STATES):
                p = 1.0
                for l in range(L):
                    if z[l] != MASK:
                        p *= float(z_next[l] == z[l])
                    elif z_next[l] == MASK:
                        p *= (1 - a_s) / (1 - a_t)
                    else:
                        p *= (a_s - a_t) / (1 - a_t) * probs[i, l, z_next[l]]
                step[i, j] = p
        dist = dist @ step
    out = np.zeros(len(SEQS))
    for i, z in enumerate(STATES):
        x = np.where(z == MASK, probs[i].argmax(-1), z)
        out[seq_index(x)] += dist[i]
    return out


def product_of_marginals(q):
    marginals = np.stack([np.bincount(SEQS[:, l], weights=q, minlength=S) for l in range(L)])
    return marginals[np.arange(L), SEQS].prod(-1)


def tv(p, r):
    return 0.5 * np.abs(p - r).sum()


def test_exact_sampler_distribution_approaches_the_data(q):
    probs = posterior_table(q)
    tvs = [tv(exact_sampler_distribution(probs, K), q) for K in (1, 2, 4, 16, 64)]
    assert all(a > b for a, b in zip(tvs, tvs[1:])), tvs
    assert tvs[0] > 0.1 and tvs[-1] < 0.05 * tvs[0], tvs
    # K = 1 from t = 1 to t = 0 unmasks everything at once from p(. | all masked): the product of marginals
    np.testing.assert_allclose(exact_sampler_distribution(probs, 1, t_end=0.0), product_of_marginals(q), atol=1e-12)
    assert abs(tvs[0] - tv(product_of_marginals(q), q)) < 1e-3


def chi_square(counts, expected_probs):
    """Pearson statistic over cells with >= 5 expected counts (the rest lumped into one cell) and its dof."""
    n = counts.sum()
    expected = expected_probs * n
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    return float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()), int(keep.sum()) - 1


def assert_matches(ids, expected_probs):
    """Sample histogram vs exact distribution: chi-square far below a 1e-5-level bound, TV below 0.01."""
    assert ids.dtype == torch.long and torch.all((ids >= 0) & (ids < S))  # no [MASK] left
    counts = np.bincount(seq_index(ids.numpy()), minlength=len(SEQS)).astype(float)
    stat, dof = chi_square(counts, expected_probs)
    assert stat < dof + 6 * math.sqrt(2 * dof), (stat, dof)
    assert tv(counts / counts.sum(), expected_probs) < 0.01


N_SAMPLES = 100_000


@pytest.mark.parametrize("K,precision,cache,t_end", [
    (1, "float64", False, 0.0),      # product of marginals, exactly one call
    (4, "float64", False, 1e-5),
    (16, "float64", True, 1e-5),     # the exact denoiser ignores t: the cache is valid
    (4, "float32", False, 1e-5),     # no tail to truncate in a 3-symbol world: matches too
])
def test_sampler_matches_enumeration(q, K, precision, cache, t_end):
    probs, calls = posterior_table(q), []
    result = sample(table_model(probs, calls), N_SAMPLES, L, K, LogLinearSchedule(), MASK,
                    torch.Generator().manual_seed(K), precision=precision, cache=cache, t_end=t_end)
    assert_matches(result.ids, exact_sampler_distribution(probs, K, t_end=t_end))
    assert result.nfe == K and result.network_calls == len(calls) and result.seconds > 0
    if t_end == 0.0:
        assert result.network_calls == K  # alpha(0) = 1: nothing left masked, no noise-removal call
    elif not cache:
        assert result.network_calls in (K, K + 1)
    else:  # 100k rows: some row changes at nearly every step, so the cache rarely applies here
        assert result.network_calls <= K + 1
    if K == 1:
        assert_matches(result.ids, product_of_marginals(q))


def test_sampler_network_calls_and_noise_removal(q):
    probs = posterior_table(q)
    # K = 1 with t_end = 0.5: every position stays masked w.p. ~1/2, so noise removal must run, once
    calls = []
    result = sample(table_model(probs, calls), 2000, L, 1, LogLinearSchedule(), MASK, torch.Generator().manual_seed(0),
                    cache=False, t_end=0.5)
    assert result.network_calls == len(calls) == 2 and result.nfe == 1
    assert torch.all(result.ids < S)
    # the cache changes the cost, not the result: a time-unconditional denoiser gives the same output for the same
    # z, and the sampler's random draws do not depend on the cache
    runs = {}
    for cache in (False, True):
        calls = []
        runs[cache] = sample(table_model(probs, calls), 4, L, 64, LogLinearSchedule(), MASK,
                             torch.Generator().manual_seed(0), cache=cache)
        assert runs[cache].network_calls == len(calls) and runs[cache].nfe == 64
    assert torch.equal(runs[True].ids, runs[False].ids)
    assert runs[False].network_calls >= 64 and runs[True].network_calls <= 4 * L + 1


def test_ancestral_step_copies_observed_positions():
    gen = torch.Generator().manual_seed(0)
    log_p = torch.randn(64, 8, 6, generator=gen).log_softmax(-1)
    z = torch.randint(0, 6, (64, 8), generator=gen)
    z[:, 0] = 5
    log_p = subs_log_probs(log_p, z, 5)
    for precision in ("float64", "float32"):
        z_s = ancestral_step(log_p, z, 0.2, 0.6, 5, gen, precision)
        observed = z != 5
        assert torch.equal(z_s[observed], z[observed])
        assert torch.all(ancestral_step(log_p, z, 0.2, 1.0, 5, gen, precision) != 5)  # alpha_s = 1 unmasks all
        assert torch.equal(ancestral_step(log_p, z, 0.2, 0.2, 5, gen, precision), z)  # no time passes: no change
    with pytest.raises(ValueError):
        ancestral_step(log_p, z, 0.2, 0.6, 5, gen, "bfloat16")


# ---------------------------------------------------------------------------------------------- precision
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_sample_categorical_small_vocabulary(precision):
    weights = torch.tensor([3.0, 0.0, 1.0, 6.0, 0.0])  # unnormalised, with zero-mass entries (also the last)
    idx = sample_categorical(weights.expand(200_000, -1), torch.Generator().manual_seed(0), precision)
    counts = np.bincount(idx.numpy(), minlength=5).astype(float)
    assert counts[1] == 0 and counts[4] == 0
    stat, dof = chi_square(counts[[0, 2, 3]], np.array([0.3, 0.1, 0.6]))
    assert stat < dof + 6 * math.sqrt(2 * dof)


def test_float64_sampling_keeps_the_tail_float32_truncates_it():
    """A peaked categorical over 2^17 + 1 tokens: one token of mass 1 - tau, 2^17 tokens of 1.1e-8 each (tau = 0.14%).

    float64 (inverse CDF) draws the tail with its true probability tau. MDLM's float32 Gumbel noise is capped
    (rand <= 1 - 2^-24 makes -log(rand) >= 2^-24), so a tail token beats the head only when the head's noise
    exceeds 2^-24 / 1.1e-8 = 5.5 (prob. e^-5.5) AND the tail token's noise hits the cap: about 2% of the true
    rate. With 6144 draws float64 expects 8.7 tail draws and float32 0.2; the bounds below fail by chance with
    probability ~0.5% (Poisson tails), and fail surely if float64 truncated or float32 did not."""
    tail_size, p_tail = 2**17, 2.0**-24 / 5.5
    tau = tail_size * p_tail
    probs = torch.full((tail_size + 1,), p_tail, dtype=torch.float64)
    probs[0] = 1 - tau
    rows, chunk = 6144, 256
    expected = rows * tau
    tail = {}
    for precision, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        gen, p = torch.Generator().manual_seed(0), probs.to(dtype).expand(chunk, -1)
        tail[precision] = sum(int((sample_categorical(p, gen, precision) != 0).sum()) for _ in range(rows // chunk))
    assert 3 <= tail["float64"] <= expected + 4 * math.sqrt(expected), (tail, expected)
    assert tail["float32"] <= 2, (tail, expected)


def test_ancestral_step_scores_its_own_draw_without_changing_it():
    """score=: the same draw as without (same generator state), plus ell = sum over newly revealed positions of
    score[token], with the gradient flowing into score at exactly those entries."""
    from didi.diffusion import ancestral_step, subs_log_probs

    torch.manual_seed(0)
    B, L, V = 4, 6, 5
    z = torch.randint(0, V, (B, L))
    z[torch.rand(B, L) < 0.6] = V  # [MASK] = V
    logits = torch.randn(B, L, V + 1, requires_grad=True)
    log_p = subs_log_probs(logits, z, V)
    plain = ancestral_step(log_p.detach(), z, 0.2, 0.7, V, torch.Generator().manual_seed(3))
    z_s, ell = ancestral_step(log_p, z, 0.2, 0.7, V, torch.Generator().manual_seed(3), score=log_p)
    assert torch.equal(z_s, plain)
    revealed = (z == V) & (z_s != V)
    assert revealed.any() and ((z == V) & (z_s == V)).any()
    by_hand = torch.where(revealed, log_p.gather(-1, z_s.clamp(max=V - 1)[..., None]).squeeze(-1), 0.0).sum(1)
    torch.testing.assert_close(ell, by_hand)
    ell.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[~revealed].abs().sum() == 0


def test_the_config_schema_knows_the_same_precisions_as_the_sampler():
    """diffusion.PRECISIONS is the one list; the schema (YAML, cannot import it) must spell the same names."""
    from pathlib import Path

    import yaml

    from didi.diffusion import PRECISIONS

    schema = yaml.safe_load((Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    assert tuple(schema["definitions"]["precision"]["enum"]) == PRECISIONS


def test_identical_rows_run_the_network_once_and_distinct_rows_all_run():
    rows_seen = []

    def model_fn(z, sigma):
        rows_seen.append(z.shape[0])
        return z[..., None].double() * sigma[:, None, None] + torch.arange(3.0, dtype=torch.float64)

    start = torch.full((5, 4), MASK)
    out = denoise_rows(model_fn, start, torch.full((5,), 2.0))
    assert rows_seen == [1] and out.shape == (5, 4, 3)
    assert torch.equal(out, model_fn(start, torch.full((5,), 2.0)))
    for z, sigma in ((start, torch.tensor([2.0, 2.0, 2.0, 2.0, 1.0])),  # one row at another noise level
                     (torch.cat([start[:4], torch.zeros(1, 4, dtype=torch.long)]), torch.full((5,), 2.0))):
        rows_seen.clear()
        assert torch.equal(denoise_rows(model_fn, z, sigma), model_fn(z, sigma)) and rows_seen == [5, 5]
