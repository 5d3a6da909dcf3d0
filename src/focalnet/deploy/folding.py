"""Folding: a FocalNet block's inference constants moved into its weights (data, not code), exact algebra in
float64, rounded once to the fused model's dtype (see `focalnet.deploy.fused`'s docstring for each rule)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from ..layers import LayerNorm2d, LayerScale2d
from ..models import FocalNetBlock

__all__ = ["fold_block"]

Affine = tuple[Tensor, Tensor]  # (weight, bias) in float64: of a conv, or of a LayerNorm


def _affine(module: nn.Module) -> Affine:
    """(weight, bias) of a conv or LayerNorm in float64; a missing bias is zeros."""
    w = module.weight.detach().double()
    b = module.bias.detach().double() if module.bias is not None else w.new_zeros(w.shape[0])
    return w, b


def _scaled(wb: Affine, gamma: Optional[Tensor]) -> Affine:
    """gamma * f(x) for f = (w, b), per output channel: the rows of a conv, the entries of a LayerNorm."""
    if gamma is None:
        return wb
    w, b = wb
    return w * gamma.view(-1, *[1] * (w.ndim - 1)), b * gamma


def _after_norm_affine(conv: Affine, norm: Affine) -> Affine:
    """conv1x1(norm_w * x + norm_b) as one conv on x: (W diag norm_w) x + (W norm_b + b)."""
    (w, b), (nw, nb) = conv, norm
    return w * nw.view(1, -1, 1, 1), b + w[:, :, 0, 0] @ nb


def _gamma(ls: nn.Module) -> Optional[Tensor]:
    return ls.gamma.detach().double() if isinstance(ls, LayerScale2d) else None


def fold_block(block: FocalNetBlock, dtype: Optional[torch.dtype] = None) -> dict[str, Optional[Tensor]]:
    """The weights `FusedBlock` runs, with `block`'s inference constants folded in (module docstring), in
    `dtype` (default: the block's; folded in float64 either way, so rounded once): ctx_w/_b and qg_w/_b (f split
    into context and query + gates), focal_w0.., h_w/_b, proj_w/_b, fc1_w/_b, fc2_w/_b, and norm1_w/_b,
    norm2_w/_b: the post-norm LayerNorms' affine (None for pre-norm, whose LayerNorms keep no affine)."""
    mod = block.modulation
    C, L = mod.dim, mod.focal_level
    f, h, proj = _affine(mod.f), _affine(mod.h), _affine(mod.proj)
    fc1, fc2 = _affine(block.mlp.fc1), _affine(block.mlp.fc2)
    g1, g2 = _gamma(block.ls1), _gamma(block.ls2)
    if block.use_post_norm:
        # x + gamma * LN(branch(x)): gamma scales the LayerNorm's affine
        norm1, norm2 = _scaled(_affine(block.norm1), g1), _scaled(_affine(block.norm2), g2)
    else:
        # x + gamma * branch(LN(x)): the LayerNorm's affine moves into the conv after it, gamma into the last one
        f, fc1 = _after_norm_affine(f, _affine(block.norm1)), _after_norm_affine(fc1, _affine(block.norm2))
        proj, fc2 = _scaled(proj, g1), _scaled(fc2, g2)
        norm1 = norm2 = (None, None)
    if mod.normalize_modulator:  # h(agg / (L + 1)): the weight takes the division, the bias does not
        h = (h[0] / (L + 1), h[1])
    weights = dict(
        ctx_w=f[0][C : 2 * C], ctx_b=f[1][C : 2 * C],
        qg_w=torch.cat([f[0][:C], f[0][2 * C :]]), qg_b=torch.cat([f[1][:C], f[1][2 * C :]]),
        h_w=h[0], h_b=h[1], proj_w=proj[0], proj_b=proj[1], fc1_w=fc1[0], fc1_b=fc1[1], fc2_w=fc2[0], fc2_b=fc2[1],
        norm1_w=norm1[0], norm1_b=norm1[1], norm2_w=norm2[0], norm2_b=norm2[1],
    )
    weights.update({f"focal_w{level}": layer[0].weight.detach() for level, layer in enumerate(mod.focal_layers)})
    dtype = dtype or mod.proj.weight.dtype
    return {k: None if t is None else _own_copy(t, dtype) for k, t in weights.items()}


def _own_copy(t: Tensor, dtype: torch.dtype) -> Tensor:
    """A new tensor (never the model's storage) in `dtype`; 4-D weights in the channels-last layout of the maps."""
    layout = torch.channels_last if t.ndim == 4 else torch.contiguous_format
    return t.to(dtype=dtype, memory_format=layout, copy=True)


def _layer_norm(dim: int, eps: float, weight: Optional[Tensor], bias: Optional[Tensor]) -> LayerNorm2d:
    """A LayerNorm2d holding the given affine, or none (a pre-norm LayerNorm whose affine was folded away)."""
    if weight is None:
        return LayerNorm2d(dim, eps=eps, elementwise_affine=False)
    norm = LayerNorm2d(dim, eps=eps, device=weight.device, dtype=weight.dtype)
    norm.weight, norm.bias = nn.Parameter(weight, requires_grad=False), nn.Parameter(bias, requires_grad=False)
    return norm
