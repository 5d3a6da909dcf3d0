"""Pictures of focal modulation: per image a grid of gate maps and modulators, and the learned kernels.

Layout of a modulation picture (one row per recorded block; L = the largest focal level of those blocks):

    | input | gate 1 | ... | gate L | gate global | modulator: channel mean | modulator: L2 norm |

- gate l: g^l, the weight each position gives its level-l context z^l (coolwarm, symmetric around 0 per
  panel: blue < 0 < red); "gate global" weighs the image-level context z^{L+1}. A block with fewer levels
  leaves its extra gate columns blank.
- modulator M = h(sum_l g^l z^l): its mean over channels (as the paper shows) and its L2 norm over channels,
  each min-max scaled per panel (turbo) and laid over the input.
Feature maps are drawn where they are: a map of stride s covers s x s input pixels per cell and the model
pads bottom/right, so cell (i, j) is drawn over input pixels [i s, (i + 1) s) x [j s, (j + 1) s), clipped
to the image (bilinear between cell centres).

The kernel picture has one row per stage: the learned depthwise kernels k_l of each level (mean |w| over
channels and the stage's blocks) and their composition r_l = 1 + sum (k_i - 1): the linear kernel of the
chain DWConv_1 .. DWConv_l (GELU left out), which shows how far each level reaches.

Pixel sizes are exact and recorded in `GridLayout` (inspect.canvas, which draws), so that tests (and users) can
find every panel.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import describe_arch
from .canvas import (
    BLANK,
    Canvas,
    GridLayout,
    Panel,
    Picture,
    colormap,
    fmt_value,
    map_to_tile,
    minmax,
    overlay,
    tile_size,
)
from .recorder import BlockSpec, ModulationRecord, ModulationRecorder, RecorderError, resolve_blocks

__all__ = [
    "GridLayout",
    "Panel",
    "Picture",
    "modulation_picture",
    "kernel_picture",
    "depthwise_kernels",
    "compose_kernels",
    "write_pictures",
]

# ----------------------------------------------------------------------------------------------------------
# The modulation picture of one image
# ----------------------------------------------------------------------------------------------------------


def modulation_picture(
    image: "PIL.Image.Image",  # noqa: F821
    records: Sequence[ModulationRecord],
    index: int = 0,
    panel: int = 224,
    title: str = "",
) -> Picture:
    """The grid for sample `index` of the recorded batch; `image` is the picture the model saw (any mode,
    at the size of the model's input)."""
    from PIL import Image

    if not records:
        raise RecorderError("no block was recorded")
    input_size = tuple(records[0].input_size)
    if (image.height, image.width) != input_size:
        raise ValueError(f"the image is {image.height}x{image.width} but the model saw {input_size[0]}x{input_size[1]}")
    th, tw = tile_size(input_size, panel)
    base = np.asarray(image.convert("RGB").resize((tw, th), Image.BICUBIC))
    levels = max(r.focal_level for r in records)
    cols = 1 + levels + 1 + 2
    layout = GridLayout(rows=len(records), cols=cols, tile_h=th, tile_w=tw, header=40 if title else 8)
    header = [title, "gates: coolwarm, symmetric per panel (blue < 0 < red); modulator: turbo, min-max per panel, "
                     "over the input"] if title else []
    canvas = Canvas(layout, header)
    panels: list[Panel] = []

    for row, rec in enumerate(records):
        h, w = rec.map_size
        canvas.tile(row, 0, base, [rec.block, f"stride {rec.stride}, map {h}x{w}"])
        panels.append(Panel(row, 0, "input", rec.block, block=rec.block))
        gates = rec.gates[index].float()  # (L + 1, h, w)
        L = rec.focal_level
        r_l = np.cumsum([0] + [k - 1 for k in rec.kernel_sizes]) + 1
        for l in range(levels):
            col = 1 + l
            if l >= L:
                canvas.tile(row, col, None, [f"(no level {l + 1})", ""])
                panels.append(Panel(row, col, "blank", "", block=rec.block, level=l + 1))
                continue
            g = map_to_tile(gates[l], rec.stride, input_size, (th, tw))
            vmax = float(gates[l].abs().max()) or 1.0
            k = rec.kernel_sizes[l] if l < len(rec.kernel_sizes) else None
            what = f"gate {l + 1}" + (f" (k={k}, r={r_l[l + 1]})" if k else "")
            canvas.tile(row, col, colormap(g / (2 * vmax) + 0.5, "coolwarm"),
                        [what, f"[{fmt_value(float(gates[l].min()))}, {fmt_value(float(gates[l].max()))}]"])
            panels.append(Panel(row, col, "gate", what, float(gates[l].min()), float(gates[l].max()), rec.block, l + 1))
        col = 1 + levels
        g = map_to_tile(gates[L], rec.stride, input_size, (th, tw))
        vmax = float(gates[L].abs().max()) or 1.0
        canvas.tile(row, col, colormap(g / (2 * vmax) + 0.5, "coolwarm"),
                    ["gate global", f"[{fmt_value(float(gates[L].min()))}, {fmt_value(float(gates[L].max()))}]"])
        panels.append(Panel(row, col, "gate_global", "gate global", float(gates[L].min()), float(gates[L].max()), rec.block, L + 1))

        modulator = rec.modulator[index].float()  # (C, h, w)
        for kind, name, m in (
            ("modulator_mean", "modulator: channel mean", modulator.mean(0)),
            ("modulator_l2", "modulator: L2 norm", modulator.norm(dim=0)),
        ):
            col += 1
            values, lo, hi = minmax(map_to_tile(m, rec.stride, input_size, (th, tw)))
            canvas.tile(row, col, overlay(base, colormap(values, "turbo")), [name, f"[{fmt_value(float(m.min()))}, {fmt_value(float(m.max()))}]"])
            panels.append(Panel(row, col, kind, name, float(m.min()), float(m.max()), rec.block))
    return Picture(canvas.image, layout, panels, meta=dict(input_size=list(input_size), blocks=[r.block for r in records]))


# ----------------------------------------------------------------------------------------------------------
# The kernel picture
# ----------------------------------------------------------------------------------------------------------


def depthwise_kernels(model: nn.Module) -> list[list[list[torch.Tensor]]]:
    """kernels[stage][block][level]: the depthwise weight (C, 1, k_l, k_l) of each focal level.

    Found as the depthwise Conv2d inside `modulation.focal_layers[l]` of each block."""
    out = []
    for stage in _stage_blocks(model):
        per_stage = []
        for ref in stage:
            mod = getattr(ref.module, "modulation", None)
            layers = getattr(mod, "focal_layers", None)
            if layers is None:
                raise RecorderError(f"block {ref.name} has no modulation.focal_layers: fused or not a FocalNet")
            levels = []
            for l, layer in enumerate(layers):
                convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1]
                if not convs:
                    raise RecorderError(f"block {ref.name}, focal level {l + 1}: no depthwise convolution found")
                levels.append(convs[0].weight.detach().float().cpu())
            per_stage.append(levels)
        out.append(per_stage)
    return out


def _stage_blocks(model: nn.Module):
    from .recorder import _blocks_of

    return _blocks_of(model)


def compose_kernels(kernels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per-channel composition of a chain of depthwise kernels [(C, 1, k_1, k_1), ...]: element l is the
    (C, 1, r_l, r_l) kernel K_l with DWConv_{K_l} = DWConv_{k_l} o ... o DWConv_{k_1} (cross-correlations,
    as nn.Conv2d computes them; equal away from the borders, where the chain zero-pads in between)."""
    eff = kernels[0]
    out = [eff]
    for w in kernels[1:]:
        k = w.shape[-1]
        x = eff.permute(1, 0, 2, 3)  # (C, 1, r, r) -> (1, C, r, r): channels as a batch of one image
        x = F.pad(x, (k - 1, k - 1, k - 1, k - 1))
        # full convolution with w = cross-correlation with w flipped
        eff = F.conv2d(x, w.flip(-1, -2), groups=w.shape[0]).permute(1, 0, 2, 3)
        out.append(eff)
    return out


def kernel_picture(model: nn.Module, panel: int = 150, title: str = "") -> Picture:
    """Learned depthwise kernels per stage and level (mean |w| over channels and blocks), and their
    compositions r_l (same reduction)."""
    kernels = depthwise_kernels(model)
    levels = max(len(b) for s in kernels for b in s)
    layout = GridLayout(rows=len(kernels), cols=2 * levels, tile_h=panel, tile_w=panel, header=40)
    header = [
        title or "depthwise kernels",
        "mean |w| over channels and the stage's blocks (viridis, 0 to max); composed: DWConv_1..l as one kernel, GELU left out",
    ]
    canvas = Canvas(layout, header)
    panels = []
    for s, blocks in enumerate(kernels):
        learned = [torch.stack([b[l].abs().mean((0, 1)) for b in blocks]).mean(0) for l in range(len(blocks[0]))]
        composed_per_block = [compose_kernels(b) for b in blocks]
        composed = [torch.stack([c[l].abs().mean((0, 1)) for c in composed_per_block]).mean(0) for l in range(len(blocks[0]))]
        for group, maps, kind in ((0, learned, "kernel"), (1, composed, "composed")):
            for l in range(levels):
                col = group * levels + l
                if l >= len(maps):
                    canvas.tile(s, col, None, [f"stage {s}: no level {l + 1}", ""])
                    panels.append(Panel(s, col, "blank", "", level=l + 1))
                    continue
                m = maps[l].numpy()
                k = m.shape[-1]
                vmax = float(m.max()) or 1.0
                cell = max(1, panel // k)
                img = np.kron(m / vmax, np.ones((cell, cell)))  # nearest: one square per weight
                tile = np.full((panel, panel, 3), BLANK, dtype=np.uint8)
                off = (panel - img.shape[0]) // 2
                tile[off : off + img.shape[0], off : off + img.shape[1]] = colormap(img, "viridis")
                what = f"stage {s}, level {l + 1}"
                size = f"k={k} learned" if kind == "kernel" else f"r={k} composed"
                canvas.tile(s, col, tile, [what, f"{size}, max {fmt_value(vmax)}"])
                panels.append(Panel(s, col, kind, f"{what}: {size}", float(m.min()), vmax, level=l + 1))
    return Picture(canvas.image, layout, panels, meta=dict(stages=len(kernels)))


# ----------------------------------------------------------------------------------------------------------
# Writing pictures for images
# ----------------------------------------------------------------------------------------------------------


def _save_png(img: "PIL.Image.Image", path: Path) -> None:  # noqa: F821
    from ..utils import atomic_write

    with atomic_write(path) as f:
        img.save(f, format="PNG")


def _image_name(image: Any, i: int) -> str:
    if isinstance(image, (str, os.PathLike)):
        return Path(image).stem
    return f"image{i}"


def _unique_stems(images: Sequence[Any], names: Optional[Sequence[str]]) -> list[str]:
    """One file stem per image: its given name or file stem, '_2', '_3', ... appended to repeats."""
    stems: list[str] = []
    for i, img in enumerate(images):
        stem = names[i] if names is not None else _image_name(img, i)
        base, k = stem, 1
        while stem in stems:
            k += 1
            stem = f"{base}_{k}"
        stems.append(stem)
    return stems


def _refuse_existing(targets: Sequence[Path], overwrite: bool) -> None:
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists" + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
                              + "; pass overwrite=True (CLI: --force) or choose another folder")


def _record(model: nn.Module, meta_model: nn.Module, x: torch.Tensor, blocks: BlockSpec, what: str) -> list[ModulationRecord]:
    """The modulation records of one forward of `x` (1, C, H, W), after checking on the meta device that
    the activations fit in free memory; running out of memory anyway is an InputTooLargeError too."""
    from .memory import InputTooLargeError, activation_memory, check_memory

    H, W = x.shape[-2:]
    estimate = activation_memory(meta_model, (H, W)).peak_live_bytes
    check_memory(model, (H, W), what=what, device=x.device, estimate=estimate)
    try:
        with torch.no_grad(), ModulationRecorder(model, blocks) as rec:
            model(x)
            return rec.records
    except (torch.OutOfMemoryError, MemoryError) as e:
        raise InputTooLargeError(f"{what} at {H}x{W} px ran out of memory ({type(e).__name__}); pass a smaller img_size") from None
    except RuntimeError as e:
        if "allocate" in str(e) or "out of memory" in str(e):
            raise InputTooLargeError(f"{what} at {H}x{W} px ran out of memory; pass a smaller img_size") from None
        raise


def write_pictures(
    model: nn.Module,
    images: Sequence[Any],
    out_dir: Union[str, os.PathLike],
    *,
    blocks: BlockSpec = None,
    names: Optional[Sequence[str]] = None,
    img_size: Optional[int] = None,
    panel: int = 224,
    kernels: bool = True,
    overwrite: bool = False,
    title: Optional[str] = None,
) -> list[Path]:
    """Write `<name>_modulation.png` for each image, `kernels.png`, and `pictures.json` (the layout of
    every panel, value ranges) into `out_dir`; returns the paths written.

    images: paths, PIL images, uint8 arrays or (C, H, W) tensors in [0, 1]. Each is fed whole (no crop)
    at its own size, or with its shorter side resized to `img_size`; the model's registered mean/std are
    used, and grayscale (in_chans=1) models get the gray image. blocks: see `resolve_blocks` (default: the
    last block of every stage). Existing files are refused unless `overwrite`. Before each forward the
    activation memory at that size is measured on the meta device and compared with free memory
    (InputTooLargeError names the image)."""
    from ..images import check_image_side, load_image
    from ..utils import check_output
    from .predict import preprocessing_for

    if isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence):
        images = [images]
    resolve_blocks(model, blocks)  # a wrong block fails before anything is read or written
    pre = preprocessing_for(model)
    out_dir = Path(out_dir)
    check_output(out_dir, kind="folder", overwrite=True)  # a file named like the folder: one clear line, first
    if img_size is not None:
        check_image_side(img_size, "img_size")
    stems = _unique_stems(images, names)
    targets = [out_dir / f"{s}_modulation.png" for s in stems] + ([out_dir / "kernels.png"] if kernels else [])
    _refuse_existing(targets + [out_dir / "pictures.json"], overwrite)

    pil_images = [load_image(img, pre.mode) for img in images]  # read all first: a bad file fails fast
    created = not out_dir.exists()
    try:
        return _write_all(model, images, pil_images, stems, out_dir, pre, blocks=blocks, img_size=img_size,
                          panel=panel, kernels=kernels, title=title)
    except BaseException:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a full disk leaves no empty folder behind
        raise


def _write_all(model: nn.Module, images: Sequence[Any], pil_images: list, stems: list[str], out_dir: Path, pre: Any, *,
               blocks: BlockSpec, img_size: Optional[int], panel: int, kernels: bool, title: Optional[str]) -> list[Path]:
    """The pictures of `write_pictures`, written one by one (each atomically), then pictures.json."""
    from ..utils import atomic_json
    from .memory import meta_copy
    from .predict import to_tensor

    device = next(model.parameters()).device
    model_name = title or describe_arch(model)  # a resized model is "custom, from VARIANT: ..."
    meta_model = meta_copy(model)
    was_training = model.training
    model.eval()
    written, index = [], dict(model=model_name, images=[])
    try:
        for stem, src, pil in zip(stems, images, pil_images):
            x = to_tensor(pil, pre, resize=img_size)[None].to(device)  # (1, C, H, W)
            H, W = x.shape[-2:]
            shown = pil if (pil.height, pil.width) == (H, W) else pil.resize((W, H), resample=3)  # 3: bicubic
            what = f"image {src}" if isinstance(src, (str, os.PathLike)) else f"image {stem}"
            records = _record(model, meta_model, x, blocks, what)
            pic = modulation_picture(shown, records, panel=panel, title=f"{stem}: {model_name}, input {H}x{W}")
            path = out_dir / f"{stem}_modulation.png"
            _save_png(pic.image, path)
            written.append(path)
            index["images"].append(dict(image=str(src) if isinstance(src, (str, os.PathLike)) else stem,
                                        file=path.name, **pic.to_dict()))
        if kernels:
            pic = kernel_picture(model, title=f"depthwise kernels of {model_name}")
            path = out_dir / "kernels.png"
            _save_png(pic.image, path)
            written.append(path)
            index["kernels"] = dict(file=path.name, **pic.to_dict())
    finally:
        model.train(was_training)
    atomic_json(index, out_dir / "pictures.json")
    written.append(out_dir / "pictures.json")
    return written
