"""What the hostile-input tests share: a tiny checkpoint and a photo (fixtures), and an alarm that turns a hang
into a failure. Imported by tests/test_hostile_*.py (`from hostile import ...`; pytest puts tests/ on the path)."""
from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from focalnet.checkpoints import save_model
from focalnet.models import model_from_arch

# a two-stage RGB model with three classes, and the preprocessing saved with it
ARCH = dict(family="hierarchical", depths=[1, 1], embed_dim=16, focal_levels=[2, 2], focal_windows=[3, 3], num_classes=3)
PRE = dict(mean=[0.5] * 3, std=[0.5] * 3, img_size=32)


class Hung(BaseException):
    """Raised by the alarm: a BaseException, so that no `except Exception` on the way can turn a hang into
    an ordinary error."""


@contextmanager
def no_hang(seconds: int = 30):
    """Fail, instead of hanging CI, when the block runs longer than `seconds`."""
    def fire(*_):
        raise Hung(f"hung for {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture()
def ckpt(tmp_path: Path) -> Path:
    """A saved `ARCH` model with class names a, b, c and `PRE`."""
    path = tmp_path / "m.safetensors"
    save_model(model_from_arch(ARCH), path, class_names=["a", "b", "c"], preprocessing=PRE)
    return path


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    """A 48 x 40 RGB noise picture."""
    path = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype("uint8")).save(path)
    return path
