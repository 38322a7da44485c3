"""`didi bench`: throughput numbers for the README, measured in one run on one machine (not a test: timings
depend on the machine, so nothing asserts them).

    didi bench --tokens results/tokens --tokenizer results/tokenizer [--teacher results/teacher/ema] \
        --out-dir results/bench [--configfile ...]
    didi bench --synthetic-tokens --out-dir results/bench-synthetic --configfile config.yaml \
        --configfile presets/paper.yaml

--synthetic-tokens times the config's model size on uniform random ids (synthetic_blocks) instead of a tokenized
corpus: no dataset, no tokenizer and no judge is read or downloaded (a GPU node that reaches nothing outside itself
can time the paper-size DiT). The vocabulary is tokenizer.vocab_size (len(tokenizer); the paper preset states
GPT-2's 50,257 + [PAD]) plus [MASK]; every output says "tokens": "synthetic". Timings do not depend on which ids
are fed, except the sampler's cache hit rate, which follows what a fresh (untrained) DiT predicts either way.

Sections, each a function returning a dict and written to out-dir/<section>.json; out-dir/bench.json holds them
all plus the machine description:
 - teacher:  training tokens/s (the real training step: AdamW, clip, EMA, autocast per config) after warm-up
             steps at the per-GPU batch (per_gpu_batch, or --teacher-batch), and sampler tokens/s at two NFEs
             (8 and L by default) with their ratio.
 - distill:  DiDi-Instruct iterations/s (bench_distill), when the config has a distill section.
 - speedup:  the student sampling at each distill.nfe (8, 16, ...) against the teacher at K = L (tokens/s ratio),
             and RGAS against plain ancestral sampling at the same NFE (wall-clock overhead, discriminator calls).
             Uses --student / --discriminator when given, else the teacher's weights in both roles (the networks
             have the same size, so the timing differs only through the cache hit rate).
 - baseline: the AR GPT-2 baseline with its KV cache against the teacher at NFE = L and the student at each
             distill.nfe: samples/s, tokens/s and speed-up ratios (section_baseline; needs --baseline).
 - distill_cost: DiDi-Instruct and SDTT distilled from the teacher in segments, the student judged after each:
             wall-clock and network calls until it reaches the teacher's gen-PPL at K = L and at 2 x 16, and their
             ratio (didi.cost; needs --judge; also writes distill_cost.md). Runs both distillations: the longest
             section by far.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from didi import config, data, distributed, io, train

log = logging.getLogger("didi.bench")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine() -> dict:
    device = io.default_device()
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }


# Dense bf16 peak FLOP/s of accelerators we know (model FLOPs utilisation = achieved / peak); --peak-tflops overrides.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def training_flops_per_token(model: torch.nn.Module) -> float:
    """6 N per token for the matmul parameters (the input embedding is a lookup, not a matmul) plus the attention
    score/value matmuls, 12 * layers * d * L (the PaLM appendix count)."""
    c = model.config
    matmul_params = sum(p.numel() for p in model.parameters()) - model.embed.weight.numel()
    return 6.0 * matmul_params + 12.0 * c.layers * c.hidden * c.seq_len


def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name.upper()), None)


def build_teacher(cfg: dict, vocab: int, teacher_dir: str | Path | None, device: torch.device):
    """The trained teacher when given (sampling speed depends on what it predicts, through the cache), else a
    freshly initialised DiT of the config's size."""
    from didi.model import load_dit

    if teacher_dir:
        model, _ = load_dit(teacher_dir, device)
        return model
    return train.new_teacher(cfg, vocab, device)


def synthetic_blocks(cfg: dict, rows: int) -> np.ndarray:
    """[rows, L] token ids drawn uniformly from the tokenizer's ids 0 .. tokenizer.vocab_size - 1 (never [MASK]),
    seeded by the config seed: stand-in training data for benchmarks."""
    n_ids = cfg["tokenizer"]["vocab_size"]
    rng = np.random.default_rng(cfg["seed"])
    return rng.integers(0, n_ids, size=(rows, cfg["data"]["seq_len"])).astype(data.token_dtype(n_ids + 1))


def per_gpu_batch(cfg: dict) -> int:
    """The teacher rows one device takes per step in the training job (teacher.batch_size over resources.gpu):
    what a one-process benchmark times (the global batch of a multi-GPU recipe does not fit one GPU)."""
    return cfg["teacher"]["batch_size"] // max(1, cfg["resources"]["gpu"])


def bench_training(cfg: dict, model: torch.nn.Module, blocks: np.ndarray, mask_id: int, warmup_steps: int,
                   timed_steps: int) -> dict:
    """Tokens/s of the teacher's training step (one process, global batch teacher.batch_size) on a copy of `model`."""
    teacher_cfg = cfg["teacher"]
    device = next(model.parameters()).device
    step = train.step_function(cfg, copy.deepcopy(model).train().requires_grad_(True), blocks, mask_id)
    for i in range(warmup_steps):  # allocator, autotuning, torch.compile
        step(i)
    synchronize(device)
    start = time.perf_counter()
    for i in range(warmup_steps, warmup_steps + timed_steps):
        step(i)
    synchronize(device)
    seconds = time.perf_counter() - start
    tokens = timed_steps * teacher_cfg["batch_size"] * blocks.shape[1]
    return {"tokens_per_s": tokens / seconds, "steps_per_s": timed_steps / seconds, "timed_steps": timed_steps,
            "warmup_steps": warmup_steps, "seconds": seconds, "global_batch": teacher_cfg["batch_size"],
            "bf16": teacher_cfg["bf16"] and device.type == "cuda", "compile": teacher_cfg["compile"]}


def bench_sampler(cfg: dict, model: torch.nn.Module, mask_id: int, nfe: int, num_samples: int) -> dict:
    """Tokens/s of the ancestral sampler at `nfe` steps (cache and precision per config), after one warm-up call."""
    from didi.diffusion import LogLinearSchedule, sample

    from didi.sample import use_cache

    device = next(model.parameters()).device
    diffusion_cfg = cfg["diffusion"]
    cache = use_cache(diffusion_cfg, model)
    model.eval()

    gen = torch.Generator(device=device).manual_seed(cfg["seed"])
    args = (LogLinearSchedule(diffusion_cfg["eps"]), mask_id, gen, device, diffusion_cfg["sampling_precision"], cache,
            1.0, diffusion_cfg["sampling_t_end"])
    sample(model, num_samples, model.config.seq_len, 2, *args)  # warm-up (sample runs under no_grad)
    result = sample(model, num_samples, model.config.seq_len, nfe, *args)
    tokens = num_samples * model.config.seq_len
    return {"nfe": nfe, "tokens_per_s": tokens / result.seconds, "samples_per_s": num_samples / result.seconds,
            "seconds": result.seconds, "network_calls": result.network_calls, "num_samples": num_samples,
            "cache": cache, "precision": diffusion_cfg["sampling_precision"]}


# ---------------------------------------------------------------------------------------------- sections
def add_mfu(training: dict, model: torch.nn.Module, peak_override: float | None) -> dict:
    """bench_training's result plus model FLOPs per token, achieved TFLOP/s and MFU (None on an unknown device)."""
    flops = training_flops_per_token(model)
    peak = peak_tflops(machine()["device_name"], peak_override)
    training["model_flops_per_token"] = flops
    training["achieved_tflops"] = training["tokens_per_s"] * flops / 1e12
    training["peak_tflops"] = peak
    training["mfu"] = training["achieved_tflops"] / peak if peak else None
    return training


def section_teacher(cfg: dict, ctx: dict) -> dict:
    model, mask_id = ctx["model"], ctx["mask_id"]
    training = bench_training(cfg, model, ctx["blocks"], mask_id, ctx["warmup_steps"], ctx["timed_steps"])
    training = add_mfu(training, model, ctx.get("peak_tflops"))
    peak = training["peak_tflops"]
    log.info("teacher training: %.4g tokens/s (%.3g steps/s), %.3g TFLOP/s achieved%s", training["tokens_per_s"],
             training["steps_per_s"], training["achieved_tflops"],
             f", MFU {training['mfu']:.1%} of {peak:g}" if peak else " (no peak known for this device: MFU not given)")
    sampling = []
    for nfe in ctx["nfe"]:
        sampling.append(bench_sampler(cfg, model, mask_id, nfe, cfg["sampling"]["batch_size"]))
        log.info("sampler NFE %d: %.4g tokens/s (%d network calls)", nfe, sampling[-1]["tokens_per_s"],
                 sampling[-1]["network_calls"])
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "seq_len": model.config.seq_len,
        "trained_teacher": ctx["teacher_dir"],
        "training": training,
        "sampling": sampling,
        # how much faster the fewest-step sampler is than the most-step one (the point of distillation)
        "sampler_speed_ratio": sampling[0]["tokens_per_s"] / sampling[-1]["tokens_per_s"],
        "sampler_speed_ratio_nfe": [sampling[0]["nfe"], sampling[-1]["nfe"]],
    }


def bench_distill(teacher, tokens, mask_id: int, cfg: dict, iterations: int, variant: str = "full") -> dict:
    """Distillation iterations/s of `variant` (one untimed warm-up iteration first), and of a discriminator warm-up
    iteration (distill.discriminator_warmup: the rollout and the discriminator's step, no reward or student loss).
    teacher: a DiT or a model directory; tokens: [N, L] array or a .npy path."""
    from didi.diffusion import LogLinearSchedule
    from didi.distill import build_state, distill_step, run_distillation
    from didi.model import load_dit

    device = io.default_device()
    if isinstance(teacher, (str, Path)):
        teacher, _ = load_dit(teacher, device)
    else:
        teacher = copy.deepcopy(teacher).to(device)  # distillation freezes its teacher: leave the caller's alone
    if isinstance(tokens, (str, Path)):
        tokens = np.load(tokens, mmap_mode="r")
    distill_cfg = cfg["distill"]
    method = config.variant_method(cfg, variant) if variant in distill_cfg["variants"] else distill_cfg["method"]
    if method["positives"] == "teacher":  # the throughput does not depend on where the positives come from
        method = {**method, "positives": "data"}
    schedule = LogLinearSchedule(cfg["diffusion"]["eps"])
    state = run_distillation(teacher, tokens, {**distill_cfg, "iterations": 1, "discriminator_warmup": 0}, method,
                             schedule, mask_id, cfg["seed"], device, progress=False)
    positives = torch.as_tensor(np.asarray(tokens[: distill_cfg["batch_size"]]).astype(np.int64)).to(device)
    gen = torch.Generator(device=device).manual_seed(cfg["seed"])

    def seconds_for(state) -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(iterations):
            distill_step(state, positives, gen)
        synchronize(device)
        return time.perf_counter() - start

    seconds = seconds_for(state)
    warmup = build_state(teacher, {**distill_cfg, "discriminator_warmup": iterations + 1}, method, schedule, mask_id,
                         tokens.shape[1], dist=distributed.DistInfo(device=torch.device(device)), seed=cfg["seed"])
    warmup_seconds = seconds_for(warmup)
    return {"iterations_per_s": iterations / seconds, "iterations": iterations, "seconds": seconds,
            "discriminator_warmup_iterations_per_s": iterations / warmup_seconds,
            "warmup_speedup": seconds / warmup_seconds,  # a warm-up iteration against a full one, in this run
            "variant": variant, "batch_size": distill_cfg["batch_size"], "group_size": distill_cfg["group_size"],
            "device": str(device)}


def section_distill(cfg: dict, ctx: dict) -> dict:
    result = bench_distill(ctx["model"], ctx["blocks"], ctx["mask_id"], cfg, iterations=ctx["timed_steps"])
    log.info("distillation: %.3g iterations/s", result["iterations_per_s"])
    return result


def bench_rgas(cfg: dict, model: torch.nn.Module, discriminator: torch.nn.Module, mask_id: int, nfe: int,
               num_samples: int) -> dict:
    """Wall-clock of RGAS at `nfe` (h schedule, M and split per config), after a short warm-up."""
    from didi.diffusion import LogLinearSchedule
    from didi.rgas import guidance, rgas_sample

    device = next(model.parameters()).device
    diffusion_cfg, rgas = cfg["diffusion"], cfg["distill"]["rgas"]
    model.eval()

    def run(k: int):
        gen = torch.Generator(device=device).manual_seed(cfg["seed"])
        return rgas_sample(model, discriminator, num_samples, model.config.seq_len, k,
                           LogLinearSchedule(diffusion_cfg["eps"]), mask_id, gen, device,
                           diffusion_cfg["sampling_precision"], temperature=1.0,
                           t_end=diffusion_cfg["sampling_t_end"], **guidance(rgas))

    run(2)  # warm-up
    result = run(nfe)
    return {"nfe": nfe, "seconds": result.seconds, "tokens_per_s": num_samples * model.config.seq_len / result.seconds,
            "network_calls": result.network_calls, "disc_forward_calls": result.disc_forward_calls,
            "disc_backward_calls": result.disc_backward_calls}


def rgas_overhead(cfg: dict, student: torch.nn.Module, discriminator: torch.nn.Module, mask_id: int, nfe: int,
                  num_samples: int) -> dict:
    """Plain ancestral sampling and RGAS of `student` at the same NFE; rgas_overhead = their wall-clock ratio."""
    plain = bench_sampler(cfg, student, mask_id, nfe, num_samples)
    guided = bench_rgas(cfg, student, discriminator, mask_id, nfe, num_samples)
    return {"nfe": nfe, "student": plain, "rgas": guided, "rgas_overhead": guided["seconds"] / plain["seconds"]}


def student_and_teacher_full(cfg: dict, ctx: dict) -> tuple[torch.nn.Module, dict]:
    """(the student to time: --student, else the teacher's weights in its role; the teacher's sampler timed at
    K = L, what the speed-up sections divide by)."""
    from didi.model import load_dit

    teacher = ctx["model"]
    device = next(teacher.parameters()).device
    student = load_dit(ctx["student_dir"], device)[0] if ctx.get("student_dir") else teacher
    return student, bench_sampler(cfg, teacher, ctx["mask_id"], teacher.config.seq_len, cfg["sampling"]["batch_size"])


def section_speedup(cfg: dict, ctx: dict) -> dict:
    from didi.discriminator import Discriminator, load_discriminator

    teacher, mask_id, n = ctx["model"], ctx["mask_id"], cfg["sampling"]["batch_size"]
    device = next(teacher.parameters()).device
    student, teacher_full = student_and_teacher_full(cfg, ctx)
    if ctx.get("discriminator_dir"):
        discriminator = load_discriminator(ctx["discriminator_dir"], device)
    else:
        discriminator = Discriminator.from_teacher(teacher, cfg["distill"]["discriminator_trainable_blocks"]).to(device)
    discriminator.eval()
    rows = []
    for nfe in cfg["distill"]["nfe"]:
        row = rgas_overhead(cfg, student, discriminator, mask_id, nfe, n)
        row["speedup_vs_teacher_full"] = row["student"]["tokens_per_s"] / teacher_full["tokens_per_s"]
        rows.append(row)
        log.info("student NFE %d: %.3gx the teacher at NFE %d; RGAS costs %.3gx plain sampling", nfe,
                 rows[-1]["speedup_vs_teacher_full"], teacher.config.seq_len, rows[-1]["rgas_overhead"])
    return {"teacher_full_nfe": teacher_full, "student": rows, "student_dir": ctx.get("student_dir"),
            "discriminator_dir": ctx.get("discriminator_dir")}


def bench_generate(model, num_samples: int, seq_len: int, bos_id: int) -> dict:
    """Wall-clock of the AR baseline's sampling (baseline.generate) of `num_samples` x L tokens with the KV cache,
    after a short warm-up."""
    from didi.baseline import generate, nfe

    device = next(model.parameters()).device
    generate(model, num_samples, 3, bos_id, 1.0)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    _, calls = generate(model, num_samples, seq_len, bos_id, 1.0)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"nfe": nfe(seq_len), "network_calls": calls, "seconds": seconds, "samples_per_s": num_samples / seconds,
            "tokens_per_s": num_samples * seq_len / seconds, "num_samples": num_samples, "cache": True}


def section_baseline(cfg: dict, ctx: dict) -> dict:
    """The AR baseline (KV cache) against the teacher at NFE = L and the student at each distill.nfe, in this one run
    on this device; speed-ups as ratios of samples/s (= ratios of tokens/s)."""
    from didi.baseline import INFO
    from didi.judge import load_judge

    teacher, mask_id, n = ctx["model"], ctx["mask_id"], cfg["sampling"]["batch_size"]
    seq_len = teacher.config.seq_len
    student, teacher_full = student_and_teacher_full(cfg, ctx)
    model, _, _ = load_judge(ctx["baseline_dir"], INFO)
    model.to(next(teacher.parameters()).device)
    torch.manual_seed(cfg["seed"])
    ar = bench_generate(model, n, seq_len, model.config.bos_token_id)
    log.info("AR baseline: %.4g samples/s, %.4g tokens/s; teacher at NFE %d: %.4g samples/s (AR %.3gx the teacher)",
             ar["samples_per_s"], ar["tokens_per_s"], seq_len, teacher_full["samples_per_s"],
             ar["samples_per_s"] / teacher_full["samples_per_s"])
    rows = []
    for k in cfg.get("distill", {}).get("nfe", []):
        s = bench_sampler(cfg, student, mask_id, k, n)
        rows.append({"nfe": k, "student": s, "speedup_vs_baseline": s["samples_per_s"] / ar["samples_per_s"],
                     "speedup_vs_teacher_full": s["samples_per_s"] / teacher_full["samples_per_s"]})
        log.info("student NFE %d: %.4g samples/s = %.3gx the AR baseline, %.3gx the teacher at NFE %d", k,
                 s["samples_per_s"], rows[-1]["speedup_vs_baseline"], rows[-1]["speedup_vs_teacher_full"], seq_len)
    return {"baseline": ar, "baseline_dir": str(ctx["baseline_dir"]), "teacher_full_nfe": teacher_full,
            "baseline_vs_teacher_full": ar["samples_per_s"] / teacher_full["samples_per_s"], "student": rows,
            "student_dir": ctx.get("student_dir")}


def section_distill_cost(cfg: dict, ctx: dict) -> dict:
    from didi import cost

    return cost.section(cfg, ctx)


SECTIONS = {"teacher": section_teacher, "distill": section_distill, "speedup": section_speedup,
            "baseline": section_baseline, "distill_cost": section_distill_cost}


def run_bench(cfg: dict, tokens_dir: str | Path | None, tokenizer_dir: str | Path | None, out_dir: str | Path,
              teacher_dir: str | Path | None = None, sections: list[str] | None = None, nfe: list[int] | None = None,
              warmup_steps: int = 3, timed_steps: int = 10, student_dir: str | Path | None = None,
              discriminator_dir: str | Path | None = None, peak: float | None = None,
              baseline_dir: str | Path | None = None, judge_dir: str | Path | None = None,
              cost_options: dict | None = None) -> dict:
    """Run the chosen sections (default: teacher, plus distill and speedup when the config has a distill section,
    baseline with baseline_dir, distill_cost with judge_dir); write the JSON files. tokens_dir and tokenizer_dir
    None: synthetic tokens (synthetic_blocks). cost_options: didi.cost.options (distill_cost's budget)."""
    from didi.model import mask_id_of

    out_dir = Path(out_dir)
    device = io.default_device()
    if tokens_dir is None:
        mask_id = cfg["tokenizer"]["vocab_size"]  # [MASK] = len(tokenizer)
        model = build_teacher(cfg, mask_id + 1, teacher_dir, device)
        if model.config.vocab_size != mask_id + 1:
            raise ValueError(f"{teacher_dir}: model vocab {model.config.vocab_size} != tokenizer.vocab_size + 1 = "
                             f"{mask_id + 1}")
        rows = max(cfg["teacher"]["batch_size"], cfg["distill"]["batch_size"] if "distill" in cfg else 1)
        blocks = synthetic_blocks(cfg, rows)
    else:
        tokenizer = data.load_pretrained_tokenizer(str(tokenizer_dir))
        model = build_teacher(cfg, len(tokenizer) + 1, teacher_dir, device)
        mask_id = mask_id_of(model, tokenizer, teacher_dir, tokenizer_dir)
        blocks = data.load_blocks(Path(tokens_dir) / "train.npy")
    if blocks.shape[1] != model.config.seq_len:
        source = Path(tokens_dir) / "train.npy" if tokens_dir else "synthetic tokens"
        raise ValueError(f"{source} has blocks of {blocks.shape[1]} tokens, the model {model.config.seq_len}")
    sections = sections or ["teacher"] + (["distill", "speedup"] if "distill" in cfg else []) + (
        ["baseline"] if baseline_dir else []) + (["distill_cost"] if judge_dir and tokens_dir is not None else [])
    ctx = {"model": model, "mask_id": mask_id, "blocks": blocks, "teacher_dir": str(teacher_dir) if teacher_dir
           else None, "nfe": nfe or [8, model.config.seq_len], "warmup_steps": warmup_steps,
           "timed_steps": timed_steps, "student_dir": str(student_dir) if student_dir else None,
           "discriminator_dir": str(discriminator_dir) if discriminator_dir else None, "peak_tflops": peak,
           "baseline_dir": baseline_dir, "judge_dir": str(judge_dir) if judge_dir else None,
           "tokenizer_dir": str(tokenizer_dir) if tokenizer_dir else None, "out_dir": out_dir, "cost": cost_options}
    results = {"machine": machine(), "tokens": "synthetic" if tokens_dir is None else str(tokens_dir)}
    for name in sections:
        results[name] = SECTIONS[name](cfg, ctx)
        io.write_metrics(out_dir / f"{name}.json", {"machine": results["machine"], "tokens": results["tokens"],
                                                    **results[name]}, cfg)
    io.write_metrics(out_dir / "bench.json", results, cfg)
    log.info("benchmarks on %s (%s tokens) -> %s", results["machine"]["device_name"], results["tokens"], out_dir)
    return results


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    config.add_arguments(p)
    p.add_argument("--tokens", default=None, help="directory with train.npy (required without --synthetic-tokens)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (required without --synthetic-tokens)")
    p.add_argument("--synthetic-tokens", action="store_true",
                   help="uniform random ids of tokenizer.vocab_size and data.seq_len: no dataset, no tokenizer")
    p.add_argument("--teacher", default=None, help="trained teacher directory (default: a fresh DiT of config size)")
    p.add_argument("--student", default=None, help="distilled student directory for the speedup section")
    p.add_argument("--discriminator", default=None, help="discriminator directory for the RGAS overhead")
    p.add_argument("--baseline", default=None, help="AR baseline directory (baseline.json) for the baseline section")
    p.add_argument("--judge", default=None, help="judge directory (judge.json) for the distill_cost section")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=None)
    p.add_argument("--nfe", type=int, nargs="+", default=None, help="sampler NFEs to time (default: 8 and L)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: known GPUs)")
    p.add_argument("--teacher-batch", type=int, default=None,
                   help="rows per timed training step (default: per_gpu_batch, what one GPU of the training job "
                        "takes)")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--timed-steps", type=int, default=10)
    from didi import cost

    cost.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from didi import cost

    cfg = config.from_args(args)
    if args.synthetic_tokens == bool(args.tokens or args.tokenizer):
        raise SystemExit("didi bench: give --tokens and --tokenizer, or --synthetic-tokens (not both)")
    if not args.synthetic_tokens and not (args.tokens and args.tokenizer):
        raise SystemExit("didi bench: --tokens and --tokenizer go together")
    cfg = {**cfg, "teacher": {**cfg["teacher"], "batch_size": args.teacher_batch or per_gpu_batch(cfg)}}
    run_bench(cfg, args.tokens, args.tokenizer, args.out_dir, args.teacher, args.sections, args.nfe,
              args.warmup_steps, args.timed_steps, args.student, args.discriminator, args.peak_tflops,
              args.baseline, args.judge, cost.options_from_args(args))
    return 0


COMMANDS = {"bench": (add_arguments, run)}
