"""FocalNet vs timm's Swin and ConvNeXt on Fashion-MNIST: same recipe, same time budget, several seeds, one table.

    python benchmarks/train_compare.py --time-budget 300 --seeds 3 --output runs/compare

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

Each model trains on its own fastest path: before the seeds, a probe times its training step eager and
compiled (torch.compile, inductor) on random batches, and the compiled path is taken only if it trains more
images within the budget once its compilation is paid (`choose_path`; `--path eager|compiled` forces one).
Every seed (0 .. N-1) then trains each model once, the models taking turns within a seed so that drift of
the machine hits them alike; the table gives mean +- sd (sample standard deviation) over the seeds.

Runs in this process; prints the table and writes it to OUTPUT/compare.json and OUTPUT/compare.md. Run it on an
idle machine: the budget is wall-clock time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


from focalnet.utils import atomic_json, atomic_write  # noqa: E402
from focalnet.train import TrainConfig, load_yaml_config, train  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion-mnist.yaml"
MODELS = ("focalnet", "swin", "convnext", "focalnet_iso", "vit")
# the isotropic pair (benchmarks/claims.py, row 2): 7x7 tokens of 4x4 px, 6 blocks of width 64, MLP ratio 4;
# the ViT's 2 heads keep DeiT's 32 channels per head as close as this width allows
ISO = dict(patch=4, width=64, depth=6, heads=2, mlp_ratio=4.0)


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
    if name == "focalnet_iso":  # the isotropic FocalNet: ViT's layout with focal modulation for attention
        import focalnet

        return focalnet.create_model("focalnet_tiny_iso", in_chans=1, num_classes=10, drop_path_rate=0.05,
                                     embed_dim=ISO["width"], depth=ISO["depth"], patch_size=ISO["patch"],
                                     mlp_ratio=ISO["mlp_ratio"])
    if name == "vit":  # DeiT-style ViT (class token, learned positions) with the same patch, width, depth, MLP
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(img_size=28, patch_size=ISO["patch"], in_chans=1, num_classes=10,
                                 embed_dim=ISO["width"], depth=ISO["depth"], num_heads=ISO["heads"],
                                 mlp_ratio=ISO["mlp_ratio"], drop_path_rate=0.05)
    raise ValueError(f"unknown model {name!r}; choose {', '.join(MODELS)}")


def probe_rates(name: str, *, batch: int, rounds: int = 4, block: int = 5) -> dict:
    """Training images per second of `name`, eager and compiled, on random 28 px batches (forward, loss, backward,
    AdamW step): both built and warmed up, then timed in blocks of `block` consecutive steps, the blocks of the two
    interleaved `rounds` times (medians); and the seconds the compiled variant's first two steps took beyond eager
    ones. A few steps timed one after the other were not enough: they once chose the slower path."""
    steps, warm = {}, {}
    for path in ("eager", "compiled"):
        torch.manual_seed(0)
        model = build(name).train()
        fn = torch.compile(model) if path == "compiled" else model
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

        def step(fn=fn, opt=opt, x=x, y=y):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(fn(x), y).backward()
            opt.step()

        t0 = time.perf_counter()
        step(), step()  # warm-up (and compilation)
        warm[path], steps[path] = time.perf_counter() - t0, step
    times: dict = {path: [] for path in steps}
    for _ in range(rounds):
        for path, step in steps.items():
            step()  # re-warm after the other variant ran
            for _ in range(block):
                t0 = time.perf_counter()
                step()
                times[path].append(time.perf_counter() - t0)
    out = {}
    for path in steps:
        per_step = statistics.median(times[path])
        out[path] = dict(img_per_s=batch / per_step, warmup_s=max(0.0, warm[path] - 2 * per_step))
    return out


def choose_path(rates: dict, budget_s: float) -> str:
    """'compiled' when it trains more images within `budget_s` after paying its compilation, else 'eager'."""
    eager = rates["eager"]["img_per_s"] * budget_s
    compiled = rates["compiled"]["img_per_s"] * max(0.0, budget_s - rates["compiled"]["warmup_s"])
    return "compiled" if compiled > eager else "eager"


def mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "-"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def markdown_table(rows: list[dict]) -> str:
    """One line per model: mean ± sd over its seeds (one row each in `rows`)."""
    head = ("| model | path | params (M) | MACs (M, 28 px) | seeds | train img/s | epochs | test top-1 (%) | "
            "per seed |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        first = mine[0]
        per_seed = ", ".join(f"{r['top1']:.2f}" for r in mine)
        macs = f"{first['mmacs']:.1f}" if first["mmacs"] else "-"
        lines.append(
            f"| {name} | {first['path']} | {first['params_m']:.2f} | {macs} | {len(mine)} | "
            f"{mean_sd([r['train_img_per_s'] for r in mine])} | {mean_sd([r['epochs'] for r in mine])} | "
            f"**{mean_sd([r['top1'] for r in mine])}** | {per_seed} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="focalnet,swin,convnext", help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--time-budget", type=float, default=600.0, help="seconds of training per model and seed")
    p.add_argument("--seeds", type=int, default=3, help="seeds per model (at least 3 for a mean ± sd)")
    p.add_argument("--path", choices=("auto", "eager", "compiled"), default="auto",
                   help="auto: each model's faster path by the probe (choose_path); or force one for all")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--output", default="runs/compare")
    p.add_argument("--dry-run", action="store_true", help="only build the models and print their size")
    args = p.parse_args()
    if args.seeds < 1 or args.time_budget <= 0:
        p.error("--seeds must be at least 1 and --time-budget positive")
    return args


def main() -> int:
    args = parse_args()
    from focalnet.train.artifacts import try_count_macs

    base = load_yaml_config(str(CONFIG))
    base.pop("arch", None)
    base.pop("model", None)
    # float32 for every model: the main job's `precision: auto` would depend on the CPU, and bf16 on peers' kernels
    # (oneDNN's bf16 depthwise backward runs at half float32's speed: ConvNeXt's 7x7 depthwise would pay for it)
    base["precision"] = "fp32"
    names = args.models.split(",")
    sizes, paths, probes = {}, {}, {}
    for name in names:
        model = build(name)
        sizes[name] = (sum(p.numel() for p in model.parameters()), try_count_macs(model, 1, 28))
        print(f"{name:<10} {sizes[name][0] / 1e6:6.3f} M parameters "
              f"{(sizes[name][1] or 0) / 1e6:6.1f} M MACs", flush=True)
        if args.dry_run:
            continue
        if args.path == "auto":
            probes[name] = probe_rates(name, batch=int(base.get("batch_size", 128)))
            paths[name] = choose_path(probes[name], args.time_budget)
            print(f"  probe: eager {probes[name]['eager']['img_per_s']:.0f} img/s, compiled "
                  f"{probes[name]['compiled']['img_per_s']:.0f} img/s after {probes[name]['compiled']['warmup_s']:.0f} s "
                  f"of compilation -> {paths[name]}", flush=True)
        else:
            paths[name] = args.path
    if args.dry_run:
        return 0
    rows = []
    for seed in range(args.seeds):
        for name in names:
            rows.append(train_one(name, seed, paths[name], sizes[name], base, args))
            print(f"seed {seed} {name}: {rows[-1]['top1']:.2f} %", flush=True)
    report(rows, probes, args)
    return 0


def train_one(name: str, seed: int, path: str, size: tuple, base: dict, args: argparse.Namespace) -> dict:
    return train_model(name, seed=seed, path=path, size=size, base=base, data=args.data,
                       output=f"{args.output}/{name}-seed{seed}", time_budget=args.time_budget)


def train_model(name: str, *, seed: int, path: str, size: tuple, base: dict, data: str, output: str,
                time_budget: Optional[float] = None, epochs: Optional[int] = None, extra: Optional[dict] = None) -> dict:
    """Train `name` once with the shared recipe `base`: for `time_budget` seconds (steps fitted to it), or for
    `epochs` whole epochs (the same optimizer steps for every model). `extra`: more TrainConfig fields."""
    torch.manual_seed(seed)  # the model's initial weights differ per seed as well
    model = build(name)
    end = {"time_budget": time_budget} if time_budget is not None else {"time_budget": None, "epochs": epochs}
    cfg = TrainConfig.from_dict({**base, "data": data, **end, "seed": seed,
                                 "compile": "on" if path == "compiled" else "off",
                                 "output": output, "progress": "off", "overwrite": True, **(extra or {})})
    t0 = time.perf_counter()
    s = train(cfg, model=model)
    params, macs = size
    return dict(model=name, seed=seed, path=path, params_m=params / 1e6, mmacs=macs / 1e6 if macs else None,
                train_img_per_s=s["train_img_per_s"], epochs=s["epochs_trained"], updates=s["updates"],
                train_time_s=s["train_time_s"], top1=s["final"]["top1"], best_top1=s["best"]["top1"],
                wall_s=time.perf_counter() - t0)


def report(rows: list[dict], probes: dict, args: argparse.Namespace) -> None:
    from focalnet.deploy.bench import machine_line, machine_state

    table = markdown_table(rows)
    machine = machine_line(machine_state())
    print(f"machine: {machine}\n{table}")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    atomic_json(dict(time_budget_s=args.time_budget, seeds=args.seeds, machine=machine, torch=torch.__version__,
                     threads=torch.get_num_threads(), probes=probes, rows=rows), out / "compare.json")
    with atomic_write(out / "compare.md", "w") as f:
        f.write(f"{args.time_budget:.0f} s per model and seed, {args.seeds} seeds; {machine}\n\n{table}\n")


if __name__ == "__main__":
    sys.exit(main())
