"""A benchmark row (`BenchResult`) and the table of rows: medians, ranges and ratios to timm's FocalNet."""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import torch

from .implementations import COMPILED_SUFFIX, REFERENCE
from .machine import device_peak_flops, machine_line, peak_line

__all__ = ["BenchResult", "format_table"]


@dataclass
class BenchResult:
    impl: str
    mode: str  # "infer" or "train"
    batch_size: int
    img_size: int
    precision: str  # fp32, bf16 or fp16 (focalnet.precision)
    device: str
    compiled: bool
    times_s: list[float] = field(default_factory=list)  # one entry per timed call (one batch / one step)
    flops_per_img: Optional[float] = None  # FLOPs of one image, 2 per multiply-add (training: 3 x forward)
    peak_bytes: Optional[int] = None
    note: str = ""
    first_call_s: Optional[float] = None  # the first call (with compilation, for a compiled variant)
    cold_times_s: list[float] = field(default_factory=list)  # the first call of each block: caches cold
    number_format: str = ""  # what the row computes in when not `precision` (ours-int8: int8): its peak's format

    @property
    def label(self) -> str:
        return self.impl + (COMPILED_SUFFIX if self.compiled else "")

    @property
    def computes_in(self) -> str:
        """The number format whose peak the row is a fraction of: its own (int8, bf16) or --precision's."""
        return self.number_format or self.precision

    @property
    def compile_s(self) -> Optional[float]:
        """Compilation time: the first call less a steady-state call (None for an eager variant)."""
        if not self.compiled or self.first_call_s is None or not self.times_s:
            return None
        return max(0.0, self.first_call_s - statistics.median(self.times_s))

    @property
    def throughputs(self) -> list[float]:
        return [self.batch_size / t for t in self.times_s]

    @property
    def median(self) -> float:
        return statistics.median(self.throughputs) if self.times_s else float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(label=self.label, median_img_s=self.median, compile_s=self.compile_s,
                 median_ms=statistics.median(self.times_s) * 1e3 if self.times_s else None)
        return d


def _median_throughput(r: BenchResult, cold: bool) -> float:
    times = r.cold_times_s if cold else r.times_s
    return statistics.median([r.batch_size / t for t in times]) if times else float("nan")


def _references(results: Sequence[BenchResult], cold: bool) -> dict:
    """timm's FocalNet median per (mode, batch, px, precision, compiled): the denominator of every ratio (cold rows
    are compared with timm's cold calls)."""
    return {(r.mode, r.batch_size, r.img_size, r.precision, r.compiled): _median_throughput(r, cold)
            for r in results if r.impl == REFERENCE}


def _ratio(value: float, ref: Optional[float]) -> str:
    return f"{value / ref:.2f}" if ref else "-"


def _figure(value: float) -> str:
    # small figures keep decimals: a small model on a CPU reaches single-digit GFLOP/s and %peak
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _rates(r: BenchResult, throughput: float) -> tuple[str, str]:
    """(GFLOP/s, % of the device's peak in the row's number format) at `throughput` img/s, '-' where unknown; a
    CPU's peak is measured here, once per process (machine.cpu_matmul_peak), only for rows with a FLOP count."""
    if not r.flops_per_img or math.isnan(throughput):  # no count, or no timed call
        return "-", "-"
    rate = r.flops_per_img * throughput
    peak = device_peak_flops(torch.device(r.device), r.computes_in)
    return _figure(rate / 1e9), _figure(100 * rate / peak) if peak else "-"


def _row(r: BenchResult, refs: dict, *, cold: bool = False) -> str:
    key = (r.mode, r.batch_size, r.img_size, r.precision)
    times = r.cold_times_s if cold else r.times_s
    thr = [r.batch_size / t for t in times]
    med = _median_throughput(r, cold)
    gflops, frac = _rates(r, med)
    mem = f"{r.peak_bytes / 1e9:.2f} GB" if r.peak_bytes is not None else "-"
    ms = statistics.median(times) * 1e3 if times else float("nan")
    comp = f"{r.compile_s:.1f}" if r.compile_s is not None else "-"
    rng = f"{min(thr):.2f}-{max(thr):.2f}" if thr else "-"
    label = r.label + (" [cold]" if cold else "")
    return (f"{label:<22} {r.mode:<5} {r.batch_size:>5} {r.img_size:>4} {r.precision:<9} {med:>8.2f} {rng:>13} "
            f"{ms:>8.1f} {_ratio(med, refs.get(key + (r.compiled,))):>7} {_ratio(med, refs.get(key + (False,))):>8} "
            f"{comp:>9} {gflops:>7} {frac:>6} {mem:>9}  {r.note}")


def format_table(results: Sequence[BenchResult], *, machine: Optional[dict] = None, cold: bool = False) -> str:
    """Medians, min-max and ratios to timm's FocalNet of the same mode, batch, size and precision: `x timm`
    against timm of the same kind (eager against eager, compiled against compiled), `x timm(e)` against timm
    eager; GFLOP/s and %peak of the device's peak in the row's number format (`BenchResult.computes_in`).
    `machine` (machine_state()) is named above the table, with the peak of each device the rows ran on (a CPU's
    measured: `peak_line`); `cold` adds the first call of each block as its own row, labelled [cold]."""
    refs, cold_refs = _references(results, False), _references(results, True)
    head = (f"{'implementation':<22} {'mode':<5} {'batch':>5} {'px':>4} {'precision':<9} {'img/s':>8} "
            f"{'min-max':>13} {'ms/call':>8} {'x timm':>7} {'x timm(e)':>8} {'compile s':>9} {'GFLOP/s':>7} "
            f"{'%peak':>6} {'peak mem':>9}  note")
    lines = [f"machine: {machine_line(machine)}"] if machine else []
    if machine:
        lines += [peak_line(torch.device(d)) for d in dict.fromkeys(r.device for r in results)]
    lines += [head, "-" * len(head)]
    for r in results:
        lines.append(_row(r, refs))
        if cold and r.cold_times_s:
            lines.append(_row(r, cold_refs, cold=True))
    lines.append("steady state: consecutive calls after one re-warming call per block (blocks interleaved between "
                 "implementations)" + ("; [cold]: that first call, after another implementation ran" if cold else ""))
    lines.append("GFLOP/s: FLOPs counted by FlopCounterMode (2 per multiply-add; int8 rows: integer operations) x "
                 "img/s; training FLOPs = 3 x forward (forward + backward)")
    lines.append("%peak: of the device's peak in the number format the row computes in (CPU: a measured matmul, "
                 "GPU: the data sheet)")
    return "\n".join(lines)
