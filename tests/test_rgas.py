"""RGAS: same draws as the ancestral sampler with h = 0 and M = 1, observed tokens frozen, honest call counts,
and the guidance actually raises the discriminator's reward."""

import pytest
import torch

from didi.diffusion import LogLinearSchedule, sample
from didi.discriminator import Discriminator
from didi.model import DiT, DiTConfig
from didi.rgas import h_schedule, rgas_sample

SCHED = LogLinearSchedule(1e-3)
V1, L, MASK = 9, 6, 8  # 8 real ids + [MASK]


def networks(seed=0):
    torch.manual_seed(seed)
    student = DiT(DiTConfig(V1, L, hidden=16, layers=2, heads=2, cond_dim=8, dropout=0.0))
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    disc = Discriminator.from_teacher(student, trainable_blocks=1)
    with torch.no_grad():
        for p in disc.head.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return student.eval(), disc.eval()


class Counted:
    """Wraps a callable and records every input z it was called with."""

    def __init__(self, fn):
        self.fn, self.inputs = fn, []

    def __call__(self, z, sigma):
        self.inputs.append(z.clone())
        return self.fn(z, sigma)


class CountedDisc(torch.nn.Module):
    """The real discriminator, with its forward / soft-forward / backward passes counted."""

    def __init__(self, disc):
        super().__init__()
        self.disc, self.forward_calls, self.backward_calls = disc, 0, 0

    def forward(self, z, sigma):
        self.forward_calls += 1
        return self.disc(z, sigma)

    def forward_soft(self, probs, sigma):
        self.forward_calls += 1
        out = self.disc.forward_soft(probs, sigma)
        out.register_hook(lambda g: setattr(self, "backward_calls", self.backward_calls + 1))
        return out


def test_h_schedule():
    hs = h_schedule(8, 0.5, 30.0, 40.0)
    assert hs[4:] == [None] * 4
    assert hs[:4] == pytest.approx([30.0, 30 + 10 / 3, 30 + 20 / 3, 40.0])
    assert h_schedule(4, 0.0, 1.0, 2.0) == [None] * 4
    assert h_schedule(3, 1.0, 1.0, 2.0) == pytest.approx([1.0, 1.5, 2.0])
    # the authors' code: h over all K steps (the re-ranking steps scale their scores by it)
    assert h_schedule(5, 0.5, 0.2, 1.0, "code") == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    with pytest.raises(ValueError, match="reading"):
        h_schedule(5, 0.5, 0.2, 1.0, "papper")


def test_code_reading_reranks_by_h_times_the_scores():
    """Re-ranking only (tilt_fraction 0), M = 8: with the code's reading h = 0 draws a candidate uniformly (the
    plain sampler's distribution) and a large h takes the best-scored one, so the discriminator's mean score of
    the samples rises with h; the paper's reading ignores h there."""
    student, disc = networks(2)
    n, nfe = 256, 4

    def score(reading, h):
        res = rgas_sample(student, disc, n, L, nfe, SCHED, MASK, torch.Generator().manual_seed(0), "cpu", "float64",
                          h_start=h, h_end=h, candidates=8, tilt_fraction=0.0, temperature=1.0, t_end=1e-5,
                          reading=reading)
        with torch.no_grad():
            return disc(res.ids, torch.zeros(n)).sum(1).mean().item()

    plain = rgas_sample(student, disc, n, L, nfe, SCHED, MASK, torch.Generator().manual_seed(0), "cpu", "float64",
                        h_start=0.0, h_end=0.0, candidates=1, tilt_fraction=0.0)
    with torch.no_grad():
        plain_score = disc(plain.ids, torch.zeros(n)).sum(1).mean().item()
    uniform, greedy = score("code", 0.0), score("code", 100.0)
    assert abs(uniform - plain_score) < 0.5 * (greedy - plain_score)  # h = 0: about the plain sampler's score
    assert greedy > score("paper", 0.0) > uniform  # argmax beats softmax(scores) beats a uniform pick
    assert score("paper", 100.0) == score("paper", 0.0)  # the paper's re-ranking does not read h


@pytest.mark.parametrize("nfe,precision,temperature", [(4, "float64", 1.0), (6, "float32", 0.8), (2, "float64", 1.0)])
def test_h0_m1_reproduces_the_ancestral_sampler(nfe, precision, temperature):
    student, disc = networks()
    for tilt_fraction in (0.0, 0.5, 1.0):
        plain = sample(student, 16, L, nfe, SCHED, MASK, torch.Generator().manual_seed(7), precision=precision,
                       cache=False, temperature=temperature)
        guided = rgas_sample(student, disc, 16, L, nfe, SCHED, MASK, torch.Generator().manual_seed(7), "cpu",
                             precision, h_start=0.0, h_end=0.0, candidates=1, tilt_fraction=tilt_fraction,
                             temperature=temperature, t_end=1e-5)
        assert torch.equal(plain.ids, guided.ids)
        assert guided.network_calls == plain.network_calls and guided.nfe == nfe
        assert guided.disc_forward_calls == guided.disc_backward_calls == 0


@pytest.mark.parametrize("tilt_fraction,candidates", [(0.5, 4), (1.0, 1), (0.0, 3)])
def test_observed_tokens_never_change_and_counts_are_exact(tilt_fraction, candidates):
    student, disc = networks(1)
    model_fn, counted_disc = Counted(student), CountedDisc(disc)
    nfe = 6
    res = rgas_sample(model_fn, counted_disc, 8, L, nfe, SCHED, MASK, torch.Generator().manual_seed(3), "cpu",
                      "float64", h_start=30.0, h_end=40.0, candidates=candidates, tilt_fraction=tilt_fraction,
                      temperature=1.0, t_end=1e-5)
    assert not (res.ids == MASK).any()
    assert model_fn.inputs[0].shape == (1, L)  # the all-[MASK] start: identical rows, one network row
    states = [z.expand(8, L) for z in model_fn.inputs] + [res.ids]
    for before, after in zip(states[:-1], states[1:]):
        observed = before != MASK
        assert torch.equal(after[observed], before[observed])
    assert res.network_calls == len(model_fn.inputs)
    assert res.nfe == nfe and res.network_calls in (nfe, nfe + 1)
    assert res.disc_forward_calls == counted_disc.forward_calls
    assert res.disc_backward_calls == counted_disc.backward_calls
    n_tilt = sum(h is not None for h in h_schedule(nfe, tilt_fraction, 30.0, 40.0))
    # one D backward per tilting step (every sample still has masks early on), none without tilting
    assert res.disc_backward_calls == n_tilt
    if candidates > 1:
        assert res.disc_forward_calls - res.disc_backward_calls == nfe - n_tilt


def test_guidance_raises_the_reward():
    """Tilting alone, and re-ranking alone, both raise the discriminator's mean score of the final samples."""
    student, disc = networks(2)
    n, nfe = 256, 4

    def score(**kw):
        res = rgas_sample(student, disc, n, L, nfe, SCHED, MASK, torch.Generator().manual_seed(0), "cpu", "float64",
                          temperature=1.0, t_end=1e-5, **kw)
        with torch.no_grad():
            return disc(res.ids, torch.zeros(n)).sum(1).mean().item()

    plain = score(h_start=0.0, h_end=0.0, candidates=1, tilt_fraction=0.0)
    tilted = score(h_start=30.0, h_end=40.0, candidates=1, tilt_fraction=1.0)
    reranked = score(h_start=0.0, h_end=0.0, candidates=8, tilt_fraction=0.0)
    assert tilted > plain
    assert reranked > plain
