"""The modulation recorder and the pictures: what is recorded is what the model computes, nothing stays
on the model, and the PNGs hold the panels they claim, on real photos."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from focalnet import create_model, save_model
from focalnet.cli import main
from focalnet.inspect import (
    GridLayout,
    ModulationRecorder,
    RecorderError,
    compose_kernels,
    record_modulation,
    resolve_blocks,
    write_pictures,
)

from conftest import perturb_, small_overrides


def _tiny(name: str = "focalnet_tiny_lrf", **kw) -> nn.Module:
    return perturb_(create_model(name, **small_overrides(name), **kw)).eval()


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _module_state(model: nn.Module) -> list:
    return [(name, sorted(vars(m))) for name, m in model.named_modules()]


@pytest.mark.parametrize("name", ["focalnet_tiny_lrf", "focalnet_large_fl4", "focalnet_base_iso"])
def test_records_are_what_the_modulation_computes(name):
    """Rebuild every block's modulation output from the records alone: gates, contexts, global context and
    modulator must be the exact intermediate values (normalize_modulator and post-LN variants included)."""
    model = _tiny(name)
    x = torch.randn(2, 3, 70, 50)  # not a multiple of any stride
    outputs = {}
    handles = [
        b.module.modulation.register_forward_hook(lambda m, a, out, n=b.name: outputs.__setitem__(n, out))
        for b in resolve_blocks(model, "all")
    ]
    with torch.no_grad():
        expected = model(x)
        for h in handles:
            h.remove()
        out, records = record_modulation(model, x, blocks="all")
    assert torch.equal(out, expected)
    assert len(records) == len(resolve_blocks(model, "all"))
    for r in records:
        mod = dict(model.named_modules())[r.block].modulation
        L = mod.focal_level
        B, C, h, w = r.modulator.shape
        assert r.gates.shape == (B, L + 1, h, w) and r.global_context.shape == (B, C, 1, 1)
        assert len(r.contexts) == L and all(z.shape == (B, C, h, w) for z in r.contexts)
        assert r.input_size == (70, 50) and h == -(-70 // r.stride) and w == -(-50 // r.stride)
        with torch.no_grad():
            z = r.context_input
            for l in range(L):
                z = mod.focal_layers[l](z)
                torch.testing.assert_close(z, r.contexts[l])
            torch.testing.assert_close(F.gelu(z.mean((2, 3), keepdim=True)), r.global_context)
            z_out = sum(r.gates[:, l : l + 1] * r.contexts[l] for l in range(L)) + r.gates[:, L:] * r.global_context
            if mod.normalize_modulator:
                z_out = z_out / (L + 1)
            torch.testing.assert_close(mod.h(z_out), r.modulator, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(mod.proj(mod.norm(r.query * r.modulator)), outputs[r.block], rtol=1e-4, atol=1e-5)


def test_recorder_leaves_nothing_on_the_model():
    model = _tiny()
    hooks, state, keys = _hook_count(model), _module_state(model), list(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        rec = ModulationRecorder(model, blocks=["0.0", "3.-1"])
        with rec:
            assert _hook_count(model) > hooks
            model(x)
        assert len(rec.records) == 2 and [r.block for r in rec.records] == ["stages.0.blocks.0", "stages.3.blocks.0"]
        assert _hook_count(model) == hooks == 0
        # the hooks go even when the forward fails
        with pytest.raises(ValueError):
            with ModulationRecorder(model, blocks="all"):
                model(torch.randn(1, 2, 64, 64))
        assert _hook_count(model) == 0
        # rec(x) attaches for one call only
        out, records = rec(x)
        assert _hook_count(model) == 0 and len(records) == 2
        assert torch.equal(model(x), before) and torch.equal(out, before)
    assert _module_state(model) == state and list(model.state_dict()) == keys
    # records are copies: they do not keep the projection's whole output alive nor share it
    r = records[0]
    assert r.gates.is_contiguous() and r.gates.untyped_storage().nbytes() == r.gates.numel() * 4


def test_records_need_a_forward_and_are_per_forward():
    model = _tiny()
    rec = ModulationRecorder(model, blocks="last")
    with rec, torch.no_grad():
        with pytest.raises(RecorderError, match="run a forward"):
            rec.records
        model(torch.randn(1, 3, 64, 64))
        first = rec.records[0].modulator.shape
        model(torch.randn(1, 3, 96, 32))
        assert rec.records[0].modulator.shape != first and rec.records[0].input_size == (96, 32)


def test_block_selection_and_its_errors():
    model = _tiny()  # depths (1, 1, 2, 1)
    assert [b.name for b in resolve_blocks(model)] == [f"stages.{i}.blocks.{j}" for i, j in ((0, 0), (1, 0), (2, 1), (3, 0))]
    assert [b.name for b in resolve_blocks(model, ["2.*", "stages.0.blocks.0"])] == [
        "stages.0.blocks.0", "stages.2.blocks.0", "stages.2.blocks.1"]
    assert [b.stride for b in resolve_blocks(model, "all")] == [4, 8, 16, 16, 32]
    with pytest.raises(RecorderError, match=r"stage 3 has no block 1.*stage 3: blocks 0\.\.0"):
        resolve_blocks(model, "3.1")
    with pytest.raises(RecorderError, match="stage 4 does not exist"):
        resolve_blocks(model, "4.0")
    with pytest.raises(RecorderError, match="cannot read the block 'seven'"):
        resolve_blocks(model, "seven")
    iso = _tiny("focalnet_tiny_iso")  # depth 2
    assert [b.name for b in resolve_blocks(iso, ["-1", 0])] == ["blocks.0", "blocks.1"]
    with pytest.raises(RecorderError, match="block 2 does not exist"):
        resolve_blocks(iso, 2)


def test_a_fused_or_changed_modulation_is_a_clear_error():
    from focalnet.deploy import fuse_for_inference

    model = _tiny()
    fused = fuse_for_inference(model.eval()).model  # a copy whose blocks are focalnet.deploy's FusedBlock
    with pytest.raises(RecorderError, match="stages.3.blocks.0.*fused for inference.*unfused"):
        ModulationRecorder(fused, blocks="3.0").attach()
    assert _hook_count(fused) == 0
    block = model.stages[3].blocks[0]
    # a modulation whose forward no longer runs its observation points (e.g. folded into one conv)
    mod = block.modulation
    mod.forward = lambda x: mod.proj(x)
    with ModulationRecorder(model, blocks="all") as rec, torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
        with pytest.raises(RecorderError, match="stages.3.blocks.0: the observation points .* did not run"):
            rec.records


def test_composed_kernels_equal_the_chain_of_depthwise_convolutions():
    torch.manual_seed(0)
    C = 4
    kernels = [torch.randn(C, 1, k, k) for k in (3, 5, 7)]
    composed = compose_kernels(kernels)
    assert [c.shape[-1] for c in composed] == [3, 7, 13]  # r_l = 1 + sum (k_i - 1)
    x = torch.randn(1, C, 40, 40)
    y = x
    for l, w in enumerate(kernels):
        y = F.conv2d(y, w, padding=w.shape[-1] // 2, groups=C)
        r = composed[l].shape[-1]
        direct = F.conv2d(x, composed[l], padding=r // 2, groups=C)
        inner = slice(r, -r)  # the chain zero-pads between layers: equal away from the border
        torch.testing.assert_close(direct[..., inner, inner], y[..., inner, inner], rtol=1e-4, atol=1e-4)


def _photos() -> dict[str, np.ndarray]:
    from skimage import data

    return dict(astronaut=data.astronaut(), coffee=data.coffee(), chelsea=data.chelsea(), rocket=data.rocket())


def _tile(h: int, w: int, panel: int) -> tuple[int, int]:
    s = panel / max(h, w)
    return round(h * s), round(w * s)


def test_pictures_of_real_photos_hold_the_panels_they_claim(tmp_path):
    model = _tiny()  # focal levels 3: columns input, 3 gates, global gate, 2 modulator panels
    photos = _photos()
    photos["odd"] = photos["chelsea"][:97, :61]  # tiny and not a multiple of any stride
    paths = write_pictures(model, list(photos.values()), tmp_path, names=list(photos), panel=160)
    assert sorted(p.name for p in paths) == sorted([f"{n}_modulation.png" for n in photos] + ["kernels.png", "pictures.json"])
    index = json.loads((tmp_path / "pictures.json").read_text())
    kinds = ["input", "gate", "gate", "gate", "gate_global", "modulator_mean", "modulator_l2"]
    for entry, (name, arr) in zip(index["images"], photos.items()):
        H, W = arr.shape[:2]
        th, tw = _tile(H, W, 160)
        layout = GridLayout(rows=4, cols=7, tile_h=th, tile_w=tw, header=40)
        png = Image.open(tmp_path / entry["file"])
        assert png.size == layout.size == tuple(entry["size"]), name
        assert entry["input_size"] == [H, W]
        assert entry["blocks"] == ["stages.0.blocks.0", "stages.1.blocks.0", "stages.2.blocks.1", "stages.3.blocks.0"]
        rows = {}
        for p in entry["panels"]:
            rows.setdefault(p["row"], []).append(p)
            assert p["box"] == list(layout.box(p["row"], p["col"]))
        assert [[p["kind"] for p in sorted(r, key=lambda p: p["col"])] for r in rows.values()] == [kinds] * 4
        pixels = np.asarray(png.convert("RGB"))
        expected_input = np.asarray(Image.fromarray(arr).resize((tw, th), Image.BICUBIC))
        for row in range(4):
            tiles = {}
            for col in range(7):
                x0, y0, x1, y1 = layout.box(row, col)
                tiles[col] = pixels[y0:y1, x0:x1].astype(int)
            assert np.array_equal(tiles[0], expected_input), (name, row)  # the input panel is the photo
            for col in range(1, 5):  # gate maps: a colour map, not the photo, and not flat
                assert tiles[col].std() > 1 and np.abs(tiles[col] - expected_input).mean() > 10
            for col in (5, 6):  # overlays: the photo shows through, changed
                diff = np.abs(tiles[col] - expected_input).mean()
                assert 2 < diff < 120, (name, row, col, diff)
            # the band above each tile holds its title (dark text on white), the margin is white
            x0, y0, x1, _ = layout.box(row, 1)
            band = pixels[y0 - layout.band : y0, x0:x1]
            assert band.min() < 100 and (band == 255).mean() > 0.5

    kernels = Image.open(tmp_path / "kernels.png")
    k_index = index["kernels"]
    layout = GridLayout(**k_index["layout"])
    assert kernels.size == layout.size and (layout.rows, layout.cols) == (4, 6)
    k_pixels = np.asarray(kernels.convert("RGB"))
    for p in k_index["panels"]:
        x0, y0, x1, y1 = p["box"]
        tile = k_pixels[y0:y1, x0:x1]
        size = int(p["title"].split("=")[1].split()[0])  # k (learned) or r (composed)
        assert size == ([3, 5, 7] if p["kind"] == "kernel" else [3, 7, 13])[p["level"] - 1]
        cell = layout.tile_w // size
        painted = (tile != np.array([236, 236, 236])).any(-1)  # the kernel area, the rest is blank grey
        assert painted.sum() == (cell * size) ** 2, p["title"]


def test_grayscale_checkpoint_and_the_cli(tmp_path, capsys):
    from skimage import data

    model = _tiny(in_chans=1, num_classes=3)
    save_model(model, tmp_path / "gray.safetensors")
    Image.fromarray(data.camera()[::4, ::3]).save(tmp_path / "camera.png")  # 128 x 171, grayscale
    Image.fromarray(data.chelsea()).save(tmp_path / "chelsea.jpg")  # RGB photo into a grey model
    out = tmp_path / "pics"
    assert main(["visualize", str(tmp_path / "camera.png"), str(tmp_path / "chelsea.jpg"), "--checkpoint",
                 str(tmp_path / "gray.safetensors"), "--blocks", "2.*", "--out", str(out), "--panel", "96"]) == 0
    written = capsys.readouterr().out
    assert "camera_modulation.png" in written and "kernels.png" in written
    index = json.loads((out / "pictures.json").read_text())
    assert index["images"][0]["blocks"] == ["stages.2.blocks.0", "stages.2.blocks.1"]
    assert Image.open(out / "camera_modulation.png").size == tuple(index["images"][0]["size"])
    # again without --force: refused, nothing overwritten
    before = (out / "camera_modulation.png").read_bytes()
    assert main(["visualize", str(tmp_path / "camera.png"), "--checkpoint", str(tmp_path / "gray.safetensors"),
                 "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and (out / "camera_modulation.png").read_bytes() == before


def _one_line_error(capsys, needle: str) -> None:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and needle in err, err


def test_bad_input_is_one_clear_line(tmp_path, capsys, monkeypatch):
    model = _tiny()
    save_model(model, tmp_path / "m.safetensors")
    ckpt = ["--checkpoint", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "o")]
    Image.fromarray(_photos()["coffee"]).save(tmp_path / "coffee.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "coffee.jpg").read_bytes()[:2000])

    assert main(["visualize", str(tmp_path / "missing.jpg"), *ckpt]) == 2
    _one_line_error(capsys, f"image not found: {tmp_path / 'missing.jpg'}")
    assert main(["visualize", str(tmp_path / "notes.txt"), *ckpt]) == 2
    _one_line_error(capsys, "notes.txt as an image: unsupported format")
    assert main(["visualize", str(tmp_path / "cut.jpg"), *ckpt]) == 2
    _one_line_error(capsys, "cut.jpg")
    assert main(["visualize", str(tmp_path / "coffee.jpg"), *ckpt, "--blocks", "3.5"]) == 2
    _one_line_error(capsys, "block 3.5: stage 3 has no block 5")
    assert main(["visualize", str(tmp_path / "coffee.jpg"), "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "pass --model NAME, --checkpoint PATH, or both")
    # an image too large for the memory at hand: measured on the meta device before anything runs
    import focalnet.inspect.memory as memory  # the guard reads the free memory there

    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 50 * 2**20)
    assert main(["visualize", str(tmp_path / "coffee.jpg"), *ckpt, "--img-size", "2000"]) == 2
    _one_line_error(capsys, "coffee.jpg at 2000x3000 px needs about")
    assert not (tmp_path / "o" / "coffee_modulation.png").exists()
