"""Inference on images of any size with a saved detector or segmenter, and the pictures of the results.

`detect_image` / `segment_image` take a (3, H, W) uint8 image; `detect_files` / `segment_files` are what
`focalnet detect` and `focalnet segment` run: read each image, predict, draw, write `<name>.<task>.png`.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import load_dense_model
from .draw import draw_detections, overlay_segmentation, read_image, save_png

__all__ = ["detect_image", "segment_image", "detect_files", "segment_files", "FileResult"]

log = logging.getLogger("focalnet")
PathLike = Union[str, os.PathLike]


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        got = f"{tuple(image.shape)} {image.dtype}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"expected a (3, H, W) uint8 RGB image, got {got} (focalnet.dense.draw.read_image reads files)")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"the image is empty ({image.shape[2]}x{image.shape[1]} pixels)")


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
            raise ValueError(
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
        raise FileNotFoundError(f"image {image} does not exist" if not image.exists() else f"{image} is not a file")
    out = Path(output_dir or image.parent) / f"{image.stem}.{suffix}.png"
    if out.resolve() == image.resolve():
        raise ValueError(f"the output {out} would overwrite the input image; choose another --output-dir")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force (force=True) to overwrite it")
    return out


def _load(checkpoint: PathLike, task: str) -> tuple[nn.Module, list[str]]:
    model, info = load_dense_model(checkpoint)
    if info.task != task:
        other = "focalnet segment" if info.task == "segmentation" else "focalnet detect"
        raise ValueError(f"{checkpoint} holds a {info.task} model, not a {task} model: use `{other}`")
    return model, info.class_names


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
        raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
    paths = [Path(p) for p in images]
    outs = [_output_path(p, output_dir, "detect", force) for p in paths]
    model, names = _load(checkpoint, "detection")
    results = []
    for path, out in zip(paths, outs):
        image = read_image(path)
        pred = detect_image(model, image)
        keep = pred["scores"] >= score_threshold
        picture = draw_detections(image, pred, names, score_threshold=score_threshold)
        save_png(picture, out)
        lines = [
            f"{names[int(c)] if int(c) < len(names) else int(c)} {float(s):.2f} box {[round(float(v), 1) for v in b]}"
            for b, c, s in zip(pred["boxes"][keep], pred["labels"][keep], pred["scores"][keep])
        ]
        results.append(FileResult(str(path), str(out), lines))
    return results


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
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    paths = [Path(p) for p in images]
    outs = [_output_path(p, output_dir, "segment", force) for p in paths]
    model, names = _load(checkpoint, "segmentation")
    results = []
    for path, out in zip(paths, outs):
        image = read_image(path)
        class_map = segment_image(model, image, max_side=max_side)
        save_png(overlay_segmentation(image, class_map, names, alpha=alpha), out)
        counts = torch.bincount(class_map.flatten(), minlength=len(names))
        total = class_map.numel()
        lines = [
            f"{names[c] if c < len(names) else c}: {_percent(n, total)} of pixels" for c, n in enumerate(counts.tolist()) if n
        ]
        results.append(FileResult(str(path), str(out), lines))
    return results
