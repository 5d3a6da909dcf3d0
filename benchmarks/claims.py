"""The paper's claims, measured in miniature: one command, one table (docs/claims.md), every claim with seeds and a
verdict from one stated rule (focalnet.inspect.claims.welch_verdict: Welch's two-sided t-test on the per-seed
values, p < 0.05, with the claim's direction; otherwise "inconclusive").

    python benchmarks/claims.py                       # all six rows, 3 seeds (about 2 hours on 2 cores)
    python benchmarks/claims.py --only dense          # one part; repeat --only for more
    python benchmarks/claims.py --quick               # every part at a toy size (a few minutes)
    python benchmarks/claims.py --merge               # only rebuild the table from the parts found

Parts (each writes benchmarks/results/claims/NAME.json, OUT/parts/NAME.json for --quick/--smoke/--out; the table
is rebuilt from every part found there, so a part can be run again alone; a part with no JSON keeps its measured
row from the table as it was, or is a row that says how to measure it):
  classify    row 1: FocalNet vs Swin vs ConvNeXt (benchmarks/train_compare.py's models and recipe) on
              Fashion-MNIST, at equal time and at an equal number of optimizer steps
  isotropic   row 2: isotropic FocalNet vs a DeiT-style ViT (same patch, width, depth, MLP ratio), the same two ways
  dense       row 3: Mask R-CNN and UperNet on Fashion-MNIST canvases with FocalNet, Swin, ConvNeXt and ResNet
              backbones (timm's features_only) sized alike
  modulation  rows 4-5: a FocalNet trained on canvases (multi-label): where its modulator's mass falls, the
              pointing game, and how alike its levels' gate maps are, against the same model untrained and a
              saliency from intensity alone
  cost        row 6a: exact receptive field of each focal level (autograd) and counted MACs vs the formula
  speed       row 6b: FocalNet-T vs Swin-T inference throughput at 224 px, eager and compiled (a timing: run
              it alone on an idle machine)
Within a seed the models take turns (drift of the machine hits them alike). --budget NAME=SECONDS sets a part's
time budget (see BUDGETS); the planned total is printed at the start. --quick and --smoke are smaller tiers whose
table goes to OUT/claims.md, never to docs/claims.md unless --docs says so.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_compare  # noqa: E402
from focalnet.inspect.claims import (  # noqa: E402
    DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, gate_correlation, intensity_saliency, level_support, modulator_map,
    object_focus, record_last_block, size_pairing, summarize, welch_verdict, formula_check,
)
from focalnet.utils import atomic_json, atomic_write  # noqa: E402

PARTS = ("classify", "isotropic", "dense", "modulation", "cost", "speed")
# seconds per part and tier: classify / isotropic: one equal-time training run; dense: the detector's and the
# segmenter's training together, per backbone and seed; modulation: the canvas classifier, per seed; speed: the
# timed calls per variant (compilation not included); cost: no budget (it computes, then stops)
BUDGETS = {
    "full": dict(classify=100, isotropic=100, dense=160, modulation=150, cost=0, speed=20),
    "quick": dict(classify=5, isotropic=5, dense=12, modulation=12, cost=0, speed=2),
    "smoke": dict(classify=1, isotropic=1, dense=1, modulation=1, cost=0, speed=0.2),
}
# data sizes per tier: Fashion-MNIST training / test images (None: all), canvases, test canvases; the speed row's
# image size and whether it compiles (two compilations cost minutes: the full tier only)
TIERS = {
    "full": dict(limit_train=None, limit_eval=None, canvas=128, dense_test=200, mod_test=200, speed_img=224,
                 compile=True),
    "quick": dict(limit_train=2000, limit_eval=1000, canvas=128, dense_test=24, mod_test=48, speed_img=224,
                  compile=False),
    "smoke": dict(limit_train=256, limit_eval=128, canvas=64, dense_test=4, mod_test=8, speed_img=64, compile=False),
}
STATEMENTS = {
    "classify": ("1", "Focal modulation beats windowed self-attention (Swin) and ConvNeXt at equal size "
                      "(ImageNet-1K: FocalNet-T 82.3 vs Swin-T 81.3 vs ConvNeXt-T 82.1 top-1)"),
    "isotropic": ("2", "Replacing self-attention by focal modulation in an isotropic ViT beats ViT "
                       "(FocalNet-T-iso 74.1 vs DeiT-T 72.2 top-1)"),
    "dense": ("3", "FocalNet backbones beat Swin / ConvNeXt / ResNet ones in detection (Mask R-CNN box/mask mAP) "
                   "and segmentation (UperNet mIoU)"),
    "objects": ("4", "The modulator |h(.)| highlights the foreground object (the paper's modulator visualizations)"),
    "gates": ("5", "Each focal level's gate looks at different regions (the paper's gate visualizations)"),
    "cost": ("6a", "Receptive field r = 1 + sum(k_l - 1); cost O(HW(3C^2 + C(2L+3) + C sum k_l^2)), linear in pixels"),
    "speed": ("6b", "FocalNet beats Swin in speed as well (FocalNet-T 696 vs Swin-T 755 img/s on a V100: "
                    "the paper's own table has Swin faster)"),
}


# ------------------------------------------------------------------------------------------------------------------
# Shared pieces: verdict cells, the machine, a part's record
# ------------------------------------------------------------------------------------------------------------------


def verdict_cell(comparisons: dict[str, "object"]) -> tuple[str, str]:
    """(overall verdict, per-comparison text) from named Verdicts: 'does not hold' if any comparison does not,
    'holds' if all hold, 'inconclusive' otherwise."""
    kinds = [v.verdict for v in comparisons.values()]
    overall = DOES_NOT_HOLD if DOES_NOT_HOLD in kinds else HOLDS if kinds and all(k == HOLDS for k in kinds) else INCONCLUSIVE
    detail = "; ".join(f"{name}: {v.verdict} (p = {v.p:.2g})" if not math.isnan(v.p) else f"{name}: {v.verdict} ({v.reason})"
                       for name, v in comparisons.items())
    return overall, detail


def arms_text(values: dict[str, list[float]], digits: int = 2, unit: str = "") -> str:
    return ", ".join(f"{name} {summarize(v).text(digits)}{unit}" for name, v in values.items())


def machine() -> dict:
    from focalnet.deploy.bench import machine_line, machine_state

    state = machine_state()
    return dict(line=machine_line(state), cpu=state["cpu"], isa=list(state["isa"]), threads=state["threads"])


def row(key: str, measurement: str, comparisons: dict, data: dict, *, verdict: Optional[str] = None,
        note: str = "") -> dict:
    number, statement = STATEMENTS[key]
    overall, detail = verdict_cell(comparisons) if comparisons else (verdict or INCONCLUSIVE, "")
    return dict(key=key, number=number, claim=statement, measurement=measurement, verdict=verdict or overall,
                detail=detail, note=note, data=data,
                comparisons={k: v.as_dict() for k, v in comparisons.items()})


def pairing_text(rows: list[dict]) -> str:
    parts = [f"{r['model']} {r['params'] / 1e6:.2f} M / {r['macs'] / 1e6:.1f} M MACs"
             f" ({r['params_vs_ref']:+.0%} / {r['macs_vs_ref']:+.0%})" for r in rows]
    ok = all(r["within"] for r in rows)
    return ("sizes within 15 %: " if ok else "NOT all within 15 %: ") + ", ".join(parts)


def print_pairing(rows: list[dict]) -> None:
    for r in rows:
        print(f"  {r['model']:<14} {r['params'] / 1e6:7.3f} M params ({r['params_vs_ref']:+6.1%})  "
              f"{r['macs'] / 1e6:8.1f} M MACs ({r['macs_vs_ref']:+6.1%})  {'ok' if r['within'] else 'OUTSIDE 15 %'}",
              flush=True)


# ------------------------------------------------------------------------------------------------------------------
# Rows 1 and 2: classification at equal time and at equal optimizer steps
# ------------------------------------------------------------------------------------------------------------------


def classification_seeds(names: list[str], args: argparse.Namespace, budget: float) -> list[dict]:
    """Every seed: each model for `budget` seconds (taking turns), then each for the same whole number of epochs
    (the most the slowest model completed in the budget, at least one), so the same optimizer steps."""
    base = train_compare.load_yaml_config(str(train_compare.CONFIG))
    base.pop("arch", None)
    base.pop("model", None)
    # float32 for every model: the main job's `precision: auto` would depend on the CPU, and bf16 on peers' kernels
    # (oneDNN's bf16 depthwise backward runs at half float32's speed: ConvNeXt's 7x7 depthwise would pay for it)
    base["precision"] = "fp32"
    extra = {k: v for k, v in (("limit_train", args.tier["limit_train"]), ("limit_eval", args.tier["limit_eval"])) if v}
    sizes = {n: (sum(p.numel() for p in train_compare.build(n).parameters()), None) for n in names}
    runs = []
    for seed in range(args.seeds):
        timed = []
        for name in names:
            timed.append(train_compare.train_model(
                name, seed=seed, path="eager", size=sizes[name], base=base, data="fashion-mnist", extra=extra,
                output=str(args.out / "runs" / f"{name}-time-seed{seed}"), time_budget=budget))
            print(f"  seed {seed} {name} equal time: {timed[-1]['top1']:.2f} % ({timed[-1]['updates']} steps)", flush=True)
        epochs = max(1, int(min(r["epochs"] for r in timed)))
        for r in timed:
            runs.append(dict(r, regime="time"))
        for name in names:
            r = train_compare.train_model(
                name, seed=seed, path="eager", size=sizes[name], base=base, data="fashion-mnist", extra=extra,
                output=str(args.out / "runs" / f"{name}-steps-seed{seed}"), epochs=epochs)
            runs.append(dict(r, regime="steps", equal_epochs=epochs))
            print(f"  seed {seed} {name} equal steps ({epochs} epochs, {r['updates']} steps): {r['top1']:.2f} %", flush=True)
    return runs


def classification_row(key: str, names: list[str], labels: dict[str, str], args: argparse.Namespace) -> dict:
    pairing = size_pairing({labels[n]: train_compare.build(n) for n in names}, img_size=28, in_chans=1)
    print_pairing(pairing)
    runs = classification_seeds(names, args, args.budgets[key])
    ours, peers = names[0], names[1:]
    comparisons, texts = {}, []
    for regime, title in (("time", f"equal time ({args.budgets[key]:.0f} s)"), ("steps", "equal steps")):
        top1 = {labels[n]: [r["top1"] for r in runs if r["model"] == n and r["regime"] == regime] for n in names}
        steps = sorted({r["updates"] for r in runs if r["regime"] == regime and r["model"] == ours})
        texts.append(f"{title}: top-1 % {arms_text(top1)}" + (f" [{steps[0]} steps]" if regime == "steps" else ""))
        for peer in peers:
            comparisons[f"vs {labels[peer]}, {regime}"] = welch_verdict(top1[labels[ours]], top1[labels[peer]])
    speed = {labels[n]: [r["train_img_per_s"] for r in runs if r["model"] == n and r["regime"] == "time"] for n in names}
    measurement = "; ".join(texts) + f"; train img/s {arms_text(speed, 0)}; {pairing_text(pairing)}"
    return row(key, measurement, comparisons, dict(runs=runs, pairing=pairing))


def part_classify(args: argparse.Namespace) -> list[dict]:
    labels = dict(focalnet="FocalNet", swin="Swin", convnext="ConvNeXt")
    return [classification_row("classify", ["focalnet", "swin", "convnext"], labels, args)]


def part_isotropic(args: argparse.Namespace) -> list[dict]:
    labels = dict(focalnet_iso="FocalNet-iso", vit="ViT")
    out = classification_row("isotropic", ["focalnet_iso", "vit"], labels, args)
    iso = train_compare.ISO
    out["note"] = (f"patch {iso['patch']}, width {iso['width']}, depth {iso['depth']}, MLP ratio {iso['mlp_ratio']:g}, "
                   f"ViT with {iso['heads']} heads, class token and learned positions (timm VisionTransformer)")
    return [out]


# ------------------------------------------------------------------------------------------------------------------
# Row 3: dense prediction with four backbones
# ------------------------------------------------------------------------------------------------------------------

DENSE_CHANNELS = (32, 64, 128, 256)
FOCAL_DENSE = dict(embed_dim=32, depths=[1, 1, 3, 1])  # benchmarks/dense_canvas.py's backbone


class TimmPyramid(nn.Module):
    """A timm features_only model as a drop-in for focalnet.dense's FocalNetBackbone: a list of NCHW maps at
    strides 4..32 with `out_channels`, `out_indices` and `strides`, and a LayerNorm per output as ours has."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        from focalnet.layers import LayerNorm2d

        self.net = net
        self.nhwc = str(getattr(net, "output_fmt", "NCHW")).endswith("NHWC")
        self.out_channels = list(net.feature_info.channels())
        self.strides = list(net.feature_info.reduction())
        self.out_indices = tuple(range(len(self.out_channels)))
        self.out_norms = nn.ModuleList(LayerNorm2d(c) for c in self.out_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.net(x)
        if self.nhwc:  # Swin's maps: (B, H, W, C) -> (B, C, H, W)
            feats = [f.permute(0, 3, 1, 2).contiguous() for f in feats]
        return [norm(f) for norm, f in zip(self.out_norms, feats)]


def dense_backbone(name: str, canvas: int) -> Optional[nn.Module]:
    """The peers' backbones, with FocalNet's output widths (32..256) so the same FPN and heads fit all; None for
    FocalNet (the detector builds its own). Depths chosen so parameters and MACs are within 15 % of FocalNet's."""
    import timm

    if name == "focalnet":
        return None
    if name == "swin":
        net = timm.create_model("swin_tiny_patch4_window7_224", features_only=True, pretrained=False, embed_dim=32,
                                depths=(1, 1, 3, 1), num_heads=(1, 2, 4, 8), img_size=canvas, window_size=8,
                                drop_path_rate=0.1)
    elif name == "convnext":
        net = timm.create_model("convnext_tiny", features_only=True, pretrained=False, dims=DENSE_CHANNELS,
                                depths=(2, 2, 4, 2), drop_path_rate=0.1)
    elif name == "resnet":  # BasicBlocks, deep stem (ResNet-D), widths 32..256
        net = timm.create_model("resnet18", features_only=True, out_indices=(1, 2, 3, 4), pretrained=False,
                                layers=(1, 1, 2, 1), channels=DENSE_CHANNELS, stem_width=16, stem_type="deep")
    else:
        raise ValueError(f"unknown dense backbone {name!r}")
    return TimmPyramid(net)


def dense_models(name: str, canvas: int) -> tuple[nn.Module, nn.Module]:
    """(Mask R-CNN, UperNet) with backbone `name`: built on FocalNet, the peer's body swapped in (same widths)."""
    from focalnet.dense import maskrcnn_focalnet, upernet_focalnet
    from focalnet.dense.data import CANVAS_CLASSES, canvas_detector_args

    args = dict(FOCAL_DENSE, drop_path_rate=0.1)
    det = maskrcnn_focalnet("focalnet_tiny_srf", len(CANVAS_CLASSES), backbone_args=args, fpn_channels=64,
                            representation_size=256, mask_head_channels=64, **canvas_detector_args(canvas))
    seg = upernet_focalnet("focalnet_tiny_srf", len(CANVAS_CLASSES), backbone_args=args, decoder_channels=64,
                           aux_channels=32)
    peer = dense_backbone(name, canvas)
    if peer is not None:
        det.backbone.body = peer
        seg.backbone = dense_backbone(name, canvas)
    return det, seg


def dense_pairing(names: list[str], canvas: int) -> list[dict]:
    """The backbones' sizes (FocalNet's as the detectors build it: window 9, a norm per output)."""
    from focalnet.dense import FocalNetBackbone

    bodies = {name: dense_backbone(name, canvas) for name in names}
    bodies = {name: body if body is not None else FocalNetBackbone("focalnet_tiny_srf", focal_windows=9, **FOCAL_DENSE)
              for name, body in bodies.items()}
    return size_pairing(bodies, img_size=canvas, in_chans=3)


def dense_one(name: str, seed: int, args: argparse.Namespace) -> dict:
    from focalnet.dense.data import CANVAS_CLASSES, CanvasDataset
    from focalnet.dense.engine import evaluate_detector, evaluate_segmenter, train_detector, train_segmenter

    canvas, budget = args.tier["canvas"], args.budgets["dense"]
    train = CanvasDataset("train", 20000, canvas_size=canvas, seed=seed)
    test = CanvasDataset("test", args.tier["dense_test"], canvas_size=canvas, seed=1000 + seed)
    torch.manual_seed(seed)
    det, seg = dense_models(name, canvas)
    # the budget split as benchmarks/dense_canvas.py's defaults (300 s / 180 s)
    fit_det = train_detector(det, train, time_limit_s=budget * 0.625, batch_size=8, lr=1e-3, grad_clip=5.0, seed=seed,
                             log_every=10**9)
    m_det = evaluate_detector(det, test)
    fit_seg = train_segmenter(seg, train, time_limit_s=budget * 0.375, batch_size=8, lr=1e-3, grad_clip=5.0, seed=seed,
                              log_every=10**9)
    m_seg = evaluate_segmenter(seg, test, class_names=CANVAS_CLASSES)
    return dict(backbone=name, seed=seed, det_steps=fit_det.steps, seg_steps=fit_seg.steps, box_map=100 * m_det["map"],
                mask_map=100 * m_det.get("segm_map", math.nan), miou=100 * m_seg["miou"])


def part_dense(args: argparse.Namespace) -> list[dict]:
    names = ["focalnet", "swin", "convnext", "resnet"]
    labels = dict(focalnet="FocalNet", swin="Swin", convnext="ConvNeXt", resnet="ResNet")
    pairing = dense_pairing(names, args.tier["canvas"])
    for r in pairing:
        r["model"] = labels[r["model"]]
    print_pairing(pairing)
    runs = []
    for seed in range(args.seeds):
        for name in names:
            runs.append(dense_one(name, seed, args))
            r = runs[-1]
            print(f"  seed {seed} {name}: box mAP {r['box_map']:.2f}, mask mAP {r['mask_map']:.2f}, mIoU {r['miou']:.2f} "
                  f"({r['det_steps']} / {r['seg_steps']} steps)", flush=True)
    comparisons, texts = {}, []
    for metric, title in (("box_map", "box mAP"), ("mask_map", "mask mAP"), ("miou", "mIoU")):
        values = {labels[n]: [r[metric] for r in runs if r["backbone"] == n] for n in names}
        texts.append(f"{title} {arms_text(values)}")
        for peer in names[1:]:
            comparisons[f"{title} vs {labels[peer]}"] = welch_verdict(values["FocalNet"], values[labels[peer]])
    measurement = "; ".join(texts) + f"; backbones: {pairing_text(pairing)}"
    note = (f"{args.tier['canvas']} px canvases, {args.budgets['dense']:.0f} s of training per backbone and seed "
            f"(62.5 % Mask R-CNN, 37.5 % UperNet), {args.tier['dense_test']} test canvases")
    return [row("dense", measurement, comparisons, dict(runs=runs, pairing=pairing), note=note)]


# ------------------------------------------------------------------------------------------------------------------
# Rows 4 and 5: where the modulator looks, how alike the gates are
# ------------------------------------------------------------------------------------------------------------------

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def canvas_classifier() -> nn.Module:
    """A small LRF FocalNet (levels 3, kernels 3/5/7) with 3 stages: its last stage is an 8x8 map at 128 px."""
    import focalnet

    return focalnet.create_model("focalnet_tiny_lrf", num_classes=10, embed_dim=32, depths=(1, 2, 2), focal_levels=3,
                                 focal_windows=3, drop_path_rate=0.05)


def multi_hot(targets: list[dict]) -> torch.Tensor:
    y = torch.zeros(len(targets), 10)
    for i, t in enumerate(targets):
        y[i, t["labels"] - 1] = 1.0
    return y


def train_canvas_classifier(model: nn.Module, seed: int, seconds: float, canvas: int) -> dict:
    """Which of the 10 classes are on the canvas (multi-label, BCE): AdamW, warm-up + cosine over `seconds`."""
    from focalnet.dense.data import CanvasDataset, collate_detection
    from focalnet.dense.engine import param_groups

    data = CanvasDataset("train", 50000, canvas_size=canvas, seed=seed)
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, collate_fn=collate_detection,
                                         generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=2e-3)
    model.train()
    start, steps, loss = time.perf_counter(), 0, math.nan
    for images, targets in loader:
        frac = (time.perf_counter() - start) / seconds
        if frac >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = 2e-3 * (frac / 0.05 if frac < 0.05 else 0.5 * (1 + math.cos(math.pi * (frac - 0.05) / 0.95)))
        x = (torch.stack(images) - IMAGENET_MEAN) / IMAGENET_STD
        out = F.binary_cross_entropy_with_logits(model(x), multi_hot(targets))
        opt.zero_grad(set_to_none=True)
        out.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        steps, loss = steps + 1, out.item()
    model.eval()
    return dict(steps=steps, last_loss=loss)


def modulation_measures(model: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> dict:
    """Per-image object focus of the modulator and gate correlations, for one model on one batch."""
    rec = record_last_block(model, (images - IMAGENET_MEAN) / IMAGENET_STD)
    focus = object_focus(modulator_map(rec), masks, rec.stride)
    gates = gate_correlation(rec.gates)
    return dict(focus=focus, gates=gates, stride=rec.stride)


def modulation_seed(seed: int, args: argparse.Namespace) -> dict:
    from focalnet.dense.data import CanvasDataset

    canvas = args.tier["canvas"]
    torch.manual_seed(seed)
    trained = canvas_classifier()
    untrained = copy.deepcopy(trained).eval()  # the same initial weights, never trained
    fit = train_canvas_classifier(trained, seed, args.budgets["modulation"], canvas)
    test = CanvasDataset("test", args.tier["mod_test"], canvas_size=canvas, seed=2000 + seed)
    acc: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(test), 16):
        items = [test[i] for i in range(start, min(start + 16, len(test)))]
        images = torch.stack([im for im, _ in items])
        masks = torch.stack([t["masks"].bool().any(dim=0) for _, t in items])  # the union of the objects
        for arm, model in (("trained", trained), ("untrained", untrained)):
            m = modulation_measures(model, images, masks)
            for k, v in m["focus"].items():
                acc.setdefault(f"{arm}_{k}", []).append(v)
            for k in ("levels", "global"):
                acc.setdefault(f"{arm}_gates_{k}", []).append(m["gates"][k])
        for k, v in object_focus(intensity_saliency(images, m["stride"]), masks, m["stride"]).items():
            acc.setdefault(f"intensity_{k}", []).append(v)
    means = {k: float(torch.cat(v).nanmean()) for k, v in acc.items()}
    return dict(seed=seed, **fit, **means)


def part_modulation(args: argparse.Namespace) -> list[dict]:
    seeds = []
    for seed in range(args.seeds):
        seeds.append(modulation_seed(seed, args))
        s = seeds[-1]
        print(f"  seed {seed}: mass share {s['trained_mass_share']:.3f} (untrained {s['untrained_mass_share']:.3f}, "
              f"intensity {s['intensity_mass_share']:.3f}, area {s['trained_area_share']:.3f}); gate corr "
              f"{s['trained_gates_levels']:.3f} (untrained {s['untrained_gates_levels']:.3f})", flush=True)

    def col(key: str) -> list[float]:
        return [s[key] for s in seeds]

    shares = {"trained": col("trained_mass_share"), "untrained": col("untrained_mass_share"),
              "intensity": col("intensity_mass_share"), "area": col("trained_area_share")}
    pointing = {"trained": col("trained_pointing"), "untrained": col("untrained_pointing"),
                "intensity": col("intensity_pointing")}
    objects = row("objects", f"modulator mass inside the objects: {arms_text(shares, 3)}; pointing game: "
                  f"{arms_text(pointing, 3)}", {
                      "mass vs area": welch_verdict(shares["trained"], shares["area"]),
                      "mass vs untrained": welch_verdict(shares["trained"], shares["untrained"]),
                      "mass vs intensity": welch_verdict(shares["trained"], shares["intensity"]),
                      "pointing vs untrained": welch_verdict(pointing["trained"], pointing["untrained"]),
                      "pointing vs intensity": welch_verdict(pointing["trained"], pointing["intensity"]),
                  }, dict(seeds=seeds), note=modulation_note(args, seeds))
    levels = {"trained": col("trained_gates_levels"), "untrained": col("untrained_gates_levels")}
    glob = {"trained": col("trained_gates_global"), "untrained": col("untrained_gates_global")}
    gates = row("gates", f"mean correlation between levels' gate maps: {arms_text(levels, 3)}; level vs global gate: "
                f"{arms_text(glob, 3)}", {
                    "levels, trained lower": welch_verdict(levels["trained"], levels["untrained"], higher_is_better=False),
                    "global, trained lower": welch_verdict(glob["trained"], glob["untrained"], higher_is_better=False),
                }, dict(seeds=seeds), note=modulation_note(args, seeds))
    return [objects, gates]


def modulation_note(args: argparse.Namespace, seeds: list[dict]) -> str:
    steps = summarize([s["steps"] for s in seeds])
    return (f"focalnet_tiny_lrf resized (width 32, depths 1-2-2, levels 3), trained {args.budgets['modulation']:.0f} s "
            f"per seed ({steps.mean:.0f} steps) to name the classes on {args.tier['canvas']} px canvases; last block of "
            f"the last stage (stride 16), {args.tier['mod_test']} test canvases per seed")


# ------------------------------------------------------------------------------------------------------------------
# Row 6: receptive field, formula, speed
# ------------------------------------------------------------------------------------------------------------------


def part_cost(args: argparse.Namespace) -> list[dict]:
    import focalnet

    rf = [level_support(L, w, focal_factor=f) for L in (1, 2, 3, 4) for w in (3, 5, 9) for f in (2, 4)]
    bad_rf = [r for r in rf if not r["exact"]]
    global_ok = all(r["output_is_global"] for r in rf)
    sizes = (224, 256, 320) if args.tier_name == "full" else (32, 48, 61)
    name = "focalnet_tiny_lrf" if args.tier_name == "full" else "focalnet_tiny_srf"
    model = (focalnet.create_model(name) if args.tier_name == "full"
             else focalnet.create_model(name, embed_dim=16, depths=(1, 1, 1), focal_levels=3, focal_windows=3))
    macs = formula_check(model, sizes)
    exact = not bad_rf and all(r["equal"] for r in macs)
    measurement = (
        f"receptive field of every focal level measured by autograd = 1 + sum(k_l - 1) exactly in "
        f"{len(rf) - len(bad_rf)}/{len(rf)} layers (L = 1..4, windows 3/5/9, factors 2/4; the output itself sees every "
        f"pixel through the global context: {'yes' if global_ok else 'NO'}); {name} MACs counted = formula - "
        f"element-wise terms exactly at " + ", ".join(f"{r['img_size']} px ({r['counted'] / 1e6:.1f} M counted, "
                                                    f"{r['formula'] / 1e6:.1f} M by the formula)" for r in macs)
        + f": {sum(r['equal'] for r in macs)}/{len(macs)}")
    return [row("cost", measurement, {}, dict(receptive_fields=rf, macs=macs), verdict=HOLDS if exact else DOES_NOT_HOLD,
                note="exact checks, no seeds: every configuration must agree")]


def part_speed(args: argparse.Namespace) -> list[dict]:
    from focalnet.deploy.bench import Workload, run_inference

    img = args.tier["speed_img"]
    variants = ["ours", "swin_t"] + (["ours-compiled", "swin_t-compiled"] if args.tier["compile"] else [])
    per_call = 0.1 if img < 224 else 0.35  # seconds per batch-16 forward of either on 2 cores (for the rounds)
    rounds = max(2, int(args.budgets["speed"] / (5 * per_call)))
    results = run_inference(variants, Workload("focalnet_tiny_lrf", batch_size=16, img_size=img), rounds=rounds, block=5,
                            log=lambda s: print("  " + s, flush=True))
    thr = {r.label: r.throughputs for r in results}
    comparisons = {}
    for mode in ("", "-compiled"):
        if f"ours{mode}" in thr and f"swin_t{mode}" in thr:
            comparisons["compiled" if mode else "eager"] = welch_verdict(thr[f"ours{mode}"], thr[f"swin_t{mode}"])
    names = {"ours": "FocalNet-T", "swin_t": "Swin-T", "ours-compiled": "FocalNet-T compiled",
             "swin_t-compiled": "Swin-T compiled"}
    measurement = f"img/s at {img} px, batch 16: " + arms_text({names[k]: v for k, v in thr.items()}, 1)
    note = ("n = timed calls (blocks of 5, interleaved); compiled: torch.compile inductor with freezing; "
            "a timing: valid only from a run alone on an idle machine")
    return [row("speed", measurement, comparisons, dict(throughputs=thr), note=note)]


# ------------------------------------------------------------------------------------------------------------------
# The plan, the parts' files and the table
# ------------------------------------------------------------------------------------------------------------------


def planned_seconds(part: str, args: argparse.Namespace) -> float:
    """Expected wall time of a part (training budgets plus evaluation, building and compilation estimates)."""
    b, n = args.budgets[part], args.seeds
    per_run = dict(full=10, quick=7, smoke=7)[args.tier_name]  # a training run's setup, evaluation and files
    if part == "classify":  # 3 models x (equal time + at most as long at equal steps)
        return n * 3 * 2 * (b + per_run)
    if part == "isotropic":
        return n * 2 * 2 * (b + per_run)
    if part == "dense":  # evaluation of Mask R-CNN and UperNet: ~0.15 s per canvas
        return n * 4 * (b + 0.15 * args.tier["dense_test"] + 3)
    if part == "modulation":
        return n * (b + 0.05 * args.tier["mod_test"] + 3)
    if part == "cost":
        return 30 if args.tier_name == "full" else 5
    if part == "speed":  # two compilations with freezing (~90 s each at 224 px) and the timed calls
        return 4 * b + (200 if args.tier["compile"] else 10)
    raise ValueError(part)


RUNNERS: dict[str, Callable[[argparse.Namespace], list[dict]]] = dict(
    classify=part_classify, isotropic=part_isotropic, dense=part_dense, modulation=part_modulation, cost=part_cost,
    speed=part_speed,
)
ROW_KEYS = dict(classify=["classify"], isotropic=["isotropic"], dense=["dense"], modulation=["objects", "gates"],
                cost=["cost"], speed=["speed"])


def run_part(part: str, args: argparse.Namespace, mach: dict) -> dict:
    print(f"== {part} (planned {planned_seconds(part, args) / 60:.1f} min)", flush=True)
    t0 = time.perf_counter()
    try:
        rows = RUNNERS[part](args)
    except Exception as e:  # the row says why it could not be measured; the traceback is printed, the run fails
        traceback.print_exc()
        rows = [row(key, f"could not be measured here: {type(e).__name__}: {e}", {}, {}, verdict="not measured")
                for key in ROW_KEYS[part]]
    command = " ".join(["python benchmarks/claims.py", "--only", part, "--seeds", str(args.seeds),
                        *(["--" + args.tier_name] if args.tier_name != "full" else []),
                        *((f"--budget {part}={args.budgets[part]:g}",) if part in args.budget_given else ())])
    record = dict(part=part, rows=rows, command=command, machine=mach, tier=args.tier_name, seeds=args.seeds,
                  budget_s=args.budgets[part], wall_s=round(time.perf_counter() - t0, 1), torch=torch.__version__,
                  finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    path = args.parts_dir / f"{part}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(record, path)
    print(f"   {part}: {record['wall_s']:.0f} s -> {path}", flush=True)
    return record


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def previous_rows(text: str) -> tuple[dict[str, str], list[str]]:
    """The measured rows of an earlier table, by claim number, and the machines it names: a part whose JSON is
    not at hand (runs/ is not kept; parts live in benchmarks/results/claims/ since they are) keeps its row."""
    rows, machines = {}, []
    for line in text.splitlines():
        cells = line.split(" | ")
        if line.startswith("| ") and len(cells) > 2 and "not measured yet" not in cells[2]:
            rows[cells[0][2:].strip()] = line
        elif line.startswith("Machines: ") and line[len("Machines: "):].strip():
            machines = [line[len("Machines: "):].strip()]  # one text: a machine's own line holds "; " too
    return rows, machines


def render_table(records: dict[str, dict], previous: str = "") -> str:
    """docs/claims.md from the parts' records; a part with no record keeps its measured row from `previous` (the
    table as it was), else is a row saying how to measure it."""
    kept, old_machines = previous_rows(previous)
    used_old = False
    lines = [
        "# The paper's claims, measured in miniature",
        "",
        "Generated by `benchmarks/claims.py` from the parts' JSON files; do not edit by hand. Verdict rule "
        "(`focalnet.inspect.claims.welch_verdict`): Welch's two-sided t-test on the per-seed values, p < 0.05, with "
        "the claim's direction: **holds** if significant in the paper's direction, **does not hold** if significant "
        "the other way, **inconclusive** otherwise. A row with several comparisons holds only if all of them hold, "
        "and does not hold if any does not. Exact checks (row 6a) hold only if every configuration agrees. "
        "Measurements: mean ± sample sd (n = seeds unless said otherwise).",
        "",
        "| # | the paper's claim | our measurement | verdict | command | machine |",
        "|---|---|---|---|---|---|",
    ]
    for part in PARTS:
        record = records.get(part)
        for key in ROW_KEYS[part]:
            number, statement = STATEMENTS[key]
            if record is None and number in kept:
                lines.append(kept[number])
                used_old = True
                continue
            if record is None:
                lines.append(f"| {number} | {cell(statement)} | not measured yet | - | "
                             f"`python benchmarks/claims.py --only {part}` | - |")
                continue
            r = next(x for x in record["rows"] if x["key"] == key)
            m = record["machine"]
            measurement = r["measurement"] + (f" ({r['note']})" if r.get("note") else "")
            tier = "" if record["tier"] == "full" else f" [{record['tier']} tier: toy sizes, not a result]"
            verdict = f"**{r['verdict']}**" + (f": {r['detail']}" if r["detail"] else "")
            lines.append(f"| {number} | {cell(statement)} | {cell(measurement + tier)} | {cell(verdict)} | "
                         f"`{record['command']}` ({record['wall_s']:.0f} s) | {cell(m['cpu'])} "
                         f"({cell(' '.join(m['isa']) or 'no AVX2/AVX-512/AMX')}), {m['threads']} threads |")
    machines = sorted({rec["machine"]["line"] for rec in records.values()})
    machines += [m for m in (old_machines if used_old else []) if m not in "; ".join(machines)]
    lines += ["", "Machines: " + "; ".join(machines) if machines else "", ""]
    return "\n".join(lines)


def merge(args: argparse.Namespace) -> Path:
    records = {}
    for path in sorted(args.parts_dir.glob("*.json")):
        record = json.loads(path.read_text())
        if record.get("part") in PARTS:
            records[record["part"]] = record
    previous = args.docs.read_text() if args.docs.is_file() else ""
    with atomic_write(args.docs, "w") as f:
        f.write(render_table(records, previous))
    return args.docs


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", choices=PARTS, help="run only this part (repeatable)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 3; 2 for --quick/--smoke)")
    tier = p.add_mutually_exclusive_group()
    tier.add_argument("--quick", action="store_true", help="every part at a toy size: a few minutes")
    tier.add_argument("--smoke", action="store_true", help="smaller still: the tests' end-to-end run")
    p.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS", help="a part's time budget")
    p.add_argument("--out", type=Path, default=None, help="training runs, and the parts' JSON in OUT/parts when given or "
                                                          "--quick/--smoke (default runs/claims[-TIER]; the full tier's "
                                                          "parts: benchmarks/results/claims)")
    p.add_argument("--docs", type=Path, default=None, help="the table (default docs/claims.md; OUT/claims.md for "
                                                           "--quick/--smoke)")
    p.add_argument("--merge", action="store_true", help="only rebuild the table from the parts found in OUT")
    p.add_argument("--plan", action="store_true", help="print the plan and stop")
    args = p.parse_args(argv)
    out_given = args.out is not None
    args.tier_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    args.tier = TIERS[args.tier_name]
    args.seeds = args.seeds or (3 if args.tier_name == "full" else 2)
    if args.seeds < 2:
        p.error("--seeds must be at least 2: the verdict rule compares per-seed values")
    args.budgets = dict(BUDGETS[args.tier_name])
    args.budget_given = {}
    for item in args.budget:
        name, _, value = item.partition("=")
        if name not in PARTS or not value:
            p.error(f"--budget takes PART=SECONDS with PART one of {', '.join(PARTS)}; got {item!r}")
        args.budgets[name] = args.budget_given[name] = float(value)
    args.out = args.out or ROOT / ("runs/claims" + ("" if args.tier_name == "full" else f"-{args.tier_name}"))
    # the full tier's parts are the measurements docs/claims.md is made from: kept in the repository (runs/ is not)
    args.parts_dir = ROOT / "benchmarks/results/claims" if args.tier_name == "full" and not out_given else args.out / "parts"
    args.docs = args.docs or (ROOT / "docs" / "claims.md" if args.tier_name == "full" else args.out / "claims.md")
    args.parts = args.only or list(PARTS)
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.merge:
        plan = {part: planned_seconds(part, args) for part in args.parts}
        print(f"claims ({args.tier_name}, {args.seeds} seeds): planned " + ", ".join(
            f"{k} {v / 60:.1f} min" for k, v in plan.items()) + f"; total {sum(plan.values()) / 60:.1f} min", flush=True)
        if args.plan:
            return 0
        mach = machine()
        records = [run_part(part, args, mach) for part in args.parts]
        failed = [r["part"] for r in records if any(x["verdict"] == "not measured" for x in r["rows"])]
    print(f"table: {merge(args)}", flush=True)
    if not args.merge and failed:
        print(f"these parts failed (their rows say why): {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
