"""Data for training and evaluation: image-folder trees, Fashion-MNIST, scikit-learn's digits.

    train_set, eval_set, info = build_datasets("fashion-mnist")          # or "digits", or a folder
    transform = build_transform(info, get_recipe("small"), training=True)

Sources (`data=`):
- a folder in the ImageNet layout, `PATH/train/CLASS/*.jpg` and `PATH/val/CLASS/*.jpg` (or `test/`);
  class indices follow the sorted train folder names (for ImageNet-1K: the usual 1K order);
- `fashion-mnist`: the four IDX files (optionally gzipped) from `data_dir` or the usual places, downloaded
  with torchvision where a network exists (`focalnet.datasets` finds and reads them); 60k train / 10k
  test, 28x28, 1 channel;
- `digits`: scikit-learn's 8x8 digits (1797 images), a fixed stratified 80/20 split (1437 / 360).

Grayscale: Fashion-MNIST and digits have one channel and train models built with in_chans=1 (no
channel copying). Image folders are read as RGB, or as grayscale ('L') when the model has in_chans=1.
What a folder image that cannot be read becomes (a `bad` path in the batch, never a traceback from a worker),
and how folders are listed (no folder symlink followed), is `focalnet.train.folders`'s.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from ..datasets import (
    DIGITS_MEAN,
    DIGITS_STD,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    DataUnavailableError,
    builtin_dataset,
    load_digits,
    load_fashion_mnist,
)
from ..images import IMAGENET_MEAN, IMAGENET_STD, check_image_side, gray_stats, interpolation_mode
from ..preprocess import DEFAULT_CROP_PCT  # the authors' 0.875, defined once
from ..safeio import printable
from .augment import guarded_transform
from .folders import IMAGE_EXTENSIONS, BadImageError, DataError, SafeImageFolder, TensorImages, _class_folders, collate
from .recipes import Recipe

__all__ = [
    "DataInfo",
    "TensorImages",
    "SafeImageFolder",
    "BadImageError",
    "DataUnavailableError",
    "build_datasets",
    "build_transform",
    "build_loader",
    "collate",
    "set_loader_epoch",
    "epoch_seed",
    "describe_data",
    "check_workers",
    "check_threads",
    "available_cpus",
]

# the largest batch a loader is built for: far above what fits in memory at any image size worth training
MAX_BATCH_SIZE = 2**16


@dataclass
class DataInfo:
    """What the rest of a run needs to know about the data."""

    name: str
    class_names: list[str]
    in_chans: int
    img_size: Optional[int]  # native size of tensor data sets; None for folders (images of any size)
    mean: tuple
    std: tuple
    kind: str  # 'tensor' (in memory, uint8) or 'folder' (files read by PIL)
    hflip_ok: bool = True  # digits are not mirror-symmetric
    eval_split: str = "test"
    source: str = ""
    num_train: int = 0
    num_eval: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        return dict(
            name=self.name, class_names=list(self.class_names), in_chans=self.in_chans, img_size=self.img_size,
            mean=list(self.mean), std=list(self.std), kind=self.kind, eval_split=self.eval_split,
            source=self.source, num_train=self.num_train, num_eval=self.num_eval,
        )



# --------------------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------------------


def build_transform(
    info: DataInfo,
    recipe: Recipe,
    *,
    training: bool,
    img_size: Optional[int] = None,
) -> Callable:
    """The per-image transform of a split (see `_split_transform`), guarded: timm's posterize ops clamped to
    the bits Pillow accepts, and a failing step named (`focalnet.train.augment`). Every recipe's
    transforms come from here."""
    return guarded_transform(_split_transform(info, recipe, training=training, img_size=img_size))


def _split_transform(info: DataInfo, recipe: Recipe, *, training: bool, img_size: Optional[int]) -> Callable:
    """The per-image transform of a split.

    Training, `recipe.train_crop == 'random_resized'`: timm's `create_transform` (random resized crop,
    flip, RandAugment, color jitter, random erasing), the paper's recipe. `'pad'`: pad by `recipe.pad`
    (default img_size // 14), random crop, flip, then timm's RandomErasing when reprob > 0: what small
    images need. Evaluation: for folders, timm's transform with the authors' bicubic resize to
    img_size / crop_pct and a center crop; for in-memory data, only a resize when img_size differs.
    """
    from torchvision.transforms import v2

    interpolation = interpolation_mode(recipe.interpolation)  # an unknown name fails here, for every split
    size = _size(info, recipe, img_size)
    hflip = recipe.hflip if info.hflip_ok else 0.0
    native = info.img_size
    crop_pct = recipe.crop_pct if recipe.crop_pct is not None else DEFAULT_CROP_PCT
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(info.mean), list(info.std))]

    if not training:
        if info.kind == "folder":
            from timm.data import create_transform

            return create_transform(
                size, is_training=False, interpolation=recipe.interpolation, crop_pct=crop_pct,
                mean=info.mean, std=info.std,
            )
        steps: list = [v2.ToImage()]
        if size != native:
            steps.append(v2.Resize(size, interpolation=interpolation, antialias=True))
        return v2.Compose(steps + to_float)

    if recipe.train_crop == "random_resized":
        from timm.data import create_transform

        tf = create_transform(
            size, is_training=True, hflip=hflip, color_jitter=recipe.color_jitter or None,
            auto_augment=recipe.auto_augment, interpolation=recipe.interpolation, mean=info.mean, std=info.std,
            re_prob=recipe.reprob, re_mode=recipe.remode,
        )
        if info.kind == "tensor":  # timm's pipeline works on PIL images
            return v2.Compose([v2.ToPILImage(), tf])
        return tf
    if recipe.train_crop != "pad":
        raise DataError(f"unknown train_crop {recipe.train_crop!r}; choose 'random_resized' or 'pad'")
    pad = pad_for(recipe, size)
    erase = None
    if recipe.reprob > 0:
        from timm.data.random_erasing import RandomErasing

        erase = RandomErasing(recipe.reprob, mode=recipe.remode, device="cpu")
    if info.kind == "tensor" and size == native:
        return PadCropFlip(pad, hflip, info.mean, info.std, erase)
    steps = [v2.ToImage(), v2.Resize((size, size), interpolation=interpolation, antialias=True)]
    if pad:
        steps.append(v2.RandomCrop(size, padding=pad))
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    steps += to_float
    if erase is not None:
        steps.append(erase)
    return v2.Compose(steps)


def _size(info: DataInfo, recipe: Recipe, img_size: Optional[int]) -> int:
    """The side images are trained and evaluated at, within the image-side cap (checked before any resize)."""
    size = img_size or recipe.img_size or info.img_size
    if size is None:
        raise DataError(f"{info.name}: images have no fixed size; pass --img-size")
    return check_image_side(size, "--img-size")


def _eval_short_side(info: DataInfo, recipe: Recipe, img_size: Optional[int]) -> int:
    """The shorter side of an evaluation image after timm's resize (img_size / crop_pct, rounded down)."""
    crop_pct = recipe.crop_pct if recipe.crop_pct is not None else DEFAULT_CROP_PCT
    return int(_size(info, recipe, img_size) / crop_pct)


def pad_for(recipe: Recipe, size: int) -> int:
    """The 'pad' crop's padding: the recipe's, else img_size // 14 (2 px at 28 px; none at 8 px, where a
    shift is an eighth of a digit)."""
    return size // 14 if recipe.pad is None else recipe.pad


class PadCropFlip:
    """Zero-pad, random crop back to the input size, random horizontal flip, normalise: the augmentation of
    small in-memory images, on uint8 (C, H, W) tensors, about 10x cheaper per image than the same steps
    composed from torchvision.transforms.v2 (which costs ~0.4 ms per 28 px image on these CPUs, a large
    share of a Fashion-MNIST epoch). Draws from torch's global generator, like torchvision."""

    def __init__(self, pad: int, hflip: float, mean: Sequence[float], std: Sequence[float],
                 erase: Optional[Callable] = None) -> None:
        self.pad, self.hflip, self.erase = int(pad), float(hflip), erase
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        C, H, W = img.shape
        x = img.float().div_(255.0)
        if self.pad:
            p = self.pad
            dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
            canvas = x.new_zeros(C, H + 2 * p, W + 2 * p)
            canvas[:, p : p + H, p : p + W] = x
            x = canvas[:, dy : dy + H, dx : dx + W]
        if self.hflip > 0 and torch.rand(()).item() < self.hflip:
            x = x.flip(-1)
        x = (x - self.mean) * self.inv_std
        return self.erase(x) if self.erase is not None else x

    def __repr__(self) -> str:
        return f"PadCropFlip(pad={self.pad}, hflip={self.hflip})"


# --------------------------------------------------------------------------------------------------------
# Building data sets and loaders
# --------------------------------------------------------------------------------------------------------


def describe_data(
    data: str,
    *,
    data_dir: Optional[os.PathLike] = None,
    download: bool = True,
    in_chans: Optional[int] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    need_train: bool = True,
) -> tuple[DataInfo, dict]:
    """Resolve `data` to its DataInfo and its raw splits (tensors for in-memory sets, folders otherwise)."""
    key = builtin_dataset(data)
    if key == "fashion-mnist":
        splits, found = load_fashion_mnist(data_dir, download=download)
        info = DataInfo(
            "fashion-mnist", list(FASHION_MNIST_CLASSES), 1, 28, FASHION_MNIST_MEAN, FASHION_MNIST_STD, "tensor",
            source=str(found),
        )
    elif key == "digits":
        splits = load_digits()
        info = DataInfo(
            "digits", [str(i) for i in range(10)], 1, 8, DIGITS_MEAN, DIGITS_STD, "tensor", hflip_ok=False,
            source="sklearn.datasets.load_digits (stratified 80/20 split, seed 0)",
        )
    else:
        root = Path(data)
        if not root.is_dir():
            raise DataUnavailableError(
                f"--data {data!r} is neither 'fashion-mnist', 'digits' nor a folder; an image folder needs the "
                "layout PATH/train/CLASS/*.jpg and PATH/val/CLASS/*.jpg"
            )
        eval_split = next((s for s in ("val", "test", "validation") if (root / s).is_dir()), None)
        has_train = (root / "train").is_dir()
        if not has_train and (need_train or eval_split is None):
            raise DataUnavailableError(f"{root} has no train/ folder; expected PATH/train/CLASS/*.jpg and PATH/val/CLASS/*.jpg")
        if eval_split is None:
            raise DataUnavailableError(f"{root} has train/ but no val/ (or test/) folder to evaluate on")
        # class indices follow the training folders (evaluation alone: the evaluation folders)
        class_root = root / "train" if has_train else root / eval_split
        class_names, _ = _class_folders(class_root)
        if not class_names:
            raise DataUnavailableError(f"{class_root} has no class folders (folder symlinks are not followed)")
        if need_train and len(class_names) < 2:
            raise DataError(f"{class_root} has one class folder ({printable(class_names[0])!s}): a classifier needs at "
                            "least two classes to learn anything; add the other classes' folders")
        chans = in_chans or 3
        m, s = (IMAGENET_MEAN, IMAGENET_STD) if chans == 3 else gray_stats(IMAGENET_MEAN, IMAGENET_STD)
        info = DataInfo(root.name, class_names, chans, None, m, s, "folder", eval_split=eval_split, source=str(root))
        splits = {"train": root / "train" if has_train else None, eval_split: root / eval_split}
    if info.kind == "tensor" and in_chans not in (None, info.in_chans):
        if in_chans != 3:
            raise DataError(f"{info.name} has 1 channel; in_chans must be 1 (or 3 to repeat the gray channel)")
        info.notes.append("gray images repeated to 3 channels (in_chans=3)")
        splits = {k: (x.expand(-1, 3, -1, -1).contiguous(), y) for k, (x, y) in splits.items()}
        info.in_chans, info.mean, info.std = 3, info.mean * 3, info.std * 3
    if mean is not None:
        info.mean = tuple(float(v) for v in mean)
    if std is not None:
        info.std = tuple(float(v) for v in std)
    return info, splits


def build_datasets(
    data: str,
    recipe: Recipe,
    *,
    img_size: Optional[int] = None,
    data_dir: Optional[os.PathLike] = None,
    download: bool = True,
    in_chans: Optional[int] = None,
    limit_train: Optional[int] = None,
    limit_eval: Optional[int] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    need_train: bool = True,
) -> tuple[Optional[Dataset], Dataset, DataInfo]:
    """(training set, evaluation set, DataInfo) of `data` with the recipe's transforms.

    limit_train / limit_eval keep the first N images (after a fixed shuffle for the training set, so that
    all classes stay present): for quick trials and tests. need_train=False (evaluation only): the
    training set is not built (None) and a folder needs no train/ split.
    """
    info, splits = describe_data(data, data_dir=data_dir, download=download, in_chans=in_chans, mean=mean, std=std,
                                 need_train=need_train)
    train_tf = build_transform(info, recipe, training=True, img_size=img_size)
    eval_tf = build_transform(info, recipe, training=False, img_size=img_size)
    train_set: Optional[Dataset] = None
    if info.kind == "tensor":
        if need_train:
            train_set = TensorImages(*splits["train"], transform=train_tf)
        eval_set: Dataset = TensorImages(*splits[info.eval_split], transform=eval_tf)
    else:
        mode = "L" if info.in_chans == 1 else "RGB"
        if need_train:
            train_set = SafeImageFolder(splits["train"], info.class_names, mode, train_tf)
            _refuse_empty_classes(train_set)
        eval_set = SafeImageFolder(splits[info.eval_split], info.class_names, mode, eval_tf,
                                   resize_short=_eval_short_side(info, recipe, img_size))
        links = eval_set.skipped_links + (train_set.skipped_links if train_set is not None else 0)
        if links:
            info.notes.append(f"{links} folder symlink(s) in {info.source} not followed (no loops, no image counted twice)")
        if eval_set.empty_classes:
            info.notes.append(f"{len(eval_set.empty_classes)} class(es) have no {info.eval_split} images and are not "
                              f"evaluated: {', '.join(map(repr, eval_set.empty_classes[:10]))}")
    if train_set is not None and limit_train is not None and limit_train < len(train_set):
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))[:limit_train]
        train_set = Subset(train_set, sorted(order.tolist()))
    if limit_eval is not None and limit_eval < len(eval_set):
        eval_set = Subset(eval_set, range(limit_eval))
    info.num_train, info.num_eval = (len(train_set) if train_set is not None else 0), len(eval_set)
    return train_set, eval_set, info


def _refuse_empty_classes(train_set: "SafeImageFolder") -> None:
    """A class folder without a training image would be a class the model is never shown."""
    empty = train_set.empty_classes
    if empty:
        raise DataError(
            f"{len(empty)} class folder(s) under {train_set.root} hold no images ({', '.join(IMAGE_EXTENSIONS)}): "
            f"{printable(', '.join(map(repr, empty[:10])))}; add images or remove the folder(s)"
        )


class _Shard(Sampler):
    """Evaluation sampler: rank r takes items r, r + world, ... in order, without the padding that
    DistributedSampler adds (duplicated images would bias the accuracy)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        self.indices = list(range(rank, len(dataset), num_replicas))  # type: ignore[arg-type]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    training: bool,
    workers: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: Optional[bool] = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose order and augmentation depend only on (seed, epoch): call `set_loader_epoch`
    before each epoch. Training shuffles with a DistributedSampler (also for one process: one code
    path), evaluation shards in order. Workers are not persistent, so that each epoch's worker seeds
    come from the loader's generator, which `set_loader_epoch` reseeds: a resumed run sees the same
    augmentations as an uninterrupted one."""
    check_workers(workers)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise DataError(f"--batch-size must be a whole number from 1 to {MAX_BATCH_SIZE}, got {batch_size!r}")
    if training:
        sampler: Sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
    else:
        sampler = _Shard(dataset, world_size, rank)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=training if drop_last is None else drop_last,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_workers(workers: object) -> int:
    """`workers` if it is a whole number from 0 to the CPUs available: each worker is a process holding a copy
    of the data set's state, and more of them than CPUs only costs memory (PyTorch warns past that too)."""
    cpus = available_cpus()
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= cpus:
        raise DataError(f"--workers must be a whole number from 0 to {cpus} (the CPUs available here), got {workers!r}")
    return workers


def check_threads(threads: object) -> int:
    """`threads` if it is a whole number from 1 to the CPUs available (more intra-op threads than CPUs only
    contend with each other)."""
    cpus = available_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cpus:
        raise DataError(f"--threads must be a whole number from 1 to {cpus} (the CPUs available here), got {threads!r}")
    return threads


def set_loader_epoch(loader: DataLoader, epoch: int, seed: int, rank: int = 0) -> None:
    """Make the loader's shuffling and its workers' random streams a function of (seed, epoch, rank)."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(epoch_seed(seed, epoch, rank))


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A distinct, reproducible seed per (seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
