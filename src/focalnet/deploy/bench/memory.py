"""Peak memory of training, measured in a fresh process per implementation.

On CPU the figure is the resident-set high-water mark (VmHWM, else getrusage's ru_maxrss) of the child, minus
its resident set just before the first step: what the steps added, including the allocator's retained pages. On
CUDA it is torch.cuda.max_memory_allocated above the allocation before the first step.

The child is started by multiprocessing's "spawn" method: a new interpreter that receives this process's
sys.path, so it imports this very copy of focalnet (a source checkout, an installed one) with no search path
built by hand, and nothing of this process's memory.
"""
from __future__ import annotations

import multiprocessing
import os
import resource
import traceback
from dataclasses import asdict
from typing import Any

import torch

from .implementations import COMPILED_SUFFIX, split_variant
from .machine import read_text
from .runs import Workload, make_training_step

__all__ = ["peak_training_memory"]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_rss_peak() -> bool:
    """Reset the kernel's resident-set high-water mark (VmHWM) to the current resident set; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_peak_bytes() -> int:
    for line in read_text("/proc/self/status").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _peak_child(cfg: dict) -> dict:
    """Peak memory of `steps` training steps above the memory held before the first step (model, AdamW, batch).
    One step runs first, its peak left out (the high-water mark is reset after it), so that a compiled variant's
    compilation is not counted as training memory; what that step leaves allocated (AdamW's state, the allocator's
    retained pages) is."""
    torch.set_num_threads(cfg["threads"])
    work = Workload(**cfg["work"])
    dev = torch.device(work.device)
    name = cfg["impl"] + (COMPILED_SUFFIX if work.compile and not split_variant(cfg["impl"])[1] else "")
    module, fn, x, step = make_training_step(name, work, recompute=cfg["recompute"])
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev) if cuda else _rss_bytes()
    step()
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        reset = True
    else:
        reset = _reset_rss_peak()
    for _ in range(cfg["steps"]):
        step()
    if cuda:
        torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) if cuda else _rss_peak_bytes()
    return dict(peak_bytes=int(peak - base), baseline_bytes=int(base), first_step_excluded=reset)


def _child_main(cfg: dict, conn: Any) -> None:
    # the parent gets (True, result) or (False, the traceback): an exception object may not survive pickling
    try:
        conn.send((True, _peak_child(cfg)))
    except BaseException:
        conn.send((False, traceback.format_exc()))
    finally:
        conn.close()


def _in_fresh_process(cfg: dict, *, timeout: float) -> dict:
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(cfg, send), name=f"focalnet-bench-memory-{cfg['impl']}")
    proc.start()
    send.close()  # the child holds the only sending end: its death is an EOF here
    try:
        if not receive.poll(timeout):
            raise RuntimeError(f"the memory measurement of {cfg['impl']} took over {timeout:g} s")
        ok, payload = receive.recv()
    except EOFError:
        proc.join(5)
        raise RuntimeError(f"the memory measurement of {cfg['impl']} died (exit code {proc.exitcode}; "
                           "killed for memory?)") from None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
        receive.close()
    if not ok:
        raise RuntimeError(f"the memory measurement of {cfg['impl']} failed:\n{payload[-2000:]}")
    return payload


def peak_training_memory(impl: str, work: Workload = Workload(), *, recompute: bool = True, steps: int = 2,
                         timeout: float = 1800) -> int:
    """Bytes that `steps` training steps add to a fresh process, after one step whose own peak is left out (see
    `_peak_child`, and the module docstring)."""
    split_variant(impl)  # an unknown name fails here, not in the child
    cfg = dict(impl=impl, work=asdict(work), recompute=recompute, steps=steps, threads=torch.get_num_threads())
    return int(_in_fresh_process(cfg, timeout=timeout)["peak_bytes"])
