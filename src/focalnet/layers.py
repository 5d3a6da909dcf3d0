"""Building blocks of FocalNet: the focal modulation layer and what surrounds it.

Layout: every tensor is logically (B, C, H, W). Inside the model it is kept in channels-last memory
(`torch.channels_last`), because on both oneDNN (CPU) and cuDNN the 1x1 projections and the depthwise
convolutions of focal modulation are fastest there, and a LayerNorm over C of a channels-last tensor is a
permute that copies nothing. The public FocalNet code switches between (B, L, C) tokens and (B, C, H, W)
maps with `.permute(...).contiguous()` copies several times per block; this file never copies for layout.

Every forward here also runs under `torch.jit.script` and `torch.fx.symbolic_trace` with eager's values: the few
branches on a tensor's size live in functions that fx keeps as one call each (`torch.fx.wrap`), so a traced graph
takes the same branch as eager for whatever size it is given.
"""
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import FocalNetError

__all__ = [
    "ModelArgumentError",
    "FocalModulation",
    "Mlp",
    "LayerNorm2d",
    "LayerScale2d",
    "DropPath",
    "PatchEmbed",
    "pad_to_multiple",
    "focal_kernel_sizes",
    "trunc_normal_",
]


class ModelArgumentError(FocalNetError, TypeError, ValueError):
    """Arguments that do not describe a FocalNet: an unknown name, or values that do not fit together.

    Both a TypeError (an unknown keyword) and a ValueError (a bad value), for callers that catch either."""


def focal_kernel_sizes(focal_level: int, focal_window: int, focal_factor: int = 2) -> list[int]:
    """Kernel of each focal level: k_l = focal_factor * (l - 1) + focal_window, l = 1..L."""
    return [focal_factor * level + focal_window for level in range(focal_level)]


@torch.jit.unused  # TorchScript never exports this way; it pads unconditionally (see pad_to_multiple)
def _exporting() -> bool:
    # Under ONNX / torch.export tracing, shapes are symbolic: a Python branch on them would be frozen
    # into the graph for the example size (the fault of the Hugging Face ONNX export). Always pad then.
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    if is_exporting is not None and is_exporting():
        return True
    return torch.onnx.is_in_onnx_export()


def _compiling() -> bool:
    """Whether dynamo is tracing this code (torch.compile, torch.export). The eager speed tricks below (GELU on
    the NHWC view, the in-place gated sum) hide the plain pattern from inductor: its CPU pattern matcher fuses
    conv -> GELU into one oneDNN kernel only when it sees F.gelu applied to the convolution's output, and
    functionalization turns in-place updates back into out-of-place ones anyway. Traced code therefore gets
    the plain formulation (same values); tests/test_speed.py checks both, and that the fusion happens."""
    return torch.compiler.is_compiling()


@torch.fx.wrap  # a branch on the size: one call in an fx graph, decided at run time
def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the bottom and right of (B, C, H, W) so that H and W are multiples of `multiple`.

    A strided patch embedding or downsampling would otherwise drop the last rows and columns of a map
    whose size is not a multiple of its stride (what the authors' code and timm do). Padding happens on
    the bottom/right only, so maps whose size is already a multiple are untouched and the output equals
    the reference implementations exactly.
    """
    H, W = x.shape[-2], x.shape[-1]
    pad_h = (multiple - H % multiple) % multiple
    pad_w = (multiple - W % multiple) % multiple
    if torch.jit.is_scripting() or torch.jit.is_tracing() or _exporting():
        return F.pad(x, [0, pad_w, 0, pad_h])
    if pad_h or pad_w:
        x = F.pad(x, [0, pad_w, 0, pad_h])
    return x


def trunc_normal_(tensor: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    """Truncated normal init at +-2 std, as the authors' code (through timm) initialises Linear layers."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2 * std, b=2 * std)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map.

    For a channels-last tensor the permutes below are views of contiguous (B, H, W, C) memory, so the norm
    runs on contiguous rows of C and nothing is copied.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, C, H, W) -> (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


class LayerScale2d(nn.Module):
    """Per-channel scale gamma (CaiT), the authors' `gamma_1` / `gamma_2`."""

    def __init__(self, dim: int, init_value: float = 1e-4) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability `drop_prob`."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class GELU(nn.GELU):
    """nn.GELU that runs on the NHWC view of a channels-last map.

    PyTorch's CPU GELU kernels (forward and backward) take a slower, non-vectorised path for a
    channels-last tensor that is not also NCHW-contiguous; its permuted (B, H, W, C) view is plain
    contiguous memory, so the same values come out up to 2x faster (benchmarks/training_layers.py).
    Same parameters, same results, same output strides as nn.GELU. Under torch.compile it is plain F.gelu
    (inductor generates its own vectorised kernel, and fuses it into the convolution before it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu(x, self.approximate)


@torch.fx.wrap  # a branch on the memory layout: one call in an fx graph, decided at run time
def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU's computation (see the GELU module): on the NHWC view of a channels-last map, except under dynamo."""
    if not _compiling() and x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return F.gelu(x.permute(0, 2, 3, 1), approximate=approximate).permute(0, 3, 1, 2)
    return F.gelu(x, approximate=approximate)


class DepthwiseConv2d(nn.Conv2d):
    """Depthwise k x k convolution with zero 'same' padding (a focal level's contextualization), no bias.

    Same parameters and values as nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim, bias=False). When the
    padding reaches half the map (small maps late in the network: a 5x5 kernel on a 4x4 map), PyTorch's
    CPU backward of a padded depthwise convolution is 1.2-8x slower than the backward of an explicit pad
    followed by an unpadded convolution (benchmarks/training_layers.py), while its forward is faster;
    so the explicit pad is used only when gradients are recorded."""

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__(dim, dim, kernel_size=kernel_size, padding=kernel_size // 2, groups=dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv(x, self.weight, self.kernel_size[0] // 2, self.groups)


@torch.fx.wrap  # a branch on the size: one call in an fx graph, decided at run time
def depthwise_conv(x: torch.Tensor, weight: torch.Tensor, p: int, groups: int) -> torch.Tensor:
    """DepthwiseConv2d's computation: zero padding `p` in the convolution, or as an explicit pad first when
    gradients are recorded and the padding reaches half the map (see DepthwiseConv2d). Under CPU autocast it
    computes in float32: a depthwise convolution reads and writes much and multiplies little, so bf16 saves it
    nothing, and oneDNN's bf16 depthwise backward took twice float32's time (a quarter of the main job's bf16
    step; docs/speed.md)."""
    if not torch.jit.is_scripting() and x.device.type == "cpu" and _cpu_autocast():
        return _depthwise_conv_float32(x, weight, p, groups)
    if p > 0 and torch.is_grad_enabled() and 2 * p >= min(x.shape[-2], x.shape[-1]) and (
        x.requires_grad or weight.requires_grad
    ):
        return F.conv2d(F.pad(x, [p, p, p, p]), weight, None, 1, 0, 1, groups)
    return F.conv2d(x, weight, None, 1, p, 1, groups)


@torch.jit.unused  # eager and traced code only: TorchScript knows no autocast state (is_scripting guards it)
def _cpu_autocast() -> bool:
    return torch.is_autocast_enabled("cpu")


@torch.jit.unused
def _depthwise_conv_float32(x: torch.Tensor, weight: torch.Tensor, p: int, groups: int) -> torch.Tensor:
    with torch.autocast("cpu", enabled=False):
        return depthwise_conv(x.float(), weight.float(), p, groups)


class Mlp(nn.Module):
    """Channel MLP: 1x1 conv (C -> ratio*C), GELU, 1x1 conv (ratio*C -> C)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, kernel_size=1)
        self.act = GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Conv2d(hidden_dim, dim, kernel_size=1)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class FocalModulation(nn.Module):
    """Focal modulation (paper Eq. 7-10): y = q(x) * h(sum_l g^l * z^l), then a projection.

    f: one 1x1 projection C -> 2C + L + 1 gives the query q, the context z^0 and the L+1 gates.
    Hierarchical contextualization: z^l = GELU(DWConv_{k_l}(z^{l-1})), l = 1..L, no bias.
    Global context: z^{L+1} = GELU(mean over H, W of z^L).
    Gated aggregation: z_out = sum_{l=1..L+1} g^l * z^l (divided by L+1 with `normalize_modulator`).
    Modulation: q * h(z_out), h a 1x1 conv; optional LayerNorm (`use_post_norm_in_modulation`), then proj.

    Observing it: forward hooks on `f` (q, z^0 and gates), `focal_layers[l]` (z^l), `global_act` (z^{L+1})
    and `h` (the modulator) see every quantity of the paper; nothing is stored on the module.
    """

    def __init__(
        self,
        dim: int,
        focal_level: int,
        focal_window: int,
        focal_factor: int = 2,
        bias: bool = True,
        use_post_norm_in_modulation: bool = False,
        normalize_modulator: bool = False,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if focal_level < 1:
            raise ModelArgumentError(f"focal_level must be >= 1, got {focal_level}")
        if focal_window < 1 or focal_window % 2 == 0:
            raise ModelArgumentError(f"focal_window must be a positive odd kernel size, got {focal_window}")
        self.dim = dim
        self.focal_level = focal_level
        self.focal_window = focal_window
        self.focal_factor = focal_factor
        self.normalize_modulator = normalize_modulator
        self.kernel_sizes = focal_kernel_sizes(focal_level, focal_window, focal_factor)

        self.f = nn.Conv2d(dim, 2 * dim + focal_level + 1, kernel_size=1, bias=bias)
        self.focal_layers = nn.ModuleList(
            nn.Sequential(
                DepthwiseConv2d(dim, k),
                GELU(),
            )
            for k in self.kernel_sizes
        )
        self.global_act = GELU()
        self.h = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self.norm = LayerNorm2d(dim) if use_post_norm_in_modulation else nn.Identity()
        self.proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C = self.dim
        L = self.focal_level
        x = self.f(x)  # (B, 2C + L + 1, H, W)
        q, ctx, gates = torch.split(x, (C, C, L + 1), dim=1)

        # hierarchical contextualization and gated aggregation. Eager: accumulated in place into one buffer (the
        # first product is a fresh tensor and no backward formula needs the running sum, so autograd allows it).
        # Traced: out of place, the plain sum inductor fuses into one loop (see _compiling)
        plain = _compiling()  # False under TorchScript too: the scripted model computes eager's values
        ctx_all = None
        for level, focal_layer in enumerate(self.focal_layers):
            ctx = focal_layer(ctx)  # z^l, (B, C, H, W)
            gate = gates[:, level : level + 1]
            if ctx_all is None:
                ctx_all = ctx * gate
            else:
                ctx_all = ctx_all + ctx * gate if plain else ctx_all.addcmul_(ctx, gate)
        # global context: one vector per image, broadcast over H, W
        ctx_global = self.global_act(ctx.mean((2, 3), keepdim=True))  # (B, C, 1, 1)
        ctx_all = ctx_all + ctx_global * gates[:, L:] if plain else ctx_all.addcmul_(ctx_global, gates[:, L:])
        if self.normalize_modulator:
            ctx_all = ctx_all / (L + 1) if plain else ctx_all.div_(L + 1)

        # modulation: q interacts with the aggregated context
        x = q * self.h(ctx_all)
        x = self.norm(x)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, focal_level={self.focal_level}, kernel_sizes={self.kernel_sizes}"


class PatchEmbed(nn.Module):
    """Strided convolution (+ LayerNorm): the stem (stride 4, or 16 for isotropic models) and the
    downsampling between stages (stride 2).

    `overlap=True` is the authors' `use_conv_embed`: a 7x7 stride-4 conv (padding 2) for the stem and a
    3x3 stride-2 conv (padding 1) between stages. Inputs whose H or W is not a multiple of the stride are
    zero-padded on the bottom/right first, so that no pixel is dropped.
    """

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        stride: int,
        overlap: bool = False,
        norm: bool = True,
    ) -> None:
        super().__init__()
        self.stride = stride
        if overlap:
            if stride == 4:
                kernel_size, padding = 7, 2
            elif stride == 2:
                kernel_size, padding = 3, 1
            else:
                raise ModelArgumentError(f"overlapped (conv) embedding is defined for stride 4 and 2, got {stride}")
        else:
            kernel_size, padding = stride, 0
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)
        self.norm = LayerNorm2d(embed_dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_multiple(x, self.stride)
        return self.norm(self.proj(x))  # (B, C_in, H, W) -> (B, C, H / stride, W / stride)


def init_weights(module: nn.Module) -> None:
    """The authors' init: truncated normal (std .02) for the 1x1 projections (f, h, proj, MLP) and the
    classifier, zero bias, LayerNorm 1/0. Depthwise and strided convolutions keep PyTorch's default init,
    as in the authors' code."""
    if isinstance(module, nn.Linear) or (
        isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
    ):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def drop_path_rates(drop_path_rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic depth increasing linearly from 0 to `drop_path_rate` over all blocks, split by stage."""
    total = sum(depths)
    rates = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    out, start = [], 0
    for d in depths:
        out.append(rates[start : start + d])
        start += d
    return out


