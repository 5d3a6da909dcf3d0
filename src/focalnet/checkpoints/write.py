"""Writing FocalNet checkpoints in every layout, atomically, each with what its own loader reads.

`write_checkpoint` writes ours (.safetensors with the architecture in its metadata), the authors' (.pth plus a
JSON record beside it), timm's and Hugging Face's (folders). Every file goes to a temporary name beside its
target and is renamed last (`focalnet.utils`); a pair (a .pth and its JSON) is replaced together or not at all
(`atomic_group`), a folder appears whole (`atomic_dir`), and two processes writing one output are refused.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
import torch.nn as nn

from ..utils import atomic_dir, atomic_group, atomic_json, atomic_save_file, torch_save
from .arch import complete_preprocessing, hf_config, hf_preprocessor_config, timm_config
from .convert import FORMATS, GRAY_FROM_RGB, ConversionError, from_focalnet, gray_stem_as_rgb, rgb_stem_as_gray
from .fields import CheckpointError, clean_preprocessing
from .verify import RECORD_KEY, make_record, record_path_for

__all__ = ["HF_GRAY_STEM_KEY", "save_model", "write_checkpoint", "gray_from_rgb"]

PathLike = Union[str, os.PathLike]
log = logging.getLogger("focalnet")


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
        _write_pth_pair({"model": out}, path, record)
        log.info("the authors' layout holds only tensors: architecture, preprocessing and class names are in %s",
                 record_path_for(path).name)
    elif fmt == "timm":
        _write_timm(out, arch, path, variant, class_names, pre, record)
    else:
        _write_hf(out, arch, path, class_names, pre, record)
    return path


def _write_pth_pair(obj: dict, path: Path, record: dict) -> None:
    """A .pth and its JSON record, replaced together: both written to temporary names first, renamed last."""
    with atomic_group([path, record_path_for(path)]) as (tmp_pth, tmp_json):
        with open(tmp_pth, "wb") as f:
            torch_save(obj, f, path)  # a full disk: an OutputError naming the .pth, not torch's "unexpected pos"
        tmp_json.write_text(json.dumps(record, indent=2) + "\n")


def _full_preprocessing(arch: Mapping, variant: Optional[str], preprocessing: Optional[Mapping]) -> dict:
    if preprocessing is not None:
        pre = clean_preprocessing(preprocessing)
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
        _write_pth_pair(out, path, record)
        return
    config, why_not = timm_config(arch, variant, class_names, pre)
    if why_not:
        log.info("%s: timm's own FocalNet cannot build this model (%s); timm.create_model('local-dir:...') builds "
                 "it after `import focalnet` (architecture 'focalnet_custom')", path, why_not)
    with atomic_dir(path, overwrite=True) as tmp_dir:  # a full disk leaves no empty or half folder
        atomic_save_file(tmp_dir / "model.safetensors", lambda tmp: save_file(out, tmp, metadata={"format": "pt"}))
        atomic_json({**config, RECORD_KEY: record}, tmp_dir / "config.json")


# names that are files, never a checkpoint folder
_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".json", ".onnx", ".ckpt", ".h5", ".msgpack")

# config.json key of a Hugging Face folder whose RGB stem holds a grayscale model (`_gray_as_rgb`)
HF_GRAY_STEM_KEY = "focalnet_gray_stem"


def _hf_stem(sd: Mapping) -> Optional[str]:
    """The name of the stem's weight in a transformers state dict (with or without the `focalnet.` prefix)."""
    return next((k for k in sd if k.endswith("embeddings.patch_embeddings.projection.weight")), None)


def _gray_as_rgb(out: dict, arch: Mapping, pre: Mapping) -> tuple[dict, dict, dict]:
    """A 1-channel model for transformers, whose pipeline and image processors turn every image into RGB: an
    RGB stem with the luma conversion folded in (`gray_stem_as_rgb`), the gray mean/std on all three channels.
    Our reader folds it back exactly (`gray_from_rgb`)."""
    stem = _hf_stem(out)
    out = {**out, stem: gray_stem_as_rgb(out[stem]).contiguous()}
    pre = {**pre, "mean": list(pre["mean"]) * 3, "std": list(pre["std"]) * 3}
    return out, {**arch, "in_chans": 3}, pre


def gray_from_rgb(sd: dict, config: Mapping, said: dict) -> None:
    """Undo `_gray_as_rgb` on a folder we wrote (in place): the 1-channel stem and architecture back."""
    if config.get(HF_GRAY_STEM_KEY) != list(GRAY_FROM_RGB) or said["arch"].get("in_chans") != 3:
        return
    stem = _hf_stem(sd)
    if stem is not None:
        sd[stem] = rgb_stem_as_gray(sd[stem])
        said["arch"] = {**said["arch"], "in_chans": 1}


def _write_hf(out: dict, arch: Mapping, path: Path, class_names: Optional[list[str]], pre: Mapping, record: dict) -> None:
    from safetensors.torch import save_file

    if path.suffix.lower() in _FILE_SUFFIXES:  # a dot alone does not make a file: "focalnet-t.v2" is a folder name
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
