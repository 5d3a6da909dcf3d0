"""The registry: the 15 released variants, complete entries, published sizes. Every test runs over every
registered name (`list_models()`), so a variant added to focalnet.registry is tested at once."""
from __future__ import annotations

import pytest
import torch

import focalnet
from focalnet.inspect.complexity import count_macs, count_params
from focalnet.registry import build_model, get_spec, register_model, Published

# the authors' releases (their README): each must stay registered; the tests below run over list_models()
RELEASED = {
    "focalnet_tiny_srf", "focalnet_tiny_lrf", "focalnet_small_srf", "focalnet_small_lrf", "focalnet_base_srf",
    "focalnet_base_lrf", "focalnet_tiny_iso", "focalnet_small_iso", "focalnet_base_iso", "focalnet_large_fl3",
    "focalnet_large_fl4", "focalnet_xlarge_fl3", "focalnet_xlarge_fl4", "focalnet_huge_fl3", "focalnet_huge_fl4",
}


def test_all_released_variants_are_registered():
    assert RELEASED <= set(focalnet.list_models())
    assert focalnet.list_models("*iso") == ["focalnet_base_iso", "focalnet_small_iso", "focalnet_tiny_iso"]


def _tolerance(published: float) -> float:
    """0.5%, or half a unit of the last digit the paper prints (1.1 GMACs may be anything in [1.05, 1.15))."""
    text = f"{published:g}"
    decimals = len(text.split(".")[1]) if "." in text else 0
    return max(0.005 * published, 0.5 * 10**-decimals)


@pytest.mark.parametrize("name", focalnet.list_models())
def test_params_and_macs_match_the_paper(name):
    spec = get_spec(name)
    with torch.device("meta"):
        model = build_model(name, num_classes=1000)  # the paper's counts are with a 1000-class head
    params = count_params(model) / 1e6
    if name in RELEASED:
        assert spec.published.params_m is not None, f"{name}: the paper's parameter count is missing"
    if spec.published.params_m is not None:
        assert abs(params - spec.published.params_m) <= _tolerance(spec.published.params_m), params
    if spec.published.gmacs is not None:
        macs = count_macs(model, 224) / 1e9
        assert abs(macs - spec.published.gmacs) <= _tolerance(spec.published.gmacs), macs


def test_lrf_entries_are_lrf_on_their_own():
    """The authors' focalnet_tiny_lrf() builds an SRF model unless a YAML is read too; ours never does."""
    for size in ("tiny", "small", "base"):
        srf, lrf = get_spec(f"focalnet_{size}_srf").arch, get_spec(f"focalnet_{size}_lrf").arch
        assert srf["focal_levels"] == [2, 2, 2, 2] and lrf["focal_levels"] == [3, 3, 3, 3]
    assert get_spec("focalnet_large_fl4").arch["normalize_modulator"] is True
    assert get_spec("focalnet_huge_fl3").arch["use_post_norm_in_modulation"] is True
    assert get_spec("focalnet_large_fl3").arch["focal_windows"] == [5, 5, 5, 5]
    iso = get_spec("focalnet_base_iso").arch
    assert iso["use_post_norm"] and iso["use_post_norm_in_modulation"] and iso["layerscale_value"] == 1e-4


def test_variants_have_distinct_tensor_shapes():
    """So that a checkpoint that does not name its architecture still identifies one variant."""
    seen = {}
    for name in focalnet.list_models():
        with torch.device("meta"):
            sd = build_model(name).state_dict()
        sig = tuple(sorted((k, tuple(v.shape)) for k, v in sd.items()))
        assert sig not in seen, f"{name} and {seen.get(sig)} have the same tensors"
        seen[sig] = name


def test_duplicate_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):

        @register_model(Published(), drop_path_rate=0.1)
        def focalnet_tiny_srf(**kwargs):  # noqa: F811
            raise AssertionError("never built")


def test_unknown_name_suggests_close_ones():
    with pytest.raises(KeyError, match="did you mean focalnet_tiny_srf"):
        focalnet.create_model("focalnet_tiny_sfr")


def test_unknown_argument_and_img_size_are_clear_errors():
    with pytest.raises(TypeError, match="any input size"):
        focalnet.create_model("focalnet_tiny_srf", img_size=224)
    with pytest.raises(TypeError, match="focal_lvl"):
        focalnet.create_model("focalnet_tiny_srf", focal_lvl=3)


def test_create_model_arguments():
    m = focalnet.create_model("focalnet_tiny_srf", num_classes=5, in_chans=1, drop_path_rate=0.0)
    assert m.num_classes == 5 and m.in_chans == 1 and m.variant == "focalnet_tiny_srf"
    assert m.arch["drop_path_rate"] == 0.0
    assert focalnet.create_model("focalnet_tiny_srf").arch["drop_path_rate"] == 0.2  # the paper's recipe


def test_an_error_inside_the_constructor_keeps_its_type_and_traceback(monkeypatch):
    from focalnet.errors import FocalNetError
    from focalnet.models import FocalNetStage

    def broken_init(self, *args, **kwargs):
        raise TypeError("a bug inside the model")

    monkeypatch.setattr(FocalNetStage, "__init__", broken_init)
    with pytest.raises(TypeError, match="a bug inside the model") as e:
        focalnet.create_model("focalnet_tiny_srf")
    assert not isinstance(e.value, FocalNetError)


def test_unknown_arguments_are_checked_by_name_with_a_hint(tmp_path):
    from focalnet.errors import FocalNetError

    with pytest.raises(FocalNetError, match=r"focal_lvl \(did you mean focal_levels\?\)"):
        focalnet.create_model("focalnet_tiny_srf", focal_lvl=3)
    with pytest.raises(FocalNetError, match="focal_levels has 3 entries but the model has 4 stages"):
        focalnet.create_model("focalnet_tiny_srf", focal_levels=(2, 2, 2))
    # load_model's overrides go through the same check
    model = focalnet.create_model("focalnet_tiny_iso", embed_dim=16, depth=1, num_classes=2)
    focalnet.save_model(model, tmp_path / "m.safetensors")
    with pytest.raises(FocalNetError, match="FocalNetIsotropic has no argument depths"):
        focalnet.load_model(tmp_path / "m.safetensors", depths=[1])
