"""Images in, class names and probabilities out: the authors' evaluation transform and the names behind
each head (images are read by `focalnet.images.load_image`).

Preprocessing is the authors' evaluation transform, resolved and built by `focalnet.preprocess` (bicubic
resize of the shorter side to img_size / crop_pct, 256 for 224, center crop img_size, the model's mean/std).

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

import os
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from ..checkpoints.arch import imagenet_labels
from ..errors import FocalNetError
from ..images import ImageLike, check_image_side, check_resized, interpolation_mode, load_image
from ..preprocess import Preprocessing, eval_transform, resolve

__all__ = [
    "PredictionError",
    "Preprocessing",
    "preprocessing_for",
    "to_tensor",
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


def preprocessing_for(model: nn.Module, img_size: Optional[int] = None) -> Preprocessing:
    """The model's preprocessing (focalnet.preprocess.resolve): what its checkpoint saved
    (`model.preprocessing`, e.g. Fashion-MNIST's mean and std for a model trained by `focalnet train`), else
    the registry's for its variant (ImageNet's when unknown); `img_size` overrides the size.

    A grayscale model (in_chans=1, e.g. RGB weights whose stem was summed over its input channels) takes
    the gray image normalised with the mean of the three means and stds."""
    from ..registry import get_spec, list_models

    variant = getattr(model, "variant", None)
    in_chans = int(getattr(model, "in_chans", 3))
    if in_chans not in (1, 3):
        raise PredictionError(
            f"the model takes {in_chans}-channel input; images can feed 1-channel (grayscale) or 3-channel (RGB) models"
        )
    spec = get_spec(variant) if variant in list_models() else None
    return resolve(in_chans, spec=spec, saved=getattr(model, "preprocessing", None), img_size=img_size)


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
        from .memory import check_memory

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
