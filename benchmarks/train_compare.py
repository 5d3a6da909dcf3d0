"""FocalNet vs timm's Swin and ConvNeXt on Fashion-MNIST: same recipe, same time budget, one table.

    python benchmarks/train_compare.py --time-budget 300 --output runs/compare

Each model is trained by `focalnet.train.run.train` with the configuration of configs/fashion-mnist.yaml (the
main job's: recipe 'small', AdamW, lr 3.2e-2 per 1024 images at batch 128, weight decay 0.05 on weights only,
cosine with warm-up, no augmentation) for the same time budget: the trainer measures each model's speed and
fits its optimizer steps (and the cosine) to the budget, the last epoch possibly partial; each is evaluated
on the 10k test images.
The three are sized alike (about 0.4-0.6 M parameters and 10-16 M MACs at 28 px), with the same stage
layout: 3 stages of widths 32 / 64 / 128 at 14x14, 7x7 and 4x4 (or 3x3).

- FocalNet: focalnet_tiny_srf resized (embed_dim 32, depths 1-2-2, 2x2 stem), focal levels 2, window 3.
- Swin: timm SwinTransformer (embed_dim 32, depths 1-2-2, heads 1-2-4, window 7, 2x2 stem).
- ConvNeXt: timm ConvNeXt with a 1x1 stem and an empty first stage, so that its first downsampling acts as
  the 2x2 stem (timm's 2x2 patch stem would also downsample in stage 0, leaving no room at 28 px);
  dims 32 / 64 / 128, depths 3-2-3 (to match the parameters and MACs of the other two).

Runs one model after another in this process; prints the table and writes it to OUTPUT/compare.json and
OUTPUT/compare.md. Run it under the CPU lock on shared machines: the budget is wall-clock time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


from focalnet.utils import atomic_json, atomic_write  # noqa: E402
from focalnet.train import TrainConfig, load_yaml_config, train  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion-mnist.yaml"


def build(name: str) -> nn.Module:
    if name == "focalnet":
        import focalnet

        return focalnet.create_model("focalnet_tiny_srf", in_chans=1, num_classes=10, drop_path_rate=0.05,
                                     embed_dim=32, depths=(1, 2, 2), focal_levels=(2, 2, 2), focal_windows=(3, 3, 3),
                                     patch_size=2)
    if name == "swin":
        from timm.models.swin_transformer import SwinTransformer

        return SwinTransformer(img_size=28, patch_size=2, in_chans=1, num_classes=10, embed_dim=32, depths=(1, 2, 2),
                               num_heads=(1, 2, 4), window_size=7, drop_path_rate=0.05)
    if name == "convnext":
        from timm.models.convnext import ConvNeXt

        return ConvNeXt(in_chans=1, num_classes=10, depths=(0, 3, 2, 3), dims=(32, 32, 64, 128), patch_size=1,
                        drop_path_rate=0.05)
    raise ValueError(f"unknown model {name!r}; choose focalnet, swin, convnext")


def markdown_table(rows: list[dict]) -> str:
    head = "| model | params (M) | MACs (M, 28 px) | train img/s | epochs | training time (s) | test top-1 (%) |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params_m']:.2f} | {r['mmacs']:.1f} | {r['train_img_per_s']:.0f} | "
                     f"{r['epochs']:.2f} | {r['train_time_s']:.0f} | {r['top1']:.2f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="focalnet,swin,convnext")
    p.add_argument("--time-budget", type=float, default=600.0, help="seconds of training per model")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--output", default="runs/compare")
    p.add_argument("--dry-run", action="store_true", help="only build the models and print their size")
    args = p.parse_args()

    from focalnet.train.artifacts import try_count_macs

    base = load_yaml_config(str(CONFIG))
    base.pop("arch", None)
    base.pop("model", None)
    rows = []
    for name in args.models.split(","):
        model = build(name)
        params = sum(p.numel() for p in model.parameters())
        macs = try_count_macs(model, 1, 28)
        if args.dry_run:
            print(f"{name:<10} {params / 1e6:6.3f} M parameters {macs / 1e6:6.1f} M MACs")
            continue
        cfg = TrainConfig.from_dict({**base, "data": args.data, "time_budget": args.time_budget,
                                     "output": f"{args.output}/{name}", "progress": "off", "overwrite": True})
        t0 = time.perf_counter()
        s = train(cfg, model=model)
        rows.append(dict(model=name, params_m=params / 1e6, mmacs=macs / 1e6 if macs else None,
                         train_img_per_s=s["train_img_per_s"], epochs=s["epochs_trained"], updates=s["updates"],
                         train_time_s=s["train_time_s"], top1=s["final"]["top1"], best_top1=s["best"]["top1"],
                         wall_s=time.perf_counter() - t0))
    if args.dry_run:
        return 0
    table = markdown_table(rows)
    print(table)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    atomic_json(dict(time_budget_s=args.time_budget, torch=torch.__version__, threads=torch.get_num_threads(),
                     rows=rows), out / "compare.json")
    with atomic_write(out / "compare.md", "w") as f:
        f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
