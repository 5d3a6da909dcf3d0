"""A whole training run from one configuration: `train(TrainConfig(...))`, behind `focalnet train`.

    from focalnet.train import TrainConfig, train
    summary = train(TrainConfig(data="fashion-mnist", arch=dict(embed_dim=32, depths=[2, 2, 2]),
                                time_budget=600, output="runs/fmnist"))

`train()` is a list of named phases, each a function of its own:

    configure   -> Setup     resume or start, determinism, the recipe
    load_data   -> Data      data sets and loaders
    build_parts -> Parts     model (DDP, compile), loss, Mixup, optimizer, GradScaler, EMA
    plan_run    -> Plan      epochs and optimizer steps (measured for --time-budget), schedule, config.yaml
    begin       -> Run       a resumed run's state restored, the run announced
    run_epochs               train, evaluate, re-plan, checkpoint, epoch after epoch
    finish      -> summary   summary.json, confusion matrix, model.safetensors

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

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from . import artifacts, budget
from .build import build_criterion, build_mixup, input_plan, model_for_run, read_pretrained, run_preprocessing
from .optim import MAX_WARMUP_WARNING, build_optimizer, build_scheduler, run_lr, warmup_steps
from .config import (RESUME_CHANGES, TrainConfig, TrainingError, check_resume_config, given_fields, progress_on,
                     resolve_recipe, resolved_config, write_yaml)
from .data import DataInfo, build_datasets, build_loader, epoch_seed, set_loader_epoch
from .distributed import DistEnv, all_reduce, cleanup_distributed, init_distributed, replicas_identical, unwrap_model
from .loop import NonFiniteLossError, autocast, evaluate, train_one_epoch
from .recipes import Recipe, fit_to_data
from .rundir import RunLock, claim_run_dir
from .state import (TRAIN_CHECKPOINT_FORMAT, best_weights, get_rng_state, load_training_checkpoint,
                    restore_training_state, save_training_checkpoint, seed_everything)
from ..datasets import builtin_dataset
from ..registry import describe_arch
from ..utils import atomic_json

__all__ = ["train", "configure", "load_data", "build_parts", "compile_training", "plan_run", "begin", "run_epochs",
           "finish", "Setup", "Data", "Parts", "Plan", "Progress", "Run"]


# --------------------------------------------------------------------------------------------------------
# What each phase hands on
# --------------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What the run is and where it writes. `recipe` is the current one: the data fills in its image size,
    the plan its epochs."""

    cfg: TrainConfig
    env: DistEnv
    out: Path
    recipe: Recipe
    resume: Optional[dict] = None  # the training checkpoint a resumed run continues from
    changes: list = field(default_factory=list)  # what --resume was asked to change (announced in begin)
    changed: frozenset = frozenset()  # the names of those fields
    lock: Optional[RunLock] = None  # process 0's hold on the output folder
    pretrained: Optional[Any] = None  # the --pretrained Checkpoint, read once


@dataclass
class Data:
    info: DataInfo
    train_loader: Any
    eval_loader: Any
    updates_per_epoch: int  # optimizer steps per pass over the training data


@dataclass
class Parts:
    """The model and what trains it."""

    core: nn.Module  # the model itself: what is saved, evaluated and counted
    model: nn.Module  # core, wrapped in DistributedDataParallel under torchrun
    train_model: nn.Module  # model, through torch.compile where --compile says (compile_training)
    criterion: nn.Module
    mixup_fn: Optional[Any]
    optimizer: torch.optim.Optimizer
    scaler: Optional[torch.amp.GradScaler]
    ema: Optional[nn.Module]
    global_batch: int
    lr: float


@dataclass
class Plan:
    epochs: int  # epochs begun; the last of a --time-budget run may be partial
    total_updates: int  # optimizer steps of the whole run: where the cosine ends
    scheduler: Any
    resolved: dict  # config.yaml
    planned: bool = False  # chosen to fit --time-budget (and so re-planned after the first epoch)
    note: str = ""
    probe_s: float = 0.0  # seconds spent measuring the steps, counted as training time


@dataclass
class Progress:
    """Everything that changes from epoch to epoch."""

    start_epoch: int = 0
    global_step: int = 0
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"top1": -1.0, "epoch": None})
    train_time_before: float = 0.0  # training seconds of the epochs before a resume
    last_checkpoint: Optional[str] = None
    final_eval: Optional[dict] = None
    final_ema_eval: Optional[dict] = None
    stopped_early: Optional[str] = None
    warnings: list = field(default_factory=list)  # said during the run, repeated at its end and in summary.json
    update_times: list = field(default_factory=list)  # seconds per optimizer step, per epoch
    overheads: list = field(default_factory=list)  # seconds of each epoch outside its training steps (evaluation, ...)
    loop_start: float = 0.0
    curves_at: float = float("-inf")  # perf_counter() of the last curves.png (redrawn every CURVES_EVERY_S)


@dataclass
class Run:
    setup: Setup
    data: Data
    parts: Parts
    plan: Plan
    progress: Progress
    arch_name: str
    macs: Optional[int]
    tensorboard: Any = None


# --------------------------------------------------------------------------------------------------------
# The phases
# --------------------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, *, model: Optional[nn.Module] = None) -> dict:
    """Run a training as configured and return its summary (also written to OUTPUT/summary.json).

    model: any classifier to train instead of building a FocalNet from cfg (used by the benchmarks to
    train timm's Swin and ConvNeXt with the same recipe); it must output cfg's number of classes.
    """
    t_start = time.time()
    env = init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    setup = None
    try:
        setup = configure(cfg, env)
        data = load_data(setup)
        parts = build_parts(setup, data, model=model)
        plan = plan_run(setup, data, parts)
        run = begin(setup, data, parts, plan)
        run_epochs(run)
        return finish(run, t_start=t_start)
    finally:
        if setup is not None and setup.lock is not None:
            setup.lock.release()
        cleanup_distributed()


def configure(cfg: TrainConfig, env: DistEnv) -> Setup:
    """The run's folder and recipe: a resumed run takes its saved configuration back; a new run refuses a
    folder that already holds one."""
    resume, changes, changed = None, [], frozenset()
    if cfg.resume:
        resume = load_training_checkpoint(cfg.resume)
        out = Path(resume["path"]).parent.parent
        asked = cfg
        cfg, changes = check_resume_config(cfg, resume["config"], run_dir=str(out))
        changed = frozenset(n for n in RESUME_CHANGES if n in given_fields(asked)
                            and getattr(asked, n) != resume["config"].get(n))
    else:
        out = Path(cfg.output)
    recipe = resolve_recipe(cfg)
    autocast(env.device, cfg.amp)  # validates --amp for the device before any work
    lock = _claim(out, env, resume=resume is not None, overwrite=cfg.overwrite)
    try:
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        seed_everything(cfg.seed)
        return Setup(cfg=cfg, env=env, out=out, recipe=recipe, resume=resume, changes=changes, changed=changed,
                     lock=lock, pretrained=read_pretrained(cfg) if resume is None else None)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _claim(out: Path, env: DistEnv, *, resume: bool, overwrite: bool) -> Optional[RunLock]:
    """Process 0 takes the output folder (lock, earlier run, leftover temporary files: see rundir); every
    process learns whether it could, so that none waits for the others in vain."""
    lock, error = None, None
    if env.is_main:
        try:
            lock = claim_run_dir(out, resume=resume, overwrite=overwrite, say=env.say)
        except Exception as e:
            error = e
    if env.distributed:
        failed = all_reduce(torch.tensor([1.0 if error is not None else 0.0]), op="max")
        if float(failed[0]) and error is None:
            raise TrainingError(f"process 0 could not take the output folder {out}; its message says why")
    if error is not None:
        raise error
    return lock


def load_data(setup: Setup) -> Data:
    """The data sets and their loaders; a recipe without an image size takes the data's native one."""
    cfg, env = setup.cfg, setup.env
    inputs = input_plan(cfg, setup.recipe, setup.pretrained)  # channels, normalisation, size, crop of the input
    recipe, sized = fit_to_data(inputs.recipe, num_train=inputs.num_train, kind="tensor" if builtin_dataset(cfg.data) else "folder")
    train_set, eval_set, info = build_datasets(
        cfg.data, recipe, img_size=recipe.img_size, data_dir=cfg.data_dir, download=cfg.download,
        in_chans=inputs.in_chans, limit_train=cfg.limit_train, limit_eval=cfg.limit_eval, mean=inputs.mean,
        std=inputs.std,
    )
    if recipe.img_size is None:
        recipe = recipe.replace(img_size=info.img_size or 224)
    setup.recipe = recipe
    for note in inputs.notes + sized + info.notes:
        env.say(f"note: {note}")
    if setup.resume is not None and list(setup.resume.get("class_names") or []) != list(info.class_names):
        raise TrainingError(f"the run in {setup.out} was trained on other classes than {cfg.data} has now")
    pin = env.device.type == "cuda"
    train_loader = build_loader(train_set, batch_size=recipe.batch_size, training=True, workers=cfg.workers,
                                seed=cfg.seed, rank=env.rank, world_size=env.world_size, pin_memory=pin)
    eval_loader = build_loader(eval_set, batch_size=max(recipe.batch_size, 64) * 2, training=False, workers=cfg.workers,
                               rank=env.rank, world_size=env.world_size, pin_memory=pin)
    if len(train_loader) == 0:
        raise TrainingError(
            f"{len(train_set)} training images per process cannot fill one batch of {recipe.batch_size}: lower --batch-size"
        )
    return Data(info=info, train_loader=train_loader, eval_loader=eval_loader,
                updates_per_epoch=math.ceil(len(train_loader) / cfg.accum_steps))


# an evaluation image costs about a third of a training image (forward only)
EVAL_COST = 1 / 3


def eval_interval(eval_every: Optional[int], info: DataInfo) -> int:
    """Epochs between evaluations: --eval-every, or by default every epoch unless an epoch is so short that
    evaluating the test split would cost more than training it (a few dozen images per class against
    hundreds of test images): then every ceil(test cost / train cost) epochs, so that evaluation stays
    about half the run's time at most. Deterministic (from the image counts), so a resumed run evaluates
    on the same epochs; the last epoch is always evaluated, so the final figures are the same either way."""
    if eval_every is not None:
        return max(int(eval_every), 1)
    return max(1, math.ceil(EVAL_COST * info.num_eval / max(info.num_train, 1)))


def compile_training(setting: str, device: torch.device) -> bool:
    """Whether --compile (auto, on, off) compiles the training step on `device`. auto: on CUDA, where inductor's
    fused kernels pay; off on the CPU, where compiling the main job's step was measured not to pay back its
    compilation within a run (docs/speed.md, "Compiled training")."""
    if setting == "auto":
        return device.type == "cuda"
    return setting == "on"


def build_parts(setup: Setup, data: Data, *, model: Optional[nn.Module] = None) -> Parts:
    """The model (given, a resumed run's, or built from the configuration) on its device, and what trains it."""
    cfg, env, recipe = setup.cfg, setup.env, setup.recipe
    if model is None and setup.resume is not None:
        from ..factory import load_model

        model = load_model(setup.resume["path"])
    core = model if model is not None else model_for_run(cfg, recipe, data.info, setup.pretrained)
    core.to(env.device)
    wrapped = core
    if env.distributed:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(core, device_ids=device_ids)
    global_batch = recipe.batch_size * env.world_size * cfg.accum_steps
    lr = run_lr(recipe, global_batch)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(core, decay=cfg.ema_decay, use_warmup=True)
    return Parts(
        core=core, model=wrapped,
        train_model=torch.compile(wrapped) if compile_training(cfg.compile, env.device) else wrapped,
        criterion=build_criterion(recipe), mixup_fn=build_mixup(recipe, data.info.num_classes),
        optimizer=build_optimizer(core, recipe, lr), scaler=torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None,
        ema=ema, global_batch=global_batch, lr=lr,
    )


def plan_run(setup: Setup, data: Data, parts: Parts) -> Plan:
    """How many epochs and optimizer steps: a resumed run's, what fits --time-budget (measured), or the
    recipe's; and the learning-rate schedule that ends there."""
    cfg, resume = setup.cfg, setup.resume
    probe_s, planned, note = 0.0, False, ""
    if resume is not None:  # the run's plan, unless --resume changed --epochs (or --time-budget: re-planned)
        epochs = int(cfg.epochs)
        total_updates = None if "epochs" in setup.changed else resume.get("total_updates")
        planned = "time_budget" in setup.changed and bool(cfg.time_budget)
    elif cfg.time_budget and cfg.epochs is None:
        total_updates, note, probe_s = _plan_for_budget(setup, data, parts)
        epochs = math.ceil(total_updates / data.updates_per_epoch)
        planned = True
    else:
        epochs, total_updates = setup.recipe.epochs, None
    if total_updates is None:
        total_updates = epochs * data.updates_per_epoch
    setup.recipe = setup.recipe.replace(epochs=epochs)
    resolved = resolved_config(cfg, setup.recipe, epochs)
    resolved["output"] = str(setup.out)
    scheduler = build_scheduler(parts.optimizer, setup.recipe, epochs=epochs, updates_per_epoch=data.updates_per_epoch,
                                lr=parts.lr, total_updates=total_updates)
    warm = warmup_steps(setup.recipe, updates_per_epoch=data.updates_per_epoch, total=total_updates)
    if warm > MAX_WARMUP_WARNING * total_updates:
        setup.env.say(f"warning: the warm-up ({warm} of {total_updates} optimizer steps) covers "
                      f"{100 * warm / total_updates:.0f}% of the run: the peak lr is barely reached; lower "
                      "--warmup-epochs or train longer")
    return Plan(epochs=epochs, total_updates=total_updates, scheduler=scheduler, resolved=resolved, planned=planned,
                note=note, probe_s=probe_s)


def _plan_for_budget(setup: Setup, data: Data, parts: Parts) -> tuple[int, str, float]:
    """Optimizer steps that fit --time-budget, measured on a few steps of a copy of the model: (steps, the
    line that says so, seconds spent measuring)."""
    cfg, env, recipe = setup.cfg, setup.env, setup.recipe
    t0 = time.perf_counter()
    set_loader_epoch(data.train_loader, 0, cfg.seed, env.rank)
    t_batch, t_eval = budget.time_steps(parts.core, data.train_loader, data.eval_loader, criterion=parts.criterion,
                                        recipe=recipe, lr=parts.lr, amp=cfg.amp, device=env.device,
                                        mixup_fn=parts.mixup_fn)
    probe_s = time.perf_counter() - t0
    evals = (2 if parts.ema is not None else 1) / eval_interval(cfg.eval_every, data.info)
    # the slowest process sets the pace
    times = all_reduce(torch.tensor([t_batch * cfg.accum_steps, evals * len(data.eval_loader) * t_eval],
                                    dtype=torch.float64), op="max")
    update_s, eval_s = float(times[0]), float(times[1])
    total_updates = budget.plan_updates(cfg.time_budget, probe_s=probe_s, update_s=update_s, eval_s=eval_s,
                                        updates_per_epoch=data.updates_per_epoch)
    note = (f"time budget {cfg.time_budget:.0f} s: measured {t_batch * 1e3:.0f} ms per batch of "
            f"{recipe.batch_size} ({recipe.batch_size / max(t_batch, 1e-9):.0f} img/s) and about "
            f"{eval_s * budget.PLAN_MARGIN:.0f} s per evaluation -> {total_updates} optimizer steps "
            f"({total_updates / data.updates_per_epoch:.2f} epochs)")
    return total_updates, note, probe_s


def begin(setup: Setup, data: Data, parts: Parts, plan: Plan) -> Run:
    """A resumed run's state restored; config.yaml written (and metrics.jsonl cut back to the checkpoint's
    epochs); the run announced."""
    cfg, env, out, resume = setup.cfg, setup.env, setup.out, setup.resume
    progress = Progress()
    if resume is not None:
        _restore(setup, parts, plan)
        progress = Progress(start_epoch=int(resume["epoch"]), global_step=int(resume["global_step"]),
                            history=list(resume.get("history") or []), best=dict(resume.get("best") or progress.best),
                            train_time_before=float(resume.get("train_time", 0.0)),
                            last_checkpoint=str(out / "checkpoints" / "last.pth"))
    tb = None
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_yaml(plan.resolved, out / "config.yaml")
        if cfg.tensorboard:
            tb = artifacts.tensorboard_writer(out / "tensorboard")
        if resume is not None:  # the checkpoint's history is the truth: lines after it belong to lost epochs
            artifacts.write_metrics(progress.history, out / "metrics.jsonl")
    core, info, img_size = parts.core, data.info, setup.recipe.img_size
    run = Run(setup=setup, data=data, parts=parts, plan=plan, progress=progress, tensorboard=tb,
              arch_name=describe_arch(core),  # "custom, from focalnet_tiny_srf: ..." when resized
              macs=artifacts.try_count_macs(core, info.in_chans, img_size))
    env.say(f"focalnet train: {run.arch_name} ({sum(p.numel() for p in core.parameters()) / 1e6:.2f} M parameters"
            + (f", {run.macs / 1e6:.1f} M MACs at {img_size} px" if run.macs else "")
            + f") on {info.name} ({info.num_train} train / {info.num_eval} {info.eval_split} images, "
            f"{info.num_classes} classes), recipe {setup.recipe.name}, {env.world_size} process(es) on {env.device}, "
            f"global batch {parts.global_batch}, lr {parts.lr:.2e}, output {out}")
    if plan.note:
        env.say(plan.note)
    if resume is not None:
        env.say(f"resumed from {resume['path']} after epoch {progress.start_epoch} (step {progress.global_step})"
                + (f"; changed: {', '.join(setup.changes)}" if setup.changes else ""))
    progress.loop_start = time.perf_counter() - plan.probe_s
    return run


def run_epochs(run: Run) -> None:
    """Epoch after epoch: train, evaluate, re-plan (--time-budget: after the first epoch, and before any epoch that
    would overrun), checkpoint and report, until the planned epochs are done."""
    cfg, env, p = run.setup.cfg, run.setup.env, run.progress
    epoch = p.start_epoch - 1
    while epoch + 1 < run.plan.epochs:  # `epochs` may be re-planned after the first epoch (--time-budget)
        epoch += 1
        t_epoch = time.perf_counter()
        record, stats = _train_epoch(run, epoch)
        if (epoch + 1) % eval_interval(cfg.eval_every, run.data.info) == 0 or epoch + 1 == run.plan.epochs:
            _evaluate_epoch(run, record)
        if env.distributed:
            record["replicas_identical"] = replicas_identical(run.parts.model)
        epoch_time = time.perf_counter() - t_epoch
        p.update_times.append(stats["time"] / max(stats["steps"], 1))
        p.overheads.append(max(epoch_time - stats["time"], 0.0))
        record["epoch_time"] = epoch_time
        record["elapsed"] = p.train_time_before + (time.perf_counter() - p.loop_start)
        if run.plan.planned and epoch == p.start_epoch and epoch + 1 != run.plan.epochs:
            _replan(run, epoch, record)
        last_epoch = epoch + 1 == run.plan.epochs
        p.history.append(record)
        _check_divergence(run, record)
        is_best = "test_top1" in record and record["test_top1"] > p.best["top1"]
        if is_best:
            p.best = {"top1": record["test_top1"], "top5": record["test_top5"], "epoch": epoch + 1}
        if env.is_main:
            _save_epoch(run, record, epoch, is_best=is_best)
        if env.distributed:
            torch.distributed.barrier()
        if cfg.time_budget and not last_epoch and _out_of_time(run, epoch, record):
            break


def finish(run: Run, *, t_start: float) -> dict:
    """summary.json, the confusion matrix and model.safetensors of the final weights; returns the summary."""
    setup, data, p = run.setup, run.data, run.progress
    if p.final_eval is None:  # resumed a finished run: evaluate once more for the report
        p.final_eval = _evaluate(run, unwrap_model(run.parts.model))
    summary = artifacts.build_summary(
        history=p.history, final=p.final_eval, final_ema=p.final_ema_eval, best=p.best, info=data.info,
        model_name=run.arch_name, num_params=sum(q.numel() for q in run.parts.core.parameters()), macs=run.macs,
        img_size=setup.recipe.img_size, train_time=p.history[-1]["elapsed"] if p.history else 0.0,
        wall_time=time.time() - t_start, world_size=setup.env.world_size, device=str(setup.env.device),
        config=run.plan.resolved, stopped_early=p.stopped_early, updates_per_epoch=data.updates_per_epoch,
    )
    if p.warnings:
        summary["warnings"] = list(p.warnings)
    if setup.env.is_main:
        _write_final_files(run, summary)
        for line in artifacts.summary_lines(summary) + [f"warning: {w}" for w in p.warnings]:
            setup.env.say(line)
    return summary


# --------------------------------------------------------------------------------------------------------
# One epoch
# --------------------------------------------------------------------------------------------------------


def _evaluate(run: Run, model: nn.Module, **kw: Any) -> dict:
    cfg = run.setup.cfg
    return evaluate(model, run.data.eval_loader, device=run.setup.env.device, num_classes=run.data.info.num_classes,
                    amp=cfg.amp, skip_bad_images=cfg.skip_bad_images, **kw)


def _train_epoch(run: Run, epoch: int) -> tuple[dict, dict]:
    """One pass over the training data, from generators reseeded for (seed, epoch, rank): (the epoch's
    record, train_one_epoch's numbers)."""
    cfg, env, parts, p = run.setup.cfg, run.setup.env, run.parts, run.progress
    set_loader_epoch(run.data.train_loader, epoch, cfg.seed, env.rank)
    seed_everything(epoch_seed(cfg.seed, epoch, env.rank))
    try:
        stats = train_one_epoch(
            parts.train_model, run.data.train_loader, parts.optimizer, parts.criterion, device=env.device, epoch=epoch,
            num_epochs=run.plan.epochs, scheduler=run.plan.scheduler, global_step=p.global_step, mixup_fn=parts.mixup_fn,
            amp=cfg.amp, scaler=parts.scaler, accum_steps=cfg.accum_steps, clip_grad=run.setup.recipe.clip_grad,
            ema=parts.ema, skip_bad_images=cfg.skip_bad_images, progress=progress_on(cfg.progress) and env.is_main,
            last_good_checkpoint=p.last_checkpoint, max_updates=run.plan.total_updates,
        )
    except NonFiniteLossError as e:  # the advice names a command that works (a lower --lr is allowed on resume)
        raise NonFiniteLossError(f"{e}. {_nan_advice(run)}") from None
    p.global_step = stats["global_step"]
    record: dict = dict(epoch=epoch + 1, step=p.global_step, train_loss=stats["loss"], lr=stats["lr"],
                        train_img_per_s=stats["img_per_s"], train_time=stats["time"])
    if stats["bad_images"]:
        record["bad_images"] = stats["bad_images"]
    return record, stats


def _evaluate_epoch(run: Run, record: dict) -> None:
    """Test loss and accuracy of the weights (and of the EMA) into the epoch's record."""
    bars = progress_on(run.setup.cfg.progress) and run.setup.env.is_main
    ev = _evaluate(run, unwrap_model(run.parts.model), progress=bars, desc="test")
    run.progress.final_eval = ev
    record.update(test_loss=ev["loss"], test_top1=ev["top1"], test_top5=ev["top5"], eval_time=ev["time"])
    if run.parts.ema is not None:
        eev = _evaluate(run, run.parts.ema.module, progress=bars, desc="test (EMA)")
        run.progress.final_ema_eval = eev
        record.update(ema_test_loss=eev["loss"], ema_test_top1=eev["top1"], ema_test_top5=eev["top5"])


def _replan(run: Run, epoch: int, record: dict) -> None:
    """After the first epoch of a --time-budget run: the steps that fit, from that epoch's real timings."""
    # every process must take the same decision: the slowest one's timings
    spent = all_reduce(torch.tensor([record["elapsed"], run.progress.update_times[-1], run.progress.overheads[-1]],
                                    dtype=torch.float64), op="max")
    total = _updates_that_fit(run, *(float(v) for v in spent))
    if total != run.plan.total_updates:
        _set_total_updates(run, epoch, total, f"the first epoch took {record['epoch_time']:.0f} s")


def _updates_that_fit(run: Run, elapsed_s: float, update_s: float, overhead_s: float) -> int:
    return budget.replan_updates(run.setup.cfg.time_budget, elapsed_s=elapsed_s, update_s=update_s,
                                 overhead_s=overhead_s, steps_done=run.progress.global_step,
                                 updates_per_epoch=run.data.updates_per_epoch)


def _set_total_updates(run: Run, epoch: int, total: int, why: str) -> None:
    """Re-plan the run to end after `total` optimizer steps (after epoch `epoch`, counted from 0): the epochs
    left, and the cosine rebuilt to end exactly there, continuing from the current step."""
    setup, data, plan, p = run.setup, run.data, run.plan, run.progress
    setup.env.say(f"time budget: {why} -> {total} optimizer steps ({total / data.updates_per_epoch:.2f} epochs) "
                  f"instead of {plan.total_updates}")
    plan.total_updates = total
    plan.epochs = epoch + 1 + math.ceil((total - p.global_step) / data.updates_per_epoch)
    setup.recipe = setup.recipe.replace(epochs=plan.epochs)
    plan.resolved["epochs"] = plan.epochs
    plan.scheduler = build_scheduler(run.parts.optimizer, setup.recipe, epochs=plan.epochs,
                                     updates_per_epoch=data.updates_per_epoch, lr=run.parts.lr, total_updates=total)
    plan.scheduler.step_update(num_updates=p.global_step)
    if setup.env.is_main:
        write_yaml(plan.resolved, setup.out / "config.yaml")


def _out_of_time(run: Run, epoch: int, record: dict) -> bool:
    """Whether the run stops here. When the next epoch would overrun --time-budget, the steps left are first
    re-planned to fit the time left (the cosine rebuilt to end there): stopping instead would leave the rest of
    the budget unused and the learning rate not annealed. Only when not one more step fits does the run stop,
    with a warning, and the final weights are evaluated if this epoch did not."""
    cfg, p = run.setup.cfg, run.progress
    update_s, overhead_s = budget.median(p.update_times), budget.median(p.overheads)
    # every process must take the same decision: the slowest one's timings
    spent = [float(v) for v in all_reduce(torch.tensor([record["elapsed"], update_s, overhead_s], dtype=torch.float64),
                                          op="max")]
    next_epoch = budget.next_epoch_seconds(remaining_updates=run.plan.total_updates - p.global_step,
                                           updates_per_epoch=run.data.updates_per_epoch,
                                           update_times=[spent[1]], overheads=[spent[2]])
    if not budget.overruns(cfg.time_budget, elapsed_s=spent[0], next_epoch_s=next_epoch):
        return False
    total = _updates_that_fit(run, *spent)
    if total > p.global_step:
        _set_total_updates(run, epoch, total, f"the next epoch (about {next_epoch:.0f} s) would end after "
                           f"{spent[0] + next_epoch:.0f} s")
        return False
    p.stopped_early = (f"stopped after epoch {epoch + 1} of {run.plan.epochs}: not one more step fits in the "
                       f"time budget of {cfg.time_budget:.0f} s")
    run.setup.env.say("warning: " + p.stopped_early)
    if p.final_eval is None or "test_top1" not in record:
        p.final_eval = _evaluate(run, unwrap_model(run.parts.model))
    return True


# --------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------


def _training_checkpoint(run: Run, record: dict, epoch: int) -> dict:
    """checkpoints/last.pth: every state that carries across epochs (see the module docstring)."""
    parts, plan, p, core = run.parts, run.plan, run.progress, run.parts.core
    return dict(
        format=TRAIN_CHECKPOINT_FORMAT,
        model=unwrap_model(parts.model).state_dict(),
        arch=getattr(core, "arch", None),
        variant=getattr(core, "variant", None),
        class_names=list(run.data.info.class_names),
        optimizer=parts.optimizer.state_dict(),
        scheduler=plan.scheduler.state_dict(),
        scaler=parts.scaler.state_dict() if parts.scaler is not None else None,
        ema=parts.ema.state_dict() if parts.ema is not None else None,
        epoch=epoch + 1,
        global_step=p.global_step,
        total_updates=plan.total_updates,
        best=p.best,
        history=p.history,
        train_time=record["elapsed"],
        rng=get_rng_state(),
        config=plan.resolved,
        data=run.data.info.to_dict(),
        preprocessing=run_preprocessing(run.data.info, run.setup.recipe),
    )


# drawing curves.png takes 0.3-0.9 s (matplotlib): after every epoch it was most of a small fine-tune's time
# (epochs of a fraction of a second); it is redrawn at most this often, and always at the end of the run
CURVES_EVERY_S = 30.0


def _draw_curves(run: Run) -> None:
    run.progress.curves_at = time.perf_counter()
    _decorate(run, "curves.png", artifacts.plot_curves, run.progress.history, run.setup.out / "curves.png")


def _save_epoch(run: Run, record: dict, epoch: int, *, is_best: bool) -> None:
    """Process 0 after each epoch: checkpoints, metrics.jsonl, curves.png, TensorBoard and the epoch's line."""
    out, p = run.setup.out, run.progress
    ckpt_dir = out / "checkpoints"
    state = _training_checkpoint(run, record, epoch)
    save_training_checkpoint(state, ckpt_dir / "last.pth")
    p.last_checkpoint = str(ckpt_dir / "last.pth")
    if is_best:
        save_training_checkpoint(best_weights(state, record), ckpt_dir / "best.pth")
    artifacts.write_metrics(p.history, out / "metrics.jsonl")
    if time.perf_counter() - p.curves_at >= CURVES_EVERY_S:
        _draw_curves(run)
    if run.tensorboard is not None:
        artifacts.tensorboard_log(run.tensorboard, record)
    run.setup.env.say(artifacts.epoch_line(record, run.plan.epochs))


def _write_final_files(run: Run, summary: dict) -> None:
    """summary.json, confusion.png / .csv and model.safetensors (our FocalNets only: other models given to
    train() have no architecture record to save)."""
    out, info, core, final = run.setup.out, run.data.info, run.parts.core, run.progress.final_eval
    # the model first: a picture that cannot be drawn (an odd class name, a broken font) never loses it
    if getattr(core, "arch", None) is not None and hasattr(core, "variant"):
        from ..checkpoints import save_model

        # the run's input (normalisation, size, crop, interpolation) travels with the weights, so that
        # eval/predict/visualize/export feed them alike
        pre = run_preprocessing(info, run.setup.recipe)
        save_model(unwrap_model(run.parts.model), out / "model.safetensors", class_names=list(info.class_names),
                   preprocessing=pre)
    atomic_json(summary, out / "summary.json")
    if run.progress.history:
        _draw_curves(run)
    _decorate(run, "confusion.png and confusion.csv", artifacts.write_confusion, final["confusion"], info.class_names,
              out, title=f"{run.arch_name} on {info.name} ({info.eval_split}): top-1 {final['top1']:.2f}%")
    if run.tensorboard is not None:
        run.tensorboard.close()


# --------------------------------------------------------------------------------------------------------
# Resume changes, advice, warnings
# --------------------------------------------------------------------------------------------------------


def _restore(setup: Setup, parts: Parts, plan: Plan) -> None:
    """The checkpoint's state back into the run's objects. When --resume changed the learning rate or the
    epochs, the schedule is the new plan's (built for the new lr and length) at the step reached, and the
    optimizer's groups keep the new base rates; otherwise the saved schedule, exactly."""
    rebuild = bool(setup.changed & {"lr", "base_lr", "epochs"})
    fresh = [g.get("initial_lr") for g in parts.optimizer.param_groups]
    restore_training_state(setup.resume, model=unwrap_model(parts.model), optimizer=parts.optimizer,
                           scheduler=None if rebuild else plan.scheduler, scaler=parts.scaler, ema=parts.ema)
    if rebuild:
        for group, initial in zip(parts.optimizer.param_groups, fresh):
            group["initial_lr"] = initial
        plan.scheduler.step_update(num_updates=int(setup.resume["global_step"]))


def _nan_advice(run: Run) -> str:
    """What to run after a non-finite loss: continue from the last good checkpoint at a tenth of the lr."""
    lower = f"--lr {run.parts.lr / 10:.3g}"
    if run.progress.last_checkpoint:
        return f"Continue from it at a lower rate: focalnet train --resume {run.setup.out} {lower}"
    return f"Start again at a lower rate: add {lower} --overwrite"


# a run is "stuck" when, after the warm-up and at least this many optimizer steps, its training loss is
# at chance level (within 10% of ln(classes), or far above it) and its test top-1 under 1.5x chance
DIVERGENCE_STEPS = 30


def _check_divergence(run: Run, record: dict) -> None:
    """Warn (once) when the run learns nothing: the learning rate is almost always wrong, and the warning
    says which way (a loss far above chance: too high; at chance with a small lr: too low)."""
    p, classes = run.progress, run.data.info.num_classes
    if any("not learning" in w for w in p.warnings) or classes < 2:
        return
    warm = warmup_steps(run.setup.recipe, updates_per_epoch=run.data.updates_per_epoch, total=run.plan.total_updates)
    chance_loss, chance_top1, loss = math.log(classes), 100.0 / classes, record["train_loss"]
    if loss < 0.9 * chance_loss or record.get("test_top1", 0.0) >= 1.5 * chance_top1:
        return
    # never while the loss is falling fast; before the warm-up and DIVERGENCE_STEPS steps are done, only a
    # loss far above chance with a test top-1 at chance counts (a fresh head on pretrained features may start
    # above chance, and an epoch not evaluated has no top-1 to show)
    falling = len(p.history) > 1 and loss < 0.8 * p.history[0]["train_loss"]
    exploded = "test_top1" in record and loss >= 1.5 * chance_loss
    if falling or (p.global_step < max(DIVERGENCE_STEPS, warm) and not exploded):
        return
    lr = run.parts.lr
    if loss >= 1.5 * chance_loss or lr >= 0.05:
        hint = f"the learning rate {lr:.3g} is too high: try --lr {lr / 10:.3g}"
    else:
        hint = (f"the learning rate {lr:.3g} is probably too low (--lr is absolute, as in timm) or the warm-up too "
                f"long: try --lr {lr * 10:.3g}")
    test = f", test top-1 {record['test_top1']:.1f}% (chance {chance_top1:.1f}%)" if "test_top1" in record else ""
    p.warnings.append(f"the run is not learning: after {p.global_step} optimizer steps the training loss {loss:.3f} "
                      f"is {'far above' if loss >= 1.5 * chance_loss else 'at'} chance level (ln {classes} = "
                      f"{chance_loss:.3f}){test}; {hint} (start again with --overwrite)")
    run.setup.env.say("warning: " + p.warnings[-1])


def _decorate(run: Run, what: str, draw: Any, *args: Any, **kwargs: Any) -> None:
    """A picture or table beside the results: a failure is a warning, never the loss of the run."""
    try:
        draw(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 -- any failure of a plot must leave the model and checkpoints
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        run.progress.warnings.append(f"could not write {what} ({type(e).__name__}: {reason}); the model and "
                                     "checkpoints are saved")
        run.setup.env.say("warning: " + run.progress.warnings[-1])
