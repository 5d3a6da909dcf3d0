"""Timed runs of the implementations, inference and training, in this process (see the package docstring)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from ...flops import forward_flops
from ...precision import parse_precision, precision_name
from .implementations import COMPILED_SUFFIX, build_implementation, get_implementation, split_variant
from .results import BenchResult
from .timing import time_in_blocks

__all__ = ["Workload", "run_inference", "run_training", "make_training_step", "variants_to_run"]


def _autocast(device: torch.device, precision: str):
    dtype = parse_precision(precision)
    return contextlib.nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def _compiled(impl: str, fn: Callable) -> Callable:
    # static shapes: each batch size gets its own graph, never a dynamic-shape one made on the second size
    return torch.compile(fn, fullgraph=get_implementation(impl).fullgraph, dynamic=False)


def _reset_if_compiling(variants: Sequence[str]) -> None:
    # every variant compiles afresh (compile time measured, recompile limits not reached by earlier runs)
    if any(split_variant(v)[1] for v in variants):
        torch._dynamo.reset()


def _prepare(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def variants_to_run(impls: Sequence[str], compile: bool) -> list[str]:
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


def _flops(impl: str, work: Workload, fn: Callable, x: torch.Tensor) -> Optional[float]:
    """Forward FLOPs of one image (2 per multiply-add), or None where the counter cannot run the model."""
    try:
        if get_implementation(impl).plain_flops:
            # kernels the counter cannot see (oneDNN's fused ones) compute the plain model's function: count that
            # model (resized as the row's), on the meta device (no weights, no arithmetic)
            from ...registry import build_model

            with torch.device("meta"):
                plain = build_model(work.variant, num_classes=work.num_classes, in_chans=work.in_chans, **work.arch)
            fn, x = plain, x.to("meta")
        return float(forward_flops(fn, x[:1]))
    except Exception:  # a counter that cannot see a custom kernel is no reason to fail the benchmark
        return None


def _fill(results: dict[str, BenchResult], timed: dict[str, dict]) -> list[BenchResult]:
    for key, t in timed.items():
        r = results[key]
        r.first_call_s, r.times_s, r.cold_times_s = t["first"], t["times"], t["cold"]
    return list(results.values())


@dataclass(frozen=True)
class Workload:
    """What a benchmark run computes, whichever implementation computes it: the architecture (`variant`, resized
    by `arch` overrides for the implementations that take them, e.g. dict(embed_dim=32, depths=[1, 2, 2],
    patch_size=2, focal_levels=[2, 2, 2], focal_windows=[3, 3, 3]) for the Fashion-MNIST model), input channels,
    classes, batch, image side, precision (focalnet.precision's names: fp32, or bf16 / fp16 autocast), device,
    the input's memory layout, and whether every implementation runs compiled (`variants_to_run`)."""

    variant: str = "focalnet_tiny_srf"
    batch_size: int = 16
    img_size: int = 224
    precision: str = "fp32"
    device: str = "cpu"
    compile: bool = False
    channels_last: bool = False
    arch: dict = field(default_factory=dict)
    in_chans: int = 3
    num_classes: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", precision_name(self.precision))  # one spelling in every row

    def model_args(self) -> dict:
        """What build_implementation takes besides the variant: image side, channels, classes, `arch`."""
        return dict(img_size=self.img_size, num_classes=self.num_classes, in_chans=self.in_chans, arch=self.arch)

    def batch(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A random (batch_size, in_chans, img_size, img_size) batch on the device, channels-last if asked."""
        x = torch.randn(self.batch_size, self.in_chans, self.img_size, self.img_size, generator=generator)
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def labels(self, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Random class indices for a training step, one per image of `batch`."""
        return torch.randint(0, self.num_classes, (self.batch_size,), generator=generator).to(self.device)


def _time_variants(impls: Sequence[str], work: Workload, make: Callable[[str], tuple[BenchResult, Callable]], *,
                   what: str, warmup: int, rounds: int, block: int, log: Callable[[str], None]) -> list[BenchResult]:
    """Each variant's row and call from `make(name)` (a variant that cannot be built here is skipped, with the
    reason), then the calls timed in interleaved blocks (`time_in_blocks`)."""
    variants = variants_to_run(impls, work.compile)
    _reset_if_compiling(variants)
    calls, results = {}, {}
    for name in variants:
        try:
            results[name], calls[name] = make(name)
        except (ValueError, ImportError) as e:
            log(f"skipping {name}: {e}")
    log(f"{what}, batch {work.batch_size}: {warmup} warm-up calls each (compiling where asked), then {rounds} timed "
        f"calls each in blocks of {block}")
    timed = time_in_blocks(calls, torch.device(work.device), warmup=warmup, rounds=rounds, block=block, log=log)
    return _fill(results, timed)


def run_inference(impls: Sequence[str], work: Workload = Workload(), *, freezing: bool = True, warmup: int = 3,
                  rounds: int = 10, block: int = 5, log: Callable[[str], None] = lambda s: None) -> list[BenchResult]:
    """Inference throughput of each implementation ('ours', 'timm-compiled', ...; `work.compile`: all compiled) on
    `work`, in blocks of consecutive calls interleaved between implementations (`time_in_blocks`), in this
    process; `freezing`: inductor's freezing for the compiled ones."""
    dev, x = torch.device(work.device), work.batch()

    def make(name: str) -> tuple[BenchResult, Callable]:
        impl, compiled = split_variant(name)
        module, fn = build_implementation(impl, variant=work.variant, **work.model_args())
        _prepare(module.eval(), dev, work.channels_last)
        flops = _flops(impl, work, fn, x)
        note = ("inductor, freezing" if freezing else "inductor, no freezing") if compiled else ""
        # a row whose own number format is not --precision's (ours-fused-bf16, ours-int8) says so; its ratios
        # stay against the rows of the --precision asked for (float32 by default)
        fmt = get_implementation(impl).number_format
        note = ", ".join(n for n in (f"computes in {fmt}" if fmt else "", note) if n)
        fn = _compiled(impl, fn) if compiled else fn
        row = BenchResult(impl, "infer", work.batch_size, work.img_size, work.precision, work.device, compiled,
                          flops_per_img=flops, note=note, number_format=fmt)

        def call(fn=fn, frozen=compiled and freezing):
            with torch.inference_mode(), _autocast(dev, work.precision), _freezing(frozen):
                return fn(x)

        return row, call

    return _time_variants(impls, work, make, what="inference", warmup=warmup, rounds=rounds, block=block, log=log)


def _train_step_fn(module: nn.Module, fn: Callable, x: torch.Tensor, y: torch.Tensor, dev: torch.device,
                   precision: str) -> Callable[[], None]:
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4, weight_decay=0.05)
    scaler = torch.amp.GradScaler(dev.type, enabled=(parse_precision(precision) == torch.float16))

    def step():
        opt.zero_grad(set_to_none=True)
        with _autocast(dev, precision):
            loss = nn.functional.cross_entropy(fn(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def make_training_step(name: str, work: Workload, *, recompute: bool):
    """(module, eager forward, batch, one training step) of the variant `name` (compiled if it says so) on `work`;
    `recompute`: our model runs with `set_activation_recompute(True)`."""
    impl, compiled = split_variant(name)
    dev = torch.device(work.device)
    module, fn = build_implementation(impl, variant=work.variant, training=True, **work.model_args())
    module = _prepare(module.train(), dev, work.channels_last)
    if impl == "ours" and recompute:
        module.set_activation_recompute(True)
    g = torch.Generator().manual_seed(0)
    x, y = work.batch(g), work.labels(g)
    step_fn = _compiled(impl, fn) if compiled else fn
    return module, fn, x, _train_step_fn(module, step_fn, x, y, dev, work.precision)


def run_training(impls: Sequence[str], work: Workload = Workload(), *, recompute: bool = True, warmup: int = 2,
                 rounds: int = 5, block: int = 3, log: Callable[[str], None] = lambda s: None) -> list[BenchResult]:
    """Training-step throughput (forward, backward, AdamW step) on `work`, timed like `run_inference`, in this
    process.

    `recompute`: our model runs with `set_activation_recompute(True)` (reported in the result's note). A compiled
    variant compiles forward and backward (AOT autograd); the optimizer step stays eager."""

    def make(name: str) -> tuple[BenchResult, Callable]:
        impl, compiled = split_variant(name)
        module, fn, x, step = make_training_step(name, work, recompute=recompute)
        flops = _flops(impl, work, fn, x)  # the eager forward: counting must not trigger a compilation
        note = "activation recompute" if impl == "ours" and recompute else ""
        # a training step's FLOPs: 3 x forward (the backward computes the gradients of the inputs and of the
        # weights, each a product as large as the forward's; the optimizer step's element-wise work is not counted)
        row = BenchResult(impl, "train", work.batch_size, work.img_size, work.precision, work.device, compiled,
                          flops_per_img=None if flops is None else 3 * flops, note=note)
        return row, step

    return _time_variants(impls, work, make, what="training", warmup=warmup, rounds=rounds, block=block, log=log)
