"""The FocalNet block and what runs a list of them: the residual block (focal modulation + MLP, pre- or
post-norm), the builder that makes one block per stochastic-depth rate from a model's arguments, and the
switches for full or selective activation recomputation (`_BlockList`), shared by a hierarchical stage
and the isotropic model."""
import inspect
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from ..layers import DropPath, FocalModulation, LayerNorm2d, LayerScale2d, Mlp

__all__ = ["FocalNetBlock"]


class FocalNetBlock(nn.Module):
    """x = x + DropPath(gamma_1 * FocalModulation(LN(x))); x = x + DropPath(gamma_2 * MLP(LN(x))).

    With `use_post_norm` the LayerNorms move after the branches (the authors' `use_postln`, used by
    the large+ and isotropic-base models): x = x + gamma_1 * LN(FM(x)); x = x + gamma_2 * LN(MLP(x)).
    The norms keep the names norm1/norm2 in both placements, as in the authors' checkpoints.
    """

    def __init__(
        self,
        dim: int,
        focal_level: int,
        focal_window: int,
        focal_factor: int = 2,
        mlp_ratio: float = 4.0,
        use_post_norm: bool = False,
        use_post_norm_in_modulation: bool = False,
        normalize_modulator: bool = False,
        layerscale_value: Optional[float] = None,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.use_post_norm = use_post_norm
        self.norm1 = LayerNorm2d(dim)
        self.modulation = FocalModulation(
            dim,
            focal_level=focal_level,
            focal_window=focal_window,
            focal_factor=focal_factor,
            use_post_norm_in_modulation=use_post_norm_in_modulation,
            normalize_modulator=normalize_modulator,
            proj_drop=proj_drop,
        )
        self.ls1 = LayerScale2d(dim, layerscale_value) if layerscale_value is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm2d(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.ls2 = LayerScale2d(dim, layerscale_value) if layerscale_value is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_post_norm:
            x = x + self.drop_path1(self.ls1(self.norm1(self.modulation(x))))
            x = x + self.drop_path2(self.ls2(self.norm2(self.mlp(x))))
        else:
            x = x + self.drop_path1(self.ls1(self.modulation(self.norm1(x))))
            x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


# the constructor arguments of a model that every block takes as they are (the focal level and window are per
# stage, the dropout rate is renamed): read from the model's arguments by both families
_SHARED_BLOCK_ARGS = (
    "focal_factor", "mlp_ratio", "use_post_norm", "use_post_norm_in_modulation", "normalize_modulator",
    "layerscale_value",
)


def _blocks(dim: int, drop_path: Sequence[float], model_args: Mapping[str, Any], **per_stage: Any) -> nn.Sequential:
    """One FocalNetBlock per stochastic-depth rate in `drop_path`, built from the model's constructor arguments
    `model_args` (its `arch`: `_SHARED_BLOCK_ARGS` and proj_drop_rate) and `per_stage` (focal_level, focal_window).

    An nn.Sequential, run block by block by its owner (`_BlockList.forward_blocks`), so that timm's feature
    wrappers, which flatten Sequential containers, reach each block of an isotropic model."""
    shared = {k: model_args[k] for k in _SHARED_BLOCK_ARGS}
    return nn.Sequential(*(
        FocalNetBlock(dim, drop_path=rate, proj_drop=model_args["proj_drop_rate"], **shared, **per_stage)
        for rate in drop_path
    ))


# Ops whose outputs selective recomputation keeps: the convolutions (the FLOPs). Everything else in a block
# (LayerNorm, GELU, the gated products and sums, q * h, residual adds) is recomputed in backward from them.
_SAVED_OPS = frozenset({torch.ops.aten.convolution.default, torch.ops.aten.mean.dim})


def _recompute_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_context():
    return create_selective_checkpoint_contexts(_recompute_policy)


# respect_saved_tensors_hooks (newer torch; 2.6 lacks it): what the policy keeps goes through saved-tensor hooks (save_on_cpu,
# memory accounting) like any other saved tensor. Older torch has no such argument and would hand it to the block.
_SELECTIVE_KW = (dict(respect_saved_tensors_hooks=True)
                 if "respect_saved_tensors_hooks" in inspect.signature(checkpoint).parameters else {})


def _run_block(block: nn.Module, x: torch.Tensor, grad_checkpointing: bool, activation_recompute: bool) -> torch.Tensor:
    if torch.is_grad_enabled():
        # non-reentrant checkpointing: same outputs and gradients, activations recomputed in backward
        if grad_checkpointing:
            return checkpoint(block, x, use_reentrant=False)
        if activation_recompute:
            return checkpoint(block, x, use_reentrant=False, context_fn=_selective_context, **_SELECTIVE_KW)
    return block(x)


class _BlockList(nn.Module):
    """What owns a list of blocks (`self.blocks`): a hierarchical stage, the isotropic model. Runs them with
    the checkpointing switches `set_grad_checkpointing` / `set_activation_recompute` flip."""

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.activation_recompute = False

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if not torch.jit.is_scripting():  # TorchScript cannot checkpoint: a scripted model runs the blocks
                x = _run_block(block, x, self.grad_checkpointing, self.activation_recompute)
            else:
                x = block(x)
        return x
