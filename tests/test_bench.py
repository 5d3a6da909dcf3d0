"""`focalnet bench`'s reference peak and the model it benches: a CPU's matmul peak measured once per run (per
number format and thread count), GFLOP/s and %peak on every row, and a resized model (--arch, --in-chans,
--num-classes) benched end to end. No timing is asserted: the peaks here are fakes or tiny measurements."""
from __future__ import annotations

import json

import pytest
import torch

from focalnet.deploy import bench
from focalnet.deploy.bench import machine

# the main job's model (configs/fashion-mnist.yaml), as `focalnet bench` takes it
MAIN_JOB = ["--arch", "embed_dim=32", "depths=[1,2,2]", "patch_size=2", "--in-chans", "1", "--num-classes", "10",
            "--img-size", "28"]


@pytest.fixture
def small_peaks(monkeypatch):
    """A fresh cache and a 64 x 64 product: a measurement of a few milliseconds."""
    monkeypatch.setattr(machine, "_CPU_PEAKS", {})
    monkeypatch.setattr(machine, "PEAK_SIDE", 64)
    monkeypatch.setattr(machine, "PEAK_CALLS", 4)


@pytest.fixture
def fake_peaks(monkeypatch):
    """Round CPU peaks, so that the table's figures can be checked: fp32 100, bf16 200, int8 400 GFLOP/s."""
    peaks = {"fp32": 100e9, "bf16": 200e9, "int8": 400e9}
    monkeypatch.setattr(machine, "cpu_matmul_peak", lambda fmt, **kw: peaks.get(machine.number_format(fmt)))
    return peaks


def test_cpu_peak_is_measured_once_per_format_and_thread_count(small_peaks, monkeypatch):
    measured = []
    real = machine._measure_matmul
    monkeypatch.setattr(machine, "_measure_matmul", lambda fmt, **kw: measured.append(fmt) or real(fmt, **kw))
    threads = torch.get_num_threads()
    first = bench.cpu_matmul_peak("fp32")
    assert first > 0 and bench.cpu_matmul_peak("float32") == first  # the old spelling is the same format
    assert bench.device_peak_flops(torch.device("cpu"), "fp32") == first  # what a row is compared with
    assert measured == ["fp32"]
    assert bench.cpu_matmul_peak("fp32", threads=1) > 0  # another thread count is another measurement ...
    assert len(measured) == (1 if threads == 1 else 2) and torch.get_num_threads() == threads  # ... threads restored
    assert bench.cpu_matmul_peak("fp16") is None  # fp16 is for CUDA: nothing measured
    assert len(measured) == (1 if threads == 1 else 2)


def test_bf16_and_int8_peaks_only_where_the_cpu_computes_them(small_peaks, monkeypatch):
    monkeypatch.setattr(machine, "native_bf16", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: False)
    assert bench.cpu_matmul_peak("bf16") is None and bench.cpu_matmul_peak("int8") is None
    line = bench.peak_line("cpu")
    assert line.startswith("CPU matmul peak (64^2, ") and "fp32 " in line and "GFLOP/s" in line
    assert "bf16 - (emulated on this CPU)" in line and "int8 - (no AVX512-VNNI" in line
    monkeypatch.setattr(machine, "_CPU_PEAKS", {})
    monkeypatch.setattr(machine, "native_bf16", lambda: True)  # measured (emulated here or not: it runs)
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: torch.backends.mkldnn.is_available())
    assert bench.cpu_matmul_peak("bf16") > 0
    if torch.backends.mkldnn.is_available():  # int8: oneDNN with VNNI, else torch's scalar loop (quick at 64^2)
        assert bench.cpu_matmul_peak("int8") > 0 and "GOP/s" in bench.peak_line("cpu")


def test_gpu_peaks_stay_the_data_sheets(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    gpu = torch.device("cuda", 0)
    assert bench.device_peak_flops(gpu, "bfloat16") == 989e12 and bench.device_peak_flops(gpu, "int8") is None
    assert bench.peak_line(gpu) == "GPU peak (NVIDIA H200, data sheet, dense): bf16 989 TFLOP/s, fp16 989 TFLOP/s, " \
                                   "fp32 (TF32) 494 TFLOP/s"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some GPU")
    assert bench.device_peak_flops(gpu, "fp32") is None and "no peak known" in bench.peak_line(gpu)


def _row(impl, precision, *, mode="infer", flops=1e9, number_format=""):
    # batch 2 in 0.5 s: 4 img/s, so 1 GFLOP per image is 4 GFLOP/s
    return bench.BenchResult(impl, mode, 2, 28, precision, "cpu", False, times_s=[0.5, 0.5], flops_per_img=flops,
                             number_format=number_format)


def test_cpu_rows_show_gflops_and_their_fraction_of_the_peak_of_their_number_format(fake_peaks):
    rows = [_row("ours", "fp32"), _row("ours", "bf16"), _row("ours-int8", "fp32", number_format="int8"),
            _row("ours", "fp32", mode="train", flops=3e9), _row("hf", "fp32", flops=None)]
    table = bench.format_table(rows, machine=bench.machine_state())
    lines = table.splitlines()
    assert lines[1] == "CPU matmul peak (2048^2, %d threads, best quarter of 12 calls): fp32 100 GFLOP/s, bf16 " \
                       "200 GFLOP/s, int8 400 GOP/s" % torch.get_num_threads()
    cells = [line.split()[11:13] for line in lines[4:9]]  # GFLOP/s, %peak
    assert cells == [["4.00", "4.00"], ["4.00", "2.00"], ["4.00", "1.00"], ["12.0", "12.0"], ["-", "-"]]
    assert "training FLOPs = 3 x forward (forward + backward)" in table
    assert rows[2].to_dict()["number_format"] == "int8" and rows[1].computes_in == "bf16"


def test_bench_runs_the_main_jobs_model_resized(small_peaks, tmp_path, capsys):
    from focalnet.cli import main
    from focalnet.factory import create_model
    from focalnet.flops import forward_flops

    out = tmp_path / "bench.json"
    assert main(["bench", "--mode", "train", "--impl", "ours", *MAIN_JOB, "--batch-size", "2", "--rounds", "2",
                 "--warmup", "0", "--block", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "CPU matmul peak (64^2" in text and "1 input channel(s), 10 classes, 28 px" in text
    data = json.loads(out.read_text())
    arch = data["args"]["arch"]
    # the variant's four-stage lists fitted to three stages, as `focalnet train` fits them
    assert arch == dict(embed_dim=32, depths=[1, 2, 2], patch_size=2, focal_levels=[2, 2, 2], focal_windows=[3, 3, 3])
    model = create_model("focalnet_tiny_srf", in_chans=1, num_classes=10, **arch)
    (row,) = data["results"]
    assert row["mode"] == "train" and row["flops_per_img"] == 3 * forward_flops(model, torch.zeros(1, 1, 28, 28))
    table_row = next(line for line in text.splitlines() if line.startswith("ours ") and " train " in line)
    gflops, peak = table_row.split()[11:13]
    assert float(gflops) > 0 and float(peak) > 0 and data["peak_flops"]["fp32"] > 0


def test_a_resized_model_refuses_the_implementations_that_cannot_take_it(capsys):
    from focalnet.cli import main
    from focalnet.cli.deploy import _default_implementations

    assert main(["bench", "--impl", "ours", "--impl", "timm", *MAIN_JOB]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "timm cannot take --arch" in err
    assert "the implementations that can: ours, ours-fused, ours-fused-bf16, ours-int8" in err
    assert main(["bench", "--compare", "--arch", "embed_dim=32"]) == 2
    assert "timm, hf, swin_t, convnext_t cannot take --arch" in capsys.readouterr().err
    assert _default_implementations({"embed_dim": 32}) == ["ours", "ours-fused"]  # no --impl: timm left out
    with pytest.raises(bench.BenchError, match="hf cannot take --arch"):
        bench.build_implementation("hf", variant="focalnet_tiny_srf", arch=dict(embed_dim=32))
    assert main(["bench", "--arch", "in_chans=1"]) == 2
    assert "give --in-chans 1 instead" in capsys.readouterr().err
    assert main(["bench", "--arch", "width=3"]) == 2  # the rules of `focalnet train --arch`
    assert "unknown architecture argument" in capsys.readouterr().err
    assert main(["bench", "--arch", "embed_dim"]) == 2  # ... and its parser
    assert "KEY=VALUE" in capsys.readouterr().err


def test_every_implementation_takes_input_channels_and_classes():
    with torch.device("meta"):  # shapes only: no weights, no arithmetic
        model, fn = bench.build_implementation("timm", variant="focalnet_tiny_srf", img_size=32, in_chans=1,
                                               num_classes=10)
        assert fn(torch.zeros(1, 1, 32, 32)).shape == (1, 10)
    work = bench.Workload(batch_size=3, img_size=28, in_chans=1, num_classes=10)
    assert work.batch().shape == (3, 1, 28, 28) and int(work.labels().max()) < 10
