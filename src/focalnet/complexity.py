"""Complexity of a FocalNet, measured rather than hand-counted.

MACs come from PyTorch's FlopCounterMode (which counts 2 FLOPs per multiply-add of every convolution and
matrix product) divided by 2: multiply-adds are what the paper calls FLOPs. Norms, activations and the
gated sum are not counted (neither by fvcore, which the paper used, except for norms: about 0.5% more).
Models on the meta device are counted without allocating any memory.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_macs"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(model: nn.Module, img_size: Union[int, Sequence[int]] = 224, batch_size: int = 1) -> int:
    """Multiply-adds of one forward pass per image at `img_size` (an int or (H, W))."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    param = next(model.parameters())
    x = torch.zeros(batch_size, model.in_chans, h, w, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // (2 * batch_size)
