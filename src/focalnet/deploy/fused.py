"""Inference-only FocalNet: constants folded into the projections, CPU kernels fused, batches tiled.

`fuse_for_inference(model)` returns a `FusedFocalNet`: a new module computing the same function as `model` in
eval mode (float32 outputs agree within float rounding, ~1e-6), built for speed. `model` is left untouched;
the fused module holds its own copies of the weights, so it is a snapshot: fuse again after changing weights.

Derived from the model rather than written beside it:
- the fused model is a copy of `model` in which only each stage's blocks are replaced: the stem, the
  downsampling, the final norm, the head and `forward_features` / `forward_head` are the model's own;
- a block's inference constants are folded into its weights as data (`fold_block`, exact algebra in float64):
  the affine part of a pre-norm LayerNorm into the 1x1 projection after it, f(LN(x)) = (W diag w) x_hat + (W b + c),
  so only the normalisation itself runs per pixel (norm1 -> f, norm2 -> fc1); layer scale gamma into the
  projection that ends its branch (pre-norm: proj, fc2) or into the LayerNorm that does (post-norm: norm1,
  norm2); `normalize_modulator` (divide the gated sum by L+1) into the weight of h; dropout and stochastic
  depth, identities at inference, go away;
- one forward (`FusedBlock.forward`) computes a block, written in four fused ops (convolution, convolution +
  GELU, residual add, convolution + residual add); a kernel set says what runs each op. `OneDNNKernels`
  runs oneDNN's fused kernels and writes residual sums in place; `PlainKernels` runs ordinary PyTorch ops out
  of place. A new block flag is one edit in `fold_block` or `FusedBlock.forward`, whichever kernels run.

When oneDNN's kernels run (`OneDNNKernels`): float32 (or bf16, below) on a CPU, no autograd, not under autocast
or a tracer (jit, ONNX, torch.export, torch.compile), and only where this torch build has them
(`ONEDNN_FUSED_KERNELS`):
- f is computed as two 1x1 convolutions, context (C channels) and query + gates (C + L + 1), so that the
  depthwise convolutions get a dense channels-last input instead of a strided slice that would be copied;
- each focal level is one oneDNN depthwise convolution with GELU applied in its epilogue, and MLP fc1 likewise;
- the residual additions after proj and fc2 (pre-norm) are done by oneDNN into the residual stream itself
  (a `sum` post-op), so no (B, C, H, W) temporary is allocated for them;
- the gated aggregation accumulates in place (addcmul_) into one buffer;
- each stage runs on tiles of the batch (whole images, about `tile_rows` pixels per tile), so that every
  intermediate of a block stays in cache and the allocator reuses the same small blocks instead of mapping
  and page-faulting fresh memory for every 20-80 MB activation. Images are independent everywhere in a
  FocalNet (the global context is a per-image mean), so tiling changes nothing in the result.
Anywhere else (CUDA, bf16/fp16 autocast, autograd, torch.compile, tracing or export) the same folded weights
run through `PlainKernels`, so the module stays differentiable, compilable and exportable.
tests/test_speed.py counts the oneDNN kernels that run (and that none run on the plain path).

Observation: a fused model has no `modulation.f`, `focal_layers`, `global_act` or `h` submodules, so no hook
can be placed on them; record on the unfused model (the recorder in `focalnet.inspect` refuses a fused model).
The state dict of a fused model is not a checkpoint: save the original model instead.

bf16 (`fuse_for_inference(model, dtype=torch.bfloat16)`, or dtype="bf16"): the same folded weights (folded in
float64 from the float32 model, then rounded once) and the whole network stored and computed in bf16, by the
same oneDNN kernels, on a CPU that computes bf16 natively (AVX-512 BF16 or AMX, probed at run time by
`native_bf16`); inputs are cast to bf16 and outputs back to the caller's dtype. Elsewhere oneDNN would emulate
bf16 at about a quarter of float32's speed (docs/speed.md), so `fuse_for_inference` refuses with
`NativePrecisionError` rather than build a slow model. LayerNorm's statistics and the global context's mean
are accumulated in float32 by PyTorch's bf16 kernels; the residual stream is held in bf16.
"""
from __future__ import annotations

import copy
from typing import Callable, Iterable, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..layers import _exporting
from ..models import FocalNet, FocalNetBlock, FocalNetIsotropic, _FocalNetBase
from ..precision import NativePrecisionError, native_bf16, parse_precision
from .folding import _layer_norm, fold_block
from .kernels import FUSED_DTYPES, ONEDNN_FUSED_KERNELS, ONEDNN_PREPACK, OneDNNKernels, PlainKernels

__all__ = [
    "fuse_for_inference",
    "FusedFocalNet",
    "FusedBlocks",
    "FusedBlock",
    "fold_block",
    "PlainKernels",
    "OneDNNKernels",
    "is_fused",
    "native_bf16",
    "NativePrecisionError",
    "FUSED_DTYPES",
    "DEFAULT_TILE_ROWS",
    "ONEDNN_FUSED_KERNELS",
    "ONEDNN_PREPACK",
]

# Pixels per tile of a stage. At 8192, a stage-1 tile of FocalNet-T (96 channels, 56 x 56 = 3136 px per image,
# so 2 images) keeps its largest intermediate, the MLP hidden map, at 12.6 MB: within the 32 MB L3 of the
# machines this was tuned on, and below glibc's largest mmap threshold (32 MB), so that it is reused from the
# heap rather than mapped afresh. The figures (no tiling, 2048, 8192, 32768 px) are in docs/speed.md, "What was
# tried", step 5; no script for that sweep is kept.
DEFAULT_TILE_ROWS = 8192


def is_fused(model: nn.Module) -> bool:
    """True for a module made by `fuse_for_inference` (it has no hook points of the focal modulation)."""
    return isinstance(model, FusedFocalNet)


def _plain_ops_only(x: Tensor) -> bool:
    """Whether the oneDNN fused kernels must be avoided: they have no autograd formula, no CUDA kernel and no
    bf16/fp16 autocast rule, and tracers (jit, ONNX, dynamo) should see ordinary ops (inductor fuses by itself)."""
    # tracers first: they must not reach the checks below, which dynamo cannot trace
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting() or _exporting():
        return True
    if x.device.type != "cpu" or x.dtype not in FUSED_DTYPES or not ONEDNN_FUSED_KERNELS:
        return True
    if torch.is_grad_enabled() and x.requires_grad:
        return True
    return torch.is_autocast_enabled("cpu")


# ----------------------------------------------------------------------------------------------------------
# the fused block, the tiled run of a stage's blocks, the fused model
# ----------------------------------------------------------------------------------------------------------
class FusedBlock(nn.Module):
    """One FocalNet block with its inference constants folded (`fold_block`), computed by one forward.

    forward(x, kernels): with `OneDNNKernels` it updates `x` in place (the residual sums land in it) and returns
    it; `FusedBlocks` calls it so only on maps the fused model allocated itself. The default, `PlainKernels`,
    never writes into `x`.
    """

    fused = True  # what focalnet.inspect's recorder looks for, to refuse observing a fused block

    def __init__(self, block: FocalNetBlock, pack_hint: Optional[tuple[int, int]] = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        mod = block.modulation
        self.dim = mod.dim
        self.focal_level = mod.focal_level
        self.kernel_sizes = list(mod.kernel_sizes)
        self.post_norm = block.use_post_norm
        weights = fold_block(block, dtype)
        self.norm1 = _layer_norm(self.dim, block.norm1.eps, weights.pop("norm1_w"), weights.pop("norm1_b"))
        self.norm2 = _layer_norm(self.dim, block.norm2.eps, weights.pop("norm2_w"), weights.pop("norm2_b"))
        self.mod_norm = copy.deepcopy(mod.norm)  # LayerNorm2d (use_post_norm_in_modulation) or Identity
        for name, t in weights.items():
            self.register_buffer(name, t)
        self.pack_hint = pack_hint
        self._packed: dict[str, tuple[Tensor, int, int]] = {}
        if pack_hint is not None:
            self.pack(pack_hint)

    def pack(self, hw: tuple[int, int]) -> None:
        """Reorder each convolution weight once into oneDNN's computing layout for maps of about `hw` pixels
        (the layout oneDNN picks may depend on the size; any size computes correctly with it). CPU weights in
        FUSED_DTYPES only; the buffers stay as they are, and each packed copy is used only while its buffer is
        unchanged (same storage, same version), so a later load_state_dict is never shadowed."""
        self._packed = {}
        if not ONEDNN_PREPACK:
            return
        with torch.no_grad():
            for name, w in self.named_buffers(recurse=False):
                if w.ndim != 4 or w.dtype not in FUSED_DTYPES or w.device.type != "cpu":
                    continue
                groups = self.dim if name.startswith("focal_w") else 1
                pad = w.shape[-1] // 2
                size = [1, w.shape[1] * groups, *hw]
                packed = torch.ops.mkldnn._reorder_convolution_weight(w, [pad] * 2, [1, 1], [1, 1], groups, size)
                self._packed[name] = (packed, w._version, w.data_ptr())

    def _weight(self, name: str, kernels: type[PlainKernels]) -> Tensor:
        """The weight `name` for `kernels`: its packed copy for oneDNN's kernels while it is current."""
        w = getattr(self, name)
        if kernels is OneDNNKernels:
            entry = self._packed.get(name)
            if entry is not None and entry[1] == w._version and entry[2] == w.data_ptr():
                return entry[0]
        return w

    def __getstate__(self) -> dict:
        # packed oneDNN tensors cannot be pickled; they are derived data, rebuilt on unpickling (and deepcopy)
        state = self.__dict__.copy()
        state["_packed"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if self.pack_hint is not None:
            self.pack(self.pack_hint)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, focal_level={self.focal_level}, kernel_sizes={self.kernel_sizes}, "
                f"post_norm={self.post_norm}")

    def focal_weights(self, kernels: type[PlainKernels] = PlainKernels) -> list[Tensor]:
        return [self._weight(f"focal_w{level}", kernels) for level in range(self.focal_level)]

    def forward(self, x: Tensor, kernels: type[PlainKernels] = PlainKernels) -> Tensor:
        # pre-norm: x + proj(FM(LN(x))), x + fc2(GELU(fc1(LN(x)))); post-norm: x + LN(proj(FM(x))), x + LN(fc2(...))
        w = self._weight
        x = self._residual(x, self._modulation(x, kernels), w("proj_w", kernels), self.proj_b, self.norm1, kernels)
        hidden = kernels.conv_gelu(x if self.post_norm else self.norm2(x), w("fc1_w", kernels), self.fc1_b)
        return self._residual(x, hidden, w("fc2_w", kernels), self.fc2_b, self.norm2, kernels)

    def _modulation(self, x: Tensor, kernels: type[PlainKernels]) -> Tensor:
        """q * h(z_out) of the paper, through the modulation's LayerNorm if the model has one: proj's input.
        Each map is dropped as soon as it is used, so that within a tile the allocator reuses its blocks."""
        C, L = self.dim, self.focal_level
        xn = x if self.post_norm else self.norm1(x)
        ctx = kernels.conv(xn, self._weight("ctx_w", kernels), self.ctx_b)  # z^0
        qg = kernels.conv(xn, self._weight("qg_w", kernels), self.qg_b)
        del xn
        q, gates = qg[:, :C], qg[:, C:]  # (B, C, H, W) and (B, L + 1, H, W) views
        # hierarchical contextualization and gated aggregation, accumulated in place into one buffer
        agg = None
        for level, (k, w) in enumerate(zip(self.kernel_sizes, self.focal_weights(kernels))):
            ctx = kernels.conv_gelu(ctx, w, None, padding=k // 2, groups=C)  # z^l
            gate = gates[:, level : level + 1]
            agg = ctx * gate if agg is None else agg.addcmul_(ctx, gate)
        agg.addcmul_(F.gelu(ctx.mean((2, 3), keepdim=True)), gates[:, L:])  # global context z^{L+1}: (B, C, 1, 1)
        del ctx
        # modulation: q interacts with the aggregated context (a fresh conv output: multiplied in place)
        return self.mod_norm(kernels.conv(agg, self._weight("h_w", kernels), self.h_b).mul_(q))

    def _residual(self, x: Tensor, branch: Tensor, w: Tensor, b: Tensor, norm: nn.Module,
                  kernels: type[PlainKernels]) -> Tensor:
        """x + LN(conv(branch)) (post-norm) or x + conv(branch) (pre-norm: one oneDNN kernel adds into x)."""
        if self.post_norm:
            return kernels.add(x, norm(kernels.conv(branch, w, b)))
        return kernels.add_conv(x, branch, w, b)


class FusedBlocks(nn.Module):
    """The fused blocks of one stage, in place of the stage's block list. With oneDNN's kernels they run tile by
    tile of whole images (about `tile_rows` pixels) and update the stage's input in place; elsewhere, on the
    whole batch with `PlainKernels`."""

    fused = True  # what focalnet.inspect's recorder looks for, to refuse observing a fused block

    def __init__(self, blocks: Iterable[FocalNetBlock], tile_rows: Optional[int],
                 pack_hint: Optional[tuple[int, int]] = None, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(FusedBlock(b, pack_hint, dtype) for b in blocks)
        self.tile_rows = tile_rows

    def forward(self, x: Tensor) -> Tensor:
        if _plain_ops_only(x):
            for block in self.blocks:
                x = block(x, PlainKernels)
            return x
        # `x` is the stem's or a downsampling's output, never the caller's tensor: it may be written in place
        x = x.contiguous(memory_format=torch.channels_last)
        B, _, H, W = x.shape
        per_tile = B if self.tile_rows is None else max(1, self.tile_rows // max(1, H * W))
        for start in range(0, B, per_tile):
            tile = x[start : start + per_tile]
            for block in self.blocks:
                tile = block(tile, OneDNNKernels)  # in place: `tile` stays a view of `x`
        return x


def _pack_hints(model: _FocalNetBase) -> list[tuple[int, int]]:
    """(H, W) of the maps each block list sees at the model's own input size (its pretrained_cfg)."""
    side = int(model.pretrained_cfg["input_size"][-1])
    reductions = [info["reduction"] for info in model.feature_info]
    if not isinstance(model, FocalNet):
        reductions = reductions[:1]  # isotropic: one block list at the patch stride
    return [(max(1, side // r),) * 2 for r in reductions]


def _with_fused_blocks(model: _FocalNetBase, tile_rows: Optional[int], prepack: bool,
                       dtype: torch.dtype = torch.float32) -> _FocalNetBase:
    """A deep copy of `model` in `dtype` whose block lists are replaced by fused ones; the unfused blocks are not
    copied."""
    owners = list(model.stages) if isinstance(model, FocalNet) else [model]
    hints = _pack_hints(model) if prepack else [None] * len(owners)
    # deepcopy puts what `memo` maps an object's id to in place of a copy of that object
    memo = {id(o.blocks): nn.ModuleList([FusedBlocks(o.blocks, tile_rows, hint, dtype)])
            for o, hint in zip(owners, hints)}
    fused = copy.deepcopy(model, memo)
    if dtype != torch.float32:
        # the stem, downsampling, final norm and head; the fused blocks are in `dtype` already (and packed so)
        fused.to(dtype)
    fused.set_grad_checkpointing(False)  # nothing to recompute: a fused model has no backward of its own
    fused.set_activation_recompute(False)
    return fused


class FusedFocalNet(nn.Module):
    """An inference-only FocalNet made by `fuse_for_inference` (see the module docstring).

    Same forward API as the model it came from for inference: `forward`, `forward_features`,
    `forward_head(x, pre_logits=False)`, run by the model's own code on `self.model`, a copy of the model whose
    blocks are fused; no training switches, no intermediates, no hook points in the blocks. `dtype` is what it
    computes in: each call casts its input to it and its result back to the input's dtype.
    """

    def __init__(self, model: _FocalNetBase, tile_rows: Optional[int] = DEFAULT_TILE_ROWS, prepack: bool = True,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if not isinstance(model, (FocalNet, FocalNetIsotropic)):
            raise TypeError(f"fuse_for_inference expects a FocalNet or FocalNetIsotropic, got {type(model).__name__}")
        if tile_rows is not None and tile_rows < 1:
            raise ValueError(f"tile_rows must be a positive number of pixels (or None for no tiling), got {tile_rows}")
        self.tile_rows = tile_rows
        self.dtype = dtype
        with torch.no_grad():
            self.model = _with_fused_blocks(model, tile_rows, prepack, dtype)
        self.in_chans = model.in_chans
        self.num_classes = model.num_classes
        self.num_features = model.num_features
        self.variant = model.variant
        self.arch = dict(model.arch)
        self.hierarchical = isinstance(model, FocalNet)
        self.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> "FusedFocalNet":
        if mode:
            raise RuntimeError(
                "a fused FocalNet is for inference only (dropout and stochastic depth are folded away); "
                "train the original model and call fuse_for_inference() again"
            )
        return super().train(False)

    def _in_own_dtype(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """fn(x) computed in self.dtype, returned in x's dtype (a float32 caller gets float32 back)."""
        if x.dtype == self.dtype:
            return fn(x)
        return fn(x.to(self.dtype)).to(x.dtype)

    def forward_features(self, x: Tensor) -> Tensor:
        return self._in_own_dtype(self.model.forward_features, x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self._in_own_dtype(lambda t: self.model.forward_head(t, pre_logits=pre_logits), x)

    def forward(self, x: Tensor) -> Tensor:
        return self._in_own_dtype(self.model, x)


def _fused_dtype(dtype: Union[torch.dtype, str], device: torch.device) -> torch.dtype:
    """The dtype a fused model computes in, from a dtype or a precision name ("bf16"); a reduced precision the
    CPU would only emulate is refused (NativePrecisionError), never run slowly without a word."""
    dtype = parse_precision(dtype) if isinstance(dtype, str) else dtype
    if device.type != "cpu":
        return dtype  # the plain path: what the accelerator computes is its own affair
    if dtype not in FUSED_DTYPES:
        raise NativePrecisionError(
            f"a fused model on the CPU computes in float32 or bf16, not {dtype}: CPUs have no fast float16 kernels "
            "in PyTorch; pass dtype=torch.bfloat16 (on a CPU with native bf16) or torch.float32"
        )
    if dtype == torch.bfloat16 and not native_bf16():
        raise NativePrecisionError(
            "this CPU does not compute bf16 natively (no AVX-512 BF16, no AMX): oneDNN would emulate it at about "
            "a quarter of float32's speed. Use dtype=torch.float32 (the fused float32 path is this CPU's fastest), "
            "or a CPU with avx512_bf16 or amx_bf16 (AMD Zen 4 and later, Intel Sapphire Rapids and later)"
        )
    return dtype


def fuse_for_inference(model: _FocalNetBase, tile_rows: Optional[int] = DEFAULT_TILE_ROWS, prepack: bool = True,
                       dtype: Union[torch.dtype, str, None] = None) -> FusedFocalNet:
    """A fused, inference-only copy of `model` (a FocalNet or FocalNetIsotropic); `model` is not changed.

    tile_rows: pixels per batch tile of a stage on the CPU fast path (None: the whole batch at once).
    prepack: reorder the convolution weights once into oneDNN's layout (CPU weights; False: on each call,
    as plain PyTorch does). The layout is chosen for the model's own input size; other sizes compute the same.
    dtype: what it computes in (default: the model's, float32 for a model as built): torch.float32, or
    torch.bfloat16 ("bf16") on a CPU that computes bf16 natively (`native_bf16`; elsewhere NativePrecisionError
    says what to do) or on an accelerator.
    """
    param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    device = param.device if param is not None else torch.device("cpu")
    dtype = dtype or (param.dtype if param is not None else torch.float32)
    return FusedFocalNet(model, tile_rows=tile_rows, prepack=prepack, dtype=_fused_dtype(dtype, device))
