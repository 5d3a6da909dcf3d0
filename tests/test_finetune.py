"""Fine-tuning from released-style weights on a folder of real images (Fashion-MNIST PNGs): the finetune
recipe is chosen by --pretrained, learns, and what it writes carries its preprocessing; stems adapt
gray <-> RGB; layer-wise lr decay groups follow the stages."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

import focalnet
from focalnet.checkpoints import CheckpointError, load_into
from focalnet.train import TrainConfig, train
from focalnet.train.config import resolve_recipe
from focalnet.train.optim import build_optimizer, run_lr
from focalnet.train.recipes import fit_to_data, get_recipe

ARCH = dict(embed_dim=16, depths=[1, 1, 1], focal_levels=[2, 2, 2], focal_windows=[3, 3, 3], patch_size=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    from focalnet.datasets import DataUnavailableError, load_fashion_mnist

    try:
        splits, _ = load_fashion_mnist(None, download=False)
    except DataUnavailableError:
        if os.environ.get("CI"):  # scripts/setup.sh installs Debian's package: in CI its absence is a setup fault
            raise
        pytest.skip("Fashion-MNIST is not on this machine (scripts/setup.sh installs it as root)")
    root = tmp_path_factory.mktemp("fmnist_png")
    for split, key, n in (("train", "train", 24), ("val", "test", 20)):
        x, y = splits[key]
        for c in (1, 7, 8, 9):  # trouser, sneaker, bag, ankle boot
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in (y == c).nonzero().flatten()[:n].tolist():
                Image.fromarray(x[i, 0].numpy()).save(d / f"{i}.png")
    return root


def test_recipe_auto_and_lr_meaning():
    cfg = TrainConfig(data="digits", pretrained="w.pth")
    assert resolve_recipe(cfg).name == "finetune"
    assert resolve_recipe(TrainConfig(data="digits")).name == "small"
    # --lr is absolute; --base-lr scales with the batch (the paper's recipes keep their rates)
    assert run_lr(get_recipe("finetune"), 8) == pytest.approx(1e-3)
    assert run_lr(resolve_recipe(TrainConfig(data="digits", lr=0.01)), 64) == pytest.approx(0.01)
    assert run_lr(get_recipe("small"), 128) == pytest.approx(4e-3)
    assert run_lr(resolve_recipe(TrainConfig(data="digits", pretrained="w", base_lr=0.5)), 64) == pytest.approx(0.5 * 64 / 1024)
    small, notes = fit_to_data(get_recipe("finetune"), num_train=40, kind="folder")
    assert small.batch_size == 10 and small.mixup == 0 and small.cutmix == 0 and small.reprob == 0 and notes
    large, _ = fit_to_data(get_recipe("finetune"), num_train=50000, kind="folder")
    assert large.mixup > 0 and large.batch_size == 32 and large.epochs == 5


def test_layer_decay_groups_follow_the_blocks():
    model = focalnet.create_model("focalnet_tiny_srf", num_classes=3, **ARCH)
    opt = build_optimizer(model, get_recipe("finetune"), lr=1e-3)
    scales = sorted({round(g["lr_scale"], 6) for g in opt.param_groups})
    # stem, 3 blocks, head: 5 layers, 0.75 apart
    assert len(scales) == 5 and scales[-1] == 1.0 and scales[0] == pytest.approx(0.75**4)
    head = next(g for g in opt.param_groups if any(p is model.head.fc.weight for p in g["params"]))
    stem = next(g for g in opt.param_groups if any(p is model.stem.proj.weight for p in g["params"]))
    assert head["lr"] == pytest.approx(1e-3) and stem["lr"] == pytest.approx(1e-3 * 0.75**4)


@pytest.mark.parametrize("src,dst", [(3, 1), (1, 3)])
def test_stem_gray_rgb_both_ways(src, dst):
    a = focalnet.create_model("focalnet_tiny_srf", num_classes=2, in_chans=src, **ARCH).eval()
    b = load_into(focalnet.create_model("focalnet_tiny_srf", num_classes=2, in_chans=dst, **ARCH), a.state_dict()).eval()
    gray = torch.rand(1, 1, 32, 32)
    with torch.no_grad():  # a gray image: (g, g, g) to the RGB model, g to the gray one, same answer
        out_a = a(gray.expand(-1, src, -1, -1))
        out_b = b(gray.expand(-1, dst, -1, -1))
    torch.testing.assert_close(out_a, out_b, atol=1e-4, rtol=1e-4)
    if src == 3:  # RGB onto a 4-channel stem: no stated meaning, an error
        with pytest.raises(CheckpointError, match="only gray <-> RGB"):
            load_into(focalnet.create_model("focalnet_tiny_srf", num_classes=2, in_chans=4, **ARCH), a.state_dict())


@pytest.fixture(scope="module")
def authors_weights(tmp_path_factory):
    """Weights as the authors release them (a .pth of tensors in their layout, nothing else), pretrained
    for a few seconds on five other Fashion-MNIST classes: features worth fine-tuning, as released ones are."""
    from PIL import Image

    from focalnet.datasets import load_fashion_mnist

    splits, _ = load_fashion_mnist(None, download=False)
    root = tmp_path_factory.mktemp("pretrain")
    for split, key, n in (("train", "train", 160), ("val", "test", 10)):
        x, y = splits[key]
        for c in (0, 2, 3, 4, 5):  # T-shirt, pullover, dress, coat, sandal: none of the fine-tuning classes
            d = root / "data" / split / f"class{c}"
            d.mkdir(parents=True)
            for i in (y == c).nonzero().flatten()[:n].tolist():
                Image.fromarray(x[i, 0].numpy()).save(d / f"{i}.png")
    train(TrainConfig(data=str(root / "data"), model="focalnet_tiny_srf", arch=dict(ARCH), recipe="small", img_size=28,
                      epochs=3, batch_size=32, output=str(root / "run"), progress="off", threads=2))
    ck = focalnet.read_checkpoint(root / "run" / "model.safetensors")
    path = focalnet.write_checkpoint(ck.state_dict, ck.arch, root / "authors.pth", fmt="official")
    for extra in root.glob("authors.pth.*"):  # a download from the authors holds the tensors only
        extra.unlink()
    return path


@pytest.fixture(scope="module")
def finetuned(folder, authors_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "run"
    # default fine-tuning flags; the authors' layout carries no image size, and 5 epochs keep the test short
    summary = train(TrainConfig(data=str(folder), pretrained=str(authors_weights), reset_head=True, img_size=28,
                                epochs=5, output=str(out), progress="off", threads=2))
    return out, summary


def test_finetune_from_official_layout(folder, finetuned):
    out, summary = finetuned
    config = (out / "config.yaml").read_text()
    assert "recipe: finetune" in config
    history = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    # the loss moves (a fresh head starts near ln 4 = 1.386) and ends below chance level
    assert history[-1]["train_loss"] < 0.9 * history[0]["train_loss"] and history[-1]["train_loss"] < math.log(4)
    top1 = summary["final"]["top1"]
    assert top1 > 50.0  # chance: 25 %
    ckpt = focalnet.read_checkpoint(out / "model.safetensors")
    assert ckpt.preprocessing["img_size"] == 28 and ckpt.preprocessing["interpolation"] == "bicubic"
    assert ckpt.in_chans == 1 and ckpt.class_names == ["class1", "class7", "class8", "class9"]
    assert focalnet.read_checkpoint(out / "checkpoints" / "last.pth").preprocessing == ckpt.preprocessing
    from focalnet.train import evaluate_checkpoint

    r = evaluate_checkpoint(str(out / "model.safetensors"), str(folder), progress="off")
    assert r["img_size"] == 28 and r["top1"] == pytest.approx(top1)
    # the resized model is named for what it is, in the run and its files
    assert summary["model"] == "custom, from focalnet_tiny_srf: embed_dim 16, depths 1-1-1, patch 2"
    assert (out / "curves.png").is_file()  # drawn at the end, whatever the throttling


def test_the_commands_read_a_checkpoint_alone(folder, finetuned, tmp_path, capsys):
    """info, predict and export with the trained model.safetensors alone: its architecture, size and classes."""
    from focalnet.cli import main

    model_file = str(finetuned[0] / "model.safetensors")
    assert main(["info", model_file]) == 0
    assert "custom, from focalnet_tiny_srf: embed_dim 16, depths 1-1-1, patch 2" in capsys.readouterr().out
    image = next((folder / "val" / "class7").glob("*.png"))
    assert main(["predict", str(image), "--checkpoint", model_file, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["input_size"] == 28 and got["model"].startswith("custom, from focalnet_tiny_srf")
    assert got["predictions"][0]["top"][0]["label"] in ("class1", "class7", "class8", "class9")
    out = tmp_path / "m.torchscript.pt"
    assert main(["export", "--checkpoint", model_file, "--format", "torchscript", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "at 28x28" in printed  # checked against PyTorch at the size it was trained at


def test_old_config_lr_is_read_as_base_lr():
    """A run saved when --lr meant 'per 1024 images' resumes at the rate it trained at."""
    from focalnet.train.config import check_resume_config

    saved = TrainConfig(data="digits", recipe="small").to_dict()
    saved.pop("base_lr")
    saved["lr"] = 0.032  # the old meaning: per 1024 images
    cfg, changes = check_resume_config(TrainConfig(data="digits", resume="run"), saved)
    assert cfg.lr is None and cfg.base_lr == 0.032 and "per 1024 images" in changes[0]
    assert run_lr(resolve_recipe(cfg), 128) == pytest.approx(4e-3)


def test_evaluation_interval_follows_the_epoch_length():
    from types import SimpleNamespace as Info

    from focalnet.train.run import eval_interval

    assert eval_interval(None, Info(num_train=50, num_eval=500)) == 4  # an epoch of 50 images: every 4th
    assert eval_interval(None, Info(num_train=2500, num_eval=500)) == 1
    assert eval_interval(3, Info(num_train=2500, num_eval=500)) == 3
    # under a time budget evaluation takes training time: at most 3 % of it (Fashion-MNIST: every 2nd epoch)
    assert eval_interval(None, Info(num_train=60000, num_eval=10000)) == 1
    assert eval_interval(None, Info(num_train=60000, num_eval=10000), time_budget=600) == 2
    assert eval_interval(None, Info(num_train=1281167, num_eval=50000), time_budget=600) == 1
    assert eval_interval(2, Info(num_train=60000, num_eval=10000), time_budget=600) == 2  # asked: as asked


def test_pretrained_by_name_takes_the_released_weights(tmp_path, monkeypatch):
    """--pretrained NAME (not a file here): the registered variant's released weights, through the same
    download as create_model(name, pretrained=True)."""
    import focalnet.factory
    from focalnet.train.build import read_pretrained

    model = focalnet.create_model("focalnet_tiny_srf", num_classes=10, **ARCH)
    path = focalnet.write_checkpoint(model.state_dict(), model.arch, tmp_path / "released.pth", fmt="official")
    asked = []
    monkeypatch.setattr(focalnet.factory, "download_weights", lambda name, source=None: asked.append(name) or path)
    ckpt = read_pretrained(TrainConfig(data="digits", pretrained="focalnet_tiny_srf"))
    assert asked == ["focalnet_tiny_srf"] and ckpt.num_classes == 10


@pytest.mark.parametrize("fmt,name", [("focalnet", "m.safetensors"), ("official", "m.pth"), ("timm", "timm"), ("hf", "hf")])
def test_every_layout_keeps_the_preprocessing(tmp_path, fmt, name):
    """A 28 px gray model's input (size, crop, interpolation, mean/std) and classes survive each layout."""
    model = focalnet.create_model("focalnet_tiny_srf", num_classes=3, in_chans=1, **ARCH)
    pre = dict(mean=[0.286], std=[0.353], img_size=28, crop_pct=1.0, interpolation="bilinear")
    path = focalnet.write_checkpoint(model.state_dict(), model.arch, tmp_path / name, fmt=fmt,
                                     variant="focalnet_tiny_srf", class_names=["a", "b", "c"], preprocessing=pre)
    back = focalnet.read_checkpoint(path)
    assert back.preprocessing == pre and back.class_names == ["a", "b", "c"]


def test_reset_head_with_the_same_class_count_is_fresh():
    """5 pretrained classes, 5 new ones: --reset-head must not keep the head trained on the other five."""
    trained = focalnet.create_model("focalnet_tiny_srf", num_classes=5, **ARCH)
    with torch.no_grad():
        trained.head.fc.weight.fill_(1.0)
    fresh = focalnet.create_model("focalnet_tiny_srf", num_classes=5, **ARCH)
    before = fresh.head.fc.weight.clone()
    load_into(fresh, trained.state_dict(), reset_head=True)
    assert torch.equal(fresh.head.fc.weight, before)
    assert torch.equal(fresh.stem.proj.weight, trained.stem.proj.weight)
    assert torch.equal(load_into(fresh, trained.state_dict()).head.fc.weight, trained.head.fc.weight)
