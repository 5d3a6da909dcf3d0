"""Issue 25: one test per kind of hostile file, each through the boundary that every reader shares.

Kinds: a FIFO, /dev/zero and links to it, symlink loops (a file, a config.json, a data folder), tensors that
materialise far more than they store (stride 0), weights of the wrong dtype or kind, nesting and YAML aliases
without bound, fields that disagree with the tensors, damaged records, and writes that replace something
(checked first, renamed last, pairs together, one writer at a time, temp files of a killed run cleaned up).
Every test runs under an alarm: a hang is a failure, not a stuck CI job.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from focalnet.checkpoints import CheckpointError, read_checkpoint, save_model, write_checkpoint
from focalnet.checkpoints.safeload import safe_torch_load
from focalnet.cli import main
from focalnet.errors import FocalNetError
from focalnet.models import model_from_arch
from focalnet.safeio import InputError, loads_json, loads_yaml, printable, read_bytes, walk_files
from focalnet.utils import atomic_group, output_lock
from hostile import ARCH, PRE, ckpt, no_hang, photo  # noqa: F401 (fixtures)


GRAY = {**ARCH, "in_chans": 1}


@pytest.fixture(autouse=True)
def _fresh_logging():
    """The CLI points the focalnet logger at the stderr pytest captured for one test: detach it after."""
    yield
    logging.getLogger("focalnet").handlers.clear()


def _cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI; it must exit 2 with exactly one error line and no traceback. Returns that line."""
    with no_hang():
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("focalnet ")]
    assert len(lines) == 1, err
    return lines[0]


def _metadata(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


# -- FIFOs, devices, symlink loops ------------------------------------------------------------------------


def test_a_fifo_is_refused_by_every_reader(ckpt, photo, tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for name in ("f.safetensors", "f.pth"):
        os.symlink(fifo, tmp_path / name)
        assert "FIFO" in _cli_error(capsys, ["info", str(tmp_path / name)])
    assert "FIFO" in _cli_error(capsys, ["predict", "--checkpoint", str(ckpt), str(fifo)])
    for i, inside in enumerate(("config.json", "model.safetensors")):  # a Hugging Face folder, one member a FIFO
        folder = tmp_path / f"hf{i}"
        write_checkpoint(model_from_arch(ARCH).state_dict(), ARCH, folder, fmt="hf")
        (folder / inside).unlink()
        os.mkfifo(folder / inside)
        assert "FIFO" in _cli_error(capsys, ["info", str(folder)])
    pth = tmp_path / "o.pth"  # the authors' layout with a FIFO where its JSON record goes
    write_checkpoint(model_from_arch(ARCH).state_dict(), ARCH, pth, fmt="official")
    Path(f"{pth}.focalnet.json").unlink()
    os.mkfifo(f"{pth}.focalnet.json")
    assert "FIFO" in _cli_error(capsys, ["verify", str(pth)])


def test_dev_zero_and_a_link_to_it_are_one_line(tmp_path, capsys):
    os.symlink("/dev/zero", tmp_path / "zero.pth")
    for target in ("/dev/zero", str(tmp_path / "zero.pth")):
        assert "character device" in _cli_error(capsys, ["info", target])
    with pytest.raises(InputError, match="character device"):
        read_bytes("/dev/zero")


def test_symlink_loops_are_errors_not_defaults(ckpt, tmp_path, capsys):
    os.symlink("loop.pth", tmp_path / "loop.pth")
    assert "symlink loop" in _cli_error(capsys, ["info", str(tmp_path / "loop.pth")])
    folder = tmp_path / "hf"  # a config.json that loops: never read as "no config" (a gray model made RGB)
    write_checkpoint(model_from_arch(GRAY).state_dict(), GRAY, folder, fmt="hf")
    (folder / "config.json").unlink()
    os.symlink("config.json", folder / "config.json")
    with pytest.raises(CheckpointError, match="symlink loop"):
        read_checkpoint(folder)


def test_data_folders_do_not_follow_folder_symlinks(tmp_path):
    from focalnet.train.data import build_datasets
    from focalnet.train.recipes import get_recipe

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 20), (i * 60, 0, 0)).save(tmp_path / split / c / f"{i}.png")
    os.symlink(tmp_path / "val", tmp_path / "val" / "a" / "up")  # a loop
    os.symlink(tmp_path / "val" / "a", tmp_path / "val" / "b" / "side")  # two folders linked to each other
    os.symlink(tmp_path / "val" / "b", tmp_path / "val" / "a" / "side")
    os.mkfifo(tmp_path / "val" / "a" / "pipe.png")
    with no_hang():
        train_set, eval_set, info = build_datasets(str(tmp_path), get_recipe("small"), img_size=16)
    assert (len(train_set), len(eval_set)) == (6, 6)  # each image once; the FIFO is not an image
    assert any("not followed" in n for n in info.notes)
    assert len(list(walk_files(tmp_path))) == 12


# -- tensors and fields -----------------------------------------------------------------------------------


def test_a_stride_zero_tensor_counts_what_it_materialises(tmp_path, monkeypatch):
    path = tmp_path / "bomb.pth"
    torch.save({"model": {"w": torch.zeros(1).expand(2**28)}}, path)  # 4 bytes stored, 1 GiB once copied
    assert path.stat().st_size < 10_000
    with pytest.raises(CheckpointError, match="materialised"):
        safe_torch_load(path)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64, torch.uint8])
def test_weights_of_a_wrong_dtype_are_refused(dtype, tmp_path):
    sd = {k: v.to(dtype) for k, v in model_from_arch(ARCH).state_dict().items()}
    path = tmp_path / "w.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match=str(dtype)):
        read_checkpoint(path)


@pytest.mark.parametrize("kind", ["meta", "sparse", "quantized"])
def test_meta_sparse_and_quantized_tensors_are_refused(kind, tmp_path):
    sd = model_from_arch(ARCH).state_dict()
    w = sd["stem.proj.weight"]
    sd["stem.proj.weight"] = {"meta": lambda: w.to("meta"), "sparse": lambda: w.to_sparse(),
                              "quantized": lambda: torch.quantize_per_tensor(w, 0.1, 0, torch.qint8)}[kind]()
    path = tmp_path / "k.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


def test_deep_nesting_is_refused_everywhere(tmp_path):
    deep: list = []
    for _ in range(100):  # past the bound of 64, within what torch.save itself can write
        deep = [deep]
    torch.save({"model": model_from_arch(ARCH).state_dict(), "extra": deep}, tmp_path / "deep.pth")
    with pytest.raises(CheckpointError, match="nested"):
        read_checkpoint(tmp_path / "deep.pth")
    with pytest.raises(InputError, match="nested"):
        loads_json("[" * 100_000 + "]" * 100_000, "x")
    with pytest.raises(InputError, match="nested"):
        loads_yaml("[" * 5000 + "]" * 5000, "x")


def test_a_yaml_alias_bomb_is_refused_fast_without_printing_it(tmp_path):
    from focalnet.train.config import load_yaml_config

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\nlr: *a8\n")
    with no_hang(10), pytest.raises(FocalNetError, match="alias") as e:
        load_yaml_config(str(tmp_path / "bomb.yaml"))
    assert len(str(e.value)) < 400


def test_a_three_value_mean_for_a_gray_model_is_an_error_naming_the_key(tmp_path):
    path = tmp_path / "gray.safetensors"
    save_model(model_from_arch(GRAY), path, preprocessing=dict(mean=[0.3], std=[0.4], img_size=28))
    meta, sd = _metadata(path)
    meta["preprocessing"] = json.dumps(dict(mean=[0.3] * 3, std=[0.4] * 3, img_size=28))
    save_file(sd, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="'preprocessing'.*1"):
        read_checkpoint(path)


def test_damaged_or_folder_shaped_records_are_errors(tmp_path, capsys):
    pth = tmp_path / "o.pth"
    write_checkpoint(model_from_arch(GRAY).state_dict(), GRAY, pth, fmt="official")
    side = Path(f"{pth}.focalnet.json")
    side.write_text('{"arch": {"family": "hierarchical"')  # cut short
    assert "focalnet.json" in _cli_error(capsys, ["verify", str(pth)])
    side.write_text(json.dumps({"written_by": "another tool"}))  # garbled: no fingerprint, no reference
    assert "damaged focalnet record" in _cli_error(capsys, ["verify", str(pth)])
    side.unlink()
    side.mkdir()
    assert "folder" in _cli_error(capsys, ["info", str(pth)])


def test_verify_fails_what_the_loaders_refuse(ckpt, tmp_path, capsys):
    meta, sd = _metadata(ckpt)
    meta["arch"] = json.dumps({**ARCH, "embed_dim": 32})  # metadata and tensors disagree
    save_file(sd, str(tmp_path / "lie.safetensors"), metadata=meta)
    assert "does not fit" in _cli_error(capsys, ["verify", str(tmp_path / "lie.safetensors")])
    meta, sd = _metadata(ckpt)
    meta["focalnet_record"] = json.dumps({"arch": ARCH})  # a garbled record is a failure, not "another tool"
    save_file(sd, str(tmp_path / "garbled.safetensors"), metadata=meta)
    assert "damaged focalnet record" in _cli_error(capsys, ["verify", str(tmp_path / "garbled.safetensors")])


def test_text_from_files_is_printed_escaped():
    assert printable("cat\n\x1b[2KFAKE: 99.99% dog\x00\ud800") == "cat\\x0a\\x1b[2KFAKE: 99.99% dog\\x00\\ud800"
    assert printable("chat noir, 猫") == "chat noir, 猫"


# -- writes that replace something ------------------------------------------------------------------------


def test_export_force_keeps_the_old_file_when_the_new_one_fails_its_check(tmp_path):
    from focalnet.deploy import export_model

    out = tmp_path / "good.torchscript.pt"
    out.write_bytes(b"the good export")

    def failing_check(new: Path) -> None:
        assert new.is_file() and new != out
        raise FocalNetError("differs from PyTorch")

    with pytest.raises(FocalNetError, match="differs"):
        export_model(model_from_arch(ARCH), out, "torchscript", img_size=(32, 32), overwrite=True, check=failing_check)
    assert out.read_bytes() == b"the good export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.torchscript.pt"]


def test_the_official_pair_is_replaced_together_or_not_at_all(tmp_path, monkeypatch):
    pth = tmp_path / "o.pth"
    side = Path(f"{pth}.focalnet.json")
    pth.write_bytes(b"old weights")
    side.write_text("old record")

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="space"):
        write_checkpoint(model_from_arch(ARCH).state_dict(), ARCH, pth, fmt="official")
    assert (pth.read_bytes(), side.read_text()) == (b"old weights", "old record")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.pth", "o.pth.focalnet.json"]


def test_a_second_writer_is_refused_and_a_killed_writers_temps_are_removed(ckpt, tmp_path, capsys):
    out = tmp_path / "out.pth"
    stale = tmp_path / ".out.pth.k1ll3d_x.tmp"  # what a SIGKILLed convert leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"x" * 1000)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom focalnet.utils import output_lock\n"
         f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n    sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert "another process" in _cli_error(capsys, ["convert", str(ckpt), str(out), "--to", "official"])
    finally:
        holder.communicate("\n", timeout=60)
    with no_hang():
        assert main(["convert", str(ckpt), str(out), "--to", "official"]) == 0
    assert not stale.exists() and out.is_file()
    assert not list(tmp_path.glob(".out.pth*"))


def test_atomic_group_keeps_every_old_file_on_a_failure(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("A")
    b.write_text("B")
    with pytest.raises(RuntimeError):
        with atomic_group([a, b]) as (ta, tb):
            ta.write_text("new A")
            raise RuntimeError("killed between the two files")
    assert (a.read_text(), b.read_text()) == ("A", "B")
    with output_lock(a), output_lock(a):  # re-entrant in one process
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_convert_to_hf_accepts_a_folder_name_with_a_dot(ckpt, tmp_path, capsys):
    with no_hang():
        assert main(["convert", str(ckpt), str(tmp_path / "focalnet-t.v2"), "--to", "hf"]) == 0
    assert (tmp_path / "focalnet-t.v2" / "config.json").is_file()


# -- values -----------------------------------------------------------------------------------------------


def test_opsets_workers_and_sizes_are_checked_against_what_exists():
    from focalnet.deploy.export import ExportError, check_opset
    from focalnet.images import ImageTooLargeError
    from focalnet.train.data import DataError, available_cpus, check_workers

    for opset, exporter in ((-1, "torchscript"), (999, "dynamo"), (7, "dynamo")):
        with pytest.raises(ExportError, match="opset"):
            check_opset(opset, exporter)
    check_opset(17, "torchscript")
    with pytest.raises(DataError, match="--workers"):
        check_workers(available_cpus() + 1)
    assert check_workers(0) == 0
    from focalnet.deploy import export_model

    with pytest.raises(ImageTooLargeError):
        export_model(model_from_arch(ARCH), "never.onnx", "onnx", img_size=(100_000, 100_000))


def test_a_one_class_folder_and_an_elongated_eval_image_are_refused(tmp_path):
    from focalnet.train.data import DataError, build_datasets
    from focalnet.train.recipes import get_recipe

    for split in ("train", "val"):
        (tmp_path / split / "only").mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(tmp_path / split / "only" / "x.png")
    with pytest.raises(DataError, match="one class"):
        build_datasets(str(tmp_path), get_recipe("small"), img_size=16)
    (tmp_path / "train" / "other").mkdir()
    (tmp_path / "val" / "other").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "train" / "other" / "y.png")
    Image.new("RGB", (1, 100_000)).save(tmp_path / "val" / "other" / "strip.png")  # a 1 x 100000 banner
    _, eval_set, _ = build_datasets(str(tmp_path), get_recipe("small"), img_size=16)
    bad = [eval_set[i][2] for i in range(len(eval_set)) if eval_set[i][2]]
    assert len(bad) == 1 and "strip.png" in bad[0] and "limit" in bad[0]


def test_resume_refuses_a_checkpoint_copied_in_from_another_run(tmp_path):
    import shutil

    from focalnet.train import TrainConfig, train

    tiny = dict(data="digits", recipe="small", batch_size=64, limit_train=128, limit_eval=64, epochs=1, progress="off")
    train(TrainConfig(**tiny, arch=dict(embed_dim=16, depths=[1, 1], patch_size=1), output=str(tmp_path / "ours")))
    train(TrainConfig(**tiny, arch=dict(embed_dim=8, depths=[1, 1], patch_size=1), output=str(tmp_path / "theirs")))
    last = tmp_path / "ours" / "checkpoints" / "last.pth"
    before = (tmp_path / "ours" / "model.safetensors").read_bytes()
    shutil.copy(tmp_path / "theirs" / "checkpoints" / "last.pth", last)
    with pytest.raises(FocalNetError, match="not the run of .*embed_dim"):
        train(TrainConfig(resume=str(last), progress="off"))
    assert (tmp_path / "ours" / "model.safetensors").read_bytes() == before  # nothing of the run replaced


def test_a_full_disk_under_torch_save_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import io

    from focalnet.utils import OutputError, torch_save

    class FullDisk(io.BytesIO):
        def write(self, data):
            if self.tell() > 1000:
                raise OSError(28, "No space left on device")
            return super().write(data)

    with pytest.raises(OutputError, match="x.pth: No space left"):
        torch_save({"w": torch.zeros(100_000)}, FullDisk(), tmp_path / "x.pth")


def test_an_architecture_too_large_is_refused_on_the_meta_device():
    from focalnet import create_model

    with no_hang(60), pytest.raises(FocalNetError, match="parameters"):
        create_model("focalnet_tiny_srf", depths=[256, 256], focal_levels=[2, 2], focal_windows=[3, 3], embed_dim=4096)


def test_eval_refuses_nan_outputs_and_an_existing_eval_json(tmp_path, capsys):
    model = model_from_arch({**GRAY, "num_classes": 10})
    with torch.no_grad():
        model.head.fc.weight.fill_(float("nan"))
    save_model(model, tmp_path / "nan.safetensors", preprocessing=dict(mean=[0.3], std=[0.4], img_size=8))
    line = _cli_error(capsys, ["eval", str(tmp_path / "nan.safetensors"), "--data", "digits", "--limit", "8"])
    assert "not finite" in line and "%" not in line
    good = tmp_path / "good.safetensors"
    save_model(model_from_arch({**GRAY, "num_classes": 10}), good, preprocessing=dict(mean=[0.3], std=[0.4], img_size=8))
    argv = ["eval", str(good), "--data", "digits", "--limit", "8", "--output", str(tmp_path / "ev")]
    with no_hang(120):
        assert main(argv) == 0
    capsys.readouterr()
    before = (tmp_path / "ev" / "eval.json").read_text()
    assert "--force" in _cli_error(capsys, argv)
    assert (tmp_path / "ev" / "eval.json").read_text() == before
    with no_hang(120):
        assert main(argv + ["--force"]) == 0


def test_hub_readers_offline_are_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    assert "cannot fetch hf-hub:nobody/nothing" in _cli_error(capsys, ["verify", "hf-hub:nobody/nothing"])
