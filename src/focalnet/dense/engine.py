"""Training and evaluation loops for the detectors and segmenters: plain functions, no argparse.

Optimiser as the authors' dense configs: AdamW, no weight decay on norms, biases and layer scales (1-D
tensors; the authors' mmdet configs exclude 'norm'), a linear warm-up then a cosine decay over the run, which
ends after `steps` steps or `time_limit_s` seconds, whichever comes first (the schedule follows the larger of
the two fractions, so a time-limited run still decays to zero). Metrics come from the field's libraries:
COCO-style box and mask mAP from torchmetrics' MeanAveragePrecision (pycocotools backend) and the mean IoU
from torchmetrics' MulticlassJaccardIndex.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .data import check_target, collate_detection, collate_segmentation, sanitize_target

__all__ = [
    "TrainResult",
    "param_groups",
    "train_detector",
    "evaluate_detector",
    "train_segmenter",
    "evaluate_segmenter",
]

log = logging.getLogger("focalnet")


@dataclass
class TrainResult:
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)  # {'step', 'lr', 'loss', 'loss_<part>'...} every log_every
    dropped_boxes: int = 0  # degenerate boxes removed from the targets (see data.sanitize_target)
    first_loss: float = float("nan")  # mean loss over the first log window
    last_loss: float = float("nan")  # mean loss over the last log window


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weights of 2 or more dimensions; none on norms, biases and layer scales."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def _forever(dataset: Dataset, batch_size: int, collate: Callable, seed: int, num_workers: int) -> Iterator:
    g = torch.Generator().manual_seed(seed)
    while True:
        loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) >= batch_size, collate_fn=collate,
            generator=g, num_workers=num_workers,
        )
        yield from loader


def _lr_factor(progress: float, warmup: float) -> float:
    if progress < warmup:
        return 0.001 + (1 - 0.001) * progress / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-8, 1 - warmup))))


def _loop(
    model: nn.Module,
    batches: Iterator,
    step_fn: Callable[[object], tuple[torch.Tensor, dict]],
    *,
    steps: Optional[int],
    time_limit_s: Optional[float],
    lr: float,
    weight_decay: float,
    warmup: float,
    grad_clip: Optional[float],
    log_every: int,
) -> TrainResult:
    if steps is None and time_limit_s is None:
        raise ValueError("give steps, time_limit_s or both: the run needs an end")
    opt = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999))
    model.train()
    result = TrainResult(steps=0, seconds=0.0)
    window: list[dict] = []
    start = time.perf_counter()
    step = 0
    while True:
        elapsed = time.perf_counter() - start
        progress = max(step / steps if steps else 0.0, elapsed / time_limit_s if time_limit_s else 0.0)
        if progress >= 1.0:
            break
        factor = _lr_factor(progress, warmup)
        for group in opt.param_groups:
            group["lr"] = lr * factor
        loss, parts = step_fn(next(batches))
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the loss became {loss.item()} at step {step} ({parts}); lower the learning rate (now {lr * factor:.2e}) "
                "or enable gradient clipping"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        step += 1
        window.append(dict(loss=loss.item(), **parts))
        if step % log_every == 0:
            mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            result.history.append(dict(step=step, lr=lr * factor, seconds=time.perf_counter() - start, **mean))
            log.info("step %d  lr %.2e  %s", step, lr * factor, "  ".join(f"{k} {v:.4f}" for k, v in mean.items()))
            window = []
    if window:
        mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
        result.history.append(dict(step=step, lr=lr * factor, seconds=time.perf_counter() - start, **mean))
    result.steps = step
    result.seconds = time.perf_counter() - start
    if result.history:
        result.first_loss = result.history[0]["loss"]
        result.last_loss = result.history[-1]["loss"]
    model.eval()
    return result


# --------------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------------


def train_detector(
    model: nn.Module,
    dataset: Dataset,
    *,
    steps: Optional[int] = None,
    time_limit_s: Optional[float] = None,
    batch_size: int = 4,
    lr: float = 1e-4,
    weight_decay: float = 0.05,
    warmup: float = 0.05,
    grad_clip: Optional[float] = None,
    log_every: int = 20,
    seed: int = 0,
    num_workers: int = 0,
) -> TrainResult:
    """Train a torchvision detector on (image, target) pairs; lr 1e-4 and weight decay 0.05 are the authors'
    Mask R-CNN settings. Targets are checked (clear errors on wrong shapes or labels) and degenerate boxes are
    dropped and counted (`TrainResult.dropped_boxes`); images without objects are trained on as background."""
    num_classes = _num_classes(model)
    result_dropped = [0]

    def step_fn(batch) -> tuple[torch.Tensor, dict]:
        images, targets = batch
        clean = []
        for image, target in zip(images, targets):
            check_target(target, num_classes, tuple(image.shape[-2:]))
            target, dropped = sanitize_target(target, tuple(image.shape[-2:]))
            result_dropped[0] += dropped
            clean.append({k: v for k, v in target.items() if k in ("boxes", "labels", "masks")})
        losses = model(images, clean)
        return sum(losses.values()), {k: v.item() for k, v in losses.items()}

    torch.manual_seed(seed)
    result = _loop(
        model, _forever(dataset, batch_size, collate_detection, seed, num_workers), step_fn, steps=steps,
        time_limit_s=time_limit_s, lr=lr, weight_decay=weight_decay, warmup=warmup, grad_clip=grad_clip,
        log_every=log_every,
    )
    result.dropped_boxes = result_dropped[0]
    if result.dropped_boxes:
        log.warning("dropped %d degenerate boxes (zero width or height) from the training targets", result.dropped_boxes)
    return result


def _num_classes(model: nn.Module) -> int:
    config = getattr(model, "dense_config", None)
    if config is not None:
        return int(config["builder_args"]["num_classes"])
    heads = getattr(model, "roi_heads", None)
    if heads is not None:
        return int(heads.box_predictor.cls_score.out_features)
    return int(model.head.classification_head.num_classes)


@torch.no_grad()
def evaluate_detector(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 8, masks: Optional[bool] = None
) -> dict[str, float]:
    """COCO-style mAP on `dataset`: map (IoU .50:.95), map_50, map_75, map_small/medium/large, mar_100, and the
    same for masks (`segm_` prefix) when the model predicts masks. Canvases without objects count as images
    where any detection is a false positive."""
    from torchmetrics.detection import MeanAveragePrecision

    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_detection)
    with_masks = masks if masks is not None else hasattr(getattr(model, "roi_heads", None), "mask_head") and model.roi_heads.has_mask()
    metric = MeanAveragePrecision(iou_type=["bbox", "segm"] if with_masks else "bbox", backend="pycocotools")
    for images, targets in loader:
        preds = model(images)
        p_out, t_out = [], []
        for pred, target in zip(preds, targets):
            p = dict(boxes=pred["boxes"], scores=pred["scores"], labels=pred["labels"])
            t = dict(boxes=target["boxes"], labels=target["labels"])
            if with_masks:
                p["masks"] = pred["masks"][:, 0] > 0.5  # (N, 1, H, W) probabilities -> (N, H, W) bool
                t["masks"] = target["masks"].bool()
            p_out.append(p)
            t_out.append(t)
        metric.update(p_out, t_out)
    raw = metric.compute()
    out = {}
    for key, value in raw.items():
        if key == "classes" or value.numel() != 1 or key.endswith("_per_class"):
            continue
        out[key.replace("bbox_", "")] = float(value)  # box metrics unprefixed, mask metrics as segm_*
    return out


# --------------------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------------------


def train_segmenter(
    model: nn.Module,
    dataset: Dataset,
    *,
    steps: Optional[int] = None,
    time_limit_s: Optional[float] = None,
    batch_size: int = 8,
    lr: float = 6e-5,
    weight_decay: float = 0.01,
    warmup: float = 0.05,
    aux_weight: float = 0.4,
    ignore_index: int = 255,
    grad_clip: Optional[float] = None,
    log_every: int = 20,
    seed: int = 0,
    num_workers: int = 0,
) -> TrainResult:
    """Train a segmenter ({'out', 'aux'} logits) with per-pixel cross entropy, the auxiliary head's loss weighted
    by `aux_weight` (0.4 in the authors' UperNet configs; their lr 6e-5, weight decay 0.01). Pixels labelled
    `ignore_index` do not count. BatchNorm in the decoder needs batch_size >= 2."""
    if batch_size < 2:
        raise ValueError("the UperNet decoder has BatchNorm on 1x1 pooled maps: train with batch_size >= 2")
    num_classes = int(model.num_classes)

    def step_fn(batch) -> tuple[torch.Tensor, dict]:
        images, labels = batch
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
        if bad.any():
            raise ValueError(
                f"class map values must be in 0..{num_classes - 1} (or {ignore_index} to ignore a pixel); found "
                f"{labels[bad].unique()[:8].tolist()}: build the model with num_classes covering every label"
            )
        out = model(images)
        parts = {"loss_seg": F.cross_entropy(out["out"], labels, ignore_index=ignore_index)}
        if "aux" in out and aux_weight:
            parts["loss_aux"] = aux_weight * F.cross_entropy(out["aux"], labels, ignore_index=ignore_index)
        return sum(parts.values()), {k: v.item() for k, v in parts.items()}

    torch.manual_seed(seed)
    return _loop(
        model, _forever(dataset, batch_size, collate_segmentation, seed, num_workers), step_fn, steps=steps,
        time_limit_s=time_limit_s, lr=lr, weight_decay=weight_decay, warmup=warmup, grad_clip=grad_clip,
        log_every=log_every,
    )


@torch.no_grad()
def evaluate_segmenter(
    model: nn.Module, dataset: Dataset, *, batch_size: int = 8, ignore_index: int = 255,
    class_names: Optional[Sequence[str]] = None,
) -> dict:
    """Mean IoU, the IoU of each class and the pixel accuracy, accumulated over the whole data set.

    As mmseg: the mean runs over the classes whose union is not empty (in the labels or the predictions);
    every label of the class map is a class, the background included."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    model.eval()
    k = int(model.num_classes)
    iou = MulticlassJaccardIndex(num_classes=k, average="none", ignore_index=ignore_index)
    acc = MulticlassAccuracy(num_classes=k, average="micro", ignore_index=ignore_index)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_segmentation)
    present = torch.zeros(k, dtype=torch.bool)
    for images, labels in loader:
        pred = model(images)["out"].argmax(1)
        iou.update(pred, labels)
        acc.update(pred, labels)
        valid = labels != ignore_index
        present |= torch.bincount(labels[valid], minlength=k)[:k] > 0
        present |= torch.bincount(pred[valid], minlength=k)[:k] > 0
    per_class = iou.compute()
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    return dict(
        miou=float(per_class[present].mean()) if present.any() else float("nan"),
        pixel_accuracy=float(acc.compute()),
        iou={names[i]: float(per_class[i]) for i in range(k) if present[i]},
    )
