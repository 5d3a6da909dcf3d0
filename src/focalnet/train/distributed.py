"""One process or many: the same training code runs alone or under `torchrun --nproc_per_node N`.

`init_distributed()` reads torchrun's RANK / LOCAL_RANK / WORLD_SIZE from the environment (no --local_rank
flag), uses NCCL on GPUs and gloo on CPUs; the caller wraps the model in DistributedDataParallel. Every
collective here is a no-op in a single process, so callers never test for one.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from .config import TrainingError

__all__ = [
    "DistEnv",
    "init_distributed",
    "cleanup_distributed",
    "unwrap_model",
    "all_reduce",
    "from_main",
    "world_size",
    "replicas_identical",
]


@dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def say(self, msg: str) -> None:
        """Print on process 0 only, so that a log of N processes reads like the log of one."""
        if self.is_main:
            print(msg, flush=True)


def init_distributed(device: str = "auto") -> DistEnv:
    """Read torchrun's RANK / LOCAL_RANK / WORLD_SIZE and join the process group (gloo on CPU, NCCL on GPU).

    In a single process (no WORLD_SIZE, or 1) nothing is initialised. device: 'auto' (CUDA when there is
    one), 'cpu', 'cuda' or 'cuda:N'; under torchrun each process takes GPU LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    from ..utils import check_device

    dev = check_device(device)  # a name torch parses, for a device this machine has: else one line
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu")
        dev = torch.device("cuda", local_rank if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world, device=dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Processes in the group (1 without one)."""
    return dist.get_world_size() if _initialized() else 1


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or 'max') `t` over all processes in place and return it; unchanged in a single process."""
    if _initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t


def from_main(value: Any) -> Any:
    """Process 0's `value` (anything pickle writes) in every process: one decision for the whole run where
    each process could decide differently (a timed probe); `value` itself in a single process."""
    if not _initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _hash_parameters(model: nn.Module) -> int:
    h = hashlib.sha256()
    for name, t in sorted(unwrap_model(model).state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return int.from_bytes(h.digest()[:7], "big")


def replicas_identical(model: nn.Module) -> bool:
    """True when every process holds bit-identical weights and buffers (a hash of them is compared)."""
    if not _initialized():
        return True
    mine = torch.tensor([_hash_parameters(model)], dtype=torch.int64)
    everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    return all(int(t.item()) == int(mine.item()) for t in everyone)
