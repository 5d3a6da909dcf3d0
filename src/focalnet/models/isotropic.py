"""Isotropic FocalNet (paper Sec. 4.1, ViT-like): one stride-16 patch embedding, then blocks at one
resolution and width."""
from typing import Optional

import torch
import torch.nn as nn

from ..layers import PatchEmbed, drop_path_rates, init_weights
from .base import _FocalNetBase
from .blocks import _BlockList, _blocks, _run_block

__all__ = ["FocalNetIsotropic"]


class FocalNetIsotropic(_FocalNetBase, _BlockList):
    """Isotropic FocalNet (paper Sec. 4.1, ViT-like): a stride-16 patch embedding, then `depth` blocks
    at one resolution and width, a final LayerNorm, pooling and a classifier.

    The authors build it as a one-stage FocalNet (`layers.0.blocks.*`); here the blocks sit directly
    under `blocks.*`, and `forward_intermediates` returns the output of any chosen block.
    """

    family = "isotropic"
    _NORM_EVERY_INTERMEDIATE = True

    def __init__(
        self,
        *,
        depth: int = 12,
        embed_dim: int = 192,
        focal_level: int = 3,
        focal_window: int = 3,
        focal_factor: int = 2,
        mlp_ratio: float = 4.0,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        patch_size: int = 16,
        use_post_norm: bool = False,
        use_post_norm_in_modulation: bool = False,
        normalize_modulator: bool = False,
        layerscale_value: Optional[float] = None,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        self.arch = self._arch_from_args(locals())
        self.in_chans = in_chans
        self.dims = [embed_dim]

        self.stem = PatchEmbed(in_chans, embed_dim, stride=patch_size, overlap=False, norm=True)
        dpr = drop_path_rates(drop_path_rate, [depth])[0]
        self.blocks = _blocks(embed_dim, dpr, self.arch, focal_level=focal_level, focal_window=focal_window)
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        self._init_head(embed_dim, num_classes, global_pool, drop_rate)
        self.apply(init_weights)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter grouping: the stem, each block, the final norm (the head after them)."""
        return dict(stem=r"^stem", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    def _units(self) -> nn.Module:
        return self.blocks

    def _set_units(self, units: nn.Module) -> None:
        self.blocks = units

    def _run_unit(self, unit: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return _run_block(unit, x, self.grad_checkpointing, self.activation_recompute)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, embed_dim, ceil(H / 16), ceil(W / 16)), after the final norm."""
        x = self._to_model_layout(x)
        x = self.stem(x)
        x = self.forward_blocks(x)
        return self.norm(x)
