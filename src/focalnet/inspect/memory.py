"""Activation memory of a forward pass, measured, and the guard that refuses an input that would not fit.

Activation memory is measured two ways, both at the ATen level (what PyTorch's dispatcher hands out), so
neither includes the parameters, the allocator's rounding nor the scratch space inside oneDNN/cuDNN kernels:
- `saved_bytes`: tensors autograd keeps for backward during a training-mode forward (saved_tensors_hooks,
  each storage counted once, parameters excluded, the input included as the stem saves it); this is what
  batch size and image size cost in training.
- `peak_live_bytes`: the largest total of tensor storages alive at once during an inference forward
  (`torch.no_grad`), tracked op by op with weak references; the input, the parameters and views of them
  are not counted.
Both run on the meta device by default, so a 4096 x 4096 image costs no memory to measure.

`check_memory` is the guard `predict` and the pictures call before a forward: the measured peak, with a
margin, against the memory free on the device.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable, Optional, Union

import torch
import torch.nn as nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..errors import FocalNetError
from ..flops import Size, image_hw, input_channels

__all__ = [
    "activation_memory",
    "ActivationMemory",
    "meta_copy",
    "meta_from_arch",
    "available_memory",
    "check_memory",
    "InputTooLargeError",
]


class _LiveStorageTracker(TorchDispatchMode):
    """Tracks the total bytes of tensor storages created inside it that are still alive, op by op.

    `exclude`: storages that exist already (parameters, buffers, the input); views of them (a transposed
    weight in F.linear) allocate nothing and are not counted."""

    def __init__(self, exclude: Iterable[int] = ()) -> None:
        super().__init__()
        self._exclude = set(exclude)
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _prune(self) -> None:
        dead = [k for k, (ref, _) in self._live.items() if ref.expired()]
        for k in dead:
            self.current -= self._live.pop(k)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._prune()  # whatever died since the last op is free before this op allocates
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self._live and key not in self._exclude:
                    self._live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


@dataclass
class ActivationMemory:
    img_size: tuple[int, int]
    batch_size: int
    saved_bytes: int  # kept by autograd for backward in a training-mode forward (parameters excluded)
    peak_live_bytes: int  # largest total of live tensors during an inference forward (input excluded)
    device: str


def meta_from_arch(arch: dict) -> nn.Module:
    """A FocalNet of architecture `arch` (a model's `.arch`, or a checkpoint's) on the meta device."""
    from ..models import model_from_arch

    with torch.device("meta"):
        return model_from_arch(arch)


def meta_copy(model: nn.Module) -> nn.Module:
    """The same architecture on the meta device (no memory): rebuilt from `model.arch` for FocalNets,
    else a deep copy moved to meta (which briefly copies the parameters)."""
    arch = getattr(model, "arch", None)
    if isinstance(arch, dict) and "family" in arch:
        meta = meta_from_arch(arch)
        meta.variant = getattr(model, "variant", None)
        return meta
    return copy.deepcopy(model).to("meta")


def activation_memory(
    model: nn.Module, img_size: Size = 224, batch_size: int = 1, device: Optional[str] = "meta"
) -> ActivationMemory:
    """Measure activation memory of one forward pass (see the module docstring for what is counted).

    device="meta" (default) measures on a meta copy without allocating anything; device=None runs the
    model where it is (real memory, same numbers: tests/test_profile.py checks that)."""
    m = meta_copy(model) if device == "meta" else model
    dev = next(m.parameters()).device
    h, w = image_hw(img_size)
    x = torch.zeros(batch_size, input_channels(model), h, w, device=dev)
    was_training = m.training

    param_storages = {t.untyped_storage()._cdata for t in (*m.parameters(), *m.buffers())}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in param_storages:
            seen.setdefault(storage._cdata, storage.nbytes())
        return t

    try:
        m.train()
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = m(x)
        del out
        m.eval()
        with torch.no_grad(), _LiveStorageTracker(exclude=param_storages | {x.untyped_storage()._cdata}) as tracker:
            out = m(x)
        del out
    finally:
        m.train(was_training)
    return ActivationMemory(
        img_size=(h, w), batch_size=batch_size, saved_bytes=sum(seen.values()), peak_live_bytes=tracker.peak,
        device=str(dev),
    )


class InputTooLargeError(FocalNetError, ValueError):
    """An input that would not fit in memory at the chosen size; the message says what to do."""


def available_memory(device: Union[str, torch.device] = "cpu") -> Optional[int]:
    """Bytes a new allocation can get: free GPU memory, or Linux's MemAvailable; None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(
    model: nn.Module,
    img_size: Size,
    batch_size: int = 1,
    what: str = "the input",
    device: Union[str, torch.device] = "cpu",
    margin: float = 1.5,
    estimate: Optional[int] = None,
) -> int:
    """Raise InputTooLargeError if an inference forward at `img_size` would not fit; return the estimate.

    The estimate is the measured peak of live activations (on the meta device, so the check itself costs
    nothing) times `margin` for kernel scratch space and allocator slack."""
    if estimate is None:
        estimate = activation_memory(model, img_size, batch_size).peak_live_bytes
    need = int(estimate * margin)
    free = available_memory(device)
    if free is not None and need > free:
        h, w = image_hw(img_size)
        raise InputTooLargeError(
            f"{what} at {h}x{w} px needs about {need / 2**30:.1f} GiB for a forward pass but only "
            f"{free / 2**30:.1f} GiB is free on {device}; pass a smaller size (--img-size) or crop the image"
        )
    return need
