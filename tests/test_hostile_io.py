"""Hostile inputs and outputs (issue 14, faults 3, 5 and 6): bounded memory before any work, one-line errors for
every write that fails, and project errors naming the file and key for every crafted checkpoint.

Each test fails on the behaviour before the fix (a traceback, a silent success, an allocation) and passes now;
nothing here allocates more than a few MB, whatever the code does: the caps are lowered by environment
variables where the old code would have gone on.
"""
from __future__ import annotations

import errno
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from focalnet import load_model
from focalnet.checkpoints import CheckpointError, read_checkpoint, save_model
from focalnet.cli import main
from focalnet.errors import FocalNetError
from focalnet.images import ImageTooLargeError, load_image
from focalnet.inspect.predict import predict, preprocessing_for
from focalnet.models import model_from_arch
from focalnet.utils import OutputError, atomic_dir, atomic_json, atomic_write
from hostile import ARCH, PRE, ckpt, photo  # noqa: F401 (fixtures)


def _variant(src: Path, dst: Path, **changes: str) -> Path:
    """A copy of `src` with some metadata values replaced (crafted by hand, as a hostile user would)."""
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
        sd = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(changes)
    save_file(sd, str(dst), metadata=meta)
    return dst


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("focalnet ")]  # logging may add warnings
    assert "Traceback" not in err and len(errors) == 1, err
    return errors[0]


# ------------------------------------------------------------------------------------------------------------
# 3. Memory bounded before work
# ------------------------------------------------------------------------------------------------------------


def test_img_size_above_the_cap_is_refused_before_any_resize(ckpt, photo, capsys, monkeypatch):
    model = load_model(ckpt)
    with pytest.raises(ImageTooLargeError, match="FOCALNET_MAX_IMAGE_SIDE"):
        preprocessing_for(model, 100000)  # before: a Preprocessing that resized to 114285 px
    monkeypatch.setenv("FOCALNET_MAX_IMAGE_SIDE", "48")  # the cap is configurable: 64 px is now too much
    err = _one_line_error(capsys, main(["predict", "--checkpoint", str(ckpt), str(photo), "--img-size", "64"]))
    assert "64 px" in err and "48 px" in err


def test_checkpoint_img_size_above_the_cap_gives_the_same_error(ckpt, photo, tmp_path, monkeypatch):
    big = _variant(ckpt, tmp_path / "big.safetensors", preprocessing=json.dumps({**PRE, "img_size": 100000}))
    model = load_model(big)
    with pytest.raises(ImageTooLargeError, match="100000 px"):
        predict(model, [photo])
    monkeypatch.setenv("FOCALNET_MAX_IMAGE_SIDE", "16")
    with pytest.raises(ImageTooLargeError):
        predict(load_model(ckpt), [photo])  # its img_size 32 is above a 16 px cap


def test_elongated_image_refused_before_its_resize(ckpt, tmp_path):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (4000, 2)).save(strip)  # shorter side to 36 px: 72000 px long
    with pytest.raises(ImageTooLargeError, match="closer to square"):
        predict(load_model(ckpt), [strip])


def test_decompression_bomb_warning_and_error_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    warned, bomb = tmp_path / "warned.png", tmp_path / "bomb.png"
    Image.new("RGB", (40, 40)).save(warned)  # 1600 px: Pillow only warns (between 1x and 2x its limit)
    Image.new("RGB", (100, 100)).save(bomb)  # 10000 px: Pillow raises
    for path in (warned, bomb):
        with pytest.raises(ImageTooLargeError, match=path.name):
            load_image(path)


def test_family_banana_refused_when_read(ckpt, tmp_path):
    bad = _variant(ckpt, tmp_path / "banana.safetensors", arch=json.dumps({**ARCH, "family": "banana"}))
    with pytest.raises(CheckpointError, match="banana.safetensors.*banana"):
        read_checkpoint(bad)


def test_claimed_architecture_checked_on_meta_before_allocation(ckpt, tmp_path, monkeypatch):
    huge = _variant(ckpt, tmp_path / "huge.safetensors", arch=json.dumps({**ARCH, "embed_dim": 1024, "depths": [8, 8]}))

    def allocate(*args, **kwargs):
        raise AssertionError("a real model was built before the file's shapes were checked")

    monkeypatch.setattr("focalnet.factory.model_from_arch", allocate)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(huge)


def test_model_size_cap(ckpt, monkeypatch):
    monkeypatch.setenv("FOCALNET_MAX_MODEL_BYTES", "1000")
    with pytest.raises(CheckpointError, match="FOCALNET_MAX_MODEL_BYTES"):
        read_checkpoint(ckpt)


def test_tensor_bytes_checked_before_loading(tmp_path, monkeypatch):
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(24 * 2**20)}, buf)  # 96 MiB of zeros
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info.filename))
    assert bomb.stat().st_size < 2**20  # a file under 1 MB that unpacks to 96 MiB
    with pytest.raises(CheckpointError, match="zip bomb"):
        read_checkpoint(bomb)
    small = tmp_path / "small.pth"
    torch.save(model_from_arch(ARCH).state_dict(), small)
    monkeypatch.setenv("FOCALNET_MAX_CHECKPOINT_BYTES", "1000")
    with pytest.raises(CheckpointError, match="FOCALNET_MAX_CHECKPOINT_BYTES"):
        read_checkpoint(small)
    monkeypatch.setenv("FOCALNET_MAX_CHECKPOINT_BYTES", "-1")
    with pytest.raises(CheckpointError, match="positive"):
        read_checkpoint(small)


def test_state_dict_with_non_string_keys(tmp_path):
    torch.save({"model": {1: torch.zeros(4)}}, tmp_path / "intkey.pth")
    with pytest.raises(CheckpointError, match="intkey.pth"):
        read_checkpoint(tmp_path / "intkey.pth")


# ------------------------------------------------------------------------------------------------------------
# 5. Every OSError when writing: one line naming the path, nothing half-written
# ------------------------------------------------------------------------------------------------------------


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_atomic_writers_raise_output_error_and_keep_the_old_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(OutputError, match="out.json.*disk is full") as e:
        with atomic_write(target, "w") as f:
            f.write("new")
            _full_disk()
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        atomic_json({}, folder)
    with pytest.raises(OutputError, match="is a file"):
        atomic_json({}, target / "x.json")


def test_read_only_folder_gives_one_line(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OutputError, match=r"out\.json.*read-only"):
        atomic_json({}, tmp_path / "out.json")


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(OutputError):
        with atomic_dir(tmp_path / "hf") as tmp:
            (tmp / "a.txt").write_text("x")
            _full_disk()
    assert list(tmp_path.iterdir()) == []


def _rust_full_disk(*args, **kwargs):
    from safetensors import SafetensorError  # what safetensors' writer raises on a real full disk (not an OSError)

    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("writer", [_full_disk, _rust_full_disk])
def test_convert_to_hf_on_a_full_disk_leaves_no_folder(ckpt, tmp_path, capsys, monkeypatch, writer):
    monkeypatch.setattr("safetensors.torch.save_file", writer)
    out = tmp_path / "hf"
    err = _one_line_error(capsys, main(["convert", str(ckpt), str(out), "--to", "hf"]))
    assert str(out) in err and "disk is full" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no hf/, no .tmp


@pytest.mark.parametrize("to,make", [("focalnet", "folder"), ("hf", "file"), ("timm", "file")])
def test_convert_force_never_swaps_a_file_and_a_folder(ckpt, tmp_path, capsys, to, make):
    out = tmp_path / ("out.safetensors" if to == "focalnet" else "out")
    out.mkdir() if make == "folder" else out.write_text("mine")
    err = _one_line_error(capsys, main(["convert", str(ckpt), str(out), "--to", to, "--force"]))
    assert str(out) in err and "remove" in err
    assert out.is_dir() if make == "folder" else out.read_text() == "mine"


def test_visualize_output_errors(ckpt, photo, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    err = _one_line_error(capsys, main(["visualize", str(photo), "--checkpoint", str(ckpt), "--out", str(a_file)]))
    assert "is a file" in err and a_file.read_text() == "mine"

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    err = _one_line_error(capsys, main(["visualize", str(photo), "--checkpoint", str(ckpt), "--out", str(tmp_path / "v")]))
    assert "permission denied" in err and str(tmp_path / "v") in err
    assert not (tmp_path / "v").exists()  # the folder it made is gone again


def test_export_output_errors(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    args = ["export", "focalnet_tiny_srf", "--format", "onnx", "--no-verify", "--img-size", "32"]
    err = _one_line_error(capsys, main(args + ["--out", str(folder), "--force"]))
    assert "is a folder" in err

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    err = _one_line_error(capsys, main(args + ["--out", str(tmp_path / "x.onnx")]))
    assert "x.onnx" in err and "read-only" in err


def test_predict_detect_segment_on_corrupt_checkpoints(photo, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(os.urandom(4096))
    args_list = dict(
        argsstr={"builder_args": "abc"}, version={"builder_args": {"num_classes": 2}, "format_version": "x"},
        model={"builder_args": {"num_classes": 2}, "model": "x"}, builder={"builder": ["x"], "builder_args": {}},
    )
    base = {"format": "focalnet-dense", "format_version": 1, "task": "detection", "builder": "fasterrcnn_focalnet",
            "class_names": ["bg", "a"], "model": {}, "extra": {}}
    files = [corrupt]
    for name, changes in args_list.items():
        torch.save({**base, **changes}, tmp_path / f"{name}.pth")
        files.append(tmp_path / f"{name}.pth")
    for path in files:
        for cmd in (["detect"], ["segment"]) if path == corrupt else (["detect"],):
            err = _one_line_error(capsys, main(cmd + [str(photo), "--checkpoint", str(path), "--output-dir", str(tmp_path)]))
            assert path.name in err
    err = _one_line_error(capsys, main(["predict", "--checkpoint", str(corrupt), str(photo)]))
    assert "corrupt.pth" in err and "Check the documentation" not in err


# ------------------------------------------------------------------------------------------------------------
# 6. Crafted metadata: project errors naming the file and the key, in the CLI and the Python API
# ------------------------------------------------------------------------------------------------------------

CRAFTED = {
    "arch_list": (dict(arch="[1, 2]"), "'arch'"),
    "arch_str": (dict(arch='"x"'), "'arch'"),
    "arch_null": (dict(arch="null"), "'arch'"),
    "depths_str": (dict(arch=json.dumps({**ARCH, "depths": "ab"})), "'depths'"),
    "embed_negative": (dict(arch=json.dumps({**ARCH, "embed_dim": -4})), "'embed_dim'"),
    "flag_string": (dict(arch=json.dumps({**ARCH, "use_post_norm": "no"})), "'use_post_norm'"),
    "mean_nan": (dict(preprocessing='{"mean": [NaN, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}'), "'mean'"),
    "std_inf": (dict(preprocessing='{"mean": [0.5, 0.5, 0.5], "std": [Infinity, 0.5, 0.5]}'), "'std'"),
    "mean_str": (dict(preprocessing='{"mean": "abc", "std": [0.5, 0.5, 0.5]}'), "'mean'"),
    "img_size_str": (dict(preprocessing=json.dumps({**PRE, "img_size": "big"})), "'img_size'"),
    "crop_negative": (dict(preprocessing=json.dumps({**PRE, "crop_pct": -1})), "'crop_pct'"),
    "pre_list": (dict(preprocessing="[1, 2]"), "'preprocessing'"),
    "names_dict": (dict(class_names='{"a": 1}'), "'class_names'"),
    "names_short": (dict(class_names='["a"]'), "'class_names'"),
    "names_nested": (dict(class_names='[["a"], 1, 2]'), "'class_names'"),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_metadata_names_file_and_key(name, ckpt, photo, tmp_path, capsys):
    changes, key = CRAFTED[name]
    bad = _variant(ckpt, tmp_path / f"{name}.safetensors", **changes)
    with pytest.raises(CheckpointError) as e:
        load_model(bad)
    assert bad.name in str(e.value) and key in str(e.value), str(e.value)
    err = _one_line_error(capsys, main(["predict", "--checkpoint", str(bad), str(photo)]))
    assert bad.name in err and key in err and "nan%" not in err


def test_nan_weights_never_print_nan_percent(tmp_path, photo, capsys):
    model = model_from_arch(ARCH)
    with torch.no_grad():
        model.head.fc.bias.fill_(float("nan"))
    path = tmp_path / "nan.safetensors"
    save_model(model, path, preprocessing=PRE)
    err = _one_line_error(capsys, main(["predict", "--checkpoint", str(path), str(photo)]))
    assert "non-finite" in err and "nan%" not in err


def test_hf_config_with_wrong_types(ckpt, tmp_path):
    out = tmp_path / "hf"
    assert main(["convert", str(ckpt), str(out), "--to", "hf"]) == 0
    config = json.loads((out / "config.json").read_text())
    for changes in ({"layer_norm_eps": "x"}, {"depths": "ab"}, {"embed_dim": None}, {"id2label": [1, 2]}):
        (out / "config.json").write_text(json.dumps({**config, **changes}))
        with pytest.raises(CheckpointError, match="config.json|architecture"):
            load_model(out)
    (out / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(out)


def test_convert_official_to_safetensors_name_is_refused(ckpt, tmp_path, capsys):
    out = tmp_path / "x.safetensors"
    err = _one_line_error(capsys, main(["convert", str(ckpt), str(out), "--to", "official"]))
    assert ".pth" in err and not out.exists()


def test_project_errors_are_focalnet_errors():
    assert issubclass(OutputError, FocalNetError) and issubclass(OutputError, OSError)
    assert issubclass(ImageTooLargeError, FocalNetError)
