"""DiDi-Instruct distillation: exact toy-world answers, estimator unbiasedness, the small formulas, resume, CLI."""

import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_tokenizer, tiny_teacher
from didi import config
from didi.diffusion import LogLinearSchedule, sample
from didi import distill_cli, objective
from didi.distill import build_state, distill_step, run_distillation
from didi.objective import divergence, grouped_advantages, rollout, sample_tau, smoothed_bce

SCHED = LogLinearSchedule(1e-3)


# ---------------------------------------------------------------------------------------------- a toy world
class ToyWorld:
    """All sequences of length L over V real tokens ([MASK] = V): every distribution is a vector we can enumerate."""

    def __init__(self, V: int, L: int):
        self.V, self.L, self.mask = V, L, V
        self.states = torch.tensor(list(itertools.product(range(V + 1), repeat=L)))  # every z, [MASK] included
        self.clean = torch.tensor(list(itertools.product(range(V), repeat=L)))        # every x, same order

    def index(self, z: torch.Tensor) -> torch.Tensor:
        return (z * (self.V + 1) ** torch.arange(self.L - 1, -1, -1)).sum(-1)

    def posterior_logits(self, q: torch.Tensor) -> torch.Tensor:
        """The exact denoiser of data q: log p(x_l = v | z) for every z (a perfectly fitted teacher)."""
        out = torch.zeros(len(self.states), self.L, self.V + 1, dtype=torch.float64)
        for i, z in enumerate(self.states):
            consistent = ((self.clean == z) | (z == self.mask)).all(-1)
            w = q * consistent
            for l in range(self.L):
                out[i, l, : self.V] = torch.stack([w[self.clean[:, l] == v].sum() for v in range(self.V)])
        p = out[..., : self.V] / out[..., : self.V].sum(-1, keepdim=True)
        out[..., : self.V] = p.clamp_min(1e-13).log()  # observed positions: irrelevant, kept finite
        return out.float()

    def sampler_distribution(self, model, times, noise_removal: bool = True) -> torch.Tensor:
        """Exact distribution over clean sequences of the ancestral sampler on `times` (1 = all-[MASK] start),
        then (as diffusion.sample) an argmax fill of positions still masked. Differentiable in the model."""
        S, V = len(self.states), self.V
        P = torch.zeros(S, dtype=torch.float64)
        P[self.index(torch.full((self.L,), self.mask))] = 1.0
        masked = self.states == self.mask
        onehot = torch.nn.functional.one_hot(self.states, V + 1).double()
        for t, s in zip(times[:-1], times[1:]):
            t = torch.tensor([float(t)])
            p = torch.softmax(model(self.states, SCHED.sigma(t).float().expand(S)).double()[..., :V], -1)
            a_t, a_s = SCHED.alpha(t).double(), SCHED.alpha(torch.tensor([float(s)])).double()
            reveal = (a_s - a_t) / (1 - a_t)
            T = torch.cat([torch.where(masked[..., None], reveal * p, onehot[..., :V]),
                           torch.where(masked, 1 - reveal, 0.0)[..., None]], dim=-1)
            P = P @ self.product(T)
        if noise_removal:
            sigma = SCHED.sigma(torch.tensor([float(times[-1])])).float().expand(S)
            best = model(self.states, sigma)[..., :V].argmax(-1)
            T = torch.where(masked[..., None], torch.nn.functional.one_hot(best, V + 1).double(), onehot)
            P = P @ self.product(T)
        return P[(~masked).all(-1)]

    def product(self, T: torch.Tensor) -> torch.Tensor:
        """Per-position transitions T [S, L, V+1] -> the joint transition matrix [S, S] (positions independent)."""
        full = T[:, 0]
        for l in range(1, self.L):
            full = (full[:, :, None] * T[:, l, None, :]).reshape(T.shape[0], -1)
        return full


class Table(nn.Module):
    """A tabular network over the toy world: one row of outputs per state z (ignores sigma)."""

    def __init__(self, world: ToyWorld, init: torch.Tensor):
        super().__init__()
        self.world = world
        self.table = nn.Parameter(init.clone())

    def forward(self, z, sigma):
        return self.table[self.world.index(z)]


def potts_chain(world: ToyWorld, coupling: float, bias) -> torch.Tensor:
    """q(x) ∝ exp(J #{l: x_l = x_l+1} + sum_l b[x_l]): full support, strongly correlated neighbours."""
    x = world.clean
    energy = coupling * (x[:, 1:] == x[:, :-1]).sum(-1).double() + torch.tensor(bias, dtype=torch.float64)[x].sum(-1)
    return torch.softmax(energy, 0)


def kl(p, q) -> float:
    return float((p * (p / q).log()).sum().detach())


def default_cfg():
    return config.load()


def test_exact_enumeration_matches_the_real_sampler():
    """The toy world's exact K-step distribution is the distribution diffusion.sample actually draws from."""
    torch.manual_seed(0)
    world = ToyWorld(V=3, L=3)
    q = potts_chain(world, 2.0, (0.5, 0.0, -0.5))
    teacher = Table(world, world.posterior_logits(q))
    exact = world.sampler_distribution(teacher, SCHED.grid(2, 1e-5).tolist())
    assert abs(exact.sum().item() - 1) < 1e-9
    n = 40_000
    ids = sample(teacher, n, 3, 2, SCHED, world.mask, torch.Generator().manual_seed(1), cache=False).ids
    counts = torch.bincount((ids * 3 ** torch.arange(2, -1, -1)).sum(-1), minlength=27).double() / n
    assert 0.5 * (counts - exact).abs().sum() < 0.02
    # and the fitted teacher converges to the data with many steps, while 2 steps are far off
    many = world.sampler_distribution(teacher, SCHED.grid(64, 1e-5).tolist())
    assert kl(many, q) < 1e-3 < 0.05 < kl(exact, q)


def test_distillation_lowers_the_exact_two_step_kl():
    """Toy world (V = 3, L = 4, a Potts chain): a perfectly fitted teacher sampled in K = 2 steps is far from the
    data. Distilling it (full method, tabular student + tabular discriminator) must lower the exact REVERSE
    KL(student 2-step || data) - what the method minimises - well below the teacher's, and the forward KL too."""
    world = ToyWorld(V=3, L=4)
    q = potts_chain(world, 2.0, (0.6, 0.0, -0.3))
    teacher = Table(world, world.posterior_logits(q))
    grid = SCHED.grid(2, 1e-5).tolist()
    with torch.no_grad():
        teacher_2 = world.sampler_distribution(teacher, grid)
    data = world.clean[torch.multinomial(q.float(), 4096, replacement=True, generator=torch.Generator().manual_seed(0))]
    cfg = default_cfg()
    cd = {**cfg["distill"], "iterations": 800, "batch_size": 32, "group_size": 4, "student_lr": 0.01,
          "discriminator_lr": 0.1, "warmup_steps": 10, "ema": 0.9, "log_every": 100}
    method = config.variant_method(cfg, "full")
    disc = Table(world, torch.zeros(len(world.states), world.L))  # one logit per (state, position)
    state = run_distillation(teacher, data.numpy(), cd, method, SCHED, world.mask, seed=0, discriminator=disc,
                             progress=False)
    with torch.no_grad():
        student_2 = world.sampler_distribution(state.student_ema, grid)
    assert kl(teacher_2, q) > 0.15
    assert kl(student_2, q) < 0.6 * kl(teacher_2, q)
    assert kl(q, student_2) < kl(q, teacher_2)
    # the teacher is untouched (frozen), and the student started as it
    assert torch.equal(teacher.table, Table(world, world.posterior_logits(q)).table)
    assert len(state.history["reward"]) == 800


# ---------------------------------------------------------------------------------------------- the estimator
@pytest.mark.parametrize("decomposition", [True, False])
@pytest.mark.parametrize("single_pass", [True, False])
def test_policy_gradient_matches_exact_gradient(decomposition, single_pass):
    """mean(R(x) * log p(x)) over student rollouts (log p = ell_1 + ell_2, or the one-shot ell) has expected
    gradient = the exact gradient of E_student[R] computed by enumeration of the rollout's distribution."""
    torch.manual_seed(0)
    world = ToyWorld(V=2, L=3)
    student = Table(world, 0.7 * torch.randn(len(world.states), 3, 3))
    reward = torch.randn(len(world.clean), dtype=torch.float64)
    tau = 0.5
    times = [1.0, tau, 0.0] if decomposition else [1.0, 0.0]  # finish at alpha = 1: nothing left masked

    exact = (world.sampler_distribution(student, times, noise_removal=False) * reward).sum()
    (g_exact,) = torch.autograd.grad(exact, student.table)

    method = {"score_decomposition": decomposition, "finish_at_alpha_one": True, "on_policy_single_pass": single_pass}
    n = 60_000
    roll = rollout(student, n, 3, torch.full((n,), tau), SCHED, world.mask, method, 1e-3,
                   torch.Generator().manual_seed(1), "float64", "cpu")
    assert not (roll["x"] == world.mask).any()
    r = reward[(roll["x"] * 2 ** torch.arange(2, -1, -1)).sum(-1)].float()
    (g_mc,) = torch.autograd.grad((r * roll["logp"]).mean(), student.table)
    err = (g_mc.double() - g_exact).norm() / g_exact.norm()
    assert err < 0.06, err
    # dropping the first step's log-prob (no score decomposition in a two-step rollout) is biased
    if decomposition and single_pass:
        roll2 = rollout(student, n, 3, torch.full((n,), tau), SCHED, world.mask, method, 1e-3,
                        torch.Generator().manual_seed(1), "float64", "cpu")
        ell2_only = roll2["logp"] - _first_step_logp(student, world, roll2)
        (g_bad,) = torch.autograd.grad((r * ell2_only).mean(), student.table)
        assert (g_bad.double() - g_exact).norm() / g_exact.norm() > 0.3


def _first_step_logp(student, world, roll):
    z1, _, lp1 = roll["states"][0]
    z_tau = roll["states"][1][0]
    revealed = z_tau != world.mask
    return torch.where(revealed, lp1.gather(-1, z_tau.clamp(max=world.V - 1)[..., None]).squeeze(-1), 0.0).sum(1)


# ---------------------------------------------------------------------------------------------- small formulas
def test_grouped_advantages_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])
    a = grouped_advantages(r, 4, 3.0)
    s = math.sqrt(5 / 3)  # unbiased std of 1, 2, 3, 4
    assert torch.allclose(a[:4], torch.tensor([-1.5, -0.5, 0.5, 1.5]) / s, atol=1e-6)
    assert torch.equal(a[4:], torch.zeros(4))  # a constant group carries no signal
    # one outlier in a group of 16: mean 1/16, std 1/4 -> A = 3.75 is clipped to 3; the rest -0.25
    r = torch.zeros(16)
    r[7] = 1.0
    a = grouped_advantages(r, 16, 3.0)
    assert a[7].item() == pytest.approx(3.0)
    assert torch.allclose(torch.cat([a[:7], a[8:]]), torch.full((15,), -0.25), atol=1e-6)


def test_pooled_advantages_by_hand():
    """advantage_scale pooled: one std for the batch, sqrt(mean of the groups' unbiased variances)."""
    quiet, loud = torch.tensor([0.0, 0.1, 0.0, 0.1]), torch.tensor([0.0, 1.0, 0.0, 1.0])
    r = torch.cat([quiet, loud])
    pooled = grouped_advantages(r, 4, 3.0, "pooled")
    std = math.sqrt((0.01 / 3 + 1 / 3) / 2)  # each group: 4 deviations of +-half its range, 3 degrees of freedom
    assert torch.allclose(pooled, (r - r.view(2, 4).mean(1).repeat_interleave(4)) / std, atol=1e-6)
    # the group's own std makes both groups' advantages the same; pooled keeps the quiet group 10x smaller
    by_group = grouped_advantages(r, 4, 3.0)
    assert torch.allclose(by_group[:4], by_group[4:]) and torch.allclose(pooled[:4] * 10, pooled[4:], atol=1e-6)
    # equal group variances: the two scales agree
    same = torch.cat([loud, loud + 5.0])
    assert torch.allclose(grouped_advantages(same, 4, 3.0, "pooled"), grouped_advantages(same, 4, 3.0), atol=1e-6)
    # over DDP ranks (reduce_sum): test_two_ddp_processes_match_one_process, whose ranks hold one group each
    with pytest.raises(ValueError, match="advantage_scale"):
        grouped_advantages(r, 4, 3.0, "batch")


def test_leave_one_out_advantages_by_hand():
    """advantage_scale leave_one_out (RLOO): R_i minus the mean of the group's other rewards, no std."""
    r = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 0.4])
    a = grouped_advantages(r, 4, 3.0, "leave_one_out")
    assert torch.allclose(a[:4], torch.tensor([1 - 11 / 3, 2 - 10 / 3, 3 - 3.0, 6 - 2.0]).clamp(-3, 3), atol=1e-6)
    assert a[3].item() == pytest.approx(3.0)  # 4.0 clipped to the advantage clip
    # a quiet group keeps its small scale (the group std would blow it up to unit scale)
    assert torch.allclose(a[4:], torch.tensor([-0.4 / 3] * 3 + [0.4]), atol=1e-6)
    assert grouped_advantages(r, 4, 3.0)[4:].abs().max() > 1.0


def test_omega_is_one_over_t_for_log_linear():
    t = torch.tensor([0.02, 0.1, 0.5, 0.98], dtype=torch.float64)
    assert torch.equal(SCHED.omega(t), 1 / t)
    general = -SCHED.dalpha(t) / (1 - SCHED.alpha(t))
    assert torch.allclose(general, 1 / t, rtol=1e-12)


def test_label_smoothed_bce_by_hand():
    s = 0.1
    logits_real, mask_real = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0]])  # second position unmasked
    logits_fake, mask_fake = torch.tensor([[-1.0, 5.0]]), torch.tensor([[1.0, 0.0]])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    real = -((1 - s) * math.log(0.5) + s * math.log(0.5))
    fake = -(s * math.log(sig(-1.0)) + (1 - s) * math.log(1 - sig(-1.0)))
    got = smoothed_bce(logits_real, mask_real, logits_fake, mask_fake, s).item()
    assert got == pytest.approx(0.5 * (real + fake), rel=1e-6)


def test_tau_distributions_and_their_densities():
    g = torch.Generator().manual_seed(0)
    tau, pi = sample_tau(200_000, "beta22", (0.0, 1.0), g, "cpu")
    assert tau.mean().item() == pytest.approx(0.5, abs=0.003)
    assert tau.var().item() == pytest.approx(1 / 20, abs=0.001)  # Beta(2, 2) variance
    assert torch.allclose(pi, 6 * tau * (1 - tau), atol=1e-6)
    tau, pi = sample_tau(10_000, "uniform", (0.02, 0.98), g, "cpu")
    assert tau.min() >= 0.02 and tau.max() <= 0.98 and torch.equal(pi, torch.ones_like(pi))
    assert tau.var().item() == pytest.approx(1 / 12, rel=0.05)


def test_divergences():
    lp_t = torch.log_softmax(torch.randn(5, 7), -1)
    lp_s = torch.log_softmax(torch.randn(5, 7), -1)
    fwd = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=lp_t),
                                            torch.distributions.Categorical(logits=lp_s))
    rev = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=lp_s),
                                            torch.distributions.Categorical(logits=lp_t))
    assert torch.allclose(divergence(lp_s, lp_t, "forward_kl", 0.5), fwd, atol=1e-6)
    assert torch.allclose(divergence(lp_s, lp_t, "jeffrey", 0.0), fwd, atol=1e-6)
    assert torch.allclose(divergence(lp_s, lp_t, "jeffrey", 1.0), rev, atol=1e-6)
    assert torch.allclose(divergence(lp_s, lp_t, "jeffrey", 0.5), 0.5 * (fwd + rev), atol=1e-6)


# ---------------------------------------------------------------------------------------------- the real network
def tiny_cfg(**distill):
    cfg = default_cfg()
    cfg["distill"] = {**cfg["distill"], "iterations": 4, "batch_size": 2, "group_size": 2, "warmup_steps": 2,
                      "log_every": 1, "checkpoint_every": 2, "discriminator_trainable_blocks": 1, **distill}
    return cfg


def test_student_ema_and_discriminator_start_from_the_teacher():
    teacher = tiny_teacher()
    cfg = tiny_cfg()
    state = build_state(teacher, cfg["distill"], config.variant_method(cfg, "full"), SCHED, 11, 8)
    for name, p in teacher.state_dict().items():
        assert torch.equal(state.student.state_dict()[name], p)
        assert torch.equal(state.student_ema.state_dict()[name], p)
        assert torch.equal(state.discriminator.trunk.state_dict()[name], p)
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("variant", ["full", "baseline"])
def test_resume_gives_the_same_weights(tmp_path, variant):
    """4 iterations straight == 2 iterations, stop, then resume to 4 (dropout on, so its seeding is tested too)."""
    tokens = np.random.default_rng(0).integers(0, 11, size=(32, 8))
    cfg = tiny_cfg()
    method = config.variant_method(cfg, variant)

    def go(iterations, ckpt):
        return run_distillation(tiny_teacher(), tokens, {**cfg["distill"], "iterations": iterations}, method, SCHED,
                                11, seed=3, checkpoint_dir=ckpt, progress=False)

    straight = go(4, tmp_path / "a")
    go(2, tmp_path / "b")
    resumed = go(4, tmp_path / "b")
    assert resumed.iteration == 4
    assert resumed.history["resumed_from_iteration"] == [2] and straight.history["resumed_from_iteration"] == [None]
    for a, b in [(straight.student, resumed.student), (straight.student_ema, resumed.student_ema),
                 (straight.discriminator, resumed.discriminator)]:
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name
    assert straight.history["reward"] == resumed.history["reward"]
    assert straight.history["kl"][-1] > 0  # measured and logged even where kl_coef is 0 (baseline)
    # and the student did move away from the teacher
    assert not torch.equal(straight.student.state_dict()["blocks.1.attn_out.weight"],
                           tiny_teacher().state_dict()["blocks.1.attn_out.weight"])


def test_same_seed_gives_the_same_run_whatever_the_global_rng():
    """The config seed alone fixes the run: the discriminator head's init must not depend on the caller's RNG."""
    tokens = np.random.default_rng(0).integers(0, 11, size=(32, 8))
    cfg = tiny_cfg()
    method = config.variant_method(cfg, "full")

    def go(global_seed):
        teacher = tiny_teacher()
        torch.manual_seed(global_seed)  # whatever state earlier code left the global generator in
        return run_distillation(teacher, tokens, {**cfg["distill"], "iterations": 2}, method, SCHED, 11, seed=3,
                                progress=False)

    a, b = go(1), go(2)
    for x, y in [(a.student, b.student), (a.discriminator, b.discriminator)]:
        for (name, p), q in zip(x.state_dict().items(), y.state_dict().values()):
            assert torch.equal(p, q), name


def test_bf16_switch_is_a_no_op_on_the_cpu():
    """distill.bf16 autocasts on CUDA only: on the CPU (the tested, reproducible path) a run is bit-identical with the
    switch on or absent (CPU bf16 autocast exists, so wrapping it there would change the numbers)."""
    tokens = np.random.default_rng(0).integers(0, 11, size=(32, 8))
    cfg = tiny_cfg()
    method = config.variant_method(cfg, "full")

    def go(**switch):
        return run_distillation(tiny_teacher(), tokens, {**cfg["distill"], "iterations": 2, **switch}, method, SCHED,
                                11, seed=3, progress=False)

    a, b = go(), go(bf16=True)
    for x, y in [(a.student, b.student), (a.discriminator, b.discriminator)]:
        for (name, p), q in zip(x.state_dict().items(), y.state_dict().values()):
            assert torch.equal(p, q), name
    assert a.history["reward"] == b.history["reward"]


def test_distill_command_writes_loadable_outputs(tmp_path):
    from didi.cli import main
    from didi.discriminator import load_discriminator
    from didi.model import load_dit, save_dit

    make_tokenizer(tmp_path / "tok")  # 11 ids -> [MASK] = 11, model vocab 12
    save_dit(tmp_path / "teacher", tiny_teacher())
    np.save(tmp_path / "train.npy", np.random.default_rng(0).integers(0, 11, size=(16, 8)).astype(np.uint16))
    np.save(tmp_path / "pool.npy", np.random.default_rng(1).integers(0, 11, size=(8, 8)).astype(np.uint16))
    cfg = tiny_cfg(iterations=3)
    out = tmp_path / "run"
    rc = main(["distill", "--config-json", json.dumps(cfg), "--teacher", str(tmp_path / "teacher"),
               "--tokens", str(tmp_path / "train.npy"), "--tokenizer", str(tmp_path / "tok"),
               "--variant", "teacher_pos", "--teacher-pool", str(tmp_path / "pool.npy"), "--out-dir", str(out)])
    assert rc == 0
    student, student_cfg = load_dit(out / "student")
    assert student_cfg["distill"]["variant"] == "teacher_pos"
    load_dit(out / "student_raw")
    disc = load_discriminator(out / "discriminator")
    assert disc.config.time_conditioning
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 3 and len(metrics["history"]["d_acc"]) == 3
    assert metrics["iterations_per_s"] > 0 and "provenance" in metrics
    assert (out / "checkpoints" / "step_000000003" / "state.pt").exists()
    assert metrics["resumed_from_iteration"] is None
    assert metrics["seed"] == cfg["seed"] and student_cfg["distill"]["seed"] == cfg["seed"]
    # --seed: another distillation of the same variant (the seed is what it draws with), recorded as such
    other = tmp_path / "run_seed9"
    assert main(["distill", "--config-json", json.dumps(cfg), "--teacher", str(tmp_path / "teacher"),
                 "--tokens", str(tmp_path / "train.npy"), "--tokenizer", str(tmp_path / "tok"), "--variant",
                 "teacher_pos", "--teacher-pool", str(tmp_path / "pool.npy"), "--seed", "9", "--out-dir",
                 str(other)]) == 0
    assert json.loads((other / "metrics.json").read_text())["seed"] == 9
    reseeded, _ = load_dit(other / "student_raw")
    first, _ = load_dit(out / "student_raw")
    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), reseeded.state_dict().values()))


def test_a_checkpoint_of_another_teacher_is_not_resumed(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 11, size=(32, 8))
    cfg = tiny_cfg()
    method = config.variant_method(cfg, "full")

    def go(iterations, ckpt, teacher_seed):
        return run_distillation(tiny_teacher(seed=teacher_seed), tokens, {**cfg["distill"], "iterations": iterations},
                                method, SCHED, 11, seed=3, checkpoint_dir=ckpt, progress=False)

    go(2, tmp_path / "b", teacher_seed=0)
    other = go(4, tmp_path / "b", teacher_seed=1)
    fresh = go(4, tmp_path / "c", teacher_seed=1)
    assert other.history["reward"] == fresh.history["reward"]
    assert torch.equal(other.student.state_dict()["blocks.0.attn_qkv.weight"],
                       fresh.student.state_dict()["blocks.0.attn_qkv.weight"])


def test_benchmark_distill_reports_a_rate_and_leaves_the_teacher_alone():
    from didi.bench import bench_distill

    teacher = tiny_teacher()
    for p in teacher.parameters():
        p.requires_grad_(True)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    tokens = np.random.default_rng(0).integers(0, 11, size=(16, 8)).astype(np.uint16)
    result = bench_distill(teacher, tokens, 11, tiny_cfg(), iterations=2)
    assert result["iterations_per_s"] > 0 and result["iterations"] == 2
    assert all(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_a_groups_draws_do_not_depend_on_how_the_batch_is_split():
    """One generator per global group: rolling out 4 groups at once = rolling out 2 + 2 (as two ranks would)."""
    from didi.distill import group_generators

    student = tiny_teacher(dropout=0.0)
    method = config.variant_method(tiny_cfg(), "full")
    tau = torch.tensor([0.3, 0.3, 0.6, 0.6, 0.2, 0.2, 0.9, 0.9])
    whole = rollout(student, 8, 8, tau, SCHED, 11, method, 1e-3, group_generators(5, 7, range(0, 4), "cpu"),
                    "float64", "cpu")
    halves = [rollout(student, 4, 8, tau[4 * r:4 * r + 4], SCHED, 11, method, 1e-3,
                      group_generators(5, 7, range(2 * r, 2 * r + 2), "cpu"), "float64", "cpu") for r in (0, 1)]
    assert torch.equal(whole["x"], torch.cat([h["x"] for h in halves]))
    torch.testing.assert_close(whole["logp"], torch.cat([h["logp"] for h in halves]), rtol=1e-5, atol=1e-5)
    assert (whole["x"] < 11).all() and len(set(map(tuple, whole["x"].tolist()))) > 1  # not one repeated draw


def _safetensors(path):
    from safetensors.torch import load_file

    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_two_ddp_processes_match_one_process(tmp_path):
    """torchrun (gloo, CPU): 2 processes with one group each vs 1 process with both, same global batch of 2 prompts.
    Dropout 0 in the teacher (so in student and discriminator): dropout masks are drawn per rank, by design."""
    from didi.model import save_dit

    make_tokenizer(tmp_path / "tok")
    save_dit(tmp_path / "teacher", tiny_teacher(dropout=0.0))
    np.save(tmp_path / "train.npy", np.random.default_rng(0).integers(0, 11, size=(16, 8)).astype(np.uint16))
    cfg = tiny_cfg(iterations=3, checkpoint_every=2)
    # exercise every draw site: uncoupled times (a second tau and its own corruption), beta tau, KL + entropy terms
    cfg["distill"]["variants"]["ddp"] = {"tau_distribution": "beta22", "importance_weight": True,
                                         "coupled_time": False, "kl_coef": 0.5, "entropy_coef": 0.01,
                                         "advantage_scale": "pooled"}  # pooled: a std over both ranks' groups
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}

    def launch(nproc, out):
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m",
             "didi.cli", "distill", "--config-json", json.dumps(cfg), "--teacher", str(tmp_path / "teacher"),
             "--tokens", str(tmp_path / "train.npy"), "--tokenizer", str(tmp_path / "tok"), "--variant", "ddp",
             "--out-dir", str(out)], env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return proc.stderr

    launch(1, tmp_path / "one")
    log_two = launch(2, tmp_path / "two")
    assert "weights identical on all 2 ranks" in log_two  # all-gathered sums of student, EMA and discriminator
    for kind in ("student", "student_raw", "discriminator"):
        one, two = _safetensors(tmp_path / "one" / kind), _safetensors(tmp_path / "two" / kind)
        assert one.keys() == two.keys() and one
        for k in one:
            torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-5, msg=f"{kind}/{k}")
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    for key, curve in one["history"].items():  # global statistics, not rank 0's
        # the policy-gradient losses are means of w A log p terms of size ~10 that cancel to ~0.01: float32 sums
        # in another order differ by ~1e-5 there
        atol = 1e-4 if key in ("pg_loss", "student_loss") else 1e-6
        np.testing.assert_allclose(two["history"][key], curve, rtol=1e-4, atol=atol, err_msg=key)
    # the student moved (the comparison is not between two copies of the teacher)
    teacher = _safetensors(tmp_path / "teacher")
    assert any(not torch.allclose(v, teacher[k]) for k, v in _safetensors(tmp_path / "two" / "student_raw").items()
               if k in teacher)
    # rank 0 alone wrote, and logged each event once
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert log_two.count("distill 3/3") == 1 and log_two.count("variant ddp") == 1


def test_distillation_logs_every_iteration_to_wandb(monkeypatch, tmp_path):
    """wandb.mode not disabled: runtime.start_wandb opens a run and each iteration logs the history's statistics."""
    import types

    from didi import runtime

    logged, opened = [], []
    run = types.SimpleNamespace(log=lambda values, step: logged.append((step, values)), finish=lambda: None)
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: opened.append(kw) or run))
    cfg = tiny_cfg()
    assert runtime.start_wandb({**cfg, "wandb": {"mode": "disabled"}}, tmp_path, "distill") is None and not opened
    wandb_run = runtime.start_wandb({**cfg, "wandb": {"mode": "offline", "project": "p"}}, tmp_path, "distill-full")
    assert opened[0]["mode"] == "offline" and opened[0]["job_type"] == "distill-full"
    tokens = np.random.default_rng(0).integers(0, 11, size=(32, 8))
    state = run_distillation(tiny_teacher(), tokens, cfg["distill"], config.variant_method(cfg, "full"), SCHED, 11,
                             seed=3, progress=False, wandb_run=wandb_run)
    assert [step for step, _ in logged] == [1, 2, 3, 4]
    keys = {"reward", "d_acc", "d_loss", "pg_loss", "kl", "entropy", "grad_norm"}
    assert {f"distill/{k}" for k in keys} <= logged[0][1].keys()
    assert [values["distill/reward"] for _, values in logged] == state.history["reward"]


def test_a_resume_is_logged_and_a_checkpoint_of_other_code_is_not_resumed(tmp_path, monkeypatch, caplog):
    from didi import runtime

    tokens = np.random.default_rng(0).integers(0, 11, size=(32, 8))
    cfg = tiny_cfg()
    method = config.variant_method(cfg, "full")

    def go(iterations, ckpt):
        return run_distillation(tiny_teacher(), tokens, {**cfg["distill"], "iterations": iterations}, method, SCHED,
                                11, seed=3, checkpoint_dir=ckpt, progress=False)

    go(2, tmp_path / "a")
    with caplog.at_level("INFO", logger="didi.runtime"):
        assert go(3, tmp_path / "a").history["resumed_from_iteration"] == [2]
    assert "resumed from checkpoint" in caplog.text and "step_000000002" in caplog.text
    caplog.clear()
    monkeypatch.setattr(runtime, "code_version", lambda *modules: "other code")
    with caplog.at_level("INFO", logger="didi.runtime"):
        again = go(4, tmp_path / "a")
    assert again.history["resumed_from_iteration"] == [None] and len(again.history["reward"]) == 4
    assert "not resuming from checkpoint" in caplog.text and "differs in code" in caplog.text


@pytest.mark.parametrize("single_pass,calls_per_step", [(True, 1), (False, 2)])
def test_rollout_calls_the_student_once_or_twice_per_step(single_pass, calls_per_step):
    student = tiny_teacher(dropout=0.0)
    calls = []
    student.register_forward_hook(lambda module, args, out: calls.append(torch.is_grad_enabled()))
    method = {**config.variant_method(tiny_cfg(), "full"), "on_policy_single_pass": single_pass}
    roll = rollout(student, 4, 8, torch.full((4,), 0.5), SCHED, 11, method, 1e-3, torch.Generator().manual_seed(0),
                   "float64", "cpu")
    assert len(calls) == 2 * calls_per_step and roll["logp"].requires_grad
    # two passes: the draw from a no-grad pass first, then the scored pass with grad
    assert calls == [True, True] if single_pass else calls == [False, True, False, True]


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_the_all_mask_start_runs_once_unless_dropout_makes_rows_differ(dropout, monkeypatch):
    """The rollout's first step sees B identical all-[MASK] rows: without active dropout the student runs on one
    row and log p(x) and its gradient equal those of the batched pass; with dropout every row gets its own mask."""
    student = tiny_teacher(dropout=dropout).train()
    rows_per_call = []
    student.register_forward_hook(lambda module, args, out: rows_per_call.append(args[0].shape[0]))
    method = config.variant_method(tiny_cfg(), "full")
    tau = torch.full((4,), 0.5)

    def logp_and_grad():
        roll = rollout(student, 4, 8, tau, SCHED, 11, method, 1e-3, torch.Generator().manual_seed(0), "float64",
                       "cpu")
        student.zero_grad()
        roll["logp"].sum().backward()
        return roll["logp"].detach(), [p.grad.clone() for p in student.parameters()]

    torch.manual_seed(0)
    shared_logp, shared_grad = logp_and_grad()
    assert rows_per_call == ([1, 4] if dropout == 0 else [4, 4])
    if dropout == 0:
        monkeypatch.setattr(objective, "deterministic", lambda model: False)  # the batched pass, for reference
        full_logp, full_grad = logp_and_grad()
        assert rows_per_call[2:] == [4, 4]
        torch.testing.assert_close(shared_logp, full_logp)
        for a, b in zip(shared_grad, full_grad):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_tau_per_group_shares_one_noise_level_per_group_and_per_row_does_not():
    gens = [torch.Generator().manual_seed(i) for i in range(3)]  # one per group, as the loop passes them
    method = {"tau_distribution": "beta22", "tau_per_group": True}
    tau, pi = objective.draw_tau(12, method, (0.02, 0.98), gens, "cpu", group_size=4)
    assert torch.equal(tau.view(3, 4), tau.view(3, 4)[:, :1].expand(3, 4))
    assert torch.allclose(pi, 6 * tau * (1 - tau))
    assert len(set(tau.tolist())) == 3
    per_row, _ = objective.draw_tau(12, {**method, "tau_per_group": False}, (0.02, 0.98),
                                    [torch.Generator().manual_seed(i) for i in range(3)], "cpu", group_size=4)
    assert len(set(per_row.tolist())) == 12
    # a group's first draw is the same either way: switching on sharing does not reshuffle the stream
    assert per_row[0] == tau[0] and per_row[4] == tau[4]


def test_stratified_reward_times_cover_the_range_one_per_stratum_shared_within_groups():
    clip, count, G = (0.02, 0.98), 4, 3
    gens = [torch.Generator().manual_seed(i) for i in range(2)]  # one per group, as the loop passes them
    taus = objective.stratified_taus(6, count, clip, gens, "cpu", G)
    assert len(taus) == count and all(t.shape == (6,) for t in taus)
    width = (clip[1] - clip[0]) / count
    for k, t in enumerate(taus):
        assert torch.equal(t.view(2, G), t.view(2, G)[:, :1].expand(2, G))  # one level per group
        assert ((t >= clip[0] + k * width - 1e-6) & (t <= clip[0] + (k + 1) * width + 1e-6)).all()
    assert taus[0][0] != taus[0][G]  # the groups draw their own levels
    # a group's levels come from its own generator: the same whichever groups share the batch
    alone = objective.stratified_taus(3, count, clip, [torch.Generator().manual_seed(1)], "cpu", G)
    assert all(torch.equal(a, t[G:]) for a, t in zip(alone, taus))


def test_rewards_read_each_corruption_at_its_own_noise_level():
    class SigmaLogit(nn.Module):  # every logit = the noise level it is given
        def forward(self, z, sigma):
            return sigma[:, None].expand(z.shape).float()

    z = torch.tensor([[11, 3, 11, 5]])
    method = {"discriminator_positions": "masked", "discriminator_level": "token"}
    t1, t2 = torch.tensor([0.2]), torch.tensor([0.7])
    both = objective.rewards(SigmaLogit(), [z, z], [t1, t2], SCHED, 11, 8.0, method)
    expected = 0.5 * (SCHED.sigma(t1) + SCHED.sigma(t2))
    assert both.item() == pytest.approx(expected.item())
    one = objective.rewards(SigmaLogit(), [z, z], t1, SCHED, 11, 8.0, method)  # one tau: every corruption at it
    assert one.item() == pytest.approx(SCHED.sigma(t1).item())


def test_stratified_reward_times_reach_the_discriminator_in_a_distill_step(monkeypatch):
    """reward_times stratified: the reward reads reward_corruptions fresh corruptions, one per stratum of tau_clip;
    rollout (the default): every corruption at the rollout's tau."""
    seen = {}
    original = objective.rewards

    def spy(D, z_fakes, tau, *args):
        seen["taus"] = tau
        return original(D, z_fakes, tau, *args)

    monkeypatch.setattr(objective, "rewards", spy)
    positives = torch.as_tensor(np.random.default_rng(0).integers(0, 11, size=(2, 8)))
    for times in ("rollout", "stratified"):
        cfg = tiny_cfg(reward_corruptions=3, reward_times=times)
        state = build_state(tiny_teacher(dropout=0.0), cfg["distill"], config.variant_method(cfg, "full"), SCHED,
                            11, 8)
        distill_step(state, positives, torch.Generator().manual_seed(0))
        if times == "rollout":
            assert isinstance(seen["taus"], torch.Tensor)
        else:
            lo, hi = cfg["distill"]["tau_clip"]
            width = (hi - lo) / 3
            assert len(seen["taus"]) == 3
            for k, t in enumerate(seen["taus"]):
                assert lo + k * width - 1e-6 <= float(t.min()) <= float(t.max()) <= lo + (k + 1) * width + 1e-6


def test_shuffled_advantages_are_a_seeded_permutation():
    adv = torch.arange(16, dtype=torch.float32)
    a = objective.shuffled(adv, torch.Generator().manual_seed(0))
    b = objective.shuffled(adv, [torch.Generator().manual_seed(0), torch.Generator().manual_seed(5)])
    assert torch.equal(a, b) and not torch.equal(a, adv)
    assert torch.equal(a.sort().values, adv)


# ---------------------------------------------------------------------------------------------- PPO's reuse
@pytest.mark.parametrize("decomposition,finish", [(True, True), (True, False), (False, True), (False, False)])
def test_token_log_probs_sum_to_the_rollouts_log_p(decomposition, finish):
    """Each revealed position's log-probability under the state that revealed it: the rows sum to ell_1 + ell_2
    (or the one-shot ell), also when [MASK] survives to t0."""
    method = {"score_decomposition": decomposition, "finish_at_alpha_one": finish, "on_policy_single_pass": True}
    student = tiny_teacher(dropout=0.0)
    roll = rollout(student, 6, 8, torch.full((6,), 0.4), SCHED, 11, method, 0.3, torch.Generator().manual_seed(2),
                   "float64", "cpu")
    per_token = objective.token_log_probs(roll["states"], roll["x"], 11)
    assert torch.allclose(per_token.sum(-1), roll["logp"], atol=1e-5)
    assert (per_token[roll["x"] == 11] == 0).all() and (per_token <= 0).all()


def test_clipped_surrogate_by_hand():
    """r = 1.5, 0.9, 0.5 with epsilon 0.2: for A > 0 the gradient in log p is r A where r A is the minimum (0.9,
    0.5) and 0 where the clip binds (1.5 -> 1.2); for A < 0 the clip binds at 0.5 (-0.8 < -0.5) instead."""
    old = torch.log(torch.tensor([[0.2, 0.3, 0.4, 1.0], [0.2, 0.3, 0.4, 1.0]]))
    old[:, 3] = 0.0  # a position no step revealed
    ratio = torch.tensor([1.5, 0.9, 0.5, 1.0])
    new = (old + ratio.log()).requires_grad_(True)
    advantage, weight = torch.tensor([1.0, -1.0]), torch.tensor([1.0, 1.0])
    loss, clipped = objective.clipped_policy_gradient_loss(weight, advantage, new, old, 0.2)
    (grad,) = torch.autograd.grad(loss, new)
    # loss = -mean over the 2 rows: d loss / d new = -(1/2) x d surrogate / d new
    assert torch.allclose(-2 * grad[0, :3], torch.tensor([0.0, 0.9, 0.5]))
    assert torch.allclose(-2 * grad[1, :3], torch.tensor([-1.5, -0.9, 0.0]))
    assert loss.item() == pytest.approx(-((1.2 + 0.9 + 0.5 + 1.0) + (-1.5 - 0.9 - 0.8 - 1.0)) / 2)
    assert clipped.item() == pytest.approx(4 / 6)  # 1.5 and 0.5 in both rows, of 6 revealed tokens


def test_at_ratio_one_the_clipped_surrogate_has_the_policy_gradient():
    """Read again by the unchanged student, the rollout's states give the same log-probabilities, and the clipped
    surrogate's gradient is the plain policy gradient's: the first of several updates is the paper's."""
    student = tiny_teacher(dropout=0.0)
    method = {**config.variant_method(tiny_cfg(), "full")}
    roll = rollout(student, 6, 8, torch.full((6,), 0.5), SCHED, 11, method, 1e-3, torch.Generator().manual_seed(3),
                   "float64", "cpu")
    states = objective.rescored_states(student, roll["states"], SCHED, 11)
    for (_, _, a), (_, _, b) in zip(roll["states"], states):
        assert torch.allclose(a, b, atol=1e-6)
    weight, advantage = torch.rand(6, generator=torch.Generator().manual_seed(4)), torch.randn(6)
    params = list(student.parameters())
    plain = torch.autograd.grad(objective.policy_gradient_loss(weight, advantage, roll["logp"]), params)
    token_logp = objective.token_log_probs(states, roll["x"], 11)
    loss, clipped = objective.clipped_policy_gradient_loss(weight, advantage, token_logp, token_logp.detach(), 0.2)
    for g, h in zip(plain, torch.autograd.grad(loss, params)):
        assert torch.allclose(g, h, atol=1e-6)
    assert clipped.item() == 0.0


def test_further_student_epochs_move_the_student_and_leave_the_discriminator_alone():
    """student_epochs 3: the same rollouts, reward and discriminator step as student_epochs 1 (the discriminator
    after the iteration is bit-identical), two more student updates on top (the student moves further from the
    teacher), and the share of clipped ratios logged."""
    cfg = tiny_cfg(warmup_steps=0, student_lr=1e-2)
    positives = torch.as_tensor(np.random.default_rng(0).integers(0, 11, size=(2, 8)))
    runs = {}
    for epochs in (1, 3):
        method = {**config.variant_method(cfg, "full"), "student_epochs": epochs}
        state = build_state(tiny_teacher(dropout=0.0), cfg["distill"], method, SCHED, 11, 8)
        stats = distill_step(state, positives, torch.Generator().manual_seed(0))
        runs[epochs] = (state, stats)
    (one, stats1), (three, stats3) = runs[1], runs[3]
    for a, b in zip(one.discriminator.parameters(), three.discriminator.parameters()):
        assert torch.equal(a, b)
    assert stats1["reward"] == stats3["reward"] and "clip_fraction" not in stats1
    assert 0.0 <= stats3["clip_fraction"] <= 1.0

    def distance(state):
        return sum((p - q).pow(2).sum() for p, q in zip(state.student.parameters(), state.teacher.parameters()))

    assert distance(three) > distance(one) > 0
    # a discriminator warm-up iteration makes no student update: its clipped share is NaN, every curve as long
    cfg = tiny_cfg(iterations=2, discriminator_warmup=1)
    history = run_distillation(tiny_teacher(dropout=0.0), positives.repeat(3, 1), cfg["distill"],
                               {**config.variant_method(cfg, "full"), "student_epochs": 2}, SCHED, 11, seed=0,
                               progress=False).history
    assert np.isnan(history["clip_fraction"][0]) and 0 <= history["clip_fraction"][2] <= 1
    assert len(history["clip_fraction"]) == len(history["reward"]) == 3


@pytest.mark.parametrize("before", [True, False])
def test_reward_comes_from_the_discriminator_before_or_after_its_update(before):
    """reward_before_update: the reward is what the discriminator said before this iteration's step(s);
    otherwise what the updated one says. discriminator_steps: that many updates on the same batch."""
    cfg = tiny_cfg(discriminator_steps=2, discriminator_lr=1e-2, warmup_steps=0)
    method = {**config.variant_method(cfg, "full"), "reward_before_update": before}
    state = build_state(tiny_teacher(dropout=0.0), cfg["distill"], method, SCHED, 11, 8)
    positives = torch.as_tensor(np.random.default_rng(0).integers(0, 11, size=(2, 8)))
    seen = []
    original = objective.rewards

    def spy(D, *args):
        seen.append([p.detach().clone() for p in D.parameters() if p.requires_grad])
        return original(D, *args)

    objective.rewards, steps = spy, []
    try:
        opt_step = state.opt_disc.step

        def counting_step(*a, **k):
            steps.append(1)
            return opt_step(*a, **k)

        state.opt_disc.step = counting_step
        start = [p.detach().clone() for p in state.discriminator.parameters() if p.requires_grad]
        distill_step(state, positives, torch.Generator().manual_seed(0))
    finally:
        objective.rewards = original
    assert len(steps) == 2 and len(seen) == 1
    same_as_start = all(torch.equal(a, b) for a, b in zip(seen[0], start))
    assert same_as_start is before


def test_discriminator_positions_all_trains_and_reads_every_position():
    z = torch.tensor([[11, 3, 11, 5]])
    masked_token = {"discriminator_positions": "masked", "discriminator_level": "token"}
    all_token = {"discriminator_positions": "all", "discriminator_level": "token"}
    assert objective.judged_positions(z, 11, masked_token).tolist() == [[True, False, True, False]]
    assert objective.judged_positions(z, 11, all_token).all()

    class Fixed(nn.Module):  # logits 0, 1, 2, 3 at positions 0..3
        def forward(self, z, sigma):
            return torch.arange(z.shape[1], dtype=torch.float32).expand(z.shape[0], -1)

    tau, sched = torch.tensor([0.5]), SCHED
    masked = objective.rewards(Fixed(), [z], tau, sched, 11, 8.0, masked_token)
    every = objective.rewards(Fixed(), [z], tau, sched, 11, 8.0, all_token)
    assert masked.item() == pytest.approx(1.0) and every.item() == pytest.approx(1.5)
    # several corruptions: the mean of each one's masked mean (here 1.0 and 2.0)
    other = torch.tensor([[3, 11, 5, 11]])
    both = objective.rewards(Fixed(), [z, other], tau, sched, 11, 8.0, masked_token)
    assert both.item() == pytest.approx(1.5)


def test_sequence_level_discriminator_classifies_the_sum_of_its_token_logits():
    """discriminator_level sequence: one logit per sequence = the sum of the judged positions' token logits; the BCE,
    the accuracy and the reward are taken on it (hand-computed on a fixed discriminator)."""
    class Fixed(nn.Module):  # logits 0, 1, 2, 3 at positions 0..3, minus 2 for the second row
        def forward(self, z, sigma):
            return torch.arange(z.shape[1], dtype=torch.float32) - 2.0 * torch.arange(z.shape[0])[:, None]

    z_real = torch.tensor([[11, 3, 11, 5], [1, 2, 3, 4]])   # masked sums: 0 + 2 = 2; (row 2: none masked) 0
    z_fake = torch.tensor([[11, 11, 11, 11], [11, 3, 3, 3]])  # 6; -2
    tau = torch.tensor([0.5, 0.5])
    count = lambda m: m.sum().clamp(min=1)
    method = {"discriminator_positions": "masked", "discriminator_level": "sequence"}
    loss, correct, judged = objective.discriminator_loss(Fixed(), z_real, tau, z_fake, tau, SCHED, 11, 0.0, count,
                                                         method)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([6.0, -2.0])
    expected = 0.5 * (bce(real, torch.ones(2)) + bce(fake, torch.zeros(2)))
    assert loss.item() == pytest.approx(expected.item())
    assert int(judged) == 4 and int(correct) == 2  # real 2 > 0 and fake -2 < 0 are right; 0 and 6 are not
    reward = objective.rewards(Fixed(), [z_fake], tau, SCHED, 11, 8.0, method)
    assert reward.tolist() == pytest.approx([6.0, -2.0])
    every = objective.rewards(Fixed(), [z_fake], tau, SCHED, 11, 8.0, {**method, "discriminator_positions": "all"})
    assert every.tolist() == pytest.approx([6.0, -2.0])
    token = objective.rewards(Fixed(), [z_fake], tau, SCHED, 11, 8.0, {**method, "discriminator_level": "token"})
    assert token.tolist() == pytest.approx([1.5, -2.0])


def test_discriminator_warmup_holds_the_student_still_then_lets_it_move():
    """The first discriminator_warmup iterations update the discriminator alone; then `iterations` student
    iterations follow, the student's learning-rate warm-up counted from its own first iteration."""
    cfg = tiny_cfg(iterations=2, discriminator_warmup=3, warmup_steps=4)
    teacher = tiny_teacher(dropout=0.0)
    positives = torch.as_tensor(np.random.default_rng(0).integers(0, 11, size=(16, 8)))
    seen = []

    def snapshot(state):
        return ([p.detach().clone() for p in state.student.parameters()],
                [p.detach().clone() for p in state.student_ema.parameters()],
                [p.detach().clone() for p in state.discriminator.parameters() if p.requires_grad],
                state.opt_student.param_groups[0]["lr"])

    state = build_state(teacher, cfg["distill"], config.variant_method(cfg, "full"), SCHED, 11, 8)
    for it in range(5):
        before = snapshot(state)
        distill_step(state, positives[2 * it: 2 * it + 2], torch.Generator().manual_seed(it))
        after = snapshot(state)
        seen.append((before, after))
    moved = lambda a, b: any(not torch.equal(x, y) for x, y in zip(a, b))
    for it, (before, after) in enumerate(seen):
        assert moved(before[2], after[2])                     # the discriminator trains every iteration
        assert moved(before[0], after[0]) is (it >= 3)        # the student only after the warm-up
        assert moved(before[1], after[1]) is (it >= 3)        # and so does its EMA
    assert seen[3][1][3] == pytest.approx(cfg["distill"]["student_lr"] / 4)  # its warm-up starts at step 0

    # a warm-up iteration computes no reward and no student loss (its cost is the rollout and the discriminator's
    # step): NaN in the history, which the run's summary skips
    calls = {"rewards": 0, "regulariser": 0}

    def counted(name):
        original = getattr(objective, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)
        return wrapper

    with pytest.MonkeyPatch.context() as patch:
        for name in calls:
            patch.setattr(objective, name, counted(name))
        history = run_distillation(teacher, positives, cfg["distill"], config.variant_method(cfg, "full"), SCHED, 11,
                                   seed=0, progress=False).history
    assert calls == {"rewards": 2, "regulariser": 2}
    assert len(history["d_acc"]) == 5 and history["grad_norm"][:3] == [0.0, 0.0, 0.0]
    for key in ("reward", "pg_loss", "kl", "entropy", "student_loss"):
        assert np.isnan(history[key][:3]).all() and np.isfinite(history[key][3:]).all(), key
    assert np.isfinite(history["d_acc"]).all() and np.isfinite(history["d_loss"]).all()
    means = distill_cli.summary(history, last=4)
    assert means["mean_reward"] == pytest.approx(np.mean(history["reward"][3:]))
    assert means["final_kl"] == pytest.approx(np.mean(history["kl"][3:]))
    assert means["final_d_acc"] == pytest.approx(np.mean(history["d_acc"][1:]))


def test_exact_reward_replaces_the_discriminator_and_its_correlation_is_logged():
    """reward_source exact (the study's oracle, study.LikelihoodReward as the reward hook) uses the given true
    log-likelihood; the within-group correlation of the reward with it is logged either way (NaN in a discriminator
    warm-up iteration); without a hook the switch is an error."""
    from didi.study import LikelihoodReward

    tokens = np.random.default_rng(0).integers(0, 11, size=(32, 8))
    cfg = tiny_cfg(iterations=2, discriminator_warmup=1)

    def exact(x):  # a "true likelihood" that prefers small ids
        return -x.float().mean(dim=1)

    for source in ("discriminator", "exact"):
        method = {**config.variant_method(cfg, "full"), "reward_source": source}
        state = run_distillation(tiny_teacher(), tokens, cfg["distill"], method, SCHED, 11, seed=3, progress=False,
                                 reward_hook=LikelihoodReward(exact, method))
        corr = state.history["reward_exact_corr"]
        assert len(corr) == 3 and math.isnan(corr[0]) and all(-1 <= c <= 1 for c in corr[1:])
        if source == "exact":
            assert corr[1:] == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="needs a likelihood"):
        run_distillation(tiny_teacher(), tokens, cfg["distill"], {**method, "reward_source": "exact"}, SCHED, 11,
                         seed=3, progress=False)


def test_within_group_correlation_by_hand():
    a = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 11.0])
    b = torch.tensor([0.0, 1.0, 2.0, 5.0, 5.0, 6.0])
    assert objective.within_group_correlation(a, b, 3).item() == pytest.approx(1.0)
    assert objective.within_group_correlation(a, -b, 3).item() == pytest.approx(-1.0)


def test_linear_decay_sets_each_iterations_rate_and_binds_a_checkpoint_to_the_runs_length(tmp_path):
    """lr_schedule linear_decay: the student's and discriminator's rates follow warmup_lr with the run's length, so
    the length is part of a checkpoint's identity (a constant-rate run may be extended by a resume, a decayed one
    starts afresh)."""
    tokens = np.random.default_rng(0).integers(0, 11, size=(32, 8))
    cfg = tiny_cfg(lr_schedule="linear_decay", iterations=4, warmup_steps=1)
    method = config.variant_method(cfg, "full")
    state = build_state(tiny_teacher(dropout=0.0), cfg["distill"], method, SCHED, 11, 8)
    lrs = []
    for it in range(4):
        distill_step(state, torch.as_tensor(tokens[2 * it: 2 * it + 2]), torch.Generator().manual_seed(it))
        lrs.append((state.opt_student.param_groups[0]["lr"], state.opt_disc.param_groups[0]["lr"]))
    d = cfg["distill"]
    assert lrs == [pytest.approx((d["student_lr"] * f, d["discriminator_lr"] * f)) for f in (1, 1, 2 / 3, 1 / 3)]

    def go(iterations, schedule):
        return run_distillation(tiny_teacher(), tokens, {**d, "iterations": iterations, "lr_schedule": schedule},
                                method, SCHED, 11, seed=3, checkpoint_dir=tmp_path / schedule, progress=False)

    for schedule, resumed_from in (("constant", [2]), ("linear_decay", [None])):
        go(2, schedule)
        assert go(4, schedule).history["resumed_from_iteration"] == resumed_from
