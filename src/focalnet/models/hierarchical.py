"""Hierarchical FocalNet (the paper's main family): a stride-4 stem, then four stages of blocks at strides
4, 8, 16, 32, each stage but the first opening with a stride-2 downsampling."""
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..layers import ModelArgumentError, PatchEmbed, drop_path_rates, init_weights
from .base import _FocalNetBase
from .blocks import _BlockList, _blocks

__all__ = ["FocalNetStage", "FocalNet"]

IntOrSeq = Union[int, Sequence[int]]


class FocalNetStage(_BlockList):
    """One stage of a hierarchical FocalNet: optional stride-2 downsampling, then one block per stochastic-depth
    rate in `drop_path`, built from the model's arguments `model_args` and `per_stage` (see `_blocks`)."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        downsample: bool,
        use_conv_embed: bool,
        drop_path: Sequence[float],
        model_args: Mapping[str, Any],
        **per_stage: Any,
    ) -> None:
        super().__init__()
        # made before the blocks: a seeded model gets the same initial weights as it always has
        self.downsample = (
            PatchEmbed(in_dim, dim, stride=2, overlap=use_conv_embed, norm=True) if downsample else nn.Identity()
        )
        self.blocks = _blocks(dim, drop_path, model_args, **per_stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        return self.forward_blocks(x)


def _per_stage(value: IntOrSeq, num_stages: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * num_stages
    value = tuple(int(v) for v in value)
    if len(value) != num_stages:
        raise ModelArgumentError(f"{name} has {len(value)} entries but the model has {num_stages} stages")
    return value


class FocalNet(_FocalNetBase):
    """Hierarchical FocalNet: a stride-4 stem, then stages of blocks at strides 4, 8, 16, 32 with widths
    embed_dim * (1, 2, 4, 8), a final LayerNorm, global pooling (`global_pool`) and a linear classifier."""

    family = "hierarchical"

    def __init__(
        self,
        *,
        depths: Sequence[int] = (2, 2, 6, 2),
        embed_dim: int = 96,
        focal_levels: IntOrSeq = 2,
        focal_windows: IntOrSeq = 3,
        focal_factor: int = 2,
        mlp_ratio: float = 4.0,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        patch_size: int = 4,
        use_conv_embed: bool = False,
        use_post_norm: bool = False,
        use_post_norm_in_modulation: bool = False,
        normalize_modulator: bool = False,
        layerscale_value: Optional[float] = None,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        depths = tuple(int(d) for d in depths)
        num_stages = len(depths)
        focal_levels = _per_stage(focal_levels, num_stages, "focal_levels")
        focal_windows = _per_stage(focal_windows, num_stages, "focal_windows")
        if use_conv_embed and patch_size != 4:
            raise ModelArgumentError("use_conv_embed (7x7 stride-4 stem) requires patch_size=4")
        self.arch = self._arch_from_args(locals())
        dims = [embed_dim * 2**i for i in range(num_stages)]
        self.in_chans = in_chans
        self.dims = dims

        self.stem = PatchEmbed(in_chans, dims[0], stride=patch_size, overlap=use_conv_embed, norm=True)
        dpr = drop_path_rates(drop_path_rate, depths)
        # nn.Sequential (timm's `layers` too): timm's module-walking feature wrappers flatten it into stages
        self.stages = nn.Sequential(*(
            FocalNetStage(
                dims[max(i - 1, 0)], dims[i], downsample=i > 0, use_conv_embed=use_conv_embed, drop_path=dpr[i],
                model_args=self.arch, focal_level=focal_levels[i], focal_window=focal_windows[i],
            )
            for i in range(num_stages)
        ))
        self.feature_info = [
            dict(num_chs=dims[i], reduction=patch_size * 2**i, module=f"stages.{i}") for i in range(num_stages)
        ]
        self._init_head(dims[-1], num_classes, global_pool, drop_rate)
        self.apply(init_weights)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter grouping (for `timm.optim.param_groups_layer_decay`): the stem first, then each
        stage (coarse) or each block, a stage's downsampling with the stage's first block, the final norm
        last; the head falls into the group after them (timm's rule for unmatched names)."""
        return dict(
            stem=r"^stem",
            blocks=[(r"^stages\.(\d+)", None), (r"^norm", (99999,))] if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    def _units(self) -> nn.Module:
        return self.stages

    def _set_units(self, units: nn.Module) -> None:
        self.stages = units

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, ceil(H / 32), ceil(W / 32)), after the final norm."""
        x = self._to_model_layout(x)
        x = self.stem(x)  # (B, C, H/4, W/4)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)
