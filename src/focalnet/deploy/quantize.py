"""int8 FocalNet for CPUs with VNNI: post-training static quantization with PyTorch's PT2E flow.

    from focalnet.deploy.quantize import quantize_model, save_quantized, load_quantized
    images = calibration_images(preprocessing_for(model), "photos/")  # focalnet.inspect's; or "fashion-mnist"
    q = quantize_model(model, images.split(64))        # (N, C, H, W) normalised images, a few hundred
    save_quantized(q, "model.int8.pt2")                # loads again without calibration data
    fast = load_quantized("model.int8.pt2").compile()  # inductor lowers it to oneDNN's int8 kernels

How, in order (`quantize_model`):
1. the model is fused (`fuse_for_inference`, float32): LayerNorm affines and layer scales are folded into the
   1x1 convolutions, so the graph is convolutions, LayerNorm's normalisation, GELU, the gating and the residual
   sums;
2. it is captured by `torch.export` (strict: the quantizer finds the convolutions by the source function each
   node records), any batch size, at the calibration images' height and width;
3. the X86 Inductor quantizer (torchao's: PyTorch's own copy, `torch.ao.quantization.quantize_pt2e`, is gone
   from torch 2.14) marks every convolution and the head for int8: activations per tensor (unsigned,
   calibrated by histogram observers), weights per output channel (signed), except the groups in `keep_float`;
4. the calibration images run through the observed graph, and `convert_pt2e` writes the scales into it as
   quantize / dequantize pairs around float operators (the portable "QDQ" form);
5. the result is exported again, which `save_quantized` writes as a torch.export program (`.pt2`) with the
   model's description inside, and ONNX (QDQ) writes from as well (`export_quantized_onnx`).
Eager, the QDQ graph runs float convolutions on rounded values (correct, not fast); `QuantizedFocalNet.compile()`
(inductor with frozen weights) fuses each dequantize -> convolution -> quantize into one oneDNN int8 kernel.

What stays float: the X86 quantizer has no int8 LayerNorm, mean or broadcast multiply, so LayerNorm, the
global context (a mean and a GELU), the gating (z^l times a gate map) and the residual stream are computed in
float32 whatever `keep_float` says; the convolutions feeding them take int8 inputs and give float outputs.
`keep_float` keeps whole groups of convolutions in float too (KEEP_FLOAT_GROUPS); the default (h, the modulator)
was chosen by measuring accuracy group by group (`benchmarks/lowp_accuracy.py --sweep`, docs/speed.md).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import FocalNetError
from ..models import FocalNet, FocalNetIsotropic
from ..preprocess import Preprocessing
from ..utils import atomic_save_file, atomic_write, check_output, output_error
from .fused import FusedFocalNet, fuse_for_inference

__all__ = [
    "QuantizationError",
    "QuantizedFocalNet",
    "quantize_model",
    "save_quantized",
    "load_quantized",
    "export_quantized_onnx",
    "calibration_images",
    "dataset_images",
    "agreement",
    "KEEP_FLOAT_GROUPS",
    "DEFAULT_KEEP_FLOAT",
    "DEFAULT_CALIBRATION_IMAGES",
]

PathLike = Union[str, os.PathLike]

# the description a saved program carries, as a JSON file inside it
_INFO_FILE = "focalnet.json"
_FORMAT = "focalnet-int8-pt2e/1"
DEFAULT_CALIBRATION_IMAGES = 256
# the largest batch the exported program takes (torch.export needs a bound to reason about shapes)
_MAX_BATCH = 4096


class QuantizationError(FocalNetError, RuntimeError):
    """A model that cannot be quantized as asked, or a file that is not a quantized FocalNet."""


# ----------------------------------------------------------------------------------------------------------
# which convolutions may stay float: groups of nodes in the exported graph of a fused model
# ----------------------------------------------------------------------------------------------------------
def _weight_name(node: torch.fx.Node) -> str:
    """The attribute path of a convolution's or linear's weight ('model.stages.0.blocks.0.blocks.1.h_w')."""
    w = node.args[1] if len(node.args) > 1 else None
    return str(w.target) if isinstance(w, torch.fx.Node) and w.op == "get_attr" else ""


def _is_conv(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and node.target is torch.ops.aten.conv2d.default


def _groups(node: torch.fx.Node) -> int:
    return int(node.args[6]) if len(node.args) > 6 else 1


# group name -> whether a node belongs to it (names as FusedBlock keeps its folded weights)
KEEP_FLOAT_GROUPS: dict[str, Callable[[torch.fx.Node], bool]] = {
    "stem": lambda n: _is_conv(n) and _weight_name(n).startswith("model.stem."),
    "downsample": lambda n: _is_conv(n) and ".downsample." in _weight_name(n),
    "head": lambda n: n.op == "call_function" and n.target is torch.ops.aten.linear.default,
    "context": lambda n: _is_conv(n) and _weight_name(n).endswith(".ctx_w"),  # z^0
    "gates": lambda n: _is_conv(n) and _weight_name(n).endswith(".qg_w"),  # the query and the L + 1 gates
    "depthwise": lambda n: _is_conv(n) and _groups(n) > 1,  # the focal levels z^1 .. z^L
    "modulator": lambda n: _is_conv(n) and _weight_name(n).endswith(".h_w"),  # h(z_out)
    "proj": lambda n: _is_conv(n) and _weight_name(n).endswith(".proj_w"),
    "mlp": lambda n: _is_conv(n) and _weight_name(n).endswith((".fc1_w", ".fc2_w")),
}
# Chosen by measurement (docs/speed.md, "bf16 and int8 on the CPU"): on the main job's model (Fashion-MNIST) int8
# everywhere lost 0.03 points of test top-1 and no group kept in float moved that by more than 0.08 points; on
# FocalNet-T with trained-like weights, h (the modulator: its input is the gated sum of every context level, the
# widest-ranging map of a block) was the group whose int8 cost most (minimum logit cosine on photos 0.87 -> 0.92
# kept in float; the next, proj, 0.90). So h stays float: about 1/12 of a block's multiply-adds.
DEFAULT_KEEP_FLOAT: tuple[str, ...] = ("modulator",)


def _torchao() -> tuple[Any, Any]:
    """torchao's PT2E entry points and X86 quantizer; importing the quantizer also registers inductor's int8
    lowering passes, which compiling (and loading) a quantized program needs."""
    try:
        from torchao.quantization.pt2e import quantize_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer
    except (ImportError, AttributeError, RuntimeError) as e:  # missing, or built for another torch
        raise QuantizationError(
            f"int8 quantization needs torchao working with torch {torch.__version__} (PyTorch's PT2E quantization "
            f"moved there): pip install 'focalnet[export]' ({type(e).__name__}: {str(e)[:200]})"
        ) from None
    return quantize_pt2e, x86_inductor_quantizer


def _check_keep_float(keep_float: Iterable[str]) -> tuple[str, ...]:
    keep = tuple(dict.fromkeys(keep_float))
    unknown = [k for k in keep if k not in KEEP_FLOAT_GROUPS]
    if unknown:
        raise QuantizationError(f"unknown group(s) to keep in float: {', '.join(unknown)}; "
                                f"choose from {', '.join(KEEP_FLOAT_GROUPS)}")
    return keep


def _quantizer(keep_float: Sequence[str]) -> Any:
    """The X86 Inductor quantizer (static, per-channel weights) that leaves the `keep_float` groups in float."""
    _, xiq = _torchao()
    rules = [KEEP_FLOAT_GROUPS[k] for k in keep_float]

    class FocalNetX86Quantizer(xiq.X86InductorQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            # a node marked "not quantized" first is skipped by every pattern the X86 quantizer knows
            for node in model.graph.nodes:
                if any(rule(node) for rule in rules):
                    xiq._annotate_nodes_not_quantize(node)
            return super().annotate(model)

    return FocalNetX86Quantizer().set_global(xiq.get_default_x86_inductor_quantization_config())


# ----------------------------------------------------------------------------------------------------------
# the quantized model
# ----------------------------------------------------------------------------------------------------------
class QuantizedFocalNet(nn.Module):
    """An int8 FocalNet: a torch.export program with quantize / dequantize pairs (QDQ), and what it is.

    forward(x) runs the QDQ graph eagerly (float arithmetic on int8-rounded values: for checking, not speed);
    `compile()` gives the fast callable. `info` holds the variant, architecture, preprocessing, class names,
    the input size it was captured at, the float groups and the calibration's source and size.
    """

    def __init__(self, program: torch.export.ExportedProgram, info: dict) -> None:
        super().__init__()
        self.program = program
        self.module = program.module()
        self.info = dict(info)
        self.in_chans = int(info["in_chans"])
        self.num_classes = int(info["num_classes"])
        self.img_size = tuple(int(v) for v in info["img_size"])

    def train(self, mode: bool = True) -> "QuantizedFocalNet":
        # an exported program has no training mode (its module refuses train() and eval() alike): the int8 model
        # is inference only, so eval() is a no-op that works, and train() says why it cannot
        if mode:
            raise QuantizationError("an int8 model is for inference only: train the float model, then quantize it")
        self.training = False
        return self

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans or tuple(x.shape[-2:]) != self.img_size:
            h, w = self.img_size
            raise QuantizationError(
                f"this int8 model takes (B, {self.in_chans}, {h}, {w}) images (the size it was calibrated at), "
                f"got {tuple(x.shape)}: resize the input, or quantize again at that size"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self.module(x)

    def compile(self, **options: Any) -> Callable[[Tensor], Tensor]:
        """The graph through torch.compile (inductor) with frozen weights, so that each dequantize ->
        convolution -> quantize becomes one oneDNN int8 kernel; call it under torch.no_grad(). The first call
        compiles (tens of seconds)."""
        import torch._inductor.config as inductor_config

        _torchao()  # inductor's int8 passes
        compiled = torch.compile(self.module, options=options or None)

        def run(x: Tensor) -> Tensor:
            self._check_input(x)
            # freezing is read when a graph is compiled: on the first call and on a recompilation for a new shape
            with inductor_config.patch(freezing=True):
                return compiled(x)

        return run

    def extra_repr(self) -> str:
        return (f"variant={self.info.get('variant')}, img_size={self.img_size}, "
                f"keep_float={self.info.get('keep_float')}, calibration={self.info.get('calibration')}")


def _fused_float32(model: nn.Module) -> FusedFocalNet:
    if isinstance(model, FusedFocalNet):
        if model.dtype != torch.float32:
            raise QuantizationError(f"quantize a float32 model (this fused model computes in {model.dtype})")
        return model
    if not isinstance(model, (FocalNet, FocalNetIsotropic)):
        raise QuantizationError(f"quantize_model expects a FocalNet, got {type(model).__name__}")
    param = next(model.parameters())
    if param.device.type != "cpu" or param.dtype != torch.float32:
        raise QuantizationError(f"quantize a float32 model on the CPU (this one is {param.dtype} on "
                                f"{param.device}): model.float().cpu() first")
    return fuse_for_inference(model, prepack=False)  # a copy: `model` itself is left as it is


def _batches(calibration: Union[Tensor, Iterable[Tensor]], in_chans: int) -> list[Tensor]:
    batches = [calibration] if isinstance(calibration, Tensor) else list(calibration)
    batches = [b.float() for b in batches if b.numel()]
    if not batches:
        raise QuantizationError("no calibration images: give a few hundred images like the ones the model will see")
    shapes = {(b.ndim, b.shape[1], *b.shape[-2:]) for b in batches}
    if len(shapes) > 1 or batches[0].ndim != 4 or batches[0].shape[1] != in_chans:
        raise QuantizationError(f"calibration images must be (N, {in_chans}, H, W) batches of one size, "
                                f"got shapes {sorted(tuple(b.shape) for b in batches)[:3]}")
    return batches


def _export(module: nn.Module, example: Tensor, strict: bool) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    return torch.export.export(module, (example,), dynamic_shapes=({0: batch},), strict=strict)


@torch.no_grad()
def quantize_model(model: nn.Module, calibration: Union[Tensor, Iterable[Tensor]], *,
                   keep_float: Iterable[str] = DEFAULT_KEEP_FLOAT, source: str = "tensors") -> QuantizedFocalNet:
    """An int8 copy of `model` (a FocalNet, or its float32 fused model), calibrated on `calibration`: a
    (N, C, H, W) tensor or an iterable of such batches, normalised as the model expects (`calibration_images`).
    The result takes any batch size at that H x W. `keep_float`: groups of KEEP_FLOAT_GROUPS left in float.
    `source` names the calibration data in the saved description."""
    keep = _check_keep_float(keep_float)
    fused = _fused_float32(model)
    batches = _batches(calibration, fused.in_chans)
    quantize_pt2e, _ = _torchao()
    # two images: torch.export takes a batch dimension of size 1 for a constant
    example = torch.cat(batches)[:2].expand(2, -1, -1, -1).contiguous()
    captured = _export(fused, example, strict=True)  # strict: nodes record their source (F.conv2d, nn.Linear)
    observed = quantize_pt2e.prepare_pt2e(captured.module(), _quantizer(keep))
    for b in batches:
        observed(b)
    converted = quantize_pt2e.convert_pt2e(observed)
    info = dict(
        format=_FORMAT, variant=fused.variant, arch=fused.arch, in_chans=fused.in_chans,
        num_classes=fused.num_classes, img_size=list(example.shape[-2:]), keep_float=list(keep),
        calibration=dict(source=str(source), images=int(sum(len(b) for b in batches))),
        preprocessing=getattr(model, "preprocessing", None), class_names=getattr(model, "class_names", None),
        torch=torch.__version__,
    )
    return QuantizedFocalNet(_export(converted, example, strict=False), info)


# ----------------------------------------------------------------------------------------------------------
# calibration data, and how far int8 moved the outputs
# ----------------------------------------------------------------------------------------------------------
def dataset_images(pre: Preprocessing, name: str, split: str = "train") -> tuple[Tensor, Tensor]:
    """A built-in data set's `split` ('fashion-mnist', 'digits') as a model with preprocessing `pre` takes it
    (`focalnet.inspect.preprocessing_for(model)`), and its labels: scaled to [0, 1], gray repeated to the
    model's channels, resized to its input size if that differs, normalised with its mean and std (as training
    evaluates)."""
    import torch.nn.functional as F

    from ..datasets import builtin_dataset, load_digits, load_fashion_mnist

    canonical = builtin_dataset(name)
    if canonical == "fashion-mnist":
        images, labels = load_fashion_mnist(download=False)[0][split]
    elif canonical == "digits":
        images, labels = load_digits()[split]
    else:
        raise QuantizationError(f"{name!r} is not a built-in data set (fashion-mnist, digits)")
    x = images.float().div_(255.0).expand(-1, pre.in_chans, -1, -1)  # (N, 1, h, w) -> (N, C, h, w)
    if tuple(x.shape[-2:]) != (pre.img_size, pre.img_size):
        x = F.interpolate(x, size=(pre.img_size, pre.img_size), mode="bilinear", antialias=True, align_corners=False)
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (pre.mean, pre.std))
    return (x - mean) / std, labels


def _folder_files(folder: Path) -> list[Path]:
    from PIL import Image

    readable = {ext.lower() for ext in Image.registered_extensions()}  # every format Pillow opens
    files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in readable)
    if not files:
        raise QuantizationError(f"{folder} holds no image files (searched its sub-folders too)")
    return files


def calibration_images(pre: Preprocessing, source: PathLike, *, num_images: int = DEFAULT_CALIBRATION_IMAGES,
                       seed: int = 0, skip: int = 0) -> Tensor:
    """`num_images` images from `source` as (N, C, H, W), preprocessed by `pre` (a model's preprocessing,
    `focalnet.inspect.preprocessing_for(model)`): a built-in data set by name ('fashion-mnist', 'digits': its
    training split, scaled and normalised as training evaluates) or a folder of image files, searched
    recursively (the model's evaluation transform: resize, center crop, normalise). A seeded random sample;
    `skip` leaves out its first images (skip=num_images: a held-out set)."""
    from ..datasets import builtin_dataset
    from ..images import load_image
    from ..preprocess import eval_transform

    if num_images < 1:
        raise QuantizationError(f"the number of calibration images must be positive, got {num_images}")
    name = builtin_dataset(str(source))
    if name is not None:
        images = dataset_images(pre, name, "train")[0]
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        return images[order[skip : skip + num_images]]
    folder = Path(source)
    if not folder.is_dir():
        raise QuantizationError(
            f"{source} is neither a folder of images nor a built-in data set (fashion-mnist, digits)"
        )
    files = _folder_files(folder)
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = [files[i] for i in order[skip : skip + num_images]]
    if not chosen:
        raise QuantizationError(f"{folder} has {len(files)} images, none left after skipping {skip}")
    transform = eval_transform(pre)
    return torch.stack([transform(load_image(f, mode=pre.mode)) for f in chosen])


@torch.no_grad()
def agreement(reference: Callable[[Tensor], Tensor], other: Callable[[Tensor], Tensor], images: Tensor,
              batch_size: int = 64) -> dict:
    """How far `other` moved `reference`'s logits on `images`: the share of images whose top-1 class is the
    same, the smallest cosine similarity of an image's logits, and the largest absolute difference."""
    same = total = 0
    cos_min, diff_max = 1.0, 0.0
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        a, b = reference(x).float(), other(x).float()
        same += int((a.argmax(1) == b.argmax(1)).sum())
        total += len(x)
        cos_min = min(cos_min, float(torch.nn.functional.cosine_similarity(a, b, dim=1).min()))
        diff_max = max(diff_max, float((a - b).abs().max()))
    return dict(images=total, top1_agreement=same / max(1, total), cosine_min=cos_min, max_abs_diff=diff_max)


# ----------------------------------------------------------------------------------------------------------
# files: the torch.export program (loads without calibration data), ONNX QDQ
# ----------------------------------------------------------------------------------------------------------
def _writable(path: PathLike, overwrite: bool) -> Path:
    """`path`, checked before any work (check_output), its folder made."""
    path = check_output(path, kind="file", overwrite=overwrite)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(path, e) from None
    return path


def save_quantized(q: QuantizedFocalNet, path: PathLike, *, overwrite: bool = False) -> Path:
    """Write `q` as a torch.export program (`.pt2`) with its description inside; atomic (temporary file, then
    rename). `load_quantized` reads it back, no calibration needed."""
    path = _writable(path, overwrite)
    extra = {_INFO_FILE: json.dumps(q.info, default=str)}
    with atomic_write(path, "wb") as f:  # a file object: torch names no temporary file in a warning
        torch.export.save(q.program, f, extra_files=extra)
    return path


def load_quantized(path: PathLike) -> QuantizedFocalNet:
    """A QuantizedFocalNet from a file written by `save_quantized` (or `focalnet quantize`)."""
    path = Path(path)
    if not path.is_file():
        raise QuantizationError(f"{path}: no such file (write one with `focalnet quantize`)")
    _torchao()  # the quantize / dequantize operators the program calls are registered by torchao
    extra = {_INFO_FILE: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as e:  # a zip that is no program, a program of an incompatible torch: one message
        raise QuantizationError(f"{path} is not a torch.export program this torch {torch.__version__} can "
                                f"read ({type(e).__name__}: {str(e)[:200]})") from None
    try:
        info = json.loads(extra[_INFO_FILE] or "{}")
    except ValueError:
        info = {}
    if info.get("format") != _FORMAT:
        raise QuantizationError(f"{path} is a torch.export program but not an int8 FocalNet written by "
                                f"focalnet (no {_INFO_FILE} of format {_FORMAT} inside)")
    return QuantizedFocalNet(program, info)


def export_quantized_onnx(q: QuantizedFocalNet, path: PathLike, *, overwrite: bool = False) -> Path:
    """Write `q` as ONNX in the QDQ form (QuantizeLinear / DequantizeLinear around float operators, which
    onnxruntime fuses into int8 kernels), any batch size at q.img_size; atomic."""
    path = _writable(path, overwrite)
    example = torch.zeros(2, q.in_chans, *q.img_size)
    with torch.no_grad():
        onnx_program = torch.onnx.export(q.program, (example,), dynamo=True, input_names=["image"],
                                         output_names=["logits" if q.num_classes else "features"], verbose=False)
    atomic_save_file(path, lambda tmp: onnx_program.save(tmp))
    return path
