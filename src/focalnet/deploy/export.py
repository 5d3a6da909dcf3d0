"""Export a FocalNet to ONNX or TorchScript, and check the export against PyTorch.

The model works at any input size: maps whose size is not a multiple of a stride are zero-padded on the
bottom/right. A Python `if pad:` would be evaluated once on the example input and frozen into the graph
(what goes wrong in the Hugging Face export at sizes that are not multiples of 32), so `pad_to_multiple`
always emits the pad, computed from the symbolic shape, while exporting or tracing. `verify_export` runs
the exported file at several sizes (onnxruntime for ONNX) and compares with the eager model.

ONNX exporters:
- "dynamo" (default, PyTorch's current exporter): torch.export with dynamic batch, height and width,
  then translation to ONNX; slow on CPU (tens of seconds for a small model, minutes for large ones,
  mostly symbolic shape reasoning).
- "torchscript": PyTorch's legacy tracer-based exporter with `dynamic_axes`; under a second, deprecated
  by PyTorch since 2.9 but still shipped. Same outputs here (tests check both).
"""
from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from ..errors import FocalNetError
from ..images import check_image_side
from ..utils import check_output, output_error, output_lock

__all__ = ["check_opset", "export_model", "export_onnx", "export_torchscript", "verify_export", "ExportError", "DEFAULT_VERIFY_SIZES"]

log = logging.getLogger("focalnet")
PathLike = Union[str, os.PathLike]
DEFAULT_VERIFY_SIZES = ((224, 224), (230, 190), (96, 96))
FORMATS = ("onnx", "torchscript")


class ExportError(FocalNetError, ValueError):
    """An export that failed or does not reproduce the model; the message says where."""


def _example(model: nn.Module, img_size: Sequence[int], batch: int) -> torch.Tensor:
    param = next(model.parameters())
    h, w = (int(img_size), int(img_size)) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
    return torch.randn(batch, int(model.in_chans), h, w, device=param.device, dtype=param.dtype)


def _output_name(model: nn.Module) -> str:
    return "logits" if int(getattr(model, "num_classes", 1)) > 0 else "features"


def _refuse_existing(paths: Sequence[Path], overwrite: bool) -> None:
    """Before any work: an existing output needs overwrite=True, a folder in a file's place is refused."""
    for p in paths:
        check_output(p, kind="file", overwrite=overwrite)


@contextmanager
def _checked_output(path: Path, check: Optional[Callable[[Path], object]]) -> Iterator[Path]:
    """Yield a temporary folder beside `path` to export into (as `path.name`, with any external-data file
    beside it); then run `check` on the exported file there, and only if it passes rename every file into
    place. A failed export or check leaves the old output untouched (`--force` never loses a good file to a bad
    one); the output's lock is held throughout, so a second export to it is refused (`focalnet.utils`)."""
    with output_lock(path):
        tmp_dir = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
            yield tmp_dir
            if check is not None:
                check(tmp_dir / path.name)
            for f in sorted(tmp_dir.iterdir()):  # same file system: each rename is atomic
                os.replace(f, path.parent / f.name)
        except OSError as e:  # read-only folder, full disk, permission: one line naming the output
            raise output_error(path, e) from None
        finally:
            if tmp_dir is not None:
                shutil.rmtree(tmp_dir, ignore_errors=True)


def _onnx_dynamo(model: nn.Module, x: torch.Tensor, path: Path, *, dynamic: bool, output_name: str,
                 opset: Optional[int]) -> None:
    shapes = None
    if dynamic:
        D = torch.export.Dim.DYNAMIC
        shapes = ({0: D, 2: D, 3: D},)
    try:
        program = torch.export.export(model, (x,), dynamic_shapes=shapes, strict=False)
    except Exception as e:
        raise ExportError(f"torch.export could not capture the model: {type(e).__name__}: {str(e)[:500]}") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(
            program, (x,), dynamo=True, input_names=["image"], output_names=[output_name], opset_version=opset,
            verbose=False,
        )
    onnx_program.save(str(path))


def _onnx_torchscript(model: nn.Module, x: torch.Tensor, path: Path, *, dynamic: bool, output_name: str,
                      opset: Optional[int]) -> None:
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, output_name: {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice: documented above
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, input_names=["image"], output_names=[output_name],
            dynamic_axes=axes, opset_version=opset or 17,
        )


def export_onnx(
    model: nn.Module,
    path: PathLike,
    *,
    img_size: Sequence[int] = (224, 224),
    dynamic: bool = True,
    exporter: str = "dynamo",
    opset: Optional[int] = None,
    overwrite: bool = False,
    check: Optional[Callable[[Path], object]] = None,
) -> Path:
    """Write `model` (in eval mode) as ONNX: input `image` (B, C, H, W), output `logits` (B, classes), or
    `features` for a model without classifier. With `dynamic`, batch, height and width are free.

    The file is written in a temporary folder beside `path` and renamed into place (with its external-data
    file, if the model is over 2 GB), so an interrupted export leaves no half-written file. `check` (e.g. a
    `verify_export` of the new file) runs on the exported file before it replaces anything: when it raises,
    an existing output is kept as it was."""
    if exporter not in ("dynamo", "torchscript"):
        raise ExportError(f"unknown ONNX exporter {exporter!r}; choose 'dynamo' or 'torchscript'")
    check_opset(opset, exporter)
    path = Path(path)
    _refuse_existing([path, path.with_name(path.name + ".data")], overwrite)
    was_training = model.training
    model.eval()
    # batch 2: torch.export specialises a dimension whose example size is 1
    x = _example(model, img_size, 2 if dynamic else 1)
    try:
        with _checked_output(path, check) as tmp_dir:
            write = _onnx_dynamo if exporter == "dynamo" else _onnx_torchscript
            with torch.no_grad():
                write(model, x, tmp_dir / path.name, dynamic=dynamic, output_name=_output_name(model), opset=opset)
    finally:
        model.train(was_training)
    return path


def export_torchscript(
    model: nn.Module, path: PathLike, *, img_size: Sequence[int] = (224, 224), overwrite: bool = False,
    check: Optional[Callable[[Path], object]] = None,
) -> Path:
    """Trace `model` (eval mode) and save it with torch.jit.save. The trace records the padding arithmetic
    on the input's shape, so the saved module runs at any batch size, height and width. `check` as in
    `export_onnx`: run on the new file before it replaces anything."""
    path = Path(path)
    _refuse_existing([path], overwrite)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape arithmetic: recorded, see pad_to_multiple
            traced = torch.jit.trace(model, (_example(model, img_size, 2),), check_trace=False)
        with _checked_output(path, check) as tmp_dir, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream: see docs/inspect.md
            torch.jit.save(traced, str(tmp_dir / path.name))
    finally:
        model.train(was_training)
    return path


def export_model(
    model: nn.Module,
    path: PathLike,
    fmt: str = "onnx",
    *,
    img_size: Sequence[int] = (224, 224),
    dynamic: bool = True,
    exporter: str = "dynamo",
    opset: Optional[int] = None,
    overwrite: bool = False,
    check: Optional[Callable[[Path], object]] = None,
) -> Path:
    """`export_onnx` or `export_torchscript` by `fmt`. `dynamic`, `exporter` and `opset` are ONNX's: a trace of
    this model runs at any size anyway. `check` runs on the new file before it replaces anything."""
    for side in img_size if isinstance(img_size, (list, tuple)) else (img_size,):
        check_image_side(side, "the export's example size (--img-size)")
    if fmt == "onnx":
        return export_onnx(model, path, img_size=img_size, dynamic=dynamic, exporter=exporter, opset=opset,
                           overwrite=overwrite, check=check)
    if fmt == "torchscript":
        return export_torchscript(model, path, img_size=img_size, overwrite=overwrite, check=check)
    raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


# the ONNX opsets each exporter writes, from this PyTorch's own table: the legacy exporter from
# ONNX_MIN_OPSET to its own maximum, the dynamo one from 18 (below that it converts down, and often fails)
def _opsets(exporter: str) -> range:
    from torch.onnx import _constants as onnx_constants

    if exporter == "torchscript":
        top = getattr(onnx_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", onnx_constants.ONNX_MAX_OPSET)
        return range(onnx_constants.ONNX_MIN_OPSET, top + 1)
    return range(18, onnx_constants.ONNX_MAX_OPSET + 1)


def check_opset(opset: Optional[int], exporter: str = "dynamo") -> None:
    """An ExportError unless `opset` is None (the exporter's default) or an opset `exporter` writes."""
    if opset is None:
        return
    allowed = _opsets(exporter)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in allowed:
        raise ExportError(f"--opset {opset!r} is not an ONNX opset the {exporter} exporter writes: choose "
                          f"{allowed.start} to {allowed.stop - 1}, or leave it out for the exporter's default")


def _runner(path: Path, fmt: str):
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            # the CLI names the extra that provides it (focalnet.cli.install_hint)
            raise ModuleNotFoundError("checking an ONNX export needs onnxruntime", name="onnxruntime") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x.numpy()})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    return lambda x: module(x).numpy()


@torch.no_grad()
def verify_export(
    path: PathLike,
    model: nn.Module,
    fmt: str = "onnx",
    sizes: Sequence[Sequence[int]] = DEFAULT_VERIFY_SIZES,
    batch_sizes: Sequence[int] = (1, 2),
    atol: float = 1e-4,
    seed: int = 0,
) -> list[dict]:
    """Run the exported file (onnxruntime / torch.jit.load, CPU) and the eager model on the same random
    inputs at every size and batch size; one row per case with the largest absolute difference.
    Raises ExportError if any case differs by more than `atol` or fails to run."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    # compare in fp32 on the CPU, as onnxruntime runs; never move the caller's model
    reference = model if (param.device.type == "cpu" and param.dtype == torch.float32) else copy.deepcopy(model).float().cpu()
    run = _runner(Path(path), fmt)
    g = torch.Generator().manual_seed(seed)
    rows = []
    try:
        for h, w in sizes:
            for b in batch_sizes:
                x = torch.randn(b, int(model.in_chans), int(h), int(w), generator=g)
                expected = reference(x).float().numpy()
                try:
                    got = run(x)
                except Exception as e:
                    raise ExportError(f"the exported {fmt} model failed at batch {b}, {h}x{w}: {type(e).__name__}: {str(e)[:300]}") from None
                if got.shape != expected.shape:
                    raise ExportError(f"the exported {fmt} model gives shape {got.shape} at {h}x{w}, PyTorch {expected.shape}")
                diff = float(np.abs(got - expected).max())
                rows.append(dict(batch=b, height=int(h), width=int(w), max_abs_diff=diff, ok=diff <= atol))
    finally:
        model.train(was_training)
    bad = [r for r in rows if not r["ok"]]
    if bad:
        r = bad[0]
        raise ExportError(
            f"the exported {fmt} model differs from PyTorch by {r['max_abs_diff']:.3g} (> {atol:g}) at batch "
            f"{r['batch']}, {r['height']}x{r['width']}"
        )
    return rows
