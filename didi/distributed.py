"""DDP plumbing for runs launched with `torchrun` (gloo on CPU, NCCL on GPU); a no-op for one process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init() -> DistInfo:
    """Join the process group torchrun set up (RANK/WORLD_SIZE in the environment), else run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (returns the input unchanged for one process)."""
    if not dist.is_initialized():
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / dist.get_world_size()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks of a (non-differentiated) tensor, in float64; the tensor itself for one process."""
    y = x.detach().double()
    if dist.is_initialized():
        y = y.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y


def shard_rows(global_batch: int, info: DistInfo) -> slice:
    """The rows of a global batch this rank owns; the global batch must divide evenly."""
    if global_batch % info.world_size:
        raise ValueError(f"global batch {global_batch} is not divisible by world size {info.world_size}")
    per = global_batch // info.world_size
    return slice(info.rank * per, (info.rank + 1) * per)
