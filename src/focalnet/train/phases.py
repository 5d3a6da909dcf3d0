"""What each phase of `focalnet.train.run.train` hands on to the next: frozen values (Setup, Data, Plan) made
once and read by the later phases, the objects that train (Parts), and the one record that changes from epoch
to epoch (Progress), all held by a Run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from .budget import Plan
from .config import TrainConfig, resolved_config
from .data import DataInfo
from .distributed import DistEnv
from .recipes import Recipe
from .rundir import RunLock
from .state import TrainingCheckpoint

__all__ = ["Setup", "Data", "Parts", "Plan", "Progress", "Run", "run_config"]


@dataclass(frozen=True)
class Setup:
    """What the run is asked to do and where it writes."""

    cfg: TrainConfig
    env: DistEnv
    out: Path
    precision: str  # what every phase computes in: cfg.precision, or what --precision auto chose (run_precision)
    precision_choice: str = ""  # with --precision auto: the choice and why, one line (choose_precision)
    allocator: str = ""  # on the CPU: what focalnet.allocator.keep_freed_memory did, or why not
    resume: Optional[TrainingCheckpoint] = None  # the training checkpoint a resumed run continues from
    changes: tuple = ()  # what --resume was asked to change, one line each (announced in begin)
    changed: frozenset = frozenset()  # the names of those fields
    lock: Optional[RunLock] = None  # process 0's hold on the output folder
    pretrained: Optional[Any] = None  # the --pretrained Checkpoint, read once


@dataclass(frozen=True)
class Data:
    """The data and the resolved recipe: every value filled in (the named recipe's, the flags', the pretrained
    weights' input and the data's size), made once here. Its `epochs` is what the recipe asks; how many the
    run has is the Plan's."""

    recipe: Recipe
    info: DataInfo
    train_loader: Any
    eval_loader: Any
    updates_per_epoch: int  # optimizer steps per pass over the training data


@dataclass
class Parts:
    """The model and what trains it."""

    core: nn.Module  # the model itself: what is saved, evaluated and counted
    model: nn.Module  # core, wrapped in DistributedDataParallel under torchrun
    train_model: nn.Module  # model, through torch.compile where --compile says (compile_training)
    criterion: nn.Module
    mixup_fn: Optional[Any]
    optimizer: torch.optim.Optimizer
    scaler: Optional[torch.amp.GradScaler]
    ema: Optional[nn.Module]
    global_batch: int
    lr: float


@dataclass
class Progress:
    """Everything that changes from epoch to epoch."""

    start_epoch: int = 0
    global_step: int = 0
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"top1": -1.0, "epoch": None})
    train_time_before: float = 0.0  # training seconds of the epochs before a resume
    last_checkpoint: Optional[str] = None
    final_eval: Optional[dict] = None
    final_ema_eval: Optional[dict] = None
    stopped_early: Optional[str] = None
    warnings: list = field(default_factory=list)  # said during the run, repeated at its end and in summary.json
    update_times: list = field(default_factory=list)  # seconds per optimizer step, per epoch
    overheads: list = field(default_factory=list)  # seconds of each epoch outside its training steps (evaluation, ...)
    loop_start: float = 0.0
    curves_at: float = float("-inf")  # perf_counter() of the last curves.png (redrawn every CURVES_EVERY_S)


@dataclass
class Run:
    setup: Setup
    data: Data
    parts: Parts
    plan: Plan  # replaced (never edited) when --time-budget re-plans
    progress: Progress
    arch_name: str
    macs: Optional[int]
    tensorboard: Any = None

    def config(self) -> dict:
        """config.yaml: the resolved configuration with the plan's epochs; `-c` takes it back."""
        return run_config(self.setup, self.data.recipe, self.plan)


def run_config(setup: Setup, recipe: Recipe, plan: Plan) -> dict:
    resolved = resolved_config(setup.cfg, recipe, plan.epochs)
    resolved["output"] = str(setup.out)
    return resolved

