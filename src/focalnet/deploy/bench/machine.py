"""What a timing depends on besides the code: the CPU and its ISA extensions, the allocator, the thread count,
the library versions, and the device's peak FLOP/s (for the fraction of peak a row reaches)."""
from __future__ import annotations

import os
import platform
from typing import Optional

import torch

from ...precision import precision_name

__all__ = ["ISA_FLAGS", "cpu_isa", "allocator_setting", "machine_state", "machine_line", "device_peak_flops", "read_text"]

# the CPU features a float32 / bf16 timing depends on, as /proc/cpuinfo names them
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")

# Dense (no sparsity) peak FLOP/s by device name fragment and precision, from the vendors' data sheets.
# fp32 entries are the TF32 tensor-core rates, which PyTorch uses for float32 convolutions by default.
_PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12},
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "fp32": 378e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 494e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 60e12},
}


def device_peak_flops(device: torch.device, precision: str) -> Optional[float]:
    """The device's dense peak FLOP/s for `precision` (bf16, fp16, fp32, or an earlier spelling), or None where
    unknown (every CPU, unlisted GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, table in _PEAK_FLOPS.items():  # "H100 PCIe" is listed before "H100"
        if key in name:
            return table.get(precision_name(precision))
    return None


def read_text(path: str) -> str:
    """A small system file's text ('' where it cannot be read: not Linux, no permission)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_isa(cpuinfo: str) -> tuple[str, list[str]]:
    """(CPU model name, the ISA_FLAGS it has) from the text of /proc/cpuinfo ('' and [] where unknown)."""
    name, flags = "", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return name, [f for f in ISA_FLAGS if f in flags]


def allocator_setting(environ: dict, maps: str) -> str:
    """What serves malloc, from the environment and the text of /proc/self/maps: glibc's MALLOC_* tunables, an
    LD_PRELOAD, and a jemalloc or tcmalloc mapped into the process (preloaded or linked in)."""
    parts = [f"{k}={v}" for k, v in sorted(environ.items()) if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]
    if environ.get("LD_PRELOAD"):
        parts.append(f"LD_PRELOAD={environ['LD_PRELOAD']}")
    mapped = sorted({lib for lib in ("jemalloc", "tcmalloc") if f"lib{lib}" in maps})
    if mapped:
        parts.append(f"{' and '.join(mapped)} in the process")
    return ", ".join(parts) if parts else "glibc malloc, default settings"


def machine_state() -> dict:
    """What a timing depends on besides the code: CPU and ISA, threads, allocator, library versions."""
    name, isa = cpu_isa(read_text("/proc/cpuinfo"))
    state = dict(
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpu=name or platform.processor() or platform.machine(),
        isa=isa,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        onednn_bf16=bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()),
        allocator=allocator_setting(dict(os.environ), read_text("/proc/self/maps")),
        python=platform.python_version(),
    )
    if torch.cuda.is_available():
        state["cuda_device"] = torch.cuda.get_device_name()
    return state


def machine_line(state: dict) -> str:
    """One line naming the machine a figure comes from: printed beside every table."""
    missing = [f for f in ISA_FLAGS if f not in state.get("isa", [])]
    isa = " ".join(state.get("isa", [])) or "none of " + " ".join(ISA_FLAGS)
    line = (f"{state['cpu']} [{isa}{'; no ' + ' '.join(missing) if missing and state.get('isa') else ''}; "
            f"torch CPU capability {state['cpu_capability']}], torch {state['torch']}, {state['threads']} threads, "
            f"allocator: {state['allocator']}")
    if state.get("cuda_device"):
        line += f", GPU: {state['cuda_device']}"
    return line
