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
from .build import build_criterion, build_mixup, build_optimizer, build_scheduler, model_for_run
from .config import (TrainConfig, TrainingError, check_resume_config, progress_on, resolve_recipe, resolved_config,
                     write_yaml)
from .data import DataInfo, build_datasets, build_loader, epoch_seed, set_loader_epoch
from .distributed import DistEnv, all_reduce, cleanup_distributed, init_distributed, replicas_identical, unwrap_model
from .loop import autocast, evaluate, train_one_epoch
from .recipes import Recipe, scaled_lr
from .state import (TRAIN_CHECKPOINT_FORMAT, best_weights, get_rng_state, load_training_checkpoint,
                    restore_training_state, save_training_checkpoint, seed_everything)
from ..utils import atomic_json

__all__ = ["train", "configure", "load_data", "build_parts", "plan_run", "begin", "run_epochs", "finish",
           "Setup", "Data", "Parts", "Plan", "Progress", "Run"]


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
    train_model: nn.Module  # model, through torch.compile with --compile
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
    update_times: list = field(default_factory=list)  # seconds per optimizer step, per epoch
    overheads: list = field(default_factory=list)  # seconds of each epoch outside its training steps (evaluation, ...)
    loop_start: float = 0.0


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
    try:
        setup = configure(cfg, env)
        data = load_data(setup)
        parts = build_parts(setup, data, model=model)
        plan = plan_run(setup, data, parts)
        run = begin(setup, data, parts, plan)
        run_epochs(run)
        return finish(run, t_start=t_start)
    finally:
        cleanup_distributed()


def configure(cfg: TrainConfig, env: DistEnv) -> Setup:
    """The run's folder and recipe: a resumed run takes its saved configuration back; a new run refuses a
    folder that already holds one."""
    resume = None
    if cfg.resume:
        resume = load_training_checkpoint(cfg.resume)
        cfg = check_resume_config(cfg, resume["config"])
        out = Path(resume["path"]).parent.parent
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
    seed_everything(cfg.seed)
    recipe = resolve_recipe(cfg)
    if cfg.accum_steps < 1:
        raise TrainingError(f"--accum-steps must be >= 1, got {cfg.accum_steps}")
    autocast(env.device, cfg.amp)  # validates --amp for the device before any work
    return Setup(cfg=cfg, env=env, out=out, recipe=recipe, resume=resume)


def load_data(setup: Setup) -> Data:
    """The data sets and their loaders; a recipe without an image size takes the data's native one."""
    cfg, env, recipe = setup.cfg, setup.env, setup.recipe
    train_set, eval_set, info = build_datasets(
        cfg.data, recipe, img_size=recipe.img_size, data_dir=cfg.data_dir, download=cfg.download,
        in_chans=cfg.in_chans, limit_train=cfg.limit_train, limit_eval=cfg.limit_eval,
    )
    if recipe.img_size is None:
        setup.recipe = recipe = recipe.replace(img_size=info.img_size)
    for note in info.notes:
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


def build_parts(setup: Setup, data: Data, *, model: Optional[nn.Module] = None) -> Parts:
    """The model (given, a resumed run's, or built from the configuration) on its device, and what trains it."""
    cfg, env, recipe = setup.cfg, setup.env, setup.recipe
    if model is None and setup.resume is not None:
        from ..factory import load_model

        model = load_model(setup.resume["path"])
    core = model if model is not None else model_for_run(cfg, recipe, data.info)
    core.to(env.device)
    wrapped = core
    if env.distributed:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(core, device_ids=device_ids)
    global_batch = recipe.batch_size * env.world_size * cfg.accum_steps
    lr = scaled_lr(recipe.lr, global_batch)
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(core, decay=cfg.ema_decay, use_warmup=True)
    return Parts(
        core=core, model=wrapped, train_model=torch.compile(wrapped) if cfg.compile else wrapped,
        criterion=build_criterion(recipe), mixup_fn=build_mixup(recipe, data.info.num_classes),
        optimizer=build_optimizer(core, recipe, lr), scaler=torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None,
        ema=ema, global_batch=global_batch, lr=lr,
    )


def plan_run(setup: Setup, data: Data, parts: Parts) -> Plan:
    """How many epochs and optimizer steps: a resumed run's, what fits --time-budget (measured), or the
    recipe's; and the learning-rate schedule that ends there."""
    cfg, resume = setup.cfg, setup.resume
    probe_s, planned, note = 0.0, False, ""
    if resume is not None:
        epochs = int(resume["config"]["epochs"])
        total_updates = resume.get("total_updates")
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
                                global_batch=parts.global_batch, total_updates=total_updates)
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
    evals = (2 if parts.ema is not None else 1) / max(cfg.eval_every, 1)
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
        restore_training_state(resume, model=unwrap_model(parts.model), optimizer=parts.optimizer,
                               scheduler=plan.scheduler, scaler=parts.scaler, ema=parts.ema)
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
              arch_name=getattr(core, "variant", None) or type(core).__name__,
              macs=artifacts.try_count_macs(core, info.in_chans, img_size))
    env.say(f"focalnet train: {run.arch_name} ({sum(p.numel() for p in core.parameters()) / 1e6:.2f} M parameters"
            + (f", {run.macs / 1e6:.1f} M MACs at {img_size} px" if run.macs else "")
            + f") on {info.name} ({info.num_train} train / {info.num_eval} {info.eval_split} images, "
            f"{info.num_classes} classes), recipe {setup.recipe.name}, {env.world_size} process(es) on {env.device}, "
            f"global batch {parts.global_batch}, lr {parts.lr:.2e}, output {out}")
    if plan.note:
        env.say(plan.note)
    if resume is not None:
        env.say(f"resumed from {resume['path']} after epoch {progress.start_epoch} (step {progress.global_step})")
    progress.loop_start = time.perf_counter() - plan.probe_s
    return run


def run_epochs(run: Run) -> None:
    """Epoch after epoch: train, evaluate, re-plan (once, --time-budget), checkpoint and report, until the
    planned epochs are done or another epoch would overrun the time budget."""
    cfg, env, p = run.setup.cfg, run.setup.env, run.progress
    epoch = p.start_epoch - 1
    while epoch + 1 < run.plan.epochs:  # `epochs` may be re-planned after the first epoch (--time-budget)
        epoch += 1
        t_epoch = time.perf_counter()
        record, stats = _train_epoch(run, epoch)
        if (epoch + 1) % max(cfg.eval_every, 1) == 0 or epoch + 1 == run.plan.epochs:
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
    if setup.env.is_main:
        _write_final_files(run, summary)
        for line in artifacts.summary_lines(summary):
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
    stats = train_one_epoch(
        parts.train_model, run.data.train_loader, parts.optimizer, parts.criterion, device=env.device, epoch=epoch,
        num_epochs=run.plan.epochs, scheduler=run.plan.scheduler, global_step=p.global_step, mixup_fn=parts.mixup_fn,
        amp=cfg.amp, scaler=parts.scaler, accum_steps=cfg.accum_steps, clip_grad=run.setup.recipe.clip_grad,
        ema=parts.ema, skip_bad_images=cfg.skip_bad_images, progress=progress_on(cfg.progress) and env.is_main,
        last_good_checkpoint=p.last_checkpoint, max_updates=run.plan.total_updates,
    )
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
    """After the first epoch of a --time-budget run: the steps that fit, from that epoch's real timings;
    the cosine is rebuilt to end there."""
    setup, data, plan, p = run.setup, run.data, run.plan, run.progress
    # every process must take the same decision: the slowest one's timings
    spent = all_reduce(torch.tensor([record["elapsed"], p.update_times[-1], p.overheads[-1]], dtype=torch.float64),
                       op="max")
    total = budget.replan_updates(setup.cfg.time_budget, elapsed_s=float(spent[0]), update_s=float(spent[1]),
                                  overhead_s=float(spent[2]), steps_done=p.global_step,
                                  updates_per_epoch=data.updates_per_epoch)
    if total == plan.total_updates:
        return
    setup.env.say(f"time budget: the first epoch took {record['epoch_time']:.0f} s -> {total} optimizer "
                  f"steps ({total / data.updates_per_epoch:.2f} epochs) instead of {plan.total_updates}")
    plan.total_updates = total
    plan.epochs = epoch + 1 + math.ceil((total - p.global_step) / data.updates_per_epoch)
    setup.recipe = setup.recipe.replace(epochs=plan.epochs)
    plan.resolved["epochs"] = plan.epochs
    plan.scheduler = build_scheduler(run.parts.optimizer, setup.recipe, epochs=plan.epochs,
                                     updates_per_epoch=data.updates_per_epoch, global_batch=run.parts.global_batch,
                                     total_updates=total)
    plan.scheduler.step_update(num_updates=p.global_step)
    if setup.env.is_main:
        write_yaml(plan.resolved, setup.out / "config.yaml")


def _out_of_time(run: Run, epoch: int, record: dict) -> bool:
    """Whether another epoch would overrun --time-budget; if so the run stops here, with a warning, and
    the final weights are evaluated if this epoch did not."""
    cfg, p = run.setup.cfg, run.progress
    next_epoch = budget.next_epoch_seconds(remaining_updates=run.plan.total_updates - p.global_step,
                                           updates_per_epoch=run.data.updates_per_epoch,
                                           update_times=p.update_times, overheads=p.overheads)
    if not budget.overruns(cfg.time_budget, elapsed_s=record["elapsed"], next_epoch_s=next_epoch):
        return False
    p.stopped_early = (f"stopped after epoch {epoch + 1} of {run.plan.epochs}: another epoch "
                       f"(about {next_epoch:.0f} s) would overrun the time budget of {cfg.time_budget:.0f} s")
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
    )


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
    artifacts.plot_curves(p.history, out / "curves.png")
    if run.tensorboard is not None:
        artifacts.tensorboard_log(run.tensorboard, record)
    run.setup.env.say(artifacts.epoch_line(record, run.plan.epochs))


def _write_final_files(run: Run, summary: dict) -> None:
    """summary.json, confusion.png / .csv and model.safetensors (our FocalNets only: other models given to
    train() have no architecture record to save)."""
    out, info, core, final = run.setup.out, run.data.info, run.parts.core, run.progress.final_eval
    atomic_json(summary, out / "summary.json")
    artifacts.write_confusion(final["confusion"], info.class_names, out,
                              title=f"{run.arch_name} on {info.name} ({info.eval_split}): top-1 {final['top1']:.2f}%")
    if getattr(core, "arch", None) is not None and hasattr(core, "variant"):
        from ..checkpoints import save_model

        # the data set's normalisation travels with the weights, so that predict/visualize feed them alike
        pre = dict(mean=list(info.mean), std=list(info.std), img_size=info.img_size,
                   crop_pct=1.0 if info.img_size else None)
        save_model(unwrap_model(run.parts.model), out / "model.safetensors", class_names=list(info.class_names),
                   preprocessing=pre)
    if run.tensorboard is not None:
        run.tensorboard.close()
