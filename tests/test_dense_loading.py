"""Classification -> detection weight adaptation (focal window and levels) and the authors' dense checkpoints."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from focalnet.checkpoints.io import CheckpointError, save_model
from focalnet.checkpoints.convert import from_focalnet
from focalnet.dense import FocalNetBackbone, load_backbone_weights, upernet_focalnet
from focalnet.dense.loading import (
    adapt_focal_weights,
    grow_gate_rows,
    read_backbone_weights,
    resize_focal_kernel,
)
from focalnet.registry import build_model

from conftest import perturb_

SMALL = dict(embed_dim=16, depths=(1, 1, 2, 1), drop_path_rate=0.0)


def _model(windows=3, levels=2, seed=0):
    """A small classifier whose focal modulation matters: at their init (std .02) the 1x1 projections make
    the modulation branch so small that a wrong kernel would hardly move the logits."""
    torch.manual_seed(seed)
    model = build_model("focalnet_tiny_srf", num_classes=7, focal_windows=windows, focal_levels=levels, **SMALL)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("modulation.f.weight", "modulation.h.weight", "modulation.proj.weight")):
                p.normal_(0, 0.3)
    return perturb_(model, seed)


def test_resize_focal_kernel_pads_centrally_and_crops_back():
    w = torch.randn(8, 1, 3, 3)
    big = resize_focal_kernel(w, 9)
    assert big.shape == (8, 1, 9, 9)
    assert torch.equal(big[..., 3:6, 3:6], w)
    outside = big.clone()
    outside[..., 3:6, 3:6] = 0
    assert not outside.any()
    assert torch.equal(resize_focal_kernel(big, 3), w)  # crop of a zero-padded kernel: the original
    k11 = torch.randn(2, 1, 11, 11)
    assert torch.equal(resize_focal_kernel(k11, 5), k11[..., 3:8, 3:8])
    with pytest.raises(ValueError, match="odd"):
        resize_focal_kernel(w, 4)


def test_grow_gate_rows_layout():
    C = 4
    w = torch.arange(2 * C + 3, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, C, 1, 1).clone()  # L = 2
    grown = grow_gate_rows(w, C, 4)
    assert grown.shape == (2 * C + 5, C, 1, 1)
    assert torch.equal(grown[: 2 * C + 2], w[: 2 * C + 2])  # q, context, level gates 1..2
    assert not grown[2 * C + 2 : 2 * C + 4].any()  # new level gates: off
    assert torch.equal(grown[-1], w[-1])  # the global gate is still the last row
    b = torch.randn(2 * C + 3)
    assert torch.equal(grow_gate_rows(b, C, 3)[[-1]], b[[-1]])
    with pytest.raises(ValueError, match="cannot drop focal levels"):
        grow_gate_rows(w, C, 1)


def test_window_3_padded_to_9_gives_the_same_output():
    """Zero-padded kernels with zero padding of k // 2: the same convolution at every pixel, borders included,
    for input sizes that are not multiples of 32 too."""
    small, big = _model(windows=3), _model(windows=9, seed=1)
    sd, report = adapt_focal_weights(small.state_dict(), big.state_dict())
    assert len(report.resized) == 2 * sum(SMALL["depths"]) and not report.grown and not report.initialised
    assert "3 -> 9" in report.resized[0] and any("5 -> 11" in r for r in report.resized)
    big.load_state_dict(sd)
    small.eval(), big.eval()
    for size in ((64, 64), (70, 45)):
        x = torch.randn(2, 3, *size)
        torch.testing.assert_close(big(x), small(x), atol=1e-5, rtol=1e-5)
    # and back: cropping the padded kernels recovers the original model exactly
    sd_back, _ = adapt_focal_weights(big.state_dict(), small.state_dict())
    for k, v in small.state_dict().items():
        assert torch.equal(sd_back[k], v), k


def test_cropping_trained_taps_changes_the_output():
    big = _model(windows=9)
    small = _model(windows=3, seed=1)
    sd, report = adapt_focal_weights(big.state_dict(), small.state_dict())
    assert "9 -> 3" in report.resized[0]
    small.load_state_dict(sd)
    x = torch.randn(1, 3, 64, 64)
    assert not torch.allclose(small.eval()(x), big.eval()(x), atol=1e-4)


def test_more_focal_levels_grow_gates_and_differ_only_in_the_global_term():
    src, dst = _model(levels=2), _model(levels=3, seed=1)
    sd, report = adapt_focal_weights(src.state_dict(), dst.state_dict())
    n_blocks = sum(SMALL["depths"])
    assert len(report.grown) == 2 * n_blocks  # weight and bias of every modulation.f
    assert len(report.initialised) == n_blocks  # the third level's kernel of every block
    for key in report.initialised:
        assert torch.equal(sd[key], dst.state_dict()[key])  # kept at the model's initialisation
    dst.load_state_dict(sd)
    x = torch.randn(2, 3, 64, 64)
    src.eval(), dst.eval()
    # the global context is now the mean of the new third level: the outputs differ ...
    assert not torch.allclose(dst(x), src(x), atol=1e-4)
    # ... and only through it: with the global gate switched off in the source, they are the same
    sd_off = src.state_dict()
    for k in sd_off:
        if k.endswith("modulation.f.weight") or k.endswith("modulation.f.bias"):
            sd_off[k] = sd_off[k].clone()
            sd_off[k][-1] = 0
    src.load_state_dict(sd_off)
    sd, _ = adapt_focal_weights(sd_off, dst.state_dict())
    dst.load_state_dict(sd)
    torch.testing.assert_close(dst(x), src(x), atol=1e-5, rtol=1e-5)


def test_fewer_focal_levels_is_refused():
    with pytest.raises(CheckpointError, match="focal_levels=3"):
        adapt_focal_weights(_model(levels=3).state_dict(), _model(levels=2).state_dict())


def test_classification_checkpoint_into_detection_backbone(tmp_path):
    cls = _model(windows=3)
    path = tmp_path / "official.pth"
    torch.save({"model": from_focalnet(cls.state_dict(), "official", cls.arch)}, path)
    bb = FocalNetBackbone("focalnet_tiny_srf", focal_windows=9, out_indices=(1, 2), **SMALL)
    report = load_backbone_weights(bb, path)
    assert "classification (official)" in report.source
    assert len(report.adapted.resized) == 2 * 4  # 2 levels x 4 blocks of stages 0..2; stage 3 dropped
    assert set(report.initialised) == {"out_norms.1", "out_norms.2"}
    assert any(k.startswith("stages.3.") for k in report.ignored) and "head.fc.weight" in report.ignored
    got = bb.model.stages[1].blocks[0].modulation.focal_layers[1][0].weight
    want = cls.stages[1].blocks[0].modulation.focal_layers[1][0].weight
    assert got.shape[-1] == 11 and torch.equal(got[..., 3:8, 3:8], want)
    # the features are the classifier's (kernels padded exactly; output norms at init 1/0)
    x = torch.randn(1, 3, 96, 80)
    feats = bb.eval()(x)
    ref = cls.eval().forward_intermediates(x, indices=(1, 2), intermediates_only=True)
    for f, r in zip(feats, ref):
        torch.testing.assert_close(f, F.layer_norm(r.permute(0, 2, 3, 1), r.shape[1:2]).permute(0, 3, 1, 2), atol=1e-4, rtol=1e-4)


def _authors_dense_checkpoint(path, window=9, levels=2, heads=("neck.", "rpn_head.", "roi_head.")):
    """A file in the exact layout of the authors' Mask R-CNN / UperNet checkpoints (mmdet / mmseg)."""
    src = _model(windows=window, levels=levels, seed=3)
    off = from_focalnet(src.state_dict(), "official", src.arch)
    sd = {f"backbone.{k}": v for k, v in off.items() if not k.startswith(("norm.", "head."))}
    g = torch.Generator().manual_seed(0)
    norms = {}
    for i, c in enumerate(src.dims):
        norms[i] = (torch.randn(c, generator=g), torch.randn(c, generator=g))
        sd[f"backbone.norm{i}.weight"], sd[f"backbone.norm{i}.bias"] = norms[i]
    for head in heads:  # the neck and heads, which a backbone must ignore
        sd[f"{head}conv.weight"] = torch.randn(8, 8, 3, 3, generator=g)
        sd[f"{head}conv.bias"] = torch.randn(8, generator=g)
    torch.save({"state_dict": sd, "meta": {"epoch": 12, "CLASSES": ("person", "car"), "mmdet_version": "2.25.0"}}, path)
    return src, norms


def test_authors_mask_rcnn_checkpoint_backbone(tmp_path):
    path = tmp_path / "mask_rcnn_focalnet_tiny_srf_1x.pth"
    src, norms = _authors_dense_checkpoint(path)
    weights = read_backbone_weights(path)
    assert "mmdet" in weights.source and sorted(weights.out_norms) == [0, 1, 2, 3]
    assert sorted(weights.ignored) == sorted(f"{h}conv.{p}" for h in ("neck.", "roi_head.", "rpn_head.") for p in ("bias", "weight"))
    bb = FocalNetBackbone("focalnet_tiny_srf", focal_windows=9, pretrained=path, **SMALL)
    x = torch.randn(2, 3, 75, 100)
    feats = bb.eval()(x)
    ref = src.eval().forward_intermediates(x, intermediates_only=True)
    for i, (f, r) in enumerate(zip(feats, ref)):
        w, b = norms[i]
        want = F.layer_norm(r.permute(0, 2, 3, 1), (r.shape[1],), w, b).permute(0, 3, 1, 2)
        assert f.shape == (2, src.dims[i], math.ceil(75 / 2 ** (i + 2)), math.ceil(100 / 2 ** (i + 2)))
        torch.testing.assert_close(f, want, atol=1e-5, rtol=1e-5)


def test_authors_upernet_checkpoint_into_upernet(tmp_path):
    path = tmp_path / "upernet_focalnet_tiny_srf.pth"
    src, norms = _authors_dense_checkpoint(path, heads=("decode_head.", "auxiliary_head."))
    seg = upernet_focalnet("focalnet_tiny_srf", 5, pretrained_backbone=path, backbone_args=SMALL, decoder_channels=16, aux_channels=8)
    assert torch.equal(seg.backbone.out_norms["2"].weight, norms[2][0])
    assert torch.equal(
        seg.backbone.model.stages[2].blocks[1].modulation.f.weight, src.stages[2].blocks[1].modulation.f.weight
    )


def test_mismatched_checkpoints_fail_clearly(tmp_path):
    path = tmp_path / "det.pth"
    _authors_dense_checkpoint(path)
    with pytest.raises(CheckpointError, match="mis-shaped"):
        FocalNetBackbone("focalnet_tiny_srf", pretrained=path, embed_dim=24, depths=(1, 1, 2, 1))
    with pytest.raises(CheckpointError, match="missing"):
        FocalNetBackbone("focalnet_tiny_srf", pretrained=path, embed_dim=16, depths=(1, 2, 2, 1))
    with pytest.raises(CheckpointError, match="does not exist"):
        FocalNetBackbone("focalnet_tiny_srf", pretrained=tmp_path / "nope.pth", **SMALL)
    junk = tmp_path / "junk.pth"
    torch.save({"state_dict": {"encoder.conv.weight": torch.zeros(1)}}, junk)
    with pytest.raises(CheckpointError, match="not a FocalNet checkpoint"):
        FocalNetBackbone("focalnet_tiny_srf", pretrained=junk, **SMALL)


def test_our_safetensors_and_state_dicts_as_pretrained(tmp_path):
    cls = _model(windows=3)
    save_model(cls, tmp_path / "cls.safetensors")
    bb = FocalNetBackbone("focalnet_tiny_srf", focal_windows=9, pretrained=tmp_path / "cls.safetensors", **SMALL)
    bb2 = FocalNetBackbone("focalnet_tiny_srf", focal_windows=9, pretrained=cls.state_dict(), **SMALL)
    for (k, a), b in zip(bb.state_dict().items(), bb2.state_dict().values()):
        assert torch.equal(a, b), k
