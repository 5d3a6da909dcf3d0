"""The core commands: list, info, convert."""
from __future__ import annotations

import json

import pytest
import torch

from focalnet.checkpoints import read_checkpoint, save_model
from focalnet.cli import main
from focalnet.registry import build_model

from conftest import perturb_, small_overrides


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "focalnet_tiny_srf" in out and "28.4" in out and "focalnet_huge_fl4" in out
    assert main(["list", "*iso", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["focalnet_base_iso", "focalnet_small_iso", "focalnet_tiny_iso"]
    assert main(["list", "resnet*"]) == 2
    assert "no registered model matches" in capsys.readouterr().err


def test_info_and_convert(tmp_path, capsys):
    # full-size focalnet_tiny_iso (5.9 M parameters): the authors' layout says nothing of the architecture,
    # the tensor shapes single out the registered variant
    model = perturb_(build_model("focalnet_tiny_iso", num_classes=5))
    save_model(model, tmp_path / "m.safetensors", class_names=list("abcde"))
    assert main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "off.pth"), "--to", "official"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "off.pth"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "official" and info["variant"] == "focalnet_tiny_iso" and info["num_classes"] == 5
    assert info["num_params"] == sum(p.numel() for p in model.parameters())
    for fmt, out in (("hf", "hf_dir"), ("focalnet", "back.safetensors")):
        assert main(["convert", str(tmp_path / "off.pth"), str(tmp_path / out), "--to", fmt]) == 0
    back = read_checkpoint(tmp_path / "back.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict[k], v)
    assert main(["info", str(tmp_path / "hf_dir")]) == 0
    out = capsys.readouterr().out
    assert "hf" in out and "focalnet_tiny_iso" in out
    # a resized post-norm model: --model supplies the flags the authors' layout cannot hold
    small = perturb_(build_model("focalnet_huge_fl4", num_classes=3, **small_overrides("focalnet_huge_fl4")))
    save_model(small, tmp_path / "h.safetensors")
    assert main(["convert", str(tmp_path / "h.safetensors"), str(tmp_path / "timm_dir"), "--to", "timm"]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "timm_dir"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "timm" and info["arch"]["use_post_norm"] is True
    # never overwrite without --force
    assert main(["convert", str(tmp_path / "off.pth"), str(tmp_path / "back.safetensors"), "--to", "focalnet"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_only_project_errors_become_one_line(tmp_path, monkeypatch, capsys):
    import focalnet.cli.models as commands
    from focalnet.registry import UnknownModelError

    save_model(build_model("focalnet_tiny_iso", embed_dim=16, depth=1, num_classes=2), tmp_path / "m.safetensors")
    # a project error: one line, exit status 2, no traceback; the registry's KeyError keeps its plain message
    args = ["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "o.pth"), "--to", "official"]
    assert main([*args, "--model", "focalnet_tiny_sfr"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("focalnet convert: error: unknown model 'focalnet_tiny_sfr'") and len(err.splitlines()) == 1

    def broken(args):  # a bug: a KeyError from inside a command keeps its traceback
        raise KeyError("stem.proj.weight")

    monkeypatch.setattr(commands, "cmd_list", broken)
    with pytest.raises(KeyError) as e:
        main(["list"])
    assert not isinstance(e.value, UnknownModelError)
