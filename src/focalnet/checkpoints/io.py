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
import logging
import math
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..errors import FocalNetError, limit_from_env
from ..utils import atomic_dir, atomic_json, atomic_save_file, atomic_torch_save
from .arch import (
    validate_arch,
    arch_from_hf_config,
    class_names_from_hf_config,
    complete_preprocessing,
    hf_config,
    hf_preprocessor_config,
    timm_config,
)
from .convert import (
    FORMATS,
    GRAY_FROM_RGB,
    ConversionError,
    detect_family,
    detect_layout,
    from_focalnet,
    gray_stem_as_rgb,
    rgb_stem_as_gray,
    strip_prefixes,
    timm_is_post_norm,
    to_focalnet,
)
from .verify import RECORD_KEY, make_record, read_record, record_path_for

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "read_checkpoint",
    "write_checkpoint",
    "save_model",
    "safe_torch_load",
    "check_tensor_bytes",
    "max_checkpoint_bytes",
    "MAX_CHECKPOINT_BYTES",
    "PREPROCESSING_KEYS",
]

PathLike = Union[str, os.PathLike]
log = logging.getLogger("focalnet")


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
    """torch.load with weights_only=True; a pickle that needs code is refused with the reason.

    The tensors' size is checked against `max_checkpoint_bytes()` from the zip's directory before anything
    is read (`check_tensor_bytes`)."""
    check_tensor_bytes(path)
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
            # torch wraps the unpickler's reason ("Unsupported operand 193") in advice that does not apply here
            lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
            reason = next((ln for ln in lines if not ln.startswith(("Weights only", "Please file", "Check the doc"))),
                          lines[-1] if lines else str(e))
            raise CheckpointError(
                f"cannot read {path} as a PyTorch checkpoint: {reason} (a damaged file, or not a checkpoint)"
            ) from None
        reason = f"it refers to {found.group(1)}"
        raise CheckpointError(
            f"refused to load {path}: it is a pickle that needs more than tensors and plain Python values "
            f"({reason}). Loading a FocalNet checkpoint never executes code from the file. If you trust "
            "its origin, re-save its state dict (torch.save(torch.load(f, weights_only=False)['model'], "
            "'clean.pth')) or convert it to safetensors, then load that."
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {e}") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, struct.error) as e:
        # the restricted unpickler fed crafted bytes fails in many ways; none of them is a bug of ours
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: damaged file ({type(e).__name__}: {e})") from None


# a checkpoint's tensors may take at most this many bytes (FOCALNET_MAX_CHECKPOINT_BYTES overrides it): four
# times FocalNet-H with its optimizer state; and torch.save never compresses, so tensors claiming more than
# _MAX_EXPANSION times the file's size (plus _EXPANSION_SLACK) are a zip bomb
MAX_CHECKPOINT_BYTES = 32 * 2**30
_MAX_EXPANSION = 16
_EXPANSION_SLACK = 64 * 2**20


def max_checkpoint_bytes() -> int:
    """$FOCALNET_MAX_CHECKPOINT_BYTES if set, else MAX_CHECKPOINT_BYTES."""
    return limit_from_env("FOCALNET_MAX_CHECKPOINT_BYTES", MAX_CHECKPOINT_BYTES, "bytes", CheckpointError)


def _declared_tensor_bytes(path: Path, file_size: int) -> int:
    """What loading `path` will allocate, from its directory, without reading the tensors: a zip's
    uncompressed sizes (torch.save's format), a safetensors file's data section, else the file's size."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                return sum(max(0, i.file_size) for i in z.infolist())
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: damaged zip ({e})") from None
    if path.suffix == ".safetensors":
        with open(path, "rb") as f:
            head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else file_size
        if n > file_size - 8:
            raise CheckpointError(f"cannot read {path} as safetensors: its header claims {n} bytes, the file has {file_size}")
        return file_size - 8 - n
    return file_size


def check_tensor_bytes(path: PathLike) -> int:
    """Refuse, before loading, a checkpoint whose tensors would take more than `max_checkpoint_bytes()`, or
    far more than the file holds (a compressed zip bomb: torch.save never compresses). Returns the bytes."""
    path = Path(path)
    try:
        file_size = path.stat().st_size
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None
    declared = _declared_tensor_bytes(path, file_size)
    cap = max_checkpoint_bytes()
    if declared > cap:
        raise CheckpointError(
            f"{path} holds {declared / 2**30:.1f} GiB of tensors, above the limit of {cap / 2**30:.1f} GiB; "
            "raise FOCALNET_MAX_CHECKPOINT_BYTES if you trust the file and have the memory"
        )
    if declared > _MAX_EXPANSION * file_size + _EXPANSION_SLACK:
        raise CheckpointError(
            f"{path} is a {file_size / 2**20:.1f} MiB file that unpacks to {declared / 2**30:.2f} GiB: a compressed "
            "archive, which torch.save never writes (a zip bomb?); refused before loading"
        )
    return declared


def _load_safetensors(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    check_tensor_bytes(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"cannot read {path} as safetensors: {e}") from None


_WRAPPER_KEYS = ("model", "state_dict", "model_state", "module")


def _is_state_dict(obj: Any) -> bool:
    """A non-empty mapping of names (strings) to tensors."""
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _unwrap(obj: Any, path: PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Find the state dict inside a checkpoint dict; return it and the rest of the dict."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if _is_state_dict(obj):
        return dict(obj), {}
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if _is_state_dict(inner):
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
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path} holds a JSON {type(config).__name__}, not an object; restore the file")
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").exists():
        sd, meta = _load_safetensors(path / "model.safetensors")
    elif index.exists():  # sharded save_pretrained
        weight_map = _read_json(index)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        shards = set(weight_map.values()) if isinstance(weight_map, dict) else {None}
        if not all(isinstance(s, str) and s and Path(s).name == s for s in shards):
            raise CheckpointError(f"{index}: 'weight_map' must map tensor names to shard file names in the folder")
        sd, meta = {}, {}
        for shard in sorted(shards):
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
        said = _with_record(path, said)
        if said.get("arch") is not None:
            validate_arch(said["arch"], where="its architecture")  # types, ranges, family, size: before any use
        sd = strip_prefixes(sd)
        fmt = detect_layout(sd)
        family = said["arch"]["family"] if said.get("arch") else detect_family(sd, fmt)
        ours = to_focalnet(sd, fmt, family)
        _check_core_tensors(ours)
        said["class_names"] = _clean_class_names(said.get("class_names"), ours)
    except ConversionError as e:
        raise CheckpointError(f"{path}: {e}") from None
    # timm's names reveal post-norm blocks, which their shapes cannot
    hints = {"use_post_norm": timm_is_post_norm(sd)} if fmt == "timm" else {}
    return Checkpoint(ours, fmt, family, path=str(path), hints=hints, **said)


def _with_record(path: Path, said: dict) -> dict:
    """Fill what a file does not say from the record we wrote with it (`focalnet.checkpoints.verify`): the
    authors' .pth and timm's folders cannot state every flag, our record does. The file's own config wins
    where it states something (it is what its own loader uses); `focalnet verify` reports disagreements."""
    record = read_record(path)
    if not isinstance(record, Mapping) or not record:  # a damaged record is as good as none
        return said
    out = dict(said)
    if record.get("variant") is not None or out.get("arch") is None:
        out["variant"] = record.get("variant")
    for key in ("arch", "class_names", "preprocessing"):
        if out.get(key) is None and record.get(key) is not None:
            out[key] = record[key]
    if out.get("preprocessing") is not None:
        out["preprocessing"] = _clean_preprocessing(out["preprocessing"], f"{path}: 'preprocessing'")
    return out


def _read_folder_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A timm hub folder or a Hugging Face save_pretrained folder: (state dict, what its files say)."""
    sd, config, meta = _read_folder(path)
    said: dict = {}
    if config.get("model_type") == "focalnet":
        try:  # a pure function of the file's values: a wrong type in them is the file's fault
            said = dict(arch=arch_from_hf_config(config), class_names=class_names_from_hf_config(config))
            _gray_from_rgb(sd, config, said)
        except ConversionError:
            raise
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as e:
            raise CheckpointError(f"{path / 'config.json'}: not a valid FocalNetConfig ({type(e).__name__}: {e})") from None
    elif "architecture" in config:  # timm hub folder
        said = dict(
            variant=config["architecture"] if isinstance(config["architecture"], str) else None,
            class_names=config.get("label_names") or _get(config.get("pretrained_cfg"), "label_names"),
        )
    if meta.get("format") == "focalnet":
        said = _our_metadata(meta, path)
    return sd, said


def _read_pickle_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A .pth file: a bare state dict, the authors' {'model': ...}, or our training checkpoint."""
    sd, extra = _unwrap(safe_torch_load(path), path)
    said: dict = dict(extra=extra)
    if isinstance(extra.get("arch"), Mapping):  # our training checkpoints
        variant = extra.get("variant")
        said.update(arch=dict(extra["arch"]), variant=variant if isinstance(variant, str) else None,
                    class_names=extra.get("class_names"))
        data = extra.get("data")
        if isinstance(extra.get("preprocessing"), Mapping):  # the run's whole input record (size, crop, ...)
            said["preprocessing"] = _clean_preprocessing(extra["preprocessing"], f"{path}: 'preprocessing'")
        elif isinstance(data, Mapping) and data.get("mean") is not None and data.get("std") is not None:
            said["preprocessing"] = _clean_preprocessing(
                dict(mean=data["mean"], std=data["std"], img_size=data.get("img_size"),
                     crop_pct=1.0 if data.get("img_size") else None),  # tensor data sets: fed whole
                f"{path}: 'data'",
            )
    return sd, said


def _metadata_json(meta: Mapping[str, str], key: str, path: Path, kind: type, required: bool = False) -> Any:
    """The JSON value of metadata `key` (None when absent and not required), of type `kind`."""
    raw = meta.get(key)
    if not raw:
        if required:
            raise CheckpointError(f"{path}: damaged focalnet metadata: no '{key}' (the architecture); re-save the model")
        return None
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: damaged focalnet metadata: '{key}' is not JSON ({e})") from None
    if not isinstance(value, kind):
        raise CheckpointError(
            f"{path}: damaged focalnet metadata: '{key}' must be a JSON {'object' if kind is dict else 'list'}, "
            f"got {type(value).__name__}"
        )
    return value


def _our_metadata(meta: Mapping[str, str], path: Path) -> dict:
    """What our .safetensors metadata says: architecture, variant, class names, preprocessing."""
    arch = _metadata_json(meta, "arch", path, dict, required=True)
    names = _metadata_json(meta, "class_names", path, list)
    pre = _metadata_json(meta, "preprocessing", path, dict)
    return dict(
        arch=arch, variant=meta.get("variant") or None, class_names=names,
        preprocessing=_clean_preprocessing(pre, f"{path}: 'preprocessing'") if pre is not None else None,
    )


def _check_core_tensors(sd: Mapping[str, torch.Tensor]) -> None:
    """The tensors every FocalNet has, with the rank everything downstream relies on (a crafted file may
    drop them or make them scalars): the stem's (C, in_chans, k, k) weight and a (classes, C) head."""
    stem = sd.get("stem.proj.weight")
    if stem is None or stem.ndim != 4 or min(stem.shape) < 1:
        got = "missing" if stem is None else f"of shape {tuple(stem.shape)}"
        raise ConversionError(f"the stem weight 'stem.proj.weight' is {got}, not (embed_dim, in_chans, k, k): not a FocalNet")
    head = sd.get("head.fc.weight")
    if head is not None and head.ndim != 2:
        raise ConversionError(f"the classifier 'head.fc.weight' has shape {tuple(head.shape)}, not (classes, features)")


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else None


# class names longer than this are refused: a crafted file could otherwise print megabytes per prediction
_MAX_NAME_CHARS = 1000


def _clean_class_names(names: Any, sd: Mapping[str, torch.Tensor]) -> Optional[list[str]]:
    """Class names as a list of strings, one per output of the head (numbers become strings)."""
    if names is None:
        return None
    if not isinstance(names, (list, tuple)) or not all(
        isinstance(n, (str, int, float)) and not isinstance(n, bool) for n in names
    ):
        raise ConversionError("'class_names' must be a list of names (strings)")
    names = [str(n) for n in names]
    if any(len(n) > _MAX_NAME_CHARS for n in names):
        raise ConversionError(f"'class_names' holds a name longer than {_MAX_NAME_CHARS} characters")
    head = sd.get("head.fc.weight")
    n_head = int(head.shape[0]) if head is not None and head.ndim >= 1 else 0
    if names and n_head and len(names) != n_head:
        raise ConversionError(f"'class_names' has {len(names)} names for a {n_head}-class head; fix or remove them")
    return names


PREPROCESSING_KEYS = ("mean", "std", "img_size", "crop_pct", "interpolation")


def _clean_preprocessing(pre: Any, where: str = "preprocessing") -> dict:
    """Validate a preprocessing record: mean and std, one finite number per input channel (std > 0), and
    optionally img_size (whole pixels >= 1; the cap on sizes is checked where an image is resized),
    crop_pct in (0, 1] and interpolation (one of focalnet.images.INTERPOLATIONS). Errors name `where`."""
    from ..images import INTERPOLATIONS

    if not isinstance(pre, Mapping):
        raise CheckpointError(f"{where} must be an object with {', '.join(PREPROCESSING_KEYS)}; got {type(pre).__name__}")
    unknown = sorted(map(str, set(pre) - set(PREPROCESSING_KEYS)))
    if unknown:
        raise CheckpointError(f"{where}: unknown preprocessing keys {unknown}; allowed: {', '.join(PREPROCESSING_KEYS)}")
    out = {k: pre[k] for k in PREPROCESSING_KEYS if pre.get(k) is not None}
    for k in ("mean", "std"):
        v = out.get(k)
        if not isinstance(v, (list, tuple)) or not 1 <= len(v) <= 64 or not all(_finite_number(x) for x in v):
            raise CheckpointError(f"{where}: '{k}' must be a list of finite numbers, one per input channel; got {v!r}")
        out[k] = [float(x) for x in v]
    if len(out["mean"]) != len(out["std"]) or any(v <= 0 for v in out["std"]):
        raise CheckpointError(f"{where}: mean {out['mean']} and std {out['std']}: one per channel, std > 0")
    if "img_size" in out:
        v = out["img_size"]
        if not _finite_number(v) or int(v) != v or v < 1:
            raise CheckpointError(f"{where}: 'img_size' must be a whole number of pixels >= 1, got {v!r}")
        out["img_size"] = int(v)
    if "crop_pct" in out:
        v = out["crop_pct"]
        if not _finite_number(v) or not 0 < v <= 1:
            raise CheckpointError(f"{where}: 'crop_pct' must be a number in (0, 1], got {v!r}")
        out["crop_pct"] = float(v)
    if "interpolation" in out and out["interpolation"] not in INTERPOLATIONS:
        raise CheckpointError(f"{where}: 'interpolation' must be one of {', '.join(INTERPOLATIONS)}, got {out['interpolation']!r}")
    return out


def _finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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
    """Write our-layout `sd` as `fmt`, with what that layout's own loader reads:

    - focalnet: `path` (.safetensors) with the architecture, variant, class names and preprocessing in its
      metadata;
    - official: `path` (.pth) holding {'model': state_dict} in the authors' layout; their layout holds nothing
      else, so the rest goes into `PATH.focalnet.json` beside it;
    - timm: `path` as a folder (model.safetensors + config.json with `architecture`, `model_args` and
      `pretrained_cfg`: what `timm.create_model("local-dir:PATH")` reads), or a single .safetensors / .pth;
    - hf: `path` as a transformers save_pretrained folder (config.json with id2label, model.safetensors,
      preprocessor_config.json: what `pipeline("image-classification", model=PATH)` reads).

    Every layout also carries our record (fingerprint and reference outputs, see
    `focalnet.checkpoints.verify`). preprocessing: mean, std, img_size, crop_pct, interpolation the weights
    want (default: the variant's, else ImageNet's).
    """
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path = Path(path)
    if class_names is not None and len(class_names) != arch.get("num_classes", 0):
        raise CheckpointError(f"{len(class_names)} class names for a {arch.get('num_classes', 0)}-class model")
    pre = _full_preprocessing(arch, variant, preprocessing)
    record = make_record(sd, arch, variant=variant, class_names=class_names, preprocessing=pre)
    out = _contiguous(from_focalnet(sd, fmt, arch))
    if fmt == "focalnet":
        _write_ours(out, arch, path, variant, class_names, pre, record)
    elif fmt == "official":
        if path.suffix not in (".pth", ".pt", ".bin"):
            raise CheckpointError(f"the authors' layout is a .pth file; got {path}")
        atomic_torch_save({"model": out}, path)
        atomic_json(record, record_path_for(path))
        log.info("the authors' layout holds only tensors: architecture, preprocessing and class names are in %s",
                 record_path_for(path).name)
    elif fmt == "timm":
        _write_timm(out, arch, path, variant, class_names, pre, record)
    else:
        _write_hf(out, arch, path, class_names, pre, record)
    return path


def _full_preprocessing(arch: Mapping, variant: Optional[str], preprocessing: Optional[Mapping]) -> dict:
    if preprocessing is not None:
        pre = _clean_preprocessing(preprocessing)
        if len(pre["mean"]) != arch.get("in_chans", 3):
            raise CheckpointError(f"preprocessing has {len(pre['mean'])} channel(s), the model takes {arch.get('in_chans', 3)}")
    in_chans = int(arch.get("in_chans", 3))
    try:
        return complete_preprocessing(in_chans, preprocessing and pre, variant)
    except ConversionError:
        log.warning("no mean/std is known for a %d-channel model: its configs say mean 0, std 1 (no normalisation); "
                    "pass preprocessing={'mean': [...], 'std': [...]} to record the real ones", in_chans)
        return complete_preprocessing(in_chans, dict(mean=[0.0] * in_chans, std=[1.0] * in_chans), variant)


def _write_ours(out: dict, arch: Mapping, path: Path, variant: Optional[str], class_names: Optional[list[str]],
                pre: Mapping, record: dict) -> None:
    from safetensors.torch import save_file

    if path.suffix != ".safetensors":
        raise CheckpointError(f"our format is a single .safetensors file; got {path}")
    meta = {"format": "focalnet", "format_version": "1", "arch": json.dumps(dict(arch)), "variant": variant or "",
            "preprocessing": json.dumps(dict(pre)), "focalnet_record": json.dumps(record)}
    if class_names is not None:
        meta["class_names"] = json.dumps(list(class_names))
    atomic_save_file(path, lambda tmp: save_file(out, tmp, metadata=meta))


def _write_timm(out: dict, arch: Mapping, path: Path, variant: Optional[str], class_names: Optional[list[str]],
                pre: Mapping, record: dict) -> None:
    from safetensors.torch import save_file

    if path.suffix == ".safetensors":
        atomic_save_file(path, lambda tmp: save_file(out, tmp, metadata={"format": "pt", "focalnet_record": json.dumps(record)}))
        return
    if path.suffix in (".pth", ".pt", ".bin"):
        atomic_torch_save(out, path)
        atomic_json(record, record_path_for(path))
        return
    config, why_not = timm_config(arch, variant, class_names, pre)
    if why_not:
        log.info("%s: timm's own FocalNet cannot build this model (%s); timm.create_model('local-dir:...') builds "
                 "it after `import focalnet` (architecture 'focalnet_custom')", path, why_not)
    with atomic_dir(path, overwrite=True) as tmp_dir:  # a full disk leaves no empty or half folder
        atomic_save_file(tmp_dir / "model.safetensors", lambda tmp: save_file(out, tmp, metadata={"format": "pt"}))
        atomic_json({**config, RECORD_KEY: record}, tmp_dir / "config.json")


# config.json key of a Hugging Face folder whose RGB stem holds a grayscale model (`_gray_as_rgb`)
HF_GRAY_STEM_KEY = "focalnet_gray_stem"


def _hf_stem(sd: Mapping) -> Optional[str]:
    """The name of the stem's weight in a transformers state dict (with or without the `focalnet.` prefix)."""
    return next((k for k in sd if k.endswith("embeddings.patch_embeddings.projection.weight")), None)


def _gray_as_rgb(out: dict, arch: Mapping, pre: Mapping) -> tuple[dict, dict, dict]:
    """A 1-channel model for transformers, whose pipeline and image processors turn every image into RGB: an
    RGB stem with the luma conversion folded in (`gray_stem_as_rgb`), the gray mean/std on all three channels.
    Our reader folds it back exactly (`_gray_from_rgb`)."""
    stem = _hf_stem(out)
    out = {**out, stem: gray_stem_as_rgb(out[stem]).contiguous()}
    pre = {**pre, "mean": list(pre["mean"]) * 3, "std": list(pre["std"]) * 3}
    return out, {**arch, "in_chans": 3}, pre


def _gray_from_rgb(sd: dict, config: Mapping, said: dict) -> None:
    """Undo `_gray_as_rgb` on a folder we wrote (in place): the 1-channel stem and architecture back."""
    if config.get(HF_GRAY_STEM_KEY) != list(GRAY_FROM_RGB) or said["arch"].get("in_chans") != 3:
        return
    stem = _hf_stem(sd)
    if stem is not None:
        sd[stem] = rgb_stem_as_gray(sd[stem])
        said["arch"] = {**said["arch"], "in_chans": 1}


def _write_hf(out: dict, arch: Mapping, path: Path, class_names: Optional[list[str]], pre: Mapping, record: dict) -> None:
    from safetensors.torch import save_file

    if path.suffix:
        raise CheckpointError(f"a Hugging Face checkpoint is a folder; got the file name {path}")
    extra = {}
    if int(arch.get("in_chans", 3)) == 1:
        out, arch, pre = _gray_as_rgb(out, arch, pre)
        extra = {HF_GRAY_STEM_KEY: list(GRAY_FROM_RGB)}
    # transformers refuses safetensors whose metadata format is not 'pt'
    with atomic_dir(path, overwrite=True) as tmp_dir:  # a full disk leaves no empty or half folder
        atomic_save_file(tmp_dir / "model.safetensors", lambda tmp: save_file(out, tmp, metadata={"format": "pt"}))
        config = {**hf_config(arch, class_names, img_size=pre["img_size"]), **extra, RECORD_KEY: record}
        atomic_json(config, tmp_dir / "config.json")
        atomic_json(hf_preprocessor_config(pre), tmp_dir / "preprocessor_config.json")
