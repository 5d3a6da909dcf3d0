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

__all__ = ["run_lr", "scaled_lr", "build_optimizer", "build_scheduler", "warmup_steps", "not_learning",
           "WARMUP_FRACTION", "MAX_WARMUP_WARNING"]

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
    if recipe.opt.lower() in ("adamw", "adam"):  # torch's own Adam / AdamW (timm's names for them)
        kwargs = dict(betas=tuple(recipe.betas), eps=recipe.eps, fused=_fused_ok(model))
    elif recipe.opt.lower().endswith("adamw") or recipe.opt.lower().endswith("adam"):
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


def _fused_ok(model: nn.Module) -> Optional[bool]:
    """torch's fused Adam(W) kernel where every parameter is a float tensor on the CPU or a GPU (None: torch's
    default). On the CPU torch otherwise updates one parameter tensor at a time: the main job's 96 small
    tensors took 8 ms per step that way and 0.9 ms fused (docs/speed.md), the same update in one kernel."""
    params = [p for p in model.parameters() if p.requires_grad]
    ok = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return True if ok else None


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


# a run is "stuck" when, after the warm-up and at least this many optimizer steps, its training loss is
# at chance level (within 10% of ln(classes), or far above it) and its test top-1 under 1.5x chance
DIVERGENCE_STEPS = 30


def not_learning(record: dict, *, history: list, num_classes: int, lr: float, global_step: int,
                 warmup: int) -> Optional[str]:
    """The warning for a run that learns nothing after epoch `record` (None: it learns). The learning rate
    is almost always wrong, and the warning says which way (a loss far above chance: too high; at chance
    with a small lr: too low). history: the epochs' records so far, `record` included."""
    if num_classes < 2:
        return None
    chance_loss, chance_top1, loss = math.log(num_classes), 100.0 / num_classes, record["train_loss"]
    if loss < 0.9 * chance_loss or record.get("test_top1", 0.0) >= 1.5 * chance_top1:
        return None
    # never while the loss is falling fast; before the warm-up and DIVERGENCE_STEPS steps are done, only a
    # loss far above chance with a test top-1 at chance counts (a fresh head on pretrained features may start
    # above chance, and an epoch not evaluated has no top-1 to show)
    falling = len(history) > 1 and loss < 0.8 * history[0]["train_loss"]
    exploded = "test_top1" in record and loss >= 1.5 * chance_loss
    if falling or (global_step < max(DIVERGENCE_STEPS, warmup) and not exploded):
        return None
    if loss >= 1.5 * chance_loss or lr >= 0.05:
        hint = f"the learning rate {lr:.3g} is too high: try --lr {lr / 10:.3g}"
    else:
        hint = (f"the learning rate {lr:.3g} is probably too low (--lr is absolute, as in timm) or the warm-up too "
                f"long: try --lr {lr * 10:.3g}")
    test = f", test top-1 {record['test_top1']:.1f}% (chance {chance_top1:.1f}%)" if "test_top1" in record else ""
    return (f"the run is not learning: after {global_step} optimizer steps the training loss {loss:.3f} is "
            f"{'far above' if loss >= 1.5 * chance_loss else 'at'} chance level (ln {num_classes} = "
            f"{chance_loss:.3f}){test}; {hint} (start again with --overwrite)")
