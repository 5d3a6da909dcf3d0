"""Does bf16 autocast change what FocalNet predicts? Logits in bf16 against float32 on real photos.

    flock /work/cpu.lock env PYTHONPATH=src python benchmarks/bf16_agreement.py

No trained FocalNet weights can be downloaded here, and with a fresh init (std .02, LayerNorm 1/0) every logit is
nearly the same, so agreement would say little. The weights are therefore given trained-like statistics: every
matrix is rescaled to a per-layer std of 1/sqrt(fan_in) (so activations neither vanish nor explode), every
LayerNorm weight/bias and bias is perturbed (std .2), and the head is scaled up so that logits spread over
several units, as a trained model's do. On foolbox's 20 ImageNet photos it reports the cosine similarity of the
logits (per image, minimum), the largest absolute difference, top-1 agreement, and top-1 agreement where the
float32 top-2 margin is larger than the largest bf16 error (where a flip would be a real disagreement).
"""
from __future__ import annotations

import glob
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import foolbox
from focalnet.deploy.fused import fuse_for_inference
from focalnet.registry import build_model, get_spec


def photos(size: int = 224) -> torch.Tensor:
    files = sorted(glob.glob(os.path.join(os.path.dirname(foolbox.__file__), "data", "imagenet_*.jpg")))
    spec = get_spec("focalnet_tiny_srf")
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    out = []
    for f in files:
        img = Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC)
        out.append((torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float() / 255 - mean) / std)
    return torch.stack(out)


def trained_like(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(name).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim > 1:
                fan_in = p[0].numel()
                p.normal_(0, fan_in ** -0.5, generator=g)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
        model.head.fc.weight.mul_(4.0)
    return model


def main() -> None:
    x = photos()
    print(f"{len(x)} photos; torch {torch.__version__}; oneDNN bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    for name in ("focalnet_tiny_srf", "focalnet_tiny_lrf"):
        model = trained_like(name)
        fused = fuse_for_inference(model)
        with torch.inference_mode():
            ref = model(x)
            runs = {"ours bf16 autocast": lambda: model(x), "ours-fused bf16 autocast": lambda: fused(x)}
            for label, fn in runs.items():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    low = fn().float()
                cos = F.cosine_similarity(low, ref, dim=1)
                err = (low - ref).abs().max().item()
                top2 = ref.topk(2, dim=1).values
                clear = (top2[:, 0] - top2[:, 1]) > 2 * err
                agree = low.argmax(1) == ref.argmax(1)
                print(f"{name:<18} {label:<26} cosine min {cos.min():.5f} mean {cos.mean():.5f}; max |diff| {err:.3e} "
                      f"(logit std {ref.std():.2f}); top-1 agree {int(agree.sum())}/{len(x)}, "
                      f"where the fp32 margin > 2 x max diff {int(agree[clear].sum())}/{int(clear.sum())}")


if __name__ == "__main__":
    main()
