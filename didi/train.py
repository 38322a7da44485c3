"""`didi train-teacher`: pretrain the MDLM teacher (docs/method.md section 1). This file holds the teacher's model
(`new_teacher`), recipe and loss (`loss_function`); the loop is the one all trainers share, `runtime.train`.

    torchrun --standalone --nproc-per-node N -m didi.cli train-teacher --tokens results/tokens \
        --tokenizer results/tokenizer --out-dir results/teacher [--configfile ...]

Determinism is by construction, not by saved RNG state: the blocks of global batch `step`, the MDLM time/mask
noise of each of its rows and the dropout masks are all drawn from generators seeded by (seed, step), so
 - a run killed after a checkpoint and re-run (it resumes from the latest complete checkpoint) repeats exactly
   the steps an uninterrupted run would have taken (a checkpoint of another configuration or other code is not
   resumed: runtime.resume), and
 - N processes, each taking its slice of the same global batch and the same noise, compute the same averaged
   gradient as one process (up to float summation order; with dropout 0, since dropout masks are drawn per rank).
Only rank 0 logs and writes.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
from pathlib import Path

import numpy as np
import torch

from didi import config, data, distributed, io, runtime
from didi.diffusion import mdlm_loss

log = logging.getLogger("didi.train")


# ---------------------------------------------------------------------------------------------- pieces
def validation_nats(model, blocks: np.ndarray, schedule, mask_id: int, cfg: dict, device: torch.device,
                    batch_size: int) -> float:
    """The MDLM bound (nats/token) on fixed validation blocks with fixed noise, so evaluations are comparable."""
    from didi.diffusion import elbo_nats

    model.eval()
    model_fn = runtime.model_fn_of(model, device, cfg["teacher"]["bf16"])
    gen = runtime.generator(cfg["seed"], runtime.EVAL_NOISE, device=device)
    total = 0.0
    for start in range(0, len(blocks), batch_size):
        x = runtime.to_tensor(blocks[start:start + batch_size], device)
        total += elbo_nats(model_fn, x, schedule, mask_id, gen, cfg["diffusion"]["t_min"]) * len(x)
    model.train()
    return total / len(blocks)


def new_teacher(cfg: dict, vocab: int, device: torch.device):
    """A freshly initialised DiT of the config's size, the same on every rank and every run (seeded)."""
    from didi.model import DiT, DiTConfig

    torch.manual_seed(runtime.seed(cfg["seed"], runtime.INIT))
    return DiT(DiTConfig.from_config(cfg["model"], vocab, cfg["data"]["seq_len"])).to(device)


def new_optimizer(model: torch.nn.Module, teacher_cfg: dict) -> torch.optim.Optimizer:
    """The teacher's AdamW (the AR baseline's too)."""
    return runtime.adamw(model, teacher_cfg["lr"], teacher_cfg["betas"], teacher_cfg["adam_eps"],
                         teacher_cfg["weight_decay"])


def recipe(cfg: dict) -> runtime.Recipe:
    """The teacher's recipe (the AR baseline's too): teacher.steps of linear warm-up then constant lr, gradient
    clipping and an EMA with MDLM's warm-up."""
    t = cfg["teacher"]
    return runtime.Recipe(steps=t["steps"], lr=lambda step: runtime.warmup_lr(step, t["lr"], t["warmup_steps"]),
                          grad_clip=t["grad_clip"], log_every=t["log_every"], checkpoint_every=t["checkpoint_every"],
                          tokens_per_step=t["batch_size"] * cfg["data"]["seq_len"], ema=t["ema"],
                          eval_every=t["eval_every"])


def loss_function(cfg: dict, model_fn, blocks: np.ndarray, mask_id: int, rows: slice, rank: int,
                  device: torch.device):
    """loss_at(step): the MDLM loss of this rank's `rows` of global batch `step` (model_fn may wrap the model in
    DDP/compile). The batch, its time/mask noise and the dropout masks are drawn from (seed, step): the noise for
    the whole global batch, evaluated on this rank's rows (diffusion.mdlm_loss's `rows`)."""
    from didi.diffusion import LogLinearSchedule

    diffusion_cfg = cfg["diffusion"]
    schedule = LogLinearSchedule(diffusion_cfg["eps"])
    sampler = runtime.BlockSampler(len(blocks), cfg["teacher"]["batch_size"], cfg["seed"])

    def loss_at(step: int) -> torch.Tensor:
        x_global = runtime.to_tensor(blocks[sampler.indices(step)], device)
        torch.manual_seed(runtime.seed(cfg["seed"], runtime.DROPOUT, step, rank))  # dropout masks: f(seed, step, rank)
        noise = runtime.generator(cfg["seed"], runtime.NOISE, step, device=device)
        loss, _ = mdlm_loss(model_fn, x_global, schedule, mask_id, noise, diffusion_cfg["t_min"],
                            diffusion_cfg["antithetic"], rows)
        return loss
    return loss_at


def step_function(cfg: dict, model: torch.nn.Module, blocks: np.ndarray, mask_id: int):
    """step(i) = one training step of `model` on global batch i in one process, exactly as train_teacher takes it
    (for benchmarks: a fresh EMA and optimiser; compile and bf16 per config)."""
    teacher_cfg = cfg["teacher"]
    device = next(model.parameters()).device
    ema_model = copy.deepcopy(model).float().requires_grad_(False)
    optimizer = new_optimizer(model, teacher_cfg)
    model_fn = runtime.model_fn_of(torch.compile(model) if teacher_cfg["compile"] else model, device,
                                   teacher_cfg["bf16"])
    loss_at = loss_function(cfg, model_fn, blocks, mask_id, slice(None), 0, device)
    teacher_recipe = recipe(cfg)
    return lambda i: runtime.train_step(model, optimizer, loss_at, i, teacher_recipe, ema_model)


def resume_identity(cfg: dict, n_train_blocks: int) -> dict:
    """What a checkpoint must share with the current run to be resumed: the config keys that shape the optimisation
    path (stages.STEPS["train_teacher"]: not teacher.steps, so a finished run can be extended, nor logging, eval or
    checkpoint cadence), the number of training blocks, and the code the teacher's training runs."""
    return runtime.step_identity("train_teacher", cfg, train_blocks=n_train_blocks)


# ---------------------------------------------------------------------------------------------- the run
def train_teacher(cfg: dict, tokens_dir: str | Path, tokenizer_dir: str | Path, out_dir: str | Path,
                  max_steps: int | None = None) -> dict | None:
    """Train (or resume) the teacher of `cfg`; write out_dir/{ema,raw,metrics.json}. Returns the metrics on rank 0.
    `max_steps` stops the loop after that many steps without writing the final outputs (as a kill would)."""
    from didi.diffusion import LogLinearSchedule
    from didi.model import load_dit, num_params, save_dit

    # from a released teacher (teacher.init_from), teacher.finetune_steps (when set) replaces teacher.steps
    cfg = {**cfg, "teacher": {**cfg["teacher"], "steps": config.teacher_steps(cfg["teacher"])}}
    teacher_cfg = cfg["teacher"]
    info = runtime.start_process()
    device = info.device
    out_dir = Path(out_dir)

    tokenizer = data.load_pretrained_tokenizer(str(tokenizer_dir))
    special = data.special_ids(tokenizer)
    mask_id, vocab = special["mask"], len(tokenizer) + 1
    seq_len = cfg["data"]["seq_len"]
    train_blocks, val_blocks = data.load_token_blocks(tokens_dir, seq_len)
    val_blocks = val_blocks[: teacher_cfg["eval_batches"] * teacher_cfg["batch_size"]]
    rows = distributed.shard_rows(teacher_cfg["batch_size"], info)

    model = new_teacher(cfg, vocab, device)
    if teacher_cfg["init_from"]:
        source, _ = load_dit(teacher_cfg["init_from"], device)
        model.load_state_dict(source.state_dict(), strict=True)
        log.info("initialised from %s", teacher_cfg["init_from"])
    optimizer = new_optimizer(model, teacher_cfg)
    train_model = torch.compile(model) if teacher_cfg["compile"] else model
    if info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)
    model_fn = runtime.model_fn_of(train_model, device, teacher_cfg["bf16"])
    loss_at = loss_function(cfg, model_fn, train_blocks, mask_id, rows, info.rank, device)

    wandb_run = runtime.start_wandb(cfg, out_dir, "teacher") if info.is_main else None
    unigram = data.unigram_nats(train_blocks, val_blocks, len(tokenizer)) if info.is_main else None
    if info.is_main:
        log.info("teacher: %.2fM parameters, vocab %d (mask %d), L %d, %d train blocks, global batch %d over %d "
                 "process(es), device %s; unigram cross-entropy %.4f nats", num_params(model) / 1e6, vocab, mask_id,
                 seq_len, len(train_blocks), teacher_cfg["batch_size"], info.world_size, device, unigram)
    schedule = LogLinearSchedule(cfg["diffusion"]["eps"])

    def evaluate(step: int, ema_model) -> float:
        # rank 0 alone, in batches of the per-rank training batch (known to fit in memory)
        nats = validation_nats(ema_model, val_blocks, schedule, mask_id, cfg, device, rows.stop - rows.start)
        log.info("step %d: validation bound %.4f nats/token (perplexity <= %.2f); unigram %.4f", step, nats,
                 math.exp(nats), unigram)
        if wandb_run:
            wandb_run.log({"val/nats": nats, "val/ppl_bound": math.exp(nats)}, step=step)
        return nats

    trained = runtime.train(model, optimizer, loss_at, recipe(cfg), out_dir, resume_identity(cfg, len(train_blocks)),
                            info, evaluate=evaluate, wandb_run=wandb_run, desc="train", logger=log, max_steps=max_steps)
    metrics = None
    if info.is_main and trained.finished:
        step, history = trained.step, trained.history
        final_nats = history["eval_curve"][-1][1]
        tokens_per_step = teacher_cfg["batch_size"] * seq_len
        extra = {"tokenizer_vocab": len(tokenizer), "mask_id": mask_id, "seq_len": seq_len, "special_ids": special}
        save_dit(out_dir / "ema", trained.ema, {**extra, "teacher": {"steps": step, "weights": "ema"}})
        save_dit(out_dir / "raw", model, {**extra, "teacher": {"steps": step, "weights": "raw"}})
        metrics = {
            "steps": step,
            "tokens_seen": step * tokens_per_step,
            "wall_clock_s": history["wall_clock_s"],
            "steps_this_run": trained.steps_this_run,
            "resumed_from_step": trained.resumed_from_step,
            "tokens_per_s": trained.tokens_per_s,
            "validation_nats": final_nats,
            "validation_ppl_bound": math.exp(final_nats),
            "validation_tokens": int(np.prod(val_blocks.shape)),
            "unigram_nats": unigram,
            "unigram_ppl": math.exp(unigram),
            "loss_curve": history["loss_curve"],
            "eval_curve": history["eval_curve"],
            "parameters": num_params(model),
            "world_size": info.world_size,
            "global_batch": teacher_cfg["batch_size"],
            "seq_len": seq_len,
            "device": str(device),
        }
        io.write_metrics(out_dir / "metrics.json", metrics, cfg)
        log.info("done: %d steps, validation bound %.4f nats/token (ppl <= %.2f) vs unigram %.4f -> %s", step,
                 final_nats, math.exp(final_nats), unigram, out_dir)
    if wandb_run:
        wandb_run.finish()
    distributed.barrier()
    return metrics


# ---------------------------------------------------------------------------------------------- import
def import_teacher(cfg: dict, tokenizer_dir: str | Path, out_dir: str | Path) -> dict:
    """`didi import-teacher`: a released teacher used as is (teacher.finetune_steps: 0). teacher.init_from (a model
    directory written by `didi convert`) must be the configured DiT (config `model`, L = data.seq_len, vocabulary
    = len(tokenizer) + 1); it is written where a trained teacher goes: out_dir/ema and out_dir/raw (the same
    weights, the release's EMA) and out_dir/metrics.json (steps 0, no training curves). Nothing is trained."""
    from didi.model import DiTConfig, load_dit, num_params, save_dit

    source = cfg["teacher"]["init_from"]
    if not source:
        raise config.ConfigError("teacher.init_from is null: nothing to import")
    tokenizer = data.load_pretrained_tokenizer(str(tokenizer_dir))
    special = data.special_ids(tokenizer)
    seq_len = cfg["data"]["seq_len"]
    model, meta = load_dit(source)
    expected = DiTConfig.from_config(cfg["model"], len(tokenizer) + 1, seq_len).to_dict()
    differ = [f"{key}: {source} has {meta['model'].get(key)!r}, the config (model, data.seq_len, the tokenizer "
              f"{tokenizer_dir}) gives {value!r}" for key, value in expected.items() if meta["model"].get(key) != value]
    if differ:
        raise ValueError(f"teacher.init_from {source} is not the configured teacher (convert it with this config and "
                         "tokenizer: `didi convert`):\n  " + "\n  ".join(differ))
    out_dir = Path(out_dir)
    extra = {"tokenizer_vocab": len(tokenizer), "mask_id": special["mask"], "seq_len": seq_len,
             "special_ids": special, "converted_from": meta.get("converted_from")}
    for weights in ("ema", "raw"):
        save_dit(out_dir / weights, model, {**extra, "teacher": {"steps": 0, "weights": weights,
                                                                  "imported_from": str(source)}})
    metrics = {"steps": 0, "steps_this_run": 0, "tokens_seen": 0, "imported_from": str(source),
               "converted_from": meta.get("converted_from"), "parameters": num_params(model), "seq_len": seq_len,
               "validation_nats": None, "loss_curve": [], "eval_curve": []}
    io.write_metrics(out_dir / "metrics.json", metrics, cfg)
    log.info("imported the released teacher %s as is (%d parameters) -> %s", source, metrics["parameters"], out_dir)
    return metrics


# ---------------------------------------------------------------------------------------------- CLI
def add_import_arguments(p: argparse.ArgumentParser) -> None:
    config.add_arguments(p)
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("--out-dir", required=True, help="output directory (ema/, raw/, metrics.json)")


def run_import(args: argparse.Namespace) -> int:
    import_teacher(config.from_args(args), args.tokenizer, args.out_dir)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    config.add_arguments(p)
    p.add_argument("--tokens", required=True, help="directory with train.npy and validation.npy")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("--out-dir", required=True, help="output directory (ema/, raw/, metrics.json, checkpoints/)")


def run(args: argparse.Namespace) -> int:
    cfg = config.from_args(args)
    try:
        train_teacher(cfg, args.tokens, args.tokenizer, args.out_dir)
    finally:
        distributed.shutdown()
    return 0


COMMANDS = {"train-teacher": (add_arguments, run), "import-teacher": (add_import_arguments, run_import)}
