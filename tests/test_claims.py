"""The claims' measurements (focalnet.inspect.claims) on tiny inputs, the verdict rule against known values, and an
end-to-end smoke of benchmarks/claims.py that writes its table into a temporary folder."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

import focalnet
from focalnet.inspect.claims import (
    DOES_NOT_HOLD,
    HOLDS,
    INCONCLUSIVE,
    formula_check,
    gate_correlation,
    intensity_saliency,
    level_support,
    modulator_map,
    object_focus,
    record_last_block,
    size_pairing,
    summarize,
    welch_verdict,
)

ROOT = Path(__file__).resolve().parents[1]

# Welch's t-test, example 1 of its Wikipedia article (15 values per sample): t = -2.46, df = 24.99, p = 0.021
A1 = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
A2 = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return focalnet.create_model("focalnet_tiny_srf", embed_dim=8, depths=(1, 1, 1), focal_levels=3, focal_windows=3,
                                 num_classes=10).eval()


# -- the verdict rule --------------------------------------------------------------------------------------------


def test_welch_matches_the_published_example_and_scipy():
    from scipy.stats import ttest_ind

    v = welch_verdict(A1, A2)
    assert v.t == pytest.approx(-2.46, abs=0.005) and v.df == pytest.approx(24.99, abs=0.01)
    assert v.p == pytest.approx(0.021, abs=0.0005)
    ref = ttest_ind(A1, A2, equal_var=False)
    assert (v.t, v.p, v.df) == pytest.approx((ref.statistic, ref.pvalue, ref.df), rel=1e-9)
    # by hand: means 2 and 5, variances 1 and 1, n = 3: t = -3 / sqrt(2/3), df = 4
    v = welch_verdict([1, 2, 3], [4, 5, 6], higher_is_better=False)
    assert v.t == pytest.approx(-3 / math.sqrt(2 / 3)) and v.df == pytest.approx(4.0)


def test_verdict_has_a_direction_and_an_inconclusive_side():
    assert welch_verdict(A2, A1).verdict == HOLDS  # A2's mean is higher, significantly
    assert welch_verdict(A1, A2).verdict == DOES_NOT_HOLD
    assert welch_verdict(A1, A2, higher_is_better=False).verdict == HOLDS
    assert welch_verdict([1.0, 2.0, 3.0], [1.5, 2.5, 3.1]).verdict == INCONCLUSIVE  # p well above 0.05
    assert welch_verdict([1.0], [2.0, 3.0]).verdict == INCONCLUSIVE  # one seed: no test
    assert welch_verdict([1.0, 1.0], [2.0, 2.0]).verdict == INCONCLUSIVE  # no variance: undefined
    # one arm without variance still has a defined test (df from the other arm)
    v = welch_verdict([5.0, 5.0, 5.0], [1.0, 1.1, 0.9])
    assert v.verdict == HOLDS and v.df == pytest.approx(2.0)


def test_summary_is_mean_and_sample_sd():
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert (s.mean, s.n) == (2.5, 4) and s.sd == pytest.approx(1.2909944, rel=1e-6)
    assert s.text() == "2.50 ± 1.29 (n=4)"


# -- where the modulator looks --------------------------------------------------------------------------------


def test_object_focus_of_a_map_equal_to_the_mask_and_of_a_flat_map():
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, :16, :16] = True  # a quarter
    masks[1, 16:, :] = True  # a half
    flat = object_focus(torch.ones(2, 4, 4), masks, stride=8)
    assert torch.allclose(flat["mass_share"], flat["area_share"]) and flat["area_share"].tolist() == [0.25, 0.5]
    sharp = torch.zeros(2, 32, 32)
    sharp[masks] = 1.0
    exact = object_focus(sharp, masks, stride=1)
    assert exact["mass_share"].tolist() == [1.0, 1.0] and exact["pointing"].tolist() == [1.0, 1.0]
    off = object_focus(1.0 - sharp, masks, stride=1)
    assert off["mass_share"].tolist() == [0.0, 0.0] and off["pointing"].tolist() == [0.0, 0.0]
    # a canvas without objects has no share: left out
    assert len(object_focus(torch.ones(1, 4, 4), torch.zeros(1, 32, 32, dtype=torch.bool), 8)["mass_share"]) == 0


def test_intensity_saliency_is_pooled_brightness():
    images = torch.zeros(1, 3, 20, 20)
    images[:, :, :8, :8] = 1.0
    sal = intensity_saliency(images, stride=8)  # 20 px at stride 8: a 3x3 grid (ceil)
    assert sal.shape == (1, 3, 3) and sal[0, 0, 0] == 1.0 and sal[0, 1, 1] == 0.0


def test_record_and_modulator_map_on_a_tiny_model():
    model = tiny_model()
    rec = record_last_block(model, torch.rand(2, 3, 64, 64))
    assert rec.stride == 16 and rec.gates.shape == (2, 4, 4, 4)
    m = modulator_map(rec)
    assert m.shape == (2, 4, 4) and bool((m >= 0).all())
    assert model.training is False and not model._forward_hooks


def test_gate_correlation_pairs():
    torch.manual_seed(0)
    a = torch.rand(3, 1, 5, 5)
    same = gate_correlation(torch.cat([a, a, a, a], dim=1))  # L = 3 and a global gate, all alike
    assert torch.allclose(same["levels"], torch.ones(3)) and torch.allclose(same["global"], torch.ones(3))
    opposite = gate_correlation(torch.cat([a, -a], dim=1))  # L = 1: no pair of levels
    assert torch.isnan(opposite["levels"]).all() and torch.allclose(opposite["global"], -torch.ones(3))
    assert torch.isnan(gate_correlation(torch.rand(2, 3, 1, 1))["global"]).all()  # a 1x1 map has no correlation


# -- receptive field, formula, sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", [1, 2, 3, 4])
@pytest.mark.parametrize("window,factor", [(3, 2), (5, 2), (9, 2), (3, 4)])
def test_receptive_field_is_exact(level, window, factor):
    r = level_support(level, window, focal_factor=factor)
    assert r["measured"] == r["expected"] == [1 + sum(k - 1 for k in r["kernels"][: l + 1]) for l in range(level)]
    assert all(r["square"]) and r["exact"] and r["output_is_global"]


def test_formula_check_at_three_sizes():
    rows = formula_check(tiny_model(), [32, 48, 61])
    assert [r["img_size"] for r in rows] == [32, 48, 61] and all(r["equal"] for r in rows)
    assert all(r["formula"] - r["elementwise"] == r["counted"] for r in rows)


def test_size_pairing_reports_both_ratios():
    small, large = torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(3, 10, 3)
    rows = size_pairing({"a": small, "b": large}, img_size=16, in_chans=3)
    assert rows[0]["within"] and rows[0]["params_vs_ref"] == 0
    assert rows[1]["params_vs_ref"] == pytest.approx(10 / 8 - 1) and not rows[1]["within"]
    assert size_pairing({"a": small, "b": large}, img_size=16, in_chans=3, tolerance=0.3)[1]["within"]


# -- the command, end to end ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def claims_cli():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import claims

    return claims


def test_smoke_run_writes_parts_and_a_table_outside_docs(claims_cli, tmp_path):
    docs = ROOT / "docs" / "claims.md"
    before = docs.read_text() if docs.exists() else None
    assert claims_cli.main(["--smoke", "--out", str(tmp_path), "--only", "cost", "--only", "modulation"]) == 0
    assert (docs.read_text() if docs.exists() else None) == before
    table = (tmp_path / "claims.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert [r.split("|")[1].strip() for r in rows] == ["1", "2", "3", "4", "5", "6a", "6b"]
    assert sum("not measured yet" in r for r in rows) == 4  # classify, isotropic, dense, speed were not run
    cost = json.loads((tmp_path / "parts" / "cost.json").read_text())
    assert cost["rows"][0]["verdict"] == HOLDS and cost["tier"] == "smoke"
    modulation = json.loads((tmp_path / "parts" / "modulation.json").read_text())
    assert [r["key"] for r in modulation["rows"]] == ["objects", "gates"]
    assert all(r["verdict"] in (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE) for r in modulation["rows"])
    assert "smoke tier" in table


def test_arguments_and_plan(claims_cli, capsys):
    args = claims_cli.parse_args(["--budget", "dense=50", "--only", "dense"])
    assert args.budgets["dense"] == 50 and args.seeds == 3 and args.docs == ROOT / "docs" / "claims.md"
    full = sum(claims_cli.planned_seconds(p, claims_cli.parse_args([])) for p in claims_cli.PARTS)
    assert 60 * 60 < full < 150 * 60  # the full run fits in about two hours
    quick = sum(claims_cli.planned_seconds(p, claims_cli.parse_args(["--quick"])) for p in claims_cli.PARTS)
    assert quick < 15 * 60
    with pytest.raises(SystemExit):
        claims_cli.parse_args(["--budget", "nothing=3"])
    with pytest.raises(SystemExit):
        claims_cli.parse_args(["--seeds", "1"])


def test_dense_peers_are_drop_in_backbones_sized_alike(claims_cli):
    """Swin, ConvNeXt and ResNet (timm features_only) replace FocalNet's body in the same Mask R-CNN and UperNet,
    within 15 % of its parameters and MACs."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    for name in ("swin", "convnext", "resnet"):
        body = claims_cli.dense_backbone(name, 64).eval()
        assert [tuple(f.shape[1:]) for f in body(x)] == [(c, 64 // s, 64 // s) for c, s in
                                                         zip(claims_cli.DENSE_CHANNELS, (4, 8, 16, 32))]
        assert body.strides == [4, 8, 16, 32] and 2 in body.out_indices
    det, seg = claims_cli.dense_models("swin", 64)
    assert isinstance(det.backbone.body, claims_cli.TimmPyramid) and isinstance(seg.backbone, claims_cli.TimmPyramid)
    assert seg.eval()(x)["out"].shape == (2, 11, 64, 64)
    rows = claims_cli.dense_pairing(["focalnet", "swin", "convnext", "resnet"], 64)
    assert all(r["within"] for r in rows), rows


def test_a_part_that_fails_says_why_in_its_row(claims_cli, tmp_path, monkeypatch):
    def broken(args):
        raise RuntimeError("no such backbone in this timm")

    monkeypatch.setitem(claims_cli.RUNNERS, "cost", broken)
    assert claims_cli.main(["--smoke", "--out", str(tmp_path), "--only", "cost"]) == 1
    table = (tmp_path / "claims.md").read_text()
    line = next(l for l in table.splitlines() if l.startswith("| 6a "))
    assert "could not be measured here: RuntimeError: no such backbone in this timm" in line and "not measured" in line


def test_a_part_without_its_json_keeps_its_row_from_the_table_as_it_was(claims_cli, tmp_path):
    """Re-running one part must not erase the rows of parts measured before whose JSON is not at hand."""
    docs = tmp_path / "claims.md"
    old_row = "| 2 | isotropic beats ViT | top-1 85.76 ± 0.10 (n=3) | **holds** | `cmd` | AMD EPYC (avx2), 2 threads |"
    docs.write_text("\n".join(["| # | claim | m | v | c | machine |", "|---|---|---|---|---|---|", old_row,
                               "| 3 | dense | not measured yet | - | `x` | - |", "", "Machines: old machine", ""]))
    assert claims_cli.main(["--smoke", "--out", str(tmp_path), "--docs", str(docs), "--only", "cost"]) == 0
    table = docs.read_text()
    assert old_row in table.splitlines()
    assert "old machine" in next(l for l in table.splitlines() if l.startswith("Machines: "))  # still named
    line = next(l for l in table.splitlines() if l.startswith("| 3 "))
    assert "not measured yet" in line and "--only dense" in line  # an unmeasured row is re-made, not kept
    assert [l.split("|")[1].strip() for l in table.splitlines() if l.startswith("| ") and
            not l.startswith("| #")] == ["1", "2", "3", "4", "5", "6a", "6b"]
