"""`didi train-teacher`: pretrain the MDLM teacher (method.md section 1), one readable loop in the nanoGPT style.

    torchrun --standalone --nproc-per-node N -m didi.cli train-teacher --tokens results/tokens \
        --tokenizer results/tokenizer --out-dir results/teacher [--configfile ...]

Determinism is by construction, not by saved RNG state: the blocks of global batch `step`, the MDLM time/mask
noise of each of its rows and the dropout masks are all drawn from generators seeded by (seed, step), so
 - a run killed after a checkpoint and re-run (it resumes from the latest complete checkpoint) repeats exactly
   the steps an uninterrupted run would have taken, and
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
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from didi import config as config_mod
from didi import data, distributed, io
from didi.diffusion import mdlm_loss

log = logging.getLogger("didi.train")

# Streams of derived seeds: each kind of random draw has its own, so adding one never shifts another.
INIT, DATA_ORDER, NOISE, DROPOUT, EVAL_NOISE = 0, 1, 2, 3, 4


def derived_seed(*parts: int) -> int:
    """A 63-bit seed that is a stable function of integer `parts` (same on every machine and Python run)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def generator(*parts: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derived_seed(*parts))


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
            self._perms[epoch] = torch.randperm(self.n_blocks, generator=generator(self.seed, DATA_ORDER, epoch))
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
def learning_rate(step: int, lr: float, warmup_steps: int) -> float:
    """Linear warm-up to `lr`, then constant (the MDLM recipe)."""
    return lr * min(1.0, (step + 1) / max(1, warmup_steps))


@torch.no_grad()
def ema_update(ema_model: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """EMA in float32 of every parameter. The decay warms up as min(decay, (1 + n) / (10 + n)) (as MDLM's EMA
    does), so short runs are not dominated by the random initialisation."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema_model.parameters(), model.parameters()):
        e.lerp_(p.detach().float(), 1.0 - d)
    for e, b in zip(ema_model.buffers(), model.buffers()):
        e.copy_(b)


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
    gen = generator(cfg["seed"], EVAL_NOISE, device=device)
    total = 0.0
    for start in range(0, len(blocks), batch_size):
        x = to_tensor(blocks[start:start + batch_size], device)
        total += elbo_nats(model_fn, x, schedule, mask_id, gen, cfg["diffusion"]["t_min"]) * len(x)
    model.train()
    return total / len(blocks)


def train_step(model, model_fn, ema_model, optimizer, x_global: torch.Tensor, rows: slice, step: int, cfg: dict,
               schedule, mask_id: int, rank: int = 0) -> tuple[torch.Tensor, float]:
    """One optimiser step on this rank's rows of global batch `step` (model_fn may wrap `model` in DDP/compile).
    Returns (the detached local loss, the learning rate used)."""
    t = cfg["teacher"]
    lr = learning_rate(step, t["lr"], t["warmup_steps"])
    for group in optimizer.param_groups:
        group["lr"] = lr
    torch.manual_seed(derived_seed(cfg["seed"], DROPOUT, step, rank))  # dropout masks: f(seed, step, rank)
    noise = generator(cfg["seed"], NOISE, step, device=x_global.device)
    # noise drawn for the global batch, evaluated on this rank's rows (diffusion.mdlm_loss's `rows`)
    loss, _ = mdlm_loss(model_fn, x_global, schedule, mask_id, noise, cfg["diffusion"]["t_min"],
                        cfg["diffusion"]["antithetic"], rows)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # DDP averages the gradients over ranks here
    if t["grad_clip"] > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
    optimizer.step()
    ema_update(ema_model, model, t["ema"], step)
    return loss.detach(), lr


# ---------------------------------------------------------------------------------------------- checkpoints
def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint directory appears only once fully written)."""
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def resume_key(cfg: dict, n_train_blocks: int) -> str:
    """What a checkpoint must share with the current run to be resumed: everything that shapes the optimisation
    path. Not teacher.steps (so a finished run can be extended) nor logging/eval/checkpoint cadence."""
    cadence = {"steps", "log_every", "eval_every", "eval_batches", "checkpoint_every", "compile"}
    return io.config_hash({
        "seed": cfg["seed"], "seq_len": cfg["data"]["seq_len"], "model": cfg["model"], "diffusion": cfg["diffusion"],
        "teacher": {k: v for k, v in cfg["teacher"].items() if k not in cadence}, "train_blocks": n_train_blocks,
    })


def save_checkpoint(root: Path, step: int, model, ema_model, optimizer, history: dict, key: str,
                    keep: int = 2) -> None:
    with io.atomic_dir(root / f"step_{step:09d}") as tmp:
        (tmp / "resume_key.txt").write_text(key + "\n")
        io.save_tensors(tmp / "model.safetensors", model.state_dict())
        io.save_tensors(tmp / "ema.safetensors", ema_model.state_dict())
        # optimizer state and plain numbers only: read back with torch.load(weights_only=True)
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "history": history}, tmp / "state.pt")
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(path: Path, model, ema_model, optimizer, device: torch.device) -> tuple[int, dict]:
    model.load_state_dict(io.load_tensors(path / "model.safetensors", str(device)), strict=True)
    ema_model.load_state_dict(io.load_tensors(path / "ema.safetensors", str(device)), strict=True)
    state = torch.load(path / "state.pt", map_location=device, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"]), state["history"]


# ---------------------------------------------------------------------------------------------- the loop
def train_teacher(cfg: dict, tokens_dir: str | Path, tokenizer_dir: str | Path, out_dir: str | Path,
                  max_steps: int | None = None) -> dict | None:
    """Train (or resume) the teacher of `cfg`; write out_dir/{ema,raw,metrics.json}. Returns the metrics on rank 0.
    `max_steps` stops the loop after that many steps without writing the final outputs (as a kill would)."""
    from didi.diffusion import LogLinearSchedule
    from didi.model import DiT, DiTConfig, load_dit, num_params, save_dit

    t = cfg["teacher"]
    info = distributed.init()
    if not info.is_main:
        logging.getLogger("didi").setLevel(logging.WARNING)  # one log, rank 0's; other ranks report only problems
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
    val_blocks = val_blocks[: t["eval_batches"] * t["batch_size"]]
    rows = distributed.shard_rows(t["batch_size"], info)

    torch.manual_seed(derived_seed(cfg["seed"], INIT))  # the same initial weights on every rank and every run
    model = DiT(DiTConfig.from_config(cfg["model"], vocab, seq_len)).to(device)
    if t["init_from"]:
        source, _ = load_dit(t["init_from"], device)
        model.load_state_dict(source.state_dict(), strict=True)
        log.info("initialised from %s", t["init_from"])
    ema_model = copy.deepcopy(model).float().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t["lr"], betas=tuple(t["betas"]), eps=t["adam_eps"],
                                  weight_decay=t["weight_decay"])
    schedule = LogLinearSchedule(cfg["diffusion"]["eps"])

    step, history = 0, {"loss_curve": [], "eval_curve": [], "wall_clock_s": 0.0}
    key = resume_key(cfg, len(train_blocks))
    done = checkpoint_dirs(ckpt_root)
    if done and (done[-1] / "resume_key.txt").read_text().strip() == key and int(done[-1].name[5:]) <= t["steps"]:
        step, history = load_checkpoint(done[-1], model, ema_model, optimizer, device)
        log.info("resumed from %s (step %d)", done[-1], step)
    elif done:
        # another configuration's checkpoints (Snakemake re-ran the rule after a config change), or ones past a
        # now shorter run: start over
        distributed.barrier()  # every rank has looked before rank 0 deletes
        if info.is_main:
            log.warning("not resuming from %s: another configuration or past teacher.steps; starting over", done[-1])
            shutil.rmtree(ckpt_root)

    train_model = torch.compile(model) if t["compile"] else model
    if info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)
    model_fn = model_fn_of(train_model, device, t["bf16"])

    wandb_run = start_wandb(cfg, out_dir) if info.is_main else None
    unigram = data.unigram_nats(train_blocks, val_blocks, len(tokenizer)) if info.is_main else None
    if info.is_main:
        log.info("teacher: %.2fM parameters, vocab %d (mask %d), L %d, %d train blocks, global batch %d over %d "
                 "process(es), device %s; unigram cross-entropy %.4f nats", num_params(model) / 1e6, vocab, mask_id,
                 seq_len, len(train_blocks), t["batch_size"], info.world_size, device, unigram)

    sampler = BlockSampler(len(train_blocks), t["batch_size"], cfg["seed"])
    stop = t["steps"] if max_steps is None else min(t["steps"], max_steps)
    progress = io.Progress(total=t["steps"], every=t["log_every"], desc="train", unit="step", start=step,
                           logger=log, enabled=info.is_main)
    tokens_per_step = t["batch_size"] * seq_len
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

        if step % t["log_every"] == 0 or step == t["steps"]:
            mean_loss = float(distributed.all_reduce_mean(window_loss / window_steps))
            window_loss.zero_()
            window_steps = 0
            history["loss_curve"].append((step, mean_loss))
            progress.update(step, force=True, loss=mean_loss, lr=lr,
                            tok_s=f"{progress.rate(step) * tokens_per_step:.4g}")
            if wandb_run:
                wandb_run.log({"train/loss": mean_loss, "train/lr": lr}, step=step)
        if step % t["eval_every"] == 0 or step == t["steps"]:
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
        if step % t["checkpoint_every"] == 0 and step < t["steps"]:
            if info.is_main:
                session_seconds = time.perf_counter() - t_start
                save_checkpoint(ckpt_root, step, model, ema_model, optimizer,
                                {**history, "wall_clock_s": history["wall_clock_s"] + session_seconds}, key)
            distributed.barrier()

    session_seconds = time.perf_counter() - t_start
    if info.enabled:
        check_replicas_identical(model, info)
    metrics = None
    if info.is_main and step >= t["steps"]:
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
            "global_batch": t["batch_size"],
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


def check_replicas_identical(model: torch.nn.Module, info) -> None:
    """DDP must leave every rank with bit-identical weights; compare exact float64 sums of each tensor."""
    sums = torch.stack([p.detach().double().sum() for p in model.state_dict().values()]).cpu()
    gathered = [torch.empty_like(sums) for _ in range(info.world_size)]
    torch.distributed.all_gather_object(gathered, sums)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError("DDP ranks ended with different weights")
    if info.is_main:
        log.info("weights identical on all %d ranks", info.world_size)


def start_wandb(cfg: dict, out_dir: Path):
    """A wandb run when cfg wandb.mode is offline/online; wandb is imported only then."""
    w = cfg.get("wandb", {"mode": "disabled"})
    if w["mode"] == "disabled":
        return None
    import wandb

    return wandb.init(project=w.get("project", "didi"), mode=w["mode"], config=cfg, dir=str(out_dir))


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    config_mod.add_arguments(p)
    p.add_argument("--tokens", required=True, help="directory with train.npy and validation.npy")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("--out-dir", required=True, help="output directory (ema/, raw/, metrics.json, checkpoints/)")


def run(args: argparse.Namespace) -> int:
    cfg = config_mod.from_args(args)
    try:
        train_teacher(cfg, args.tokens, args.tokenizer, args.out_dir)
    finally:
        distributed.shutdown()
    return 0


COMMANDS = {"train-teacher": (add_arguments, run)}
