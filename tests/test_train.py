"""Whole runs: digits to 95% in under a minute, exact resume after SIGKILL, two processes under torchrun,
corrupt images, NaN losses, class-count mismatches, the CLI and the report files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

import focalnet
from focalnet.train import budget
from focalnet.train import loop as engine
from focalnet.cli import main as cli
from focalnet.train import TrainConfig, TrainingError, evaluate_checkpoint, train

from test_data import make_image_tree

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
# one intra-op thread per training: with `pytest -n 2` on two cores, two 2-thread pools would slow each other 5-9x
DIGITS = dict(data="digits", arch=dict(embed_dim=32, depths=[1, 1], patch_size=1), batch_size=64, base_lr=0.25,
              progress="off", threads=1)
TINY_DIGITS = dict(data="digits", arch=dict(embed_dim=8, depths=[1, 1], patch_size=2), batch_size=64, base_lr=0.1,
                   limit_train=384, progress="off", threads=1)


def run_cli(*args: str, env_extra: dict | None = None, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    env.update(env_extra or {})
    return subprocess.Popen([sys.executable, "-m", "focalnet.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, **kw)


def test_digits_reach_95_percent_in_under_a_minute_and_leave_a_full_report(tmp_path):
    """One run, checked from every side (a single test, so that parallel test workers never train it twice)."""
    out = tmp_path / "run"
    t0 = time.perf_counter()
    summary = train(TrainConfig(**DIGITS, epochs=10, output=str(out)))
    seconds = time.perf_counter() - t0
    assert summary["final"]["top1"] >= 95.0, summary["final"]
    assert seconds < 60
    assert summary["num_test"] == 360 and summary["epochs"] == 10

    # the report
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, 11))
    assert {"train_loss", "lr", "test_top1", "test_top5", "test_loss", "train_img_per_s", "epoch_time"} <= set(lines[0])
    s = json.loads((out / "summary.json").read_text())
    for key in ("final", "best", "epochs", "train_time_s", "wall_time_s", "train_img_per_s", "num_params", "macs"):
        assert s[key] is not None, key
    assert s["final"]["top1"] == lines[-1]["test_top1"]
    assert s["best"]["top1"] == max(r["test_top1"] for r in lines)
    assert len(s["per_class_top1"]) == 10
    for png in ("curves.png", "confusion.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (out / "confusion.csv").read_text().splitlines()
    assert len(rows) == 11 and sum(int(v) for r in rows[1:] for v in r.split(",")[1:]) == 360
    # the resolved configuration reproduces the run: every recipe value is filled in
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["recipe"] == "small" and cfg["epochs"] == 10 and cfg["base_lr"] == 0.25 and cfg["weight_decay"] == 0.05
    assert TrainConfig.from_dict(cfg).arch == DIGITS["arch"]

    # the checkpoints load with weights_only=True, with load_model and with create_model
    state = torch.load(out / "checkpoints" / "last.pth", weights_only=True)
    assert {"model", "arch", "variant", "class_names", "optimizer", "scheduler", "scaler", "ema", "epoch", "rng",
            "config"} <= set(state)
    assert state["epoch"] == 10 and state["class_names"] == [str(i) for i in range(10)]
    a = focalnet.load_model(out / "checkpoints" / "last.pth")
    b = focalnet.create_model("focalnet_tiny_srf", pretrained=out / "checkpoints" / "last.pth", embed_dim=32,
                              depths=(1, 1), focal_levels=(2, 2), focal_windows=(3, 3), patch_size=1)
    c = focalnet.load_model(out / "model.safetensors")
    x = torch.randn(2, 1, 8, 8)
    for m in (a, b, c):
        m.eval()
    torch.testing.assert_close(a(x), b(x))
    torch.testing.assert_close(a(x), c(x))
    assert c.class_names == [str(i) for i in range(10)]
    best = torch.load(out / "checkpoints" / "best.pth", weights_only=True)
    assert best["metrics"]["test_top1"] == summary["best"]["top1"]
    # focalnet eval gives the training run's number
    r = evaluate_checkpoint(str(out / "model.safetensors"), "digits", progress="off")
    assert r["top1"] == pytest.approx(summary["final"]["top1"])

    # the data set's normalisation travels with the weights, so that pictures and predict feed them alike
    assert c.preprocessing["mean"] == pytest.approx(state["data"]["mean"]) and c.preprocessing["img_size"] == 8
    assert a.preprocessing["mean"] == pytest.approx(state["data"]["mean"])

    # `focalnet report`: report.md with the figures of summary.json and pictures of one test image per class
    from focalnet.inspect import write_run_report

    assert cli(["report", str(out), "--pictures", "3"]) == 0
    md = (out / "report.md").read_text()
    assert f"**{s['final']['top1']:.2f} %**" in md and "## Per epoch" in md and "## Per class" in md
    pics = sorted(p.name for p in (out / "pictures").glob("*_modulation.png"))
    assert len(pics) == 3 and all(f"](pictures/{p})" in md for p in pics)
    assert (out / "pictures" / "kernels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = (out / "report.md").read_text()
    with pytest.raises(FileExistsError, match="report.md exists"):
        write_run_report(out)
    assert (out / "report.md").read_text() == before
    assert cli(["report", str(out)]) == 2  # exists: refused, with --force as the way out
    assert cli(["report", str(tmp_path / "nothing")]) == 2

    # an existing run is never overwritten, and a resumed run keeps its configuration
    with pytest.raises(TrainingError, match="already holds a run.*--resume"):
        train(TrainConfig(**DIGITS, epochs=1, output=str(out)))
    with pytest.raises(TrainingError, match="--weight-decay 0.5"):  # --lr may change on resume; the recipe may not
        train(TrainConfig(**{**DIGITS, "weight_decay": 0.5}, resume=str(out)))


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def test_resume_after_sigkill_is_bit_exact(tmp_path):
    args = ["train", "--data", "digits", "--arch", "embed_dim=8", "depths=[1,1]", "patch_size=2", "--batch-size", "32",
            "--lr", "0.1", "--epochs", "4", "--deterministic", "--workers", "1", "--ema", "--progress", "off"]
    whole = run_cli(*args, "--output", str(tmp_path / "whole"))
    killed = run_cli(*args, "--output", str(tmp_path / "killed"))
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and killed.poll() is None:
        if metrics.exists() and metrics.read_text().strip():
            break
        time.sleep(0.02)
    assert killed.poll() is None, killed.communicate()[0]
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    done = torch.load(tmp_path / "killed" / "checkpoints" / "last.pth", weights_only=True)["epoch"]
    assert 1 <= done < 4
    resumed = run_cli("train", "--resume", str(tmp_path / "killed"), "--progress", "off")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"resumed from" in out and f"after epoch {done}" in out
    out, _ = whole.communicate(timeout=300)
    assert whole.returncode == 0, out
    a, b = weights(tmp_path / "whole" / "checkpoints" / "last.pth"), weights(tmp_path / "killed" / "checkpoints" / "last.pth")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ema_a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pth", weights_only=True)["ema"]
    ema_b = torch.load(tmp_path / "killed" / "checkpoints" / "last.pth", weights_only=True)["ema"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    ma = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    mb = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len(mb) == 4
    assert [json.loads(x)["test_top1"] for x in ma] == [json.loads(x)["test_top1"] for x in mb]


def test_two_processes_under_torchrun_stay_identical(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "focalnet.cli", "train", "--data", "digits", "--arch", "embed_dim=8", "depths=[1,1]", "patch_size=2",
           "--batch-size", "32", "--lr", "0.1", "--epochs", "2", "--limit-train", "512", "--progress", "off",
           "--output", str(out)]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["replicas_identical"] is True
    assert s["num_test"] == 360  # the evaluation shards add up to the whole test split, no duplicates
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # one writer
    assert p.stdout.count("epoch   1/2") == 1
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["batch_size"] == 32
    # 512 images / (2 processes x 32) = 8 steps per epoch
    assert json.loads(lines[-1])["step"] == 16


def test_corrupt_image_stops_with_its_path_or_is_skipped(tmp_path, capsys):
    root = make_image_tree(tmp_path / "imgs", per_class=7, size=16)
    bad = root / "train" / "dog" / "zz_truncated.jpg"  # 15 training images in 3 batches of 5: none is dropped
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 10, 10)).save(bad)
    bad.write_bytes(bad.read_bytes()[:60])  # cut the file short
    args = ["train", "--data", str(root), "--recipe", "small", "--img-size", "16", "--arch", "embed_dim=8",
            "depths=[1,1]", "patch_size=2", "--batch-size", "5", "--epochs", "1", "--progress", "off", "--threads", "1"]
    assert cli([*args, "--output", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "zz_truncated.jpg" in err and "--skip-bad-images" in err and "Traceback" not in err
    assert cli([*args, "--output", str(tmp_path / "b"), "--skip-bad-images"]) == 0
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert s["bad_images_skipped"] == 1


class NaNAfter(nn.Module):
    """Wraps a model; its training outputs become NaN from the n-th training forward on."""

    def __init__(self, model: nn.Module, n: int) -> None:
        super().__init__()
        self.model, self.n, self.calls = model, n, [0]

    def forward(self, x):
        out = self.model(x)
        if self.training:
            self.calls[0] += 1
            if self.calls[0] >= self.n:
                out = out * float("nan")
        return out


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    model = focalnet.create_model("focalnet_tiny_srf", embed_dim=8, depths=(1, 1), focal_levels=(2, 2),
                                  focal_windows=(3, 3), patch_size=2, in_chans=1, num_classes=10)
    cfg = TrainConfig(**TINY_DIGITS, epochs=3, output=str(tmp_path / "nan"))
    with pytest.raises(engine.NonFiniteLossError) as e:
        train(cfg, model=NaNAfter(model, n=9))  # 6 steps per epoch: the 3rd step of epoch 2
    msg = str(e.value)
    assert "step 9 (epoch 2, batch 3 of 6)" in msg and str(tmp_path / "nan" / "checkpoints" / "last.pth") in msg
    state = torch.load(tmp_path / "nan" / "checkpoints" / "last.pth", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_class_count_mismatch_needs_reset_head(tmp_path):
    run = tmp_path / "digits"
    train(TrainConfig(**TINY_DIGITS, epochs=1, output=str(run)))
    root = make_image_tree(tmp_path / "imgs", per_class=4, size=16)
    base = dict(data=str(root), recipe="small", img_size=16, batch_size=4, epochs=1, progress="off", threads=1,
                pretrained=str(run / "checkpoints" / "last.pth"), in_chans=1)
    with pytest.raises(TrainingError, match="10-class head but the data .* has 2 classes.*--reset-head"):
        train(TrainConfig(**base, output=str(tmp_path / "a")))
    s = train(TrainConfig(**base, reset_head=True, output=str(tmp_path / "b")))
    assert s["epochs"] == 1 and len(s["classes"]) == 2


def test_yaml_config_and_flags(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: digits\nlr: 0.3\narch: {embed_dim: 8, depths: [1, 1], patch_size: 2}\nepochs: 1\n"
                   "limit-train: 128\nprogress: 'off'\n")
    out = tmp_path / "run"
    assert cli(["train", "-c", str(cfg), "--lr", "0.2", "--arch", "embed_dim=16", "--output", str(out), "--threads", "1"]) == 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["lr"] == 0.2 and resolved["arch"] == {"embed_dim": 16, "depths": [1, 1], "patch_size": 2}
    assert resolved["limit_train"] == 128 and resolved["recipe"] == "small"
    cfg.write_text("data: digits\nlearning_rate: 0.3\n")
    assert cli(["train", "-c", str(cfg), "--output", str(tmp_path / "x")]) == 2
    assert "unknown configuration key(s): learning_rate" in capsys.readouterr().err
    # focalnet eval prints top-1/top-5 and per-class accuracy and writes the confusion matrix
    assert cli(["eval", str(out / "checkpoints" / "last.pth"), "--data", "digits", "--output", str(tmp_path / "ev"),
                "--progress", "off"]) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "top-5" in printed and "most confused with" in printed
    assert (tmp_path / "ev" / "confusion.png").exists() and json.loads((tmp_path / "ev" / "eval.json").read_text())["images"] == 360


def test_in22k_checkpoint_evaluates_through_the_1k_label_map(tmp_path):
    """A 21842-class head on 1000-class data: its first 1000 rows (the reordered ImageNet-1K classes) are used."""
    from PIL import Image

    model = focalnet.create_model("focalnet_tiny_srf", embed_dim=8, depths=(1, 1), focal_levels=(2, 2),
                                  focal_windows=(3, 3), num_classes=21842)
    with torch.no_grad():  # make row k the winner for images of brightness k
        model.head.fc.weight.zero_()
        model.head.fc.bias.copy_(-torch.arange(21842, dtype=torch.float32))
        model.head.fc.bias[3] = 100.0  # 22K row 3 = 1K class 3
    focalnet.save_model(model, tmp_path / "in22k.safetensors")
    root = tmp_path / "imagenet"
    classes = [f"n{i:08d}" for i in range(1000)]
    for c in classes:
        (root / "val" / c).mkdir(parents=True)
    for c in (classes[3], classes[7]):
        Image.new("RGB", (40, 30), (120, 90, 60)).save(root / "val" / c / "a.png")
    r = evaluate_checkpoint(str(tmp_path / "in22k.safetensors"), str(root), img_size=32, progress="off")
    assert r["head"].startswith("ImageNet-22K head sliced") and r["images"] == 2
    assert r["top1"] == 50.0 and r["confusion"][3][3] == 1 and r["confusion"][7][3] == 1


def test_updates_that_fit_count_one_evaluation_per_begun_epoch():
    # 30 updates per epoch at 1 s, 10 s per evaluation: 3 epochs (70 updates + 3 evaluations) fill 100 s
    assert budget.updates_that_fit(100, update_s=1, eval_s=10, updates_per_epoch=30) == 70
    assert budget.updates_that_fit(35, update_s=1, eval_s=10, updates_per_epoch=30) == 25  # part of one epoch
    assert budget.updates_that_fit(5, update_s=1, eval_s=10, updates_per_epoch=30) == 1  # at least one step
    assert budget.updates_that_fit(5, update_s=1, eval_s=10, updates_per_epoch=30, minimum=0) == 0


def test_time_budget_ends_inside_the_last_epoch_with_the_cosine_finished(tmp_path, monkeypatch):
    # the plan (8 optimizer steps, 6 per epoch) is forced so that the outcome does not depend on this machine's speed
    # the first plan, the re-plan after epoch 1 (6 + 2 = 8 steps again), then the check before epoch 2 whether the
    # plan leaves time unused: 2 more steps fit, as planned, so it is kept
    plans = iter([8, 2, 2])
    monkeypatch.setattr(budget, "updates_that_fit", lambda budget_s, **kw: next(plans))
    out = tmp_path / "budget"
    s = train(TrainConfig(**TINY_DIGITS, time_budget=60, output=str(out)))
    assert s["updates"] == 8 and s["epochs"] == 2 and s["epochs_trained"] == pytest.approx(8 / 6, abs=0.01)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # under a time budget evaluations are spaced (budget.eval_interval); the last epoch is always evaluated
    assert [r["step"] for r in lines] == [6, 8] and "test_top1" in lines[-1]
    min_lr = yaml.safe_load((out / "config.yaml").read_text())["min_lr"] * 64 / 1024
    assert lines[-1]["lr"] == pytest.approx(min_lr, rel=1e-6)  # the cosine reached its end at step 8
    state = torch.load(out / "checkpoints" / "last.pth", weights_only=True)
    assert state["total_updates"] == 8 and state["global_step"] == 8


def test_time_budget_plans_from_measured_speed(tmp_path):
    s = train(TrainConfig(**TINY_DIGITS, time_budget=4, output=str(tmp_path / "b")))
    assert s["epochs"] == -(-s["updates"] // 6) and s["updates"] >= 1
    assert s["train_time_s"] < 2 * 4 + 2  # planned to fit, with room for a loaded machine


# -- one table for the recipe, one spelling for precision, one layout for last.pth ----------------------


def test_every_recipe_field_is_a_flag_a_yaml_key_and_a_config_field():
    """Recipe (focalnet.train.recipes) is the one table: each field is a TrainConfig field, a `focalnet train`
    flag, a YAML key that reaches the recipe, and a key of config.yaml, derived (betas and eps included)."""
    import dataclasses

    from focalnet.cli import build_parser
    from focalnet.train.config import resolve_recipe, resolved_config
    from focalnet.train.recipes import Recipe, recipe_fields

    assert {"betas", "eps"} <= set(recipe_fields())
    parser = build_parser()
    train_parser = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith(" train"))
    flags = {o for a in train_parser._actions for o in a.option_strings}
    config_fields = {f.name: f for f in TrainConfig.fields()}
    for f in dataclasses.fields(Recipe):
        if f.name in ("name", "description"):
            continue
        assert f.name in config_fields and config_fields[f.name].metadata["help"] == f.metadata["help"], f.name
        assert "--" + f.name.replace("_", "-") in flags, f.name
    values = dict(eps=1e-6, betas=[0.8, 0.95], mixup_prob=0.5, interpolation="bilinear", epochs=7)
    cfg = TrainConfig.from_dict({**values, "data": "digits"})
    recipe = resolve_recipe(cfg)
    assert recipe.eps == 1e-6 and recipe.betas == (0.8, 0.95) and recipe.mixup_prob == 0.5
    saved = resolved_config(cfg, recipe, epochs=7)
    assert set(recipe_fields()) <= set(saved) and saved["betas"] == [0.8, 0.95] and saved["eps"] == 1e-6
    args = parser.parse_args(["train", "--betas", "0.8", "0.95", "--eps", "1e-6"])
    assert args.betas == [0.8, 0.95] and args.eps == 1e-6
    with pytest.raises(TrainingError, match="--betas .* takes 2 values"):
        TrainConfig(betas=[0.9])
    with pytest.raises(TrainingError, match="--eps .* must be > 0"):
        TrainConfig(eps=0.0)


def test_a_new_recipe_field_is_one_edit():
    """What a new Recipe field gets from the derivation alone: a config field at the recipe's place, with the
    Recipe's help and range, None (the recipe's value) unless given."""
    import dataclasses

    from focalnet.train.config import with_recipe_fields
    from focalnet.train.recipes import Recipe, at_least, setting

    @dataclasses.dataclass(frozen=True)
    class Wider(Recipe):
        knob: float = setting(0.5, "a new knob", check=at_least(0))

    @dataclasses.dataclass
    @with_recipe_fields(after="recipe", recipe=Wider)
    class Config:
        data: str = "digits"
        recipe: str = "auto"
        seed: int = 0

    names = [f.name for f in dataclasses.fields(Config)]
    assert names[:2] == ["data", "recipe"] and names[-2:] == ["knob", "seed"] and "eps" in names
    knob = next(f for f in dataclasses.fields(Config) if f.name == "knob")
    assert Config().knob is None and knob.metadata["help"] == "a new knob" and knob.metadata["recipe"]
    assert knob.metadata["check"][0](0.1) and not knob.metadata["check"][0](-1)


def test_precision_has_one_spelling_and_the_old_one_is_read_with_a_note(capsys):
    from focalnet.cli import build_parser
    from focalnet.cli.train import config_from_args
    from focalnet.errors import FocalNetError
    from focalnet.precision import PRECISIONS, old_spelling_note, parse_precision, precision_name

    assert PRECISIONS == ("fp32", "bf16", "fp16")
    assert [parse_precision(n) for n in ("fp32", "bf16", "fp16")] == [torch.float32, torch.bfloat16, torch.float16]
    assert [precision_name(n) for n in ("none", "float32", "bfloat16", "float16", "BF16")] == \
        ["fp32", "fp32", "bf16", "fp16", "bf16"]
    assert old_spelling_note("bf16") is None and "--precision bf16" in old_spelling_note("bfloat16")
    with pytest.raises(FocalNetError, match="unknown precision 'fp8'; choose one of fp32, bf16, fp16"):
        parse_precision("fp8")
    parser = build_parser()
    cfg = config_from_args(parser.parse_args(["train", "--amp", "bf16"]))
    assert cfg.precision == "bf16" and "now spelled --precision bf16" in capsys.readouterr().err
    assert config_from_args(parser.parse_args(["train", "--precision", "fp16"])).precision == "fp16"
    assert capsys.readouterr().err == ""
    assert TrainConfig.from_dict({"amp": "none"}).precision == "fp32"  # a config.yaml written before
    with pytest.raises(TrainingError, match="disagree"):
        TrainConfig.from_dict({"amp": "bf16", "precision": "fp32"})
    with pytest.raises(TrainingError, match="unknown precision"):
        TrainConfig.from_dict({"amp": "fp8"})


# the keys of checkpoints/last.pth as the version before TrainingCheckpoint wrote them, in its order
PREVIOUS_LAYOUT = ("format", "model", "arch", "variant", "class_names", "optimizer", "scheduler", "scaler", "ema",
                   "epoch", "global_step", "total_updates", "best", "history", "train_time", "rng", "config", "data",
                   "preprocessing")


def test_a_last_pth_of_the_previous_layout_resumes(tmp_path):
    """A run checkpointed by the previous version (its dict, its config with `amp` and without betas/eps) resumes
    and finishes; an older file without the optional keys is read with their defaults; a damaged one names
    what it lacks."""
    from focalnet.checkpoints import CheckpointError
    from focalnet.train.state import TrainingCheckpoint

    out = tmp_path / "run"
    train(TrainConfig(**TINY_DIGITS, epochs=1, output=str(out)))
    state = torch.load(out / "checkpoints" / "last.pth", weights_only=True)
    assert set(state) == set(PREVIOUS_LAYOUT)  # the layout on disk did not change
    old_config = {k: v for k, v in state["config"].items() if k not in ("precision", "betas", "eps")}
    old = {k: state[k] for k in PREVIOUS_LAYOUT}
    old["config"] = {**old_config, "amp": "none"}
    torch.save(old, out / "checkpoints" / "last.pth")
    s = train(TrainConfig(resume=str(out), epochs=2, progress="off", threads=1))
    assert s["epochs"] == 2
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["precision"] == "fp32" and "amp" not in saved and saved["betas"] == [0.9, 0.999]

    first = {k: state[k] for k in ("format", "model", "optimizer", "scheduler", "rng", "epoch", "global_step", "config")}
    ckpt = TrainingCheckpoint.from_dict(first, path="old.pth")
    assert ckpt.total_updates is None and ckpt.history == [] and ckpt.best["top1"] == -1.0 and ckpt.class_names == []
    again = TrainingCheckpoint.from_dict(ckpt.to_dict())  # written and read by one description
    assert set(ckpt.to_dict()) == set(PREVIOUS_LAYOUT) and (again.epoch, again.config) == (ckpt.epoch, ckpt.config)
    with pytest.raises(CheckpointError, match="old.pth lacks optimizer"):
        TrainingCheckpoint.from_dict({k: v for k, v in first.items() if k != "optimizer"}, path="old.pth")
    with pytest.raises(CheckpointError, match="'epoch' must be an integer"):
        TrainingCheckpoint.from_dict({**first, "epoch": "1"}, path="old.pth")
