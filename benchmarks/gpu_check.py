"""One check of every CUDA path of focalnet on one NVIDIA GPU, in at most 8 minutes (issue 16).

    .venv/bin/python benchmarks/gpu_check.py --out gpu_check_results
    .venv/bin/python benchmarks/gpu_check.py --only bf16 --only bench

Sections, each a function below with its own time limit:
- cuda_tests: `pytest -m cuda tests/test_cuda.py` (ours vs timm in float32, fused / compiled vs eager, the dense
  models, export from a GPU model, an AMP step; they skip cleanly without a GPU): the parity checks live there;
- bf16: bf16 autocast against float32 on real photos with trained-like weights (cosine >= 0.999, same top-1
  where the float32 margin is clear), what benchmarks/bf16_agreement.py measures on the CPU, with its helpers;
- training: a few steps in bf16 and in fp16 with a GradScaler on a real Fashion-MNIST batch (loss finite and
  falling); peak memory of ours with `set_activation_recompute(True)` vs timm's FocalNet-T;
- torchrun: `torchrun --nproc_per_node 1` running `focalnet train --precision fp16`, killed after its first checkpoint
  and continued with `--resume`; and DistributedDataParallel over an NCCL group of one process, because
  `focalnet train` joins no process group at world size 1 (train.distributed.init_distributed: only when world > 1);
- bench: `focalnet bench --device cuda` for ours, timm, ConvNeXt-T and Swin-T, b1 and b64, eager float32, eager
  bf16, compiled bf16, compiled float32 (in that order, as many as the time allows), with the fraction of the
  device's peak FLOP/s;
- maskrcnn: Mask R-CNN with a FocalNet-T backbone, forward and backward at 800x1333.

Each section runs in a child process of its own (spawned, and killed with everything it started when its
time is up), so a hang, a dead CUDA context or an out-of-memory cannot stop the others, and every peak-memory
figure starts from a fresh allocator. The end is one table (section, PASS/FAIL/SKIP, figure, seconds), written
as JSON too (--out DIR/gpu_check.json, with each section's details; the logs of the commands run lie beside it).

Without CUDA every section is SKIP and the exit status is 0 (1 with --require-gpu); a failed section makes it 1.
--cpu-smoke runs the sections' logic on the CPU at toy sizes, where it can run there (no fp16, no NCCL, no
bench; five times the time limits), to develop this script on a machine without a GPU; its figures mean nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
TOTAL_BUDGET_S = 480.0  # the 8 minutes, everything included
VARIANT = "focalnet_tiny_srf"
TIMM_NAME = "focalnet_tiny_srf"  # timm's FocalNet-T, same architecture (tests/test_parity.py)
SMALL = dict(embed_dim=16, depths=(1, 1, 2, 1))  # --cpu-smoke: every stage, toy width
SMOKE_SLOWDOWN = 5.0  # --cpu-smoke: time limits and budget times this


class Skip(Exception):
    """Raised by a section that cannot run here; the message is the table's figure."""


@dataclass
class Result:
    """What a section returns: whether it passed, one short figure for the table, and everything else."""

    ok: bool
    figure: str
    details: dict = field(default_factory=dict)


@dataclass
class Outcome:
    name: str
    status: str  # PASS, FAIL or SKIP
    figure: str
    seconds: float
    details: dict = field(default_factory=dict)
    error: Optional[str] = None


@dataclass
class Context:
    """What a section gets: where to run and write, and until when (a wall-clock time, shared by processes)."""

    device: str = "cuda"
    out: str = "gpu_check_results"
    small: bool = False  # --cpu-smoke: toy sizes
    deadline: float = math.inf

    def left(self) -> float:
        """Seconds until this section's time is up, less a margin to report in."""
        return max(1.0, self.deadline - time.time() - 3.0)

    def log(self, msg: str) -> None:
        print(f"    {msg}", flush=True)


@dataclass
class Section:
    name: str
    fn: Callable[[Context], Result]
    limit_s: float
    about: str = ""


# ----------------------------------------------------------------------------------------------------------
# helpers shared by the sections (each imports torch and focalnet itself, in its own process)
# ----------------------------------------------------------------------------------------------------------
def _env() -> dict:
    # children import this checkout of focalnet, whatever is installed
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}


def _run(cmd: Sequence[str], ctx: Context, log_name: str) -> subprocess.CompletedProcess:
    """Run `cmd` from the repository root within the section's time, its output kept in OUT/<log_name>.log.
    On timeout the command goes with everything it started (torchrun's workers, compile workers): TimeoutError."""
    limit = ctx.left()
    cmd = [str(c) for c in cmd]
    ctx.log(f"$ {' '.join(cmd)}  (limit {limit:.0f} s)")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill_tree(proc.pid)
        stdout, stderr = proc.communicate()
        Path(ctx.out, f"{log_name}.log").write_text(stdout + stderr)
        raise TimeoutError(f"{log_name} ran past {limit:.0f} s (log: {log_name}.log)") from None
    Path(ctx.out, f"{log_name}.log").write_text(stdout + stderr)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def photos(size: int = 224) -> Any:
    """benchmarks/bf16_agreement.py's photos (foolbox's and scikit-image's), normalised; Skip if there are none."""
    from bf16_agreement import NoPhotos
    from bf16_agreement import photos as load_photos

    try:
        return load_photos(size)
    except NoPhotos as e:
        raise Skip(str(e)) from None


def _strict_fp32() -> None:
    # float32 means float32 here: cuDNN convolutions default to TF32 (10-bit mantissa), which alone is ~1e-3
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def _arch_kw(ctx: Context) -> dict:
    return dict(SMALL) if ctx.small else {}


# ----------------------------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------------------------
def section_cuda_tests(ctx: Context) -> Result:
    """The tests marked `cuda` (tests/test_cuda.py), in one pytest process."""
    junit = Path(ctx.out, "cuda_tests.xml")
    proc = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-m", "cuda",
                 "tests/test_cuda.py", f"--junitxml={junit}"], ctx, "cuda_tests")
    counts = _junit_counts(junit)
    figure = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no tests ran"
    ok = proc.returncode == 0 and counts["failed"] == 0 and counts["errors"] == 0
    if not ctx.small:
        ok = ok and counts["skipped"] == 0  # on a GPU nothing may skip
    return Result(ok, figure, dict(returncode=proc.returncode, counts=counts, tail=_tail(proc.stdout)))


def _junit_counts(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    counts = dict(passed=0, failed=0, errors=0, skipped=0)
    if not path.exists():
        return counts
    for suite in ET.parse(path).getroot().iter("testsuite"):
        tests, failed = int(suite.get("tests", 0)), int(suite.get("failures", 0))
        errors, skipped = int(suite.get("errors", 0)), int(suite.get("skipped", 0))
        counts["failed"] += failed
        counts["errors"] += errors
        counts["skipped"] += skipped
        counts["passed"] += tests - failed - errors - skipped
    return counts


def section_bf16(ctx: Context) -> Result:
    """bf16 autocast against float32 on photos, trained-like weights (benchmarks/bf16_agreement.py's measure)."""
    import torch
    from bf16_agreement import agreement, trained_like

    import focalnet

    _strict_fp32()
    dev = torch.device(ctx.device)
    torch.manual_seed(0)
    ours = trained_like(focalnet.create_model(VARIANT, num_classes=1000, **_arch_kw(ctx))).eval().to(dev)
    x = photos(96 if ctx.small else 224).to(dev)
    with torch.inference_mode():
        logits = ours(x)
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            d = agreement(ours(x), logits)
    d["logit_max"] = float(logits.abs().max())
    ok = d["cosine_min"] >= 0.999 and d["clear_agree"] == d["clear"]
    figure = (f"bf16 cos {d['cosine_min']:.4f}, max |diff| {d['max_abs']:.2e}, top-1 {d['top1_agree']}/{d['n']} "
              f"(clear {d['clear_agree']}/{d['clear']})")
    return Result(ok, figure + ("" if ok else "; FAILED"), d)


def _real_batch(ctx: Context, n: int) -> tuple[Any, Any, str]:
    """(images (n, 1, H, W) normalised, labels, source): Fashion-MNIST's first n training images, else photos."""
    import torch

    from focalnet.datasets import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist

    try:
        splits, folder = load_fashion_mnist(None, download=False)
    except Exception as e:  # not on this machine: the photos (each its own class) are a real batch too
        ctx.log(f"no Fashion-MNIST ({type(e).__name__}: {str(e)[:120]}); training on the photos")
        gray = photos(64).mean(1, keepdim=True)
        idx = torch.arange(n) % len(gray)
        return gray[idx], idx % 10, "photos (gray)"
    images, labels = splits["train"]
    x = (images[:n].float() / 255 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]
    return x, labels[:n], f"Fashion-MNIST ({folder})"


def _amp_steps(model: Any, x: Any, y: Any, dtype: Any, steps: int) -> dict:
    """`steps` AdamW steps on one batch under autocast(dtype), with a GradScaler for float16."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    scaler = torch.amp.GradScaler(x.device.type, enabled=dtype == torch.float16)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=dtype):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    head, tail = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    return dict(losses=losses, finite=all(math.isfinite(v) for v in losses), falling=tail < 0.9 * head,
                scale=float(scaler.get_scale()) if scaler.is_enabled() else None)


def _peak_train_memory(model: Any, x: Any, y: Any) -> int:
    """Bytes two float32 training steps add on the GPU above what model, optimizer and batch hold."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for _ in range(2):  # the first step allocates the optimizer state: measure the second
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


def _memory_figures(ctx: Context) -> dict:
    import gc

    import timm
    import torch

    import focalnet

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 224, 224, generator=g).to(ctx.device)
    y = torch.randint(0, 1000, (64,), generator=g).to(ctx.device)
    out = {}
    builds = dict(timm=lambda: timm.create_model(TIMM_NAME), ours=lambda: focalnet.create_model(VARIANT),
                  ours_recompute=lambda: focalnet.create_model(VARIANT))
    for name, build in builds.items():
        model = build().to(ctx.device).train()
        if name == "ours_recompute":
            model.set_activation_recompute(True)
        out[name] = _peak_train_memory(model, x, y)
        del model
        gc.collect()
        torch.cuda.empty_cache()
    return out


def section_training(ctx: Context) -> Result:
    """bf16 and fp16 (GradScaler) steps on a real batch: loss finite and falling; recompute memory vs timm."""
    import torch
    import torch.nn.functional as F

    import focalnet

    torch.manual_seed(0)
    n, size = (16, 32) if ctx.small else (128, 112)
    x, y, source = _real_batch(ctx, n)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).to(ctx.device)
    y = y.to(ctx.device)
    dtypes = {"bf16": torch.bfloat16} if ctx.device == "cpu" else {"bf16": torch.bfloat16, "fp16": torch.float16}
    d: dict = dict(batch=f"{n} x {size} px from {source}")
    for name, dtype in dtypes.items():
        torch.manual_seed(0)
        model = focalnet.create_model(VARIANT, in_chans=1, num_classes=10, drop_path_rate=0.0, **_arch_kw(ctx))
        d[name] = _amp_steps(model.to(ctx.device).train(), x, y, dtype, steps=8 if ctx.small else 15)
        ctx.log(f"{name}: loss {d[name]['losses'][0]:.3f} -> {d[name]['losses'][-1]:.3f}")
    ok = all(d[k]["finite"] and d[k]["falling"] for k in dtypes)
    figure = "; ".join(f"{k} loss {d[k]['losses'][0]:.2f}->{d[k]['losses'][-1]:.2f}" for k in dtypes)
    if ctx.device != "cpu":
        mem = d["peak_bytes"] = _memory_figures(ctx)
        ok = ok and mem["ours_recompute"] < mem["timm"]
        figure += (f"; b64 peak GB: ours+recompute {mem['ours_recompute'] / 1e9:.2f}, ours {mem['ours'] / 1e9:.2f}, "
                   f"timm {mem['timm'] / 1e9:.2f}")
    return Result(ok, figure, d)


def _train_cmd(ctx: Context, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
            "-m", "focalnet.cli", "train", *args, "--progress", "off"]


def _first_run_args(ctx: Context, run: Path) -> list[str]:
    data = ["--data", "digits"]  # scikit-learn's digits are always there, and small enough for a CPU
    if not ctx.small:
        from focalnet.datasets import DataUnavailableError, locate_fashion_mnist

        try:
            data = ["--data", "fashion-mnist", "--data-dir", str(locate_fashion_mnist(None)), "--no-download"]
        except DataUnavailableError:
            pass
    if ctx.small:
        size = ["--limit-train", "512", "--limit-eval", "128", "--arch", "embed_dim=8", "depths=[1,1]", "patch_size=2"]
    else:
        size = ["--limit-train", "16384", "--limit-eval", "2000", "--arch", "embed_dim=32", "depths=[2,2,2]", "patch_size=2"]
    precision = "fp32" if ctx.device == "cpu" else "fp16"  # fp16: autocast with the loop's GradScaler, saved and resumed
    return [*data, *size, "--batch-size", "128", "--epochs", "4", "--precision", precision, "--device", ctx.device,
            "--workers", "0", "--output", str(run)]


def _interrupted_run(ctx: Context, run: Path) -> dict:
    """Start a 4-epoch run under torchrun and kill it (torchrun and its worker) once checkpoints/last.pth exists."""
    import torch

    cmd = _train_cmd(ctx, *_first_run_args(ctx, run))
    ctx.log(f"$ {' '.join(cmd)}  (killed after its first checkpoint)")
    log = open(Path(ctx.out, "torchrun_first.log"), "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    last = run / "checkpoints" / "last.pth"
    deadline = time.time() + ctx.left() / 2
    try:
        while time.time() < deadline and proc.poll() is None and not last.exists():
            time.sleep(0.05)
    finally:
        finished = proc.poll() is not None
        if not finished:
            _kill_tree(proc.pid)  # torchrun and its worker, as a crash or a preemption would
        proc.wait()
        log.close()
    if not last.exists():
        raise RuntimeError(f"no checkpoint written (exit {proc.returncode}):\n{_tail(Path(ctx.out, 'torchrun_first.log').read_text())}")
    epoch = int(torch.load(last, weights_only=True, map_location="cpu")["epoch"])
    return dict(killed_after_epoch=epoch, finished_before_kill=finished)


def _ddp_nccl(ctx: Context) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", __file__,
           "--ddp-child", "--device", ctx.device] + (["--cpu-smoke"] if ctx.small else [])
    proc = _run(cmd, ctx, "torchrun_ddp")
    if proc.returncode != 0:
        raise RuntimeError(f"DDP child failed (exit {proc.returncode}):\n{_tail(proc.stdout + proc.stderr)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def section_torchrun(ctx: Context) -> Result:
    """`focalnet train` under torchrun: checkpoint written, killed, resumed; DDP over NCCL (world size 1)."""
    import shutil

    run = Path(ctx.out, "torchrun_run")
    shutil.rmtree(run, ignore_errors=True)
    d: dict = _interrupted_run(ctx, run)
    proc = _run(_train_cmd(ctx, "--resume", str(run)), ctx, "torchrun_resume")
    out = proc.stdout + proc.stderr
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    d.update(resume_returncode=proc.returncode, resumed="resumed from" in out, epochs=summary.get("epochs"),
             metrics_lines=len(lines), device=summary.get("device"), world_size=summary.get("world_size"),
             final=summary.get("final"))
    d["ddp"] = _ddp_nccl(ctx)
    ok = (proc.returncode == 0 and d["resumed"] and not d["finished_before_kill"] and d["epochs"] == 4
          and d["metrics_lines"] == 4 and str(d["device"]).startswith(ctx.device) and d["ddp"]["ok"])
    top1 = float((d["final"] or {}).get("top1") or "nan")
    figure = (f"killed after epoch {d['killed_after_epoch']}, resumed to {d['epochs']} on {d['device']}"
              f" (top-1 {top1:.1f}%); DDP over {d['ddp']['backend']}: {d['ddp']['steps']} steps, "
              f"loss {d['ddp']['losses'][0]:.2f}->{d['ddp']['losses'][-1]:.2f}")
    if proc.returncode != 0:
        figure = f"resume failed (exit {proc.returncode}): {_tail(out, 3)}"
    return Result(ok, figure, d)


def ddp_child(device: str, small: bool) -> int:
    """Under torchrun: our model in DistributedDataParallel over an NCCL (CPU: gloo) group, bf16 steps."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import focalnet

    dev = torch.device(device, int(os.environ.get("LOCAL_RANK", "0"))) if device == "cuda" else torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    try:
        torch.manual_seed(0)
        model = focalnet.create_model(VARIANT, num_classes=10, drop_path_rate=0.0, **(SMALL if small else {})).to(dev)
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
        x, y = torch.randn(8, 3, 64, 64, device=dev), torch.arange(8, device=dev) % 10
        losses = []
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(ddp(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        t = torch.ones(1, device=dev)
        dist.all_reduce(t)
        ok = all(math.isfinite(v) for v in losses) and float(t) == dist.get_world_size()
        print(json.dumps(dict(ok=ok, backend=dist.get_backend(), world_size=dist.get_world_size(), steps=len(losses),
                              losses=losses)), flush=True)
    finally:
        dist.destroy_process_group()
    return 0


BENCH_IMPLS = ("ours", "timm", "convnext_t", "swin_t")
# (precision, compiled), most telling first. Compiled runs measure b64 only: compiling the four models takes about a
# minute per input shape, and b1 would be a second shape; 8 minutes do not hold both dtypes twice.
BENCH_RUNS = (("fp32", False), ("bf16", False), ("bf16", True), ("fp32", True))


def _bench_rows(path: Path) -> list[dict]:
    """The rows of one `focalnet bench --json` file, with the fraction of the device's peak FLOP/s."""
    import torch

    from focalnet.deploy.bench import device_peak_flops
    rows = []
    for r in json.loads(path.read_text())["results"]:
        peak = device_peak_flops(torch.device(r["device"]), r["precision"])
        flops = r.get("flops_per_img")
        frac = flops * r["median_img_s"] / peak if (peak and flops) else None
        rows.append(dict(impl=r["impl"], batch=r["batch_size"], precision=r["precision"], compiled=r["compiled"],
                         img_s=r["median_img_s"], ms=r["median_ms"], peak_fraction=frac))
    return rows


def section_bench(ctx: Context) -> Result:
    """`focalnet bench --device cuda`: ours, timm, ConvNeXt-T, Swin-T; b1 and b64; eager / compiled; fp32 / bf16."""
    if ctx.device == "cpu":
        raise Skip("cpu smoke: bench is for the GPU (its CPU paths have their own tests)")
    d: dict = dict(runs=[], not_run=[])
    ok = True
    for precision, compiled in BENCH_RUNS:
        tag = f"{precision}_{'compiled' if compiled else 'eager'}"
        if ctx.left() < (60 if compiled else 20):
            d["not_run"].append(tag)
            continue
        path = Path(ctx.out, f"bench_{tag}.json")
        cmd = [sys.executable, "-m", "focalnet.cli", "bench", "--device", "cuda", "--model", VARIANT,
               *[a for impl in BENCH_IMPLS for a in ("--impl", impl)], "--batch-size", "64", "--precision", precision,
               "--warmup", "3", "--rounds", "10", "--json", path] + (["--compile"] if compiled else ["--latency"])
        try:
            proc = _run(cmd, ctx, f"bench_{tag}")
        except TimeoutError as e:
            ok = False
            d["runs"].append(dict(run=tag, error=str(e)))
            continue
        if proc.returncode != 0 or not path.exists():
            ok = False
            d["runs"].append(dict(run=tag, error=_tail(proc.stdout + proc.stderr, 5)))
            continue
        rows = _bench_rows(path)
        ok = ok and {r["impl"] for r in rows} == set(BENCH_IMPLS)
        d["runs"].append(dict(run=tag, rows=rows))
        ctx.log(_tail(proc.stdout, 2 * len(BENCH_IMPLS) + 2))
    ok = ok and not d["not_run"]
    return Result(ok, _bench_figure(d), d)


def _bench_figure(d: dict) -> str:
    done = [r for r in d["runs"] if "rows" in r]
    parts = [f"{len(done)}/{len(BENCH_RUNS)} runs"]
    for run in done:
        for r in run["rows"]:
            if r["impl"] == "ours" and r["batch"] == 64:
                frac = f", {100 * r['peak_fraction']:.1f}% peak" if r["peak_fraction"] else ""
                parts.append(f"ours b64 {run['run']} {r['img_s']:.0f} img/s{frac}")
    if d["not_run"]:
        parts.append(f"not run (time): {', '.join(d['not_run'])}")
    parts += [f"{r['run']} FAILED" for r in d["runs"] if "error" in r]
    return "; ".join(parts)


def _detection_batch(size: tuple[int, int], device: str, n: int = 2) -> tuple[list, list]:
    """n photos at `size` (H, W) in [0, 1] with two boxes and masks each (the photos' centre and a corner)."""
    import torch
    import torch.nn.functional as F

    from focalnet.images import IMAGENET_MEAN, IMAGENET_STD

    x = photos(224)[:n]
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    images = [F.interpolate((p * std + mean)[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)
              for p in x]
    H, W = size
    boxes = torch.tensor([[W * 0.25, H * 0.25, W * 0.75, H * 0.75], [0, 0, W * 0.3, H * 0.4]])
    masks = torch.zeros(2, H, W, dtype=torch.uint8)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.long().tolist()):
        m[y0:y1, x0:x1] = 1
    targets = [dict(boxes=boxes.clone(), labels=torch.tensor([1, 2]), masks=masks.clone()) for _ in images]
    move = lambda t: {k: v.to(device) for k, v in t.items()}  # noqa: E731
    return [im.to(device) for im in images], [move(t) for t in targets]


def section_maskrcnn(ctx: Context) -> Result:
    """Mask R-CNN with a FocalNet-T backbone: a training forward and backward at 800x1333, then inference."""
    import torch

    from focalnet.dense import maskrcnn_focalnet

    torch.manual_seed(0)
    if ctx.small:
        model = maskrcnn_focalnet(VARIANT, num_classes=3, backbone_args=SMALL, fpn_channels=16, representation_size=64,
                                  mask_head_channels=16, min_size=128, max_size=214)
        size = (128, 213)
    else:
        model = maskrcnn_focalnet(VARIANT, num_classes=91)  # torchvision's defaults: min_size 800, max_size 1333
        size = (800, 1333)
    model = model.to(ctx.device).train()
    images, targets = _detection_batch(size, ctx.device)
    cuda = ctx.device != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    losses = model(images, targets)
    total = sum(losses.values())
    total.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    d: dict = dict(size=size, losses={k: v.item() for k, v in losses.items()}, fwd_bwd_s=seconds,
                   grads_finite=all(g is not None and bool(torch.isfinite(g).all()) for g in grads),
                   peak_gb=torch.cuda.max_memory_allocated() / 1e9 if cuda else None)
    model.eval()
    with torch.inference_mode():
        detections = model(images)
    d["detections"] = [len(o["boxes"]) for o in detections]
    d["mask_shape"] = list(detections[0]["masks"].shape)
    ok = all(math.isfinite(v) for v in d["losses"].values()) and d["grads_finite"] and len(detections) == len(images)
    peak = f", peak {d['peak_gb']:.1f} GB" if d["peak_gb"] is not None else ""
    figure = f"{size[0]}x{size[1]}: loss {total.item():.2f} ({len(losses)} terms), fwd+bwd {seconds:.2f} s{peak}"
    return Result(ok, figure, d)


SECTIONS = (
    Section("cuda_tests", section_cuda_tests, 55, "pytest -m cuda tests/test_cuda.py"),
    Section("bf16", section_bf16, 30, "bf16 autocast vs float32 on photos (parity: cuda_tests)"),
    Section("training", section_training, 50, "bf16 / fp16 + GradScaler steps, recompute memory vs timm"),
    Section("torchrun", section_torchrun, 70, "torchrun focalnet train, kill, --resume; DDP over NCCL"),
    Section("bench", section_bench, 190, "focalnet bench --device cuda, 4 models, eager / compiled, fp32 / bf16"),
    Section("maskrcnn", section_maskrcnn, 40, "Mask R-CNN FocalNet-T forward + backward at 800x1333"),
)


# ----------------------------------------------------------------------------------------------------------
# running sections, each in a process of its own
# ----------------------------------------------------------------------------------------------------------
def _child(fn: Callable[[Context], Result], ctx: Context, result_path: str) -> None:
    try:
        res = fn(ctx)
        payload = dict(status="PASS" if res.ok else "FAIL", figure=res.figure, details=res.details)
    except Skip as e:
        payload = dict(status="SKIP", figure=str(e))
    except BaseException as e:  # any error is this section's failure; the others still run
        payload = dict(status="FAIL", figure=f"{type(e).__name__}: {str(e)[:200]}", error=traceback.format_exc()[-6000:])
    tmp = result_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, default=str)
    os.replace(tmp, result_path)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (Linux). torchrun starts its workers in sessions of their own, so a
    process group does not hold them; the parent links do."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree(pid: int) -> None:
    """SIGKILL `pid` and everything it started (collected first: an orphan would move to init)."""
    for p in [pid] + _descendants(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_section(section: Section, ctx: Context, limit_s: float) -> Outcome:
    """Run one section in a spawned child with `limit_s` seconds; never raises for what the section does."""
    result_path = Path(ctx.out, f".{section.name}.result.json")
    result_path.unlink(missing_ok=True)
    child_ctx = dataclasses.replace(ctx, deadline=time.time() + limit_s)
    proc = mp.get_context("spawn").Process(target=_child, args=(section.fn, child_ctx, str(result_path)),
                                           name=f"gpu_check:{section.name}")
    t0 = time.monotonic()
    proc.start()
    proc.join(limit_s)
    timed_out = proc.is_alive()
    if timed_out:
        _kill_tree(proc.pid)  # with everything the section started
        proc.join(10)
    seconds = time.monotonic() - t0
    result_path_exists = result_path.exists()
    if timed_out and not result_path_exists:
        return Outcome(section.name, "FAIL", f"timed out after {limit_s:.0f} s (killed)", seconds)
    if not result_path_exists:
        return Outcome(section.name, "FAIL", f"the section's process died (exit {proc.exitcode})", seconds)
    data = json.loads(result_path.read_text())
    result_path.unlink()
    return Outcome(section.name, data["status"], data["figure"], seconds, data.get("details") or {}, data.get("error"))


# ----------------------------------------------------------------------------------------------------------
# header, table, JSON
# ----------------------------------------------------------------------------------------------------------
def header() -> dict:
    """GPU name, driver, torch and CUDA versions (the GPU fields are None without CUDA)."""
    import torch

    h = dict(torch=torch.__version__, cuda=torch.version.cuda, gpu=None, driver=None, gpu_memory_gb=None,
             python=sys.version.split()[0])
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        h.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), driver=_driver_version())
    return h


def _driver_version() -> Optional[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def format_header(h: dict) -> str:
    gpu = f"{h['gpu']} ({h['gpu_memory_gb']} GiB), driver {h['driver']}" if h.get("gpu") else "no CUDA device"
    return f"GPU: {gpu}; torch {h['torch']}, CUDA {h['cuda']}, Python {h['python']}"


def format_table(outcomes: Sequence[Outcome]) -> str:
    """One line per section: name, status, seconds, figure."""
    width = max([len("section")] + [len(o.name) for o in outcomes])
    head = f"{'section':<{width}}  status  {'seconds':>7}  figure"
    lines = [head, "-" * len(head)]
    for o in outcomes:
        lines.append(f"{o.name:<{width}}  {o.status:<6}  {o.seconds:>7.1f}  {o.figure}")
    counts = {s: sum(o.status == s for o in outcomes) for s in ("PASS", "FAIL", "SKIP")}
    lines.append("-" * len(head))
    lines.append(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped; "
                 f"{sum(o.seconds for o in outcomes):.0f} s in the sections")
    return "\n".join(lines)


def write_json(outcomes: Sequence[Outcome], h: dict, path: Path, argv: Sequence[str]) -> None:
    from focalnet.utils import atomic_json

    payload = dict(header=h, argv=list(argv), sections=[dataclasses.asdict(o) for o in outcomes])
    atomic_json(json.loads(json.dumps(payload, default=str)), path)


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    names = [s.name for s in SECTIONS]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="sections: " + "; ".join(f"{s.name} ({s.about}, {s.limit_s:.0f} s)" for s in SECTIONS))
    p.add_argument("--out", default="gpu_check_results", help="folder for gpu_check.json and the logs")
    p.add_argument("--only", action="append", choices=names, metavar="NAME",
                   help=f"run only this section (repeatable): {', '.join(names)}")
    p.add_argument("--budget", type=float, default=TOTAL_BUDGET_S, help="seconds for all sections together (480)")
    p.add_argument("--require-gpu", action="store_true", help="exit 1 when there is no CUDA device")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="run the sections' logic on the CPU at toy sizes, with 5x the time limits (figures mean nothing)")
    p.add_argument("--ddp-child", action="store_true", help=argparse.SUPPRESS)  # the process torchrun starts
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.budget <= 0:
        p.error("--budget must be positive")
    return args


def run_all(sections: Sequence[Section], ctx: Context, budget_s: float, cuda: bool, scale: float = 1.0) -> list[Outcome]:
    """Every section in order, within `budget_s` in all; without CUDA (and no --cpu-smoke) each is SKIP.
    scale: a factor on every section's time limit (--cpu-smoke: a CPU is slower than the GPU they were set for)."""
    outcomes = []
    end = time.monotonic() + budget_s
    for s in sections:
        if not cuda and not ctx.small:
            outcomes.append(Outcome(s.name, "SKIP", "no CUDA device", 0.0))
            continue
        left = end - time.monotonic()
        if left < 10:
            outcomes.append(Outcome(s.name, "SKIP", f"no time left in the {budget_s:.0f} s budget", 0.0))
            continue
        limit = min(s.limit_s * scale, left)
        print(f"== {s.name}: {s.about} (limit {limit:.0f} s)", flush=True)
        o = run_section(s, ctx, limit)
        print(f"   {o.status} in {o.seconds:.1f} s: {o.figure}", flush=True)
        if o.error:
            print(_tail(o.error, 12), flush=True)
        outcomes.append(o)
    return outcomes


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.ddp_child:
        return ddp_child(args.device, args.cpu_smoke)
    h = header()
    print(format_header(h), flush=True)
    cuda = h["gpu"] is not None
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(device="cuda" if cuda and not args.cpu_smoke else "cpu", out=str(out), small=args.cpu_smoke)
    sections = [s for s in SECTIONS if not args.only or s.name in args.only]
    scale = SMOKE_SLOWDOWN if args.cpu_smoke else 1.0
    outcomes = run_all(sections, ctx, args.budget * scale, cuda, scale)
    print()
    print(format_header(h))
    print(format_table(outcomes))
    write_json(outcomes, h, out / "gpu_check.json", argv)
    print(f"\nwrote {out / 'gpu_check.json'}")
    if args.require_gpu and not cuda:
        print("--require-gpu: no CUDA device", file=sys.stderr)
        return 1
    return 1 if any(o.status == "FAIL" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
