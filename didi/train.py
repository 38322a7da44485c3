"""`didi train-teacher`: pretrain the MDLM teacher (docs/method.md section 1), one readable loop in the nanoGPT style.

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
import contextlib
import copy
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from didi import config, data, distributed, io, runtime
from didi.diffusion import mdlm_loss

log = logging.getLogger("didi.train")

# Streams of seeds (runtime.seed(cfg seed, STREAM, ...)): each kind of draw has its own, so adding one never
# shifts another.
INIT, DATA_ORDER, NOISE, DROPOUT, EVAL_NOISE = 0, 1, 2, 3, 4


# ---------------------------------------------------------------------------------------------- batches
class BlockSampler:
    """Global batch `step` = the next `batch_size` entries of an endless sequence of epochs, each a seeded random
    permutation of all blocks. A pure function of (seed, step): resumed and multi-process runs see the same data."""

    def __init__(self, n_blocks: int, batch_size: int, seed: int):
        self.n_blocks, self.batch_size, self.seed = n_blocks, batch_size, seed
        self._perms: dict[int, torch.Tensor] = {}

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {k: v for k, v in self._perms.items() if k >= epoch - 1}  # keep memory bounded
            order = runtime.generator(self.seed, DATA_ORDER, epoch)
            self._perms[epoch] = torch.randperm(self.n_blocks, generator=order)
        return self._perms[epoch]

    def indices(self, step: int) -> np.ndarray:
        out, position = [], step * self.batch_size
        while len(out) < self.batch_size:
            epoch, offset = divmod(position, self.n_blocks)
            take = self.permutation(epoch)[offset: offset + self.batch_size - len(out)]
            out.extend(take.tolist())
            position += len(take)
        return np.asarray(out)


def to_tensor(blocks: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(blocks).astype(np.int64)).to(device, non_blocking=True)


# ---------------------------------------------------------------------------------------------- pieces
def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA only (CPU runs stay float32: they are the tested, reproducible path)."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_fn_of(model: torch.nn.Module, device: torch.device, bf16: bool):
    def model_fn(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        with autocast(device, bf16):
            return model(z, sigma).float()
    return model_fn


def validation_nats(model, blocks: np.ndarray, schedule, mask_id: int, cfg: dict, device: torch.device,
                    batch_size: int) -> float:
    """The MDLM bound (nats/token) on fixed validation blocks with fixed noise, so evaluations are comparable."""
    from didi.diffusion import elbo_nats

    model.eval()
    model_fn = model_fn_of(model, device, cfg["teacher"]["bf16"])
    gen = runtime.generator(cfg["seed"], EVAL_NOISE, device=device)
    total = 0.0
    for start in range(0, len(blocks), batch_size):
        x = to_tensor(blocks[start:start + batch_size], device)
        total += elbo_nats(model_fn, x, schedule, mask_id, gen, cfg["diffusion"]["t_min"]) * len(x)
    model.train()
    return total / len(blocks)


def new_teacher(cfg: dict, vocab: int, device: torch.device):
    """A freshly initialised DiT of the config's size, the same on every rank and every run (seeded)."""
    from didi.model import DiT, DiTConfig

    torch.manual_seed(runtime.seed(cfg["seed"], INIT))
    return DiT(DiTConfig.from_config(cfg["model"], vocab, cfg["data"]["seq_len"])).to(device)


def new_optimizer(model: torch.nn.Module, teacher_cfg: dict) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=teacher_cfg["lr"], betas=tuple(teacher_cfg["betas"]),
                             eps=teacher_cfg["adam_eps"], weight_decay=teacher_cfg["weight_decay"])


def train_step(model, model_fn, ema_model, optimizer, x_global: torch.Tensor, rows: slice, step: int, cfg: dict,
               schedule, mask_id: int, rank: int = 0) -> tuple[torch.Tensor, float]:
    """One optimiser step on this rank's rows of global batch `step` (model_fn may wrap `model` in DDP/compile).
    Returns (the detached local loss, the learning rate used)."""
    teacher_cfg = cfg["teacher"]
    lr = runtime.warmup_lr(step, teacher_cfg["lr"], teacher_cfg["warmup_steps"])
    for group in optimizer.param_groups:
        group["lr"] = lr
    torch.manual_seed(runtime.seed(cfg["seed"], DROPOUT, step, rank))  # dropout masks: f(seed, step, rank)
    noise = runtime.generator(cfg["seed"], NOISE, step, device=x_global.device)
    # noise drawn for the global batch, evaluated on this rank's rows (diffusion.mdlm_loss's `rows`)
    loss, _ = mdlm_loss(model_fn, x_global, schedule, mask_id, noise, cfg["diffusion"]["t_min"],
                        cfg["diffusion"]["antithetic"], rows)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # DDP averages the gradients over ranks here
    if teacher_cfg["grad_clip"] > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), teacher_cfg["grad_clip"])
    optimizer.step()
    runtime.ema_update(ema_model, model, teacher_cfg["ema"], step, warmup=True)
    return loss.detach(), lr


def step_function(cfg: dict, model: torch.nn.Module, blocks: np.ndarray, mask_id: int):
    """step(i) = one training step of `model` on global batch i in one process, exactly as train_teacher takes it
    (for benchmarks: a fresh EMA and optimiser; compile and bf16 per config)."""
    from didi.diffusion import LogLinearSchedule

    teacher_cfg = cfg["teacher"]
    device = next(model.parameters()).device
    ema_model = copy.deepcopy(model).float().requires_grad_(False)
    optimizer = new_optimizer(model, teacher_cfg)
    model_fn = model_fn_of(torch.compile(model) if teacher_cfg["compile"] else model, device, teacher_cfg["bf16"])
    schedule = LogLinearSchedule(cfg["diffusion"]["eps"])
    sampler = BlockSampler(len(blocks), teacher_cfg["batch_size"], cfg["seed"])

    def step(i: int):
        x = to_tensor(blocks[sampler.indices(i)], device)
        return train_step(model, model_fn, ema_model, optimizer, x, slice(None), i, cfg, schedule, mask_id)
    return step


def resume_identity(cfg: dict, n_train_blocks: int) -> dict:
    """What a checkpoint must share with the current run to be resumed: everything that shapes the optimisation
    path, and the code. Not teacher.steps (so a finished run can be extended) nor logging/eval/checkpoint cadence."""
    cadence = {"steps", "finetune_steps", "log_every", "eval_every", "eval_batches", "checkpoint_every", "compile"}
    return runtime.identity(config={
        "seed": cfg["seed"], "seq_len": cfg["data"]["seq_len"], "model": cfg["model"], "diffusion": cfg["diffusion"],
        "teacher": {k: v for k, v in cfg["teacher"].items() if k not in cadence}}, train_blocks=n_train_blocks)


# ---------------------------------------------------------------------------------------------- the loop
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
    ckpt_root = out_dir / "checkpoints"

    tokenizer = data.load_pretrained_tokenizer(str(tokenizer_dir))
    special = data.special_ids(tokenizer)
    mask_id, vocab = special["mask"], len(tokenizer) + 1
    seq_len = cfg["data"]["seq_len"]
    train_blocks = data.load_blocks(Path(tokens_dir) / "train.npy")
    val_blocks = data.load_blocks(Path(tokens_dir) / "validation.npy")
    for name, blocks in (("train", train_blocks), ("validation", val_blocks)):
        if blocks.shape[1] != seq_len:
            raise ValueError(f"{tokens_dir}/{name}.npy has blocks of {blocks.shape[1]} tokens, config data.seq_len "
                             f"is {seq_len}")
    val_blocks = val_blocks[: teacher_cfg["eval_batches"] * teacher_cfg["batch_size"]]
    rows = distributed.shard_rows(teacher_cfg["batch_size"], info)

    model = new_teacher(cfg, vocab, device)
    if teacher_cfg["init_from"]:
        source, _ = load_dit(teacher_cfg["init_from"], device)
        model.load_state_dict(source.state_dict(), strict=True)
        log.info("initialised from %s", teacher_cfg["init_from"])
    ema_model = copy.deepcopy(model).float().requires_grad_(False)
    optimizer = new_optimizer(model, teacher_cfg)
    schedule = LogLinearSchedule(cfg["diffusion"]["eps"])

    step, history = 0, {"loss_curve": [], "eval_curve": [], "wall_clock_s": 0.0}
    identity = resume_identity(cfg, len(train_blocks))
    modules = {"model": model, "ema": ema_model}
    resumed = runtime.resume(ckpt_root, identity, modules, device, info, max_step=teacher_cfg["steps"])
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        step, history = int(resumed["step"]), resumed["history"]
    resumed_from_step = step if resumed is not None else None

    train_model = torch.compile(model) if teacher_cfg["compile"] else model
    if info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)
    model_fn = model_fn_of(train_model, device, teacher_cfg["bf16"])

    wandb_run = runtime.start_wandb(cfg, out_dir, "teacher") if info.is_main else None
    unigram = data.unigram_nats(train_blocks, val_blocks, len(tokenizer)) if info.is_main else None
    if info.is_main:
        log.info("teacher: %.2fM parameters, vocab %d (mask %d), L %d, %d train blocks, global batch %d over %d "
                 "process(es), device %s; unigram cross-entropy %.4f nats", num_params(model) / 1e6, vocab, mask_id,
                 seq_len, len(train_blocks), teacher_cfg["batch_size"], info.world_size, device, unigram)

    sampler = BlockSampler(len(train_blocks), teacher_cfg["batch_size"], cfg["seed"])
    stop = teacher_cfg["steps"] if max_steps is None else min(teacher_cfg["steps"], max_steps)
    progress = io.Progress(total=teacher_cfg["steps"], every=teacher_cfg["log_every"], desc="train", unit="step",
                           start=step, logger=log, enabled=info.is_main)
    tokens_per_step = teacher_cfg["batch_size"] * seq_len
    start_step, t_start = step, time.perf_counter()
    window_loss, window_steps = torch.zeros((), device=device), 0
    model.train()
    while step < stop:
        x_global = to_tensor(train_blocks[sampler.indices(step)], device)
        loss, lr = train_step(model, model_fn, ema_model, optimizer, x_global, rows, step, cfg, schedule, mask_id,
                              info.rank)
        step += 1
        window_loss += loss.detach()
        window_steps += 1

        if step % teacher_cfg["log_every"] == 0 or step == teacher_cfg["steps"]:
            mean_loss = float(distributed.all_reduce_mean(window_loss / window_steps))
            window_loss.zero_()
            window_steps = 0
            history["loss_curve"].append((step, mean_loss))
            progress.update(step, force=True, loss=mean_loss, lr=lr,
                            tok_s=f"{progress.rate(step) * tokens_per_step:.4g}")
            if wandb_run:
                wandb_run.log({"train/loss": mean_loss, "train/lr": lr}, step=step)
        if step % teacher_cfg["eval_every"] == 0 or step == teacher_cfg["steps"]:
            if info.is_main:
                # rank 0 alone, in batches of the per-rank training batch (known to fit in memory)
                per_rank = rows.stop - rows.start
                nats = validation_nats(ema_model, val_blocks, schedule, mask_id, cfg, device, per_rank)
                history["eval_curve"].append((step, nats))
                log.info("step %d: validation bound %.4f nats/token (perplexity <= %.2f); unigram %.4f", step, nats,
                         math.exp(nats), unigram)
                if wandb_run:
                    wandb_run.log({"val/nats": nats, "val/ppl_bound": math.exp(nats)}, step=step)
            distributed.barrier()
        if step % teacher_cfg["checkpoint_every"] == 0 and step < teacher_cfg["steps"]:
            if info.is_main:
                session_seconds = time.perf_counter() - t_start
                runtime.save_checkpoint(ckpt_root, step, modules, {"optimizer": optimizer.state_dict(), "history": {
                    **history, "wall_clock_s": history["wall_clock_s"] + session_seconds}}, identity)
            distributed.barrier()

    session_seconds = time.perf_counter() - t_start
    if info.enabled:
        runtime.check_replicas_identical([model], info)
    metrics = None
    if info.is_main and step >= teacher_cfg["steps"]:
        final_nats = history["eval_curve"][-1][1]
        extra = {"tokenizer_vocab": len(tokenizer), "mask_id": mask_id, "seq_len": seq_len, "special_ids": special}
        save_dit(out_dir / "ema", ema_model, {**extra, "teacher": {"steps": step, "weights": "ema"}})
        save_dit(out_dir / "raw", model, {**extra, "teacher": {"steps": step, "weights": "raw"}})
        steps_this_run = step - start_step
        metrics = {
            "steps": step,
            "tokens_seen": step * tokens_per_step,
            "wall_clock_s": history["wall_clock_s"] + session_seconds,
            "steps_this_run": steps_this_run,
            "resumed_from_step": resumed_from_step,
            "tokens_per_s": steps_this_run * tokens_per_step / session_seconds if steps_this_run else None,
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
