"""The optimizer and the learning-rate schedule of a run, as timm's train.py builds them.

    lr = run_lr(recipe, global_batch)                   # --lr as given, else --base-lr x global batch / 1024
    optimizer = build_optimizer(model, recipe, lr=lr)   # AdamW; layer-wise lr decay when recipe.layer_decay
    scheduler = build_scheduler(optimizer, recipe, epochs=3, updates_per_epoch=40, lr=lr)

Learning rates follow timm's train.py: `--lr` is the absolute peak rate; without it the rate comes from
`--base-lr`, given per 1024 images and scaled linearly with the global batch (the authors' convention for
the paper's recipe, Goyal et al. 2017). The warm-up start and the final rate
(`warmup_lr`, `min_lr`, per 1024 images like `base_lr`) keep their ratio to the base rate: the schedule
starts at warmup_lr / base_lr of the peak and ends at min_lr / base_lr of it, so that the paper's recipe
computes what it did before `--lr` became absolute, and an absolute `--lr` moves them along.

Layer-wise lr decay (BEiT, ConvNeXt, timm's `param_groups_layer_decay`): the head trains at the full
rate, each block below it at `layer_decay` times the rate of the block above, the stem lowest; the groups
come from the model's `group_matcher` (one per block, a stage's downsampling with its first block).
timm's schedulers multiply each group's rate by its `lr_scale`.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

import torch
import torch.nn as nn

from .recipes import Recipe

__all__ = ["run_lr", "scaled_lr", "build_optimizer", "build_scheduler", "warmup_steps", "WARMUP_FRACTION",
           "MAX_WARMUP_WARNING"]

log = logging.getLogger("focalnet")

# a recipe without warm-up epochs (fine-tuning) warms up over this share of the run's optimizer steps
WARMUP_FRACTION = 0.05
# a warm-up over more than this share of the run is warned about: the peak rate is barely reached
MAX_WARMUP_WARNING = 0.5


def scaled_lr(lr_per_1024: float, global_batch: int) -> float:
    """Linear scaling rule (Goyal et al. 2017), the authors' convention: lr x global batch / 1024."""
    return lr_per_1024 * global_batch / 1024


def run_lr(recipe: Recipe, global_batch: int) -> float:
    """The peak learning rate: recipe.lr when set (absolute, as timm's --lr), else base_lr scaled by the batch."""
    if recipe.lr is not None:
        return float(recipe.lr)
    return scaled_lr(recipe.base_lr, global_batch)


def build_optimizer(model: nn.Module, recipe: Recipe, lr: float) -> torch.optim.Optimizer:
    """timm's optimizer factory; weight decay on weights only (timm puts every 1-D parameter and every
    name in model.no_weight_decay() in a group without decay); with recipe.layer_decay, timm's
    layer-wise groups from the model's group_matcher (each group's `lr_scale` is applied by the scheduler)."""
    from timm.optim import create_optimizer_v2

    kwargs: dict = {}
    if recipe.opt.lower().endswith("adamw") or recipe.opt.lower().endswith("adam"):
        kwargs = dict(betas=tuple(recipe.betas), eps=recipe.eps)
    layer_decay = recipe.layer_decay if recipe.layer_decay and recipe.layer_decay < 1.0 else None
    if layer_decay is not None and not hasattr(model, "group_matcher"):
        # timm would fall back to guessing layers from module names; a model without groups trains flat
        log.warning("layer-wise lr decay %.2f ignored: %s has no group_matcher()", layer_decay, type(model).__name__)
        layer_decay = None
    opt = create_optimizer_v2(model, opt=recipe.opt, lr=lr, weight_decay=recipe.weight_decay,
                              filter_bias_and_bn=True, layer_decay=layer_decay, **kwargs)
    if layer_decay is not None:
        # timm leaves every group at the peak lr until the scheduler's first step: start at the scaled rates
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
    return opt


def warmup_steps(recipe: Recipe, *, updates_per_epoch: int, total: int) -> int:
    """Warm-up optimizer steps: recipe.warmup_epochs when set, else WARMUP_FRACTION of the run (at least
    one step when the run has more than a few); never the whole run."""
    if recipe.warmup_epochs is not None:
        steps = int(round(recipe.warmup_epochs * updates_per_epoch))
    else:
        steps = int(math.ceil(WARMUP_FRACTION * total)) if total >= 20 else 0
    return max(0, min(steps, total - 1))


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, *, epochs: int, updates_per_epoch: int,
                    lr: float, total_updates: Optional[int] = None) -> Any:
    """timm's per-step cosine schedule with a linear warm-up prefix (the authors' setup). The cosine ends
    after `total_updates` optimizer steps (default: `epochs` whole epochs; a --time-budget run may end
    inside its last epoch). The warm-up start and the floor keep the recipe's ratio to its base rate."""
    from timm.scheduler import CosineLRScheduler

    total = max(1, total_updates if total_updates is not None else epochs * updates_per_epoch)
    warmup = warmup_steps(recipe, updates_per_epoch=updates_per_epoch, total=total)
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, total - warmup),
        lr_min=recipe.min_lr / recipe.base_lr * lr,
        warmup_t=warmup,
        warmup_lr_init=recipe.warmup_lr / recipe.base_lr * lr,
        warmup_prefix=True,
        cycle_limit=1,
        t_in_epochs=False,
    )
