"""The architecture a checkpoint file holds: from its tensor shapes, or from a Hugging Face config, and back.

`arch` is the dict of a model's constructor arguments plus its `family` (a model's `.arch`, see
`focalnet.models`). Files that state it (ours, Hugging Face configs) are read here; files that do not
(the authors', timm's) give what their tensor shapes fix, and `focalnet.factory.resolve_variant` completes
the rest from the registered variant with the same shapes.
"""
from __future__ import annotations

import logging
import math
from typing import Mapping, Optional

import torch

from ..errors import limit_from_env
from ..models import FAMILIES
from ..arch_fields import HIDDEN, FieldRule, arch_fields, constructor_defaults, fields_with
from .convert import ConversionError

__all__ = [
    "validate_arch", "check_arch_fields", "max_model_bytes", "MAX_MODEL_BYTES",
    "arch_from_state_dict", "arch_from_hf_config", "class_names_from_hf_config", "hf_config",
    "hf_preprocessor_config", "timm_config", "timm_model_args", "imagenet_labels", "complete_preprocessing",
]


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
    """What the tensor shapes of our-layout `sd` say about the architecture (see `_arch_from_shapes`); tensors
    missing or of the wrong rank (a damaged or crafted file) are a ConversionError naming the tensor."""
    try:
        return _arch_from_shapes(sd, family)
    except KeyError as e:
        raise ConversionError(f"the tensors do not form a FocalNet: {e.args[0]!r} is missing") from None
    except (IndexError, ValueError, ZeroDivisionError) as e:
        raise ConversionError(f"the tensors do not form a FocalNet: a tensor has the wrong rank or size ({e})") from None


def _arch_from_shapes(sd: Mapping[str, torch.Tensor], family: Optional[str] = None) -> dict:
    """What the tensor shapes of our-layout `sd` say about the architecture.

    Shapes fix the SHAPE fields of `focalnet.arch_fields` (depths, width, focal levels, windows, focal factor,
    patch size, conv embedding, post-norm in modulation), whether there is layer scale, the input channels
    and the classes. The HIDDEN fields (pre- or post-norm blocks, `normalize_modulator`: no parameters) come
    from the registered variant with the same shapes (see `focalnet.factory.resolve_variant`), else they
    are the constructor's defaults.
    """
    family = family or ("isotropic" if any(k.startswith("blocks.") for k in sd) else "hierarchical")
    stem = sd["stem.proj.weight"]  # (embed_dim, in_chans, k, k)
    embed_dim, in_chans, k = int(stem.shape[0]), int(stem.shape[1]), int(stem.shape[2])
    head = sd.get("head.fc.weight")
    known = family if family in FAMILIES else "hierarchical"  # as the layout below reads it
    defaults = constructor_defaults(known)
    common = dict(
        embed_dim=embed_dim, in_chans=in_chans, num_classes=0 if head is None else int(head.shape[0]),
        **{name: defaults[name] for name in fields_with(HIDDEN, family=known)},
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
# Validating an architecture a file states (ours, a training checkpoint, a Hugging Face config.json)
# --------------------------------------------------------------------------------------------------------

# the bounds on each field are in focalnet.arch_fields.FIELD_RULES; on the number of stages, here
MAX_STAGES = 8
# default cap on the parameters' bytes (float32) of a model built from a file: 4 G parameters, six times
# FocalNet-H; FOCALNET_MAX_MODEL_BYTES overrides it
MAX_MODEL_BYTES = 16 * 2**30


def max_model_bytes() -> int:
    """The cap on a file's model size in bytes: $FOCALNET_MAX_MODEL_BYTES if set, else MAX_MODEL_BYTES."""
    return limit_from_env("FOCALNET_MAX_MODEL_BYTES", MAX_MODEL_BYTES, "bytes", ConversionError)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_int(key: str, v: object, lo: float, hi: float) -> None:
    if not _is_int(v) or not lo <= v <= hi:
        raise ConversionError(f"architecture key {key!r} must be a whole number in [{lo}, {hi}], got {v!r}")


def _check_number(key: str, v: object, rule: FieldRule) -> None:
    if not _is_number(v) or not (rule.lo < v if rule.open_lo else rule.lo <= v) or not (
        v < rule.hi if rule.open_hi else v <= rule.hi
    ):
        interval = f"{'(' if rule.open_lo else '['}{rule.lo:g}, {rule.hi:g}{')' if rule.open_hi else ']'}"
        null = "null or " if rule.optional else ""
        raise ConversionError(f"architecture key {key!r} must be {null}a number in {interval}, got {v!r}")


def _check_field(key: str, v: object, rule: FieldRule, stages: Optional[int]) -> None:
    """One field's type and range by its rule (focalnet.arch_fields); `stages`: the number of stages, if known."""
    if v is None and rule.optional:
        return
    if rule.kind == "flag":
        if not isinstance(v, bool):
            raise ConversionError(f"architecture key {key!r} must be true or false, got {v!r}")
    elif rule.kind == "number":
        _check_number(key, v, rule)
    elif rule.kind == "text":
        if not isinstance(v, str) or len(v) > rule.hi or (rule.choices is not None and v not in rule.choices):
            known = (f"one of {', '.join(map(repr, rule.choices))}" if rule.choices is not None
                     else f"a string of at most {rule.hi} characters")
            raise ConversionError(f"architecture key {key!r} must be {known}, got {v!r}")
    elif rule.kind == "depths" and (not isinstance(v, (list, tuple)) or not 1 <= len(v) <= MAX_STAGES):
        raise ConversionError(f"architecture key {key!r} must be a list of 1 to {MAX_STAGES} stage depths, got {v!r}")
    elif rule.kind in ("stages", "depths") and isinstance(v, (list, tuple)):
        if stages is not None and len(v) != stages:
            raise ConversionError(f"architecture key {key!r} must be a list with one value per stage, got {v!r}")
        for x in v:
            _check_int(key, x, rule.lo, rule.hi)
    else:  # 'int', or one value for every stage
        _check_int(key, v, rule.lo, rule.hi)


def check_arch_fields(arch: Mapping) -> None:
    """Types and ranges of every known architecture field, by its rule in `focalnet.arch_fields` (unknown ones
    are refused when the model is built)."""
    rules = arch_fields()
    depths = arch.get("depths")
    if "depths" in arch:  # first: the other per-stage fields are checked against its length
        _check_field("depths", depths, rules["depths"], None)
    stages = len(depths) if isinstance(depths, (list, tuple)) else None
    for key, rule in rules.items():
        if key in arch and key != "depths":
            _check_field(key, arch[key], rule, stages)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_arch(arch: object, where: str = "the architecture") -> "torch.nn.Module":
    """Check an architecture read from a file and return the model it describes, built on the meta device.

    Types and ranges of every field, the family among `focalnet.models.FAMILIES`, unknown keys refused, and
    the parameters' size against `max_model_bytes()`: all before a single weight is allocated. Errors are
    ConversionError naming `where` (the file) and the key; `focalnet.checkpoints.io` turns them into
    CheckpointError."""
    from ..errors import FocalNetError
    from ..models import model_from_arch

    try:
        if not isinstance(arch, Mapping):
            raise ConversionError(f"the architecture must be a JSON object (a dict), got {type(arch).__name__}")
        if not isinstance(arch.get("family"), str) or arch["family"] not in FAMILIES:
            raise ConversionError(f"unknown model family {arch.get('family')!r}; known: {', '.join(FAMILIES)}")
        check_arch_fields(arch)
        with torch.device("meta"):
            model = model_from_arch(arch)
    except FocalNetError as e:
        raise ConversionError(f"{where}: {e}") from None
    size = sum(p.numel() * 4 for p in model.parameters())
    if size > max_model_bytes():
        raise ConversionError(
            f"{where}: the architecture has {size // 4:,} parameters ({size / 2**30:.1f} GiB in float32), above the "
            f"limit of {max_model_bytes() / 2**30:.1f} GiB; raise FOCALNET_MAX_MODEL_BYTES if you trust the file"
        )
    return model


# --------------------------------------------------------------------------------------------------------
# Hugging Face transformers' FocalNetConfig, both ways
# --------------------------------------------------------------------------------------------------------


# transformers' FocalNetConfig has the hierarchical FocalNet's defaults (depths 2-2-6-2, embed_dim 96, ...);
# its per-stage keys hold one entry for an isotropic model
_HF_DEFAULTS = "hierarchical"
_HF_LISTS = frozenset(r.hf for r in arch_fields().values() if r.kind in ("stages", "depths"))


def _hf_default(key: str, stages: int) -> object:
    """transformers' default for the config key `key`, per stage as a list of `stages` entries."""
    defaults = constructor_defaults(_HF_DEFAULTS)
    name = next(n for n, r in arch_fields(_HF_DEFAULTS).items() if r.hf == key)
    value = defaults[name]
    return value if isinstance(value, list) or key not in _HF_LISTS else [value] * stages


def arch_from_hf_config(config: Mapping) -> dict:
    """Our architecture from a transformers FocalNetConfig dict: each field from its key (`hf` in
    focalnet.arch_fields; a key left out: transformers' default), the classes from id2label, layer scale from
    use_layerscale and layerscale_value. One stage is an isotropic model."""
    if config.get("hidden_act", "gelu") != "gelu" or abs(config.get("layer_norm_eps", 1e-5) - 1e-5) > 1e-12:
        raise ConversionError("only hidden_act='gelu' and layer_norm_eps=1e-5 FocalNet configs are supported")
    archs = config.get("architectures") or []
    has_head = not archs or any("Classification" in a for a in archs)
    num_classes = len(config.get("id2label") or {}) if has_head else 0
    depths = list(config.get("depths", _hf_default("depths", 0)))
    family = "isotropic" if len(depths) == 1 else "hierarchical"
    arch: dict = {"family": family}
    for name, rule in arch_fields(family).items():
        if rule.hf is None:
            continue
        value = config.get(rule.hf, _hf_default(rule.hf, len(depths)))
        if rule.hf in _HF_LISTS:
            value = list(value) if rule.kind in ("stages", "depths") else list(value)[0]
        arch[name] = bool(value) if rule.kind == "flag" else value
    arch["num_classes"] = num_classes or (0 if not has_head else 2)
    arch["layerscale_value"] = config.get("layerscale_value", 1e-4) if config.get("use_layerscale") else None
    return arch


def class_names_from_hf_config(config: Mapping) -> Optional[list[str]]:
    """The class names of a FocalNetConfig's id2label; None for transformers' placeholders (LABEL_0, ...)."""
    id2label = config.get("id2label") or {}
    names = [id2label[k] for k in sorted(id2label, key=int)] if id2label else None
    if names and all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return names


def _hf_fields(arch: Mapping) -> dict:
    """Each field of `arch` that transformers' config has a key for (`hf` in focalnet.arch_fields), under that key;
    a field `arch` leaves out is the constructor's default. Per-stage keys are lists (one entry when isotropic)."""
    full = {**constructor_defaults(arch["family"]), **arch}
    stages = len(full["depths"]) if isinstance(full.get("depths"), (list, tuple)) else 1
    out: dict = {}
    for name, rule in arch_fields(arch["family"]).items():
        if rule.hf is None:
            continue
        value = full[name]
        if rule.hf in _HF_LISTS:
            value = list(value) if isinstance(value, (list, tuple)) else [value] * stages
        out[rule.hf] = bool(value) if rule.kind == "flag" else float(value) if rule.kind == "number" else value
    return out


def hf_config(arch: Mapping, class_names: Optional[list[str]] = None, img_size: int = 224) -> dict:
    """A transformers FocalNetConfig (as a dict) for our architecture `arch`.

    Without class names, a 1000- or 21842-class head gets ImageNet's names (see `imagenet_labels`), so that
    `pipeline("image-classification")` says 'tabby, tabby cat' rather than 'LABEL_281'."""
    fields = _hf_fields(arch)
    dims = [fields["embed_dim"] * 2**i for i in range(len(fields["depths"]))]
    num_classes = arch.get("num_classes", 0)
    if class_names is None and imagenet_labels(num_classes) is not None:
        class_names = imagenet_labels(num_classes)[1]
    names = list(class_names) if class_names is not None else [f"LABEL_{i}" for i in range(num_classes)]
    return {
        "model_type": "focalnet",
        "architectures": ["FocalNetForImageClassification" if num_classes > 0 else "FocalNetModel"],
        "use_conv_embed": False,  # the isotropic model has no such argument
        **fields,
        "hidden_sizes": dims[1:] + dims[-1:],
        "use_layerscale": arch.get("layerscale_value") is not None,
        "layerscale_value": arch.get("layerscale_value") or 1e-4,
        "image_size": int(img_size),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-5,
        "encoder_stride": 32,
        "id2label": {str(i): n for i, n in enumerate(names)},
        # names need not be unique (ImageNet-1K has two 'crane's and two 'maillot's): the last index wins
        "label2id": {n: i for i, n in enumerate(names)},
    }


# --------------------------------------------------------------------------------------------------------
# What each peer's loader reads besides the weights: preprocessing, label names, timm's model_args
# --------------------------------------------------------------------------------------------------------

log = logging.getLogger("focalnet")

# head size -> timm's ImageNetInfo subset: the authors' 21842-class head is in their reordered 22K order
_IMAGENET_SUBSETS = {1000: "imagenet-1k", 21842: "imagenet-22k-ms", 21841: "imagenet-22k"}


def imagenet_labels(num_classes: int) -> Optional[tuple[list[str], list[str]]]:
    """(WordNet ids, descriptions) of ImageNet's classes for a 1000-, 21841- or 21842-class head (timm ships
    them: `timm.data.ImageNetInfo`); None for any other head, or without timm (then a warning)."""
    subset = _IMAGENET_SUBSETS.get(int(num_classes))
    if subset is None:
        return None
    try:
        from timm.data import ImageNetInfo
    except ImportError:
        log.warning("timm is not installed: the %d-class head is written without ImageNet's class names", num_classes)
        return None
    info = ImageNetInfo(subset)
    n = info.num_classes()
    return [info.index_to_label_name(i) for i in range(n)], [info.index_to_description(i) for i in range(n)]


def complete_preprocessing(in_chans: int, saved: Optional[Mapping] = None, variant: Optional[str] = None) -> dict:
    """The whole evaluation preprocessing (mean, std, img_size, crop_pct, interpolation): what the file saved,
    else the registered variant's, else ImageNet's at 224 px; a 1-channel model of RGB statistics gets the
    mean of the three means and stds."""
    from ..preprocess import resolve_record, stats_for
    from ..registry import get_spec, list_models

    spec = get_spec(variant) if variant in list_models() else None
    fits = bool(saved) and len(saved.get("mean") or ()) == in_chans  # a record for other channels says nothing here
    out = resolve_record(spec=spec, saved=saved if fits else None)
    if len(out["mean"]) != in_chans and in_chans != 1:
        raise ConversionError(f"no preprocessing is known for {in_chans}-channel input: pass mean and std")
    mean, std = stats_for(out["mean"], out["std"], in_chans)
    out.update(mean=list(mean), std=list(std))
    return out


def hf_preprocessor_config(pre: Mapping) -> dict:
    """transformers' preprocessor_config.json (a FocalNet ConvNext-style image processor, as the authors'
    hub repos use): resize the shorter side to img_size / crop_pct, center crop img_size, normalise."""
    size = int(pre["img_size"])
    crop_pct = float(pre.get("crop_pct") or 1.0)
    resample = {"nearest": 0, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5, "lanczos": 1}[pre.get("interpolation", "bicubic")]
    return {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True, "size": {"shortest_edge": int(size / crop_pct)}, "resample": resample,
        "do_center_crop": True, "crop_size": {"height": size, "width": size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(pre["mean"]), "image_std": list(pre["std"]),
        # 1-channel models: the processor must not turn the gray image into RGB
        "do_convert_rgb": len(pre["mean"]) == 3,
    }


# timm's FocalNet arguments -> ours (`timm` in focalnet.arch_fields); timm has no patch size (its stem is stride 4)
# and no focal factor (2)
_TIMM_ARGS = {rule.timm: name for name, rule in arch_fields("hierarchical").items() if rule.timm}
# what each of timm's entry points fixes (`dict(depths=..., embed_dim=..., **kwargs)`: a second value for one of
# these is a TypeError): read from timm/models/focalnet.py; everything else is free in model_args
_TIMM_FIXED = ("embed_dim", "depths", "focal_levels", "focal_windows", "use_overlap_down", "use_post_norm",
               "use_post_norm_in_modulation", "layerscale_value")


def timm_model_args(arch: Mapping, variant: Optional[str] = None) -> tuple[Optional[str], dict, Optional[str]]:
    """(timm entry point, model_args, why timm cannot build it) for our architecture.

    timm's entry points fix depths and embed_dim (and, for L/XL/H, the flags): an architecture timm builds is
    one of its twelve with only the free arguments changed (classes, channels, normalize_modulator, MLP ratio)."""
    from ..registry import get_spec, list_models

    if arch.get("family") != "hierarchical":
        return None, {}, "timm has no isotropic FocalNet"
    if int(arch.get("patch_size", 4)) != 4 or int(arch.get("focal_factor", 2)) != 2:
        return None, {}, (f"timm's FocalNet has a stride-4 stem and focal factor 2; this model has patch_size="
                          f"{arch.get('patch_size')} and focal_factor={arch.get('focal_factor')}")
    ours = {t: (list(arch[o]) if isinstance(arch.get(o), (list, tuple)) else arch.get(o)) for t, o in _TIMM_ARGS.items()}
    candidates = ([variant] if variant in list_models() else []) + [n for n in list_models() if n != variant]
    for name in candidates:
        spec = get_spec(name).arch
        if spec["family"] != "hierarchical":
            continue
        theirs = {t: (list(spec[o]) if isinstance(spec.get(o), (list, tuple)) else spec.get(o)) for t, o in _TIMM_ARGS.items()}
        if all(ours[k] == theirs[k] for k in _TIMM_FIXED):
            free = {k: v for k, v in ours.items() if k not in _TIMM_FIXED}
            return name, free, None
    return None, {}, (f"timm's focalnet entry points fix depths and embed_dim (and the flags of L/XL/H); none has "
                      f"depths={ours['depths']}, embed_dim={ours['embed_dim']}, focal_levels={ours['focal_levels']}, "
                      f"focal_windows={ours['focal_windows']}")


def timm_config(
    arch: Mapping, variant: Optional[str], class_names: Optional[list[str]], pre: Mapping
) -> tuple[dict, Optional[str]]:
    """timm's config.json (architecture, num_classes, num_features, model_args, pretrained_cfg with input size,
    mean, std, crop, interpolation, classes and label names) and why timm cannot build it (None: it can)."""
    entry, model_args, why_not = timm_model_args(arch, variant)
    num_classes = int(arch.get("num_classes", 0))
    labels = imagenet_labels(num_classes) if class_names is None else None
    size = int(pre["img_size"])
    pretrained_cfg = {
        "input_size": [int(arch.get("in_chans", 3)), size, size], "fixed_input_size": False,
        "interpolation": pre.get("interpolation", "bicubic"), "crop_pct": float(pre.get("crop_pct") or 1.0),
        "crop_mode": "center", "mean": list(pre["mean"]), "std": list(pre["std"]), "num_classes": num_classes,
        "first_conv": "stem.proj", "classifier": "head.fc",
    }
    if class_names is not None:
        pretrained_cfg["label_names"] = list(class_names)
    elif labels is not None:
        pretrained_cfg["label_names"], pretrained_cfg["label_descriptions"] = labels
    dims = arch["embed_dim"] * 2 ** (len(arch["depths"]) - 1) if arch.get("family") == "hierarchical" else arch["embed_dim"]
    if entry is None:
        # none of timm's FocalNets: `import focalnet` registers this name with timm (focalnet.factory), whose
        # model_args are our own arguments; timm without focalnet refuses the name (never the wrong 27.7 M model)
        model_args = {k: (list(v) if isinstance(v, tuple) else v) for k, v in arch.items()}
    config = {
        "architecture": entry or "focalnet_custom", "num_classes": num_classes, "num_features": dims,
        "model_args": model_args, "pretrained_cfg": pretrained_cfg,
    }
    return config, why_not
