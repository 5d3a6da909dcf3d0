"""Reading and writing FocalNet checkpoints, safely and atomically.

Reads, with the layout detected automatically:
- ours: a `.safetensors` file whose metadata holds the architecture (JSON), or a training checkpoint
  (`{'model': ..., 'arch': ...}`, see `focalnet.train.state`);
- the authors': `.pth` with `{'model': state_dict, ...}`;
- timm's: `.pth` / `.safetensors`, or a folder with `model.safetensors` (or `pytorch_model.bin`) and
  `config.json`;
- Hugging Face transformers': a `save_pretrained` folder of `FocalNetForImageClassification` or
  `FocalNetModel`, or its state dict.
Writes all four (`write_checkpoint`). Never executes code from a file: pickles are read with
`torch.load(weights_only=True)` and refused, with the reason, when they need anything but tensors and
plain containers. Every file is written to a temporary name in the target folder, flushed, then renamed,
so an interrupted write never leaves a truncated file nor destroys the previous one.

Every file and folder is opened through `focalnet.safeio` (regular files only, sizes and nesting bounded),
every tensor through `focalnet.checkpoints.safeload` (materialised bytes bounded, no meta, sparse or quantized
tensor), and every field a file states is checked against its tensors by `focalnet.checkpoints.fields` before
a `Checkpoint` is returned: a wrong field is an error naming the file and the key, never a silent default.
The writers live in `focalnet.checkpoints.write` (re-exported here).

What the weights mean is decided elsewhere: `focalnet.checkpoints.arch` (the architecture a file holds),
`focalnet.checkpoints.load` (strict loading into a model).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ..errors import FocalNetError
from ..safeio import present, printable, read_json
from .arch import arch_from_hf_config, class_names_from_hf_config, validate_arch
from .convert import ConversionError, detect_family, detect_layout, strip_prefixes, timm_is_post_norm, to_focalnet
from .fields import (
    PREPROCESSING_KEYS,
    CheckpointError,
    check_arch_matches,
    check_core_tensors,
    check_weights,
    clean_class_names,
    clean_preprocessing,
    metadata_json,
)
from .safeload import MAX_CHECKPOINT_BYTES, check_tensor_bytes, load_safetensors, max_checkpoint_bytes, safe_torch_load
from .verify import read_record
from .write import HF_GRAY_STEM_KEY, gray_from_rgb, save_model, write_checkpoint

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
    "HF_GRAY_STEM_KEY",
]

PathLike = Union[str, os.PathLike]


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
        f"{', '.join(repr(k) for k in _WRAPPER_KEYS)}); its keys: {printable(', '.join(map(str, list(obj)[:10])))[:300]}"
    )


def _read_json(path: Path) -> Any:
    return read_json(path, "checkpoint file", CheckpointError)


def _read_folder(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """A timm hub folder or a Hugging Face save_pretrained folder: (state dict, config.json, metadata).
    A file that is present but broken (a symlink loop, a FIFO, a folder in its place) is an error, never
    taken for an absent one."""
    cfg_path = path / "config.json"
    config = _read_json(cfg_path) if present(cfg_path) else {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path} holds a JSON {type(config).__name__}, not an object; restore the file")
    index = path / "model.safetensors.index.json"
    if present(path / "model.safetensors"):
        sd, meta = load_safetensors(path / "model.safetensors")
    elif present(index):  # sharded save_pretrained
        weight_map = _read_json(index)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        shards = set(weight_map.values()) if isinstance(weight_map, dict) else {None}
        if not all(isinstance(s, str) and s and Path(s).name == s for s in shards):
            raise CheckpointError(f"{index}: 'weight_map' must map tensor names to shard file names in the folder")
        sd, meta = {}, {}
        for shard in sorted(shards):
            part, meta = load_safetensors(path / shard)
            sd.update(part)
    elif present(path / "pytorch_model.bin"):
        sd, _ = _unwrap(safe_torch_load(path / "pytorch_model.bin"), path)
        meta = {}
    else:
        raise CheckpointError(
            f"{path} is a folder without model.safetensors, model.safetensors.index.json or pytorch_model.bin"
        )
    return sd, config, meta


def read_checkpoint(path: PathLike) -> Checkpoint:
    """Read any supported checkpoint file or folder into our layout (see the module docstring); every field
    it states is checked against its tensors before it is returned."""
    path = Path(path)
    if not present(path):
        raise CheckpointError(f"checkpoint {printable(path)} does not exist")
    try:
        if path.is_dir():
            sd, said = _read_folder_checkpoint(path)
        elif path.suffix == ".safetensors":
            sd, meta = load_safetensors(path)
            said = _our_metadata(meta, path) if meta.get("format") == "focalnet" else {}
        else:
            sd, said = _read_pickle_checkpoint(path)
        said = _with_record(path, said)
        model = None
        if said.get("arch") is not None:  # types, ranges, family, size: before any use
            model = validate_arch(said["arch"], where=f"{path}: its architecture")
        sd = strip_prefixes(sd)
        fmt = detect_layout(sd)
        family = said["arch"]["family"] if said.get("arch") else detect_family(sd, fmt)
        ours = to_focalnet(sd, fmt, family)
        _check_fields(ours, said, model, path)
    except ConversionError as e:
        raise CheckpointError(f"{path}: {e}") from None
    # timm's names reveal post-norm blocks, which their shapes cannot
    hints = {"use_post_norm": timm_is_post_norm(sd)} if fmt == "timm" else {}
    return Checkpoint(ours, fmt, family, path=str(path), hints=hints, **said)


def _check_fields(ours: Mapping[str, torch.Tensor], said: dict, model: Optional[torch.nn.Module], path: Path) -> None:
    """Every field the file states, against its tensors (in place: class names and preprocessing cleaned)."""
    check_core_tensors(ours)
    check_weights(ours, str(path))
    if model is not None:
        check_arch_matches(model, ours, str(path))
    said["class_names"] = clean_class_names(said.get("class_names"), ours)
    if said.get("preprocessing") is not None:
        in_chans = int(ours["stem.proj.weight"].shape[1])
        said["preprocessing"] = clean_preprocessing(said["preprocessing"], f"{path}: 'preprocessing'", in_chans)


def _with_record(path: Path, said: dict) -> dict:
    """Fill what a file does not say from the record we wrote with it (`focalnet.checkpoints.verify`): the
    authors' .pth and timm's folders cannot state every flag, our record does. The file's own config wins
    where it states something (it is what its own loader uses); `focalnet verify` reports disagreements.
    A record that is present but damaged is an error (`read_record`): it is never taken for an absent one."""
    record = read_record(path)
    if record is None:
        return said
    out = dict(said)
    if record.get("variant") is not None or out.get("arch") is None:
        out["variant"] = record.get("variant")
    for key in ("arch", "class_names", "preprocessing"):
        if out.get(key) is None and record.get(key) is not None:
            out[key] = record[key]
    return out


def _read_folder_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A timm hub folder or a Hugging Face save_pretrained folder: (state dict, what its files say)."""
    sd, config, meta = _read_folder(path)
    said: dict = {}
    if config.get("model_type") == "focalnet":
        try:  # a pure function of the file's values: a wrong type in them is the file's fault
            said = dict(arch=arch_from_hf_config(config), class_names=class_names_from_hf_config(config))
            gray_from_rgb(sd, config, said)
        except (ConversionError, FocalNetError):
            raise
        except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as e:
            raise CheckpointError(f"{path / 'config.json'}: not a valid FocalNetConfig "
                                  f"({type(e).__name__}: {printable(str(e)[:200])})") from None
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
            said["preprocessing"] = dict(extra["preprocessing"])
        elif isinstance(data, Mapping) and data.get("mean") is not None and data.get("std") is not None:
            # tensor data sets are fed whole: crop 1.0 at their own size
            said["preprocessing"] = dict(mean=data["mean"], std=data["std"], img_size=data.get("img_size"),
                                         crop_pct=1.0 if data.get("img_size") else None)
    return sd, said


def _our_metadata(meta: Mapping[str, str], path: Path) -> dict:
    """What our .safetensors metadata says: architecture, variant, class names, preprocessing."""
    where = str(path)
    arch = metadata_json(meta, "arch", where, dict, required=True)
    names = metadata_json(meta, "class_names", where, list)
    pre = metadata_json(meta, "preprocessing", where, dict)
    return dict(arch=arch, variant=meta.get("variant") or None, class_names=names, preprocessing=pre)


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else None


