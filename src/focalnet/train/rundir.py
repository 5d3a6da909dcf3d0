"""A run folder has one owner: `claim_run_dir` before a run writes anything, `RunLock.release` after.

    lock = claim_run_dir(Path("runs/x"), resume=False, overwrite=False, say=print)
    try: ...
    finally: lock.release()

- The lock is `OUT/.focalnet-train.lock`, a JSON file with the owner's pid, host, process start time and
  when it began, created whole (written under a temporary name, then hard-linked: creation fails if the
  lock exists, so two processes never both win). A second writer is refused with the owner's pid and
  host. A lock is stale, and is removed with a note, when it names this host and its pid is not running
  (or runs a different process: the pid was reused); a lock of another host is never guessed stale, nor
  is one that cannot be read (not JSON, a pid that is no process id): that is refused, naming the file.
- A new run (not --resume) refuses a folder holding any earlier run's file (RUN_ARTIFACTS) unless
  --overwrite; then those files are moved aside into one temporary folder first and deleted after, so
  that the new run never lies beside half of the old one. Nothing else in the folder is touched.
- Temporary files left by a killed run (atomic writes: `.NAME.XXXX.tmp`) are removed at start.
- Any OSError (read-only, full, permission, a file where the folder goes) is an OutputError naming the path.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..safeio import printable
from ..utils import make_output_dir, output_error
from .config import TrainingError
from .distributed import DistEnv, all_reduce

__all__ = ["LOCK_NAME", "RUN_ARTIFACTS", "RunLock", "RunFolderBusyError", "claim_run_dir", "claim_for_run",
           "existing_artifacts", "remove_temp_files"]

LOCK_NAME = ".focalnet-train.lock"
# what `focalnet train`, `focalnet report` and `focalnet eval --output RUN/eval` leave in a run folder
RUN_ARTIFACTS = ("model.safetensors", "summary.json", "metrics.jsonl", "config.yaml", "curves.png", "confusion.png",
                 "confusion.csv", "report.md", "pictures", "eval", "eval.json", "checkpoints", "tensorboard")
# the folders whose leftover temporary files are cleaned at start
_TEMP_FOLDERS = (".", "checkpoints", "pictures", "eval")


class RunFolderBusyError(TrainingError):
    """Another live process holds the run folder's lock."""


@dataclass
class RunLock:
    path: Path
    owner: dict

    def release(self) -> None:
        """Remove the lock if it is still ours (never another process's)."""
        try:
            if _read_lock(self.path) == self.owner:
                self.path.unlink()
        except (OSError, ValueError):
            pass  # a lock we cannot remove is stale once this process ends, and recovered then


def _process_start(pid: int) -> Optional[str]:
    """The start time of process `pid` in clock ticks since boot (Linux /proc), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict) -> bool:
    """Whether the process a lock names still runs (a lock of another host always counts as alive)."""
    if owner.get("host") != socket.gethostname():
        return True
    pid = int(owner.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # running, as another user
    start = owner.get("process_start")
    return start is None or _process_start(pid) in (None, start)


def _read_lock(path: Path) -> dict:
    owner = json.loads(path.read_text())
    if not isinstance(owner, dict):
        raise ValueError("not a JSON object")
    pid = owner.get("pid", -1)
    # a hand-edited or garbled lock: whether its owner still runs cannot be told, so it is never guessed stale
    if isinstance(pid, bool) or not isinstance(pid, int) or not -1 <= pid < 2**31:
        raise ValueError(f"its pid {printable(repr(pid)[:40])} is not a process id")
    return owner


def _acquire(out: Path, say: Callable[[str], None]) -> RunLock:
    path = out / LOCK_NAME
    owner = dict(pid=os.getpid(), host=socket.gethostname(), process_start=_process_start(os.getpid()),
                 started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    for _ in range(3):
        fd, tmp = tempfile.mkstemp(prefix=f".{LOCK_NAME}.", suffix=".tmp", dir=out)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(owner, f)
            os.link(tmp, path)  # fails if the lock exists: exactly one process creates it
            return RunLock(path, owner)
        except FileExistsError:
            _recover_stale(path, say)
        finally:
            os.unlink(tmp)
    raise RunFolderBusyError(f"could not take the lock {path}: other processes keep taking it; choose another --output")


def _recover_stale(path: Path, say: Callable[[str], None]) -> None:
    """Remove the lock at `path` if its owner is gone; otherwise refuse, naming the owner."""
    try:
        holder = _read_lock(path)
    except FileNotFoundError:
        return  # released meanwhile: try again
    except (OSError, ValueError) as e:
        raise RunFolderBusyError(
            f"{path.parent} is locked by {path} (unreadable: {e}); if no training writes into this folder, "
            "delete that file and run again"
        ) from None
    if _alive(holder):
        raise RunFolderBusyError(
            f"{path.parent} is in use by another training (pid {holder.get('pid')} on {holder.get('host')}, started "
            f"{holder.get('started')}): wait for it to end, or choose another --output. If that process is gone, "
            f"delete {path}"
        )
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    say(f"note: removed the stale lock of pid {holder.get('pid')} (started {holder.get('started')}): that run is gone")


def existing_artifacts(out: Path) -> list[str]:
    """The files of an earlier run in `out` (RUN_ARTIFACTS that exist; an empty folder holds nothing to lose)."""
    found = []
    for name in RUN_ARTIFACTS:
        p = out / name
        if p.is_symlink() or p.is_file() or (p.is_dir() and any(p.iterdir())):
            found.append(name)
    return found


def remove_temp_files(out: Path) -> int:
    """Delete the temporary files (and folders) that killed atomic writes left: `.NAME.XXXX.tmp`."""
    removed = 0
    for folder in _TEMP_FOLDERS:
        d = out / folder
        if not d.is_dir():
            continue
        for p in d.glob(".*.tmp"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
            removed += 1
    return removed


def _replace_old_run(out: Path, found: list[str], say: Callable[[str], None]) -> None:
    """--overwrite: move the earlier run's files aside into one temporary folder, then delete it."""
    aside = Path(tempfile.mkdtemp(prefix=".replaced-run.", suffix=".tmp", dir=out))
    for name in found:
        os.replace(out / name, aside / name)
    shutil.rmtree(aside)
    say(f"note: --overwrite: removed the earlier run's {', '.join(found)} from {out}")


def claim_run_dir(out: Path, *, resume: bool, overwrite: bool, say: Callable[[str], None] = print) -> RunLock:
    """Take `out` for a run (see the module docstring); returns the lock to release when the run ends."""
    make_output_dir(out, holds="a run (checkpoints, metrics, model)")
    try:
        lock = _acquire(out, say)
    except OSError as e:
        raise output_error(out / LOCK_NAME, e, "create the lock") from None
    try:
        removed = remove_temp_files(out)
        if removed:
            say(f"note: removed {removed} temporary file(s) that an interrupted run left in {out}")
        found = [] if resume else existing_artifacts(out)
        if found and not overwrite:
            again = f"continue it with --resume {out}, " if (out / "checkpoints" / "last.pth").is_file() else ""
            raise TrainingError(f"{out} already holds a run ({', '.join(found)}): {again}start over with --overwrite "
                                "(its files are deleted), or choose another --output")
        if found:
            _replace_old_run(out, found, say)
    except OSError as e:
        lock.release()
        raise output_error(out, e, "prepare the run folder") from None
    except BaseException:
        lock.release()
        raise
    return lock


def claim_for_run(out: Path, env: DistEnv, *, resume: bool, overwrite: bool) -> Optional[RunLock]:
    """Process 0 takes the output folder (claim_run_dir); every process learns whether it could, so that none
    waits for the others in vain. Returns process 0's lock (None on the others)."""
    lock, error = None, None
    if env.is_main:
        try:
            lock = claim_run_dir(out, resume=resume, overwrite=overwrite, say=env.say)
        except Exception as e:
            error = e
    if env.distributed:
        failed = all_reduce(torch.tensor([1.0 if error is not None else 0.0]), op="max")
        if float(failed[0]) and error is None:
            raise TrainingError(f"process 0 could not take the output folder {out}; its message says why")
    if error is not None:
        raise error
    return lock
