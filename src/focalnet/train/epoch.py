"""The epochs of a run (`run_epochs`, a phase of `focalnet.train.run.train`) and what one epoch does: train,
evaluate, re-plan under --time-budget (focalnet.train.budget decides), checkpoint (focalnet.train.state
describes the file), and the files a run writes as it goes and at its end.
"""
from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn as nn

from . import artifacts, budget
from .budget import eval_interval
from .build import run_preprocessing
from .config import progress_on, write_yaml
from .data import epoch_seed, set_loader_epoch
from .distributed import replicas_identical, unwrap_model
from .loop import NonFiniteLossError, evaluate, train_one_epoch
from .optim import not_learning, warmup_steps
from .phases import Run
from .state import TrainingCheckpoint, get_rng_state, save_training_checkpoint, seed_everything
from ..utils import atomic_json

__all__ = ["run_epochs", "train_epoch", "evaluate_epoch", "evaluate_weights", "replan", "out_of_time",
           "check_divergence", "save_epoch", "write_final_files", "CURVES_EVERY_S"]


def run_epochs(run: Run) -> None:
    """Epoch after epoch: train, evaluate, re-plan (--time-budget: after the first epoch, and before any epoch that
    would overrun), checkpoint and report, until the planned epochs are done."""
    cfg, env, p = run.setup.cfg, run.setup.env, run.progress
    epoch = p.start_epoch - 1
    while epoch + 1 < run.plan.epochs:  # `epochs` may be re-planned after the first epoch (--time-budget)
        epoch += 1
        t_epoch = time.perf_counter()
        record, stats = train_epoch(run, epoch)
        if (epoch + 1) % eval_interval(cfg.eval_every, run.data.info, time_budget=cfg.time_budget) == 0 or epoch + 1 == run.plan.epochs:
            evaluate_epoch(run, record)
        if env.distributed:
            record["replicas_identical"] = replicas_identical(run.parts.model)
        epoch_time = time.perf_counter() - t_epoch
        p.update_times.append(stats["time"] / max(stats["steps"], 1))
        p.overheads.append(max(epoch_time - stats["time"], 0.0))
        record["epoch_time"] = epoch_time
        record["elapsed"] = p.train_time_before + (time.perf_counter() - p.loop_start)
        if run.plan.planned and epoch == p.start_epoch and epoch + 1 != run.plan.epochs:
            replan(run, budget.after_first_epoch(
                run.plan, cfg.time_budget, epoch=epoch, epoch_s=epoch_time, elapsed_s=record["elapsed"],
                update_s=p.update_times[-1], overhead_s=p.overheads[-1], steps_done=p.global_step))
        last_epoch = epoch + 1 == run.plan.epochs
        p.history.append(record)
        check_divergence(run, record)
        is_best = "test_top1" in record and record["test_top1"] > p.best["top1"]
        if is_best:
            p.best = {"top1": record["test_top1"], "top5": record["test_top5"], "epoch": epoch + 1}
        if env.is_main:
            save_epoch(run, record, epoch, is_best=is_best)
        if env.distributed:
            torch.distributed.barrier()
        if cfg.time_budget and not last_epoch and out_of_time(run, epoch, record):
            break




# --------------------------------------------------------------------------------------------------------
# One epoch
# --------------------------------------------------------------------------------------------------------


def evaluate_weights(run: Run, model: nn.Module, **kw: Any) -> dict:
    cfg = run.setup.cfg
    return evaluate(model, run.data.eval_loader, device=run.setup.env.device, num_classes=run.data.info.num_classes,
                    precision=run.setup.precision, skip_bad_images=cfg.skip_bad_images, **kw)


def train_epoch(run: Run, epoch: int) -> tuple[dict, dict]:
    """One pass over the training data, from generators reseeded for (seed, epoch, rank): (the epoch's
    record, train_one_epoch's numbers)."""
    cfg, env, parts, p = run.setup.cfg, run.setup.env, run.parts, run.progress
    set_loader_epoch(run.data.train_loader, epoch, cfg.seed, env.rank)
    seed_everything(epoch_seed(cfg.seed, epoch, env.rank))
    try:
        stats = train_one_epoch(
            parts.train_model, run.data.train_loader, parts.optimizer, parts.criterion, device=env.device, epoch=epoch,
            num_epochs=run.plan.epochs, scheduler=run.plan.scheduler, global_step=p.global_step,
            mixup_fn=parts.mixup_fn,
            precision=run.setup.precision, scaler=parts.scaler, accum_steps=cfg.accum_steps,
            clip_grad=run.data.recipe.clip_grad, ema=parts.ema, skip_bad_images=cfg.skip_bad_images,
            progress=progress_on(cfg.progress) and env.is_main, last_good_checkpoint=p.last_checkpoint,
            max_updates=run.plan.total_updates,
        )
    except NonFiniteLossError as e:  # the advice names a command that works (a lower --lr is allowed on resume)
        raise NonFiniteLossError(f"{e}. {_nan_advice(run)}") from None
    p.global_step = stats["global_step"]
    record: dict = dict(epoch=epoch + 1, step=p.global_step, train_loss=stats["loss"], lr=stats["lr"],
                        train_img_per_s=stats["img_per_s"], train_time=stats["time"])
    if stats["bad_images"]:
        record["bad_images"] = stats["bad_images"]
    return record, stats


def evaluate_epoch(run: Run, record: dict) -> None:
    """Test loss and accuracy of the weights (and of the EMA) into the epoch's record."""
    bars = progress_on(run.setup.cfg.progress) and run.setup.env.is_main
    ev = evaluate_weights(run, unwrap_model(run.parts.model), progress=bars, desc="test")
    run.progress.final_eval = ev
    record.update(test_loss=ev["loss"], test_top1=ev["top1"], test_top5=ev["top5"], eval_time=ev["time"])
    if run.parts.ema is not None:
        eev = evaluate_weights(run, run.parts.ema.module, progress=bars, desc="test (EMA)")
        run.progress.final_ema_eval = eev
        record.update(ema_test_loss=eev["loss"], ema_test_top1=eev["top1"], ema_test_top5=eev["top5"])


def replan(run: Run, decision: budget.Replan) -> None:
    """Go on with the plan --time-budget decided on: said, and written to config.yaml when it changed."""
    if decision.plan is run.plan:
        return
    run.plan = decision.plan
    run.setup.env.say(decision.said)
    if run.setup.env.is_main:
        write_yaml(run.config(), run.setup.out / "config.yaml")


def out_of_time(run: Run, epoch: int, record: dict) -> bool:
    """Whether the run stops after epoch `epoch` (budget.before_next_epoch re-plans the steps left to fit the
    time left first); stopped, the final weights are evaluated if this epoch did not."""
    p = run.progress
    decision = budget.before_next_epoch(run.plan, run.setup.cfg.time_budget, epoch=epoch, elapsed_s=record["elapsed"],
                                        update_times=p.update_times, overheads=p.overheads, steps_done=p.global_step)
    replan(run, decision)
    if decision.stop is None:
        return False
    p.stopped_early = decision.stop
    run.setup.env.say("warning: " + p.stopped_early)
    if p.final_eval is None or "test_top1" not in record:
        p.final_eval = evaluate_weights(run, unwrap_model(run.parts.model))
    return True


def _nan_advice(run: Run) -> str:
    """What to run after a non-finite loss: continue from the last good checkpoint at a tenth of the lr."""
    lower = f"--lr {run.parts.lr / 10:.3g}"
    if run.progress.last_checkpoint:
        return f"Continue from it at a lower rate: focalnet train --resume {run.setup.out} {lower}"
    return f"Start again at a lower rate: add {lower} --overwrite"


def check_divergence(run: Run, record: dict) -> None:
    """Warn (once) when the run learns nothing (optim.not_learning says why and what to try)."""
    p = run.progress
    if any("not learning" in w for w in p.warnings):
        return
    warm = warmup_steps(run.data.recipe, updates_per_epoch=run.data.updates_per_epoch, total=run.plan.total_updates)
    warning = not_learning(record, history=p.history, num_classes=run.data.info.num_classes, lr=run.parts.lr,
                           global_step=p.global_step, warmup=warm)
    if warning is not None:
        p.warnings.append(warning)
        run.setup.env.say("warning: " + warning)


# --------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------


def _training_checkpoint(run: Run, record: dict, epoch: int) -> TrainingCheckpoint:
    """checkpoints/last.pth after epoch `epoch` (counted from 0): every state that carries across epochs."""
    parts, plan, p, core = run.parts, run.plan, run.progress, run.parts.core
    return TrainingCheckpoint(
        model=unwrap_model(parts.model).state_dict(), optimizer=parts.optimizer.state_dict(),
        scheduler=plan.scheduler.state_dict(), rng=get_rng_state(), epoch=epoch + 1, global_step=p.global_step,
        config=run.config(), total_updates=plan.total_updates, arch=getattr(core, "arch", None),
        variant=getattr(core, "variant", None), class_names=list(run.data.info.class_names),
        scaler=parts.scaler.state_dict() if parts.scaler is not None else None,
        ema=parts.ema.state_dict() if parts.ema is not None else None, best=p.best, history=p.history,
        train_time=record["elapsed"], data=run.data.info.to_dict(),
        preprocessing=run_preprocessing(run.data.info, run.data.recipe),
    )


# drawing curves.png takes 0.3-0.9 s (matplotlib): after every epoch it was most of a small fine-tune's time
# (epochs of a fraction of a second); it is redrawn at most this often, and always at the end of the run
CURVES_EVERY_S = 30.0


def _draw_curves(run: Run) -> None:
    run.progress.curves_at = time.perf_counter()
    _decorate(run, "curves.png", artifacts.plot_curves, run.progress.history, run.setup.out / "curves.png")


def save_epoch(run: Run, record: dict, epoch: int, *, is_best: bool) -> None:
    """Process 0 after each epoch: checkpoints, metrics.jsonl, curves.png, TensorBoard and the epoch's line."""
    out, p = run.setup.out, run.progress
    ckpt_dir = out / "checkpoints"
    state = _training_checkpoint(run, record, epoch)
    save_training_checkpoint(state, ckpt_dir / "last.pth")
    p.last_checkpoint = str(ckpt_dir / "last.pth")
    if is_best:
        save_training_checkpoint(state.best_weights(record), ckpt_dir / "best.pth")
    artifacts.write_metrics(p.history, out / "metrics.jsonl")
    if time.perf_counter() - p.curves_at >= CURVES_EVERY_S:
        _draw_curves(run)
    if run.tensorboard is not None:
        artifacts.tensorboard_log(run.tensorboard, record)
    run.setup.env.say(artifacts.epoch_line(record, run.plan.epochs))


def write_final_files(run: Run, summary: dict) -> None:
    """summary.json, confusion.png / .csv and model.safetensors (our FocalNets only: other models given to
    train() have no architecture record to save)."""
    out, info, core, final = run.setup.out, run.data.info, run.parts.core, run.progress.final_eval
    # the model first: a picture that cannot be drawn (an odd class name, a broken font) never loses it
    if getattr(core, "arch", None) is not None and hasattr(core, "variant"):
        from ..checkpoints import save_model

        # the run's input (normalisation, size, crop, interpolation) travels with the weights, so that
        # eval/predict/visualize/export feed them alike
        pre = run_preprocessing(info, run.data.recipe)
        save_model(unwrap_model(run.parts.model), out / "model.safetensors", class_names=list(info.class_names),
                   preprocessing=pre)
    atomic_json(summary, out / "summary.json")
    if run.progress.history:
        _draw_curves(run)
    _decorate(run, "confusion.png and confusion.csv", artifacts.write_confusion, final["confusion"], info.class_names,
              out, title=f"{run.arch_name} on {info.name} ({info.eval_split}): top-1 {final['top1']:.2f}%")
    if run.tensorboard is not None:
        run.tensorboard.close()


def _decorate(run: Run, what: str, draw: Any, *args: Any, **kwargs: Any) -> None:
    """A picture or table beside the results: a failure is a warning, never the loss of the run."""
    try:
        draw(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 -- any failure of a plot must leave the model and checkpoints
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        run.progress.warnings.append(f"could not write {what} ({type(e).__name__}: {reason}); the model and "
                                     "checkpoints are saved")
        run.setup.env.say("warning: " + run.progress.warnings[-1])

