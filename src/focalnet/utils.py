"""Small helpers every layer uses: atomic file and folder writes, output checks, time formatting.

Every file the project writes goes through `atomic_write` (or `atomic_save_file` for writers that take a
file name), and every folder written as one piece (a Hugging Face or timm checkpoint folder) through
`atomic_dir`: a temporary name beside the target, flushed, fsynced and renamed, so an interrupted write or a
full disk never leaves a truncated file, an empty folder, nor destroys the previous one.

Any OSError while writing (read-only folder, full disk, permission, a folder where a file goes, ...) becomes
an `OutputError`: one line naming the path and what to do. It is also an OSError, so callers that caught
OSError before keep working.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from .errors import FocalNetError

__all__ = [
    "OutputError",
    "OutputExistsError",
    "atomic_write",
    "atomic_save_file",
    "atomic_dir",
    "atomic_torch_save",
    "atomic_json",
    "make_output_dir",
    "check_output",
    "output_error",
    "format_duration",
]

PathLike = Union[str, os.PathLike]


class OutputError(FocalNetError, OSError):
    """An output that cannot be written: read-only, full disk, no permission, a folder where a file goes.

    The message names the path and what to do; `errno` is the underlying error's."""

    def __str__(self) -> str:  # OSError's own would print "[Errno 28] ..." once errno is set
        return str(self.args[0]) if self.args else ""


class OutputExistsError(OutputError, FileExistsError):
    """An output that exists and may not be replaced (no overwrite=True / --force)."""


# what to do, by errno: the one-line advice an OutputError carries
_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space or write somewhere else",
    errno.EDQUOT: "the disk quota is exhausted: free some space or write somewhere else",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.EACCES: "permission denied: choose a folder you can write to, or fix its permissions",
    errno.EPERM: "permission denied: choose a folder you can write to, or fix its permissions",
    errno.EISDIR: "a folder is in the way: remove it or choose another name",
    errno.ENOTDIR: "a file is in the way where a folder is needed: remove it or choose another name",
    errno.EEXIST: "it already exists: remove it or choose another name",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter one",
    errno.ENOTEMPTY: "a non-empty folder is in the way: remove it or choose another name",
}


def output_error(path: PathLike, e: OSError, what: str = "write") -> OutputError:
    """An OutputError for an OSError `e` met while writing `path`: one line, the path and what to do."""
    if isinstance(e, OutputError):
        return e
    advice = _ADVICE.get(e.errno or 0, "check that the folder exists and is writable, with space left")
    reason = e.strerror or str(e) or type(e).__name__
    err = OutputError(f"cannot {what} {path}: {reason}; {advice}")
    err.errno, err.strerror = e.errno, reason
    return err


def _as_os_error(e: BaseException) -> Optional[OSError]:
    """`e` as an OSError: itself, or the I/O error a native writer reports in its message (safetensors' Rust
    writer raises SafetensorError("... No space left on device (os error 28)") on a full disk)."""
    if isinstance(e, OSError):
        return e
    found = re.search(r"(.*?)\s*\(os error (\d+)\)", str(e))
    if found is None:
        return None
    code = int(found.group(2))
    return OSError(code, os.strerror(code))


def _umask_mode(folder: bool = False) -> int:
    """The permissions a plain open() (or mkdir) would give a new file (folder): mkstemp's and mkdtemp's
    are 0600 and 0700."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


def _remove(tmp: PathLike) -> None:
    try:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp)
        else:
            os.unlink(tmp)
    except FileNotFoundError:
        pass


def _temp_beside(path: Path, folder: bool = False) -> str:
    """A fresh temporary name in `path`'s folder (created with its parents), as an OutputError if impossible."""
    _check_parents(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            return tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        return tmp
    except OSError as e:
        raise output_error(path, e) from None


def _finish_file(tmp: str, path: Path) -> None:
    """Permissions, fsync and the rename onto `path` (which must not be a folder)."""
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder, and a file goes there; remove it or choose another name")
    os.chmod(tmp, _umask_mode())
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success flush, fsync and rename it onto `path`.

    On any error (a full disk included) the temporary file is removed and `path` keeps its old content;
    an OSError while writing becomes an OutputError naming `path`."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
        _finish_file(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise output_error(path, e) from None
    except BaseException:
        _remove(tmp)
        raise


def atomic_save_file(path: PathLike, writer: Callable[[str], None]) -> None:
    """For writers that take a file name (safetensors): write to a temporary name, then rename."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        writer(tmp)
        _finish_file(tmp, path)
    except BaseException as e:
        _remove(tmp)
        os_error = _as_os_error(e)
        if os_error is None:
            raise
        raise output_error(path, os_error) from None


@contextmanager
def atomic_dir(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path` to write a folder's files into; on success it becomes `path`.

    A new folder appears whole, by one rename; into an existing folder (refused unless `overwrite`) the files
    are moved one by one, each rename atomic, and the folder's other files are kept. On any error the
    temporary folder is removed: a full disk never leaves an empty or half-written folder behind. A file at
    `path` is always refused (a folder goes there)."""
    path = Path(path)
    check_output(path, kind="folder", overwrite=overwrite)
    tmp = Path(_temp_beside(path, folder=True))
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(folder=True))
        if path.is_dir():
            for entry in sorted(tmp.iterdir()):
                if (path / entry.name).is_dir() and not entry.is_dir():
                    raise OutputError(f"cannot write {path / entry.name}: it is a folder, and a file goes there; remove it")
                if entry.is_dir():
                    _remove(path / entry.name)
                os.replace(entry, path / entry.name)
            _remove(tmp)
        else:
            os.replace(tmp, path)
    except OSError as e:  # named after the folder the user asked for, not the temporary one
        _remove(tmp)
        raise output_error(path, OSError(e.errno, e.strerror or str(e))) from None
    except BaseException:
        _remove(tmp)
        raise


def _check_parents(path: Path) -> None:
    """A file where one of `path`'s folders should be: an OutputError saying so."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {path}: {parent} is a file, not a folder; choose another path")
            return


def check_output(path: PathLike, kind: str = "file", overwrite: bool = False) -> Path:
    """Refuse, before any work, an output `path` that cannot be written as `kind` ('file' or 'folder').

    - it exists and `overwrite` is False: OutputExistsError (also a FileExistsError);
    - a folder where a file goes, or a file where a folder goes: OutputError, even with `overwrite`
      (replacing one kind by the other would delete what the user had; they remove it themselves);
    - a parent on the way is a file: OutputError."""
    path = Path(path)
    if kind not in ("file", "folder"):
        raise ValueError(f"kind must be 'file' or 'folder', got {kind!r}")
    _check_parents(path)
    if not path.exists():
        return path
    is_dir = path.is_dir()
    if kind == "file" and is_dir:
        raise OutputError(f"cannot write {path}: it is a folder, and this output is a file; "
                          "remove the folder or choose another name")
    if kind == "folder" and not is_dir:
        raise OutputError(f"cannot write {path}: it is a file, and this output is a folder; "
                          "remove the file or choose another name")
    if not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True (CLI: --force) to replace it, or choose another name")
    return path


def make_output_dir(path: PathLike, *, holds: str) -> Path:
    """Create the output folder `path` (which `holds` what, for the message); a file in its place or any
    OSError is an OutputError naming the path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--output {path} is a file; it must be a folder for {holds}: choose another --output")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(path, e, "create the folder") from None
    return path


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
