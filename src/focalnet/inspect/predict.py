"""Images in, class names and probabilities out: the authors' evaluation transform and the names behind
each head (images are read by `focalnet.images.load_image`).

Preprocessing is the authors' evaluation transform (their `build_transform(is_train=False)`, which timm's
`create_transform` reproduces): bicubic resize of the shorter side to img_size / crop_pct (256 for 224),
center crop img_size, ImageNet mean/std. The registry holds mean, std, crop_pct and interpolation per variant.

Class names, in this order:
- the checkpoint's own names (`model.class_names`, saved by `focalnet.save_model(..., class_names=...)`);
- 1000 classes: ImageNet-1K (timm's `ImageNetInfo`, WordNet lemmas);
- 21842 classes: the authors' reordered ImageNet-22K, which timm ships as 'imagenet-22k-ms'. Its indices
  0..999 are the ImageNet-1K classes in ImageNet-1K order; index 850 ('teddy, teddy bear') has no images in
  ImageNet-22K, so that output never saw a training image (flagged `untrained` in the output); 1000..21841
  are the other ImageNet-22K synsets;
- 21841 classes: ImageNet-22K in its original (fall11) order;
- otherwise 'class <index>'.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..checkpoints.arch import imagenet_labels
from ..errors import FocalNetError
from ..images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageLike,
    ImageTooLargeError,
    PreprocessingError,
    check_image_side,
    gray_stats,
    interpolation_mode,
    load_image,
    max_image_side,
)

__all__ = [
    "PredictionError",
    "Preprocessing",
    "preprocessing_for",
    "to_tensor",
    "check_resized",
    "eval_transform",
    "ClassNames",
    "class_names_for",
    "Prediction",
    "predict",
]

IN22K_MS_UNTRAINED = 850  # ImageNet-1K 'teddy bear' has no ImageNet-22K images


class PredictionError(FocalNetError, ValueError):
    """A model that cannot classify images: no classifier, or an input it cannot take."""


# ----------------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its input: channels, normalisation and the evaluation resize/crop."""

    in_chans: int = 3
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    img_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        # checked here, where every path meets (a checkpoint's metadata, model.preprocessing set by hand,
        # --img-size): a NaN mean would print "nan%", a 100000 px size would fill the memory
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) != self.in_chans or not all(_finite(v) for v in values):
                raise PreprocessingError(f"preprocessing {key} {list(values)!r}: {self.in_chans} finite number(s) needed")
        if any(v <= 0 for v in self.std):
            raise PreprocessingError(f"preprocessing std {list(self.std)!r} must be positive")
        if not _finite(self.crop_pct) or not 0 < self.crop_pct <= 1:
            raise PreprocessingError(f"preprocessing crop_pct must be in (0, 1], got {self.crop_pct!r}")
        check_image_side(self.img_size, "the input size (img_size)")
        check_image_side(self.resize, f"the resize before the crop (img_size {self.img_size} / crop_pct {self.crop_pct})")
        interpolation_mode(self.interpolation)

    @property
    def mode(self) -> str:
        return "L" if self.in_chans == 1 else "RGB"

    @property
    def resize(self) -> int:
        """The shorter side before the center crop: the authors' int(224 / 0.875) = 256."""
        return int(self.img_size / self.crop_pct)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def preprocessing_for(model: nn.Module, img_size: Optional[int] = None) -> Preprocessing:
    """The model's preprocessing: what its checkpoint saved (`model.preprocessing`, e.g. Fashion-MNIST's
    mean and std for a model trained by `focalnet train`), else the registry's for its variant (ImageNet's
    when unknown).

    A grayscale model (in_chans=1, e.g. RGB weights whose stem was summed over its input channels) takes
    the gray image normalised with the mean of the three means and stds."""
    from ..registry import get_spec

    variant = getattr(model, "variant", None)
    kwargs: dict[str, Any] = {}
    try:
        spec = get_spec(variant) if variant else None
    except KeyError:
        spec = None
    if spec is not None:
        kwargs = dict(
            mean=tuple(spec.mean), std=tuple(spec.std), img_size=spec.published.img_size,
            crop_pct=spec.crop_pct, interpolation=spec.interpolation,
        )
    in_chans = int(getattr(model, "in_chans", 3))
    if in_chans not in (1, 3):
        raise PredictionError(
            f"the model takes {in_chans}-channel input; images can feed 1-channel (grayscale) or 3-channel (RGB) models"
        )
    saved = getattr(model, "preprocessing", None)  # what the weights were trained with (load_model sets it)
    if saved and len(saved.get("mean", ())) == in_chans:
        kwargs.update(mean=tuple(saved["mean"]), std=tuple(saved["std"]))
        kwargs.update({k: saved[k] for k in ("img_size", "crop_pct", "interpolation") if saved.get(k) is not None})
    elif in_chans == 1:
        mean, std = gray_stats(kwargs.get("mean", IMAGENET_MEAN), kwargs.get("std", IMAGENET_STD))
        kwargs.update(mean=mean, std=std)
    if img_size is not None:
        kwargs["img_size"] = int(img_size)
    return Preprocessing(in_chans=in_chans, **kwargs)


def eval_transform(pre: Preprocessing):
    """The authors' evaluation transform: resize the shorter side to img_size / crop_pct, center crop
    img_size, to tensor, normalise. Returns a torchvision transform: PIL image -> (C, H, W) float."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(pre.resize, interpolation=interpolation_mode(pre.interpolation)),
        T.CenterCrop(pre.img_size),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])


def check_resized(img: "PIL.Image.Image", short_side: int, what: str) -> None:  # noqa: F821
    """Refuse, before resizing, an image whose longer side would exceed the cap once its shorter side is
    `short_side` (a 10 x 20000 px strip resized to 256 would be 512000 px long)."""
    long_side = round(max(img.width, img.height) * short_side / max(1, min(img.width, img.height)))
    cap = max_image_side()
    if long_side > cap:
        raise ImageTooLargeError(
            f"{what} ({img.width}x{img.height} px) resized to a shorter side of {short_side} px would be {long_side} px "
            f"long, above the limit of {cap} px; crop it closer to square first, or raise FOCALNET_MAX_IMAGE_SIDE"
        )


def to_tensor(img: "PIL.Image.Image", pre: Preprocessing, resize: Optional[int] = None) -> torch.Tensor:  # noqa: F821
    """The whole image as a normalised (C, H, W) tensor, without cropping (for pictures at any size);
    `resize` scales the shorter side to that many pixels first."""
    from torchvision import transforms as T

    if resize:
        resize = check_image_side(resize, "the resize (img_size)")
        check_resized(img, resize, "the image")
    ops = [T.Resize(int(resize), interpolation=interpolation_mode(pre.interpolation))] if resize else []
    ops += [T.ToTensor(), T.Normalize(pre.mean, pre.std)]
    return T.Compose(ops)(img)


# ----------------------------------------------------------------------------------------------------------
# Class names
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ClassNames:
    """Names of a head's outputs, where they come from, and the indices whose output never trained."""

    names: list[str]
    source: str
    synsets: Optional[list[str]] = None
    untrained: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


_IMAGENET_SOURCES = {
    1000: ("ImageNet-1K", {}),
    21842: ("ImageNet-22K (the authors' order: 0-999 are ImageNet-1K)",
            {IN22K_MS_UNTRAINED: "ImageNet-1K class with no ImageNet-22K images: this output never trained"}),
    21841: ("ImageNet-22K (fall11 order)", {}),
}


def class_names_for(model: nn.Module) -> ClassNames:
    """The names of the model's outputs (see the module docstring for the order of sources)."""
    n = int(getattr(model, "num_classes", 0))
    own = getattr(model, "class_names", None)
    if own and len(own) == n:
        return ClassNames([str(c) for c in own], "checkpoint")
    labels = imagenet_labels(n) if n in _IMAGENET_SOURCES else None  # one source of ImageNet's names (timm's)
    if labels is not None:
        synsets, names = labels
        source, untrained = _IMAGENET_SOURCES[n]
        return ClassNames(names, source, synsets, untrained=dict(untrained))
    return ClassNames([f"class {i}" for i in range(n)], "indices (the checkpoint holds no class names)")


# ----------------------------------------------------------------------------------------------------------
# Prediction
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    image: str
    top: list[dict]  # rank, index, label, synset, probability (and note where the output never trained)

    def to_dict(self) -> dict:
        return asdict(self)


def _name_of(image: ImageLike, i: int) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else f"image {i}"


@torch.no_grad()
def predict(
    model: nn.Module,
    images: Sequence[ImageLike],
    topk: int = 5,
    img_size: Optional[int] = None,
    batch_size: int = 16,
    device: Optional[Union[str, torch.device]] = None,
) -> list[Prediction]:
    """Top-k classes with probabilities for each image, after the authors' evaluation transform.

    Every image is read (and checked) before the model runs, so a bad file fails fast, naming itself."""
    if int(getattr(model, "num_classes", 0)) <= 0:
        raise PredictionError("the model has no classifier (num_classes=0): it gives features, not classes")
    pre = preprocessing_for(model, img_size)
    transform = eval_transform(pre)
    names = class_names_for(model)
    topk = max(1, min(int(topk), len(names)))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if images:  # the forward's memory, measured on the meta device, before any image is resized
        from .complexity import check_memory

        check_memory(model, pre.img_size, batch_size=min(batch_size, len(images)), device=device,
                     what=f"a batch of {min(batch_size, len(images))} image(s)")
    tensors = []
    for i, img in enumerate(images):
        pil = load_image(img, pre.mode)
        check_resized(pil, pre.resize, _name_of(img, i))
        tensors.append(transform(pil))
    was_training = model.training
    model.eval()
    out: list[Prediction] = []
    try:
        for start in range(0, len(tensors), batch_size):
            x = torch.stack(tensors[start : start + batch_size]).to(device)  # (B, C, img_size, img_size)
            probs = model(x).float().softmax(-1)
            if not torch.isfinite(probs).all():
                raise PredictionError(
                    f"the model gives non-finite outputs (NaN or inf) for {_name_of(images[start], start)}: its "
                    "weights hold NaN/inf (a diverged training?); use an earlier checkpoint"
                )
            p, idx = probs.topk(topk, dim=-1)
            for j in range(x.shape[0]):
                top = []
                for rank, (pj, ij) in enumerate(zip(p[j].tolist(), idx[j].tolist()), start=1):
                    row = dict(rank=rank, index=ij, label=names.names[ij], probability=pj)
                    if names.synsets is not None:
                        row["synset"] = names.synsets[ij]
                    if ij in names.untrained:
                        row["note"] = names.untrained[ij]
                    top.append(row)
                out.append(Prediction(_name_of(images[start + j], start + j), top))
    finally:
        model.train(was_training)
    return out
