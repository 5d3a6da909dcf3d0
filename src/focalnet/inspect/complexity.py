"""Complexity of a FocalNet, measured rather than hand-counted, and checked against the paper's formula.

MACs come from PyTorch's FlopCounterMode (which counts 2 FLOPs per multiply-add of every convolution and
matrix product) divided by 2: multiply-adds are what the paper calls FLOPs. Norms, activations and the
gated sum are not counted (neither by fvcore, which the paper used, except for norms: about 0.5% more).
Models on the meta device are counted without allocating any memory.

Beside the measurement, `formula_macs` evaluates the paper's per-block cost

    focal modulation: HW (3C^2 + C(2L + 3) + C sum_l k_l^2)

(q, z^0 and h are the 3C^2; the gate projection, the gated sum and q * M are the C(2L + 3); the depthwise
kernels the last term), adds what the paper's term leaves out of a block (the output projection, C^2, and
the MLP, 2 r C^2) and the stem, the downsampling layers and the classifier. The formula and the counter then
differ by exactly the element-wise terms C(L + 2) per pixel and block, which no FLOP counter sees;
`tests/test_profile.py` checks that identity at sizes that need padding.

Activation memory (and the guard predict and pictures call before a forward) is `inspect.memory`; the
scaling sweep against Swin and ViT is `inspect.sweep`; the one FLOP counter is `focalnet.flops`.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..flops import Size, count_macs, count_params, image_hw, run_counted
from ..layers import focal_kernel_sizes
# activation memory and the sweep were in this module: their names still import from here
from .memory import (
    ActivationMemory,
    InputTooLargeError,
    activation_memory,
    available_memory,
    check_memory,
    meta_copy,
    meta_from_arch,
)
from .sweep import DEFAULT_SWEEP_MODELS, SweepModel, scaling_sweep, sweep_model, write_sweep

__all__ = [
    "count_params",
    "count_macs",
    "measured_macs_by_module",
    "formula_macs",
    "FormulaCost",
    "StageCost",
    "receptive_fields",
    "profile_model",
    "published_table",
    "published_figures",
    "profile_lines",
    "published_lines",
    # from .memory and .sweep
    "ActivationMemory",
    "InputTooLargeError",
    "activation_memory",
    "available_memory",
    "check_memory",
    "meta_copy",
    "meta_from_arch",
    "DEFAULT_SWEEP_MODELS",
    "SweepModel",
    "scaling_sweep",
    "sweep_model",
    "write_sweep",
]


# ----------------------------------------------------------------------------------------------------------
# Measured: multiply-adds per module (the totals: focalnet.flops)
# ----------------------------------------------------------------------------------------------------------


def measured_macs_by_module(model: nn.Module, img_size: Size = 224, depth: int = 2) -> dict[str, int]:
    """Multiply-adds per submodule (names as in `model.named_modules()`, up to `depth` dots), batch 1."""
    counter = run_counted(model, img_size, 1)
    out = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = key.split(".", 1)[1] if "." in key else ""
        if name.count(".") < depth:
            out[name] = sum(ops.values()) // 2
    return out



# ----------------------------------------------------------------------------------------------------------
# The paper's formula
# ----------------------------------------------------------------------------------------------------------


def _stages_of(arch: dict) -> list[dict]:
    """One dict per stage: dim, depth, focal level, focal window, stride of the stage's maps and the kernel
    of the layer that produces them (stem or downsampling)."""
    factor = int(arch.get("focal_factor", 2))
    patch = int(arch["patch_size"])
    if arch["family"] == "isotropic":
        return [dict(
            dim=arch["embed_dim"], depth=arch["depth"], level=arch["focal_level"], window=arch["focal_window"],
            factor=factor, stride=patch, reduce=patch, kernel=patch, in_dim=arch.get("in_chans", 3),
        )]
    conv_embed = bool(arch.get("use_conv_embed", False))
    stages = []
    for i, depth in enumerate(arch["depths"]):
        dim = arch["embed_dim"] * 2**i
        stages.append(dict(
            dim=dim, depth=depth, level=arch["focal_levels"][i], window=arch["focal_windows"][i], factor=factor,
            stride=patch * 2**i, reduce=patch if i == 0 else 2,
            kernel=(7 if conv_embed else patch) if i == 0 else (3 if conv_embed else 2),
            in_dim=arch.get("in_chans", 3) if i == 0 else dim // 2,
        ))
    return stages


@dataclass
class StageCost:
    """The paper's formula for one stage at one input size (multiply-adds, batch 1)."""

    stage: int
    height: int  # feature map, after padding to the stride
    width: int
    dim: int
    focal_level: int
    kernel_sizes: list[int]
    depth: int
    embed: int  # the stem (stage 0) or the downsampling conv that starts the stage
    modulation: int  # per block: HW (3C^2 + C(2L+3) + C sum k^2), the paper's term
    proj: int  # per block: HW C^2, the modulation's output projection (not in the paper's term)
    mlp: int  # per block: 2 HW r C^2
    elementwise: int  # per block: HW C (L+2), the part of the paper's term no FLOP counter sees

    @property
    def per_block(self) -> int:
        return self.modulation + self.proj + self.mlp

    @property
    def total(self) -> int:
        return self.embed + self.depth * self.per_block


@dataclass
class FormulaCost:
    img_size: tuple[int, int]
    stages: list[StageCost]
    head: int

    @property
    def total(self) -> int:
        return sum(s.total for s in self.stages) + self.head

    @property
    def elementwise(self) -> int:
        """Multiply-adds of the gated sum and q * M, which FlopCounterMode (and fvcore) do not count."""
        return sum(s.depth * s.elementwise for s in self.stages)

    @property
    def countable(self) -> int:
        """What a FLOP counter of convolutions and matrix products should report: total - elementwise."""
        return self.total - self.elementwise


def formula_macs(arch: dict, img_size: Size = 224) -> FormulaCost:
    """The paper's per-block cost, evaluated stage by stage for `arch` (a model's `.arch`) at `img_size`.

    Maps are padded to the stride as the model does (ceil at every stride), so the spatial sizes are those
    the model really computes on."""
    h, w = image_hw(img_size)
    in_chans = int(arch.get("in_chans", 3))
    mlp_ratio = float(arch.get("mlp_ratio", 4.0))
    stages = []
    for i, s in enumerate(_stages_of(arch)):
        h, w = math.ceil(h / s["reduce"]), math.ceil(w / s["reduce"])
        C, L = s["dim"], s["level"]
        ks = focal_kernel_sizes(L, s["window"], s["factor"])
        hw = h * w
        cin = in_chans if i == 0 else s["in_dim"]
        stages.append(StageCost(
            stage=i, height=h, width=w, dim=C, focal_level=L, kernel_sizes=ks, depth=s["depth"],
            embed=hw * C * cin * s["kernel"] ** 2,
            modulation=hw * (3 * C * C + C * (2 * L + 3) + C * sum(k * k for k in ks)),
            proj=hw * C * C,
            mlp=2 * hw * int(C * mlp_ratio) * C,
            elementwise=hw * C * (L + 2),
        ))
    num_classes = int(arch.get("num_classes", 0))
    return FormulaCost(img_size=image_hw(img_size), stages=stages, head=stages[-1].dim * num_classes)


def receptive_fields(arch: dict) -> list[dict]:
    """Receptive field of every focal level of every stage.

    r_l = 1 + sum_{i<=l} (k_i - 1) feature-map pixels (3, 7, 13 for kernels 3, 5, 7). In input pixels:
    `span_px` = r_l * stride is the input area those r_l x r_l map pixels cover; `theoretical_px` adds what
    the stem, the earlier blocks and the downsampling layers already see (the classic receptive field of
    level l in the stage's last block, without the global context, which sees the whole image)."""
    rows = []
    rf, jump = 0, 1
    for i, s in enumerate(_stages_of(arch)):
        rf = s["kernel"] if i == 0 else rf + (s["kernel"] - 1) * jump
        jump = s["stride"]
        ks = focal_kernel_sizes(s["level"], s["window"], s["factor"])
        r = [1 + sum(k - 1 for k in ks[: l + 1]) for l in range(len(ks))]
        before_last = rf + (s["depth"] - 1) * (r[-1] - 1) * jump  # the stage's earlier blocks
        for l, (k, rl) in enumerate(zip(ks, r), start=1):
            rows.append(dict(
                stage=i, level=l, kernel=k, stride=jump, rf_map_px=rl, span_px=rl * jump,
                theoretical_px=before_last + (rl - 1) * jump,
            ))
        rows.append(dict(
            stage=i, level=len(ks) + 1, kernel=None, stride=jump, rf_map_px="global", span_px="global",
            theoretical_px="global",
        ))
        rf += s["depth"] * (r[-1] - 1) * jump
    return rows


# ----------------------------------------------------------------------------------------------------------
# Profile of one model, and of every variant
# ----------------------------------------------------------------------------------------------------------


def profile_model(model: nn.Module, img_size: Size = 224, batch_size: int = 1, memory: bool = True) -> dict:
    """Everything `focalnet profile` prints, as plain Python values (JSON-ready)."""
    arch = model.arch
    h, w = image_hw(img_size)
    m = model if next(model.parameters()).device.type == "meta" else meta_copy(model)
    measured = count_macs(m, (h, w))
    by_module = measured_macs_by_module(m, (h, w), depth=3)
    formula = formula_macs(arch, (h, w))
    stage_key = "blocks" if arch["family"] == "isotropic" else "stages.{}"
    stages = []
    for s in formula.stages:
        if arch["family"] == "isotropic":  # a ModuleList is never called: sum its blocks
            meas = by_module.get("stem", 0) + sum(v for k, v in by_module.items() if re.fullmatch(r"blocks\.\d+", k))
        else:
            meas = by_module.get(stage_key.format(s.stage), 0) + (by_module.get("stem", 0) if s.stage == 0 else 0)
        row = asdict(s)
        row.update(per_block=s.per_block, total=s.total, measured=meas, countable=s.total - s.depth * s.elementwise)
        stages.append(row)
    out = dict(
        variant=getattr(model, "variant", None), family=arch["family"], img_size=[h, w], batch_size=batch_size,
        params=count_params(model), macs_measured=measured, macs_formula=formula.total,
        macs_formula_countable=formula.countable, macs_elementwise=formula.elementwise, head_macs=formula.head,
        stages=stages, receptive_fields=receptive_fields(arch),
    )
    if memory:
        mem = activation_memory(m, (h, w), batch_size, device=None)
        out.update(saved_bytes=mem.saved_bytes, peak_live_bytes=mem.peak_live_bytes)
    return out


def published_figures(variant: Optional[str]) -> Optional[dict]:
    """The paper's parameters, MACs, top-1 and image size of a registered variant (None for any other name)."""
    from ..registry import get_spec, list_models

    if variant not in list_models():
        return None
    pub = get_spec(variant).published
    return dict(params_m=pub.params_m, gmacs=pub.gmacs, top1=pub.top1, img_size=pub.img_size)


def published_table(img_size: int = 224, num_classes: int = 1000, pattern: Optional[str] = None) -> list[dict]:
    """Every registered variant (or those matching `pattern`): parameters and MACs measured (meta device)
    beside the paper's numbers.

    Built with a `num_classes` head (the paper counts with the 1000-class head even for ImageNet-22K models)."""
    from ..registry import build_model, get_spec, list_models

    rows = []
    for name in list_models(pattern):
        spec = get_spec(name)
        with torch.device("meta"):
            model = build_model(name, num_classes=num_classes)
        formula = formula_macs(model.arch, img_size)
        rows.append(dict(
            name=name, params_m=count_params(model) / 1e6, params_m_published=spec.published.params_m,
            gmacs=count_macs(model, img_size) / 1e9, gmacs_formula=formula.total / 1e9,
            gmacs_published=spec.published.gmacs, top1_published=spec.published.top1,
            img_size=img_size, weights_img_size=spec.published.img_size,
        ))
    return rows




# ----------------------------------------------------------------------------------------------------------
# The tables `focalnet profile` prints
# ----------------------------------------------------------------------------------------------------------


def _g(n: float) -> str:
    return f"{n / 1e9:.3f} G"


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _num(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:g}"


def _stage_lines(prof: dict) -> list[str]:
    lines = [f"  {'stage':<6}{'map':>9}{'C':>6}{'L':>3}  {'kernels':<10}{'blocks':>6}{'mod/blk':>11}{'proj/blk':>11}"
             f"{'MLP/blk':>11}{'stage total':>13}{'measured':>12}"]
    for s in prof["stages"]:
        lines.append(f"  {s['stage']:<6}{s['height']:>4}x{s['width']:<4}{s['dim']:>6}{s['focal_level']:>3}  "
                     f"{','.join(map(str, s['kernel_sizes'])):<10}{s['depth']:>6}{_g(s['modulation']):>11}"
                     f"{_g(s['proj']):>11}{_g(s['mlp']):>11}{_g(s['total']):>13}{_g(s['measured']):>12}")
    lines += [
        f"  {'head':<6}{'':>9}{'':>6}{'':>3}  {'':<10}{'':>6}{'':>11}{'':>11}{'':>11}{_g(prof['head_macs']):>13}",
        "  (mod/blk: HW(3C^2 + C(2L+3) + C sum k^2); stage total includes the stem or downsampling conv;",
        "   measured = FlopCounterMode, which does not see the element-wise HW C(L+2) per block)",
    ]
    return lines


def _receptive_field_lines(prof: dict) -> list[str]:
    lines = ["  receptive field of each focal level",
             f"  {'stage':<6}{'level':>6}{'kernel':>8}{'map px':>8}{'input px':>10}{'theoretical px':>16}"]
    for r in prof["receptive_fields"]:
        k = "-" if r["kernel"] is None else r["kernel"]
        lines.append(f"  {r['stage']:<6}{r['level']:>6}{k:>8}{r['rf_map_px']:>8}{r['span_px']:>10}"
                     f"{r['theoretical_px']:>16}")
    lines += ["  (map px: r_l = 1 + sum (k_i - 1); input px: r_l x stride; theoretical: through the stem, earlier",
              "   blocks and downsampling, in the stage's last block; the last level is the global context)"]
    return lines


def profile_lines(prof: dict, *, num_classes: Optional[int] = None) -> list[str]:
    """`profile_model`'s result as the text `focalnet profile` prints: totals (beside the paper's, when
    prof['published'] holds them), the formula stage by stage, and the receptive fields."""
    h, w = prof["img_size"]
    pub = prof.get("published") or {}
    pub_p = f"   (published {pub['params_m']:g} M)" if pub.get("params_m") else ""
    pub_g = f"   (published {pub['gmacs']:g} G at 224 px)" if pub.get("gmacs") else ""
    lines = [
        f"{prof['variant']} at {h}x{w} px, batch {prof['batch_size']}, {num_classes}-class head",
        f"  parameters       {prof['params']:,} ({prof['params'] / 1e6:.2f} M){pub_p}",
        f"  MACs measured    {_g(prof['macs_measured'])}  FlopCounterMode: convolutions and matmuls{pub_g}",
        f"  MACs by formula  {_g(prof['macs_formula'])}  paper's block term + proj + MLP + stem/downsampling/head"
        f" = measured + {_g(prof['macs_elementwise'])} element-wise (gated sum, q*M)",
    ]
    if "saved_bytes" in prof:
        lines.append(f"  activations      {_mib(prof['saved_bytes'])} saved for backward (training-mode forward), "
                     f"{_mib(prof['peak_live_bytes'])} peak live (inference forward); ATen-level tensors, parameters "
                     "excluded")
    return lines + [""] + _stage_lines(prof) + [""] + _receptive_field_lines(prof)


def published_lines(rows: Sequence[dict], img_size: int) -> list[str]:
    """`published_table`'s rows as the text `focalnet profile --all` prints."""
    lines = [f"every variant at {img_size} px with a 1000-class head (as the paper counts); measured on the meta device",
             f"{'model':<22}{'params M':>10}{'published':>11}{'GMACs':>9}{'formula':>9}{'published':>11}{'top-1':>7}"
             f"{'weights px':>12}"]
    for r in rows:
        lines.append(f"{r['name']:<22}{r['params_m']:>10.2f}{_num(r['params_m_published']):>11}{r['gmacs']:>9.2f}"
                     f"{r['gmacs_formula']:>9.2f}{_num(r['gmacs_published']):>11}{_num(r['top1_published']):>7}"
                     f"{r['weights_img_size']:>12}")
    lines += ["(GMACs: FlopCounterMode; formula: the paper's per-block term + proj + MLP + stem/downsampling/head,",
              " which also counts the element-wise gated sum; published: the paper's table, multiply-adds)"]
    return lines

