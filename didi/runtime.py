"""The training runtime shared by the teacher (train.py), the judge (judge.py) and distillation (distill.py).

- `seed` / `generator`: the one seed stream. A draw's seed is a stable function of integers (config seed, stream,
  step, ...), so a resumed or multi-process run draws exactly what an uninterrupted one-process run draws.
- `warmup_lr`: linear warm-up to the base learning rate, then constant (or linear decay over the run).
- `ema_update`: the float32 EMA of a model's parameters (with or without MDLM's decay warm-up).
- `save_checkpoint` / `resume`: checkpoint directories `root/step_NNNNNNNNN/` and the identity a checkpoint must
  share with the run to be resumed: the caller's trajectory-shaping parts plus the version of the code.
- `start_process`, `check_replicas_identical`: DDP start-up and the end-of-run check that all ranks agree.
- `start_wandb`: the wandb run, when the config asks for one.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from didi import distributed, io

log = logging.getLogger("didi.runtime")


# ---------------------------------------------------------------------------------------------- randomness
def seed(*parts: int) -> int:
    """A 63-bit seed that is a stable function of integer `parts` (same on every machine and Python run)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def generator(*parts: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed(*parts))


# ---------------------------------------------------------------------------------------------- optimisation
def warmup_lr(step: int, lr: float, warmup_steps: int, decay_steps: int | None = None) -> float:
    """Linear warm-up to `lr` over `warmup_steps` steps (step 0 gets lr / warmup_steps), then constant; or, with
    `decay_steps` (the run's total steps), linear decay from `lr` after the warm-up towards 0 at step decay_steps
    (floored at 1e-8, as the DiDi-Instruct authors' pre-release training code)."""
    if step < warmup_steps or decay_steps is None:
        return lr * min(1.0, (step + 1) / max(1, warmup_steps))
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return max(lr * (1.0 - progress), 1e-8)


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
@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the didi package's source files: a checkpoint made by other code is not resumed."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def identity(**parts) -> dict[str, str]:
    """What a checkpoint must share with the current run to be resumed: a hash of each named part, plus the code."""
    return {**{name: io.config_hash(value) for name, value in parts.items()}, "code": code_version()}


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
