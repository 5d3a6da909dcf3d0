"""The speed work keeps the function: fused inference, in-place gated aggregation, selective recomputation, the
observation contract of the default forward, and the benchmark's plumbing (no timing is asserted here)."""
from __future__ import annotations

import json
import platform
from collections import Counter

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from focalnet.deploy import fused as fused_module
from focalnet.deploy.fused import FusedFocalNet, fuse_for_inference, is_fused
from focalnet.layers import FocalModulation, PatchEmbed
from focalnet.models import FocalNetBlock
from focalnet.registry import build_model

from conftest import perturb_, small_overrides

# every flag: pre-norm SRF/LRF, post-norm + layer scale + conv embed + window 5, normalize_modulator,
# post-LN in modulation, isotropic post-norm
FLAG_VARIANTS = ["focalnet_tiny_srf", "focalnet_tiny_lrf", "focalnet_large_fl3", "focalnet_large_fl4",
                 "focalnet_huge_fl3", "focalnet_base_iso"]


def small(name: str, **kw) -> torch.nn.Module:
    model = build_model(name, **{**small_overrides(name), "num_classes": 7, **kw})
    perturb_(model)
    with torch.no_grad():  # trained-like magnitudes, so that a wrongly folded constant shows
        for p in model.parameters():
            if p.ndim > 1:
                p.mul_(3.0)
    return model.eval()


class ConvKernels(TorchDispatchMode):
    """Counts the convolution kernels that run, by name: oneDNN's fused ones with their post-op
    ("onednn conv+gelu", "onednn conv+none", "onednn conv+add in place") and ATen's plain one ("aten conv")."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()
        self.packed: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name == "mkldnn._convolution_pointwise.default":
            self.counts[f"onednn conv+{args[7]}"] += 1
        elif name == "mkldnn._convolution_pointwise_.binary":
            self.counts[f"onednn conv+{args[8]} in place"] += 1
        if name.startswith("mkldnn._convolution_pointwise"):  # the weight: packed once, or reordered per call
            weight = args[2] if name.endswith(".binary") else args[1]
            self.packed["packed" if weight.layout == torch._mkldnn else "plain"] += 1
        elif name.startswith("mkldnn."):
            self.counts[name] += 1
        elif name == "aten.convolution.default":
            self.counts["aten conv"] += 1
        return func(*args, **(kwargs or {}))

    @property
    def onednn(self) -> int:
        return sum(n for k, n in self.counts.items() if not k.startswith("aten"))


def _blocks(model: nn.Module) -> list[FocalNetBlock]:
    return [m for m in model.modules() if isinstance(m, FocalNetBlock)]


def _embeddings(model: nn.Module) -> int:
    """The stem and the downsampling layers: the model's own modules, one plain convolution each."""
    return sum(isinstance(m, PatchEmbed) for m in model.modules())


@pytest.mark.parametrize("name", FLAG_VARIANTS)
def test_fused_model_computes_the_same_function(name):
    model = small(name)
    fused = fuse_for_inference(model, tile_rows=300)  # several tiles with a remainder at 3 x 64 x 80
    assert is_fused(fused) and not is_fused(model)
    x = torch.randn(3, 3, 64, 80)
    with torch.no_grad():
        ref = model(x)
        with ConvKernels() as seen:
            fast = fused(x)  # oneDNN kernels, tiled, in place
        feats = fused.forward_features(x)
    # the comparison below is of the oneDNN path wherever this torch has it, and says so where it has not
    assert (seen.onednn > 0) == fused_module.ONEDNN_FUSED_KERNELS, seen.counts
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(feats, model.forward_features(x), rtol=0, atol=1e-5)
    torch.testing.assert_close(fused.forward_head(feats, pre_logits=True), model.forward_head(feats, pre_logits=True))
    # the plain path (autograd): same values, and gradients reach the input
    xg = x.clone().requires_grad_(True)
    out = fused(xg)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    out.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


@pytest.mark.parametrize("size", [(1, 1), (7, 13), (33, 31)])
def test_fused_any_input_size_and_no_tiling(size):
    model = small("focalnet_tiny_srf")
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = model(x)
        for tile_rows in (None, 1, 10**9):
            torch.testing.assert_close(fuse_for_inference(model, tile_rows=tile_rows)(x), ref, rtol=0, atol=1e-5)


needs_prepack = pytest.mark.skipif(
    not fused_module.ONEDNN_PREPACK, reason="this torch build cannot reorder oneDNN weights ahead of time "
    "(torch.ops.mkldnn._reorder_convolution_weight): the fused model reorders on each call, as plain PyTorch"
)


@needs_prepack
@pytest.mark.parametrize("name", ["focalnet_tiny_srf", "focalnet_large_fl4", "focalnet_base_iso"])
def test_prepacked_weights_run_every_convolution_and_change_nothing(name):
    """Every oneDNN convolution of the fused blocks gets its weight packed once at fuse time, at the model's own
    input size and at any other; the results equal the per-call reorder's."""
    model = small(name)
    packed, unpacked = fuse_for_inference(model), fuse_for_inference(model, prepack=False)
    for size in [(1, 3, 224, 224), (3, 3, 64, 80), (2, 3, 37, 53)]:
        x = torch.randn(*size)
        with torch.no_grad(), ConvKernels() as seen:
            out = packed(x)
        with torch.no_grad(), ConvKernels() as plain:
            ref = unpacked(x)
        assert seen.packed["plain"] == 0 and seen.packed["packed"] == seen.onednn > 0, seen.packed
        assert plain.packed["packed"] == 0
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


@needs_prepack
def test_packed_weights_are_not_used_once_the_weights_change():
    """A packed copy is derived from a buffer at fuse time; after load_state_dict (or any in-place edit) the
    fused model computes with the new weights, never the stale copy."""
    a, b = small("focalnet_tiny_srf"), small("focalnet_tiny_srf")
    perturb_(b, seed=1)
    fused_a, fused_b = fuse_for_inference(a), fuse_for_inference(b)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = fused_b(x)
        fused_a.load_state_dict(fused_b.state_dict())
        with ConvKernels() as seen:
            out = fused_a(x)
    assert seen.packed["packed"] == 0 and seen.packed["plain"] > 0  # every copy is stale now
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    for block in fused_a.modules():
        if isinstance(block, fused_module.FusedBlock):
            block.pack(block.pack_hint)  # packing again makes them current
    with torch.no_grad(), ConvKernels() as seen:
        torch.testing.assert_close(fused_a(x), expected, rtol=0, atol=1e-6)
    assert seen.packed["plain"] == 0


@needs_prepack
def test_fused_model_with_packed_weights_copies_and_pickles(tmp_path):
    import copy

    fused = fuse_for_inference(small("focalnet_tiny_lrf"))
    x = torch.randn(1, 3, 48, 48)
    torch.save(fused, tmp_path / "fused.pt")
    for clone in (copy.deepcopy(fused), torch.load(tmp_path / "fused.pt", weights_only=False)):
        with torch.no_grad(), ConvKernels() as seen:
            torch.testing.assert_close(clone(x), fused(x), rtol=0, atol=0)
        assert seen.packed["plain"] == 0 and seen.packed["packed"] > 0


def test_fusing_leaves_the_model_and_the_input_untouched():
    model = small("focalnet_large_fl4")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_for_inference(model)
    x = torch.randn(2, 3, 64, 64)
    x0 = x.clone()
    with torch.no_grad():
        fused(x)
    torch.testing.assert_close(x, x0, rtol=0, atol=0)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    own = {p.data_ptr() for p in model.parameters()}
    assert not any(t.data_ptr() in own for t in fused.state_dict().values()), "the fused model shares weights"
    assert not list(fused.parameters()) or not any(p.requires_grad for p in fused.parameters())


def test_fused_model_is_inference_only_and_checks_input():
    fused = fuse_for_inference(small("focalnet_tiny_srf"))
    with pytest.raises(RuntimeError, match="inference only"):
        fused.train()
    fused.eval()  # allowed
    with pytest.raises(ValueError, match="3 input channels"):
        fused(torch.randn(1, 1, 32, 32))
    with pytest.raises(TypeError, match="FocalNet or FocalNetIsotropic"):
        fuse_for_inference(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="tile_rows"):
        fuse_for_inference(small("focalnet_tiny_srf"), tile_rows=0)


def test_fused_model_compiles_and_traces():
    torch._dynamo.reset()
    model = small("focalnet_tiny_lrf")
    fused = fuse_for_inference(model)
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        ref = model(x)
        compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), ref, rtol=0, atol=1e-5)
        traced = torch.jit.trace(fused, x)
        torch.testing.assert_close(traced(x), ref, rtol=0, atol=1e-5)


@pytest.mark.skipif(
    not fused_module.ONEDNN_FUSED_KERNELS,
    reason="this torch build has no oneDNN fused convolution kernels (torch.ops.mkldnn._convolution_pointwise), "
    "so the fused model runs its plain path: test_fused_model_takes_the_plain_path_explicitly covers that",
)
@pytest.mark.parametrize("name", ["focalnet_tiny_lrf", "focalnet_large_fl4", "focalnet_base_iso"])
def test_onednn_fused_kernels_run_where_the_docs_say(name):
    """CPU, float32, no autograd: every focal level and fc1 is one oneDNN conv with GELU in its epilogue, f is two
    convs and h one, proj and fc2 add into the residual stream inside oneDNN (pre-norm) or are plain oneDNN convs
    before the post-norm LayerNorm; only the stem and the downsampling run ATen's convolution."""
    model = small(name)
    fused = fuse_for_inference(model, tile_rows=None)  # one tile per stage: each block runs once
    expected = Counter({"aten conv": _embeddings(model)})
    for block in _blocks(model):
        expected["onednn conv+gelu"] += block.modulation.focal_level + 1
        expected["onednn conv+none"] += 5 if block.use_post_norm else 3
        expected["onednn conv+add in place"] += 0 if block.use_post_norm else 2
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), ConvKernels() as seen:
        out = fused(x)
    assert seen.counts == +expected
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("why", ["no oneDNN kernels", "autograd", "bf16 autocast"])
def test_fused_model_takes_the_plain_path_explicitly(monkeypatch, why):
    """Where the oneDNN kernels cannot run, none is called and every block runs ATen's convolutions
    (ctx, query + gates, L focal levels, h, proj, fc1, fc2); the function stays the same."""
    model = small("focalnet_large_fl3")
    fused = fuse_for_inference(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    if why == "no oneDNN kernels":
        monkeypatch.setattr(fused_module, "ONEDNN_FUSED_KERNELS", False)
    with torch.set_grad_enabled(why == "autograd"), torch.autocast("cpu", torch.bfloat16, enabled=why == "bf16 autocast"):
        with ConvKernels() as seen:
            out = fused(x.requires_grad_(why == "autograd"))
    convs = _embeddings(model) + sum(b.modulation.focal_level + 6 for b in _blocks(model))
    assert seen.counts == Counter({"aten conv": convs})
    if why == "bf16 autocast":
        assert F.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0) > 0.99
    else:
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_fused_bf16_autocast_runs_the_plain_path():
    model = small("focalnet_tiny_srf")
    fused = fuse_for_inference(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fused(x)
    assert F.cosine_similarity(low.float().flatten(), ref.flatten(), dim=0) > 0.99


# ---------------------------------------------------------------------------------------------------------
# the default forward: in-place aggregation, observation contract
# ---------------------------------------------------------------------------------------------------------
def test_in_place_gated_aggregation_has_correct_gradients():
    torch.manual_seed(0)
    mod = FocalModulation(4, focal_level=2, focal_window=3, normalize_modulator=True).double()
    x = torch.randn(2, 4, 5, 6, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(mod, (x,), eps=1e-6, atol=1e-5)


def _reference_modulation(mod: FocalModulation, f_out: torch.Tensor) -> dict:
    """The paper's equations computed from f's output, out of place, one level at a time."""
    C, L = mod.dim, mod.focal_level
    q, ctx, gates = f_out[:, :C], f_out[:, C : 2 * C], f_out[:, 2 * C :]
    levels, agg = [], 0
    for level, layer in enumerate(mod.focal_layers):
        ctx = F.gelu(F.conv2d(ctx, layer[0].weight, padding=layer[0].padding, groups=C))
        levels.append(ctx)
        agg = agg + ctx * gates[:, level : level + 1]
    glob = F.gelu(ctx.mean((2, 3), keepdim=True))
    agg = agg + glob * gates[:, L:]
    if mod.normalize_modulator:
        agg = agg / (L + 1)
    return dict(levels=levels, glob=glob, modulator=mod.h(agg))


@pytest.mark.parametrize("name", ["focalnet_tiny_lrf", "focalnet_large_fl4"])
def test_hooks_of_the_observation_contract_see_the_papers_quantities(name):
    model = small(name)
    block = model.stages[1].blocks[0]
    mod = block.modulation
    seen: dict = {}

    def keep(key):
        def hook(module, inp, out):
            seen.setdefault(key, []).append(out.detach().clone())
        return hook

    handles = [mod.f.register_forward_hook(keep("f")), mod.global_act.register_forward_hook(keep("glob")),
               mod.h.register_forward_hook(keep("h"))]
    handles += [layer.register_forward_hook(keep(f"z{i}")) for i, layer in enumerate(mod.focal_layers)]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    assert all(len(v) == 1 for v in seen.values()), {k: len(v) for k, v in seen.items()}
    C, L = mod.dim, mod.focal_level
    assert seen["f"][0].shape[1] == 2 * C + L + 1 and seen["glob"][0].shape[-2:] == (1, 1)
    ref = _reference_modulation(mod, seen["f"][0])
    for i in range(L):
        torch.testing.assert_close(seen[f"z{i}"][0], ref["levels"][i], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen["glob"][0], ref["glob"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(seen["h"][0], ref["modulator"], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# selective activation recompute
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["focalnet_tiny_srf", "focalnet_huge_fl4", "focalnet_base_iso"])
def test_activation_recompute_changes_nothing(name):
    model = small(name, drop_path_rate=0.2).train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    y1 = model(x)
    y1.square().mean().backward()
    g1 = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_activation_recompute(True)
    torch.manual_seed(1)  # same drop-path draws
    y2 = model(x)
    y2.square().mean().backward()
    torch.testing.assert_close(y2, y1, rtol=0, atol=0)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, g1[n], rtol=1e-5, atol=1e-6, msg=n)
    with torch.no_grad():  # no effect outside autograd
        torch.testing.assert_close(model.eval()(x), model.set_activation_recompute(False) or model(x))


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward after one forward."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    return sum(storages.values())


def test_activation_recompute_keeps_far_fewer_activations():
    model = build_model("focalnet_tiny_srf", embed_dim=32, depths=(1, 1, 2, 1), num_classes=7).train()
    x = torch.randn(2, 3, 96, 96)
    full = _saved_bytes(model, x)
    model.set_activation_recompute(True)
    selective = _saved_bytes(model, x)
    assert selective < 0.7 * full, (selective, full)


# ---------------------------------------------------------------------------------------------------------
# the benchmark's plumbing (figures are produced by `focalnet bench` and benchmarks/, never asserted)
# ---------------------------------------------------------------------------------------------------------
def test_bench_runs_every_focalnet_implementation_and_reports_ratios(monkeypatch):
    from focalnet.deploy import bench

    monkeypatch.setattr(bench.machine, "PEAK_SIDE", 64)  # the CPU peak of %peak: a tiny product (tests/test_bench.py)

    work = bench.Workload("focalnet_tiny_srf", batch_size=1, img_size=32)
    res = bench.run_inference(["ours", "ours-fused", "timm"], work, warmup=1, rounds=2)
    assert [r.impl for r in res] == ["ours", "ours-fused", "timm"]
    assert all(len(r.times_s) == 2 and r.median > 0 for r in res)
    assert res[0].flops_per_img and res[1].flops_per_img == pytest.approx(res[0].flops_per_img)
    table = bench.format_table(res)
    assert "x timm" in table and "1.00" in table
    skipped = []
    assert bench.run_inference(["timm"], bench.Workload("focalnet_tiny_iso", img_size=32, batch_size=1), rounds=1,
                               log=skipped.append) == []
    assert "timm has no focalnet_tiny_iso" in skipped[0]


def test_bench_cli_writes_json(tmp_path, capsys, monkeypatch):
    from focalnet.cli import main
    from focalnet.deploy.bench import machine

    monkeypatch.setattr(machine, "PEAK_SIDE", 64)  # the CPU peaks of %peak: tiny products (tests/test_bench.py)

    out = tmp_path / "bench.json"
    rc = main(["bench", "--model", "focalnet_tiny_srf", "--img-size", "32", "--batch-size", "2", "--rounds", "1",
               "--warmup", "0", "--impl", "ours", "--impl", "timm", "--mode", "both", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert {r["mode"] for r in data["results"]} == {"infer", "train"}
    assert "allocator" in data["machine"] and "threads" in data["machine"]
    assert "x timm" in capsys.readouterr().out
    assert main(["bench", "--impl", "nope"]) == 2
    assert main(["bench", "--dtype", "float16"]) == 2  # fp16 autocast is for CUDA


def test_peak_memory_is_measured_in_a_fresh_process():
    from focalnet.deploy import bench

    peak = bench.peak_training_memory("ours", bench.Workload("focalnet_tiny_iso", batch_size=2, img_size=64), steps=1)
    assert peak > 0


@pytest.mark.parametrize("hw", [(2, 2), (4, 4), (4, 7), (14, 14)])
@pytest.mark.parametrize("k", [3, 5, 7])
def test_depthwise_conv_and_gelu_equal_their_torch_counterparts(hw, k):
    """DepthwiseConv2d pre-pads small maps while recording gradients and GELU runs on the NHWC view of
    channels-last maps (both for CPU speed): values and gradients must equal nn.Conv2d / nn.GELU."""
    from focalnet.layers import GELU, DepthwiseConv2d

    torch.manual_seed(0)
    ours = nn.Sequential(DepthwiseConv2d(6, k), GELU())
    ref = nn.Sequential(nn.Conv2d(6, 6, k, padding=k // 2, groups=6, bias=False), nn.GELU())
    ref.load_state_dict(ours.state_dict())
    for fmt in (torch.channels_last, torch.contiguous_format):
        x = torch.randn(3, 6, *hw).contiguous(memory_format=fmt)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), ref(xb)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-6)
        assert ya.is_contiguous(memory_format=fmt)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours[0].weight.grad, ref[0].weight.grad, rtol=1e-5, atol=1e-5)
        ours.zero_grad(), ref.zero_grad()


# ---------------------------------------------------------------------------------------------------------
# the default forward under torch.compile: the plain formulation, no graph break, same function
# ---------------------------------------------------------------------------------------------------------
def test_plain_formulation_for_the_compiler_computes_the_same_function(monkeypatch):
    """What dynamo traces (focalnet.layers._compiling() true: F.gelu on the channels-last map, the gated sum out of
    place) equals the eager formulation, in values and gradients (float32 within 1e-5)."""
    import focalnet.layers as layers

    model = small("focalnet_large_fl3").train()  # post-norm, layer scale, normalize_modulator off; LRF levels
    x = torch.randn(2, 3, 48, 40)
    outs, grads = [], []
    for plain in (False, True):
        monkeypatch.setattr(layers, "_compiling", lambda plain=plain: plain)
        model.zero_grad()
        xg = x.clone().requires_grad_(True)
        torch.manual_seed(0)  # same stochastic-depth draws
        y = model(xg)
        y.square().mean().backward()
        outs.append(y.detach())
        grads.append([xg.grad] + [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-5)
    for a, b in zip(grads[0], grads[1]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    mod = FocalModulation(4, focal_level=2, focal_window=3, normalize_modulator=True).double()
    xd = torch.randn(2, 4, 5, 6, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(mod, (xd,), eps=1e-6, atol=1e-5)  # plain path (patched on above)


@pytest.mark.parametrize("recompute", [False, True])
def test_default_model_compiles_without_graph_break_for_training(recompute):
    """fullgraph=True in training mode (forward and backward through AOT autograd), with and without selective
    activation recompute: the graph has no break, and values and gradients equal eager within 1e-5."""
    torch._dynamo.reset()
    model = small("focalnet_tiny_srf", drop_path_rate=0.0).train()
    model.set_activation_recompute(recompute)
    x = torch.randn(2, 3, 48, 40)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (model, compiled):
        model.zero_grad()
        torch.manual_seed(0)
        y = fn(x)
        y.square().mean().backward()
        results.append((y.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_inductor_fuses_every_gelu_into_its_convolution():
    """With freezing (what `focalnet bench` compiles inference with), inductor turns each focal level and fc1 into
    one oneDNN convolution with GELU in its epilogue and each pre-norm residual add after proj / fc2 into a conv +
    add: the plain formulation is what its pattern matcher sees. Output within 1e-5 of eager."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    model = small("focalnet_tiny_srf")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch._inductor.config.patch(freezing=True):
        ref = model(x)
        out, (code, *_) = run_and_get_code(torch.compile(model, fullgraph=True), x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    if not fused_module.ONEDNN_FUSED_KERNELS:
        # every x86-64 build of torch has them (CI runs there): missing on one is a fault, not a skip
        assert platform.machine().lower() not in ("x86_64", "amd64"), "this x86-64 torch has no oneDNN fused kernels"
        pytest.skip("this torch build has no oneDNN fused convolutions: inductor keeps ATen's")
    blocks = _blocks(model)
    assert code.count("'gelu'") == sum(b.modulation.focal_level + 1 for b in blocks)
    assert code.count("_convolution_pointwise_.binary(") == 2 * len(blocks)


# ---------------------------------------------------------------------------------------------------------
# the benchmark's CPU-side logic: scheduling, machine description, formatting (no timing is asserted)
# ---------------------------------------------------------------------------------------------------------
def test_block_schedule_interleaves_blocks_of_consecutive_calls():
    from focalnet.deploy.bench import BenchError, block_schedule

    assert block_schedule(["A", "B"], rounds=7, block=3) == [("A", 3), ("B", 3), ("A", 3), ("B", 3), ("A", 1), ("B", 1)]
    assert block_schedule(["A"], rounds=2, block=5) == [("A", 2)]
    with pytest.raises(BenchError):
        block_schedule(["A"], rounds=0, block=1)


def test_time_in_blocks_runs_warmup_then_rewarmed_blocks_in_order():
    from focalnet.deploy.bench import time_in_blocks

    order = []
    calls = {k: (lambda k=k: order.append(k)) for k in "AB"}
    timed = time_in_blocks(calls, torch.device("cpu"), warmup=2, rounds=4, block=2)
    # warm-up: 2 calls each (the first timed as `first`); then per block one re-warming call + 2 timed calls
    assert "".join(order) == "AA" + "BB" + "AAA" + "BBB" + "AAA" + "BBB"
    for k in "AB":
        assert len(timed[k]["times"]) == 4 and len(timed[k]["cold"]) == 2 and timed[k]["first"] >= 0


def test_machine_description_names_cpu_isa_and_allocator():
    from focalnet.deploy.bench import allocator_setting, cpu_isa, machine_line, machine_state

    cpuinfo = "processor\t: 0\nmodel name\t: Intel Xeon X\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_tile\n"
    assert cpu_isa(cpuinfo) == ("Intel Xeon X", ["avx2", "avx512f", "avx512_vnni", "amx_tile"])
    assert cpu_isa("") == ("", [])
    assert allocator_setting({"PATH": "/bin"}, "") == "glibc malloc, default settings"
    env = {"MALLOC_MMAP_THRESHOLD_": "1000", "LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}
    text = allocator_setting(env, "7f00 r-xp /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n")
    assert "MALLOC_MMAP_THRESHOLD_=1000" in text and "LD_PRELOAD=" in text and "jemalloc in the process" in text
    assert "tcmalloc in the process" in allocator_setting({}, "/usr/lib/libtcmalloc_minimal.so.4")
    state = dict(machine_state(), cpu="Intel Xeon X", isa=["avx2", "avx512f"], cpu_capability="AVX512")
    line = machine_line(state)
    assert "Intel Xeon X [avx2 avx512f; no avx512_bf16" in line and "amx_bf16" in line and "allocator:" in line


def _result(impl, compiled, times, *, batch=2, first=None):
    from focalnet.deploy.bench import BenchResult

    return BenchResult(impl, "infer", batch, 224, "float32", "cpu", compiled, times_s=list(times),
                       first_call_s=first, cold_times_s=[2 * t for t in times])


def test_format_table_compares_like_with_like():
    from focalnet.deploy.bench import format_table, split_variant

    rows = [_result("timm", False, [1.0, 1.0]), _result("timm", True, [0.5, 0.5], first=30.5),
            _result("ours", False, [0.8, 0.8]), _result("ours", True, [0.25, 0.25], first=20.25)]
    table = format_table(rows, cold=True)
    lines = {line.split()[0] + (" cold" if "[cold]" in line else ""): line.split() for line in table.splitlines()}
    # ours-compiled: 8 img/s, against timm-compiled (4) and timm eager (2); compile time = first call - median
    assert lines["ours-compiled"][5:6] == ["8.00"] and lines["ours-compiled"][8:11] == ["2.00", "4.00", "20.0"]
    assert lines["ours"][8:11] == ["1.25", "1.25", "-"]
    assert lines["ours-compiled cold"][6:7] == ["4.00"] and lines["ours-compiled cold"][9] == "2.00"  # cold vs cold
    assert "[cold]: that first call" in table
    assert split_variant("convnext_t-compiled") == ("convnext_t", True) and split_variant("ours") == ("ours", False)
    with pytest.raises(ValueError, match="NAME-compiled"):
        split_variant("resnet")


def test_bench_cli_adds_compiled_variants_beside_eager_ones():
    from focalnet.cli.deploy import bench_variants

    assert bench_variants(["ours", "timm"], compile=True) == ["ours", "ours-compiled", "timm", "timm-compiled"]
    assert bench_variants(["ours", "timm-compiled"], compile=False) == ["ours", "timm-compiled"]


def test_train_compile_setting_auto_on_off():
    """`focalnet train --compile auto|on|off`: auto compiles on CUDA only (docs/speed.md, "Compiled training");
    an old boolean `compile: true/false` still reads; anything else is a one-line error naming the choices."""
    from focalnet.train import TrainConfig, TrainingError
    from focalnet.train.run import compile_training

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert [compile_training(s, cpu) for s in ("auto", "on", "off")] == [False, True, False]
    assert [compile_training(s, cuda) for s in ("auto", "on", "off")] == [True, True, False]
    assert TrainConfig().compile == "auto"
    assert TrainConfig.from_dict({"compile": True}).compile == "on"
    assert TrainConfig.from_dict({"compile": False}).compile == "off"
    with pytest.raises(TrainingError, match="auto, on, off"):
        TrainConfig.from_dict({"compile": "yes"})


def test_bench_implementations_are_one_registration_each(capsys):
    """A row kind of `focalnet bench` is one `register_implementation`: names, --compare, the compiled variant and
    the training filter follow from it; a name is never registered twice. --precision is spelled as in train."""
    from focalnet.cli import main
    from focalnet.deploy import bench
    from focalnet.deploy.bench import implementations

    assert bench.IMPLEMENTATIONS == ("ours", "ours-fused", "timm", "hf", "swin_t", "convnext_t")
    assert bench.trains("ours-compiled") and not bench.trains("ours-fused-compiled")
    assert bench.get_implementation("ours").fullgraph and not bench.get_implementation("timm").fullgraph
    with pytest.raises(bench.BenchError, match="registered already"):
        bench.register_implementation(bench.Implementation("ours", lambda **kw: None))
    with pytest.raises(bench.BenchError, match="inference only"):
        bench.build_implementation("ours-fused", variant="focalnet_tiny_srf", training=True)
    probe = bench.Implementation("probe-row", lambda **kw: (torch.nn.Identity(), torch.nn.Identity()))
    try:
        bench.register_implementation(probe)
        assert bench.split_variant("probe-row-compiled") == ("probe-row", True) and bench.trains("probe-row")
    finally:
        del implementations._REGISTRY["probe-row"]
    assert main(["bench", "--dtype", "float16"]) == 2  # the old spelling still reads: fp16 autocast is for CUDA
    err = capsys.readouterr().err
    assert "--dtype is now --precision fp16" in err and "use --precision bf16" in err
    assert main(["bench", "--precision", "fp8"]) == 2
    assert "unknown precision 'fp8'" in capsys.readouterr().err
