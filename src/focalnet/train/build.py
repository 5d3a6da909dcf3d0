"""What a run builds from its configuration: the model, the optimizer, the learning-rate schedule, the loss
and Mixup. Each is a function of the configuration or the recipe only, so a test can build one alone.

    model = model_for_run(cfg, recipe, info)     # a registered variant resized by cfg.arch, or --pretrained
    optimizer = build_optimizer(model, recipe, lr=scaled_lr(recipe.lr, global_batch))
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from ..checkpoints import read_checkpoint
from .config import TrainConfig, TrainingError
from .recipes import Recipe, scaled_lr

__all__ = [
    "model_for_run",
    "fit_stage_lists",
    "check_classes",
    "build_optimizer",
    "build_scheduler",
    "build_criterion",
    "build_mixup",
]


def check_classes(ckpt_classes: int, ckpt_names: Optional[list], path: str, info: Any, reset_head: bool) -> None:
    """Refuse a checkpoint whose head does not fit the data's classes (count, or names and order) unless the
    head is reset; the authors' 21842-class ImageNet-22K head fits 1000-class data (its 1K rows are used)."""
    n = info.num_classes
    if reset_head or ckpt_classes == 0:
        return
    if ckpt_classes != n and not (ckpt_classes == 21842 and n == 1000):
        raise TrainingError(
            f"the checkpoint {path} has a {ckpt_classes}-class head but the data ({info.name}) has {n} classes "
            f"({', '.join(info.class_names[:5])}{', ...' if n > 5 else ''}): pass --reset-head to fine-tune a fresh "
            f"{n}-class head, or use data with the checkpoint's classes"
        )
    if ckpt_names and ckpt_classes == n and list(ckpt_names) != list(info.class_names):
        raise TrainingError(
            f"the checkpoint {path} was trained on classes {ckpt_names[:5]}... but the data's classes are "
            f"{info.class_names[:5]}... (names or order differ): pass --reset-head to train a fresh head"
        )


def fit_stage_lists(name: str, arch: dict) -> dict:
    """With fewer (or more) stages in arch['depths'] than the variant has, take the variant's per-stage
    focal levels and windows for the stages that remain (repeating the last one), unless given."""
    from ..registry import get_spec, list_models

    if "depths" not in arch or name not in list_models():
        return arch
    spec_arch = get_spec(name).arch
    n = len(arch["depths"])
    for key in ("focal_levels", "focal_windows"):
        if key not in arch and isinstance(spec_arch.get(key), (list, tuple)) and len(spec_arch[key]) != n:
            values = list(spec_arch[key])
            arch[key] = (values + [values[-1]] * n)[:n]
    return arch


def model_for_run(cfg: TrainConfig, recipe: Recipe, info: Any) -> nn.Module:
    """The FocalNet of a configuration: a registered variant resized by cfg.arch, optionally fine-tuned
    from --pretrained (any layout, read once) with a fresh head."""
    from ..factory import create_model, load_model
    from ..registry import get_spec

    in_chans = cfg.in_chans or info.in_chans
    if cfg.in_chans is not None and cfg.in_chans != info.in_chans:
        raise TrainingError(f"--in-chans {cfg.in_chans} but the data has {info.in_chans} channels")
    arch = fit_stage_lists(cfg.model or "focalnet_tiny_srf", dict(cfg.arch or {}))
    drop_path = recipe.drop_path
    if cfg.pretrained:
        ckpt = read_checkpoint(cfg.pretrained)
        check_classes(ckpt.num_classes, ckpt.class_names, cfg.pretrained, info, cfg.reset_head)
        if cfg.model:
            if drop_path is None:
                drop_path = get_spec(cfg.model).drop_path_rate
            return create_model(cfg.model, pretrained=ckpt, num_classes=info.num_classes, in_chans=in_chans,
                                drop_path_rate=drop_path, reset_head=cfg.reset_head, **arch)
        if drop_path is not None:
            arch["drop_path_rate"] = drop_path
        return load_model(ckpt, num_classes=info.num_classes, in_chans=in_chans, reset_head=cfg.reset_head, **arch)
    name = cfg.model or "focalnet_tiny_srf"
    if drop_path is None:
        drop_path = get_spec(name).drop_path_rate
    return create_model(name, num_classes=info.num_classes, in_chans=in_chans, drop_path_rate=drop_path, **arch)


def build_optimizer(model: nn.Module, recipe: Recipe, lr: float) -> torch.optim.Optimizer:
    """timm's optimizer factory; weight decay on weights only (timm puts every 1-D parameter and every
    name in model.no_weight_decay() in a group without decay)."""
    from timm.optim import create_optimizer_v2

    kwargs: dict = {}
    if recipe.opt.lower().endswith("adamw") or recipe.opt.lower().endswith("adam"):
        kwargs = dict(betas=tuple(recipe.betas), eps=recipe.eps)
    return create_optimizer_v2(model, opt=recipe.opt, lr=lr, weight_decay=recipe.weight_decay,
                               filter_bias_and_bn=True, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, *, epochs: int, updates_per_epoch: int,
                    global_batch: int, total_updates: Optional[int] = None) -> Any:
    """timm's per-step cosine schedule with a linear warm-up prefix (the authors' setup). The cosine ends
    after `total_updates` optimizer steps (default: `epochs` whole epochs; a --time-budget run may end
    inside its last epoch)."""
    from timm.scheduler import CosineLRScheduler

    total = max(1, total_updates if total_updates is not None else epochs * updates_per_epoch)
    warmup = min(int(round(recipe.warmup_epochs * updates_per_epoch)), total - 1)
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, total - warmup),
        lr_min=scaled_lr(recipe.min_lr, global_batch),
        warmup_t=warmup,
        warmup_lr_init=scaled_lr(recipe.warmup_lr, global_batch),
        warmup_prefix=True,
        cycle_limit=1,
        t_in_epochs=False,
    )


def build_criterion(recipe: Recipe) -> nn.Module:
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if recipe.mixup > 0 or recipe.cutmix > 0:
        return SoftTargetCrossEntropy()  # Mixup produces smoothed soft targets itself
    if recipe.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=recipe.smoothing)
    return nn.CrossEntropyLoss()


def build_mixup(recipe: Recipe, num_classes: int) -> Optional[Any]:
    if recipe.mixup <= 0 and recipe.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                 switch_prob=recipe.mixup_switch_prob, mode="batch", label_smoothing=recipe.smoothing,
                 num_classes=num_classes)
