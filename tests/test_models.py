"""Generic checks over every registered model, at a small width and depth with all of its flags."""
from __future__ import annotations

import pytest
import torch

import focalnet
from focalnet.registry import build_model

from conftest import perturb_, small_overrides

ALL = focalnet.list_models()


def small(name: str, **kw) -> torch.nn.Module:
    return build_model(name, **{**small_overrides(name), "num_classes": 7, **kw})


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_reaches_every_parameter(name):
    model = small(name, drop_path_rate=0.1)
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad}"


@pytest.mark.parametrize("name", ALL)
def test_feature_info_and_intermediates_match_features(name):
    model = perturb_(small(name)).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        feats = model.forward_features(x)
        logits = model(x)
    assert len(inter) == len(model.feature_info)
    for info, t in zip(model.feature_info, inter):
        assert t.shape[1] == info["num_chs"]
        assert t.shape[2] == -(-64 // info["reduction"]) and t.shape[3] == -(-96 // info["reduction"])
        assert model.get_submodule(info["module"]) is not None
    torch.testing.assert_close(final, feats, rtol=0, atol=0)
    torch.testing.assert_close(model.forward_head(feats), logits, rtol=0, atol=0)
    # the last intermediate, normed, is the feature map
    last = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
    torch.testing.assert_close(last[-1], feats, rtol=0, atol=0)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, model.num_features)


@pytest.mark.parametrize("name", ALL)
def test_grad_checkpointing_changes_nothing(name):
    model = perturb_(small(name))
    model.train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    y1 = model(x)
    y1.sum().backward()
    g1 = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    torch.manual_seed(1)  # same drop path draws
    y2 = model(x)
    y2.sum().backward()
    torch.testing.assert_close(y2, y1, rtol=0, atol=0)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, g1[n], rtol=1e-5, atol=1e-6, msg=n)


def test_intermediate_selection_and_stop_early():
    model = small("focalnet_tiny_srf").eval()
    x = torch.randn(1, 3, 64, 64)
    all_maps = model.forward_intermediates(x, intermediates_only=True)
    assert [t.shape[1] for t in all_maps] == [16, 32, 64, 128]
    two = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True, stop_early=True)
    torch.testing.assert_close(two[0], all_maps[0])
    torch.testing.assert_close(two[1], all_maps[2])
    assert len(model.forward_intermediates(x, indices=[-1], intermediates_only=True)) == 1
    with pytest.raises(IndexError, match="out of range"):
        model.forward_intermediates(x, indices=[4])


@pytest.mark.parametrize("name", ["focalnet_tiny_srf", "focalnet_large_fl3", "focalnet_tiny_iso"])
@pytest.mark.parametrize("size", [(1, 1), (7, 13), (31, 33), (45, 64), (97, 50)])
def test_any_input_size_keeps_every_pixel(name, size):
    """Any H, W works (also below 32 px), and the last row/column of pixels reaches the output."""
    model = perturb_(small(name)).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        y = model(x)
        x2 = x.clone()
        x2[..., -1, -1] += 10.0  # the bottom-right pixel, which a floor-division stride would drop
        y2 = model(x2)
    assert torch.isfinite(y).all()
    assert not torch.allclose(y, y2), "the bottom-right pixel does not influence the output"
    stride = model.feature_info[-1]["reduction"]
    feats = model.forward_features(x)
    assert feats.shape[-2:] == (-(-size[0] // stride), -(-size[1] // stride))


def test_bad_input_is_a_clear_error():
    model = small("focalnet_tiny_srf")
    with pytest.raises(ValueError, match=r"4-D .*unsqueeze"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="3 input channels but the input has 1"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[0.0]])


def test_forward_writes_no_state():
    model = perturb_(small("focalnet_huge_fl4")).eval()
    before = {n: dict(vars(m)) for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model(torch.randn(1, 3, 40, 40))
    after = {n: dict(vars(m)) for n, m in model.named_modules()}
    for n in before:
        assert before[n].keys() == after[n].keys(), f"forward added attributes on {n}"
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


def test_reset_classifier_only_touches_the_head():
    model = small("focalnet_tiny_lrf")
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    model.reset_classifier(3)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert model.num_classes == 3 and model.arch["num_classes"] == 3
    for k, v in body.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, model.num_features)


def test_in_chans_and_grayscale():
    model = small("focalnet_tiny_srf", in_chans=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_no_weight_decay_lists_norms_biases_and_layer_scales():
    model = small("focalnet_large_fl3")
    skip = model.no_weight_decay()
    assert "stages.0.blocks.0.ls1.gamma" in skip and "norm.weight" in skip and "head.fc.bias" in skip
    assert "stages.0.blocks.0.modulation.f.weight" not in skip and "head.fc.weight" not in skip
    assert "" not in skip  # the authors' {''} matches every name


@pytest.mark.parametrize("name", ["focalnet_tiny_srf", "focalnet_huge_fl3", "focalnet_base_iso"])
def test_torch_compile_fullgraph(name):
    """No graph break anywhere (fullgraph=True): dynamo traces the whole model, AOT autograd too."""
    torch._dynamo.reset()
    model = perturb_(small(name)).eval()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_inductor():
    torch._dynamo.reset()
    model = perturb_(small("focalnet_tiny_lrf")).eval()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["focalnet_tiny_srf", "focalnet_tiny_iso"])
def test_jit_trace(name):
    model = perturb_(small(name)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-5)
        # the traced graph pads whatever the size: a non-multiple size works too
        x2 = torch.randn(1, 3, 70, 45)
        torch.testing.assert_close(traced(x2), model(x2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["focalnet_tiny_srf", "focalnet_tiny_iso"])
def test_arch_is_every_constructor_argument_and_rebuilds_the_model(name):
    import inspect

    from focalnet.models import model_class, model_from_arch

    model = small(name)
    cls = model_class(model.arch["family"])
    assert type(model) is cls
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    assert list(model.arch) == ["family", *params]
    rebuilt = model_from_arch(model.arch)
    assert rebuilt.arch == model.arch
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
