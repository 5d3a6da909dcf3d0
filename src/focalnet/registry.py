"""Names -> whole architectures: every released FocalNet, with its published numbers and weights.

Each entry point spells out its complete architecture (depths, width, focal levels AND windows, every
flag). The authors' entry functions leave the focal levels to a YAML file, so their
`focalnet_tiny_lrf()` alone builds an SRF model; an entry here is never incomplete.
This registry is our own: it refuses duplicate names and never writes into timm's registry.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Mapping, Optional, Union

import torch.nn as nn

from .errors import FocalNetError
from .arch_fields import INSTANCE, fields_with
from .images import IMAGENET_MEAN, IMAGENET_STD
from .models import FocalNet, FocalNetIsotropic, check_arguments
from .preprocess import DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION

__all__ = [
    "ModelSpec", "Published", "Weights", "register_model", "list_models", "get_spec", "build_model",
    "UnknownModelError", "describe_arch", "fit_stage_lists",
]

# the authors' release links (their README): GitHub releases for most, their blob store for the rest
RELEASE_URL = "https://github.com/microsoft/FocalNet/releases/download/v1.0.0/"
BLOB_URL = "https://projects4jw.blob.core.windows.net/focalnet/release/classification/"


@dataclass(frozen=True)
class Published:
    """Numbers from the paper (ImageNet-1K; GMACs are multiply-adds, which the paper calls FLOPs)."""

    params_m: Optional[float] = None
    gmacs: Optional[float] = None
    top1: Optional[float] = None
    img_size: int = 224  # resolution of the released weights
    num_classes: int = 1000  # head of the released weights (21842: the authors' reordered ImageNet-22K)


@dataclass(frozen=True)
class Weights:
    """Where the released weights live: the authors' URL, timm's and Hugging Face's hub ids."""

    official: Optional[str] = None
    timm: Optional[str] = None
    hf: Optional[str] = None
    # sha256 of the file each source serves ({'official': hex, 'timm': hex of model.safetensors, ...}),
    # checked after download (focalnet.hub). Recorded only where the digest was verified against the
    # published file; none is recorded yet: hub downloads are verified by huggingface_hub's own etag checks.
    sha256: Optional[Mapping[str, str]] = field(default=None, hash=False)


@dataclass
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    published: Published
    weights: Weights
    drop_path_rate: float  # the paper's recipe value for this variant
    crop_pct: float = DEFAULT_CROP_PCT  # the authors' evaluation transform: resize to 256/224 of the crop
    interpolation: str = DEFAULT_INTERPOLATION
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    @cached_property
    def arch(self) -> dict:
        """The complete architecture (the model's constructor arguments), read off a meta-device build."""
        return dict(self.builder(device_meta=True).arch)

    @property
    def family(self) -> str:
        return self.arch["family"]


_REGISTRY: dict[str, ModelSpec] = {}


class UnknownModelError(FocalNetError, KeyError):
    """A model name that is not registered; the message lists the closest registered names."""

    def __str__(self) -> str:  # KeyError's own str() would quote the message
        return str(self.args[0]) if self.args else ""


def register_model(
    published: Published, drop_path_rate: float, weights: Weights = Weights(), crop_pct: float = DEFAULT_CROP_PCT
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"a model named {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(
            name=name,
            builder=fn,
            published=published,
            weights=weights,
            drop_path_rate=drop_path_rate,
            crop_pct=crop_pct,
        )
        return fn

    return decorator


def _build(cls: type, arch: dict, overrides: dict[str, Any]) -> nn.Module:
    meta = overrides.pop("device_meta", False)
    kwargs = {**arch, **overrides}
    # unknown names are refused before the call: a TypeError from inside the constructor is a bug, and
    # keeps its traceback
    check_arguments(cls, kwargs)
    if meta:
        import torch

        with torch.device("meta"):
            return cls(**kwargs)
    return cls(**kwargs)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `focalnet list` shows them all"
        raise UnknownModelError(f"unknown model {name!r}{hint}") from None


def list_models(pattern: Union[str, None] = None) -> list[str]:
    """Registered model names, optionally filtered by a shell-style pattern (`'*tiny*'`)."""
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


# what a head, an input or a regulariser changes is not a different architecture (INSTANCE in focalnet.arch_fields)
_INSTANCE_FIELDS = frozenset(fields_with(INSTANCE))
_SHORT = {"patch_size": "patch"}
_FIRST = ("embed_dim", "depths", "depth", "patch_size", "focal_levels", "focal_windows")


def _arch_differences(arch: Mapping[str, Any], base: Mapping[str, Any]) -> list[str]:
    """`key value` for every field where `arch` differs from `base`; per-stage lists of a model with fewer
    stages count as equal when they are the base's cut (or extended) to that many stages."""
    stages = len(arch.get("depths") or []) or None
    diffs = []
    keys = list(_FIRST) + [k for k in list(arch) + list(base) if k not in _FIRST]
    for key in dict.fromkeys(keys):
        if key in _INSTANCE_FIELDS:
            continue
        ours, theirs = arch.get(key), base.get(key)
        if isinstance(theirs, (list, tuple)) and key != "depths" and stages:
            theirs = (list(theirs) + [list(theirs)[-1]] * stages)[:stages]
        if isinstance(ours, (list, tuple)) and isinstance(theirs, (list, tuple)) and list(ours) == list(theirs):
            continue
        if ours != theirs:
            text = "-".join(str(v) for v in ours) if isinstance(ours, (list, tuple)) else str(ours)
            diffs.append(f"{_SHORT.get(key, key)} {text}")
    return diffs


def describe_arch(arch: Union[Mapping[str, Any], nn.Module, None], variant: Optional[str] = None) -> str:
    """The honest name of an architecture: the registered variant it is, else "custom, from VARIANT: what
    differs" (e.g. "custom, from focalnet_tiny_srf: embed_dim 32, depths 1-2-2, patch 2"), VARIANT being
    the one it was built from (`variant`) or the registered one of its family it differs least from.
    Given a model: its `arch` and `variant` (any other module: its class name)."""
    if isinstance(arch, nn.Module):
        model = arch
        arch, variant = getattr(model, "arch", None), variant or getattr(model, "variant", None)
        if not arch:
            return variant or type(model).__name__
    if not arch:
        return variant or "custom"
    candidates = [variant] if variant in _REGISTRY else [
        n for n in list_models() if _REGISTRY[n].arch.get("family") == arch.get("family")]
    if not candidates:
        return "custom"
    diffs = {n: _arch_differences(arch, _REGISTRY[n].arch) for n in candidates}
    # the fewest differences; among equals the smallest published model (tiny before base)
    base = min(candidates, key=lambda n: (len(diffs[n]), _REGISTRY[n].published.params_m or 0.0))
    return base if not diffs[base] else f"custom, from {base}: {', '.join(diffs[base])}"


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered architecture with random weights (`focalnet.create_model` also loads weights)."""
    spec = get_spec(name)
    model = spec.builder(**overrides)
    model.variant = name
    return model


# ----------------------------------------------------------------------------------------------------------
# Hierarchical FocalNets, ImageNet-1K (paper Table 1): small (SRF, L=2) and large (LRF, L=3) receptive field
# ----------------------------------------------------------------------------------------------------------


@register_model(
    Published(params_m=28.4, gmacs=4.4, top1=82.1),
    drop_path_rate=0.2,
    weights=Weights(RELEASE_URL + "focalnet_tiny_srf.pth", "timm/focalnet_tiny_srf.ms_in1k", "microsoft/focalnet-tiny"),
)
def focalnet_tiny_srf(**kwargs: Any) -> FocalNet:
    arch = dict(
        depths=(2, 2, 6, 2), embed_dim=96, focal_levels=(2, 2, 2, 2), focal_windows=(3, 3, 3, 3), focal_factor=2,
        use_conv_embed=False, use_post_norm=False, use_post_norm_in_modulation=False, normalize_modulator=False,
        layerscale_value=None, drop_path_rate=0.2,
    )
    return _build(FocalNet, arch, kwargs)


@register_model(
    Published(params_m=28.6, gmacs=4.5, top1=82.3),
    drop_path_rate=0.2,
    weights=Weights(RELEASE_URL + "focalnet_tiny_lrf.pth", "timm/focalnet_tiny_lrf.ms_in1k", "microsoft/focalnet-tiny-lrf"),
)
def focalnet_tiny_lrf(**kwargs: Any) -> FocalNet:
    arch = dict(
        depths=(2, 2, 6, 2), embed_dim=96, focal_levels=(3, 3, 3, 3), focal_windows=(3, 3, 3, 3), focal_factor=2,
        use_conv_embed=False, use_post_norm=False, use_post_norm_in_modulation=False, normalize_modulator=False,
        layerscale_value=None, drop_path_rate=0.2,
    )
    return _build(FocalNet, arch, kwargs)


@register_model(
    Published(params_m=49.9, gmacs=8.6, top1=83.4),
    drop_path_rate=0.3,
    weights=Weights(RELEASE_URL + "focalnet_small_srf.pth", "timm/focalnet_small_srf.ms_in1k", "microsoft/focalnet-small"),
)
def focalnet_small_srf(**kwargs: Any) -> FocalNet:
    arch = dict(
        depths=(2, 2, 18, 2), embed_dim=96, focal_levels=(2, 2, 2, 2), focal_windows=(3, 3, 3, 3), focal_factor=2,
        use_conv_embed=False, use_post_norm=False, use_post_norm_in_modulation=False, normalize_modulator=False,
        layerscale_value=None, drop_path_rate=0.3,
    )
    return _build(FocalNet, arch, kwargs)


@register_model(
    Published(params_m=50.3, gmacs=8.7, top1=83.5),
    drop_path_rate=0.3,
    weights=Weights(
        RELEASE_URL + "focalnet_small_lrf.pth", "timm/focalnet_small_lrf.ms_in1k", "microsoft/focalnet-small-lrf"
    ),
)
def focalnet_small_lrf(**kwargs: Any) -> FocalNet:
    arch = dict(
        depths=(2, 2, 18, 2), embed_dim=96, focal_levels=(3, 3, 3, 3), focal_windows=(3, 3, 3, 3), focal_factor=2,
        use_conv_embed=False, use_post_norm=False, use_post_norm_in_modulation=False, normalize_modulator=False,
        layerscale_value=None, drop_path_rate=0.3,
    )
    return _build(FocalNet, arch, kwargs)


@register_model(
    Published(params_m=88.1, gmacs=15.3, top1=83.7),
    drop_path_rate=0.5,
    weights=Weights(RELEASE_URL + "focalnet_base_srf.pth", "timm/focalnet_base_srf.ms_in1k", "microsoft/focalnet-base"),
)
def focalnet_base_srf(**kwargs: Any) -> FocalNet:
    arch = dict(
        depths=(2, 2, 18, 2), embed_dim=128, focal_levels=(2, 2, 2, 2), focal_windows=(3, 3, 3, 3), focal_factor=2,
        use_conv_embed=False, use_post_norm=False, use_post_norm_in_modulation=False, normalize_modulator=False,
        layerscale_value=None, drop_path_rate=0.5,
    )
    return _build(FocalNet, arch, kwargs)


@register_model(
    Published(params_m=88.7, gmacs=15.4, top1=83.9),
    drop_path_rate=0.5,
    weights=Weights(RELEASE_URL + "focalnet_base_lrf.pth", "timm/focalnet_base_lrf.ms_in1k", "microsoft/focalnet-base-lrf"),
)
def focalnet_base_lrf(**kwargs: Any) -> FocalNet:
    arch = dict(
        depths=(2, 2, 18, 2), embed_dim=128, focal_levels=(3, 3, 3, 3), focal_windows=(3, 3, 3, 3), focal_factor=2,
        use_conv_embed=False, use_post_norm=False, use_post_norm_in_modulation=False, normalize_modulator=False,
        layerscale_value=None, drop_path_rate=0.5,
    )
    return _build(FocalNet, arch, kwargs)


# ----------------------------------------------------------------------------------------------------------
# Isotropic FocalNets (paper Table 3): ViT-like, 12 blocks at stride 16
# ----------------------------------------------------------------------------------------------------------


@register_model(
    Published(params_m=5.9, gmacs=1.1, top1=74.1),
    drop_path_rate=0.2,
    weights=Weights(BLOB_URL + "focalnet_tiny_iso_16.pth"),
)
def focalnet_tiny_iso(**kwargs: Any) -> FocalNetIsotropic:
    arch = dict(
        depth=12, embed_dim=192, patch_size=16, focal_level=3, focal_window=3, focal_factor=2,
        use_post_norm=False, use_post_norm_in_modulation=False, normalize_modulator=False,
        layerscale_value=None, drop_path_rate=0.2,
    )
    return _build(FocalNetIsotropic, arch, kwargs)


@register_model(
    Published(params_m=22.4, gmacs=4.3, top1=80.9),
    drop_path_rate=0.2,
    weights=Weights(BLOB_URL + "focalnet_small_iso_16.pth"),
)
def focalnet_small_iso(**kwargs: Any) -> FocalNetIsotropic:
    arch = dict(
        depth=12, embed_dim=384, patch_size=16, focal_level=3, focal_window=3, focal_factor=2,
        use_post_norm=False, use_post_norm_in_modulation=False, normalize_modulator=False,
        layerscale_value=None, drop_path_rate=0.2,
    )
    return _build(FocalNetIsotropic, arch, kwargs)


@register_model(
    Published(params_m=87.2, gmacs=16.9, top1=82.4),
    drop_path_rate=0.2,
    weights=Weights(BLOB_URL + "focalnet_base_iso_16.pth"),
)
def focalnet_base_iso(**kwargs: Any) -> FocalNetIsotropic:
    # the released weights hold layer scale and `modulation.ln`: post-norm, post-norm in modulation
    arch = dict(
        depth=12, embed_dim=768, patch_size=16, focal_level=3, focal_window=3, focal_factor=2,
        use_post_norm=True, use_post_norm_in_modulation=True, normalize_modulator=False,
        layerscale_value=1e-4, drop_path_rate=0.2,
    )
    return _build(FocalNetIsotropic, arch, kwargs)


# ----------------------------------------------------------------------------------------------------------
# Large+ FocalNets pretrained on ImageNet-22K (21842-class reordered head; 384 px for L/XL, 224 px for H)
# ----------------------------------------------------------------------------------------------------------

_IN22K_384 = dict(img_size=384, num_classes=21842)
_IN22K_224 = dict(img_size=224, num_classes=21842)


@register_model(
    Published(params_m=207, **_IN22K_384),
    drop_path_rate=0.5,
    weights=Weights(RELEASE_URL + "focalnet_large_lrf_384.pth", "timm/focalnet_large_fl3.ms_in22k"),
    crop_pct=1.0,
)
def focalnet_large_fl3(**kwargs: Any) -> FocalNet:
    arch = dict(
        depths=(2, 2, 18, 2), embed_dim=192, focal_levels=(3, 3, 3, 3), focal_windows=(5, 5, 5, 5), focal_factor=2,
        use_conv_embed=True, use_post_norm=True, use_post_norm_in_modulation=False, normalize_modulator=False,
        layerscale_value=1e-4, drop_path_rate=0.5, num_classes=21842,
    )
    return _build(FocalNet, arch, kwargs)


@register_model(
    Published(params_m=207, **_IN22K_384),
    drop_path_rate=0.5,
    weights=Weights(RELEASE_URL + "focalnet_large_lrf_384_fl4.pth", "timm/focalnet_large_fl4.ms_in22k"),
    crop_pct=1.0,
)
def focalnet_large_fl4(**kwargs: Any) -> FocalNet:
    # the authors' config sets NORMALIZE_MODULATOR for this model (timm's entry lacks it)
    arch = dict(
        depths=(2, 2, 18, 2), embed_dim=192, focal_levels=(4, 4, 4, 4), focal_windows=(3, 3, 3, 3), focal_factor=2,
        use_conv_embed=True, use_post_norm=True, use_post_norm_in_modulation=False, normalize_modulator=True,
        layerscale_value=1e-4, drop_path_rate=0.5, num_classes=21842,
    )
    return _build(FocalNet, arch, kwargs)


@register_model(
    Published(params_m=366, **_IN22K_384),
    drop_path_rate=0.5,
    weights=Weights(RELEASE_URL + "focalnet_xlarge_lrf_384.pth", "timm/focalnet_xlarge_fl3.ms_in22k"),
    crop_pct=1.0,
)
def focalnet_xlarge_fl3(**kwargs: Any) -> FocalNet:
    arch = dict(
        depths=(2, 2, 18, 2), embed_dim=256, focal_levels=(3, 3, 3, 3), focal_windows=(5, 5, 5, 5), focal_factor=2,
        use_conv_embed=True, use_post_norm=True, use_post_norm_in_modulation=False, normalize_modulator=False,
        layerscale_value=1e-4, drop_path_rate=0.5, num_classes=21842,
    )
    return _build(FocalNet, arch, kwargs)


@register_model(
    Published(params_m=366, **_IN22K_384),
    drop_path_rate=0.5,
    weights=Weights(RELEASE_URL + "focalnet_xlarge_lrf_384_fl4.pth", "timm/focalnet_xlarge_fl4.ms_in22k"),
    crop_pct=1.0,
)
def focalnet_xlarge_fl4(**kwargs: Any) -> FocalNet:
    arch = dict(
        depths=(2, 2, 18, 2), embed_dim=256, focal_levels=(4, 4, 4, 4), focal_windows=(3, 3, 3, 3), focal_factor=2,
        use_conv_embed=True, use_post_norm=True, use_post_norm_in_modulation=False, normalize_modulator=False,
        layerscale_value=1e-4, drop_path_rate=0.5, num_classes=21842,
    )
    return _build(FocalNet, arch, kwargs)


@register_model(
    Published(params_m=687, **_IN22K_224),
    drop_path_rate=0.5,
    weights=Weights(BLOB_URL + "focalnet_huge_lrf_224.pth", "timm/focalnet_huge_fl3.ms_in22k"),
    crop_pct=1.0,
)
def focalnet_huge_fl3(**kwargs: Any) -> FocalNet:
    arch = dict(
        depths=(2, 2, 18, 2), embed_dim=352, focal_levels=(3, 3, 3, 3), focal_windows=(3, 3, 3, 3), focal_factor=2,
        use_conv_embed=True, use_post_norm=True, use_post_norm_in_modulation=True, normalize_modulator=False,
        layerscale_value=1e-4, drop_path_rate=0.5, num_classes=21842,
    )
    return _build(FocalNet, arch, kwargs)


@register_model(
    Published(params_m=689, **_IN22K_224),
    drop_path_rate=0.5,
    weights=Weights(BLOB_URL + "focalnet_huge_lrf_224_fl4.pth", "timm/focalnet_huge_fl4.ms_in22k"),
    crop_pct=1.0,
)
def focalnet_huge_fl4(**kwargs: Any) -> FocalNet:
    arch = dict(
        depths=(2, 2, 18, 2), embed_dim=352, focal_levels=(4, 4, 4, 4), focal_windows=(3, 3, 3, 3), focal_factor=2,
        use_conv_embed=True, use_post_norm=True, use_post_norm_in_modulation=True, normalize_modulator=False,
        layerscale_value=1e-4, drop_path_rate=0.5, num_classes=21842,
    )
    return _build(FocalNet, arch, kwargs)


def fit_stage_lists(name: str, arch: dict) -> dict:
    """With fewer (or more) stages in arch['depths'] than the variant has, take the variant's per-stage
    focal levels and windows for the stages that remain (repeating the last one), unless given."""
    if "depths" not in arch or name not in list_models():
        return arch
    spec_arch = get_spec(name).arch
    n = len(arch["depths"])
    for key in ("focal_levels", "focal_windows"):
        if key not in arch and isinstance(spec_arch.get(key), (list, tuple)) and len(spec_arch[key]) != n:
            values = list(spec_arch[key])
            arch[key] = (values + [values[-1]] * n)[:n]
    return arch
