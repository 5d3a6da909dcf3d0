"""The names of a numeric precision, spelled one way in every command: `fp32`, `bf16`, `fp16`.

`focalnet train --precision bf16` and `focalnet bench --precision bf16` read the same table. The spellings
used before (`--amp none|bf16|fp16` in train, `--dtype float32|bfloat16|float16` in bench) are still
accepted: `precision_name` maps them to the short name, and `old_spelling_note` says what to write instead.

Whether this CPU computes bf16 natively (`native_bf16`) is probed here too, so that whatever refuses an emulated
reduced precision (`NativePrecisionError`) asks one question, and so is what `--precision auto` picks on a
device (`choose_precision`): bf16 where the hardware computes it and, on a CPU, a short probe finds it faster
than float32; fp32 anywhere else.
"""
from __future__ import annotations

import platform
import time
from typing import Optional

import torch
import torch.nn.functional as F

from .errors import FocalNetError

__all__ = [
    "PRECISIONS", "PrecisionError", "precision_name", "parse_precision", "old_spelling_note", "NativePrecisionError",
    "native_bf16", "native_bf16_feature", "AUTO", "choose_precision", "bf16_speedup",
]

# the project's spelling -> the dtype it computes in (fp32: no autocast)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = tuple(_DTYPES)
# earlier spellings still read: torch's dtype names (bench --dtype) and train's "none" (--amp none)
_OLD = {"float32": "fp32", "none": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# a setting, not a precision: what choose_precision picks for the device at hand (never fp16, which needs a GradScaler)
AUTO = "auto"


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
    return native_bf16_feature() is not None


def native_bf16_feature() -> Optional[str]:
    """The CPU feature that computes bf16 in hardware (`avx512_bf16`, `amx`, `arm bf16`), None without one
    (the rule is `native_bf16`'s)."""
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        for feature, probe in (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx", "_is_amx_tile_supported")):
            check = getattr(torch.cpu, probe, None)
            if check is not None and bool(check()):
                return feature
        return None
    return "arm bf16" if getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)() else None


# --precision auto on a CPU: the probe is one projection of a FocalNet MLP at a small stage ((tokens, dim) x
# (dim, 2 dim), what a 1x1 convolution computes), a few calls in each precision: tens of milliseconds
_PROBE_SHAPE = (512, 256, 512)  # tokens, dim, out features
_PROBE_CALLS = 3
# bf16 only where the probe is clearly faster: it times the matmul alone, and a training step also pays the
# casts autocast adds around it, and float32's accuracy is given up for the speed
_MIN_SPEEDUP = 1.2


def choose_precision(device: torch.device) -> tuple[str, str]:
    """What `--precision auto` computes in on `device`, and why in one line: (name, reason).

    CUDA: bf16 where the GPU computes it natively (Ampere and later), else fp32. CPU: bf16 where the CPU has a
    bf16 instruction set (`native_bf16_feature`) and `bf16_speedup` finds bf16 autocast at least _MIN_SPEEDUP
    times as fast as float32 (oneDNN emulates bf16 on some CPUs whose flags say yes); else fp32. fp16 is never
    chosen: it needs a GradScaler and loses range. A probe that fails inside torch gives fp32, with the
    reason saying so: an automatic choice never stops a run."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported(including_emulation=False):  # the current device: the run's
            return "bf16", f"bf16 autocast: the GPU ({name}) computes bf16 natively"
        return "fp32", (f"fp32: the GPU ({name}) has no native bf16 (fp16 needs a GradScaler: never chosen "
                        "automatically)")
    if device.type != "cpu":
        return "fp32", f"fp32: bf16 is not chosen automatically on {device.type} devices"
    feature = native_bf16_feature()
    if feature is None:
        return "fp32", "fp32: no native bf16 on this CPU (oneDNN would emulate it, slower than float32)"
    try:
        speedup = bf16_speedup()
    except RuntimeError as e:  # torch's errors (NotImplementedError, out of memory) are RuntimeErrors
        said = str(e).strip().splitlines()[:1]  # torch's messages run to many lines: the first says what
        return "fp32", f"fp32: the bf16 speed probe failed ({': '.join([type(e).__name__, *said])})"
    if speedup < _MIN_SPEEDUP:
        return "fp32", (f"fp32: this CPU has {feature}, but bf16 autocast ran at {speedup:.2f}x float32 in the probe "
                        f"(bf16 needs {_MIN_SPEEDUP:g}x)")
    return "bf16", f"bf16 autocast: this CPU computes bf16 natively ({feature}), probe {speedup:.1f}x float32"


def bf16_speedup() -> float:
    """How many times as fast as float32 this CPU computes a FocalNet-sized projection under bf16 autocast
    (above 1: faster), the best of _PROBE_CALLS calls each after one warm-up call (oneDNN builds its kernel
    on the first)."""
    tokens, dim, out = _PROBE_SHAPE
    gen = torch.Generator().manual_seed(0)
    x, weight = torch.randn(tokens, dim, generator=gen), torch.randn(out, dim, generator=gen)
    return _best_seconds(x, weight, bf16=False) / _best_seconds(x, weight, bf16=True)


def _best_seconds(x: torch.Tensor, weight: torch.Tensor, *, bf16: bool) -> float:
    """The fastest of _PROBE_CALLS calls of `F.linear(x, weight)` on the CPU, in bf16 autocast or float32
    (the weight stays float32, so the bf16 time includes autocast's cast of it, as in training)."""
    seconds = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        F.linear(x, weight)
        for _ in range(_PROBE_CALLS):
            t0 = time.perf_counter()
            F.linear(x, weight)
            seconds.append(time.perf_counter() - t0)
    return max(min(seconds), 1e-9)  # a clock that reads 0: never a division by zero
