"""A detection and segmentation set made from real images: Fashion-MNIST items on larger canvases.

Each canvas holds a few Fashion-MNIST items (real photographs of clothes, 28x28 gray) placed at random
positions and scales, tinted with a random colour, on a textured background. Boxes, instance masks and the
semantic class map come from the items' own pixels (intensity above a threshold), so they follow the
garment's silhouette, not its square. Train canvases draw items from the train split, test canvases from the
test split (no item is shared). Everything is deterministic: canvas i of a data set is a function of
(split, seed, i), whatever order or workers read it in.

Targets follow torchvision's detection convention: `boxes` (N, 4) float xyxy in pixels, `labels` (N,) int64
in 1..10 (0 is the background), `masks` (N, H, W) uint8, plus `semantic` (H, W) int64 in 0..10 for
segmentation. The items are read by `focalnet.datasets`: from Debian's `dataset-fashion-mnist` (IDX files in
/usr/share/datasets/fashion-mnist), or any folder with the four IDX files (`root=` or $FASHION_MNIST_DIR).
"""
from __future__ import annotations

import colorsys
import logging
import math
import os
from functools import lru_cache
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..datasets import FASHION_MNIST_CLASSES, locate_fashion_mnist, read_fashion_mnist

__all__ = [
    "FASHION_MNIST_CLASSES",
    "CANVAS_CLASSES",
    "load_fashion_mnist",
    "CanvasDataset",
    "sanitize_target",
    "check_target",
    "collate_detection",
    "collate_segmentation",
    "canvas_detector_args",
]

log = logging.getLogger("focalnet")
PathLike = Union[str, os.PathLike]

CANVAS_CLASSES = ("background",) + FASHION_MNIST_CLASSES


@lru_cache(maxsize=4)
def load_fashion_mnist(split: str = "train", root: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST `split` ('train': 60000, 'test': 10000): (images (N, 28, 28) uint8, labels (N,) int64).

    Found and read by `focalnet.datasets` (`root`: the folder with the four IDX files); cached, since every
    CanvasDataset of a split draws from the same items."""
    return read_fashion_mnist(locate_fashion_mnist(root), split)


def _seed_for(split: str, seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0 if split == "train" else 1, index])


class CanvasDataset(Dataset):
    """`num_canvases` canvases of `canvas_size` pixels, each with `items` (min, max) Fashion-MNIST items.

    item_size: (min, max) side of an item in pixels (28 is the original); items never overlap, so each
        pixel belongs to at most one item. threshold: intensity (0..1) above which an item's pixel belongs to
        its mask; items with fewer than `min_pixels` mask pixels are not placed.
    Returns (image (3, H, W) float in [0, 1], target dict: boxes, labels, masks, semantic, item_ids).
    """

    classes = CANVAS_CLASSES

    def __init__(
        self,
        split: str = "train",
        num_canvases: int = 1000,
        *,
        canvas_size: Union[int, Sequence[int]] = 128,
        items: Sequence[int] = (1, 4),
        item_size: Sequence[int] = (20, 56),
        threshold: float = 0.15,
        min_pixels: int = 16,
        seed: int = 0,
        root: Optional[PathLike] = None,
    ) -> None:
        h, w = (canvas_size, canvas_size) if isinstance(canvas_size, int) else tuple(canvas_size)
        lo, hi = (int(v) for v in item_size)
        if num_canvases < 1:
            raise ValueError(f"num_canvases must be >= 1, got {num_canvases}")
        if not 4 <= lo <= hi or hi > min(h, w):
            raise ValueError(f"item_size {item_size} must satisfy 4 <= min <= max <= canvas side {min(h, w)}")
        if not 0 <= items[0] <= items[1]:
            raise ValueError(f"items must be (min, max) with 0 <= min <= max, got {items}")
        self.split = split
        self.num_canvases = int(num_canvases)
        self.canvas_size = (int(h), int(w))
        self.items = (int(items[0]), int(items[1]))
        self.item_size = (lo, hi)
        self.threshold = float(threshold)
        self.min_pixels = int(min_pixels)
        self.seed = int(seed)
        self.root = str(root) if root is not None else None
        self.images, self.labels = load_fashion_mnist(split, self.root)

    def __len__(self) -> int:
        return self.num_canvases

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        H, W = self.canvas_size
        c0, c1 = rng.uniform(0.0, 0.45, size=(2, 3))
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        t = (np.cos(angle) * xx / W + np.sin(angle) * yy / H + 1) / 2  # a linear ramp, 0..1
        img = c0[:, None, None] * (1 - t) + c1[:, None, None] * t
        # faint blobs: clutter that is not an object
        for _ in range(rng.integers(0, 4)):
            cy, cx = rng.uniform(0, H), rng.uniform(0, W)
            ry, rx = rng.uniform(4, H / 4), rng.uniform(4, W / 4)
            blob = np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2))
            img = img + rng.uniform(-0.15, 0.15, size=(3, 1, 1)) * blob
        img = img + rng.normal(0, 0.02, size=img.shape)
        return img.astype(np.float32)

    def render(self, index: int) -> tuple[np.ndarray, list[dict]]:
        """Canvas `index`: (image (3, H, W) float32 in [0, 1], [{'label', 'mask', 'item_id'}, ...])."""
        if not 0 <= index < self.num_canvases:
            raise IndexError(f"canvas {index} out of range (0..{self.num_canvases - 1})")
        rng = _seed_for(self.split, self.seed, index)
        H, W = self.canvas_size
        img = self._background(rng)
        taken: list[tuple[int, int, int, int]] = []
        objects = []
        for _ in range(rng.integers(self.items[0], self.items[1] + 1)):
            item_id = int(rng.integers(len(self.images)))
            side = int(rng.integers(self.item_size[0], self.item_size[1] + 1))
            aspect = math.exp(rng.uniform(-0.15, 0.15))
            ih, iw = max(4, min(H, round(side * aspect))), max(4, min(W, round(side / aspect)))
            for _try in range(30):  # rejection sampling: no two items' squares overlap
                y, x = int(rng.integers(0, H - ih + 1)), int(rng.integers(0, W - iw + 1))
                if all(y + ih <= ty or ty + th <= y or x + iw <= tx or tx + tw <= x for ty, tx, th, tw in taken):
                    break
            else:
                continue
            item = torch.from_numpy(self.images[item_id].astype(np.float32) / 255.0)[None, None]
            alpha = F.interpolate(item, size=(ih, iw), mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()
            alpha = np.clip(alpha, 0.0, 1.0)
            mask = alpha > self.threshold
            if mask.sum() < self.min_pixels:
                continue
            hue, sat, val = rng.uniform(0, 1), rng.uniform(0.35, 1.0), rng.uniform(0.65, 1.0)
            color = np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32)[:, None, None]
            region = img[:, y : y + ih, x : x + iw]
            img[:, y : y + ih, x : x + iw] = region * (1 - alpha) + color * alpha
            full = np.zeros((H, W), dtype=bool)
            full[y : y + ih, x : x + iw] = mask
            taken.append((y, x, ih, iw))
            objects.append(dict(label=int(self.labels[item_id]) + 1, mask=full, item_id=item_id))
        return np.clip(img, 0.0, 1.0), objects

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        img, objects = self.render(index)
        H, W = self.canvas_size
        n = len(objects)
        masks = np.stack([o["mask"] for o in objects]) if n else np.zeros((0, H, W), dtype=bool)
        boxes = np.zeros((n, 4), dtype=np.float32)
        semantic = np.zeros((H, W), dtype=np.int64)
        for k, o in enumerate(objects):
            ys, xs = np.nonzero(o["mask"])
            # pixel extent: a one-pixel-wide item still has a box of width 1
            boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            semantic[o["mask"]] = o["label"]
        target = dict(
            boxes=torch.from_numpy(boxes),
            labels=torch.tensor([o["label"] for o in objects], dtype=torch.int64),
            masks=torch.from_numpy(masks.astype(np.uint8)),
            semantic=torch.from_numpy(semantic),
            item_ids=torch.tensor([o["item_id"] for o in objects], dtype=torch.int64),
        )
        return torch.from_numpy(img), target


# --------------------------------------------------------------------------------------------------------
# Targets from any source: checks and repairs
# --------------------------------------------------------------------------------------------------------


def check_target(target: Mapping, num_classes: int, image_size: Sequence[int], where: str = "target") -> None:
    """Raise a clear ValueError when a detection target cannot be trained on (shapes, dtypes, labels).

    image_size: (H, W). Labels must be in 1..num_classes-1: 0 is the background in torchvision's detectors.
    """
    if not isinstance(target, Mapping) or "boxes" not in target or "labels" not in target:
        raise ValueError(f"{where}: a detection target is a dict with 'boxes' (N, 4) and 'labels' (N,)")
    boxes, labels = target["boxes"], target["labels"]
    if not isinstance(boxes, torch.Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
        got = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"{where}: boxes must be a float tensor of shape (N, 4) (x0, y0, x1, y1), got {got}")
    if not isinstance(labels, torch.Tensor) or labels.shape != (boxes.shape[0],) or labels.is_floating_point():
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{where}: labels must be an int64 tensor of shape ({boxes.shape[0]},), got {got}")
    if labels.numel() and (labels.min() < 1 or labels.max() >= num_classes):
        raise ValueError(
            f"{where}: labels must be in 1..{num_classes - 1} (0 is the background), got "
            f"{labels.min().item()}..{labels.max().item()}; build the detector with num_classes = classes + 1"
        )
    masks = target.get("masks")
    if masks is not None and tuple(masks.shape) != (boxes.shape[0], *image_size):
        raise ValueError(
            f"{where}: masks must have shape (N, H, W) = ({boxes.shape[0]}, {image_size[0]}, {image_size[1]}), "
            f"got {tuple(masks.shape)}"
        )


def sanitize_target(target: Mapping, image_size: Optional[Sequence[int]] = None) -> tuple[dict, int]:
    """Drop the boxes a detector cannot train on, with their labels and masks; return (target, number dropped).

    Boxes are first clipped to the image (when `image_size` (H, W) is given); then boxes with a non-finite
    coordinate or a zero or negative width or height are dropped. torchvision's detectors stop training with
    an assertion on such a box; a data set with a few of them (an annotation tool's zero-area clicks) is
    better trained on without them, and the count says how many there were.
    """
    boxes = target["boxes"]
    if image_size is not None and boxes.numel():
        H, W = image_size
        boxes = torch.stack(
            [boxes[:, 0].clamp(0, W), boxes[:, 1].clamp(0, H), boxes[:, 2].clamp(0, W), boxes[:, 3].clamp(0, H)], dim=1
        )
    keep = torch.isfinite(boxes).all(dim=1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    out = dict(target)
    out["boxes"] = boxes[keep]
    n = int(target["boxes"].shape[0])
    for key, value in target.items():
        if key != "boxes" and isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == n and key != "semantic":
            out[key] = value[keep]
    return out, int((~keep).sum())


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """torchvision's detectors take lists: images of any sizes and one target dict per image."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def collate_segmentation(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) images and (B, H, W) class maps; all canvases of a batch must have one size."""
    images, targets = zip(*batch)
    sizes = {tuple(im.shape[-2:]) for im in images}
    if len(sizes) > 1:
        raise ValueError(f"a segmentation batch needs images of one size, got {sorted(sizes)}; resize or crop them")
    return torch.stack(images), torch.stack([t["semantic"] for t in targets])


def canvas_detector_args(canvas_size: int = 128) -> dict:
    """torchvision detector options for small canvases (plain values, so the detector stays saveable).

    torchvision's defaults are for COCO photographs: images resized to 800-1333 px, anchors of 32..512 px,
    2000 proposals per image. A 128 px canvas with 20-56 px items needs no resizing (min_size = max_size =
    the canvas), anchors of 16..256 px (P2..P6), and far fewer proposals and sampled RoIs, which on a CPU
    is most of the time of a step (NMS and RoIAlign's backward run on one thread).
    """
    return dict(
        min_size=canvas_size, max_size=canvas_size, anchor_sizes=[16, 32, 64, 128, 256],
        rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=150, rpn_batch_size_per_image=128, box_batch_size_per_image=64,
    )
