"""Record what focal modulation computes, through forward hooks, without writing anything on the model.

The authors' code keeps `self.gates` and `self.modulator` on every module in every forward (memory held
until the next forward, and state that breaks tracing). Here a recorder attaches forward hooks to the
observation points of each chosen block's FocalModulation, collects detached copies, and removes its hooks
when it is done (vit-pytorch's Recorder: attach, collect, eject):

    modulation.f               -> (B, 2C + L + 1, H, W) = q | z^0 | gates, split (C, C, L + 1)
    modulation.focal_layers[l] -> z^{l+1} = GELU(DWConv(z^l))          (B, C, H, W)
    modulation.global_act      -> z^{L+1} = GELU(mean_HW z^L)           (B, C, 1, 1)
    modulation.h               -> the modulator M = h(z_out)            (B, C, H, W)

    with ModulationRecorder(model, blocks="last") as rec:
        logits = model(x)
    for r in rec.records:   # one ModulationRecord per chosen block
        r.gates, r.contexts, r.global_context, r.modulator
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from ..errors import FocalNetError

__all__ = ["ModulationRecord", "ModulationRecorder", "RecorderError", "BlockRef", "resolve_blocks", "record_modulation"]

BlockSpec = Union[None, str, int, Sequence[Union[str, int]]]

_POINTS = ("f", "focal_layers", "global_act", "h")


class RecorderError(FocalNetError, ValueError):
    """A block that does not exist, or a model whose modulation cannot be observed (e.g. fused)."""


@dataclass(frozen=True)
class BlockRef:
    """A block of the model: its module path, stage index, index within the stage, and the stride of
    its feature map in input pixels."""

    name: str
    stage: int
    index: int
    stride: int
    module: nn.Module


@dataclass
class ModulationRecord:
    """What one block's focal modulation computed in the last forward (detached tensors).

    `gates[:, l]` multiplies `contexts[l]` (= z^{l+1}, l = 0..L-1); `gates[:, L]` multiplies
    `global_context` (z^{L+1}). `input_size` is the (H, W) of the image given to the model: the map
    (h, w) covers h * stride x w * stride input pixels, of which the top-left H x W are the image
    (the model pads bottom/right)."""

    block: str
    stage: int
    index: int
    stride: int
    kernel_sizes: list[int]
    input_size: tuple[int, int]
    query: torch.Tensor  # q, (B, C, h, w)
    context_input: torch.Tensor  # z^0, (B, C, h, w)
    gates: torch.Tensor  # (B, L + 1, h, w)
    contexts: list[torch.Tensor]  # [z^1 .. z^L], each (B, C, h, w)
    global_context: torch.Tensor  # z^{L+1}, (B, C, 1, 1)
    modulator: torch.Tensor  # M = h(z_out), (B, C, h, w)

    @property
    def focal_level(self) -> int:
        return len(self.contexts)

    @property
    def map_size(self) -> tuple[int, int]:
        return tuple(self.modulator.shape[-2:])


def _blocks_of(model: nn.Module) -> list[list[BlockRef]]:
    """Blocks grouped by stage, for hierarchical (`stages[i].blocks[j]`) and isotropic (`blocks[j]`) models."""
    info = getattr(model, "feature_info", None)
    if hasattr(model, "stages"):
        out = []
        for i, stage in enumerate(model.stages):
            stride = int(info[i]["reduction"]) if info else 4 * 2**i
            out.append([BlockRef(f"stages.{i}.blocks.{j}", i, j, stride, b) for j, b in enumerate(stage.blocks)])
        return out
    if hasattr(model, "blocks"):
        stride = int(info[0]["reduction"]) if info else 16
        return [[BlockRef(f"blocks.{j}", 0, j, stride, b) for j, b in enumerate(model.blocks)]]
    raise RecorderError(
        f"{type(model).__name__} has neither `stages[i].blocks` nor `blocks`: not a FocalNet this recorder knows"
    )


def _describe(stages: list[list[BlockRef]]) -> str:
    if len(stages) == 1 and stages[0] and stages[0][0].name.startswith("blocks."):
        return f"blocks 0..{len(stages[0]) - 1} (or negative, -1 = last)"
    parts = [f"stage {i}: blocks 0..{len(s) - 1}" for i, s in enumerate(stages)]
    return "STAGE.BLOCK with " + ", ".join(parts) + " (negative counts from the end)"


def _index(seq: Sequence, i: int) -> Optional[int]:
    j = i + len(seq) if i < 0 else i
    return j if 0 <= j < len(seq) else None


def resolve_blocks(model: nn.Module, blocks: BlockSpec = None) -> list[BlockRef]:
    """The blocks a spec names, in model order.

    None or "last": the last block of every stage (of the model, for isotropic ones); "all": every block;
    "S.B" (hierarchical: block B of stage S), "B" (isotropic), "S.*" / "*" ranges, negative indices from the
    end, or module paths ("stages.2.blocks.5", "blocks.3"). A block that does not exist is an error that
    lists the ones that do."""
    stages = _blocks_of(model)
    isotropic = stages[0][0].name.startswith("blocks.") if stages and stages[0] else False
    if blocks is None:
        blocks = ["last"]
    elif isinstance(blocks, (str, int)):
        blocks = [blocks]
    chosen: dict[str, BlockRef] = {}
    by_name = {b.name: b for s in stages for b in s}
    for spec in blocks:
        text = str(spec).strip()
        if text == "last":
            picked = [s[-1] for s in stages if s]
        elif text in ("all", "*"):
            picked = [b for s in stages for b in s]
        elif text in by_name:
            picked = [by_name[text]]
        elif isotropic and re.fullmatch(r"-?\d+", text):
            j = _index(stages[0], int(text))
            if j is None:
                raise RecorderError(f"block {text} does not exist; the model has {_describe(stages)}")
            picked = [stages[0][j]]
        elif not isotropic and re.fullmatch(r"-?\d+\.(-?\d+|\*)", text):
            s_txt, b_txt = text.split(".")
            i = _index(stages, int(s_txt))
            if i is None:
                raise RecorderError(f"block {text}: stage {s_txt} does not exist; the model has {_describe(stages)}")
            if b_txt == "*":
                picked = list(stages[i])
            else:
                j = _index(stages[i], int(b_txt))
                if j is None:
                    raise RecorderError(f"block {text}: stage {i} has no block {b_txt}; the model has {_describe(stages)}")
                picked = [stages[i][j]]
        else:
            raise RecorderError(f"cannot read the block {text!r}; the model has {_describe(stages)}, or 'last' / 'all'")
        for b in picked:
            chosen[b.name] = b
    order = {b.name: k for k, b in enumerate(b for s in stages for b in s)}
    return sorted(chosen.values(), key=lambda b: order[b.name])


def _check_observable(block: BlockRef) -> nn.Module:
    mod = getattr(block.module, "modulation", None)
    fused = getattr(block.module, "fused", False)  # focalnet.deploy's FusedBlock says so (a class attribute)
    missing = [p for p in _POINTS if not isinstance(getattr(mod, p, None), nn.Module)]
    if mod is None or missing or fused:
        why = "is fused for inference" if fused else f"lacks {', '.join(missing) or 'modulation'}"
        raise RecorderError(
            f"block {block.name}: its focal modulation {why}, so gates and modulator cannot be observed; "
            "record an unfused model (build it again with focalnet.create_model / load_model, before any "
            "fuse_for_inference())"
        )
    return mod


class ModulationRecorder:
    """Forward hooks on the focal modulation of chosen blocks; nothing is written on the model.

    Use as a context manager (hooks removed on exit), or call `attach()` / `eject()`. After each forward of
    the model, `records` holds one ModulationRecord per chosen block (detached; moved to `to` if given).
    `rec(x)` runs the model and returns (output, records)."""

    def __init__(
        self, model: nn.Module, blocks: BlockSpec = None, to: Optional[Union[str, torch.device]] = "cpu"
    ) -> None:
        if isinstance(model, torch.jit.ScriptModule):
            raise RecorderError("a TorchScript module cannot take forward hooks; record the eager model")
        self.model = model
        self.blocks = resolve_blocks(model, blocks)
        self.to = torch.device(to) if to is not None else None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._store: dict[str, dict] = {}
        self._input_size: Optional[tuple[int, int]] = None
        self._forwards = 0  # forwards of the model seen while attached

    # -- attach / eject ---------------------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> "ModulationRecorder":
        if self.attached:
            return self
        mods = [(b, _check_observable(b)) for b in self.blocks]
        self._handles.append(self.model.register_forward_pre_hook(self._on_model_input))
        for block, mod in mods:
            store = self._store.setdefault(block.name, {})
            self._handles.append(mod.f.register_forward_hook(self._on_f(store, len(mod.focal_layers))))
            for l, layer in enumerate(mod.focal_layers):
                self._handles.append(layer.register_forward_hook(self._keep(store, f"z{l + 1}")))
            self._handles.append(mod.global_act.register_forward_hook(self._keep(store, "global")))
            self._handles.append(mod.h.register_forward_hook(self._keep(store, "modulator")))
        return self

    def eject(self) -> nn.Module:
        """Remove every hook; returns the model, as it was."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return self.model

    def __enter__(self) -> "ModulationRecorder":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.eject()

    def __del__(self) -> None:  # a forgotten recorder must not leave hooks behind
        try:
            self.eject()
        except Exception:
            pass

    # -- hooks --------------------------------------------------------------------------------------------

    def _save(self, t: torch.Tensor) -> torch.Tensor:
        # a contiguous copy: a slice would keep the whole (B, 2C + L + 1, H, W) projection alive
        t = t.detach()
        if self.to is not None and t.device != self.to:
            return t.to(self.to).contiguous()
        return t.clone(memory_format=torch.contiguous_format)

    def _on_model_input(self, module: nn.Module, args: tuple) -> None:
        for store in self._store.values():
            store.clear()  # a new forward: nothing stale survives into its records
        self._forwards += 1
        x = args[0] if args else None
        self._input_size = tuple(x.shape[-2:]) if isinstance(x, torch.Tensor) else None

    def _on_f(self, store: dict, L: int):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            C = (out.shape[1] - L - 1) // 2  # (B, 2C + L + 1, H, W) -> q, z^0, gates
            q, z0, gates = torch.split(out, (C, C, L + 1), dim=1)
            store["query"], store["z0"], store["gates"] = self._save(q), self._save(z0), self._save(gates)

        return hook

    def _keep(self, store: dict, key: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            store[key] = self._save(out)

        return hook

    # -- results ------------------------------------------------------------------------------------------

    def clear(self) -> None:
        for store in self._store.values():
            store.clear()
        self._forwards = 0

    @property
    def records(self) -> list[ModulationRecord]:
        out = []
        for block in self.blocks:
            store = self._store.get(block.name, {})
            mod = block.module.modulation
            L = len(mod.focal_layers)
            needed = ["query", "z0", "gates", *[f"z{l + 1}" for l in range(L)], "global", "modulator"]
            missing = [k for k in needed if k not in store]
            if self._forwards == 0:
                raise RecorderError(
                    f"nothing was recorded for block {block.name}: run a forward of the model while the recorder "
                    "is attached (inside `with recorder:`)"
                )
            if missing:
                raise RecorderError(
                    f"block {block.name}: the observation points {', '.join(missing)} did not run in the forward; "
                    "the model's modulation was changed (fused for inference?): record an unfused model"
                )
            out.append(ModulationRecord(
                block=block.name, stage=block.stage, index=block.index, stride=block.stride,
                kernel_sizes=list(getattr(mod, "kernel_sizes", [])),
                input_size=self._input_size or tuple(store["modulator"].shape[-2:]),
                query=store["query"], context_input=store["z0"], gates=store["gates"],
                contexts=[store[f"z{l + 1}"] for l in range(L)], global_context=store["global"],
                modulator=store["modulator"],
            ))
        return out

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, list[ModulationRecord]]:
        """Run the model on x with the hooks attached (attaching them for this call if needed)."""
        was_attached = self.attached
        self.attach()
        try:
            out = self.model(x)
            return out, self.records
        finally:
            if not was_attached:
                self.eject()


@torch.no_grad()
def record_modulation(
    model: nn.Module, x: torch.Tensor, blocks: BlockSpec = None
) -> tuple[torch.Tensor, list[ModulationRecord]]:
    """One inference forward of `model` on x, returning (output, records); the model keeps no hook."""
    was_training = model.training
    model.eval()
    try:
        return ModulationRecorder(model, blocks)(x)
    finally:
        model.train(was_training)
