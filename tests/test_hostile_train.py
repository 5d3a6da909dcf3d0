"""What a hostile user tried against `focalnet train` (issue 14), one regression test per fault: the recipe's
augmentation on real images, resume that restores what ran, one owner per run folder, the model before
the pictures, every value validated in one place, advice that works, a divergence warning, output errors."""
from __future__ import annotations

import errno
import json
import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from focalnet.errors import FocalNetError
from focalnet.train import TrainConfig, TrainingError, train
from focalnet.train.augment import TransformError, guarded_transform
from focalnet.train.config import check_resume_config, resolve_recipe, resolved_config
from focalnet.train.data import DataInfo, build_transform
from focalnet.train.recipes import RECIPES
from focalnet.train.rundir import LOCK_NAME, claim_run_dir

FMNIST = Path("/usr/share/datasets/fashion-mnist")
TINY = dict(data="digits", arch=dict(embed_dim=16, depths=[1, 1], patch_size=1), recipe="small", batch_size=64,
            limit_train=256, epochs=1, progress="off")


def tiny(tmp_path: Path, name: str = "run", **kw) -> TrainConfig:
    return TrainConfig(**{**TINY, "output": str(tmp_path / name), **kw})


# -- 0. the recipe's augmentation never raises on a valid image ------------------------------------------

def _real_images(n: int) -> list:
    """n small real photos-of-things: Fashion-MNIST test images (28 px), else scikit-learn's digits."""
    from PIL import Image

    if FMNIST.is_dir():
        from focalnet.datasets import load_fashion_mnist

        images = load_fashion_mnist(FMNIST, download=False)[0]["test"][0][:n, 0].numpy()
    else:
        from focalnet.datasets import load_digits

        images = load_digits()["train"][0][:n, 0].numpy()
    return [Image.fromarray(a).convert("RGB") for a in images]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_training_transform_takes_thousands_of_real_images(name):
    info = DataInfo("photos", ["a", "b"], 3, None, (0.5,) * 3, (0.25,) * 3, "folder")
    from focalnet.train.recipes import fit_to_data

    recipe, _ = fit_to_data(RECIPES[name], num_train=100_000, kind="folder")  # the fields left to the data
    recipe = recipe.replace(auto_augment=RECIPES["imagenet"].auto_augment)  # the policy that failed
    tf = build_transform(info, recipe, training=True, img_size=24)
    random.seed(0)
    torch.manual_seed(0)
    np.random.seed(0)
    for img in _real_images(2500):  # before the guard: about 1 in 750 raised "bits must be between ... 1 and 8"
        assert tf(img).shape == (3, 24, 24)


def test_posterize_at_full_magnitude_is_clamped_not_raised():
    from timm.data.auto_augment import rand_augment_transform

    img = _real_images(1)[0]
    ra = rand_augment_transform("rand-m10-n1-inc1", {})
    ra.ops = [op for op in ra.ops if op.name == "PosterizeIncreasing"]
    ra.ops[0].prob, ra.ops[0].magnitude_std = 1.0, 0  # 0 bits: Pillow 12+ refuses them
    assert guarded_transform(ra)(img).size == img.size


def test_a_failing_transform_names_the_image_and_the_step(tmp_path):
    from PIL import Image

    root = tmp_path / "data"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            Image.new("RGB", (12, 12)).save(root / split / c / "x.png")
    from focalnet.train.data import SafeImageFolder

    def broken(img):
        raise ValueError("boom")

    ds = SafeImageFolder(root / "train", transform=guarded_transform(broken))
    with pytest.raises(TransformError, match=r"train/a/x\.png.*broken.*ValueError: boom"):
        ds[0]


# -- 1. resume restores exactly what ran ------------------------------------------------------------------

def test_saved_config_holds_resolved_values_that_survive_resume():
    cfg = TrainConfig(data="digits", recipe="imagenet", clip_grad=0.0, auto_augment="none", img_size=32)
    saved = resolved_config(cfg, resolve_recipe(cfg).replace(img_size=32), epochs=3)
    assert saved["clip_grad"] == 0.0 and saved["auto_augment"] == "none"
    back, changes = check_resume_config(TrainConfig.from_dict({"resume": "x"}), saved)
    recipe = resolve_recipe(back)
    assert recipe.clip_grad == 0 and recipe.auto_augment is None and changes == []
    # a configuration saved before this fix (null meant "off" there) keeps meaning off
    old, _ = check_resume_config(TrainConfig.from_dict({"resume": "x"}), {**saved, "clip_grad": None, "auto_augment": None})
    assert resolve_recipe(old).clip_grad == 0 and resolve_recipe(old).auto_augment is None


@pytest.mark.parametrize("flags, refused", [
    ({"data": "fashion-mnist"}, "--data"), ({"output": "elsewhere"}, "--output"), ({"overwrite": True}, "--overwrite"),
    ({"arch": {"embed_dim": 8}}, "--arch"), ({"mixup": 0.5}, "--mixup"), ({"clip_grad": 1.0}, "--clip-grad"),
])
def test_resume_refuses_flags_that_change_the_run_naming_them(flags, refused):
    saved = resolved_config(TrainConfig(data="digits"), resolve_recipe(TrainConfig(data="digits")), epochs=3)
    saved["output"] = "run"
    with pytest.raises(TrainingError, match=refused):
        check_resume_config(TrainConfig.from_dict({"resume": "run", **flags}), saved, run_dir="run")


def test_resume_applies_lr_epochs_and_budget_and_announces_them():
    saved = resolved_config(TrainConfig(data="digits"), resolve_recipe(TrainConfig(data="digits")), epochs=3)
    cfg, changes = check_resume_config(TrainConfig.from_dict({"resume": "r", "lr": 0.001, "epochs": 5,
                                                              "time_budget": 60, "workers": 1}), saved)
    assert (cfg.lr, cfg.epochs, cfg.time_budget, cfg.workers) == (0.001, 5, 60, 1)
    assert len(changes) == 3 and any("--lr" in c for c in changes)


def test_nan_advice_is_a_command_that_runs(tmp_path, capsys):
    """The advice after a non-finite loss (a lower --lr with --resume) is accepted and continues the run."""
    from focalnet.cli import main

    out = tmp_path / "nan"
    base = ["train", "--data", "digits", "--arch", "embed_dim=16", "depths=[1,1]", "patch_size=1", "--recipe", "small",
            "--batch-size", "64", "--limit-train", "256", "--progress", "off", "--output", str(out)]
    assert main(base + ["--epochs", "2", "--lr", "0.001"]) == 0
    last = torch.load(out / "checkpoints" / "last.pth", weights_only=True)
    last["epoch"], last["global_step"] = 1, 4  # as if the run had stopped after epoch 1 on a NaN
    last["history"] = last["history"][:1]
    torch.save(last, out / "checkpoints" / "last.pth")
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--lr", "0.0005", "--progress", "off"]) == 0
    text = capsys.readouterr().out
    assert "changed: --lr 0.001 -> 0.0005" in text and "epoch   2/2" in text


# -- 2. a run folder has one owner ------------------------------------------------------------------------

def test_a_finished_run_without_last_pth_is_not_overwritten(tmp_path):
    out = tmp_path / "done"
    out.mkdir()
    for name in ("model.safetensors", "summary.json", "metrics.jsonl"):
        (out / name).write_text("the old run")
    with pytest.raises(TrainingError, match="already holds a run.*--overwrite"):
        train(tiny(tmp_path, "done"))
    assert (out / "summary.json").read_text() == "the old run"


def test_overwrite_removes_every_file_of_the_old_run_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    (out / "pictures").mkdir(parents=True)
    (out / "eval").mkdir()
    for name in ("report.md", "pictures/a.png", "eval/eval.json", "summary.json", "notes.txt"):
        (out / name).write_text("old")
    (out / ".metrics.jsonl.k3j2.tmp").write_text("left by a kill")
    train(tiny(tmp_path, overwrite=True))
    assert not (out / "report.md").exists() and not (out / "pictures").exists() and not (out / "eval").exists()
    assert (out / "notes.txt").read_text() == "old" and json.loads((out / "summary.json").read_text())["epochs"] == 1
    assert not list(out.glob(".*.tmp")) and not (out / LOCK_NAME).exists()


def test_a_live_lock_refuses_a_second_writer_and_a_stale_one_is_recovered(tmp_path):
    out = tmp_path / "run"
    lock = claim_run_dir(out, resume=False, overwrite=False, say=lambda s: None)
    with pytest.raises(TrainingError, match=f"in use by another training \\(pid {os.getpid()}"):
        train(tiny(tmp_path))
    lock.release()
    (out / LOCK_NAME).write_text(json.dumps(dict(pid=2**22 + 7, host=socket.gethostname(), started="yesterday")))
    said = []
    claim_run_dir(out, resume=False, overwrite=False, say=said.append).release()
    assert any("stale lock" in s for s in said)


# -- 4. odd class names never lose the run ---------------------------------------------------------------

def test_a_non_utf8_class_folder_keeps_the_model_and_its_names(tmp_path):
    from PIL import Image

    from focalnet.checkpoints import read_checkpoint

    root = os.fsencode(tmp_path / "odd")
    names = [b"caf\xff", b"plain & spaces"]
    for split, n in ((b"train", 4), (b"val", 2)):
        for c in names:
            d = os.path.join(root, split, c)
            os.makedirs(d)
            for i in range(n):
                Image.new("RGB", (12, 12), (40 * i, 9, 90)).save(os.path.join(d, b"img\xfe %d.png" % i))
    cfg = TrainConfig(data=os.fsdecode(root), arch=dict(embed_dim=16, depths=[1, 1], patch_size=2), img_size=16,
                      recipe="small", batch_size=4, epochs=1, progress="off", output=str(tmp_path / "run"))
    summary = train(cfg)
    out = tmp_path / "run"
    assert read_checkpoint(out / "model.safetensors").class_names == [os.fsdecode(c) for c in names]
    assert b"caf\xff" in (out / "confusion.csv").read_bytes() and (out / "confusion.png").is_file()
    assert "warnings" not in summary


def test_a_failing_plot_is_a_warning_and_the_model_is_written(tmp_path, monkeypatch, capsys):
    from focalnet.train import artifacts

    def broken(*a, **k):
        raise RuntimeError("no font")

    monkeypatch.setattr(artifacts, "plot_confusion", broken)
    monkeypatch.setattr(artifacts, "plot_curves", broken)
    summary = train(tiny(tmp_path))
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "checkpoints" / "last.pth").is_file()
    assert any("no font" in w for w in summary["warnings"]) and "warning: could not write" in capsys.readouterr().out


# -- 7. every value validated in one place ---------------------------------------------------------------

@pytest.mark.parametrize("key, value", [
    ("lr", 0), ("time_budget", 0), ("time_budget", -5), ("epochs", 0), ("epochs", -1), ("img_size", 0),
    ("eval_every", 0), ("hflip", 2), ("mixup", -1), ("weight_decay", -1), ("smoothing", 1.5), ("drop_path", 1.5),
    ("deterministic", "no"), ("lr", float("nan")), ("epochs", 2.5), ("batch_size", True), ("amp", "fp8"),
    ("arch", {"embed_dim": -4}), ("arch", {"depths": [0, 0]}), ("arch", {"depths": 2}), ("arch", {"banana": 1}),
])
def test_bad_values_are_refused_naming_the_key(key, value):
    with pytest.raises(TrainingError, match=key if key != "arch" else "--arch"):
        TrainConfig.from_dict({key: value})


def test_bad_values_from_yaml_and_flags_are_one_line_errors(tmp_path, capsys):
    from focalnet.cli import main

    (tmp_path / "c.yaml").write_text('data: digits\ndeterministic: "no"\n')
    assert main(["train", "-c", str(tmp_path / "c.yaml")]) == 2
    assert "--deterministic (YAML key deterministic) must be true or false" in capsys.readouterr().err
    assert main(["train", "--data", "digits", "--smoothing", "1.5"]) == 2
    assert main(["eval", "x.safetensors", "--data", "digits", "--limit", "0"]) == 2
    err = capsys.readouterr().err
    assert "--smoothing" in err and "--limit must be an integer >= 1" in err


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "d" / split / c).mkdir(parents=True)
            Image.new("RGB", (12, 12)).save(tmp_path / "d" / split / c / "x.png")
    (tmp_path / "d" / "train" / "empty").mkdir()
    with pytest.raises(FocalNetError, match="'empty'"):
        train(TrainConfig(data=str(tmp_path / "d"), img_size=16, recipe="small", epochs=1, progress="off",
                          output=str(tmp_path / "run")))


# -- 8. a divergence warning ------------------------------------------------------------------------------

def test_a_run_that_learns_nothing_is_warned_about_with_a_lower_lr(tmp_path, capsys):
    summary = train(tiny(tmp_path, epochs=2, lr=1.0, limit_train=512))
    warning = " ".join(summary.get("warnings", []))
    assert "not learning" in warning and "--lr 0.1" in warning
    assert "warning: the run is not learning" in capsys.readouterr().out


# -- 5. output folders that cannot be written -------------------------------------------------------------

def test_output_naming_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(FocalNetError, match="is a file"):
        train(tiny(tmp_path, "f"))
    assert (tmp_path / "f").read_text() == "mine"


def test_a_read_only_output_folder_is_one_line_naming_it(tmp_path, monkeypatch):
    import tempfile

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(FocalNetError, match=f"{tmp_path / 'run'}.*read-only"):
        train(tiny(tmp_path))


# -- 9. values that are wrong only together, a garbled lock (issue 25) -------------------------------------

def _one_cli_error(capsys, argv: list[str]) -> str:
    from focalnet.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def test_mixup_with_an_odd_batch_is_refused_before_any_work(tmp_path, capsys):
    # a folder takes the imagenet recipe (Mixup 0.8, CutMix 1.0): batch 1 used to run 0 steps and succeed
    out = tmp_path / "run"
    line = _one_cli_error(capsys, ["train", "--data", str(tmp_path / "photos"), "--batch-size", "1",
                                   "--output", str(out)])
    assert "--batch-size 1" in line and "--mixup 0.8" in line and "--cutmix 1" in line
    assert not out.exists()  # refused before the folder was taken
    with pytest.raises(TrainingError, match="--batch-size 3 .*--batch-size 4, or --mixup 0 --cutmix 0"):
        tiny(tmp_path, batch_size=3, mixup=0.2, cutmix=0.0)
    tiny(tmp_path, batch_size=3, mixup=0.0, cutmix=0.0)  # no mixing: any batch
    tiny(tmp_path, batch_size=2, mixup=0.2)


def test_mixup_the_data_switches_on_is_checked_against_the_batch():
    from focalnet.train.config import validate_recipe
    from focalnet.train.recipes import fit_to_data

    # finetune leaves Mixup/CutMix to the data: on a large folder they come on, with the batch the user gave
    recipe, _ = fit_to_data(RECIPES["finetune"].replace(batch_size=5), num_train=100_000, kind="folder")
    with pytest.raises(TrainingError, match="--batch-size 5 with Mixup/CutMix"):
        validate_recipe(recipe)
    validate_recipe(fit_to_data(RECIPES["finetune"], num_train=100_000, kind="folder")[0])  # its own batch: 32


def test_a_min_lr_above_the_base_lr_is_refused_naming_both(tmp_path, capsys):
    with pytest.raises(TrainingError, match=r"--min-lr 0\.5 is above --base-lr 0\.032"):
        tiny(tmp_path, min_lr=0.5)  # the small recipe's base rate
    with pytest.raises(TrainingError, match=r"--min-lr 0\.002 is above --base-lr 0\.001"):
        TrainConfig.from_dict({"data": "digits", "base_lr": 1e-3, "min_lr": 2e-3})
    line = _one_cli_error(capsys, ["train", "--data", "digits", "--min-lr", "1", "--output", str(tmp_path / "r")])
    assert "--min-lr 1 is above --base-lr 0.032" in line
    tiny(tmp_path, min_lr=0.032)  # a flat end is allowed


@pytest.mark.parametrize("pid", ["abc", 2**70, 1.5, None, [1]])
def test_a_garbled_lock_is_refused_in_one_line_never_a_traceback(tmp_path, capsys, pid):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps(dict(pid=pid, host=socket.gethostname(), started="yesterday")))
    with pytest.raises(TrainingError, match=f"locked by .*{LOCK_NAME}.*is not a process id.*delete that file"):
        claim_run_dir(out, resume=False, overwrite=False, say=lambda s: None)
    assert (out / LOCK_NAME).exists()  # whether its owner runs cannot be told: left for the user
    line = _one_cli_error(capsys, ["train", "--data", "digits", "--output", str(out)])
    assert "is not a process id" in line
