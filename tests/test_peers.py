"""timm and transformers load what we write, without help, and give our outputs; our models speak timm's
data-config and feature-extractor language; `focalnet verify` catches damage and flag mismatches."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

import focalnet
from focalnet.checkpoints import save_model
from focalnet.registry import build_model

from conftest import perturb_, small_overrides

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

# the main job's model: Fashion-MNIST, 28 px, 1 channel, patch 2, embed_dim 32, depths 1-2-2
MAIN_JOB = dict(embed_dim=32, depths=(1, 2, 2), focal_levels=(2, 2, 2), focal_windows=(3, 3, 3), patch_size=2,
                in_chans=1, num_classes=10)
FMNIST = dict(mean=[0.286], std=[0.353], img_size=28, crop_pct=1.0, interpolation="bilinear")
FMNIST_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def main_job_model() -> torch.nn.Module:
    return perturb_(focalnet.create_model("focalnet_tiny_srf", **MAIN_JOB)).eval()


def test_main_job_model_in_transformers_and_timm(tmp_path):
    model = main_job_model()
    save_model(model, tmp_path / "hf", fmt="hf", class_names=FMNIST_NAMES, preprocessing=FMNIST)
    hf = transformers.AutoModelForImageClassification.from_pretrained(str(tmp_path / "hf")).eval()
    x = torch.randn(3, 1, 28, 28)
    rgb = torch.randn(3, 3, 28, 28)
    luma = sum(c * rgb[:, i : i + 1] for i, c in enumerate((0.299, 0.587, 0.114)))
    with torch.no_grad():
        # transformers feeds RGB: the stem holds the grayscale conversion, so (g, g, g) gives the model's
        # output on g, and an RGB input its output on the luma
        assert (hf(pixel_values=x.expand(-1, 3, -1, -1)).logits - model(x)).abs().max() < 1e-5
        assert (hf(pixel_values=rgb).logits - model(luma)).abs().max() < 1e-5
        back = focalnet.load_model(tmp_path / "hf").eval()
        assert back.in_chans == 1 and torch.equal(back(x), model(x))  # folded back bit for bit
    assert focalnet.verify(tmp_path / "hf").ok
    assert hf.config.id2label[9] == "Ankle boot"
    proc = transformers.AutoImageProcessor.from_pretrained(str(tmp_path / "hf"))
    assert list(proc.image_mean) == FMNIST["mean"] * 3 and proc.crop_size["height"] == 28
    # timm's own FocalNet (a stride-4 stem, entry points that fix depths/embed_dim) cannot build this model:
    # the folder names 'focalnet_custom', which `import focalnet` registers with timm, with our arguments
    save_model(model, tmp_path / "timm", fmt="timm", preprocessing=FMNIST)
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert config["architecture"] == "focalnet_custom" and config["model_args"]["patch_size"] == 2
    assert config["pretrained_cfg"]["input_size"] == [1, 28, 28] and config["pretrained_cfg"]["mean"] == [0.286]
    tm = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    with torch.no_grad():
        assert (tm(x) - model(x)).abs().max() < 1e-5
        assert torch.equal(focalnet.load_model(tmp_path / "timm").eval()(x), model(x))
    assert timm.data.resolve_data_config(model=tm)["input_size"] == (1, 28, 28)
    # arguments given to timm beside the folder's override them, as for timm's own models
    assert timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True, num_classes=3).num_classes == 3


def test_timm_without_focalnet_refuses_a_custom_folder_by_name(tmp_path):
    save_model(main_job_model(), tmp_path / "timm", fmt="timm", preprocessing=FMNIST)
    code = f"import timm; timm.create_model('local-dir:{tmp_path / 'timm'}', pretrained=True)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0 and "Unknown model (focalnet_custom)" in out.stderr  # never timm's 27.7 M model


@pytest.mark.parametrize("order", ["import focalnet, timm", "import timm, focalnet"])
def test_focalnet_custom_is_registered_whichever_is_imported_first(order):
    """`import focalnet` does not import timm (1.5 s); the name is registered when timm is loaded, before or after."""
    code = f"import sys; {order}; print(timm.models.is_model('focalnet_custom'))"
    lazy = "import sys, focalnet; print('timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", f"{code}"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    assert subprocess.run([sys.executable, "-c", lazy], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_timm_features_only_on_a_custom_folder(tmp_path):
    model = main_job_model()
    save_model(model, tmp_path / "timm", fmt="timm", preprocessing=FMNIST)
    feats = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True, features_only=True,
                              out_indices=(1, 2)).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        maps = feats(x)
        ours = focalnet.create_model("focalnet_tiny_srf", pretrained=tmp_path / "timm", **MAIN_JOB, features_only=True,
                                     out_indices=(1, 2)).eval()(x)
    assert [m.shape[1] for m in maps] == feats.feature_info.channels() == [64, 128]
    assert all(torch.equal(a, b) for a, b in zip(maps, ours))


def test_timm_builds_a_resized_model_it_can_and_reads_its_transform(tmp_path):
    # classes, channels and normalize_modulator are free in timm's entry points: timm builds this one
    model = perturb_(focalnet.create_model("focalnet_tiny_lrf", num_classes=10, in_chans=1, normalize_modulator=True)).eval()
    save_model(model, tmp_path / "timm", fmt="timm", class_names=FMNIST_NAMES, preprocessing=FMNIST)
    tm = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert (tm(x) - model(x)).abs().max() < 1e-5
    ours = focalnet.load_model(tmp_path / "timm")
    want = timm.data.resolve_data_config(model=tm)
    assert want["input_size"] == (1, 28, 28) and want["interpolation"] == "bilinear"
    as_tuples = lambda cfg: {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}  # noqa: E731
    assert as_tuples(timm.data.resolve_data_config(model=ours)) == as_tuples(want)
    assert tm.pretrained_cfg["label_names"] == FMNIST_NAMES


def test_resolve_data_config_on_our_models():
    cfg = timm.data.resolve_data_config(model=focalnet.create_model("focalnet_large_fl3", **small_overrides("focalnet_large_fl3")))
    assert cfg["input_size"] == (3, 384, 384) and cfg["crop_pct"] == 1.0  # the 22K variants are 384 px, no crop
    model = main_job_model()
    model.preprocessing = dict(FMNIST)
    cfg = timm.data.resolve_data_config(model=model)
    assert cfg["input_size"] == (1, 28, 28) and cfg["mean"] == (0.286,)
    t = timm.data.create_transform(**cfg)
    from PIL import Image

    assert t(Image.new("L", (40, 40))).shape == (1, 28, 28)


def test_features_only_has_timm_semantics():
    f = focalnet.create_model("focalnet_tiny_srf", embed_dim=16, depths=(1, 1, 1, 1), features_only=True, out_indices=(1, 3))
    maps = f(torch.randn(1, 3, 64, 64))
    assert [m.shape for m in maps] == [(1, 32, 8, 8), (1, 128, 2, 2)]
    assert f.feature_info.channels() == [32, 128] and f.feature_info.reduction() == [8, 32]


def _sharp_1k_model() -> torch.nn.Module:
    model = perturb_(build_model("focalnet_tiny_srf", num_classes=1000, **small_overrides("focalnet_tiny_srf")), scale=0.5)
    with torch.no_grad():  # spread the logits, so that the top-5 is not decided by rounding
        model.head.fc.weight.mul_(20)
    return model.eval()


def test_pipeline_labels_a_real_photo_like_our_predict(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from focalnet.inspect.predict import predict

    model = _sharp_1k_model()
    save_model(model, tmp_path / "hf", fmt="hf")  # no names given: a 1000-class head gets ImageNet's
    photo = Image.fromarray(skimage_data.chelsea())
    pipe = transformers.pipeline("image-classification", model=str(tmp_path / "hf"))
    theirs = [r["label"] for r in pipe(photo, top_k=5)]
    ours = [r["label"] for r in predict(focalnet.load_model(tmp_path / "hf"), [photo], topk=5)[0].top]
    assert theirs == ours
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["id2label"]["281"] == "tabby, tabby cat"


def test_pipeline_labels_a_grayscale_model_like_our_predict(tmp_path):
    """The main job's kind of model (1 channel, 28 px): transformers' pipeline, which turns every image into
    RGB, gives our predict's top-5 on a real photo, in color and in gray."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from focalnet.inspect.predict import predict

    model = main_job_model()
    save_model(model, tmp_path / "hf", fmt="hf", class_names=FMNIST_NAMES, preprocessing=FMNIST)
    pipe = transformers.pipeline("image-classification", model=str(tmp_path / "hf"))
    ours_model = focalnet.load_model(tmp_path / "hf")
    for photo in (Image.fromarray(skimage_data.camera()), Image.fromarray(skimage_data.chelsea())):
        theirs = pipe(photo, top_k=5)
        ours = predict(ours_model, [photo], topk=5)[0].top
        assert [r["label"] for r in theirs] == [r["label"] for r in ours]
        # PIL's integer luma (ours) against the folded float luma (theirs): close, not equal
        assert max(abs(a["score"] - b["probability"]) for a, b in zip(theirs, ours)) < 2e-3


def test_timm_config_has_imagenet_labels_for_a_1k_head(tmp_path):
    model = perturb_(build_model("focalnet_tiny_srf", num_classes=1000, **small_overrides("focalnet_tiny_srf")))
    save_model(model, tmp_path / "timm", fmt="timm")
    cfg = json.loads((tmp_path / "timm" / "config.json").read_text())["pretrained_cfg"]
    assert cfg["label_names"][0] == "n01440764" and cfg["label_descriptions"][281] == "tabby, tabby cat"


# ----------------------------------------------------------------------------------------------------------
# focalnet verify
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,fname", [("focalnet", "m.safetensors"), ("official", "m.pth"), ("timm", "t"), ("hf", "h")])
def test_verify_agrees_on_every_layout_with_one_fingerprint(fmt, fname, tmp_path):
    model = perturb_(build_model("focalnet_tiny_lrf", num_classes=5, normalize_modulator=True, **small_overrides("focalnet_tiny_lrf")))
    save_model(model, tmp_path / fname, fmt=fmt)
    v = focalnet.verify(tmp_path / fname)
    assert v.ok and v.has_record and v.fingerprint_ok and v.outputs_ok
    from focalnet.checkpoints.verify import fingerprint

    assert v.fingerprint == fingerprint(model.state_dict())  # the same weights, one fingerprint in every layout


def test_verify_catches_damage_and_a_normalize_modulator_mismatch(tmp_path):
    from safetensors.torch import load_file, save_file

    model = perturb_(build_model("focalnet_tiny_lrf", num_classes=5, normalize_modulator=True, **small_overrides("focalnet_tiny_lrf")), scale=1.0)
    save_model(model, tmp_path / "h", fmt="hf")
    # another port rewrote the config without the flag (as timm's entry for L/XL fl4 lacks it)
    cfg_path = tmp_path / "h" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "normalize_modulator": False}))
    v = focalnet.verify(tmp_path / "h")
    assert not v.ok and v.flags_ok is False and any("normalize_modulator" in d for d in v.diagnosis)
    # a record written by a library that built the flag the other way: the outputs disagree, the flag is named
    cfg["focalnet"]["arch"]["normalize_modulator"] = False
    cfg_path.write_text(json.dumps({**cfg, "normalize_modulator": False}))
    v = focalnet.verify(tmp_path / "h")
    assert v.outputs_ok is False and any("normalize_modulator=True" in d for d in v.diagnosis)
    # damaged tensors
    save_model(model, tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(tmp_path / "m.safetensors"))
    sd["head.fc.bias"] = sd["head.fc.bias"] + 1e-3
    save_file(sd, str(tmp_path / "m.safetensors"), metadata=meta)
    v = focalnet.verify(tmp_path / "m.safetensors")
    assert v.fingerprint_ok is False and not v.ok


def test_verify_cli(tmp_path, capsys):
    from focalnet.cli import main

    model = perturb_(build_model("focalnet_tiny_srf", num_classes=3, **small_overrides("focalnet_tiny_srf")))
    save_model(model, tmp_path / "m.safetensors")
    assert main(["verify", str(tmp_path / "m.safetensors")]) == 0
    assert "OK: file, flags and library agree" in capsys.readouterr().out
    torch.save({"model": {}}, tmp_path / "x.pth")  # nothing a FocalNet reader accepts: one line, exit 2
    assert main(["verify", str(tmp_path / "x.pth")]) == 2
    # a peer's file without a record: fingerprint only
    from focalnet.checkpoints.convert import from_focalnet
    from safetensors.torch import save_file

    save_file(from_focalnet(model.state_dict(), "timm", model.arch), str(tmp_path / "peer.safetensors"))
    assert main(["verify", str(tmp_path / "peer.safetensors")]) == 0
    assert "no record to check" in capsys.readouterr().out
