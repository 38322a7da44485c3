"""`python -m didi.gpucheck` (what scripts/gpu_check.sh runs): one prepared pass over every GPU code path, for the
day a GPU is lent. Each part runs a fixed number of steps (never a duration); at paper size on one H200 the whole
pass took 5 minutes (docs/benchmarks.md, "The GPU check"):

  teacher_train             the teacher's training step: tokens/s and MFU, bf16 autocast per config (bench_training)
  sampler_nfe{16,L}_{prec}  the ancestral sampler at NFE 16 and NFE = L, float64 and float32 (bench_sampler)
  distill                   DiDi-Instruct iterations/s (bench_distill), under bf16 autocast when distill.bf16
  distill_float32           the same in float32, when distill.bf16 is on (the ratio of the two, in one run)
  rgas_nfe16                RGAS against plain ancestral sampling at NFE 16 (rgas_overhead)
  nccl                      a one-rank NCCL all-reduce (the backend itself; see torchrun_*)
  torchrun_teacher          the real `didi train-teacher` under torchrun (one process) on a tiny config and a tiny
  torchrun_distill          dataset written to a temp dir; then `didi distill --variant full` on that teacher
  teacher_train_compile     teacher_train with teacher.compile (last: compiling takes the longest)

Every part reads synthetic tokens (bench.synthetic_blocks), so nothing is downloaded: no dataset, no tokenizer, no
judge. Each records its peak CUDA memory (reset before it) and wall time; a part that fails records its error and
the others still run; the JSON is rewritten after every part, so a run cut short keeps what it measured.
Without CUDA it runs at the config.yaml size (or --configfile) and the CUDA-only parts say "skipped": "no CUDA";
that is how CI exercises it (tests/test_bench.py).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from didi import bench, config, data, io

log = logging.getLogger("didi.gpucheck")

PAPER_CONFIG = [config.DEFAULT_CONFIG, config.REPO_ROOT / "presets" / "paper.yaml"]
NO_CUDA = {"skipped": "no CUDA"}


# ---------------------------------------------------------------------------------------------- running parts
def run_part(name: str, part, results: dict) -> dict:
    """results["parts"][name] = part() plus its wall time and peak CUDA memory; an exception becomes "error"."""
    cuda = torch.cuda.is_available()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    log.info("part %s", name)
    start = time.perf_counter()
    try:
        result = part()
    except Exception as err:  # noqa: BLE001 - one failing part must not stop the check
        log.exception("part %s failed", name)
        result = {"error": f"{type(err).__name__}: {err}"}
    result["wall_s"] = time.perf_counter() - start
    if "skipped" not in result and "peak_memory_gib" not in result:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    results["parts"][name] = result
    return result


def headline(result: dict) -> str:
    """The one number of a part worth a glance."""
    if "error" in result:
        return "ERROR " + result["error"][:70]
    if "skipped" in result:
        return "skipped: " + result["skipped"]
    if "mfu" in result:
        mfu = f"MFU {result['mfu']:.1%}" if result["mfu"] is not None else "MFU n/a (no peak known)"
        return f"{result['tokens_per_s']:,.0f} tokens/s, {mfu}"
    if "rgas_overhead" in result:
        return f"RGAS {result['rgas_overhead']:.2f}x plain sampling"
    if "iterations_per_s" in result:
        return f"{result['iterations_per_s']:.3g} iterations/s"
    if "tokens_per_s" in result:
        return f"{result['tokens_per_s']:,.0f} tokens/s ({result['network_calls']} network calls)"
    return result.get("summary", "ok")


def table(results: dict) -> str:
    lines = [f"gpu check on {results['machine']['device_name']} ({results['size']['parameters'] / 1e6:.1f}M "
             f"parameters, L = {results['size']['seq_len']}, vocab {results['size']['vocab']}, synthetic tokens)",
             f"{'part':<24} {'result':<60} {'peak GiB':>9} {'s':>7}"]
    for name, r in results["parts"].items():
        peak = r.get("peak_memory_gib")
        lines.append(f"{name:<24} {headline(r):<60} {'-' if peak is None else f'{peak:.2f}':>9} {r['wall_s']:7.1f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- torchrun smoke
def tiny_dataset(root: Path, seed: int, seq_len: int) -> int:
    """A byte-level BPE trained on seeded random words and [N, L] blocks of uniform ids in root/{tokenizer,tokens};
    returns len(tokenizer)."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(list("abcdefghij"), size=rng.integers(2, 7))) for _ in range(3000)]
    tokenizer = data.train_bpe([" ".join(words[i:i + 30]) for i in range(0, len(words), 30)], 300, 2)
    tokenizer.save_pretrained(str(root / "tokenizer"))
    (root / "tokens").mkdir()
    for split, rows in (("train", 64), ("validation", 16)):
        ids = rng.integers(0, len(tokenizer), size=(rows, seq_len)).astype(data.token_dtype(len(tokenizer) + 1))
        np.save(root / "tokens" / f"{split}.npy", ids)
    return len(tokenizer)


def tiny_config(checked: dict, vocab: int) -> dict:
    """config.yaml shrunk to seconds per command (what the torchrun smoke trains), with the checked config's seed,
    precision switches (teacher.bf16, distill.bf16) and teacher.compile, so the children run the same CUDA paths
    (torch.compile under DDP included)."""
    cfg = config.load()
    cfg["seed"] = checked["seed"]
    cfg["teacher"]["bf16"] = checked["teacher"]["bf16"]
    cfg["teacher"]["compile"] = checked["teacher"]["compile"]
    if "bf16" in checked["distill"]:
        cfg["distill"]["bf16"] = checked["distill"]["bf16"]
    cfg["tokenizer"]["vocab_size"] = vocab
    cfg["data"]["seq_len"] = 32
    cfg["model"].update(hidden=64, layers=2, heads=2, cond_dim=32, dropout=0.0)
    cfg["teacher"].update(steps=4, batch_size=4, warmup_steps=1, eval_every=4, eval_batches=1, checkpoint_every=4,
                          log_every=1)
    cfg["distill"].update(iterations=2, batch_size=2, group_size=2, warmup_steps=1, log_every=1, checkpoint_every=2,
                          discriminator_trainable_blocks=1)
    return config.validate(cfg)


def torchrun(command: list[str], out_dir: Path, timeout_s: int = 300) -> dict:
    """`didi <command>` under torchrun with one process; its metrics.json (world size, device) or its log tail."""
    paths = [str(config.REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]  # the same didi as this process
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "didi",
            *command, "--out-dir", str(out_dir)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun didi {command[0]} exited {proc.returncode}: {proc.stderr[-1500:]}")
    metrics = io.read_json(out_dir / "metrics.json")
    return {"world_size": metrics["world_size"], "device": metrics.get("device"),
            "process_group": "none at world size 1 (didi.distributed.init); the nccl part checks the backend",
            "peak_memory_gib": None, "peak_memory_note": "in the torchrun child, not measured",
            "summary": f"ok: world size {metrics['world_size']}"}


# ---------------------------------------------------------------------------------------------- the check
def gpu_check(cfg: dict, out: Path, config_files: list[str], warmup_steps: int, timed_steps: int,
              distill_iterations: int, teacher_batch: int, sample_batch: int, peak: float | None,
              only: list[str] | None = None) -> dict:
    """Runs every part (only: those named, in the table's order) and writes `out` after each."""
    cuda = torch.cuda.is_available()
    device = io.default_device()
    cfg = copy.deepcopy(cfg)
    cfg["teacher"]["batch_size"] = teacher_batch  # one device: the per-GPU batch, not the global one
    mask_id = cfg["tokenizer"]["vocab_size"]  # [MASK] = len(tokenizer)
    model = bench.build_teacher(cfg, mask_id + 1, None, device)
    blocks = bench.synthetic_blocks(cfg, max(teacher_batch, cfg["distill"]["batch_size"]))
    seq_len = model.config.seq_len
    results = {"machine": bench.machine(), "tokens": "synthetic", "config": config_files, "cuda": cuda,
               "size": {"parameters": sum(p.numel() for p in model.parameters()), "seq_len": seq_len,
                        "vocab": model.config.vocab_size, "teacher_batch_per_gpu": teacher_batch,
                        "sample_batch": sample_batch, "distill_rows": cfg["distill"]["batch_size"]
                        * cfg["distill"]["group_size"]},
               "steps": {"warmup": warmup_steps, "timed": timed_steps, "distill_iterations": distill_iterations},
               "parts": {}}

    def with_teacher(**keys) -> dict:
        return {**cfg, "teacher": {**cfg["teacher"], **keys}}

    def with_precision(precision: str) -> dict:
        return {**cfg, "diffusion": {**cfg["diffusion"], "sampling_precision": precision}}

    def teacher_train(compile_: bool):
        if compile_ and not cuda:
            return dict(NO_CUDA)
        training = bench.bench_training(with_teacher(compile=compile_), model, blocks, mask_id, warmup_steps,
                                        timed_steps)
        return bench.add_mfu(training, model, peak)

    def sampler(nfe: int, precision: str):
        return lambda: bench.bench_sampler(with_precision(precision), model, mask_id, nfe, sample_batch)

    distill_bf16 = bool(cfg["distill"].get("bf16", False))  # absent: float32

    def distill_float32():
        if not cuda:
            return dict(NO_CUDA)
        if not distill_bf16:
            return {"skipped": "distill.bf16 is off: the distill part is float32"}
        return bench.bench_distill(model, blocks, mask_id, {**cfg, "distill": {**cfg["distill"], "bf16": False}},
                                   distill_iterations)

    def rgas():
        from didi.discriminator import Discriminator

        disc = Discriminator.from_teacher(model, cfg["distill"]["discriminator_trainable_blocks"]).to(device).eval()
        return bench.rgas_overhead(cfg, model, disc, mask_id, 16, sample_batch)

    def nccl():
        if not cuda:
            return dict(NO_CUDA)
        import torch.distributed as dist

        with tempfile.TemporaryDirectory() as tmp:
            dist.init_process_group("nccl", init_method=f"file://{tmp}/store", rank=0, world_size=1)
            try:
                x = torch.ones(1 << 20, device=device)
                dist.all_reduce(x)
                torch.cuda.synchronize(device)
                if not torch.equal(x, torch.ones_like(x)):
                    raise RuntimeError("one-rank all_reduce changed the tensor")
            finally:
                dist.destroy_process_group()
        return {"summary": f"all_reduce ok (NCCL {torch.cuda.nccl.version()})"}

    smoke_dir = Path(tempfile.mkdtemp(prefix="didi-gpucheck-"))
    smoke = {}

    def torchrun_teacher():
        smoke["cfg"] = tiny_config(cfg, tiny_dataset(smoke_dir, cfg["seed"], 32))
        smoke["json"] = json.dumps(smoke["cfg"])
        return torchrun(["train-teacher", "--config-json", smoke["json"], "--tokens", str(smoke_dir / "tokens"),
                         "--tokenizer", str(smoke_dir / "tokenizer")], smoke_dir / "teacher")

    def torchrun_distill():
        if "json" not in smoke:
            raise RuntimeError("no tiny teacher to distil: torchrun_teacher failed or did not run")
        return torchrun(["distill", "--config-json", smoke["json"], "--teacher", str(smoke_dir / "teacher" / "ema"),
                         "--tokens", str(smoke_dir / "tokens" / "train.npy"), "--tokenizer",
                         str(smoke_dir / "tokenizer"), "--variant", "full"], smoke_dir / "distill")

    parts = {
        "teacher_train": lambda: teacher_train(False),
        "sampler_nfe16_float64": sampler(16, "float64"),
        "sampler_nfe16_float32": sampler(16, "float32"),
        "distill": lambda: {**bench.bench_distill(model, blocks, mask_id, cfg, distill_iterations),
                            "bf16": distill_bf16 and cuda},
        "distill_float32": distill_float32,
        "rgas_nfe16": rgas,
        "nccl": nccl,
        "torchrun_teacher": torchrun_teacher,
        "torchrun_distill": torchrun_distill,
        f"sampler_nfe{seq_len}_float64": sampler(seq_len, "float64"),
        f"sampler_nfe{seq_len}_float32": sampler(seq_len, "float32"),
        "teacher_train_compile": lambda: teacher_train(True),
    }
    unknown = sorted(set(only or ()) - set(parts))
    if unknown:
        raise ValueError(f"--parts: unknown part(s) {', '.join(unknown)} (known: {', '.join(parts)})")
    for name, part in parts.items():
        if only and name not in only:
            continue
        run_part(name, part, results)
        io.write_metrics(out, results, cfg)  # after every part: a run cut short keeps what it measured
    shutil.rmtree(smoke_dir, ignore_errors=True)
    print(table(results), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m didi.gpucheck", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/gpu_check.json", help="the one JSON written")
    p.add_argument("--configfile", action="append", default=None,
                   help="YAML config(s), merged in order (default: config.yaml + presets/paper.yaml on CUDA, "
                        "config.yaml alone without)")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--timed-steps", type=int, default=10, help="teacher training steps timed (after the warm-up)")
    p.add_argument("--distill-iterations", type=int, default=5,
                   help="distillation iterations timed (after one warm-up; ~3-4 s each at paper size in float32)")
    p.add_argument("--teacher-batch", type=int, default=None,
                   help="teacher rows per step (default: bench.per_gpu_batch, 64 at paper size)")
    p.add_argument("--sample-batch", type=int, default=8,
                   help="samples per sampler call (8 keeps NFE = 1024 at paper size near a minute)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: known GPUs)")
    p.add_argument("--parts", default=None,
                   help="comma-separated parts to run, e.g. distill,torchrun_distill (default: all; torchrun_distill "
                        "needs torchrun_teacher)")
    args = p.parse_args(argv)
    io.setup_logging()
    files = args.configfile or [str(f) for f in (PAPER_CONFIG if torch.cuda.is_available()
                                                 else [config.DEFAULT_CONFIG])]
    cfg = config.load(files)
    gpu_check(cfg, Path(args.out), files, args.warmup_steps, args.timed_steps, args.distill_iterations,
              args.teacher_batch or bench.per_gpu_batch(cfg), args.sample_batch, args.peak_tflops,
              args.parts.split(",") if args.parts else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
