"""A whole training run from one configuration: `train(TrainConfig(...))`, behind `focalnet train`.

    from focalnet.trainer import TrainConfig, train
    summary = train(TrainConfig(data="fashion-mnist", arch=dict(embed_dim=32, depths=[2, 2, 2]),
                                time_budget=600, output="runs/fmnist"))

What a run leaves in its output folder (only process 0 writes):

    config.yaml          the resolved configuration (every recipe value filled in); `-c` takes it back
    metrics.jsonl        one JSON line per epoch (train loss, lr, test loss / top-1 / top-5, EMA, img/s, time)
    summary.json         final and best test top-1/top-5, epochs, wall time, images/s, parameters, MACs
    curves.png           loss and accuracy per epoch
    confusion.png        confusion matrix of the final model on the test split (confusion.csv: the counts)
    model.safetensors    final weights with architecture and class names (focalnet.load_model reads it)
    checkpoints/last.pth full training state after the last finished epoch (--resume continues from it)
    checkpoints/best.pth weights of the epoch with the best test top-1
    tensorboard/         event files, with --tensorboard

Exactness of --resume: before every epoch the global random generators, the sampler and the data
loader's worker seeds are reseeded from (seed, epoch, rank), and every state that carries across epochs
(weights, optimizer, scheduler, GradScaler, EMA, step counter, best score, history) is in the
checkpoint, so a run killed after epoch k and resumed computes the same epochs k+1.. as one that was not
(bit-identical on the CPU with --deterministic).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from . import engine
from .checkpoint import CheckpointError, atomic_json, atomic_write, read_checkpoint
from .data import build_datasets, build_loader, describe_data, epoch_seed, set_loader_epoch
from .recipes import Recipe, get_recipe, recipe_fields, scaled_lr

__all__ = ["TrainConfig", "train", "evaluate_checkpoint", "RUNTIME_FIELDS", "TrainingError"]

log = logging.getLogger("focalnet")


class TrainingError(ValueError):
    """A configuration or a situation the user can fix; the message says how."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=dict(help=help, **kw))
    return field(default=default, metadata=dict(help=help, **kw))


@dataclass
class TrainConfig:
    """Everything a run needs; each field is a `focalnet train` flag (underscores become dashes) and a key
    of its YAML config. Recipe fields left at None take the recipe's value."""

    # data
    data: str = _f("fashion-mnist", "'fashion-mnist', 'digits', or a folder with train/CLASS/*.jpg and val/CLASS/*.jpg")
    data_dir: Optional[str] = _f(None, "where Fashion-MNIST's IDX files are (default: the usual places, then download)")
    download: bool = _f(True, "download Fashion-MNIST with torchvision when it is not on disk")
    limit_train: Optional[int] = _f(None, "use only N training images (quick trials)")
    limit_eval: Optional[int] = _f(None, "evaluate on only the first N test images (quick trials)")
    skip_bad_images: bool = _f(False, "skip unreadable images (counted and reported) instead of stopping at the first")
    workers: int = _f(0, "data-loading worker processes per training process (0: load in the training process)")
    # model
    model: Optional[str] = _f(None, "registered variant (default focalnet_tiny_srf; with --pretrained and no --model: the file's architecture)")
    arch: dict = _f({}, "architecture overrides, KEY=VALUE, e.g. embed_dim=32 depths=[2,2,2] patch_size=2")
    pretrained: Optional[str] = _f(None, "start from these weights (any checkpoint layout: ours, the authors', timm, Hugging Face)")
    reset_head: bool = _f(False, "with --pretrained: a fresh classifier for the data's classes")
    in_chans: Optional[int] = _f(None, "input channels (default: the data's; 1 for Fashion-MNIST and digits)")
    # recipe
    recipe: str = _f("auto", "named recipe: 'imagenet' (the paper's), 'small' (28 px / 8 px data); auto: small for "
                             "Fashion-MNIST and digits, imagenet for folders")
    epochs: Optional[int] = _f(None, "epochs (default: the recipe's, or what fits --time-budget)", recipe=True)
    batch_size: Optional[int] = _f(None, "images per process and step", recipe=True)
    opt: Optional[str] = _f(None, "optimizer, any of timm's (adamw)", recipe=True)
    lr: Optional[float] = _f(None, "learning rate per 1024 images (scaled by the global batch / 1024)", recipe=True)
    warmup_lr: Optional[float] = _f(None, "warm-up start lr per 1024 images", recipe=True)
    min_lr: Optional[float] = _f(None, "final lr of the cosine per 1024 images", recipe=True)
    weight_decay: Optional[float] = _f(None, "AdamW weight decay (on weights; not on norms, biases, layer scales)", recipe=True)
    warmup_epochs: Optional[float] = _f(None, "linear warm-up epochs", recipe=True)
    clip_grad: Optional[float] = _f(None, "max gradient norm (0: no clipping)", recipe=True)
    smoothing: Optional[float] = _f(None, "label smoothing", recipe=True)
    drop_path: Optional[float] = _f(None, "stochastic depth (default: the recipe's, else the variant's)", recipe=True)
    img_size: Optional[int] = _f(None, "training / evaluation size (default: 224 for folders, native for tensors)", recipe=True)
    train_crop: Optional[str] = _f(None, "'random_resized' or 'pad'", recipe=True)
    pad: Optional[int] = _f(None, "padding of the 'pad' crop (default: img_size // 14; 0: no random shift)", recipe=True)
    hflip: Optional[float] = _f(None, "horizontal flip probability", recipe=True)
    auto_augment: Optional[str] = _f(None, "timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1 ('none': off)", recipe=True)
    color_jitter: Optional[float] = _f(None, "color jitter", recipe=True)
    reprob: Optional[float] = _f(None, "random erasing probability", recipe=True)
    remode: Optional[str] = _f(None, "random erasing mode", recipe=True)
    mixup: Optional[float] = _f(None, "Mixup alpha (0: off)", recipe=True)
    cutmix: Optional[float] = _f(None, "CutMix alpha (0: off)", recipe=True)
    mixup_prob: Optional[float] = _f(None, "probability of Mixup/CutMix per batch", recipe=True)
    mixup_switch_prob: Optional[float] = _f(None, "probability of CutMix instead of Mixup", recipe=True)
    crop_pct: Optional[float] = _f(None, "evaluation center-crop ratio (0.875: resize to 256/224 of the crop)", recipe=True)
    interpolation: Optional[str] = _f(None, "resize interpolation", recipe=True)
    accum_steps: int = _f(1, "gradient accumulation: batches per optimizer step")
    amp: str = _f("none", "autocast: none, bf16 (CPU and GPU) or fp16 (GPU, with a GradScaler)")
    ema: bool = _f(False, "keep an exponential moving average of the weights (timm's ModelEmaV3) and evaluate it")
    ema_decay: float = _f(0.9998, "EMA decay")
    # run
    output: str = _f("runs/focalnet", "output folder")
    resume: Optional[str] = _f(None, "continue the run in this folder (or from this checkpoints/last.pth)")
    overwrite: bool = _f(False, "start over in an --output folder that already holds a run")
    seed: int = _f(0, "random seed")
    deterministic: bool = _f(False, "deterministic algorithms (bit-exact --resume on the CPU)")
    device: str = _f("auto", "auto, cpu, cuda, cuda:N")
    time_budget: Optional[float] = _f(None, "seconds of training: the optimizer steps are chosen to fit (measured on "
                                            "the first steps, re-planned after the first epoch; the last epoch may "
                                            "be partial) and the run stops early if it would overrun")
    eval_every: int = _f(1, "evaluate every N epochs (and after the last)")
    tensorboard: bool = _f(False, "write TensorBoard logs to OUTPUT/tensorboard")
    progress: str = _f("auto", "progress bars: auto (when stderr is a terminal), on, off")
    compile: bool = _f(False, "torch.compile the model")
    threads: Optional[int] = _f(None, "intra-op CPU threads per process (default: PyTorch's)")

    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in cls.fields()}
        norm = {k.replace("-", "_"): v for k, v in d.items()}
        unknown = sorted(set(norm) - names)
        if unknown:
            import difflib

            hints = [f"{u} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(u, names, 1)) else u for u in unknown]
            raise TrainingError(f"unknown configuration key(s): {', '.join(hints)}; `focalnet train --help` lists them")
        return cls(**norm)

    def to_dict(self) -> dict:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in self.fields()}


# fields that may differ when a run is resumed: they do not change what is computed
RUNTIME_FIELDS = frozenset({
    "workers", "output", "resume", "overwrite", "device", "tensorboard", "progress", "data_dir", "download", "threads",
})


# --------------------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------------------


def _is_tensor_data(data: str) -> bool:
    return data.lower().replace("_", "-") in ("fashion-mnist", "fashionmnist", "fmnist", "digits", "sklearn-digits")


def resolve_recipe(cfg: TrainConfig) -> Recipe:
    name = cfg.recipe
    if name == "auto":
        name = "small" if _is_tensor_data(cfg.data) else "imagenet"
    overrides = {k: getattr(cfg, k) for k in recipe_fields() if hasattr(cfg, k) and getattr(cfg, k) is not None}
    if overrides.get("auto_augment") in ("none", "None", ""):
        overrides["auto_augment"] = None
        recipe = get_recipe(name, **overrides).replace(auto_augment=None)
    else:
        recipe = get_recipe(name, **overrides)
    if recipe.clip_grad == 0:
        recipe = recipe.replace(clip_grad=None)
    return recipe


def _resolved_config(cfg: TrainConfig, recipe: Recipe, epochs: int) -> dict:
    d = cfg.to_dict()
    for k in recipe_fields():
        if k in d:
            d[k] = getattr(recipe, k)
    d["epochs"] = epochs
    d["recipe"] = recipe.name
    d["resume"] = None
    d["overwrite"] = False
    return d


def _check_resume_config(cfg: TrainConfig, saved: dict) -> TrainConfig:
    """The saved configuration, with the runtime fields the user gave; any other change is an error."""
    defaults = TrainConfig()
    conflicts = []
    for f in TrainConfig.fields():
        if f.name in RUNTIME_FIELDS or f.name not in saved:
            continue
        mine = getattr(cfg, f.name)
        if mine != getattr(defaults, f.name) and mine != saved[f.name]:
            conflicts.append(f"--{f.name.replace('_', '-')} {mine!r} (the run has {saved[f.name]!r})")
    if conflicts:
        raise TrainingError(
            "a resumed run keeps its configuration, so that it computes what the uninterrupted run would have; "
            f"these flags differ: {'; '.join(conflicts)}. Start a new run (another --output) to change them"
        )
    merged = dict(saved)
    for name in RUNTIME_FIELDS:
        mine = getattr(cfg, name)
        if mine != getattr(defaults, name):
            merged[name] = mine
    return TrainConfig.from_dict(merged)


# --------------------------------------------------------------------------------------------------------
# Model, optimizer, schedule
# --------------------------------------------------------------------------------------------------------


def _check_classes(ckpt_classes: int, ckpt_names: Optional[list], path: str, info: Any, reset_head: bool) -> None:
    n = info.num_classes
    if reset_head or ckpt_classes == 0:
        return
    if ckpt_classes != n and not (ckpt_classes == 21842 and n == 1000):
        raise TrainingError(
            f"the checkpoint {path} has a {ckpt_classes}-class head but the data ({info.name}) has {n} classes "
            f"({', '.join(info.class_names[:5])}{', ...' if n > 5 else ''}): pass --reset-head to fine-tune a fresh "
            f"{n}-class head, or use data with the checkpoint's classes"
        )
    if ckpt_names and ckpt_classes == n and list(ckpt_names) != list(info.class_names):
        raise TrainingError(
            f"the checkpoint {path} was trained on classes {ckpt_names[:5]}... but the data's classes are "
            f"{info.class_names[:5]}... (names or order differ): pass --reset-head to train a fresh head"
        )


def _fit_stage_lists(name: str, arch: dict) -> dict:
    """With fewer (or more) stages in arch['depths'] than the variant has, take the variant's per-stage
    focal levels and windows for the stages that remain (repeating the last one), unless given."""
    from .registry import get_spec, list_models

    if "depths" not in arch or name not in list_models():
        return arch
    spec_arch = get_spec(name).arch
    n = len(arch["depths"])
    for key in ("focal_levels", "focal_windows"):
        if key not in arch and isinstance(spec_arch.get(key), (list, tuple)) and len(spec_arch[key]) != n:
            values = list(spec_arch[key])
            arch[key] = (values + [values[-1]] * n)[:n]
    return arch


def build_model(cfg: TrainConfig, recipe: Recipe, info: Any) -> nn.Module:
    """The FocalNet of a configuration: a registered variant resized by cfg.arch, optionally fine-tuned
    from --pretrained (any layout) with a fresh head."""
    from .factory import create_model, load_model
    from .registry import get_spec

    in_chans = cfg.in_chans or info.in_chans
    if cfg.in_chans is not None and cfg.in_chans != info.in_chans:
        raise TrainingError(f"--in-chans {cfg.in_chans} but the data has {info.in_chans} channels")
    arch = _fit_stage_lists(cfg.model or "focalnet_tiny_srf", dict(cfg.arch or {}))
    drop_path = recipe.drop_path
    if cfg.pretrained:
        ckpt = read_checkpoint(cfg.pretrained)
        _check_classes(ckpt.num_classes, ckpt.class_names, cfg.pretrained, info, cfg.reset_head)
        if cfg.model:
            if drop_path is None:
                drop_path = get_spec(cfg.model).drop_path_rate
            return create_model(cfg.model, pretrained=cfg.pretrained, num_classes=info.num_classes, in_chans=in_chans,
                                drop_path_rate=drop_path, reset_head=cfg.reset_head, **arch)
        if drop_path is not None:
            arch["drop_path_rate"] = drop_path
        return load_model(cfg.pretrained, num_classes=info.num_classes, in_chans=in_chans, reset_head=cfg.reset_head, **arch)
    name = cfg.model or "focalnet_tiny_srf"
    if drop_path is None:
        drop_path = get_spec(name).drop_path_rate
    return create_model(name, num_classes=info.num_classes, in_chans=in_chans, drop_path_rate=drop_path, **arch)


def build_optimizer(model: nn.Module, recipe: Recipe, lr: float) -> torch.optim.Optimizer:
    """timm's optimizer factory; weight decay on weights only (timm puts every 1-D parameter and every
    name in model.no_weight_decay() in a group without decay)."""
    from timm.optim import create_optimizer_v2

    kwargs: dict = {}
    if recipe.opt.lower().endswith("adamw") or recipe.opt.lower().endswith("adam"):
        kwargs = dict(betas=tuple(recipe.betas), eps=recipe.eps)
    return create_optimizer_v2(model, opt=recipe.opt, lr=lr, weight_decay=recipe.weight_decay,
                               filter_bias_and_bn=True, **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, *, epochs: int, updates_per_epoch: int,
                    global_batch: int, total_updates: Optional[int] = None) -> Any:
    """timm's per-step cosine schedule with a linear warm-up prefix (the authors' setup). The cosine ends
    after `total_updates` optimizer steps (default: `epochs` whole epochs; a --time-budget run may end
    inside its last epoch)."""
    from timm.scheduler import CosineLRScheduler

    total = max(1, total_updates if total_updates is not None else epochs * updates_per_epoch)
    warmup = min(int(round(recipe.warmup_epochs * updates_per_epoch)), total - 1)
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, total - warmup),
        lr_min=scaled_lr(recipe.min_lr, global_batch),
        warmup_t=warmup,
        warmup_lr_init=scaled_lr(recipe.warmup_lr, global_batch),
        warmup_prefix=True,
        cycle_limit=1,
        t_in_epochs=False,
    )


def build_criterion(recipe: Recipe) -> nn.Module:
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if recipe.mixup > 0 or recipe.cutmix > 0:
        return SoftTargetCrossEntropy()  # Mixup produces smoothed soft targets itself
    if recipe.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=recipe.smoothing)
    return nn.CrossEntropyLoss()


def build_mixup(recipe: Recipe, num_classes: int) -> Optional[Any]:
    if recipe.mixup <= 0 and recipe.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                 switch_prob=recipe.mixup_switch_prob, mode="batch", label_smoothing=recipe.smoothing,
                 num_classes=num_classes)


# --------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------


def _progress_on(setting: str) -> bool:
    if setting == "auto":
        return sys.stderr.isatty()
    return setting in ("on", "true", "1", "yes")


def _say(env: engine.DistEnv, msg: str) -> None:
    if env.is_main:
        print(msg, flush=True)


def _write_yaml(obj: dict, path: Path) -> None:
    import yaml

    with atomic_write(path, "w") as f:
        yaml.safe_dump(obj, f, sort_keys=False)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if values else 0.0


def _time_steps(model: nn.Module, loader: Any, eval_loader: Any, criterion: nn.Module, recipe: Recipe, lr: float,
                cfg: TrainConfig, device: torch.device, mixup_fn: Any, n_steps: int = 12, n_warm: int = 3) -> tuple[float, float]:
    """Seconds per training batch and per evaluation batch, measured on a copy of the model (the run itself
    starts from the untouched model). Used to choose the epochs that fit --time-budget."""
    probe = copy.deepcopy(model)
    opt = build_optimizer(engine.unwrap_model(probe), recipe, lr)
    probe.train()
    times = []
    it = iter(loader)
    for i in range(n_steps + n_warm):
        t0 = time.perf_counter()
        try:
            x, y, _ = next(it)
        except StopIteration:
            break
        if x is None:
            continue
        x, y = x.to(device), y.to(device)
        if mixup_fn is not None and len(x) % 2 == 0:
            x, y = mixup_fn(x, y)
        with engine.autocast(device, cfg.amp):
            loss = criterion(probe(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= n_warm:
            times.append(time.perf_counter() - t0)
    del it
    eval_times = []
    probe.eval()
    with torch.no_grad():
        for i, (x, _, _) in enumerate(eval_loader):
            if i >= n_warm + 4:
                break
            t0 = time.perf_counter()
            if x is not None:
                with engine.autocast(device, cfg.amp):
                    probe(x.to(device))
            if i >= 1:
                eval_times.append(time.perf_counter() - t0)
    return _median(times), _median(eval_times)


def train(cfg: TrainConfig, *, model: Optional[nn.Module] = None) -> dict:
    """Run a training as configured and return its summary (also written to OUTPUT/summary.json).

    model: any classifier to train instead of building a FocalNet from cfg (used by the benchmarks to
    train timm's Swin and ConvNeXt with the same recipe); it must output cfg's number of classes.
    """
    from . import report

    t_start = time.time()
    env = engine.init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, env, model, report, t_start)
    finally:
        engine.cleanup_distributed()


def _train(cfg: TrainConfig, env: engine.DistEnv, given_model: Optional[nn.Module], report: Any, t_start: float) -> dict:
    state = None
    if cfg.resume:
        state = engine.load_training_checkpoint(cfg.resume)
        cfg = _check_resume_config(cfg, state["config"])
        out = Path(state["path"]).parent.parent
    else:
        out = Path(cfg.output)
        if (out / "checkpoints" / "last.pth").exists() and not cfg.overwrite:
            raise TrainingError(
                f"{out} already holds a run (checkpoints/last.pth): continue it with --resume {out}, start over "
                "with --overwrite, or choose another --output"
            )
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    engine.seed_everything(cfg.seed)
    recipe = resolve_recipe(cfg)
    if cfg.accum_steps < 1:
        raise TrainingError(f"--accum-steps must be >= 1, got {cfg.accum_steps}")
    engine.autocast(env.device, cfg.amp)  # validates --amp for the device before any work

    train_set, eval_set, info = build_datasets(
        cfg.data, recipe, img_size=recipe.img_size, data_dir=cfg.data_dir, download=cfg.download,
        in_chans=cfg.in_chans, limit_train=cfg.limit_train, limit_eval=cfg.limit_eval,
    )
    img_size = recipe.img_size or info.img_size
    if recipe.img_size is None:
        recipe = recipe.replace(img_size=img_size)
    for note in info.notes:
        _say(env, f"note: {note}")
    if state is not None and list(state.get("class_names") or []) != list(info.class_names):
        raise TrainingError(f"the run in {out} was trained on other classes than {cfg.data} has now")

    # model
    if given_model is not None:
        model = given_model
    elif state is not None:
        from .factory import load_model

        model = load_model(state["path"])
    else:
        model = build_model(cfg, recipe, info)
    core = model
    num_params = sum(p.numel() for p in core.parameters())
    model.to(env.device)
    if env.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    train_model = torch.compile(model) if cfg.compile else model

    # data loaders, optimizer, schedule
    global_batch = recipe.batch_size * env.world_size * cfg.accum_steps
    lr = scaled_lr(recipe.lr, global_batch)
    mixup_fn = build_mixup(recipe, info.num_classes)
    criterion = build_criterion(recipe)
    train_loader = build_loader(train_set, batch_size=recipe.batch_size, training=True, workers=cfg.workers,
                                seed=cfg.seed, rank=env.rank, world_size=env.world_size,
                                pin_memory=env.device.type == "cuda")
    eval_loader = build_loader(eval_set, batch_size=max(recipe.batch_size, 64) * 2, training=False, workers=cfg.workers,
                               rank=env.rank, world_size=env.world_size, pin_memory=env.device.type == "cuda")
    if len(train_loader) == 0:
        raise TrainingError(
            f"{len(train_set)} training images per process cannot fill one batch of {recipe.batch_size}: lower --batch-size"
        )
    updates_per_epoch = math.ceil(len(train_loader) / cfg.accum_steps)
    optimizer = build_optimizer(core, recipe, lr)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(core, decay=cfg.ema_decay, use_warmup=True)

    # how many epochs
    planned_note = ""
    planned = False
    calib_time = 0.0
    total_updates: Optional[int] = None  # optimizer steps of the whole run (whole epochs unless time-budgeted)
    if state is not None:
        epochs = int(state["config"]["epochs"])
        total_updates = state.get("total_updates")
    elif cfg.time_budget and cfg.epochs is None:
        t0 = time.perf_counter()
        set_loader_epoch(train_loader, 0, cfg.seed, env.rank)
        t_batch, t_eval = _time_steps(core, train_loader, eval_loader, criterion, recipe, lr, cfg,
                                      env.device, mixup_fn)
        calib_time = time.perf_counter() - t0
        evals = (2 if ema is not None else 1) / max(cfg.eval_every, 1)
        times = torch.tensor([t_batch * cfg.accum_steps, evals * len(eval_loader) * t_eval], dtype=torch.float64)
        if env.distributed:
            torch.distributed.all_reduce(times, op=torch.distributed.ReduceOp.MAX)
        update_s, eval_s = (float(v) * 1.04 for v in times)  # a margin for checkpoints, plots and drift
        total_updates = engine.updates_that_fit(cfg.time_budget - calib_time, update_s=update_s, eval_s=eval_s,
                                                updates_per_epoch=updates_per_epoch)
        epochs = math.ceil(total_updates / updates_per_epoch)
        planned = True
        planned_note = (f"time budget {cfg.time_budget:.0f} s: measured {t_batch * 1e3:.0f} ms per batch of "
                        f"{recipe.batch_size} ({recipe.batch_size / max(t_batch, 1e-9):.0f} img/s) and about "
                        f"{eval_s:.0f} s per evaluation -> {total_updates} optimizer steps "
                        f"({total_updates / updates_per_epoch:.2f} epochs)")
    else:
        epochs = recipe.epochs
    if total_updates is None:
        total_updates = epochs * updates_per_epoch
    recipe = recipe.replace(epochs=epochs)
    scheduler = build_scheduler(optimizer, recipe, epochs=epochs, updates_per_epoch=updates_per_epoch,
                                global_batch=global_batch, total_updates=total_updates)
    resolved = _resolved_config(cfg, recipe, epochs)
    resolved["output"] = str(out)

    # state carried across epochs
    start_epoch, global_step, history = 0, 0, []
    best = {"top1": -1.0, "epoch": None}
    if state is not None:
        engine.unwrap_model(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        engine.set_rng_state(state["rng"])
        start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
        history = list(state.get("history") or [])
        best = dict(state.get("best") or best)
        train_time_before = float(state.get("train_time", 0.0))
    else:
        train_time_before = 0.0

    ckpt_dir = out / "checkpoints"
    progress = _progress_on(cfg.progress) and env.is_main
    tb = None
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_yaml(resolved, out / "config.yaml")
        if cfg.tensorboard:
            tb = report.tensorboard_writer(out / "tensorboard")
        if state is not None:  # the checkpoint's history is the truth: lines after it belong to lost epochs
            report.write_metrics(history, out / "metrics.jsonl")
    arch_name = getattr(core, "variant", None) or type(core).__name__
    macs = report.try_count_macs(core, info.in_chans, img_size)
    _say(env, f"focalnet train: {arch_name} ({num_params / 1e6:.2f} M parameters"
              + (f", {macs / 1e6:.1f} M MACs at {img_size} px" if macs else "")
              + f") on {info.name} ({info.num_train} train / {info.num_eval} {info.eval_split} images, "
              f"{info.num_classes} classes), recipe {recipe.name}, {env.world_size} process(es) on {env.device}, "
              f"global batch {global_batch}, lr {lr:.2e}, output {out}")
    if planned_note:
        _say(env, planned_note)
    if state is not None:
        _say(env, f"resumed from {state['path']} after epoch {start_epoch} (step {global_step})")

    loop_start = time.perf_counter() - calib_time
    update_times: list[float] = []  # seconds per optimizer step, per epoch
    epoch_overheads: list[float] = []  # seconds of each epoch outside its training steps (evaluation, ...)
    last_ckpt = str(ckpt_dir / "last.pth") if state is not None else None
    final_eval, final_ema_eval = None, None
    stopped_early = None
    epoch = start_epoch - 1
    while epoch + 1 < epochs:  # `epochs` may be re-planned after the first epoch (--time-budget)
        epoch += 1
        t_epoch = time.perf_counter()
        set_loader_epoch(train_loader, epoch, cfg.seed, env.rank)
        engine.seed_everything(epoch_seed(cfg.seed, epoch, env.rank))
        stats = engine.train_one_epoch(
            train_model, train_loader, optimizer, criterion, device=env.device, epoch=epoch, num_epochs=epochs,
            scheduler=scheduler, global_step=global_step, mixup_fn=mixup_fn, amp=cfg.amp, scaler=scaler,
            accum_steps=cfg.accum_steps, clip_grad=recipe.clip_grad, ema=ema, skip_bad_images=cfg.skip_bad_images,
            progress=progress, last_good_checkpoint=last_ckpt, max_updates=total_updates,
        )
        global_step = stats["global_step"]
        record: dict = dict(epoch=epoch + 1, step=global_step, train_loss=stats["loss"], lr=stats["lr"],
                            train_img_per_s=stats["img_per_s"], train_time=stats["time"])
        if stats["bad_images"]:
            record["bad_images"] = stats["bad_images"]
        last_epoch = epoch + 1 == epochs
        if (epoch + 1) % max(cfg.eval_every, 1) == 0 or last_epoch:
            ev = engine.evaluate(engine.unwrap_model(model), eval_loader, device=env.device, num_classes=info.num_classes,
                                 amp=cfg.amp, skip_bad_images=cfg.skip_bad_images, progress=progress, desc="test")
            final_eval = ev
            record.update(test_loss=ev["loss"], test_top1=ev["top1"], test_top5=ev["top5"], eval_time=ev["time"])
            if ema is not None:
                eev = engine.evaluate(ema.module, eval_loader, device=env.device, num_classes=info.num_classes,
                                      amp=cfg.amp, skip_bad_images=cfg.skip_bad_images, progress=progress, desc="test (EMA)")
                final_ema_eval = eev
                record.update(ema_test_loss=eev["loss"], ema_test_top1=eev["top1"], ema_test_top5=eev["top5"])
        if env.distributed:
            record["replicas_identical"] = engine.replicas_identical(model)
        epoch_time = time.perf_counter() - t_epoch
        update_times.append(stats["time"] / max(stats["steps"], 1))
        epoch_overheads.append(max(epoch_time - stats["time"], 0.0))
        record["epoch_time"] = epoch_time
        record["elapsed"] = train_time_before + (time.perf_counter() - loop_start)
        if planned and epoch == start_epoch and not last_epoch:
            # re-plan from the first epoch's real timings (the probe's few steps can be off by tens of %)
            spent = torch.tensor([record["elapsed"], update_times[-1], epoch_overheads[-1]], dtype=torch.float64)
            if env.distributed:
                torch.distributed.all_reduce(spent, op=torch.distributed.ReduceOp.MAX)
            more = engine.updates_that_fit(cfg.time_budget - float(spent[0]), update_s=float(spent[1]) * 1.02,
                                           eval_s=float(spent[2]) * 1.02, updates_per_epoch=updates_per_epoch, minimum=0)
            if global_step + more != total_updates:
                _say(env, f"time budget: the first epoch took {epoch_time:.0f} s -> {global_step + more} optimizer "
                          f"steps ({(global_step + more) / updates_per_epoch:.2f} epochs) instead of {total_updates}")
                total_updates = global_step + more
                epochs = epoch + 1 + math.ceil(more / updates_per_epoch)
                recipe = recipe.replace(epochs=epochs)
                resolved["epochs"] = epochs
                scheduler = build_scheduler(optimizer, recipe, epochs=epochs, updates_per_epoch=updates_per_epoch,
                                            global_batch=global_batch, total_updates=total_updates)
                scheduler.step_update(num_updates=global_step)
                if env.is_main:
                    _write_yaml(resolved, out / "config.yaml")
                last_epoch = epoch + 1 == epochs
        history.append(record)
        is_best = "test_top1" in record and record["test_top1"] > best["top1"]
        if is_best:
            best = {"top1": record["test_top1"], "top5": record["test_top5"], "epoch": epoch + 1}

        if env.is_main:
            ckpt_state = dict(
                format=engine.TRAIN_CHECKPOINT_FORMAT,
                model=engine.unwrap_model(model).state_dict(),
                arch=getattr(core, "arch", None),
                variant=getattr(core, "variant", None),
                class_names=list(info.class_names),
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict() if scaler is not None else None,
                ema=ema.state_dict() if ema is not None else None,
                epoch=epoch + 1,
                global_step=global_step,
                total_updates=total_updates,
                best=best,
                history=history,
                train_time=record["elapsed"],
                rng=engine.get_rng_state(),
                config=resolved,
                data=info.to_dict(),
            )
            engine.save_training_checkpoint(ckpt_state, ckpt_dir / "last.pth")
            last_ckpt = str(ckpt_dir / "last.pth")
            if is_best:
                weights = {k: ckpt_state[k] for k in ("format", "model", "arch", "variant", "class_names", "epoch",
                                                      "config", "data")}
                weights["format"] = "focalnet-weights-v1"
                weights["metrics"] = record
                engine.save_training_checkpoint(weights, ckpt_dir / "best.pth")
            report.write_metrics(history, out / "metrics.jsonl")
            report.plot_curves(history, out / "curves.png")
            if tb is not None:
                report.tensorboard_log(tb, record)
            _say(env, report.epoch_line(record, epochs))
        if env.distributed:
            torch.distributed.barrier()

        if cfg.time_budget and not last_epoch:
            # the typical epoch (the first one is slower: allocations, warm-up); 2% tolerance for drift, since
            # cutting the cosine short costs more accuracy than a few seconds over the budget
            next_epoch = (min(total_updates - global_step, updates_per_epoch) * _median(update_times)
                          + _median(epoch_overheads))
            if record["elapsed"] + next_epoch > cfg.time_budget * 1.02:
                stopped_early = (f"stopped after epoch {epoch + 1} of {epochs}: another epoch (about {next_epoch:.0f} s) "
                                 f"would overrun the time budget of {cfg.time_budget:.0f} s")
                _say(env, "warning: " + stopped_early)
                if final_eval is None or "test_top1" not in record:
                    final_eval = engine.evaluate(engine.unwrap_model(model), eval_loader, device=env.device,
                                                 num_classes=info.num_classes, amp=cfg.amp,
                                                 skip_bad_images=cfg.skip_bad_images)
                break

    if final_eval is None:  # resumed a finished run: evaluate once more for the report
        final_eval = engine.evaluate(engine.unwrap_model(model), eval_loader, device=env.device,
                                     num_classes=info.num_classes, amp=cfg.amp, skip_bad_images=cfg.skip_bad_images)
    train_time = history[-1]["elapsed"] if history else 0.0
    summary = report.build_summary(
        history=history, final=final_eval, final_ema=final_ema_eval, best=best, info=info, model_name=arch_name,
        num_params=num_params, macs=macs, img_size=img_size, train_time=train_time, wall_time=time.time() - t_start,
        world_size=env.world_size, device=str(env.device), config=resolved, stopped_early=stopped_early,
        updates_per_epoch=updates_per_epoch,
    )
    if env.is_main:
        atomic_json(summary, out / "summary.json")
        report.plot_confusion(final_eval["confusion"], info.class_names, out / "confusion.png",
                              title=f"{arch_name} on {info.name} ({info.eval_split}): top-1 {final_eval['top1']:.2f}%")
        report.write_confusion_csv(final_eval["confusion"], info.class_names, out / "confusion.csv")
        if getattr(core, "arch", None) is not None and hasattr(core, "variant"):
            from .checkpoint import save_model

            # the data set's normalisation travels with the weights, so that predict/visualize feed them alike
            pre = dict(mean=list(info.mean), std=list(info.std), img_size=info.img_size,
                       crop_pct=1.0 if info.img_size else None)
            save_model(engine.unwrap_model(model), out / "model.safetensors", class_names=list(info.class_names),
                       preprocessing=pre)
        if tb is not None:
            tb.close()
        for line in report.summary_lines(summary):
            _say(env, line)
    return summary


# --------------------------------------------------------------------------------------------------------
# Evaluation of a checkpoint
# --------------------------------------------------------------------------------------------------------


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
) -> dict:
    """Top-1 / top-5 / per-class accuracy and the confusion matrix of a checkpoint (any layout) on the
    evaluation split of `data`. A training checkpoint of ours brings its normalisation and image size;
    otherwise the authors' evaluation transform is used (bicubic resize to img_size / crop_pct, center
    crop; crop_pct defaults to the variant's 0.875). A checkpoint with the authors' 21842-class
    ImageNet-22K head evaluated on 1000-class data uses the reordered ImageNet-1K rows of its head."""
    from . import report
    from .factory import create_model, load_model
    from .registry import get_spec, list_models

    env = engine.init_distributed(device)
    try:
        state = _training_extras(checkpoint)
        saved_cfg = (state or {}).get("config") or {}
        saved_data = (state or {}).get("data") or {}
        ckpt = read_checkpoint(checkpoint)
        in_chans = ckpt.in_chans
        mean = saved_data.get("mean") if saved_data.get("name") == describe_name(data) else None
        std = saved_data.get("std") if mean is not None else None
        info, _ = describe_data(data, data_dir=data_dir, download=download, in_chans=in_chans, mean=mean, std=std,
                                need_train=False)
        _check_classes(ckpt.num_classes, ckpt.class_names, checkpoint, info, reset_head=False)
        name = model_name or ckpt.variant
        recipe_name = "small" if info.kind == "tensor" else "imagenet"
        size = img_size or saved_cfg.get("img_size") or (info.img_size if info.kind == "tensor" else 224)
        default_crop = get_spec(name).crop_pct if name in list_models() else 0.875
        recipe = get_recipe(recipe_name).replace(
            img_size=size, crop_pct=crop_pct if crop_pct is not None else (saved_cfg.get("crop_pct") or default_crop),
            interpolation=interpolation or saved_cfg.get("interpolation") or "bicubic",
        )
        _, eval_set, info = build_datasets(data, recipe, img_size=size, data_dir=data_dir, download=download,
                                           in_chans=in_chans, limit_eval=limit, mean=mean, std=std, need_train=False)
        if model_name:
            model = create_model(model_name, pretrained=checkpoint, num_classes=info.num_classes, in_chans=in_chans)
        else:
            model = load_model(checkpoint, num_classes=info.num_classes)
        weights = "model"
        if use_ema:
            if not state or state.get("ema") is None:
                raise TrainingError(f"{checkpoint} holds no EMA weights (train with --ema)")
            ema_sd = {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
            model.load_state_dict(ema_sd)
            weights = "EMA"
        model.to(env.device)
        loader = build_loader(eval_set, batch_size=batch_size, training=False, workers=workers, rank=env.rank,
                              world_size=env.world_size, pin_memory=env.device.type == "cuda")
        result = engine.evaluate(model, loader, device=env.device, num_classes=info.num_classes, amp=amp,
                                 skip_bad_images=skip_bad_images, progress=_progress_on(progress) and env.is_main)
        result.update(checkpoint=str(checkpoint), data=info.name, kind=info.kind, split=info.eval_split, class_names=info.class_names,
                      model=name or "custom", weights=weights, img_size=size, crop_pct=recipe.crop_pct,
                      interpolation=recipe.interpolation, num_params=sum(p.numel() for p in model.parameters()),
                      head="ImageNet-22K head sliced to ImageNet-1K" if ckpt.num_classes == 21842 and info.num_classes == 1000 else "as trained")
        if output and env.is_main:
            out = Path(output)
            out.mkdir(parents=True, exist_ok=True)
            atomic_json({k: v for k, v in result.items()}, out / "eval.json")
            report.plot_confusion(result["confusion"], info.class_names, out / "confusion.png",
                                  title=f"{name or 'model'} on {info.name} ({info.eval_split}): top-1 {result['top1']:.2f}%")
            report.write_confusion_csv(result["confusion"], info.class_names, out / "confusion.csv")
        return result
    finally:
        engine.cleanup_distributed()


def _training_extras(checkpoint: str) -> Optional[dict]:
    """The config, data description and EMA weights of our training checkpoints (None for other files)."""
    from .checkpoint import safe_torch_load

    p = Path(checkpoint)
    if not p.is_file() or p.suffix not in (".pth", ".pt", ".bin"):
        return None
    obj = safe_torch_load(p)
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith("focalnet-"):
        return obj
    return None


def describe_name(data: str) -> str:
    key = data.lower().replace("_", "-")
    if key in ("fashion-mnist", "fashionmnist", "fmnist"):
        return "fashion-mnist"
    if key in ("digits", "sklearn-digits"):
        return "digits"
    return Path(data).name


def config_field_types() -> dict[str, Any]:
    """Resolved type hints of TrainConfig's fields (for the CLI)."""
    return typing.get_type_hints(TrainConfig)


def load_yaml_config(path: str) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise TrainingError(f"config file {path} does not exist")
    try:
        d = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise TrainingError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise TrainingError(f"{path} must hold a mapping of flags to values, got {type(d).__name__}")
    return d


def summary_json(summary: dict) -> str:
    return json.dumps(summary, indent=2)
