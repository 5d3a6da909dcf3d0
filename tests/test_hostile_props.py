"""Property-based tests of the boundary (issue 25): hostile values that no example list could tune the code to.

1. The command line: for every command, every numeric, choice or free-text flag is given a value drawn from a
   hostile space (integers to +-2**70, NaN, infinities, 1e400, empty and binary strings, escape codes, the
   real choices); the command must exit 0 or 2, print no traceback, and stay under an address-space limit
   (RLIMIT_AS: an unbounded allocation fails the test instead of swapping the machine).
2. A written checkpoint: one field of its metadata, Hugging Face config, record or sidecar is replaced by an
   arbitrary JSON value, and every reader (read, load, verify, info) must give a result or a FocalNetError.

The flags are read from the CLI's own parser, so a new flag is tested without editing this file. Hypothesis is
derandomized (CI sees the same values every run) and each test has a small, fixed number of examples: the
file runs in about a minute on two cores. Train's flags are drawn with an output folder that already holds a
run, so that values the configuration accepts stop at the folder claim instead of training (the bounds that
act later, image side, workers, batch size, are tested one by one in test_hostile_files.py).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import resource
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from focalnet.checkpoints import save_model, write_checkpoint
from focalnet.cli import build_parser, main
from focalnet.errors import FocalNetError
from focalnet.models import model_from_arch
from hostile import no_hang


ARCH = dict(family="hierarchical", depths=[1, 1], embed_dim=8, focal_levels=[1, 1], focal_windows=[3, 3], num_classes=10,
            in_chans=1)
PRE = dict(mean=[0.3], std=[0.4], img_size=8)
PROPS = dict(deadline=None, derandomize=True, database=None,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                    HealthCheck.data_too_large])
# what a case may add to the process's address space: far above a tiny model's needs, far below a bomb's
HEADROOM = 6 * 2**30
# flags that name files or folders: given their own tests, not values
PATHS = {"--data", "--data-dir", "--output", "--out", "-o", "--resume", "--pretrained", "--checkpoint", "--config",
         "-c", "--arch", "--model", "--amp", "--set"}

HOSTILE = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-1e-400", "0", "-0", "-1", "1", "2", "7", "999", "100000",
                     "4097", "0x10", "1_000", "", " ", "banana", "\x1b[31mred", "a\nb", "\x00", "\ud800", "1" * 400,
                     "cpu", "cuda", "cuda:7", "mps", "tpu", "meta", "sgd", "adamw", "lamb", "fp8"]),
    st.text(max_size=12),
)


def _value_flags(command: str) -> list[tuple[str, tuple]]:
    """(flag, choices) of every flag of `command` that takes a value which is not a path."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    out = []
    for a in sub._actions:
        if not a.option_strings or a.nargs == 0 or a.option_strings[0] in PATHS or a.help == argparse.SUPPRESS:
            continue
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
            continue
        out.append((a.option_strings[0], tuple(a.choices or ())))
    return out


@contextlib.contextmanager
def _bounded(seconds: int = 90):
    """The address space capped at its current size + HEADROOM, and an alarm: a case that allocates without
    bound or hangs fails instead of taking the machine down."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        now = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (now + HEADROOM, hard))
    try:
        with no_hang(seconds):
            yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run_cli(argv: list[str]) -> tuple[int, str]:
    """main(argv) in this process, bounded: (exit code, stderr)."""
    err, out = io.StringIO(), io.StringIO()
    with _bounded(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 2
    logging.getLogger("focalnet").handlers.clear()
    return int(code or 0), err.getvalue()


def _assert_handled(argv: list[str]) -> None:
    code, err = run_cli(argv)
    assert code in (0, 2) and "Traceback" not in err and "MemoryError" not in err, (argv, code, err[-2000:])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("props")
    ckpt = root / "gray.safetensors"
    save_model(model_from_arch(ARCH), ckpt, class_names=[str(i) for i in range(10)], preprocessing=PRE)
    photo = root / "photo.png"
    Image.new("L", (12, 10), 128).save(photo)
    run = root / "run"  # a folder that holds a run: train stops at the claim once its flags are accepted
    run.mkdir()
    (run / "config.yaml").write_text("data: digits\n")
    (run / "summary.json").write_text("{}\n")
    return dict(root=root, ckpt=ckpt, photo=photo, run=run)


def _base(command: str, files: dict, case: int) -> list[str]:
    out = files["root"] / f"out{case}"
    return {
        "info": ["info", str(files["ckpt"])],
        "verify": ["verify", str(files["ckpt"])],
        "convert": ["convert", str(files["ckpt"]), str(out), "--to", "hf"],
        "predict": ["predict", "--checkpoint", str(files["ckpt"]), str(files["photo"])],
        "eval": ["eval", str(files["ckpt"]), "--data", "digits", "--limit", "8", "--output", str(out)],
        "export": ["export", "--checkpoint", str(files["ckpt"]), "--format", "torchscript", "--exporter", "torchscript",
                   "--no-verify", "--out", str(out) + ".pt"],
        "train": ["train", "--data", "digits", "--output", str(files["run"])],
    }[command]


COMMANDS = ("info", "verify", "convert", "predict", "eval", "export", "train")


def test_each_base_command_runs(files):
    """The property below means something only if each base command line works as it is: every value it
    then gets is the one thing that can make it fail (train stops at its folder, which holds a run)."""
    for command in COMMANDS:
        code, err = run_cli(_base(command, files, -1 - COMMANDS.index(command)))
        assert (code, command == "train") in ((0, False), (2, True)), (command, err)
    assert "run" in err and "Traceback" not in err
CASES = {name: _value_flags(name) for name in COMMANDS}
_counter = iter(range(10**9))


@pytest.mark.parametrize("command", [c for c in COMMANDS if CASES[c]])
def test_every_value_flag_takes_hostile_values_without_a_traceback(command, files):
    flags = CASES[command]

    @settings(max_examples=max(6, 2 * len(flags)) if command != "train" else 40, **PROPS)
    @given(data=st.data())
    def check(data):
        flag, choices = data.draw(st.sampled_from(flags), label="flag")
        value = data.draw(st.sampled_from(choices) | HOSTILE if choices else HOSTILE, label="value")
        _assert_handled(_base(command, files, next(_counter)) + [flag, value])

    check()


def test_commands_without_value_flags_take_hostile_positionals(files):
    @settings(max_examples=10, **PROPS)
    @given(value=HOSTILE)
    def check(value):
        for command in ("info", "verify"):
            _assert_handled([command, value])

    check()


# -- one field of a written checkpoint mutated -------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)


def _readers(path: Path) -> None:
    """Every reader of a checkpoint: each gives its result or a FocalNetError (anything else fails the test)."""
    from focalnet import load_model
    from focalnet.checkpoints import read_checkpoint
    from focalnet.factory import verify

    for reader in (read_checkpoint, load_model, verify):
        try:
            with _bounded(60):
                reader(path)
        except FocalNetError:
            pass
    _assert_handled(["info", str(path)])


def _set(obj: dict, dotted: str, value) -> dict:
    """`obj` (JSON-like) with the field at dotted path `dotted` set to `value` (created if absent)."""
    out = json.loads(json.dumps(obj))
    node = out
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {}) if isinstance(node.get(p), dict) or p not in node else node[p]
        if not isinstance(node, dict):
            return out
    node[last] = value
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("written")
    model = model_from_arch(ARCH)
    names = [str(i) for i in range(10)]
    ours = root / "m.safetensors"
    save_model(model, ours, class_names=names, preprocessing=PRE)
    official = root / "o.pth"
    write_checkpoint(model.state_dict(), ARCH, official, fmt="official", class_names=names, preprocessing=PRE)
    hf = root / "hf"
    write_checkpoint(model.state_dict(), ARCH, hf, fmt="hf", class_names=names, preprocessing=PRE)
    with safe_open(str(ours), "pt") as f:
        meta, sd = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    return dict(root=root, meta=meta, sd=sd, official=official, hf=hf)


def _fields(obj: dict, prefix: str = "", depth: int = 0) -> list[str]:
    """Dotted paths of every field of a JSON object, two levels deep."""
    out = []
    for k, v in obj.items():
        out.append(prefix + k)
        if isinstance(v, dict) and depth < 1:
            out += _fields(v, prefix + k + ".", depth + 1)
    return out


def test_every_field_of_a_written_checkpoint_mutated_is_read_or_refused(written):
    meta = written["meta"]
    record = json.loads(meta["focalnet_record"])
    hf_config = json.loads((written["hf"] / "config.json").read_text())
    side = Path(f"{written['official']}.focalnet.json")
    sidecar = json.loads(side.read_text())
    targets = ([("meta", k) for k in meta] + [("record", f) for f in _fields(record)]
               + [("hf", f) for f in _fields(hf_config)] + [("side", f) for f in _fields(sidecar)])
    counter = iter(range(10**9))

    @settings(max_examples=40, **PROPS)
    @given(target=st.sampled_from(targets), value=JSON, as_text=st.booleans())
    def check(target, value, as_text):
        kind, field = target
        case = written["root"] / f"case{next(counter)}"
        case.mkdir()
        if kind in ("meta", "record"):
            m = dict(meta)
            if kind == "meta":
                m[field] = json.dumps(value) if as_text else str(value)
            else:
                m["focalnet_record"] = json.dumps(_set(record, field, value))
            path = case / "m.safetensors"
            save_file(written["sd"], str(path), metadata=m)
        elif kind == "hf":
            path = case / "hf"
            path.mkdir()
            (path / "model.safetensors").write_bytes((written["hf"] / "model.safetensors").read_bytes())
            (path / "config.json").write_text(json.dumps(_set(hf_config, field, value)))
        else:
            path = case / "o.pth"
            path.write_bytes(written["official"].read_bytes())
            Path(f"{path}.focalnet.json").write_text(json.dumps(_set(sidecar, field, value)))
        _readers(path)

    check()
