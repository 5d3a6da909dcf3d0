"""Training and evaluation loops, checkpoints that never lose a run, and torchrun support.

Plain functions, no argparse (the CLI and `focalnet.trainer.train` sit on top):

    stats = train_one_epoch(model, loader, optimizer, criterion, device=device, scheduler=sched, ...)
    result = evaluate(model, eval_loader, device=device, num_classes=10)   # top1, top5, confusion, ...

Distributed: the same code runs in one process or under `torchrun --nproc_per_node N` (any number of
nodes): `init_distributed()` reads RANK / LOCAL_RANK / WORLD_SIZE from the environment (no --local_rank
flag), uses NCCL on GPUs and gloo on CPUs; the model is wrapped in DistributedDataParallel by the caller.

Checkpoints are plain dicts of tensors and Python values (they load with torch.load(weights_only=True)),
written to a temporary file and renamed, so that a crash or a full disk while saving leaves the previous
checkpoint intact.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import CheckpointError, atomic_torch_save, safe_torch_load
from .data import BadImageError

__all__ = [
    "DistEnv",
    "init_distributed",
    "cleanup_distributed",
    "unwrap_model",
    "autocast",
    "train_one_epoch",
    "evaluate",
    "NonFiniteLossError",
    "CheckpointSaveError",
    "get_rng_state",
    "set_rng_state",
    "seed_everything",
    "save_training_checkpoint",
    "load_training_checkpoint",
    "replicas_identical",
    "TRAIN_CHECKPOINT_FORMAT",
]

TRAIN_CHECKPOINT_FORMAT = "focalnet-train-v1"
AMP_MODES = ("none", "bf16", "fp16")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message says at which step and where the last good checkpoint is."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (full disk, permissions); the previous one is intact."""


# --------------------------------------------------------------------------------------------------------
# Processes and devices
# --------------------------------------------------------------------------------------------------------


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
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu")
        dev = torch.device("cuda", local_rank if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world, device=dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU or GPU, fp16 on GPU only (with a GradScaler), or nothing."""
    if amp not in AMP_MODES:
        raise ValueError(f"unknown --amp {amp!r}; choose one of {', '.join(AMP_MODES)}")
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA GPU (float16 autocast with a GradScaler); use --amp bf16 on the CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


# --------------------------------------------------------------------------------------------------------
# Random state
# --------------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (dropout, drop path, Mixup, augmentations)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """Every global random state as tensors and plain values (loadable with weights_only=True)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------


def _bad_image_error(bad: list[str]) -> BadImageError:
    return BadImageError(
        f"cannot read image {bad[0]}; fix or remove the file, or pass --skip-bad-images to skip unreadable "
        "images (they are counted and reported)"
    )


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    device: torch.device,
    epoch: int = 0,
    num_epochs: Optional[int] = None,
    scheduler: Any = None,
    global_step: int = 0,
    mixup_fn: Optional[Callable] = None,
    amp: str = "none",
    scaler: Optional[torch.amp.GradScaler] = None,
    accum_steps: int = 1,
    clip_grad: Optional[float] = None,
    ema: Optional[nn.Module] = None,
    skip_bad_images: bool = False,
    progress: bool = False,
    last_good_checkpoint: Optional[str] = None,
    max_updates: Optional[int] = None,
) -> dict:
    """One pass over `loader`: forward, loss, backward, clip, step, per-step lr schedule, EMA.

    loader yields (images, labels, unreadable_paths) (see `focalnet.data.collate`). The optimizer steps
    every `accum_steps` batches (gradient accumulation; DDP syncs gradients only on those) and
    `scheduler.step_update(global_step)` follows every step (timm schedulers). A NaN or infinite loss
    raises NonFiniteLossError before the weights change. Returns the epoch's mean loss, images, time,
    images/s, optimizer steps, unreadable images skipped and the last learning rate; `global_step` in
    the result is the updated step counter. With `max_updates` the pass ends early once `global_step`
    reaches it (the last, partial epoch of a --time-budget run; every DDP rank stops at the same step).
    """
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
    model.train()
    is_ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    n_batches = len(loader)  # type: ignore[arg-type]
    params = [p for p in model.parameters() if p.requires_grad]
    bar = None
    if progress:
        from tqdm import tqdm

        label = f"epoch {epoch + 1}" + (f"/{num_epochs}" if num_epochs else "")
        bar = tqdm(total=n_batches, desc=label, unit="batch", dynamic_ncols=True, leave=False)

    loss_sum = torch.zeros((), dtype=torch.float64)
    images = bad_count = steps = 0
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for i, (x, y, bad) in enumerate(loader):
        if bad:
            if not skip_bad_images:
                raise _bad_image_error(bad)
            bad_count += len(bad)
        if x is None:
            continue
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if mixup_fn is not None:
            if len(x) % 2:  # timm's batch Mixup pairs images: it needs an even batch (odd after skipped images)
                x, y = x[:-1], y[:-1]
            if len(x) == 0:
                continue
            x, y = mixup_fn(x, y)
        update = (i + 1) % accum_steps == 0 or i + 1 == n_batches
        sync = model.no_sync() if is_ddp and not update else contextlib.nullcontext()
        with sync:
            with autocast(device, amp):
                out = model(x)
                loss = criterion(out, y)
            value = _all_reduce(loss.detach().float().clone()) / world
            if not torch.isfinite(value):
                where = f"optimizer step {global_step + 1} (epoch {epoch + 1}, batch {i + 1} of {n_batches})"
                keep = (f"the last good checkpoint is {last_good_checkpoint}" if last_good_checkpoint
                        else "no checkpoint had been written yet")
                raise NonFiniteLossError(
                    f"the loss became {value.item()} at {where}; stopped before updating the weights, {keep}. "
                    "Lower --lr, keep --clip-grad on, try --amp none, check the data for NaN values; "
                    "continue from the checkpoint with --resume"
                )
            scaled = loss / accum_steps
            if scaler is not None:
                scaler.scale(scaled).backward()
            else:
                scaled.backward()
        if update:
            if scaler is not None:
                scaler.unscale_(optimizer)
            if clip_grad:
                torch.nn.utils.clip_grad_norm_(params, clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            steps += 1
            if scheduler is not None:
                scheduler.step_update(num_updates=global_step)
            if ema is not None:
                ema.update(unwrap_model(model), step=global_step)
        loss_sum += value.double() * len(x)
        images += len(x)
        done = update and max_updates is not None and global_step >= max_updates
        if bar is not None:
            bar.update(1)
            if i % 10 == 0 or i + 1 == n_batches or done:
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{loss_sum.item() / max(images, 1):.4f}",
                                img_s=f"{images * world / max(elapsed, 1e-9):.0f}",
                                lr=f"{optimizer.param_groups[0]['lr']:.2e}", refresh=False)
        if done:
            break
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - start
    counts = _all_reduce(torch.tensor([images, bad_count], dtype=torch.float64))
    loss_total = _all_reduce(loss_sum.clone())
    total_images = int(counts[0].item())
    return dict(
        loss=loss_total.item() / max(total_images, 1),
        images=total_images,
        time=elapsed,
        img_per_s=total_images / max(elapsed, 1e-9),
        steps=steps,
        global_step=global_step,
        bad_images=int(counts[1].item()),
        lr=optimizer.param_groups[0]["lr"],
    )


# --------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device,
    num_classes: int,
    amp: str = "none",
    skip_bad_images: bool = False,
    progress: bool = False,
    desc: str = "eval",
) -> dict:
    """Top-1, top-5, mean cross-entropy, the confusion matrix (rows: true class, columns: predicted) and
    per-class accuracy over `loader`; summed over all processes when distributed."""
    model.eval()
    C = num_classes
    confusion = torch.zeros(C * C, dtype=torch.int64)
    sums = torch.zeros(4, dtype=torch.float64)  # loss, top-5 hits, images, unreadable images
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(loader), desc=desc, unit="batch", dynamic_ncols=True, leave=False)  # type: ignore[arg-type]
    start = time.perf_counter()
    for x, y, bad in loader:
        if bar is not None:
            bar.update(1)
        if bad:
            if not skip_bad_images:
                raise _bad_image_error(bad)
            sums[3] += len(bad)
        if x is None:
            continue
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        if logits.shape[1] != C:
            raise ValueError(f"the model has {logits.shape[1]} outputs but the data has {C} classes")
        sums[0] += F.cross_entropy(logits, y, reduction="sum").item()
        sums[1] += (logits.topk(min(5, C), dim=1).indices == y[:, None]).any(1).sum().item()
        sums[2] += len(y)
        confusion += torch.bincount((y * C + logits.argmax(1)).cpu(), minlength=C * C)
    if bar is not None:
        bar.close()
    _all_reduce(sums)
    _all_reduce(confusion)
    confusion = confusion.view(C, C)
    n = max(int(sums[2].item()), 1)
    per_class_total = confusion.sum(1)
    per_class = [
        (confusion[i, i].item() / per_class_total[i].item()) if per_class_total[i] > 0 else None for i in range(C)
    ]
    return dict(
        top1=100.0 * confusion.diag().sum().item() / n,
        top5=100.0 * sums[1].item() / n,
        loss=sums[0].item() / n,
        images=int(sums[2].item()),
        bad_images=int(sums[3].item()),
        per_class=[None if a is None else 100.0 * a for a in per_class],
        confusion=confusion.tolist(),
        time=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------


def save_training_checkpoint(state: dict, path: Union[str, os.PathLike]) -> Path:
    """Write `state` atomically. On failure (ENOSPC and any other OSError) the temporary file is removed,
    the previous file at `path` is untouched, and CheckpointSaveError says so."""
    path = Path(path)
    try:
        atomic_torch_save(state, path)
    except (OSError, RuntimeError) as e:
        # torch.save reports a failed write as RuntimeError ("PytorchStreamWriter failed writing file")
        err = getattr(e, "errno", None)
        reason = os.strerror(err) if err else str(e).splitlines()[0]
        hint = " Free some space (or choose another --output) and continue with --resume." if err in (errno.ENOSPC, errno.EDQUOT) else ""
        keep = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} had been written yet"
        raise CheckpointSaveError(err or errno.EIO, f"could not write the checkpoint {path}: {reason}; {keep}.{hint}") from None
    return path


def load_training_checkpoint(path: Union[str, os.PathLike]) -> dict:
    """Read a training checkpoint (weights_only=True: no code runs) and check that it is one."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pth"
    if not path.exists():
        raise CheckpointError(f"no training checkpoint at {path}; --resume takes a run folder or its checkpoints/last.pth")
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("format") != TRAIN_CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a focalnet training checkpoint (it holds weights only); use --pretrained {path} "
            "to start a new run from its weights"
        )
    state["path"] = str(path)
    return state


def _hash_parameters(model: nn.Module) -> int:
    h = hashlib.sha256()
    for name, t in sorted(unwrap_model(model).state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return int.from_bytes(h.digest()[:7], "big")


def replicas_identical(model: nn.Module) -> bool:
    """True when every process holds bit-identical weights and buffers (a hash of them is compared)."""
    if not (dist.is_available() and dist.is_initialized()):
        return True
    mine = torch.tensor([_hash_parameters(model)], dtype=torch.int64)
    everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    return all(int(t.item()) == int(mine.item()) for t in everyone)


def updates_that_fit(budget_s: float, *, update_s: float, eval_s: float, updates_per_epoch: int,
                     minimum: int = 1) -> int:
    """How many optimizer updates fit in `budget_s` seconds when each costs `update_s` and every epoch,
    the last (possibly partial) one included, ends with an evaluation of `eval_s` seconds."""
    if update_s <= 0:
        return max(minimum, updates_per_epoch)
    best = 0
    for epochs in range(1, 100_000):
        room = budget_s - epochs * eval_s  # seconds left for updates if the run has this many epochs
        fit = min(epochs * updates_per_epoch, int(math.floor(room / update_s)))
        if fit <= (epochs - 1) * updates_per_epoch:  # not even one update of this epoch fits
            break
        best = fit
    return max(minimum, best)
