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
    if obj.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {obj['format_version']}; this focalnet reads up to {FORMAT_VERSION}: upgrade focalnet")
    builders = _builders()
    missing = [k for k in ("task", "builder", "builder_args", "class_names", "model") if k not in obj]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    if obj["builder"] not in builders:
        raise CheckpointError(f"{path}: unknown builder {obj['builder']!r}; known: {', '.join(sorted(builders))}")
    if builders[obj["builder"]][0] != obj["task"]:
        raise CheckpointError(f"{path}: builder {obj['builder']} does not make a {obj['task']} model")
    return DenseCheckpoint(obj)


def build_dense_model(builder: str, builder_args: dict) -> nn.Module:
    """The architecture a checkpoint describes, with fresh weights (no pretrained backbone is read)."""
    builders = _builders()
    if builder not in builders:
        raise CheckpointError(f"unknown builder {builder!r}; known: {', '.join(sorted(builders))}")
    args = dict(builder_args)
    args.pop("pretrained_backbone", None)
    try:
        return builders[builder][1](**args)
    except TypeError as e:
        raise CheckpointError(f"the checkpoint's builder_args do not fit {builder}: {e}") from None


def load_dense_model(path: PathLike) -> tuple[nn.Module, DenseCheckpoint]:
    """(model in eval mode with the checkpoint's weights, the checkpoint without its tensors)."""
    ckpt = read_dense_checkpoint(path)
    model = build_dense_model(ckpt["builder"], ckpt["builder_args"])
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"{path}: the weights do not fit {ckpt['builder']}: {' '.join(first[:3])}") from None
    model.class_names = ckpt.class_names
    info = DenseCheckpoint({k: v for k, v in ckpt.items() if k != "model"})
    return model.eval(), info
