"""The implementations `focalnet bench` compares, one registration each.

A row kind is an `Implementation`: a name, a builder returning (module, forward function giving logits) with
random weights, and what the benchmark must know about it (compile without graph breaks? inference only? FLOPs
counted on the plain model because its kernels are invisible to the counter?). Adding one is one
`register_implementation(...)` call in the list at the bottom of this file: `--impl NAME`, `--compare`, the
compiled variant `NAME-compiled`, the timing, the memory measurement and the table then take it. The forward
function receives the float32 batch; a row that computes in another dtype converts inside it.

Every builder takes the input channels and the classes; the rows built by our `create_model` (`takes_arch`) also
take architecture overrides (`focalnet bench --arch embed_dim=32 depths=[1,2,2] ...`: the model a training run
resized), which no peer's model can follow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn

from ...errors import FocalNetError

__all__ = [
    "BenchError",
    "Implementation",
    "register_implementation",
    "get_implementation",
    "IMPLEMENTATIONS",
    "REFERENCE",
    "COMPILED_SUFFIX",
    "split_variant",
    "trains",
    "build_implementation",
    "arch_takers",
    "refuse_fixed_architectures",
]


class BenchError(FocalNetError, ValueError):
    """A benchmark that cannot be run as asked."""


Forward = Callable[[torch.Tensor], torch.Tensor]
# builder(variant=..., img_size=..., num_classes=..., in_chans=...[, arch=...: takes_arch]) -> (module, forward)
Builder = Callable[..., tuple[nn.Module, Forward]]

# "ours-compiled", "timm-compiled", ...: the implementation through torch.compile (inductor)
COMPILED_SUFFIX = "-compiled"
# timm's FocalNet: the reference of every ratio in the table
REFERENCE = "timm"


@dataclass(frozen=True)
class Implementation:
    """One kind of row of the benchmark."""

    name: str
    build: Builder = field(repr=False)
    fullgraph: bool = False  # torch.compile with fullgraph=True: our models compile without a graph break
    inference_only: str = ""  # why it cannot train (empty: it can); training modes skip it
    plain_flops: bool = False  # FLOPs counted on the variant's plain model (same function, kernels the counter sees)
    number_format: str = ""  # what the row computes in whatever --precision says ('bf16', 'int8'): its note says so
    takes_arch: bool = False  # built by our create_model: architecture overrides (--arch) resize it


_REGISTRY: dict[str, Implementation] = {}


def register_implementation(impl: Implementation) -> Implementation:
    """Add a row kind; a name registered twice is a BenchError (nothing is silently replaced)."""
    if impl.name in _REGISTRY:
        raise BenchError(f"implementation {impl.name!r} is registered already")
    if impl.name.endswith(COMPILED_SUFFIX):
        raise BenchError(f"{impl.name!r}: names ending in {COMPILED_SUFFIX!r} are the compiled variants")
    _REGISTRY[impl.name] = impl
    return impl


def get_implementation(name: str) -> Implementation:
    if name not in _REGISTRY:
        raise BenchError(f"unknown implementation {name!r}; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def split_variant(name: str) -> tuple[str, bool]:
    """'timm-compiled' -> ('timm', True), 'ours' -> ('ours', False); unknown names are a BenchError."""
    base, compiled = (name[: -len(COMPILED_SUFFIX)], True) if name.endswith(COMPILED_SUFFIX) else (name, False)
    if base not in _REGISTRY:
        known = ", ".join(_REGISTRY)
        raise BenchError(f"unknown implementation {name!r}; choose from {known}, each also as NAME{COMPILED_SUFFIX}")
    return base, compiled


def trains(name: str) -> bool:
    """Whether the variant `name` ('ours', 'ours-fused-compiled', ...) can run training steps."""
    return not get_implementation(split_variant(name)[0]).inference_only


def arch_takers() -> list[str]:
    """The implementations that architecture overrides (--arch) resize, in registration order."""
    return [name for name, impl in _REGISTRY.items() if impl.takes_arch]


def refuse_fixed_architectures(variants: Sequence[str]) -> None:
    """A BenchError naming those of `variants` ('timm', 'hf-compiled', ...) that --arch cannot resize, and the
    implementations it can."""
    fixed = [v for v in variants if not get_implementation(split_variant(v)[0]).takes_arch]
    if fixed:
        raise BenchError(f"{', '.join(fixed)} cannot take --arch (the model is built by another library); the "
                         f"implementations that can: {', '.join(arch_takers())}, each also as NAME{COMPILED_SUFFIX}")


def build_implementation(
    impl: str, *, variant: str, img_size: int = 224, num_classes: int = 1000, in_chans: int = 3,
    arch: Optional[dict] = None, training: bool = False,
) -> tuple[nn.Module, Forward]:
    """(module, forward function returning logits) for one implementation, random weights; `arch`: architecture
    overrides of `variant` (only the implementations that take them: `arch_takers`).

    Raises BenchError with the reason when `impl` cannot run this variant (e.g. timm has no isotropic FocalNet),
    cannot train, or cannot take `arch`."""
    entry = get_implementation(impl)
    if training and entry.inference_only:
        raise BenchError(f"{impl} is inference only ({entry.inference_only})")
    if arch:
        refuse_fixed_architectures([impl])
    size = dict(variant=variant, img_size=img_size, num_classes=num_classes, in_chans=in_chans)
    if entry.takes_arch:
        size["arch"] = dict(arch or {})
    return entry.build(**size)


# ----------------------------------------------------------------------------------------------------------
# the builders
# ----------------------------------------------------------------------------------------------------------
def _ours(*, variant: str, img_size: int, num_classes: int, in_chans: int = 3,
          arch: Optional[dict] = None) -> tuple[nn.Module, Forward]:
    from ...factory import create_model

    model = create_model(variant, num_classes=num_classes, in_chans=in_chans, **(arch or {}))
    return model, model


def _ours_fused(**size: Any) -> tuple[nn.Module, Forward]:  # size: _ours's arguments
    from ..fused import fuse_for_inference

    model, _ = _ours(**size)
    model = fuse_for_inference(model.eval())
    return model, model


def _timm_focalnet(*, variant: str, img_size: int, num_classes: int, in_chans: int) -> tuple[nn.Module, Forward]:
    import timm

    if variant not in timm.list_models("focalnet*"):
        raise BenchError(f"timm has no {variant}")
    model = timm.create_model(variant, num_classes=num_classes, in_chans=in_chans)
    return model, model


def _hf(*, variant: str, img_size: int, num_classes: int, in_chans: int) -> tuple[nn.Module, Forward]:
    import transformers

    from ...checkpoints import hf_config
    from ...registry import get_spec

    arch = {**get_spec(variant).arch, "num_classes": num_classes, "in_chans": in_chans}
    cfg = {k: v for k, v in hf_config(arch).items() if k not in ("model_type", "architectures")}
    model = transformers.FocalNetForImageClassification(transformers.FocalNetConfig(**cfg))
    return model, lambda x: model(pixel_values=x).logits


def _timm_peer(name: str, *, sized: bool = False) -> Builder:
    """A timm model of another family at the benchmark's size (`sized`: its resolution is fixed at construction)."""

    def build(*, variant: str, img_size: int, num_classes: int, in_chans: int) -> tuple[nn.Module, Forward]:
        import timm

        sizes = dict(img_size=img_size) if sized else {}
        model = timm.create_model(name, num_classes=num_classes, in_chans=in_chans, **sizes)
        return model, model

    return build


# ----------------------------------------------------------------------------------------------------------
# the registrations, in the order --compare runs them
# ----------------------------------------------------------------------------------------------------------
register_implementation(Implementation("ours", _ours, fullgraph=True, takes_arch=True))
register_implementation(Implementation(
    "ours-fused", _ours_fused, fullgraph=True, plain_flops=True, takes_arch=True,
    inference_only="fuse_for_inference folds dropout and drop path away",
))
register_implementation(Implementation(REFERENCE, _timm_focalnet))
register_implementation(Implementation("hf", _hf))
register_implementation(Implementation("swin_t", _timm_peer("swin_tiny_patch4_window7_224", sized=True)))
register_implementation(Implementation("convnext_t", _timm_peer("convnext_tiny")))

# what --compare runs, in this order
IMPLEMENTATIONS = tuple(_REGISTRY)


# reduced precision (docs/speed.md, "bf16 and int8 on the CPU"): asked for by name (--impl), not run by --compare,
# whose rows every CPU can run; ours-int8 is compiled by construction (its int8 kernels exist only through inductor)
def _ours_fused_bf16(**size: Any) -> tuple[nn.Module, Forward]:
    from ..fused import NativePrecisionError, fuse_for_inference

    model, _ = _ours(**size)
    try:
        model = fuse_for_inference(model.eval(), dtype=torch.bfloat16)
    except NativePrecisionError as e:  # a CPU that would emulate bf16: skipped with the reason
        raise BenchError(str(e)) from None
    return model, model


def _ours_int8(*, img_size: int, **size: Any) -> tuple[nn.Module, Forward]:
    from ..quantize import QuantizationError, quantize_model

    model, _ = _ours(img_size=img_size, **size)
    # the speed does not depend on the scales: random images calibrate the random weights
    images = torch.randn(32, model.in_chans, img_size, img_size, generator=torch.Generator().manual_seed(0))
    try:
        q = quantize_model(model.eval(), images.split(16), source="random images (speed only)")
    except QuantizationError as e:  # torchao missing: skipped with the reason
        raise BenchError(str(e)) from None
    return q, q.compile()


register_implementation(Implementation(
    "ours-fused-bf16", _ours_fused_bf16, fullgraph=True, plain_flops=True, number_format="bf16", takes_arch=True,
    inference_only="fuse_for_inference folds dropout and drop path away",
))
register_implementation(Implementation(
    "ours-int8", _ours_int8, plain_flops=True, number_format="int8", takes_arch=True,
    inference_only="post-training quantization is for inference",
))

