"""What a checkpoint's fields may hold: the one validation of every value a file states about itself.

A reader (`focalnet.checkpoints.io`) calls these once it has the tensors, so that each field is checked
against the others: the weights' dtypes and kinds (plain floating-point tensors in memory: no integer, bool,
complex, meta, sparse or quantized weight, which would load and then answer every image with the same class),
the class names against the head, the preprocessing against the stem's channels, the architecture against the
tensors' names and shapes. A field that is wrong is an error naming the file and the key, never a silent
default: a gray model whose file says a 3-value mean is damaged, not an RGB model.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from ..errors import FocalNetError
from ..preprocess import PREPROCESSING_KEYS, check_record
from ..safeio import describe, loads_json, printable
from .convert import ConversionError

__all__ = [
    "CheckpointError",
    "PREPROCESSING_KEYS",
    "WEIGHT_DTYPES",
    "check_arch_matches",
    "check_core_tensors",
    "check_weights",
    "clean_class_names",
    "clean_preprocessing",
    "metadata_json",
]


class CheckpointError(FocalNetError, ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says what to do."""


# the dtypes a FocalNet's weights may have in a file: what the model computes in, or casts from exactly
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# buffers of other dtypes that a state dict may legitimately carry (BatchNorm's step counter)
_COUNTER_SUFFIXES = ("num_batches_tracked",)


def check_weights(sd: Mapping[str, torch.Tensor], where: str) -> None:
    """Every tensor of our-layout `sd` is a dense, in-memory, floating-point tensor (WEIGHT_DTYPES)."""
    for name, t in sd.items():
        if t.layout != torch.strided or t.is_meta or t.is_quantized:
            kind = "a meta" if t.is_meta else "a quantized" if t.is_quantized else f"a {t.layout}"
            raise CheckpointError(f"{where}: '{printable(name)}' is {kind} tensor; weights must be dense tensors "
                                  "in memory (re-save the model with its real weights)")
        if t.dtype not in WEIGHT_DTYPES and not name.endswith(_COUNTER_SUFFIXES):
            raise CheckpointError(
                f"{where}: '{printable(name)}' holds {t.dtype} values; a FocalNet's weights are floating point "
                f"({', '.join(str(d).replace('torch.', '') for d in WEIGHT_DTYPES)}): a damaged or foreign file"
            )


def check_core_tensors(sd: Mapping[str, torch.Tensor]) -> None:
    """The tensors every FocalNet has, with the rank everything downstream relies on (a crafted file may
    drop them or make them scalars): the stem's (C, in_chans, k, k) weight and a (classes, C) head."""
    stem = sd.get("stem.proj.weight")
    if stem is None or stem.ndim != 4 or min(stem.shape) < 1:
        got = "missing" if stem is None else f"of shape {tuple(stem.shape)}"
        raise ConversionError(f"the stem weight 'stem.proj.weight' is {got}, not (embed_dim, in_chans, k, k): not a FocalNet")
    head = sd.get("head.fc.weight")
    if head is not None and head.ndim != 2:
        raise ConversionError(f"the classifier 'head.fc.weight' has shape {tuple(head.shape)}, not (classes, features)")


def check_arch_matches(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], where: str) -> None:
    """The architecture a file states (built on the meta device: `model`) has exactly the file's tensors, by
    name and shape; else the loaders would refuse the file later, or worse, a verify would pass it."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    shapes = sorted(f"{k} {tuple(sd[k].shape)} vs {own[k]}" for k in set(own) & set(sd) if tuple(sd[k].shape) != own[k])
    if missing or extra or shapes:
        parts = [f"{len(v)} {label}: {printable('; '.join(v[:3]))}" for label, v in
                 (("missing", missing), ("unexpected", extra), ("mis-shaped (file vs architecture)", shapes)) if v]
        raise CheckpointError(f"{where}: the architecture it states does not fit its tensors ({' | '.join(parts)}); "
                              "the metadata is damaged or belongs to another model")


# class names longer than this are refused: a crafted file could otherwise print megabytes per prediction
MAX_NAME_CHARS = 1000


def clean_class_names(names: Any, sd: Mapping[str, torch.Tensor]) -> Optional[list[str]]:
    """Class names as a list of strings, one per output of the head (numbers become strings)."""
    if names is None:
        return None
    if not isinstance(names, (list, tuple)) or not all(
        isinstance(n, (str, int, float)) and not isinstance(n, bool) for n in names
    ):
        raise ConversionError("'class_names' must be a list of names (strings)")
    try:
        names = [str(n) for n in names]
    except ValueError:  # an int of more than 4300 digits
        raise ConversionError("'class_names' holds a number too long to be a name") from None
    if any(len(n) > MAX_NAME_CHARS for n in names):
        raise ConversionError(f"'class_names' holds a name longer than {MAX_NAME_CHARS} characters")
    head = sd.get("head.fc.weight")
    n_head = int(head.shape[0]) if head is not None and head.ndim >= 1 else 0
    if names and n_head and len(names) != n_head:
        raise ConversionError(f"'class_names' has {len(names)} names for a {n_head}-class head; fix or remove them")
    if names and not n_head:
        raise ConversionError(f"'class_names' has {len(names)} names for a model without a classifier; remove them")
    return names


# the largest img_size a file may state: no image model takes a million-pixel side; the configurable cap
# on what is actually resized (`focalnet.images.max_image_side`) is checked where an image is resized
MAX_FIELD_IMG_SIZE = 2**20


def clean_preprocessing(pre: Any, where: str = "preprocessing", in_chans: Optional[int] = None) -> dict:
    """`focalnet.preprocess.check_record` raising CheckpointError (mean and std one per `in_chans` channel),
    with img_size at most MAX_FIELD_IMG_SIZE and no number beyond a float's range. Errors name `where`."""
    try:
        out = check_record(pre, where, in_chans=in_chans, error=CheckpointError)
    except OverflowError:  # a number beyond float range (10**400) where a float is expected
        raise CheckpointError(f"{where}: a value beyond any float's range: {describe(pre)}") from None
    if out.get("img_size", 1) > MAX_FIELD_IMG_SIZE:
        raise CheckpointError(f"{where}: 'img_size' is {out['img_size']} px, above {MAX_FIELD_IMG_SIZE}: a damaged file")
    return out


def metadata_json(meta: Mapping[str, str], key: str, where: str, kind: type, required: bool = False) -> Any:
    """The JSON value of metadata `key` (None when absent and not required), of type `kind`, depth-bounded."""
    raw = meta.get(key)
    if not raw:
        if required:
            raise CheckpointError(f"{where}: damaged focalnet metadata: no '{key}' (the architecture); re-save the model")
        return None
    value = loads_json(raw, f"{where}: damaged focalnet metadata '{key}'", CheckpointError)
    if not isinstance(value, kind):
        raise CheckpointError(
            f"{where}: damaged focalnet metadata: '{key}' must be a JSON {'object' if kind is dict else 'list'}, "
            f"got {type(value).__name__}"
        )
    return value
