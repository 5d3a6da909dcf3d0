"""Reading and writing FocalNet checkpoints, safely and atomically.

Reads, with the layout detected automatically:
- ours: a `.safetensors` file whose metadata holds the architecture (JSON), or a training checkpoint
  (`{'model': ..., 'arch': ...}`, see `focalnet.train.loop`);
- the authors': `.pth` with `{'model': state_dict, ...}`;
- timm's: `.pth` / `.safetensors`, or a folder with `model.safetensors` (or `pytorch_model.bin`) and
  `config.json`;
- Hugging Face transformers': a `save_pretrained` folder of `FocalNetForImageClassification` or
  `FocalNetModel`, or its state dict.
Writes all four (`write_checkpoint`). Never executes code from a file: pickles are read with
`torch.load(weights_only=True)` and refused, with the reason, when they need anything but tensors and
plain containers. Every file is written to a temporary name in the target folder, flushed, then renamed,
so an interrupted write never leaves a truncated file nor destroys the previous one.

What the weights mean is decided elsewhere: `focalnet.checkpoints.arch` (the architecture a file holds),
`focalnet.checkpoints.load` (strict loading into a model).
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..errors import FocalNetError
from ..utils import atomic_json, atomic_save_file, atomic_torch_save
from .arch import arch_from_hf_config, class_names_from_hf_config, hf_config
from .convert import (
    FORMATS,
    ConversionError,
    detect_family,
    detect_layout,
    from_focalnet,
    strip_prefixes,
    timm_is_post_norm,
    to_focalnet,
)

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "read_checkpoint",
    "write_checkpoint",
    "save_model",
    "safe_torch_load",
    "PREPROCESSING_KEYS",
]

PathLike = Union[str, os.PathLike]


class CheckpointError(FocalNetError, ValueError):
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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path} as JSON: {e}") from None


def _read_folder(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """A timm hub folder or a Hugging Face save_pretrained folder: (state dict, config.json, metadata)."""
    cfg_path = path / "config.json"
    config = _read_json(cfg_path) if cfg_path.exists() else {}
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").exists():
        sd, meta = _load_safetensors(path / "model.safetensors")
    elif index.exists():  # sharded save_pretrained
        weight_map = _read_json(index).get("weight_map") or {}
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


def read_checkpoint(path: PathLike) -> Checkpoint:
    """Read any supported checkpoint file or folder into our layout (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.is_dir():
            sd, said = _read_folder_checkpoint(path)
        elif path.suffix == ".safetensors":
            sd, meta = _load_safetensors(path)
            said = _our_metadata(meta, path) if meta.get("format") == "focalnet" else {}
        else:
            sd, said = _read_pickle_checkpoint(path)
        sd = strip_prefixes(sd)
        fmt = detect_layout(sd)
        family = said["arch"]["family"] if said.get("arch") else detect_family(sd, fmt)
        ours = to_focalnet(sd, fmt, family)
    except ConversionError as e:
        raise CheckpointError(f"{path}: {e}") from None
    # timm's names reveal post-norm blocks, which their shapes cannot
    hints = {"use_post_norm": timm_is_post_norm(sd)} if fmt == "timm" else {}
    return Checkpoint(ours, fmt, family, path=str(path), hints=hints, **said)


def _read_folder_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A timm hub folder or a Hugging Face save_pretrained folder: (state dict, what its files say)."""
    sd, config, meta = _read_folder(path)
    said: dict = {}
    if config.get("model_type") == "focalnet":
        said = dict(arch=arch_from_hf_config(config), class_names=class_names_from_hf_config(config))
    elif "architecture" in config:  # timm hub folder
        said = dict(
            variant=config["architecture"],
            class_names=config.get("label_names") or (config.get("pretrained_cfg") or {}).get("label_names"),
        )
    if meta.get("format") == "focalnet":
        said = _our_metadata(meta, path)
    return sd, said


def _read_pickle_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A .pth file: a bare state dict, the authors' {'model': ...}, or our training checkpoint."""
    sd, extra = _unwrap(safe_torch_load(path), path)
    said: dict = dict(extra=extra)
    if isinstance(extra.get("arch"), Mapping):  # our training checkpoints
        said.update(arch=dict(extra["arch"]), variant=extra.get("variant"), class_names=extra.get("class_names"))
        data = extra.get("data")
        if isinstance(data, Mapping) and data.get("mean") is not None and data.get("std") is not None:
            said["preprocessing"] = _clean_preprocessing(
                dict(mean=data["mean"], std=data["std"], img_size=data.get("img_size"),
                     crop_pct=1.0 if data.get("img_size") else None)  # tensor data sets: fed whole
            )
    return sd, said


def _our_metadata(meta: Mapping[str, str], path: Path) -> dict:
    """What our .safetensors metadata says: architecture, variant, class names, preprocessing."""
    try:
        arch = json.loads(meta["arch"])
        names = json.loads(meta["class_names"]) if meta.get("class_names") else None
        pre = json.loads(meta["preprocessing"]) if meta.get("preprocessing") else None
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: damaged focalnet metadata ({type(e).__name__}: {e})") from None
    return dict(
        arch=arch, variant=meta.get("variant") or None, class_names=names,
        preprocessing=_clean_preprocessing(pre) if pre is not None else None,
    )


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
        atomic_save_file(path, lambda tmp: save_file(out, tmp, metadata=meta))
    elif fmt == "official":
        atomic_torch_save({"model": out}, path)
    elif fmt == "timm":
        if path.suffix == ".safetensors":
            atomic_save_file(path, lambda tmp: save_file(out, tmp))
        elif path.suffix in (".pth", ".pt", ".bin"):
            atomic_torch_save(out, path)
        else:
            atomic_save_file(path / "model.safetensors", lambda tmp: save_file(out, tmp))
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
        atomic_save_file(path / "model.safetensors", lambda tmp: save_file(out, tmp, metadata={"format": "pt"}))
        atomic_json(hf_config(arch, class_names), path / "config.json")
    return path

