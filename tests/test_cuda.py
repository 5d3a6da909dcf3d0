"""What must hold on a CUDA GPU: our model equals timm's in float32, the fused and compiled paths equal eager,
bf16 and fp16 (GradScaler) training steps are finite and learn, the dense models run forward and backward, and a
model on the GPU exports to files that run on the CPU.

Marked `cuda` and skipped without a GPU: `pytest -m cuda tests/test_cuda.py`, which benchmarks/gpu_check.py runs.
Float32 here means float32: TF32 (cuDNN's default for convolutions) is switched off around every test.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import focalnet

from conftest import perturb_, small_overrides

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DEVICE = "cuda"
ATOL = 1e-4
TINY = dict(embed_dim=16, depths=(1, 1, 1, 1))


@pytest.fixture(autouse=True)
def _true_float32():
    # TF32 alone moves FocalNet-T's logits by ~1e-3: compare float32 with float32
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _small(name: str = "focalnet_tiny_srf", **kw) -> torch.nn.Module:
    return perturb_(focalnet.create_model(name, num_classes=10, **small_overrides(name), **kw)).eval()


@torch.no_grad()
def test_ours_matches_timm_in_float32(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file

    ours = perturb_(focalnet.create_model("focalnet_tiny_srf")).eval()
    path = focalnet.write_checkpoint(ours.state_dict(), ours.arch, tmp_path / "timm.safetensors", fmt="timm")
    ref = timm.create_model("focalnet_tiny_srf").eval()
    ref.load_state_dict(load_file(path), strict=True)
    ours, ref = ours.to(DEVICE), ref.to(DEVICE)
    x = torch.randn(4, 3, 224, 224, device=DEVICE)  # timm pads other sizes differently (HF and we agree there)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=ATOL)


@torch.no_grad()
def test_fused_and_compiled_match_eager():
    from focalnet.deploy.fused import fuse_for_inference

    model = _small("focalnet_tiny_lrf").to(DEVICE)  # one model: each compile costs ~15 s of gpu_check's budget
    x = torch.randn(2, 3, 64, 48, device=DEVICE)
    ref = model(x)
    fused = fuse_for_inference(model)
    out = fused(x)
    assert out.device == ref.device
    torch.testing.assert_close(out, ref, rtol=0, atol=ATOL)
    torch.testing.assert_close(torch.compile(model)(x), ref, rtol=0, atol=ATOL)
    with torch.autocast("cuda", dtype=torch.bfloat16):  # fused under autocast: the plain path, bf16 accuracy
        low = fused(x).float()
    assert F.cosine_similarity(low, ref, dim=1).min() > 0.99


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_amp_training_steps_learn(dtype):
    torch.manual_seed(0)
    model = focalnet.create_model("focalnet_tiny_srf", num_classes=4, drop_path_rate=0.0, **TINY).to(DEVICE).train()
    model.set_activation_recompute(True)
    x, y = torch.randn(8, 3, 64, 64, device=DEVICE), torch.arange(8, device=DEVICE) % 4
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    losses = []
    for _ in range(12):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses


def test_dense_models_forward_and_backward():
    from focalnet.dense import FocalNetBackbone, maskrcnn_focalnet

    # the backbone on the GPU computes what it computes on the CPU
    bb = FocalNetBackbone("focalnet_tiny_srf", focal_windows=9, **TINY).eval()
    x = torch.randn(2, 3, 70, 45)
    with torch.no_grad():
        cpu = bb(x)
        gpu = bb.to(DEVICE)(x.to(DEVICE))
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.cpu(), a, rtol=0, atol=ATOL)

    model = maskrcnn_focalnet("focalnet_tiny_srf", 3, backbone_args=TINY, fpn_channels=16, representation_size=64,
                              mask_head_channels=16, min_size=64, max_size=96).to(DEVICE)
    images = [torch.rand(3, 64, 64, device=DEVICE), torch.rand(3, 50, 77, device=DEVICE)]
    masks = torch.zeros(1, 64, 64, dtype=torch.uint8, device=DEVICE)
    masks[:, 10:40, 8:30] = 1
    target = dict(boxes=torch.tensor([[8.0, 10.0, 30.0, 40.0]], device=DEVICE),
                  labels=torch.tensor([1], device=DEVICE), masks=masks)
    empty = dict(boxes=torch.zeros(0, 4, device=DEVICE), labels=torch.zeros(0, dtype=torch.int64, device=DEVICE),
                 masks=torch.zeros(0, 50, 77, dtype=torch.uint8, device=DEVICE))
    losses = model.train()(images, [target, empty])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values()), losses
    assert all(torch.isfinite(p.grad).all() for p in model.backbone.parameters() if p.grad is not None)
    with torch.no_grad():
        out = model.eval()(images)
    assert len(out) == 2 and all(o["boxes"].device == images[0].device for o in out)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_from_a_gpu_model_runs_on_the_cpu(tmp_path, fmt):
    from focalnet.deploy.export import export_onnx, export_torchscript, verify_export

    model = perturb_(focalnet.create_model("focalnet_tiny_iso", embed_dim=16, depth=1, num_classes=7)).eval().to(DEVICE)
    if fmt == "onnx":
        path = export_onnx(model, tmp_path / "m.onnx", img_size=(64, 64), exporter="dynamo", dynamic=True)
    else:
        path = export_torchscript(model, tmp_path / "m.pt", img_size=(64, 64))
    assert next(model.parameters()).device.type == torch.device(DEVICE).type  # the caller's model stays put
    rows = verify_export(path, model, fmt, sizes=((64, 64), (70, 45)), batch_sizes=(1, 2))
    assert all(r["max_abs_diff"] <= ATOL for r in rows), rows
