"""A grid of captioned tiles, the form of every picture `focalnet visualize` writes: its pixel geometry
(`GridLayout`, recorded so that tests and users can find every panel), the panels' descriptions, and the
drawing (colormaps, feature maps resampled onto the input they were computed from, overlays, text)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "BACKGROUND",
    "BLANK",
    "TEXT",
    "OVERLAY_ALPHA",
    "GridLayout",
    "Panel",
    "Picture",
    "Canvas",
    "colormap",
    "map_to_tile",
    "overlay",
    "minmax",
    "fmt_value",
    "tile_size",
]

BACKGROUND = (255, 255, 255)
BLANK = (236, 236, 236)
TEXT = (20, 20, 20)
OVERLAY_ALPHA = 0.55


@dataclass(frozen=True)
class GridLayout:
    """Pixel geometry of a grid of equal tiles, each under a band of two text lines, below a header."""

    rows: int
    cols: int
    tile_h: int
    tile_w: int
    margin: int = 8
    band: int = 34  # two lines of 12-px text above each tile
    header: int = 40  # two lines of text at the top

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole picture."""
        w = self.margin + self.cols * (self.tile_w + self.margin)
        h = self.header + self.margin + self.rows * (self.band + self.tile_h + self.margin)
        return w, h

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the tile's image area (x1, y1 exclusive)."""
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise IndexError(f"tile ({row}, {col}) outside a {self.rows}x{self.cols} grid")
        x0 = self.margin + col * (self.tile_w + self.margin)
        y0 = self.header + self.margin + row * (self.band + self.tile_h + self.margin) + self.band
        return x0, y0, x0 + self.tile_w, y0 + self.tile_h


@dataclass
class Panel:
    row: int
    col: int
    kind: str  # input | gate | gate_global | modulator_mean | modulator_l2 | blank | kernel | composed
    title: str
    vmin: Optional[float] = None
    vmax: Optional[float] = None
    block: Optional[str] = None
    level: Optional[int] = None


@dataclass
class Picture:
    image: Any  # PIL.Image.Image
    layout: GridLayout
    panels: list[Panel]
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(
            size=list(self.layout.size), layout=asdict(self.layout),
            panels=[dict(asdict(p), box=list(self.layout.box(p.row, p.col))) for p in self.panels], **self.meta,
        )


# ----------------------------------------------------------------------------------------------------------
# Drawing helpers
# ----------------------------------------------------------------------------------------------------------


def _font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def colormap(values: np.ndarray, name: str) -> np.ndarray:
    """(H, W) floats in [0, 1] -> (H, W, 3) uint8 through a matplotlib colormap."""
    import matplotlib

    rgba = matplotlib.colormaps[name](np.clip(values, 0.0, 1.0))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def map_to_tile(m: torch.Tensor, stride: int, input_size: tuple[int, int], tile: tuple[int, int]) -> np.ndarray:
    """Resample a feature map (h, w) onto a tile (th, tw) showing the H x W input it was computed from.

    Tile pixel centres map to input pixels, input pixels to map coordinates (cell i spans input
    [i s, (i + 1) s)); bilinear between cell centres, edge cells held at the border."""
    H, W = input_size
    th, tw = tile
    h, w = m.shape[-2:]
    ys = (torch.arange(th, dtype=torch.float32) + 0.5) * (H / th) / (stride * h) * 2 - 1  # normalised map y
    xs = (torch.arange(tw, dtype=torch.float32) + 0.5) * (W / tw) / (stride * w) * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]  # (1, th, tw, 2) as (x, y)
    out = F.grid_sample(m.float()[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, 0].numpy()


def overlay(base: np.ndarray, colored: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    return ((1 - alpha) * base.astype(np.float32) + alpha * colored.astype(np.float32)).round().astype(np.uint8)


def minmax(a: np.ndarray) -> tuple[np.ndarray, float, float]:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a), lo, hi


def fmt_value(v: float) -> str:
    return f"{v:.3g}"


class Canvas:
    """A picture being drawn: the header lines, then captioned tiles placed by `layout`."""

    def __init__(self, layout: GridLayout, header: Sequence[str]) -> None:
        from PIL import Image, ImageDraw

        self.layout = layout
        self.image = Image.new("RGB", layout.size, BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)
        self.font = _font(12)
        self.header_font = _font(13)
        for i, line in enumerate(header[:2]):
            self.draw.text((layout.margin, 4 + 17 * i), _fit(self.draw, line, self.header_font, layout.size[0] - 2 * layout.margin),
                           fill=TEXT, font=self.header_font)

    def tile(self, row: int, col: int, pixels: Optional[np.ndarray], lines: Sequence[str]) -> None:
        from PIL import Image

        x0, y0, x1, y1 = self.layout.box(row, col)
        if pixels is None:
            self.draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=BLANK)
        else:
            assert pixels.shape[:2] == (y1 - y0, x1 - x0), (pixels.shape, (y1 - y0, x1 - x0))
            self.image.paste(Image.fromarray(pixels), (x0, y0))
        for i, line in enumerate(lines[:2]):
            y = y0 - self.layout.band + 2 + 15 * i
            self.draw.text((x0, y), _fit(self.draw, line, self.font, self.layout.tile_w), fill=TEXT, font=self.font)


def tile_size(input_size: tuple[int, int], panel: int) -> tuple[int, int]:
    H, W = input_size
    scale = panel / max(H, W)
    return max(1, round(H * scale)), max(1, round(W * scale))
