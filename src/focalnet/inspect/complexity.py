"""Complexity of a FocalNet, measured rather than hand-counted, and checked against the paper's formula.

MACs come from PyTorch's FlopCounterMode (which counts 2 FLOPs per multiply-add of every convolution and
matrix product) divided by 2: multiply-adds are what the paper calls FLOPs. Norms, activations and the
gated sum are not counted (neither by fvcore, which the paper used, except for norms: about 0.5% more).
Models on the meta device are counted without allocating any memory.

Beside the measurement, `formula_macs` evaluates the paper's per-block cost

    focal modulation: HW (3C^2 + C(2L + 3) + C sum_l k_l^2)

(q, z^0 and h are the 3C^2; the gate projection, the gated sum and q * M are the C(2L + 3); the depthwise
kernels the last term), adds what the paper's term leaves out of a block (the output projection, C^2, and
the MLP, 2 r C^2) and the stem, the downsampling layers and the classifier. The formula and the counter then
differ by exactly the element-wise terms C(L + 2) per pixel and block, which no FLOP counter sees;
`tests/test_profile.py` checks that identity at sizes that need padding.

Activation memory is measured two ways, both at the ATen level (what PyTorch's dispatcher hands out), so
neither includes the parameters, the allocator's rounding nor the scratch space inside oneDNN/cuDNN kernels:
- `saved_bytes`: tensors autograd keeps for backward during a training-mode forward (saved_tensors_hooks,
  each storage counted once, parameters excluded, the input included as the stem saves it); this is what batch size and image size cost in training.
- `peak_live_bytes`: the largest total of tensor storages alive at once during an inference forward
  (`torch.no_grad`), tracked op by op with weak references; the input, the parameters and views of them
  are not counted.
Both run on the meta device by default, so a 4096 x 4096 image costs no memory to measure.
"""
from __future__ import annotations

import copy
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode
from ..errors import FocalNetError
from ..layers import focal_kernel_sizes

__all__ = [
    "count_params",
    "count_macs",
    "measured_macs_by_module",
    "formula_macs",
    "FormulaCost",
    "StageCost",
    "receptive_fields",
    "activation_memory",
    "ActivationMemory",
    "meta_copy",
    "meta_from_arch",
    "check_memory",
    "InputTooLargeError",
    "profile_model",
    "published_table",
    "scaling_sweep",
    "SweepModel",
    "DEFAULT_SWEEP_MODELS",
    "write_sweep",
]

Size = Union[int, Sequence[int]]


def _hw(img_size: Size) -> tuple[int, int]:
    if isinstance(img_size, int):
        return img_size, img_size
    h, w = (int(v) for v in img_size)
    return h, w


def _in_chans(model: nn.Module) -> int:
    if hasattr(model, "in_chans"):
        return int(model.in_chans)
    cfg = getattr(model, "pretrained_cfg", None) or {}  # timm models
    return int(cfg.get("input_size", (3,))[0])


# ----------------------------------------------------------------------------------------------------------
# Measured: parameters and multiply-adds
# ----------------------------------------------------------------------------------------------------------


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args: Any, **kwargs: Any) -> int:
    # PyTorch registers FLOP formulas for the CUDA attention kernels only; the CPU flash kernel (what timm's
    # ViT calls on CPU) would count as zero. Two matmuls: (B, h, N, d) x (B, h, d, M) and (B, h, N, M) x (B, h, M, d).
    b, h, n, d = query_shape
    m = key_shape[-2]
    dv = value_shape[-1]
    return 2 * b * h * n * m * d + 2 * b * h * n * m * dv


def _flop_counter() -> FlopCounterMode:
    custom = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        custom[op] = _sdpa_cpu_flops
    return FlopCounterMode(display=False, custom_mapping=custom)


def _run_counted(model: nn.Module, img_size: Size, batch_size: int, in_chans: Optional[int]) -> FlopCounterMode:
    h, w = _hw(img_size)
    param = next(model.parameters())
    x = torch.zeros(batch_size, in_chans or _in_chans(model), h, w, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _flop_counter() as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter


def count_macs(
    model: nn.Module, img_size: Size = 224, batch_size: int = 1, in_chans: Optional[int] = None
) -> int:
    """Multiply-adds of one forward pass per image at `img_size` (an int or (H, W)).

    Works for any nn.Module taking (B, C, H, W) (timm's Swin and ViT included: the CPU attention kernel is
    counted too). `in_chans` defaults to `model.in_chans`, or timm's pretrained_cfg."""
    counter = _run_counted(model, img_size, batch_size, in_chans)
    return counter.get_total_flops() // (2 * batch_size)


def measured_macs_by_module(model: nn.Module, img_size: Size = 224, depth: int = 2) -> dict[str, int]:
    """Multiply-adds per submodule (names as in `model.named_modules()`, up to `depth` dots), batch 1."""
    counter = _run_counted(model, img_size, 1, None)
    out = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = key.split(".", 1)[1] if "." in key else ""
        if name.count(".") < depth:
            out[name] = sum(ops.values()) // 2
    return out


# ----------------------------------------------------------------------------------------------------------
# The paper's formula
# ----------------------------------------------------------------------------------------------------------


def _stages_of(arch: dict) -> list[dict]:
    """One dict per stage: dim, depth, focal level, focal window, stride of the stage's maps and the kernel
    of the layer that produces them (stem or downsampling)."""
    factor = int(arch.get("focal_factor", 2))
    patch = int(arch["patch_size"])
    if arch["family"] == "isotropic":
        return [dict(
            dim=arch["embed_dim"], depth=arch["depth"], level=arch["focal_level"], window=arch["focal_window"],
            factor=factor, stride=patch, reduce=patch, kernel=patch, in_dim=arch.get("in_chans", 3),
        )]
    conv_embed = bool(arch.get("use_conv_embed", False))
    stages = []
    for i, depth in enumerate(arch["depths"]):
        dim = arch["embed_dim"] * 2**i
        stages.append(dict(
            dim=dim, depth=depth, level=arch["focal_levels"][i], window=arch["focal_windows"][i], factor=factor,
            stride=patch * 2**i, reduce=patch if i == 0 else 2,
            kernel=(7 if conv_embed else patch) if i == 0 else (3 if conv_embed else 2),
            in_dim=arch.get("in_chans", 3) if i == 0 else dim // 2,
        ))
    return stages


@dataclass
class StageCost:
    """The paper's formula for one stage at one input size (multiply-adds, batch 1)."""

    stage: int
    height: int  # feature map, after padding to the stride
    width: int
    dim: int
    focal_level: int
    kernel_sizes: list[int]
    depth: int
    embed: int  # the stem (stage 0) or the downsampling conv that starts the stage
    modulation: int  # per block: HW (3C^2 + C(2L+3) + C sum k^2), the paper's term
    proj: int  # per block: HW C^2, the modulation's output projection (not in the paper's term)
    mlp: int  # per block: 2 HW r C^2
    elementwise: int  # per block: HW C (L+2), the part of the paper's term no FLOP counter sees

    @property
    def per_block(self) -> int:
        return self.modulation + self.proj + self.mlp

    @property
    def total(self) -> int:
        return self.embed + self.depth * self.per_block


@dataclass
class FormulaCost:
    img_size: tuple[int, int]
    stages: list[StageCost]
    head: int

    @property
    def total(self) -> int:
        return sum(s.total for s in self.stages) + self.head

    @property
    def elementwise(self) -> int:
        """Multiply-adds of the gated sum and q * M, which FlopCounterMode (and fvcore) do not count."""
        return sum(s.depth * s.elementwise for s in self.stages)

    @property
    def countable(self) -> int:
        """What a FLOP counter of convolutions and matrix products should report: total - elementwise."""
        return self.total - self.elementwise


def formula_macs(arch: dict, img_size: Size = 224) -> FormulaCost:
    """The paper's per-block cost, evaluated stage by stage for `arch` (a model's `.arch`) at `img_size`.

    Maps are padded to the stride as the model does (ceil at every stride), so the spatial sizes are those
    the model really computes on."""
    h, w = _hw(img_size)
    in_chans = int(arch.get("in_chans", 3))
    mlp_ratio = float(arch.get("mlp_ratio", 4.0))
    stages = []
    for i, s in enumerate(_stages_of(arch)):
        h, w = math.ceil(h / s["reduce"]), math.ceil(w / s["reduce"])
        C, L = s["dim"], s["level"]
        ks = focal_kernel_sizes(L, s["window"], s["factor"])
        hw = h * w
        cin = in_chans if i == 0 else s["in_dim"]
        stages.append(StageCost(
            stage=i, height=h, width=w, dim=C, focal_level=L, kernel_sizes=ks, depth=s["depth"],
            embed=hw * C * cin * s["kernel"] ** 2,
            modulation=hw * (3 * C * C + C * (2 * L + 3) + C * sum(k * k for k in ks)),
            proj=hw * C * C,
            mlp=2 * hw * int(C * mlp_ratio) * C,
            elementwise=hw * C * (L + 2),
        ))
    num_classes = int(arch.get("num_classes", 0))
    return FormulaCost(img_size=_hw(img_size), stages=stages, head=stages[-1].dim * num_classes)


def receptive_fields(arch: dict) -> list[dict]:
    """Receptive field of every focal level of every stage.

    r_l = 1 + sum_{i<=l} (k_i - 1) feature-map pixels (3, 7, 13 for kernels 3, 5, 7). In input pixels:
    `span_px` = r_l * stride is the input area those r_l x r_l map pixels cover; `theoretical_px` adds what
    the stem, the earlier blocks and the downsampling layers already see (the classic receptive field of
    level l in the stage's last block, without the global context, which sees the whole image)."""
    rows = []
    rf, jump = 0, 1
    for i, s in enumerate(_stages_of(arch)):
        rf = s["kernel"] if i == 0 else rf + (s["kernel"] - 1) * jump
        jump = s["stride"]
        ks = focal_kernel_sizes(s["level"], s["window"], s["factor"])
        r = [1 + sum(k - 1 for k in ks[: l + 1]) for l in range(len(ks))]
        before_last = rf + (s["depth"] - 1) * (r[-1] - 1) * jump  # the stage's earlier blocks
        for l, (k, rl) in enumerate(zip(ks, r), start=1):
            rows.append(dict(
                stage=i, level=l, kernel=k, stride=jump, rf_map_px=rl, span_px=rl * jump,
                theoretical_px=before_last + (rl - 1) * jump,
            ))
        rows.append(dict(
            stage=i, level=len(ks) + 1, kernel=None, stride=jump, rf_map_px="global", span_px="global",
            theoretical_px="global",
        ))
        rf += s["depth"] * (r[-1] - 1) * jump
    return rows


# ----------------------------------------------------------------------------------------------------------
# Activation memory
# ----------------------------------------------------------------------------------------------------------


class _LiveStorageTracker(TorchDispatchMode):
    """Tracks the total bytes of tensor storages created inside it that are still alive, op by op.

    `exclude`: storages that exist already (parameters, buffers, the input); views of them (a transposed
    weight in F.linear) allocate nothing and are not counted."""

    def __init__(self, exclude: Iterable[int] = ()) -> None:
        super().__init__()
        self._exclude = set(exclude)
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _prune(self) -> None:
        dead = [k for k, (ref, _) in self._live.items() if ref.expired()]
        for k in dead:
            self.current -= self._live.pop(k)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._prune()  # whatever died since the last op is free before this op allocates
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self._live and key not in self._exclude:
                    self._live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


@dataclass
class ActivationMemory:
    img_size: tuple[int, int]
    batch_size: int
    saved_bytes: int  # kept by autograd for backward in a training-mode forward (parameters excluded)
    peak_live_bytes: int  # largest total of live tensors during an inference forward (input excluded)
    device: str


def meta_from_arch(arch: dict) -> nn.Module:
    """A FocalNet of architecture `arch` (a model's `.arch`, or a checkpoint's) on the meta device."""
    from ..models import model_from_arch

    with torch.device("meta"):
        return model_from_arch(arch)


def meta_copy(model: nn.Module) -> nn.Module:
    """The same architecture on the meta device (no memory): rebuilt from `model.arch` for FocalNets,
    else a deep copy moved to meta (which briefly copies the parameters)."""
    arch = getattr(model, "arch", None)
    if isinstance(arch, dict) and "family" in arch:
        meta = meta_from_arch(arch)
        meta.variant = getattr(model, "variant", None)
        return meta
    return copy.deepcopy(model).to("meta")


def activation_memory(
    model: nn.Module, img_size: Size = 224, batch_size: int = 1, device: Optional[str] = "meta"
) -> ActivationMemory:
    """Measure activation memory of one forward pass (see the module docstring for what is counted).

    device="meta" (default) measures on a meta copy without allocating anything; device=None runs the
    model where it is (real memory, same numbers: tests/test_profile.py checks that)."""
    m = meta_copy(model) if device == "meta" else model
    dev = next(m.parameters()).device
    h, w = _hw(img_size)
    x = torch.zeros(batch_size, _in_chans(model), h, w, device=dev)
    was_training = m.training

    param_storages = {t.untyped_storage()._cdata for t in (*m.parameters(), *m.buffers())}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in param_storages:
            seen.setdefault(storage._cdata, storage.nbytes())
        return t

    try:
        m.train()
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = m(x)
        del out
        m.eval()
        with torch.no_grad(), _LiveStorageTracker(exclude=param_storages | {x.untyped_storage()._cdata}) as tracker:
            out = m(x)
        del out
    finally:
        m.train(was_training)
    return ActivationMemory(
        img_size=(h, w), batch_size=batch_size, saved_bytes=sum(seen.values()), peak_live_bytes=tracker.peak,
        device=str(dev),
    )


class InputTooLargeError(FocalNetError, ValueError):
    """An input that would not fit in memory at the chosen size; the message says what to do."""


def available_memory(device: Union[str, torch.device] = "cpu") -> Optional[int]:
    """Bytes a new allocation can get: free GPU memory, or Linux's MemAvailable; None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(
    model: nn.Module,
    img_size: Size,
    batch_size: int = 1,
    what: str = "the input",
    device: Union[str, torch.device] = "cpu",
    margin: float = 1.5,
    estimate: Optional[int] = None,
) -> int:
    """Raise InputTooLargeError if an inference forward at `img_size` would not fit; return the estimate.

    The estimate is the measured peak of live activations (on the meta device, so the check itself costs
    nothing) times `margin` for kernel scratch space and allocator slack."""
    if estimate is None:
        estimate = activation_memory(model, img_size, batch_size).peak_live_bytes
    need = int(estimate * margin)
    free = available_memory(device)
    if free is not None and need > free:
        h, w = _hw(img_size)
        raise InputTooLargeError(
            f"{what} at {h}x{w} px needs about {need / 2**30:.1f} GiB for a forward pass but only "
            f"{free / 2**30:.1f} GiB is free on {device}; pass a smaller size (--img-size) or crop the image"
        )
    return need


# ----------------------------------------------------------------------------------------------------------
# Profile of one model, and of every variant
# ----------------------------------------------------------------------------------------------------------


def profile_model(model: nn.Module, img_size: Size = 224, batch_size: int = 1, memory: bool = True) -> dict:
    """Everything `focalnet profile` prints, as plain Python values (JSON-ready)."""
    arch = model.arch
    h, w = _hw(img_size)
    m = model if next(model.parameters()).device.type == "meta" else meta_copy(model)
    measured = count_macs(m, (h, w))
    by_module = measured_macs_by_module(m, (h, w), depth=3)
    formula = formula_macs(arch, (h, w))
    stage_key = "blocks" if arch["family"] == "isotropic" else "stages.{}"
    stages = []
    for s in formula.stages:
        if arch["family"] == "isotropic":  # a ModuleList is never called: sum its blocks
            meas = by_module.get("stem", 0) + sum(v for k, v in by_module.items() if re.fullmatch(r"blocks\.\d+", k))
        else:
            meas = by_module.get(stage_key.format(s.stage), 0) + (by_module.get("stem", 0) if s.stage == 0 else 0)
        row = asdict(s)
        row.update(per_block=s.per_block, total=s.total, measured=meas, countable=s.total - s.depth * s.elementwise)
        stages.append(row)
    out = dict(
        variant=getattr(model, "variant", None), family=arch["family"], img_size=[h, w], batch_size=batch_size,
        params=count_params(model), macs_measured=measured, macs_formula=formula.total,
        macs_formula_countable=formula.countable, macs_elementwise=formula.elementwise, head_macs=formula.head,
        stages=stages, receptive_fields=receptive_fields(arch),
    )
    if memory:
        mem = activation_memory(m, (h, w), batch_size, device=None)
        out.update(saved_bytes=mem.saved_bytes, peak_live_bytes=mem.peak_live_bytes)
    return out


def published_table(img_size: int = 224, num_classes: int = 1000, pattern: Optional[str] = None) -> list[dict]:
    """Every registered variant (or those matching `pattern`): parameters and MACs measured (meta device)
    beside the paper's numbers.

    Built with a `num_classes` head (the paper counts with the 1000-class head even for ImageNet-22K models)."""
    from ..registry import build_model, get_spec, list_models

    rows = []
    for name in list_models(pattern):
        spec = get_spec(name)
        with torch.device("meta"):
            model = build_model(name, num_classes=num_classes)
        formula = formula_macs(model.arch, img_size)
        rows.append(dict(
            name=name, params_m=count_params(model) / 1e6, params_m_published=spec.published.params_m,
            gmacs=count_macs(model, img_size) / 1e9, gmacs_formula=formula.total / 1e9,
            gmacs_published=spec.published.gmacs, top1_published=spec.published.top1,
            img_size=img_size, weights_img_size=spec.published.img_size,
        ))
    return rows


# ----------------------------------------------------------------------------------------------------------
# Scaling sweep: focal modulation against window and global attention
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepModel:
    """A model of the sweep: a name, the token-mixing mechanism it stands for, and a builder taking img_size."""

    name: str
    mechanism: str
    build: Callable[[int], nn.Module] = field(compare=False, repr=False)


def _focalnet_builder(name: str) -> Callable[[int], nn.Module]:
    def build(img_size: int) -> nn.Module:
        from ..registry import build_model

        return build_model(name, num_classes=1000)  # any size works: nothing to set at construction

    return build


def _timm_builder(name: str) -> Callable[[int], nn.Module]:
    def build(img_size: int) -> nn.Module:
        try:
            import timm
        except ImportError:
            raise ImportError("the sweep compares against timm's Swin and ViT: pip install timm") from None
        # timm fixes the input resolution of Swin (patch grid, attention masks) and ViT (position
        # embeddings) at construction: build one per size
        return timm.create_model(name, pretrained=False, num_classes=1000, img_size=img_size)

    return build


DEFAULT_SWEEP_MODELS = (
    SweepModel("focalnet_tiny_srf", "focal modulation", _focalnet_builder("focalnet_tiny_srf")),
    SweepModel("swin_tiny_patch4_window7_224", "window attention (7x7)", _timm_builder("swin_tiny_patch4_window7_224")),
    SweepModel("vit_small_patch16_224", "global attention", _timm_builder("vit_small_patch16_224")),
)


def sweep_model(name: str) -> SweepModel:
    """A SweepModel for a FocalNet name or any timm model name (mechanism: as given)."""
    for m in DEFAULT_SWEEP_MODELS:
        if m.name == name:
            return m
    from ..registry import list_models

    if name in list_models():
        return SweepModel(name, "focal modulation", _focalnet_builder(name))
    return SweepModel(name, "timm", _timm_builder(name))


def _time_once(model: nn.Module, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(x)
    return time.perf_counter() - t0


@torch.no_grad()
def scaling_sweep(
    sizes: Sequence[int] = (224, 320, 448, 640),
    models: Sequence[SweepModel] = DEFAULT_SWEEP_MODELS,
    repeats: int = 3,
    warmup: int = 1,
    progress: Optional[Callable[[str], None]] = None,
) -> list[dict]:
    """Params, MACs (FlopCounterMode, meta device) and batch-1 inference time of each model at each size.

    Timing: per size, models interleaved (A B C A B C ...) after `warmup` untimed calls each; the median
    of `repeats` calls is reported, with min and max, so that drift of a shared machine hits all alike."""
    rows = []
    for size in sizes:
        built = []
        for spec in models:
            model = spec.build(size).eval()
            with torch.device("meta"):
                meta = spec.build(size)
            built.append((spec, model, count_macs(meta, size), count_params(meta)))
            del meta
        x = torch.randn(1, 3, size, size)
        for _, model, _, _ in built:
            for _ in range(warmup):
                model(x)
        times: list[list[float]] = [[] for _ in built]
        for _ in range(repeats):
            for i, (_, model, _, _) in enumerate(built):
                times[i].append(_time_once(model, x))
        for (spec, _, macs, params), ts in zip(built, times):
            ts = sorted(ts)
            rows.append(dict(
                model=spec.name, mechanism=spec.mechanism, img_size=size, pixels=size * size,
                params_m=round(params / 1e6, 3), macs=macs, gmacs=round(macs / 1e9, 4),
                ms_median=round(1e3 * ts[len(ts) // 2], 2), ms_min=round(1e3 * ts[0], 2), ms_max=round(1e3 * ts[-1], 2),
                repeats=repeats, threads=torch.get_num_threads(),
            ))
            if progress:
                r = rows[-1]
                progress(f"{size:>5} px  {spec.name:<30} {r['gmacs']:>8.2f} GMACs  {r['ms_median']:>9.1f} ms")
        del built
    return rows


def write_sweep(rows: list[dict], out_dir: Union[str, os.PathLike], overwrite: bool = False) -> tuple[Path, Path]:
    """Write the sweep as `sweep.csv` and `sweep.png` (GMACs, time, and cost per pixel against the pixel
    count, log-log, with a slope-1 guide: linear growth is parallel to it, quadratic is twice as steep)."""
    import csv
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils import atomic_write

    out_dir = Path(out_dir)
    csv_path, png_path = out_dir / "sweep.csv", out_dir / "sweep.png"
    for p in (csv_path, png_path):
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists; pass --force (overwrite=True) to replace it")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(csv_path, "w") as f:
        f.write(buf.getvalue())

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), dpi=100)
    names = list(dict.fromkeys(r["model"] for r in rows))
    for name in names:
        rs = sorted((r for r in rows if r["model"] == name), key=lambda r: r["pixels"])
        mpx = [r["pixels"] / 1e6 for r in rs]
        label = f"{name} ({rs[0]['mechanism']})"
        axes[0].plot(mpx, [r["gmacs"] for r in rs], "o-", label=label)
        axes[1].plot(mpx, [r["ms_median"] for r in rs], "o-", label=label)
        base = rs[0]["gmacs"] / rs[0]["pixels"]
        axes[2].plot(mpx, [r["gmacs"] / r["pixels"] / base for r in rs], "o-", label=label)
    all_mpx = sorted({r["pixels"] / 1e6 for r in rows})
    for ax, key in ((axes[0], "gmacs"), (axes[1], "ms_median")):
        y0 = min(r[key] for r in rows if r["pixels"] / 1e6 == all_mpx[0])
        ax.plot(all_mpx, [y0 * m / all_mpx[0] for m in all_mpx], "k--", lw=1, label="linear in pixels")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pixels (millions)")
    axes[0].set_ylabel("GMACs (FlopCounterMode)")
    axes[0].set_title("cost")
    axes[1].set_ylabel("ms per image (batch 1, median)")
    axes[1].set_title(f"measured time ({rows[0]['threads']} threads)")
    axes[2].set_xscale("log")
    axes[2].set_xlabel("pixels (millions)")
    axes[2].set_ylabel("MACs per pixel, relative to the smallest size")
    axes[2].set_title("cost per pixel (flat = linear)")
    axes[2].axhline(1.0, color="k", ls="--", lw=1)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(png_path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return csv_path, png_path
