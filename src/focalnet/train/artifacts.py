"""What a run shows: the line per epoch, metrics.jsonl, summary.json, curves.png, confusion.png, TensorBoard.

Pictures use matplotlib's Agg backend (no display needed) and are written atomically like everything else.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from ..flops import try_count_macs  # the one counter; here for the run's summary and benchmarks/
from ..utils import atomic_write, format_duration
from .config import TrainingError

__all__ = [
    "display_name",
    "epoch_line",
    "write_metrics",
    "build_summary",
    "summary_lines",
    "plot_curves",
    "plot_confusion",
    "write_confusion_csv",
    "write_confusion",
    "per_class_table",
    "tensorboard_writer",
    "tensorboard_log",
    "try_count_macs",
]


def display_name(name: object) -> str:
    """A class name as text a plot, a table or a terminal can show: folder names that are not UTF-8 come
    from os.listdir with surrogate escapes (b'caf\\xff' -> 'caf\\udcff'), which fonts and encoders refuse; they
    are shown with U+FFFD where the byte was (the files keep the exact name)."""
    text = str(name)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if any(
        "\udc80" <= ch <= "\udcff" for ch in text) else text


def epoch_line(r: dict, epochs: int) -> str:
    """One line per epoch: what a user scans in a log."""
    parts = [f"epoch {r['epoch']:>3}/{epochs}", f"train loss {r['train_loss']:.4f}", f"lr {r['lr']:.2e}"]
    if "test_top1" in r:
        parts.append(f"test loss {r['test_loss']:.4f} top-1 {r['test_top1']:.2f}% top-5 {r['test_top5']:.2f}%")
    if "ema_test_top1" in r:
        parts.append(f"EMA top-1 {r['ema_test_top1']:.2f}%")
    parts.append(f"{r['train_img_per_s']:.0f} img/s")
    parts.append(f"epoch {format_duration(r['epoch_time'])}, total {format_duration(r['elapsed'])}")
    if r.get("bad_images"):
        parts.append(f"{r['bad_images']} unreadable images skipped")
    if r.get("replicas_identical") is False:
        parts.append("WARNING: the processes' weights differ")
    return " | ".join(parts)


def write_metrics(history: Sequence[dict], path: os.PathLike) -> None:
    """metrics.jsonl: one JSON object per epoch, rewritten whole (atomically) after each epoch."""
    with atomic_write(path, "w") as f:
        for r in history:
            f.write(json.dumps(r) + "\n")


def build_summary(
    *,
    history: Sequence[dict],
    final: dict,
    final_ema: Optional[dict],
    best: dict,
    info: Any,
    model_name: str,
    num_params: int,
    macs: Optional[int],
    img_size: int,
    train_time: float,
    wall_time: float,
    world_size: int,
    device: str,
    config: dict,
    stopped_early: Optional[str] = None,
    updates_per_epoch: Optional[int] = None,
    precision: str,
    precision_choice: str = "",
) -> dict:
    """summary.json: final and best test accuracy, how long, how fast, how big. `epochs` counts the epochs
    begun (the last of a --time-budget run may be partial), `epochs_trained` the passes over the data.
    `precision` is what the run computed in (--precision auto's choice, where `config` says auto), and
    `precision_choice` why auto chose it."""
    imgs = sum(r.get("train_img_per_s", 0) * r.get("train_time", 0) for r in history)
    t = sum(r.get("train_time", 0) for r in history)
    s = dict(
        model=model_name,
        arch=config.get("arch"),
        data=info.name,
        split=info.eval_split,
        num_train=info.num_train,
        num_test=final["images"],
        classes=list(info.class_names),
        epochs=len(history),
        epochs_planned=config.get("epochs"),
        updates=history[-1]["step"] if history else 0,
        final=dict(top1=final["top1"], top5=final["top5"], loss=final["loss"]),
        best=dict(best),
        per_class_top1=dict(zip(info.class_names, final["per_class"])),
        train_time_s=train_time,
        wall_time_s=wall_time,
        train_img_per_s=imgs / t if t > 0 else None,
        num_params=num_params,
        macs=macs,
        img_size=img_size,
        world_size=world_size,
        device=device,
        precision=precision,
    )
    if precision_choice:
        s["precision_choice"] = precision_choice
    if updates_per_epoch:
        s["epochs_trained"] = round(s["updates"] / updates_per_epoch, 2)
    if final_ema is not None:
        s["final_ema"] = dict(top1=final_ema["top1"], top5=final_ema["top5"], loss=final_ema["loss"])
        s["best_ema_top1"] = max((r["ema_test_top1"] for r in history if "ema_test_top1" in r), default=None)
    if "replicas_identical" in (history[-1] if history else {}):
        s["replicas_identical"] = all(r.get("replicas_identical", True) for r in history)
    bad = sum(r.get("bad_images", 0) for r in history)
    if bad:
        s["bad_images_skipped"] = bad
    if stopped_early:
        s["stopped_early"] = stopped_early
    return s


def summary_lines(s: dict) -> list[str]:
    lines = [
        f"final: test top-1 {s['final']['top1']:.2f}%, top-5 {s['final']['top5']:.2f}% on {s['num_test']} {s['split']} images "
        f"after {s.get('epochs_trained', s['epochs'])} epochs",
    ]
    if s["best"].get("epoch"):
        lines.append(f"best:  test top-1 {s['best']['top1']:.2f}% (epoch {s['best']['epoch']})")
    if "final_ema" in s:
        lines.append(f"EMA:   test top-1 {s['final_ema']['top1']:.2f}%")
    ips = s.get("train_img_per_s")
    lines.append(f"time:  {format_duration(s['train_time_s'])} training ({s['train_time_s']:.0f} s), "
                 f"{format_duration(s['wall_time_s'])} in all" + (f", {ips:.0f} training img/s" if ips else ""))
    return lines


def per_class_table(class_names: Sequence[str], per_class: Sequence[Optional[float]], confusion: Sequence[Sequence[int]]) -> str:
    class_names = [display_name(c) for c in class_names]
    width = max(len("class"), *(len(str(c)) for c in class_names))
    rows = [f"{'class':<{width}}  {'top-1':>7}  {'images':>6}  most confused with"]
    for i, (name, acc) in enumerate(zip(class_names, per_class)):
        row = list(confusion[i])
        n = sum(row)
        others = [(v, j) for j, v in enumerate(row) if j != i and v > 0]
        worst = max(others) if others else None
        conf = f"{class_names[worst[1]]} ({worst[0]})" if worst else "-"
        rows.append(f"{str(name):<{width}}  {('-' if acc is None else f'{acc:6.2f}%'):>7}  {n:>6}  {conf}")
    return "\n".join(rows)


def _save_figure(fig: Any, path: os.PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    with atomic_write(path) as f:
        f.write(buf.getvalue())


def _figure(**kw: Any) -> Any:
    # matplotlib's object API renders with Agg and touches no pyplot state: no display, no GUI backend,
    # nothing changed for a user who plots in a notebook
    from matplotlib.figure import Figure

    return Figure(**kw)


def plot_curves(history: Sequence[dict], path: os.PathLike) -> None:
    """Loss (train and test) and test accuracy (top-1, top-5, EMA) per epoch."""
    fig = _figure(figsize=(10, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    ep = [r["epoch"] for r in history]
    ax1.plot(ep, [r["train_loss"] for r in history], "o-", label="train")
    ev = [r for r in history if "test_loss" in r]
    if ev:
        ax1.plot([r["epoch"] for r in ev], [r["test_loss"] for r in ev], "o-", label="test")
        ax2.plot([r["epoch"] for r in ev], [r["test_top1"] for r in ev], "o-", label="top-1")
        ax2.plot([r["epoch"] for r in ev], [r["test_top5"] for r in ev], "o-", label="top-5")
    em = [r for r in history if "ema_test_top1" in r]
    if em:
        ax2.plot([r["epoch"] for r in em], [r["ema_test_top1"] for r in em], "o--", label="EMA top-1")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="test accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no test point yet (evaluations spaced): no legend to draw
            ax.legend()
    fig.tight_layout()
    _save_figure(fig, path)


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: os.PathLike,
                   title: str = "confusion matrix") -> None:
    """Row-normalised confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    import numpy as np

    cm = np.asarray(confusion, dtype=np.int64)
    class_names = [display_name(c) for c in class_names]
    title = display_name(title)
    n = len(class_names)
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, np.maximum(rows, 1))
    size = min(max(4.0, 0.55 * n + 2), 30.0)
    fig = _figure(figsize=(size + 1, size))
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 40:
        ax.set_xticks(range(n), [str(c) for c in class_names], rotation=45, ha="right")
        ax.set_yticks(range(n), [str(c) for c in class_names])
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if cm[i, j]:
                        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if frac[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    _save_figure(fig, path)


def write_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], folder: os.PathLike,
                    *, title: str) -> None:
    """confusion.png and confusion.csv in `folder`: what `focalnet train` and `focalnet eval --output` leave."""
    plot_confusion(confusion, class_names, Path(folder) / "confusion.png", title=title)
    write_confusion_csv(confusion, class_names, Path(folder) / "confusion.csv")


def write_confusion_csv(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: os.PathLike) -> None:
    import csv

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["true \\ predicted", *class_names])
    for name, row in zip(class_names, confusion):
        w.writerow([name, *row])
    with atomic_write(path) as f:  # the exact folder names, bytes that are not UTF-8 included
        f.write(buf.getvalue().encode("utf-8", "surrogateescape"))


def tensorboard_writer(path: os.PathLike) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise TrainingError(f"--tensorboard needs the tensorboard package: pip install tensorboard ({e})") from None
    return SummaryWriter(str(path))


def tensorboard_log(writer: Any, record: dict) -> None:
    step = record["epoch"]
    for key, value in record.items():
        if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
            group = "test" if key.startswith(("test_", "ema_test_")) else "train"
            writer.add_scalar(f"{group}/{key}", value, step)
    writer.flush()
