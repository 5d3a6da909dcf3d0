"""Prediction plumbing on foolbox's ImageNet photos (their names end in the class index).

No released weights can be downloaded here, so a random FocalNet cannot be expected to name these photos.
What is tested instead, honestly: the preprocessing equals timm's evaluation transform with the registry's
settings, and a head built by least squares on those features (so that each photo's own class wins) is
read back through a checkpoint and the CLI with the right ImageNet names. Any mix-up of preprocessing,
class index or name table breaks it."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import foolbox
from focalnet import create_model, save_model
from focalnet.cli import main
from focalnet.images import ImageError, ImageTooLargeError, load_image
from focalnet.inspect.predict import class_names_for, eval_transform, predict, preprocessing_for

from conftest import small_overrides

PHOTOS = sorted((Path(foolbox.__file__).parent / "data").glob("imagenet_*.jpg"))


def _label(path: Path) -> int:
    return int(path.stem.split("_")[-1])


def _tiny(**kw) -> torch.nn.Module:
    return create_model("focalnet_tiny_srf", **small_overrides("focalnet_tiny_srf"), **kw).eval()


def test_preprocessing_is_timms_eval_transform():
    from timm.data import create_transform

    model = _tiny()
    pre = preprocessing_for(model)
    assert (pre.img_size, pre.crop_pct, pre.interpolation) == (224, 0.875, "bicubic")
    ref = create_transform(input_size=(3, 224, 224), is_training=False, crop_pct=pre.crop_pct,
                           interpolation=pre.interpolation, mean=pre.mean, std=pre.std)
    ours = eval_transform(pre)
    img = load_image(PHOTOS[0])
    wide = img.resize((300, 200))  # the shorter side goes to 256, then a 224 centre crop
    for im in (img, wide):
        torch.testing.assert_close(ours(im), ref(im))


def test_the_input_is_resolved_and_checked_in_one_place():
    """focalnet.preprocess: the defaults < the variant < the file < what is asked; statistics converted to the
    model's channels; one check of a record, raising the caller's error type; timm's transform from it."""
    from timm.data import create_transform, resolve_data_config

    from focalnet.checkpoints import CheckpointError
    from focalnet.images import PreprocessingError
    from focalnet.preprocess import DEFAULT_CROP_PCT, check_record, data_config, resolve, resolve_record
    from focalnet.registry import get_spec

    assert resolve() == resolve(3, spec=get_spec("focalnet_tiny_srf"))  # the released variants: the defaults
    assert resolve().crop_pct == DEFAULT_CROP_PCT and resolve().resize == 256
    large = resolve(3, spec=get_spec("focalnet_large_fl3"))  # released at 384 px, evaluated uncropped
    assert (large.img_size, large.crop_pct) == (384, 1.0)
    saved = dict(mean=[0.286], std=[0.353], img_size=28, crop_pct=1.0)
    p = resolve(1, spec=get_spec("focalnet_tiny_srf"), saved=saved, img_size=32)
    assert (p.mean, p.std, p.img_size, p.crop_pct, p.interpolation, p.mode) == ((0.286,), (0.353,), 32, 1.0, "bicubic", "L")
    gray = resolve(1)  # RGB statistics for a gray model: their mean
    assert gray.mean == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))
    assert resolve(3, saved=saved) == resolve()  # a record for other channels describes other input
    assert resolve_record(crop_pct=None, interpolation="bilinear")["interpolation"] == "bilinear"  # None is no say
    with pytest.raises(PreprocessingError, match="for 3 channel"):
        check_record(dict(mean=[0.5] * 3, std=[0.2] * 3), in_chans=1)
    for bad, needle in ((dict(mean=[float("nan")], std=[1.0]), "finite"), (dict(mean=[0.5], std=[0.0]), "std > 0"),
                        (dict(mean=[0.5], std=[1.0], crop_pct=0), "crop_pct"), (dict(mean=[0.5], std=[1.0], scale=2), "unknown")):
        with pytest.raises(CheckpointError, match=needle):
            check_record(bad, "m.safetensors", error=CheckpointError)
    with pytest.raises(ImageTooLargeError, match="img_size"):
        resolve(3, img_size=100000)
    model = _tiny()
    pre = preprocessing_for(model)
    assert pre == resolve(3, spec=get_spec("focalnet_tiny_srf"))
    ref = create_transform(**resolve_data_config(model=model))  # what timm makes of the model's pretrained_cfg
    wide = load_image(PHOTOS[0]).resize((300, 200))
    torch.testing.assert_close(eval_transform(pre)(wide), ref(wide))
    assert data_config(pre)["input_size"] == (3, 224, 224)


def test_a_constructed_head_names_every_photo(tmp_path, capsys):
    from timm.data import ImageNetInfo, create_transform

    assert len(PHOTOS) == 20
    torch.manual_seed(0)
    model = _tiny(num_classes=1000)
    pre = preprocessing_for(model)
    ref = create_transform(input_size=(3, 224, 224), is_training=False, crop_pct=pre.crop_pct,
                           interpolation=pre.interpolation, mean=pre.mean, std=pre.std)
    x = torch.stack([ref(Image.open(p).convert("RGB")) for p in PHOTOS])
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True).double()  # (20, 128)
    labels = [_label(p) for p in PHOTOS]
    targets = torch.zeros(len(PHOTOS), 1000, dtype=torch.float64)
    targets[torch.arange(len(PHOTOS)), labels] = 20.0
    A = torch.cat([feats, torch.ones(len(PHOTOS), 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(A, targets).solution  # (129, 1000): exact, 20 photos < 129 unknowns
    with torch.no_grad():
        model.head.fc.weight.copy_(sol[:-1].T.float())
        model.head.fc.bias.copy_(sol[-1].float())
    save_model(model, tmp_path / "head.safetensors")

    assert main(["predict", *map(str, PHOTOS), "--checkpoint", str(tmp_path / "head.safetensors"), "--topk", "3",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["labels"] == "ImageNet-1K" and out["input_size"] == 224
    info = ImageNetInfo()
    for path, pred in zip(PHOTOS, out["predictions"]):
        top = pred["top"][0]
        assert pred["image"] == str(path)
        assert top["index"] == _label(path) and top["probability"] > 0.99, (path.name, pred["top"])
        assert top["label"] == info.index_to_description(_label(path)) and top["synset"] == info.index_to_label_name(_label(path))
        assert [t["rank"] for t in pred["top"]] == [1, 2, 3]
    assert main(["predict", str(PHOTOS[3]), "--checkpoint", str(tmp_path / "head.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "labels: ImageNet-1K" in text and info.index_to_description(990) in text and "(990)" in text


def test_imagenet22k_head_names_and_the_untrained_class():
    """The authors' 21842-class head: 0..999 are ImageNet-1K in order; 850 (teddy bear) never trained."""
    model = _tiny(num_classes=21842)
    with torch.no_grad():
        model.head.fc.weight.zero_()
        model.head.fc.bias.zero_()
        model.head.fc.bias[850] = 9.0
        model.head.fc.bias[3000] = 8.0
    names = class_names_for(model)
    one_k = class_names_for(_tiny(num_classes=1000))
    assert names.names[:1000] == one_k.names and len(names) == 21842
    top = predict(model, [PHOTOS[0]], topk=2)[0].top
    assert [t["index"] for t in top] == [850, 3000]
    assert "teddy" in top[0]["label"] and "never trained" in top[0]["note"] and "note" not in top[1]
    assert top[1]["synset"].startswith("n") and top[1]["label"] == names.names[3000]


def test_checkpoint_class_names_win(tmp_path, capsys):
    model = _tiny(num_classes=3)
    with torch.no_grad():
        model.head.fc.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
        model.head.fc.weight.zero_()
    save_model(model, tmp_path / "m.safetensors", class_names=["shirt", "sneaker", "bag"])
    assert main(["predict", str(PHOTOS[0]), "--checkpoint", str(tmp_path / "m.safetensors"), "--topk", "9"]) == 0
    out = capsys.readouterr().out
    assert "labels: checkpoint" in out and out.index("sneaker") < out.index("shirt") and "  3. " in out and "  4. " not in out


def test_images_are_read_safely(tmp_path):
    with pytest.raises(ImageError, match="image not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(ImageError, match="unsupported format"):
        load_image(tmp_path / "a.txt")
    (tmp_path / "cut.jpg").write_bytes(PHOTOS[0].read_bytes()[:3000])
    with pytest.raises(ImageError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg")
    # 16-bit grey: the range is rescaled, not clipped to 255
    arr16 = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(arr16).save(tmp_path / "g16.png")
    g = np.asarray(load_image(tmp_path / "g16.png", "L"))
    assert g.min() == 0 and g.max() == 255
    # transparent pixels become white, not black
    rgba = np.zeros((8, 8, 4), np.uint8)
    Image.fromarray(rgba).save(tmp_path / "t.png")
    assert np.asarray(load_image(tmp_path / "t.png")).min() == 255
    # arrays and tensors
    assert load_image(np.zeros((5, 7, 3), np.uint8)).size == (7, 5)
    assert load_image(torch.rand(1, 5, 7)).mode == "RGB"


def test_one_reader_for_classification_and_dense_prediction(tmp_path):
    from focalnet.images import PreprocessingError, interpolation_mode, read_image

    Image.fromarray(np.zeros((3, 4, 4), np.uint8)).save(tmp_path / "t.png")  # fully transparent
    t = read_image(tmp_path / "t.png")
    assert t.shape == (3, 3, 4) and t.dtype == torch.uint8 and (t == 255).all()
    assert torch.equal(t, torch.from_numpy(np.asarray(load_image(tmp_path / "t.png"))).permute(2, 0, 1))
    with pytest.raises(ImageError, match="image not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(PreprocessingError, match="unknown interpolation 'cubic'"):
        interpolation_mode("cubic")
    assert interpolation_mode("bilinear").value == "bilinear"


def test_predict_cli_errors(tmp_path, capsys, monkeypatch):
    model = _tiny()
    save_model(model, tmp_path / "m.safetensors")
    (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.4 not an image")
    for bad, needle in ((tmp_path / "gone.jpg", "image not found"), (tmp_path / "doc.pdf", "unsupported format")):
        assert main(["predict", str(PHOTOS[0]), str(bad), "--checkpoint", str(tmp_path / "m.safetensors")]) == 2
        err = capsys.readouterr().err
        assert needle in err and str(bad) in err and "Traceback" not in err
    import focalnet.inspect.memory as memory  # the guard reads the free memory there

    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 2**20)
    assert main(["predict", str(PHOTOS[0]), "--checkpoint", str(tmp_path / "m.safetensors"), "--img-size", "3000"]) == 2
    err = capsys.readouterr().err
    assert "at 3000x3000 px needs about" in err and "--img-size" in err
    monkeypatch.undo()
    feat = _tiny(num_classes=0)
    save_model(feat, tmp_path / "f.safetensors")
    assert main(["predict", str(PHOTOS[0]), "--checkpoint", str(tmp_path / "f.safetensors")]) == 2
    assert "no classifier" in capsys.readouterr().err
