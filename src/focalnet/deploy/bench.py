"""Side-by-side speed of FocalNet implementations: inference (batch-1 latency, batch-N throughput) and training
steps (throughput and peak memory), on CPU or CUDA, in float32 or bf16/fp16 autocast, eager or compiled.

Fair comparisons, because timings on a shared 2-core machine drift by several percent within minutes:
- every implementation is built in the same process and measured interleaved (A B C A B C ...) after warm-up,
  so drift and a noisy neighbour hit them all alike; medians and min-max are reported, and ratios to timm's
  FocalNet of the same variant;
- the allocator setting (glibc's MALLOC_* variables, an LD_PRELOADed jemalloc/tcmalloc) and the thread count
  are part of every result: on these machines glibc's page faults alone cost about a quarter of the time;
- on CUDA every timed call is bracketed by `torch.cuda.synchronize()`, and the fraction of the device's peak
  FLOP/s is reported (FLOPs measured by PyTorch's FlopCounterMode, 2 per multiply-add; training = 3 x forward);
- peak training memory on CPU is the resident-set high-water mark (getrusage ru_maxrss) of a fresh subprocess
  per implementation, minus its resident set just before the first step (model, optimizer and batch built):
  the number is what the steps added, including the allocator's retained pages. On CUDA it is
  torch.cuda.max_memory_allocated above the allocation before the first step.

The CUDA paths (synchronisation, peak FLOP/s table, fp16/bf16 autocast on CUDA) are written to be correct but
were not run on a GPU in this project's CI: see docs/speed.md.
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
    "BenchResult",
    "build_implementation",
    "run_inference",
    "run_training",
    "peak_training_memory",
    "machine_state",
    "format_table",
    "device_peak_flops",
]

class BenchError(FocalNetError, ValueError):
    """A benchmark that cannot be run as asked."""


# what --compare runs, in this order; "timm" is the reference of every ratio
IMPLEMENTATIONS = ("ours", "ours-fused", "timm", "hf", "swin_t", "convnext_t")
REFERENCE = "timm"
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


def machine_state() -> dict:
    """What a timing depends on besides the code: threads, allocator, CPU, library versions."""
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k in ("LD_PRELOAD",)}
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    state = dict(
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpu=cpu,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        onednn_bf16=bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()),
        allocator=malloc or "glibc malloc, default settings",
        python=platform.python_version(),
    )
    if torch.cuda.is_available():
        state["cuda_device"] = torch.cuda.get_device_name()
    return state


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

    @property
    def throughputs(self) -> list[float]:
        return [self.batch_size / t for t in self.times_s]

    @property
    def median(self) -> float:
        return statistics.median(self.throughputs) if self.times_s else float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(median_img_s=self.median, median_ms=statistics.median(self.times_s) * 1e3 if self.times_s else None)
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


def _interleaved(
    calls: dict[str, Callable[[], Any]], device: torch.device, warmup: int, rounds: int, on_round: Optional[Callable] = None
) -> dict[str, list[float]]:
    """Warm every call up, then time them round-robin, `rounds` times each."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(rounds):
        for key, fn in calls.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[key].append(time.perf_counter() - t0)
        if on_round is not None:
            on_round(r)
    return times


def _prepare(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def run_inference(
    impls: Sequence[str],
    *,
    variant: str = "focalnet_tiny_srf",
    batch_size: int = 16,
    img_size: int = 224,
    dtype: str = "float32",
    device: str = "cpu",
    compile: bool = False,
    channels_last: bool = False,
    warmup: int = 3,
    rounds: int = 10,
    log: Callable[[str], None] = lambda s: None,
) -> list[BenchResult]:
    """Inference throughput of each implementation, measured interleaved in this process."""
    dev = torch.device(device)
    x = torch.randn(batch_size, 3, img_size, img_size, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    calls, results = {}, {}
    for impl in impls:
        try:
            module, fn = build_implementation(impl, variant=variant, img_size=img_size)
        except (ValueError, ImportError) as e:
            log(f"skipping {impl}: {e}")
            continue
        module = _prepare(module.eval(), dev, channels_last)
        flops = _forward_flops(module, fn, x) if impl != "ours-fused" else _unfused_flops(variant, x)
        if compile:
            fn = torch.compile(fn)
        results[impl] = BenchResult(impl, "infer", batch_size, img_size, dtype, device, compile, flops_per_img=flops)

        def call(fn=fn):
            with torch.inference_mode(), _autocast(dev, dtype):
                return fn(x)

        calls[impl] = call
    log(f"warm-up ({warmup} calls each{', compiling' if compile else ''}), then {rounds} interleaved rounds")
    times = _interleaved(calls, dev, warmup, rounds)
    for impl, t in times.items():
        results[impl].times_s = t
    return list(results.values())


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


def _make_train(impl: str, *, variant: str, img_size: int, batch_size: int, dev: torch.device, dtype: str,
                compile: bool, channels_last: bool, recompute: bool):
    module, fn = build_implementation(impl, variant=variant, img_size=img_size, training=True)
    module = _prepare(module.train(), dev, channels_last)
    if impl == "ours" and recompute:
        module.set_activation_recompute(True)
    if compile:
        fn = torch.compile(fn)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, img_size, img_size, generator=g).to(dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch_size,), generator=g).to(dev)
    return module, fn, x, _train_step_fn(module, fn, x, y, dev, dtype)


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
    log: Callable[[str], None] = lambda s: None,
) -> list[BenchResult]:
    """Training-step throughput (forward, backward, AdamW step), interleaved in this process.

    `recompute`: our model runs with `set_activation_recompute(True)` (its training default in the benchmark,
    reported in the result's note)."""
    dev = torch.device(device)
    calls, results = {}, {}
    for impl in impls:
        try:
            module, fn, x, step = _make_train(impl, variant=variant, img_size=img_size, batch_size=batch_size, dev=dev,
                                              dtype=dtype, compile=compile, channels_last=channels_last,
                                              recompute=recompute)
        except (ValueError, ImportError) as e:
            log(f"skipping {impl}: {e}")
            continue
        flops = _forward_flops(module, fn, x)
        note = "activation recompute" if impl == "ours" and recompute else ""
        results[impl] = BenchResult(impl, "train", batch_size, img_size, dtype, device, compile,
                                    flops_per_img=None if flops is None else 3 * flops, note=note)
        calls[impl] = step
    log(f"warm-up ({warmup} steps each), then {rounds} interleaved rounds")
    times = _interleaved(calls, dev, warmup, rounds)
    for impl, t in times.items():
        results[impl].times_s = t
    return list(results.values())


# ----------------------------------------------------------------------------------------------------------
# peak memory of training, one fresh process per implementation
# ----------------------------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_child(cfg: dict) -> dict:
    torch.set_num_threads(cfg["threads"])
    dev = torch.device(cfg["device"])
    module, fn, x, step = _make_train(cfg["impl"], variant=cfg["variant"], img_size=cfg["img_size"],
                                      batch_size=cfg["batch_size"], dev=dev, dtype=cfg["dtype"], compile=cfg["compile"],
                                      channels_last=cfg["channels_last"], recompute=cfg["recompute"])
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        base = _rss_bytes()
    for _ in range(cfg["steps"]):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return dict(peak_bytes=int(peak - base), baseline_bytes=int(base))


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
    """Bytes that `steps` training steps add to a fresh process (see the module docstring for how)."""
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
def format_table(results: Sequence[BenchResult]) -> str:
    """Medians, min-max and ratios to timm's FocalNet of the same mode, batch and dtype."""
    ref = {}
    for r in results:
        if r.impl == REFERENCE:
            ref[(r.mode, r.batch_size, r.img_size)] = r.median
    head = f"{'impl':<12} {'mode':<5} {'batch':>5} {'px':>4} {'dtype':<8} {'img/s':>8} {'min-max':>13} {'ms/call':>8} {'x timm':>7} {'GFLOP/s':>8} {'%peak':>6} {'peak mem':>9}  note"
    lines = [head, "-" * len(head)]
    for r in results:
        base = ref.get((r.mode, r.batch_size, r.img_size))
        thr = r.throughputs
        ratio = f"{r.median / base:.2f}" if base else "-"
        gflops = f"{r.flops_per_img * r.median / 1e9:.0f}" if r.flops_per_img else "-"
        peak = device_peak_flops(torch.device(r.device), r.dtype)
        frac = f"{100 * r.flops_per_img * r.median / peak:.1f}" if (peak and r.flops_per_img) else "-"
        mem = f"{r.peak_bytes / 1e9:.2f} GB" if r.peak_bytes is not None else "-"
        ms = statistics.median(r.times_s) * 1e3 if r.times_s else float("nan")
        name = r.impl + (" (c)" if r.compiled else "")
        lines.append(
            f"{name:<12} {r.mode:<5} {r.batch_size:>5} {r.img_size:>4} {r.dtype:<8} {r.median:>8.2f} "
            f"{min(thr):>6.2f}-{max(thr):<6.2f} {ms:>8.1f} {ratio:>7} {gflops:>8} {frac:>6} {mem:>9}  {r.note}"
        )
    return "\n".join(lines)


def _main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "--peak-child":
        print(json.dumps(_peak_child(json.loads(argv[1]))))
        return 0
    print("usage: python -m focalnet.cli bench --help (this module's own entry is for the memory subprocess)")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
