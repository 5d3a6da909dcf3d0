"""Small helpers every layer uses: atomic file writes and time formatting.

Every file the project writes goes through `atomic_write` (or `atomic_save_file` for writers that take a
file name): a temporary file beside the target, flushed, fsynced and renamed, so an interrupted write or a
full disk never leaves a truncated file nor destroys the previous one.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Union

__all__ = ["atomic_write", "atomic_save_file", "atomic_torch_save", "atomic_json", "format_duration"]

PathLike = Union[str, os.PathLike]



def _umask_mode() -> int:
    """The permissions a plain open() would give a new file (mkstemp's temporary files are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success flush, fsync and rename it onto `path`.

    On any error (a full disk included) the temporary file is removed and `path` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), _umask_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_save_file(path: PathLike, writer: Callable[[str], None]) -> None:
    """For writers that take a file name (safetensors): write to a temporary name, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, _umask_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise



def atomic_json(obj: Any, path: PathLike) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    # torch imported here: the bottom layer stays importable without it
    import torch

    with atomic_write(path) as f:
        torch.save(obj, f)


def format_duration(seconds: float) -> str:
    """'4:05' (minutes:seconds), '1:02:03' from an hour on."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
