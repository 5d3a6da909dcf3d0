"""Loading a checkpoint file's tensors safely: no code from the file runs, nothing unbounded is allocated.

- `safe_torch_load`: `torch.load(weights_only=True)` on a regular file (`focalnet.safeio.open_regular`: never
  a FIFO or a device), with the tensors' size checked from the zip's directory before anything is read
  (`check_tensor_bytes`), then every tensor of the result checked before anyone uses it
  (`check_loaded_tensors`): the bytes it will take once materialised (a stride-0 tensor of a few bytes of
  storage becomes gigabytes at the first `.contiguous()`), its kind (no meta, sparse or quantized tensors),
  and the nesting of the containers around it;
- `load_safetensors`: the same bounds for a .safetensors file.

A pickle that needs code is refused with the reason; a file that is not a checkpoint at all is one line.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, Union

import torch

from ..errors import limit_from_env
from ..safeio import MAX_DEPTH, check_regular, open_regular, printable
from .fields import CheckpointError

__all__ = [
    "MAX_CHECKPOINT_BYTES",
    "check_loaded_tensors",
    "check_tensor_bytes",
    "load_safetensors",
    "max_checkpoint_bytes",
    "safe_torch_load",
]

PathLike = Union[str, os.PathLike]

# a checkpoint's tensors may take at most this many bytes (FOCALNET_MAX_CHECKPOINT_BYTES overrides it): four
# times FocalNet-H with its optimizer state; and torch.save never compresses, so tensors claiming more than
# _MAX_EXPANSION times the file's size (plus _EXPANSION_SLACK) are a zip bomb, or views that a copy expands
MAX_CHECKPOINT_BYTES = 32 * 2**30
_MAX_EXPANSION = 16
_EXPANSION_SLACK = 64 * 2**20


def max_checkpoint_bytes() -> int:
    """$FOCALNET_MAX_CHECKPOINT_BYTES if set, else MAX_CHECKPOINT_BYTES."""
    return limit_from_env("FOCALNET_MAX_CHECKPOINT_BYTES", MAX_CHECKPOINT_BYTES, "bytes", CheckpointError)


def _byte_bound(path: PathLike, file_size: int) -> int:
    return min(max_checkpoint_bytes(), _MAX_EXPANSION * file_size + _EXPANSION_SLACK)


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
    """torch.load with weights_only=True of a regular file; a pickle that needs code is refused with the reason.

    The tensors' size is checked against `max_checkpoint_bytes()` from the zip's directory before anything
    is read (`check_tensor_bytes`), and what was loaded by `check_loaded_tensors` before it is returned."""
    with open_regular(path, "checkpoint", CheckpointError) as f:
        size = os.fstat(f.fileno()).st_size
        _check_declared(path, f, size)
        f.seek(0)
        obj = _torch_load(path, f)
    check_loaded_tensors(obj, str(path), _byte_bound(path, size))
    return obj


def _torch_load(path: PathLike, f: BinaryIO) -> Any:
    try:
        try:
            allow = torch.serialization.safe_globals(_SAFE_GLOBALS)
        except (AttributeError, TypeError):  # older PyTorch: no stand-ins, tensors and containers only
            allow = contextlib.nullcontext()
        with allow:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:  # not a refusal: the bytes are not a checkpoint at all
            # torch wraps the unpickler's reason ("Unsupported operand 193") in advice that does not apply here
            lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
            reason = next((ln for ln in lines if not ln.startswith(("Weights only", "Please file", "Check the doc"))),
                          lines[-1] if lines else str(e))
            raise CheckpointError(
                f"cannot read {path} as a PyTorch checkpoint: {printable(reason)} (a damaged file, or not a checkpoint)"
            ) from None
        raise CheckpointError(
            f"refused to load {path}: it is a pickle that needs more than tensors and plain Python values "
            f"(it refers to {found.group(1)}). Loading a FocalNet checkpoint never executes code from the file. If "
            "you trust its origin, re-save its state dict (torch.save(torch.load(f, weights_only=False)['model'], "
            "'clean.pth')) or convert it to safetensors, then load that."
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {printable(e)}") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, struct.error, RecursionError,
            MemoryError) as e:
        # the restricted unpickler fed crafted bytes fails in many ways; none of them is a bug of ours
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: damaged file "
                              f"({type(e).__name__}: {printable(str(e)[:200])})") from None


def check_loaded_tensors(obj: Any, where: str, max_bytes: int) -> None:
    """Every tensor in a loaded object (containers walked without recursion, nested at most MAX_DEPTH deep):
    dense and in memory (no meta, sparse or quantized tensor), and all of them together at most `max_bytes`
    once materialised (numel * itemsize: what a copy allocates, whatever the storage)."""
    total, stack = 0, [(obj, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, torch.Tensor):
            if v.layout != torch.strided or v.is_meta or v.is_quantized:
                kind = "a meta" if v.is_meta else "a quantized" if v.is_quantized else f"a {v.layout}"
                raise CheckpointError(f"{where} holds {kind} tensor: a checkpoint holds dense tensors in memory; refused")
            total += v.numel() * v.element_size()
            if total > max_bytes:
                raise CheckpointError(
                    f"{where} holds tensors that take more than {max_bytes / 2**30:.2f} GiB once materialised (views "
                    "that repeat a few bytes, e.g. a stride-0 tensor, count at their full size); refused before any "
                    "copy. Raise FOCALNET_MAX_CHECKPOINT_BYTES if you trust the file and have the memory"
                )
        elif isinstance(v, (dict, list, tuple, set)):
            if depth >= MAX_DEPTH:
                raise CheckpointError(f"{where} holds containers nested deeper than {MAX_DEPTH} levels: not a checkpoint")
            items = list(v.keys()) + list(v.values()) if isinstance(v, dict) else list(v)
            stack.extend((x, depth + 1) for x in items)


def _declared_tensor_bytes(path: PathLike, f: BinaryIO, file_size: int) -> int:
    """What loading `path` will read, from its directory, without reading the tensors: a zip's uncompressed
    sizes (torch.save's format), a safetensors file's data section, else the file's size."""
    f.seek(0)
    if zipfile.is_zipfile(f):
        try:
            f.seek(0)
            with zipfile.ZipFile(f) as z:
                return sum(max(0, i.file_size) for i in z.infolist())
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: damaged zip ({e})") from None
    if Path(path).suffix == ".safetensors":
        f.seek(0)
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else file_size
        if n > file_size - 8:
            raise CheckpointError(f"cannot read {path} as safetensors: its header claims {n} bytes, the file has {file_size}")
        return file_size - 8 - n
    return file_size


def _check_declared(path: PathLike, f: BinaryIO, file_size: int) -> int:
    declared = _declared_tensor_bytes(path, f, file_size)
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


def check_tensor_bytes(path: PathLike) -> int:
    """Refuse, before loading, a checkpoint (a regular file) whose tensors would take more than
    `max_checkpoint_bytes()`, or far more than the file holds (a compressed zip bomb: torch.save never
    compresses). Returns the bytes."""
    with open_regular(path, "checkpoint", CheckpointError) as f:
        return _check_declared(path, f, os.fstat(f.fileno()).st_size)


def load_safetensors(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a regular .safetensors file, bounded like `safe_torch_load`."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    check_regular(path, "checkpoint", CheckpointError)
    check_tensor_bytes(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"cannot read {path} as safetensors: {printable(e)}") from None
