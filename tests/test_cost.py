"""The cost bench (didi/cost.py, `didi bench` section distill_cost): segmented runs are one run bit for bit, the
forward-equivalent counts by hand and against what an iteration really runs, the first-reach logic by hand, and
the section end to end on a tiny teacher, tokenizer and judge built here."""

import json

import numpy as np
import pytest
import torch

from didi import config, cost, sdtt
from didi.diffusion import LogLinearSchedule
from didi.distill import build_state, distill_step, run_distillation
from conftest import tiny_teacher

SCHED = LogLinearSchedule(1e-3)
DIFFUSION = {"eps": 1e-3, "t_min": 1e-3, "antithetic": True, "sampling_t_end": 1e-5, "sampling_precision": "float64",
             "cache": True}


def tokens(n=32, vocab=11, seq_len=8):
    return np.random.default_rng(0).integers(0, vocab, size=(n, seq_len))


def distill_cfg(**over):
    cfg = config.load()
    return {**cfg["distill"], "iterations": 4, "batch_size": 2, "group_size": 2, "warmup_steps": 2, "log_every": 1,
            "checkpoint_every": 2, "discriminator_trainable_blocks": 1, **over}


def full_method(**over):
    return {**config.variant_method(config.load(), "full"), **over}


def sdtt_cfg(**over):
    return {**config.load()["sdtt"], "min_nfe": 2, "steps_per_round": 3, "batch_size": 4, "lr": 1e-3,
            "warmup_steps": 2, "ema": 0.9, "checkpoint_every": 2, "log_every": 1, **over}


def assert_same_weights(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name


# ---------------------------------------------------------------------------------------------- network calls
def test_forward_equivalents_of_the_default_config_by_hand():
    """config.yaml: B = 4 prompts x G = 4 = R = 16 rows, 1 discriminator step, 8 reward corruptions, dropout 0.
    Student: the all-[MASK] start as 1 row + its second step on 16 = 17 rows forward, 34 backward; teacher on the
    same 17; discriminator 2 x 16 forward + 2 x 32 backward = 96; reward 8 x 16 = 128: 292 per iteration."""
    cfg = config.load()
    counts = cost.didi_forward_equivalents(cfg["distill"], config.variant_method(cfg, "full"), 0.0)
    assert counts["student"] == {"student_forward": 17, "student_backward": 34, "teacher_forward": 17,
                                 "discriminator_forward": 32, "discriminator_backward": 64, "reward_forward": 128,
                                 "total": 292}
    assert counts["warmup"]["total"] == 17 + 96  # the rollout without gradient, the discriminator's step
    assert cost.didi_cumulative(counts, 3, 10) == 3 * 113 + 10 * 292
    # the one-shot baseline: only the start step (1 row), the teacher there alone: 1 + 2 + 1 + 96 + 128
    assert cost.didi_forward_equivalents(cfg["distill"], config.variant_method(cfg, "baseline"),
                                         0.0)["student"]["total"] == 228
    # dropout: every row of the start gets its own pass: 32 rows forward, 64 backward, teacher still 1 + 16
    assert cost.didi_forward_equivalents(cfg["distill"], config.variant_method(cfg, "full"),
                                         0.1)["student"]["total"] == 32 + 64 + 17 + 96 + 128
    # student_epochs 3: two more reads of the 17 rows (forward, backward) and of the teacher: 3 x (17 + 34 + 17)
    assert cost.didi_forward_equivalents(cfg["distill"], {**config.variant_method(cfg, "full"), "student_epochs": 3},
                                         0.0)["student"]["total"] == 3 * 68 + 96 + 128
    # SDTT: 16 rows x (2 teacher steps + 1 student forward + 2 for its backward)
    assert cost.sdtt_forward_equivalents(cfg["sdtt"]) == {"teacher_forward": 32, "student_forward": 16,
                                                          "student_backward": 32, "total": 80}


class RowCounter:
    """Forward hooks on a module: rows per call, and rows of the calls made with gradient (those a backward pass
    goes through)."""

    def __init__(self, module):
        self.rows = self.grad_rows = 0
        module.register_forward_hook(self.hook)

    def hook(self, module, args, out):
        self.rows += args[0].shape[0]
        self.grad_rows += args[0].shape[0] if torch.is_grad_enabled() and out.requires_grad else 0


@pytest.mark.parametrize("variant,dropout,over,method_over", [
    ("full", 0.0, {}, {}),
    ("full", 0.1, {}, {}),
    ("baseline", 0.0, {}, {}),
    ("full", 0.0, {"discriminator_steps": 2, "reward_corruptions": 3}, {"on_policy_single_pass": False}),
    ("full", 0.0, {"discriminator_warmup": 1}, {}),  # the first iteration is a warm-up one
    ("full", 0.0, {}, {"student_epochs": 3}),
    ("full", 0.1, {}, {"student_epochs": 2}),
])
def test_didi_counts_are_what_an_iteration_runs(variant, dropout, over, method_over):
    cfg = distill_cfg(**over)
    method = {**config.variant_method(config.load(), variant), **method_over}
    state = build_state(tiny_teacher(dropout=dropout), cfg, method, SCHED, 11, 8)
    student, teacher, disc = RowCounter(state.student), RowCounter(state.teacher), RowCounter(state.discriminator)
    distill_step(state, torch.as_tensor(tokens()[:2]), torch.Generator().manual_seed(0))
    expected = cost.didi_forward_equivalents(cfg, method, dropout)["warmup" if over.get("discriminator_warmup")
                                                                   else "student"]
    assert student.rows == expected["student_forward"]
    assert 2 * student.grad_rows == expected["student_backward"]
    assert teacher.rows == expected["teacher_forward"] and teacher.grad_rows == 0
    assert disc.rows == expected["discriminator_forward"] + expected["reward_forward"]
    assert 2 * disc.grad_rows == expected["discriminator_backward"]


def test_sdtt_counts_are_what_a_step_runs():
    cfg = sdtt_cfg()
    rounds = sdtt.round_plan(8, 2, 3, 1e-5)
    state = sdtt.build_state(tiny_teacher(), cfg, rounds, SCHED, 11, 1e-3, True, 1e-5)
    student, teacher = RowCounter(state.student), RowCounter(state.teacher)
    x = torch.as_tensor(tokens()[:4])
    gens = [torch.Generator().manual_seed(i) for i in range(4)]
    sdtt.sdtt_step(state, x, torch.full((4,), 0.6, dtype=torch.float64), gens)
    expected = cost.sdtt_forward_equivalents(cfg)
    assert teacher.rows == expected["teacher_forward"] == 2 * 4 and teacher.grad_rows == 0
    assert student.rows == expected["student_forward"] and 2 * student.grad_rows == expected["student_backward"]


# ---------------------------------------------------------------------------------------------- first reach
def points(*ppl, seconds=10.0, calls=100):
    return [{"step": 5 * i, "train_seconds": seconds * i, "forward_equivalents": calls * i, "gen_ppl": p}
            for i, p in enumerate(ppl)]


def test_first_reach_by_hand():
    curve = points(90.0, 70.0, 50.0, 60.0, 40.0)
    assert cost.first_reach(curve, 50.0) == {"reached": True, **curve[2]}  # at or below: 50 <= 50
    assert cost.first_reach(curve, 65.0)["step"] == 10
    assert cost.first_reach(curve, 100.0)["step"] == 0  # before training (the teacher itself)
    missed = cost.first_reach(curve, 30.0)
    assert missed == {"reached": False, "best": curve[4]}
    assert cost.first_reach(points(80.0, 60.0, 60.0), 10.0)["best"]["step"] == 5  # the first of equal bests
    with pytest.raises(ValueError):
        cost.first_reach([], 1.0)


def test_reach_table_ratio_only_where_both_reach_after_training():
    didi = points(90.0, 70.0, 50.0, seconds=10.0, calls=300)   # reaches 70 at step 5: 10 s, 300 calls
    sdtt_curve = points(90.0, 80.0, 75.0, 70.0, 65.0, seconds=4.0, calls=80)  # 70 at step 15: 12 s, 240 calls
    targets = [{"name": "teacher@64", "gen_ppl": 40.0}, {"name": "teacher@32", "gen_ppl": 70.0},
               {"name": "loose", "gen_ppl": 95.0}]
    rows = cost.reach_table({"didi": didi, "sdtt": sdtt_curve}, targets)
    assert [r["target"] for r in rows] == ["teacher@64", "teacher@32", "loose"]
    assert not rows[0]["didi"]["reached"] and rows[0]["didi"]["best"]["gen_ppl"] == 50.0
    assert rows[0]["ratio_train_seconds"] is None and rows[0]["ratio_forward_equivalents"] is None
    assert rows[1]["didi"]["step"] == 5 and rows[1]["sdtt"]["step"] == 15
    assert rows[1]["ratio_train_seconds"] == pytest.approx(12.0 / 10.0)
    assert rows[1]["ratio_forward_equivalents"] == pytest.approx(240 / 300)
    assert rows[1]["ratio_bound"] is None and rows[2]["ratio_bound"] is None  # both reach it (loose: at step 0)
    # teacher@64: neither reaches it. A target only DiDi-Instruct reaches (50 at step 10: 20 s, 600 calls) bounds
    # the ratio from below by SDTT's whole budget (step 20: 16 s, 320 calls); one only SDTT reaches (its 65 at
    # step 20), from above by DiDi-Instruct's whole budget (20 s, 600 calls)
    only_didi, only_sdtt = cost.reach_table({"didi": didi, "sdtt": sdtt_curve}, [
        {"name": "a", "gen_ppl": 50.0}, {"name": "b", "gen_ppl": 65.0}])
    assert only_didi["ratio_bound"] == {"side": "above", "train_seconds": pytest.approx(16 / 20),
                                        "forward_equivalents": pytest.approx(320 / 600)}
    assert only_sdtt["ratio_bound"] is None  # DiDi-Instruct reaches 65 too (its 50 at step 10)
    slow = points(90.0, 88.0, 86.0, seconds=10.0, calls=300)
    (row,) = cost.reach_table({"didi": slow, "sdtt": sdtt_curve}, [{"name": "b", "gen_ppl": 65.0}])
    assert row["ratio_bound"] == {"side": "below", "train_seconds": pytest.approx(16 / 20),
                                  "forward_equivalents": pytest.approx(320 / 600)}
    assert rows[0]["ratio_bound"] is None
    assert rows[2]["didi"]["step"] == 0 and rows[2]["ratio_train_seconds"] is None  # reached before training


def test_segment_stops():
    assert cost.segment_stops(10, 4) == [4, 8, 10]
    assert cost.segment_stops(8, 4) == [4, 8]
    assert cost.segment_stops(3, 5) == [3]
    assert cost.default_every(1500) == 94 and cost.default_every(6) == 1
    with pytest.raises(ValueError):
        cost.segment_stops(0, 1)
    rounds = sdtt.round_plan(64, 8, 800, 1e-5)
    assert cost.sdtt_budget(rounds, 16) == 1600 and cost.sdtt_budget(rounds, 12) == 2400


# ---------------------------------------------------------------------------------------------- segments = one run
def test_didi_segments_are_one_uninterrupted_run(tmp_path):
    """5 student iterations after 1 discriminator warm-up one, in segments of 2 (2, 4, 5), == one run of 5
    (dropout on: its per-iteration seeding crosses the resumes too)."""
    cfg, method = distill_cfg(iterations=5, discriminator_warmup=1), full_method()
    straight = run_distillation(tiny_teacher(), tokens(), cfg, method, SCHED, 11, seed=3, progress=False)
    seen = []
    for state, seconds in cost.didi_segments(tiny_teacher(), tokens(), cfg, method, SCHED, 11, 3, "cpu", 5, 2,
                                             tmp_path / "work", progress=False):
        seen.append((state.iteration, seconds))
    assert [it for it, _ in seen] == [3, 5, 6]  # warm-up + 2, 4, 5
    assert all(b > a > 0 for (_, a), (_, b) in zip(seen, seen[1:]))
    for a, b in [(straight.student, state.student), (straight.student_ema, state.student_ema),
                 (straight.discriminator, state.discriminator)]:
        assert_same_weights(a, b)
    for key in ("reward", "d_loss", "student_loss"):  # the warm-up iteration's NaN compare equal here
        np.testing.assert_array_equal(straight.history[key], state.history[key])


def test_didi_segments_refuse_a_decaying_rate(tmp_path):
    with pytest.raises(ValueError, match="lr_schedule"):
        next(cost.didi_segments(tiny_teacher(), tokens(), distill_cfg(lr_schedule="linear_decay"), full_method(),
                                SCHED, 11, 3, "cpu", 4, 2, tmp_path, progress=False))


def test_a_segment_that_does_not_resume_is_an_error(tmp_path, monkeypatch):
    """A resume that silently starts over (another code hash mid-run) would count the whole run again."""
    from didi import runtime

    segments = cost.didi_segments(tiny_teacher(), tokens(), distill_cfg(), full_method(), SCHED, 11, 3, "cpu", 4, 2,
                                  tmp_path, progress=False)
    next(segments)
    monkeypatch.setattr(runtime, "code_version", lambda *modules: "edited")
    with pytest.raises(RuntimeError, match="not one run"):
        next(segments)


@pytest.mark.parametrize("on_growth", ["raw", "ema"])
def test_sdtt_segments_are_one_uninterrupted_run(tmp_path, on_growth):
    """5 steps of a 2-round plan (3 steps each: the teacher swap at step 3) in segments of 2 (2, 4, 5) == one run
    stopped at 5."""
    cfg = sdtt_cfg(teacher_on_growth=on_growth)
    rounds = sdtt.round_plan(8, 2, 3, 1e-5)
    straight = sdtt.run_sdtt(tiny_teacher(), tokens(), cfg, rounds, SCHED, 11, 3, DIFFUSION, progress=False,
                             stop_at=5)
    seen = []
    for state, seconds in cost.sdtt_segments(tiny_teacher(), tokens(), cfg, rounds, SCHED, 11, 3, DIFFUSION, "cpu",
                                             5, 2, tmp_path / "work", progress=False):
        seen.append((state.step, seconds))
    assert [s for s, _ in seen] == [2, 4, 5]
    assert all(b > a > 0 for (_, a), (_, b) in zip(seen, seen[1:]))
    for name in ("student", "student_ema", "teacher"):
        assert_same_weights(getattr(straight, name), getattr(state, name))
    assert straight.history["loss"] == state.history["loss"] and straight.ema_updates == state.ema_updates
    with pytest.raises(ValueError, match="round plan has 6"):
        next(cost.sdtt_segments(tiny_teacher(), tokens(), cfg, rounds, SCHED, 11, 3, DIFFUSION, "cpu", 7, 2,
                                tmp_path / "w", progress=False))


# ---------------------------------------------------------------------------------------------- end to end
WORDS = [f"w{i}" for i in range(9)]
TINY_YAML = """\
data: {seq_len: 8}
model: {hidden: 16, layers: 1, heads: 2, cond_dim: 8, mlp_ratio: 2, dropout: 0.0}
teacher: {batch_size: 4}
sampling: {nfe: [2, 8], batch_size: 4, num_samples: 8, temperature_nfe: 2}
evaluation: {batch_size: 8, bootstrap: 20}
distill: {nfe: [2, 4], iterations: 4, teacher_pool_nfe: 8, batch_size: 2, group_size: 2, warmup_steps: 1,
          discriminator_trainable_blocks: 1, seeds: [9, 10]}
sdtt: {min_nfe: 2, steps_per_round: 2, batch_size: 4, warmup_steps: 1}
"""


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    """tokenizer (EOS = BOS 0, [PAD] 1, 9 words), tokens/train.npy, teacher/ema (a DiT of 12 ids) and judge/ (a
    random tiny GPT-2 on the same tokenizer, judge.json pointing at it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from didi import data
    from didi.model import save_dit

    root = tmp_path_factory.mktemp("results")
    vocab = {data.EOS_TOKEN: 0, data.PAD_TOKEN: 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=data.PAD_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=data.EOS_TOKEN, eos_token=data.EOS_TOKEN,
                                   pad_token=data.PAD_TOKEN)
    fast.save_pretrained(str(root / "tokenizer"))
    (root / "tokens").mkdir()
    blocks = np.random.default_rng(1).integers(2, 11, size=(64, 8))
    blocks[:, 0] = blocks[:, -1] = 0
    np.save(root / "tokens" / "train.npy", blocks.astype(np.uint16))
    save_dit(root / "teacher" / "ema", tiny_teacher(vocab=12, dropout=0.0), {})
    torch.manual_seed(0)
    judge = GPT2LMHeadModel(GPT2Config(vocab_size=len(fast), n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=0, eos_token_id=0, pad_token_id=1)).eval()
    judge.save_pretrained(root / "judge" / "model")
    fast.save_pretrained(str(root / "judge" / "model"))
    (root / "judge" / "judge.json").write_text(json.dumps({"path": "model", "trained": True, "heldout_ppl": 1.0}))
    return root


def test_distill_cost_section_end_to_end(tiny_results, tmp_path):
    """`didi bench --sections distill_cost` on the tiny results: K = 2, targets the teacher at L = 8, 2K = 4 and 1.5K = 3,
    DiDi-Instruct's 4 iterations and SDTT's 4 steps (its 8 -> 4 -> 2 plan up to the 2-step student) in segments of
    2; every number where it belongs, and the markdown table."""
    from didi import cli

    yaml = tmp_path / "tiny.yaml"
    yaml.write_text(TINY_YAML)
    out = tmp_path / "bench"
    r = tiny_results
    cli.main(["bench", "--configfile", str(config.DEFAULT_CONFIG), "--configfile", str(yaml), "--tokens",
              str(r / "tokens"), "--tokenizer", str(r / "tokenizer"), "--teacher", str(r / "teacher" / "ema"),
              "--judge", str(r / "judge"), "--sections", "distill_cost", "--cost-every", "2", "--cost-samples", "8",
              "--cost-nfe", "2", "--out-dir", str(out)])
    res = json.loads((out / "distill_cost.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "distill_cost.json", "distill_cost.md",
                                                     "distill_cost.md.provenance.json"]  # no checkpoints left
    assert res["nfe"] == 2 and res["num_samples"] == 8 and res["every"] == {"didi": 2, "sdtt": 2}
    assert [t["name"] for t in res["targets"]] == ["teacher@8", "teacher@4", "teacher@3"]
    assert res["didi"]["seed"] == 9 and res["didi"]["iterations"] == 4
    assert [p["step"] for p in res["didi"]["points"]] == [0, 2, 4]
    assert [p["step"] for p in res["sdtt"]["points"]] == [0, 2, 4] and res["sdtt"]["plan_steps"] == 4
    per_iteration = res["didi"]["forward_equivalents_per_iteration"]["student"]["total"]
    assert per_iteration == 5 + 10 + 5 + 24 + 8 * 4  # R = 4: start 1 + 4 rows; disc 8 + 16; reward 8 x 4
    assert [p["forward_equivalents"] for p in res["didi"]["points"]] == [0, 2 * per_iteration, 4 * per_iteration]
    assert [p["forward_equivalents"] for p in res["sdtt"]["points"]] == [0, 2 * 20, 4 * 20]  # 4 x (2 + 1 + 2)
    assert res["didi"]["points"][0] == res["sdtt"]["points"][0]  # both students start as the teacher
    for method in ("didi", "sdtt"):
        seconds = [p["train_seconds"] for p in res[method]["points"]]
        assert seconds[0] == 0 and seconds[1] > 0 and seconds == sorted(seconds)
        for p in res[method]["points"]:
            assert p["gen_ppl_lo"] <= p["gen_ppl"] <= p["gen_ppl_hi"] and p["entropy"] > 0
    assert [row["target"] for row in res["reach"]] == ["teacher@8", "teacher@4", "teacher@3"]
    for row in res["reach"]:
        for method in ("didi", "sdtt"):
            expected = cost.first_reach(res[method]["points"], row["target_gen_ppl"])
            assert row[method] == expected
    text = (out / "distill_cost.md").read_text()
    assert "| teacher@8 |" in text and "SDTT" in text and "forward-equivalents" in text
    # the same samples score the same: the teacher at K = 2 is the step-0 point, sampled with the one seed
    assert res["sample_seed"] == cost.runtime.seed(config.load()["seed"], cost.SAMPLES_STREAM)


def test_markdown_gives_the_ratio_or_says_why_not():
    didi = points(90.0, 70.0, 50.0, seconds=10.0, calls=300)
    sdtt_curve = points(90.0, 80.0, 70.0, seconds=4.0, calls=80)
    for curve in (didi, sdtt_curve):
        for p in curve:
            p.update(gen_ppl_lo=p["gen_ppl"] - 1, gen_ppl_hi=p["gen_ppl"] + 1)
    targets = [{"name": "teacher@64", "gen_ppl": 60.0}, {"name": "teacher@32", "gen_ppl": 70.0},
               {"name": "loose", "gen_ppl": 95.0}]
    result = {"nfe": 16, "num_samples": 8, "every": {"didi": 5, "sdtt": 5}, "unit": cost.UNIT,
              "reach": cost.reach_table({"didi": didi, "sdtt": sdtt_curve}, targets),
              "didi": {"points": didi, "iterations": 10, "seed": 5,
                       "forward_equivalents_per_iteration": {"student": {"total": 60}, "warmup": {"total": 20}}},
              "sdtt": {"points": sdtt_curve, "steps": 10, "plan_steps": 15,
                       "forward_equivalents_per_step": {"total": 16}}}
    text = cost.markdown(result)
    assert "| teacher@64 | 60.00 | SDTT | no (best shown) | 10 | 8 | 160 | 70.00 [69.00, 71.00] |" in text
    assert "| teacher@32 | 70.00 | DiDi-Instruct | yes | 5 | 10 | 300 | 70.00 [69.00, 71.00] |" in text
    assert ("- teacher@64: no ratio: SDTT did not reach it within its budget. SDTT / DiDi-Instruct is above 0.40 "
            "in wall-clock, 0.27 in forward-equivalents (SDTT's whole budget against the other's cost to reach "
            "it).") in text
    assert "- teacher@32: SDTT / DiDi-Instruct = 0.80 in wall-clock, 0.53 in forward-equivalents." in text
    assert "- loose: no ratio: the teacher at K = 16 is already at or below it." in text
    assert "teacher itself at K = 16: gen-PPL 90.00 [89.00, 91.00]" in text
