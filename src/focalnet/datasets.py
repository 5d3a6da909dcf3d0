"""The data sets the project knows by name, and the one reader of their files.

- `fashion-mnist` (also `fashionmnist`, `fmnist`): Zalando's Fashion-MNIST, 60k train / 10k test gray 28x28
  photographs of clothes in ten classes, as four IDX files (optionally gzipped);
- `digits` (also `sklearn-digits`): scikit-learn's 8x8 digits (1797 images), a fixed stratified 80/20 split.

Training (`focalnet.train.data`) and the detection canvases (`focalnet.dense.data`) both read them from
here, so they look in the same places and fail with the same message. Fashion-MNIST is looked for in an
explicit folder alone when one is given (`data_dir`: a typo must not silently read another copy), else in
$FASHION_MNIST_DIR, $FOCALNET_DATA/fashion-mnist, Debian's `dataset-fashion-mnist` package
(/usr/share/datasets/fashion-mnist) and the cache; torchvision downloads it where a network exists.

This module sits at the bottom of the package: it imports only `focalnet.errors` and `focalnet.safeio`, and numpy, torch,
torchvision and scikit-learn inside the functions that need them.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Union

from .errors import FocalNetError
from .safeio import open_regular

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = [
    "DataUnavailableError",
    "DATASET_ALIASES",
    "builtin_dataset",
    "read_idx",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIRS",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "fashion_mnist_dirs",
    "locate_fashion_mnist",
    "read_fashion_mnist",
    "load_fashion_mnist",
    "load_digits",
]

PathLike = Union[str, os.PathLike]

# every name a built-in data set answers to (after lower-casing and '_' -> '-') -> its canonical name
DATASET_ALIASES = {
    "fashion-mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "digits": "digits",
    "sklearn-digits": "digits",
}

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# where Debian's dataset-fashion-mnist package puts the files
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
# statistics of the training images (pixel values in [0, 1]): Fashion-MNIST's 60k, the digits' 80 % split
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
DIGITS_MEAN, DIGITS_STD = (0.3053,), (0.3760,)


# the largest IDX file read (Fashion-MNIST's training images take 47 MB): a bound on what a gzip may unpack to
MAX_IDX_BYTES = 2**30


class DataUnavailableError(FocalNetError, FileNotFoundError):
    """A data set that is neither on disk nor downloadable here, or whose files are damaged; the message
    says how to get it."""


def builtin_dataset(data: str) -> Optional[str]:
    """'fashion-mnist' or 'digits' when `data` names a built-in data set (any alias, any case, '_' or '-'),
    else None (the caller's data is a folder)."""
    return DATASET_ALIASES.get(data.lower().replace("_", "-"))


# --------------------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------------------


def read_idx(path: PathLike) -> "np.ndarray":
    """An IDX file (the MNIST format; gzipped or not) as a numpy array.

    Layout: magic (0, 0, dtype code, ndim), ndim big-endian uint32 sizes, then the values."""
    import numpy as np

    path = Path(path)
    with open_regular(path, "data file", DataUnavailableError) as raw:  # never a FIFO or a device
        f = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw
        try:
            data = f.read(MAX_IDX_BYTES + 1)  # bounded: a gzip bomb stops here
        except (OSError, EOFError) as e:
            raise DataUnavailableError(f"{path} is damaged: {e}") from None
    if len(data) > MAX_IDX_BYTES:
        raise DataUnavailableError(f"{path} holds more than {MAX_IDX_BYTES} bytes: not an IDX file of this data set")
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataUnavailableError(f"{path} is not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise DataUnavailableError(f"{path}: unknown IDX data type 0x{data[2]:02x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise DataUnavailableError(f"{path} is truncated: {arr.size} values for shape {shape}")
    return arr.reshape(shape)


# --------------------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------------------


def _find_idx(directory: Path, stem: str) -> Optional[Path]:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _cache_root() -> Path:
    return Path(os.environ.get("FOCALNET_HOME", Path.home() / ".cache" / "focalnet")) / "data"


def fashion_mnist_dirs(data_dir: Optional[PathLike] = None) -> list[Path]:
    """Where Fashion-MNIST is looked for, in order: `data_dir` alone when given (and torchvision's
    FashionMNIST/raw below it), else the usual places."""
    if data_dir is not None:
        return [Path(data_dir), Path(data_dir) / "FashionMNIST" / "raw"]
    dirs: list[Path] = []
    if os.environ.get("FASHION_MNIST_DIR"):
        dirs.append(Path(os.environ["FASHION_MNIST_DIR"]))
    if os.environ.get("FOCALNET_DATA"):
        dirs.append(Path(os.environ["FOCALNET_DATA"]) / "fashion-mnist")
    dirs += [Path(d) for d in FASHION_MNIST_DIRS]
    dirs.append(_cache_root() / "FashionMNIST" / "raw")
    return dirs


def _first_complete(dirs: Sequence[Path]) -> Optional[Path]:
    for d in dirs:
        if all(_find_idx(d, stem) for pair in FASHION_MNIST_FILES.values() for stem in pair):
            return d
    return None


def _download_fashion_mnist(root: Path) -> Optional[str]:
    """Fetch the four files with torchvision into `root`/FashionMNIST/raw; the error, if any, as text."""
    import socket

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # a machine whose network drops packets must not hang here forever
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as e:  # no network: URLError, HTTPError, RuntimeError from torchvision
        return f"{type(e).__name__}: {e}"
    finally:
        socket.setdefaulttimeout(previous)
    return None


def locate_fashion_mnist(data_dir: Optional[PathLike] = None, *, download: bool = False) -> Path:
    """The folder that holds the four Fashion-MNIST IDX files (see `fashion_mnist_dirs`).

    When they are nowhere and `download`, torchvision fetches them into `data_dir` (or the cache);
    otherwise DataUnavailableError lists the folders tried and says how to get the files."""
    dirs = fashion_mnist_dirs(data_dir)
    found = _first_complete(dirs)
    download_error = None
    if found is None and download:
        root = Path(data_dir) if data_dir is not None else _cache_root()
        download_error = _download_fashion_mnist(root)
        found = _first_complete([root / "FashionMNIST" / "raw"])
    if found is not None:
        return found
    tried = "\n  ".join(str(d) for d in dirs)
    why = f"\nThe download failed ({download_error})." if download_error else ""
    raise DataUnavailableError(
        "Fashion-MNIST is not on this machine. Looked for train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), "
        f"t10k-images-idx3-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz) in:\n  {tried}{why}\n"
        "Get it with Debian's package (`sudo apt-get install dataset-fashion-mnist`), or download the four files "
        "from https://github.com/zalandoresearch/fashion-mnist (data/fashion) into a folder and pass it as "
        "--data-dir (data_dir= or root= in Python, or set $FASHION_MNIST_DIR), or use --data digits"
    )


def read_fashion_mnist(folder: PathLike, split: str) -> tuple["np.ndarray", "np.ndarray"]:
    """Fashion-MNIST `split` ('train': 60000, 'test': 10000) from `folder`: (images (N, 28, 28) uint8,
    labels (N,) int64)."""
    import numpy as np

    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(folder)
    paths = {stem: _find_idx(folder, stem) for stem in FASHION_MNIST_FILES[split]}
    missing = [f"{stem}(.gz)" for stem, path in paths.items() if path is None]
    if missing:
        raise DataUnavailableError(f"{folder} has no {' nor '.join(missing)}; `locate_fashion_mnist` finds the folder")
    images, labels = (read_idx(path) for path in paths.values())
    if images.ndim != 3 or images.dtype != np.uint8 or labels.shape != (len(images),):
        raise DataUnavailableError(
            f"{folder}: {split} images {images.dtype} {images.shape} and labels {labels.shape} do not pair up"
        )
    return images, labels.astype(np.int64)


def load_fashion_mnist(
    data_dir: Optional[PathLike] = None, download: bool = True
) -> tuple[dict[str, tuple["torch.Tensor", "torch.Tensor"]], Path]:
    """{'train': (images uint8 (60000, 1, 28, 28), labels), 'test': (..10000..)} and the folder read.

    Found by `locate_fashion_mnist(data_dir, download=download)`."""
    import torch

    found = locate_fashion_mnist(data_dir, download=download)
    out = {}
    for split in FASHION_MNIST_FILES:
        images, labels = read_fashion_mnist(found, split)
        # copy: the IDX buffer is read-only, and torch wants writable memory
        out[split] = (torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels))
    return out, found


# --------------------------------------------------------------------------------------------------------
# scikit-learn's digits
# --------------------------------------------------------------------------------------------------------


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> dict[str, tuple["torch.Tensor", "torch.Tensor"]]:
    """scikit-learn's 8x8 digits as uint8 (N, 1, 8, 8) (values 0..16 scaled to 0..255), split 80/20
    stratified with a fixed seed, so that every run and every test sees the same test images."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    idx_train, idx_test = train_test_split(
        np.arange(len(images)), test_size=test_fraction, random_state=seed, stratify=d.target
    )
    to = lambda idx: (torch.from_numpy(images[idx]), torch.from_numpy(d.target[idx].astype(np.int64)))  # noqa: E731
    return {"train": to(idx_train), "test": to(idx_test)}
