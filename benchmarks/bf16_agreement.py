"""Does bf16 autocast change what FocalNet predicts? Logits in bf16 against float32 on real photos.

    flock /work/cpu.lock env PYTHONPATH=src python benchmarks/bf16_agreement.py

No trained FocalNet weights can be downloaded here, and with a fresh init (std .02, LayerNorm 1/0) every logit is
nearly the same, so agreement would say little. The weights are therefore given trained-like statistics: every
matrix is rescaled to a per-layer std of 1/sqrt(fan_in) (so activations neither vanish nor explode), every
LayerNorm weight/bias and bias is perturbed (std .2), and the head is scaled up so that logits spread over
several units, as a trained model's do. On foolbox's 20 ImageNet photos it reports the cosine similarity of the
logits (per image, minimum), the largest absolute difference, top-1 agreement, and top-1 agreement where the
float32 top-2 margin is larger than the largest bf16 error (where a flip would be a real disagreement).

`photos`, `trained_like` and `agreement` are also what benchmarks/gpu_check.py's bf16 section runs on the GPU.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F


class NoPhotos(RuntimeError):
    """Neither foolbox's nor scikit-image's photos are installed (the dev extras)."""


def _photo_sources(skimage: bool) -> list:
    """foolbox's 20 ImageNet photos (files in its wheel), and with `skimage` scikit-image's colour photos (arrays)."""
    sources: list = []
    spec = importlib.util.find_spec("foolbox")  # found, not imported: foolbox itself pulls in eagerpy
    if spec is not None and spec.origin:
        sources += sorted((Path(spec.origin).parent / "data").glob("imagenet_*.jpg"))
    if not skimage:
        return sources
    try:
        import skimage.data
    except ImportError:
        return sources
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        try:
            sources.append(getattr(skimage.data, name)())
        except Exception:  # a photo this scikit-image does not ship (or would download) is just left out
            pass
    return sources


def photos(size: int = 224, *, skimage: bool = True) -> torch.Tensor:
    """(N, 3, size, size) float32 photos, squashed to size x size (bicubic) and normalised with ImageNet's
    statistics; NoPhotos if there are none."""
    import numpy as np
    from PIL import Image

    from focalnet.images import IMAGENET_MEAN, IMAGENET_STD, load_image

    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = []
    for src in _photo_sources(skimage):
        img = load_image(src, "RGB").resize((size, size), Image.BICUBIC)
        out.append((torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255 - mean) / std)
    if not out:
        raise NoPhotos("no photos: install foolbox or scikit-image (the dev extras)")
    return torch.stack(out)


def trained_like(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give random weights a trained model's statistics (see the module docstring), in place: every matrix std
    1/sqrt(fan_in), every 1-D parameter moved off its init, the classifier scaled up."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * p[0].numel() ** -0.5)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
        model.get_classifier().weight.mul_(4.0)
    return model


def agreement(low: torch.Tensor, ref: torch.Tensor) -> dict:
    """How far low-precision logits `low` are from float32 `ref` (both (N, classes)): cosine per image (min and
    mean), max |diff|, top-1 agreement, and agreement where the float32 top-2 margin exceeds twice that
    difference (a flip inside the bf16 error is rounding, not a disagreement)."""
    low, ref = low.float(), ref.float()
    cos = F.cosine_similarity(low, ref, dim=1)
    err = float((low - ref).abs().max())
    top2 = ref.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * err
    agree = low.argmax(1) == ref.argmax(1)
    return dict(cosine_min=float(cos.min()), cosine_mean=float(cos.mean()), max_abs=err,
                top1_agree=int(agree.sum()), clear=int(clear.sum()), clear_agree=int(agree[clear].sum()), n=len(ref))


def main() -> None:
    from focalnet.deploy.fused import fuse_for_inference
    from focalnet.registry import build_model

    x = photos(skimage=False)
    print(f"{len(x)} photos; torch {torch.__version__}; oneDNN bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    for name in ("focalnet_tiny_srf", "focalnet_tiny_lrf"):
        torch.manual_seed(0)
        model = trained_like(build_model(name).eval())
        fused = fuse_for_inference(model)
        with torch.inference_mode():
            ref = model(x)
            runs = {"ours bf16 autocast": lambda: model(x), "ours-fused bf16 autocast": lambda: fused(x)}
            for label, fn in runs.items():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    a = agreement(fn(), ref)
                print(f"{name:<18} {label:<26} cosine min {a['cosine_min']:.5f} mean {a['cosine_mean']:.5f}; "
                      f"max |diff| {a['max_abs']:.3e} (logit std {ref.std():.2f}); top-1 agree {a['top1_agree']}/{a['n']}, "
                      f"where the fp32 margin > 2 x max diff {a['clear_agree']}/{a['clear']}")


if __name__ == "__main__":
    main()
