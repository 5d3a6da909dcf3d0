"""What every FocalNet shares, whatever its family: the input checks, the head and its reset, timm's
forward API and attributes (`forward_intermediates`, `prune_intermediate_layers`, `pretrained_cfg`), the
checkpointing switches and weight-decay groups. A family subclasses `_FocalNetBase` (see its docstring)."""
import inspect
import math
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..images import IMAGENET_MEAN, IMAGENET_STD, PreprocessingError, gray_stats
from ..layers import LayerNorm2d
from ..preprocess import data_config, resolve
from .head import ClassifierHead


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


@torch.fx.wrap  # kept as one call in an fx graph: the traced model checks its input as eager does
def _check_input(x: torch.Tensor, in_chans: int) -> None:
    if torch.jit.is_tracing():  # shapes are fixed in a trace: checked on the example input by eager runs
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"FocalNet expects a torch.Tensor of shape (B, {in_chans}, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        hint = " (add the batch dimension with x.unsqueeze(0))" if x.ndim == 3 else ""
        raise ValueError(f"FocalNet expects a 4-D (B, C, H, W) image batch, got shape {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise TypeError(
            f"FocalNet expects a floating-point image tensor, got {x.dtype}; convert it with "
            "x.float().div(255) and normalise it with the model's mean and std"
        )
    if x.shape[1] != in_chans:
        raise ValueError(
            f"FocalNet was built for {in_chans} input channels but the input has {x.shape[1]} "
            f"(shape {tuple(x.shape)}); build the model with in_chans={x.shape[1]}, or convert the images"
        )


class _FocalNetBase(nn.Module):
    """What every FocalNet shares: input checks, head, classifier reset, intermediates, pruning, checkpointing.

    One forward API for every model (timm's):
      forward_features(x) -> normalized (B, C, H', W') map
      forward_head(x, pre_logits=False) -> logits, or pooled features with pre_logits=True
      forward(x) = forward_head(forward_features(x))
      forward_intermediates(x, indices, norm, stop_early, output_fmt, intermediates_only)
      prune_intermediate_layers(indices, prune_norm, prune_head)
      feature_info, reset_classifier(num_classes, global_pool), set_grad_checkpointing(enable)
    and timm's attributes: num_classes, num_features (the unpooled width), head_hidden_size (the pooled width the
    classifier reads), pretrained_cfg / default_cfg.

    Attributes set by every model: family (the value of arch["family"] that names the class, see FAMILIES),
    in_chans, num_classes, num_features, arch (every constructor argument), feature_info; by focalnet.create_model
    / load_model: variant (the registered name), class_names (when the weights came with them), preprocessing
    (the whole evaluation preprocessing record, read by `pretrained_cfg`, predict and the file writers).

    Subclasses give `_units()` (what forward_intermediates counts: the stages, or the blocks) and
    `_NORM_EVERY_INTERMEDIATE` (whether `norm=True` normalizes every returned map or the last stage's only).
    """

    # computed on demand from Python values, which TorchScript has no type for
    __jit_unused_properties__ = ["pretrained_cfg", "default_cfg", "head_hidden_size"]
    _NORM_EVERY_INTERMEDIATE = False
    variant = None
    class_names = None
    preprocessing = None

    def _init_head(self, num_features: int, num_classes: int, global_pool: str, drop_rate: float) -> None:
        self.num_classes = num_classes
        self.num_features = num_features
        self.norm = LayerNorm2d(num_features)
        self.head = ClassifierHead(num_features, num_classes, global_pool, drop_rate)

    @property
    def head_hidden_size(self) -> int:
        """The width of the pre-logits features (`forward_head(x, pre_logits=True)`), which the classifier reads."""
        return self.head.num_features

    @property
    def pretrained_cfg(self) -> dict:
        """timm's pretrained_cfg, so that `timm.data.resolve_data_config(model=m)` and `create_transform` give
        this model's transform (a Fashion-MNIST model: 1 x 28 x 28 and its mean/std, not RGB ImageNet), and timm's
        checks find the classifier, first convolution and the final map's size (`pool_size`)."""
        try:
            pre = resolve(self.in_chans, saved=self.preprocessing)
        except PreprocessingError:  # no statistics for this many channels: ImageNet's, averaged, on each channel
            pre = resolve(self.in_chans, saved=dict(zip(("mean", "std"), gray_stats(IMAGENET_MEAN, IMAGENET_STD))))
        stride = self.feature_info[len(self._units()) - 1]["reduction"]  # of the final map, also once pruned
        cfg = dict(
            data_config(pre), fixed_input_size=False, pool_size=(math.ceil(pre.img_size / stride),) * 2,
            num_classes=self.num_classes, global_pool=self.head.pool_type, first_conv="stem.proj",
            classifier="head.fc", architecture=self.variant,
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

    def _to_model_layout(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # TorchScript checks the type itself; the rest is Python
            _check_input(x, self.in_chans)
        # channels-last memory from here on: every conv keeps the layout of its input
        return x.contiguous(memory_format=torch.channels_last)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _units(self) -> nn.Module:
        raise NotImplementedError

    def _set_units(self, units: nn.Module) -> None:
        raise NotImplementedError

    def _run_unit(self, unit: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return unit(x)

    @torch.jit.ignore
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, Sequence[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """The output of each chosen stage (hierarchical: after its blocks, before the next downsampling, strides
        4, 8, 16, 32 for the default patch size) or block (isotropic, all at stride `patch_size`). `norm` applies
        the final LayerNorm to the last stage's map (isotropic: to every map, as for a ViT). `indices`: None for
        all, n for the last n, or a list (negative counts from the end). Returns (final normalized map, [maps]) or,
        with `intermediates_only`, the list alone; `stop_early` (implied by `intermediates_only`) runs no further
        than the last map asked for."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        units = self._units()
        take = _take_indices(len(units), indices)
        last = len(units) - 1
        run = units[: max(take) + 1] if (stop_early or intermediates_only) else units
        x = self.stem(self._to_model_layout(x))
        intermediates = []
        for i, unit in enumerate(run):
            x = self._run_unit(unit, x)
            if i in take:
                intermediates.append(self.norm(x) if norm and (self._NORM_EVERY_INTERMEDIATE or i == last) else x)
        if intermediates_only:
            return intermediates
        if len(run) == len(units):
            x = self.norm(x)
        return x, intermediates

    @torch.jit.ignore
    def prune_intermediate_layers(
        self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop what the intermediates `indices` (as in forward_intermediates) do not need, for a detector or
        segmenter: the stages (blocks) after the last one, and with them the final norm and the classifier;
        `prune_norm` drops the final norm, `prune_head` the classifier and pooling, anyway. Returns the indices.
        `arch` keeps describing the whole model (what the weights were made for)."""
        units = self._units()
        take = _take_indices(len(units), indices)
        keep = max(take) + 1
        prune_end = keep < len(units)
        if prune_norm or prune_end:
            self.norm = nn.Identity()  # sized for, and applied to, the last stage's map only
        self._set_units(units[:keep])
        self.feature_info = self.feature_info[:keep]
        if prune_end:
            self.num_features = self.feature_info[-1]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    @torch.jit.ignore
    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier by a freshly initialised one with `num_classes` outputs (0: none), on the
        model's device, in its dtype and train / eval mode; `global_pool` ('avg', 'max', 'avgmax', 'catavgmax',
        or '' for none, which needs num_classes=0) changes the pooling, None keeps it."""
        ref = self.stem.proj.weight
        self.head.reset(num_classes, global_pool, in_features=self.num_features, device=ref.device, dtype=ref.dtype)
        self.num_classes = num_classes
        self.arch["num_classes"] = num_classes
        self.arch["global_pool"] = self.head.pool_type

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
