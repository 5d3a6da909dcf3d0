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
- on CUDA every timed call is bracketed by `torch.cuda.synchronize()`, and the fraction of the device's peak
  FLOP/s is reported (FLOPs measured by PyTorch's FlopCounterMode, 2 per multiply-add; training = 3 x forward);
- peak training memory on CPU is the resident-set high-water mark (getrusage ru_maxrss) of a fresh subprocess
  per implementation, minus its resident set just before the first step (model, optimizer and batch built):
  the number is what the steps added, including the allocator's retained pages. On CUDA it is
  torch.cuda.max_memory_allocated above the allocation before the first step.

A run with compiled variants resets dynamo's caches first (`torch._dynamo.reset()`): the benchmark owns its
process. The CUDA paths are written to be correct; see docs/speed.md for where they were run.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn

from ..errors import FocalNetError

__all__ = [
    "IMPLEMENTATIONS",
    "COMPILED_SUFFIX",
    "BenchResult",
    "build_implementation",
    "split_variant",
    "block_schedule",
    "time_in_blocks",
    "run_inference",
    "run_training",
    "peak_training_memory",
    "machine_state",
    "machine_line",
    "cpu_isa",
    "allocator_setting",
    "format_table",
    "device_peak_flops",
]

class BenchError(FocalNetError, ValueError):
    """A benchmark that cannot be run as asked."""


# what --compare runs, in this order; "timm" is the reference of every ratio
IMPLEMENTATIONS = ("ours", "ours-fused", "timm", "hf", "swin_t", "convnext_t")
REFERENCE = "timm"
# "ours-compiled", "timm-compiled", ...: the implementation through torch.compile (inductor)
COMPILED_SUFFIX = "-compiled"
# our models must compile without a graph break; the peers are compiled as their users would (breaks allowed)
FULLGRAPH = frozenset({"ours", "ours-fused"})
# the CPU features a float32 / bf16 timing depends on, as /proc/cpuinfo names them
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Dense (no sparsity) peak FLOP/s by device name fragment and dtype, from the vendors' data sheets.
# float32 entries are the TF32 tensor-core rates, which PyTorch uses for float32 convolutions by default.
_PEAK_FLOPS = {
    "H200": {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12},
    "H100 PCIe": {"bfloat16": 756e12, "float16": 756e12, "float32": 378e12},
    "H100": {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12},
    "A100": {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12},
    "L4": {"bfloat16": 121e12, "float16": 121e12, "float32": 60e12},
}


def device_peak_flops(device: torch.device, dtype: str) -> Optional[float]:
    """The device's dense peak FLOP/s for `dtype`, or None where unknown (every CPU, unlisted GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, table in _PEAK_FLOPS.items():  # "H100 PCIe" is listed before "H100"
        if key in name:
            return table.get(dtype)
    return None


def _read(path: str) -> str:
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
    name, isa = cpu_isa(_read("/proc/cpuinfo"))
    state = dict(
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpu=name or platform.processor() or platform.machine(),
        isa=isa,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        onednn_bf16=bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()),
        allocator=allocator_setting(dict(os.environ), _read("/proc/self/maps")),
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


@dataclass
class BenchResult:
    impl: str
    mode: str  # "infer" or "train"
    batch_size: int
    img_size: int
    dtype: str
    device: str
    compiled: bool
    times_s: list[float] = field(default_factory=list)  # one entry per timed call (one batch / one step)
    flops_per_img: Optional[float] = None  # forward FLOPs, 2 per multiply-add
    peak_bytes: Optional[int] = None
    note: str = ""
    first_call_s: Optional[float] = None  # the first call (with compilation, for a compiled variant)
    cold_times_s: list[float] = field(default_factory=list)  # the first call of each block: caches cold

    @property
    def label(self) -> str:
        return self.impl + (COMPILED_SUFFIX if self.compiled else "")

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


# ----------------------------------------------------------------------------------------------------------
# building the implementations
# ----------------------------------------------------------------------------------------------------------
def _timm_name(variant: str) -> Optional[str]:
    import timm

    return variant if variant in timm.list_models("focalnet*") else None


def build_implementation(
    impl: str, *, variant: str, img_size: int = 224, num_classes: int = 1000, training: bool = False
) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """(module, forward function returning logits) for one implementation, random weights.

    Raises ValueError with the reason when `impl` cannot run this variant (e.g. timm has no isotropic FocalNet).
    """
    if impl in ("ours", "ours-fused"):
        from ..factory import create_model

        model = create_model(variant, num_classes=num_classes)
        if impl == "ours-fused":
            if training:
                raise BenchError("ours-fused is inference only (fuse_for_inference folds dropout and drop path away)")
            from .fused import fuse_for_inference

            model = fuse_for_inference(model.eval())
        return model, model
    if impl == "timm":
        import timm

        name = _timm_name(variant)
        if name is None:
            raise BenchError(f"timm has no {variant}")
        model = timm.create_model(name, num_classes=num_classes)
        return model, model
    if impl == "hf":
        import transformers

        from ..checkpoints import hf_config

        arch = _arch_of(variant, num_classes)
        cfg = {k: v for k, v in hf_config(arch).items() if k not in ("model_type", "architectures")}
        model = transformers.FocalNetForImageClassification(transformers.FocalNetConfig(**cfg))
        return model, lambda x: model(pixel_values=x).logits
    if impl in ("swin_t", "convnext_t"):
        import timm

        name = {"swin_t": "swin_tiny_patch4_window7_224", "convnext_t": "convnext_tiny"}[impl]
        kw = dict(img_size=img_size) if impl == "swin_t" else {}
        model = timm.create_model(name, num_classes=num_classes, **kw)
        return model, model
    raise BenchError(f"unknown implementation {impl!r}; choose from {', '.join(IMPLEMENTATIONS)}")


def _arch_of(variant: str, num_classes: int) -> dict:
    from ..registry import get_spec

    return {**get_spec(variant).arch, "num_classes": num_classes}


def _unfused_flops(variant: str, x: torch.Tensor) -> Optional[float]:
    # the oneDNN kernels of a fused model are invisible to FlopCounterMode; it computes the same function as the
    # unfused model, whose FLOPs are counted on the meta device (no weights, no arithmetic)
    from ..registry import build_model

    with torch.device("meta"):
        model = build_model(variant)
    return _forward_flops(model, model, x.to("meta"))


def _forward_flops(module: nn.Module, fn: Callable, x: torch.Tensor) -> Optional[float]:
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn(x[:1])
        return float(counter.get_total_flops())
    except Exception:  # a counter that cannot see a custom kernel is no reason to fail the benchmark
        return None


# ----------------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def block_schedule(keys: Sequence[str], *, rounds: int, block: int) -> list[tuple[str, int]]:
    """The order of a timed run: [(key, timed calls)], blocks of up to `block` consecutive calls per key, the keys
    taking turns (A A A B B B A A A B B B ...) until each has `rounds` timed calls."""
    if rounds < 1 or block < 1:
        raise BenchError(f"rounds and block must be at least 1, got {rounds} and {block}")
    out, done = [], 0
    while done < rounds:
        n = min(block, rounds - done)
        out += [(k, n) for k in keys]
        done += n
    return out


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def time_in_blocks(
    calls: dict[str, Callable[[], Any]], device: torch.device, *, warmup: int, rounds: int, block: int,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, dict]:
    """Steady-state times of each call: {key: dict(first=s, times=[s], cold=[s])}.

    Each call is run `warmup` times first (the first of them timed: compilation happens there), then
    `block_schedule`: each block begins with one re-warming call, kept apart in `cold` (the first call after
    another implementation ran), and `times` holds the rest, consecutive calls at steady state."""
    out: dict[str, dict] = {}
    for key, fn in calls.items():
        first = _timed(fn, device)
        for _ in range(max(warmup - 1, 0)):
            fn()
        out[key] = dict(first=first, times=[], cold=[])
        log(f"  {key}: first call {first:.2f} s")
    for key, n in block_schedule(list(calls), rounds=rounds, block=block):
        fn = calls[key]
        out[key]["cold"].append(_timed(fn, device))
        out[key]["times"] += [_timed(fn, device) for _ in range(n)]
    return out


def split_variant(name: str) -> tuple[str, bool]:
    """'timm-compiled' -> ('timm', True), 'ours' -> ('ours', False); unknown names are a BenchError."""
    base, compiled = (name[: -len(COMPILED_SUFFIX)], True) if name.endswith(COMPILED_SUFFIX) else (name, False)
    if base not in IMPLEMENTATIONS:
        known = ", ".join(IMPLEMENTATIONS)
        raise BenchError(f"unknown implementation {name!r}; choose from {known}, each also as NAME{COMPILED_SUFFIX}")
    return base, compiled


def _compiled(impl: str, fn: Callable) -> Callable:
    # static shapes: each batch size gets its own graph, never a dynamic-shape one made on the second size
    return torch.compile(fn, fullgraph=impl in FULLGRAPH, dynamic=False)


def _reset_if_compiling(variants: Sequence[str]) -> None:
    # every variant compiles afresh (compile time measured, recompile limits not reached by earlier runs)
    if any(split_variant(v)[1] for v in variants):
        torch._dynamo.reset()


def _prepare(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _variants(impls: Sequence[str], compile: bool) -> list[str]:
    """The variants to run: `compile` makes every eager one compiled (a '-compiled' name already is)."""
    out = []
    for name in impls:
        _, compiled = split_variant(name)
        out.append(name + COMPILED_SUFFIX if compile and not compiled else name)
    return out


def _freezing(enabled: bool):
    # inductor's freezing treats the weights as constants (inference only): convolution + GELU / + add are then
    # fused into oneDNN kernels with pre-packed weights, what a deployment compiles with
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=enabled)


def _fill(results: dict[str, BenchResult], timed: dict[str, dict]) -> list[BenchResult]:
    for key, t in timed.items():
        r = results[key]
        r.first_call_s, r.times_s, r.cold_times_s = t["first"], t["times"], t["cold"]
    return list(results.values())


def run_inference(
    impls: Sequence[str],
    *,
    variant: str = "focalnet_tiny_srf",
    batch_size: int = 16,
    img_size: int = 224,
    dtype: str = "float32",
    device: str = "cpu",
    compile: bool = False,
    freezing: bool = True,
    channels_last: bool = False,
    warmup: int = 3,
    rounds: int = 10,
    block: int = 5,
    log: Callable[[str], None] = lambda s: None,
) -> list[BenchResult]:
    """Inference throughput of each implementation ('ours', 'timm-compiled', ...; `compile`: all compiled), in
    blocks of consecutive calls interleaved between implementations (`time_in_blocks`), in this process."""
    dev = torch.device(device)
    x = torch.randn(batch_size, 3, img_size, img_size, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    variants = _variants(impls, compile)
    _reset_if_compiling(variants)
    calls, results = {}, {}
    for name in variants:
        impl, compiled = split_variant(name)
        try:
            module, fn = build_implementation(impl, variant=variant, img_size=img_size)
        except (ValueError, ImportError) as e:
            log(f"skipping {name}: {e}")
            continue
        module = _prepare(module.eval(), dev, channels_last)
        flops = _forward_flops(module, fn, x) if impl != "ours-fused" else _unfused_flops(variant, x)
        note = ("inductor, freezing" if freezing else "inductor, no freezing") if compiled else ""
        if compiled:
            fn = _compiled(impl, fn)
        results[name] = BenchResult(impl, "infer", batch_size, img_size, dtype, device, compiled, flops_per_img=flops,
                                    note=note)

        def call(fn=fn, frozen=compiled and freezing):
            with torch.inference_mode(), _autocast(dev, dtype), _freezing(frozen):
                return fn(x)

        calls[name] = call
    log(f"batch {batch_size}: {warmup} warm-up calls each (compiling where asked), then {rounds} timed calls each "
        f"in blocks of {block}")
    return _fill(results, time_in_blocks(calls, dev, warmup=warmup, rounds=rounds, block=block, log=log))


def _train_step_fn(module: nn.Module, fn: Callable, x: torch.Tensor, y: torch.Tensor, dev: torch.device, dtype: str):
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4, weight_decay=0.05)
    scaler = torch.amp.GradScaler(dev.type, enabled=(dtype == "float16"))

    def step():
        opt.zero_grad(set_to_none=True)
        with _autocast(dev, dtype):
            loss = nn.functional.cross_entropy(fn(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def _make_train(name: str, *, variant: str, img_size: int, batch_size: int, dev: torch.device, dtype: str,
                channels_last: bool, recompute: bool):
    """(module, eager forward, batch, one training step) of the variant `name` (compiled if it says so)."""
    impl, compiled = split_variant(name)
    module, fn = build_implementation(impl, variant=variant, img_size=img_size, training=True)
    module = _prepare(module.train(), dev, channels_last)
    if impl == "ours" and recompute:
        module.set_activation_recompute(True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, img_size, img_size, generator=g).to(dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch_size,), generator=g).to(dev)
    step_fn = _compiled(impl, fn) if compiled else fn
    return module, fn, x, _train_step_fn(module, step_fn, x, y, dev, dtype)


def run_training(
    impls: Sequence[str],
    *,
    variant: str = "focalnet_tiny_srf",
    batch_size: int = 16,
    img_size: int = 224,
    dtype: str = "float32",
    device: str = "cpu",
    compile: bool = False,
    channels_last: bool = False,
    recompute: bool = True,
    warmup: int = 2,
    rounds: int = 5,
    block: int = 3,
    log: Callable[[str], None] = lambda s: None,
) -> list[BenchResult]:
    """Training-step throughput (forward, backward, AdamW step), timed like `run_inference`, in this process.

    `recompute`: our model runs with `set_activation_recompute(True)` (reported in the result's note). A compiled
    variant compiles forward and backward (AOT autograd); the optimizer step stays eager."""
    dev = torch.device(device)
    variants = _variants(impls, compile)
    _reset_if_compiling(variants)
    calls, results = {}, {}
    for name in variants:
        impl, compiled = split_variant(name)
        try:
            module, fn, x, step = _make_train(name, variant=variant, img_size=img_size, batch_size=batch_size,
                                              dev=dev, dtype=dtype, channels_last=channels_last, recompute=recompute)
        except (ValueError, ImportError) as e:
            log(f"skipping {name}: {e}")
            continue
        flops = _forward_flops(module, fn, x)  # the eager forward: counting must not trigger a compilation
        note = "activation recompute" if impl == "ours" and recompute else ""
        results[name] = BenchResult(impl, "train", batch_size, img_size, dtype, device, compiled,
                                    flops_per_img=None if flops is None else 3 * flops, note=note)
        calls[name] = step
    log(f"training, batch {batch_size}: {warmup} warm-up steps each, then {rounds} timed steps each in blocks of "
        f"{block}")
    return _fill(results, time_in_blocks(calls, dev, warmup=warmup, rounds=rounds, block=block, log=log))


# ----------------------------------------------------------------------------------------------------------
# peak memory of training, one fresh process per implementation
# ----------------------------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_rss_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (VmHWM) to the current resident set; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_peak_bytes() -> int:
    for line in _read("/proc/self/status").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _peak_child(cfg: dict) -> dict:
    """Peak memory of `steps` training steps above the memory held before the first step (model, AdamW, batch).
    One step runs first, its peak left out (the high-water mark is reset after it), so that a compiled variant's
    compilation is not counted as training memory; what that step leaves allocated (AdamW's state, the allocator's
    retained pages) is."""
    torch.set_num_threads(cfg["threads"])
    dev = torch.device(cfg["device"])
    name = cfg["impl"] + (COMPILED_SUFFIX if cfg["compile"] and not split_variant(cfg["impl"])[1] else "")
    module, fn, x, step = _make_train(name, variant=cfg["variant"], img_size=cfg["img_size"],
                                      batch_size=cfg["batch_size"], dev=dev, dtype=cfg["dtype"],
                                      channels_last=cfg["channels_last"], recompute=cfg["recompute"])
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev) if cuda else _rss_bytes()
    step()
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        reset = True
    else:
        reset = _reset_rss_peak()
    for _ in range(cfg["steps"]):
        step()
    if cuda:
        torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) if cuda else _rss_peak_bytes()
    return dict(peak_bytes=int(peak - base), baseline_bytes=int(base), first_step_excluded=reset)


def peak_training_memory(
    impl: str,
    *,
    variant: str = "focalnet_tiny_srf",
    batch_size: int = 16,
    img_size: int = 224,
    dtype: str = "float32",
    device: str = "cpu",
    compile: bool = False,
    channels_last: bool = False,
    recompute: bool = True,
    steps: int = 2,
    timeout: float = 1800,
) -> int:
    """Bytes that `steps` training steps add to a fresh process, after one step whose own peak is left out (see
    `_peak_child`, and the module docstring)."""
    cfg = dict(impl=impl, variant=variant, batch_size=batch_size, img_size=img_size, dtype=dtype, device=device,
               compile=compile, channels_last=channels_last, recompute=recompute, steps=steps,
               threads=torch.get_num_threads())
    proc = subprocess.run(
        [sys.executable, "-m", "focalnet.deploy.bench", "--peak-child", json.dumps(cfg)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": _pythonpath()},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the memory measurement of {impl} failed:\n{proc.stderr[-2000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])


def _pythonpath() -> str:
    # the child must import this very copy of focalnet (a source checkout may shadow an installed one)
    # deploy/bench.py -> the folder that holds the focalnet package (never focalnet/ itself: its inspect/ would
    # shadow the standard library's inspect)
    here = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join([here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


# ----------------------------------------------------------------------------------------------------------
# reporting
# ----------------------------------------------------------------------------------------------------------
def _median_throughput(r: BenchResult, cold: bool) -> float:
    times = r.cold_times_s if cold else r.times_s
    return statistics.median([r.batch_size / t for t in times]) if times else float("nan")


def _references(results: Sequence[BenchResult], cold: bool) -> dict:
    """timm's FocalNet median per (mode, batch, px, dtype, compiled): the denominator of every ratio (cold rows are
    compared with timm's cold calls)."""
    return {(r.mode, r.batch_size, r.img_size, r.dtype, r.compiled): _median_throughput(r, cold)
            for r in results if r.impl == REFERENCE}


def _ratio(value: float, ref: Optional[float]) -> str:
    return f"{value / ref:.2f}" if ref else "-"


def _row(r: BenchResult, refs: dict, *, cold: bool = False) -> str:
    key = (r.mode, r.batch_size, r.img_size, r.dtype)
    times = r.cold_times_s if cold else r.times_s
    thr = [r.batch_size / t for t in times]
    med = _median_throughput(r, cold)
    gflops = f"{r.flops_per_img * med / 1e9:.0f}" if r.flops_per_img else "-"
    peak = device_peak_flops(torch.device(r.device), r.dtype)
    frac = f"{100 * r.flops_per_img * med / peak:.1f}" if (peak and r.flops_per_img) else "-"
    mem = f"{r.peak_bytes / 1e9:.2f} GB" if r.peak_bytes is not None else "-"
    ms = statistics.median(times) * 1e3 if times else float("nan")
    comp = f"{r.compile_s:.1f}" if r.compile_s is not None else "-"
    rng = f"{min(thr):.2f}-{max(thr):.2f}" if thr else "-"
    label = r.label + (" [cold]" if cold else "")
    return (f"{label:<22} {r.mode:<5} {r.batch_size:>5} {r.img_size:>4} {r.dtype:<8} {med:>8.2f} {rng:>13} {ms:>8.1f} "
            f"{_ratio(med, refs.get(key + (r.compiled,))):>7} {_ratio(med, refs.get(key + (False,))):>8} {comp:>9} "
            f"{gflops:>7} {frac:>6} {mem:>9}  {r.note}")


def format_table(results: Sequence[BenchResult], *, machine: Optional[dict] = None, cold: bool = False) -> str:
    """Medians, min-max and ratios to timm's FocalNet of the same mode, batch, size and dtype: `x timm` against
    timm of the same kind (eager against eager, compiled against compiled), `x timm(e)` against timm eager.
    `machine` (machine_state()) is named above the table; `cold` adds the first call of each block as its own
    row, labelled [cold]."""
    refs, cold_refs = _references(results, False), _references(results, True)
    head = (f"{'implementation':<22} {'mode':<5} {'batch':>5} {'px':>4} {'dtype':<8} {'img/s':>8} {'min-max':>13} "
            f"{'ms/call':>8} {'x timm':>7} {'x timm(e)':>8} {'compile s':>9} {'GFLOP/s':>7} {'%peak':>6} "
            f"{'peak mem':>9}  note")
    lines = [f"machine: {machine_line(machine)}"] if machine else []
    lines += [head, "-" * len(head)]
    for r in results:
        lines.append(_row(r, refs))
        if cold and r.cold_times_s:
            lines.append(_row(r, cold_refs, cold=True))
    lines.append("steady state: consecutive calls after one re-warming call per block (blocks interleaved between "
                 "implementations)" + ("; [cold]: that first call, after another implementation ran" if cold else ""))
    return "\n".join(lines)


def _main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "--peak-child":
        print(json.dumps(_peak_child(json.loads(argv[1]))))
        return 0
    print("usage: python -m focalnet.cli bench --help (this module's own entry is for the memory subprocess)")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
