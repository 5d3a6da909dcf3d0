"""Does fine-tuning from pretrained weights beat training from scratch on a small folder of images?

    .venv/bin/python benchmarks/transfer.py [--out runs/transfer] [--seeds 3] [--per-class 10 50 500]

1. Pretrain the main job's small FocalNet (configs/fashion-mnist.yaml: focalnet_tiny_srf's blocks, embed_dim
   32, depths 1-2-2, patch 2; 28 px) on 5 Fashion-MNIST classes (T-shirt/top, Trouser, Pullover, Dress, Coat),
   written out as a PNG folder; save it in the authors' layout (a .pth of tensors, with the JSON beside it
   that carries the architecture, class names and preprocessing: what a user downloads).
2. For the other 5 classes (Sandal, Shirt, Sneaker, Bag, Ankle boot) and N images per class (N = 10, 50,
   500), write PNG folders (the form users have; 100 test images per class), then train twice per seed
   with default flags and the same budget:
     focalnet train --data FOLDER --pretrained W.pth --reset-head                     (fine-tune)
     focalnet train --data FOLDER --model focalnet_tiny_srf --arch ... --recipe finetune --img-size 28 (scratch)
   "Same budget": the scratch run takes the finetune recipe too (same optimizer steps, lr, schedule),
   only without the pretrained weights (--img-size 28: the size the pretrained file carries).
3. Print top-1 mean +- sd over the seeds, with the CPU model and its ISA.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
FOCALNET = [sys.executable, "-m", "focalnet.cli"]
PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
TRANSFER_CLASSES = (5, 6, 7, 8, 9)
ARCH = ["embed_dim=32", "depths=[1,2,2]", "patch_size=2", "focal_levels=[2,2,2]", "focal_windows=[3,3,3]"]
TEST_PER_CLASS = 100


def cpu_line() -> str:
    """The CPU, its ISA, threads and allocator: the same line as `focalnet bench`."""
    from focalnet.deploy import bench

    return bench.machine_line(bench.machine_state())


def write_folder(root: Path, classes: tuple, per_class: int, splits: dict, names: list) -> Path:
    """PNG files root/{train,val}/CLASS/*.png: the first `per_class` training and TEST_PER_CLASS test images."""
    from PIL import Image

    for split, n in (("train", per_class), ("val", TEST_PER_CLASS)):
        x, y = splits["train" if split == "train" else "test"]
        for c in classes:
            d = root / split / names[c].replace("/", "-")
            d.mkdir(parents=True, exist_ok=True)
            for i in (y == c).nonzero().flatten()[:n].tolist():
                Image.fromarray(x[i, 0].numpy()).save(d / f"{i:05d}.png")
    return root


def train(args: list, out: Path) -> dict:
    """One `focalnet train` run into `out`; a run finished there before (its summary.json) is reused, so that
    an interrupted benchmark continues where it stopped."""
    if (out / "summary.json").is_file() and (out / "model.safetensors").is_file():
        summary = json.loads((out / "summary.json").read_text())
        summary["seconds"] = summary.get("wall_time_s", float("nan"))
        summary["plan"] = "(reused)"
        return summary
    cmd = FOCALNET + ["train", *args, "--output", str(out), "--progress", "off", "--overwrite"]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    summary["seconds"] = time.time() - t0
    plan = next((l for l in proc.stdout.splitlines() if l.startswith("focalnet train:")), "")
    summary["plan"] = plan
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/transfer")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--per-class", type=int, nargs="+", default=[10, 50, 500])
    ap.add_argument("--pretrain-per-class", type=int, default=2000)
    ap.add_argument("--pretrain-epochs", type=int, default=2)
    ap.add_argument("--table", action="store_true", help="only print the table of the runs already in --out "
                    "(a run without --table reuses every run finished there and does the rest)")
    a = ap.parse_args()
    out = Path(a.out)
    if a.table:
        print_table(collect(out, a.per_class, a.seeds), a.per_class)
        return
    from focalnet.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist

    splits, _ = load_fashion_mnist(None, download=False)
    names = list(FASHION_MNIST_CLASSES)
    t_start = time.time()
    official = pretrain(out, splits, names, per_class=a.pretrain_per_class, epochs=a.pretrain_epochs)
    rows = []
    for n in a.per_class:
        folder = write_folder(out / "data" / f"transfer{n}", TRANSFER_CLASSES, n, splits, names)
        for seed in range(a.seeds):
            common = ["--data", str(folder), "--seed", str(seed)]
            ft = train(common + ["--pretrained", str(official), "--reset-head"], out / f"ft{n}_s{seed}")
            sc = train(common + ["--model", "focalnet_tiny_srf", "--arch", *ARCH, "--recipe", "finetune", "--img-size", "28"],
                       out / f"scratch{n}_s{seed}")
            rows.append(dict(n=n, seed=seed, finetune=_top1(ft), scratch=_top1(sc), ft_s=ft["seconds"],
                             sc_s=sc["seconds"], plan=ft["plan"]))
            (out / "transfer.json").write_text(json.dumps(rows, indent=2))  # after each pair: a partial run counts
            print(f"  {n:>4}/class seed {seed}: fine-tune {_top1(ft):6.2f}%  scratch {_top1(sc):6.2f}%  "
                  f"({ft['seconds']:.0f} s + {sc['seconds']:.0f} s)", flush=True)
    print()
    print(f"total {time.time() - t_start:.0f} s")
    print_table(rows, a.per_class)


def pretrain(out: Path, splits: dict, names: list, *, per_class: int, epochs: int) -> Path:
    """The pretrained weights, in the authors' layout (with the JSON beside them): their path."""
    from focalnet import read_checkpoint, write_checkpoint

    pre_dir = write_folder(out / "data" / "pretrain", PRETRAIN_CLASSES, per_class, splits, names)
    pre = train(["--data", str(pre_dir), "--model", "focalnet_tiny_srf", "--arch", *ARCH, "--recipe", "small",
                 "--img-size", "28", "--epochs", str(epochs), "--batch-size", "64"], out / "pretrain")
    print(f"pretrain on {len(PRETRAIN_CLASSES)} classes ({per_class}/class): top-1 {_top1(pre)} "
          f"({pre['seconds']:.0f} s)", flush=True)
    ck = read_checkpoint(out / "pretrain" / "model.safetensors")
    official = out / "pretrain_official.pth"  # the authors' layout; the rest in pretrain_official.pth.focalnet.json
    write_checkpoint(ck.state_dict, ck.arch, official, fmt="official", class_names=ck.class_names,
                     preprocessing=ck.preprocessing)
    return official


def collect(out: Path, per_class: list, seeds: int) -> list:
    """The rows of the pairs of runs finished in `out` (summary.json of both)."""
    rows = []
    for n in per_class:
        for seed in range(seeds):
            ft, sc = out / f"ft{n}_s{seed}" / "summary.json", out / f"scratch{n}_s{seed}" / "summary.json"
            if ft.is_file() and sc.is_file():
                a, b = json.loads(ft.read_text()), json.loads(sc.read_text())
                rows.append(dict(n=n, seed=seed, finetune=_top1(a), scratch=_top1(b),
                                 ft_s=a.get("wall_time_s"), sc_s=b.get("wall_time_s")))
    return rows


def print_table(rows: list, per_class: list) -> None:
    print(f"CPU: {cpu_line()}")
    print(f"test: {TEST_PER_CLASS} images per class x 5 classes (Fashion-MNIST test split); final weights")
    print()
    print("| images per class | seeds | fine-tuned (top-1 %) | from scratch (top-1 %) | gain (points) |")
    print("|---:|---:|---:|---:|---:|")
    for n in per_class:
        ft = [r["finetune"] for r in rows if r["n"] == n]
        sc = [r["scratch"] for r in rows if r["n"] == n]
        if ft:
            print(f"| {n} | {len(ft)} | {_ms(ft)} | {_ms(sc)} | {statistics.mean(ft) - statistics.mean(sc):+.1f} |")


def _top1(summary: dict) -> float:
    final = summary.get("final") or {}
    return float(final.get("top1", summary.get("final_top1", float("nan"))))


def _ms(values: list) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


if __name__ == "__main__":
    main()
