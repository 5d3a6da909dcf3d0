"""Backbone weights for dense prediction: classification checkpoints adapted to detection configurations,
and the backbone part of the authors' Mask R-CNN / UperNet checkpoints.

Adapting classification weights (window 3) to a detection backbone (window 9), as the authors' detection
loader does, but as pure functions over our-layout state dicts:

- `resize_focal_kernel`: a depthwise kernel (C, 1, k, k) is zero-padded centrally to a larger window, or
  its centre is cropped to a smaller one. Padding is exact: the model's depthwise convs use zero padding of
  k // 2, so a k x k kernel embedded in the centre of a zero K x K kernel gives the same output everywhere,
  borders included. Cropping is exact only when the cropped taps are zero.
- `grow_gate_rows`: the first projection `modulation.f` (rows [0:C] q, [C:2C] context, then L+1 gates,
  the LAST row the global-context gate) gets more gate rows when focal levels increase: q, context and the
  existing level gates are copied, the global gate moves to the last row, the new level gates are zero.
  The output is NOT unchanged by this alone: the global context is the mean of the deepest level, which is
  now a new level, so only the global term differs (with a zero global gate the output is the same).
  The new levels' depthwise kernels have no pretrained value: they keep the model's fresh initialisation.

The authors' Mask R-CNN and UperNet checkpoints (mmdet / mmseg): `{'state_dict': {...}, 'meta': ...}` with
the backbone under `backbone.` in the authors' classification layout (`patch_embed`, `layers.{i}`,
nn.Linear weights, downsampling at the end of stage i), no final `norm` nor `head`, and one LayerNorm per
output, `backbone.norm{i}`; the neck and heads (`neck.`, `rpn_head.`, `roi_head.`, `decode_head.`,
`auxiliary_head.`) are ignored here.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch

from ..checkpoints import Checkpoint, CheckpointError, read_checkpoint, safe_torch_load
from ..checkpoints.convert import ConversionError, strip_prefixes, to_focalnet

__all__ = [
    "resize_focal_kernel",
    "grow_gate_rows",
    "adapt_focal_weights",
    "AdaptReport",
    "BackboneWeights",
    "read_backbone_weights",
    "match_backbone_weights",
    "BackboneLoad",
    "LoadReport",
]

PathLike = Union[str, os.PathLike]
Tensor = torch.Tensor

_KERNEL = re.compile(r"^(?P<block>.+\.modulation)\.focal_layers\.(?P<level>\d+)\.0\.weight$")
_F_PROJ = re.compile(r"^(?P<block>.+\.modulation)\.f\.(?P<p>weight|bias)$")
_OUT_NORM = re.compile(r"^norm(?P<i>\d+)\.(?P<p>weight|bias)$")  # the authors' per-output norms
_OUR_NORM = re.compile(r"^out_norms\.(?P<i>\d+)\.(?P<p>weight|bias)$")
_STAGE = re.compile(r"^stages\.(?P<s>\d+)\.")


# --------------------------------------------------------------------------------------------------------
# Pure functions: kernel size and focal levels
# --------------------------------------------------------------------------------------------------------


def resize_focal_kernel(weight: Tensor, size: int) -> Tensor:
    """A depthwise kernel (C, 1, k, k) resized to (C, 1, size, size): zero-padded centrally when `size` > k,
    centre-cropped when `size` < k. Both sizes must be odd, so that the centre tap stays the centre."""
    if weight.ndim != 4 or weight.shape[-1] != weight.shape[-2]:
        raise ConversionError(f"expected a square depthwise kernel (C, 1, k, k), got shape {tuple(weight.shape)}")
    k = int(weight.shape[-1])
    if k % 2 == 0 or size % 2 == 0 or size < 1:
        raise ConversionError(f"focal kernels are odd-sized; cannot resize {k}x{k} to {size}x{size}")
    if size == k:
        return weight.clone()
    if size > k:
        m = (size - k) // 2
        out = weight.new_zeros(*weight.shape[:2], size, size)
        out[..., m : m + k, m : m + k] = weight
        return out
    m = (k - size) // 2
    return weight[..., m : m + size, m : m + size].clone()


def grow_gate_rows(tensor: Tensor, dim: int, focal_level: int) -> Tensor:
    """Rows of `modulation.f` (weight (2C + L + 1, C, 1, 1) or bias (2C + L + 1,)) for `focal_level` levels.

    q and context rows [0:2C] and the existing level gates are copied, the global-context gate (the last
    row) moves to the new last row, and the gates of the new levels are zero: they start switched off.
    """
    rows = int(tensor.shape[0])
    old_level = rows - 2 * dim - 1
    if old_level < 1:
        raise ConversionError(f"a modulation.f with {rows} rows cannot belong to a {dim}-channel block")
    if focal_level < old_level:
        raise ConversionError(
            f"cannot drop focal levels ({old_level} -> {focal_level}): the model would lose trained context; "
            f"build the model with focal_levels={old_level}"
        )
    out = tensor.new_zeros(2 * dim + focal_level + 1, *tensor.shape[1:])
    out[: 2 * dim + old_level] = tensor[: 2 * dim + old_level]  # q, context, level gates 1..L_old
    out[-1] = tensor[-1]  # global-context gate
    return out


@dataclass
class AdaptReport:
    """What `adapt_focal_weights` changed, tensor by tensor."""

    resized: list[str] = field(default_factory=list)  # 'key: k -> K'
    grown: list[str] = field(default_factory=list)  # 'key: L -> L'
    initialised: list[str] = field(default_factory=list)  # new focal levels: the model's fresh kernels

    def __bool__(self) -> bool:
        return bool(self.resized or self.grown or self.initialised)

    def summary(self) -> str:
        parts = []
        if self.resized:
            kinds = sorted({r.split(": ")[1] for r in self.resized})
            parts.append(f"{len(self.resized)} focal kernels resized ({', '.join(kinds)})")
        if self.grown:
            kinds = sorted({r.split(": ")[1] for r in self.grown})
            parts.append(f"{len(self.grown)} gate projections grown (levels {', '.join(kinds)})")
        if self.initialised:
            parts.append(f"{len(self.initialised)} new focal-level kernels kept at their initialisation")
        return "; ".join(parts) or "nothing to adapt"


def adapt_focal_weights(
    sd: Mapping[str, Tensor], target: Mapping[str, Tensor]
) -> tuple[dict[str, Tensor], AdaptReport]:
    """Adapt our-layout weights `sd` to the focal windows and levels of `target` (a model's state dict).

    Returns a new dict (the input is not modified) and what was changed. Tensors other than the focal
    kernels and `modulation.f` are passed through untouched: a mismatch there is the loader's to report.
    New focal levels (in `target`, not in `sd`) take `target`'s tensors, i.e. the model's initialisation.
    """
    out = dict(sd)
    report = AdaptReport()
    src_blocks = {m["block"] for k in sd if (m := _KERNEL.match(k))}
    tgt_levels: dict[str, int] = {}
    for key, want in target.items():
        m = _KERNEL.match(key)
        if m is None:
            continue
        tgt_levels[m["block"]] = max(tgt_levels.get(m["block"], 0), int(m["level"]) + 1)
        if key in sd:
            have = sd[key]
            if have.shape[-1] != want.shape[-1] and have.shape[:2] == want.shape[:2]:
                out[key] = resize_focal_kernel(have, int(want.shape[-1]))
                report.resized.append(f"{key}: {have.shape[-1]} -> {want.shape[-1]}")
        elif m["block"] in src_blocks:
            out[key] = want.detach().clone()
            report.initialised.append(key)
    for key in sd:  # levels the checkpoint has and the model lacks
        m = _KERNEL.match(key)
        if m is not None and m["block"] in tgt_levels and int(m["level"]) >= tgt_levels[m["block"]]:
            src = 1 + max(int(n["level"]) for k in sd if (n := _KERNEL.match(k)) and n["block"] == m["block"])
            raise CheckpointError(
                f"{m['block']} has {src} focal levels in the checkpoint but {tgt_levels[m['block']]} in the model; "
                f"dropping focal levels is not supported: build the backbone with focal_levels={src}"
            )
    for key, want in target.items():
        m = _F_PROJ.match(key)
        if m is None or key not in sd or sd[key].shape[0] == want.shape[0]:
            continue
        dim = int(target[f"{m['block']}.f.weight"].shape[1])
        src_weight = sd.get(f"{m['block']}.f.weight")
        if src_weight is None or int(src_weight.shape[1]) != dim:
            continue  # a different width: reported by the loader as mis-shaped
        level = int(want.shape[0]) - 2 * dim - 1
        have = sd[key]
        out[key] = grow_gate_rows(have, dim, level)
        report.grown.append(f"{key}: {have.shape[0] - 2 * dim - 1} -> {level}")
    return out, report


# --------------------------------------------------------------------------------------------------------
# Reading backbone weights from any source
# --------------------------------------------------------------------------------------------------------


@dataclass
class BackboneWeights:
    """Backbone weights read into our layout: the model part (`stem.*`, `stages.*`, maybe `norm.*` and
    `head.*` of a classifier) and the per-output norms (stage index -> {'weight', 'bias'})."""

    state_dict: dict[str, Tensor]
    out_norms: dict[int, dict[str, Tensor]]
    source: str  # 'classification (<layout>)', 'detection/segmentation (authors', mmdet/mmseg)', 'focalnet dense'
    ignored: list[str] = field(default_factory=list)  # keys of the file that are not the backbone's
    path: Optional[str] = None


def _ours_dense(sd: Mapping[str, Tensor]) -> Optional[BackboneWeights]:
    """Our FocalNetBackbone (alone or inside a detector / segmenter: `backbone.body.model.stem...`)."""
    anchor = "model.stem.proj.weight"
    hits = [k for k in sd if k == anchor or k.endswith("." + anchor)]
    if not hits:
        return None
    prefix = min(hits, key=len)[: -len(anchor)]
    model_sd, norms, ignored = {}, {}, []
    for key, value in sd.items():
        if not key.startswith(prefix):
            ignored.append(key)
            continue
        rest = key[len(prefix) :]
        if rest.startswith("model."):
            model_sd[rest[len("model.") :]] = value
        elif (m := _OUR_NORM.match(rest)) is not None:
            norms.setdefault(int(m["i"]), {})[m["p"]] = value
        else:
            ignored.append(key)
    return BackboneWeights(model_sd, norms, "focalnet dense", ignored)


def _authors_dense(sd: Mapping[str, Tensor]) -> Optional[BackboneWeights]:
    """The authors' mmdet / mmseg checkpoints: `backbone.` + classification layout + `norm{i}`."""
    if not any(k.startswith("backbone.") for k in sd):
        return None
    inner, norms, ignored = {}, {}, []
    for key, value in sd.items():
        if not key.startswith("backbone."):
            ignored.append(key)
            continue
        rest = key[len("backbone.") :]
        if (m := _OUT_NORM.match(rest)) is not None:
            norms.setdefault(int(m["i"]), {})[m["p"]] = value
        else:
            inner[rest] = value
    try:
        model_sd = to_focalnet(inner, family="hierarchical")
    except ConversionError as e:
        raise CheckpointError(f"the backbone part (`backbone.*`) of this detection/segmentation checkpoint: {e}") from None
    return BackboneWeights(model_sd, norms, "detection/segmentation (backbone.* + norm{i}, mmdet/mmseg)", ignored)


def _from_state_dict(sd: Mapping[str, Tensor]) -> BackboneWeights:
    sd = strip_prefixes(sd)
    found = _ours_dense(sd) or _authors_dense(sd)
    if found is not None:
        return found
    try:
        return BackboneWeights(to_focalnet(sd), {}, "classification")
    except ConversionError as e:
        raise CheckpointError(str(e)) from None


def _inner_state_dict(obj: object) -> Optional[Mapping[str, Tensor]]:
    """The state dict of a torch.load-ed checkpoint: the object itself or under 'state_dict' / 'model'."""
    if not isinstance(obj, Mapping):
        return None
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in ("state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    return None


def read_backbone_weights(source: Union[PathLike, Mapping[str, Tensor], Checkpoint]) -> BackboneWeights:
    """Backbone weights from a file, folder, state dict or `focalnet.checkpoints.io.Checkpoint`.

    Understands: classification checkpoints in every layout `focalnet.read_checkpoint` reads (ours, the
    authors', timm, Hugging Face); the authors' Mask R-CNN / UperNet checkpoints; our detectors, segmenters
    and backbones (`focalnet.dense`). The file is read with `torch.load(weights_only=True)`.
    """
    if isinstance(source, Checkpoint):
        return BackboneWeights(dict(source.state_dict), {}, f"classification ({source.source_format})", path=source.path)
    if isinstance(source, Mapping):
        return _from_state_dict(_inner_state_dict(source) or source)
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"backbone checkpoint {path} does not exist")
    if path.is_file() and path.suffix != ".safetensors":
        sd = _inner_state_dict(safe_torch_load(path))
        if sd is not None:
            sd = strip_prefixes(sd)
            found = _ours_dense(sd) or _authors_dense(sd)
            if found is not None:
                found.path = str(path)
                return found
    ckpt = read_checkpoint(path)  # classification checkpoints, every layout
    return BackboneWeights(dict(ckpt.state_dict), {}, f"classification ({ckpt.source_format})", path=str(path))


# --------------------------------------------------------------------------------------------------------
# Matching weights to a backbone, strictly (the backbone applies the result)
# --------------------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    source: str
    adapted: AdaptReport
    ignored: list[str]  # checkpoint tensors the backbone has no place for (heads, neck, later stages)
    initialised: list[str]  # backbone tensors the checkpoint has no value for (kept at their init)

    def summary(self) -> str:
        parts = [f"backbone weights from {self.source}"]
        if self.adapted:
            parts.append(self.adapted.summary())
        if self.initialised:
            parts.append(f"kept at initialisation: {', '.join(self.initialised[:4])}" + (" ..." if len(self.initialised) > 4 else ""))
        if self.ignored:
            parts.append(f"{len(self.ignored)} tensors ignored (not part of this backbone)")
        return "; ".join(parts)


@dataclass
class BackboneLoad:
    """What to load into a backbone: `state_dict` for its wrapped FocalNet (every tensor, adapted to its
    focal windows and levels; checked strictly when loaded), `out_norms` for its output norms (stage index
    -> the checkpoint's 'weight' and 'bias'), the report, and `where` (' (PATH)' of the file, for messages)."""

    state_dict: dict[str, Tensor]
    out_norms: dict[int, dict[str, Tensor]]
    report: LoadReport
    where: str = ""


def _split_model_tensors(weights: BackboneWeights, num_stages: int) -> tuple[dict[str, Tensor], list[str]]:
    """The tensors a backbone of `num_stages` stages takes, and the names of those it has no place for
    (the classifier's final norm and head, later stages, a detector's neck and heads)."""
    sd, ignored = {}, list(weights.ignored)
    for key, value in weights.state_dict.items():
        m = _STAGE.match(key)
        if key.startswith(("norm.", "head.")) or (m is not None and int(m["s"]) >= num_stages):
            ignored.append(key)
        else:
            sd[key] = value
    return sd, ignored


def match_backbone_weights(
    weights: BackboneWeights,
    own: Mapping[str, Tensor],
    *,
    num_stages: int,
    out_norms: Sequence[int] = (),
) -> BackboneLoad:
    """Match `weights` to a backbone whose FocalNet has the state dict `own` and `num_stages` stages, and
    which has output norms on the stages `out_norms` (none: empty).

    Tolerated, and listed in the report: the classifier's final norm and head, stages after the backbone's
    last output, a detector's neck and heads (ignored); output norms the checkpoint lacks (a classification
    checkpoint has none: they keep their LayerNorm initialisation, weight 1 and bias 0). Nothing is
    loaded here: `FocalNetBackbone.load_pretrained` applies the result.
    """
    sd, ignored = _split_model_tensors(weights, num_stages)
    sd, adapted = adapt_focal_weights(sd, own)
    norms = {i: weights.out_norms[i] for i in out_norms if i in weights.out_norms}
    initialised = list(adapted.initialised) + [f"out_norms.{i}" for i in out_norms if i not in norms]
    ignored += [f"norm{i}" for i in weights.out_norms if i not in out_norms]
    where = f" ({weights.path})" if weights.path else ""
    return BackboneLoad(sd, norms, LoadReport(weights.source + where, adapted, ignored, initialised), where)
