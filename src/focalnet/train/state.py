"""Training checkpoints that never lose a run, and the random state that makes --resume exact.

`TrainingCheckpoint` is the one description of `checkpoints/last.pth`: everything that carries across epochs.
It is written (`to_dict`, `save_training_checkpoint`) and read (`from_dict`, `load_training_checkpoint`) here
only. On disk it is a plain dict of tensors and Python values (it loads with torch.load(weights_only=True)),
format TRAIN_CHECKPOINT_FORMAT, with the keys every earlier version wrote, so a last.pth of an earlier
version resumes; `focalnet.load_model` reads its weights like any checkpoint. Files are written to a
temporary file and renamed, so that a crash or a full disk while saving leaves the previous checkpoint
intact. `checkpoints/best.pth` holds the weights of the best epoch (format BEST_WEIGHTS_FORMAT).
"""
from __future__ import annotations

import dataclasses
import errno
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn as nn

from ..checkpoints import CheckpointError, safe_torch_load
from ..errors import FocalNetError
from ..utils import atomic_torch_save

__all__ = [
    "TRAIN_CHECKPOINT_FORMAT",
    "BEST_WEIGHTS_FORMAT",
    "TrainingCheckpoint",
    "CheckpointSaveError",
    "save_training_checkpoint",
    "load_training_checkpoint",
    "restore_training_state",
    "seed_everything",
    "get_rng_state",
    "set_rng_state",
]

TRAIN_CHECKPOINT_FORMAT = "focalnet-train-v1"
BEST_WEIGHTS_FORMAT = "focalnet-weights-v1"
# the fields of a training checkpoint that best.pth keeps (weights and what is needed to use them)
_WEIGHT_KEYS = ("model", "arch", "variant", "class_names", "epoch", "config", "data", "preprocessing")


@dataclass(frozen=True)
class TrainingCheckpoint:
    """checkpoints/last.pth: every state that carries across epochs (see focalnet.train.run's docstring).

    The first seven fields every version wrote; the others are read with their defaults from a file that
    lacks them (an earlier version's)."""

    model: dict  # the state dict of the model itself (not of a DDP or torch.compile wrapper)
    optimizer: dict
    scheduler: dict
    rng: dict  # get_rng_state()
    epoch: int  # epochs finished
    global_step: int  # optimizer steps done
    config: dict  # the run's config.yaml
    total_updates: Optional[int] = None  # optimizer steps of the whole run; None: the epochs' (older files)
    arch: Optional[dict] = None  # constructor arguments (None: a model given to train() that has none)
    variant: Optional[str] = None
    class_names: list = field(default_factory=list)
    scaler: Optional[dict] = None  # the GradScaler's (--precision fp16)
    ema: Optional[dict] = None
    best: dict = field(default_factory=lambda: {"top1": -1.0, "epoch": None})
    history: list = field(default_factory=list)  # one record per epoch, as in metrics.jsonl
    train_time: float = 0.0  # training seconds up to this epoch
    data: Optional[dict] = None  # DataInfo.to_dict()
    preprocessing: Optional[dict] = None  # the run's input: what model.safetensors carries too
    path: Optional[str] = field(default=None, compare=False)  # the file it was read from (never saved)

    def to_dict(self) -> dict:
        """The file's layout: a plain dict, `format` first."""
        out: dict = {"format": TRAIN_CHECKPOINT_FORMAT}
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "path"})
        return out

    @classmethod
    def from_dict(cls, state: Any, *, path: str = "") -> "TrainingCheckpoint":
        """Read the layout of any version; what is missing or of the wrong kind is a CheckpointError naming it."""
        where = path or "the training checkpoint"
        if not isinstance(state, dict) or state.get("format") != TRAIN_CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{where} is not a focalnet training checkpoint (it holds weights only); use --pretrained {where} "
                "to start a new run from its weights"
            )
        values = {}
        for f in dataclasses.fields(cls):
            if f.name == "path" or f.name not in state or (state[f.name] is None and f.name in _NONE_IS_DEFAULT):
                continue
            value, kind = state[f.name], _KINDS.get(f.name)
            if kind is not None and value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
                raise CheckpointError(f"{where}: {f.name!r} must be {_KIND_WORDS[kind]}, got {type(value).__name__}; "
                                      "the file is damaged or was not written by focalnet train")
            values[f.name] = value
        missing = [f.name for f in dataclasses.fields(cls)[:7] if values.get(f.name) is None]
        if missing:
            raise CheckpointError(f"{where} lacks {', '.join(missing)}: the file is damaged or not a whole training "
                                  "checkpoint; start a new run (--pretrained takes its weights)")
        if values["epoch"] < 0 or values["global_step"] < 0:
            raise CheckpointError(f"{where}: epoch and global_step must be 0 or more")
        return cls(**values, path=path or None)

    def best_weights(self, metrics: dict) -> dict:
        """best.pth: the weights and what is needed to use them, and the epoch's metrics."""
        weights: dict = {"format": BEST_WEIGHTS_FORMAT}
        weights.update({k: getattr(self, k) for k in _WEIGHT_KEYS})
        weights["metrics"] = metrics
        return weights


# what each field must be when present (a damaged or hand-made file fails here, naming the field)
_KINDS = dict(model=dict, optimizer=dict, scheduler=dict, rng=dict, epoch=int, global_step=int, config=dict,
              total_updates=int, arch=dict, class_names=list, best=dict, history=list, train_time=(int, float))
_KIND_WORDS = {dict: "a mapping", int: "an integer", list: "a list", (int, float): "a number"}
_NONE_IS_DEFAULT = ("class_names", "best", "history", "train_time")  # None there meant "none yet"


class CheckpointSaveError(FocalNetError, OSError):
    """A checkpoint could not be written (full disk, permissions); the previous one is intact."""


# --------------------------------------------------------------------------------------------------------
# Checkpoint files
# --------------------------------------------------------------------------------------------------------


def save_training_checkpoint(state: Union[TrainingCheckpoint, dict], path: Union[str, os.PathLike]) -> Path:
    """Write `state` atomically. On failure (ENOSPC and any other OSError) the temporary file is removed,
    the previous file at `path` is untouched, and CheckpointSaveError says so."""
    path = Path(path)
    if isinstance(state, TrainingCheckpoint):
        state = state.to_dict()
    try:
        atomic_torch_save(state, path)
    except (OSError, RuntimeError) as e:
        # torch.save reports a failed write as RuntimeError ("PytorchStreamWriter failed writing file")
        err = getattr(e, "errno", None)
        reason = os.strerror(err) if err else str(e).splitlines()[0]
        hint = " Free some space (or choose another --output) and continue with --resume." if err in (errno.ENOSPC, errno.EDQUOT) else ""
        keep = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} had been written yet"
        raise CheckpointSaveError(err or errno.EIO, f"could not write the checkpoint {path}: {reason}; {keep}.{hint}") from None
    return path


def load_training_checkpoint(path: Union[str, os.PathLike]) -> TrainingCheckpoint:
    """Read a training checkpoint (weights_only=True: no code runs): a run folder or its checkpoints/last.pth."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pth"
    if not path.exists():
        raise CheckpointError(f"no training checkpoint at {path}; --resume takes a run folder or its checkpoints/last.pth")
    return TrainingCheckpoint.from_dict(safe_torch_load(path), path=str(path))


def restore_training_state(ckpt: TrainingCheckpoint, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                           scheduler: Any, scaler: Optional[torch.amp.GradScaler], ema: Optional[nn.Module],
                           new_schedule: bool = False) -> None:
    """Load every state that carries across epochs back into the run's objects, the random state last.

    new_schedule: --resume changed the learning rate or the length of the run, so `scheduler` is the new
    plan's (built for the new lr and length): it is moved to the step reached and the optimizer's groups keep
    the new base rates; otherwise the saved schedule, exactly."""
    fresh = [g.get("initial_lr") for g in optimizer.param_groups]
    model.load_state_dict(ckpt.model)
    optimizer.load_state_dict(ckpt.optimizer)
    if new_schedule:
        for group, initial in zip(optimizer.param_groups, fresh):
            group["initial_lr"] = initial
        scheduler.step_update(num_updates=int(ckpt.global_step))
    else:
        scheduler.load_state_dict(ckpt.scheduler)
    if scaler is not None and ckpt.scaler:
        scaler.load_state_dict(ckpt.scaler)
    if ema is not None and ckpt.ema is not None:
        ema.load_state_dict(ckpt.ema)
    set_rng_state(ckpt.rng)


# --------------------------------------------------------------------------------------------------------
# Random state
# --------------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (dropout, drop path, Mixup, augmentations)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """Every global random state as tensors and plain values (loadable with weights_only=True)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
