"""Named training recipes: the optimisation and augmentation settings of a run, apart from any model.

`imagenet` is the paper's recipe (section 4.1 and the authors' configs), `small` serves 28 px and 8 px
data sets (Fashion-MNIST, scikit-learn's digits), where the heavy ImageNet augmentation (RandAugment,
Mixup/CutMix, random resized crops) only slows a short run down. Every field can be overridden from
the command line (`--lr`, `--mixup`, ...) or a YAML config; the resolved values are written to the run's
`config.yaml`.

Learning rates are given per 1024 images and scaled linearly with the global batch
(batch_size x processes x accumulation steps), as the authors do; warm-up and minimum lr are scaled too.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import FocalNetError

__all__ = ["Recipe", "RECIPES", "get_recipe", "list_recipes", "scaled_lr"]


class RecipeError(FocalNetError, ValueError):
    """An unknown recipe or recipe field."""


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of a training run. None means 'decided by the model or the data':
    drop_path None takes the variant's value (the registry's spec.drop_path_rate), img_size None the
    data's native size, crop_pct None the variant's evaluation crop (0.875 for the released models)."""

    name: str = "custom"
    description: str = ""
    # optimisation
    opt: str = "adamw"
    lr: float = 1e-3  # per 1024 images
    warmup_lr: float = 5e-7  # per 1024 images
    min_lr: float = 5e-6  # per 1024 images
    weight_decay: float = 0.05  # on weights only: norms, biases and layer scales get none
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    epochs: int = 300
    warmup_epochs: float = 20.0
    clip_grad: Optional[float] = 5.0  # max global gradient norm; None: no clipping
    batch_size: int = 128  # per process
    # regularisation
    smoothing: float = 0.1
    drop_path: Optional[float] = None
    # augmentation (timm's create_transform and Mixup)
    img_size: Optional[int] = 224
    train_crop: str = "random_resized"  # 'random_resized' (ImageNet) or 'pad' (small images: pad, then random crop)
    pad: Optional[int] = None  # for train_crop='pad'; None: img_size // 14 (2 px at 28 px, 0 at 8 px); 0: no shift
    hflip: float = 0.5
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    reprob: float = 0.25
    remode: str = "pixel"
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    # evaluation
    crop_pct: Optional[float] = None
    interpolation: str = "bicubic"

    def replace(self, **changes: Any) -> "Recipe":
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise RecipeError(f"unknown recipe field(s) {', '.join(unknown)}; fields: {', '.join(recipe_fields())}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def recipe_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(Recipe) if f.name not in ("name", "description")]


RECIPES: dict[str, Recipe] = {
    "imagenet": Recipe(
        name="imagenet",
        description="the paper's ImageNet-1K recipe: 300 epochs, AdamW lr 1e-3 per 1024 images, wd 0.05, "
        "cosine with 20 warm-up epochs, clip 5.0, label smoothing 0.1, RandAugment m9, random erasing 0.25, "
        "Mixup 0.8 / CutMix 1.0, drop path per variant; evaluation: bicubic resize to 256/224 of the crop, center crop",
    ),
    "small": Recipe(
        name="small",
        description="28 px and 8 px data (Fashion-MNIST, digits) in runs of a few epochs: AdamW lr 3.2e-2 per 1024 "
        "images (4e-3 at batch 128), wd 0.05, cosine with half an epoch of warm-up, clip 5.0, drop path 0.05, "
        "no augmentation and no label smoothing (measured: both slow a run of a few epochs down); for 30+ epochs "
        "add --pad 2 --hflip 0.5 --smoothing 0.1",
        lr=3.2e-2,  # FocalNet's modulation (q times h(context)) starts near zero: small nets need a high lr
        warmup_lr=1e-5,
        min_lr=1e-5,
        epochs=10,
        warmup_epochs=0.5,
        batch_size=128,
        smoothing=0.0,
        drop_path=0.05,
        img_size=None,
        train_crop="pad",
        pad=0,
        hflip=0.0,
        auto_augment=None,
        color_jitter=0.0,
        reprob=0.0,
        mixup=0.0,
        cutmix=0.0,
        crop_pct=1.0,
    ),
}


def list_recipes() -> list[str]:
    return sorted(RECIPES)


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """The named recipe, with `overrides` (None values are ignored: they mean 'keep the recipe's')."""
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}; choose one of {', '.join(list_recipes())}")
    return RECIPES[name].replace(**{k: v for k, v in overrides.items() if v is not None})


def scaled_lr(lr_per_1024: float, global_batch: int) -> float:
    """Linear scaling rule (Goyal et al. 2017), the authors' convention: lr x global batch / 1024."""
    return lr_per_1024 * global_batch / 1024
