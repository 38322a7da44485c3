"""The autoregressive GPT-2 baseline the paper compares against: train it (`didi train-baseline`), sample it
(`didi sample-baseline`), and time it against the teacher and the student (the `baseline` section of `didi bench`).

    didi train-baseline --tokens results/tokens --tokenizer results/tokenizer --out-dir results/baseline
    didi sample-baseline --baseline results/baseline --tokenizer results/tokenizer --temperature 1.0 \
        --out results/samples/gpt2/ar_float32_nfe63_T1.00

Training (`baseline.pretrained: null`): a `transformers.GPT2LMHeadModel` of the teacher's size (width model.hidden,
model.layers blocks, model.heads heads, context data.seq_len = L, dropout model.dropout) on the teacher's token
blocks (tokens/train.npy, BOS ... EOS; the [MASK] id is never used), with an untied output layer as the teacher's,
for the teacher's number of training tokens (teacher.steps x teacher.batch_size x L) with the teacher's recipe: AdamW (lr, betas, adam_eps, weight_decay),
linear warm-up then constant, grad_clip, and an EMA of the weights (teacher.ema) that is what gets saved and
sampled, as the teacher's EMA is. The step is the judge's (`judge.lm_step`); the batches, EMA and checkpoints are
the teacher's (`didi.train`, `didi.runtime`): a run killed after a checkpoint resumes and repeats exactly the
uninterrupted run. Its seeds derive from (seed, BASELINE_SEED_STREAM), apart from the teacher's and the judge's. Writes <out-dir>/model
(safetensors + our tokenizer) and <out-dir>/baseline.json (pointer + held-out perplexity, with provenance).

`baseline.pretrained` set (paper scale: "gpt2", or a local directory): nothing is trained; baseline.json points at
it (read back by `judge.load_judge`, the judge's loader) and records its held-out perplexity on our blocks.

Sampling: ancestral, from BOS, with the KV cache: `generate(do_sample=True, top_k=0, top_p=1.0, temperature=T)`,
which in transformers 5 adds no top-k (top_k=0 is skipped) nor top-p (only < 1 is applied) warper, takes the
logits in float32, softmaxes them in float32 and draws with `torch.multinomial` from torch's global generator
(seeded per file here). EOS does not stop a row: blocks run on past document boundaries, as the training data and
the diffusion samples do. NFE = network calls = generated tokens = L - 1 (the prompt's BOS is the first token).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from didi import config as config_mod
from didi import data, io, judge, runtime, train
from didi.sample import file_seed, run_record, write_samples

log = logging.getLogger("didi.baseline")

BASELINE_SEED_STREAM = 11   # (seed, 11) seeds the baseline's init, batch order and dropout: not the teacher's
MODEL, SAMPLER, PRECISION = "gpt2", "ar", "float32"   # the results-table identity of its samples
INFO = "baseline.json"


def nfe(seq_len: int) -> int:
    """Network calls of one AR sample of L tokens: one per generated token after the BOS prompt."""
    return seq_len - 1


def load_token_blocks(tokens_dir: str | Path, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for split in ("train", "validation"):
        blocks = data.load_blocks(Path(tokens_dir) / f"{split}.npy")
        if blocks.shape[1] != seq_len:
            raise ValueError(f"{tokens_dir}/{split}.npy has blocks of {blocks.shape[1]} tokens, config data.seq_len "
                             f"is {seq_len}")
        out.append(blocks)
    return out[0], out[1]


def resume_identity(cfg: dict, n_train_blocks: int) -> dict:
    """What a checkpoint must share with this run to be resumed (not teacher.steps, nor logging/eval cadence)."""
    cadence = {"steps", "log_every", "eval_every", "eval_batches", "checkpoint_every", "compile", "init_from"}
    return runtime.identity(config={
        "seed": cfg["seed"], "stream": BASELINE_SEED_STREAM, "seq_len": cfg["data"]["seq_len"], "model": cfg["model"],
        "teacher": {k: v for k, v in cfg["teacher"].items() if k not in cadence}}, train_blocks=n_train_blocks)


def check_vocab(model, blocks: np.ndarray, where: str) -> None:
    if blocks.size and int(blocks.max()) >= model.config.vocab_size:
        raise ValueError(f"{where}: token id {int(blocks.max())} is outside the baseline's vocabulary of "
                         f"{model.config.vocab_size} (was it made with another tokenizer?)")


# ---------------------------------------------------------------------------------------------- training
def train_baseline(cfg: dict, tokens_dir: str | Path, tokenizer_dir: str | Path, out_dir: str | Path,
                   max_steps: int | None = None) -> dict | None:
    """Train (or resume) the AR baseline; write out_dir/{model, baseline.json}. `max_steps` stops after that many
    steps without writing the final outputs (as a kill would). Returns baseline.json's content when done."""
    t, m = cfg["teacher"], cfg["model"]
    out_dir = Path(out_dir)
    ckpt_root = out_dir / "checkpoints"
    info = runtime.start_process()  # one process: the step has no DDP
    device = info.device
    tokenizer = data.load_pretrained_tokenizer(str(tokenizer_dir))
    special = data.special_ids(tokenizer)
    seq_len = cfg["data"]["seq_len"]
    train_blocks, val_blocks = load_token_blocks(tokens_dir, seq_len)
    seed = runtime.seed(cfg["seed"], BASELINE_SEED_STREAM)

    torch.manual_seed(runtime.seed(seed, train.INIT))
    # untied output layer, as the teacher's DiT (and checkpoints are plain safetensors, which refuse shared tensors)
    model = judge.new_gpt2(len(tokenizer), special, seq_len, m["hidden"], m["layers"], m["heads"], m["dropout"],
                           tie_embeddings=False).to(device)
    ema_model = copy.deepcopy(model).requires_grad_(False)
    optimizer = train.new_optimizer(model, t)  # the teacher's AdamW

    step, history = 0, {"loss_curve": [], "wall_clock_s": 0.0}
    identity = resume_identity(cfg, len(train_blocks))
    modules = {"model": model, "ema": ema_model}
    resumed = runtime.resume(ckpt_root, identity, modules, device, info, max_step=t["steps"])
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        step, history = int(resumed["step"]), resumed["history"]

    log.info("AR baseline: GPT-2 %.2fM parameters, vocab %d, L %d, %d train blocks, batch %d, %d steps (%d tokens, "
             "the teacher's), device %s", sum(p.numel() for p in model.parameters()) / 1e6, len(tokenizer), seq_len,
             len(train_blocks), t["batch_size"], t["steps"], t["steps"] * t["batch_size"] * seq_len, device)
    sampler = train.BlockSampler(len(train_blocks), t["batch_size"], seed)
    stop = t["steps"] if max_steps is None else min(t["steps"], max_steps)
    progress = io.Progress(total=t["steps"], every=t["log_every"], desc="baseline", unit="step", start=step,
                           logger=log)
    start_step, t_start = step, time.perf_counter()
    window_loss, window_steps = 0.0, 0
    model.train()
    while step < stop:
        x = train.to_tensor(train_blocks[sampler.indices(step)], device)
        torch.manual_seed(runtime.seed(seed, train.DROPOUT, step))  # dropout masks: a function of the step
        lr = runtime.warmup_lr(step, t["lr"], t["warmup_steps"])
        loss = judge.lm_step(model, optimizer, x, lr, t["grad_clip"])
        runtime.ema_update(ema_model, model, t["ema"], step, warmup=True)
        step += 1
        window_loss, window_steps = window_loss + float(loss), window_steps + 1
        if step % t["log_every"] == 0 or step == t["steps"]:
            history["loss_curve"].append((step, window_loss / window_steps))
            progress.update(step, force=True, loss=window_loss / window_steps, lr=lr)
            window_loss, window_steps = 0.0, 0
        if step % t["checkpoint_every"] == 0 and step < t["steps"]:
            seconds = history["wall_clock_s"] + time.perf_counter() - t_start
            runtime.save_checkpoint(ckpt_root, step, modules, {"optimizer": optimizer.state_dict(),
                                    "history": {**history, "wall_clock_s": seconds}}, identity)
    session_seconds = time.perf_counter() - t_start
    if step < t["steps"]:
        return None

    val_blocks = val_blocks[: t["eval_batches"] * t["batch_size"]]
    ppl, tokens = judge.heldout_perplexity(ema_model, val_blocks, t["batch_size"], t["eval_batches"], special["pad"],
                                           device)
    raw_ppl, _ = judge.heldout_perplexity(model, val_blocks, t["batch_size"], t["eval_batches"], special["pad"],
                                          device)
    log.info("AR baseline: held-out perplexity %.2f (EMA, saved) / %.2f (raw) over %d tokens", ppl, raw_ppl, tokens)
    with io.atomic_dir(out_dir / "model") as tmp:
        ema_model.cpu().save_pretrained(str(tmp))  # safetensors
        tokenizer.save_pretrained(str(tmp))
    steps_this_run = step - start_step
    info = {
        "path": "model", "tokenizer": "model", "trained": True, "weights": "ema",  # relative to the baseline dir
        "heldout_ppl": ppl, "heldout_nats": math.log(ppl), "heldout_ppl_raw": raw_ppl, "heldout_tokens": tokens,
        "steps": step, "tokens_seen": step * t["batch_size"] * seq_len, "seq_len": seq_len,
        "wall_clock_s": history["wall_clock_s"] + session_seconds,
        "tokens_per_s": steps_this_run * t["batch_size"] * seq_len / session_seconds if steps_this_run else None,
        "loss_curve": history["loss_curve"], "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": len(tokenizer), "seed": seed, "device": str(device),
    }
    io.write_metrics(out_dir / INFO, info, cfg)
    return info


def prepare_pretrained_baseline(cfg: dict, tokens_dir: str | Path, out_dir: str | Path) -> dict:
    """`baseline.pretrained` (hub name or local directory): point baseline.json at it, record held-out perplexity."""
    name = cfg["baseline"]["pretrained"]
    local = Path(name).expanduser()
    path = str(local.resolve()) if local.is_dir() else name  # absolute, so the pointer survives a change of cwd
    out_dir = Path(out_dir)
    pointer = {"path": path, "tokenizer": path, "trained": False, "weights": "pretrained"}
    io.write_json(out_dir / INFO, pointer)  # read back through the judge's loader, as the sampler will
    model, _, _ = judge.load_judge(out_dir, INFO)
    device = io.default_device()
    seq_len = cfg["data"]["seq_len"]
    context = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
    if context < seq_len:
        raise config_mod.ConfigError(f"baseline.pretrained {name}: context {context} < data.seq_len {seq_len}")
    _, val_blocks = load_token_blocks(tokens_dir, seq_len)
    check_vocab(model, val_blocks, f"{tokens_dir}/validation.npy")
    t = cfg["teacher"]
    ppl, tokens = judge.heldout_perplexity(model.to(device), val_blocks, t["batch_size"], t["eval_batches"], None,
                                           device)
    log.info("AR baseline %s: held-out perplexity %.2f over %d tokens", name, ppl, tokens)
    info = {**pointer, "heldout_ppl": ppl, "heldout_nats": math.log(ppl), "heldout_tokens": tokens,
            "seq_len": seq_len, "parameters": sum(p.numel() for p in model.parameters())}
    io.write_metrics(out_dir / INFO, info, cfg)
    return info


# ---------------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def generate(model, num_samples: int, seq_len: int, bos_id: int, temperature: float) -> tuple[torch.Tensor, int]:
    """(ids [num_samples, seq_len] starting with BOS, network calls) by ancestral sampling with the KV cache; the
    draws come from torch's global generator (seed it). See the module docstring for what `generate` does."""
    device = next(model.parameters()).device
    model.eval()
    model.generation_config.eos_token_id = None  # a sampled EOS is a document boundary, not the end of the block
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        prompt = torch.full((num_samples, 1), bos_id, dtype=torch.long, device=device)
        ids = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=0, top_p=1.0,
                             temperature=float(temperature), max_new_tokens=seq_len - 1, use_cache=True,
                             pad_token_id=model.config.pad_token_id)
    finally:
        hook.remove()
    if ids.shape != (num_samples, seq_len):
        raise RuntimeError(f"generate returned {tuple(ids.shape)}, expected {(num_samples, seq_len)}")
    return ids, len(calls)


def sample_to_files(cfg: dict, baseline_dir: str | Path, tokenizer_dir: str | Path, out_stem: str | Path,
                    temperature: float, num_samples: int) -> dict:
    """AR samples in the diffusion samplers' format: <out_stem>.{npy,jsonl,json}. Returns the metadata."""
    out_stem = Path(out_stem)
    device = io.default_device()
    tokenizer = data.load_pretrained_tokenizer(str(tokenizer_dir))
    special = data.special_ids(tokenizer)
    model, _, info = judge.load_judge(baseline_dir, INFO)
    model.to(device)
    seq_len = cfg["data"]["seq_len"]
    if model.config.vocab_size > len(tokenizer):
        raise ValueError(f"{baseline_dir}: vocabulary {model.config.vocab_size} > len(tokenizer) {len(tokenizer)} "
                         f"of {tokenizer_dir}: it could sample ids the tokenizer cannot decode")
    seed = file_seed(cfg["seed"], out_stem)
    torch.manual_seed(seed)  # generate draws from the global generator
    batch_size = cfg["sampling"]["batch_size"]
    log.info("sampling %d x %d tokens from the AR baseline %s at T=%g (KV cache), seed %d", num_samples, seq_len,
             baseline_dir, temperature, seed)
    ids, network_calls, seconds = [], 0, 0.0
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        t0 = time.perf_counter()
        batch, calls = generate(model, n, seq_len, special["bos"], temperature)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - t0
        ids.append(batch.cpu())
        network_calls += calls
    ids = torch.cat(ids).numpy()
    texts = data.decode(tokenizer, ids)
    meta = {
        "model_dir": str(baseline_dir),
        "weights": info.get("weights", "ema"),
        "sampler": SAMPLER,
        "precision": PRECISION,  # float32 logits -> float32 softmax -> torch.multinomial (README)
        "temperature": float(temperature),
        "nfe": nfe(seq_len),
        "disc_forward_calls": 0,
        "disc_backward_calls": 0,
        "cache": True,
        **run_record(num_samples, batch_size, seq_len, network_calls, seconds, seed, device),
    }
    write_samples(out_stem, ids.astype(data.token_dtype(special["mask"] + 1)), texts, meta, cfg)
    log.info("%d samples in %.2f s (%.4g tokens/s, %d network calls) -> %s.{npy,jsonl,json}", num_samples, seconds,
             meta["tokens_per_s"], network_calls, out_stem)
    return meta


# ---------------------------------------------------------------------------------------------- benchmark
def bench_generate(model, num_samples: int, seq_len: int, bos_id: int) -> dict:
    """Wall-clock of AR sampling of `num_samples` x L tokens with the KV cache, after a short warm-up."""
    from didi.bench import synchronize

    device = next(model.parameters()).device
    generate(model, num_samples, 3, bos_id, 1.0)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    _, calls = generate(model, num_samples, seq_len, bos_id, 1.0)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"nfe": nfe(seq_len), "network_calls": calls, "seconds": seconds, "samples_per_s": num_samples / seconds,
            "tokens_per_s": num_samples * seq_len / seconds, "num_samples": num_samples, "cache": True}


def bench_baseline(cfg: dict, ctx: dict) -> dict:
    """`didi bench` section: the AR baseline (KV cache) against the teacher at NFE = L and the student at each
    distill.nfe, in this one run on this device; speed-ups as ratios of samples/s (= ratios of tokens/s)."""
    from didi.bench import bench_sampler
    from didi.model import load_dit

    teacher, mask_id, n = ctx["model"], ctx["mask_id"], cfg["sampling"]["batch_size"]
    device = next(teacher.parameters()).device
    seq_len = teacher.config.seq_len
    student = load_dit(ctx["student_dir"], device)[0] if ctx.get("student_dir") else teacher
    model, _, _ = judge.load_judge(ctx["baseline_dir"], INFO)
    model.to(device)
    torch.manual_seed(cfg["seed"])
    ar = bench_generate(model, n, seq_len, model.config.bos_token_id)
    teacher_full = bench_sampler(cfg, teacher, mask_id, seq_len, n)
    teacher_full["samples_per_s"] = n / teacher_full["seconds"]
    log.info("AR baseline: %.4g samples/s, %.4g tokens/s; teacher at NFE %d: %.4g samples/s (AR %.3gx the teacher)",
             ar["samples_per_s"], ar["tokens_per_s"], seq_len, teacher_full["samples_per_s"],
             ar["samples_per_s"] / teacher_full["samples_per_s"])
    rows = []
    for k in cfg.get("distill", {}).get("nfe", []):
        s = bench_sampler(cfg, student, mask_id, k, n)
        s["samples_per_s"] = n / s["seconds"]
        rows.append({"nfe": k, "student": s, "speedup_vs_baseline": s["samples_per_s"] / ar["samples_per_s"],
                     "speedup_vs_teacher_full": s["samples_per_s"] / teacher_full["samples_per_s"]})
        log.info("student NFE %d: %.4g samples/s = %.3gx the AR baseline, %.3gx the teacher at NFE %d", k,
                 s["samples_per_s"], rows[-1]["speedup_vs_baseline"], rows[-1]["speedup_vs_teacher_full"], seq_len)
    return {"baseline": ar, "baseline_dir": str(ctx["baseline_dir"]), "teacher_full_nfe": teacher_full,
            "baseline_vs_teacher_full": ar["samples_per_s"] / teacher_full["samples_per_s"], "student": rows,
            "student_dir": ctx.get("student_dir")}


# ---------------------------------------------------------------------------------------------- CLI
def _train_args(p: argparse.ArgumentParser) -> None:
    config_mod.add_arguments(p)
    p.add_argument("--tokens", required=True, help="directory with train.npy and validation.npy (`didi tokenize`)")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("--out-dir", required=True, help="writes baseline.json (+ model/ and checkpoints/ when trained)")


def _train_run(args: argparse.Namespace) -> None:
    from transformers.utils import logging as hf_logging

    cfg = config_mod.from_args(args)
    hf_logging.disable_progress_bar()
    if cfg["baseline"]["pretrained"]:
        prepare_pretrained_baseline(cfg, args.tokens, args.out_dir)
    else:
        train_baseline(cfg, args.tokens, args.tokenizer, args.out_dir)


def _sample_args(p: argparse.ArgumentParser) -> None:
    config_mod.add_arguments(p)
    p.add_argument("--baseline", required=True, help="directory with baseline.json (`didi train-baseline`)")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--num-samples", type=int, default=None, help="default: sampling.num_samples")
    p.add_argument("--out", required=True, help="output stem: writes STEM.npy, STEM.jsonl and STEM.json")


def _sample_run(args: argparse.Namespace) -> None:
    cfg = config_mod.from_args(args)
    sample_to_files(cfg, args.baseline, args.tokenizer, args.out, args.temperature,
                    args.num_samples or cfg["sampling"]["num_samples"])


COMMANDS = {"train-baseline": (_train_args, _train_run), "sample-baseline": (_sample_args, _sample_run)}
