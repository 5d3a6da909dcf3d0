"""Inference-only FocalNet: constants folded into the projections, CPU kernels fused, batches tiled.

`fuse_for_inference(model)` returns a `FusedFocalNet`: a new module computing the same function as `model` in
eval mode (float32 outputs agree within float rounding, ~1e-6), built for speed. `model` is left untouched;
the fused module holds its own copies of the weights, so it is a snapshot: fuse again after changing weights.

What is folded (exact algebra, done once in float64):
- the affine part of a pre-norm LayerNorm into the 1x1 projection after it: f(LN(x)) = (W diag w) x_hat + (W b + c),
  so only the normalisation itself (no scale, no shift) runs per pixel (norm1 -> f, norm2 -> fc1);
- layer scale gamma into the projection before it (pre-norm: proj, fc2) or into the LayerNorm before it
  (post-norm: norm1, norm2);
- `normalize_modulator` (divide the gated sum by L+1) into the weight of h;
- dropout and stochastic depth, which are identities at inference.

How it runs (float32 on CPU with oneDNN, no autograd):
- f is computed as two 1x1 convolutions, context (C channels) and query + gates (C + L + 1), so that the
  depthwise convolutions get a dense channels-last input instead of a strided slice that would be copied;
- each focal level is one oneDNN depthwise convolution with GELU applied in its epilogue, and MLP fc1 likewise;
- the residual additions after proj and fc2 are done by oneDNN into the residual stream itself (a `sum`
  post-op), so no (B, C, H, W) temporary is allocated for them;
- the gated aggregation accumulates in place (addcmul_) into one buffer;
- each stage runs on tiles of the batch (whole images, about `tile_rows` pixels per tile), so that every
  intermediate of a block stays in cache and the allocator reuses the same small blocks instead of mapping
  and page-faulting fresh memory for every 20-80 MB activation. Images are independent everywhere in a
  FocalNet (the global context is a per-image mean), so tiling changes nothing in the result.
Anywhere else (CUDA, bf16/fp16 autocast, autograd, torch.compile, tracing or export) the same folded weights
run through plain PyTorch ops, out of place, so the module stays differentiable, compilable and exportable.

Observation: a fused model has no `modulation.f`, `focal_layers`, `global_act` or `h` submodules, so no hook
can be placed on them; record on the unfused model (the recorder in `focalnet.viz` refuses a fused model).
The state dict of a fused model is not a checkpoint: save the original model instead.
"""
from __future__ import annotations

import copy
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import FocalModulation, LayerNorm2d, LayerScale2d, _exporting
from .models import FocalNet, FocalNetBlock, FocalNetIsotropic, _FocalNetBase

__all__ = ["fuse_for_inference", "FusedFocalNet", "FusedBlock", "is_fused", "DEFAULT_TILE_ROWS"]

# Pixels per tile of a stage. At 8192, a stage-1 tile of FocalNet-T (96 channels, 56 x 56 = 3136 px per image,
# so 2 images) keeps its largest intermediate, the MLP hidden map, at 12.6 MB: within the 32 MB L3 of the
# machines this was tuned on, and below glibc's largest mmap threshold (32 MB), so that it is reused from the
# heap rather than mapped afresh. Measured in benchmarks/tile_rows.py; docs/speed.md has the figures.
DEFAULT_TILE_ROWS = 8192


def is_fused(model: nn.Module) -> bool:
    """True for a module made by `fuse_for_inference` (it has no hook points of the focal modulation)."""
    return isinstance(model, FusedFocalNet)


# oneDNN's fused convolution + pointwise kernels (what inductor lowers conv + GELU / + add to on CPU)
_MKLDNN_FUSED = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _plain_ops_only(x: torch.Tensor) -> bool:
    """Whether the oneDNN fused kernels must be avoided: they have no autograd formula, no CUDA kernel and no
    bf16/fp16 autocast rule, and tracers (jit, ONNX, dynamo) should see ordinary ops (inductor fuses by itself)."""
    # tracers first: they must not reach the checks below, which dynamo cannot trace
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting() or _exporting():
        return True
    if x.device.type != "cpu" or x.dtype != torch.float32 or not _MKLDNN_FUSED:
        return True
    if torch.is_grad_enabled() and x.requires_grad:
        return True
    return torch.is_autocast_enabled("cpu")


def _layer_norm_2d(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    # (B, C, H, W) in channels-last memory -> (B, H, W, C) view, normalised over C, -> (B, C, H, W) view
    y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, eps)
    return y.permute(0, 3, 1, 2)


def _fold_affine_into_conv(
    conv_w: torch.Tensor, conv_b: Optional[torch.Tensor], ln_w: torch.Tensor, ln_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """conv(ln_w * x + ln_b) for a 1x1 conv with weight (O, I, 1, 1) -> one conv on x. Done in float64."""
    w = conv_w.double()
    b = conv_b.double() if conv_b is not None else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    w2 = w * ln_w.double().view(1, -1, 1, 1)
    b2 = b + (w[:, :, 0, 0] @ ln_b.double())
    return w2.to(conv_w.dtype), b2.to(conv_w.dtype)


def _gamma(ls: nn.Module) -> Optional[torch.Tensor]:
    return ls.gamma.detach() if isinstance(ls, LayerScale2d) else None


def _contiguous_cl(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t.detach().clone()


class FusedBlock(nn.Module):
    """One FocalNet block with its inference constants folded (see the module docstring).

    forward(x) may update `x` in place (the residual additions land in it) and returns the result; it is only
    called by `FusedFocalNet`, on maps that the fused model allocated itself, never on a caller's tensor.
    """

    def __init__(self, block: FocalNetBlock) -> None:
        super().__init__()
        mod: FocalModulation = block.modulation
        C, L = mod.dim, mod.focal_level
        self.dim = C
        self.focal_level = L
        self.kernel_sizes = list(mod.kernel_sizes)
        self.post_norm = block.use_post_norm
        self.eps1 = block.norm1.eps
        self.eps2 = block.norm2.eps
        g1, g2 = _gamma(block.ls1), _gamma(block.ls2)

        f_w, f_b = mod.f.weight.detach(), mod.f.bias.detach() if mod.f.bias is not None else None
        fc1_w, fc1_b = block.mlp.fc1.weight.detach(), block.mlp.fc1.bias.detach()
        proj_w, proj_b = mod.proj.weight.detach().double(), mod.proj.bias.detach().double()
        fc2_w, fc2_b = block.mlp.fc2.weight.detach().double(), block.mlp.fc2.bias.detach().double()
        n1_w, n1_b = block.norm1.weight.detach().double(), block.norm1.bias.detach().double()
        n2_w, n2_b = block.norm2.weight.detach().double(), block.norm2.bias.detach().double()
        if not self.post_norm:
            # pre-norm: LN affine -> the projection after it; layer scale -> the projection before the residual
            f_w, f_b = _fold_affine_into_conv(f_w, f_b, block.norm1.weight.detach(), block.norm1.bias.detach())
            fc1_w, fc1_b = _fold_affine_into_conv(fc1_w, fc1_b, block.norm2.weight.detach(), block.norm2.bias.detach())
            if g1 is not None:
                proj_w, proj_b = proj_w * g1.double().view(-1, 1, 1, 1), proj_b * g1.double()
            if g2 is not None:
                fc2_w, fc2_b = fc2_w * g2.double().view(-1, 1, 1, 1), fc2_b * g2.double()
        else:
            # post-norm: x + gamma * LN(branch) -> the LayerNorm's affine absorbs gamma
            if g1 is not None:
                n1_w, n1_b = n1_w * g1.double(), n1_b * g1.double()
            if g2 is not None:
                n2_w, n2_b = n2_w * g2.double(), n2_b * g2.double()
        dtype = mod.proj.weight.dtype
        if f_b is None:
            f_b = torch.zeros(f_w.shape[0], dtype=f_w.dtype, device=f_w.device)
        # f -> context (C) and query + gates (C + L + 1): two dense outputs instead of one split
        self.register_buffer("ctx_w", _contiguous_cl(f_w[C : 2 * C]))
        self.register_buffer("ctx_b", f_b[C : 2 * C].detach().clone())
        self.register_buffer("qg_w", _contiguous_cl(torch.cat([f_w[:C], f_w[2 * C :]], 0)))
        self.register_buffer("qg_b", torch.cat([f_b[:C], f_b[2 * C :]], 0).detach().clone())
        for level, layer in enumerate(mod.focal_layers):
            self.register_buffer(f"focal_w{level}", _contiguous_cl(layer[0].weight))
        h_w = mod.h.weight.detach().double()
        if mod.normalize_modulator:
            h_w = h_w / (L + 1)
        self.register_buffer("h_w", _contiguous_cl(h_w.to(dtype)))
        self.register_buffer("h_b", mod.h.bias.detach().clone() if mod.h.bias is not None else torch.zeros(C, dtype=dtype))
        self.mod_norm = isinstance(mod.norm, LayerNorm2d)
        self.mod_norm_eps = mod.norm.eps if self.mod_norm else 1e-5
        if self.mod_norm:
            self.register_buffer("mod_norm_w", mod.norm.weight.detach().clone())
            self.register_buffer("mod_norm_b", mod.norm.bias.detach().clone())
        self.register_buffer("proj_w", _contiguous_cl(proj_w.to(dtype)))
        self.register_buffer("proj_b", proj_b.to(dtype))
        self.register_buffer("fc1_w", _contiguous_cl(fc1_w))
        self.register_buffer("fc1_b", fc1_b.detach().clone())
        self.register_buffer("fc2_w", _contiguous_cl(fc2_w.to(dtype)))
        self.register_buffer("fc2_b", fc2_b.to(dtype))
        if self.post_norm:
            self.register_buffer("n1_w", n1_w.to(dtype))
            self.register_buffer("n1_b", n1_b.to(dtype))
            self.register_buffer("n2_w", n2_w.to(dtype))
            self.register_buffer("n2_b", n2_b.to(dtype))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, focal_level={self.focal_level}, kernel_sizes={self.kernel_sizes}, post_norm={self.post_norm}"

    def focal_weights(self) -> list[torch.Tensor]:
        return [getattr(self, f"focal_w{level}") for level in range(self.focal_level)]

    # ------------------------------------------------------------------------------------------------------
    # fast path: oneDNN fused kernels, in place (CPU, float32, no autograd)
    # ------------------------------------------------------------------------------------------------------
    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        conv = torch.ops.mkldnn._convolution_pointwise
        conv_into = torch.ops.mkldnn._convolution_pointwise_.binary  # other += conv(X) + bias
        C, L = self.dim, self.focal_level
        one, zero = [1, 1], [0, 0]

        # focal modulation
        xn = x if self.post_norm else _layer_norm_2d(x, None, None, self.eps1)
        ctx = conv(xn, self.ctx_w, self.ctx_b, zero, one, one, 1, "none", [], "")
        qg = conv(xn, self.qg_w, self.qg_b, zero, one, one, 1, "none", [], "")
        q, gates = qg[:, :C], qg[:, C:]  # (B, C, H, W) and (B, L + 1, H, W) views
        del xn
        # hierarchical contextualization (depthwise conv + GELU in one kernel) and gated aggregation
        agg = None
        for level, (k, w) in enumerate(zip(self.kernel_sizes, self.focal_weights())):
            ctx = conv(ctx, w, None, [k // 2, k // 2], one, one, C, "gelu", [], "none")
            gate = gates[:, level : level + 1]
            agg = ctx * gate if agg is None else agg.addcmul_(ctx, gate)
        ctx_global = F.gelu(ctx.mean((2, 3), keepdim=True))  # (B, C, 1, 1)
        agg.addcmul_(ctx_global, gates[:, L:])
        del ctx
        # modulation: q * h(aggregate)
        m = conv(agg, self.h_w, self.h_b, zero, one, one, 1, "none", [], "")
        del agg
        m.mul_(q)
        del qg, q, gates
        if self.mod_norm:
            m = _layer_norm_2d(m, self.mod_norm_w, self.mod_norm_b, self.mod_norm_eps)
        if self.post_norm:
            y = conv(m, self.proj_w, self.proj_b, zero, one, one, 1, "none", [], "")
            x.add_(_layer_norm_2d(y, self.n1_w, self.n1_b, self.eps1))
        else:
            conv_into(x, m, self.proj_w, self.proj_b, zero, one, one, 1, "add", None, None, [], None)
        del m

        # MLP
        xn = x if self.post_norm else _layer_norm_2d(x, None, None, self.eps2)
        hidden = conv(xn, self.fc1_w, self.fc1_b, zero, one, one, 1, "gelu", [], "none")
        del xn
        if self.post_norm:
            y = conv(hidden, self.fc2_w, self.fc2_b, zero, one, one, 1, "none", [], "")
            x.add_(_layer_norm_2d(y, self.n2_w, self.n2_b, self.eps2))
        else:
            conv_into(x, hidden, self.fc2_w, self.fc2_b, zero, one, one, 1, "add", None, None, [], None)
        return x

    # ------------------------------------------------------------------------------------------------------
    # plain path: the same folded weights through ordinary, differentiable, traceable ops
    # ------------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C, L = self.dim, self.focal_level
        xn = x if self.post_norm else _layer_norm_2d(x, None, None, self.eps1)
        ctx = F.conv2d(xn, self.ctx_w, self.ctx_b)
        qg = F.conv2d(xn, self.qg_w, self.qg_b)
        q, gates = qg[:, :C], qg[:, C:]
        agg = None
        for level, (k, w) in enumerate(zip(self.kernel_sizes, self.focal_weights())):
            ctx = F.gelu(F.conv2d(ctx, w, padding=k // 2, groups=C))
            gated = ctx * gates[:, level : level + 1]
            agg = gated if agg is None else agg + gated
        agg = agg + F.gelu(ctx.mean((2, 3), keepdim=True)) * gates[:, L:]
        m = q * F.conv2d(agg, self.h_w, self.h_b)
        if self.mod_norm:
            m = _layer_norm_2d(m, self.mod_norm_w, self.mod_norm_b, self.mod_norm_eps)
        y = F.conv2d(m, self.proj_w, self.proj_b)
        x = x + (_layer_norm_2d(y, self.n1_w, self.n1_b, self.eps1) if self.post_norm else y)

        xn = x if self.post_norm else _layer_norm_2d(x, None, None, self.eps2)
        y = F.conv2d(F.gelu(F.conv2d(xn, self.fc1_w, self.fc1_b)), self.fc2_w, self.fc2_b)
        return x + (_layer_norm_2d(y, self.n2_w, self.n2_b, self.eps2) if self.post_norm else y)


class FusedFocalNet(nn.Module):
    """An inference-only FocalNet made by `fuse_for_inference` (see the module docstring).

    Same forward API as the model it came from for inference: `forward`, `forward_features`,
    `forward_head(x, pre_logits=False)`; no training switches, no intermediates, no hook points.
    """

    def __init__(self, model: _FocalNetBase, tile_rows: Optional[int] = DEFAULT_TILE_ROWS) -> None:
        super().__init__()
        if not isinstance(model, (FocalNet, FocalNetIsotropic)):
            raise TypeError(f"fuse_for_inference expects a FocalNet or FocalNetIsotropic, got {type(model).__name__}")
        if tile_rows is not None and tile_rows < 1:
            raise ValueError(f"tile_rows must be a positive number of pixels (or None for no tiling), got {tile_rows}")
        self.tile_rows = tile_rows
        self.in_chans = model.in_chans
        self.num_classes = model.num_classes
        self.num_features = model.num_features
        self.variant = model.variant
        self.arch = dict(model.arch)
        self.hierarchical = isinstance(model, FocalNet)
        self.stem = copy.deepcopy(model.stem)
        if self.hierarchical:
            self.downsample = nn.ModuleList(copy.deepcopy(stage.downsample) for stage in model.stages)
            self.stages = nn.ModuleList(nn.ModuleList(FusedBlock(b) for b in stage.blocks) for stage in model.stages)
        else:
            self.downsample = nn.ModuleList([nn.Identity()])
            self.stages = nn.ModuleList([nn.ModuleList(FusedBlock(b) for b in model.blocks)])
        self.norm = copy.deepcopy(model.norm)
        self.head = copy.deepcopy(model.head)
        self.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> "FusedFocalNet":
        if mode:
            raise RuntimeError(
                "a fused FocalNet is for inference only (dropout and stochastic depth are folded away); "
                "train the original model and call fuse_for_inference() again"
            )
        return super().train(False)

    def _run_stage(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        if _plain_ops_only(x):
            for block in blocks:
                x = block(x)
            return x
        # tiles of whole images: each block updates its tile in place, so `x` holds the stage's output
        B, _, H, W = x.shape
        per_tile = B if self.tile_rows is None else max(1, self.tile_rows // max(1, H * W))
        for start in range(0, B, per_tile):
            tile = x[start : start + per_tile]
            for block in blocks:
                tile = block.forward_fast(tile)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        _FocalNetBase._check_input(self, x)  # the same clear errors for bad input
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        for downsample, blocks in zip(self.downsample, self.stages):
            x = downsample(x)
            if not _plain_ops_only(x) and not x.is_contiguous(memory_format=torch.channels_last):
                x = x.contiguous(memory_format=torch.channels_last)
            x = self._run_stage(blocks, x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def fuse_for_inference(model: _FocalNetBase, tile_rows: Optional[int] = DEFAULT_TILE_ROWS) -> FusedFocalNet:
    """A fused, inference-only copy of `model` (a FocalNet or FocalNetIsotropic); `model` is not changed.

    tile_rows: pixels per batch tile of a stage on the CPU fast path (None: the whole batch at once).
    """
    with torch.no_grad():
        return FusedFocalNet(model, tile_rows=tile_rows)
