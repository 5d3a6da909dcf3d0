"""Training-step throughput of small FocalNets at 28 px: how the main job's model was chosen.

    PYTHONPATH=src python benchmarks/train_step_speed.py [--batch-sizes 128 256] [--amp bf16]

For each resized focalnet_tiny_srf: forward + cross-entropy + backward + AdamW step on random (B, 1, 28, 28)
batches, float32 (or bf16 autocast), median of 5 steps after 2 warm-up steps; and inference throughput at
batch 256. Run it alone (under the CPU lock on shared machines): another process on the cores changes the
figures several-fold.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import focalnet  # noqa: E402
from focalnet.train.artifacts import try_count_macs  # noqa: E402
from focalnet.train.build import fit_stage_lists  # noqa: E402

CONFIGS = {
    "dim 32, depths 2-2-2, patch 2": dict(embed_dim=32, depths=[2, 2, 2], patch_size=2),
    "dim 32, depths 1-2-2, patch 2": dict(embed_dim=32, depths=[1, 2, 2], patch_size=2),
    "dim 24, depths 2-3-2, patch 2": dict(embed_dim=24, depths=[2, 3, 2], patch_size=2),
    "dim 32, depths 2-2, patch 2": dict(embed_dim=32, depths=[2, 2], patch_size=2),
    "dim 48, depths 2-4-2, patch 4": dict(embed_dim=48, depths=[2, 4, 2], patch_size=4),
}


def median(v: list[float]) -> float:
    return sorted(v)[len(v) // 2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--amp", choices=("none", "bf16"), default="none")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, amp {args.amp}")
    for batch in args.batch_sizes:
        for name, arch in CONFIGS.items():
            model = focalnet.create_model("focalnet_tiny_srf", in_chans=1, num_classes=10, drop_path_rate=0.05,
                                          **fit_stage_lists("focalnet_tiny_srf", dict(arch)))
            opt = torch.optim.AdamW(model.parameters(), 1e-3)
            x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp == "bf16"):
                    loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - t0)
            model.eval()
            eval_times = []
            with torch.no_grad():
                xe = torch.randn(256, 1, 28, 28)
                for _ in range(4):
                    t0 = time.perf_counter()
                    model(xe)
                    eval_times.append(time.perf_counter() - t0)
            params = sum(p.numel() for p in model.parameters())
            macs = try_count_macs(model, 1, 28)
            print(f"batch {batch:>3} | {name:<30} | {params / 1e6:5.2f} M params | {macs / 1e6:5.1f} M MACs | "
                  f"train {batch / median(times[2:]):5.0f} img/s | eval {256 / median(eval_times[1:]):5.0f} img/s",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
