"""Complexity: FlopCounterMode against the paper's formula, receptive fields, activation memory, the sweep."""
from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn as nn
from PIL import Image

from focalnet import create_model, get_spec, list_models
from focalnet.cli import main
from focalnet.inspect.complexity import (
    SweepModel,
    activation_memory,
    count_macs,
    formula_macs,
    profile_model,
    receptive_fields,
    scaling_sweep,
    write_sweep,
)
from focalnet.registry import build_model

from conftest import small_overrides


def _meta(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, **kw)


@pytest.mark.parametrize("name", ["focalnet_tiny_srf", "focalnet_small_lrf", "focalnet_tiny_iso", "focalnet_large_fl3",
                                  "focalnet_huge_fl4"])
@pytest.mark.parametrize("size", [(230, 190), (97, 33)])
def test_formula_is_the_counter_plus_the_elementwise_terms(name, size):
    """The paper's HW(3C^2 + C(2L+3) + C sum k^2) per block, plus proj, MLP, stem, downsampling and head,
    equals FlopCounterMode's count plus the element-wise HW C(L+2) per block, exactly; also at sizes that
    need padding, and stage by stage."""
    model = _meta(name, num_classes=1000)
    prof = profile_model(model, size, memory=False)
    assert prof["macs_measured"] == prof["macs_formula_countable"] == prof["macs_formula"] - prof["macs_elementwise"]
    for s in prof["stages"]:
        assert s["measured"] == s["countable"], s
    # the paper's own term, spelled out for one stage
    s0 = formula_macs(model.arch, size).stages[0]
    C, L, ks, hw = s0.dim, s0.focal_level, s0.kernel_sizes, s0.height * s0.width
    assert s0.modulation == hw * (3 * C * C + C * (2 * L + 3) + C * sum(k * k for k in ks))


def test_formula_agrees_with_the_published_table():
    for name in list_models():
        pub = get_spec(name).published
        if pub.gmacs is not None:
            total = formula_macs(get_spec(name).arch | {"num_classes": 1000}, 224).total / 1e9
            assert abs(total - pub.gmacs) / pub.gmacs < 0.015, (name, total, pub.gmacs)


def test_receptive_fields():
    rows = receptive_fields(get_spec("focalnet_tiny_lrf").arch)
    stage0 = [r for r in rows if r["stage"] == 0]
    assert [r["kernel"] for r in stage0] == [3, 5, 7, None]
    assert [r["rf_map_px"] for r in stage0] == [3, 7, 13, "global"]  # r_l = 1 + sum (k_i - 1)
    assert [r["span_px"] for r in stage0[:3]] == [12, 28, 52]  # stride 4
    # theoretical: stem 4 px; the first block's deepest level adds (13 - 1) * 4; the last block's level 1 adds 2 * 4
    assert stage0[0]["theoretical_px"] == 4 + 12 * 4 + 2 * 4
    stage3 = [r for r in rows if r["stage"] == 3]
    assert [r["span_px"] for r in stage3[:3]] == [96, 224, 416]
    fl3 = [r for r in receptive_fields(get_spec("focalnet_large_fl3").arch) if r["stage"] == 0]
    assert [r["rf_map_px"] for r in fl3] == [5, 11, 19, "global"]  # focal window 5: kernels 5, 7, 9


def test_activation_memory_of_a_known_module():
    """Conv 3->8 (3x3) then GELU on a 1x3x16x16 input: backward keeps the input (3 KiB) and the conv
    output (8 KiB); inference holds the conv output and the GELU output at once (16 KiB)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU())
    model.in_chans = 3
    mem = activation_memory(model, 16, device=None)
    assert mem.saved_bytes == 3 * 256 * 4 + 8 * 256 * 4
    assert mem.peak_live_bytes == 2 * 8 * 256 * 4
    assert activation_memory(model, 16) == mem.__class__(**{**mem.__dict__, "device": "meta"})


def test_activation_memory_meta_equals_real_and_grows_with_pixels():
    name = "focalnet_tiny_srf"
    model = create_model(name, **small_overrides(name))
    real = activation_memory(model, (96, 64), batch_size=2, device=None)
    meta = activation_memory(model, (96, 64), batch_size=2)
    assert (real.saved_bytes, real.peak_live_bytes) == (meta.saved_bytes, meta.peak_live_bytes)
    big = activation_memory(model, (192, 128), batch_size=2)
    assert 3.5 < big.saved_bytes / meta.saved_bytes < 4.1  # 4x the pixels; biases/head do not scale
    assert 3.5 < big.peak_live_bytes / meta.peak_live_bytes < 4.1


def test_attention_is_counted_on_cpu():
    """PyTorch has no FLOP formula for the CPU flash-attention kernel timm's ViT calls; ours adds it."""
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, num_classes=10).eval()
    fused = count_macs(vit, 64)
    for m in vit.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False  # the explicit q @ k^T, softmax, @ v path
    assert count_macs(vit, 64) == fused
    tokens, dim = 17, 32
    assert fused > 2 * tokens * tokens * dim  # the two attention matmuls are in the count


def test_one_flop_counter_behind_profile_training_and_bench():
    """`focalnet profile`, a run's summary and `focalnet bench` count with focalnet.flops: the same figure."""
    import focalnet.flops
    from focalnet.deploy import bench
    from focalnet.inspect import complexity
    from focalnet.train import artifacts

    assert complexity.count_macs is focalnet.flops.count_macs
    meta = _meta("focalnet_tiny_srf")
    macs = count_macs(meta, 32)
    assert macs > 0 and artifacts.try_count_macs(meta, 3, 32) == macs
    rows = bench.run_inference(["ours", "ours-fused"], bench.Workload("focalnet_tiny_srf", batch_size=1, img_size=32),
                               warmup=0, rounds=1)
    assert [r.flops_per_img for r in rows] == [2 * macs, 2 * macs]  # FLOPs: 2 per multiply-add
    assert artifacts.try_count_macs(nn.Identity(), 3, 32) is None  # a model the counter cannot run: no figure


def test_profile_tables_come_from_the_library(capsys):
    from focalnet.inspect.complexity import profile_lines, published_figures, published_lines, published_table

    prof = dict(profile_model(_meta("focalnet_tiny_srf"), 64), variant="focalnet_tiny_srf",
                published=published_figures("focalnet_tiny_srf"))
    lines = profile_lines(prof, num_classes=1000)
    assert lines[0] == "focalnet_tiny_srf at 64x64 px, batch 1, 1000-class head"
    assert sum(line.startswith("  stage") for line in lines) == 2  # the heads of the formula and the receptive fields
    assert "  receptive field of each focal level" in lines
    assert main(["profile", "focalnet_tiny_srf", "--img-size", "64"]) == 0
    assert capsys.readouterr().out.splitlines() == lines
    rows = published_table(224, pattern="*tiny_iso")
    assert [line.split()[0] for line in published_lines(rows, 224)[2:3]] == ["focalnet_tiny_iso"]


def test_profile_cli(capsys):
    assert main(["profile", "focalnet_tiny_srf", "--json"]) == 0
    prof = json.loads(capsys.readouterr().out)
    assert prof["params"] == 28_427_116 and abs(prof["macs_measured"] / 1e9 - 4.4) < 0.05
    assert prof["macs_measured"] == prof["macs_formula_countable"] and prof["img_size"] == [224, 224]
    assert prof["published"]["gmacs"] == 4.4 and prof["saved_bytes"] > prof["peak_live_bytes"] > 0
    assert main(["profile", "focalnet_tiny_iso", "--img-size", "230", "190"]) == 0
    out = capsys.readouterr().out
    assert "230x190" in out and "receptive field" in out and "peak live" in out
    assert main(["profile", "--all", "*iso", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["focalnet_base_iso", "focalnet_small_iso", "focalnet_tiny_iso"]
    for r in rows:
        assert abs(r["params_m"] - r["params_m_published"]) / r["params_m_published"] < 0.01, r
    assert main(["profile", "focalnet_tiny"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["profile"]) == 2
    capsys.readouterr()


def test_sweep_writes_csv_and_plot(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    def focal(size):
        return build_model("focalnet_tiny_srf", **small_overrides("focalnet_tiny_srf"))

    def vit(size):
        return VisionTransformer(img_size=size, patch_size=16, embed_dim=32, depth=2, num_heads=2)

    models = [SweepModel("tiny focal", "focal modulation", focal), SweepModel("tiny vit", "global attention", vit)]
    rows = scaling_sweep((64, 128, 256), models, repeats=1, warmup=0)
    assert [(r["model"], r["img_size"]) for r in rows] == [(m, s) for s in (64, 128, 256) for m in ("tiny focal", "tiny vit")]
    focal_rows = [r for r in rows if r["model"] == "tiny focal"]
    vit_rows = [r for r in rows if r["model"] == "tiny vit"]
    # focal modulation: each added pixel costs the same (MACs = a + b * pixels, a = the head);
    # global attention: each added pixel costs more than the last (the token-to-token products)
    def marginal(rs):
        return [(b["macs"] - a["macs"]) / (b["pixels"] - a["pixels"]) for a, b in zip(rs, rs[1:])]

    m_focal, m_vit = marginal(focal_rows), marginal(vit_rows)
    assert m_focal[0] == pytest.approx(m_focal[1], rel=1e-9)
    assert m_vit[1] > 1.1 * m_vit[0]
    assert all(r["ms_median"] > 0 for r in rows)
    csv_path, png_path = write_sweep(rows, tmp_path)
    with open(csv_path) as f:
        back = list(csv.DictReader(f))
    assert len(back) == 6 and int(back[0]["macs"]) == rows[0]["macs"]
    assert Image.open(png_path).size == (1500, 460)
    with pytest.raises(FileExistsError):
        write_sweep(rows, tmp_path)
