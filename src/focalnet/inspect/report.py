"""The report of a training run: `report.md` beside the run's files, with modulation pictures of test images.

`focalnet train` leaves summary.json, metrics.jsonl, curves.png, confusion.png and model.safetensors in its
output folder (and `focalnet eval --output RUN/eval` an eval.json). `write_run_report(run)` adds:

    pictures/<image>_modulation.png   gates, context levels and modulator |h(.)| of a few test images
                                      (one per class, the first test image of each), from the final weights
    pictures/kernels.png              the learned depthwise kernels of every focal level
    pictures/pictures.json            the layout of each panel and its value range
    report.md                         what was trained on what, how well (final/best, per epoch, per class),
                                      how fast, and the pictures, in one page

The pictures use the preprocessing stored with the weights (the data set's mean and std), the same
normalisation the model was trained with. Nothing in the run folder is overwritten unless asked.

A report observes a run, so it lives here with the pictures, not in `focalnet.train`: training never
imports it, and `focalnet report RUN` (which the main job runs after `focalnet train`) writes it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..errors import FocalNetError
from ..utils import atomic_write, format_duration

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["write_run_report", "RunReportError"]


class RunReportError(FocalNetError, ValueError):
    """The folder is not a finished training run (or lacks what the report needs); the message says which."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunReportError(f"cannot read {path}: {e}") from None


def _read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl (written by `focalnet.train`): one JSON object per epoch; none when the file is absent."""
    if not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise RunReportError(f"cannot read {path}: {e}") from None


def _test_images(summary: dict, count: int) -> list[tuple[str, torch.Tensor, int]]:
    """(name, (C, H, W) float image in [0, 1], label) for the first test image of the first `count` classes."""
    from ..datasets import load_digits, load_fashion_mnist

    data = summary.get("data")
    if data == "fashion-mnist":
        split = load_fashion_mnist(download=False)[0]["test"]
    elif data == "digits":
        split = load_digits()["test"]
    else:
        return _folder_images(summary, count)
    images, labels = split
    classes = summary["classes"]
    out = []
    for c in range(min(count, len(classes))):
        hits = (labels == c).nonzero()
        if len(hits):
            i = int(hits[0])
            name = f"test{i:05d}_{classes[c]}".replace("/", "-").replace(" ", "_")
            out.append((name, images[i].float() / 255.0, c))
    return out


def _folder_images(summary: dict, count: int) -> list[tuple[str, Path, int]]:
    """Image-folder data: the first file of each of the first `count` classes of the evaluation split."""
    cfg = summary.get("config") or {}
    root = Path(str(cfg.get("data", "")))
    split = root / summary.get("split", "val")
    if not split.is_dir():
        return []
    out = []
    for c, name in enumerate(summary["classes"][:count]):
        files = sorted(p for p in (split / name).glob("*") if p.is_file())
        if files:
            out.append((f"{name}_{files[0].stem}".replace("/", "-").replace(" ", "_"), files[0], c))
    return out


def _predict(model: torch.nn.Module, images: list, names: list[str]) -> list[tuple[str, float]]:
    from ..images import load_image
    from .predict import preprocessing_for, to_tensor

    pre = preprocessing_for(model)
    x = torch.stack([to_tensor(load_image(img, pre.mode), pre, resize=None) for img in images])
    model.eval()
    with torch.no_grad():
        p = model(x).softmax(-1)
    conf, idx = p.max(-1)
    return [(names[int(i)] if int(i) < len(names) else str(int(i)), float(c)) for i, c in zip(idx, conf)]


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_run_report(run_dir: PathLike, *, num_pictures: int = 4, overwrite: bool = False) -> Path:
    """Write RUN/report.md and RUN/pictures/ for a finished `focalnet train` run; returns report.md's path.

    num_pictures: test images to picture (one per class, 0 for none). Existing pictures or report are
    refused unless `overwrite`."""
    from ..factory import load_model
    from ..registry import describe_arch

    run = Path(run_dir)
    report_path = _check_run(run, num_pictures=num_pictures, overwrite=overwrite)
    summary = _read_json(run / "summary.json")
    history = _read_metrics(run / "metrics.jsonl")
    ev = _read_json(run / "eval" / "eval.json") if (run / "eval" / "eval.json").is_file() else None
    config: dict = {}
    if (run / "config.yaml").is_file():
        import yaml

        config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    summary["config"] = config

    model = load_model(run / "model.safetensors").eval()
    # the honest name, also for runs whose summary.json named the variant a resized model was built from
    summary["model"] = describe_arch(model)
    shown = _picture_items(model, summary, run / "pictures", num_pictures=num_pictures, overwrite=overwrite)
    lines = _overview(summary, ev) + _per_epoch(history) + _per_class(summary, ev) + _modulation(shown)
    if config:
        lines += ["## Configuration (config.yaml)", "", "```yaml", (run / "config.yaml").read_text().rstrip(), "```", ""]
    with atomic_write(report_path) as f:  # file and class names that are not UTF-8 keep their exact bytes
        f.write("\n".join(lines).encode("utf-8", "surrogateescape"))
    return report_path


def _check_run(run: Path, *, num_pictures: int, overwrite: bool) -> Path:
    """report.md's path, once `run` is a finished run and nothing would be overwritten unasked."""
    if not run.is_dir():
        raise RunReportError(f"{run} is not a folder; pass the output folder of `focalnet train`")
    missing = [n for n in ("summary.json", "model.safetensors") if not (run / n).is_file()]
    if missing:
        raise RunReportError(
            f"{run} lacks {', '.join(missing)}: it is not a finished `focalnet train` run "
            f"(an interrupted run continues with `focalnet train --resume {run}`)"
        )
    report_path = run / "report.md"
    pictures = run / "pictures"
    if not overwrite and (report_path.exists() or (num_pictures and pictures.exists())):
        raise FileExistsError(f"{report_path if report_path.exists() else pictures} exists; pass overwrite=True (CLI: --force)")
    return report_path


def _picture_items(model: torch.nn.Module, summary: dict, pictures: Path, *, num_pictures: int,
                   overwrite: bool) -> list[str]:
    """Pictures of one test image per class (and of the kernels), as report.md items."""
    from .pictures import write_pictures

    samples = _test_images(summary, num_pictures) if num_pictures > 0 else []
    if not samples:
        return []
    names, images, labels = zip(*samples)
    preds = _predict(model, list(images), summary["classes"])
    written = write_pictures(model, list(images), pictures, names=list(names), overwrite=overwrite,
                             title=summary.get("model"))
    shown = []
    for name, label, (pred, conf), path in zip(names, labels, preds, written):
        shown.append(f"**{name}** (true: {summary['classes'][label]}; predicted: {pred}, {conf:.0%})\n\n"
                     f"![{name}](pictures/{path.name})")
    if (pictures / "kernels.png").is_file():
        shown.append("**Depthwise kernels** of every focal level (and their composition, the receptive "
                     "field each level adds)\n\n![kernels](pictures/kernels.png)")
    return shown


def _overview(s: dict, ev: Optional[dict]) -> list[str]:
    """Title, what was trained on what, the final / best / EMA accuracy, how long, and `focalnet eval`'s number."""
    arch = s.get("arch") or {}
    arch_text = ", ".join(f"{k} {v}" for k, v in arch.items()) or "as registered"
    macs = f"{s['macs'] / 1e6:.1f} M MACs at {s.get('img_size')} px" if s.get("macs") else "MACs not measured"
    lines = [
        f"# {s['model']} on {s['data']}",
        "",
        f"{s['model']} ({arch_text}): {s['num_params'] / 1e6:.2f} M parameters, {macs}. "
        f"Trained on {s['num_train']} images for {s.get('epochs_trained', s['epochs'])} epochs on {s.get('world_size', 1)} process(es) "
        f"({s.get('device', 'cpu')}); tested on {s['num_test']} {s['split']} images.",
        "",
        _md_table(["", "top-1", "top-5"], [
            ["final weights", f"**{s['final']['top1']:.2f} %**", f"{s['final']['top5']:.2f} %"],
            [f"best epoch ({s['best'].get('epoch', '-')})", f"{s['best']['top1']:.2f} %", f"{s['best'].get('top5', float('nan')):.2f} %"],
        ] + ([["EMA weights", f"{s['final_ema']['top1']:.2f} %", f"{s['final_ema']['top5']:.2f} %"]] if "final_ema" in s else [])),
        "",
        f"Training time {format_duration(s['train_time_s'])} ({s['train_time_s']:.0f} s, evaluation included), "
        f"{format_duration(s['wall_time_s'])} in all"
        + (f", {s['train_img_per_s']:.0f} training images/s." if s.get("train_img_per_s") else ".")
        + (f" {s['stopped_early']}." if s.get("stopped_early") else ""),
        "",
    ]
    if ev is not None:
        lines += [f"`focalnet eval` of model.safetensors (eval/eval.json): top-1 {ev['top1']:.2f} %, top-5 {ev['top5']:.2f} % "
                  f"on {ev['images']} images.", ""]
    return lines


def _per_epoch(history: list[dict]) -> list[str]:
    if not history:
        return []
    return ["## Per epoch", "", _md_table(
        ["epoch", "train loss", "lr", "test loss", "test top-1", "img/s", "elapsed"],
        [[r["epoch"], f"{r['train_loss']:.4f}", f"{r['lr']:.2e}", f"{r.get('test_loss', float('nan')):.4f}",
          f"{r.get('test_top1', float('nan')):.2f} %", f"{r.get('train_img_per_s', 0):.0f}", format_duration(r.get("elapsed", 0))]
         for r in history]), "", "![curves](curves.png)", ""]


def _per_class(s: dict, ev: Optional[dict]) -> list[str]:
    """Test top-1 per class, and (with `focalnet eval`'s confusion matrix) the class each is most confused with."""
    per_class = s.get("per_class_top1") or {}
    if not per_class:
        return []
    confused = {}
    if ev is not None and len(ev.get("confusion", [])) == len(s["classes"]):
        for i, row in enumerate(ev["confusion"]):
            off = [(n, j) for j, n in enumerate(row) if j != i]
            n, j = max(off) if off else (0, i)
            confused[s["classes"][i]] = f"{s['classes'][j]} ({n})" if n else "-"
    return ["## Per class", "", _md_table(
        ["class", "test top-1", "most confused with"],
        [[c, "-" if v is None else f"{v:.1f} %", confused.get(c, "")] for c, v in per_class.items()]),
        "", "![confusion](confusion.png)", ""]


def _modulation(shown: list[str]) -> list[str]:
    if not shown:
        return []
    lines = ["## What the modulation does", "",
             "For each image: the gates of every focal level and of the global context, the aggregated "
             "context and the modulator magnitude |h(.)| of the last block of every stage "
             "(`focalnet visualize`; layout in pictures/pictures.json).", ""]
    for item in shown:
        lines += [item, ""]
    return lines
