"""The training and evaluation loops: plain functions, no argparse (`focalnet.train.run.train` sits on top).

    stats = train_one_epoch(model, loader, optimizer, criterion, device=device, scheduler=sched, ...)
    result = evaluate(model, eval_loader, device=device, num_classes=10)   # top1, top5, confusion, ...

Both run alike in one process or under torchrun (the model then comes wrapped in DistributedDataParallel);
the numbers they return are summed over all processes.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import FocalNetError
from ..precision import parse_precision, precision_name
from .config import TrainingError
from .data import BadImageError
from .distributed import all_reduce, unwrap_model, world_size

__all__ = ["autocast", "train_one_epoch", "evaluate", "NonFiniteLossError"]


class NonFiniteLossError(FocalNetError, RuntimeError):
    """The loss became NaN or infinite; the message says at which step and where the last good checkpoint is."""


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU or GPU, fp16 on GPU only (with a GradScaler), or nothing (fp32). `precision` is
    spelled as focalnet.precision says (fp32, bf16, fp16; the old none/bfloat16/float16 read alike)."""
    name = precision_name(precision)
    if name == "fp32":
        return contextlib.nullcontext()
    if name == "fp16" and device.type != "cuda":
        raise TrainingError("--precision fp16 needs a CUDA GPU (float16 autocast with a GradScaler); use "
                            "--precision bf16 on the CPU")
    return torch.autocast(device.type, dtype=parse_precision(name))


def _count_bad(bad: list[str], skip_bad_images: bool) -> int:
    """How many unreadable images a batch lost; the first one stops the run unless they are skipped."""
    if bad and not skip_bad_images:
        raise BadImageError(
            f"cannot read image {bad[0]}; fix or remove the file, or pass --skip-bad-images to skip unreadable "
            "images (they are counted and reported)"
        )
    return len(bad)


def _progress_bar(progress: bool, total: int, desc: str) -> Any:
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True, leave=False)


# --------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------


def _prepare(x: torch.Tensor, y: torch.Tensor, device: torch.device,
             mixup_fn: Optional[Callable]) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """The batch on the device, mixed; None when nothing of it is left to train on."""
    x = x.to(device, non_blocking=True)
    y = y.to(device, non_blocking=True)
    if mixup_fn is not None:
        if len(x) % 2:  # timm's batch Mixup pairs images: it needs an even batch (odd after skipped images)
            x, y = x[:-1], y[:-1]
        if len(x) == 0:
            return None
        x, y = mixup_fn(x, y)
    return x, y


def _non_finite(value: torch.Tensor, where: str, last_good_checkpoint: Optional[str]) -> NonFiniteLossError:
    keep = (f"the last good checkpoint is {last_good_checkpoint}" if last_good_checkpoint
            else "no checkpoint had been written yet")
    return NonFiniteLossError(
        f"the loss became {value.item()} at {where}; stopped before updating the weights, {keep}. "
        "Lower the learning rate, keep --clip-grad on, try --precision fp32, check the data for NaN values"
    )


def _optimizer_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], *, model: nn.Module,
                    scaler: Optional[torch.amp.GradScaler], clip_grad: Optional[float], scheduler: Any,
                    ema: Optional[nn.Module], global_step: int) -> None:
    """Unscale, clip, step, clear the gradients; then the schedule and the EMA follow step `global_step`."""
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
    if scheduler is not None:
        scheduler.step_update(num_updates=global_step)
    if ema is not None:
        ema.update(unwrap_model(model), step=global_step)


def _show(bar: Any, *, loss_sum: torch.Tensor, images: int, world: int, start: float, lr: float) -> None:
    elapsed = time.perf_counter() - start
    bar.set_postfix(loss=f"{loss_sum.item() / max(images, 1):.4f}", img_s=f"{images * world / max(elapsed, 1e-9):.0f}",
                    lr=f"{lr:.2e}", refresh=False)


def _epoch_stats(*, loss_sum: torch.Tensor, images: int, bad_count: int, start: float, steps: int,
                 global_step: int, lr: float) -> dict:
    """The epoch's numbers summed over all processes."""
    elapsed = time.perf_counter() - start
    counts = all_reduce(torch.tensor([images, bad_count], dtype=torch.float64))
    loss_total = all_reduce(loss_sum.clone())
    total_images = int(counts[0].item())
    return dict(
        loss=loss_total.item() / max(total_images, 1),
        images=total_images,
        time=elapsed,
        img_per_s=total_images / max(elapsed, 1e-9),
        steps=steps,
        global_step=global_step,
        bad_images=int(counts[1].item()),
        lr=lr,
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
    precision: str = "fp32",
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

    loader yields (images, labels, unreadable_paths) (see `focalnet.train.data.collate`). The optimizer steps
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
    world = world_size()
    n_batches = len(loader)  # type: ignore[arg-type]
    params = [p for p in model.parameters() if p.requires_grad]
    bar = _progress_bar(progress, n_batches, f"epoch {epoch + 1}" + (f"/{num_epochs}" if num_epochs else ""))
    loss_sum = torch.zeros((), dtype=torch.float64)
    images = bad_count = steps = 0
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for i, (x, y, bad) in enumerate(loader):
        bad_count += _count_bad(bad, skip_bad_images)
        batch = None if x is None else _prepare(x, y, device, mixup_fn)
        if batch is None:
            continue
        x, y = batch
        update = (i + 1) % accum_steps == 0 or i + 1 == n_batches
        with model.no_sync() if is_ddp and not update else contextlib.nullcontext():
            with autocast(device, precision):
                loss = criterion(model(x), y)
            value = all_reduce(loss.detach().float().clone()) / world
            if not torch.isfinite(value):
                where = f"optimizer step {global_step + 1} (epoch {epoch + 1}, batch {i + 1} of {n_batches})"
                raise _non_finite(value, where, last_good_checkpoint)
            scaled = loss / accum_steps
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if update:
            global_step += 1
            steps += 1
            _optimizer_step(optimizer, params, model=model, scaler=scaler, clip_grad=clip_grad, scheduler=scheduler,
                            ema=ema, global_step=global_step)
        loss_sum += value.double() * len(x)
        images += len(x)
        done = update and max_updates is not None and global_step >= max_updates
        if bar is not None:
            bar.update(1)
            if i % 10 == 0 or i + 1 == n_batches or done:
                _show(bar, loss_sum=loss_sum, images=images, world=world, start=start,
                      lr=max(g["lr"] for g in optimizer.param_groups))  # the head's, under layer decay
        if done:
            break
    if bar is not None:
        bar.close()
    return _epoch_stats(loss_sum=loss_sum, images=images, bad_count=bad_count, start=start, steps=steps,
                        global_step=global_step, lr=max(g["lr"] for g in optimizer.param_groups))


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
    precision: str = "fp32",
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
    bar = _progress_bar(progress, len(loader), desc)  # type: ignore[arg-type]
    start = time.perf_counter()
    for x, y, bad in loader:
        if bar is not None:
            bar.update(1)
        sums[3] += _count_bad(bad, skip_bad_images)
        if x is None:
            continue
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(x)
        logits = logits.float()
        if logits.shape[1] != C:
            raise TrainingError(f"the model has {logits.shape[1]} outputs but the data has {C} classes")
        sums[0] += F.cross_entropy(logits, y, reduction="sum").item()
        sums[1] += (logits.topk(min(5, C), dim=1).indices == y[:, None]).any(1).sum().item()
        sums[2] += len(y)
        confusion += torch.bincount((y * C + logits.argmax(1)).cpu(), minlength=C * C)
    if bar is not None:
        bar.close()
    all_reduce(sums)
    all_reduce(confusion)
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
