"""The measurements behind docs/claims.md: the paper's claims, each reduced to a number a test can check.

`benchmarks/claims.py` trains the models and runs these; every function here is small, takes tensors or a
model, and holds no training loop, so that tests can run each on a tiny model.

- The verdict rule, implemented once (`welch_verdict`): Welch's two-sided t-test on the per-seed values of
  two arms at p < 0.05; a significant difference in the claimed direction is "holds", in the other direction
  "does not hold", anything else "inconclusive".
- Where the modulator looks (`object_focus`): the share of a map's mass inside the objects' masks against the
  share of the area they cover, and a pointing game (is the map's maximum inside an object). The modulator map
  is mean |h(.)| over channels (`modulator_map`); a baseline made from image intensity alone
  (`intensity_saliency`) is pooled to the same map size, so both are compared at one resolution.
- Whether the focal levels' gates look at different places (`gate_correlation`): Pearson correlation over the
  map's positions between the gate maps of every pair of levels, and between each level and the global gate.
- The receptive field of each focal level (`level_support`): the exact support of the gradient of z^l at one
  position with respect to the modulation's input, against r_l = 1 + sum_{i<=l} (k_i - 1).
- The cost formula (`formula_check`): FlopCounterMode's multiply-adds against the paper's per-block formula.
- Equal-size pairing (`size_pairing`): parameters and multiply-adds of peers against a reference, within a
  tolerance.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import FocalModulation, focal_kernel_sizes
from .complexity import count_macs, count_params, formula_macs
from .recorder import ModulationRecord, ModulationRecorder

__all__ = [
    "HOLDS",
    "DOES_NOT_HOLD",
    "INCONCLUSIVE",
    "Summary",
    "Verdict",
    "summarize",
    "welch_verdict",
    "modulator_map",
    "intensity_saliency",
    "object_focus",
    "record_last_block",
    "gate_correlation",
    "level_support",
    "formula_check",
    "size_pairing",
]

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
ALPHA = 0.05


# ----------------------------------------------------------------------------------------------------------
# The verdict rule
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (n - 1) and count of one arm's per-seed values."""

    mean: float
    sd: float
    n: int

    def text(self, digits: int = 2) -> str:
        sd = f" ± {self.sd:.{digits}f}" if self.n > 1 else ""
        return f"{self.mean:.{digits}f}{sd} (n={self.n})"


def summarize(values: Sequence[float]) -> Summary:
    x = [float(v) for v in values]
    if not x:
        return Summary(math.nan, math.nan, 0)
    mean = sum(x) / len(x)
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (len(x) - 1)) if len(x) > 1 else math.nan
    return Summary(mean, sd, len(x))


@dataclass(frozen=True)
class Verdict:
    """The outcome of comparing arm `a` (the paper's side) with arm `b` on per-seed values."""

    verdict: str  # HOLDS, DOES_NOT_HOLD or INCONCLUSIVE
    a: Summary
    b: Summary
    t: float
    df: float
    p: float
    higher_is_better: bool
    reason: str  # one line saying why, for the table

    def as_dict(self) -> dict:
        return asdict(self)


def welch_verdict(
    a: Sequence[float], b: Sequence[float], *, higher_is_better: bool = True, alpha: float = ALPHA
) -> Verdict:
    """Welch's two-sided t-test of mean(a) against mean(b), with the claim's direction.

    The claim is "a > b" (`higher_is_better`) or "a < b". p < alpha with the difference in the claimed direction:
    HOLDS; p < alpha the other way: DOES_NOT_HOLD; otherwise (or with fewer than 2 values in an arm, or no
    variance in either arm, where the test is undefined) INCONCLUSIVE."""
    from scipy.stats import t as student_t

    sa, sb = summarize(a), summarize(b)
    if sa.n < 2 or sb.n < 2:
        return Verdict(INCONCLUSIVE, sa, sb, math.nan, math.nan, math.nan, higher_is_better,
                       "fewer than 2 seeds in an arm: no test")
    va, vb = sa.sd**2 / sa.n, sb.sd**2 / sb.n  # squared standard errors
    if va + vb == 0:
        return Verdict(INCONCLUSIVE, sa, sb, math.nan, math.nan, math.nan, higher_is_better,
                       "no variance in either arm: the t-test is undefined")
    t = (sa.mean - sb.mean) / math.sqrt(va + vb)
    # Welch-Satterthwaite degrees of freedom; an arm without variance contributes no term
    df = (va + vb) ** 2 / sum(v**2 / (n - 1) for v, n in ((va, sa.n), (vb, sb.n)) if v > 0)
    p = float(2 * student_t.sf(abs(t), df))
    better = t > 0 if higher_is_better else t < 0
    side = "higher" if higher_is_better else "lower"
    if p >= alpha:
        return Verdict(INCONCLUSIVE, sa, sb, t, df, p, higher_is_better,
                       f"Welch p = {p:.3g} >= {alpha}: no significant difference")
    verdict = HOLDS if better else DOES_NOT_HOLD
    return Verdict(verdict, sa, sb, t, df, p, higher_is_better,
                   f"Welch p = {p:.3g} < {alpha}; the paper's side is {'' if better else 'not '}{side}")


# ----------------------------------------------------------------------------------------------------------
# Where the modulator looks
# ----------------------------------------------------------------------------------------------------------


def record_last_block(model: nn.Module, images: torch.Tensor, blocks: str = "-1.-1") -> ModulationRecord:
    """The focal modulation of one block (default: the last block of the last stage) on `images`, eval mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), ModulationRecorder(model, blocks=blocks) as rec:
            model(images)
            return rec.records[0]
    finally:
        model.train(was_training)


def modulator_map(record: ModulationRecord) -> torch.Tensor:
    """Mean |h(z_out)| over channels: (B, C, h, w) -> (B, h, w), the map the paper's figures draw."""
    return record.modulator.abs().mean(dim=1)


def intensity_saliency(images: torch.Tensor, stride: int) -> torch.Tensor:
    """Image intensity alone, pooled to the modulator's grid: (B, 3, H, W) -> (B, ceil(H/s), ceil(W/s)).

    The baseline that any map of "where the bright things are" reaches: items are drawn brighter than the
    canvases' backgrounds, so a modulator that only followed intensity would score this."""
    gray = images.float().mean(dim=1, keepdim=True)  # (B, 1, H, W)
    return F.avg_pool2d(gray, kernel_size=stride, stride=stride, ceil_mode=True)[:, 0]


def object_focus(maps: torch.Tensor, masks: torch.Tensor, stride: int) -> dict[str, torch.Tensor]:
    """Per image: the share of a non-negative map's mass inside the objects, the share of the area they cover,
    and the pointing game (1 if the map's maximum falls inside an object).

    maps: (B, h, w) on the grid of stride `stride`; masks: (B, H, W) bool, the union of the objects. The map is
    upsampled bilinearly to h * stride x w * stride (each cell's value at its centre, as the pictures draw it)
    and cropped to H x W, the padding the model added at the bottom/right. Images without objects are left
    out (their shares are undefined)."""
    B, h, w = maps.shape
    H, W = masks.shape[-2:]
    up = F.interpolate(maps[:, None].float(), size=(h * stride, w * stride), mode="bilinear", align_corners=False)
    up = up[:, 0, :H, :W].clamp_min(0)  # (B, H, W)
    inside = masks.bool()
    keep = inside.flatten(1).any(dim=1) & (up.flatten(1).sum(dim=1) > 0)
    up, inside = up[keep], inside[keep]
    mass = (up * inside).flatten(1).sum(dim=1) / up.flatten(1).sum(dim=1)
    area = inside.flatten(1).float().mean(dim=1)
    peak = up.flatten(1).argmax(dim=1)
    hit = inside.flatten(1).gather(1, peak[:, None])[:, 0].float()
    return dict(mass_share=mass, area_share=area, pointing=hit)


# ----------------------------------------------------------------------------------------------------------
# Whether the focal levels look at different places
# ----------------------------------------------------------------------------------------------------------


def _pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correlation over the last dimension; NaN where either side is constant."""
    x = x - x.mean(dim=-1, keepdim=True)
    y = y - y.mean(dim=-1, keepdim=True)
    den = x.norm(dim=-1) * y.norm(dim=-1)
    return torch.where(den > 0, (x * y).sum(dim=-1) / den.clamp_min(1e-30), torch.full_like(den, math.nan))


def gate_correlation(gates: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean pairwise Pearson correlation of the gate maps, per image.

    gates: (B, L + 1, h, w), the last channel the global gate. 'levels': mean over the pairs of focal levels
    1..L (NaN for L = 1: no pair); 'global': mean over the pairs (level l, global gate); 'matrix': the
    (B, L + 1, L + 1) correlations. Constant maps (a 1x1 grid) have no correlation: NaN."""
    B, n = gates.shape[:2]
    flat = gates.flatten(2).double()  # (B, L + 1, h * w)
    matrix = _pearson(flat[:, :, None, :], flat[:, None, :, :]).float()  # (B, L + 1, L + 1)
    L = n - 1
    local = [(i, j) for i in range(L) for j in range(i + 1, L)]
    nan = torch.full((B,), math.nan)
    levels = torch.stack([matrix[:, i, j] for i, j in local], dim=1).mean(dim=1) if local else nan
    with_global = torch.stack([matrix[:, i, L] for i in range(L)], dim=1).mean(dim=1)
    return {"levels": levels, "global": with_global, "matrix": matrix}


# ----------------------------------------------------------------------------------------------------------
# Receptive field and cost
# ----------------------------------------------------------------------------------------------------------


def level_support(
    focal_level: int, focal_window: int, *, focal_factor: int = 2, dim: int = 4, seed: int = 0
) -> dict:
    """The exact receptive field of each focal level, measured by autograd.

    A FocalModulation (random weights, float64) runs on an image larger than its deepest field; for each level
    l, the gradient of z^l at the centre pixel (summed over channels) with respect to the layer's input is
    non-zero exactly on a square: its side is `measured[l]`, and `square[l]` says the non-zero set is the full
    square (not a cross or a ring). Expected: r_l = 1 + sum_{i<=l} (k_i - 1). The layer's output itself
    depends on every pixel through the global context (`output_support` = the whole image)."""
    kernels = focal_kernel_sizes(focal_level, focal_window, focal_factor)
    expected = [1 + sum(k - 1 for k in kernels[: l + 1]) for l in range(focal_level)]
    side = expected[-1] + 8 + (expected[-1] + 1) % 2  # odd, with a margin of zeros around the deepest field
    torch.manual_seed(seed)
    layer = FocalModulation(dim, focal_level, focal_window, focal_factor).double().eval()
    contexts: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _a, out: contexts.append(out)) for m in layer.focal_layers]
    x = torch.randn(1, dim, side, side, dtype=torch.float64, requires_grad=True)
    try:
        out = layer(x)
    finally:
        for handle in handles:
            handle.remove()
    c = side // 2
    measured, square = [], []
    for z in contexts:  # z^l, (1, C, side, side)
        (grad,) = torch.autograd.grad(z[0, :, c, c].sum(), x, retain_graph=True)
        nonzero = grad[0].ne(0).any(dim=0)  # (side, side)
        rows, cols = nonzero.any(dim=1).nonzero()[:, 0], nonzero.any(dim=0).nonzero()[:, 0]
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        measured.append(h if h == w else -1)
        square.append(bool(h == w and int(nonzero.sum()) == h * w and int(rows[0]) == c - h // 2))
    (grad,) = torch.autograd.grad(out[0, :, c, c].sum(), x)
    output_support = int(grad[0].ne(0).any(dim=0).sum())
    return dict(focal_level=focal_level, focal_window=focal_window, focal_factor=focal_factor, kernels=kernels,
                expected=expected, measured=measured, square=square, image_side=side,
                output_support=output_support, output_is_global=output_support == side * side,
                exact=measured == expected and all(square))


def formula_check(model: nn.Module, sizes: Sequence[int]) -> list[dict]:
    """FlopCounterMode's multiply-adds of `model` (a FocalNet with `.arch`) against the paper's formula.

    The formula's total includes the element-wise terms HW C(L + 2) per block (gated sum, q * M), which no FLOP
    counter of convolutions and matrix products sees; `equal` holds when counted == total - elementwise exactly."""
    arch = dict(model.arch)
    arch.setdefault("num_classes", getattr(model, "num_classes", 0))
    rows = []
    for size in sizes:
        cost = formula_macs(arch, size)
        counted = count_macs(model, size)
        rows.append(dict(img_size=int(size), counted=int(counted), formula=int(cost.total),
                         elementwise=int(cost.elementwise), equal=int(counted) == int(cost.countable)))
    return rows


def size_pairing(
    models: Mapping[str, nn.Module], *, img_size: Union[int, Sequence[int]], in_chans: int,
    reference: Optional[str] = None, tolerance: float = 0.15,
) -> list[dict]:
    """Parameters and multiply-adds of each model, relative to `reference` (default: the first), and whether
    both are within `tolerance` of it."""
    sizes = {name: (count_params(m), count_macs(m, img_size, in_chans=in_chans)) for name, m in models.items()}
    ref = reference or next(iter(sizes))
    p0, m0 = sizes[ref]
    rows = []
    for name, (params, macs) in sizes.items():
        dp, dm = params / p0 - 1, macs / m0 - 1
        rows.append(dict(model=name, params=int(params), macs=int(macs), params_vs_ref=dp, macs_vs_ref=dm,
                         within=abs(dp) <= tolerance and abs(dm) <= tolerance, reference=ref))
    return rows
