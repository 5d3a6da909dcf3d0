"""Images in, class names and probabilities out: reading images safely, the authors' evaluation transform,
and the names behind each head.

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

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

__all__ = [
    "ImageError",
    "load_image",
    "Preprocessing",
    "preprocessing_for",
    "to_tensor",
    "eval_transform",
    "ClassNames",
    "class_names_for",
    "Prediction",
    "predict",
]

ImageLike = Union[str, os.PathLike, "PIL.Image.Image", np.ndarray, torch.Tensor]  # noqa: F821

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IN22K_MS_UNTRAINED = 850  # ImageNet-1K 'teddy bear' has no ImageNet-22K images


class ImageError(ValueError):
    """An image that cannot be used: missing, unreadable, or in an unsupported format."""


# ----------------------------------------------------------------------------------------------------------
# Reading images
# ----------------------------------------------------------------------------------------------------------


def load_image(image: ImageLike, mode: str = "RGB") -> "PIL.Image.Image":  # noqa: F821
    """Read `image` (a path, a PIL image, an (H, W[, C]) uint8 array or a (C, H, W) float tensor in [0, 1])
    as a PIL image in `mode` ('RGB' or 'L').

    Errors name the file and say what is wrong: missing, a folder, not an image (unsupported format),
    truncated, or larger than Pillow's decompression-bomb limit."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        img = image
    elif isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ImageError(f"an image tensor must be (C, H, W) with C = 1 or 3, got shape {tuple(image.shape)}")
        arr = (t.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        img = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    elif isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.min() >= 0 and arr.max() <= 1:
                arr = (arr * 255).round().astype(np.uint8)
            else:
                raise ImageError(f"an image array must be uint8, or float in [0, 1]; got {arr.dtype}")
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise ImageError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {arr.shape}")
        img = Image.fromarray(arr)
    else:
        path = Path(image)
        if not path.exists():
            raise ImageError(f"image not found: {path}")
        if path.is_dir():
            raise ImageError(f"{path} is a folder, not an image file")
        try:
            with Image.open(path) as opened:
                opened.load()  # decode now: a truncated file fails here, not later
                img = opened.copy()
        except UnidentifiedImageError:
            raise ImageError(
                f"cannot read {path} as an image: unsupported format or not an image "
                "(Pillow reads JPEG, PNG, BMP, GIF, TIFF, WebP, ...)"
            ) from None
        except Image.DecompressionBombError as e:
            raise ImageError(f"{path} is too large to decode safely ({e}); downscale it first") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"cannot decode {path}: {e} (truncated or corrupt file?)") from None
    return _convert(img, mode)


def _convert(img: "PIL.Image.Image", mode: str) -> "PIL.Image.Image":  # noqa: F821
    from PIL import Image

    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit and float images: PIL's convert would clip to 0..255; rescale the range instead
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo)
        img = Image.fromarray((arr * 255).round().astype(np.uint8))
    if img.mode in ("RGBA", "LA", "P", "PA") and mode == "RGB":
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))  # transparent -> white, not black
        img = Image.alpha_composite(background, img)
    return img.convert(mode)


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

    @property
    def mode(self) -> str:
        return "L" if self.in_chans == 1 else "RGB"


def preprocessing_for(model: nn.Module, img_size: Optional[int] = None) -> Preprocessing:
    """The model's preprocessing: what its checkpoint saved (`model.preprocessing`, e.g. Fashion-MNIST's
    mean and std for a model trained by `focalnet train`), else the registry's for its variant (ImageNet's
    when unknown).

    A grayscale model (in_chans=1, e.g. RGB weights whose stem was summed over its input channels) takes
    the gray image normalised with the mean of the three means and stds."""
    from .registry import get_spec

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
        raise ValueError(
            f"the model takes {in_chans}-channel input; images can feed 1-channel (grayscale) or 3-channel (RGB) models"
        )
    saved = getattr(model, "preprocessing", None)  # what the weights were trained with (load_model sets it)
    if saved and len(saved.get("mean", ())) == in_chans:
        kwargs.update(mean=tuple(saved["mean"]), std=tuple(saved["std"]))
        kwargs.update({k: saved[k] for k in ("img_size", "crop_pct", "interpolation") if saved.get(k) is not None})
    elif in_chans == 1:
        mean = kwargs.get("mean", IMAGENET_MEAN)
        std = kwargs.get("std", IMAGENET_STD)
        kwargs.update(mean=(float(np.mean(mean)),), std=(float(np.mean(std)),))
    if img_size is not None:
        kwargs["img_size"] = int(img_size)
    return Preprocessing(in_chans=in_chans, **kwargs)


def _interpolation(name: str):
    from torchvision.transforms import InterpolationMode

    try:
        return InterpolationMode(name)
    except ValueError:
        raise ValueError(f"unknown interpolation {name!r}; use bicubic, bilinear or nearest") from None


def eval_transform(pre: Preprocessing):
    """The authors' evaluation transform: resize the shorter side to img_size / crop_pct, center crop
    img_size, to tensor, normalise. Returns a torchvision transform: PIL image -> (C, H, W) float."""
    from torchvision import transforms as T

    scale = int(pre.img_size / pre.crop_pct)  # the authors' int(224 / 0.875) = 256
    return T.Compose([
        T.Resize(scale, interpolation=_interpolation(pre.interpolation)),
        T.CenterCrop(pre.img_size),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])


def to_tensor(img: "PIL.Image.Image", pre: Preprocessing, resize: Optional[int] = None) -> torch.Tensor:  # noqa: F821
    """The whole image as a normalised (C, H, W) tensor, without cropping (for pictures at any size);
    `resize` scales the shorter side to that many pixels first."""
    from torchvision import transforms as T

    ops = [T.Resize(int(resize), interpolation=_interpolation(pre.interpolation))] if resize else []
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


def _imagenet(subset: str) -> tuple[list[str], list[str]]:
    try:
        from timm.data import ImageNetInfo
    except ImportError:
        raise ImportError("ImageNet class names come from timm: pip install timm") from None
    info = ImageNetInfo(subset)
    n = info.num_classes()
    return [info.index_to_description(i) for i in range(n)], [info.index_to_label_name(i) for i in range(n)]


def class_names_for(model: nn.Module) -> ClassNames:
    """The names of the model's outputs (see the module docstring for the order of sources)."""
    n = int(getattr(model, "num_classes", 0))
    own = getattr(model, "class_names", None)
    if own and len(own) == n:
        return ClassNames([str(c) for c in own], "checkpoint")
    if n == 1000:
        names, synsets = _imagenet("imagenet-1k")
        return ClassNames(names, "ImageNet-1K", synsets)
    if n == 21842:
        names, synsets = _imagenet("imagenet-22k-ms")
        return ClassNames(
            names, "ImageNet-22K (the authors' order: 0-999 are ImageNet-1K)", synsets,
            untrained={IN22K_MS_UNTRAINED: "ImageNet-1K class with no ImageNet-22K images: this output never trained"},
        )
    if n == 21841:
        names, synsets = _imagenet("imagenet-22k")
        return ClassNames(names, "ImageNet-22K (fall11 order)", synsets)
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
        raise ValueError("the model has no classifier (num_classes=0): it gives features, not classes")
    pre = preprocessing_for(model, img_size)
    transform = eval_transform(pre)
    names = class_names_for(model)
    topk = max(1, min(int(topk), len(names)))
    device = torch.device(device) if device is not None else next(model.parameters()).device
    tensors = [transform(load_image(img, pre.mode)) for img in images]
    if tensors:
        from .complexity import check_memory

        check_memory(model, pre.img_size, batch_size=min(batch_size, len(tensors)), device=device,
                     what=f"a batch of {min(batch_size, len(tensors))} image(s)")
    was_training = model.training
    model.eval()
    out: list[Prediction] = []
    try:
        for start in range(0, len(tensors), batch_size):
            x = torch.stack(tensors[start : start + batch_size]).to(device)  # (B, C, img_size, img_size)
            probs = model(x).float().softmax(-1)
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
