"""Bounded-time fuzzing of every reader of files a user may be handed (issue 14): safetensors metadata,
Hugging Face config.json, YAML training configs and state-dict shapes.

The property is the same everywhere: any input gives either a loaded model (a config) or a FocalNetError,
never another exception (a KeyError, TypeError, RecursionError ... would be a reader that trusts its input).
Each test runs a fixed number of examples with a deadline (hypothesis derandomized, so CI sees the same
inputs every run); the whole file takes well under a minute on 2 cores.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch

from hypothesis import HealthCheck, given, settings  # the dev extra installs it
from hypothesis import strategies as st
from safetensors.torch import save_file

from focalnet import load_model
from focalnet.checkpoints import save_model
from focalnet.errors import FocalNetError
from focalnet.models import model_from_arch

ARCH = dict(family="hierarchical", depths=[1, 1], embed_dim=8, focal_levels=[1, 1], focal_windows=[3, 3], num_classes=2)
FUZZ = settings(
    max_examples=100, deadline=2000, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# any JSON value, nested a little (numbers include NaN and the infinities Python's json reads)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
# numbers near the edges of what a field accepts
EDGY = st.sampled_from([0, -1, 1, 2, 3, 7, 1.5, -0.0, 1e308, 2**31, 10**9, True, False, None, "3", [], {}, [0], [1, 2, 3]])


def _weights() -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in model_from_arch(ARCH).state_dict().items()}


WEIGHTS = _weights()


def _loads_or_refuses(path: Path) -> None:
    """The property: a model, or a project error. Anything else propagates and fails the test."""
    try:
        model = load_model(path)
    except FocalNetError:
        return
    assert isinstance(model, torch.nn.Module)


def _mutated(base: dict, data) -> dict:
    """`base` with a few keys set to edge values or arbitrary JSON, or removed."""
    out = dict(base)
    for key in data.draw(st.lists(st.sampled_from(sorted(base) + ["extra"]), max_size=3)):
        action = data.draw(st.sampled_from(["edge", "json", "drop"]))
        if action == "drop":
            out.pop(key, None)
        else:
            out[key] = data.draw(EDGY if action == "edge" else JSON)
    return out


# ------------------------------------------------------------------------------------------------------------
# safetensors metadata (our format)
# ------------------------------------------------------------------------------------------------------------


def _text_of(data, valid: str) -> str:
    """A metadata value: the valid one, a mutation of its JSON, arbitrary JSON, or arbitrary text."""
    kind = data.draw(st.sampled_from(["valid", "mutated", "json", "text"]))
    if kind == "valid":
        return valid
    if kind == "mutated" and valid.startswith("{"):
        return json.dumps(_mutated(json.loads(valid), data))
    if kind == "text":
        return data.draw(st.text(max_size=30))
    return json.dumps(data.draw(JSON))


@FUZZ
@given(data=st.data())
def test_fuzz_safetensors_metadata(data):
    valid = {
        "format": "focalnet", "format_version": "1", "arch": json.dumps(ARCH), "variant": "",
        "class_names": json.dumps(["a", "b"]),
        "preprocessing": json.dumps(dict(mean=[0.5] * 3, std=[0.25] * 3, img_size=32, crop_pct=1.0, interpolation="bicubic")),
    }
    keys = data.draw(st.lists(st.sampled_from(sorted(valid)), min_size=1, max_size=3, unique=True))
    meta = {k: (_text_of(data, v) if k in keys else v) for k, v in valid.items()}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.safetensors"
        save_file(WEIGHTS, str(path), metadata=meta)
        _loads_or_refuses(path)


# ------------------------------------------------------------------------------------------------------------
# Hugging Face config.json
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("hf") / "hf"
    save_model(model_from_arch(ARCH), folder, fmt="hf", class_names=["a", "b"])
    return folder, json.loads((folder / "config.json").read_text())


@FUZZ
@given(data=st.data())
def test_fuzz_hf_config_json(hf_folder, data):
    folder, config = hf_folder
    whole = data.draw(st.integers(0, 4)) == 0  # mostly a valid config with a few values changed
    text = json.dumps(data.draw(JSON)) if whole else json.dumps(_mutated(config, data))
    (folder / "config.json").write_text(text)
    try:
        _loads_or_refuses(folder)
    finally:
        (folder / "config.json").write_text(json.dumps(config))


# ------------------------------------------------------------------------------------------------------------
# State-dict shapes (files that do not state their architecture: the shapes decide)
# ------------------------------------------------------------------------------------------------------------

SHAPE = st.lists(st.integers(0, 5), max_size=4).map(tuple)


@FUZZ
@given(data=st.data())
def test_fuzz_state_dict_shapes(data):
    sd = dict(WEIGHTS)
    names = sorted(sd)
    for name in data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True)):
        action = data.draw(st.sampled_from(["reshape", "drop", "scalar"]))
        if action == "drop":
            sd.pop(name)
        elif action == "scalar":
            sd[name] = torch.zeros(())
        else:
            sd[name] = torch.zeros(data.draw(SHAPE))
    if data.draw(st.booleans()):
        sd[data.draw(st.sampled_from(["stages.0.blocks.7.norm1.weight", "blocks.0.norm1.weight", "junk"]))] = torch.zeros(8)
    suffix = data.draw(st.sampled_from([".safetensors", ".pth"]))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"m{suffix}"
        if suffix == ".pth":
            torch.save({"model": sd}, path)
        else:
            save_file(sd, str(path))
        _loads_or_refuses(path)


# ------------------------------------------------------------------------------------------------------------
# YAML training configs (focalnet.train.config: the loader and the validator)
# ------------------------------------------------------------------------------------------------------------

YAML_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=True) | st.text(max_size=8)
    | st.sampled_from(["no", "yes", "on", "off", "~", "1e3", ".inf", "-.nan", "0x10"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(data=st.data())
def test_fuzz_yaml_config(data):
    import yaml

    from focalnet.train.config import TrainConfig, load_yaml_config

    keys = [f.name for f in TrainConfig.fields()]
    doc = {k: data.draw(YAML_VALUE) for k in data.draw(st.lists(st.sampled_from(keys), max_size=4, unique=True))}
    if data.draw(st.booleans()):
        doc[data.draw(st.sampled_from(["lr", "arch", "epochs"]))] = data.draw(EDGY)
    raw = data.draw(st.sampled_from(["dump", "text"]))
    text = yaml.safe_dump(doc) if raw == "dump" else data.draw(st.text(max_size=60))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.yaml"
        path.write_text(text)
        try:
            TrainConfig.from_dict(load_yaml_config(str(path)))
        except FocalNetError:
            pass
