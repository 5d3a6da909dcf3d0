"""The names of a numeric precision, spelled one way in every command: `fp32`, `bf16`, `fp16`.

`focalnet train --precision bf16` and `focalnet bench --precision bf16` read the same table. The spellings
used before (`--amp none|bf16|fp16` in train, `--dtype float32|bfloat16|float16` in bench) are still
accepted: `precision_name` maps them to the short name, and `old_spelling_note` says what to write instead.

Whether this CPU computes bf16 natively (`native_bf16`) is probed here too, so that whatever refuses an emulated
reduced precision (`NativePrecisionError`) asks one question.
"""
from __future__ import annotations

import platform
from typing import Optional

import torch

from .errors import FocalNetError

__all__ = [
    "PRECISIONS", "PrecisionError", "precision_name", "parse_precision", "old_spelling_note", "NativePrecisionError",
    "native_bf16",
]

# the project's spelling -> the dtype it computes in (fp32: no autocast)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = tuple(_DTYPES)
# earlier spellings still read: torch's dtype names (bench --dtype) and train's "none" (--amp none)
_OLD = {"float32": "fp32", "none": "fp32", "bfloat16": "bf16", "float16": "fp16"}


class PrecisionError(FocalNetError, ValueError):
    """A precision name that is none of PRECISIONS nor an earlier spelling of one."""


def precision_name(name: str) -> str:
    """The project's spelling of `name` (`bfloat16` -> `bf16`); a name already in PRECISIONS comes back as is."""
    key = str(name).strip().lower()
    if key in _DTYPES:
        return key
    if key in _OLD:
        return _OLD[key]
    raise PrecisionError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")


def parse_precision(name: str) -> torch.dtype:
    """The dtype a precision name computes in: `parse_precision("bf16") is torch.bfloat16`."""
    return _DTYPES[precision_name(name)]


def old_spelling_note(name: str, flag: str = "--precision") -> Optional[str]:
    """A one-line note when `name` is an earlier spelling (`bfloat16`), None when it is already the project's."""
    new = precision_name(name)
    if str(name).strip().lower() == new:
        return None
    return f"note: precision {name!r} is now spelled {flag} {new}"


class NativePrecisionError(FocalNetError, RuntimeError):
    """A reduced precision asked of a device that would only emulate it, slower than float32."""


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware, as PyTorch's cpuinfo sees it: AVX-512 BF16 (AMD Zen 4 and
    later, Intel Cooper Lake) or AMX (Intel Sapphire Rapids and later) on x86; on other CPUs, oneDNN's own
    check (Arm's BF16 extension). On an x86 CPU with neither, oneDNN emulates bf16 with AVX-512 (its check
    says yes there), at about a quarter of float32's speed."""
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(bool(probe()) for probe in probes if probe is not None)
    return bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())
