"""The training runtime shared by the teacher (train.py), the AR baseline (baseline.py), the judge (judge.py) and
distillation (distill.py).

- `seed` / `generator`: the one seed stream. A draw's seed is a stable function of integers (config seed, stream,
  step, ...), so a resumed or multi-process run draws exactly what an uninterrupted one-process run draws.
  `BlockSampler`: the blocks of global batch `step`, a function of (seed, step).
- `autocast`, `model_fn_of`: bf16 autocast of the networks' linears on CUDA, a no-op on the CPU (every training
  step's switch).
- `adamw`, `warmup_lr` (linear warm-up, then constant or linear decay), `cosine_lr` (the judge's).
- `ema_update`: the float32 EMA of a model's parameters (with or without MDLM's decay warm-up).
- `save_checkpoint` / `resume`: checkpoint directories `root/step_NNNNNNNNN/` and the identity a checkpoint must
  share with the run to be resumed (`step_identity`): the step's config keys that shape its steps (didi/stages.py,
  the table the workflow's rerun trigger comes from too), the caller's other parts, and the version of the code the
  step runs (`code_version`: its module and every didi module it imports).
- `Recipe`, `train_step`, `train`: THE training loop of the teacher, the AR baseline and the judge (resume, steps,
  EMA, loss logging, evaluation, checkpoints); each of them brings only its model, optimiser and loss.
- `start_process`, `check_replicas_identical`: DDP start-up and the end-of-run check that all ranks agree.
- `start_wandb`: the wandb run, when the config asks for one.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import dataclasses
import hashlib
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from didi import distributed, io, stages

log = logging.getLogger("didi.runtime")


# ---------------------------------------------------------------------------------------------- randomness
def seed(*parts: int) -> int:
    """A 63-bit seed that is a stable function of integer `parts` (same on every machine and Python run)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def generator(*parts: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed(*parts))


def global_generator(device: torch.device) -> torch.Generator:
    """torch's default generator on `device`: what dropout draws from unless the trainer reseeds it every step."""
    if device.type == "cuda":
        torch.cuda.init()  # default_generators is filled on CUDA's (lazy) initialisation
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


# Streams of seeds of the teacher and the AR baseline (seed(run seed, STREAM, ...)): each kind of draw has its own,
# so adding one never shifts another. Distillation has its own (distill.py).
INIT, DATA_ORDER, NOISE, DROPOUT, EVAL_NOISE = 0, 1, 2, 3, 4


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
    """Token blocks (uint16/uint32 numpy) as a long tensor on `device`."""
    return torch.from_numpy(np.asarray(blocks).astype(np.int64)).to(device, non_blocking=True)


def autocast(device: torch.device | str, bf16: bool):
    """bf16 autocast on CUDA only (CPU runs stay float32: they are the tested, reproducible path)."""
    if bf16 and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_fn_of(model: nn.Module, device: torch.device | str, bf16: bool) -> Callable:
    """(z, sigma) -> the model's float32 logits, its linears under `autocast(device, bf16)`."""
    def model_fn(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        with autocast(device, bf16):
            return model(z, sigma).float()
    return model_fn


# ---------------------------------------------------------------------------------------------- optimisation
def adamw(model: nn.Module, lr: float, betas, eps: float = 1e-8, weight_decay: float = 0.0,
          decay_vectors: bool = True) -> torch.optim.AdamW:
    """AdamW over the model's parameters. decay_vectors=False exempts biases and norm gains (parameters of dimension
    < 2) from the weight decay, as nanoGPT does (the judge)."""
    params = model.parameters()
    if not decay_vectors:
        params = [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def warmup_lr(step: int, lr: float, warmup_steps: int, decay_steps: int | None = None) -> float:
    """Linear warm-up to `lr` over `warmup_steps` steps (step 0 gets lr / warmup_steps), then constant; or, with
    `decay_steps` (the run's total steps), linear decay from `lr` after the warm-up towards 0 at step decay_steps
    (floored at 1e-8, as the DiDi-Instruct authors' pre-release training code)."""
    if step < warmup_steps or decay_steps is None:
        return lr * min(1.0, (step + 1) / max(1, warmup_steps))
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return max(lr * (1.0 - progress), 1e-8)


def cosine_lr(step: int, peak: float, warmup: int, total: int, min_fraction: float) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to min_fraction * peak at step `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (min_fraction + (1 - min_fraction) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float, step: int, warmup: bool) -> None:
    """ema <- decay * ema + (1 - decay) * model for every parameter (in the EMA's dtype); buffers are copied.

    warmup: the decay is min(decay, (1 + step) / (10 + step)) (MDLM's EMA; the teacher), so a short run is not
    dominated by its random initialisation. Distillation starts its EMA at the teacher's weights: no warm-up."""
    if warmup:
        decay = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema_model.parameters(), model.parameters()):
        e.lerp_(p.detach().to(e.dtype), 1.0 - decay)
    for e, b in zip(ema_model.buffers(), model.buffers()):
        e.copy_(b)


# ---------------------------------------------------------------------------------------------- checkpoints
PACKAGE = Path(__file__).resolve().parent


def module_source(name: str) -> bytes:
    """The source of didi/<name>.py: what a code identity hashes."""
    return (PACKAGE / f"{name}.py").read_bytes()


def didi_import_statements(source: str | bytes, filename: str = "<source>") -> list[tuple[int, str, str]]:
    """(line, the didi module imported, the statement) for every import of a didi module in `source`, at the top or
    inside a function (`import didi` itself: module "didi")."""
    out = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.ImportFrom):
            text = f"from {node.module} import {', '.join(a.name for a in node.names)}"
            if node.module == "didi":
                out += [(node.lineno, a.name, text) for a in node.names]
            elif (node.module or "").startswith("didi."):
                out.append((node.lineno, node.module.split(".")[1], text))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name.partition(".")[2] or "didi", f"import {a.name}") for a in node.names
                    if a.name == "didi" or a.name.startswith("didi.")]
    return out


def didi_imports(source: str | bytes) -> set[str]:
    """The didi modules a module's source imports, at the top or inside a function."""
    return {module for _, module, _ in didi_import_statements(source)} - {"didi"}


def code_modules(*entries: str) -> list[str]:
    """`entries` and every didi module they import, directly or through others (no entries: every didi module)."""
    if not entries:
        return sorted(p.stem for p in PACKAGE.glob("*.py"))
    seen, todo = set(), list(entries)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)  # `from didi import __version__` imports no module
            todo += sorted(m for m in didi_imports(module_source(name)) if (PACKAGE / f"{m}.py").exists())
    return sorted(seen)


def code_version(*entries: str) -> str:
    """A hash of the source of the modules `entries` run (code_modules): a checkpoint made by other code is not
    resumed; an edit of a module they do not import leaves it valid."""
    h = hashlib.sha256()
    for name in code_modules(*entries):
        h.update(name.encode() + b"\0" + module_source(name) + b"\0")
    return h.hexdigest()[:16]


def identity(*entries: str, **parts) -> dict[str, str]:
    """What a checkpoint must share with the current run to be resumed: a hash of each named part, plus the code of
    the modules `entries` run (code_version; none: the whole package)."""
    return {**{name: io.config_hash(value) for name, value in parts.items()}, "code": code_version(*entries)}


def step_identity(step: str, cfg: dict, **parts) -> dict[str, str]:
    """The identity of a checkpoint of workflow step `step` (stages.STEPS): its keys of `cfg` that a resume must
    keep (stages.resume_relevant), the named parts, and the code of the module the step runs and of all it imports."""
    runs = stages.STEPS[step].runs
    if runs is None:
        raise ValueError(f"stages.STEPS[{step!r}] names no module it runs: not a step with checkpoints")
    return identity(runs, config=stages.resume_relevant(cfg, step), **parts)


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint directory appears only once fully written)."""
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def save_checkpoint(root: Path, step: int, modules: dict[str, nn.Module], state: dict, ident: dict,
                    keep: int = 2) -> None:
    """root/step_NNNNNNNNN/: NAME.safetensors per module, state.pt (optimiser states and plain numbers only, read
    back with weights_only=True), identity.json. Keeps the newest `keep` checkpoints."""
    with io.atomic_dir(Path(root) / f"step_{step:09d}") as tmp:
        io.write_json(tmp / "identity.json", ident)
        for name, module in modules.items():
            io.save_tensors(tmp / f"{name}.safetensors", module.state_dict())
        torch.save({"step": step, **state}, tmp / "state.pt")
    for old in checkpoint_dirs(Path(root))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def resume(root: Path, ident: dict, modules: dict[str, nn.Module], device, info: distributed.DistInfo,
           max_step: int | None = None) -> dict | None:
    """Load the newest checkpoint under root into `modules` and return its state dict (with "step"), if it has
    the same identity and step <= max_step; otherwise log why not, delete the checkpoints and return None."""
    root = Path(root)
    found = checkpoint_dirs(root)
    if not found:
        return None
    latest = found[-1]
    step = int(latest.name[5:])
    saved = io.read_json(latest / "identity.json") if (latest / "identity.json").exists() else {}
    differ = sorted(k for k in set(saved) | set(ident) if saved.get(k) != ident.get(k))
    if not differ and (max_step is None or step <= max_step):
        for name, module in modules.items():
            module.load_state_dict(io.load_tensors(latest / f"{name}.safetensors", str(device)), strict=True)
        state = torch.load(latest / "state.pt", map_location=device, weights_only=True)
        log.info("resumed from checkpoint %s (step %d)", latest, step)
        return state
    why = f"it differs in {', '.join(differ)}" if differ else f"its step {step} is past the run's end {max_step}"
    distributed.barrier()  # every rank has looked before rank 0 deletes
    if info.is_main:
        log.warning("not resuming from checkpoint %s: %s; starting over", latest, why)
        shutil.rmtree(root)
    distributed.barrier()
    return None


# ---------------------------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class Recipe:
    """How a run optimises and when it logs, evaluates and checkpoints: what `train` reads of a trainer's config."""
    steps: int                          # the run's length (a resumed run goes on to it)
    lr: Callable[[int], float]          # the learning rate of step i (warmup_lr, cosine_lr)
    grad_clip: float                    # clip the gradient norm to this; 0: no clipping
    log_every: int
    checkpoint_every: int
    tokens_per_step: int                # for the tokens/s of log lines and metrics
    ema: float | None = None            # decay of an EMA of the weights, with MDLM's warm-up; None: no EMA
    eval_every: int | None = None       # how often `train(evaluate=...)` is called
    # the logged loss: "mean" over the steps since the last log line, summed in curve_dtype on the device (no sync
    # per step), or "last", the logged step's own (nanoGPT's)
    curve: str = "mean"
    curve_dtype: torch.dtype = torch.float32


@dataclasses.dataclass
class Trained:
    """What `train` returns: where the run stands and what it recorded."""
    step: int
    finished: bool                      # step == recipe.steps: the caller writes its final outputs
    ema: nn.Module | None
    history: dict                       # loss_curve, eval_curve [(step, value)], wall_clock_s (all sessions)
    resumed_from_step: int | None
    steps_this_run: int
    tokens_per_s: float | None          # this session's


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_at: Callable[[int], torch.Tensor], step: int,
               recipe: Recipe, ema: nn.Module | None = None) -> tuple[torch.Tensor, float]:
    """One optimiser step: the recipe's learning rate, the trainer's loss_at(step), backward, clipping, the update and
    the EMA. Returns (the detached loss, the learning rate). loss_at may run `model` wrapped (DDP, compile)."""
    lr = recipe.lr(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = loss_at(step)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # DDP averages the gradients over ranks here
    if recipe.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
    optimizer.step()
    if ema is not None:
        ema_update(ema, model, recipe.ema, step, warmup=True)
    return loss.detach(), lr


def train(model: nn.Module, optimizer: torch.optim.Optimizer, loss_at: Callable[[int], torch.Tensor],
          recipe: Recipe, out_dir: str | Path, ident: dict, info: distributed.DistInfo, *,
          evaluate: Callable[[int, nn.Module], float] | None = None,
          generators: dict[str, torch.Generator] | None = None, wandb_run=None, desc: str = "train",
          logger: logging.Logger = log, max_steps: int | None = None) -> Trained:
    """The training loop of the teacher, the AR baseline and the judge; loss_at(step) is the trainer's part (its
    batch, noise and dropout draws, its model call and loss).

    Resumes from the newest checkpoint under out_dir/checkpoints that has identity `ident` (`resume`), then takes
    `train_step`s up to recipe.steps. Every log_every steps it logs the loss (the loss curve); every eval_every steps
    rank 0 records evaluate(step, the EMA or else the model) (the eval curve); every checkpoint_every steps before
    the end rank 0 writes a checkpoint: the weights (model, EMA), the optimiser, the history and the states of
    `generators`, those the trainer draws from without reseeding per step, so a resumed run draws what an
    uninterrupted one would. `max_steps` stops after that many steps unfinished, as a kill would. A resumed run
    logs the uninterrupted run's curve when checkpoint_every is a multiple of log_every (a logged mean does not span
    a resume: the steps before it are not in the checkpoint)."""
    device = next(model.parameters()).device
    ckpt_root = Path(out_dir) / "checkpoints"
    generators = generators or {}
    ema = copy.deepcopy(model).float().requires_grad_(False) if recipe.ema is not None else None
    modules = {"model": model, **({"ema": ema} if ema is not None else {})}

    step, history = 0, {"loss_curve": [], "eval_curve": [], "wall_clock_s": 0.0}
    resumed = resume(ckpt_root, ident, modules, device, info, max_step=recipe.steps)
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        step, history = int(resumed["step"]), resumed["history"]
        for name, gen in generators.items():
            gen.set_state(resumed["generators"][name].cpu())

    stop = recipe.steps if max_steps is None else min(recipe.steps, max_steps)
    progress = io.Progress(total=recipe.steps, every=recipe.log_every, desc=desc, unit="step", start=step,
                           logger=logger, enabled=info.is_main)
    start_step, t_start = step, time.perf_counter()
    window, window_steps = torch.zeros((), dtype=recipe.curve_dtype, device=device), 0
    model.train()
    while step < stop:
        loss, lr = train_step(model, optimizer, loss_at, step, recipe, ema)
        step += 1
        window += loss.to(window.dtype)
        window_steps += 1

        if step % recipe.log_every == 0 or step == recipe.steps:
            logged = float(distributed.all_reduce_mean(loss if recipe.curve == "last" else window / window_steps))
            window.zero_()
            window_steps = 0
            history["loss_curve"].append((step, logged))
            progress.update(step, force=True, loss=logged, lr=lr,
                            tok_s=f"{progress.rate(step) * recipe.tokens_per_step:.4g}")
            if wandb_run:
                wandb_run.log({"train/loss": logged, "train/lr": lr}, step=step)
        if evaluate is not None and (step % recipe.eval_every == 0 or step == recipe.steps):
            if info.is_main:
                history["eval_curve"].append((step, evaluate(step, ema if ema is not None else model)))
            distributed.barrier()
        if step % recipe.checkpoint_every == 0 and step < recipe.steps:
            if info.is_main:
                seconds = history["wall_clock_s"] + time.perf_counter() - t_start
                state = {"optimizer": optimizer.state_dict(), "history": {**history, "wall_clock_s": seconds},
                         "generators": {name: gen.get_state() for name, gen in generators.items()}}
                save_checkpoint(ckpt_root, step, modules, state, ident)
            distributed.barrier()

    seconds = time.perf_counter() - t_start
    if info.enabled:
        check_replicas_identical([model], info)
    steps_this_run = step - start_step
    history["wall_clock_s"] += seconds
    return Trained(step=step, finished=step >= recipe.steps, ema=ema, history=history,
                   resumed_from_step=start_step if resumed is not None else None, steps_this_run=steps_this_run,
                   tokens_per_s=steps_this_run * recipe.tokens_per_step / seconds if steps_this_run else None)


# ---------------------------------------------------------------------------------------------- processes
def start_process() -> distributed.DistInfo:
    """Join torchrun's process group (or run alone); ranks other than 0 log only warnings (one log, rank 0's)."""
    info = distributed.init()
    if not info.is_main:
        logging.getLogger("didi").setLevel(logging.WARNING)
    return info


def check_replicas_identical(modules: list[nn.Module], info: distributed.DistInfo) -> None:
    """DDP must leave every rank with bit-identical weights; compare exact float64 sums of each tensor."""
    sums = torch.stack([v.detach().double().sum() for m in modules for v in m.state_dict().values()]).cpu()
    gathered = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, sums)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError("DDP ranks ended with different weights")
    if info.is_main:
        log.info("weights identical on all %d ranks", info.world_size)


def start_wandb(cfg: dict, out_dir: str | Path, job: str):
    """A wandb run (job type `job`) when cfg wandb.mode is offline/online, else None; wandb is imported only then."""
    wandb_cfg = cfg.get("wandb", {"mode": "disabled"})
    if wandb_cfg["mode"] == "disabled":
        return None
    import wandb

    return wandb.init(project=wandb_cfg.get("project", "didi"), mode=wandb_cfg["mode"], config=cfg,
                      dir=str(out_dir), job_type=job)
