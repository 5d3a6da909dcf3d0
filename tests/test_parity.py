"""Exactness against the reference implementations, with random weights whose every LayerNorm weight and
bias, layer scale and bias is perturbed off its init (so that a wrong mapping cannot hide).

- timm: our logits equal timm's `focalnet_*` loaded through timm's own converter from the authors' layout,
  and timm's native state dicts read by us.
- Hugging Face transformers: `FocalNetForImageClassification` loaded from the folder we write, and its
  own random weights read by us. HF pads non-multiple sizes as we do, so those match too.
"""
from __future__ import annotations

import pytest
import torch

import focalnet
from focalnet.checkpoints import hf_config, read_checkpoint, write_checkpoint
from focalnet.checkpoints.convert import from_focalnet, to_focalnet
from focalnet.registry import build_model

from conftest import perturb_, small_overrides

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
from timm.models.focalnet import FocalNet as TimmFocalNet, checkpoint_filter_fn  # noqa: E402

ATOL = 1e-5


def ours(name: str, full: bool = False, num_classes: int = 10) -> torch.nn.Module:
    kw = {} if full else small_overrides(name)
    model = build_model(name, num_classes=num_classes, **kw)
    return perturb_(model).eval()


def timm_twin(arch: dict) -> torch.nn.Module:
    """timm's FocalNet class with the same architecture (timm's entries fix the width, so use the class)."""
    return TimmFocalNet(
        depths=arch["depths"], embed_dim=arch["embed_dim"], focal_levels=arch["focal_levels"],
        focal_windows=arch["focal_windows"], use_overlap_down=arch["use_conv_embed"],
        use_post_norm=arch["use_post_norm"], use_post_norm_in_modulation=arch["use_post_norm_in_modulation"],
        normalize_modulator=arch["normalize_modulator"], layerscale_value=arch["layerscale_value"],
        num_classes=arch["num_classes"], drop_path_rate=0.0,
    ).eval()


def hf_twin(arch: dict) -> torch.nn.Module:
    cfg = {k: v for k, v in hf_config(arch).items() if k not in ("model_type", "architectures")}
    return transformers.FocalNetForImageClassification(transformers.FocalNetConfig(**cfg)).eval()


@torch.no_grad()
@pytest.mark.parametrize("name", ["focalnet_tiny_srf", "focalnet_tiny_lrf"])
def test_timm_registered_entries_full_size(name):
    """Full-size tiny models, timm's own registered entry, through timm's converter from the authors' layout."""
    model = ours(name, full=True, num_classes=1000)
    official = {"model": from_focalnet(model.state_dict(), "official", model.arch)}
    ref = timm.create_model(name, pretrained=False).eval()
    ref.load_state_dict(checkpoint_filter_fn(official, ref))
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=ATOL)


@torch.no_grad()
@pytest.mark.parametrize(
    "name",
    # pre-norm SRF/LRF, post-norm + layer scale + conv embed (window 5), normalize modulator, post-LN in modulation
    ["focalnet_small_srf", "focalnet_base_lrf", "focalnet_large_fl3", "focalnet_large_fl4", "focalnet_xlarge_fl4",
     "focalnet_huge_fl3", "focalnet_huge_fl4"],
)
def test_timm_parity_every_flag(name):
    model = ours(name)
    ref = timm_twin(model.arch)
    official = {"model": from_focalnet(model.state_dict(), "official", model.arch)}
    ref.load_state_dict(checkpoint_filter_fn(official, ref))
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=ATOL)
    # and timm's native layout, both ways
    ref.load_state_dict(from_focalnet(model.state_dict(), "timm", model.arch), strict=True)
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=ATOL)
    perturb_(ref, seed=3)
    model.load_state_dict(to_focalnet(ref.state_dict()))
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=ATOL)


@torch.no_grad()
def test_timm_large_fl4_deviation_is_documented():
    """timm's focalnet_large_fl4 lacks normalize_modulator=True, which the authors' config sets. Its focal
    modulation then computes q * h(sum) instead of q * h(sum / 5): a different function with the same weights
    (in the whole model the post-norm LayerNorm hides part of it, with trained weights not all of it).
    With the flag set, timm's class agrees with ours exactly."""
    with torch.device("meta"):
        timm_entry = timm.create_model("focalnet_large_fl4")
    assert timm_entry.layers[0].blocks[0].modulation.normalize_modulator is False
    assert focalnet.get_spec("focalnet_large_fl4").arch["normalize_modulator"] is True

    model = ours("focalnet_large_fl4")
    for p in model.parameters():  # trained-like magnitudes: at init (std .02) the biases would dominate h
        if p.ndim > 1:
            p.data.normal_(0, 0.3)
    sd = from_focalnet(model.state_dict(), "timm", model.arch)
    as_timm = timm_twin({**model.arch, "normalize_modulator": False})  # what timm's entry builds
    as_timm.load_state_dict(sd)
    x = torch.randn(2, 16, 24, 24)
    ours_mod = model.stages[0].blocks[0].modulation
    timm_mod = as_timm.layers[0].blocks[0].modulation
    diff = (ours_mod(x) - timm_mod(x)).abs().max() / ours_mod(x).abs().max()
    assert diff > 1e-2, diff

    fixed = timm_twin(model.arch)
    fixed.load_state_dict(sd)
    x = torch.randn(2, 3, 96, 96)
    torch.testing.assert_close(model(x), fixed(x), rtol=0, atol=ATOL)


@torch.no_grad()
@pytest.mark.parametrize(
    "name,full",
    [("focalnet_tiny_srf", True), ("focalnet_tiny_iso", True), ("focalnet_small_lrf", False),
     ("focalnet_base_iso", False), ("focalnet_large_fl4", False), ("focalnet_huge_fl4", False)],
)
def test_hf_parity_through_save_pretrained_folder(name, full, tmp_path):
    model = ours(name, full=full)
    write_checkpoint(model.state_dict(), model.arch, tmp_path / "hf", fmt="hf")
    ref = transformers.FocalNetForImageClassification.from_pretrained(tmp_path / "hf").eval()
    for size in [(224, 224), (230, 190), (96, 96)]:
        x = torch.randn(2, 3, *size)
        torch.testing.assert_close(model(x), ref(x).logits, rtol=0, atol=ATOL, msg=f"{name} at {size}")


@torch.no_grad()
@pytest.mark.parametrize("name", ["focalnet_tiny_lrf", "focalnet_huge_fl3", "focalnet_small_iso"])
def test_hf_native_weights_read_by_us(name, tmp_path):
    """HF's own random init, saved by HF's save_pretrained, read by our loader (the other direction)."""
    arch = build_model(name, num_classes=10, **small_overrides(name)).arch
    ref = perturb_(hf_twin(arch), seed=5)
    ref.save_pretrained(tmp_path / "hf")
    model = focalnet.load_model(tmp_path / "hf").eval()
    x = torch.randn(2, 3, 160, 128)
    torch.testing.assert_close(model(x), ref(x).logits, rtol=0, atol=ATOL)
    # and the bare backbone (FocalNetModel): same pooled features as ours with pre_logits
    ref.focalnet.save_pretrained(tmp_path / "hf_base")
    base = focalnet.load_model(tmp_path / "hf_base").eval()
    assert base.num_classes == 0
    torch.testing.assert_close(base(x), ref.focalnet(x).pooler_output, rtol=0, atol=ATOL)
