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

Both families hold timm's model contract (docs/timm.md): the forward API, `global_pool`, `head_hidden_size`,
`reset_classifier(n, global_pool)`, `prune_intermediate_layers`, `pretrained_cfg`; `torch.jit.script` and
`torch.fx.symbolic_trace` give eager's outputs.

The modules, read bottom up: `blocks` (the block and the checkpointing switches), `head` (pooling and
classifier), `base` (what both families share: the forward API, timm's attributes), `hierarchical` and
`isotropic` (the two families); this package builds a model from its architecture (`model_from_arch`).
"""
import difflib
import inspect
from typing import Any, Callable, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..layers import ModelArgumentError
from .base import _FocalNetBase
from .blocks import FocalNetBlock
from .head import POOL_TYPES, ClassifierHead
from .hierarchical import FocalNet, FocalNetStage
from .isotropic import FocalNetIsotropic

__all__ = [
    "FocalNetBlock",
    "FocalNetStage",
    "FocalNet",
    "FocalNetIsotropic",
    "ClassifierHead",
    "ModelArgumentError",
    "POOL_TYPES",
    "FAMILIES",
    "model_class",
    "check_arguments",
    "model_from_arch",
    "placed",
]

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


def model_from_arch(
    arch: Mapping[str, Any],
    *,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
    **overrides: Any,
) -> _FocalNetBase:
    """Build the model `arch` describes (its family picks the class), with `overrides` on top, on `device`
    in `dtype` (see `placed`)."""
    cls = model_class(arch["family"])
    kwargs = {**{k: v for k, v in arch.items() if k != "family"}, **overrides}
    check_arguments(cls, kwargs)
    return placed(lambda: cls(**kwargs), device=device, dtype=dtype)


def placed(
    build: Callable[[], nn.Module],
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
) -> nn.Module:
    """`build()` with its parameters made on `device` (on the meta device none is allocated: timm's way of
    sizing a model), then cast to the floating-point `dtype`; None keeps PyTorch's defaults."""
    if device is None:
        model = build()
    else:
        with torch.device(device):
            model = build()
    if dtype is not None:
        if not dtype.is_floating_point:
            raise ModelArgumentError(f"dtype must be a floating-point type (torch.float32, torch.bfloat16, ...), "
                                     f"got {dtype}")
        model = model.to(dtype=dtype)
    return model
