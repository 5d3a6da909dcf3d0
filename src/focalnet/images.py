"""Images in: the one image reader, the one table of resize interpolations, and ImageNet's statistics.

Everything that reads a picture (prediction, modulation pictures, run reports, detection and segmentation)
goes through `load_image`, so a missing, truncated or 16-bit file fails or converts the same way wherever it
is given. Interpolation names are checked against one table: an unknown name is an error everywhere, never
a silent fallback to bicubic.

Sizes are bounded before any work: a resize target (a model's img_size, --img-size) above
`max_image_side()` (default MAX_IMAGE_SIDE = 4096 px, the environment variable FOCALNET_MAX_IMAGE_SIDE
changes it) is refused by `check_image_side` before anything is allocated, and a file above Pillow's
decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`, about 89 million pixels; Pillow only warns up to
twice that, here it is an error) is refused before it is decoded.

Files are opened through `focalnet.safeio` (regular files only: a FIFO or a device is refused, never read).

This module sits at the bottom of the package: it imports only `focalnet.errors` and `focalnet.safeio`, and numpy, torch, PIL and
torchvision inside the functions that need them, so that importing it (the registry does) costs nothing.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, Union

from .errors import FocalNetError, limit_from_env

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.transforms import InterpolationMode

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "ImageError",
    "ImageTooLargeError",
    "MAX_IMAGE_SIDE",
    "check_image_side",
    "check_resized",
    "max_image_side",
    "PreprocessingError",
    "gray_stats",
    "interpolation_mode",
    "load_image",
    "read_image",
]

ImageLike = Union[str, os.PathLike, "Image.Image", "np.ndarray", "torch.Tensor"]

# the statistics every released FocalNet was trained with (pixel values in [0, 1], RGB order)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# resize interpolations by name: torchvision's InterpolationMode values, which timm's transforms take too
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")

# Pillow modes that hold more than 8 bits per pixel: PIL's convert would clip them to 0..255
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "F")


class ImageError(FocalNetError, ValueError):
    """An image that cannot be used: missing, unreadable, empty, or in an unsupported format."""


class ImageTooLargeError(ImageError):
    """An image, or a size to resize to, above the configured bounds (refused before any allocation)."""


# the largest side any image is resized to (classification is trained at 224-768 px; 4096 px already needs
# tens of GB of activations for FocalNet-T); FOCALNET_MAX_IMAGE_SIDE overrides it
MAX_IMAGE_SIDE = 4096


def max_image_side() -> int:
    """The configured cap on resize targets: $FOCALNET_MAX_IMAGE_SIDE if set, else MAX_IMAGE_SIDE."""
    return limit_from_env("FOCALNET_MAX_IMAGE_SIDE", MAX_IMAGE_SIDE, "pixels", PreprocessingError)


def check_image_side(side: Any, what: str = "the image size") -> int:
    """`side` as an int if it is a positive whole number at most `max_image_side()`; otherwise an error
    naming `what` (e.g. "--img-size", "img_size in m.safetensors") and what to do. Checked before any resize."""
    if isinstance(side, bool) or not isinstance(side, (int, float)) or side != side or int(side) != side:
        raise PreprocessingError(f"{what} must be a whole number of pixels, got {side!r}")
    side = int(side)
    if side < 1:
        raise PreprocessingError(f"{what} must be at least 1 pixel, got {side}")
    cap = max_image_side()
    if side > cap:
        raise ImageTooLargeError(
            f"{what} is {side} px, above the limit of {cap} px (an image this size would need far more memory "
            "than a forward pass can use); pass a smaller size, or raise the limit with FOCALNET_MAX_IMAGE_SIDE"
        )
    return side


def check_resized(img: Any, short_side: int, what: str) -> None:
    """Refuse, before resizing, an image (anything with width and height: a PIL image, opened but not yet
    decoded) whose longer side would exceed `max_image_side()` once its shorter side is `short_side` (a
    1 x 1,000,000 px banner resized to 256 would be 256 million px long)."""
    long_side = round(max(img.width, img.height) * short_side / max(1, min(img.width, img.height)))
    cap = max_image_side()
    if long_side > cap:
        raise ImageTooLargeError(
            f"{what} ({img.width}x{img.height} px) resized to a shorter side of {short_side} px would be {long_side} px "
            f"long, above the limit of {cap} px; crop it closer to square first, or raise FOCALNET_MAX_IMAGE_SIDE"
        )


class PreprocessingError(FocalNetError, ValueError):
    """A preprocessing setting that does not exist (an unknown interpolation name)."""


def interpolation_mode(name: str) -> "InterpolationMode":
    """torchvision's InterpolationMode for `name` (one of INTERPOLATIONS); any other name is an error."""
    if name not in INTERPOLATIONS:
        raise PreprocessingError(f"unknown interpolation {name!r}; use one of {', '.join(INTERPOLATIONS)}")
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name)


def gray_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float], tuple[float]]:
    """Normalisation of a 1-channel (grayscale) input fed to a model of RGB statistics: the mean of the
    three means and of the three stds."""
    return (sum(mean) / len(mean),), (sum(std) / len(std),)


# ----------------------------------------------------------------------------------------------------------
# Reading images
# ----------------------------------------------------------------------------------------------------------


def load_image(image: ImageLike, mode: str = "RGB") -> "Image.Image":
    """Read `image` (a path, a PIL image, an (H, W[, C]) uint8 array or a (C, H, W) float tensor in [0, 1])
    as a PIL image in `mode` ('RGB' or 'L').

    Errors (ImageError) name the file and say what is wrong: missing, a folder, not an image (unsupported
    format), truncated, empty, or larger than Pillow's decompression-bomb limit. 16-bit and float images
    are rescaled to their range; transparent pixels become white."""
    import numpy as np
    import torch
    from PIL import Image

    if isinstance(image, Image.Image):
        img = image
    elif isinstance(image, torch.Tensor):
        img = _from_tensor(image)
    elif isinstance(image, np.ndarray):
        img = _from_array(image)
    else:
        img = _from_file(Path(image))
    if img.width == 0 or img.height == 0:
        raise ImageError(f"{_name_of(image)} is an empty image ({img.width}x{img.height} pixels)")
    return _convert(img, mode)


def read_image(image: ImageLike) -> "torch.Tensor":
    """`image` read by `load_image` as a (3, H, W) uint8 RGB tensor (what torchvision's detectors and
    drawing functions take)."""
    import torch

    rgb = load_image(image, "RGB")
    t = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return t.view(rgb.height, rgb.width, 3).permute(2, 0, 1).contiguous()  # (H, W, 3) -> (3, H, W)


def _name_of(image: Any) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else "the image"


def _from_tensor(image: "torch.Tensor") -> "Image.Image":
    from PIL import Image

    t = image.detach().float().cpu()
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ImageError(f"an image tensor must be (C, H, W) with C = 1 or 3, got shape {tuple(image.shape)}")
    arr = (t.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()  # (C, H, W) -> (H, W, C)
    return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)


def _from_array(arr: "np.ndarray") -> "Image.Image":
    import numpy as np
    from PIL import Image

    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.min() >= 0 and arr.max() <= 1:
            arr = (arr * 255).round().astype(np.uint8)
        else:
            raise ImageError(f"an image array must be uint8, or float in [0, 1]; got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {arr.shape}")
    return Image.fromarray(arr)


def _from_file(path: Path) -> "Image.Image":
    from PIL import Image, UnidentifiedImageError

    from .safeio import open_regular, present, printable

    if not present(path):
        raise ImageError(f"image not found: {printable(path)}")
    if path.is_dir():
        raise ImageError(f"{printable(path)} is a folder, not an image file")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it: a bomb all the same, refused before decoding
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # regular files only: a FIFO or /dev/zero would block or never end
            with open_regular(path, "image", ImageError) as f, Image.open(f) as opened:
                opened.load()  # decode now: a truncated file fails here, not later
                return opened.copy()
    except UnidentifiedImageError:
        raise ImageError(
            f"cannot read {path} as an image: unsupported format or not an image "
            "(Pillow reads JPEG, PNG, BMP, GIF, TIFF, WebP, ...)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(
            f"{path} is too large to decode safely ({e}); downscale it first, or raise PIL.Image.MAX_IMAGE_PIXELS "
            "if you trust the file"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"cannot decode {path}: {e} (truncated or corrupt file?)") from None


def _convert(img: "Image.Image", mode: str) -> "Image.Image":
    import numpy as np
    from PIL import Image

    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if img.mode in _WIDE_MODES:
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo)
        img = Image.fromarray((arr * 255).round().astype(np.uint8))
    if img.mode in ("RGBA", "LA", "P", "PA") and mode == "RGB":
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))  # transparent -> white, not black
        img = Image.alpha_composite(background, img)
    return img.convert(mode)
