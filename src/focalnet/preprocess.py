"""How a model wants its input: the one place that knows the defaults, resolves a model's or a checkpoint's
input (size, crop, interpolation, mean/std), checks such a record, and builds the evaluation transform.

A preprocessing *record* is the plain dict a checkpoint carries (the keys in PREPROCESSING_KEYS; JSON-able
lists). `resolve` layers what is known, weakest first: the defaults here (ImageNet's statistics, 224 px,
the authors' 0.875 crop, bicubic), then the registered variant's, then what the file saved, then what the
caller asked for; statistics for another number of channels are converted (`stats_for`). The result is a
`Preprocessing`, validated once when it is made. `eval_transform` is timm's evaluation transform
(`create_transform`) for it, which is the authors' `build_transform(is_train=False)`: resize the shorter
side to img_size / crop_pct, center crop img_size, to tensor, normalise.

This module is in the base layer: it does not look a variant up itself (the registry is above it); callers
pass the variant's spec (anything with mean, std, crop_pct, interpolation and published.img_size).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from .images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    PreprocessingError,
    check_image_side,
    gray_stats,
    interpolation_mode,
)

__all__ = [
    "DEFAULT_CROP_PCT",
    "DEFAULT_IMG_SIZE",
    "DEFAULT_INTERPOLATION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PREPROCESSING_KEYS",
    "Preprocessing",
    "check_record",
    "data_config",
    "eval_transform",
    "resolve",
    "resolve_record",
    "spec_record",
    "stats_for",
]

# the authors' evaluation of every released model: 224 px crops of images resized to 256 (224 / 0.875), bicubic
DEFAULT_IMG_SIZE = 224
DEFAULT_CROP_PCT = 0.875
DEFAULT_INTERPOLATION = "bicubic"

PREPROCESSING_KEYS = ("mean", "std", "img_size", "crop_pct", "interpolation")

# more channels than this in a record's mean/std is not an image model's input (a corrupt file, not a choice)
_MAX_CHANNELS = 64


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_record(pre: Any, where: str = "preprocessing", *, in_chans: Optional[int] = None,
                 error: Callable[[str], Exception] = PreprocessingError) -> dict:
    """The one validation of a preprocessing record; returns it cleaned (lists of floats, an int size, no
    None values). mean and std: one finite number per channel (std > 0), as many as `in_chans` when given;
    img_size a whole number of pixels >= 1 (the cap on sizes is checked where an image is resized);
    crop_pct in (0, 1]; interpolation one of focalnet.images.INTERPOLATIONS. Messages name `where`; the
    exception is `error` (a checkpoint reader raises its own type)."""
    if not isinstance(pre, Mapping):
        raise error(f"{where} must be an object with {', '.join(PREPROCESSING_KEYS)}; got {type(pre).__name__}")
    unknown = sorted(map(str, set(pre) - set(PREPROCESSING_KEYS)))
    if unknown:
        raise error(f"{where}: unknown preprocessing keys {unknown}; allowed: {', '.join(PREPROCESSING_KEYS)}")
    out = {k: pre[k] for k in PREPROCESSING_KEYS if pre.get(k) is not None}
    for k in ("mean", "std"):
        v = out.get(k)
        if not isinstance(v, (list, tuple)) or not 1 <= len(v) <= _MAX_CHANNELS or not all(_finite(x) for x in v):
            raise error(f"{where}: '{k}' must be a list of finite numbers, one per input channel; got {v!r}")
        out[k] = [float(x) for x in v]
    if len(out["mean"]) != len(out["std"]) or any(v <= 0 for v in out["std"]):
        raise error(f"{where}: mean {out['mean']} and std {out['std']}: one per channel, std > 0")
    if in_chans is not None and len(out["mean"]) != in_chans:
        raise error(f"{where}: mean {out['mean']} and std {out['std']} are for {len(out['mean'])} channel(s), "
                    f"the model takes {in_chans}")
    if "img_size" in out:
        v = out["img_size"]
        if not _finite(v) or int(v) != v or v < 1:
            raise error(f"{where}: 'img_size' must be a whole number of pixels >= 1, got {v!r}")
        out["img_size"] = int(v)
    if "crop_pct" in out:
        v = out["crop_pct"]
        if not _finite(v) or not 0 < v <= 1:
            raise error(f"{where}: 'crop_pct' must be a number in (0, 1], got {v!r}")
        out["crop_pct"] = float(v)
    if "interpolation" in out and out["interpolation"] not in INTERPOLATIONS:
        raise error(f"{where}: 'interpolation' must be one of {', '.join(INTERPOLATIONS)}, got {out['interpolation']!r}")
    return out


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input: channels, normalisation and the evaluation resize/crop. Checked when
    made, where every path meets (a checkpoint's record, model.preprocessing set by hand, --img-size): a NaN
    mean would print "nan%", a 100000 px size would fill the memory."""

    in_chans: int = 3
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    img_size: int = DEFAULT_IMG_SIZE
    crop_pct: float = DEFAULT_CROP_PCT
    interpolation: str = DEFAULT_INTERPOLATION

    def __post_init__(self) -> None:
        check_image_side(self.img_size, "the input size (img_size)")
        check_record(self.record(), "preprocessing", in_chans=self.in_chans)
        check_image_side(self.resize, f"the resize before the crop (img_size {self.img_size} / crop_pct {self.crop_pct})")

    @property
    def mode(self) -> str:
        """The PIL mode images are read in."""
        return "L" if self.in_chans == 1 else "RGB"

    @property
    def resize(self) -> int:
        """The shorter side before the center crop: the authors' int(224 / 0.875) = 256 (timm floors too)."""
        return int(self.img_size / self.crop_pct)

    def record(self) -> dict:
        """The plain record a checkpoint stores (lists, not tuples: as JSON gives them back)."""
        return dict(mean=list(self.mean), std=list(self.std), img_size=self.img_size, crop_pct=self.crop_pct,
                    interpolation=self.interpolation)


def spec_record(spec: Any) -> dict:
    """The preprocessing record of a registered variant's spec (focalnet.registry.ModelSpec)."""
    return dict(mean=list(spec.mean), std=list(spec.std), img_size=spec.published.img_size,
                crop_pct=spec.crop_pct, interpolation=spec.interpolation)


def stats_for(mean: Sequence[float], std: Sequence[float], in_chans: int) -> tuple[tuple, tuple]:
    """mean/std for `in_chans` channels: as given when they fit, RGB statistics averaged for a gray input,
    gray ones repeated for every channel; any other mismatch has no sensible conversion."""
    if len(mean) == in_chans:
        return tuple(mean), tuple(std)
    if in_chans == 1:
        return gray_stats(mean, std)
    if len(mean) == 1:
        return tuple(mean) * in_chans, tuple(std) * in_chans
    raise PreprocessingError(
        f"no statistics are known for {in_chans}-channel input (the mean and std given are for {len(mean)}); "
        "pass a mean and std per channel"
    )


def resolve_record(*, spec: Any = None, saved: Optional[Mapping] = None, **asked: Any) -> dict:
    """The layered record, weakest first: the defaults (ImageNet's statistics, 224 px, crop 0.875, bicubic),
    the registered variant's `spec`, what a checkpoint `saved`, then `asked` (img_size=..., crop_pct=..., any
    of PREPROCESSING_KEYS); None never overrides. Unchecked, its statistics for the channels they were given
    for: `resolve` converts and checks them."""
    unknown = sorted(set(asked) - set(PREPROCESSING_KEYS))
    if unknown:
        raise TypeError(f"resolve_record() got unknown keys {unknown}")
    pre: dict = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, img_size=DEFAULT_IMG_SIZE, crop_pct=DEFAULT_CROP_PCT,
                     interpolation=DEFAULT_INTERPOLATION)
    for layer in (spec_record(spec) if spec is not None else None, saved, asked):
        pre.update({k: layer[k] for k in PREPROCESSING_KEYS if layer and layer.get(k) is not None})
    return pre


def resolve(in_chans: int = 3, *, spec: Any = None, saved: Optional[Mapping] = None,
            img_size: Optional[int] = None) -> Preprocessing:
    """The one resolution of a model's input: `resolve_record` (the defaults, overridden by the variant's `spec`
    when the model is a registered one, by what the checkpoint `saved`, and by an explicit `img_size`), with
    statistics for `in_chans` channels, checked.

    A saved record whose statistics are for another number of channels (RGB weights whose stem was summed to
    take gray input) describes other input and is left out; the variant's statistics are converted with
    `stats_for` (a gray model: the mean of the three means and stds)."""
    fits = bool(saved) and len(saved.get("mean") or ()) == in_chans
    pre = resolve_record(spec=spec, saved=saved if fits else None, img_size=img_size)
    pre["img_size"] = check_image_side(pre["img_size"], "the input size (img_size)")
    pre["mean"], pre["std"] = stats_for(pre["mean"], pre["std"], in_chans)
    pre = check_record(pre, "preprocessing", in_chans=in_chans)
    return Preprocessing(in_chans=in_chans, mean=tuple(pre["mean"]), std=tuple(pre["std"]), img_size=pre["img_size"],
                         crop_pct=pre["crop_pct"], interpolation=pre["interpolation"])


def data_config(pre: Preprocessing) -> dict:
    """`pre` as timm's data config (what `timm.data.resolve_data_config` returns), which `create_transform`
    and a timm pretrained_cfg take."""
    return dict(input_size=(pre.in_chans, pre.img_size, pre.img_size), interpolation=pre.interpolation,
                mean=tuple(pre.mean), std=tuple(pre.std), crop_pct=pre.crop_pct, crop_mode="center")


def eval_transform(pre: Preprocessing):
    """The evaluation transform for `pre`, timm's `create_transform` (the authors' too): PIL image in
    `pre.mode` -> (C, H, W) float, resized, center cropped and normalised."""
    from timm.data import create_transform

    interpolation_mode(pre.interpolation)  # an unknown name is our error, not a fallback inside timm
    return create_transform(**data_config(pre), is_training=False)
