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

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..errors import FocalNetError

__all__ = ["Recipe", "RECIPES", "get_recipe", "list_recipes", "recipe_fields", "fit_to_data", "SMALL_DATA_IMAGES",
           "setting", "at_least"]


class RecipeError(FocalNetError, ValueError):
    """An unknown recipe or recipe field."""


# -- one table: each Recipe field is also a `focalnet train` flag, a YAML key and a TrainConfig field ------


def at_least(lo: float, *, strict: bool = False, hi: Optional[float] = None, hi_strict: bool = False) -> tuple:
    """A range check: (test, the words for the error message), e.g. at_least(0, hi=1) for a probability."""
    lo_text = f"> {lo}" if strict else f">= {lo}"
    hi_text = "" if hi is None else (f" and < {hi}" if hi_strict else f" and <= {hi}")

    def ok(v: float) -> bool:
        return (v > lo if strict else v >= lo) and (hi is None or (v < hi if hi_strict else v <= hi))

    return ok, lo_text + hi_text


FRACTION = at_least(0, hi=1)  # a probability


def setting(default: Any, help: str, *, check: Optional[tuple] = None, choices: Optional[Callable] = None,
            **kw: Any) -> Any:
    """A field with its --help text, its range (`at_least`) or its choices (a function: read when checked)."""
    meta = dict(help=help, check=check, choices=choices, **kw)
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _interpolations() -> tuple:
    from ..images import INTERPOLATIONS

    return tuple(INTERPOLATIONS)


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of a training run. None means 'decided by the model or the data':
    drop_path None takes the variant's value (the registry's spec.drop_path_rate), img_size None the
    data's native size, crop_pct None the variant's evaluation crop (0.875 for the released models).

    Every field but name and description is a `focalnet train` flag and YAML key (focalnet.train.config
    derives them from this table): a new field is added here, and only here."""

    name: str = "custom"
    description: str = ""
    # optimisation
    opt: str = setting("adamw", "optimizer, any of timm's (adamw)", nonempty=True)
    lr: Optional[float] = setting(None, "peak learning rate, absolute (as timm's --lr; default: the recipe's, else "
                                        "--base-lr x global batch / 1024)", check=at_least(0, strict=True))
    base_lr: float = setting(1e-3, "learning rate per 1024 images, scaled by the global batch / 1024 (the paper's "
                                   "convention; used when --lr is not given)", check=at_least(0, strict=True))
    warmup_lr: float = setting(5e-7, "warm-up start lr per 1024 images (its ratio to --base-lr is kept)",
                               check=at_least(0))
    min_lr: float = setting(5e-6, "final lr of the cosine per 1024 images (its ratio to --base-lr is kept)",
                            check=at_least(0))
    weight_decay: float = setting(0.05, "AdamW weight decay (on weights; not on norms, biases, layer scales)",
                                  check=at_least(0))
    layer_decay: Optional[float] = setting(None, "layer-wise lr decay per block from the head down (timm's "
                                                 "param_groups_layer_decay; 1: off; finetune: 0.75)",
                                           check=at_least(0, strict=True, hi=1))
    betas: tuple = setting((0.9, 0.999), "AdamW's two moment decays, e.g. --betas 0.9 0.95",
                           check=at_least(0, hi=1, hi_strict=True), length=2)
    eps: float = setting(1e-8, "AdamW's epsilon", check=at_least(0, strict=True))
    epochs: Optional[int] = setting(300, "epochs (default: the recipe's, or what fits --time-budget)",
                                    check=at_least(1))
    warmup_epochs: Optional[float] = setting(20.0, "linear warm-up epochs (finetune: 5% of the run's steps)",
                                             check=at_least(0))
    clip_grad: Optional[float] = setting(5.0, "max gradient norm (0: no clipping)", check=at_least(0))
    batch_size: Optional[int] = setting(128, "images per process and step", check=at_least(1))
    # regularisation
    smoothing: Optional[float] = setting(0.1, "label smoothing", check=at_least(0, hi=1, hi_strict=True))
    drop_path: Optional[float] = setting(None, "stochastic depth (default: the recipe's, else the variant's)",
                                         check=at_least(0, hi=1, hi_strict=True))
    # augmentation (timm's create_transform and Mixup); None (finetune): sized from the data
    img_size: Optional[int] = setting(224, "training / evaluation size (default: 224 for folders, native for tensors)",
                                      check=at_least(1))
    train_crop: Optional[str] = setting("random_resized", "'random_resized' (ImageNet) or 'pad' (small images: pad, "
                                        "then random crop)", choices=lambda: ("random_resized", "pad"))
    pad: Optional[int] = setting(None, "padding of the 'pad' crop (default: img_size // 14; 0: no random shift)",
                                 check=at_least(0))
    hflip: Optional[float] = setting(0.5, "horizontal flip probability", check=FRACTION)
    auto_augment: Optional[str] = setting("rand-m9-mstd0.5-inc1", "timm auto-augment policy, e.g. "
                                          "rand-m9-mstd0.5-inc1 ('none': off)")
    color_jitter: float = setting(0.4, "color jitter", check=at_least(0))
    reprob: Optional[float] = setting(0.25, "random erasing probability", check=FRACTION)
    remode: str = setting("pixel", "random erasing mode", choices=lambda: ("pixel", "rand", "const"))
    mixup: Optional[float] = setting(0.8, "Mixup alpha (0: off)", check=at_least(0))
    cutmix: Optional[float] = setting(1.0, "CutMix alpha (0: off)", check=at_least(0))
    mixup_prob: float = setting(1.0, "probability of Mixup/CutMix per batch", check=FRACTION)
    mixup_switch_prob: float = setting(0.5, "probability of CutMix instead of Mixup", check=FRACTION)
    # evaluation
    crop_pct: Optional[float] = setting(None, "evaluation center-crop ratio (0.875: resize to 256/224 of the crop)",
                                        check=at_least(0, strict=True, hi=1))
    interpolation: str = setting("bicubic", "resize interpolation", choices=_interpolations)

    def __post_init__(self) -> None:
        # YAML and the flags give a list; the recipe keeps a tuple (hashable, like the rest of a frozen value)
        object.__setattr__(self, "betas", tuple(self.betas))

    def replace(self, **changes: Any) -> "Recipe":
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise RecipeError(f"unknown recipe field(s) {', '.join(unknown)}; fields: {', '.join(recipe_fields())}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def recipe_fields(recipe: Optional[type] = None) -> list[str]:
    """The settings of a recipe: every field of Recipe (or of `recipe`, a subclass) but its name and description."""
    return [f.name for f in dataclasses.fields(recipe or Recipe) if f.name not in ("name", "description")]


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

