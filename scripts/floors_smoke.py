"""What scripts/check_floors.sh runs in a clean environment at the declared dependency floors: the public API
end to end, small models, a few seconds. Prints one line per check; any failure is a traceback."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import focalnet
from focalnet.checkpoints import save_model
from focalnet.deploy import fuse_for_inference

torch.manual_seed(0)
small = dict(embed_dim=16, depths=(1, 1, 1, 1), num_classes=5)
print("torch", torch.__version__, "| focalnet", focalnet.__version__)

for name, kw in (("focalnet_tiny_srf", small), ("focalnet_large_fl4", small), ("focalnet_tiny_iso", dict(embed_dim=32, depth=2, num_classes=5))):
    model = focalnet.create_model(name, **kw).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        fused = fuse_for_inference(model)(x)
    assert out.shape == (2, 5) and (fused - out).abs().max() < 1e-4
    print(f"forward + fused: {name} ok")

model = focalnet.create_model("focalnet_tiny_srf", **small).train()
model.set_activation_recompute(True)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3]))
loss.backward()
opt.step()
print(f"training step with selective recompute: loss {loss.item():.3f} ok")

model.eval()
x = torch.randn(1, 3, 64, 64)
with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
    for fmt, name in (("focalnet", "m.safetensors"), ("official", "m.pth"), ("timm", "timm_dir"), ("hf", "hf_dir")):
        save_model(model, Path(tmp) / name, fmt=fmt)
        back = focalnet.load_model(Path(tmp) / name).eval()
        assert torch.equal(back(x), model(x)), fmt
        assert focalnet.verify(Path(tmp) / name).ok, fmt
        print(f"write, read back and verify: {fmt} ok")
    feats = focalnet.create_model("focalnet_tiny_srf", **small, features_only=True)(x)
    print("features_only (timm's FeatureGetterNet):", [tuple(f.shape) for f in feats])
