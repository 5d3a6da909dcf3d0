"""bf16 and int8 deployment: agreement with float32 within stated bounds, the CPU feature check and its message,
the int8 file round trip, ONNX QDQ, `focalnet quantize` end to end on scikit-learn's digits. No timing here."""
from __future__ import annotations

import importlib.util
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from focalnet import create_model, load_model, save_model
from focalnet.cli import main
from focalnet.datasets import DIGITS_MEAN, DIGITS_STD
from focalnet.inspect import preprocessing_for
from focalnet.deploy import fused as fused_module
from focalnet.deploy.bench import build_implementation, split_variant
from focalnet.deploy.bench import implementations as bench_implementations
from focalnet.deploy.fused import NativePrecisionError, fuse_for_inference, native_bf16
from focalnet.deploy.quantize import (
    KEEP_FLOAT_GROUPS, QuantizationError, agreement, calibration_images, dataset_images, load_quantized,
    quantize_model, save_quantized,
)
from focalnet.precision import PrecisionError
from focalnet.utils import OutputExistsError

from test_speed import FLAG_VARIANTS, ConvKernels, small

needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None,
                                   reason="int8 needs torchao (pip install 'focalnet[export]')")
needs_bf16 = pytest.mark.skipif(not native_bf16(), reason="this CPU does not compute bf16 natively")

# bounds, stated once: bf16 on a small perturbed model (logit cosine per image, share of top-1 kept where the
# float32 top-2 margin is clear of the rounding); int8 on a model trained on digits (test top-1, agreement)
BF16_COSINE = 0.999
INT8_COSINE, INT8_AGREEMENT, INT8_TOP1_POINTS = 0.98, 0.95, 2.0


# ---------------------------------------------------------------------------------------------------------
# a small model trained on digits (seconds), saved as a checkpoint that carries its preprocessing
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("focalnet_tiny_srf", num_classes=10, in_chans=1, embed_dim=16, depths=[1, 1], patch_size=2,
                         focal_levels=[2, 2], focal_windows=[3, 3], drop_path_rate=0.0)
    model.preprocessing = dict(mean=list(DIGITS_MEAN), std=list(DIGITS_STD), img_size=8, crop_pct=1.0,
                               interpolation="bilinear")
    x, y = dataset_images(preprocessing_for(model), "digits", "train")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(len(x), (64,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = save_model(model.eval(), tmp_path_factory.mktemp("digits") / "digits.safetensors")
    return load_model(path).eval(), path


def _top1(fn, x, y) -> float:
    with torch.no_grad():
        return 100.0 * float((fn(x).argmax(1) == y).float().mean())


# ---------------------------------------------------------------------------------------------------------
# bf16
# ---------------------------------------------------------------------------------------------------------
@needs_bf16
@pytest.mark.parametrize("name", FLAG_VARIANTS)
def test_bf16_fused_agrees_with_float32(name):
    model = small(name)
    low = fuse_for_inference(model, dtype=torch.bfloat16)
    x = torch.randn(6, 3, 64, 64)
    with torch.no_grad():
        ref, out = model(x), low(x)
    assert out.dtype == torch.float32  # computed in bf16, returned in the caller's dtype
    assert F.cosine_similarity(out, ref, dim=1).min() > BF16_COSINE
    err = (out - ref).abs().max()
    top2 = ref.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * err  # a flip inside the rounding error is no disagreement
    assert torch.equal(out.argmax(1)[clear], ref.argmax(1)[clear])


@needs_bf16
def test_bf16_runs_onednn_kernels_on_bf16_weights():
    model = small("focalnet_tiny_srf")
    low = fuse_for_inference(model, dtype="bf16")  # the project's precision name
    blocks = [b for b in low.modules() if isinstance(b, fused_module.FusedBlock)]
    assert blocks and all(b.proj_w.dtype == torch.bfloat16 for b in blocks)
    assert all(p.dtype == torch.bfloat16 for p in low.parameters())
    with torch.no_grad(), ConvKernels() as seen:
        low(torch.randn(2, 3, 64, 64))
    assert seen.onednn > 0 and seen.packed["packed"] == seen.onednn  # every oneDNN call used a packed weight
    assert seen.counts["aten conv"] == sum(1 for m in model.modules() if type(m).__name__ == "PatchEmbed")


def test_float32_stays_the_default_and_exact():
    model = small("focalnet_tiny_srf")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = fuse_for_inference(model)(x), fuse_for_inference(model, dtype=torch.float32)(x)
    assert fuse_for_inference(model).dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bf16_refused_where_the_cpu_would_emulate_it(monkeypatch):
    monkeypatch.setattr(fused_module, "native_bf16", lambda: False)
    with pytest.raises(NativePrecisionError, match="does not compute bf16 natively.*dtype=torch.float32"):
        fuse_for_inference(small("focalnet_tiny_srf"), dtype=torch.bfloat16)
    with pytest.raises(NativePrecisionError, match="float32 or bf16"):
        fuse_for_inference(small("focalnet_tiny_srf"), dtype="fp16")
    with pytest.raises(PrecisionError):
        fuse_for_inference(small("focalnet_tiny_srf"), dtype="int4")
    # the benchmark skips the row with the same reason instead of timing a slow path (a small model stands in)
    monkeypatch.setattr(bench_implementations, "_ours", lambda **kw: (small("focalnet_tiny_srf"), None))
    with pytest.raises(ValueError, match="natively"):
        build_implementation("ours-fused-bf16", variant="focalnet_tiny_srf", img_size=32, num_classes=10)


@pytest.mark.parametrize("flags, native", [({"_is_avx512_bf16_supported": True}, True),
                                           ({"_is_amx_tile_supported": True}, True), ({}, False)])
def test_native_bf16_probe_reads_the_cpu_flags(monkeypatch, flags, native):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda v=flags.get(name, False): v, raising=False)
    assert native_bf16() is native


# ---------------------------------------------------------------------------------------------------------
# int8
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def int8_digits(digits_model):
    model, _ = digits_model
    x, _ = dataset_images(preprocessing_for(model), "digits", "train")
    return quantize_model(model, x[:256].split(64), keep_float=(), source="digits")  # every convolution in int8


@needs_torchao
def test_int8_keeps_top1_on_digits(digits_model, int8_digits):
    model, _ = digits_model
    x, y = dataset_images(preprocessing_for(model), "digits", "test")
    ref, low = _top1(model, x, y), _top1(int8_digits, x, y)
    assert ref > 80  # the model learned something, so the comparison means something
    assert abs(low - ref) <= INT8_TOP1_POINTS
    a = agreement(model, int8_digits, x)
    assert a["top1_agreement"] >= INT8_AGREEMENT and a["cosine_min"] >= INT8_COSINE


def _quantized_ops(q) -> Counter:
    """The operators of the int8 graph that take int8 weights (a per-channel dequantize feeds each)."""
    out: Counter = Counter()
    for node in q.module.graph.nodes:
        if node.op == "call_function" and str(node.target).startswith(("aten.conv2d", "aten.linear")):
            w = node.args[1]
            out["int8" if "dequantize_per_channel" in str(getattr(w, "target", "")) else "float"] += 1
    return out


@needs_torchao
def test_int8_quantizes_every_conv_unless_kept_float(digits_model, int8_digits):
    model, _ = digits_model
    everything = _quantized_ops(int8_digits)
    assert everything["float"] == 0 and everything["int8"] > 0
    x, _ = dataset_images(preprocessing_for(model), "digits", "train")
    kept = _quantized_ops(quantize_model(model, x[:64], keep_float=("depthwise", "head")))
    depthwise = sum(b.modulation.focal_level for b in model.modules() if type(b).__name__ == "FocalNetBlock")
    assert kept == Counter({"float": depthwise + 1, "int8": everything["int8"] - depthwise - 1})
    with pytest.raises(QuantizationError, match="choose from"):
        quantize_model(model, x[:8], keep_float=("layernorm",))
    assert set(KEEP_FLOAT_GROUPS) >= {"stem", "head", "depthwise", "gates", "modulator"}


@needs_torchao
def test_int8_file_round_trip(digits_model, int8_digits, tmp_path):
    model, _ = digits_model
    path = save_quantized(int8_digits, tmp_path / "sub" / "m.int8.pt2")
    with pytest.raises(OutputExistsError):
        save_quantized(int8_digits, path)
    loaded = load_quantized(path)
    x, _ = dataset_images(preprocessing_for(model), "digits", "test")
    for batch in (1, 5, 64):  # any batch size
        torch.testing.assert_close(loaded(x[:batch]), int8_digits(x[:batch]), rtol=0, atol=0)
    assert loaded.info == int8_digits.info and loaded.info["calibration"] == {"source": "digits", "images": 256}
    assert loaded.eval() is loaded and not loaded.training  # what bench and every pipeline call first
    with pytest.raises(QuantizationError, match="inference only"):
        loaded.train()
    with pytest.raises(QuantizationError, match=r"\(B, 1, 8, 8\)"):
        loaded(torch.randn(1, 1, 16, 16))
    (tmp_path / "junk.pt2").write_bytes(b"not a program")
    with pytest.raises(QuantizationError, match="not a torch.export program"):
        load_quantized(tmp_path / "junk.pt2")
    torch.export.save(torch.export.export(model, (x[:2],)), tmp_path / "plain.pt2")
    with pytest.raises(QuantizationError, match="not an int8 FocalNet"):
        load_quantized(tmp_path / "plain.pt2")


@needs_torchao
def test_int8_refuses_what_it_cannot_quantize(digits_model, monkeypatch):
    model, _ = digits_model
    with pytest.raises(QuantizationError, match="no calibration images"):
        quantize_model(model, [])
    with pytest.raises(QuantizationError, match=r"\(N, 1, H, W\)"):
        quantize_model(model, torch.randn(4, 3, 8, 8))
    monkeypatch.setattr(fused_module, "native_bf16", lambda: True)  # built, never run
    with pytest.raises(QuantizationError, match="float32"):
        quantize_model(fuse_for_inference(small("focalnet_tiny_srf"), dtype=torch.bfloat16), torch.randn(2, 3, 32, 32))
    assert split_variant("ours-int8") == ("ours-int8", False)


@needs_torchao
def test_bench_int8_row_is_the_quantized_model_compiled(monkeypatch):
    monkeypatch.setattr(bench_implementations, "_ours", lambda **kw: (small("focalnet_tiny_srf"), None))
    module, fn = build_implementation("ours-int8", variant="focalnet_tiny_srf", img_size=32, num_classes=7)
    assert module.img_size == (32, 32) and module.info["calibration"]["images"] == 32
    assert callable(fn) and fn is not module  # the compiled callable (compiles on its first call)


@pytest.mark.slow
@needs_torchao
def test_int8_compiled_runs_int8_kernels(int8_digits, digits_model):
    from torch._dynamo.utils import counters

    model, _ = digits_model
    x, _ = dataset_images(preprocessing_for(model), "digits", "test")
    counters.clear()
    with torch.no_grad():
        out = int8_digits.compile()(x[:16])
    assert counters["inductor"]["qconv_weight_prepack_matcher_count"] > 0
    assert (out.argmax(1) == int8_digits(x[:16]).argmax(1)).float().mean() >= INT8_AGREEMENT


# ---------------------------------------------------------------------------------------------------------
# the CLI, end to end
# ---------------------------------------------------------------------------------------------------------
def _digits_folder(root, n: int = 96):
    from PIL import Image

    from focalnet.datasets import load_digits

    images, labels = load_digits()["train"]
    for i in range(n):
        folder = root / str(int(labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i, 0].numpy()).save(folder / f"{i}.png")
    return root


@needs_torchao
def test_cli_quantize_end_to_end(digits_model, tmp_path, capsys):
    """A folder of PNG digits calibrates; the program and its ONNX (QDQ) export both agree with float32."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, ckpt = digits_model
    out, onnx_out = tmp_path / "m.int8.pt2", tmp_path / "m.int8.onnx"
    args = ["quantize", "--checkpoint", str(ckpt), "--calibrate", str(_digits_folder(tmp_path / "images")),
            "--output", str(out), "--num-images", "48"]
    assert main(args + ["--onnx", str(onnx_out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "calibrated on 48 images" in printed and "checked on 48 other images" in printed
    q = load_quantized(out)
    x, _ = dataset_images(preprocessing_for(model), "digits", "test")
    assert agreement(model, q, x)["top1_agreement"] >= INT8_AGREEMENT
    ops = Counter(n.op_type for n in onnx.load(str(onnx_out)).graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] >= ops["QuantizeLinear"]
    session = ort.InferenceSession(str(onnx_out), providers=["CPUExecutionProvider"])
    # onnxruntime fuses each QDQ pattern into its own int8 kernel, which rounds its own way: int8 bounds
    ort_run = lambda t: torch.from_numpy(session.run(None, {"image": t.numpy()})[0])  # noqa: E731
    a = agreement(q, ort_run, x, batch_size=37)  # batch sizes it was not exported at
    assert a["top1_agreement"] >= INT8_AGREEMENT and a["cosine_min"] >= INT8_COSINE
    assert main(args) == 2  # exists: refused before any work, in one line
    assert "--force" in capsys.readouterr().err


def test_calibration_images_from_a_data_set_or_a_folder(digits_model, tmp_path):
    model, _ = digits_model
    named = calibration_images(preprocessing_for(model), "digits", num_images=20, seed=1)
    held = calibration_images(preprocessing_for(model), "digits", num_images=20, seed=1, skip=20)
    assert named.shape == held.shape == (20, 1, 8, 8)
    assert not any(torch.equal(a, b) for a in named for b in held)  # the held-out images calibrated nothing
    folder = calibration_images(preprocessing_for(model), _digits_folder(tmp_path / "png", n=12), num_images=50)
    assert folder.shape == (12, 1, 8, 8)
    # a PNG of a digit and the same digit from the data set are one input
    x, _ = dataset_images(preprocessing_for(model), "digits", "train")
    distance = (x[:12, None] - folder[None]).abs().flatten(2).amax(2)  # (data set image, folder image)
    assert (distance.min(0).values < 1e-5).all()
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(QuantizationError, match="no image files"):
        calibration_images(preprocessing_for(model), tmp_path / "empty", num_images=5)


@needs_torchao
def test_cli_quantize_errors_are_one_line(digits_model, tmp_path, capsys):
    _, ckpt = digits_model
    code = main(["quantize", "--checkpoint", str(ckpt), "--calibrate", str(tmp_path / "nowhere"), "--output",
                 str(tmp_path / "m.pt2")])
    err = capsys.readouterr().err
    assert code == 2 and "neither a folder of images nor a built-in data set" in err and "Traceback" not in err
    code = main(["quantize", "--checkpoint", str(ckpt), "--calibrate", "digits", "--output", str(tmp_path / "m.pt2"),
                 "--keep-float", "stem,bogus"])
    assert code == 2 and "bogus" in capsys.readouterr().err
