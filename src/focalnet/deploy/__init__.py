"""Running a trained FocalNet elsewhere and faster: fused CPU inference, ONNX / TorchScript export, benchmarks.

    from focalnet.deploy import fuse_for_inference, export_model, verify_export
    fast = fuse_for_inference(model)                   # same function, oneDNN's fused kernels on CPU
    export_model(model, "m.onnx", "onnx")              # any batch, height and width
    verify_export("m.onnx", model, "onnx")             # onnxruntime against PyTorch at several sizes

- `fused`: the inference-only model (constants folded into the weights, one block forward, two kernel sets);
- `export`: ONNX (both exporters) and TorchScript, written atomically and checked against the eager model;
- `bench`: interleaved speed and memory measurements behind `focalnet bench` (import it as a module).
"""
from .export import DEFAULT_VERIFY_SIZES, ExportError, export_model, export_onnx, export_torchscript, verify_export
from .fused import DEFAULT_TILE_ROWS, FusedFocalNet, fuse_for_inference, is_fused

__all__ = [
    "fuse_for_inference",
    "FusedFocalNet",
    "is_fused",
    "DEFAULT_TILE_ROWS",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "verify_export",
    "ExportError",
    "DEFAULT_VERIFY_SIZES",
]
