"""The data sets a training loader reads, and the collate that carries unreadable files through a batch.

- `SafeImageFolder`: `root/CLASS/*.jpg`, listed without following folder symlinks (`focalnet.safeio.walk_files`:
  a link loop can neither hang the listing nor count the same images many times over), each file opened only
  if it is a regular file (a FIFO would block a worker forever) and refused from its header when the evaluation
  resize would exceed the image-side cap (`focalnet.images.max_image_side`). A file that cannot be read is
  never a traceback from a worker: it comes back as the item's `bad` path.
- `TensorImages`: images held in memory (Fashion-MNIST, digits), with the same (image, label, bad) items.
- `collate`: stacks the readable items and hands the loop the paths of the others, which stops with them or,
  with skip_bad_images, skips and counts them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..datasets import DataUnavailableError
from ..errors import FocalNetError
from ..images import check_resized
from ..safeio import open_regular, printable, walk_files
from .augment import TransformError

__all__ = ["IMAGE_EXTENSIONS", "DataError", "BadImageError", "TensorImages", "SafeImageFolder", "collate"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class DataError(FocalNetError, ValueError):
    """Data that cannot be used as asked (class folders, image sizes, channels, crops)."""


class BadImageError(FocalNetError, ValueError):
    """An image file that cannot be read; the message names it and says what to do."""



class TensorImages(Dataset):
    """Images held in memory as uint8 (N, C, H, W) with integer labels; items are (image, label, None)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Optional[Callable] = None) -> None:
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(f"expected uint8 images of shape (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, None]:
        img = self.images[index]
        if self.transform is not None:
            img = _apply(self.transform, img, f"image {index} of the in-memory data set")
        return img, int(self.labels[index]), None


def _class_folders(root: Path) -> tuple[list[str], int]:
    """The class folders under `root` (sorted names) and how many folder symlinks were skipped there."""
    found, links = [], 0
    for d in root.iterdir():
        if d.is_symlink() and d.is_dir():
            links += 1
        elif d.is_dir():
            found.append(d.name)
    return sorted(found), links


class SafeImageFolder(Dataset):
    """`root/CLASS/*.jpg` with a fixed class list; unreadable files come back as (None, label, path).

    resize_short: the shorter side the transform resizes to (evaluation), so that an image whose longer side
    would then exceed `max_image_side()` is refused before the resize allocates it."""

    def __init__(
        self,
        root: os.PathLike,
        class_names: Optional[Sequence[str]] = None,
        mode: str = "RGB",
        transform: Optional[Callable] = None,
        resize_short: Optional[int] = None,
    ) -> None:
        self.root = Path(root)
        found, self.skipped_links = _class_folders(self.root)
        if class_names is None:
            class_names = found
        else:
            extra = sorted(set(found) - set(class_names))
            if extra:
                raise DataError(
                    f"{self.root} has class folders that the training set lacks: {printable(', '.join(extra[:10]))}; "
                    "the evaluation split must use the training classes"
                )
        self.class_names = list(class_names)
        index = {c: i for i, c in enumerate(self.class_names)}
        self.samples: list[tuple[str, int]] = []
        links: list[Path] = []
        for c in found:
            for f in walk_files(self.root / c, links):
                if f.name.lower().endswith(IMAGE_EXTENSIONS):
                    self.samples.append((str(f), index[c]))
        self.skipped_links += len(links)
        counts = np.bincount([label for _, label in self.samples], minlength=len(self.class_names))
        # class folders without one image: training refuses them, evaluation notes them (build_datasets)
        self.empty_classes = [c for c in self.class_names if counts[index[c]] == 0]
        if not self.samples:
            raise DataUnavailableError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}/CLASS/; expected the layout "
                "PATH/train/CLASS/*.jpg and PATH/val/CLASS/*.jpg"
            )
        self.mode = mode
        self.transform = transform
        self.resize_short = resize_short

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int, Optional[str]]:
        from PIL import Image

        path, label = self.samples[index]
        try:
            with open_regular(path, "image") as f:  # a FIFO swapped in after the listing: refused, not a hang
                img = Image.open(f)
                self._check_resize(img)  # from the header, before the decode
                img = img.convert(self.mode)  # forces the full decode: a truncated file fails here
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            return None, label, printable(f"{path} ({type(e).__name__}: {e})")
        if self.transform is not None:
            img = _apply(self.transform, img, path)
        return img, label, None

    def _check_resize(self, img: Any) -> None:
        if self.resize_short is not None:
            check_resized(img, self.resize_short, "the image")


def _apply(transform: Callable, img: Any, where: str) -> Any:
    """transform(img); a failure names the image (a readable image that a transform cannot take is a bug,
    so it keeps its traceback: TransformError is not a FocalNetError)."""
    try:
        return transform(img)
    except TransformError as e:
        raise TransformError(f"{where}: {e}") from e.__cause__
    except Exception as e:
        raise TransformError(f"{where}: the transform {transform!r} raised {type(e).__name__}: {e}") from e


def collate(batch: Sequence[tuple]) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], list[str]]:
    """Stack the readable items; return (images, labels, paths of the unreadable ones)."""
    good = [b for b in batch if b[0] is not None]
    bad = [b[2] for b in batch if b[0] is None]
    if not good:
        return None, None, bad
    x = torch.stack([b[0] for b in good])
    y = torch.tensor([b[1] for b in good], dtype=torch.long)
    return x, y, bad
