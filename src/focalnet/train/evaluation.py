"""Evaluating a checkpoint of any layout on a data set: `evaluate_checkpoint`, behind `focalnet eval`.

    r = evaluate_checkpoint("runs/fmnist/model.safetensors", "fashion-mnist")
    r["top1"], r["top5"], r["per_class"], r["confusion"]

The checkpoint file is read once: its weights, and for our training checkpoints the configuration, the data
set's normalisation and the EMA weights, all come from that one read.
"""
from __future__ import annotations

import math

from pathlib import Path
from typing import Optional

import torch.nn as nn

from ..checkpoints import Checkpoint, read_checkpoint
from ..datasets import builtin_dataset
from ..registry import describe_arch
from ..utils import atomic_json, check_output, make_output_dir
from . import artifacts
from .build import check_classes
from .config import TrainingError, progress_on
from .data import DataInfo, build_datasets, build_loader, describe_data
from .distributed import cleanup_distributed, init_distributed
from .loop import evaluate
from .recipes import Recipe, get_recipe

__all__ = ["evaluate_checkpoint"]

# the files our training checkpoints are written as (weights-only files carry no training state)
_TRAINING_SUFFIXES = (".pth", ".pt", ".bin")


def evaluate_checkpoint(
    checkpoint: str,
    data: str,
    *,
    model_name: Optional[str] = None,
    data_dir: Optional[str] = None,
    download: bool = True,
    img_size: Optional[int] = None,
    crop_pct: Optional[float] = None,
    interpolation: Optional[str] = None,
    batch_size: int = 256,
    workers: int = 0,
    amp: str = "none",
    device: str = "auto",
    use_ema: bool = False,
    limit: Optional[int] = None,
    skip_bad_images: bool = False,
    output: Optional[str] = None,
    progress: str = "auto",
    overwrite: bool = False,
) -> dict:
    """Top-1 / top-5 / per-class accuracy and the confusion matrix of a checkpoint (any layout) on the
    evaluation split of `data`. A training checkpoint of ours brings its normalisation and image size;
    otherwise the authors' evaluation transform is used (bicubic resize to img_size / crop_pct, center
    crop; crop_pct defaults to the variant's 0.875). A checkpoint with the authors' 21842-class
    ImageNet-22K head evaluated on 1000-class data uses the reordered ImageNet-1K rows of its head."""
    _check_eval_args(limit=limit, batch_size=batch_size, workers=workers, img_size=img_size, crop_pct=crop_pct)
    if output:  # an earlier evaluation's eval.json is replaced only when asked (overwrite=True, CLI --force)
        check_output(Path(output) / "eval.json", overwrite=overwrite)
    env = init_distributed(device)
    try:
        ckpt = read_checkpoint(checkpoint)
        state = _training_state(ckpt)
        saved_cfg, saved_data = state.get("config") or {}, state.get("data") or {}
        pre = ckpt.preprocessing or {}  # the input the weights were trained with (every file a run writes says)
        mean = saved_data.get("mean") if saved_data.get("name") == _data_name(data) else None
        std = saved_data.get("std") if mean is not None else None
        if pre.get("mean") and len(pre["mean"]) == ckpt.in_chans:
            mean, std = pre["mean"], pre["std"]
        saved_cfg = {**saved_cfg, **{k: pre[k] for k in ("img_size", "crop_pct", "interpolation") if pre.get(k)}}
        info, _ = describe_data(data, data_dir=data_dir, download=download, in_chans=ckpt.in_chans, mean=mean,
                                std=std, need_train=False)
        check_classes(ckpt.num_classes, ckpt.class_names, checkpoint, info, reset_head=False)
        name = model_name or ckpt.variant
        recipe = _eval_recipe(info, name, saved_cfg, img_size=img_size, crop_pct=crop_pct, interpolation=interpolation)
        _, eval_set, info = build_datasets(data, recipe, img_size=recipe.img_size, data_dir=data_dir, download=download,
                                           in_chans=ckpt.in_chans, limit_eval=limit, mean=mean, std=std,
                                           need_train=False)
        model, weights = _checkpoint_model(ckpt, state, model_name=model_name, num_classes=info.num_classes,
                                           use_ema=use_ema, where=checkpoint)
        model.to(env.device)
        loader = build_loader(eval_set, batch_size=batch_size, training=False, workers=workers, rank=env.rank,
                              world_size=env.world_size, pin_memory=env.device.type == "cuda")
        result = evaluate(model, loader, device=env.device, num_classes=info.num_classes, precision=amp,
                          skip_bad_images=skip_bad_images, progress=progress_on(progress) and env.is_main)
        if not math.isfinite(result["loss"]):  # NaN outputs would be counted as class 0: a silent 1/classes top-1
            raise TrainingError(f"{checkpoint}: the model's outputs are not finite (NaN or infinite) on the evaluation "
                                "images, so no accuracy is reported; its weights are damaged (`focalnet verify` says more)")
        sliced = ckpt.num_classes == 21842 and info.num_classes == 1000
        result.update(checkpoint=str(checkpoint), data=info.name, kind=info.kind, split=info.eval_split,
                      class_names=info.class_names, model=model_name or describe_arch(model, ckpt.variant), weights=weights, img_size=recipe.img_size,
                      crop_pct=recipe.crop_pct, interpolation=recipe.interpolation,
                      num_params=sum(p.numel() for p in model.parameters()),
                      head="ImageNet-22K head sliced to ImageNet-1K" if sliced else "as trained")
        if output and env.is_main:
            _write_eval_files(result, info, result["model"], Path(output))
        return result
    finally:
        cleanup_distributed()


def _check_eval_args(*, limit: Optional[int], batch_size: int, workers: int, img_size: Optional[int],
                     crop_pct: Optional[float]) -> None:
    """Refuse nonsense before any work (`--limit 0` would report 'top-1 0.00%' of no image)."""
    rules = [("--limit", limit, 1), ("--batch-size", batch_size, 1), ("--workers", workers, 0), ("--img-size", img_size, 1)]
    for flag, value, least in rules:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise TrainingError(f"{flag} must be an integer >= {least}, got {value!r}")
    if crop_pct is not None and not 0 < crop_pct <= 1:
        raise TrainingError(f"--crop-pct must be > 0 and <= 1, got {crop_pct!r}")


def _training_state(ckpt: Checkpoint) -> dict:
    """The rest of our training checkpoints beside the weights (config, data description, EMA weights);
    empty for any other file."""
    path = Path(ckpt.path or "")
    ours = str(ckpt.extra.get("format", "")).startswith("focalnet-")
    if ours and path.is_file() and path.suffix in _TRAINING_SUFFIXES:
        return ckpt.extra
    return {}


def _data_name(data: str) -> str:
    """The name a run records for `data` (DataInfo.name): the in-memory data set's, or the folder's."""
    return builtin_dataset(data) or Path(data).name


def _eval_recipe(info: DataInfo, name: Optional[str], saved_cfg: dict, *, img_size: Optional[int],
                 crop_pct: Optional[float], interpolation: Optional[str]) -> Recipe:
    """The evaluation transform (focalnet.preprocess.resolve_record): what was asked, else what the run was
    trained with, else the variant's crop and interpolation; the size of an in-memory data set is its own."""
    from ..preprocess import DEFAULT_IMG_SIZE, resolve_record
    from ..registry import get_spec, list_models

    size = img_size or saved_cfg.get("img_size") or (info.img_size if info.kind == "tensor" else DEFAULT_IMG_SIZE)
    saved = {k: saved_cfg.get(k) or None for k in ("crop_pct", "interpolation")}  # an empty value says nothing
    pre = resolve_record(spec=get_spec(name) if name in list_models() else None, saved=saved,
                         img_size=size, crop_pct=crop_pct, interpolation=interpolation)
    return get_recipe("small" if info.kind == "tensor" else "imagenet").replace(
        img_size=pre["img_size"], crop_pct=pre["crop_pct"], interpolation=pre["interpolation"])


def _checkpoint_model(ckpt: Checkpoint, state: dict, *, model_name: Optional[str], num_classes: int,
                      use_ema: bool, where: str) -> tuple[nn.Module, str]:
    """The checkpoint's model (the registered `model_name`, or the architecture the file says), with its
    weights or its EMA weights: (model, 'model' or 'EMA')."""
    from ..factory import create_model, load_model

    if model_name:
        model = create_model(model_name, pretrained=ckpt, num_classes=num_classes, in_chans=ckpt.in_chans)
    else:
        model = load_model(ckpt, num_classes=num_classes)
    if not use_ema:
        return model, "model"
    if state.get("ema") is None:
        raise TrainingError(f"{where} holds no EMA weights (train with --ema)")
    model.load_state_dict({k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")})
    return model, "EMA"


def _write_eval_files(result: dict, info: DataInfo, name: Optional[str], out: Path) -> None:
    """eval.json, confusion.png and confusion.csv (an OSError is an OutputError naming the path)."""
    make_output_dir(out, holds="eval.json, confusion.png and confusion.csv")
    atomic_json(dict(result), out / "eval.json")
    title = f"{name or 'model'} on {info.name} ({info.eval_split}): top-1 {result['top1']:.2f}%"
    artifacts.write_confusion(result["confusion"], info.class_names, out, title=title)
