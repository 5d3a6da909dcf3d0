"""Side-by-side speed of FocalNet implementations: inference (batch-1 latency, batch-N throughput) and training
steps (throughput and peak memory), on CPU or CUDA, in float32 or bf16/fp16 autocast, eager or compiled.

Steady state, fairly compared, because timings on a shared 2-core machine drift by several percent within minutes
and because a big model's first call after another model ran finds cold caches:
- every implementation is built in the same process and timed in blocks of consecutive calls, the blocks
  interleaved (A A A B B B A A A B B B ...): drift and a noisy neighbour hit them all alike, and each block
  starts with one re-warming call whose time is kept apart ("cold": the first call after another model ran,
  reported only when asked, labelled) so that the figures are warm, steady-state calls;
- compiled variants (`ours-compiled`, `timm-compiled`, ...) run beside the eager ones in the same run:
  torch.compile with inductor, `dynamic=False`, `fullgraph=True` for our models (no graph break allowed), and
  for inference inductor's `freezing` (weights as constants: conv + GELU and conv + add fused into oneDNN
  kernels, weights pre-packed) unless turned off; the first call, compilation included, is reported;
- the CPU model, its ISA extensions (AVX2, AVX-512, AVX512-BF16, AMX), the allocator setting (glibc's MALLOC_*
  variables, a jemalloc/tcmalloc preloaded or linked) and the thread count are part of every result: on these
  machines glibc's page faults alone cost about a quarter of the time;
- on CUDA every timed call is bracketed by `torch.cuda.synchronize()`;
- every row reports the FLOP/s it reaches (FLOPs measured by PyTorch's FlopCounterMode, 2 per multiply-add;
  training = 3 x forward) and its fraction of the device's peak in the number format the row computes in: a
  GPU's from its data sheet, a CPU's measured once per run on a 2048 x 2048 matrix product (fp32, bf16 where
  native, int8 where torch has a VNNI kernel; `machine.cpu_matmul_peak`);
- our implementations can be resized (`Workload.arch`, `--arch`: the small model of a training run), and every
  one takes the input channels and classes;
- peak training memory is measured in a fresh process per implementation (`memory`): on CPU the resident-set
  high-water mark minus the resident set just before the first step (model, optimizer and batch built), so the
  number is what the steps added, including the allocator's retained pages; on CUDA
  torch.cuda.max_memory_allocated above the allocation before the first step.

A run with compiled variants resets dynamo's caches first (`torch._dynamo.reset()`): the benchmark owns its
process. The CUDA paths are written to be correct; see docs/speed.md for where they were run.

The modules, one idea each: `implementations` (what is compared: one `register_implementation` per row kind),
`machine` (the CPU, ISA, allocator and device peak a figure depends on), `timing` (interleaved blocks),
`runs` (inference and training runs), `memory` (peak training memory in a fresh process), `results` (a row
and the table). Precision is spelled as everywhere (focalnet.precision: fp32, bf16, fp16).
"""

from __future__ import annotations

from .implementations import (
    COMPILED_SUFFIX,
    IMPLEMENTATIONS,
    REFERENCE,
    BenchError,
    Implementation,
    arch_takers,
    build_implementation,
    get_implementation,
    refuse_fixed_architectures,
    register_implementation,
    split_variant,
    trains,
)
from .machine import (
    CPU_FORMATS,
    ISA_FLAGS,
    PEAK_SIDE,
    allocator_setting,
    cpu_isa,
    cpu_matmul_peak,
    device_peak_flops,
    device_peaks,
    machine_line,
    machine_state,
    peak_line,
)
from .memory import peak_training_memory
from .results import BenchResult, format_table
from .runs import Workload, make_training_step, run_inference, run_training, variants_to_run
from .timing import block_schedule, time_in_blocks, timed_call

__all__ = [
    "IMPLEMENTATIONS",
    "REFERENCE",
    "COMPILED_SUFFIX",
    "BenchError",
    "BenchResult",
    "Implementation",
    "register_implementation",
    "get_implementation",
    "build_implementation",
    "split_variant",
    "trains",
    "variants_to_run",
    "block_schedule",
    "time_in_blocks",
    "timed_call",
    "Workload",
    "run_inference",
    "run_training",
    "make_training_step",
    "peak_training_memory",
    "ISA_FLAGS",
    "machine_state",
    "machine_line",
    "cpu_isa",
    "allocator_setting",
    "format_table",
    "device_peak_flops",
    "device_peaks",
    "cpu_matmul_peak",
    "peak_line",
    "CPU_FORMATS",
    "PEAK_SIDE",
    "arch_takers",
    "refuse_fixed_architectures",
]
