"""Pictures of predictions: boxes and masks on the image, class maps as a coloured overlay with a legend.

Drawing is torchvision's (`draw_bounding_boxes`, `draw_segmentation_masks`); this module picks colours per
class, enlarges small images by an integer factor (nearest neighbour, so no pixel is invented) to keep the
labels legible, and writes PNGs atomically (images are read by `focalnet.images.read_image`).
"""
from __future__ import annotations

import colorsys
import io
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..images import read_image
from ..utils import atomic_write

__all__ = ["palette", "draw_detections", "overlay_segmentation", "save_png"]

PathLike = Union[str, os.PathLike]


def palette(n: int) -> list[tuple[int, int, int]]:
    """n well-separated colours (golden-ratio hues); index 0, the background, is black."""
    out = [(0, 0, 0)]
    for i in range(1, n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 1.0)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out[:n]


def _font() -> Optional[str]:
    try:
        import matplotlib

        path = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        return str(path) if path.exists() else None
    except ImportError:
        return None


def _enlarge_factor(h: int, w: int, min_side: int) -> int:
    return max(1, min_side // max(h, w))


def draw_detections(
    image: torch.Tensor,
    prediction: Mapping[str, torch.Tensor],
    class_names: Sequence[str],
    *,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    min_side: int = 512,
) -> torch.Tensor:
    """Boxes (and masks, when the prediction has them) with 'name score' labels on a (3, H, W) uint8 image.

    prediction: a torchvision detector's output for this image (boxes, labels, scores[, masks (N, 1, H, W)]).
    Images whose longer side is below `min_side` are enlarged by an integer factor first.
    """
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    keep = prediction["scores"] >= score_threshold
    boxes, labels, scores = prediction["boxes"][keep], prediction["labels"][keep], prediction["scores"][keep]
    H, W = image.shape[-2:]
    k = _enlarge_factor(H, W, min_side)
    if k > 1:
        image = image.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
        boxes = boxes * k
    colors = palette(max(len(class_names), int(labels.max()) + 1 if labels.numel() else 1))
    if "masks" in prediction and labels.numel():
        probs = prediction["masks"][keep].float()  # (N, 1, H, W)
        if k > 1:
            probs = F.interpolate(probs, scale_factor=k, mode="bilinear", align_corners=False)
        masks = probs[:, 0] > mask_threshold
        image = draw_segmentation_masks(image, masks, alpha=0.45, colors=[colors[int(c)] for c in labels])
    if not labels.numel():
        return image
    names = [f"{class_names[int(c)] if int(c) < len(class_names) else int(c)} {float(s):.2f}" for c, s in zip(labels, scores)]
    font = _font()
    size = max(10, min(image.shape[-2:]) // 40)
    return draw_bounding_boxes(
        image, boxes, labels=names, colors=[colors[int(c)] for c in labels], width=max(1, k // 2 + 1),
        font=font, font_size=size if font else None, fill_labels=True, label_colors="black",
    )


def overlay_segmentation(
    image: torch.Tensor,
    class_map: torch.Tensor,
    class_names: Sequence[str],
    *,
    alpha: float = 0.5,
    background: Optional[int] = 0,
    min_side: int = 512,
) -> torch.Tensor:
    """The class map (H, W) as colours over the (3, H, W) uint8 image, and a legend of the classes present
    below it. Pixels of class `background` keep the image as is (None: colour every class)."""
    from PIL import Image, ImageDraw, ImageFont

    H, W = image.shape[-2:]
    if class_map.shape[-2:] != (H, W):
        raise ValueError(f"class map {tuple(class_map.shape)} and image {tuple(image.shape)} differ in size")
    k = _enlarge_factor(H, W, min_side)
    if k > 1:
        image = image.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
        class_map = class_map.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
    n = max(len(class_names), int(class_map.max()) + 1)
    colors = torch.tensor(palette(n), dtype=torch.float32)  # (n, 3)
    painted = colors[class_map.long()].permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
    blend = image.float() * (1 - alpha) + painted * alpha
    if background is not None:
        blend = torch.where(class_map.unsqueeze(0) == background, image.float(), blend)
    out = blend.round().clamp(0, 255).to(torch.uint8)

    present = [int(c) for c in torch.unique(class_map).tolist() if c != background]
    if not present:
        return out
    font_path = _font()
    size = max(10, min(out.shape[-2:]) // 40)
    font = ImageFont.truetype(font_path, size) if font_path else ImageFont.load_default()
    line = size + 6
    per_row = max(1, out.shape[-1] // (size * 12))
    rows = (len(present) + per_row - 1) // per_row
    canvas = Image.new("RGB", (out.shape[-1], out.shape[-2] + rows * line + 4), (255, 255, 255))
    canvas.paste(Image.fromarray(out.permute(1, 2, 0).numpy()), (0, 0))
    draw = ImageDraw.Draw(canvas)
    col_w = out.shape[-1] // per_row
    for j, c in enumerate(present):
        x = (j % per_row) * col_w + 4
        y = out.shape[-2] + (j // per_row) * line + 4
        draw.rectangle([x, y, x + size, y + size], fill=tuple(int(v) for v in colors[c]), outline=(0, 0, 0))
        name = class_names[c] if c < len(class_names) else str(c)
        draw.text((x + size + 4, y - 1), name, fill=(0, 0, 0), font=font)
    return read_image(canvas)  # (3, H, W) uint8


def save_png(image: torch.Tensor, path: PathLike) -> Path:
    """Write a (3, H, W) uint8 image as PNG, atomically (temporary file + rename)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buf, format="PNG")
    path = Path(path)
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return path
