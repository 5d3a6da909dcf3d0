"""Named training recipes: the optimisation and augmentation settings of a run, apart from any model.

`imagenet` is the paper's recipe (section 4.1 and the authors' configs), `small` serves 28 px and 8 px
data sets (Fashion-MNIST, scikit-learn's digits), where the heavy ImageNet augmentation (RandAugment,
Mixup/CutMix, random resized crops) only slows a short run down. `finetune` starts from released (or
your own) weights: chosen by default with --pretrained, sized from the data (see `fit_to_data`). Every
field can be overridden from the command line (`--lr`, `--mixup`, ...) or a YAML config; the resolved
values are written to the run's `config.yaml`.

Learning rates follow timm's train.py: `lr` is the absolute peak rate; when it is None the rate is
`base_lr`, given per 1024 images, scaled linearly with the global batch (batch_size x processes x
accumulation steps), as the authors do. `warmup_lr` and `min_lr` are per 1024 images like base_lr: the
schedule keeps their ratio to base_lr (see `focalnet.train.optim`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import FocalNetError

__all__ = ["Recipe", "RECIPES", "get_recipe", "list_recipes", "fit_to_data", "SMALL_DATA_IMAGES"]


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
    lr: Optional[float] = None  # absolute peak rate (timm's --lr); None: base_lr scaled by the global batch
    base_lr: float = 1e-3  # per 1024 images
    warmup_lr: float = 5e-7  # per 1024 images (its ratio to base_lr is kept)
    min_lr: float = 5e-6  # per 1024 images (its ratio to base_lr is kept)
    weight_decay: float = 0.05  # on weights only: norms, biases and layer scales get none
    layer_decay: Optional[float] = None  # layer-wise lr decay per block from the head down (None/1: off)
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    epochs: Optional[int] = 300  # None: sized from the data (fit_to_data)
    warmup_epochs: Optional[float] = 20.0  # None: a small part of the run (focalnet.train.optim.WARMUP_FRACTION)
    clip_grad: Optional[float] = 5.0  # max global gradient norm; None: no clipping
    batch_size: Optional[int] = 128  # per process; None: sized from the data
    # regularisation
    smoothing: Optional[float] = 0.1
    drop_path: Optional[float] = None
    # augmentation (timm's create_transform and Mixup); None (finetune): sized from the data
    img_size: Optional[int] = 224
    train_crop: Optional[str] = "random_resized"  # 'random_resized' (ImageNet) or 'pad' (small images: pad, then random crop)
    pad: Optional[int] = None  # for train_crop='pad'; None: img_size // 14 (2 px at 28 px, 0 at 8 px); 0: no shift
    hflip: Optional[float] = 0.5
    auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4
    reprob: Optional[float] = 0.25
    remode: str = "pixel"
    mixup: Optional[float] = 0.8
    cutmix: Optional[float] = 1.0
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
        base_lr=3.2e-2,  # FocalNet's modulation (q times h(context)) starts near zero: small nets need a high lr
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


# fine-tuning on fewer images than this gets no augmentation, Mixup/CutMix nor label smoothing (measured in
# docs/finetune.md: on folders of 50-2500 images they only slow a short fine-tune down)
SMALL_DATA_IMAGES = 20000
# a fine-tune is sized to about this many optimizer steps, within FINETUNE_EPOCHS
FINETUNE_STEPS = 300
FINETUNE_EPOCHS = (5, 30)

RECIPES["finetune"] = Recipe(
    name="finetune",
    description="start from pretrained weights (the default with --pretrained): AdamW at an absolute lr 1e-3 "
    "(timm's --lr), layer-wise lr decay 0.75 per block from the head down, wd 0.05, cosine over about 300 "
    "optimizer steps (5-30 epochs, batch 32 or less on small folders) with 5% warm-up, clip 5.0, drop path "
    "0.1; no augmentation, Mixup/CutMix nor smoothing under 20000 training images, the paper's "
    "(RandAugment m9, random erasing 0.25, Mixup 0.8 / CutMix 1.0, smoothing 0.1) above; the image size, "
    "normalisation, crop and interpolation of the pretrained weights",
    lr=1e-3,
    base_lr=3.2e-2,  # the same rate at batch 32, for --base-lr users
    warmup_lr=3.2e-5,  # 1e-3 of the peak
    min_lr=3.2e-4,  # 1e-2 of the peak
    layer_decay=0.75,
    epochs=None,
    warmup_epochs=None,
    batch_size=None,
    drop_path=0.1,
    img_size=None,
    smoothing=None,
    train_crop=None,
    pad=0,
    hflip=None,
    auto_augment=None,
    color_jitter=0.0,
    reprob=None,
    mixup=None,
    cutmix=None,
    crop_pct=None,
)


def fit_to_data(recipe: Recipe, *, num_train: int, kind: str) -> tuple[Recipe, list[str]]:
    """Fill the fields a recipe leaves to the data (None), and say how: (recipe, notes).

    batch: 32, or a quarter of the images on folders under 128 (at least 4 steps per epoch);
    epochs: about FINETUNE_STEPS optimizer steps, within FINETUNE_EPOCHS; augmentation, Mixup/CutMix and
    label smoothing: none under SMALL_DATA_IMAGES training images, the paper's above."""
    changes: dict = {}
    notes: list[str] = []
    if recipe.batch_size is None:
        changes["batch_size"] = max(1, min(32, num_train // 4))
    batch = changes.get("batch_size", recipe.batch_size)
    if recipe.epochs is None:
        steps = max(1, num_train // batch)
        low, high = FINETUNE_EPOCHS
        changes["epochs"] = int(min(high, max(low, math.ceil(FINETUNE_STEPS / steps))))
    large = num_train >= SMALL_DATA_IMAGES
    paper = RECIPES["imagenet"]
    augment = dict(
        smoothing=paper.smoothing if large else 0.0,
        train_crop=("random_resized" if kind == "folder" else "pad") if large else "pad",
        hflip=paper.hflip if large else 0.0,
        reprob=paper.reprob if large else 0.0,
        mixup=paper.mixup if large else 0.0,
        cutmix=paper.cutmix if large else 0.0,
    )
    filled = {k: v for k, v in augment.items() if getattr(recipe, k) is None}
    if filled:
        if large and recipe.auto_augment is None and "train_crop" in filled:
            filled["auto_augment"] = paper.auto_augment
        notes.append(
            f"{num_train} training images: "
            + ("the paper's augmentation, Mixup/CutMix and smoothing" if large else
               f"no augmentation, Mixup/CutMix nor label smoothing (fewer than {SMALL_DATA_IMAGES} images)")
        )
    changes.update(filled)
    if "batch_size" in changes or "epochs" in changes:
        notes.append(f"batch {batch} and {changes.get('epochs', recipe.epochs)} epochs, sized from "
                     f"{num_train} training images (about {FINETUNE_STEPS} optimizer steps)")
    return (recipe.replace(**changes) if changes else recipe), notes


def list_recipes() -> list[str]:
    return sorted(RECIPES)


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """The named recipe, with `overrides` (None values are ignored: they mean 'keep the recipe's')."""
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}; choose one of {', '.join(list_recipes())}")
    return RECIPES[name].replace(**{k: v for k, v in overrides.items() if v is not None})

