"""The scaling sweep: parameters, multiply-adds and batch-1 time of FocalNet against window attention (Swin)
and global attention (ViT) as the image grows, with the picture that shows linear against quadratic growth."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..flops import count_macs, count_params

__all__ = ["SweepModel", "DEFAULT_SWEEP_MODELS", "sweep_model", "scaling_sweep", "write_sweep"]


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
            # the CLI names the extra that provides it (focalnet.cli.install_hint)
            raise ModuleNotFoundError("the sweep compares against timm's Swin and ViT", name="timm") from None
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
