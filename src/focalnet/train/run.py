"""A whole training run from one configuration: `train(TrainConfig(...))`, behind `focalnet train`.

    from focalnet.train import TrainConfig, train
    summary = train(TrainConfig(data="fashion-mnist", arch=dict(embed_dim=32, depths=[2, 2, 2]),
                                time_budget=600, output="runs/fmnist"))

`train()` is a list of named phases, each a function of its own that reads what the phases before it
handed on (focalnet.train.phases) and never edits it:

    configure   -> Setup     resume or start, determinism, the output folder, the precision     (frozen)
                             (--precision auto resolved once, here: every later phase reads it)
    load_data   -> Data      data sets and loaders, and the recipe resolved once: every value    (frozen)
                             filled in from the flags, the pretrained weights and the data
    build_parts -> Parts     model (DDP, compile), loss, Mixup, optimizer, GradScaler, EMA
    plan_run    -> Plan      epochs and optimizer steps (measured for --time-budget), schedule  (frozen;
                             a --time-budget re-plan makes a new one: focalnet.train.budget)
    begin       -> Run       a resumed run's state restored, config.yaml written, the run announced
    run_epochs               train, evaluate, re-plan, checkpoint, epoch after epoch (focalnet.train.epoch)
    finish      -> summary   summary.json, confusion matrix, model.safetensors

What a run leaves in its output folder (only process 0 writes):

    config.yaml          the resolved configuration (every recipe value filled in); `-c` takes it back
    metrics.jsonl        one JSON line per epoch (train loss, lr, test loss / top-1 / top-5, EMA, img/s, time)
    summary.json         final and best test top-1/top-5, epochs, wall time, images/s, parameters, MACs,
                         the precision computed in (config.yaml keeps `auto` where it was asked)
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
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from . import artifacts, budget
from .budget import Plan, eval_interval
from .build import build_criterion, build_mixup, input_plan, model_for_run, read_pretrained
from .config import (RESUME_CHANGES, TrainConfig, TrainingError, check_resume_config, check_resume_folder, given_fields,
                     resolve_recipe, validate_recipe, write_yaml)
from .data import check_threads, build_datasets, build_loader
from .distributed import DistEnv, cleanup_distributed, from_main, init_distributed, unwrap_model
from .epoch import evaluate_weights, run_epochs, write_final_files
from .loop import autocast
from .optim import MAX_WARMUP_WARNING, build_optimizer, run_lr, warmup_steps
from .phases import Data, Parts, Progress, Run, Setup, run_config
from .recipes import fit_to_data
from .rundir import claim_for_run
from .state import load_training_checkpoint, restore_training_state, seed_everything
from ..datasets import builtin_dataset
from ..allocator import keep_freed_memory
from ..precision import AUTO, choose_precision
from ..registry import describe_arch

__all__ = ["train", "configure", "run_precision", "load_data", "build_parts", "compile_training", "plan_run", "begin",
           "run_epochs", "finish", "eval_interval", "Setup", "Data", "Parts", "Plan", "Progress", "Run"]


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
        torch.set_num_threads(check_threads(cfg.threads))  # against the CPUs this process may use
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
    """The run's folder and configuration: a resumed run takes its saved configuration back; a new run
    refuses a folder that already holds one."""
    resume, changes, changed = None, [], frozenset()
    if cfg.resume:
        resume = load_training_checkpoint(cfg.resume)
        out = Path(resume.path).parent.parent
        check_resume_folder(resume.config, out)  # a last.pth copied in from another run is refused
        asked = cfg
        cfg, changes = check_resume_config(cfg, resume.config, run_dir=str(out))
        changed = frozenset(n for n in RESUME_CHANGES if n in given_fields(asked)
                            and getattr(asked, n) != resume.config.get(n))
    else:
        out = Path(cfg.output)
    resolve_recipe(cfg)  # a recipe that cannot be made fails before the folder is taken
    precision, choice = run_precision(cfg.precision, env)
    autocast(env.device, precision)  # validates --precision for the device before any work
    lock = claim_for_run(out, env, resume=resume is not None, overwrite=cfg.overwrite)
    try:
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        seed_everything(cfg.seed)
        # a CPU step frees and re-allocates the same buffers each step: keep them instead of faulting them back in
        allocator = keep_freed_memory() if env.device.type == "cpu" else ""
        return Setup(cfg=cfg, env=env, out=out, precision=precision, precision_choice=choice, allocator=allocator,
                     resume=resume,
                     changes=tuple(changes), changed=changed, lock=lock,
                     pretrained=read_pretrained(cfg) if resume is None else None)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def run_precision(setting: str, env: DistEnv) -> tuple[str, str]:
    """What the run computes in, and with --precision auto why, in one line: (precision, "" or the reason).
    auto is process 0's choice for its device (choose_precision), taken by every process, so that a timed
    probe near its threshold cannot split the processes; a resumed auto run chooses again, on the machine
    that runs it."""
    if setting != AUTO:
        return setting, ""
    return from_main(choose_precision(env.device) if env.is_main else None)


def load_data(setup: Setup) -> Data:
    """The data sets, their loaders and the resolved recipe (a recipe without an image size takes the data's
    native one)."""
    cfg, env = setup.cfg, setup.env
    inputs = input_plan(cfg, resolve_recipe(cfg), setup.pretrained)  # channels, normalisation, size, crop
    kind = "tensor" if builtin_dataset(cfg.data) else "folder"
    recipe, sized = fit_to_data(inputs.recipe, num_train=inputs.num_train, kind=kind)
    validate_recipe(recipe)  # what the data filled in (the batch, Mixup/CutMix), before any image is read
    train_set, eval_set, info = build_datasets(
        cfg.data, recipe, img_size=recipe.img_size, data_dir=cfg.data_dir, download=cfg.download,
        in_chans=inputs.in_chans, limit_train=cfg.limit_train, limit_eval=cfg.limit_eval, mean=inputs.mean,
        std=inputs.std,
    )
    if recipe.img_size is None:
        recipe = recipe.replace(img_size=info.img_size or 224)
    for note in inputs.notes + sized + info.notes:
        env.say(f"note: {note}")
    if setup.resume is not None and list(setup.resume.class_names) != list(info.class_names):
        raise TrainingError(f"the run in {setup.out} was trained on other classes than {cfg.data} has now")
    pin = env.device.type == "cuda"
    train_loader = build_loader(train_set, batch_size=recipe.batch_size, training=True, workers=cfg.workers,
                                seed=cfg.seed, rank=env.rank, world_size=env.world_size, pin_memory=pin)
    eval_loader = build_loader(eval_set, batch_size=max(recipe.batch_size, 64) * 2, training=False, workers=cfg.workers,
                               rank=env.rank, world_size=env.world_size, pin_memory=pin)
    if len(train_loader) == 0:
        raise TrainingError(
            f"{len(train_set)} training images per process cannot fill one batch of {recipe.batch_size}: "
            "lower --batch-size"
        )
    return Data(recipe=recipe, info=info, train_loader=train_loader, eval_loader=eval_loader,
                updates_per_epoch=math.ceil(len(train_loader) / cfg.accum_steps))


def compile_training(setting: str, device: torch.device) -> bool:
    """Whether --compile (auto, on, off) compiles the training step on `device`. auto: on CUDA, where inductor's
    fused kernels pay; off on the CPU, where compiling the main job's step was measured not to pay back its
    compilation within a run (docs/speed.md, "Compiled training")."""
    if setting == "auto":
        return device.type == "cuda"
    return setting == "on"


def build_parts(setup: Setup, data: Data, *, model: Optional[nn.Module] = None) -> Parts:
    """The model (given, a resumed run's, or built from the configuration) on its device, and what trains it."""
    cfg, env, recipe = setup.cfg, setup.env, data.recipe
    if model is None and setup.resume is not None:
        from ..factory import load_model

        model = load_model(setup.resume.path)
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
        optimizer=build_optimizer(core, recipe, lr),
        scaler=torch.amp.GradScaler("cuda") if setup.precision == "fp16" else None,
        ema=ema, global_batch=global_batch, lr=lr,
    )


def plan_run(setup: Setup, data: Data, parts: Parts) -> Plan:
    """How many epochs and optimizer steps: a resumed run's, what fits --time-budget (measured), or the
    recipe's; and the learning-rate schedule that ends there."""
    cfg, resume, recipe, per_epoch = setup.cfg, setup.resume, data.recipe, data.updates_per_epoch
    probe_s, planned, note = 0.0, False, ""
    if resume is not None:  # the run's plan, unless --resume changed --epochs (or --time-budget: re-planned)
        epochs = int(cfg.epochs)
        total_updates = None if "epochs" in setup.changed else resume.total_updates
        planned = "time_budget" in setup.changed and bool(cfg.time_budget)
    elif cfg.time_budget and cfg.epochs is None:
        evals = (2 if parts.ema is not None else 1) / eval_interval(cfg.eval_every, data.info, time_budget=cfg.time_budget)
        total_updates, note, probe_s = budget.measure_budget(
            cfg.time_budget, model=parts.core, train_loader=data.train_loader, eval_loader=data.eval_loader,
            criterion=parts.criterion, mixup_fn=parts.mixup_fn, recipe=recipe, lr=parts.lr, precision=setup.precision,
            device=setup.env.device, accum_steps=cfg.accum_steps, evals_per_epoch=evals, updates_per_epoch=per_epoch,
            seed=cfg.seed, rank=setup.env.rank)
        epochs = math.ceil(total_updates / per_epoch)
        planned = True
    else:
        epochs, total_updates = recipe.epochs, None
    if total_updates is None:
        total_updates = epochs * per_epoch
    warm = warmup_steps(recipe, updates_per_epoch=per_epoch, total=total_updates)
    if warm > MAX_WARMUP_WARNING * total_updates:
        setup.env.say(f"warning: the warm-up ({warm} of {total_updates} optimizer steps) covers "
                      f"{100 * warm / total_updates:.0f}% of the run: the peak lr is barely reached; lower "
                      "--warmup-epochs or train longer")
    schedule = budget.Schedule(optimizer=parts.optimizer, recipe=recipe, lr=parts.lr, updates_per_epoch=per_epoch)
    return Plan(epochs=epochs, total_updates=total_updates, scheduler=schedule.build(epochs=epochs,
                total_updates=total_updates), schedule=schedule, planned=planned, note=note, probe_s=probe_s)


def begin(setup: Setup, data: Data, parts: Parts, plan: Plan) -> Run:
    """A resumed run's state restored; config.yaml written (and metrics.jsonl cut back to the checkpoint's
    epochs); the run announced."""
    cfg, env, out, resume = setup.cfg, setup.env, setup.out, setup.resume
    progress = Progress()
    if resume is not None:
        # --resume with a new lr or length: the new plan's schedule, at the step reached
        restore_training_state(resume, model=unwrap_model(parts.model), optimizer=parts.optimizer,
                               scheduler=plan.scheduler, scaler=parts.scaler, ema=parts.ema,
                               new_schedule=bool(setup.changed & {"lr", "base_lr", "epochs"}))
        progress = Progress(start_epoch=resume.epoch, global_step=resume.global_step, history=list(resume.history),
                            best=dict(resume.best or progress.best), train_time_before=float(resume.train_time),
                            last_checkpoint=str(out / "checkpoints" / "last.pth"))
    tb = None
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_yaml(run_config(setup, data.recipe, plan), out / "config.yaml")
        if cfg.tensorboard:
            tb = artifacts.tensorboard_writer(out / "tensorboard")
        if resume is not None:  # the checkpoint's history is the truth: lines after it belong to lost epochs
            artifacts.write_metrics(progress.history, out / "metrics.jsonl")
    core, info, recipe = parts.core, data.info, data.recipe
    run = Run(setup=setup, data=data, parts=parts, plan=plan, progress=progress, tensorboard=tb,
              arch_name=describe_arch(core),  # "custom, from focalnet_tiny_srf: ..." when resized
              macs=artifacts.try_count_macs(core, info.in_chans, recipe.img_size))
    env.say(f"focalnet train: {run.arch_name} ({sum(p.numel() for p in core.parameters()) / 1e6:.2f} M parameters"
            + (f", {run.macs / 1e6:.1f} M MACs at {recipe.img_size} px" if run.macs else "")
            + f") on {info.name} ({info.num_train} train / {info.num_eval} {info.eval_split} images, "
            f"{info.num_classes} classes), recipe {recipe.name}, {env.world_size} process(es) on {env.device}, "
            f"global batch {parts.global_batch}, lr {parts.lr:.2e}, output {out}")
    if setup.precision_choice:
        env.say(f"note: --precision auto: {setup.precision_choice}")
    if setup.allocator:
        env.say(f"note: memory: {setup.allocator}")
    if plan.note:
        env.say(plan.note)
    if resume is not None:
        env.say(f"resumed from {resume.path} after epoch {progress.start_epoch} (step {progress.global_step})"
                + (f"; changed: {', '.join(setup.changes)}" if setup.changes else ""))
    progress.loop_start = time.perf_counter() - plan.probe_s
    return run


def finish(run: Run, *, t_start: float) -> dict:
    """summary.json, the confusion matrix and model.safetensors of the final weights; returns the summary."""
    setup, data, p = run.setup, run.data, run.progress
    if p.final_eval is None:  # resumed a finished run: evaluate once more for the report
        p.final_eval = evaluate_weights(run, unwrap_model(run.parts.model))
    summary = artifacts.build_summary(
        history=p.history, final=p.final_eval, final_ema=p.final_ema_eval, best=p.best, info=data.info,
        model_name=run.arch_name, num_params=sum(q.numel() for q in run.parts.core.parameters()), macs=run.macs,
        img_size=data.recipe.img_size, train_time=p.history[-1]["elapsed"] if p.history else 0.0,
        wall_time=time.time() - t_start, world_size=setup.env.world_size, device=str(setup.env.device),
        config=run.config(), stopped_early=p.stopped_early, updates_per_epoch=data.updates_per_epoch,
        precision=setup.precision, precision_choice=setup.precision_choice,
    )
    if setup.allocator:
        summary["allocator"] = setup.allocator
    if p.warnings:
        summary["warnings"] = list(p.warnings)
    if setup.env.is_main:
        write_final_files(run, summary)
        for line in artifacts.summary_lines(summary) + [f"warning: {w}" for w in p.warnings]:
            setup.env.say(line)
    return summary


