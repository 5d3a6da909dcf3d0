"""UperNet (pyramid pooling + FPN fusion, Xiao et al. 2018) on a FocalNet backbone, as in the paper's ADE20K runs.

The decoder is segmentation_models_pytorch's `UPerNetDecoder` (PSP on the stride-32 map, top-down FPN,
fusion of all levels at stride 4), used as a plain module on our backbone's four maps. Two adjustments
make it fit without touching its code:
- it expects an encoder's six maps (strides 1, 2, 4, ..., 32) and skips the first two: we hand it two empty
  placeholders in front;
- it LayerNorms each map itself (`feature_norms`); our backbone already has the per-output LayerNorms of the
  authors' checkpoints (`norm{i}`), so the decoder's are replaced by identities rather than stacked on top.
As in mmseg's UPerHead: dropout 0.1 and a 1x1 classifier on the fused map; an optional auxiliary FCN head on
stage 2 (loss weight 0.4 in the authors' config). Outputs follow torchvision's segmentation models: a dict
{'out': (B, K, H, W) logits at the input size, 'aux': ... when the auxiliary head exists}.
Images are float (B, 3, H, W) in [0, 1] of any size; the model normalises them with `image_mean`/`image_std`.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..images import IMAGENET_MEAN, IMAGENET_STD
from .backbone import FocalNetBackbone

__all__ = ["FocalNetUperNet", "upernet_focalnet", "SEGMENTATION_BUILDERS"]

PathLike = Union[str, os.PathLike]
IntOrSeq = Union[int, Sequence[int]]


def _fcn_head(in_channels: int, channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """mmseg's FCNHead with one conv: 3x3 conv + BN + ReLU, dropout, 1x1 classifier."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Dropout2d(dropout),
        nn.Conv2d(channels, num_classes, 1),
    )


class FocalNetUperNet(nn.Module):
    """FocalNet backbone -> UperNet decoder -> per-pixel logits at the input resolution."""

    def __init__(
        self,
        backbone: FocalNetBackbone,
        num_classes: int,
        *,
        decoder_channels: int = 512,
        dropout: float = 0.1,
        aux_channels: Optional[int] = 256,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder

        if len(backbone.out_indices) < 2 or backbone.strides[0] != 4:
            raise ValueError(
                "UperNet fuses every level at stride 4: build the backbone with out_indices starting at 0 "
                f"(got {backbone.out_indices})"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.decoder = UPerNetDecoder(
            encoder_channels=[0, 0, *backbone.out_channels],
            encoder_depth=len(backbone.out_channels) + 1,
            decoder_channels=decoder_channels,
        )
        self.decoder.feature_norms = nn.ModuleList(nn.Identity() for _ in backbone.out_channels)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(decoder_channels, num_classes, 1))
        # the auxiliary head reads the stride-16 map (stage 2), as in the authors' UperNet configs
        self.aux_index = backbone.out_indices.index(2) if (aux_channels and 2 in backbone.out_indices) else None
        self.aux_classifier = (
            _fcn_head(backbone.out_channels[self.aux_index], aux_channels, num_classes, dropout)
            if self.aux_index is not None
            else None
        )
        self.register_buffer("image_mean", torch.tensor(image_mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def _to_input_size(self, logits: torch.Tensor, stride: int, size: tuple[int, int]) -> torch.Tensor:
        # a map at stride s covers s * its size input pixels (the backbone pads bottom/right): upsample by s,
        # then crop the padding, so that pixel centres line up for every input size
        h, w = logits.shape[-2:]
        logits = F.interpolate(logits, size=(h * stride, w * stride), mode="bilinear", align_corners=False)
        return logits[..., : size[0], : size[1]]

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """(B, 3, H, W) in [0, 1] -> {'out': (B, num_classes, H, W) logits, 'aux': (B, num_classes, H, W)}."""
        size = (int(images.shape[-2]), int(images.shape[-1]))
        feats = self.backbone((images - self.image_mean) / self.image_std)
        fused = self.decoder([None, None, *feats])  # (B, decoder_channels, ceil(H / 4), ceil(W / 4))
        out = OrderedDict(out=self._to_input_size(self.classifier(fused), self.backbone.strides[0], size))
        if self.aux_classifier is not None:
            aux = self.aux_classifier(feats[self.aux_index])
            out["aux"] = self._to_input_size(aux, self.backbone.strides[self.aux_index], size)
        return out


def upernet_focalnet(
    backbone: str = "focalnet_tiny_srf",
    num_classes: int = 150,
    *,
    pretrained_backbone: Optional[Union[PathLike, Mapping[str, torch.Tensor]]] = None,
    focal_windows: Optional[IntOrSeq] = 9,
    focal_levels: Optional[IntOrSeq] = None,
    frozen_stages: int = -1,
    decoder_channels: int = 512,
    aux_channels: Optional[int] = 256,
    dropout: float = 0.1,
    image_mean: Sequence[float] = IMAGENET_MEAN,
    image_std: Sequence[float] = IMAGENET_STD,
    backbone_args: Optional[dict] = None,
) -> FocalNetUperNet:
    """UperNet on FocalNet, the paper's ADE20K setting by default (focal window 9, 512 decoder channels,
    auxiliary FCN head of 256 channels). num_classes counts every label of the class map (background
    included, if the data has one). pretrained_backbone: any checkpoint `focalnet.dense.loading` reads.
    backbone_args: other FocalNet arguments (embed_dim, depths, drop_path_rate, ...)."""
    body = FocalNetBackbone(
        backbone,
        out_indices=(0, 1, 2, 3),
        out_norms=True,
        frozen_stages=frozen_stages,
        focal_windows=focal_windows,
        focal_levels=focal_levels,
        pretrained=pretrained_backbone,
        **(backbone_args or {}),
    )
    model = FocalNetUperNet(
        body, num_classes, decoder_channels=decoder_channels, dropout=dropout, aux_channels=aux_channels,
        image_mean=image_mean, image_std=image_std,
    )
    model.dense_config = dict(
        task="segmentation",
        builder="upernet_focalnet",
        builder_args=dict(
            backbone=backbone, num_classes=num_classes, focal_windows=_plain(focal_windows),
            focal_levels=_plain(focal_levels), frozen_stages=frozen_stages, decoder_channels=decoder_channels,
            aux_channels=aux_channels, dropout=dropout, image_mean=list(image_mean), image_std=list(image_std),
            backbone_args=dict(backbone_args or {}),
        ),
        unrecorded=[],
    )
    return model


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


SEGMENTATION_BUILDERS = {"upernet_focalnet": upernet_focalnet}
