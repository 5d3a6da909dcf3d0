"""Our models hold timm's model contract: what timm's generic model tests ask of every timm model, written here
from timm's documented conventions (docs/timm.md lists them), so that `focalnet.create_model` can stand in for
`timm.create_model("focalnet_...")` in a timm pipeline.

Every registered variant is checked where it costs nothing: on the meta device (no storage, shapes only), at its
own input size. Where values are computed, one small hierarchical and one small isotropic model. The points timm's
suite checks that tests/test_models.py already holds for every variant (forward, backward reaching every
parameter, grad checkpointing changing nothing, forward_intermediates against forward_features, torch.compile)
are not repeated here.

The isotropic model returns (B, C, H, W) maps like the hierarchical one (not ViT tokens), so timm's spatial
("standard") checks apply to it unchanged; the one convention that reads differently is `norm=True` in
forward_intermediates, which normalizes every map of an isotropic model (as timm's ViTs do) and only the last
stage's of a hierarchical one (as timm's FocalNet does).
"""
import math
import subprocess
import sys
import warnings

import pytest
import torch

import focalnet
from focalnet.layers import ModelArgumentError
from focalnet.preprocess import DEFAULT_CROP_PCT

from conftest import perturb_, small_overrides

ALL = focalnet.list_models()
SMALL = ["focalnet_tiny_srf", "focalnet_tiny_iso"]  # one model of each family, where values are computed
FEATURE_CLASSES = ["getter", "list", "dict", "hook", "fx"]


@pytest.fixture(autouse=True)
def _quiet_deprecations():
    with warnings.catch_warnings():  # torch.jit.script / trace: deprecated in favour of torch.compile, still used
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*subsequence of those obtained in train mode")  # torchvision's fx
        yield


def small(name: str, **kw) -> torch.nn.Module:
    return perturb_(focalnet.create_model(name, **{**small_overrides(name), "num_classes": 7, **kw}))


def meta(name: str, **kw) -> torch.nn.Module:
    return focalnet.create_model(name, device="meta", **kw).eval()


# ---------------------------------------------------------------------------------------------------------
# every registered variant, on the meta device
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_contract_on_the_meta_device(name):
    """timm's default-cfg checks, at the cfg's own input size: the final map is `pool_size` and num_features wide,
    pre-logits head_hidden_size wide; reset_classifier(0) pools, reset_classifier(0, '') does not, nor does
    num_classes=0, global_pool='' at construction; classifier and first conv are named by the cfg; intermediates fit
    feature_info; prune_intermediate_layers drops what they do not need. Built in bfloat16 on the meta device
    (timm's way of sizing a model): nothing is allocated."""
    model = focalnet.create_model(name, device="meta", dtype=torch.bfloat16).eval()
    assert all(t.is_meta and t.dtype == torch.bfloat16 for t in [*model.parameters(), *model.buffers()])
    cfg = model.pretrained_cfg
    assert model.default_cfg == cfg
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    for key in ("classifier", "first_conv"):
        assert cfg[key] + ".weight" in model.state_dict()
    assert cfg["pool_size"] == (math.ceil(cfg["input_size"][1] / model.feature_info[-1]["reduction"]),) * 2

    x = torch.empty(2, *cfg["input_size"], device="meta", dtype=torch.bfloat16)
    final, maps = model.forward_intermediates(x)
    assert final.shape == (2, model.num_features, *cfg["pool_size"])
    assert len(maps) == len(model.feature_info)
    for info, m in zip(model.feature_info, maps):
        assert m.shape == (2, info["num_chs"], *(math.ceil(s / info["reduction"]) for s in x.shape[-2:]))
    pre = model.forward_head(final, pre_logits=True)  # forward is forward_head(forward_features(x))
    assert pre.shape == (2, model.head_hidden_size)
    model.reset_classifier(0)
    assert model.num_classes == 0 and model.forward_head(final).shape == pre.shape
    model.reset_classifier(0, "")
    assert model.forward_head(final).shape == final.shape
    unpooled = focalnet.create_model(name, device="meta", num_classes=0, global_pool="")
    assert unpooled.forward_head(final.float()).shape == final.shape

    assert model.prune_intermediate_layers([0, 1], prune_norm=False, prune_head=True) == [0, 1]
    assert len(model.feature_info) == 2 and isinstance(model.norm, torch.nn.Identity)
    assert isinstance(model.get_classifier(), torch.nn.Identity) and model.num_classes == 0
    pruned = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert [m.shape for m in pruned] == [m.shape for m in maps[:2]]
    assert model.num_features == model.head_hidden_size == model.feature_info[1]["num_chs"]
    assert model.forward_features(x).shape == maps[1].shape


def test_our_cfg_matches_timms_focalnet():
    """What timm's own FocalNet says about itself, we say alike (timm 1.0.21+ builds on the meta device too); the
    one deliberate difference: our eval crop is the authors' 0.875, timm's 0.9 (docs/timm.md)."""
    import timm

    for name in [n for n in ALL if timm.models.is_model(n)]:
        ours, theirs = meta(name), timm.create_model(name, device="meta")
        for attr in ("num_features", "head_hidden_size"):  # num_classes: timm's huge_fl4 cfg has no head
            assert getattr(ours, attr) == getattr(theirs, attr), (name, attr)
        assert [(f["num_chs"], f["reduction"]) for f in ours.feature_info] == [
            (f["num_chs"], f["reduction"]) for f in theirs.feature_info]
        for key in ("pool_size", "first_conv", "classifier", "input_size", "interpolation", "mean", "std"):
            a, b = (ours.pretrained_cfg[key], theirs.pretrained_cfg[key])
            assert (tuple(a) == tuple(b)) if isinstance(a, (tuple, list)) else a == b, (name, key, a, b)
        assert ours.pretrained_cfg["crop_pct"] in (DEFAULT_CROP_PCT, 1.0)


# ---------------------------------------------------------------------------------------------------------
# the classifier: pooling choices, reset on the model's device, dtype and mode
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SMALL)
def test_global_pool_choices(name):
    model = small(name).eval()
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        avg, mx = feats.mean((2, 3)), feats.amax((2, 3))
        want = {"avg": avg, "max": mx, "avgmax": (avg + mx) / 2, "catavgmax": torch.cat([avg, mx], 1), "": feats}
        for pool, pooled in want.items():
            model.reset_classifier(0, pool)
            assert model.head_hidden_size == pooled.shape[1]
            torch.testing.assert_close(model(x), pooled)
            built = focalnet.create_model(name, **small_overrides(name), num_classes=0, global_pool=pool)
            assert built.arch["global_pool"] == pool and built.head_hidden_size == pooled.shape[1]
    model.reset_classifier(3, "max")
    assert model.head.pool_type == "max" and model(x).shape == (2, 3)
    model.reset_classifier(5)  # None keeps the pooling
    assert model.head.pool_type == "max" and model.head.fc.in_features == model.num_features
    with pytest.raises(ModelArgumentError, match="num_classes=0"):
        focalnet.create_model(name, **small_overrides(name), global_pool="")
    with pytest.raises(ModelArgumentError, match="global_pool must be one of"):
        model.reset_classifier(0, "mean")


@pytest.mark.parametrize("name", SMALL)
def test_reset_classifier_follows_the_models_dtype_device_and_mode(name):
    """The bug of ClassifierHead.reset: a float32 CPU classifier in training mode, whatever the model was."""
    model = small(name, dtype=torch.float64).eval()
    model.reset_classifier(5)
    assert model.head.fc.weight.dtype == torch.float64 and not model.head.fc.training
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).shape == (1, 5)
    model.train().reset_classifier(4, "avgmax")
    assert model.head.fc.training
    on_meta = meta(name)
    on_meta.reset_classifier(9)
    assert on_meta.head.fc.weight.is_meta and not on_meta.head.fc.training


def test_dtype_and_device_build_where_asked():
    model = focalnet.create_model("focalnet_tiny_srf", **small_overrides("focalnet_tiny_srf"), dtype=torch.float64,
                                  device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(ModelArgumentError, match="floating-point"):
        focalnet.create_model("focalnet_tiny_srf", device="meta", dtype=torch.int64)
    with pytest.raises(ModelArgumentError, match="meta"):
        focalnet.create_model("focalnet_tiny_srf", pretrained="any.pth", device="meta")


# ---------------------------------------------------------------------------------------------------------
# features_only with each of timm's wrappers
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("feature_cls", FEATURE_CLASSES)
@pytest.mark.parametrize("name", SMALL)
def test_features_only_with_each_feature_cls(name, feature_cls):
    torch.manual_seed(0)
    model = focalnet.create_model(name, **small_overrides(name)).eval()
    indices = (1, 3) if model.arch["family"] == "hierarchical" else (0, 1)
    torch.manual_seed(0)  # the same initial weights
    features = focalnet.create_model(name, **small_overrides(name), features_only=True, out_indices=indices,
                                     feature_cls=feature_cls).eval()
    x = torch.randn(2, 3, 72, 40)
    with torch.no_grad():
        want = model.forward_intermediates(x, indices=indices, intermediates_only=True)
    with torch.no_grad():
        got = features(x)
    got = list(got.values()) if isinstance(got, dict) else got
    assert features.feature_info.channels() == [m.shape[1] for m in want]
    assert features.feature_info.reduction() == [model.feature_info[i]["reduction"] for i in indices]
    for a, b in zip(got, want):  # 'list', 'dict', 'hook' skip the channels-last conversion: float rounding only
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    cfg = features.pretrained_cfg
    assert features.default_cfg == cfg and "num_classes" not in cfg and cfg["input_size"] == (3, 224, 224)
    features.set_grad_checkpointing(True)
    features.train()
    sum(m.sum() for m in (lambda o: list(o.values()) if isinstance(o, dict) else o)(features(x))).backward()


def test_timm_builds_our_resized_folder_where_and_as_asked(tmp_path):
    """timm's create_model hands device= and dtype= to the entry point `focalnet_custom` registers."""
    import timm

    from focalnet.checkpoints import save_model

    model = small("focalnet_tiny_srf", patch_size=2).eval()  # no timm entry point builds it: focalnet_custom
    save_model(model, tmp_path, fmt="timm")
    on_meta = timm.create_model(f"local-dir:{tmp_path}", device="meta")
    assert all(p.is_meta for p in on_meta.parameters())
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True, dtype=torch.float64).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert loaded.stem.proj.weight.dtype == torch.float64
        torch.testing.assert_close(loaded(x.double()).float(), model(x), rtol=1e-5, atol=1e-5)
    features = timm.create_model(f"local-dir:{tmp_path}", features_only=True, feature_cls="list", out_indices=(1,))
    assert features.feature_info.channels() == [model.feature_info[1]["num_chs"]]


def test_unknown_feature_cls_is_refused():
    with pytest.raises(ModelArgumentError, match="feature_cls"):
        focalnet.create_model("focalnet_tiny_srf", device="meta", features_only=True, feature_cls="graph")


# ---------------------------------------------------------------------------------------------------------
# TorchScript and torch.fx: both families, outputs equal to eager
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SMALL)
def test_torchscript_equals_eager(name):
    model = small(name).eval()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        for size in [(64, 64), (45, 70)]:  # the second pads: any size, as eager
            x = torch.randn(2, 3, *size)
            torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)
            torch.testing.assert_close(scripted.forward_features(x), model.forward_features(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", SMALL)
def test_fx_symbolic_trace_equals_eager_forward_and_backward(name):
    model = small(name, drop_path_rate=0.2).eval()
    graph = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        for size in [(64, 64), (45, 70), (9, 9)]:  # size-dependent padding is decided at run time in the graph
            x = torch.randn(2, 3, *size)
            torch.testing.assert_close(graph(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="3 input channels"):  # the input check is in the graph too
        graph(torch.randn(1, 1, 32, 32))
    model.train()
    train_graph = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    want = model(x)
    torch.manual_seed(1)  # same stochastic-depth draws
    got = train_graph(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got.mean().backward()
    assert all(p.grad is not None for p in train_graph.parameters())


@pytest.mark.parametrize("name", SMALL)
def test_timm_fx_feature_extraction_and_its_script(name):
    """timm's fx route: torchvision's feature extractor with timm's tracer settings, then TorchScript."""
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = small(name).eval()
    tracer = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    last = get_graph_node_names(model, tracer_kwargs=tracer)[1][-1]
    extractor = create_feature_extractor(model, return_nodes=[last], tracer_kwargs=tracer)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(extractor(x)[last], want, rtol=0, atol=0)
        torch.testing.assert_close(torch.jit.script(extractor)(x)[last], want, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# `focalnet_custom` is registered with timm whatever the import order
# ---------------------------------------------------------------------------------------------------------

_ORDERS = [("focalnet", "transformers", "timm"), ("focalnet", "timm", "transformers"),
           ("transformers", "focalnet", "timm"), ("transformers", "timm", "focalnet"),
           ("timm", "focalnet", "transformers"), ("timm", "transformers", "focalnet")]
_PROGRAM = """
import importlib
for name in {order!r}:
    module = importlib.import_module(name)
    if name == "transformers":  # asks importlib.util.find_spec("timm") without importing it
        module.AutoModelForImageClassification
import timm
print(timm.models.is_model("focalnet_custom"))
"""


def test_timm_registration_holds_in_every_import_order():
    """A probe for timm (transformers asks whether it is installed) must not use up the registration."""
    pytest.importorskip("transformers")
    runs = [subprocess.Popen([sys.executable, "-c", _PROGRAM.format(order=order)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for order in _ORDERS]
    for order, run in zip(_ORDERS, runs):
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        assert out.strip().splitlines()[-1] == "True", f"import order {order}: focalnet_custom is not registered"
