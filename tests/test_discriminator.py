"""The discriminator: built from the teacher, trainable where it should be, soft input path, exact save/load, and
its BCE optimum is the log density ratio (with label smoothing: the smoothed ratio)."""

import itertools

import pytest
import torch

from didi.diffusion import LogLinearSchedule, corrupt
from didi.discriminator import Discriminator, load_discriminator, save_discriminator
from didi.objective import smoothed_bce
from didi.model import DiT, DiTConfig

SCHED = LogLinearSchedule(1e-3)


def trained_like_teacher(vocab=6, seq_len=4, layers=2, seed=0):
    torch.manual_seed(seed)
    model = DiT(DiTConfig(vocab, seq_len, hidden=16, layers=layers, heads=2, cond_dim=8, dropout=0.0))
    with torch.no_grad():  # move the zero-initialised adaLN / output layers, as training would
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def test_built_from_teacher_time_conditioned_and_partly_frozen():
    teacher = trained_like_teacher(layers=3)
    disc = Discriminator.from_teacher(teacher, trainable_blocks=1)
    for name, p in teacher.state_dict().items():
        assert torch.equal(disc.trunk.state_dict()[name], p)
    trainable = {n for n, p in disc.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("trunk.blocks.2.", "head.")) for n in trainable)
    assert any(n.startswith("head.") for n in trainable) and any(n.startswith("trunk.blocks.2.") for n in trainable)
    # the teacher ignores sigma; the discriminator (same weights) must not
    z = torch.randint(0, 6, (2, 4))
    low, high = torch.full((2,), 0.1), torch.full((2,), 5.0)
    assert torch.equal(teacher(z, low), teacher(z, high))
    disc.eval()
    out_low, out_high = disc(z, low), disc(z, high)
    assert out_low.shape == (2, 4) and out_low.dtype == torch.float32
    assert not torch.allclose(out_low, out_high)


def test_the_head_stays_float32_under_a_callers_bf16_autocast():
    """distill.bf16 runs the trunk's linears in bf16; the reward is a difference of the head's logits, so the head
    (the CPU's autocast stands in for CUDA's) computes in float32 on the trunk's features."""
    disc = Discriminator.from_teacher(trained_like_teacher(), 1).eval()
    z, sigma = torch.randint(0, 6, (2, 4)), torch.rand(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = disc(z, sigma)
        h, _ = disc.trunk.features(ids=z, sigma=sigma)
    assert logits.dtype == torch.float32
    assert torch.equal(logits, disc.head(h.float()).squeeze(-1))  # the head run outside autocast, on those features
    assert not torch.equal(logits, disc(z, sigma))  # and the trunk did run in bf16


def test_soft_input_with_one_hot_equals_ids():
    disc = Discriminator.from_teacher(trained_like_teacher(), 2).eval()
    z = torch.randint(0, 6, (3, 4))
    sigma = torch.rand(3)
    one_hot = torch.nn.functional.one_hot(z, 6).float()
    assert torch.allclose(disc.forward_soft(one_hot, sigma), disc(z, sigma), atol=1e-5)


def test_save_load_round_trip_is_exact_and_strict(tmp_path):
    disc = Discriminator.from_teacher(trained_like_teacher(), 1)
    opt = torch.optim.AdamW([p for p in disc.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):  # train mode: spectral norm's power iteration moves its u/v vectors
        opt.zero_grad()
        disc(torch.randint(0, 6, (4, 4)), torch.rand(4)).pow(2).mean().backward()
        opt.step()
    disc.eval()
    save_discriminator(tmp_path / "d", disc)
    loaded = load_discriminator(tmp_path / "d")
    z, sigma = torch.randint(0, 6, (5, 4)), torch.rand(5)
    assert torch.equal(loaded(z, sigma), disc(z, sigma))
    assert any("_u" in k for k in loaded.state_dict())
    # strict: a weights file with an extra key is refused
    from didi import io

    state, cfg = io.load_model_dir(tmp_path / "d")
    io.save_model_dir(tmp_path / "bad", {**state, "extra.weight": torch.zeros(1)}, cfg)
    with pytest.raises(RuntimeError):
        load_discriminator(tmp_path / "bad")


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_bce_optimum_is_the_log_density_ratio(smoothing):
    """Two known distributions P (positives) and Q over x in {0,1,2}^2, both corrupted at alpha = 0.6. Training
    on the EXACT population loss (every z weighted by its probability: smoothed_bce's mask argument carries the
    weights) must give, at each masked position of z, logit = log P_t(z) / Q_t(z); with label smoothing s the
    optimum is log((1-s) P_t + s Q_t) / (s P_t + (1-s) Q_t)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    V, L, mask = 3, 2, 3
    xs = torch.tensor(list(itertools.product(range(V), repeat=L)))
    P = torch.tensor([0.30, 0.05, 0.05, 0.10, 0.20, 0.02, 0.08, 0.10, 0.10], dtype=torch.float64)
    Q = torch.full((9,), 1 / 9, dtype=torch.float64)
    alpha = 0.6
    zs = torch.tensor(list(itertools.product(range(V + 1), repeat=L)))

    def corrupted(p):  # q_t(z) = sum_x p(x) prod_l [alpha 1(z_l = x_l) or (1 - alpha) 1(z_l = mask)]
        keep = (zs[:, None, :] == xs[None]).double() * alpha + (zs[:, None, :] == mask).double() * (1 - alpha)
        return (keep.prod(-1) * p[None]).sum(-1)

    Pt, Qt = corrupted(P), corrupted(Q)
    masked = zs == mask
    disc = Discriminator.from_teacher(trained_like_teacher(vocab=V + 1, seq_len=L, layers=1), trainable_blocks=1)
    disc.train()
    sigma = SCHED.sigma(torch.full((len(zs),), (1 - alpha) / (1 - SCHED.eps))).float()
    opt = torch.optim.Adam([p for p in disc.parameters() if p.requires_grad], lr=1e-2)
    w_real = (masked * Pt[:, None]).float()
    w_fake = (masked * Qt[:, None]).float()
    for _ in range(600):
        logits = disc(zs, sigma)
        loss = smoothed_bce(logits, w_real, logits, w_fake, smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
    disc.eval()
    with torch.no_grad():
        logits = disc(zs, sigma).double()
    s = smoothing
    target = torch.log(((1 - s) * Pt + s * Qt) / (s * Pt + (1 - s) * Qt))[:, None].expand(-1, L)
    err = (logits - target)[masked].abs().max().item()
    assert err < 0.1, err
    assert target[masked].abs().max() > 0.5  # the ratio is far from 1 somewhere: the test has teeth


def test_trained_on_samples_it_separates_the_two_distributions():
    """The same with sampled corrupted batches (as in distillation): logits correlate with the true log ratio."""
    torch.manual_seed(1)
    V, L, mask = 3, 2, 3
    xs = torch.tensor(list(itertools.product(range(V), repeat=L)))
    P = torch.tensor([0.30, 0.05, 0.05, 0.10, 0.20, 0.02, 0.08, 0.10, 0.10])
    g = torch.Generator().manual_seed(0)
    disc = Discriminator.from_teacher(trained_like_teacher(vocab=V + 1, seq_len=L, layers=1), 1).train()
    opt = torch.optim.Adam([p for p in disc.parameters() if p.requires_grad], lr=1e-2)
    alpha = torch.full((256,), 0.5)
    sigma = SCHED.sigma(torch.full((256,), 0.5 / (1 - SCHED.eps))).float()
    for _ in range(300):
        real = corrupt(xs[torch.multinomial(P, 256, True, generator=g)], alpha, mask, g)
        fake = corrupt(xs[torch.randint(0, 9, (256,), generator=g)], alpha, mask, g)
        lr, lf = disc(real, sigma), disc(fake, sigma)
        loss = smoothed_bce(lr, (real == mask).float(), lf, (fake == mask).float(), 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    disc.eval()
    # states with the second position masked: the log ratio is log(P(x_1 = a) / (1/3))
    z = torch.tensor([[a, mask] for a in range(V)])
    with torch.no_grad():
        got = disc(z, sigma[:3])[:, 1]
    truth = torch.log(P.view(3, 3).sum(1) * 3)
    assert torch.allclose(got, truth, atol=0.25), (got, truth)
