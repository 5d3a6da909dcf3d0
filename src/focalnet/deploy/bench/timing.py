"""Steady-state timing: calls run in blocks of consecutive calls, the blocks of the implementations interleaved
(A A A B B B A A A B B B ...), each block starting with one re-warming call kept apart ("cold")."""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from .implementations import BenchError

__all__ = ["block_schedule", "time_in_blocks", "timed_call"]


def block_schedule(keys: Sequence[str], *, rounds: int, block: int) -> list[tuple[str, int]]:
    """The order of a timed run: [(key, timed calls)], blocks of up to `block` consecutive calls per key, the keys
    taking turns (A A A B B B A A A B B B ...) until each has `rounds` timed calls."""
    if rounds < 1 or block < 1:
        raise BenchError(f"rounds and block must be at least 1, got {rounds} and {block}")
    out, done = [], 0
    while done < rounds:
        n = min(block, rounds - done)
        out += [(k, n) for k in keys]
        done += n
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of `fn` takes, the device's queue drained before and after (CUDA runs asynchronously)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def time_in_blocks(
    calls: dict[str, Callable[[], Any]], device: torch.device, *, warmup: int, rounds: int, block: int,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, dict]:
    """Steady-state times of each call: {key: dict(first=s, times=[s], cold=[s])}.

    Each call is run `warmup` times first (the first of them timed: compilation happens there), then
    `block_schedule`: each block begins with one re-warming call, kept apart in `cold` (the first call after
    another implementation ran), and `times` holds the rest, consecutive calls at steady state."""
    out: dict[str, dict] = {}
    for key, fn in calls.items():
        first = timed_call(fn, device)
        for _ in range(max(warmup - 1, 0)):
            fn()
        out[key] = dict(first=first, times=[], cold=[])
        log(f"  {key}: first call {first:.2f} s")
    for key, n in block_schedule(list(calls), rounds=rounds, block=block):
        fn = calls[key]
        out[key]["cold"].append(timed_call(fn, device))
        out[key]["times"] += [timed_call(fn, device) for _ in range(n)]
    return out
