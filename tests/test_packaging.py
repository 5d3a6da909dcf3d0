"""Packaging: one version, the licence files, py.typed shipped, dependency floors that have what we import,
logging left to the CLI, help that states each default once."""
from __future__ import annotations

import ast
import logging
import re
import subprocess
import sys
import warnings
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

import focalnet

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "focalnet"

# the first timm release holding each name we import from timm (read off the timm repository's tags);
# a new `from timm... import X` must be added here, and the floor in pyproject.toml raised to match
TIMM_SINCE = {
    "FeatureGetterNet": "1.0.3", "ModelEmaV3": "0.9.16", "ImageNetInfo": "0.9.0", "create_transform": "0.9.0",
    "Mixup": "0.9.0", "CosineLRScheduler": "0.9.0", "create_optimizer_v2": "0.9.0", "RandomErasing": "0.9.0",
    "LabelSmoothingCrossEntropy": "0.9.0", "SoftTargetCrossEntropy": "0.9.0", "AugmentOp": "0.9.0",
    "posterize": "0.9.0", "param_groups_layer_decay": "0.9.0", "is_model": "0.9.0", "register_model": "0.9.0",
    "FeatureDictNet": "0.9.0", "FeatureListNet": "0.9.0", "FeatureHookNet": "0.9.0", "FeatureGraphNet": "0.9.0",
}


def _v(text: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _pyproject() -> str:
    return (ROOT / "pyproject.toml").read_text()


def _timm_imports() -> dict[str, set]:
    found: dict[str, set] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "timm":
                for alias in node.names:
                    found.setdefault(alias.name, set()).add(node.module)
    return found


def test_one_version_everywhere():
    declared = re.search(r'^version = "([^"]+)"', _pyproject(), re.M).group(1)
    assert focalnet.__version__ == version("focalnet") == declared
    assert not re.search(r'__version__\s*=\s*"', (SRC / "__init__.py").read_text())  # not written a second time
    out = subprocess.run([sys.executable, "-m", "focalnet.cli", "--version"], capture_output=True, text=True)
    assert out.stdout.strip() == f"focalnet {declared}"


def test_licence_notice_and_changelog():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    notice = (ROOT / "NOTICE").read_text()
    for needed in ("Jianwei Yang", "Focal Modulation Networks", "microsoft/FocalNet", "MIT", "Apache License 2.0", "ImageNet"):
        assert needed in notice
    assert 'license-files = ["LICENSE", "NOTICE"]' in _pyproject()
    assert focalnet.__version__.rsplit(".", 0)[0].split("+")[0] in (ROOT / "CHANGELOG.md").read_text()


def test_timm_floor_has_every_name_we_import():
    import timm

    floor = re.search(r'"timm>=([\d.]+)"', _pyproject()).group(1)
    assert all(f'"timm>={floor}"' in line for line in _pyproject().splitlines() if '"timm>=' in line), "one timm floor"
    imports = _timm_imports()
    unknown = sorted(set(imports) - set(TIMM_SINCE))
    assert not unknown, f"record the first timm version of {unknown} in TIMM_SINCE"
    too_new = {n: TIMM_SINCE[n] for n in imports if _v(TIMM_SINCE[n]) > _v(floor)}
    assert not too_new, f"timm>={floor} lacks {too_new}: raise the floor"
    assert _v(timm.__version__) >= _v(floor)
    for name, modules in imports.items():  # and the installed timm really has them where we import them from
        for module in modules:
            assert hasattr(__import__(module, fromlist=[name]), name), f"{module}.{name}"


@pytest.mark.slow
def test_wheel_ships_py_typed_and_the_licences(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True)
    (wheel,) = tmp_path.glob("focalnet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "focalnet/py.typed" in names and "focalnet/hub.py" in names
    assert any(n.endswith("licenses/LICENSE") for n in names) and any(n.endswith("licenses/NOTICE") for n in names)


def test_py_typed_is_declared_package_data():
    assert (SRC / "py.typed").exists() and 'focalnet = ["py.typed"]' in _pyproject()


def test_the_library_never_configures_logging():
    for path in SRC.rglob("*.py"):
        if "cli" in path.parts:
            continue
        text = path.read_text()
        assert "basicConfig" not in text and "logging.getLogger()" not in text, path
        assert not re.search(r'getLogger\((?!"focalnet")', text), f"{path}: log to the 'focalnet' logger only"


def test_cli_shows_ours_and_hides_peers_logs_and_warnings(capsys):
    from focalnet.cli import configure_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("focalnet").handlers[:])
    try:
        with warnings.catch_warnings():
            configure_logging(verbose=False)
            logging.getLogger("focalnet").info("ours")
            logging.getLogger("timm.scheduler").warning("theirs")
            warnings.warn("a peer's deprecation", DeprecationWarning)
            warnings.warn("a peer's user warning", UserWarning)
        err = capsys.readouterr().err
        assert "ours" in err and "theirs" not in err and "peer's" not in err
    finally:
        root.handlers[:], lf = saved[0], logging.getLogger("focalnet")
        root.setLevel(saved[1])
        lf.handlers[:] = saved[2]
        lf.propagate = True


def test_help_states_each_default_once():
    out = subprocess.run([sys.executable, "-m", "focalnet.cli", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "(default: None)" not in text and not re.search(r"\(default: [^)]*\) \(default:", text)
    assert "--epochs" in text and "(default:" in text
