"""The architecture a checkpoint file holds: from its tensor shapes, or from a Hugging Face config, and back.

`arch` is the dict of a model's constructor arguments plus its `family` (a model's `.arch`, see
`focalnet.models`). Files that state it (ours, Hugging Face configs) are read here; files that do not
(the authors', timm's) give what their tensor shapes fix, and `focalnet.factory.resolve_variant` completes
the rest from the registered variant with the same shapes.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch

from .convert import ConversionError

__all__ = ["arch_from_state_dict", "arch_from_hf_config", "class_names_from_hf_config", "hf_config"]


# --------------------------------------------------------------------------------------------------------
# From the tensors alone (for files that do not say)
# --------------------------------------------------------------------------------------------------------


def _count(sd: Mapping[str, torch.Tensor], template: str) -> int:
    """How many consecutive indices i from 0 have `template.format(i)` in sd."""
    n = 0
    while template.format(n) in sd:
        n += 1
    return n


def _block_arch(sd: Mapping[str, torch.Tensor], prefix: str) -> dict:
    """What the first block's tensors (under `prefix`) fix: focal level and window, focal factor, MLP ratio,
    layer scale and post-norm in modulation."""
    levels = _count(sd, prefix + "modulation.focal_layers.{}.0.weight")
    k0 = int(sd[f"{prefix}modulation.focal_layers.0.0.weight"].shape[-1])
    # kernel sizes grow by focal_factor per level: k_l = focal_factor * l + focal_window
    factor = int(sd[f"{prefix}modulation.focal_layers.1.0.weight"].shape[-1]) - k0 if levels > 1 else 2
    dim = int(sd[f"{prefix}norm1.weight"].shape[0])
    return dict(
        focal_level=levels, focal_window=k0, focal_factor=factor,
        mlp_ratio=sd[f"{prefix}mlp.fc1.weight"].shape[0] / dim,
        layerscale_value=1e-4 if f"{prefix}ls1.gamma" in sd else None,
        use_post_norm_in_modulation=f"{prefix}modulation.norm.weight" in sd,
    )


def arch_from_state_dict(sd: Mapping[str, torch.Tensor], family: Optional[str] = None) -> dict:
    """What the tensor shapes of our-layout `sd` say about the architecture.

    Shapes fix depths, width, focal levels, windows, focal factor, patch size, conv embedding, layer scale
    and post-norm in modulation. They cannot tell pre- from post-norm blocks nor `normalize_modulator`
    (no parameters): those come from the registered variant with the same shapes (see
    `focalnet.factory.resolve_variant`), or default to False.
    """
    family = family or ("isotropic" if any(k.startswith("blocks.") for k in sd) else "hierarchical")
    stem = sd["stem.proj.weight"]  # (embed_dim, in_chans, k, k)
    embed_dim, in_chans, k = int(stem.shape[0]), int(stem.shape[1]), int(stem.shape[2])
    head = sd.get("head.fc.weight")
    common = dict(
        embed_dim=embed_dim, in_chans=in_chans, num_classes=0 if head is None else int(head.shape[0]),
        use_post_norm=False, normalize_modulator=False,
    )
    if family == "isotropic":
        block = _block_arch(sd, "blocks.0.")
        return dict(family="isotropic", depth=_count(sd, "blocks.{}.norm1.weight"), patch_size=k, **block, **common)
    num_stages = _count(sd, "stages.{}.blocks.0.norm1.weight")
    stages = [_block_arch(sd, f"stages.{s}.blocks.0.") for s in range(num_stages)]
    last = stages[-1]
    conv_embed = k == 7  # the 7x7 stride-4 stem of use_conv_embed
    return dict(
        family="hierarchical",
        depths=[_count(sd, f"stages.{s}.blocks.{{}}.norm1.weight") for s in range(num_stages)],
        focal_levels=[b["focal_level"] for b in stages], focal_windows=[b["focal_window"] for b in stages],
        focal_factor=last["focal_factor"], mlp_ratio=last["mlp_ratio"], patch_size=4 if conv_embed else k,
        use_conv_embed=conv_embed, use_post_norm_in_modulation=last["use_post_norm_in_modulation"],
        layerscale_value=last["layerscale_value"], **common,
    )


# --------------------------------------------------------------------------------------------------------
# Hugging Face transformers' FocalNetConfig, both ways
# --------------------------------------------------------------------------------------------------------


def arch_from_hf_config(config: Mapping) -> dict:
    """Our architecture from a transformers FocalNetConfig dict."""
    if config.get("hidden_act", "gelu") != "gelu" or abs(config.get("layer_norm_eps", 1e-5) - 1e-5) > 1e-12:
        raise ConversionError("only hidden_act='gelu' and layer_norm_eps=1e-5 FocalNet configs are supported")
    archs = config.get("architectures") or []
    has_head = not archs or any("Classification" in a for a in archs)
    num_classes = len(config.get("id2label") or {}) if has_head else 0
    depths = list(config.get("depths", [2, 2, 6, 2]))
    common = dict(
        embed_dim=config.get("embed_dim", 96),
        mlp_ratio=config.get("mlp_ratio", 4.0),
        in_chans=config.get("num_channels", 3),
        num_classes=num_classes or (0 if not has_head else 2),
        patch_size=config.get("patch_size", 4),
        use_post_norm=bool(config.get("use_post_layernorm", False)),
        use_post_norm_in_modulation=bool(config.get("use_post_layernorm_in_modulation", False)),
        normalize_modulator=bool(config.get("normalize_modulator", False)),
        layerscale_value=config.get("layerscale_value", 1e-4) if config.get("use_layerscale") else None,
        drop_path_rate=config.get("drop_path_rate", 0.1),
    )
    levels = list(config.get("focal_levels", [2, 2, 2, 2]))
    windows = list(config.get("focal_windows", [3, 3, 3, 3]))
    if len(depths) == 1:
        return dict(family="isotropic", depth=depths[0], focal_level=levels[0], focal_window=windows[0], **common)
    return dict(
        family="hierarchical", depths=depths, focal_levels=levels, focal_windows=windows,
        use_conv_embed=bool(config.get("use_conv_embed", False)), **common,
    )


def class_names_from_hf_config(config: Mapping) -> Optional[list[str]]:
    """The class names of a FocalNetConfig's id2label; None for transformers' placeholders (LABEL_0, ...)."""
    id2label = config.get("id2label") or {}
    names = [id2label[k] for k in sorted(id2label, key=int)] if id2label else None
    if names and all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return names


def hf_config(arch: Mapping, class_names: Optional[list[str]] = None) -> dict:
    """A transformers FocalNetConfig (as a dict) for our architecture `arch`."""
    if arch["family"] == "isotropic":
        depths, levels, windows = [arch["depth"]], [arch["focal_level"]], [arch["focal_window"]]
        conv_embed = False
    else:
        depths, levels, windows = list(arch["depths"]), list(arch["focal_levels"]), list(arch["focal_windows"])
        conv_embed = bool(arch.get("use_conv_embed", False))
    dims = [arch["embed_dim"] * 2**i for i in range(len(depths))]
    num_classes = arch.get("num_classes", 0)
    names = list(class_names) if class_names is not None else [f"LABEL_{i}" for i in range(num_classes)]
    return {
        "model_type": "focalnet",
        "architectures": ["FocalNetForImageClassification" if num_classes > 0 else "FocalNetModel"],
        "embed_dim": arch["embed_dim"],
        "depths": depths,
        "focal_levels": levels,
        "focal_windows": windows,
        "hidden_sizes": dims[1:] + dims[-1:],
        "use_conv_embed": conv_embed,
        "use_layerscale": arch.get("layerscale_value") is not None,
        "layerscale_value": arch.get("layerscale_value") or 1e-4,
        "use_post_layernorm": bool(arch.get("use_post_norm", False)),
        "use_post_layernorm_in_modulation": bool(arch.get("use_post_norm_in_modulation", False)),
        "normalize_modulator": bool(arch.get("normalize_modulator", False)),
        "num_channels": arch.get("in_chans", 3),
        "patch_size": arch.get("patch_size", 4),
        "image_size": 224,
        "mlp_ratio": float(arch.get("mlp_ratio", 4.0)),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "drop_path_rate": float(arch.get("drop_path_rate", 0.1)),
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-5,
        "encoder_stride": 32,
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
    }
