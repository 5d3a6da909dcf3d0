"""`create_model` and `load_model`: a registered architecture with weights from any supported source."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch.nn as nn

from .checkpoints import Checkpoint, CheckpointError, arch_from_state_dict, load_into, read_checkpoint
from .models import model_from_arch
from .registry import build_model, get_spec, list_models

__all__ = ["create_model", "load_model", "resolve_variant", "download_weights", "SOURCES"]

log = logging.getLogger("focalnet")
SOURCES = ("official", "timm", "hf")
PathLike = Union[str, os.PathLike]

# fields the tensor shapes determine; the rest (pre/post norm, normalize_modulator) come from the registry
_SHAPE_FIELDS = (
    "family", "depths", "depth", "embed_dim", "focal_levels", "focal_level", "focal_windows", "focal_window",
    "focal_factor", "mlp_ratio", "patch_size", "use_conv_embed", "use_post_norm_in_modulation",
)


def cache_dir() -> Path:
    return Path(os.environ.get("FOCALNET_HOME", Path.home() / ".cache" / "focalnet"))


def download_weights(name: str, source: str = "official") -> Path:
    """Download the released weights of `name` from `source` (the authors', timm's or Hugging Face's)
    into the cache (`$FOCALNET_HOME`, default ~/.cache/focalnet) and return the local path."""
    spec = get_spec(name)
    if source not in SOURCES:
        raise CheckpointError(f"unknown weight source {source!r}; choose one of {', '.join(SOURCES)}")
    where = getattr(spec.weights, source)
    if not where:
        have = [s for s in SOURCES if getattr(spec.weights, s)]
        raise CheckpointError(
            f"no {source} weights are known for {name}" + (f"; available: {', '.join(have)}" if have else "")
        )
    try:
        if source == "official":
            import torch.hub

            dst = cache_dir() / Path(where).name
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                log.info("downloading %s to %s", where, dst)
                torch.hub.download_url_to_file(where, str(dst), progress=True)
            return dst
        from huggingface_hub import snapshot_download

        patterns = ["config.json", "model.safetensors", "model.safetensors.index.json", "*.safetensors"]
        return Path(snapshot_download(where, allow_patterns=patterns, cache_dir=str(cache_dir() / "hub")))
    except ImportError as e:
        raise CheckpointError(f"downloading from the {source} hub needs huggingface_hub: pip install huggingface_hub ({e})") from None
    except Exception as e:  # network errors come in many types (URLError, HTTPError, hub errors)
        raise CheckpointError(
            f"could not download the {source} weights of {name} from {where}: {type(e).__name__}: {e}. "
            "Without network access, download the file elsewhere and pass its path as pretrained=PATH "
            "(CLI: --checkpoint PATH)"
        ) from None


def resolve_variant(ckpt: Checkpoint) -> tuple[Optional[str], dict]:
    """The registered variant whose architecture fits the checkpoint's tensors, and the full architecture.

    Files that state their architecture (ours, Hugging Face configs) are taken at their word. Otherwise the
    tensor shapes give most of it; what shapes cannot show (pre- or post-norm blocks, normalize_modulator)
    comes from the variant the file names (timm's config.json), else from the registered variant with the
    same shapes, else defaults to False: then pass the model name (`create_model(name, pretrained=...)`).
    """
    overrides = dict(num_classes=ckpt.num_classes, in_chans=ckpt.in_chans)
    if ckpt.arch is not None:
        return ckpt.variant, {**ckpt.arch, **overrides}
    shapes = arch_from_state_dict(ckpt.state_dict, ckpt.family)
    named = ckpt.variant if ckpt.variant in list_models() else None
    for name in [named] if named else list_models():
        arch = get_spec(name).arch
        if all(_same(arch.get(f), shapes.get(f)) for f in _SHAPE_FIELDS) and (
            (arch.get("layerscale_value") is None) == (shapes.get("layerscale_value") is None)
        ):
            return name, {**arch, **overrides, **ckpt.hints}
    flags = {}
    if named:  # a resized version of a named variant: its shapes, the variant's flags
        flags = {k: get_spec(named).arch[k] for k in ("use_post_norm", "normalize_modulator", "layerscale_value")}
        if shapes.get("layerscale_value") is None:
            flags["layerscale_value"] = None
    return None, {**shapes, **flags, **ckpt.hints}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _read_pretrained(name: str, pretrained: Union[bool, str, PathLike, Checkpoint]) -> Checkpoint:
    if isinstance(pretrained, Checkpoint):  # already read (focalnet eval reads a file once)
        return pretrained
    if pretrained is True:
        spec = get_spec(name)
        source = next((s for s in SOURCES if getattr(spec.weights, s)), "official")
        return read_checkpoint(download_weights(name, source))
    if isinstance(pretrained, str) and pretrained in SOURCES and not Path(pretrained).exists():
        return read_checkpoint(download_weights(name, pretrained))
    return read_checkpoint(pretrained)


def create_model(
    name: str,
    pretrained: Union[bool, str, PathLike] = False,
    *,
    num_classes: Optional[int] = None,
    in_chans: Optional[int] = None,
    drop_path_rate: Optional[float] = None,
    reset_head: bool = False,
    **overrides: Any,
) -> nn.Module:
    """Build the registered model `name`, optionally with weights.

    pretrained: False; True (download the released weights); 'official' / 'timm' / 'hf' (download from
        that source); or the path of a checkpoint in any supported layout (see `focalnet.checkpoints`).
    num_classes: classifier size (0: no classifier). With weights and no num_classes, the checkpoint's
        head is kept. num_classes=1000 on the authors' 21842-class ImageNet-22K head slices it to
        ImageNet-1K; any other difference needs reset_head=True, which re-initialises the head only.
    in_chans: input channels; in_chans=1 with RGB weights sums the stem over its input channels.
    drop_path_rate: stochastic depth (default: the paper's value for the variant).
    overrides: any other architecture argument of FocalNet / FocalNetIsotropic.
    """
    ckpt = _read_pretrained(name, pretrained) if pretrained else None
    if ckpt is not None:
        if num_classes is None:
            num_classes = ckpt.num_classes
        if in_chans is None:
            in_chans = ckpt.in_chans
    for key, value in (("num_classes", num_classes), ("in_chans", in_chans), ("drop_path_rate", drop_path_rate)):
        if value is not None:
            overrides[key] = value
    model = build_model(name, **overrides)
    if ckpt is not None:
        load_into(model, ckpt, reset_head=reset_head)
        model.class_names = ckpt.class_names if ckpt.num_classes == model.num_classes else None
        if ckpt.preprocessing is not None and len(ckpt.preprocessing["mean"]) == model.in_chans:
            model.preprocessing = ckpt.preprocessing
    return model


def load_model(path: Union[PathLike, Checkpoint], **overrides: Any) -> nn.Module:
    """Build the model a checkpoint holds, with its weights, without naming the architecture.

    The architecture comes from the file when it says (ours, HF, timm folders), else from the registered
    variant whose tensor shapes match (see `resolve_variant`).
    """
    ckpt = path if isinstance(path, Checkpoint) else read_checkpoint(path)
    variant, arch = resolve_variant(ckpt)
    reset_head = overrides.pop("reset_head", False)
    model = model_from_arch(arch, **overrides)
    model.variant = variant
    load_into(model, ckpt, reset_head=reset_head)
    model.class_names = ckpt.class_names if ckpt.num_classes == model.num_classes else None
    if ckpt.preprocessing is not None and len(ckpt.preprocessing["mean"]) == model.in_chans:
        model.preprocessing = ckpt.preprocessing  # the input normalisation the weights were trained with
    return model
