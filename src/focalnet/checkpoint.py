"""Reading and writing FocalNet checkpoints, safely and atomically.

Reads, with the layout detected automatically:
- ours: a `.safetensors` file whose metadata holds the architecture (JSON), or a training checkpoint
  (`{'model': ..., 'arch': ...}`, see `focalnet.engine`);
- the authors': `.pth` with `{'model': state_dict, ...}`;
- timm's: `.pth` / `.safetensors`, or a folder with `model.safetensors` (or `pytorch_model.bin`) and
  `config.json`;
- Hugging Face transformers': a `save_pretrained` folder of `FocalNetForImageClassification` or
  `FocalNetModel`, or its state dict.
Writes all four (`write_checkpoint`). Never executes code from a file: pickles are read with
`torch.load(weights_only=True)` and refused, with the reason, when they need anything but tensors and
plain containers. Every file is written to a temporary name in the target folder, flushed, then renamed,
so an interrupted write never leaves a truncated file nor destroys the previous one.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import tempfile
import zipfile
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import torch
import torch.nn as nn

from .convert import (
    FORMATS,
    ConversionError,
    detect_family,
    detect_layout,
    from_focalnet,
    in22k_head_to_in1k,
    strip_prefixes,
    to_focalnet,
)

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "read_checkpoint",
    "load_into",
    "write_checkpoint",
    "save_model",
    "atomic_write",
    "safe_torch_load",
    "arch_from_state_dict",
]

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says what to do."""


@dataclass
class Checkpoint:
    """A checkpoint read into our layout."""

    state_dict: dict[str, torch.Tensor]
    source_format: str  # one of FORMATS
    family: str
    arch: Optional[dict] = None  # known when the file says (ours, HF config, timm config)
    variant: Optional[str] = None
    class_names: Optional[list[str]] = None
    path: Optional[str] = None
    extra: dict = field(default_factory=dict)
    hints: dict = field(default_factory=dict)  # flags the source layout's names reveal (timm's norm1_post)
    # how the weights want their input (mean, std, img_size, crop_pct) when the file says: ours and our
    # training checkpoints store the data set's normalisation, which differs from ImageNet's for e.g. Fashion-MNIST
    preprocessing: Optional[dict] = None

    @property
    def num_classes(self) -> int:
        w = self.state_dict.get("head.fc.weight")
        return 0 if w is None else int(w.shape[0])

    @property
    def in_chans(self) -> int:
        return int(self.state_dict["stem.proj.weight"].shape[1])

    @property
    def num_params(self) -> int:
        return sum(t.numel() for t in self.state_dict.values())


# --------------------------------------------------------------------------------------------------------
# Writing atomically
# --------------------------------------------------------------------------------------------------------


def _umask_mode() -> int:
    """The permissions a plain open() would give a new file (mkstemp's temporary files are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success flush, fsync and rename it onto `path`.

    On any error (a full disk included) the temporary file is removed and `path` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), _umask_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _atomic_save_file(path: PathLike, writer: Callable[[str], None]) -> None:
    """For writers that take a file name (safetensors): write to a temporary name, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, _umask_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    with atomic_write(path) as f:
        torch.save(obj, f)


def atomic_json(obj: Any, path: PathLike) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# --------------------------------------------------------------------------------------------------------
# Reading safely
# --------------------------------------------------------------------------------------------------------


class _ConfigStub:
    """Stands in for `yacs.config.CfgNode`, which the authors' training checkpoints pickle as 'config'.

    The restricted unpickler of `torch.load(weights_only=True)` calls `__new__`, which returns a plain
    OrderedDict that then receives the config's items: yacs is never imported and no code from the file runs.
    """

    def __new__(cls, *args: Any) -> "OrderedDict":  # type: ignore[misc]
        return OrderedDict()


# (stand-in, the full name the pickle refers to)
_SAFE_GLOBALS = [(_ConfigStub, "yacs.config.CfgNode")]


def safe_torch_load(path: PathLike) -> Any:
    """torch.load with weights_only=True; a pickle that needs code is refused with the reason."""
    try:
        try:
            allow = torch.serialization.safe_globals(_SAFE_GLOBALS)
        except (AttributeError, TypeError):  # older PyTorch: no stand-ins, tensors and containers only
            allow = contextlib.nullcontext()
        with allow:
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:  # not a refusal: the bytes are not a checkpoint at all
            last = [line for line in str(e).strip().splitlines() if line.strip()]
            raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {last[-1] if last else e}") from None
        reason = f"it refers to {found.group(1)}"
        raise CheckpointError(
            f"refused to load {path}: it is a pickle that needs more than tensors and plain Python values "
            f"({reason}). Loading a FocalNet checkpoint never executes code from the file. If you trust "
            "its origin, re-save its state dict (torch.save(torch.load(f, weights_only=False)['model'], "
            "'clean.pth')) or convert it to safetensors, then load that."
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {e}") from None


def _load_safetensors(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {path} as safetensors: {e}") from None


_WRAPPER_KEYS = ("model", "state_dict", "model_state", "module")


def _unwrap(obj: Any, path: PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Find the state dict inside a checkpoint dict; return it and the rest of the dict."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj), {}
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner), {k: v for k, v in obj.items() if k != key}
    raise CheckpointError(
        f"{path} is a dict without a state dict of tensors (looked at the top level and under "
        f"{', '.join(repr(k) for k in _WRAPPER_KEYS)}); its keys: {', '.join(map(str, list(obj)[:10]))}"
    )


def _read_folder(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """A timm hub folder or a Hugging Face save_pretrained folder: (state dict, config.json, metadata)."""
    cfg_path = path / "config.json"
    config = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").exists():
        sd, meta = _load_safetensors(path / "model.safetensors")
    elif index.exists():  # sharded save_pretrained
        weight_map = json.loads(index.read_text())["weight_map"]
        sd, meta = {}, {}
        for shard in sorted(set(weight_map.values())):
            part, meta = _load_safetensors(path / shard)
            sd.update(part)
    elif (path / "pytorch_model.bin").exists():
        sd, _ = _unwrap(safe_torch_load(path / "pytorch_model.bin"), path)
        meta = {}
    else:
        raise CheckpointError(
            f"{path} is a folder without model.safetensors, model.safetensors.index.json or pytorch_model.bin"
        )
    return sd, config, meta


def arch_from_hf_config(config: Mapping) -> dict:
    """Our architecture from a transformers FocalNetConfig dict."""
    if config.get("hidden_act", "gelu") != "gelu" or abs(config.get("layer_norm_eps", 1e-5) - 1e-5) > 1e-12:
        raise CheckpointError("only hidden_act='gelu' and layer_norm_eps=1e-5 FocalNet configs are supported")
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


def _class_names_from_hf(config: Mapping) -> Optional[list[str]]:
    id2label = config.get("id2label") or {}
    names = [id2label[k] for k in sorted(id2label, key=int)] if id2label else None
    if names and all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return names


def read_checkpoint(path: PathLike) -> Checkpoint:
    """Read any supported checkpoint file or folder into our layout (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    arch = variant = class_names = preprocessing = None
    extra: dict = {}
    if path.is_dir():
        sd, config, meta = _read_folder(path)
        if config.get("model_type") == "focalnet":
            arch = arch_from_hf_config(config)
            class_names = _class_names_from_hf(config)
        elif "architecture" in config:  # timm hub folder
            variant = config["architecture"]
            class_names = config.get("label_names") or (config.get("pretrained_cfg") or {}).get("label_names")
        if meta.get("format") == "focalnet":
            arch, variant, class_names, preprocessing = _our_metadata(meta)
    elif path.suffix == ".safetensors":
        sd, meta = _load_safetensors(path)
        if meta.get("format") == "focalnet":
            arch, variant, class_names, preprocessing = _our_metadata(meta)
    else:
        obj = safe_torch_load(path)
        sd, extra = _unwrap(obj, path)
        if isinstance(extra.get("arch"), Mapping):  # our training checkpoints
            arch = dict(extra["arch"])
            variant = extra.get("variant")
            class_names = extra.get("class_names")
            data = extra.get("data")
            if isinstance(data, Mapping) and data.get("mean") is not None and data.get("std") is not None:
                preprocessing = _clean_preprocessing(
                    dict(mean=data["mean"], std=data["std"], img_size=data.get("img_size"),
                         crop_pct=1.0 if data.get("img_size") else None)  # tensor data sets: fed whole
                )
    sd = strip_prefixes(sd)
    try:
        fmt = detect_layout(sd)
        family = arch["family"] if arch else detect_family(sd, fmt)
        ours = to_focalnet(sd, fmt, family)
    except ConversionError as e:
        raise CheckpointError(f"{path}: {e}") from None
    hints = {"use_post_norm": any(".norm1_post." in k for k in sd)} if fmt == "timm" else {}
    return Checkpoint(ours, fmt, family, arch, variant, class_names, str(path), extra, hints, preprocessing)


def _our_metadata(meta: Mapping[str, str]) -> tuple[dict, Optional[str], Optional[list[str]], Optional[dict]]:
    arch = json.loads(meta["arch"])
    names = json.loads(meta["class_names"]) if meta.get("class_names") else None
    pre = _clean_preprocessing(json.loads(meta["preprocessing"])) if meta.get("preprocessing") else None
    return arch, meta.get("variant") or None, names, pre


PREPROCESSING_KEYS = ("mean", "std", "img_size", "crop_pct", "interpolation")


def _clean_preprocessing(pre: Mapping) -> dict:
    """Validate a preprocessing record (mean and std per input channel, optional img_size/crop_pct/interpolation)."""
    unknown = sorted(set(pre) - set(PREPROCESSING_KEYS))
    if unknown:
        raise CheckpointError(f"unknown preprocessing keys {unknown}; allowed: {', '.join(PREPROCESSING_KEYS)}")
    out = {k: pre[k] for k in PREPROCESSING_KEYS if pre.get(k) is not None}
    for k in ("mean", "std"):
        if k not in out:
            raise CheckpointError(f"preprocessing needs '{k}' (one value per input channel)")
        out[k] = [float(v) for v in out[k]]
    if len(out["mean"]) != len(out["std"]) or any(v <= 0 for v in out["std"]):
        raise CheckpointError(f"preprocessing mean {out['mean']} and std {out['std']}: one per channel, std > 0")
    if "img_size" in out:
        out["img_size"] = int(out["img_size"])
    if "crop_pct" in out:
        out["crop_pct"] = float(out["crop_pct"])
    return out


# --------------------------------------------------------------------------------------------------------
# Architecture from the tensors alone (for files that do not say)
# --------------------------------------------------------------------------------------------------------


def arch_from_state_dict(sd: Mapping[str, torch.Tensor], family: Optional[str] = None) -> dict:
    """What the tensor shapes of our-layout `sd` say about the architecture.

    Shapes fix depths, width, focal levels, windows, focal factor, patch size, conv embedding, layer scale
    and post-norm in modulation. They cannot tell pre- from post-norm blocks nor `normalize_modulator`
    (no parameters): those come from the registered variant with the same shapes (see
    `focalnet.hub.resolve_variant`), or default to False.
    """
    family = family or ("isotropic" if any(k.startswith("blocks.") for k in sd) else "hierarchical")
    stem = sd["stem.proj.weight"]
    embed_dim, in_chans, k = int(stem.shape[0]), int(stem.shape[1]), int(stem.shape[2])
    head = sd.get("head.fc.weight")

    def block_info(prefix: str) -> tuple[int, int, int, float, bool, bool]:
        n_levels = 0
        while f"{prefix}modulation.focal_layers.{n_levels}.0.weight" in sd:
            n_levels += 1
        k0 = int(sd[f"{prefix}modulation.focal_layers.0.0.weight"].shape[-1])
        factor = int(sd[f"{prefix}modulation.focal_layers.1.0.weight"].shape[-1]) - k0 if n_levels > 1 else 2
        dim = int(sd[f"{prefix}norm1.weight"].shape[0])
        ratio = sd[f"{prefix}mlp.fc1.weight"].shape[0] / dim
        return n_levels, k0, factor, ratio, f"{prefix}ls1.gamma" in sd, f"{prefix}modulation.norm.weight" in sd

    common = dict(in_chans=in_chans, num_classes=0 if head is None else int(head.shape[0]))
    if family == "isotropic":
        depth = 0
        while f"blocks.{depth}.norm1.weight" in sd:
            depth += 1
        levels, window, factor, ratio, ls, post_mod = block_info("blocks.0.")
        return dict(
            family="isotropic", depth=depth, embed_dim=embed_dim, focal_level=levels, focal_window=window,
            focal_factor=factor, mlp_ratio=ratio, patch_size=k, use_post_norm=False,
            use_post_norm_in_modulation=post_mod, normalize_modulator=False,
            layerscale_value=1e-4 if ls else None, **common,
        )
    depths, levels, windows = [], [], []
    s = 0
    while f"stages.{s}.blocks.0.norm1.weight" in sd:
        b = 0
        while f"stages.{s}.blocks.{b}.norm1.weight" in sd:
            b += 1
        depths.append(b)
        lv, win, factor, ratio, ls, post_mod = block_info(f"stages.{s}.blocks.0.")
        levels.append(lv)
        windows.append(win)
        s += 1
    conv_embed = k == 7
    return dict(
        family="hierarchical", depths=depths, embed_dim=embed_dim, focal_levels=levels, focal_windows=windows,
        focal_factor=factor, mlp_ratio=ratio, patch_size=4 if conv_embed else k, use_conv_embed=conv_embed,
        use_post_norm=False, use_post_norm_in_modulation=post_mod, normalize_modulator=False,
        layerscale_value=1e-4 if ls else None, **common,
    )


# --------------------------------------------------------------------------------------------------------
# Loading into a model, strictly
# --------------------------------------------------------------------------------------------------------


def load_into(
    model: nn.Module,
    ckpt: Union[Checkpoint, Mapping[str, torch.Tensor]],
    reset_head: bool = False,
) -> nn.Module:
    """Load our-layout weights into `model`, strictly. Only the classifier may be treated specially:

    - checkpoint and model have the same number of classes: loaded as is;
    - the model has no classifier (num_classes=0): the checkpoint's head is ignored;
    - the checkpoint has the authors' 21842-class ImageNet-22K head and the model 1000 classes: the head
      is sliced to ImageNet-1K (`focalnet.convert.in22k_head_to_in1k` says how class 850 is filled);
    - otherwise, `reset_head=True` keeps the model's freshly initialised classifier (and only that);
      without it, a different class count is an error that says so.
    A 3-channel stem is summed into a 1-channel one when the model has in_chans=1 (grayscale
    fine-tuning). Any other missing, unexpected or mis-shaped tensor is an error that names them.
    """
    sd = dict(ckpt.state_dict if isinstance(ckpt, Checkpoint) else ckpt)
    where = f" from {ckpt.path}" if isinstance(ckpt, Checkpoint) and ckpt.path else ""
    own = model.state_dict()

    n_model = int(own["head.fc.weight"].shape[0]) if "head.fc.weight" in own else 0
    n_ckpt = int(sd["head.fc.weight"].shape[0]) if "head.fc.weight" in sd else 0
    head_keys = ("head.fc.weight", "head.fc.bias")
    if n_model == 0:
        for k in head_keys:
            sd.pop(k, None)
    elif n_ckpt != n_model:
        if n_ckpt == 21842 and n_model == 1000 and not reset_head:
            sd["head.fc.weight"], sd["head.fc.bias"] = in22k_head_to_in1k(sd["head.fc.weight"], sd["head.fc.bias"])
        elif reset_head:
            for k in head_keys:
                sd.pop(k, None)
                sd[k] = own[k]
        else:
            what = f"has a {n_ckpt}-class head" if n_ckpt else "has no classifier (a feature extractor)"
            raise CheckpointError(
                f"the checkpoint{where} {what} but the model has {n_model} classes: pass "
                f"num_classes={n_ckpt} to use its head, or reset_head=True (CLI: --reset-head) to train a fresh "
                f"{n_model}-class head on top of its features"
            )

    stem_w = sd.get("stem.proj.weight")
    if stem_w is not None and stem_w.shape[1] != own["stem.proj.weight"].shape[1]:
        c_model, c_ckpt = own["stem.proj.weight"].shape[1], stem_w.shape[1]
        if c_model == 1 and c_ckpt == 3:
            # a gray image fed to an RGB stem as (g, g, g): the response is the sum over the input channels
            sd["stem.proj.weight"] = stem_w.sum(dim=1, keepdim=True)
        else:
            raise CheckpointError(
                f"the checkpoint{where} has a {c_ckpt}-channel stem but the model takes {c_model} channels: "
                f"build it with in_chans={c_ckpt} (or in_chans=1 to adapt an RGB stem to grayscale)"
            )

    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(sd)
        if sd[k].shape != own[k].shape
    )
    if missing or unexpected or mis_shaped:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)):
            if items:
                shown = "; ".join(items[:6]) + (f"; and {len(items) - 6} more" if len(items) > 6 else "")
                parts.append(f"{len(items)} {label}: {shown}")
        variant = getattr(model, "variant", None) or type(model).__name__
        raise CheckpointError(
            f"the checkpoint{where} does not fit {variant}: " + " | ".join(parts)
            + ". Check that the model name matches the checkpoint (`focalnet info CHECKPOINT` tells which it is)"
        )
    model.load_state_dict(sd, strict=True)
    return model


# --------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------


def _contiguous(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def save_model(
    model: nn.Module,
    path: PathLike,
    class_names: Optional[list[str]] = None,
    fmt: str = "focalnet",
    preprocessing: Optional[Mapping] = None,
) -> Path:
    """Write `model` in layout `fmt` (ours by default: one .safetensors file holding the architecture).

    preprocessing (ours only): the input normalisation the weights were trained with, e.g.
    {'mean': [0.286], 'std': [0.353], 'img_size': 28}; default `model.preprocessing` when set
    (load_model sets it), so predict/visualize feed the model what it learned on."""
    if preprocessing is None:
        preprocessing = getattr(model, "preprocessing", None)
    return write_checkpoint(
        model.state_dict(), model.arch, path, fmt=fmt, variant=getattr(model, "variant", None), class_names=class_names,
        preprocessing=preprocessing,
    )


def write_checkpoint(
    sd: Mapping[str, torch.Tensor],
    arch: Mapping,
    path: PathLike,
    fmt: str = "focalnet",
    variant: Optional[str] = None,
    class_names: Optional[list[str]] = None,
    preprocessing: Optional[Mapping] = None,
) -> Path:
    """Write our-layout `sd` as `fmt`:

    - focalnet: `path` (.safetensors) with the architecture, variant and class names in its metadata;
    - official: `path` (.pth) holding {'model': state_dict} in the authors' layout;
    - timm: `path` as a folder (model.safetensors + config.json, as on timm's hub), or a single
      .safetensors / .pth file when `path` has that suffix;
    - hf: `path` as a transformers save_pretrained folder (config.json + model.safetensors).
    """
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path)
    if class_names is not None and len(class_names) != arch.get("num_classes", 0):
        raise CheckpointError(f"{len(class_names)} class names for a {arch.get('num_classes', 0)}-class model")
    out = _contiguous(from_focalnet(sd, fmt, arch))
    from safetensors.torch import save_file

    if fmt == "focalnet":
        if path.suffix != ".safetensors":
            raise CheckpointError(f"our format is a single .safetensors file; got {path}")
        meta = {"format": "focalnet", "format_version": "1", "arch": json.dumps(dict(arch)), "variant": variant or ""}
        if class_names is not None:
            meta["class_names"] = json.dumps(list(class_names))
        if preprocessing is not None:
            pre = _clean_preprocessing(preprocessing)
            if len(pre["mean"]) != arch.get("in_chans", 3):
                raise CheckpointError(f"preprocessing has {len(pre['mean'])} channel(s), the model takes {arch.get('in_chans', 3)}")
            meta["preprocessing"] = json.dumps(pre)
        _atomic_save_file(path, lambda tmp: save_file(out, tmp, metadata=meta))
    elif fmt == "official":
        atomic_torch_save({"model": out}, path)
    elif fmt == "timm":
        if path.suffix == ".safetensors":
            _atomic_save_file(path, lambda tmp: save_file(out, tmp))
        elif path.suffix in (".pth", ".pt", ".bin"):
            atomic_torch_save(out, path)
        else:
            _atomic_save_file(path / "model.safetensors", lambda tmp: save_file(out, tmp))
            config = {
                "architecture": variant or "focalnet_custom",
                "num_classes": arch.get("num_classes", 0),
                "num_features": arch["embed_dim"] * 2 ** (len(arch["depths"]) - 1),
                "pretrained_cfg": {"num_classes": arch.get("num_classes", 0), "input_size": [arch.get("in_chans", 3), 224, 224]},
            }
            if class_names is not None:
                config["label_names"] = list(class_names)
            atomic_json(config, path / "config.json")
    else:  # hf
        if path.suffix:
            raise CheckpointError(f"a Hugging Face checkpoint is a folder; got the file name {path}")
        _atomic_save_file(path / "model.safetensors", lambda tmp: save_file(out, tmp, metadata={"format": "pt"}))
        atomic_json(hf_config(arch, class_names), path / "config.json")
    return path


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
