"""Pure, table-driven, strict conversion between the FocalNet checkpoint layouts in the wild.

Layouts (see `focalnet` docs / shared FOCALNET.md section 4):
- ``focalnet``: ours. (B, C, H, W) maps, 1x1 convs, downsampling at the start of stage i+1.
- ``official``: the authors' (microsoft/FocalNet). Tokens layout: f, proj and the MLP are nn.Linear (2-D
  weights), downsampling at the END of stage i, `gamma_1`, `modulation.ln`, `head`.
- ``timm``: timm.models.focalnet. 1x1 convs, downsampling at the start of stage i+1, `ls1.gamma`,
  `norm1_post` for post-norm blocks, `head.fc`. timm has no isotropic FocalNet.
- ``hf``: Hugging Face transformers `FocalNetForImageClassification` (`focalnet.` prefix + `classifier`)
  or `FocalNetModel` (no prefix, no classifier).

One table per layout lists each tensor as a pair of name templates, ours and theirs, used in both
directions. `{s}` is a stage index, `{b}` a block index, `{l}` a focal level, `{p}` weight|bias; `{s-1}`
says that their index is one less than ours. A tensor no row matches is an error that names it; every
weight's rank is checked. Functions here take and return plain dicts of tensors and never touch a model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
from ..errors import FocalNetError

__all__ = [
    "FORMATS",
    "ConversionError",
    "to_focalnet",
    "from_focalnet",
    "detect_layout",
    "detect_family",
    "timm_is_post_norm",
    "strip_prefixes",
    "in22k_head_to_in1k",
    "IN1K_MISSING_FROM_IN22K",
    "GRAY_FROM_RGB",
    "gray_stem_as_rgb",
    "rgb_stem_as_gray",
]

FORMATS = ("focalnet", "official", "timm", "hf")
Tensor = torch.Tensor
StateDict = Mapping[str, Tensor]

# The authors reorder their ImageNet-22K head so that logits 0..999 are the ImageNet-1K classes, except
# 1K class 850 ('teddy bear', n04399382), which does not exist in ImageNet-22K: row 850 of the 21842-row
# head was never trained on any image.
IN1K_MISSING_FROM_IN22K = 850


class ConversionError(FocalNetError, ValueError):
    """A state dict that does not fit the layout it is converted from or to."""


# --------------------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------------------

_FIELD = re.compile(r"\{([a-z])([+-]\d+)?\}")


@dataclass(frozen=True)
class _Template:
    text: str
    regex: re.Pattern
    offsets: dict  # field -> offset of this side's number relative to the canonical (ours) number

    @classmethod
    def parse(cls, text: str) -> "_Template":
        parts, offsets, pos = [], {}, 0
        for m in _FIELD.finditer(text):
            parts.append(re.escape(text[pos : m.start()]))
            name, off = m.group(1), int(m.group(2) or 0)
            parts.append(r"(?P<p>weight|bias)" if name == "p" else rf"(?P<{name}>\d+)")
            if name != "p":
                offsets[name] = off
            pos = m.end()
        parts.append(re.escape(text[pos:]))
        return cls(text, re.compile("^" + "".join(parts) + "$"), offsets)

    def match(self, key: str) -> Optional[dict]:
        m = self.regex.match(key)
        if m is None:
            return None
        # canonical numbers: ours = theirs - offset
        return {k: (v if k == "p" else int(v) - self.offsets.get(k, 0)) for k, v in m.groupdict().items()}

    def format(self, fields: dict) -> str:
        def sub(m: re.Match) -> str:
            name = m.group(1)
            return fields[name] if name == "p" else str(fields[name] + int(m.group(2) or 0))

        return _FIELD.sub(sub, self.text)


# a row: (ours, theirs, linear) - `linear` marks a 1x1 conv of ours that is an nn.Linear of theirs
_Row = tuple[_Template, _Template, bool]


def _rows(pairs: list[tuple[str, str, bool]]) -> list[_Row]:
    return [(_Template.parse(a), _Template.parse(b), lin) for a, b, lin in pairs]


def _block_rows(ours: str, theirs: str, names: dict[str, str], linear: set[str]) -> list[tuple[str, str, bool]]:
    return [(ours + a, theirs + names[a], a in linear) for a in names]


_BLOCK_PARTS = [  # our names inside a block
    "norm1.{p}",
    "modulation.f.{p}",
    "modulation.focal_layers.{l}.0.weight",
    "modulation.h.{p}",
    "modulation.norm.{p}",
    "modulation.proj.{p}",
    "ls1.gamma",
    "ls2.gamma",
    "norm2.{p}",
    "mlp.fc1.{p}",
    "mlp.fc2.{p}",
]
_LINEAR_OFFICIAL = {"modulation.f.{p}", "modulation.proj.{p}", "mlp.fc1.{p}", "mlp.fc2.{p}"}

_OFFICIAL_BLOCK = dict(zip(_BLOCK_PARTS, _BLOCK_PARTS)) | {
    "modulation.norm.{p}": "modulation.ln.{p}",
    "ls1.gamma": "gamma_1",
    "ls2.gamma": "gamma_2",
}
_HF_BLOCK = dict(zip(_BLOCK_PARTS, _BLOCK_PARTS)) | {
    "modulation.f.{p}": "modulation.projection_in.{p}",
    "modulation.h.{p}": "modulation.projection_context.{p}",
    "modulation.norm.{p}": "modulation.layernorm.{p}",
    "modulation.proj.{p}": "modulation.projection_out.{p}",
    "ls1.gamma": "gamma_1",
    "ls2.gamma": "gamma_2",
}
_TIMM_BLOCK_PRE = dict(zip(_BLOCK_PARTS, _BLOCK_PARTS))
_TIMM_BLOCK_POST = _TIMM_BLOCK_PRE | {"norm1.{p}": "norm1_post.{p}", "norm2.{p}": "norm2_post.{p}"}


def _table(fmt: str, family: str, use_post_norm: bool = False, hf_prefix: str = "focalnet.") -> list[_Row]:
    """The conversion table of one layout for one model family."""
    hier = family == "hierarchical"
    if family not in ("hierarchical", "isotropic"):
        raise ConversionError(f"unknown model family {family!r}")
    ours_block = "stages.{s}.blocks.{b}." if hier else "blocks.{b}."
    if fmt == "official":
        block = "layers.{s}.blocks.{b}." if hier else "layers.0.blocks.{b}."
        pairs = [
            ("stem.proj.{p}", "patch_embed.proj.{p}", False),
            ("stem.norm.{p}", "patch_embed.norm.{p}", False),
            ("stages.{s}.downsample.proj.{p}", "layers.{s-1}.downsample.proj.{p}", False),
            ("stages.{s}.downsample.norm.{p}", "layers.{s-1}.downsample.norm.{p}", False),
            *_block_rows(ours_block, block, _OFFICIAL_BLOCK, _LINEAR_OFFICIAL),
            ("norm.{p}", "norm.{p}", False),
            ("head.fc.{p}", "head.{p}", False),
        ]
    elif fmt == "timm":
        if not hier:
            raise ConversionError("timm has no isotropic FocalNet: write it as 'focalnet', 'official' or 'hf'")
        names = _TIMM_BLOCK_POST if use_post_norm else _TIMM_BLOCK_PRE
        pairs = [
            ("stem.proj.{p}", "stem.proj.{p}", False),
            ("stem.norm.{p}", "stem.norm.{p}", False),
            ("stages.{s}.downsample.proj.{p}", "layers.{s}.downsample.proj.{p}", False),
            ("stages.{s}.downsample.norm.{p}", "layers.{s}.downsample.norm.{p}", False),
            *_block_rows(ours_block, "layers.{s}.blocks.{b}.", names, set()),
            ("norm.{p}", "norm.{p}", False),
            ("head.fc.{p}", "head.fc.{p}", False),
        ]
    elif fmt == "hf":
        pre = hf_prefix
        block = pre + ("encoder.stages.{s}.layers.{b}." if hier else "encoder.stages.0.layers.{b}.")
        pairs = [
            ("stem.proj.{p}", pre + "embeddings.patch_embeddings.projection.{p}", False),
            ("stem.norm.{p}", pre + "embeddings.norm.{p}", False),
            ("stages.{s}.downsample.proj.{p}", pre + "encoder.stages.{s-1}.downsample.projection.{p}", False),
            ("stages.{s}.downsample.norm.{p}", pre + "encoder.stages.{s-1}.downsample.norm.{p}", False),
            *_block_rows(ours_block, block, _HF_BLOCK, _LINEAR_OFFICIAL),
            ("norm.{p}", pre + "layernorm.{p}", False),
            ("head.fc.{p}", "classifier.{p}", False),
        ]
    else:
        raise ConversionError(f"unknown checkpoint layout {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not hier:
        pairs = [p for p in pairs if "stages.{s}" not in p[0]]
    return _rows(pairs)


def _convert(sd: StateDict, rows: list[_Row], forward: bool, what: str) -> dict[str, Tensor]:
    """forward=True: ours -> theirs; False: theirs -> ours."""
    out: dict[str, Tensor] = {}
    unmatched = []
    for key, value in sd.items():
        for ours, theirs, linear in rows:
            src, dst = (ours, theirs) if forward else (theirs, ours)
            fields = src.match(key)
            if fields is None:
                continue
            new_key = dst.format(fields)
            if linear and key.endswith("weight"):
                value = _linear_to_conv(value, key) if not forward else _conv_to_linear(value, key)
            if new_key in out:
                raise ConversionError(f"{what}: two tensors map to {new_key!r} (the second is {key!r})")
            out[new_key] = value
            break
        else:
            unmatched.append(key)
    if unmatched:
        shown = ", ".join(unmatched[:8]) + (f" and {len(unmatched) - 8} more" if len(unmatched) > 8 else "")
        raise ConversionError(f"{what}: {len(unmatched)} tensor(s) fit no known name: {shown}")
    return out


def _linear_to_conv(w: Tensor, key: str) -> Tensor:
    if w.ndim != 2:
        raise ConversionError(f"{key}: expected a 2-D nn.Linear weight, got shape {tuple(w.shape)}")
    return w.reshape(*w.shape, 1, 1)


def _conv_to_linear(w: Tensor, key: str) -> Tensor:
    if w.ndim != 4 or w.shape[2:] != (1, 1):
        raise ConversionError(f"{key}: expected a 1x1 conv weight (out, in, 1, 1), got shape {tuple(w.shape)}")
    return w.reshape(w.shape[0], w.shape[1])


# --------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------


def strip_prefixes(sd: StateDict) -> dict[str, Tensor]:
    """Remove the wrappers' prefixes: DistributedDataParallel's `module.`, torch.compile's `_orig_mod.`."""
    out = dict(sd)
    for prefix in ("module.", "_orig_mod."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def detect_layout(sd: StateDict) -> str:
    """Which of FORMATS a state dict is in, from its tensor names alone."""
    keys = set(sd)
    if any(k.startswith(("focalnet.embeddings.", "embeddings.patch_embeddings.")) for k in keys):
        return "hf"
    if any(k.startswith("patch_embed.") for k in keys):
        return "official"
    if any(k.startswith("stem.") for k in keys):
        if any(k.startswith(("stages.", "blocks.")) for k in keys):
            return "focalnet"
        if any(k.startswith("layers.") for k in keys):
            return "timm"
    shown = ", ".join(sorted(keys)[:5])
    raise ConversionError(
        f"not a FocalNet checkpoint in any known layout ({', '.join(FORMATS)}); its first tensors are: {shown}"
    )


def detect_family(sd: StateDict, fmt: str) -> str:
    """'isotropic' (one stage of blocks, no downsampling) or 'hierarchical'."""
    stage = {
        "focalnet": re.compile(r"^stages\.(\d+)\."),
        "official": re.compile(r"^layers\.(\d+)\."),
        "timm": re.compile(r"^layers\.(\d+)\."),
        "hf": re.compile(r"^(?:focalnet\.)?encoder\.stages\.(\d+)\."),
    }[fmt]
    if fmt == "focalnet":
        return "isotropic" if any(k.startswith("blocks.") for k in sd) else "hierarchical"
    stages = {int(m.group(1)) for k in sd if (m := stage.match(k))}
    return "isotropic" if stages == {0} else "hierarchical"


def timm_is_post_norm(sd: StateDict) -> bool:
    """Whether a timm state dict holds post-norm blocks: timm names their norms `norm1_post`/`norm2_post`."""
    return any(".norm1_post." in k for k in sd)


def to_focalnet(sd: StateDict, fmt: Optional[str] = None, family: Optional[str] = None) -> dict[str, Tensor]:
    """Convert a state dict from `fmt` (detected when None) to our layout. Pure: returns a new dict."""
    sd = strip_prefixes(sd)
    fmt = fmt or detect_layout(sd)
    family = family or detect_family(sd, fmt)
    if fmt == "focalnet":
        return dict(sd)
    if fmt == "hf":
        prefix = "focalnet." if any(k.startswith("focalnet.") for k in sd) else ""
        rows = _table("hf", family, hf_prefix=prefix)
    else:
        rows = _table(fmt, family, use_post_norm=fmt == "timm" and timm_is_post_norm(sd))
    return _convert(sd, rows, forward=False, what=f"reading a {fmt!r} checkpoint")


def from_focalnet(sd: StateDict, fmt: str, arch: Mapping) -> dict[str, Tensor]:
    """Convert our state dict to layout `fmt` for the architecture `arch` (a model's `.arch`)."""
    if fmt == "focalnet":
        return dict(sd)
    family = arch["family"]
    if arch.get("focal_factor", 2) != 2 and fmt in ("timm", "hf"):
        raise ConversionError(f"{fmt} supports focal_factor=2 only; this model has {arch['focal_factor']}")
    if fmt == "hf":
        prefix = "focalnet." if arch.get("num_classes", 0) > 0 else ""
        rows = _table("hf", family, hf_prefix=prefix)
        sd = {k: v for k, v in sd.items() if prefix or not k.startswith("head.")}
    else:
        rows = _table(fmt, family, use_post_norm=bool(arch.get("use_post_norm")))
    return _convert(sd, rows, forward=True, what=f"writing a {fmt!r} checkpoint")


def in22k_head_to_in1k(weight: Tensor, bias: Tensor, missing_logit: float = -1e4) -> tuple[Tensor, Tensor]:
    """Slice the authors' reordered 21842-class head to the 1000 ImageNet-1K classes.

    Rows 0..999 of their ImageNet-22K head are the ImageNet-1K classes in order, except row 850: 1K class
    850 ('teddy bear') is absent from ImageNet-22K, so that row never saw an image. We give it a zero
    weight and a bias of `missing_logit` (-1e4): its logit is constant and far below every other, so the
    model never predicts a class it cannot recognise, its softmax probability is 0, and fine-tuning starts
    it from a neutral (zero) weight.
    """
    if weight.shape[0] != 21842:
        raise ConversionError(f"expected the authors' 21842-class ImageNet-22K head, got {weight.shape[0]} classes")
    w = weight[:1000].clone()
    b = bias[:1000].clone()
    w[IN1K_MISSING_FROM_IN22K] = 0
    b[IN1K_MISSING_FROM_IN22K] = missing_logit
    return w, b


# --------------------------------------------------------------------------------------------------------
# A grayscale model's stem, written as an RGB one (for loaders that feed every image as RGB)
# --------------------------------------------------------------------------------------------------------

# ITU-R 601-2 luma: what PIL's convert("L") computes, so what a 1-channel model sees of an RGB photo
GRAY_FROM_RGB = (0.299, 0.587, 0.114)


def gray_stem_as_rgb(w: Tensor) -> Tensor:
    """A 1-channel stem weight (out, 1, k, k) as an RGB one computing the same map from (R, G, B): the luma
    conversion folded in, so an RGB photo gives what the model gives its grayscale version, and a gray image
    fed as (g, g, g) gives exactly its output. Built so that `rgb_stem_as_gray` recovers `w` bit for bit: the
    blue weight is what is left of w after red + green (exact by Sterbenz' lemma, red + green being 0.886 w)."""
    if w.ndim != 4 or w.shape[1] != 1:
        raise ConversionError(f"a grayscale stem weight is (out, 1, k, k); got {tuple(w.shape)}")
    red, green = w * GRAY_FROM_RGB[0], w * GRAY_FROM_RGB[1]
    return torch.cat([red, green, w - (red + green)], dim=1)


def rgb_stem_as_gray(w: Tensor) -> Tensor:
    """The inverse of `gray_stem_as_rgb`: (red + green) + blue, in that order (exact)."""
    if w.ndim != 4 or w.shape[1] != 3:
        raise ConversionError(f"an RGB stem weight is (out, 3, k, k); got {tuple(w.shape)}")
    return (w[:, 0:1] + w[:, 1:2]) + w[:, 2:3]
