"""focalnet.allocator: glibc told to keep freed memory, unless the user chose an allocator (each case in a fresh
process: the setting is process-wide)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")
PROBE = ("import ctypes, focalnet.allocator as a; said = a.keep_freed_memory(); print(said); print(a.kept()); "
         "print(a.keep_freed_memory() == said)")


def _run(**env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items()
             if not (k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD"))}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, "PYTHONPATH": SRC, **env}, check=True,
                         capture_output=True, text=True).stdout
    return out.strip().splitlines()


def _glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _glibc(), reason="glibc's mallopt: Linux with glibc only")
def test_glibc_keeps_freed_memory_once_per_process():
    said, kept, again = _run()
    assert "keeping freed memory" in said and kept == said and again == "True"


@pytest.mark.parametrize("env", [dict(MALLOC_ARENA_MAX="2"), dict(GLIBC_TUNABLES="glibc.malloc.trim_threshold=0")])
def test_an_allocator_the_user_chose_is_left_alone(env):
    said, kept, _ = _run(**env)
    assert said.startswith("allocator as set by the user") and next(iter(env)) in said and kept == "None"


def test_glibcs_defaults_can_be_kept():
    said, kept, _ = _run(FOCALNET_MALLOC="default")
    assert "FOCALNET_MALLOC=default" in said and kept == "None"


def test_a_training_run_on_the_cpu_says_and_records_it(tmp_path):
    from focalnet.train import TrainConfig, train

    summary = train(TrainConfig(data="digits", model="focalnet_tiny_srf", arch=dict(embed_dim=8, depths=[1, 1]),
                                epochs=1, batch_size=64, limit_train=128, limit_eval=64, output=str(tmp_path / "run"),
                                progress="off", device="cpu"))
    assert summary["allocator"]  # what was done (or why not), said in the start-up lines too
