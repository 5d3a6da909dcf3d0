"""Checkpoints: every layout read and written, bit-exact round trips, strict and safe loading."""
from __future__ import annotations

import os
import sys
import types

import pytest
import torch

import focalnet
from focalnet.checkpoints import CheckpointError, load_into, read_checkpoint, save_model, write_checkpoint
from focalnet.utils import atomic_write
from focalnet.checkpoints.convert import ConversionError, detect_layout, from_focalnet, to_focalnet
from focalnet.registry import build_model

from conftest import perturb_, small_overrides

ALL = focalnet.list_models()
FILES = {"focalnet": "m.safetensors", "official": "m.pth", "timm": "timm_dir", "hf": "hf_dir"}


def small(name: str, num_classes: int = 7, **kw) -> torch.nn.Module:
    return perturb_(build_model(name, num_classes=num_classes, **{**small_overrides(name), **kw})).eval()


def formats_for(name: str) -> list[str]:
    return [f for f in FILES if not (f == "timm" and focalnet.get_spec(name).family == "isotropic")]


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trips_are_bit_exact(name):
    model = small(name)
    sd = model.state_dict()
    for fmt in formats_for(name):
        theirs = from_focalnet(sd, fmt, model.arch)
        assert detect_layout(theirs) == fmt
        back = to_focalnet(theirs)
        assert back.keys() == sd.keys()
        for k in sd:
            assert torch.equal(back[k], sd[k]), (fmt, k)


@pytest.mark.parametrize("name", ["focalnet_tiny_lrf", "focalnet_huge_fl3", "focalnet_base_iso"])
def test_file_round_trips_through_every_format(name, tmp_path):
    model = small(name)
    names = [f"class_{i}" for i in range(7)]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    for fmt in formats_for(name):
        path = tmp_path / FILES[fmt]
        save_model(model, path, class_names=names, fmt=fmt)
        ckpt = read_checkpoint(path)
        assert ckpt.source_format == fmt
        for k, v in model.state_dict().items():
            assert torch.equal(ckpt.state_dict[k], v), (fmt, k)
        if fmt != "official":  # the authors' layout holds no flags: a resized model needs its name
            loaded = focalnet.load_model(path).eval()
            assert loaded.arch["use_post_norm"] == model.arch["use_post_norm"]
            assert loaded.arch["normalize_modulator"] == model.arch["normalize_modulator"]
            with torch.no_grad():
                assert torch.equal(loaded(x), ref)
            assert loaded.class_names == names
        # and through create_model by name
        again = focalnet.create_model(name, pretrained=path, **small_overrides(name)).eval()
        with torch.no_grad():
            assert torch.equal(again(x), ref)


def test_timm_single_files_and_training_wrappers(tmp_path):
    model = small("focalnet_small_srf")
    for fname in ("w.safetensors", "w.pth"):
        write_checkpoint(model.state_dict(), model.arch, tmp_path / fname, fmt="timm")
        assert read_checkpoint(tmp_path / fname).source_format == "timm"
    # DDP prefixes and {'state_dict': ...} wrappers (timm's training checkpoints)
    sd = {"module." + k: v for k, v in from_focalnet(model.state_dict(), "timm", model.arch).items()}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "train.pth")
    ckpt = read_checkpoint(tmp_path / "train.pth")
    assert ckpt.source_format == "timm" and ckpt.state_dict.keys() == model.state_dict().keys()


def test_authors_training_checkpoint_with_yacs_config_loads_without_yacs(tmp_path):
    """The authors' checkpoints pickle a yacs CfgNode as 'config'. It is read as a plain dict through
    torch.load(weights_only=True), without yacs installed and without running code from the file."""
    model = small("focalnet_tiny_srf")
    fake = types.ModuleType("yacs.config")

    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    fake.CfgNode = CfgNode
    sys.modules["yacs"], sys.modules["yacs.config"] = types.ModuleType("yacs"), fake
    try:
        cfg = CfgNode(MODEL=CfgNode(TYPE="focalnet_tiny_srf"))
        official = from_focalnet(model.state_dict(), "official", model.arch)
        torch.save({"model": official, "config": cfg, "epoch": 299, "max_accuracy": 82.1}, tmp_path / "o.pth")
    finally:
        del sys.modules["yacs"], sys.modules["yacs.config"]
    ckpt = read_checkpoint(tmp_path / "o.pth")
    assert ckpt.source_format == "official" and ckpt.extra["epoch"] == 299
    assert dict(ckpt.extra["config"]) == {"MODEL": {"TYPE": "focalnet_tiny_srf"}}


def test_pickle_that_carries_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {"stem.proj.weight": torch.zeros(1)}, "x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"refused .*system.*never executes code"):
        read_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()


def test_strict_loading_names_missing_unexpected_and_misshaped():
    model = small("focalnet_tiny_srf")
    sd = dict(model.state_dict())
    del sd["stages.1.blocks.0.modulation.h.weight"]
    sd["stages.1.blocks.0.extra"] = torch.zeros(1)
    sd["norm.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as err:
        load_into(small("focalnet_tiny_srf"), sd)
    msg = str(err.value)
    assert "1 missing: stages.1.blocks.0.modulation.h.weight" in msg
    assert "1 unexpected: stages.1.blocks.0.extra" in msg
    assert "norm.weight: checkpoint (3,) vs model (128,)" in msg


def test_wrong_variant_is_a_clear_error(tmp_path):
    save_model(small("focalnet_tiny_lrf"), tmp_path / "lrf.safetensors")
    with pytest.raises(CheckpointError, match="does not fit focalnet_tiny_srf.*focalnet info"):
        focalnet.create_model("focalnet_tiny_srf", pretrained=tmp_path / "lrf.safetensors", **small_overrides("focalnet_tiny_srf"))


def test_unknown_tensor_names_are_refused():
    with pytest.raises(ConversionError, match="fit no known name: patch_embed.proj.extra"):
        to_focalnet({"patch_embed.proj.weight": torch.zeros(1), "patch_embed.proj.extra": torch.zeros(1)})
    with pytest.raises(ConversionError, match="not a FocalNet checkpoint"):
        to_focalnet({"conv1.weight": torch.zeros(1)})


def test_class_count_mismatch_and_fresh_head(tmp_path):
    src = small("focalnet_tiny_srf", num_classes=1000)
    save_model(src, tmp_path / "in1k.safetensors")
    kw = small_overrides("focalnet_tiny_srf")
    with pytest.raises(CheckpointError, match=r"1000-class head but the model has 10 classes.*reset_head=True"):
        focalnet.create_model("focalnet_tiny_srf", pretrained=tmp_path / "in1k.safetensors", num_classes=10, **kw)
    torch.manual_seed(7)
    fresh = focalnet.create_model("focalnet_tiny_srf", num_classes=10, **kw)
    torch.manual_seed(7)
    model = focalnet.create_model(
        "focalnet_tiny_srf", pretrained=tmp_path / "in1k.safetensors", num_classes=10, reset_head=True, **kw
    )
    for k, v in model.state_dict().items():
        expected = fresh.state_dict()[k] if k.startswith("head.") else src.state_dict()[k]
        assert torch.equal(v, expected), k
    # no num_classes: the checkpoint's head
    assert focalnet.create_model("focalnet_tiny_srf", pretrained=tmp_path / "in1k.safetensors", **kw).num_classes == 1000
    # num_classes=0: a feature extractor, the head is dropped
    feats = focalnet.create_model("focalnet_tiny_srf", pretrained=tmp_path / "in1k.safetensors", num_classes=0, **kw)
    assert feats(torch.randn(1, 3, 32, 32)).shape == (1, 128)


def test_in22k_head_sliced_to_in1k(tmp_path):
    src = small("focalnet_large_fl3", num_classes=21842)
    write_checkpoint(src.state_dict(), src.arch, tmp_path / "22k.pth", fmt="official")
    kw = small_overrides("focalnet_large_fl3")
    model = focalnet.create_model("focalnet_large_fl3", pretrained=tmp_path / "22k.pth", num_classes=1000, **kw)
    w, b = model.head.fc.weight, model.head.fc.bias
    keep = [i for i in range(1000) if i != 850]
    assert torch.equal(w[keep], src.head.fc.weight[keep]) and torch.equal(b[keep], src.head.fc.bias[keep])
    assert torch.all(w[850] == 0) and b[850] == -1e4  # 1K 'teddy bear' is not in ImageNet-22K: never predicted
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        full = src(x)
        sliced = model.eval()(x)
    torch.testing.assert_close(sliced[:, keep], full[:, keep], rtol=0, atol=1e-6)
    assert focalnet.create_model("focalnet_large_fl3", pretrained=tmp_path / "22k.pth", **kw).num_classes == 21842


def test_rgb_stem_adapted_to_grayscale(tmp_path):
    src = small("focalnet_tiny_srf")
    save_model(src, tmp_path / "rgb.safetensors")
    gray = focalnet.create_model(
        "focalnet_tiny_srf", pretrained=tmp_path / "rgb.safetensors", in_chans=1, **small_overrides("focalnet_tiny_srf")
    ).eval()
    g = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(gray(g), src(g.expand(-1, 3, -1, -1)), rtol=1e-5, atol=1e-5)
    with pytest.raises(CheckpointError, match="3-channel stem but the model takes 2"):
        focalnet.create_model(
            "focalnet_tiny_srf", pretrained=tmp_path / "rgb.safetensors", in_chans=2, **small_overrides("focalnet_tiny_srf")
        )


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    path.write_bytes(b"old content")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(path) as f:
            f.write(b"partial new content")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.safetensors"]  # no temporary left behind
    # a finished write has the permissions a plain open() gives (the temporary file's 0600 is not kept)
    mask = os.umask(0o022)
    try:
        save_model(small("focalnet_tiny_srf"), tmp_path / "m.safetensors")
        with atomic_write(tmp_path / "a.json", "w") as f:
            f.write("{}")
        assert {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "m.safetensors", tmp_path / "a.json")} == {"0o644"}
    finally:
        os.umask(mask)


def test_unreadable_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read .*junk.pth as a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="safetensors"):
        read_checkpoint(tmp_path / "junk.safetensors")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError, match="without model.safetensors"):
        read_checkpoint(tmp_path / "empty_dir")
    with pytest.raises(ConversionError, match="timm has no isotropic"):
        from_focalnet(small("focalnet_tiny_iso").state_dict(), "timm", small("focalnet_tiny_iso").arch)


def test_damaged_configs_and_metadata_are_checkpoint_errors(tmp_path):
    model = small("focalnet_tiny_srf")
    write_checkpoint(model.state_dict(), model.arch, tmp_path / "hf", fmt="hf")
    config = (tmp_path / "hf" / "config.json").read_text()
    (tmp_path / "hf" / "config.json").write_text(config[:40])
    with pytest.raises(CheckpointError, match="config.json as JSON"):
        read_checkpoint(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(config.replace('"gelu"', '"relu"'))
    with pytest.raises(CheckpointError, match="hf: only hidden_act='gelu'"):
        read_checkpoint(tmp_path / "hf")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "bad.safetensors"), metadata={"format": "focalnet", "arch": "{"})
    with pytest.raises(CheckpointError, match="damaged focalnet metadata"):
        read_checkpoint(tmp_path / "bad.safetensors")


def test_download_without_network_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("FOCALNET_HOME", str(tmp_path))
    import torch.hub

    def offline(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub copies are tried first: offline, only the cache is looked at
    with pytest.raises(CheckpointError, match="could not get the weights .*pass its path as pretrained=PATH"):
        focalnet.create_model("focalnet_tiny_srf", pretrained=True)


def test_saved_preprocessing_travels_with_the_weights(tmp_path):
    """A model trained on Fashion-MNIST must be fed Fashion-MNIST's normalisation by predict/visualize,
    not ImageNet's gray mean: our format stores it, load_model and create_model restore it."""
    from focalnet.inspect.predict import preprocessing_for

    src = small("focalnet_tiny_srf", in_chans=1)
    pre = dict(mean=[0.286], std=[0.353], img_size=28, crop_pct=1.0)
    save_model(src, tmp_path / "m.safetensors", preprocessing=pre)
    # what was not given is completed (the variant's interpolation), so every loader reads a whole transform
    full = {**pre, "interpolation": "bicubic"}
    assert read_checkpoint(tmp_path / "m.safetensors").preprocessing == full
    for model in (
        focalnet.load_model(tmp_path / "m.safetensors"),
        focalnet.create_model("focalnet_tiny_srf", pretrained=tmp_path / "m.safetensors", **small_overrides("focalnet_tiny_srf")),
    ):
        p = preprocessing_for(model)
        assert (p.mean, p.std, p.img_size, p.crop_pct) == ((0.286,), (0.353,), 28, 1.0)
    # saving the loaded model again keeps it; a model without it gets the registry's (ImageNet's gray mean)
    save_model(focalnet.load_model(tmp_path / "m.safetensors"), tmp_path / "again.safetensors")
    assert read_checkpoint(tmp_path / "again.safetensors").preprocessing == full
    assert preprocessing_for(src).mean != (0.286,)
    with pytest.raises(CheckpointError, match="channel"):
        save_model(src, tmp_path / "bad.safetensors", preprocessing=dict(mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2]))
    with pytest.raises(CheckpointError, match="unknown preprocessing keys"):
        save_model(src, tmp_path / "bad.safetensors", preprocessing=dict(mean=[0.5], std=[0.2], scale=2))
    assert not (tmp_path / "bad.safetensors").exists()
