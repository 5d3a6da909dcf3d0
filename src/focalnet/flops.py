"""The one FLOP counter: PyTorch's FlopCounterMode, measured rather than hand-counted.

FlopCounterMode counts 2 FLOPs per multiply-add of every convolution and matrix product; MACs (multiply-adds,
what the FocalNet paper calls FLOPs) are half of that. Norms, activations and element-wise products are not
counted (nor by fvcore, which the paper used). A model on the meta device is counted without allocating
memory. `focalnet profile` (inspect.complexity), a training run's summary (train.artifacts) and `focalnet
bench`'s GFLOP/s (deploy.bench) all count here, so their figures agree.

This module is in the base layer (it needs only torch) so that every feature package can use it without
importing another.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "Size",
    "image_hw",
    "input_channels",
    "count_params",
    "flop_counter",
    "forward_flops",
    "run_counted",
    "count_macs",
    "try_count_macs",
]

Size = Union[int, Sequence[int]]


def image_hw(img_size: Size) -> tuple[int, int]:
    """(H, W) of a size given as one int (square) or a pair."""
    if isinstance(img_size, int):
        return img_size, img_size
    h, w = (int(v) for v in img_size)
    return h, w


def input_channels(model: nn.Module) -> int:
    """The channels a model takes: `model.in_chans`, else timm's pretrained_cfg (3 when neither says)."""
    if hasattr(model, "in_chans"):
        return int(model.in_chans)
    cfg = getattr(model, "pretrained_cfg", None) or {}  # timm models
    return int(cfg.get("input_size", (3,))[0])


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args: Any, **kwargs: Any) -> int:
    # PyTorch registers FLOP formulas for the CUDA attention kernels only; the CPU flash kernel (what timm's
    # ViT calls on CPU) would count as zero. Two matmuls: (B, h, N, d) x (B, h, d, M) and (B, h, N, M) x (B, h, M, d).
    b, h, n, d = query_shape
    m = key_shape[-2]
    dv = value_shape[-1]
    return 2 * b * h * n * m * d + 2 * b * h * n * m * dv


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode that also counts the CPU attention kernel."""
    custom = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        custom[op] = _sdpa_cpu_flops
    return FlopCounterMode(display=False, custom_mapping=custom)


def forward_flops(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> int:
    """FLOPs (2 per multiply-add) of `fn(x)` without gradients, the module left in its mode."""
    with torch.no_grad(), flop_counter() as counter:
        fn(x)
    return int(counter.get_total_flops())


def run_counted(model: nn.Module, img_size: Size, batch_size: int = 1,
                in_chans: Optional[int] = None) -> FlopCounterMode:
    """The counter after one eval-mode forward of zeros (B, C, H, W) in the model's device and dtype."""
    h, w = image_hw(img_size)
    param = next(model.parameters())
    x = torch.zeros(batch_size, in_chans or input_channels(model), h, w, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), flop_counter() as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter


def count_macs(model: nn.Module, img_size: Size = 224, batch_size: int = 1, in_chans: Optional[int] = None) -> int:
    """Multiply-adds of one forward pass per image at `img_size` (an int or (H, W)).

    Works for any nn.Module taking (B, C, H, W) (timm's Swin and ViT included: the CPU attention kernel is
    counted too). `in_chans` defaults to `model.in_chans`, or timm's pretrained_cfg."""
    counter = run_counted(model, img_size, batch_size, in_chans)
    return counter.get_total_flops() // (2 * batch_size)


def try_count_macs(model: nn.Module, in_chans: int, img_size: Size) -> Optional[int]:
    """`count_macs`, or None for a model the counter cannot run (a report then leaves MACs out)."""
    try:
        return int(count_macs(model, img_size, in_chans=in_chans))
    except Exception:  # any failure of a model under the counter: the figure is optional, the run is not
        return None
