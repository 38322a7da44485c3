"""SDTT (didi/sdtt.py): the 2-teacher-step target by hand, the round schedule, the divergences' directions, the
teacher swap, bit-identical resume, the command's outputs and DDP = one process."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import make_tokenizer
from didi import config, sdtt
from didi.diffusion import LogLinearSchedule

SCHED = LogLinearSchedule(1e-3)
REPO = Path(__file__).resolve().parent.parent
DIFFUSION = {"eps": 1e-3, "t_min": 1e-3, "antithetic": True, "sampling_t_end": 1e-5, "sampling_precision": "float64",
             "cache": True}


def sdtt_cfg(**over):
    cfg = {"min_nfe": 2, "start_nfe": None, "teacher_steps": 2, "steps_per_round": 3, "batch_size": 4, "lr": 1e-3,
           "betas": [0.9, 0.999], "adam_eps": 1e-8, "weight_decay": 0.0, "warmup_steps": 2, "ema": 0.9,
           "ema_warmup": True, "grad_clip": 1.0, "divergence": "kl_bwd", "loss_precision": "float32",
           "time_grid": "fixed", "teacher_on_growth": "raw", "reset_optimizer": False, "teacher_precision": "float64",
           "bf16": True, "student_weights": "ema", "checkpoint_every": 2, "log_every": 1}
    return {**cfg, **over}


def tiny_teacher(seed=0, dropout=0.1):
    from didi.model import DiT, DiTConfig

    torch.manual_seed(seed)
    model = DiT(DiTConfig(12, 8, hidden=16, layers=2, heads=2, cond_dim=8, dropout=dropout))
    with torch.no_grad():  # a "trained" teacher: adaLN and output layer away from their zero init
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def tokens(n=32):
    return np.random.default_rng(0).integers(0, 11, size=(n, 8))


# ---------------------------------------------------------------------------------------------- the target by hand
class CountingTeacher:
    """A fake deterministic teacher over V = 2 real tokens ([MASK] = 2): at position l of a row with m masked
    positions its logits are (c, -c, 0), c = m / 2 + l / 4, so a prediction tells which state it was made in."""

    def __init__(self):
        self.calls = []

    def __call__(self, z, sigma):
        self.calls.append((z.clone(), sigma.clone()))
        m = (z == 2).sum(-1, keepdim=True).double()
        c = m / 2 + torch.arange(z.shape[1], dtype=torch.float64) / 4
        return torch.stack([c, -c, torch.zeros_like(c)], -1).float()


def by_hand(m: torch.Tensor, L: int) -> torch.Tensor:
    """log p(x0 = 0 / 1) = log_softmax(c, -c) for rows with m masked positions (the [MASK] entry is -inf)."""
    c = m[:, None].double() / 2 + torch.arange(L, dtype=torch.float64) / 4
    real = torch.stack([c, -c], -1).log_softmax(-1)
    return torch.cat([real, torch.full_like(real[..., :1], -math.inf)], -1)


def random_states(B=64, L=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (B, L), generator=g)
    return torch.where(torch.rand(B, L, generator=g) < 0.7, 2, x)


def test_two_teacher_steps_target_by_hand():
    """t = 0.5, dt = 0.2 (fixed grid): steps 0.5 -> 0.3 -> 0.1. Each masked position's target is the teacher's
    prediction in the state of the step that revealed it; still-masked positions get the second step's."""
    z = random_states()
    B, L = z.shape
    teacher = CountingTeacher()
    gens = [torch.Generator().manual_seed(i) for i in range(B)]
    target, revealed_at = sdtt.teacher_target(teacher, z, torch.full((B,), 0.5, dtype=torch.float64), 0.2, 2, SCHED,
                                              2, gens, "fixed")
    # two calls, at sigma(0.5) then sigma(0.3), the first on z itself
    assert len(teacher.calls) == 2 and torch.equal(teacher.calls[0][0], z)
    for (_, sigma), t in zip(teacher.calls, (0.5, 0.3)):
        torch.testing.assert_close(sigma, SCHED.sigma(torch.full((B,), t, dtype=torch.float64)).float())
    masked = z == 2
    assert torch.equal(revealed_at == -1, ~masked)
    z1 = teacher.calls[1][0]
    assert torch.equal(z1 != 2, (~masked) | (revealed_at == 0)) and torch.equal(z1[~masked], z[~masked])
    assert {0, 1, 2} <= set(revealed_at[masked].tolist())  # revealed in step 1, step 2, or never
    m0 = masked.sum(-1)
    m1 = m0 - (revealed_at == 0).sum(-1)
    first, second = by_hand(m0, L), by_hand(m1, L)
    expected = torch.where((revealed_at == 0)[..., None], first, second)
    torch.testing.assert_close(target[masked].double(), expected[masked], rtol=0, atol=1e-6)
    # the reveal probability of step 1 is (alpha(0.3) - alpha(0.5)) / (1 - alpha(0.5)) = 0.4
    assert abs((revealed_at == 0).sum() / masked.sum() - 0.4) < 0.08


def test_target_when_one_step_reveals_everything_or_nothing():
    z = random_states(B=8)
    B, L = z.shape
    masked = z == 2
    # t = 0.15 < dt = 0.2: the first step ends at time 0 (alpha 1), every position is revealed by it
    target, revealed_at = sdtt.teacher_target(CountingTeacher(), z, torch.full((B,), 0.15, dtype=torch.float64), 0.2,
                                              2, SCHED, 2, torch.Generator().manual_seed(0), "fixed")
    assert (revealed_at[masked] == 0).all()
    torch.testing.assert_close(target[masked].double(), by_hand(masked.sum(-1), L)[masked], rtol=0, atol=1e-6)
    # dt ~ 0: nothing is revealed, every masked position takes the last step's prediction (made on z again)
    teacher = CountingTeacher()
    target, revealed_at = sdtt.teacher_target(teacher, z, torch.ones(B, dtype=torch.float64), 1e-12, 2, SCHED, 2,
                                              torch.Generator().manual_seed(0), "fixed")
    assert (revealed_at[masked] == 2).all() and torch.equal(teacher.calls[1][0], z)


def test_time_grids():
    t = torch.tensor([0.5, 1.0, 0.05], dtype=torch.float64)
    starts, ends = sdtt.teacher_times(t, 0.1, 2, "fixed", 1e-5)
    torch.testing.assert_close(starts, torch.tensor([[0.5, 1.0, 0.05], [0.4, 0.9, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(ends, torch.tensor([[0.4, 0.9, 0.0], [0.3, 0.8, 0.0]], dtype=torch.float64))
    # the reference's t * space + (1 - t) * (t - 2 dt): at t = 0.5 the steps start at 0.65 and 0.15
    starts, ends = sdtt.teacher_times(t, 0.1, 2, "code", 1e-5)
    torch.testing.assert_close(starts, torch.tensor([[0.65, 1.0, 0.05 + 0.95 * -0.15], [0.15, 0.0, 0.95 * -0.15]],
                                                    dtype=torch.float64).clamp(min=1e-5))
    torch.testing.assert_close(ends, (starts - 0.1).clamp(min=0.0))


# ---------------------------------------------------------------------------------------------- rounds
def test_round_plan_64_to_8_and_1024_to_8():
    rounds = sdtt.round_plan(64, 8, 5, 1e-5)
    assert [(r.teacher_nfe, r.student_nfe) for r in rounds] == [(64, 32), (32, 16), (16, 8)]
    for r in rounds:
        assert r.dt == pytest.approx((1 - 1e-5) / 64 * 2 ** r.index)
        assert (r.start, r.stop) == (5 * r.index, 5 * r.index + 5)
    assert sdtt.swap_steps(rounds) == [5, 10]
    assert [sdtt.round_of(s, rounds).index for s in range(15)] == [0] * 5 + [1] * 5 + [2] * 5
    with pytest.raises(ValueError):
        sdtt.round_of(15, rounds)
    paper = sdtt.round_plan(1024, 8, 10_000, 1e-5)
    assert len(paper) == 7 and [r.student_nfe for r in paper] == [512, 256, 128, 64, 32, 16, 8]
    assert paper[-1].stop == 70_000 and sdtt.swap_steps(paper) == list(range(10_000, 70_000, 10_000))
    assert paper[-1].dt == pytest.approx(64 * paper[0].dt)  # dt doubles every round
    with pytest.raises(ValueError):
        sdtt.round_plan(64, 12, 5, 1e-5)
    cfg = {"sdtt": sdtt_cfg(min_nfe=8, steps_per_round=5), "data": {"seq_len": 64}, "diffusion": DIFFUSION}
    assert [r.student_nfe for r in sdtt.plan_of(cfg)] == [32, 16, 8]


@pytest.mark.parametrize("on_growth", ["raw", "ema"])
def test_the_teacher_is_swapped_at_each_rounds_start_with_dt_doubled(monkeypatch, on_growth):
    seen, at_end = [], {}
    real = sdtt.teacher_target

    def spy(teacher_fn, z, t, dt, *args, **kwargs):
        seen.append(dt)
        return real(teacher_fn, z, t, dt, *args, **kwargs)

    monkeypatch.setattr(sdtt, "teacher_target", spy)
    cfg = sdtt_cfg(teacher_on_growth=on_growth)
    rounds = sdtt.round_plan(8, 2, 3, 1e-5)  # teacher 8 -> student 4, teacher 4 -> student 2

    def end(rnd, state):
        at_end[rnd.index] = {k: v.clone() for k, v in (state.student_ema if on_growth == "ema" else
                                                        state.student).state_dict().items()}

    teacher = tiny_teacher()
    state = sdtt.run_sdtt(teacher, tokens(), cfg, rounds, SCHED, 11, 3, DIFFUSION, progress=False, on_round_end=end)
    assert seen == [rounds[0].dt] * 3 + [rounds[1].dt] * 3 and rounds[1].dt == pytest.approx(2 * rounds[0].dt)
    for k, v in state.teacher.state_dict().items():  # the round-1 student became the teacher
        assert torch.equal(v, at_end[0][k]), k
    assert not torch.equal(state.teacher.state_dict()["blocks.0.attn_qkv.weight"],
                           teacher.state_dict()["blocks.0.attn_qkv.weight"])
    assert state.history["teacher_calls"] == 12 and len(state.history["loss"]) == 6
    # teacher_on_growth ema restarts the EMA (and its decay warm-up) from the swapped weights; raw carries it on
    assert state.ema_updates == (3 if on_growth == "ema" else 6)


# ---------------------------------------------------------------------------------------------- divergences
def test_divergence_directions_by_hand():
    """p_student = (0.5, 0.5), p_teacher = (0.9, 0.1), [MASK] (id 2) at -inf on both sides."""
    def lp(*p):
        return torch.tensor([[math.log(v) for v in p] + [-math.inf]], dtype=torch.float64)

    s, t = lp(0.5, 0.5), lp(0.9, 0.1)
    expect = {"kl_bwd": 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1),     # KL(student || teacher)
              "kl_fwd": 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5),     # KL(teacher || student)
              "tvd": 0.4,
              "mse": (math.log(0.5 / 0.9) ** 2 + math.log(0.5 / 0.1) ** 2) / 3,
              "l1_log": abs(math.log(0.5 / 0.9)) + abs(math.log(0.5 / 0.1))}
    assert expect["kl_bwd"] == pytest.approx(0.5108256) and expect["kl_fwd"] == pytest.approx(0.3680642)
    for kind, value in expect.items():
        assert sdtt.divergence(s, t, kind, 2).item() == pytest.approx(value, rel=1e-9), kind
    # a token the student gives zero mass costs nothing in KL(student || teacher) and infinity in the other
    s0 = lp(1.0, 1e-300).clone()
    s0[0, 1] = -math.inf
    assert sdtt.divergence(s0, t, "kl_bwd", 2).item() == pytest.approx(math.log(1 / 0.9))
    assert sdtt.divergence(s0, t, "kl_fwd", 2).item() == math.inf
    # the gradient of kl_bwd pulls the student's logits towards the teacher
    logits = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    student = logits.index_fill(-1, torch.tensor([2]), -math.inf).log_softmax(-1)
    sdtt.divergence(student, t, "kl_bwd", 2).sum().backward()
    assert logits.grad[0, 0] < 0 < logits.grad[0, 1]


# ---------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("on_growth,reset", [("raw", False), ("ema", True)])
def test_resume_gives_the_same_weights(tmp_path, on_growth, reset):
    """6 steps (2 rounds of 3) straight == 4 steps (past the swap), stop, resume to 6 (dropout on)."""
    cfg = sdtt_cfg(teacher_on_growth=on_growth, reset_optimizer=reset)
    rounds = sdtt.round_plan(8, 2, 3, 1e-5)

    def go(ckpt, stop_at=None):
        return sdtt.run_sdtt(tiny_teacher(), tokens(), cfg, rounds, SCHED, 11, 3, DIFFUSION, checkpoint_dir=ckpt,
                             progress=False, stop_at=stop_at)

    straight = go(tmp_path / "a")
    assert go(tmp_path / "b", stop_at=4).step == 4
    resumed = go(tmp_path / "b")
    assert resumed.history["resumed_from_step"] == 4 and straight.history["resumed_from_step"] is None
    for name in ("student", "student_ema", "teacher"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}/{k}"
    assert straight.history["loss"] == resumed.history["loss"] and straight.ema_updates == resumed.ema_updates
    assert not torch.equal(straight.student.state_dict()["blocks.1.attn_out.weight"],
                           tiny_teacher().state_dict()["blocks.1.attn_out.weight"])


# ---------------------------------------------------------------------------------------------- command + DDP
def _safetensors(path):
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_ddp_two_processes_match_one_and_the_command_republishes_rounds(tmp_path):
    """torchrun (gloo, CPU): 2 processes with 2 rows each vs 1 process with all 4, dropout 0. Then a rerun of the
    finished 1-process run (its round directories deleted, as Snakemake does) resumes and republishes them."""
    from didi.model import load_dit, save_dit

    make_tokenizer(tmp_path / "tok")
    save_dit(tmp_path / "teacher", tiny_teacher(dropout=0.0))
    np.save(tmp_path / "train.npy", tokens(16).astype(np.uint16))
    cfg = {"seed": 3, "diffusion": DIFFUSION, "wandb": {"mode": "disabled", "project": "p"},
           "sdtt": sdtt_cfg(steps_per_round=2, checkpoint_every=1)}
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}

    def args(out):
        return ["distill-sdtt", "--config-json", json.dumps(cfg), "--teacher", str(tmp_path / "teacher"),
                "--tokens", str(tmp_path / "train.npy"), "--tokenizer", str(tmp_path / "tok"), "--out-dir", str(out)]

    def one_process(out):  # in this process (no torchrun start-up)
        from didi.cli import main

        assert main(args(out)) == 0

    one_process(tmp_path / "one")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "didi.cli", *args(tmp_path / "two")], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log_two = proc.stderr
    assert "weights identical on all 2 ranks" in log_two and log_two.count("sdtt 4/4") == 1
    for nfe in (4, 2):
        for kind in ("student", "student_raw"):
            one = _safetensors(tmp_path / "one" / f"nfe{nfe}" / kind)
            two = _safetensors(tmp_path / "two" / f"nfe{nfe}" / kind)
            for k in one:
                # Adam divides float-rounding-level gradient differences by tiny second moments: ~1e-5 after 4
                # steps, against a movement of >1e-3 (checked below); the loss and gradient-norm curves match to 1e-6
                torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=3e-5, msg=f"nfe{nfe}/{kind}/{k}")
        _, meta = load_dit(tmp_path / "one" / f"nfe{nfe}" / "student")
        assert meta["sdtt"]["nfe"] == nfe and meta["sdtt"]["weights"] == "ema"
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2 and "provenance" in one
    assert one["student_nfes"] == [4, 2] and one["teacher_forward_calls"] == 8 and one["steps"] == 4
    assert [r["student_nfe"] for r in one["rounds"]] == [4, 2] and len(one["rounds"][1]["loss_curve"]) == 2
    for key in ("loss", "masked_fraction", "revealed_fraction", "grad_norm"):
        np.testing.assert_allclose(two["history"][key], one["history"][key], rtol=1e-4, atol=1e-6, err_msg=key)
    # the students moved away from the teacher, differently in each round
    r1, r2 = _safetensors(tmp_path / "one" / "nfe4" / "student_raw"), _safetensors(tmp_path / "one" / "nfe2" /
                                                                                   "student_raw")
    teacher = _safetensors(tmp_path / "teacher")
    assert (r1["blocks.0.attn_qkv.weight"] - teacher["blocks.0.attn_qkv.weight"]).abs().max() > 1e-3
    assert not torch.equal(r1["blocks.0.attn_qkv.weight"], r2["blocks.0.attn_qkv.weight"])
    # rerun after the round directories were deleted: resumed at the end, both republished unchanged
    import shutil

    for nfe in (4, 2):
        shutil.rmtree(tmp_path / "one" / f"nfe{nfe}")
    one_process(tmp_path / "one")
    again = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert again["resumed_from_step"] == 4 and again["steps_this_run"] == 0
    assert torch.equal(_safetensors(tmp_path / "one" / "nfe4" / "student_raw")["blocks.0.attn_qkv.weight"],
                       r1["blocks.0.attn_qkv.weight"])


# ---------------------------------------------------------------------------------------------- config
def test_schema_accepts_the_sdtt_section_and_the_paper_preset_holds_the_reference_settings():
    config.validate({"sdtt": sdtt_cfg()}, partial=True)
    with pytest.raises(config.ConfigError, match="sdtt"):
        config.validate({"sdtt": sdtt_cfg(divergence="kl")}, partial=True)
    paper = yaml.safe_load((REPO / "presets" / "paper.yaml").read_text())["sdtt"]
    config.validate({"sdtt": paper}, partial=True)  # complete on its own (config.yaml may not have the section)
    assert (paper["steps_per_round"], paper["batch_size"], paper["lr"], paper["warmup_steps"], paper["ema"]) == \
        (10_000, 128, 3e-4, 2500, 0.9999)
    assert (paper["min_nfe"], paper["divergence"], paper["teacher_on_growth"], paper["reset_optimizer"]) == \
        (8, "kl_bwd", "raw", False)
    rounds = sdtt.plan_of({"sdtt": paper, "data": {"seq_len": 1024}, "diffusion": DIFFUSION})
    assert len(rounds) == 7 and rounds[-1].stop == 70_000
