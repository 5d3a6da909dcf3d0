"""Inference on images of any size with a saved detector or segmenter, and the pictures of the results.

`detect_image` / `segment_image` take a (3, H, W) uint8 image; `detect_files` / `segment_files` are what
`focalnet detect` and `focalnet segment` run: read each image, predict, draw, write `<name>.<task>.png`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import FocalNetError
from ..images import ImageError, read_image
from .checkpoint import load_dense_model
from .draw import draw_detections, overlay_segmentation, save_png

__all__ = ["detect_image", "segment_image", "detect_files", "segment_files", "FileResult", "DensePredictionError"]

log = logging.getLogger("focalnet")
PathLike = Union[str, os.PathLike]


class DensePredictionError(FocalNetError, ValueError):
    """A prediction that cannot run as asked: the wrong kind of checkpoint, an image the model cannot
    take, an output that would overwrite its input, a threshold out of range."""


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        got = f"{tuple(image.shape)} {image.dtype}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise DensePredictionError(f"expected a (3, H, W) uint8 RGB image, got {got} (focalnet.images.read_image reads files)")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise DensePredictionError(f"the image is empty ({image.shape[2]}x{image.shape[1]} pixels)")


@torch.no_grad()
def detect_image(model: nn.Module, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """A torchvision detector's prediction for one (3, H, W) uint8 image, boxes in its pixel coordinates."""
    _check_image(image)
    H, W = image.shape[-2:]
    transform = getattr(model, "transform", None)
    if transform is not None:  # torchvision resizes to min_size / max_size: refuse sizes that would vanish
        min_size, max_size = float(transform.min_size[-1]), float(transform.max_size)
        scale = min(min_size / min(H, W), max_size / max(H, W))
        if min(H, W) * scale < 8:
            raise DensePredictionError(
                f"a {W}x{H} image is too elongated for this detector: resized to fit {int(max_size)} pixels its short "
                f"side would be {min(H, W) * scale:.1f} px; crop it into tiles closer to square"
            )
    model.eval()
    return model([image.float().div(255)])[0]


@torch.no_grad()
def segment_image(model: nn.Module, image: torch.Tensor, max_side: Optional[int] = None) -> torch.Tensor:
    """Class map (H, W) int64 of one (3, H, W) uint8 image. With `max_side`, larger images are resized for
    the network (keeping the aspect ratio) and the logits are resized back to the image."""
    _check_image(image)
    H, W = image.shape[-2:]
    x = image.float().div(255).unsqueeze(0)
    if max_side is not None and max(H, W) > max_side:
        s = max_side / max(H, W)
        x = F.interpolate(x, size=(max(1, round(H * s)), max(1, round(W * s))), mode="bilinear", antialias=True, align_corners=False)
    model.eval()
    logits = model(x)["out"]
    if logits.shape[-2:] != (H, W):
        logits = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
    return logits.argmax(1)[0]


@dataclass
class FileResult:
    image: str
    output: str
    summary: list[str]  # one line per object (detection) or class (segmentation)


def _percent(n: int, total: int) -> str:
    share = 100 * n / total
    return "<0.1%" if share < 0.1 else f"{share:.1f}%"


def _output_path(image: Path, output_dir: Optional[PathLike], suffix: str, force: bool) -> Path:
    if not image.is_file():
        raise ImageError(f"image {image} does not exist" if not image.exists() else f"{image} is not a file")
    out = Path(output_dir or image.parent) / f"{image.stem}.{suffix}.png"
    if out.resolve() == image.resolve():
        raise DensePredictionError(f"the output {out} would overwrite the input image; choose another --output-dir")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force (force=True) to overwrite it")
    return out


def _load(checkpoint: PathLike, task: str) -> tuple[nn.Module, list[str]]:
    model, info = load_dense_model(checkpoint)
    if info.task != task:
        other = "focalnet segment" if info.task == "segmentation" else "focalnet detect"
        raise DensePredictionError(f"{checkpoint} holds a {info.task} model, not a {task} model: use `{other}`")
    return model, info.class_names


def _run_files(
    checkpoint: PathLike,
    images: Sequence[PathLike],
    *,
    task: str,
    suffix: str,
    output_dir: Optional[PathLike],
    force: bool,
    picture: Callable[[nn.Module, list[str], torch.Tensor], tuple[torch.Tensor, list[str]]],
) -> list[FileResult]:
    """Check every output first, load the model once, then per image: read, `picture` (predict and draw:
    the picture and its summary lines), write `<stem>.<suffix>.png`."""
    paths = [Path(p) for p in images]
    outs = [_output_path(p, output_dir, suffix, force) for p in paths]
    model, names = _load(checkpoint, task)
    results = []
    for path, out in zip(paths, outs):
        drawn, lines = picture(model, names, read_image(path))
        save_png(drawn, out)
        results.append(FileResult(str(path), str(out), lines))
    return results


def _detection_picture(
    model: nn.Module, names: list[str], image: torch.Tensor, *, score_threshold: float
) -> tuple[torch.Tensor, list[str]]:
    pred = detect_image(model, image)
    keep = pred["scores"] >= score_threshold
    lines = [
        f"{names[int(c)] if int(c) < len(names) else int(c)} {float(s):.2f} box {[round(float(v), 1) for v in b]}"
        for b, c, s in zip(pred["boxes"][keep], pred["labels"][keep], pred["scores"][keep])
    ]
    return draw_detections(image, pred, names, score_threshold=score_threshold), lines


def _segmentation_picture(
    model: nn.Module, names: list[str], image: torch.Tensor, *, alpha: float, max_side: Optional[int]
) -> tuple[torch.Tensor, list[str]]:
    class_map = segment_image(model, image, max_side=max_side)
    counts = torch.bincount(class_map.flatten(), minlength=len(names))
    total = class_map.numel()
    lines = [
        f"{names[c] if c < len(names) else c}: {_percent(n, total)} of pixels" for c, n in enumerate(counts.tolist()) if n
    ]
    return overlay_segmentation(image, class_map, names, alpha=alpha), lines


def detect_files(
    checkpoint: PathLike,
    images: Sequence[PathLike],
    *,
    output_dir: Optional[PathLike] = None,
    score_threshold: float = 0.5,
    force: bool = False,
) -> list[FileResult]:
    """Detect objects in each image with the detector saved at `checkpoint`; write `<stem>.detect.png` with
    the boxes (and masks) drawn, beside the image or in `output_dir`. Outputs are checked before any work."""
    if not 0.0 <= score_threshold <= 1.0:
        raise DensePredictionError(f"score_threshold must be in [0, 1], got {score_threshold}")
    return _run_files(
        checkpoint, images, task="detection", suffix="detect", output_dir=output_dir, force=force,
        picture=partial(_detection_picture, score_threshold=score_threshold),
    )


def segment_files(
    checkpoint: PathLike,
    images: Sequence[PathLike],
    *,
    output_dir: Optional[PathLike] = None,
    alpha: float = 0.5,
    max_side: Optional[int] = None,
    force: bool = False,
) -> list[FileResult]:
    """Segment each image with the segmenter saved at `checkpoint`; write `<stem>.segment.png`: the class map
    as a coloured overlay (background left as is) with a legend of the classes found."""
    if not 0.0 <= alpha <= 1.0:
        raise DensePredictionError(f"alpha must be in [0, 1], got {alpha}")
    return _run_files(
        checkpoint, images, task="segmentation", suffix="segment", output_dir=output_dir, force=force,
        picture=partial(_segmentation_picture, alpha=alpha, max_side=max_side),
    )
