"""What a file we write says about itself, and the check that it still says the truth.

Every file `write_checkpoint` writes carries a *record*: the architecture with every hidden flag, the
variant, class names, preprocessing, a fingerprint of its tensors and reference outputs of the model on a
fixed input. The record travels where each layout's loaders ignore it: our .safetensors metadata
(`focalnet_record`), a `"focalnet"` key in a folder's config.json (timm and transformers both ignore it),
and a JSON file beside a .pth (the authors' layout has nowhere else to put it).

`verify_file` recomputes both: the fingerprint says whether the tensors are the ones written (no damage, no
silent re-save); the reference outputs, recomputed by this library from the recorded architecture, say
whether the file, its flags and this library agree. The ports of FocalNet disagree on flags that no tensor
shows (`normalize_modulator` of L/XL fl4: the authors' config, timm, detrex and FocalNet-DINO differ), so a
mismatch is diagnosed by flipping each hidden flag and naming the one that makes the outputs agree.

The fingerprint is taken over the tensors in *our* layout, so one set of weights has one fingerprint in
every layout we write.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ..arch_fields import HIDDEN, arch_fields
from ..models import model_from_arch
from ..safeio import loads_json, open_regular, present, printable, read_json
from .fields import CheckpointError

__all__ = [
    "RECORD_KEY",
    "RECORD_VERSION",
    "RecordError",
    "fingerprint",
    "reference_input",
    "reference_outputs",
    "make_record",
    "read_record",
    "record_path_for",
    "Verification",
    "verify_checkpoint",
    "file_sha256",
]

PathLike = Union[str, os.PathLike]
RECORD_KEY = "focalnet"  # config.json key; `focalnet_record` in safetensors metadata
RECORD_VERSION = 1
REF_SIZE = 64  # the fixed input: small enough to run any variant in a second, large enough to reach stage 4
REF_COLUMNS = 16  # outputs recorded per image (all classes of a 21842-way head would bloat the header)
HIDDEN_FLAGS = tuple(n for n, r in arch_fields().items() if r.role == HIDDEN and r.kind == "flag")  # no tensor shows them


def fingerprint(sd: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors of our-layout `sd`: names, dtypes, shapes and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()


def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes (what a registry records for a released file)."""
    h = hashlib.sha256()
    with open_regular(path, "checkpoint", CheckpointError) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def reference_input(in_chans: int, size: int = REF_SIZE) -> torch.Tensor:
    """A fixed (2, in_chans, size, size) input from a closed formula (no random generator, whose stream may
    change between PyTorch versions): smooth waves plus a checkerboard, roughly zero-mean, unit-scale."""
    c = torch.arange(in_chans, dtype=torch.float64).view(1, -1, 1, 1)
    y = torch.arange(size, dtype=torch.float64).view(1, 1, -1, 1)
    x = torch.arange(size, dtype=torch.float64).view(1, 1, 1, -1)
    b = torch.arange(2, dtype=torch.float64).view(-1, 1, 1, 1)
    img = torch.sin(0.31 * x + 0.17 * y * (b + 1) + 1.3 * c) + 0.5 * torch.cos(0.05 * x * y / size + b)
    img = img + 0.25 * ((x + y) % 2 * 2 - 1)
    return img.float()


@torch.no_grad()
def reference_outputs(model: torch.nn.Module, size: int = REF_SIZE) -> dict:
    """The model's outputs on `reference_input`: the first REF_COLUMNS logits (pooled features when it has no
    classifier) of each image, with the argmax, mean and std over all of them."""
    was_training = model.training
    model.eval()
    try:
        x = reference_input(int(model.in_chans), size)
        x = x.to(next(model.parameters()).device)
        out = model(x) if model.num_classes > 0 else model.forward_head(model.forward_features(x), pre_logits=True)
    finally:
        model.train(was_training)
    out = out.double().cpu()
    return dict(
        input=f"reference_input(in_chans={int(model.in_chans)}, size={size})", kind="logits" if model.num_classes > 0 else "features",
        values=[[float(v) for v in row[:REF_COLUMNS]] for row in out], argmax=out.argmax(-1).tolist(),
        mean=float(out.mean()), std=float(out.std()) if out.numel() > 1 else 0.0,
    )


def _model_with(sd: Mapping[str, torch.Tensor], arch: Mapping) -> torch.nn.Module:
    """The model `arch` describes holding `sd` (built on the meta device, then given the tensors: no copy,
    no initialisation of a model that is thrown away)."""
    with torch.device("meta"):
        model = model_from_arch(dict(arch))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True, assign=True)
    return model


def make_record(
    sd: Mapping[str, torch.Tensor],
    arch: Mapping,
    variant: Optional[str] = None,
    class_names: Optional[list] = None,
    preprocessing: Optional[Mapping] = None,
) -> dict:
    """The record written with a file (see the module docstring)."""
    return {
        "format_version": RECORD_VERSION,
        "written_by": f"focalnet {_version()}",
        "arch": dict(arch),
        "variant": variant,
        "class_names": list(class_names) if class_names is not None else None,
        "preprocessing": dict(preprocessing) if preprocessing is not None else None,
        "fingerprint": fingerprint(sd),
        "reference": reference_outputs(_model_with(sd, arch)),
    }


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("focalnet")
    except Exception:  # not installed (a source checkout on sys.path): the record still says who wrote it
        return "unknown"


def record_path_for(path: PathLike) -> Path:
    """Where the record of a single .pth / .pt / .bin file lives: a JSON file beside it."""
    path = Path(path)
    return path.with_name(path.name + ".focalnet.json")


class RecordError(CheckpointError):
    """A record that is present but damaged: garbled JSON, a folder or FIFO where the sidecar goes, wrong
    fields. Never taken for an absent record (that would let tampering pass `verify`)."""


def read_record(path: PathLike) -> Optional[dict]:
    """The record a file or folder we wrote carries; None for files written by anyone else (no record at
    all). A record that is there but damaged is a RecordError naming where it is and what is wrong."""
    path = Path(path)
    if path.is_dir():
        cfg = path / "config.json"
        config = read_json(cfg, "config", RecordError) if present(cfg) else None
        record, where = (config.get(RECORD_KEY) if isinstance(config, dict) else None), f"{cfg}: key '{RECORD_KEY}'"
    elif path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as e:
            raise RecordError(f"cannot read the metadata of {path}: {printable(e)}") from None
        where = f"{path}: metadata 'focalnet_record'"
        record = loads_json(meta["focalnet_record"], where, RecordError) if "focalnet_record" in meta else None
    else:
        side = record_path_for(path)
        where = str(side)
        record = read_json(side, "record", RecordError) if present(side) else None
    if record is None:
        return None
    check_record_fields(record, where)
    return record


def _numbers(v: Any) -> bool:  # NaN included: a model whose weights are NaN records NaN outputs, truthfully
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_record_fields(record: Any, where: str) -> None:
    """The fields of a record that verify and the readers use, by type (the architecture's values are
    checked by `validate_arch` where it is used, the preprocessing by `fields.clean_preprocessing`)."""
    def bad(key: str, want: str) -> RecordError:
        return RecordError(f"{where}: damaged focalnet record: '{key}' must be {want}; the file was edited or damaged "
                           "(re-save it, or remove the record to treat it as a file from another tool)")

    if not isinstance(record, dict):
        raise RecordError(f"{where}: damaged focalnet record: a JSON {type(record).__name__}, not an object")
    if not isinstance(record.get("arch"), dict):
        raise bad("arch", "an object (the architecture)")
    if not isinstance(record.get("fingerprint"), str):
        raise bad("fingerprint", "a string")
    if record.get("variant") is not None and not isinstance(record["variant"], str):
        raise bad("variant", "a string or null")
    if record.get("class_names") is not None and not isinstance(record["class_names"], list):
        raise bad("class_names", "a list or null")
    if record.get("preprocessing") is not None and not isinstance(record["preprocessing"], dict):
        raise bad("preprocessing", "an object or null")
    ref = record.get("reference")
    values = ref.get("values") if isinstance(ref, dict) else None
    if not isinstance(values, list) or not values or not all(
            isinstance(row, list) and row and all(_numbers(v) for v in row) for row in values):
        raise bad("reference", "an object whose 'values' is a non-empty list of rows of numbers")


# --------------------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------------------


@dataclass
class Verification:
    """What `verify_file` found. `ok` is False when anything it could check disagrees."""

    path: str
    has_record: bool
    fingerprint: str
    fingerprint_ok: Optional[bool] = None  # None: no record to compare with
    flags_ok: Optional[bool] = None  # the file's own config agrees with the record's hidden flags
    outputs_ok: Optional[bool] = None  # this library reproduces the recorded outputs
    max_abs_diff: Optional[float] = None
    diagnosis: list[str] = field(default_factory=list)
    sha256: Optional[str] = None
    release: Optional[str] = None  # 'variant (source)' when the bytes match a hash in the registry

    @property
    def ok(self) -> bool:
        return all(v is not False for v in (self.fingerprint_ok, self.flags_ok, self.outputs_ok))

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {**asdict(self), "ok": self.ok}


def _outputs_diff(ref: Mapping, now: Mapping) -> float:
    a, b = torch.tensor(ref["values"], dtype=torch.float64), torch.tensor(now["values"], dtype=torch.float64)
    if a.shape != b.shape:
        return math.inf
    return float((a - b).abs().max())


def _tolerance(ref: Mapping) -> float:
    # float32 forward passes on different CPUs and thread counts agree to ~1e-6 of the output scale; a hidden
    # flag flipped moves even a barely trained model's outputs by far more (normalize_modulator: ~3e-4)
    scale = max(1.0, max(abs(v) for row in ref["values"] for v in row) if ref["values"] else 1.0)
    return 2e-5 * scale


def _diagnose(sd: Mapping[str, torch.Tensor], arch: Mapping, ref: Mapping) -> list[str]:
    """Which hidden flag, flipped, makes this library reproduce the recorded outputs."""
    found = []
    for flag in HIDDEN_FLAGS:
        if flag not in arch:
            continue
        flipped = {**arch, flag: not arch[flag]}
        if _outputs_diff(ref, reference_outputs(_model_with(sd, flipped))) <= _tolerance(ref):
            found.append(
                f"the recorded outputs are reproduced with {flag}={flipped[flag]} (the record says {arch[flag]}): "
                "the file was written by a library that builds this flag differently"
            )
    return found


def _check_record_arch(arch: Mapping, sd: Mapping[str, torch.Tensor], path: Path) -> None:
    """The record's architecture builds a model that holds exactly these tensors (else it is not this file's)."""
    from .arch import validate_arch
    from .convert import ConversionError
    from .fields import check_arch_matches

    try:
        model = validate_arch(arch, where=f"{path}: its record's architecture")
    except ConversionError as e:
        raise RecordError(str(e)) from None
    try:
        check_arch_matches(model, sd, f"{path} (its record)")
    except CheckpointError as e:
        raise RecordError(str(e)) from None


def verify_checkpoint(ckpt: Any, path: PathLike, known_hashes: Optional[Mapping[str, str]] = None) -> Verification:
    """Recompute the fingerprint and reference outputs of a read checkpoint (`read_checkpoint(path)`) and
    compare them with the record its file carries (`focalnet.verify(path)` reads and calls this).

    known_hashes: {sha256: 'variant (source)'} of released files (the registry's), to name a release."""
    path = Path(path)
    record = read_record(path)
    result = Verification(str(path), has_record=record is not None, fingerprint=fingerprint(ckpt.state_dict))
    if path.is_file():
        result.sha256 = file_sha256(path)
        result.release = (known_hashes or {}).get(result.sha256)
    if record is None:
        result.diagnosis.append("no focalnet record: the file was written by another tool, only its fingerprint is shown")
        return result
    result.fingerprint_ok = record.get("fingerprint") == result.fingerprint
    arch = record["arch"]
    _check_record_arch(arch, ckpt.state_dict, path)
    if ckpt.arch is not None:  # the file's own config states the flags: they must agree with the record
        wrong = [f"{k}: the file's config says {ckpt.arch.get(k)}, its record says {arch.get(k)}"
                 for k in HIDDEN_FLAGS if k in ckpt.arch and bool(ckpt.arch.get(k)) != bool(arch.get(k))]
        result.flags_ok = not wrong
        result.diagnosis += wrong
    ref = record["reference"]
    now = reference_outputs(_model_with(ckpt.state_dict, arch))
    result.max_abs_diff = _outputs_diff(ref, now)
    result.outputs_ok = result.max_abs_diff <= _tolerance(ref)
    if not result.outputs_ok:
        result.diagnosis += _diagnose(ckpt.state_dict, arch, ref) or [
            "no hidden flag explains the difference: the tensors or this library's model code changed"]
    if not result.fingerprint_ok:
        result.diagnosis.append("the tensors are not the ones written (damaged, edited or re-saved)")
    return result
