"""FocalNet models: hierarchical (4 stages, strides 4/8/16/32) and isotropic (one stride-16 stage).

Paper: "Focal Modulation Networks", Yang, Li, Dai, Yuan, Gao, NeurIPS 2022 (arXiv 2203.11926).

How this differs from the authors' code (microsoft/FocalNet, classification/focalnet.py), with the same
outputs for the same weights at sizes that are multiples of 32:
- (B, C, H, W) maps in channels-last memory throughout instead of (B, L, C) tokens; the Linear layers are
  1x1 convolutions with the same weights (a reshape, done by `focalnet.checkpoints.convert`).
- Downsampling sits at the start of stage i+1 rather than at the end of stage i (as in timm), so that each
  stage's output is the map a detector or segmenter takes.
- No input resolution is fixed at construction and no H, W are written onto blocks: any input size works.
  Maps whose size is not a multiple of a stride are zero-padded on the bottom/right (no pixel is dropped).
- Nothing is written onto modules in forward (the authors' code keeps `self.gates`, `self.modulator`);
  use `focalnet.inspect.ModulationRecorder` (forward hooks) to observe them.
- Every option of the public code (post-norm, post-norm in modulation, layer scale, normalize modulator,
  conv embedding, focal factor) is a typed keyword argument.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from .layers import (
    DropPath,
    FocalModulation,
    LayerNorm2d,
    LayerScale2d,
    Mlp,
    ModelArgumentError,
    PatchEmbed,
    drop_path_rates,
    init_weights,
    trunc_normal_,
)

__all__ = [
    "FocalNetBlock",
    "FocalNetStage",
    "FocalNet",
    "FocalNetIsotropic",
    "ClassifierHead",
    "ModelArgumentError",
    "FAMILIES",
    "model_class",
    "check_arguments",
    "model_from_arch",
]

IntOrSeq = Union[int, Sequence[int]]


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
    if torch.is_grad_enabled() and not torch.jit.is_scripting():
        # non-reentrant checkpointing: same outputs and gradients, activations recomputed in backward
        if grad_checkpointing:
            return checkpoint(block, x, use_reentrant=False)
        if activation_recompute:
            return checkpoint(block, x, use_reentrant=False, context_fn=_selective_context, **_SELECTIVE_KW)
    return block(x)


def _run_blocks(
    blocks: nn.ModuleList, x: torch.Tensor, grad_checkpointing: bool, activation_recompute: bool = False
) -> torch.Tensor:
    for block in blocks:
        x = _run_block(block, x, grad_checkpointing, activation_recompute)
    return x


class FocalNetStage(nn.Module):
    """One stage of a hierarchical FocalNet: optional stride-2 downsampling, then `depth` blocks."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        downsample: bool,
        use_conv_embed: bool = False,
        drop_path: Sequence[float] = (),
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.activation_recompute = False
        self.downsample = (
            PatchEmbed(in_dim, dim, stride=2, overlap=use_conv_embed, norm=True) if downsample else nn.Identity()
        )
        drop_path = list(drop_path) or [0.0] * depth
        self.blocks = nn.ModuleList(FocalNetBlock(dim, drop_path=drop_path[i], **block_kwargs) for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        return _run_blocks(self.blocks, x, self.grad_checkpointing, self.activation_recompute)


class ClassifierHead(nn.Module):
    """Global average pooling, dropout and a linear classifier (`fc`; Identity when num_classes=0)."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        device = next(self.parameters(), torch.empty(0)).device
        fc = nn.Linear(self.in_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            trunc_normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)
        self.fc = fc.to(device)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))  # (B, C, H, W) -> (B, C)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


def _per_stage(value: IntOrSeq, num_stages: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * num_stages
    value = tuple(int(v) for v in value)
    if len(value) != num_stages:
        raise ModelArgumentError(f"{name} has {len(value)} entries but the model has {num_stages} stages")
    return value


def _take_indices(num: int, indices: Optional[Union[int, Sequence[int]]]) -> list[int]:
    """None: all; an int n: the last n; a sequence: those indices (negative counts from the end)."""
    if indices is None:
        return list(range(num))
    if isinstance(indices, int):
        if not 0 < indices <= num:
            raise ValueError(f"asked for the last {indices} of {num} feature maps")
        return list(range(num - indices, num))
    out = []
    for i in indices:
        j = i + num if i < 0 else i
        if not 0 <= j < num:
            raise IndexError(f"feature index {i} is out of range for {num} feature maps (0..{num - 1})")
        out.append(j)
    return sorted(set(out))


class _FocalNetBase(nn.Module):
    """What every FocalNet shares: input checks, head, classifier reset, checkpointing switch.

    One forward API for every model (as timm's):
      forward_features(x) -> normalized (B, C, H', W') map
      forward_head(x, pre_logits=False) -> logits, or pooled features with pre_logits=True
      forward(x) = forward_head(forward_features(x))
      forward_intermediates(x, indices, norm, stop_early, intermediates_only)
      feature_info, reset_classifier(num_classes), set_grad_checkpointing(enable)
    """

    family: str  # the value of arch["family"] that names this class (see FAMILIES)
    in_chans: int
    num_classes: int
    num_features: int
    arch: dict
    feature_info: list[dict]
    variant: Optional[str] = None  # the registered name, set by focalnet.create_model
    class_names: Optional[list] = None  # set when the weights came with class names
    # the whole evaluation preprocessing (mean, std, img_size, crop_pct, interpolation): set by create_model /
    # load_model from the file, else the variant's; read by `pretrained_cfg`, predict and the file writers
    preprocessing: Optional[dict] = None

    @property
    def pretrained_cfg(self) -> dict:
        """timm's pretrained_cfg, so that `timm.data.resolve_data_config(model=m)` and `create_transform` give
        this model's transform (a Fashion-MNIST model: 1 x 28 x 28 and its mean/std, not RGB ImageNet)."""
        from .images import IMAGENET_MEAN, IMAGENET_STD, gray_stats

        pre = dict(self.preprocessing or {})
        if len(pre.get("mean") or ()) != self.in_chans:  # no statistics for this input: ImageNet's (gray: averaged)
            mean, std = (IMAGENET_MEAN, IMAGENET_STD) if self.in_chans != 1 else gray_stats(IMAGENET_MEAN, IMAGENET_STD)
            pre.update(mean=mean, std=std)
        size = int(pre.get("img_size") or 224)
        cfg = dict(
            input_size=(self.in_chans, size, size), fixed_input_size=False, crop_mode="center",
            crop_pct=float(pre.get("crop_pct") or 0.875), interpolation=pre.get("interpolation") or "bicubic",
            mean=tuple(pre["mean"]), std=tuple(pre["std"]), num_classes=self.num_classes,
            first_conv="stem.proj", classifier="head.fc", architecture=self.variant,
        )
        if self.class_names:
            cfg["label_names"] = list(self.class_names)
        return cfg

    @property
    def default_cfg(self) -> dict:  # timm's older name, still read by some of its helpers
        return self.pretrained_cfg

    def _arch_from_args(self, args: Mapping[str, Any]) -> dict:
        """`self.arch`: the family and every constructor argument, read from `args` (the constructor's
        locals once it has normalised them) by the names in its signature, so that a new argument is
        recorded without being typed a second time. Tuples become lists, as JSON would make them."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {"family": self.family, **{k: list(args[k]) if isinstance(args[k], tuple) else args[k] for k in names}}

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing():  # shapes are fixed in a trace: checked on the example input by eager runs
            return
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"FocalNet expects a torch.Tensor of shape (B, {self.in_chans}, H, W), got {type(x).__name__}")
        if x.ndim != 4:
            hint = " (add the batch dimension with x.unsqueeze(0))" if x.ndim == 3 else ""
            raise ValueError(
                f"FocalNet expects a 4-D (B, C, H, W) image batch, got shape {tuple(x.shape)}{hint}"
            )
        if not x.is_floating_point():
            raise TypeError(
                f"FocalNet expects a floating-point image tensor, got {x.dtype}; convert it with "
                "x.float().div(255) and normalise it with the model's mean and std"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"FocalNet was built for {self.in_chans} input channels but the input has {x.shape[1]} "
                f"(shape {tuple(x.shape)}); build the model with in_chans={x.shape[1]}, or convert the images"
            )

    def _to_model_layout(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        # channels-last memory from here on: every conv keeps the layout of its input
        return x.contiguous(memory_format=torch.channels_last)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one with `num_classes` outputs (0: none)."""
        self.head.reset(num_classes)
        self.num_classes = num_classes
        self.arch["num_classes"] = num_classes

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward: same outputs and gradients, less memory."""
        for module in self.modules():
            if hasattr(module, "grad_checkpointing"):
                module.grad_checkpointing = enable

    @torch.jit.ignore
    def set_activation_recompute(self, enable: bool = True) -> None:
        """Keep only the convolutions' outputs for backward and recompute the cheap rest (LayerNorm, GELU, gated
        aggregation, modulation products) from them: same outputs and gradients, about 40% less activation
        memory for about 10% more time. Full checkpointing (`set_grad_checkpointing`) takes precedence."""
        for module in self.modules():
            if hasattr(module, "activation_recompute"):
                module.activation_recompute = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters that get no weight decay: norms, biases and layer scales (1-D tensors).

        The authors' code returns {''} here, which matches every name, so none of their parameters gets
        weight decay; the paper's recipe means the projections and convolutions should.
        """
        return {name for name, p in self.named_parameters() if p.ndim <= 1}


class FocalNet(_FocalNetBase):
    """Hierarchical FocalNet: a stride-4 stem, then stages of blocks at strides 4, 8, 16, 32 with widths
    embed_dim * (1, 2, 4, 8), a final LayerNorm, global average pooling and a linear classifier."""

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
        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.dims = dims

        self.stem = PatchEmbed(in_chans, dims[0], stride=patch_size, overlap=use_conv_embed, norm=True)
        dpr = drop_path_rates(drop_path_rate, depths)
        self.stages = nn.ModuleList(
            FocalNetStage(
                in_dim=dims[max(i - 1, 0)],
                dim=dims[i],
                depth=depths[i],
                downsample=i > 0,
                use_conv_embed=use_conv_embed,
                drop_path=dpr[i],
                focal_level=focal_levels[i],
                focal_window=focal_windows[i],
                focal_factor=focal_factor,
                mlp_ratio=mlp_ratio,
                use_post_norm=use_post_norm,
                use_post_norm_in_modulation=use_post_norm_in_modulation,
                normalize_modulator=normalize_modulator,
                layerscale_value=layerscale_value,
                proj_drop=proj_drop_rate,
            )
            for i in range(num_stages)
        )
        self.feature_info = [
            dict(num_chs=dims[i], reduction=patch_size * 2**i, module=f"stages.{i}") for i in range(num_stages)
        ]
        self.norm = LayerNorm2d(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate)
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

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_features, ceil(H / 32), ceil(W / 32)), after the final norm."""
        x = self._to_model_layout(x)
        x = self.stem(x)  # (B, C, H/4, W/4)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, Sequence[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """The output of each chosen stage (after its blocks, before the next downsampling): strides 4, 8,
        16, 32 for the default patch size. `norm` applies the final LayerNorm to the last stage's map.
        Returns (final normalized map, [maps]) or, with `intermediates_only`, the list alone."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take = _take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = self.stages[: max(take) + 1] if (stop_early or intermediates_only) else self.stages
        x = self._to_model_layout(x)
        x = self.stem(x)
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(self.norm(x) if (norm and i == last) else x)
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.stages):
            x = self.norm(x)
        return x, intermediates


class FocalNetIsotropic(_FocalNetBase):
    """Isotropic FocalNet (paper Sec. 4.1, ViT-like): a stride-16 patch embedding, then `depth` blocks
    at one resolution and width, a final LayerNorm, pooling and a classifier.

    The authors build it as a one-stage FocalNet (`layers.0.blocks.*`); here the blocks sit directly
    under `blocks.*`, and `forward_intermediates` returns the output of any chosen block.
    """

    family = "isotropic"

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
        self.num_classes = num_classes
        self.num_features = embed_dim
        self.dims = [embed_dim]
        self.grad_checkpointing = False
        self.activation_recompute = False

        self.stem = PatchEmbed(in_chans, embed_dim, stride=patch_size, overlap=False, norm=True)
        dpr = drop_path_rates(drop_path_rate, [depth])[0]
        self.blocks = nn.ModuleList(
            FocalNetBlock(
                embed_dim,
                focal_level=focal_level,
                focal_window=focal_window,
                focal_factor=focal_factor,
                mlp_ratio=mlp_ratio,
                use_post_norm=use_post_norm,
                use_post_norm_in_modulation=use_post_norm_in_modulation,
                normalize_modulator=normalize_modulator,
                layerscale_value=layerscale_value,
                proj_drop=proj_drop_rate,
                drop_path=dpr[i],
            )
            for i in range(depth)
        )
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        self.norm = LayerNorm2d(embed_dim)
        self.head = ClassifierHead(embed_dim, num_classes, drop_rate)
        self.apply(init_weights)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's parameter grouping: the stem, each block, the final norm (the head after them)."""
        return dict(stem=r"^stem", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, embed_dim, ceil(H / 16), ceil(W / 16)), after the final norm."""
        x = self._to_model_layout(x)
        x = self.stem(x)
        x = _run_blocks(self.blocks, x, self.grad_checkpointing, self.activation_recompute)
        return self.norm(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, Sequence[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """The output of each chosen block (all at stride `patch_size`); `norm` applies the final
        LayerNorm to every returned map, as for a ViT."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take = _take_indices(len(self.blocks), indices)
        blocks = self.blocks[: max(take) + 1] if (stop_early or intermediates_only) else self.blocks
        x = self._to_model_layout(x)
        x = self.stem(x)
        intermediates = []
        for i, block in enumerate(blocks):
            x = _run_block(block, x, self.grad_checkpointing, self.activation_recompute)
            if i in take:
                intermediates.append(self.norm(x) if norm else x)
        if intermediates_only:
            return intermediates
        if len(blocks) == len(self.blocks):
            x = self.norm(x)
        return x, intermediates


# ----------------------------------------------------------------------------------------------------------
# A model from its architecture (a model's `.arch`, a checkpoint's, a registry entry's)
# ----------------------------------------------------------------------------------------------------------

FAMILIES: dict[str, type[_FocalNetBase]] = {cls.family: cls for cls in (FocalNet, FocalNetIsotropic)}


def model_class(family: str) -> type[_FocalNetBase]:
    """The class of an architecture family: 'hierarchical' -> FocalNet, 'isotropic' -> FocalNetIsotropic."""
    try:
        return FAMILIES[family]
    except KeyError:
        raise ModelArgumentError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}") from None


def check_arguments(cls: type, kwargs: Mapping[str, Any]) -> None:
    """Refuse keyword arguments that `cls`'s constructor does not take, with the closest names.

    Checked before the call, so that a TypeError raised inside the constructor keeps its traceback."""
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = [k for k in kwargs if k not in params]
    if "img_size" in unknown:
        raise ModelArgumentError(
            "img_size is not an argument of FocalNet: the model works at any input size (no input "
            "resolution is fixed at construction); drop the argument"
        )
    if unknown:
        hints = [f"{k} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(k, params, n=1)) else k
                 for k in unknown]
        raise ModelArgumentError(
            f"{cls.__name__} has no argument {', '.join(hints)}; its arguments are {', '.join(params)} "
            f"(help(focalnet.{cls.__name__}) describes them)"
        )


def model_from_arch(arch: Mapping[str, Any], **overrides: Any) -> _FocalNetBase:
    """Build the model `arch` describes (its family picks the class), with `overrides` on top."""
    cls = model_class(arch["family"])
    kwargs = {**{k: v for k, v in arch.items() if k != "family"}, **overrides}
    check_arguments(cls, kwargs)
    return cls(**kwargs)
