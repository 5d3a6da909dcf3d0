"""What bf16 and int8 cost in accuracy: FocalNets in float32, fused bf16 and int8 (PT2E), compared. No timing here
(the speed is `focalnet bench --impl ours-fused --impl ours-fused-bf16 --impl ours-int8`).

    PYTHONPATH=src python benchmarks/lowp_accuracy.py [--run RUN_FOLDER] [--sweep] [--compiled] [--json OUT]

1. The main job's model on Fashion-MNIST: test top-1 on the 10,000 test images, float32 (eager and fused) against
   bf16 (fused) and int8 (`focalnet.deploy.quantize`, calibrated on --calib images of the training split). The
   model is RUN_FOLDER/model.safetensors (a `focalnet train` run, e.g. `bash scripts/main.sh`); without --run the
   script trains one first with configs/fashion-mnist.yaml for --train-seconds (scikit-learn's digits and
   configs/digits.yaml where Fashion-MNIST is not installed, said so). --sweep also quantizes with each group of
   KEEP_FLOAT_GROUPS left in float in turn, and with none (here and in part 2): how `DEFAULT_KEEP_FLOAT` was
   chosen.
   Target: bf16 within 0.2 points of float32, int8 within 0.5 points.
2. FocalNet-T (SRF, 224 px) with random weights given a trained model's statistics (bf16_agreement.trained_like)
   and a head centred on the features of the images (so that its predictions are confident and differ from image
   to image, as a trained head's do): top-1 agreement with float32 on real photos (foolbox's ImageNet samples and
   scikit-image's colour photos, each also mirrored) and on the detection canvases (Fashion-MNIST items on textured
   224 px backgrounds, when Fashion-MNIST is installed). int8 is calibrated on other images (training-split
   canvases and the photos upside down). bf16 autocast of the plain model (PyTorch's mixed precision, what timm
   users run) is printed as the reference: random weights make features of different images close, so any
   rounding moves the centred logits more than a trained model's. Tolerance: bf16 fused keeps the top-1 class
   of every image whose float32 top-2 margin exceeds twice its largest logit error, and its logit cosine is
   within 0.001 of autocast's; int8 keeps >= 95 % of the top-1 classes, with logit cosine >= 0.98.
int8 runs as the eager QDQ graph (float operators on int8-rounded values); --compiled also runs the inductor-
compiled model (oneDNN's int8 kernels: slow to compile) and reports its agreement with the eager one.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch

from bf16_agreement import NoPhotos, agreement, photos, trained_like

ROOT = Path(__file__).resolve().parents[1]
BF16_COSINE_SLACK, INT8_COSINE, INT8_TOP1 = 0.001, 0.98, 0.95


# ----------------------------------------------------------------------------------------------------------
# 1. the main job's model on Fashion-MNIST
# ----------------------------------------------------------------------------------------------------------
def train_small(seconds: int, out: Path) -> Path:
    """Train the main job's model for `seconds` with the CLI; the run folder."""
    from focalnet.datasets import DataUnavailableError, locate_fashion_mnist

    config = "configs/fashion-mnist.yaml"
    try:
        locate_fashion_mnist(download=False)
    except DataUnavailableError:
        print("Fashion-MNIST is not installed: training on scikit-learn's digits (configs/digits.yaml) instead")
        config = "configs/digits.yaml"
    cmd = [sys.executable, "-m", "focalnet.cli", "train", "-c", config, "--time-budget", str(seconds),
           "--output", str(out)]
    print("training:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return out


def _top1(fn, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    with torch.no_grad():
        hits = sum(int((fn(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))
    return 100.0 * hits / len(x)


def fashion_mnist(args: argparse.Namespace) -> dict:
    from focalnet import load_model
    from focalnet.inspect import preprocessing_for
    from focalnet.deploy import fuse_for_inference
    from focalnet.deploy.quantize import (
        DEFAULT_KEEP_FLOAT, KEEP_FLOAT_GROUPS, calibration_images, dataset_images, quantize_model,
    )

    run = Path(args.run) if args.run else train_small(args.train_seconds, Path(tempfile.mkdtemp(prefix="lowp-")) / "r")
    model = load_model(run / "model.safetensors").eval()
    pre = preprocessing_for(model)
    summary = run / "summary.json"  # the data set the run trained on
    data = str(json.loads(summary.read_text()).get("data", "fashion-mnist")) if summary.exists() else "fashion-mnist"
    x, y = dataset_images(pre, data, "test")
    cal = calibration_images(pre, data, num_images=args.calib)
    rows = {"float32": _top1(model, x, y), "float32 fused": _top1(fuse_for_inference(model), x, y)}
    rows["bf16 fused"] = _top1(fuse_for_inference(model, dtype=torch.bfloat16), x, y)
    plans = {f"int8, keep float: {', '.join(DEFAULT_KEEP_FLOAT) or 'nothing'} (default)": DEFAULT_KEEP_FLOAT}
    if args.sweep:
        plans.update({f"int8, keep float: {g}": (g,) for g in KEEP_FLOAT_GROUPS if (g,) != DEFAULT_KEEP_FLOAT})
        plans["int8, keep float: nothing"] = ()
    for label, keep in plans.items():
        q = quantize_model(model, cal.split(64), keep_float=keep, source=data)
        rows[label] = _top1(q, x, y)
        if args.compiled and keep == DEFAULT_KEEP_FLOAT:
            with torch.no_grad():
                rows[label + ", compiled"] = _top1(q.compile(), x, y)
    print(f"\n1. {data} test top-1 ({len(x)} images), model {run}/model.safetensors, int8 calibrated on {len(cal)} "
          f"training images")
    for label, acc in rows.items():
        print(f"   {label:<48} {acc:6.2f} %   {acc - rows['float32']:+.2f} points")
    return dict(data=data, run=str(run), images=len(x), calibration=len(cal), top1=rows)


# ----------------------------------------------------------------------------------------------------------
# 2. FocalNet-T with trained-like weights: agreement with float32 on photos and canvases
# ----------------------------------------------------------------------------------------------------------
def canvases(split: str, n: int, size: int = 224) -> torch.Tensor:
    """`n` detection canvases (Fashion-MNIST items on textured backgrounds), ImageNet-normalised; empty without
    Fashion-MNIST."""
    from focalnet.dense.data import CanvasDataset
    from focalnet.images import IMAGENET_MEAN, IMAGENET_STD

    try:
        ds = CanvasDataset(split, num_canvases=n, canvas_size=size, item_size=(40, 112))
    except Exception as e:  # no Fashion-MNIST here: the photos alone
        print(f"   (no canvases: {type(e).__name__}: {e})")
        return torch.empty(0, 3, size, size)
    x = torch.stack([ds[i][0] for i in range(n)])
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def centre_head(model: torch.nn.Module, x: torch.Tensor, logit_std: float = 3.0) -> None:
    """Make the head's predictions confident and varied on images like `x`, in place: the pooled features' mean
    over `x` (what every image shares, which a random head turns into the same top-1 class for all) is removed
    inside the head, and the logits are scaled to a spread of `logit_std` across classes. Each feature keeps its
    own scale: dividing by the features' spread too would magnify the ones that hardly vary, and their rounding."""
    fc = model.get_classifier()
    with torch.no_grad():
        f = model.forward_head(model.forward_features(x), pre_logits=True)  # (N, D)
        b = -(fc.weight @ f.mean(0))  # logits = W (f - mean)
        spread = (f @ fc.weight.T + b).std(1).mean()
        fc.weight.mul_(logit_std / spread)
        fc.bias.copy_(b * logit_std / spread)


def _describe(ref: torch.Tensor) -> str:
    p = ref.softmax(1).max(1).values
    return f"{len(ref.argmax(1).unique())} distinct top-1 classes, mean top-1 probability {p.mean():.2f}"


def _autocast(model: torch.nn.Module):
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x).float()

    return run


def _within(label: str, a: dict, reference: Optional[dict]) -> Optional[bool]:
    """Part 2's tolerance (module docstring); None for the reference row."""
    if label.startswith("bf16 fused"):
        return a["clear_agree"] == a["clear"] and a["cosine_min"] >= reference["cosine_min"] - BF16_COSINE_SLACK
    if label.startswith("int8"):
        return a["cosine_min"] >= INT8_COSINE and a["top1_agree"] >= INT8_TOP1 * a["n"]
    return None


def focalnet_t(args: argparse.Namespace) -> dict:
    from focalnet.deploy import fuse_for_inference
    from focalnet.deploy.quantize import DEFAULT_KEEP_FLOAT, KEEP_FLOAT_GROUPS, quantize_model
    from focalnet.registry import build_model

    try:
        pics = photos(224)
    except NoPhotos as e:
        print(f"\n2. skipped: {e}")
        return {}
    sets = {"photos": torch.cat([pics, pics.flip(-1)]), "canvases": canvases("test", args.canvases)}
    torch.manual_seed(0)
    model = trained_like(build_model("focalnet_tiny_srf").eval())
    centre_head(model, torch.cat([s for s in sets.values() if len(s)]))
    cal = torch.cat([pics.flip(-2), canvases("train", args.canvases)])
    rows = {"bf16 autocast (reference)": _autocast(model),
            "bf16 fused": fuse_for_inference(model, dtype=torch.bfloat16),
            "int8": quantize_model(model, cal.split(16), source="canvases and photos upside down")}
    plans = {f"int8 keep {g}": (g,) for g in KEEP_FLOAT_GROUPS if (g,) != DEFAULT_KEEP_FLOAT} if args.sweep else {}
    if args.sweep:
        plans["int8 keep nothing"] = ()
    rows.update({label: quantize_model(model, cal.split(16), keep_float=keep) for label, keep in plans.items()})
    out: dict = {}
    print(f"\n2. focalnet_tiny_srf, trained-like weights, 224 px; int8 calibrated on {len(cal)} other images")
    for name, x in sets.items():
        if not len(x):
            continue
        with torch.no_grad():
            ref = model(x)
            print(f"   {name}: {len(x)} images, float32 gives {_describe(ref)}")
            reference = None
            for label, fn in rows.items():
                a = agreement(torch.cat([fn(c) for c in x.split(16)]), ref)
                reference = reference or a  # the autocast row, first
                ok = _within(label, a, reference)
                out[f"{name} {label}"] = {**a, "within_tolerance": ok}
                verdict = "" if ok is None else ("; within tolerance" if ok else "; OUTSIDE tolerance")
                print(f"   {label:<26} top-1 agrees on {a['top1_agree']}/{a['n']} ({a['clear_agree']}/{a['clear']} "
                      f"where the float32 margin is clear); logit cosine min {a['cosine_min']:.5f}, max |diff| "
                      f"{a['max_abs']:.3f} (float32 logit std {ref.std():.2f}){verdict}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=None, help="a `focalnet train` run folder (default: train one first)")
    p.add_argument("--train-seconds", type=int, default=300, help="training budget without --run (default 300)")
    p.add_argument("--calib", type=int, default=256, help="calibration images for int8 (default 256)")
    p.add_argument("--canvases", type=int, default=32, help="canvases in each of part 2's sets (default 32)")
    p.add_argument("--sweep", action="store_true", help="int8 with each group kept in float in turn (both parts)")
    p.add_argument("--compiled", action="store_true", help="also run int8 compiled by inductor (slow to compile)")
    p.add_argument("--skip", choices=("fashion-mnist", "focalnet-t"), action="append", default=[])
    p.add_argument("--json", default=None, help="write the figures to this file")
    args = p.parse_args(argv)
    from focalnet.deploy import native_bf16

    print(f"torch {torch.__version__}; native bf16 on this CPU: {native_bf16()}")
    result = {}
    if "fashion-mnist" not in args.skip:
        result["fashion_mnist"] = fashion_mnist(args)
    if "focalnet-t" not in args.skip:
        result["focalnet_t"] = focalnet_t(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
