"""Checkpoints of detectors and segmenters: plain dicts that `torch.load(weights_only=True)` reads.

    {
      'format': 'focalnet-dense', 'format_version': 1,
      'task': 'detection' | 'segmentation',
      'builder': 'fasterrcnn_focalnet' | 'maskrcnn_focalnet' | 'retinanet_focalnet' | 'upernet_focalnet',
      'builder_args': {...},          # plain values: rebuilds the same architecture with the builder
      'class_names': [...],           # one per label, index 0 the background
      'model': state_dict,            # tensors only
      'extra': {...},                 # plain values the writer adds (metrics, training settings)
    }

No pickled objects, no code: the architecture is the builder's name and its arguments. Written atomically
(temporary file + rename): an interrupted save never leaves a truncated file nor loses the previous one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch.nn as nn

from ..checkpoints.io import CheckpointError, safe_torch_load
from ..utils import atomic_torch_save

__all__ = [
    "DENSE_FORMAT",
    "DenseCheckpoint",
    "save_dense_checkpoint",
    "read_dense_checkpoint",
    "build_dense_model",
    "load_dense_model",
]

DENSE_FORMAT = "focalnet-dense"
FORMAT_VERSION = 1
PathLike = Union[str, os.PathLike]


def _builders() -> dict[str, tuple[str, Callable[..., nn.Module]]]:
    from .detection import DETECTION_BUILDERS
    from .segmentation import SEGMENTATION_BUILDERS

    out = {name: ("detection", fn) for name, fn in DETECTION_BUILDERS.items()}
    out.update({name: ("segmentation", fn) for name, fn in SEGMENTATION_BUILDERS.items()})
    return out


def _check_plain(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{where} has a non-string key {k!r}")
            _check_plain(v, f"{where}.{k}")
        return
    raise CheckpointError(f"{where} is a {type(value).__name__}, not a plain value (None, bool, number, str, list, dict)")


def _check_fields(obj: dict, path: Path) -> None:
    """Types of a dense checkpoint's fields (a crafted file gets a message naming the key, not a TypeError)."""
    import torch

    for key in ("task", "builder"):
        if not isinstance(obj[key], str):
            raise CheckpointError(f"{path}: '{key}' must be a name (a string), got {type(obj[key]).__name__}")
    args = obj["builder_args"]
    if not isinstance(args, dict):
        raise CheckpointError(f"{path}: 'builder_args' must be a dict of plain values, got {type(args).__name__}")
    try:
        _check_plain(args, "builder_args")
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    names = obj["class_names"]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{path}: 'class_names' must be a list of strings")
    if "num_classes" in args and len(names) != args["num_classes"]:
        raise CheckpointError(f"{path}: {len(names)} class names for num_classes={args['num_classes']!r} (background included)")
    model = obj["model"]
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        raise CheckpointError(f"{path}: 'model' must be a state dict (names to tensors)")


class DenseCheckpoint(dict):
    """A read dense checkpoint (the dict above), validated."""

    @property
    def task(self) -> str:
        return self["task"]

    @property
    def class_names(self) -> list[str]:
        return list(self["class_names"])


def save_dense_checkpoint(
    model: nn.Module,
    path: PathLike,
    *,
    class_names: Sequence[str],
    extra: Optional[dict] = None,
) -> Path:
    """Write `model` (built by one of the `focalnet.dense` builders) to `path` atomically.

    class_names: one name per label, the background (label 0) included: num_classes names.
    extra: plain values to keep beside the weights (metrics, training settings).
    """
    config = getattr(model, "dense_config", None)
    if config is None:
        raise CheckpointError(
            "this model was not built by a focalnet.dense builder (fasterrcnn_focalnet, maskrcnn_focalnet, "
            "retinanet_focalnet, upernet_focalnet), so its architecture cannot be recorded; build it with one"
        )
    if config.get("unrecorded"):
        raise CheckpointError(
            f"the model was built with torchvision objects ({', '.join(config['unrecorded'])}) that a weights-only "
            "checkpoint cannot describe; pass plain arguments to the builder instead (anchor_sizes, "
            "aspect_ratios, representation_size, mask_head_channels, ...) or save model.state_dict() yourself"
        )
    args = config["builder_args"]
    _check_plain(args, "builder_args")
    class_names = [str(n) for n in class_names]
    if len(class_names) != args["num_classes"]:
        raise CheckpointError(
            f"{len(class_names)} class names for a model with num_classes={args['num_classes']} "
            "(the background, label 0, needs a name too)"
        )
    extra = dict(extra or {})
    _check_plain(extra, "extra")
    ckpt = {
        "format": DENSE_FORMAT,
        "format_version": FORMAT_VERSION,
        "task": config["task"],
        "builder": config["builder"],
        "builder_args": args,
        "class_names": class_names,
        "model": {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()},
        "extra": extra,
    }
    path = Path(path)
    atomic_torch_save(ckpt, path)
    return path


def read_dense_checkpoint(path: PathLike) -> DenseCheckpoint:
    """Read and validate a dense checkpoint (weights_only: no code from the file runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist" if not path.exists() else f"{path} is not a file")
    obj = safe_torch_load(path)
    if not isinstance(obj, dict) or obj.get("format") != DENSE_FORMAT:
        hint = ""
        if isinstance(obj, dict) and ("state_dict" in obj or "model" in obj):
            hint = (
                " It looks like a classification or mmdet checkpoint: use it as pretrained_backbone= of a builder "
                "(focalnet.dense.detection / segmentation), then train and save with save_dense_checkpoint"
            )
        raise CheckpointError(f"{path} is not a focalnet detection/segmentation checkpoint (format {DENSE_FORMAT!r}).{hint}")
    version = obj.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: 'format_version' must be a whole number, got {version!r}; the file is damaged")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {version}; this focalnet reads up to {FORMAT_VERSION}: upgrade focalnet")
    builders = _builders()
    missing = [k for k in ("task", "builder", "builder_args", "class_names", "model") if k not in obj]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    _check_fields(obj, path)
    if obj["builder"] not in builders:
        raise CheckpointError(f"{path}: unknown builder {obj['builder']!r}; known: {', '.join(sorted(builders))}")
    if builders[obj["builder"]][0] != obj["task"]:
        raise CheckpointError(f"{path}: builder {obj['builder']} does not make a {obj['task']} model")
    return DenseCheckpoint(obj)


def build_dense_model(builder: str, builder_args: dict) -> nn.Module:
    """The architecture a checkpoint describes, with fresh weights (no pretrained backbone is read)."""
    builders = _builders()
    if not isinstance(builder, str) or builder not in builders:
        raise CheckpointError(f"unknown builder {builder!r}; known: {', '.join(sorted(builders))}")
    args = dict(builder_args)
    args.pop("pretrained_backbone", None)
    try:
        return builders[builder][1](**args)
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as e:  # the file's values, not our code
        raise CheckpointError(f"the checkpoint's builder_args do not fit {builder}: {type(e).__name__}: {e}") from None


def _check_weights(model: nn.Module, sd: dict, path: Path, builder: str) -> None:
    """One line naming the first few missing, unexpected and mis-shaped tensors (torch's message lists all)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shaped = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    parts = [f"{len(v)} {label} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
             for label, v in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)) if v]
    if parts:
        raise CheckpointError(f"{path}: the weights do not fit {builder}: {'; '.join(parts)}; the file is damaged or "
                              "was written by another version")


def load_dense_model(path: PathLike) -> tuple[nn.Module, DenseCheckpoint]:
    """(model in eval mode with the checkpoint's weights, the checkpoint without its tensors)."""
    import torch

    ckpt = read_dense_checkpoint(path)
    with torch.device("meta"):  # names and shapes checked before a weight is allocated (builder_args may lie)
        _check_weights(build_dense_model(ckpt["builder"], ckpt["builder_args"]), ckpt["model"], path, ckpt["builder"])
    model = build_dense_model(ckpt["builder"], ckpt["builder_args"])
    model.load_state_dict(ckpt["model"], strict=True)
    model.class_names = ckpt.class_names
    info = DenseCheckpoint({k: v for k, v in ckpt.items() if k != "model"})
    return model.eval(), info
