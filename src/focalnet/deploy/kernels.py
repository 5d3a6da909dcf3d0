"""The four ops a fused FocalNet block is written in (convolution, convolution + GELU, residual add, convolution +
residual add) and two kernel sets that run them: `PlainKernels` (ordinary PyTorch ops, out of place) and
`OneDNNKernels` (oneDNN's fused CPU kernels, residual sums in place). Which set runs is `focalnet.deploy.fused`'s
choice, per call."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PlainKernels", "OneDNNKernels", "FUSED_DTYPES", "ONEDNN_FUSED_KERNELS", "ONEDNN_PREPACK"]

# oneDNN's fused convolution + pointwise kernels (what inductor lowers conv + GELU / + add to on CPU)
ONEDNN_FUSED_KERNELS = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
# oneDNN's weight reorder into its computing layout, done once (what inductor's freezing does for its kernels)
ONEDNN_PREPACK = ONEDNN_FUSED_KERNELS and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")
# what a fused model may compute in; oneDNN's fused kernels run both on a CPU (bf16 only where it is native)
FUSED_DTYPES = (torch.float32, torch.bfloat16)


class PlainKernels:
    """The fused ops as ordinary PyTorch ops, out of place: differentiable, traceable, any device and dtype."""

    @staticmethod
    def conv(x: Tensor, w: Tensor, b: Optional[Tensor], padding: int = 0, groups: int = 1) -> Tensor:
        return F.conv2d(x, w, b, 1, padding, 1, groups)

    @staticmethod
    def conv_gelu(x: Tensor, w: Tensor, b: Optional[Tensor], padding: int = 0, groups: int = 1) -> Tensor:
        return F.gelu(F.conv2d(x, w, b, 1, padding, 1, groups))

    @staticmethod
    def add(x: Tensor, y: Tensor) -> Tensor:
        """x + y, where x is the residual stream."""
        return x + y

    @staticmethod
    def add_conv(x: Tensor, branch: Tensor, w: Tensor, b: Tensor) -> Tensor:
        """x + conv1x1(branch), where x is the residual stream."""
        return x + F.conv2d(branch, w, b)


class OneDNNKernels(PlainKernels):
    """The same ops as oneDNN kernels: GELU in the convolution's epilogue, and residual sums written into the
    residual stream in place (conv + add in one kernel, a `sum` post-op). CPU, float32 or bf16, no autograd only;
    the in-place sums are safe because `FusedBlocks` passes only maps the fused model allocated itself."""

    @staticmethod
    def conv(x: Tensor, w: Tensor, b: Optional[Tensor], padding: int = 0, groups: int = 1) -> Tensor:
        return torch.ops.mkldnn._convolution_pointwise(x, w, b, [padding] * 2, [1, 1], [1, 1], groups, "none", [], "")

    @staticmethod
    def conv_gelu(x: Tensor, w: Tensor, b: Optional[Tensor], padding: int = 0, groups: int = 1) -> Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x, w, b, [padding] * 2, [1, 1], [1, 1], groups, "gelu", [], "none"
        )

    @staticmethod
    def add(x: Tensor, y: Tensor) -> Tensor:
        return x.add_(y)

    @staticmethod
    def add_conv(x: Tensor, branch: Tensor, w: Tensor, b: Tensor) -> Tensor:
        # x += conv(branch) + b
        torch.ops.mkldnn._convolution_pointwise_.binary(
            x, branch, w, b, [0, 0], [1, 1], [1, 1], 1, "add", None, None, [], None
        )
        return x
