"""What a timing depends on besides the code: the CPU and its ISA extensions, the allocator, the thread count,
the library versions, and the device's peak FLOP/s (for the fraction of peak a row reaches).

A GPU's peak is its data sheet's. A CPU's is measured (`cpu_matmul_peak`): a cloud VM's vCPUs have no data sheet
(the same instance type lands on different CPU generations and clocks, and shares cores), and what the machine's
BLAS / oneDNN reaches on a large square matrix product is the most this CPU computes for a model anyway. FocalNet's
depthwise and 1x1 convolutions on small maps cannot be expected to reach it: they read and write far more memory
per multiply-add than a 2048 x 2048 product, so their %peak says how far from compute-bound a row is, not that a
kernel is broken.
"""
from __future__ import annotations

import os
import platform
from typing import Callable, Optional

import torch

from ...allocator import kept, process_maps, user_setting
from ...precision import native_bf16, precision_name
from .timing import timed_call

__all__ = [
    "ISA_FLAGS", "cpu_isa", "allocator_setting", "machine_state", "machine_line", "device_peak_flops", "read_text",
    "CPU_FORMATS", "PEAK_SIDE", "PEAK_CALLS", "number_format", "cpu_matmul_peak", "device_peaks", "peak_line",
]

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


# the number formats a CPU row computes in (an Implementation's number_format, else --precision), each with its
# measured peak; int8 is no precision of autocast, so it is spelled here beside focalnet.precision's names
CPU_FORMATS = ("fp32", "bf16", "int8")
# the side of the square matrices whose product is the CPU's reference
PEAK_SIDE = 2048
# timed products per measurement; the peak is the mean of the fastest quarter
PEAK_CALLS = 12
# measured peaks, per (format, threads, side): measured once per process, so once per `focalnet bench`
_CPU_PEAKS: dict[tuple[str, int, int], Optional[float]] = {}


def number_format(name: str) -> str:
    """'int8', or focalnet.precision's spelling of a floating-point precision ('bfloat16' -> 'bf16')."""
    return "int8" if str(name).strip().lower() == "int8" else precision_name(name)


def _no_native_matmul(fmt: str) -> str:
    """Why this CPU has no peak in `fmt` worth measuring ('' where it has one)."""
    if fmt == "bf16" and not native_bf16():
        return "emulated on this CPU"  # oneDNN emulates it with AVX-512, slower than float32: no peak to speak of
    vnni = getattr(torch.cpu, "_is_vnni_supported", lambda: False)()  # AVX512-VNNI, as torch's cpuinfo sees it
    if fmt == "int8" and not (vnni and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        # torch's CPU int8 product (_int_mm) runs oneDNN only with AVX512-VNNI, else a scalar triple loop
        return "no AVX512-VNNI int8 matmul in torch here"
    if fmt == "fp16":
        return "fp16 is for CUDA"
    return ""


def _matmul_call(fmt: str, side: int) -> Callable[[], torch.Tensor]:
    """One (side x side) @ (side x side) product in `fmt`: torch.mm in float32 / bf16, torch._int_mm in int8
    (int8 x int8 -> int32, the integer product torch offers on a CPU)."""
    g = torch.Generator().manual_seed(0)
    if fmt == "int8":
        a, b = (torch.randint(-128, 128, (side, side), dtype=torch.int8, generator=g) for _ in range(2))
        return lambda: torch._int_mm(a, b)
    dtype = torch.bfloat16 if fmt == "bf16" else torch.float32
    a, b = (torch.randn(side, side, generator=g).to(dtype) for _ in range(2))
    return lambda: torch.mm(a, b)


def _measure_matmul(fmt: str, *, side: int, calls: int, warmup: int = 2) -> float:
    """FLOP/s (2 per multiply-add) of the fastest quarter of `calls` products after `warmup` untimed ones: the
    best the machine does, not its average under a noisy neighbour."""
    call = _matmul_call(fmt, side)
    for _ in range(warmup):
        call()
    times = sorted(timed_call(call, torch.device("cpu")) for _ in range(calls))
    best = times[: max(1, calls // 4)]
    return 2 * side**3 / (sum(best) / len(best))


def cpu_matmul_peak(fmt: str = "fp32", *, threads: Optional[int] = None, side: Optional[int] = None,
                    calls: Optional[int] = None) -> Optional[float]:
    """This CPU's matrix-product peak in FLOP/s (int8: operations/s) for the number format `fmt` (fp32, bf16,
    int8), measured on a square `side` x `side` product (default PEAK_SIDE) with `threads` torch threads (default:
    the count in use); None where the CPU has no native kernel for `fmt` (bf16 emulated, int8 without VNNI).

    Measured once per (format, threads, side) in a process (see the module docstring for why a measurement)."""
    fmt, side = number_format(fmt), side or PEAK_SIDE
    threads = threads or torch.get_num_threads()
    key = (fmt, threads, side)
    if key not in _CPU_PEAKS:
        if _no_native_matmul(fmt):
            _CPU_PEAKS[key] = None
        else:
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                _CPU_PEAKS[key] = _measure_matmul(fmt, side=side, calls=calls or PEAK_CALLS)
            finally:
                torch.set_num_threads(before)
    return _CPU_PEAKS[key]


def device_peak_flops(device: torch.device, precision: str) -> Optional[float]:
    """The device's dense peak FLOP/s in `precision` (a number format: fp32, bf16, fp16, int8, or an earlier
    spelling), or None where unknown: a CUDA device's from its data sheet (unlisted GPUs: None), a CPU's
    measured (`cpu_matmul_peak`, None where it only emulates the format)."""
    device = torch.device(device)
    if device.type == "cpu":
        return cpu_matmul_peak(precision)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, table in _PEAK_FLOPS.items():  # "H100 PCIe" is listed before "H100"
        if key in name:
            return table.get(number_format(precision))
    return None


def device_peaks(device: torch.device) -> dict[str, Optional[float]]:
    """{number format: peak FLOP/s or None} of `device`: CPU_FORMATS measured on a CPU, the data sheet on CUDA."""
    device = torch.device(device)
    formats = CPU_FORMATS if device.type == "cpu" else ("bf16", "fp16", "fp32")
    return {fmt: device_peak_flops(device, fmt) for fmt in formats}


def _rate(value: float, fmt: str) -> str:
    unit = "OP/s" if fmt == "int8" else "FLOP/s"
    if value >= 1e13:
        return f"{value / 1e12:.0f} T{unit}"
    return f"{value / 1e9:.0f} G{unit}" if value >= 1e10 else f"{value / 1e9:.2f} G{unit}"


def peak_line(device: torch.device) -> str:
    """One line naming the peaks %peak is measured against: on a CPU the measured matmul in each format (with
    why a format has none), on CUDA the data sheet's dense figures."""
    device = torch.device(device)
    peaks = device_peaks(device)
    if device.type == "cpu":
        parts = [f"{fmt} {_rate(p, fmt)}" if p else f"{fmt} - ({_no_native_matmul(fmt)})" for fmt, p in peaks.items()]
        how = f"{PEAK_SIDE}^2, {torch.get_num_threads()} threads, best quarter of {PEAK_CALLS} calls"
        return f"CPU matmul peak ({how}): " + ", ".join(parts)
    if device.type == "cuda" and any(peaks.values()):
        parts = [f"{fmt}{' (TF32)' if fmt == 'fp32' else ''} {_rate(p, fmt)}" for fmt, p in peaks.items() if p]
        return f"GPU peak ({torch.cuda.get_device_name(device)}, data sheet, dense): " + ", ".join(parts)
    return f"no peak known for {device} (%peak shows -)"


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
    """What serves malloc (focalnet.allocator.user_setting), or glibc's defaults where the user set nothing."""
    return user_setting(environ, maps) or "glibc malloc, default settings"


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
        allocator=kept() or allocator_setting(dict(os.environ), process_maps()),
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
