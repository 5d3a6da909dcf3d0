"""`focalnet detect` and `focalnet segment` on images of any size and mode, and their errors."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from focalnet.cli import main
from focalnet.dense import maskrcnn_focalnet, save_dense_checkpoint, upernet_focalnet
from focalnet.dense.data import CANVAS_CLASSES, CanvasDataset, canvas_detector_args
from focalnet.images import read_image

TINY = dict(embed_dim=16, depths=(1, 1, 1, 1))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    det = maskrcnn_focalnet(
        "focalnet_tiny_srf", len(CANVAS_CLASSES), backbone_args=TINY, fpn_channels=16, representation_size=32,
        mask_head_channels=8, box_score_thresh=0.0, **canvas_detector_args(64),
    )
    seg = upernet_focalnet("focalnet_tiny_srf", len(CANVAS_CLASSES), backbone_args=TINY, decoder_channels=16, aux_channels=None)
    with torch.no_grad():  # make the untrained segmenter paint something other than background
        seg.classifier[1].bias.copy_(torch.linspace(-1, 1, len(CANVAS_CLASSES)))
    return (
        save_dense_checkpoint(det, root / "det.pth", class_names=CANVAS_CLASSES),
        save_dense_checkpoint(seg, root / "seg.pth", class_names=CANVAS_CLASSES),
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("img")
    img, _ = CanvasDataset("test", 1, canvas_size=64, item_size=(16, 40))[0]
    rgb = Image.fromarray((img * 255).round().byte().permute(1, 2, 0).numpy())
    paths = dict(rgb=root / "canvas.png", gray=root / "gray.png", rgba=root / "rgba.png", tiny=root / "tiny.png", odd=root / "odd.jpg")
    rgb.save(paths["rgb"])
    rgb.convert("L").save(paths["gray"])
    rgb.convert("RGBA").save(paths["rgba"])
    rgb.resize((5, 7)).save(paths["tiny"])
    rgb.resize((101, 37)).save(paths["odd"])
    return paths


def _size(path):
    with Image.open(path) as im:
        return im.size, im.mode


def test_detect_writes_pictures_for_any_image(checkpoints, images, tmp_path, capsys):
    det, _ = checkpoints
    files = [str(images[k]) for k in ("rgb", "gray", "rgba", "tiny", "odd")]
    assert main(["detect", *files, "--checkpoint", str(det), "--output-dir", str(tmp_path), "--score-threshold", "0.0"]) == 0
    out = capsys.readouterr().out
    for key in ("rgb", "gray", "rgba", "tiny", "odd"):
        picture = tmp_path / f"{images[key].stem}.detect.png"
        (w, h), mode = _size(picture)
        assert mode == "RGB" and w >= 5 and h >= 7
        assert f"-> {picture}" in out
    # small images are enlarged by an integer factor for legible labels: 64 px -> 512 px
    assert _size(tmp_path / "canvas.detect.png")[0] == (512, 512)
    drawn = read_image(tmp_path / "canvas.detect.png")
    assert drawn.float().std() > 0
    # never overwrite without --force
    assert main(["detect", files[0], "--checkpoint", str(det), "--output-dir", str(tmp_path)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["detect", files[0], "--checkpoint", str(det), "--output-dir", str(tmp_path), "--force"]) == 0


def test_segment_writes_an_overlay_with_a_legend(checkpoints, images, tmp_path, capsys):
    _, seg = checkpoints
    files = [str(images[k]) for k in ("rgb", "tiny", "odd")]
    assert main(["segment", *files, "--checkpoint", str(seg), "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "% of pixels" in out
    (w, h), _ = _size(tmp_path / "canvas.segment.png")
    assert w == 512 and h > 512  # the legend band below the enlarged image
    (w, h), _ = _size(tmp_path / "odd.segment.png")
    assert w == 505 and h > 185  # 101 x 37 enlarged 5x
    assert main(["segment", files[2], "--checkpoint", str(seg), "--output-dir", str(tmp_path), "--max-side", "64", "--force"]) == 0


def test_cli_errors_are_one_line(checkpoints, images, tmp_path, capsys):
    det, seg = checkpoints
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for path in (empty, text):
        assert main(["detect", str(path), "--checkpoint", str(det), "--output-dir", str(tmp_path)]) == 2
        assert "cannot read" in capsys.readouterr().err
    assert main(["detect", str(images["rgb"]), "--checkpoint", str(seg), "--output-dir", str(tmp_path)]) == 2
    assert "use `focalnet segment`" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "missing.png"), "--checkpoint", str(seg)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["detect", str(images["rgb"]), "--checkpoint", str(tmp_path / "none.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err
    long = tmp_path / "long.png"
    Image.new("RGB", (4000, 3)).save(long)
    assert main(["detect", str(long), "--checkpoint", str(det), "--output-dir", str(tmp_path)]) == 2
    assert "too elongated" in capsys.readouterr().err
    # a checkpoint that is not ours: a clear error pointing to pretrained_backbone
    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "cls.pth")
    assert main(["detect", str(images["rgb"]), "--checkpoint", str(tmp_path / "cls.pth")]) == 2
    assert "not a focalnet detection/segmentation checkpoint" in capsys.readouterr().err
