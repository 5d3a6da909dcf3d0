"""What a run builds from its configuration: the input it feeds (channels, normalisation, size), the model,
the loss and Mixup. Each is a function of its arguments alone (the configuration, the recipe, the data's
info, the pretrained checkpoint; input_plan also looks at a folder's images), so a test can build one alone. (The optimizer and the schedule: `focalnet.train.optim`.)

    inputs = input_plan(cfg, recipe, pretrained)     # channels, mean/std, size, crop of the data it feeds
    model = model_for_run(cfg, recipe, info, pretrained)   # a registered variant resized by cfg.arch, or --pretrained
    pre = run_preprocessing(info, recipe)           # what model.safetensors and checkpoints carry
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch.nn as nn

from ..checkpoints import Checkpoint, read_checkpoint
from ..datasets import builtin_dataset
from ..registry import fit_stage_lists
from .config import TrainConfig, TrainingError
from .recipes import Recipe

__all__ = [
    "InputPlan",
    "input_plan",
    "folder_channels",
    "pretrained_preprocessing",
    "run_preprocessing",
    "read_pretrained",
    "model_for_run",
    "check_classes",
    "build_criterion",
    "build_mixup",
]

log = logging.getLogger("focalnet")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # palette images count as colour
_PROBE_IMAGES = 64


# --------------------------------------------------------------------------------------------------------
# What the run feeds the model: channels, normalisation, size (from the data and the pretrained weights)
# --------------------------------------------------------------------------------------------------------


@dataclass
class InputPlan:
    """How the run reads its images: the model's input channels, the normalisation (None: the data's own),
    the recipe with img_size / crop_pct / interpolation filled in from the pretrained weights, and the notes
    that say so (printed once each)."""

    in_chans: Optional[int]
    mean: Optional[tuple]
    std: Optional[tuple]
    recipe: Recipe
    notes: list = field(default_factory=list)
    num_train: int = 0  # training images (counted up to SMALL_DATA_IMAGES: enough to size a fine-tune)


def read_pretrained(cfg: TrainConfig) -> Optional[Checkpoint]:
    """The --pretrained checkpoint, read once for the whole run (None without one): a file in any layout,
    or a registered model name (not a file here) for its released weights (downloaded once, then cached)."""
    if not cfg.pretrained:
        return None
    from ..registry import list_models

    if cfg.pretrained in list_models() and not Path(cfg.pretrained).exists():
        from ..factory import download_weights

        log.info("--pretrained %s: the released weights", cfg.pretrained)
        return read_checkpoint(download_weights(cfg.pretrained))
    return read_checkpoint(cfg.pretrained)


def folder_channels(root: Path, limit: int = _PROBE_IMAGES) -> tuple[int, int, int]:
    """(channels, gray images, images looked at) of a class-folder tree, from the headers of up to `limit`
    images spread over the classes: 1 when every one is gray, else 3."""
    from PIL import Image

    from .data import IMAGE_EXTENSIONS

    classes = sorted(d for d in root.iterdir() if d.is_dir())
    per_class = max(1, limit // max(len(classes), 1))
    seen = gray = 0
    for c in classes:
        files = sorted(f for f in c.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)[:per_class]
        for f in files:
            try:
                with Image.open(f) as img:  # the header only: no decoding
                    mode = img.mode
            except (OSError, ValueError, SyntaxError):
                continue  # unreadable files are reported by the data loader
            seen += 1
            gray += mode in _GRAY_MODES
    return (1 if seen and gray == seen else 3), gray, seen


def pretrained_preprocessing(ckpt: Checkpoint) -> dict:
    """How the pretrained weights want their input (focalnet.preprocess.resolve_record): what the file says
    (ours), else the registered variant's (the released weights: ImageNet's mean/std, 224 px, crop 0.875,
    bicubic). Statistics are tuples, for the channels the file gave them for."""
    from ..preprocess import resolve_record
    from ..registry import get_spec, list_models

    spec = get_spec(ckpt.variant) if ckpt.variant in list_models() else None
    pre = resolve_record(spec=spec, saved=ckpt.preprocessing)
    return {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in pre.items()}


def input_plan(cfg: TrainConfig, recipe: Recipe, ckpt: Optional[Checkpoint]) -> InputPlan:
    """The input of a run. In-memory data sets keep their channels and statistics; a folder's channels are
    the images' (gray when every image looked at is gray; --in-chans wins), converted as they are read,
    with one note. With pretrained weights, a folder is normalised as the weights were trained, and the
    image size, crop and interpolation the recipe leaves open are the weights' (timm's data config)."""
    notes: list[str] = []
    num = _count_train(cfg)
    if builtin_dataset(cfg.data) or not Path(cfg.data).is_dir() or not (Path(cfg.data) / "train").is_dir():
        return InputPlan(cfg.in_chans, None, None, recipe, notes, num)
    chans, gray, seen = folder_channels(Path(cfg.data) / "train")
    in_chans = cfg.in_chans or chans
    if seen and in_chans == 3 and gray:
        notes.append(f"{gray} of {seen} images looked at are gray: they are repeated to the model's 3 channels")
    elif seen and in_chans == 1 and gray < seen:
        notes.append(f"{seen - gray} of {seen} images looked at are in colour: they are converted to gray (in_chans=1)")
    if ckpt is None:
        return InputPlan(in_chans, None, None, recipe, notes, num)
    from ..preprocess import stats_for

    pre = pretrained_preprocessing(ckpt)
    mean, std = stats_for(pre["mean"], pre["std"], in_chans)
    filled = {k: pre[k] for k in ("img_size", "crop_pct") if getattr(recipe, k) is None and pre.get(k)}
    if cfg.interpolation is None and pre.get("interpolation"):
        filled["interpolation"] = pre["interpolation"]
    if filled:
        notes.append("input as the pretrained weights were trained: "
                     + ", ".join(f"{k} {v}" for k, v in filled.items()) + f", mean {_fmt(mean)} std {_fmt(std)}")
    return InputPlan(in_chans, mean, std, recipe.replace(**filled), notes, num)


def _count_train(cfg: TrainConfig) -> int:
    """Training images of the data, counted up to SMALL_DATA_IMAGES (a walk over a large folder stops there)."""
    from .data import IMAGE_EXTENSIONS, describe_data
    from .recipes import SMALL_DATA_IMAGES

    limit = cfg.limit_train or SMALL_DATA_IMAGES
    if builtin_dataset(cfg.data):
        _, splits = describe_data(cfg.data, data_dir=cfg.data_dir, download=cfg.download)
        return min(len(splits["train"][1]), limit)
    n = 0
    for _, _, files in os.walk(Path(cfg.data) / "train", followlinks=True):
        n += sum(f.lower().endswith(IMAGE_EXTENSIONS) for f in files)
        if n >= limit:
            return limit
    return n


def _fmt(values: tuple) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def run_preprocessing(info: Any, recipe: Recipe) -> dict:
    """What every file a run writes carries about its input (the evaluation transform of the run): mean,
    std, image size, crop fraction and interpolation. In-memory data sets are fed whole (crop 1.0)."""
    from ..preprocess import DEFAULT_CROP_PCT

    crop = 1.0 if info.kind == "tensor" else (recipe.crop_pct if recipe.crop_pct is not None else DEFAULT_CROP_PCT)
    return dict(mean=list(info.mean), std=list(info.std), img_size=int(recipe.img_size or info.img_size),
                crop_pct=float(crop), interpolation=recipe.interpolation)


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


def model_for_run(cfg: TrainConfig, recipe: Recipe, info: Any, ckpt: Optional[Checkpoint] = None) -> nn.Module:
    """The FocalNet of a configuration: a registered variant resized by cfg.arch, optionally fine-tuned
    from --pretrained (any layout; `ckpt` when the run has read it already) with a fresh head. The model
    takes the data's channels: a pretrained stem of another channel count is adapted (gray <-> RGB)."""
    from ..factory import create_model, load_model
    from ..registry import get_spec

    in_chans = cfg.in_chans or info.in_chans
    if cfg.in_chans is not None and cfg.in_chans != info.in_chans:
        raise TrainingError(f"--in-chans {cfg.in_chans} but the data has {info.in_chans} channels")
    arch = fit_stage_lists(cfg.model or "focalnet_tiny_srf", dict(cfg.arch or {}))
    drop_path = recipe.drop_path
    if cfg.pretrained:
        ckpt = ckpt if ckpt is not None else read_pretrained(cfg)
        if ckpt.in_chans != in_chans:
            log.info("the pretrained stem takes %d channel(s), the data has %d: adapted (%s)", ckpt.in_chans,
                     in_chans, "summed over RGB" if in_chans == 1 else "gray weights spread over RGB")
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
