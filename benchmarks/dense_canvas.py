"""Train a small-FocalNet Mask R-CNN and an UperNet on Fashion-MNIST canvases on the CPU; report box / mask
mAP and mIoU on held-out canvases (items from the test split), and draw a few predictions.

    flock /work/cpu.lock env PYTHONPATH=$PWD/src python benchmarks/dense_canvas.py --out runs/dense

Optionally (--pretrain-seconds) the FocalNet is first trained as a Fashion-MNIST classifier with the
classification window (3), saved in our classification format, and read back into the window-9 detection
and segmentation backbones through `pretrained_backbone=` (kernels zero-padded 3 -> 9, 5 -> 11), the path
a user takes with ImageNet weights. Outputs in --out: results.json, the two checkpoints (focalnet-dense
format), sample canvases and their `focalnet detect` / `focalnet segment` pictures.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from focalnet import create_model, save_model
from focalnet.utils import atomic_json
from focalnet.dense import maskrcnn_focalnet, save_dense_checkpoint, upernet_focalnet
from focalnet.dense.data import CANVAS_CLASSES, CanvasDataset, canvas_detector_args, load_fashion_mnist
from focalnet.dense.draw import save_png
from focalnet.dense.engine import evaluate_detector, evaluate_segmenter, param_groups, train_detector, train_segmenter
from focalnet.dense.predict import detect_files, segment_files

log = logging.getLogger("focalnet")


def pretrain_classifier(args: argparse.Namespace, backbone_args: dict, path: Path) -> dict:
    """Fashion-MNIST train items -> 10 classes with the classification window (3): 48 px tiles, each group of
    16 items at its own scale (20-48 px) and place, every item tinted over its own background colour."""
    images, labels = load_fashion_mnist("train")
    model = create_model(args.backbone, num_classes=10, drop_path_rate=0.0, **backbone_args)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3)
    g = torch.Generator().manual_seed(args.seed)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def batch(n: int = 128, group: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(images), (n,), generator=g).numpy()
        items = torch.from_numpy(images[idx]).float().div(255).unsqueeze(1)  # (n, 1, 28, 28)
        tile = torch.zeros(n, 1, 48, 48)
        for start in range(0, n, group):
            side = int(torch.randint(20, 49, (1,), generator=g))
            y, x = (int(v) for v in torch.randint(0, 48 - side + 1, (2,), generator=g))
            part = items[start : start + group]
            tile[start : start + group, :, y : y + side, x : x + side] = F.interpolate(
                part, size=(side, side), mode="bilinear", antialias=True, align_corners=False
            )
        color = torch.rand(n, 3, 1, 1, generator=g) * 0.65 + 0.35
        back = torch.rand(n, 3, 1, 1, generator=g) * 0.45
        img = back * (1 - tile) + color * tile + 0.02 * torch.randn(n, 3, 48, 48, generator=g)
        return (img.clamp(0, 1) - mean) / std, torch.from_numpy(labels[idx])

    start, step, hits, seen = time.perf_counter(), 0, 0, 0
    model.train()
    while time.perf_counter() - start < args.pretrain_seconds:
        frac = (time.perf_counter() - start) / args.pretrain_seconds
        factor = frac / 0.05 if frac < 0.05 else 0.5 * (1 + math.cos(math.pi * (frac - 0.05) / 0.95))
        for group in opt.param_groups:
            group["lr"] = 1e-3 * factor
        x, y = batch()
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if frac > 0.8:
            hits += int((logits.argmax(1) == y).sum())
            seen += len(y)
    save_model(model, path, class_names=list(CANVAS_CLASSES[1:]))
    out = dict(steps=step, seconds=round(time.perf_counter() - start, 1), train_accuracy_last_20pct=round(hits / max(seen, 1), 4))
    log.info("pretraining: %s", out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/dense_canvas"))
    p.add_argument("--backbone", default="focalnet_tiny_srf", help="registered variant whose flags are used")
    p.add_argument("--embed-dim", type=int, default=32)
    p.add_argument("--depths", default="1,1,3,1")
    p.add_argument("--canvas", type=int, default=128)
    p.add_argument("--train-canvases", type=int, default=20000, help="distinct training canvases (rendered on the fly)")
    p.add_argument("--test-canvases", type=int, default=500)
    p.add_argument("--pretrain-seconds", type=float, default=0.0, help="classification pretraining first (0: none)")
    p.add_argument("--det-seconds", type=float, default=300.0)
    p.add_argument("--seg-seconds", type=float, default=180.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--det-lr", type=float, default=1e-3)
    p.add_argument("--seg-lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=4, help="test canvases to draw predictions on")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    backbone_args = dict(embed_dim=args.embed_dim, depths=[int(d) for d in args.depths.split(",")])
    train = CanvasDataset("train", args.train_canvases, canvas_size=args.canvas, seed=args.seed)
    test = CanvasDataset("test", args.test_canvases, canvas_size=args.canvas, seed=args.seed + 1)
    results: dict = dict(
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        machine=dict(
            cpus=os.cpu_count(), threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version(),
            malloc=dict((k, os.environ[k]) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if k in os.environ) or "glibc default",
        ),
        data=dict(canvas=args.canvas, train_canvases=args.train_canvases, test_canvases=args.test_canvases, items="1-4 per canvas, 20-56 px"),
        backbone=dict(variant=args.backbone, focal_windows=9, **backbone_args),
    )

    pretrained = None
    if args.pretrain_seconds > 0:
        pretrained = args.out / "classifier_window3.safetensors"
        results["pretraining"] = pretrain_classifier(args, backbone_args, pretrained)

    # ---- Mask R-CNN
    det = maskrcnn_focalnet(
        args.backbone, len(CANVAS_CLASSES), pretrained_backbone=pretrained, backbone_args=dict(backbone_args, drop_path_rate=0.1),
        fpn_channels=64, representation_size=256, mask_head_channels=64, **canvas_detector_args(args.canvas),
    )
    n_det = sum(p.numel() for p in det.parameters())
    fit = train_detector(det, train, time_limit_s=args.det_seconds, batch_size=args.batch_size, lr=args.det_lr, grad_clip=5.0, seed=args.seed, log_every=25)
    t0 = time.perf_counter()
    det_metrics = evaluate_detector(det, test)
    results["detection"] = dict(
        model="maskrcnn_focalnet", params_m=round(n_det / 1e6, 3), steps=fit.steps, train_seconds=round(fit.seconds, 1),
        images_seen=fit.steps * args.batch_size, loss_first=round(fit.first_loss, 4), loss_last=round(fit.last_loss, 4),
        dropped_boxes=fit.dropped_boxes, eval_seconds=round(time.perf_counter() - t0, 1),
        metrics={k: round(v, 4) for k, v in det_metrics.items()},
    )
    log.info("detection: %s", results["detection"])
    det_path = save_dense_checkpoint(det, args.out / "maskrcnn_canvas.pth", class_names=CANVAS_CLASSES, extra=results["detection"])

    # ---- UperNet
    seg = upernet_focalnet(
        args.backbone, len(CANVAS_CLASSES), pretrained_backbone=pretrained, backbone_args=dict(backbone_args, drop_path_rate=0.1),
        decoder_channels=64, aux_channels=32,
    )
    n_seg = sum(p.numel() for p in seg.parameters())
    fit = train_segmenter(seg, train, time_limit_s=args.seg_seconds, batch_size=args.batch_size, lr=args.seg_lr, grad_clip=5.0, seed=args.seed, log_every=25)
    t0 = time.perf_counter()
    seg_metrics = evaluate_segmenter(seg, test, class_names=CANVAS_CLASSES)
    results["segmentation"] = dict(
        model="upernet_focalnet", params_m=round(n_seg / 1e6, 3), steps=fit.steps, train_seconds=round(fit.seconds, 1),
        images_seen=fit.steps * args.batch_size, loss_first=round(fit.first_loss, 4), loss_last=round(fit.last_loss, 4),
        eval_seconds=round(time.perf_counter() - t0, 1),
        metrics=dict(miou=round(seg_metrics["miou"], 4), pixel_accuracy=round(seg_metrics["pixel_accuracy"], 4),
                     iou={k: round(v, 4) for k, v in seg_metrics["iou"].items()}),
    )
    log.info("segmentation: %s", results["segmentation"])
    seg_path = save_dense_checkpoint(seg, args.out / "upernet_canvas.pth", class_names=CANVAS_CLASSES, extra=results["segmentation"]["metrics"])

    # ---- pictures: held-out canvases through the same functions as `focalnet detect` / `focalnet segment`
    samples = []
    for i in range(args.samples):
        image, _ = test[i]
        samples.append(save_png((image * 255).round().to(torch.uint8), args.out / f"test_canvas_{i}.png"))
    detect_files(det_path, samples, output_dir=args.out, force=True)
    segment_files(seg_path, samples, output_dir=args.out, force=True)
    atomic_json(results, args.out / "results.json")
    print(json.dumps({k: results[k] for k in ("detection", "segmentation")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
