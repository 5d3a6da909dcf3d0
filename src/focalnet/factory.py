"""`create_model` and `load_model`: a registered architecture with weights from any supported source."""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from .checkpoints import Checkpoint, CheckpointError, ConversionError, arch_from_state_dict, load_into, read_checkpoint
from .checkpoints.arch import complete_preprocessing, validate_arch
from .checkpoints.verify import Verification, verify_checkpoint
from .hub import HUB_PREFIX, SOURCES, checkpoint_in, download_hub_repo, download_weights, known_hashes, parse_hub_id
from .arch_fields import HIDDEN, PRESENCE, SHAPE, fields_with
from .models import ModelArgumentError, model_from_arch, placed
from .registry import build_model, get_spec, list_models

__all__ = ["create_model", "load_model", "resolve_variant", "download_weights", "SOURCES", "verify", "register_with_timm",
           "register_with_timm_on_import",
           "TIMM_CUSTOM"]

log = logging.getLogger("focalnet")
PathLike = Union[str, os.PathLike]

# fields the tensor shapes determine (SHAPE in focalnet.arch_fields); the rest (pre/post norm, normalize_modulator)
# come from the registry
_SHAPE_FIELDS = ("family", *fields_with(SHAPE))


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
    try:
        shapes = arch_from_state_dict(ckpt.state_dict, ckpt.family)
    except ConversionError as e:
        raise CheckpointError(f"{ckpt.path or 'the checkpoint'}: {e}") from None
    named = ckpt.variant if ckpt.variant in list_models() else None
    for name in [named] if named else list_models():
        arch = get_spec(name).arch
        if all(_same(arch.get(f), shapes.get(f)) for f in _SHAPE_FIELDS) and (
            (arch.get("layerscale_value") is None) == (shapes.get("layerscale_value") is None)
        ):
            return name, {**arch, **overrides, **ckpt.hints}
    flags = {}
    if named:  # a resized version of a named variant: its shapes, the variant's flags
        flags = {k: get_spec(named).arch[k] for k in fields_with(HIDDEN, PRESENCE)}
        if shapes.get("layerscale_value") is None:
            flags["layerscale_value"] = None
    return None, {**shapes, **flags, **ckpt.hints}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _hub_checkpoint(hub_id: str) -> Checkpoint:
    repo, revision = parse_hub_id(hub_id)
    return read_checkpoint(checkpoint_in(download_hub_repo(repo, revision)))


def _read_pretrained(name: str, pretrained: Union[bool, str, PathLike, Checkpoint]) -> Checkpoint:
    if isinstance(pretrained, Checkpoint):  # already read (focalnet eval reads a file once)
        return pretrained
    if pretrained is True:
        return read_checkpoint(download_weights(name))
    if isinstance(pretrained, str) and pretrained.startswith(HUB_PREFIX):
        return _hub_checkpoint(pretrained)
    if isinstance(pretrained, str) and pretrained in SOURCES and not Path(pretrained).exists():
        return read_checkpoint(download_weights(name, pretrained))
    return read_checkpoint(pretrained)


def _finish(model: nn.Module, ckpt: Optional[Checkpoint]) -> None:
    """What travels with the weights: class names, and the whole preprocessing (the file's, else the
    variant's), which `model.pretrained_cfg` hands to timm's resolve_data_config / create_transform."""
    saved = None
    if ckpt is not None:
        model.class_names = ckpt.class_names if ckpt.num_classes == model.num_classes else None
        if ckpt.preprocessing is not None and len(ckpt.preprocessing["mean"]) == model.in_chans:
            saved = ckpt.preprocessing  # the input normalisation the weights were trained with
    try:
        model.preprocessing = complete_preprocessing(model.in_chans, saved, getattr(model, "variant", None))
    except ConversionError:  # e.g. a 4-channel model without saved statistics: nothing to say
        model.preprocessing = saved


# timm's feature wrappers by the names timm's create_model takes for `feature_cls`
_FEATURE_CLASSES = ("getter", "list", "dict", "hook", "fx")


def _features(model: nn.Module, out_indices: Optional[Any], feature_cls: str = "getter") -> nn.Module:
    """timm's features_only model over `model`: a module returning the maps of the stages (isotropic: blocks)
    `out_indices` chooses (default: all), with feature_info (timm's FeatureInfo: .channels(), .reduction()),
    pretrained_cfg / default_cfg (the model's, less the classifier's keys, as timm's) and set_grad_checkpointing.

    feature_cls is timm's: 'getter' (default: our forward_intermediates, the model pruned after the last map asked
    for) or one of timm's wrappers that rebuild or hook the model from its modules ('list', 'dict', 'hook') or
    trace it ('fx', needs torchvision). These skip the input check and the channels-last conversion of our
    forward: same values within float rounding, see docs/timm.md."""
    try:
        from timm.models._features import FeatureDictNet, FeatureGetterNet, FeatureHookNet, FeatureListNet
    except ImportError:
        raise CheckpointError("features_only=True uses timm's feature wrappers: pip install timm") from None
    if feature_cls not in _FEATURE_CLASSES:
        raise ModelArgumentError(f"feature_cls must be one of {', '.join(_FEATURE_CLASSES)}, got {feature_cls!r}")
    indices = tuple(range(len(model.feature_info))) if out_indices is None else out_indices
    cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in ("num_classes", "classifier", "global_pool")}
    if feature_cls == "getter":  # prunes the stages after the last map, the final norm and the head
        features = FeatureGetterNet(model, out_indices=indices)
    elif feature_cls == "fx":
        from timm.models._features_fx import FeatureGraphNet

        features = FeatureGraphNet(model, out_indices=indices)
    else:  # walk the model's modules in order: the stages (nn.Sequential) flattened, as timm does for its FocalNet
        cls = dict(list=FeatureListNet, dict=FeatureDictNet, hook=FeatureHookNet)[feature_cls]
        features = cls(model, out_indices=indices, flatten_sequential=True)
    features.pretrained_cfg = features.default_cfg = cfg
    if not hasattr(features, "set_grad_checkpointing"):  # timm's getter has none: the model's own switch
        features.set_grad_checkpointing = model.set_grad_checkpointing
    return features


def create_model(
    name: str,
    pretrained: Union[bool, str, PathLike] = False,
    *,
    num_classes: Optional[int] = None,
    in_chans: Optional[int] = None,
    drop_path_rate: Optional[float] = None,
    reset_head: bool = False,
    features_only: bool = False,
    out_indices: Optional[Any] = None,
    feature_cls: str = "getter",
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
    **overrides: Any,
) -> nn.Module:
    """Build the registered model `name` (or the model of a hub repo, 'hf-hub:ORG/REPO'), optionally with weights.

    pretrained: False; True (the released weights, from the most reliable source that answers: timm's hub
        copy, transformers', the authors' GitHub release, their blob store; see `focalnet.hub`);
        'timm' / 'hf' / 'official' (that source only); 'hf-hub:ORG/REPO[@REV]' (a hub repo in any of our
        four layouts); or the path of a checkpoint in any supported layout (see `focalnet.checkpoints`).
    features_only: return timm's feature extractor (FeatureGetterNet): forward gives the list of stage maps
        `out_indices` chooses (default: every stage), with `feature_info.channels()` / `.reduction()`;
        `feature_cls` picks another of timm's wrappers ('list', 'dict', 'hook', 'fx'; see `_features`).
    device, dtype: where and in which floating-point type the parameters are made (timm's arguments); on the
        meta device nothing is allocated (and no weights can be loaded).
    num_classes: classifier size (0: no classifier). With weights and no num_classes, the checkpoint's
        head is kept. num_classes=1000 on the authors' 21842-class ImageNet-22K head slices it to
        ImageNet-1K; any other difference needs reset_head=True, which re-initialises the head only.
    in_chans: input channels; in_chans=1 with RGB weights sums the stem over its input channels.
    drop_path_rate: stochastic depth (default: the paper's value for the variant).
    overrides: any other architecture argument of FocalNet / FocalNetIsotropic (global_pool, ...).
    """
    if pretrained and device is not None and torch.device(device).type == "meta":
        raise ModelArgumentError("device='meta' makes a model without storage, into which no weights load: "
                                 "drop pretrained, or build on 'cpu' / 'cuda'")
    if name.startswith(HUB_PREFIX):  # a hub repo states its own architecture
        if pretrained not in (False, True):
            raise CheckpointError(f"create_model({name!r}) takes its weights from the hub repo; drop pretrained={pretrained!r}")
        model = load_model(name, **{k: v for k, v in dict(num_classes=num_classes, in_chans=in_chans,
                                    drop_path_rate=drop_path_rate).items() if v is not None},
                           reset_head=reset_head, device=device, dtype=dtype, **overrides)
        return _features(model, out_indices, feature_cls) if features_only else model
    ckpt = _read_pretrained(name, pretrained) if pretrained else None
    if ckpt is not None:
        if num_classes is None:
            num_classes = ckpt.num_classes
        if in_chans is None:
            in_chans = ckpt.in_chans
    for key, value in (("num_classes", num_classes), ("in_chans", in_chans), ("drop_path_rate", drop_path_rate)):
        if value is not None:
            overrides[key] = value
    with torch.device("meta"):  # types, ranges and size (FOCALNET_MAX_MODEL_BYTES) before any weight is allocated
        meta = build_model(name, **overrides)
    try:
        validate_arch(meta.arch, where=f"{name} with {overrides}" if overrides else name)
    except ConversionError as e:
        raise ModelArgumentError(str(e)) from None
    if ckpt is not None:  # names and shapes compared on the meta device before any weight is allocated
        with torch.device("meta"):
            _dry_load(meta, ckpt, reset_head)
    model = placed(lambda: build_model(name, **overrides), device=device, dtype=dtype)
    if ckpt is not None:
        load_into(model, ckpt, reset_head=reset_head)  # copied onto the model's device, in its dtype
    _finish(model, ckpt)
    return _features(model, out_indices, feature_cls) if features_only else model


def _dry_load(meta_model: nn.Module, ckpt: Checkpoint, reset_head: bool) -> None:
    """`load_into` a model on the meta device: every name and shape check, no weight allocated or copied."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-meta parameter.*")  # copying into meta is a no-op: intended
        load_into(meta_model, ckpt, reset_head=reset_head)


def load_model(path: Union[PathLike, Checkpoint], **overrides: Any) -> nn.Module:
    """Build the model a checkpoint (a path, or a hub repo 'hf-hub:ORG/REPO[@REV]') holds, with its weights,
    without naming the architecture. `overrides` may also hold device and dtype (as for create_model).

    The architecture comes from the file when it says (ours, HF, timm folders), else from the registered
    variant whose tensor shapes match (see `resolve_variant`).
    """
    if isinstance(path, str) and path.startswith(HUB_PREFIX):
        ckpt = _hub_checkpoint(path)
    else:
        ckpt = path if isinstance(path, Checkpoint) else read_checkpoint(path)
    variant, arch = resolve_variant(ckpt)
    reset_head = overrides.pop("reset_head", False)
    device, dtype = overrides.pop("device", None), overrides.pop("dtype", None)
    # the architecture (types, ranges, size) and the file's names and shapes, checked on the meta device:
    # a file claiming a 3 GB model for 1 MB of tensors is refused before anything is allocated
    try:
        meta = validate_arch({**arch, **overrides}, where=f"the architecture of {ckpt.path or 'the checkpoint'}")
    except ConversionError as e:
        raise CheckpointError(str(e)) from None
    _dry_load(meta, ckpt, reset_head)
    model = model_from_arch(arch, device=device, dtype=dtype, **overrides)
    model.variant = variant
    load_into(model, ckpt, reset_head=reset_head)
    _finish(model, ckpt)
    return model


# the timm model name of FocalNets that none of timm's own entry points can build (written into timm config.json)
TIMM_CUSTOM = "focalnet_custom"
_TIMM_PASSED = ("pretrained_cfg_overlay", "cache_dir")  # what timm's create_model passes that is not ours


def focalnet_custom(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """timm's entry point for a FocalNet that timm's own twelve cannot build (other depths or widths, a 2x2
    stem): `timm.create_model("local-dir:FOLDER" or "hf-hub:ORG/REPO")` on a folder we wrote, whose
    config.json names this architecture with our own arguments as model_args. Registered by `import focalnet`.
    Arguments given to timm's create_model beside the folder's (num_classes, in_chans, ...) override them."""
    cfg = kwargs.pop("pretrained_cfg", None)
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})
    declared = dict(kwargs.pop("pretrained_model_args", None) or {})
    features_only, out_indices = kwargs.pop("features_only", False), kwargs.pop("out_indices", None)
    feature_cls = kwargs.pop("feature_cls", "getter")
    for key in _TIMM_PASSED:
        kwargs.pop(key, None)
    if not pretrained:
        placement = {k: kwargs.pop(k) for k in ("device", "dtype") if k in kwargs}
        arch = {**declared, **kwargs}
        if "family" not in arch:
            raise CheckpointError(f"timm's {TIMM_CUSTOM} builds what a config.json written by focalnet describes: "
                                  "use timm.create_model('local-dir:FOLDER'), or focalnet.create_model(NAME, ...)")
        model = model_from_arch(arch, **placement)
    else:
        source = cfg.get("file") or (HUB_PREFIX + cfg["hf_hub_id"] if cfg.get("hf_hub_id") else None)
        if source is None:
            raise CheckpointError(f"timm's {TIMM_CUSTOM} loads weights from a 'local-dir:' or 'hf-hub:' source only")
        overrides = {k: v for k, v in kwargs.items() if not _same(declared.get(k), v)}
        # timm's semantics: another num_classes is a fresh classifier, another in_chans an adapted stem
        model = load_model(source, reset_head="num_classes" in overrides, **overrides)
    return _features(model, out_indices, feature_cls) if features_only else model


def register_with_timm() -> bool:
    """Register `focalnet_custom` with timm (once), so that timm builds every FocalNet folder we write. False
    when timm is not installed."""
    try:
        from timm.models import is_model, register_model
    except ImportError:
        return False
    if not is_model(TIMM_CUSTOM):
        register_model(focalnet_custom)
    return True


class _RegisterWhenTimmLoads(importlib.abc.MetaPathFinder):
    """Runs `register_with_timm` right after timm itself is imported, whenever that happens: importing timm
    in `import focalnet` would cost every import about 1.5 s (timm loads all its model modules).

    A lookup that only asks where timm is (`importlib.util.find_spec("timm")`, as transformers does to learn
    whether timm is installed) executes nothing: the finder stays in place, and each spec it hands out registers
    when, and only if, it is executed; then the finder removes itself."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "timm":
            return None
        spec = None
        for finder in list(sys.meta_path):  # where timm is, as the import system would find it without us
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            register_with_timm()

        spec.loader.exec_module = exec_then_register  # this spec's own loader instance (a probe's is another)
        return spec


def register_with_timm_on_import() -> None:
    """`register_with_timm` now if timm is loaded, else as soon as it is (what `import focalnet` does)."""
    if "timm" in sys.modules:
        register_with_timm()
    elif not any(isinstance(f, _RegisterWhenTimmLoads) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterWhenTimmLoads())


def verify(path: Union[PathLike, str]) -> Verification:
    """`focalnet verify`: recompute a file's tensor fingerprint and reference outputs and compare them with
    the record it was written with (see `focalnet.checkpoints.verify`); also names a released file whose
    sha256 the registry records."""
    if isinstance(path, str) and path.startswith(HUB_PREFIX):
        repo, revision = parse_hub_id(path)
        path = checkpoint_in(download_hub_repo(repo, revision))
    ckpt = read_checkpoint(path)
    variant, arch = resolve_variant(ckpt)  # what load_model would refuse (no architecture fits), verify fails too
    with torch.device("meta"):
        _dry_load(model_from_arch(arch), ckpt, reset_head=False)
    return verify_checkpoint(ckpt, path, known_hashes=known_hashes())
