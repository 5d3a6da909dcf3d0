"""The classifier head every FocalNet ends with: timm's global pooling names, dropout, a linear layer."""
from typing import Optional

import torch
import torch.nn as nn

from ..layers import ModelArgumentError, trunc_normal_

__all__ = ["POOL_TYPES", "ClassifierHead"]


# timm's global pooling names (timm.layers.SelectAdaptivePool2d); '' keeps the (B, C, H, W) map
POOL_TYPES = ("avg", "max", "avgmax", "catavgmax", "")


def _check_pool(pool_type: str, num_classes: int) -> None:
    if pool_type not in POOL_TYPES:
        raise ModelArgumentError(f"global_pool must be one of {', '.join(map(repr, POOL_TYPES))}, got {pool_type!r}")
    if pool_type == "" and num_classes > 0:
        raise ModelArgumentError(
            "global_pool='' keeps the (B, C, H, W) map, which a linear classifier cannot take: pass num_classes=0 "
            "too (as in timm), or another global_pool"
        )


class ClassifierHead(nn.Module):
    """Global pooling (`pool_type`, timm's names: 'avg' as the paper, 'max', 'avgmax', 'catavgmax', or '' for
    none), dropout and a linear classifier (`fc`; Identity when num_classes=0).

    `num_features` is the width of what the classifier reads (twice `in_features` for 'catavgmax')."""

    def __init__(self, in_features: int, num_classes: int, pool_type: str = "avg", drop_rate: float = 0.0) -> None:
        super().__init__()
        _check_pool(pool_type, num_classes)
        self.in_features = in_features
        self.pool_type = pool_type
        self.num_features = in_features * (2 if pool_type == "catavgmax" else 1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int, pool_type: Optional[str] = None, in_features: Optional[int] = None,
              device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> None:
        """A freshly initialised classifier for `num_classes` (0: none), on `device` in `dtype` (the model's)
        and in this head's train / eval mode; `pool_type` and `in_features` change when given."""
        pool_type = self.pool_type if pool_type is None else pool_type
        _check_pool(pool_type, num_classes)
        self.pool_type = pool_type
        self.in_features = self.in_features if in_features is None else in_features
        self.num_features = self.in_features * (2 if pool_type == "catavgmax" else 1)
        if num_classes > 0:
            fc = nn.Linear(self.num_features, num_classes, device=device, dtype=dtype)
            trunc_normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)
        else:
            fc = nn.Identity()
        self.fc = fc.train(self.training)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C) (B, 2C for 'catavgmax'); '' returns the map as it is."""
        if self.pool_type == "avg":
            return x.mean((2, 3))
        if self.pool_type == "max":
            return x.amax((2, 3))
        if self.pool_type == "avgmax":
            return 0.5 * (x.mean((2, 3)) + x.amax((2, 3)))
        if self.pool_type == "catavgmax":
            return torch.cat((x.mean((2, 3)), x.amax((2, 3))), 1)
        return x

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.pool(x))
        return x if pre_logits else self.fc(x)
