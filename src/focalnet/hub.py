"""Weights from where they live, and models to the Hugging Face hub.

Released weights are fetched from the most reliable source first, falling back in order:
timm's hub copy (safetensors) -> transformers' hub copy -> the authors' GitHub release -> their blob store
(dead links reported in microsoft/FocalNet issues 43, 49, 51). Hub files land in huggingface_hub's own cache
(`HF_HUB_CACHE`, else `HF_HOME`/hub, read when the download starts), so a copy timm or transformers already
fetched is not fetched again; `HF_HUB_OFFLINE=1` is honoured (cached copies only); hf_hub_download resumes an
interrupted download, and so does ours for the authors' URLs (a `.part` file and an HTTP Range request). A
sha256 the registry records for a source is checked before the file is used. When every source fails, the
error lists what was tried and why each failed.

`hf-hub:ORG/REPO[@REVISION]` names a hub repo in any of our four layouts (`create_model` and `load_model`
take it). `push_to_hub` publishes a model: transformers' folder at the top (config.json with id2label,
model.safetensors, preprocessor_config.json), timm's copy under `timm/` (its config, which the top-level
config.json also carries with `hf_hub_filename`, so `timm.create_model("hf-hub:ORG/REPO", pretrained=True)`
works), our record for `focalnet verify`, and a model card with the run's measured figures and pictures.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch.nn as nn

from .checkpoints import CheckpointError, write_checkpoint
from .checkpoints.arch import complete_preprocessing, timm_config, timm_model_args
from .checkpoints.verify import file_sha256, read_record
from .registry import BLOB_URL, RELEASE_URL, get_spec, list_models
from .utils import atomic_json, atomic_write

__all__ = [
    "HUB_PREFIX", "SOURCES", "Source", "weight_sources", "download_weights", "hub_cache_dir", "hub_offline",
    "parse_hub_id", "download_hub_repo", "checkpoint_in", "build_hub_folder", "model_card", "push_to_hub",
    "known_hashes",
]

log = logging.getLogger("focalnet")
PathLike = Union[str, os.PathLike]
HUB_PREFIX = "hf-hub:"
SOURCES = ("timm", "hf", "official")  # the registry's fields, in the order they are tried
# what a hub snapshot of a checkpoint needs (never the whole repo: a model card's pictures, other frameworks)
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.pth", "*.pt", "*.bin", "timm/*"]


@dataclass(frozen=True)
class Source:
    """One place the weights of a variant can be fetched from."""

    kind: str  # 'timm' | 'hf' (hub repos) | 'official' (the authors' URL)
    where: str  # hub repo id or URL
    sha256: Optional[str] = None  # of the file served, where the registry records one

    @property
    def label(self) -> str:
        if self.kind == "timm":
            return f"timm's hub copy ({self.where})"
        if self.kind == "hf":
            return f"transformers' hub copy ({self.where})"
        host = "GitHub release" if self.where.startswith(RELEASE_URL) else (
            "blob store" if self.where.startswith(BLOB_URL) else "URL")
        return f"the authors' {host} ({self.where})"


def weight_sources(name: str, source: Optional[str] = None) -> list[Source]:
    """Where the released weights of `name` live, most reliable first (or only `source`)."""
    spec = get_spec(name)
    if source is not None and source not in SOURCES:
        raise CheckpointError(f"unknown weight source {source!r}; choose one of {', '.join(SOURCES)}")
    hashes = spec.weights.sha256 or {}
    found = [Source(kind, getattr(spec.weights, kind), hashes.get(kind)) for kind in SOURCES if getattr(spec.weights, kind)]
    # GitHub releases before the blob store: the blob links are the ones reported dead
    found.sort(key=lambda s: (SOURCES.index(s.kind), s.where.startswith(BLOB_URL)))
    if source is not None:
        chosen = [s for s in found if s.kind == source]
        if not chosen:
            have = ", ".join(s.kind for s in found)
            raise CheckpointError(f"no {source} weights are known for {name}" + (f"; available: {have}" if have else ""))
        return chosen
    if not found:
        raise CheckpointError(f"no released weights are known for {name}; pass pretrained=PATH to your own file")
    return found


def known_hashes() -> dict[str, str]:
    """{sha256: 'variant (source)'} of every released file whose hash the registry records."""
    return {h: f"{n} ({kind})" for n in list_models() for kind, h in (get_spec(n).weights.sha256 or {}).items()}


# --------------------------------------------------------------------------------------------------------
# huggingface_hub's cache and offline switch, read when used (a notebook may set them after import)
# --------------------------------------------------------------------------------------------------------


def _is_true(value: Optional[str]) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as set now, or as huggingface_hub read it at import."""
    from huggingface_hub import constants

    return _is_true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")) or bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> str:
    """huggingface_hub's cache: HF_HUB_CACHE, else HF_HOME/hub, else its default (~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def url_cache_dir() -> Path:
    """Where the authors' URLs are cached: $FOCALNET_HOME, else torch.hub's checkpoints folder (timm and
    torchvision cache URL downloads there too)."""
    if os.environ.get("FOCALNET_HOME"):
        return Path(os.environ["FOCALNET_HOME"])
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


# --------------------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------------------


def parse_hub_id(text: str) -> tuple[str, Optional[str]]:
    """'hf-hub:ORG/REPO[@REVISION]' -> (repo id, revision)."""
    rest = text[len(HUB_PREFIX):] if text.startswith(HUB_PREFIX) else text
    repo, _, revision = rest.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise CheckpointError(f"{text!r} is not a hub id: write hf-hub:ORG/REPO (optionally @REVISION)")
    return repo, revision or None


def download_hub_repo(repo_id: str, revision: Optional[str] = None) -> Path:
    """The checkpoint files of a hub repo, in huggingface_hub's cache (only cached files when offline)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError("hub downloads need huggingface_hub: pip install 'focalnet[hub]'") from None
    try:
        return Path(snapshot_download(
            repo_id, revision=revision, allow_patterns=_HUB_PATTERNS, cache_dir=hub_cache_dir(),
            local_files_only=hub_offline(),
        ))
    except (OSError, ValueError) as e:  # offline, not cached, no such repo or revision: huggingface_hub's errors
        where = f"hf-hub:{repo_id}" + (f"@{revision}" if revision else "")
        raise CheckpointError(f"cannot fetch {where}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}; "
                              "check the name and the network, or cache it first (HF_HUB_OFFLINE=1 reads the cache only)") from None


def checkpoint_in(folder: Path) -> Path:
    """What to read in a downloaded repo: the folder itself (ours, timm's, transformers'), else its one
    weights file (the authors' .pth, a bare .safetensors)."""
    if any((folder / n).exists() for n in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")):
        return folder
    files = sorted(p for ext in ("*.safetensors", "*.pth", "*.pt", "*.bin") for p in folder.glob(ext))
    if len(files) == 1:
        return files[0]
    raise CheckpointError(
        f"{folder} holds {'no' if not files else 'several'} weights files ({', '.join(p.name for p in files) or 'none'}); "
        "a FocalNet hub repo has model.safetensors (ours, timm's or transformers' folder) or one .pth / .safetensors"
    )


def _download_url(url: str, sha256: Optional[str]) -> Path:
    """The authors' file, cached; an interrupted download resumes from its `.part` file."""
    dst = url_cache_dir() / Path(url).name
    if dst.exists():
        return dst
    if hub_offline():
        raise CheckpointError(f"HF_HUB_OFFLINE is set and {dst} is not cached")
    import urllib.error
    import urllib.request

    part = dst.with_name(dst.name + ".part")
    dst.parent.mkdir(parents=True, exist_ok=True)
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            resumed = done and response.status == 206  # a server that ignores Range sends the whole file again
            log.info("downloading %s%s", url, f" (resuming at {done:,} bytes)" if resumed else "")
            with open(part, "ab" if resumed else "wb") as f:
                start = f.tell()
                shutil.copyfileobj(response, f, length=1 << 20)
                got = f.tell() - start
            # http.client ends a body cut short by the server without an error: compare with what was announced
            expected = response.headers.get("Content-Length")
            if expected is not None and expected.isdigit() and got < int(expected):
                raise CheckpointError(f"{url}: the connection closed after {got:,} of {int(expected):,} bytes; "
                                      f"{part} keeps what arrived: run again to resume")
    except urllib.error.HTTPError as e:
        if not (done and e.code == 416):  # 416: nothing after `done` bytes, the part file was complete
            raise
    if sha256 and file_sha256(part) != sha256:
        part.unlink()
        raise CheckpointError(f"{url}: the download's sha256 is not the registry's {sha256[:12]}...; deleted it")
    os.replace(part, dst)
    return dst


def _fetch(source: Source) -> Path:
    if source.kind == "official":
        return _download_url(source.where, source.sha256)
    folder = download_hub_repo(source.where)
    path = checkpoint_in(folder)
    if source.sha256:
        weights = path / "model.safetensors" if path.is_dir() else path
        if file_sha256(weights) != source.sha256:
            raise CheckpointError(f"{weights}: sha256 is not the registry's {source.sha256[:12]}... (a changed upload?)")
    return path


def download_weights(name: str, source: Optional[str] = None) -> Path:
    """The released weights of `name` on disk: from `source` ('timm', 'hf', 'official'), or from each source
    in order of reliability until one works. Raises CheckpointError listing every source tried and why
    it failed."""
    tried = []
    for src in weight_sources(name, source):
        try:
            path = _fetch(src)
        except CheckpointError as e:
            tried.append(f"{src.label}: {e}")
            continue
        except ImportError as e:
            tried.append(f"{src.label}: needs huggingface_hub (pip install 'focalnet[hub]'): {e}")
            continue
        except Exception as e:  # network and hub errors come in many types (URLError, HTTPError, hub errors)
            tried.append(f"{src.label}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        if tried:
            log.warning("weights of %s from %s after: %s", name, src.label, "; ".join(tried))
        return path
    offline = " HF_HUB_OFFLINE is set: only cached copies were looked at." if hub_offline() else ""
    raise CheckpointError(
        f"could not get the weights of {name}. Tried, in order: " + "; ".join(f"({i + 1}) {t}" for i, t in enumerate(tried))
        + f".{offline} Without network access, download the file elsewhere and pass its path as pretrained=PATH "
        "(CLI: --checkpoint PATH)"
    )


# --------------------------------------------------------------------------------------------------------
# Publishing
# --------------------------------------------------------------------------------------------------------

_CARD_PICTURES = ("curves.png", "confusion.png")


def build_hub_folder(
    model: nn.Module, folder: PathLike, *, run_dir: Optional[PathLike] = None, class_names: Optional[list] = None,
    repo_id: str = "ORG/REPO",
) -> Path:
    """Write what `push_to_hub` uploads into `folder` (which must not exist or be empty)."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise CheckpointError(f"{folder} is not empty; choose a new folder")
    names = class_names if class_names is not None else getattr(model, "class_names", None)
    variant = getattr(model, "variant", None)
    pre = complete_preprocessing(model.in_chans, getattr(model, "preprocessing", None), variant)
    sd, arch = model.state_dict(), dict(model.arch)
    write_checkpoint(sd, arch, folder, fmt="hf", variant=variant, class_names=names, preprocessing=pre)
    config = json.loads((folder / "config.json").read_text())
    entry, _, why_not = timm_model_args(arch, variant)
    if why_not is None:
        write_checkpoint(sd, arch, folder / "timm", fmt="timm", variant=variant, class_names=names, preprocessing=pre)
        tcfg, _ = timm_config(arch, variant, names, pre)
        # timm reads the top-level config.json of a hub repo; its weights are the copy under timm/
        tcfg["pretrained_cfg"]["hf_hub_filename"] = "timm/model.safetensors"
        config.update({k: v for k, v in tcfg.items()})
    else:
        # timm's own FocalNet cannot build it: timm reads the top-level (transformers) weights through our
        # 'focalnet_custom' entry point, registered by `import focalnet`
        tcfg, _ = timm_config(arch, variant, names, pre)
        config.update(tcfg)
        log.info("timm's own FocalNet cannot build this model (%s): timm.create_model('hf-hub:%s') needs "
                 "`import focalnet` first", why_not, repo_id)
    atomic_json(config, folder / "config.json")
    summary = _copy_run(Path(run_dir), folder) if run_dir is not None else None
    with atomic_write(folder / "README.md", "w") as f:
        f.write(model_card(model, record=read_record(folder), summary=summary, timm_entry=entry if why_not is None else None,
                           pictures=sorted(str(p.relative_to(folder)) for p in folder.glob("pictures/**/*.png")),
                           repo_id=repo_id))
    return folder


def _copy_run(run: Path, folder: Path) -> Optional[dict]:
    """A training run's measured figures (summary.json) and pictures, copied into the folder."""
    if not run.is_dir():
        raise CheckpointError(f"{run} is not a training run's folder (focalnet train --output)")
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else None
    if summary is not None:
        atomic_json(summary, folder / "summary.json")
    (folder / "pictures").mkdir(exist_ok=True)
    for name in _CARD_PICTURES:
        if (run / name).exists():
            shutil.copy2(run / name, folder / "pictures" / name)
    for png in sorted((run / "pictures").glob("*.png"))[:8] if (run / "pictures").is_dir() else []:
        shutil.copy2(png, folder / "pictures" / png.name)
    return summary


def model_card(
    model: nn.Module, *, record: Optional[Mapping] = None, summary: Optional[Mapping] = None,
    timm_entry: Optional[str] = None, pictures: tuple = (), repo_id: str = "ORG/REPO",
) -> str:
    """The README.md of a hub repo: metadata, what the model is, its measured figures and pictures, how to
    load it with focalnet, timm and transformers, and the record `focalnet verify` checks."""
    arch = dict(model.arch)
    n_params = sum(p.numel() for p in model.parameters())
    variant = getattr(model, "variant", None)
    pre = (record or {}).get("preprocessing") or {}
    tags = ["image-classification", "focalnet", "transformers"] + (["timm"] if timm_entry else [])
    lines = ["---", "license: mit", "pipeline_tag: image-classification", "library_name: transformers",
             "tags:", *[f"- {t}" for t in tags], "---", "",
             f"# FocalNet{f' ({variant})' if variant else ''}", "",
             "A Focal Modulation Network (Yang et al., NeurIPS 2022, arXiv 2203.11926) written by the `focalnet` library.", "",
             "| | |", "|---|---|", f"| parameters | {n_params:,} ({n_params / 1e6:.2f} M) |",
             f"| classes | {model.num_classes} |", f"| input | {model.in_chans} channel(s), {pre.get('img_size', '?')} px |",
             f"| mean / std | {pre.get('mean')} / {pre.get('std')} |",
             f"| architecture | `{json.dumps({k: v for k, v in arch.items() if k != 'drop_path_rate'})}` |", ""]
    if summary:
        lines += _summary_lines(summary)
    if pictures:
        lines += ["## Pictures", ""] + [f"![{Path(p).stem}]({p})" for p in pictures] + [""]
    lines += ["## Use", "", "```python", "import focalnet", f'model = focalnet.load_model("hf-hub:{repo_id}")', ""]
    lines += ["from transformers import pipeline", f'pipe = pipeline("image-classification", model="{repo_id}")']
    lines += ["", "import timm", f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True)'
              + ("" if timm_entry else "  # after `import focalnet` (architecture 'focalnet_custom')")]
    lines += ["```", ""]
    if model.in_chans == 1:  # transformers turns every image into RGB: the stem does the grayscale conversion
        lines += ["A grayscale model: the transformers copy takes RGB, its stem computing the luma conversion "
                  "(0.299 R + 0.587 G + 0.114 B) folded into the first convolution, so a photo gives what the "
                  "model gives its grayscale version; focalnet and timm load the 1-channel model.", ""]
    if record:
        lines += ["## Verify", "", f"Tensor fingerprint `{record['fingerprint']}`; `focalnet verify hf-hub:{repo_id}` "
                  "recomputes it and the reference outputs stored in config.json.", ""]
    lines += ["## Citation", "", "```bibtex", "@inproceedings{yang2022focal,", "  title={Focal Modulation Networks},",
              "  author={Yang, Jianwei and Li, Chunyuan and Dai, Xiyang and Yuan, Lu and Gao, Jianfeng},",
              "  booktitle={Advances in Neural Information Processing Systems}, year={2022}", "}", "```", ""]
    return "\n".join(lines)


def _summary_lines(summary: Mapping) -> list[str]:
    final, best = summary.get("final") or {}, summary.get("best") or {}
    rows = [("data", summary.get("data")), ("train / test images", f"{summary.get('num_train')} / {summary.get('num_test')}"),
            ("epochs", summary.get("epochs_trained", summary.get("epochs"))),
            ("final top-1 / top-5 (%)", _pct(final.get("top1"), final.get("top5"))),
            ("best top-1 (%)", f"{_pct(best.get('top1'))} (epoch {best.get('epoch')})" if best else None),
            ("training time (s)", f"{summary['train_time_s']:.0f}" if summary.get("train_time_s") else None),
            ("device", summary.get("device"))]
    return ["## Measured (this run)", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows if v is not None] + [""]


def _pct(*values: Any) -> str:
    return " / ".join("-" if v is None else f"{v:.2f}" for v in values)


def push_to_hub(
    model: nn.Module, repo_id: str, *, run_dir: Optional[PathLike] = None, class_names: Optional[list] = None,
    private: bool = False, token: Optional[str] = None, commit_message: str = "Upload FocalNet",
) -> str:
    """Publish `model` to the hub repo `repo_id` (created if needed) and return the commit URL.

    The folder holds transformers' files at the top, timm's copy under timm/ (when timm can build the
    architecture), our record and a model card with `run_dir`'s measured figures and pictures (a
    `focalnet train --output` folder). Log in first (`huggingface-cli login` or HF_TOKEN)."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise CheckpointError("publishing needs huggingface_hub: pip install 'focalnet[hub]'") from None
    parse_hub_id(repo_id)
    if hub_offline():
        raise CheckpointError("HF_HUB_OFFLINE is set: unset it to publish")
    with tempfile.TemporaryDirectory(prefix="focalnet-push-") as tmp:
        folder = build_hub_folder(model, Path(tmp) / "repo", run_dir=run_dir, class_names=class_names, repo_id=repo_id)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, repo_type="model")
    return str(getattr(info, "commit_url", info))
