"""Export: ONNX (both exporters) and TorchScript run at any batch, height and width, checked with
onnxruntime against PyTorch at 224x224, 230x190 and 96x96."""
from __future__ import annotations

import onnx
import pytest
import torch

import focalnet.layers
from focalnet import create_model, save_model
from focalnet.cli import main
from focalnet.deploy.export import ExportError, export_onnx, export_torchscript, verify_export

from conftest import perturb_

SIZES = ((224, 224), (230, 190), (96, 96))


def _micro(name: str = "focalnet_tiny_lrf") -> torch.nn.Module:
    # small, but every stage, every focal level and the padding path are there
    shape = dict(depth=1) if "iso" in name else dict(depths=(1, 1, 1, 1))
    return perturb_(create_model(name, embed_dim=8, num_classes=7, **shape)).eval()


def _dims(path) -> list:
    model = onnx.load(str(path))
    return [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]


@pytest.mark.parametrize("exporter,name", [
    ("torchscript", "focalnet_tiny_lrf"),
    ("dynamo", "focalnet_tiny_iso"),  # one stride: the dynamo exporter's symbolic shapes stay quick (~10 s)
    pytest.param("dynamo", "focalnet_tiny_lrf", marks=pytest.mark.slow),  # 4 strides: ~50 s on 2 cores
])
def test_onnx_dynamic_batch_height_width(tmp_path, exporter, name):
    model = _micro(name)
    path = export_onnx(model, tmp_path / "m.onnx", exporter=exporter, dynamic=True)
    dims = _dims(path)
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3])), dims
    rows = verify_export(path, model, "onnx", sizes=SIZES, batch_sizes=(1, 3))
    assert len(rows) == 6 and all(r["max_abs_diff"] <= 1e-4 for r in rows)


def test_torchscript_runs_at_every_size(tmp_path):
    model = _micro("focalnet_tiny_iso")
    path = export_torchscript(model, tmp_path / "m.pt")
    rows = verify_export(path, model, "torchscript", sizes=SIZES + ((33, 47),), batch_sizes=(1, 2))
    assert all(r["max_abs_diff"] <= 1e-4 for r in rows)


def test_a_padding_branch_frozen_at_export_is_caught(tmp_path, monkeypatch):
    """Negative control: if the padding were decided in Python on the example size (what Hugging Face's
    export does), the export would be wrong at 230x190; verify_export must say so."""
    monkeypatch.setattr(focalnet.layers, "_exporting", lambda: False)
    monkeypatch.setattr(focalnet.layers.torch.jit, "is_tracing", lambda: False)
    model = _micro()
    path = export_onnx(model, tmp_path / "frozen.onnx", exporter="torchscript", dynamic=True)
    verify_export(path, model, "onnx", sizes=((224, 224),), batch_sizes=(1,))  # the example size still works
    with pytest.raises(ExportError, match="230x190|failed at"):
        verify_export(path, model, "onnx", sizes=((230, 190),), batch_sizes=(1,))


def test_export_cli(tmp_path, capsys):
    model = perturb_(create_model("focalnet_tiny_iso", num_classes=10))
    save_model(model, tmp_path / "iso.safetensors")
    out = tmp_path / "iso.onnx"
    args = ["export", "focalnet_tiny_iso", "--checkpoint", str(tmp_path / "iso.safetensors"), "--format", "onnx",
            "--dynamic", "--exporter", "torchscript", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "checked with onnxruntime" in text and "224x224, 230x190, 96x96" in text
    before = out.read_bytes()
    assert main(args) == 2  # never overwrite without --force
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["export", "focalnet_tiny_iso", "--checkpoint", str(tmp_path / "iso.safetensors"), "--format",
                 "torchscript", "--out", str(tmp_path / "iso.pt")]) == 0
    assert "torch.jit.load" in capsys.readouterr().out
    assert main(["export", "focalnet_tiny_iso", "--checkpoint", str(tmp_path / "missing.pth"), "--format", "onnx"]) == 2
    assert "missing.pth" in capsys.readouterr().err
    assert not list(tmp_path.glob(".iso*"))  # no temporary file left behind
