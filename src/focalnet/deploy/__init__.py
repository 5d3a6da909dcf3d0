"""Running a trained FocalNet elsewhere and faster: fused CPU inference, ONNX / TorchScript export, benchmarks.

    from focalnet.deploy import fuse_for_inference, export_model, verify_export
    fast = fuse_for_inference(model)                   # same function, oneDNN's fused kernels on CPU
    fast16 = fuse_for_inference(model, dtype="bf16")   # the same in bf16, where the CPU computes bf16 natively
    export_model(model, "m.onnx", "onnx")              # any batch, height and width
    verify_export("m.onnx", model, "onnx")             # onnxruntime against PyTorch at several sizes

- `fused`: the inference-only model (constants folded into the weights, one block forward, two kernel sets);
- `quantize`: int8 (PT2E, X86 Inductor quantizer) calibrated on images, saved as a torch.export program, ONNX QDQ;
- `export`: ONNX (both exporters) and TorchScript, written atomically and checked against the eager model;
- `bench`: interleaved speed and memory measurements behind `focalnet bench` (import it as a module; what it
  compares is one `register_implementation` each, in bench/implementations.py).
"""
from .export import DEFAULT_VERIFY_SIZES, ExportError, export_model, export_onnx, export_torchscript, verify_export
from .fused import DEFAULT_TILE_ROWS, FusedFocalNet, NativePrecisionError, fuse_for_inference, is_fused, native_bf16
from .quantize import QuantizationError, QuantizedFocalNet, load_quantized, quantize_model, save_quantized

__all__ = [
    "fuse_for_inference",
    "FusedFocalNet",
    "is_fused",
    "native_bf16",
    "NativePrecisionError",
    "quantize_model",
    "QuantizedFocalNet",
    "save_quantized",
    "load_quantized",
    "QuantizationError",
    "DEFAULT_TILE_ROWS",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "verify_export",
    "ExportError",
    "DEFAULT_VERIFY_SIZES",
]
