"""The run's plan, how many epochs and optimizer steps with the schedule that ends there, and fitting it
into --time-budget seconds: measured, then re-planned.

A `Plan` is a frozen value: a re-plan returns a new one. A --time-budget run's plan has three moments:

1. before training, `measure_budget` times a few steps on a copy of the model (`time_steps`) and turns the
   times into a number of optimizer steps (`plan_updates`; the cosine ends exactly there, inside an epoch
   if need be);
2. after the first epoch, `after_first_epoch` redoes the sum with that epoch's real timings (the probe's few
   steps can be off by tens of %);
3. before every later epoch, `before_next_epoch` asks whether the next epoch would overrun the budget; if so
   the steps left are re-planned to fit the time left, and the run stops early only when not one more step
   fits. When instead the steps left would end with more than 3% of the budget unused (later epochs run
   faster than the first, which the plan was made from), they are re-planned to use it.

The sums (`updates_that_fit`, `plan_updates`, `replan_updates`, `next_epoch_seconds`, `overruns`) are pure
functions of the times they are given. Under torchrun every process takes the same decision: the slowest
one's timings (`_slowest`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn

from .data import DataInfo, set_loader_epoch
from .distributed import all_reduce, unwrap_model
from .loop import autocast
from .optim import build_optimizer, build_scheduler
from .recipes import Recipe

__all__ = ["Plan", "Schedule", "Replan", "eval_interval", "measure_budget", "with_total_updates", "after_first_epoch",
           "before_next_epoch", "updates_that_fit", "time_steps", "plan_updates", "replan_updates",
           "next_epoch_seconds", "overruns", "run_end_seconds", "median"]

# the first plan keeps 4% for checkpoints, plots and drift; the re-plan, from real epochs, 2%
PLAN_MARGIN = 1.04
REPLAN_MARGIN = 1.02
# an epoch may end up to 2% past the budget: cutting the cosine short costs more accuracy than a few seconds
OVERRUN_TOLERANCE = 1.02
# and a plan that would leave more than 3% of the budget unused is lengthened: the first epoch's timings (which
# the plan after it is made from) are slower than the later ones, with their allocations and warm-up
UNDERRUN_TOLERANCE = 0.97


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


def run_end_seconds(*, elapsed_s: float, remaining_updates: int, updates_per_epoch: int, update_s: float,
                    overhead_s: float) -> float:
    """When the plan's steps left would end: each at `update_s`, each epoch begun with its `overhead_s`."""
    epochs_left = math.ceil(remaining_updates / max(updates_per_epoch, 1))
    return elapsed_s + remaining_updates * update_s + epochs_left * overhead_s


def time_steps(model: nn.Module, loader: Any, eval_loader: Any, *, criterion: nn.Module, recipe: Recipe, lr: float,
               precision: str, device: torch.device, mixup_fn: Optional[Any], n_steps: int = 12,
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
        with autocast(device, precision):
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
                with autocast(device, precision):
                    probe(x.to(device))
            if i >= 1:
                eval_times.append(time.perf_counter() - t0)
    return median(times), median(eval_times)


# --------------------------------------------------------------------------------------------------------
# The plan, and the schedule it ends
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """What the learning-rate schedule is built from, apart from its length (a plan's length may change)."""

    optimizer: torch.optim.Optimizer
    recipe: Recipe
    lr: float
    updates_per_epoch: int

    def build(self, *, epochs: int, total_updates: int, steps_done: Optional[int] = None) -> Any:
        """The cosine that ends after `total_updates` optimizer steps; at step `steps_done` when given."""
        scheduler = build_scheduler(self.optimizer, self.recipe, epochs=epochs, lr=self.lr,
                                    updates_per_epoch=self.updates_per_epoch, total_updates=total_updates)
        if steps_done is not None:
            scheduler.step_update(num_updates=steps_done)
        return scheduler


@dataclass(frozen=True)
class Plan:
    """How long the run is: the one place its number of epochs lives (config.yaml's `epochs` is this)."""

    epochs: int  # epochs begun; the last of a --time-budget run may be partial
    total_updates: int  # optimizer steps of the whole run: where the cosine ends
    scheduler: Any  # timm's scheduler for this plan (its state moves with the steps; a re-plan builds a new one)
    schedule: Schedule
    planned: bool = False  # chosen to fit --time-budget (and so re-planned after the first epoch)
    note: str = ""  # how the steps were chosen (said when the run begins)
    probe_s: float = 0.0  # seconds spent measuring the steps, counted as training time


def with_total_updates(plan: Plan, total: int, *, epoch: int, steps_done: int) -> Plan:
    """The plan re-made to end after `total` optimizer steps, after epoch `epoch` (counted from 0): the
    epochs left, and the cosine rebuilt to end exactly there, continuing from step `steps_done`."""
    per_epoch = plan.schedule.updates_per_epoch
    epochs = epoch + 1 + math.ceil((total - steps_done) / per_epoch)
    return dataclasses.replace(plan, epochs=epochs, total_updates=total,
                               scheduler=plan.schedule.build(epochs=epochs, total_updates=total, steps_done=steps_done))


# an evaluation image costs about a third of a training image (forward only)
EVAL_COST = 1 / 3


# under --time-budget every evaluation is training time lost: evaluations are spaced to cost at most this share
BUDGETED_EVAL_SHARE = 0.03


def eval_interval(eval_every: Optional[int], info: DataInfo, *, time_budget: Optional[float] = None) -> int:
    """Epochs between evaluations: --eval-every, or by default every epoch unless an epoch is so short that
    evaluating the test split would cost more than training it (a few dozen images per class against
    hundreds of test images): then every ceil(test cost / train cost) epochs, so that evaluation stays
    about half the run's time at most. Under --time-budget, where each evaluation takes the time of training
    steps, they are spaced further, to cost at most BUDGETED_EVAL_SHARE of the training (Fashion-MNIST's 10k
    test images against its 60k training images: every 2nd epoch). Deterministic (from the image counts and
    whether there is a budget), so a resumed run evaluates on the same epochs; the last epoch is always
    evaluated, so the final figures are the same either way."""
    if eval_every is not None:
        return max(int(eval_every), 1)
    share = EVAL_COST * info.num_eval / max(info.num_train, 1)  # an evaluation's cost in training epochs
    return max(1, math.ceil(share), math.ceil(share / BUDGETED_EVAL_SHARE - 1e-9) if time_budget else 1)


def _slowest(*values: float) -> list[float]:
    """Every process must take the same decision: the slowest one's timings."""
    return [float(v) for v in all_reduce(torch.tensor(values, dtype=torch.float64), op="max")]


# --------------------------------------------------------------------------------------------------------
# --time-budget: measured before the run, re-planned during it
# --------------------------------------------------------------------------------------------------------


def measure_budget(budget_s: float, *, model: nn.Module, train_loader: Any, eval_loader: Any, criterion: nn.Module,
                   mixup_fn: Optional[Any], recipe: Recipe, lr: float, precision: str, device: torch.device,
                   accum_steps: int, evals_per_epoch: float, updates_per_epoch: int, seed: int,
                   rank: int) -> tuple[int, str, float]:
    """Optimizer steps that fit `budget_s`, measured on a few steps of a copy of `model`: (steps, the line
    that says so, seconds spent measuring). evals_per_epoch: evaluations per epoch (2 with an EMA, divided
    by the epochs between evaluations)."""
    t0 = time.perf_counter()
    set_loader_epoch(train_loader, 0, seed, rank)
    t_batch, t_eval = time_steps(model, train_loader, eval_loader, criterion=criterion, recipe=recipe, lr=lr,
                                 precision=precision, device=device, mixup_fn=mixup_fn)
    probe_s = time.perf_counter() - t0
    update_s, eval_s = _slowest(t_batch * accum_steps, evals_per_epoch * len(eval_loader) * t_eval)
    total = plan_updates(budget_s, probe_s=probe_s, update_s=update_s, eval_s=eval_s,
                         updates_per_epoch=updates_per_epoch)
    batch = recipe.batch_size
    note = (f"time budget {budget_s:.0f} s: measured {t_batch * 1e3:.0f} ms per batch of {batch} "
            f"({batch / max(t_batch, 1e-9):.0f} img/s) and about {eval_s * PLAN_MARGIN:.0f} s per evaluation -> "
            f"{total} optimizer steps ({total / updates_per_epoch:.2f} epochs)")
    return total, note, probe_s


@dataclass(frozen=True)
class Replan:
    """What the budget decided after an epoch: the plan to go on with (the same one when nothing changed),
    the line that announces a new plan, and why the run stops now (None: it goes on)."""

    plan: Plan
    said: Optional[str] = None
    stop: Optional[str] = None


def _refit(plan: Plan, total: int, *, epoch: int, steps_done: int, why: str) -> Replan:
    per_epoch = plan.schedule.updates_per_epoch
    said = (f"time budget: {why} -> {total} optimizer steps ({total / per_epoch:.2f} epochs) instead of "
            f"{plan.total_updates}")
    return Replan(with_total_updates(plan, total, epoch=epoch, steps_done=steps_done), said=said)


def after_first_epoch(plan: Plan, budget_s: float, *, epoch: int, epoch_s: float, elapsed_s: float, update_s: float,
                      overhead_s: float, steps_done: int) -> Replan:
    """The steps that fit, from the first epoch's real timings (this process's; the slowest one's count)."""
    elapsed_s, update_s, overhead_s = _slowest(elapsed_s, update_s, overhead_s)
    total = replan_updates(budget_s, elapsed_s=elapsed_s, update_s=update_s, overhead_s=overhead_s,
                           steps_done=steps_done, updates_per_epoch=plan.schedule.updates_per_epoch)
    if total == plan.total_updates:
        return Replan(plan)
    return _refit(plan, total, epoch=epoch, steps_done=steps_done, why=f"the first epoch took {epoch_s:.0f} s")


def before_next_epoch(plan: Plan, budget_s: float, *, epoch: int, elapsed_s: float, update_times: list[float],
                      overheads: list[float], steps_done: int) -> Replan:
    """Whether the run goes on after epoch `epoch`. When the next epoch would overrun the budget, the steps
    left are first re-planned to fit the time left (the cosine rebuilt to end there): stopping instead would
    leave the rest of the budget unused and the learning rate not annealed. Only when not one more step fits
    does the run stop."""
    per_epoch = plan.schedule.updates_per_epoch
    elapsed_s, update_s, overhead_s = _slowest(elapsed_s, median(update_times), median(overheads))
    next_epoch = next_epoch_seconds(remaining_updates=plan.total_updates - steps_done, updates_per_epoch=per_epoch,
                                    update_times=[update_s], overheads=[overhead_s])
    if not overruns(budget_s, elapsed_s=elapsed_s, next_epoch_s=next_epoch):
        return _lengthened(plan, budget_s, epoch=epoch, elapsed_s=elapsed_s, update_s=update_s,
                           overhead_s=overhead_s, steps_done=steps_done)
    total = replan_updates(budget_s, elapsed_s=elapsed_s, update_s=update_s, overhead_s=overhead_s,
                           steps_done=steps_done, updates_per_epoch=per_epoch)
    if total > steps_done:
        return _refit(plan, total, epoch=epoch, steps_done=steps_done,
                      why=f"the next epoch (about {next_epoch:.0f} s) would end after {elapsed_s + next_epoch:.0f} s")
    return Replan(plan, stop=f"stopped after epoch {epoch + 1} of {plan.epochs}: not one more step fits in the "
                             f"time budget of {budget_s:.0f} s")


def _lengthened(plan: Plan, budget_s: float, *, epoch: int, elapsed_s: float, update_s: float, overhead_s: float,
                steps_done: int) -> Replan:
    """The plan, or a longer one when its steps left would end before UNDERRUN_TOLERANCE of the budget (the
    steps after the first epoch run faster than it did): the cosine rebuilt to end where the time runs out."""
    per_epoch = plan.schedule.updates_per_epoch
    end = run_end_seconds(elapsed_s=elapsed_s, remaining_updates=plan.total_updates - steps_done,
                          updates_per_epoch=per_epoch, update_s=update_s, overhead_s=overhead_s)
    if end >= budget_s * UNDERRUN_TOLERANCE:
        return Replan(plan)
    total = replan_updates(budget_s, elapsed_s=elapsed_s, update_s=update_s, overhead_s=overhead_s,
                           steps_done=steps_done, updates_per_epoch=per_epoch)
    if total <= plan.total_updates:
        return Replan(plan)
    return _refit(plan, total, epoch=epoch, steps_done=steps_done,
                  why=f"the steps left would end after {end:.0f} s of {budget_s:.0f} s")
