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



def _real_commands() -> dict:
    """Every `focalnet` subcommand's name -> its parser, as main() builds them."""
    import argparse

    from focalnet.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _only(name: str, real, error: BaseException):
    """A `focalnet` parser with the one command `name`, which raises `error` from inside its function (its
    real module, and --force when the real command has it), whatever arguments the real one requires."""
    import argparse

    top = argparse.ArgumentParser(prog="focalnet")
    top.add_argument("-v", "--verbose", action="store_true")
    p = top.add_subparsers(dest="command").add_parser(name)

    def run(args):
        raise error

    run.__module__ = real.get_default("func").__module__
    p.set_defaults(func=run)
    if any("--force" in a.option_strings for a in real._actions):
        p.add_argument("--force", action="store_true")
    return top


def test_every_command_applies_one_error_policy(monkeypatch, capsys):
    # a missing optional package, an out-of-memory and an existing output are one line in every command,
    # whichever module defines it: the rule is applied once, in main(), not command by command
    import torch

    from focalnet import cli

    commands = _real_commands()
    assert {"train", "eval", "report", "convert", "push", "bench", "export", "predict"} <= set(commands)
    cases = [
        (ModuleNotFoundError("No module named 'huggingface_hub'", name="huggingface_hub"), "pip install 'focalnet[hub]'"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of memory (OutOfMemoryError)"),
        (MemoryError(), "out of memory (MemoryError)"),
        (FileExistsError("out.pth exists"), "out.pth exists"),
    ]
    for name, real in commands.items():
        for error, expected in cases:
            monkeypatch.setattr(cli, "build_parser", lambda: _only(name, real, error))
            assert cli.main([name]) == 2, (name, error)
            err = capsys.readouterr().err
            assert err.startswith(f"focalnet {name}: error: ") and expected in err and len(err.splitlines()) == 1, err
            if isinstance(error, FileExistsError):
                assert ("pass --force" in err) == any("--force" in a.option_strings for a in real._actions), err
    # a package several extras provide: the command's own group's extra first
    monkeypatch.setattr(cli, "build_parser", lambda: _only("train", commands["train"], ModuleNotFoundError("x", name="timm")))
    assert cli.main(["train"]) == 2 and "pip install 'focalnet[train]'" in capsys.readouterr().err


def test_what_is_not_the_users_to_fix_keeps_its_traceback(monkeypatch, capsys):
    from focalnet import cli

    real = _real_commands()["convert"]
    for error in (ModuleNotFoundError("No module named 'focalnet.gone'", name="focalnet.gone"), OSError("disk"),
                  ValueError("a bug")):
        monkeypatch.setattr(cli, "build_parser", lambda: _only("convert", real, error))
        with pytest.raises(type(error)):
            cli.main(["convert"])
    # -v shows every error with its traceback, the user's too
    monkeypatch.setattr(cli, "build_parser", lambda: _only("convert", real, MemoryError()))
    with pytest.raises(MemoryError):
        cli.main(["-v", "convert"])


def test_install_hint_reads_the_extras():
    from focalnet.cli import install_hint

    assert install_hint("huggingface_hub.errors") == "pip install 'focalnet[hub]'"
    assert install_hint("onnxruntime") == "pip install 'focalnet[export]'"
    assert install_hint("yaml") == "pip install 'focalnet[train]'"  # PyPI's name differs from the import's
    assert install_hint("timm", prefer="viz") == "pip install 'focalnet[viz]'"
    assert install_hint("no_such_package") == "pip install no_such_package"


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_a_failing_standard_output_is_one_line_and_a_closed_pipe_is_quiet(unbuffered):
    # /dev/full: every write fails with ENOSPC (buffered: at the flush; unbuffered: at the print); `| head`: the
    # reader closes the pipe after one line. Real processes: only they have a real standard output to break.
    import os
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):  # /dev/full is Linux's; on Linux (and in CI) the test always runs
        pytest.skip("/dev/full is a Linux device")
    assert os.path.exists("/dev/full")
    env = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
    cmd = [sys.executable, "-m", "focalnet.cli", "list"]
    with open("/dev/full", "w") as full:
        done = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "focalnet list: error: cannot write to standard output: No space left on device; "
        "redirect it to a file on a disk with space"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does
    assert proc.wait(timeout=120) == 0 and proc.stderr.read() == ""
