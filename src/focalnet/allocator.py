"""glibc's malloc, told to keep the memory a CPU training step frees (`keep_freed_memory`).

A training step on the CPU allocates the same activation and gradient buffers at every step (the main job's
model: a dozen of 3-13 MB at batch 128) and frees them at its end. With glibc's defaults a freed block above the
mmap threshold goes back to the operating system, and so does free memory at the top of the heap above the trim
threshold; the next step takes it back one page fault per 4 KB page, and on these virtual machines a fault
costs about a microsecond. Measured on the main job's step (2-core AMD EPYC Zen 5, benchmarks/train_step_speed.py
--malloc default keep, docs/speed.md): float32 768-771 img/s with glibc's defaults, 1,103-1,208 img/s keeping the
memory. jemalloc or tcmalloc preloaded do the same; this does it without a dependency.

What it costs: the process keeps its peak memory until it exits, instead of handing it back between steps; a
training process reaches that peak at every step anyway. Nothing is changed where the user has chosen an
allocator already (MALLOC_* or GLIBC_TUNABLES in the environment, an LD_PRELOAD, jemalloc or tcmalloc in the
process), off Linux, or without glibc (musl); FOCALNET_MALLOC=default in the environment keeps glibc's defaults.
"""
from __future__ import annotations

import ctypes
import os
import platform
from typing import Optional

__all__ = ["keep_freed_memory", "kept", "user_setting", "process_maps", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "TOP_PAD"]

# mallopt's parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
# the largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2): blocks up to 32 MiB come from the heap
MMAP_THRESHOLD = 32 << 20
# free memory at the top of the heap is returned only above 1 GiB; each heap growth asks for 64 MiB more
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20

_KEPT: Optional[str] = None  # what keep_freed_memory set in this process, said by `kept()`


def user_setting(environ: dict, maps: str) -> str:
    """The allocator setting the user made, from the environment and the text of /proc/self/maps: glibc's
    MALLOC_* tunables, an LD_PRELOAD, a jemalloc or tcmalloc mapped into the process ('' where none)."""
    parts = [f"{k}={v}" for k, v in sorted(environ.items()) if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]
    if environ.get("LD_PRELOAD"):
        parts.append(f"LD_PRELOAD={environ['LD_PRELOAD']}")
    mapped = sorted({lib for lib in ("jemalloc", "tcmalloc") if f"lib{lib}" in maps})
    if mapped:
        parts.append(f"{' and '.join(mapped)} in the process")
    return ", ".join(parts)


def process_maps() -> str:
    """The text of /proc/self/maps ('' off Linux)."""
    try:
        with open("/proc/self/maps") as f:
            return f.read()
    except OSError:
        return ""


def _glibc() -> Optional[ctypes.CDLL]:
    if platform.system() != "Linux":
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 -- only glibc has it (musl's mallopt does nothing)
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> str:
    """Make glibc keep freed memory in the process (see the module docstring); idempotent. Returns what it did,
    or why it did nothing, in a few words (said in a run's start-up line)."""
    global _KEPT
    if _KEPT is not None:
        return _KEPT
    if os.environ.get("FOCALNET_MALLOC", "").strip().lower() == "default":
        return "allocator: glibc's defaults (FOCALNET_MALLOC=default)"
    user = user_setting(dict(os.environ), process_maps())
    if user:
        return f"allocator as set by the user ({user})"
    libc = _glibc()
    if libc is None:
        return "allocator: the system's (not glibc)"
    ok = all(libc.mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
    if not ok:  # glibc refused a value (an older or patched glibc): say so, change nothing else
        return "allocator: glibc's defaults (mallopt refused the settings)"
    _KEPT = (f"glibc malloc keeping freed memory (mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold "
             f"{TRIM_THRESHOLD >> 30} GiB)")
    return _KEPT


def kept() -> Optional[str]:
    """What keep_freed_memory set in this process, or None if it has not (benchmarks name the allocator)."""
    return _KEPT
