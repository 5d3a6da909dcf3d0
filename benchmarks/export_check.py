"""Export full-size FocalNets to ONNX (both exporters) and TorchScript; time the export and check each file
against PyTorch at 224x224, 230x190 and 96x96 (batch 1 and 2) with onnxruntime / torch.jit.load.

    PYTHONPATH=src python benchmarks/export_check.py focalnet_tiny_srf focalnet_tiny_iso

Random weights (perturbed off their init so that every parameter matters); the check is about the graph.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from focalnet import create_model
from focalnet.deploy.export import export_model, verify_export


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--cases", nargs="+", default=["onnx:dynamo", "onnx:torchscript", "torchscript:trace"])
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':<20}{'format':<12}{'exporter':<13}{'export s':>9}{'MB':>8}{'max |diff|':>12}  sizes x batch")
    for name in args.models:
        model = create_model(name).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 1:
                    p.add_(torch.randn_like(p) * 0.2)
        with tempfile.TemporaryDirectory() as tmp:
            for case in args.cases:
                fmt, exporter = case.split(":")
                path = Path(tmp) / f"{name}.{fmt}.{exporter}"
                t0 = time.perf_counter()
                export_model(model, path, fmt, dynamic=True, exporter=exporter if fmt == "onnx" else None)
                took = time.perf_counter() - t0
                rows = verify_export(path, model, fmt)
                mb = sum(f.stat().st_size for f in Path(tmp).glob(path.name + "*")) / 1e6
                worst = max(r["max_abs_diff"] for r in rows)
                cases = ", ".join(sorted({f"{r['height']}x{r['width']}" for r in rows}))
                print(f"{name:<20}{fmt:<12}{exporter:<13}{took:>9.1f}{mb:>8.1f}{worst:>12.2e}  {cases} x 1,2", flush=True)


if __name__ == "__main__":
    main()
