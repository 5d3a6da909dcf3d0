"""Small helpers every layer uses: atomic file and folder writes, output checks, time formatting.

Every file the project writes goes through `atomic_write` (or `atomic_save_file` for writers that take a
file name), and every folder written as one piece (a Hugging Face or timm checkpoint folder) through
`atomic_dir`: a temporary name beside the target, flushed, fsynced and renamed, so an interrupted write or a
full disk never leaves a truncated file, an empty folder, nor destroys the previous one.

Two processes writing one output at once would both report success with one of them lost: every write
holds `output_lock(path)` (a lock file `.NAME.lock` beside it, released by the kernel when the process dies, so
a killed run leaves no stale lock), and a second writer is refused at once. Holding the lock, a writer removes
the temporary files and folders a killed run left for the same output (`.NAME.XXXXXXXX.tmp`): no writer of
that output can still be using them. `atomic_group` replaces several files together (a .pth and its JSON).

Any OSError while writing (read-only folder, full disk, permission, a folder where a file goes, ...) becomes
an `OutputError`: one line naming the path and what to do. It is also an OSError, so callers that caught
OSError before keep working.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

from .errors import FocalNetError

__all__ = [
    "OutputError",
    "OutputExistsError",
    "atomic_write",
    "atomic_save_file",
    "atomic_dir",
    "atomic_group",
    "output_lock",
    "OutputBusyError",
    "atomic_torch_save",
    "torch_save",
    "atomic_json",
    "make_output_dir",
    "check_output",
    "output_error",
    "format_duration",
    "DeviceError",
    "check_device",
]

PathLike = Union[str, os.PathLike]


class OutputError(FocalNetError, OSError):
    """An output that cannot be written: read-only, full disk, no permission, a folder where a file goes.

    The message names the path and what to do; `errno` is the underlying error's."""

    def __str__(self) -> str:  # OSError's own would print "[Errno 28] ..." once errno is set
        return str(self.args[0]) if self.args else ""


class OutputExistsError(OutputError, FileExistsError):
    """An output that exists and may not be replaced (no overwrite=True / --force)."""


class OutputBusyError(OutputError):
    """An output another process is writing right now (it holds the output's lock)."""


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
    """A fresh temporary name in `path`'s folder (created with its parents), as an OutputError if impossible.
    Call it holding `output_lock(path)`: the name is one that the next writer may clean up after a kill."""
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


def _stale_temps(path: Path) -> list[Path]:
    """The temporary files and folders `_temp_beside` names for `path` (mkstemp's 8 random characters)."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.tmp")
    try:
        with os.scandir(path.parent) as it:
            return [Path(e.path) for e in it if pattern.fullmatch(e.name)]
    except OSError:
        return []


# outputs this process holds the lock of (a writer inside another writer of the same output, e.g. a JSON
# sidecar written inside a pair, takes it again), with how many times
_HELD: dict[str, int] = {}


def _lock_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def _acquire(path: Path) -> int:
    """The descriptor of `path`'s lock file, locked; OutputBusyError when another process holds it."""
    lock = _lock_name(path)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            raise output_error(path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputBusyError(f"{path} is being written by another process right now; wait for it to finish "
                                  "or choose another output") from None
        try:  # the holder before us may have removed the file we opened: lock the one now at that name
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def output_lock(path: PathLike) -> Iterator[None]:
    """Hold `path`'s write lock: another process writing it meanwhile is refused (OutputBusyError). On
    taking it, the temporary files a killed writer of `path` left are removed. Re-entrant in one process."""
    path = Path(path)
    key = os.path.abspath(path)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    _check_parents(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(path, e) from None
    fd = _acquire(path)
    _HELD[key] = 1
    try:
        for stale in _stale_temps(path):
            _remove(stale)
        yield
    finally:
        del _HELD[key]
        try:
            os.unlink(_lock_name(path))  # unlinked while still locked: the next writer re-checks the inode
        except OSError:
            pass
        os.close(fd)


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
    with output_lock(path):
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
    with output_lock(path):
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
def atomic_group(paths: Sequence[PathLike], overwrite: bool = True) -> Iterator[list[Path]]:
    """Replace several files together (a .pth and the JSON that describes it): yields one temporary name per
    path; once the block has written them all, they are renamed into place one after the other. An error
    before that (a full disk on the second file) leaves every old file as it was: never a new .pth beside
    an old JSON. The locks of all paths are held throughout."""
    paths = [Path(p) for p in paths]
    for p in paths:
        check_output(p, kind="file", overwrite=overwrite)
    with ExitStack() as stack:
        for p in paths:
            stack.enter_context(output_lock(p))
        temps: list[str] = []
        try:
            for p in paths:
                temps.append(_temp_beside(p))
            yield [Path(t) for t in temps]
            for tmp, p in zip(temps, paths):
                if p.is_dir():
                    raise OutputError(f"cannot write {p}: it is a folder, and a file goes there; remove it")
                os.chmod(tmp, _umask_mode())
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            for tmp, p in zip(temps, paths):  # the only step that cannot be undone: renames, nothing else
                os.replace(tmp, p)
        except BaseException as e:
            for tmp in temps:
                _remove(tmp)
            os_error = _as_os_error(e)
            if os_error is None or isinstance(e, OutputError):
                raise
            raise output_error(paths[0], os_error) from None


@contextmanager
def atomic_dir(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path` to write a folder's files into; on success it becomes `path`.

    A new folder appears whole, by one rename; into an existing folder (refused unless `overwrite`) the files
    are moved one by one, each rename atomic, and the folder's other files are kept. On any error the
    temporary folder is removed: a full disk never leaves an empty or half-written folder behind. A file at
    `path` is always refused (a folder goes there)."""
    path = Path(path)
    check_output(path, kind="folder", overwrite=overwrite)
    with output_lock(path):
        yield from _atomic_dir_locked(path)


def _atomic_dir_locked(path: Path) -> Iterator[Path]:
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


class _WriteWatch:
    """A file wrapper that keeps the OSError its writes raised: torch.save's C++ writer swallows it and
    reports a RuntimeError ("unexpected pos ...") that no longer says the disk is full."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def torch_save(obj: Any, f: Any, path: PathLike) -> None:
    """torch.save(obj, f) for an open binary file `f` that will become `path`; a full disk (or any OSError of
    the file) is an OutputError naming `path`, whatever torch's writer made of it."""
    import torch  # imported here: the bottom layer stays importable without it

    watched = _WriteWatch(f)
    try:
        torch.save(obj, watched)
    except RuntimeError:
        if watched.error is None:
            raise
        raise output_error(path, watched.error) from None


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    with atomic_write(path) as f:
        torch_save(obj, f, path)


def format_duration(seconds: float) -> str:
    """'4:05' (minutes:seconds), '1:02:03' from an hour on."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class DeviceError(FocalNetError, ValueError):
    """A device name that torch does not know, or a device this machine does not have."""


def check_device(name: Any, what: str = "--device") -> "torch.device":  # noqa: F821
    """`name` as a torch.device this process can compute on: a name torch parses ('cpu', 'cuda', 'cuda:1',
    'mps', ...) whose backend is available here, with an index below its device count; 'meta' (no data) is
    refused. Anything else is a DeviceError naming `what` and the devices there are."""
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    there = ["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else [])
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        there.append("mps")
    backend = getattr(torch, dev.type, None) if dev is not None else None
    if dev is None or dev.type == "meta" or (dev.type != "cpu" and not (
            hasattr(backend, "is_available") and backend.is_available()
            and (dev.index is None or dev.index < getattr(backend, "device_count", lambda: 1)()))):
        from .safeio import describe

        raise DeviceError(f"{what} {describe(name)} is not a device this machine can compute on; available: {', '.join(there)}")
    return dev
