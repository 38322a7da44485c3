"""The autoregressive GPT-2 baseline the paper compares against: train it (`didi train-baseline`) and sample it
(`didi sample-baseline`); the `baseline` section of `didi bench` (didi/bench.py) times it against the teacher and
the student.

    didi train-baseline --tokens results/tokens --tokenizer results/tokenizer --out-dir results/baseline
    didi sample-baseline --baseline results/baseline --tokenizer results/tokenizer --temperature 1.0 \
        --out results/samples/gpt2/ar_float32_nfe63_T1.00

Training (`baseline.pretrained: null`): a `transformers.GPT2LMHeadModel` of the teacher's size (width model.hidden,
model.layers blocks, model.heads heads, context data.seq_len = L, dropout model.dropout) on the teacher's token
blocks (tokens/train.npy, BOS ... EOS; the [MASK] id is never used), with an untied output layer as the teacher's,
for the teacher's number of training tokens (teacher.steps x teacher.batch_size x L) with the teacher's recipe
(`train.recipe`, `train.new_optimizer`): AdamW (lr, betas, adam_eps, weight_decay), linear warm-up then constant,
grad_clip, and an EMA of the weights (teacher.ema) that is what gets saved and sampled, as the teacher's EMA is.
The loop is the trainers' (`runtime.train`), the batches the teacher's (`runtime.BlockSampler`): a run killed after
a checkpoint resumes and repeats exactly the uninterrupted run. Its seeds derive from (seed, BASELINE_SEED_STREAM),
apart from the teacher's and the judge's. Writes <out-dir>/model (safetensors + our tokenizer) and
<out-dir>/baseline.json (pointer + held-out perplexity, with provenance).

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
import dataclasses
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


def resume_identity(cfg: dict, n_train_blocks: int) -> dict:
    """What a checkpoint must share with this run to be resumed: stages.STEPS["train_baseline"]'s keys (not
    teacher.steps, nor logging/eval cadence, nor the teacher's DiT-only keys, which the baseline does not read), the
    number of training blocks and the code the baseline's training runs."""
    return runtime.step_identity("train_baseline", cfg, train_blocks=n_train_blocks)


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
    info = runtime.start_process()  # one process: the loss has no DDP
    device = info.device
    tokenizer = data.load_pretrained_tokenizer(str(tokenizer_dir))
    special = data.special_ids(tokenizer)
    seq_len = cfg["data"]["seq_len"]
    train_blocks, val_blocks = data.load_token_blocks(tokens_dir, seq_len)
    seed = runtime.seed(cfg["seed"], BASELINE_SEED_STREAM)

    torch.manual_seed(runtime.seed(seed, runtime.INIT))
    # untied output layer, as the teacher's DiT (and checkpoints are plain safetensors, which refuse shared tensors)
    model = judge.new_gpt2(len(tokenizer), special, seq_len, m["hidden"], m["layers"], m["heads"], m["dropout"],
                           tie_embeddings=False).to(device)
    optimizer = train.new_optimizer(model, t)  # the teacher's AdamW
    sampler = runtime.BlockSampler(len(train_blocks), t["batch_size"], seed)

    def loss_at(step: int) -> torch.Tensor:
        x = runtime.to_tensor(train_blocks[sampler.indices(step)], device)
        torch.manual_seed(runtime.seed(seed, runtime.DROPOUT, step))  # dropout masks: a function of the step
        return model(input_ids=x, labels=x).loss

    log.info("AR baseline: GPT-2 %.2fM parameters, vocab %d, L %d, %d train blocks, batch %d, %d steps (%d tokens, "
             "the teacher's), device %s", sum(p.numel() for p in model.parameters()) / 1e6, len(tokenizer), seq_len,
             len(train_blocks), t["batch_size"], t["steps"], t["steps"] * t["batch_size"] * seq_len, device)
    # the teacher's recipe; its logged loss summed in float64, as the baseline's curves always were
    recipe = dataclasses.replace(train.recipe(cfg), curve_dtype=torch.float64)
    trained = runtime.train(model, optimizer, loss_at, recipe, out_dir, resume_identity(cfg, len(train_blocks)),
                            info, desc="baseline", logger=log, max_steps=max_steps)
    if not trained.finished:
        return None

    ema_model = trained.ema
    val_blocks = val_blocks[: t["eval_batches"] * t["batch_size"]]
    ppl, tokens = judge.heldout_perplexity(ema_model, val_blocks, t["batch_size"], t["eval_batches"], special["pad"],
                                           device)
    raw_ppl, _ = judge.heldout_perplexity(model, val_blocks, t["batch_size"], t["eval_batches"], special["pad"],
                                          device)
    log.info("AR baseline: held-out perplexity %.2f (EMA, saved) / %.2f (raw) over %d tokens", ppl, raw_ppl, tokens)
    judge.save_lm(out_dir, ema_model, tokenizer)
    result = {
        "path": "model", "tokenizer": "model", "trained": True, "weights": "ema",  # relative to the baseline dir
        "heldout_ppl": ppl, "heldout_nats": math.log(ppl), "heldout_ppl_raw": raw_ppl, "heldout_tokens": tokens,
        "steps": trained.step, "tokens_seen": trained.step * t["batch_size"] * seq_len, "seq_len": seq_len,
        "wall_clock_s": trained.history["wall_clock_s"], "tokens_per_s": trained.tokens_per_s,
        "resumed_from_step": trained.resumed_from_step,
        "loss_curve": trained.history["loss_curve"], "parameters": sum(p.numel() for p in model.parameters()),
        "vocab": len(tokenizer), "seed": seed, "device": str(device),
    }
    io.write_metrics(out_dir / INFO, result, cfg)
    return result


def prepare_pretrained_baseline(cfg: dict, tokens_dir: str | Path, out_dir: str | Path) -> dict:
    """`baseline.pretrained` (hub name or local directory): point baseline.json at it, record held-out perplexity."""
    name = cfg["baseline"]["pretrained"]
    device = io.default_device()
    pointer, model, _, context = judge.pretrained_lm(name, device)
    pointer["weights"] = "pretrained"
    seq_len = cfg["data"]["seq_len"]
    if context < seq_len:
        raise config_mod.ConfigError(f"baseline.pretrained {name}: context {context} < data.seq_len {seq_len}")
    _, val_blocks = data.load_token_blocks(tokens_dir, seq_len)
    check_vocab(model, val_blocks, f"{tokens_dir}/validation.npy")
    t = cfg["teacher"]
    ppl, tokens = judge.heldout_perplexity(model, val_blocks, t["batch_size"], t["eval_batches"], None, device)
    log.info("AR baseline %s: held-out perplexity %.2f over %d tokens", name, ppl, tokens)
    result = {**pointer, "heldout_ppl": ppl, "heldout_nats": math.log(ppl), "heldout_tokens": tokens,
              "seq_len": seq_len, "parameters": sum(p.numel() for p in model.parameters())}
    io.write_metrics(Path(out_dir) / INFO, result, cfg)  # the judge's pointer format: judge.load_judge reads it
    return result


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
