"""Training checkpoints that never lose a run, and the random state that makes --resume exact.

Checkpoints are plain dicts of tensors and Python values (they load with torch.load(weights_only=True)),
written to a temporary file and renamed, so that a crash or a full disk while saving leaves the previous
checkpoint intact. `checkpoints/last.pth` holds everything that carries across epochs (format
TRAIN_CHECKPOINT_FORMAT); `checkpoints/best.pth` the weights of the best epoch (format BEST_WEIGHTS_FORMAT).
"""
from __future__ import annotations

import errno
import os
import random
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
    "CheckpointSaveError",
    "save_training_checkpoint",
    "load_training_checkpoint",
    "best_weights",
    "restore_training_state",
    "seed_everything",
    "get_rng_state",
    "set_rng_state",
]

TRAIN_CHECKPOINT_FORMAT = "focalnet-train-v1"
BEST_WEIGHTS_FORMAT = "focalnet-weights-v1"
# the keys of a training checkpoint that best.pth keeps (weights and what is needed to use them)
_WEIGHT_KEYS = ("format", "model", "arch", "variant", "class_names", "epoch", "config", "data", "preprocessing")


class CheckpointSaveError(FocalNetError, OSError):
    """A checkpoint could not be written (full disk, permissions); the previous one is intact."""


# --------------------------------------------------------------------------------------------------------
# Checkpoint files
# --------------------------------------------------------------------------------------------------------


def save_training_checkpoint(state: dict, path: Union[str, os.PathLike]) -> Path:
    """Write `state` atomically. On failure (ENOSPC and any other OSError) the temporary file is removed,
    the previous file at `path` is untouched, and CheckpointSaveError says so."""
    path = Path(path)
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


def load_training_checkpoint(path: Union[str, os.PathLike]) -> dict:
    """Read a training checkpoint (weights_only=True: no code runs) and check that it is one."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pth"
    if not path.exists():
        raise CheckpointError(f"no training checkpoint at {path}; --resume takes a run folder or its checkpoints/last.pth")
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("format") != TRAIN_CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a focalnet training checkpoint (it holds weights only); use --pretrained {path} "
            "to start a new run from its weights"
        )
    state["path"] = str(path)
    return state


def best_weights(state: dict, record: dict) -> dict:
    """best.pth from a training checkpoint: the weights and what is needed to use them, and the epoch's metrics."""
    weights = {k: state[k] for k in _WEIGHT_KEYS if k in state}
    weights["format"] = BEST_WEIGHTS_FORMAT
    weights["metrics"] = record
    return weights


def restore_training_state(state: dict, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                           scaler: Optional[torch.amp.GradScaler], ema: Optional[nn.Module]) -> None:
    """Load every state that carries across epochs back into the run's objects, the random state last."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:  # None: the caller rebuilt the schedule (--resume with a new --lr or --epochs)
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    set_rng_state(state["rng"])


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
