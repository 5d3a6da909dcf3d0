"""The CPU side of benchmarks/gpu_check.py: arguments, --only, the table and its JSON, SKIP without CUDA, and a
section's time limit (tiny fake sections, each run as the script runs its own: in a spawned process)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402
from gpu_check import Context, Outcome, Result, Section, Skip  # noqa: E402

NO_GPU = dict(torch="2.x", cuda=None, gpu=None, driver=None, gpu_memory_gb=None, python="3.x")
A_GPU = dict(torch="2.x", cuda="13.0", gpu="NVIDIA H200", driver="570.1", gpu_memory_gb=139.8, python="3.x")


# fake sections: module-level, so that the spawned child can import them
def quick(ctx: Context) -> Result:
    return Result(True, "42 things", dict(device=ctx.device, left=ctx.left()))


def failing(ctx: Context) -> Result:
    return Result(False, "3 of 4 things", {})


def broken(ctx: Context) -> Result:
    raise RuntimeError("the kernel is on fire")


def skipping(ctx: Context) -> Result:
    raise Skip("nothing to do here")


def sleepy(ctx: Context) -> Result:
    # a grandchild too, as torchrun or pytest would be: the time limit must take it down with the section
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    Path(ctx.out, "grandchild.pid").write_text(str(child.pid))
    time.sleep(120)
    return Result(True, "never", {})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child not yet reaped by its (dead) parent is a zombie: gone for our purposes
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_arguments():
    args = gpu_check.parse_args([])
    assert args.only is None and args.budget == 480 and not args.require_gpu and not args.cpu_smoke
    args = gpu_check.parse_args(["--only", "bf16", "--only", "bench", "--out", "x", "--require-gpu"])
    assert args.only == ["bf16", "bench"] and args.out == "x" and args.require_gpu
    for bad in (["--only", "nonsense"], ["--budget", "0"], ["--frobnicate"]):
        with pytest.raises(SystemExit) as e:
            gpu_check.parse_args(bad)
        assert e.value.code == 2
    # every section fits the 8 minutes together
    assert sum(s.limit_s for s in gpu_check.SECTIONS) <= gpu_check.TOTAL_BUDGET_S
    assert [s.name for s in gpu_check.SECTIONS] == ["cuda_tests", "bf16", "training", "torchrun", "bench", "maskrcnn"]


def test_table_and_header():
    outcomes = [Outcome("parity", "PASS", "fp32 vs timm 3.1e-06", 12.34), Outcome("bench", "FAIL", "2/4 runs", 150.0),
                Outcome("maskrcnn", "SKIP", "no CUDA device", 0.0)]
    table = gpu_check.format_table(outcomes)
    lines = table.splitlines()
    assert lines[0].split() == ["section", "status", "seconds", "figure"]
    assert lines[2].split(None, 3) == ["parity", "PASS", "12.3", "fp32 vs timm 3.1e-06"]
    assert lines[3].split(None, 3) == ["bench", "FAIL", "150.0", "2/4 runs"]
    assert lines[-1].startswith("1 passed, 1 failed, 1 skipped; 162 s")
    assert len({len(line) for line in lines[:2]}) == 1  # the rule is as wide as the head
    assert "no CUDA device" in gpu_check.format_header(NO_GPU)
    assert gpu_check.format_header(A_GPU) == "GPU: NVIDIA H200 (139.8 GiB), driver 570.1; torch 2.x, CUDA 13.0, Python 3.x"


def test_without_cuda_every_section_is_skipped(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "header", lambda: NO_GPU)
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["header"] == NO_GPU and data["argv"] == ["--out", str(tmp_path)]
    assert [(s["name"], s["status"], s["figure"]) for s in data["sections"]] == [
        (s.name, "SKIP", "no CUDA device") for s in gpu_check.SECTIONS]
    assert out.count("SKIP") == len(gpu_check.SECTIONS) and "no CUDA device" in out
    assert gpu_check.main(["--out", str(tmp_path), "--require-gpu", "--only", "bench"]) == 1
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["name"] for s in data["sections"]] == ["bench"]


def test_only_and_exit_status_with_a_gpu(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "header", lambda: A_GPU)
    fakes = (Section("quick", quick, 60), Section("failing", failing, 60), Section("skipping", skipping, 60))
    monkeypatch.setattr(gpu_check, "SECTIONS", fakes)
    assert gpu_check.main(["--out", str(tmp_path), "--only", "quick", "--only", "skipping"]) == 0
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    got = {s["name"]: s for s in data["sections"]}
    assert list(got) == ["quick", "skipping"]
    assert got["quick"]["status"] == "PASS" and got["quick"]["details"]["device"] == "cuda"
    assert 0 < got["quick"]["details"]["left"] <= 60
    assert got["skipping"]["status"] == "SKIP" and got["skipping"]["figure"] == "nothing to do here"
    assert gpu_check.main(["--out", str(tmp_path)]) == 1  # a failed section fails the run
    table = capsys.readouterr().out
    assert "GPU: NVIDIA H200" in table and "3 of 4 things" in table


def test_an_error_in_a_section_is_its_failure(tmp_path):
    ctx = Context(out=str(tmp_path))
    o = gpu_check.run_section(Section("broken", broken, 60), ctx, 60)
    assert o.status == "FAIL" and o.figure == "RuntimeError: the kernel is on fire"
    assert "Traceback" in o.error and "def broken" not in o.figure
    assert not list(tmp_path.glob(".*.result.json*"))  # nothing left behind


def test_a_section_past_its_time_is_killed_with_its_children(tmp_path):
    ctx = Context(out=str(tmp_path))
    t0 = time.monotonic()
    o = gpu_check.run_section(Section("sleepy", sleepy, 120), ctx, 6)
    assert time.monotonic() - t0 < 30
    assert o.status == "FAIL" and o.figure == "timed out after 6 s (killed)" and 6 <= o.seconds < 30
    pid = int((tmp_path / "grandchild.pid").read_text())
    deadline = time.time() + 10
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)


def test_the_budget_is_shared(tmp_path, capsys):
    ctx = Context(out=str(tmp_path))
    outcomes = gpu_check.run_all([Section("quick", quick, 60)] * 2, ctx, budget_s=5, cuda=True)
    assert [(o.status, o.figure) for o in outcomes] == [("SKIP", "no time left in the 5 s budget")] * 2
