"""Fitting a run into --time-budget seconds: how many optimizer steps fit, measured, then re-planned.

The plan has three moments, each a function here:

1. before training, `time_steps` measures a few steps on a copy of the model and `plan_updates` turns the
   times into a number of optimizer steps (the cosine schedule ends exactly there, inside an epoch if need be);
2. after the first epoch, `replan_updates` redoes the sum with that epoch's real timings (the probe's few
   steps can be off by tens of %);
3. before every later epoch, `overruns` says whether the next epoch would overrun the budget; if so the steps
   left are re-planned (`replan_updates` again) to fit the time left, and the run stops early only when not
   one more step fits.

All but `time_steps` are pure functions of the times they are given.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Optional

import torch
import torch.nn as nn

from .optim import build_optimizer
from .distributed import unwrap_model
from .loop import autocast
from .recipes import Recipe

__all__ = ["updates_that_fit", "time_steps", "plan_updates", "replan_updates", "next_epoch_seconds", "overruns",
           "median"]

# the first plan keeps 4% for checkpoints, plots and drift; the re-plan, from real epochs, 2%
PLAN_MARGIN = 1.04
REPLAN_MARGIN = 1.02
# an epoch may end up to 2% past the budget: cutting the cosine short costs more accuracy than a few seconds
OVERRUN_TOLERANCE = 1.02


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if values else 0.0


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


def plan_updates(budget_s: float, *, probe_s: float, update_s: float, eval_s: float, updates_per_epoch: int) -> int:
    """Optimizer steps of the whole run, from the probe's seconds per update and per evaluation; the
    probe's own time `probe_s` counts against the budget."""
    return updates_that_fit(budget_s - probe_s, update_s=update_s * PLAN_MARGIN, eval_s=eval_s * PLAN_MARGIN,
                            updates_per_epoch=updates_per_epoch)


def replan_updates(budget_s: float, *, elapsed_s: float, update_s: float, overhead_s: float, steps_done: int,
                   updates_per_epoch: int) -> int:
    """The new total of optimizer steps after the first epoch: `steps_done`, and what fits in the rest of
    the budget when each update takes `update_s` and each epoch spends `overhead_s` outside its updates
    (evaluation, checkpoints), as the first epoch did."""
    more = updates_that_fit(budget_s - elapsed_s, update_s=update_s * REPLAN_MARGIN,
                            eval_s=overhead_s * REPLAN_MARGIN, updates_per_epoch=updates_per_epoch, minimum=0)
    return steps_done + more


def next_epoch_seconds(*, remaining_updates: int, updates_per_epoch: int, update_times: list[float],
                       overheads: list[float]) -> float:
    """How long the next epoch will take: the typical epoch so far (the median: the first one is slower,
    with its allocations and warm-up)."""
    return min(remaining_updates, updates_per_epoch) * median(update_times) + median(overheads)


def overruns(budget_s: float, *, elapsed_s: float, next_epoch_s: float) -> bool:
    return elapsed_s + next_epoch_s > budget_s * OVERRUN_TOLERANCE


def time_steps(model: nn.Module, loader: Any, eval_loader: Any, *, criterion: nn.Module, recipe: Recipe, lr: float,
               amp: str, device: torch.device, mixup_fn: Optional[Any], n_steps: int = 12,
               n_warm: int = 3) -> tuple[float, float]:
    """Seconds per training batch and per evaluation batch, measured on a copy of the model (the run itself
    starts from the untouched model)."""
    probe = copy.deepcopy(model)
    opt = build_optimizer(unwrap_model(probe), recipe, lr)
    probe.train()
    times = []
    it = iter(loader)
    for i in range(n_steps + n_warm):
        t0 = time.perf_counter()
        try:
            x, y, _ = next(it)
        except StopIteration:
            break
        if x is None:
            continue
        x, y = x.to(device), y.to(device)
        if mixup_fn is not None and len(x) % 2 == 0:
            x, y = mixup_fn(x, y)
        with autocast(device, amp):
            loss = criterion(probe(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= n_warm:
            times.append(time.perf_counter() - t0)
    del it
    eval_times = []
    probe.eval()
    with torch.no_grad():
        for i, (x, _, _) in enumerate(eval_loader):
            if i >= n_warm + 4:
                break
            t0 = time.perf_counter()
            if x is not None:
                with autocast(device, amp):
                    probe(x.to(device))
            if i >= 1:
                eval_times.append(time.perf_counter() - t0)
    return median(times), median(eval_times)
