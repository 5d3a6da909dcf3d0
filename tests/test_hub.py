"""Hub paths, tested offline against huggingface_hub's real cache layout: each test writes a snapshot where
huggingface_hub looks (HF_HOME in tmp_path, HF_HUB_OFFLINE=1) and calls the public API; the fallback order
with sources that cannot be reached; the sha256 check; push up to the upload call."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

import focalnet
from focalnet.checkpoints import CheckpointError, save_model
from focalnet.hub import build_hub_folder, download_weights, weight_sources
from focalnet.registry import RELEASE_URL, Weights, build_model, get_spec

from conftest import perturb_, small_overrides

NAME = "focalnet_tiny_srf"


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FOCALNET_HOME", str(tmp_path / "urls"))
    return home


def put_snapshot(home: Path, repo_id: str, src: Path) -> Path:
    """A repo snapshot exactly where huggingface_hub keeps it: models--ORG--NAME/{refs/main, snapshots/SHA/}."""
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snap = repo / "snapshots" / commit
    if src.is_dir():
        shutil.copytree(src, snap)
    else:
        snap.mkdir(parents=True)
        shutil.copy2(src, snap / src.name)
        side = src.with_name(src.name + ".focalnet.json")
        if side.exists():
            shutil.copy2(side, snap / side.name)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def small(**kw) -> torch.nn.Module:
    return perturb_(build_model(NAME, num_classes=5, **{**small_overrides(NAME), **kw})).eval()


LAYOUT_FILES = {"focalnet": "m.safetensors", "official": "m.pth", "timm": "timm_dir", "hf": "hf_dir"}


@pytest.mark.parametrize("fmt", list(LAYOUT_FILES))
def test_hf_hub_ids_load_every_layout_from_the_cache_offline(fmt, hf_home, tmp_path):
    model = small()
    names = list("abcde")
    save_model(model, tmp_path / LAYOUT_FILES[fmt], fmt=fmt, class_names=names)
    put_snapshot(hf_home, f"someone/fn-{fmt}", tmp_path / LAYOUT_FILES[fmt])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        for loaded in (focalnet.load_model(f"hf-hub:someone/fn-{fmt}"), focalnet.create_model(f"hf-hub:someone/fn-{fmt}")):
            assert torch.equal(loaded.eval()(x), ref)
            assert loaded.class_names == names  # the authors' layout too: from the record beside the .pth
        named = focalnet.create_model(NAME, pretrained=f"hf-hub:someone/fn-{fmt}", **small_overrides(NAME)).eval()
        assert torch.equal(named(x), ref)


def test_a_repo_not_in_the_cache_offline_is_a_clear_error(hf_home):
    with pytest.raises(Exception) as e:
        focalnet.load_model("hf-hub:someone/absent")
    assert "offline" in str(e.value).lower() or "cache" in str(e.value).lower()
    with pytest.raises(CheckpointError, match="hf-hub:ORG/REPO"):
        focalnet.load_model("hf-hub:no-slash")


DEAD_RELEASE = RELEASE_URL.replace("https://github.com", "http://127.0.0.1:9")  # port 9: connection refused


def _unreachable(monkeypatch, hf: str = "someone/fn-hf-copy", sha256=None):
    monkeypatch.setattr("focalnet.hub.RELEASE_URL", DEAD_RELEASE)  # the stand-in is labelled as the release
    monkeypatch.setattr(get_spec(NAME), "weights", Weights(
        official=DEAD_RELEASE + "focalnet_tiny_srf.pth", timm="someone/fn-timm-copy", hf=hf, sha256=sha256))


def test_sources_are_tried_in_order_and_the_error_lists_them(hf_home, monkeypatch):
    _unreachable(monkeypatch)
    assert [s.kind for s in weight_sources(NAME)] == ["timm", "hf", "official"]
    with pytest.raises(CheckpointError) as e:
        focalnet.create_model(NAME, pretrained=True)
    msg = str(e.value)
    order = [msg.index(s) for s in ("(1) timm's hub copy", "(2) transformers' hub copy", "(3) the authors' GitHub release")]
    assert order == sorted(order) and "HF_HUB_OFFLINE is set" in msg and "pretrained=PATH" in msg
    # online, the authors' URL is really tried (connection refused on port 9), still one clear error
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("focalnet.hub.hub_offline", lambda: False)
    monkeypatch.setattr("focalnet.hub.download_hub_repo", lambda *a, **k: (_ for _ in ()).throw(OSError("no route to host")))
    with pytest.raises(CheckpointError, match=r"\(3\) the authors' GitHub release .*(URLError|refused)"):
        download_weights(NAME)


def test_fallback_uses_the_next_source_that_answers(hf_home, monkeypatch, tmp_path, caplog):
    full = small()
    save_model(full, tmp_path / "hf", fmt="hf")
    put_snapshot(hf_home, "someone/fn-hf-copy", tmp_path / "hf")
    _unreachable(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="focalnet"):
        model = focalnet.create_model(NAME, pretrained=True, **small_overrides(NAME)).eval()
    assert "timm's hub copy" in caplog.text and "transformers' hub copy" in caplog.text
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), full(x))


def test_registry_sha256_is_checked(hf_home, monkeypatch, tmp_path):
    save_model(small(), tmp_path / "hf", fmt="hf")
    snap = put_snapshot(hf_home, "someone/fn-hf-copy", tmp_path / "hf")
    good = hashlib.sha256((snap / "model.safetensors").read_bytes()).hexdigest()
    _unreachable(monkeypatch, sha256={"hf": "0" * 64})
    with pytest.raises(CheckpointError, match="sha256 is not the registry's"):
        download_weights(NAME)
    _unreachable(monkeypatch, sha256={"hf": good})
    assert download_weights(NAME).name == snap.name
    # the authors' URL (a file:// URL stands in for the server): a wrong hash deletes the download
    torch.save({"model": {}}, tmp_path / "w.pth")
    url = (tmp_path / "w.pth").as_uri()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("focalnet.hub.hub_offline", lambda: False)
    monkeypatch.setattr(get_spec(NAME), "weights", Weights(official=url, sha256={"official": "f" * 64}))
    with pytest.raises(CheckpointError, match="sha256"):
        download_weights(NAME)
    assert not list((tmp_path / "urls").glob("w.pth*"))
    good = hashlib.sha256((tmp_path / "w.pth").read_bytes()).hexdigest()
    monkeypatch.setattr(get_spec(NAME), "weights", Weights(official=url, sha256={"official": good}))
    assert download_weights(NAME) == tmp_path / "urls" / "w.pth"


def _fake_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "pictures").mkdir(parents=True)
    summary = {"data": "fashion-mnist", "num_train": 60000, "num_test": 10000, "epochs_trained": 3,
               "final": {"top1": 90.29, "top5": 99.8}, "best": {"top1": 90.29, "epoch": 3}, "train_time_s": 600}
    (run / "summary.json").write_text(json.dumps(summary))
    from PIL import Image

    for name in ("curves.png", "confusion.png", "pictures/0_modulation.png"):
        Image.new("RGB", (8, 8)).save(run / name)
    return run


def test_push_builds_a_folder_timm_transformers_and_we_load(hf_home, monkeypatch, tmp_path):
    import huggingface_hub
    import timm
    import transformers

    model = perturb_(focalnet.create_model(NAME, num_classes=4, in_chans=1)).eval()
    model.class_names = ["w", "x", "y", "z"]
    sent = {}

    def upload_folder(self, *, repo_id, folder_path, **kw):
        sent["repo"] = repo_id
        shutil.copytree(folder_path, tmp_path / "sent")
        return "https://huggingface.co/someone/pushed/commit/abc"

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("focalnet.hub.hub_offline", lambda: False)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, *a, **k: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert focalnet.push_to_hub(model, "someone/pushed", run_dir=_fake_run(tmp_path)).endswith("abc")
    sent_dir = tmp_path / "sent"
    files = {str(p.relative_to(sent_dir)) for p in sent_dir.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "summary.json",
            "timm/config.json", "timm/model.safetensors", "pictures/curves.png", "pictures/0_modulation.png"} <= files
    card = (sent_dir / "README.md").read_text()
    assert "90.29" in card and "![curves](pictures/curves.png)" in card and 'load_model("hf-hub:someone/pushed")' in card
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        ref = model(x)
        hf = transformers.AutoModelForImageClassification.from_pretrained(str(sent_dir)).eval()
        assert (hf(pixel_values=x.expand(-1, 3, -1, -1)).logits - ref).abs().max() < 1e-5  # gray stem as RGB
        assert hf.config.id2label[3] == "z"
        # timm through the hub id, as a user would after the push: the top config.json points at timm/
        put_snapshot(hf_home, "someone/pushed", sent_dir)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_home / "hub"))
        tm = timm.create_model("hf-hub:someone/pushed", pretrained=True).eval()
        assert (tm(x) - ref).abs().max() < 1e-5
        ours = focalnet.load_model("hf-hub:someone/pushed").eval()
        assert torch.equal(ours(x), ref) and ours.class_names == model.class_names
    assert focalnet.verify("hf-hub:someone/pushed").ok


def test_a_pushed_model_timm_cannot_build_alone_loads_in_timm_through_the_hub(hf_home, monkeypatch, tmp_path):
    import huggingface_hub
    import timm

    model = small(patch_size=2)  # a 2x2 stem: none of timm's own FocalNets
    folder = build_hub_folder(model, tmp_path / "repo", repo_id="someone/custom")
    assert json.loads((folder / "config.json").read_text())["architecture"] == "focalnet_custom"
    assert not (folder / "timm").exists()  # timm reads the top-level weights through focalnet
    put_snapshot(hf_home, "someone/custom", folder)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tm = timm.create_model("hf-hub:someone/custom", pretrained=True).eval()
        assert torch.equal(tm(x), model(x))


def test_push_refuses_a_used_folder_and_offline(tmp_path, monkeypatch):
    model = small()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not empty"):
        build_hub_folder(model, tmp_path / "used")
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        focalnet.push_to_hub(model, "someone/x")


class _RangeServer:
    """A local HTTP server for one file that honours Range requests (or ignores them), can cut the first
    response short, and records the Range header of every request: an interrupted download, for real."""

    def __init__(self, data: bytes, *, cut_first_at: int = 0, honour_range: bool = True) -> None:
        import http.server
        import threading

        self.data, self.ranges, self.cut = data, [], cut_first_at
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                start = int(rng[6:-1]) if rng and honour_range else 0
                if start >= len(server.data):
                    self.send_response(416)
                    self.end_headers()
                    return
                body = server.data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut:  # the connection drops mid-file, once
                    body, server.cut = body[: server.cut], 0
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "_RangeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"


def _online_with(monkeypatch, url: str, sha256: str) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("focalnet.hub.hub_offline", lambda: False)
    monkeypatch.setattr(get_spec(NAME), "weights", Weights(official=url, sha256={"official": sha256}))


def test_an_interrupted_download_resumes_where_it_stopped(hf_home, monkeypatch, tmp_path):
    weights = small().state_dict()
    torch.save({"model": weights}, tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    with _RangeServer(data, cut_first_at=len(data) // 3) as server:
        _online_with(monkeypatch, server.url("w.pth"), hashlib.sha256(data).hexdigest())
        with pytest.raises(CheckpointError, match="connection closed after .* run again to resume"):  # cut short
            download_weights(NAME, "official")
        part = tmp_path / "urls" / "w.pth.part"
        assert part.stat().st_size == len(data) // 3  # what arrived is kept
        path = download_weights(NAME, "official")
    assert server.ranges == [None, f"bytes={len(data) // 3}-"]  # the second request asked for the rest only
    assert path.read_bytes() == data and not part.exists()
    model = focalnet.create_model(NAME, pretrained=path, **small_overrides(NAME), num_classes=5)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def test_resuming_against_a_server_that_ignores_range_or_has_nothing_left(hf_home, monkeypatch, tmp_path):
    data = bytes(range(256)) * 4096
    good = hashlib.sha256(data).hexdigest()
    part = tmp_path / "urls" / "w.pth.part"
    part.parent.mkdir(parents=True)
    with _RangeServer(data, honour_range=False) as server:  # a 200 with the whole file: start again
        part.write_bytes(data[:1000])
        _online_with(monkeypatch, server.url("w.pth"), good)
        assert download_weights(NAME, "official").read_bytes() == data
    (tmp_path / "urls" / "w.pth").unlink()
    with _RangeServer(data) as server:  # the part file already holds everything: 416, then the hash decides
        part.write_bytes(data)
        _online_with(monkeypatch, server.url("w.pth"), good)
        assert download_weights(NAME, "official").read_bytes() == data
    assert server.ranges == [f"bytes={len(data)}-"]
