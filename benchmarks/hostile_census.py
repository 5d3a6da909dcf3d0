"""Census of hostile cases through the command line (issue 25): re-runs them all and prints the table.

    python benchmarks/hostile_census.py            # every case (several minutes on two cores)
    python benchmarks/hostile_census.py --quick    # three values per flag instead of all

Each case is one `focalnet ...` command line run in this process (the CLI's own `main`), under an alarm and
an address-space limit, on files built here: hostile files (a FIFO, /dev/zero, symlink loops, a stride-0
tensor, integer/bool/complex/meta/sparse weights, deep nesting, damaged records and sidecars, metadata that
disagrees with the tensors, a YAML alias bomb) given to every reader, and hostile values (huge, negative,
NaN, infinite, empty, binary, escape codes, unknown choices) given to every value flag the parser declares.

An outcome is `ok` (exit 0), `refused` (exit 2 with one error line), or a failure: `traceback`, `hang`
(past the alarm), `memory` (past the address-space limit), `raw-text` (an escape code or newline from a file
printed as is). The table counts cases by command and kind; the last line says whether any case failed.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import resource
import signal
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import torch
from PIL import Image


class Hung(BaseException):
    """Raised by the alarm: a BaseException, so that no `except Exception` on the way can turn a hang into
    an ordinary error."""


ARCH = dict(family="hierarchical", depths=[1, 1], embed_dim=8, focal_levels=[1, 1], focal_windows=[3, 3],
            num_classes=10, in_chans=1)
PRE = dict(mean=[0.3], std=[0.4], img_size=8)
VALUES = ["0", "-1", "1", "2**70", str(2**70), "-" + str(2**70), "nan", "inf", "-inf", "1e400", "1e-400", "100000",
          "", "banana", "\x1b[31mred", "a\nb", "cuda:7", "tpu", "0.5", "3"]
QUICK_VALUES = ["-1", str(2**70), "nan"]
PATH_FLAGS = {"--data", "--data-dir", "--output", "--out", "-o", "--resume", "--pretrained", "--checkpoint", "--config",
              "-c", "--arch", "--model", "--amp", "--set"}
HEADROOM = 6 * 2**30
FAILURES = ("traceback", "hang", "memory", "raw-text")


def run(argv: list[str], seconds: int = 120) -> str:
    """One command line, bounded: its outcome (see the module docstring)."""
    from focalnet.cli import main

    err, out = io.StringIO(), io.StringIO()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        now = int(f.read().split()[0]) * resource.getpagesize()

    def fire(*_):
        raise Hung

    old = signal.signal(signal.SIGALRM, fire)
    resource.setrlimit(resource.RLIMIT_AS, (now + HEADROOM, hard))
    signal.alarm(seconds)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 2
    except Hung:
        return "hang"
    except MemoryError:
        return "memory"
    except BaseException:
        return "traceback"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        logging.getLogger("focalnet").handlers.clear()
    text = err.getvalue() + out.getvalue()
    if "Traceback" in text or "MemoryError" in text:
        return "traceback"
    if "\x1b" in text or any(line.lstrip().startswith("FAKE") for line in text.splitlines()):
        return "raw-text"
    return "ok" if code == 0 else "refused" if code == 2 else "traceback"


def build_files(root: Path) -> dict[str, Path]:
    """Hostile files, by kind, next to a good checkpoint and a photo."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from focalnet.checkpoints import save_model, write_checkpoint
    from focalnet.models import model_from_arch

    model = model_from_arch(ARCH)
    names = [str(i) for i in range(10)]
    good = root / "good.safetensors"
    save_model(model, good, class_names=names, preprocessing=PRE)
    with safe_open(str(good), "pt") as f:
        meta, sd = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    files: dict[str, Path] = {"good": good}

    def variant(name: str, **changes) -> None:
        save_file(sd, str(root / f"{name}.safetensors"), metadata={**meta, **changes})
        files[name] = root / f"{name}.safetensors"

    os.mkfifo(root / "fifo.safetensors")
    files["fifo"] = root / "fifo.safetensors"
    os.symlink("/dev/zero", root / "zero.pth")
    files["device"] = root / "zero.pth"
    os.symlink("loop.pth", root / "loop.pth")
    files["symlink-loop"] = root / "loop.pth"
    torch.save({"model": {**model.state_dict(), "x": torch.zeros(1).expand(2**31)}}, root / "stride0.pth")
    files["stride-0"] = root / "stride0.pth"
    for dtype in (torch.int64, torch.bool, torch.complex64):
        torch.save({"model": {k: v.to(dtype) for k, v in model.state_dict().items()}}, root / f"{dtype}.pth")
        files[f"dtype-{str(dtype)[6:]}"] = root / f"{dtype}.pth"
    for kind, make in (("meta", lambda w: w.to("meta")), ("sparse", lambda w: w.to_sparse())):
        torch.save({"model": {**model.state_dict(), "stem.proj.weight": make(model.stem.proj.weight.detach())}},
                   root / f"{kind}.pth")
        files[f"tensor-{kind}"] = root / f"{kind}.pth"
    deep: list = []
    for _ in range(100):
        deep = [deep]
    torch.save({"model": model.state_dict(), "x": deep}, root / "deep.pth")
    files["nested"] = root / "deep.pth"
    variant("arch-mismatch", arch=json.dumps({**ARCH, "embed_dim": 16}))
    variant("rgb-mean-gray-model", preprocessing=json.dumps({**PRE, "mean": [0.3] * 3, "std": [0.4] * 3}))
    variant("garbled-record", focalnet_record=json.dumps({"written_by": "another tool"}))
    variant("img-size-10e400", preprocessing=json.dumps({**PRE, "img_size": 10**400}))
    variant("escape-names", class_names=json.dumps(["\x1b[2KFAKE: 99.99% cat\n"] * 10))
    official = root / "o.pth"
    write_checkpoint(model.state_dict(), ARCH, official, fmt="official")
    Path(f"{official}.focalnet.json").unlink()
    Path(f"{official}.focalnet.json").mkdir()
    files["folder-sidecar"] = official
    return files


def file_cases(files: dict[str, Path], root: Path, photo: Path) -> list[tuple[str, str, list[str]]]:
    """(command, kind, argv): every hostile file given to every reader."""
    readers = {
        "info": lambda p, i: ["info", str(p)],
        "verify": lambda p, i: ["verify", str(p)],
        "convert": lambda p, i: ["convert", str(p), str(root / f"c{i}"), "--to", "hf"],
        "predict": lambda p, i: ["predict", "--checkpoint", str(p), str(photo)],
        "export": lambda p, i: ["export", "--checkpoint", str(p), "--format", "torchscript", "--no-verify",
                                "--out", str(root / f"e{i}.pt")],
        "eval": lambda p, i: ["eval", str(p), "--data", "digits", "--limit", "8"],
    }
    out, i = [], 0
    for kind, path in files.items():
        if kind == "good":
            continue
        for command, argv in readers.items():
            out.append((command, kind, argv(path, i)))
            i += 1
    out.append(("predict", "fifo-image", ["predict", "--checkpoint", str(files["good"]), str(files["fifo"])]))
    out.append(("predict", "device-image", ["predict", "--checkpoint", str(files["good"]), "/dev/zero"]))
    bomb = root / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]" for k in range(1, 9)]
    bomb.write_text("\n".join(lines) + "\nlr: *a8\n")
    out.append(("train", "yaml-alias-bomb", ["train", "-c", str(bomb), "--output", str(root / "bombrun")]))
    return out


def _value_flags(command: str) -> list[str]:
    from focalnet.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    flags = []
    for a in sub._actions:
        if (not a.option_strings or a.nargs == 0 or a.option_strings[0] in PATH_FLAGS or a.help == argparse.SUPPRESS
                or isinstance(a, (argparse._StoreTrueAction, argparse.BooleanOptionalAction))):
            continue
        flags.append(a.option_strings[0])
    return flags


def value_cases(files: dict[str, Path], root: Path, photo: Path, values: list[str]) -> list[tuple[str, str, list[str]]]:
    """(command, 'flag-values', argv): every hostile value given to every value flag of each command."""
    run_dir = root / "taken"  # train stops at its folder once the configuration accepted the values
    run_dir.mkdir(exist_ok=True)
    (run_dir / "config.yaml").write_text("data: digits\n")
    (run_dir / "summary.json").write_text("{}\n")
    bases = {
        "predict": lambda i: ["predict", "--checkpoint", str(files["good"]), str(photo)],
        "eval": lambda i: ["eval", str(files["good"]), "--data", "digits", "--limit", "8", "--output", str(root / f"v{i}")],
        "export": lambda i: ["export", "--checkpoint", str(files["good"]), "--format", "torchscript", "--exporter",
                             "torchscript", "--no-verify", "--out", str(root / f"x{i}.pt")],
        "convert": lambda i: ["convert", str(files["good"]), str(root / f"y{i}"), "--to", "hf"],
        "train": lambda i: ["train", "--data", "digits", "--output", str(run_dir)],
    }
    out, i = [], 0
    for command, base in bases.items():
        for flag in _value_flags(command):
            for value in values:
                out.append((command, "flag-values", base(i) + [flag, value]))
                i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{len(QUICK_VALUES)} values per flag, not {len(VALUES)}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photo = root / "photo.png"
        Image.new("L", (12, 10), 128).save(photo)
        files = build_files(root)
        cases = file_cases(files, root, photo) + value_cases(files, root, photo, QUICK_VALUES if args.quick else VALUES)
        table: dict[tuple[str, str], Counter] = defaultdict(Counter)
        failed = []
        for n, (command, kind, case) in enumerate(cases, 1):
            outcome = run(case)
            table[(command, kind)][outcome] += 1
            if outcome in FAILURES:
                failed.append((outcome, case))
            print(f"\r{n}/{len(cases)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print(f"{'command':<9} {'kind':<22} {'cases':>5} {'ok':>4} {'refused':>7} " + " ".join(f"{f:>9}" for f in FAILURES))
    for (command, kind), c in sorted(table.items()):
        print(f"{command:<9} {kind:<22} {sum(c.values()):>5} {c['ok']:>4} {c['refused']:>7} "
              + " ".join(f"{c[f]:>9}" for f in FAILURES))
    total = Counter()
    for c in table.values():
        total.update(c)
    print(f"{'all':<9} {'':<22} {sum(total.values()):>5} {total['ok']:>4} {total['refused']:>7} "
          + " ".join(f"{total[f]:>9}" for f in FAILURES))
    for outcome, case in failed:
        print(f"{outcome}: focalnet {' '.join(map(repr, case))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
