"""torchvision detectors (Faster R-CNN, Mask R-CNN, RetinaNet) on a FocalNet backbone with an FPN.

The detectors are torchvision's own classes; only the backbone is ours (`FocalNetBackbone` + torchvision's
`FeaturePyramidNetwork`, laid out like torchvision's `BackboneWithFPN`: `backbone.body`, `backbone.fpn`).
Conventions are torchvision's: images are float tensors in [0, 1] (the detector normalises them with
`image_mean` / `image_std`, ImageNet's by default) of any size; `num_classes` counts the background, so the
object labels are 1..num_classes-1; the transform resizes each image so that its short side is `min_size`
(unless the long side would exceed `max_size`) and pads the batch to a multiple of 32.

Every builder records its own arguments on the model (`model.dense_config`), so that
`focalnet.dense.checkpoint.save_dense_checkpoint` can write a file from which the same detector is rebuilt;
arguments that are not plain values (a custom anchor generator object, say) are forwarded to torchvision but
make the model unsaveable in that format, which is said when saving.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from .backbone import FocalNetBackbone

__all__ = [
    "FocalNetFPN",
    "fasterrcnn_focalnet",
    "maskrcnn_focalnet",
    "retinanet_focalnet",
    "DETECTION_BUILDERS",
]

PathLike = Union[str, os.PathLike]
IntOrSeq = Union[int, Sequence[int]]

# one anchor size per FPN level (P2..P6 for the R-CNNs, P3..P7 for RetinaNet), as torchvision's defaults
DEFAULT_ANCHOR_SIZES = (32, 64, 128, 256, 512)


class FocalNetFPN(nn.Module):
    """FocalNet stage outputs through torchvision's FPN: {'0': P_first, ..., 'pool' or 'p6', 'p7'}, all with
    `out_channels` channels. The same layout as torchvision's BackboneWithFPN (`body`, `fpn`)."""

    def __init__(
        self,
        body: FocalNetBackbone,
        out_channels: int = 256,
        extra_blocks: Optional[ExtraFPNBlock] = None,
        norm_layer: Optional[Callable[..., nn.Module]] = None,
    ) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            in_channels_list=list(body.out_channels),
            out_channels=out_channels,
            extra_blocks=extra_blocks if extra_blocks is not None else LastLevelMaxPool(),
            norm_layer=norm_layer,
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def _backbone(
    backbone: str,
    *,
    out_indices: Sequence[int],
    pretrained_backbone: Optional[Union[PathLike, Mapping[str, torch.Tensor]]],
    focal_windows: Optional[IntOrSeq],
    focal_levels: Optional[IntOrSeq],
    frozen_stages: int,
    backbone_args: Optional[dict],
) -> FocalNetBackbone:
    return FocalNetBackbone(
        backbone,
        out_indices=out_indices,
        out_norms=True,
        frozen_stages=frozen_stages,
        focal_windows=focal_windows,
        focal_levels=focal_levels,
        pretrained=pretrained_backbone,
        **(backbone_args or {}),
    )


def _anchors(anchor_sizes: Sequence[int], aspect_ratios: Sequence[float], scales_per_octave: int, levels: int) -> AnchorGenerator:
    if len(anchor_sizes) != levels:
        raise ValueError(f"anchor_sizes needs one size per FPN level ({levels}), got {list(anchor_sizes)}")
    sizes = tuple(tuple(int(round(s * 2 ** (k / scales_per_octave))) for k in range(scales_per_octave)) for s in anchor_sizes)
    return AnchorGenerator(sizes, (tuple(float(a) for a in aspect_ratios),) * levels)


def _is_plain(value: Any) -> bool:
    """Plain Python data (what a weights_only checkpoint and JSON can hold)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _split_kwargs(kwargs: dict) -> tuple[dict, list[str]]:
    """The user's torchvision options: (plain ones, recorded; names of objects, which cannot be recorded)."""
    plain = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items() if _is_plain(v)}
    return plain, sorted(k for k in kwargs if k not in plain)


def _record(model: nn.Module, builder: str, args: dict, objects: list[str]) -> nn.Module:
    # a plain description of how the model was built (no weights): see focalnet.dense.checkpoint
    model.dense_config = dict(task="detection", builder=builder, builder_args=args, unrecorded=objects)
    return model


def _rcnn_args(
    backbone: str, num_classes: int, focal_windows, focal_levels, frozen_stages, fpn_channels, anchor_sizes,
    aspect_ratios, representation_size, backbone_args, kwargs,
) -> dict:
    return dict(
        backbone=backbone, num_classes=num_classes, focal_windows=_listed(focal_windows),
        focal_levels=_listed(focal_levels), frozen_stages=frozen_stages, fpn_channels=fpn_channels,
        anchor_sizes=list(anchor_sizes), aspect_ratios=list(aspect_ratios), representation_size=representation_size,
        backbone_args=dict(backbone_args or {}), **kwargs,
    )


def fasterrcnn_focalnet(
    backbone: str = "focalnet_tiny_srf",
    num_classes: int = 91,
    *,
    pretrained_backbone: Optional[Union[PathLike, Mapping[str, torch.Tensor]]] = None,
    focal_windows: Optional[IntOrSeq] = 9,
    focal_levels: Optional[IntOrSeq] = None,
    frozen_stages: int = -1,
    fpn_channels: int = 256,
    anchor_sizes: Sequence[int] = DEFAULT_ANCHOR_SIZES,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    representation_size: int = 1024,
    backbone_args: Optional[dict] = None,
    **kwargs: Any,
) -> FasterRCNN:
    """Faster R-CNN with a FocalNet + FPN backbone (strides 4..32 and a max-pooled stride-64 level).

    backbone: a registered hierarchical FocalNet; focal_windows=9 is the authors' detection setting.
    num_classes: including the background (labels 1..num_classes-1).
    pretrained_backbone: any checkpoint `focalnet.dense.loading.read_backbone_weights` reads (classification
        weights in any layout, adapted to the focal window; the authors' Mask R-CNN / UperNet files).
    anchor_sizes: one per FPN level; aspect_ratios: the same at every level.
    representation_size: width of the two-layer box head (torchvision's 1024).
    backbone_args: other FocalNet arguments (embed_dim, depths, drop_path_rate, in_chans ...).
    kwargs: forwarded to torchvision's FasterRCNN (min_size, max_size, box_score_thresh, ...).
    """
    body = _backbone(
        backbone, out_indices=(0, 1, 2, 3), pretrained_backbone=pretrained_backbone, focal_windows=focal_windows,
        focal_levels=focal_levels, frozen_stages=frozen_stages, backbone_args=backbone_args,
    )
    plain, objects = _split_kwargs(kwargs)
    fpn = FocalNetFPN(body, fpn_channels)
    kwargs.setdefault("rpn_anchor_generator", _anchors(anchor_sizes, aspect_ratios, 1, 5))
    if representation_size != 1024 and "box_head" not in kwargs:
        kwargs["box_head"] = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
        kwargs.setdefault("box_predictor", FastRCNNPredictor(representation_size, num_classes))
        num_classes_arg = None  # torchvision refuses num_classes together with a box_predictor
    else:
        num_classes_arg = None if "box_predictor" in kwargs else num_classes
    model = FasterRCNN(fpn, num_classes=num_classes_arg, **kwargs)
    return _record(model, "fasterrcnn_focalnet", _rcnn_args(
        backbone, num_classes, focal_windows, focal_levels, frozen_stages, fpn_channels, anchor_sizes, aspect_ratios,
        representation_size, backbone_args, plain,
    ), objects)


def maskrcnn_focalnet(
    backbone: str = "focalnet_tiny_srf",
    num_classes: int = 91,
    *,
    pretrained_backbone: Optional[Union[PathLike, Mapping[str, torch.Tensor]]] = None,
    focal_windows: Optional[IntOrSeq] = 9,
    focal_levels: Optional[IntOrSeq] = None,
    frozen_stages: int = -1,
    fpn_channels: int = 256,
    anchor_sizes: Sequence[int] = DEFAULT_ANCHOR_SIZES,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    representation_size: int = 1024,
    mask_head_channels: int = 256,
    backbone_args: Optional[dict] = None,
    **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN with a FocalNet + FPN backbone: the paper's detection setting (focal window 9).

    Arguments as `fasterrcnn_focalnet`, plus mask_head_channels: width of the four 3x3 convs of the mask
    head (torchvision's 256; smaller is much cheaper on a CPU).
    """
    body = _backbone(
        backbone, out_indices=(0, 1, 2, 3), pretrained_backbone=pretrained_backbone, focal_windows=focal_windows,
        focal_levels=focal_levels, frozen_stages=frozen_stages, backbone_args=backbone_args,
    )
    plain, objects = _split_kwargs(kwargs)
    fpn = FocalNetFPN(body, fpn_channels)
    kwargs.setdefault("rpn_anchor_generator", _anchors(anchor_sizes, aspect_ratios, 1, 5))
    custom = representation_size != 1024 or mask_head_channels != 256
    if custom:
        if "box_head" not in kwargs:
            kwargs["box_head"] = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
            kwargs.setdefault("box_predictor", FastRCNNPredictor(representation_size, num_classes))
        if "mask_head" not in kwargs:
            kwargs["mask_head"] = MaskRCNNHeads(fpn_channels, [mask_head_channels] * 4, 1)
            kwargs.setdefault("mask_predictor", MaskRCNNPredictor(mask_head_channels, mask_head_channels, num_classes))
    num_classes_arg = None if "box_predictor" in kwargs else num_classes
    model = MaskRCNN(fpn, num_classes=num_classes_arg, **kwargs)
    args = _rcnn_args(
        backbone, num_classes, focal_windows, focal_levels, frozen_stages, fpn_channels, anchor_sizes, aspect_ratios,
        representation_size, backbone_args, plain,
    )
    args["mask_head_channels"] = mask_head_channels
    return _record(model, "maskrcnn_focalnet", args, objects)


def retinanet_focalnet(
    backbone: str = "focalnet_tiny_srf",
    num_classes: int = 91,
    *,
    pretrained_backbone: Optional[Union[PathLike, Mapping[str, torch.Tensor]]] = None,
    focal_windows: Optional[IntOrSeq] = 9,
    focal_levels: Optional[IntOrSeq] = None,
    frozen_stages: int = -1,
    fpn_channels: int = 256,
    anchor_sizes: Sequence[int] = DEFAULT_ANCHOR_SIZES,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    backbone_args: Optional[dict] = None,
    **kwargs: Any,
) -> RetinaNet:
    """RetinaNet with a FocalNet + FPN backbone: stages 1..3 (strides 8, 16, 32) and P6, P7 from P5, three
    anchor scales per octave, as torchvision's retinanet_resnet50_fpn_v2. Arguments as `fasterrcnn_focalnet`
    (num_classes includes a background label 0 that RetinaNet's sigmoid classifier never predicts)."""
    body = _backbone(
        backbone, out_indices=(1, 2, 3), pretrained_backbone=pretrained_backbone, focal_windows=focal_windows,
        focal_levels=focal_levels, frozen_stages=frozen_stages, backbone_args=backbone_args,
    )
    plain, objects = _split_kwargs(kwargs)
    fpn = FocalNetFPN(body, fpn_channels, extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels))
    kwargs.setdefault("anchor_generator", _anchors(anchor_sizes, aspect_ratios, 3, 5))
    model = RetinaNet(fpn, num_classes=num_classes, **kwargs)
    return _record(model, "retinanet_focalnet", dict(
        backbone=backbone, num_classes=num_classes, focal_windows=_listed(focal_windows),
        focal_levels=_listed(focal_levels), frozen_stages=frozen_stages, fpn_channels=fpn_channels,
        anchor_sizes=list(anchor_sizes), aspect_ratios=list(aspect_ratios), backbone_args=dict(backbone_args or {}), **plain,
    ), objects)


DETECTION_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "fasterrcnn_focalnet": fasterrcnn_focalnet,
    "maskrcnn_focalnet": maskrcnn_focalnet,
    "retinanet_focalnet": retinanet_focalnet,
}
