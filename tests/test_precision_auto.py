"""--precision auto: what it picks on each device and why (focalnet.precision.choose_precision), and a run
that resolves it once, computes in it, says it and records it."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

import focalnet.precision as precision_module
from focalnet.cli import main as cli
from focalnet.precision import choose_precision, precision_name
from focalnet.train import TrainConfig, TrainingError
from focalnet.train import loop as engine

CPU = torch.device("cpu")


def cpu_with(monkeypatch, feature, probe):
    """A CPU whose bf16 feature is `feature` (None: none) and whose probe is `probe` (a function)."""
    monkeypatch.setattr(precision_module, "native_bf16_feature", lambda: feature)
    monkeypatch.setattr(precision_module, "bf16_speedup", probe)


def test_a_cpu_without_native_bf16_gets_fp32_without_a_probe(monkeypatch):
    def probe():
        raise AssertionError("the probe ran on a CPU without native bf16")

    cpu_with(monkeypatch, None, probe)
    name, reason = choose_precision(CPU)
    assert name == "fp32" and reason.startswith("fp32: no native bf16 on this CPU")


def test_native_bf16_that_the_probe_finds_faster_gets_bf16(monkeypatch):
    cpu_with(monkeypatch, "avx512_bf16", lambda: 1.6)
    assert choose_precision(CPU) == (
        "bf16", "bf16 autocast: this CPU computes bf16 natively (avx512_bf16), probe 1.6x float32")


@pytest.mark.parametrize("speedup", [0.25, 1.0, 1.1])  # emulated (a flag that says yes), even, barely faster
def test_native_bf16_that_the_probe_finds_no_faster_gets_fp32(monkeypatch, speedup):
    cpu_with(monkeypatch, "amx", lambda: speedup)
    name, reason = choose_precision(CPU)
    assert name == "fp32" and "has amx" in reason and f"{speedup:.2f}x float32" in reason


def test_a_probe_that_fails_in_torch_gives_fp32_and_says_so(monkeypatch):
    def probe():
        raise RuntimeError("could not create a primitive\nmore lines of oneDNN's")

    cpu_with(monkeypatch, "avx512_bf16", probe)
    assert choose_precision(CPU) == (
        "fp32", "fp32: the bf16 speed probe failed (RuntimeError: could not create a primitive)")


def test_an_error_that_is_not_torchs_is_not_swallowed(monkeypatch):
    def probe():
        raise KeyError("a bug in the probe")

    cpu_with(monkeypatch, "avx512_bf16", probe)
    with pytest.raises(KeyError, match="a bug in the probe"):
        choose_precision(CPU)


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_a_gpu_gets_bf16_where_it_computes_it_natively_never_fp16(monkeypatch, native, expected):
    asked = {}

    def is_bf16_supported(including_emulation=True):
        asked["including_emulation"] = including_emulation
        return native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100" if not native else "H200")
    name, reason = choose_precision(torch.device("cuda", 0))
    assert name == expected and asked == {"including_emulation": False}  # an emulated bf16 is no reason
    assert reason.startswith(f"{expected}") and ("H200" if native else "V100") in reason
    assert native or "fp16 needs a GradScaler" in reason


def test_the_real_probe_measures_a_ratio():
    speedup = precision_module.bf16_speedup()
    assert math.isfinite(speedup) and speedup > 0


def test_auto_is_a_setting_of_train_and_fp32_stays_the_default():
    assert TrainConfig().precision == "fp32"  # a run's numbers never change without being asked
    assert TrainConfig.from_dict({"precision": "Auto"}).precision == "auto"
    with pytest.raises(TrainingError, match="unknown precision 'fp8'; choose one of fp32, bf16, fp16, or auto"):
        TrainConfig.from_dict({"precision": "fp8"})
    with pytest.raises(ValueError, match="unknown precision 'auto'"):
        precision_name("auto")  # a setting, not a precision: nothing computes in "auto"


def test_a_run_resolves_auto_once_computes_in_it_says_it_and_records_it(tmp_path, monkeypatch, capsys):
    used = []
    original = engine.autocast

    def spy(device, precision):
        used.append(precision)
        return original(device, precision)

    monkeypatch.setattr(engine, "autocast", spy)  # every training step and evaluation goes through it
    cpu_with(monkeypatch, "avx512_bf16", lambda: 1.6)
    config = tmp_path / "run.yaml"
    config.write_text("data: digits\nprecision: auto\narch: {embed_dim: 8, depths: [1, 1], patch_size: 2}\n"
                      "epochs: 1\nlimit_train: 128\nlimit_eval: 64\nbatch_size: 64\nprogress: 'off'\nthreads: 1\n")
    out = tmp_path / "run"
    assert cli(["train", "-c", str(config), "--output", str(out)]) == 0
    said = capsys.readouterr().out
    assert "note: --precision auto: bf16 autocast: this CPU computes bf16 natively (avx512_bf16)" in said
    assert used and set(used) == {"bf16"}  # training and evaluation alike
    assert yaml.safe_load((out / "config.yaml").read_text())["precision"] == "auto"  # as asked: -c takes it back
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == "bf16" and "avx512_bf16" in summary["precision_choice"]

    # --resume chooses again, on the machine at hand
    used.clear()
    cpu_with(monkeypatch, None, lambda: 1.6)
    assert cli(["train", "--resume", str(out), "--epochs", "2"]) == 0
    assert "note: --precision auto: fp32: no native bf16 on this CPU" in capsys.readouterr().out
    assert used and set(used) == {"fp32"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == "fp32" and summary["epochs"] == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["precision"] == "auto"


def test_a_run_without_auto_records_its_precision_and_says_nothing_about_it(tmp_path, capsys):
    from focalnet.train import train

    summary = train(TrainConfig(data="digits", arch=dict(embed_dim=8, depths=[1, 1], patch_size=2), epochs=1,
                                limit_train=64, limit_eval=64, batch_size=64, progress="off", threads=1,
                                output=str(tmp_path / "run")))
    assert summary["precision"] == "fp32" and "precision_choice" not in summary
    assert "--precision auto" not in capsys.readouterr().out
