"""A FocalNet backbone for dense prediction, built on the registered classification model (never a copy).

The authors' detection and segmentation code (microsoft/FocalNet detection/, segmentation/) holds two more
copies of the model, with diverging flags. Here the backbone wraps `focalnet.create_model(name, ...)` and
takes its stage outputs through `forward_intermediates`:

- outputs of the stages in `out_indices`, after each stage's blocks and before the next downsampling, at
  strides 4, 8, 16, 32 (ceil(H / stride) x ceil(W / stride): the model zero-pads bottom/right inside, so
  any input size works);
- an optional LayerNorm per output (`out_norms`), the `norm{i}` of the authors' detection and segmentation
  checkpoints;
- `frozen_stages` as in mmdet: -1 freezes nothing, 0 the stem, i >= 1 the stem and the first i stages
  (stages[0 .. i-1]); frozen parts have requires_grad=False and stay in eval mode (no stochastic depth);
- stages after the last output, the final norm and the classifier are dropped: they would be parameters
  that never get a gradient.

Detection configurations use a focal window of 9 (kernels 9, 11 for L=2; 9, 11, 13 for L=3); pass
`focal_windows=9` and load classification weights (window 3): `focalnet.dense.loading` reads and adapts them
(padding the kernels as the authors' detection loader does) and returns the tensors; the backbone loads them.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..checkpoints import Checkpoint, CheckpointError, load_into
from ..factory import create_model
from ..layers import LayerNorm2d
from ..models import FocalNet
from .loading import BackboneWeights, LoadReport, match_backbone_weights, read_backbone_weights

__all__ = ["FocalNetBackbone", "load_backbone_weights"]

log = logging.getLogger("focalnet")
PathLike = Union[str, os.PathLike]
WeightSource = Union[PathLike, Mapping[str, torch.Tensor], Checkpoint, BackboneWeights]


class FocalNetBackbone(nn.Module):
    """Multi-scale features of a hierarchical FocalNet: a list of (B, C_i, ceil(H / s_i), ceil(W / s_i)).

    name: a registered hierarchical variant (`focalnet list`), e.g. 'focalnet_tiny_srf'.
    out_indices: which stages to return (0..3, strides 4, 8, 16, 32).
    out_norms: a LayerNorm on each output (the authors' detection / segmentation backbones have them).
    frozen_stages: -1 none, 0 the stem, i the stem and stages 0..i-1 (mmdet's convention).
    focal_windows, focal_levels: override the variant's (detection and segmentation use window 9).
    pretrained: a checkpoint to load (any layout `focalnet.dense.loading.read_backbone_weights` reads:
        classification weights in any supported layout, or the authors' Mask R-CNN / UperNet files).
    overrides: any other architecture argument of `focalnet.FocalNet` (embed_dim, depths, drop_path_rate, ...).
    """

    def __init__(
        self,
        name: str = "focalnet_tiny_srf",
        *,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        out_norms: bool = True,
        frozen_stages: int = -1,
        focal_windows: Optional[Union[int, Sequence[int]]] = None,
        focal_levels: Optional[Union[int, Sequence[int]]] = None,
        pretrained: Optional[WeightSource] = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        if focal_windows is not None:
            overrides["focal_windows"] = focal_windows
        if focal_levels is not None:
            overrides["focal_levels"] = focal_levels
        model = create_model(name, num_classes=0, **overrides)
        if not isinstance(model, FocalNet):
            raise ValueError(
                f"{name} is an isotropic FocalNet (one stride-16 map): a dense-prediction backbone needs the "
                "stride 4/8/16/32 pyramid of a hierarchical variant (tiny/small/base/large/xlarge/huge)"
            )
        num_stages = len(model.stages)
        out_indices = [int(i) for i in out_indices]
        if not out_indices or sorted(set(out_indices)) != out_indices or not all(0 <= i < num_stages for i in out_indices):
            raise ValueError(
                f"out_indices must be increasing stage indices in 0..{num_stages - 1}, got {list(out_indices)}"
            )
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f"frozen_stages must be in -1..{num_stages} (-1: none, 0: the stem), got {frozen_stages}")

        # drop what would never get a gradient: stages after the last output, the final norm, the classifier
        last = out_indices[-1]
        model.stages = model.stages[: last + 1]
        model.feature_info = model.feature_info[: last + 1]
        model.norm = nn.Identity()
        self.model = model
        self.variant = name
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.out_channels = [model.dims[i] for i in out_indices]
        self.strides = [model.feature_info[i]["reduction"] for i in out_indices]
        self.feature_info = [dict(model.feature_info[i], index=i) for i in out_indices]
        # keyed by stage index, so that the authors' `norm{i}` maps to `out_norms.{i}` whatever out_indices is
        self.out_norms = nn.ModuleDict({str(i): LayerNorm2d(model.dims[i]) for i in out_indices}) if out_norms else None
        self._freeze()
        if pretrained is not None:
            self.load_pretrained(pretrained)

    @property
    def arch(self) -> dict:
        """The wrapped model's architecture (all of its stages, as the registry describes it)."""
        return dict(self.model.arch)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.model.stem, *self.model.stages[: self.frozen_stages]]

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "FocalNetBackbone":
        super().train(mode)
        # frozen parts stay in eval mode: no stochastic depth or dropout where nothing is learned
        for module in self._frozen_modules():
            module.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    def load_pretrained(self, source: WeightSource) -> LoadReport:
        """Load `source` (any checkpoint `focalnet.dense.loading.read_backbone_weights` reads): every tensor
        of the wrapped FocalNet must come from it (after focal windows and levels are adapted), or loading
        fails and names what is missing or mis-shaped. What is tolerated (heads, neck, later stages; output
        norms the checkpoint lacks) is listed in the returned report (see `match_backbone_weights`)."""
        weights = source if isinstance(source, BackboneWeights) else read_backbone_weights(source)
        load = match_backbone_weights(weights, self.model.state_dict(), num_stages=len(self.model.stages),
                                      out_norms=self.out_indices if self.out_norms is not None else ())
        try:
            load_into(self.model, load.state_dict)
        except CheckpointError as e:
            raise CheckpointError(f"backbone weights from {load.report.source}: {e}") from None
        for i, tensors in load.out_norms.items():
            self._load_out_norm(i, tensors, load.where)
        self._freeze()
        log.info("%s", load.report.summary())
        return load.report

    def _load_out_norm(self, index: int, tensors: Mapping[str, torch.Tensor], where: str) -> None:
        norm = self.out_norms[str(index)]
        for p in ("weight", "bias"):
            if p not in tensors or tensors[p].shape != getattr(norm, p).shape:
                got = tuple(tensors[p].shape) if p in tensors else "nothing"
                raise CheckpointError(
                    f"output norm {index}{where}: the checkpoint has {got} for its {p}, the backbone "
                    f"{tuple(getattr(norm, p).shape)}; check that the variant matches the checkpoint"
                )
        with torch.no_grad():
            norm.weight.copy_(tensors["weight"])
            norm.bias.copy_(tensors["bias"])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_chans, H, W) -> [(B, C_i, ceil(H / s_i), ceil(W / s_i)) for i in out_indices]."""
        feats = self.model.forward_intermediates(x, indices=self.out_indices, intermediates_only=True, stop_early=True)
        if self.out_norms is not None:
            feats = [self.out_norms[str(i)](f) for i, f in zip(self.out_indices, feats)]
        return feats

    def extra_repr(self) -> str:
        return f"variant={self.variant}, out_indices={self.out_indices}, frozen_stages={self.frozen_stages}"


def load_backbone_weights(backbone: FocalNetBackbone, source: WeightSource) -> LoadReport:
    """Load `source` into `backbone`, strictly; see `FocalNetBackbone.load_pretrained`."""
    return backbone.load_pretrained(source)
