"""The paper's cost claim, measured: distillation wall-clock and network calls until the student reaches a given
quality, for DiDi-Instruct and SDTT, in one run on one machine (the `distill_cost` section of `didi bench`).

Both distillations run from the results' teacher in segments of E optimiser steps (DiDi-Instruct: student
iterations of the `full` variant at the first distillation seed; SDTT: steps of its round plan). After each segment
the student the sampling rules read (distill.student_weights / sdtt.student_weights) samples n sequences at K steps
(default 16) with the project's ancestral sampler and one fixed seed, and the judge scores them as `didi evaluate`
does (evaluate.measure / measure_exact: gen-PPL, its bootstrap interval, entropy). A segment is a resume of one
run (`run_distillation` / `run_sdtt` from a checkpoint directory): the segmented run is bit for bit the
uninterrupted one (tests/test_cost.py), and evaluation time is not counted.

Costs, cumulative at every evaluated checkpoint:
 - train_seconds: wall-clock of the optimiser steps themselves (checkpoint writes and sampling/scoring excluded):
   DiDi-Instruct's loop time up to its last iteration's log call, SDTT's `round_seconds`.
 - forward_equivalents, in one unit for both methods (UNIT): one forward pass of a DiT-sized network (teacher,
   student or discriminator: the discriminator is the teacher's trunk plus a small head) on one sequence of L
   tokens counts 1, a backward pass through it 2 (the usual 2:1 ratio of backward to forward FLOPs, whatever part
   of the network is frozen). Counted from what one iteration does (`didi_forward_equivalents`,
   `sdtt_forward_equivalents`), so it does not depend on the machine.

Targets: the teacher's gen-PPL at K = L (the paper's reference), at K = 2 x 16 = 32 (what one SDTT round aims
at: its teacher samples with twice the student's steps) and at K = 1.5 x 16 = 24 (a speed-up of 1.5: a target that
a budget too small for the others can still reach), sampled and scored the same way (same n, same seed). For
each method and target: the first checkpoint whose student gen-PPL is at or below the target (its cost), or "not
reached" with the best one; and SDTT / DiDi-Instruct when both reach it (`reach_table`). Checkpoints are E steps
apart, so a first reach is an upper bound within one segment's cost.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from didi import config, data, io, runtime

log = logging.getLogger("didi.cost")

UNIT = ("sequence forward-equivalents: one forward pass of a DiT-sized network (teacher, student or discriminator) "
        "on one sequence of L tokens = 1, a backward pass = 2")
SAMPLES_STREAM = 300  # runtime.seed(config seed, SAMPLES_STREAM): the one sampler seed of every evaluation here
NEVER = 10 ** 12      # a checkpoint cadence that never fires (segment ends still write theirs)
DEFAULT_NFE, DEFAULT_SAMPLES, DEFAULT_POINTS = 16, 128, 16


# ---------------------------------------------------------------------------------------------- network calls
def didi_forward_equivalents(distill_cfg: dict, method: dict, dropout: float) -> dict:
    """Sequence forward-equivalents of one DiDi-Instruct iteration (distill.distill_step), by network and pass:
    {"student": {...}, "warmup": {...}}, each with its parts and "total". dropout: the DiT's (model.dropout).

    R = batch_size x group_size rows. The rollout starts from R identical all-[MASK] rows, which the student runs
    as ONE row unless dropout is active (objective.student_step / diffusion.denoise_rows), then takes its second
    step on R rows (score_decomposition; one-shot: the start step alone). Each step is one pass, or a no-grad draw
    pass plus a scored one (on_policy_single_pass false). The student's backward goes through every step. The
    regulariser runs the teacher on every state the student acted in (the start as one row: the teacher is in eval
    mode). student_epochs > 1: each further student update reads the same states again (one pass, backward) and
    the teacher on them (distill.further_student_updates). Each discriminator step reads R positives and R student samples, forward and backward; the reward reads
    reward_corruptions corruptions of the R samples, forward only. A discriminator warm-up iteration
    (distill.discriminator_warmup) runs the rollout without gradient and the discriminator's steps only."""
    rows = distill_cfg["batch_size"] * distill_cfg["group_size"]
    start = rows if dropout > 0 else 1
    acted = start + (rows if method["score_decomposition"] else 0)  # rows of the states the student acted in
    passes = 1 if method["on_policy_single_pass"] else 2
    disc_forward = distill_cfg["discriminator_steps"] * 2 * rows
    updates = method["student_epochs"]  # each further update reads the states again (one pass) and the teacher
    teacher = 1 + (rows if method["score_decomposition"] else 0)
    student = {"student_forward": (passes + updates - 1) * acted, "student_backward": 2 * updates * acted,
               "teacher_forward": updates * teacher, "discriminator_forward": disc_forward,
        "discriminator_backward": 2 * disc_forward, "reward_forward": distill_cfg["reward_corruptions"] * rows}
    warmup = {"student_forward": passes * acted, "student_backward": 0, "teacher_forward": 0,
              "discriminator_forward": disc_forward, "discriminator_backward": 2 * disc_forward, "reward_forward": 0}
    return {name: {**parts, "total": sum(parts.values())} for name, parts in (("student", student),
                                                                               ("warmup", warmup))}


def didi_cumulative(counts: dict, warmup: int, student_iterations: int) -> int:
    """Forward-equivalents after `warmup` discriminator warm-up iterations and `student_iterations` student ones."""
    return warmup * counts["warmup"]["total"] + student_iterations * counts["student"]["total"]


def sdtt_forward_equivalents(sdtt_cfg: dict) -> dict:
    """Sequence forward-equivalents of one SDTT step (sdtt.sdtt_step) on batch_size rows: teacher_steps teacher
    passes (its target), one student pass and its backward."""
    rows = sdtt_cfg["batch_size"]
    parts = {"teacher_forward": sdtt_cfg["teacher_steps"] * rows, "student_forward": rows,
             "student_backward": 2 * rows}
    return {**parts, "total": sum(parts.values())}


# ---------------------------------------------------------------------------------------------- first reach
def first_reach(points: list[dict], target: float) -> dict:
    """The first point (in training order) whose gen_ppl is at or below `target`: {"reached": True, **point}; else
    {"reached": False, "best": the point of lowest gen_ppl (the first of equals)}."""
    if not points:
        raise ValueError("no checkpoint was evaluated")
    for point in points:
        if point["gen_ppl"] <= target:
            return {"reached": True, **point}
    best = min(points, key=lambda p: p["gen_ppl"])
    return {"reached": False, "best": best}


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


COSTS = ("train_seconds", "forward_equivalents")


def ratio_bound(curves: dict[str, list[dict]], didi: dict, sdtt: dict) -> dict | None:
    """Where only one method reaches a target after some training, the other's whole budget (its last checkpoint)
    bounds SDTT / DiDi-Instruct: SDTT missing means its cost exceeds its budget, so the ratio is above budget /
    DiDi's cost ("above"); DiDi missing puts it below SDTT's cost / DiDi's budget ("below"). None otherwise."""
    if didi["reached"] and not sdtt["reached"] and didi["step"] > 0:
        spent = curves["sdtt"][-1]
        return {"side": "above", **{c: ratio(spent[c], didi[c]) for c in COSTS}}
    if sdtt["reached"] and not didi["reached"] and sdtt["step"] > 0:
        spent = curves["didi"][-1]
        return {"side": "below", **{c: ratio(sdtt[c], spent[c]) for c in COSTS}}
    return None


def reach_table(curves: dict[str, list[dict]], targets: list[dict]) -> list[dict]:
    """Per target: each method's first reach, and SDTT / DiDi-Instruct in wall-clock and forward-equivalents when
    both reach it (None when either does not, or DiDi-Instruct reaches it before training: cost 0); where only one
    reaches it, the bound the other's budget puts on that ratio (`ratio_bound`)."""
    out = []
    for target in targets:
        row = {"target": target["name"], "target_gen_ppl": target["gen_ppl"],
               **{method: first_reach(points, target["gen_ppl"]) for method, points in curves.items()}}
        didi, sdtt = row.get("didi"), row.get("sdtt")
        both = bool(didi and sdtt and didi["reached"] and sdtt["reached"])
        row["ratio_train_seconds"] = ratio(sdtt["train_seconds"], didi["train_seconds"]) if both else None
        row["ratio_forward_equivalents"] = (ratio(sdtt["forward_equivalents"], didi["forward_equivalents"])
                                            if both else None)
        row["ratio_bound"] = ratio_bound(curves, didi, sdtt) if didi and sdtt else None
        out.append(row)
    return out


def segment_stops(total: int, every: int) -> list[int]:
    """every, 2 every, ..., total (the last one total even where every does not divide it)."""
    if total < 1 or every < 1:
        raise ValueError(f"need a budget and a segment length >= 1, got {total} and {every}")
    return list(range(every, total, every)) + [total]


def default_every(total: int, points: int = DEFAULT_POINTS) -> int:
    return max(1, math.ceil(total / points))


# ---------------------------------------------------------------------------------------------- segmented runs
class _LastLog:
    """In wandb's place in run_distillation: notes when the last iteration was logged (before any checkpoint
    write of that iteration), so a segment's training time leaves its checkpoint write out."""

    def __init__(self):
        self.at = None

    def log(self, values, step=None):
        self.at = time.perf_counter()


def didi_segments(teacher, positives, distill_cfg: dict, method: dict, schedule, mask_id: int, seed: int, device,
                  iterations: int, every: int, work_dir: str | Path, progress: bool = True):
    """One DiDi-Instruct run of `iterations` student iterations (after distill_cfg's discriminator warm-up) cut
    into segments of `every`: each a run_distillation resumed from the last one's checkpoint. Yields
    (state, train_seconds) after each segment; train_seconds is cumulative and leaves out building the state,
    loading the checkpoint and writing it. work_dir is emptied first (a stale checkpoint would be resumed)."""
    from didi.distill import run_distillation

    if distill_cfg["lr_schedule"] != "constant":
        raise ValueError(f"distill.lr_schedule {distill_cfg['lr_schedule']!r}: every iteration's rate depends on the "
                         f"run's length, so a run cannot be cut into segments that reproduce it; measure the cost "
                         f"with lr_schedule constant")
    work_dir = Path(work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    base = {**distill_cfg, "checkpoint_every": NEVER}
    seconds, previous = 0.0, None
    for stop in segment_stops(iterations, every):
        clock = _LastLog()
        state = run_distillation(teacher, positives, {**base, "iterations": stop}, method, schedule, mask_id, seed,
                                 device, checkpoint_dir=work_dir, progress=progress, wandb_run=clock)
        returned = time.perf_counter()
        resumed = state.history["resumed_from_iteration"][0]
        if resumed != previous:
            raise RuntimeError(f"segment to iteration {state.iteration} resumed from {resumed}, not {previous}: the "
                               f"segments are not one run (was didi/*.py edited while it ran?)")
        ran = state.history["seconds_this_run"][0]
        seconds += ran - (returned - clock.at) if clock.at is not None else ran
        previous = state.iteration
        yield state, seconds
        del state  # before the next segment builds its own (two at once would double the memory)


def sdtt_segments(teacher, tokens, sdtt_cfg: dict, rounds: list, schedule, mask_id: int, seed: int,
                  diffusion: dict, device, steps: int, every: int, work_dir: str | Path, progress: bool = True):
    """The first `steps` steps of one SDTT run over the whole round plan `rounds`, in segments of `every`: each a
    run_sdtt resumed from the last one's checkpoint, stopped with stop_at. Yields (state, train_seconds), the sum
    of the steps' own wall-clock (history round_seconds: no checkpoint writes)."""
    from didi.sdtt import run_sdtt

    if not 1 <= steps <= rounds[-1].stop:
        raise ValueError(f"sdtt: {steps} steps, but the round plan has {rounds[-1].stop}")
    work_dir = Path(work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    base = {**sdtt_cfg, "checkpoint_every": every}  # every segment's end is a multiple of `every`, or a round's end
    previous = None
    for stop in segment_stops(steps, every):
        state = run_sdtt(teacher, tokens, base, rounds, schedule, mask_id, seed, diffusion, device,
                         checkpoint_dir=work_dir, progress=progress, stop_at=stop)
        if state.history["resumed_from_step"] != previous or state.step != stop:
            raise RuntimeError(f"SDTT segment to step {stop} resumed from {state.history['resumed_from_step']}, not "
                               f"{previous}: the segments are not one run (was didi/*.py edited while it ran?)")
        previous = state.step
        yield state, float(sum(state.history["round_seconds"]))
        del state


# ---------------------------------------------------------------------------------------------- evaluation
def sample_ids(model, n: int, nfe: int, cfg: dict, mask_id: int, seed: int) -> np.ndarray:
    """n samples [n, L] of `model` at `nfe` steps: the project's ancestral sampler in batches of
    sampling.batch_size, one generator seeded by `seed`, diffusion.sampling_precision, temperature 1 (as the sample
    rule draws a student's files)."""
    from didi.diffusion import LogLinearSchedule, sample
    from didi.sample import use_cache

    d = cfg["diffusion"]
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    ids, batch = [], cfg["sampling"]["batch_size"]
    for start in range(0, n, batch):
        result = sample(model, min(batch, n - start), model.config.seq_len, nfe, LogLinearSchedule(d["eps"]),
                        mask_id, gen, device, d["sampling_precision"], use_cache(d, model), 1.0,
                        d["sampling_t_end"])
        ids.append(result.ids.cpu())
    model.train(was_training)
    return torch.cat(ids).numpy()


class Scorer:
    """The judge of `didi evaluate`, loaded once: ids [n, L] -> gen-PPL (and interval, entropy) exactly as the
    evaluate rule scores a sample file (evaluate.measure without MAUVE; measure_exact for an exact judge)."""

    def __init__(self, judge_dir: str | Path, tokenizer, cfg: dict):
        from didi import evaluate

        self.evaluate, self.cfg, self.tokenizer = evaluate, cfg, tokenizer
        self.info = io.read_json(Path(judge_dir) / "judge.json")
        self.exact = config.is_exact_judge(self.info)  # the one place that decides the judge's kind
        if not self.exact:
            self.model, self.judge_tokenizer, self.info = evaluate.load_judge(judge_dir)
            self.model.to(io.default_device())

    def __call__(self, ids: np.ndarray) -> dict:
        if self.exact:
            row = self.evaluate.measure_exact(ids, self.info, self.cfg)
        else:
            row = self.evaluate.measure(data.decode(self.tokenizer, ids), ids, self.model, self.judge_tokenizer,
                                        self.cfg, None)
        return {k: row[k] for k in ("gen_ppl", "gen_ppl_lo", "gen_ppl_hi", "entropy")}


def student_of(state, weights: str):
    """The student the sampling rules read: the EMA ("ema") or the raw weights."""
    return state.student_ema if weights == "ema" else state.student


# ---------------------------------------------------------------------------------------------- the section
def options(every: int | None = None, num_samples: int | None = None, nfe: int | None = None,
            iterations: int | None = None, sdtt_steps: int | None = None, target_nfe: list[int] | None = None) -> dict:
    return {"every": every, "num_samples": num_samples, "nfe": nfe, "iterations": iterations,
            "sdtt_steps": sdtt_steps, "target_nfe": target_nfe}


def default_targets(seq_len: int, nfe: int) -> list[int]:
    """The teacher's NFEs whose gen-PPL are the default targets: L, 2K and 1.5K (module docstring)."""
    return [seq_len, 2 * nfe, 3 * nfe // 2]


def sdtt_budget(rounds: list, nfe: int) -> int:
    """Steps up to the end of the round whose student samples with `nfe` steps (later rounds train students for
    fewer steps); the whole plan when no round does."""
    return next((r.stop for r in rounds if r.student_nfe == nfe), rounds[-1].stop)


def run_cost(cfg: dict, teacher, tokens, tokenizer, mask_id: int, judge_dir: str | Path, work_dir: str | Path,
             opts: dict | None = None, progress: bool = True) -> dict:
    """The whole measurement (see the module docstring); returns the result that distill_cost.json holds."""
    from didi.diffusion import LogLinearSchedule
    from didi.sdtt import round_plan

    opts = {**options(), **(opts or {})}
    missing = [s for s in ("distill", "sdtt", "evaluation", "sampling") if s not in cfg]
    if missing:
        raise config.ConfigError(f"bench distill_cost needs the config section(s) {', '.join(missing)}")
    distill_cfg, sdtt_cfg, diffusion = cfg["distill"], cfg["sdtt"], cfg["diffusion"]
    seq_len = teacher.config.seq_len
    nfe = opts["nfe"] or DEFAULT_NFE
    n = opts["num_samples"] or DEFAULT_SAMPLES
    wanted = opts["target_nfe"] or default_targets(seq_len, nfe)
    target_nfe = sorted({k for k in wanted if k <= seq_len}, reverse=True)
    if nfe > seq_len or not target_nfe:
        raise ValueError(f"distill_cost: NFE {nfe} and targets {opts['target_nfe']} must be <= L = {seq_len}")
    method = config.variant_method(cfg, "full")
    if method["positives"] != "data":
        raise ValueError("distill_cost runs the `full` variant on the token blocks (positives: data); its config has "
                         f"positives {method['positives']!r}")
    didi_seed = config.distill_seeds(cfg)[0]
    iterations = opts["iterations"] or distill_cfg["iterations"]
    start_nfe = sdtt_cfg["start_nfe"] if sdtt_cfg["start_nfe"] is not None else seq_len
    rounds = round_plan(start_nfe, sdtt_cfg["min_nfe"], sdtt_cfg["steps_per_round"], diffusion["sampling_t_end"],
                        sdtt_cfg["teacher_steps"])
    sdtt_steps = opts["sdtt_steps"] or sdtt_budget(rounds, nfe)
    every = {"didi": opts["every"] or default_every(iterations), "sdtt": opts["every"] or default_every(sdtt_steps)}
    schedule = LogLinearSchedule(diffusion["eps"])
    sample_seed = runtime.seed(cfg["seed"], SAMPLES_STREAM)
    scorer = Scorer(judge_dir, tokenizer, cfg)
    teacher = copy.deepcopy(teacher).eval()  # the distillations freeze their teacher: leave the caller's alone
    work_dir = Path(work_dir)
    eval_seconds = 0.0

    def evaluate(model, k: int) -> dict:
        nonlocal eval_seconds
        start = time.perf_counter()
        scored = scorer(sample_ids(model, n, k, cfg, mask_id, sample_seed))
        eval_seconds += time.perf_counter() - start
        return scored

    targets = [{"name": f"teacher@{k}", "nfe": k, **evaluate(teacher, k)} for k in target_nfe]
    for t in targets:
        log.info("target %s: gen-PPL %.4g [%.4g, %.4g]", t["name"], t["gen_ppl"], t["gen_ppl_lo"], t["gen_ppl_hi"])
    # step 0: both students are copies of the teacher
    start_point = {"step": 0, "train_seconds": 0.0, "forward_equivalents": 0, **evaluate(teacher, nfe)}
    log.info("teacher@%d (both students before training): gen-PPL %.4g", nfe, start_point["gen_ppl"])

    didi_counts = didi_forward_equivalents(distill_cfg, method, teacher.config.dropout)
    warmup = distill_cfg["discriminator_warmup"]
    didi_points = [start_point]
    for state, seconds in didi_segments(teacher, tokens, distill_cfg, method, schedule, mask_id, didi_seed,
                                        io.default_device(), iterations, every["didi"], work_dir / "didi", progress):
        done = state.iteration - warmup
        point = {"step": done, "train_seconds": seconds,
                 "forward_equivalents": didi_cumulative(didi_counts, warmup, done),
                 **evaluate(student_of(state, distill_cfg["student_weights"]), nfe)}
        didi_points.append(point)
        log.info("DiDi-Instruct iteration %d: %.1f s, %.4g forward-equivalents, student@%d gen-PPL %.4g", done,
                 seconds, point["forward_equivalents"], nfe, point["gen_ppl"])
        del state  # the segments' states are not held at once

    sdtt_counts = sdtt_forward_equivalents(sdtt_cfg)
    sdtt_points = [start_point]
    for state, seconds in sdtt_segments(teacher, tokens, sdtt_cfg, rounds, schedule, mask_id, cfg["seed"], diffusion,
                                        io.default_device(), sdtt_steps, every["sdtt"], work_dir / "sdtt", progress):
        point = {"step": state.step, "train_seconds": seconds,
                 "forward_equivalents": state.step * sdtt_counts["total"],
                 **evaluate(student_of(state, sdtt_cfg["student_weights"]), nfe)}
        sdtt_points.append(point)
        log.info("SDTT step %d: %.1f s, %.4g forward-equivalents, student@%d gen-PPL %.4g", state.step, seconds,
                 point["forward_equivalents"], nfe, point["gen_ppl"])
        del state
    shutil.rmtree(work_dir, ignore_errors=True)

    return {
        "unit": UNIT, "nfe": nfe, "num_samples": n, "sample_seed": sample_seed, "judge": str(judge_dir),
        "precision": diffusion["sampling_precision"], "every": every, "targets": targets,
        "reach": reach_table({"didi": didi_points, "sdtt": sdtt_points}, targets),
        "didi": {"variant": "full", "seed": didi_seed, "iterations": iterations, "discriminator_warmup": warmup,
                 "student_weights": distill_cfg["student_weights"], "forward_equivalents_per_iteration": didi_counts,
                 "points": didi_points},
        "sdtt": {"seed": cfg["seed"], "steps": sdtt_steps, "plan_steps": rounds[-1].stop,
                 "rounds": [{"student_nfe": r.student_nfe, "teacher_nfe": r.teacher_nfe, "start": r.start,
                             "stop": r.stop} for r in rounds],
                 "student_weights": sdtt_cfg["student_weights"], "forward_equivalents_per_step": sdtt_counts,
                 "points": sdtt_points},
        "evaluation_seconds": eval_seconds,
    }


METHODS = {"didi": "DiDi-Instruct", "sdtt": "SDTT"}


def markdown(result: dict) -> str:
    """The reach table: per target and method, the first checkpoint at or below the target (or the best one), and
    SDTT / DiDi-Instruct where both reach it."""
    k = result["nfe"]
    lines = [f"Distillation cost to reach a quality: the student sampled at K = {k} ({result['num_samples']} samples, "
             f"one sampler seed, plain ancestral sampling, T = 1) every {result['every']['didi']} DiDi-Instruct "
             f"iterations / {result['every']['sdtt']} SDTT steps, against the teacher sampled and scored the same "
             f"way. Wall-clock: the optimiser steps alone (no evaluation, no checkpoint writes); forward-equivalents: "
             f"{result['unit']}.", "",
             "| target | gen-PPL | method | reached | at step | train s | forward-equivalents | student gen-PPL |",
             "|---|---:|---|---|---:|---:|---:|---:|"]
    for row in result["reach"]:
        for method, name in METHODS.items():
            r = row[method]
            p = r if r["reached"] else r["best"]
            lines.append(f"| {row['target']} | {row['target_gen_ppl']:.2f} | {name} | "
                         f"{'yes' if r['reached'] else 'no (best shown)'} | {p['step']} | {p['train_seconds']:.4g} | "
                         f"{p['forward_equivalents']:.4g} | {p['gen_ppl']:.2f} [{p['gen_ppl_lo']:.2f}, "
                         f"{p['gen_ppl_hi']:.2f}] |")
    start = result["didi"]["points"][0]
    lines += ["", f"Step 0 of both is the teacher itself at K = {k}: gen-PPL {start['gen_ppl']:.2f} "
                  f"[{start['gen_ppl_lo']:.2f}, {start['gen_ppl_hi']:.2f}].", ""]
    for row in result["reach"]:
        didi, sdtt = row["didi"], row["sdtt"]
        if row["ratio_train_seconds"] is not None:
            lines.append(f"- {row['target']}: SDTT / DiDi-Instruct = {row['ratio_train_seconds']:.2f} in wall-clock, "
                         f"{row['ratio_forward_equivalents']:.2f} in forward-equivalents.")
        elif didi["reached"] and didi["step"] == 0:
            lines.append(f"- {row['target']}: no ratio: the teacher at K = {k} is already at or below it.")
        else:
            missed = " and ".join(METHODS[m] for m in METHODS if not row[m]["reached"])
            bound = row.get("ratio_bound")
            said = "" if bound is None else (
                f" SDTT / DiDi-Instruct is {bound['side']} {bound['train_seconds']:.2f} in wall-clock, "
                f"{bound['forward_equivalents']:.2f} in forward-equivalents ({missed}'s whole budget against the "
                f"other's cost to reach it).")
            lines.append(f"- {row['target']}: no ratio: {missed} did not reach it within its budget.{said}")
    didi, sdtt = result["didi"], result["sdtt"]
    per = didi["forward_equivalents_per_iteration"]
    lines += ["", f"Per DiDi-Instruct iteration: {per['student']['total']} forward-equivalents (warm-up iteration "
                  f"{per['warmup']['total']}); per SDTT step: {sdtt['forward_equivalents_per_step']['total']}. "
                  f"Budgets: DiDi-Instruct "
                  f"{didi['iterations']} iterations (variant full, seed {didi['seed']}), SDTT {sdtt['steps']} of its "
                  f"{sdtt['plan_steps']} steps (up to the round that trains the {k}-step student)."]
    return "\n".join(lines) + "\n"


def section(cfg: dict, ctx: dict) -> dict:
    """`didi bench` section distill_cost: needs --tokens, --tokenizer, --teacher and --judge; writes
    out-dir/distill_cost.md (run_bench writes distill_cost.json)."""
    if not (ctx.get("judge_dir") and ctx.get("tokenizer_dir") and ctx.get("teacher_dir")):
        raise ValueError("bench distill_cost needs --teacher, --tokens, --tokenizer and --judge")
    from didi.model import load_dit

    out_dir = Path(ctx["out_dir"])
    tokenizer = data.load_pretrained_tokenizer(str(ctx["tokenizer_dir"]))
    teacher, _ = load_dit(ctx["teacher_dir"], io.default_device())  # as saved, whatever the other sections did
    result = run_cost(cfg, teacher, ctx["blocks"], tokenizer, ctx["mask_id"], ctx["judge_dir"],
                      out_dir / "distill_cost.work", ctx.get("cost"))
    io.write_text(out_dir / "distill_cost.md", markdown(result))
    io.write_provenance_beside(out_dir / "distill_cost.md", cfg)
    for row in result["reach"]:
        log.info("%s: SDTT / DiDi-Instruct %s", row["target"], "n/a" if row["ratio_train_seconds"] is None
                 else f"{row['ratio_train_seconds']:.3g}x wall-clock, {row['ratio_forward_equivalents']:.3g}x "
                      f"forward-equivalents")
    return result


# ---------------------------------------------------------------------------------------------- CLI (didi bench)
def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("distill_cost section (needs --judge)")
    g.add_argument("--cost-every", type=int, default=None,
                   help="optimiser steps between evaluations, both methods (default: each budget / 16)")
    g.add_argument("--cost-samples", type=int, default=None, help=f"samples per evaluation (default {DEFAULT_SAMPLES})")
    g.add_argument("--cost-nfe", type=int, default=None, help=f"the students' sampling steps K (default {DEFAULT_NFE})")
    g.add_argument("--cost-iterations", type=int, default=None,
                   help="DiDi-Instruct budget in student iterations (default distill.iterations)")
    g.add_argument("--cost-sdtt-steps", type=int, default=None,
                   help="SDTT budget in steps (default: up to the end of the round training the K-step student)")
    g.add_argument("--cost-target-nfe", type=int, nargs="+", default=None,
                   help="the teacher's NFEs whose gen-PPL are the targets (default L, 2K and 1.5K)")


def options_from_args(args: argparse.Namespace) -> dict:
    return options(args.cost_every, args.cost_samples, args.cost_nfe, args.cost_iterations, args.cost_sdtt_steps,
                   args.cost_target_nfe)
