"""Exclusive locks that name their holder: one writer per thing, and a second launch is told who runs.

A lock is an flock on a small file that holds its holder's pid, host and start time as JSON. The OS
releases an flock when its process dies, even on SIGKILL, so a lock is never stale. Across the nodes
of a cluster this relies on the shared filesystem's locking: Linux NFS (v4, or v3 with lockd) turns
flock into whole-file POSIX locks the server arbitrates; CephFS and GPFS/Spectrum Scale lock
cluster-wide; Lustre does only when mounted with `-o flock` (`localflock` locks per node only). Where
the filesystem refuses locks, the run goes on with one warning: nothing can then stop a second launch.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from kit.core.console import printable, warn

# flock where the filesystem does not do locks: NFS without lockd, Lustre without -o flock, some FUSE.
UNSUPPORTED_ERRNOS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})
_warned: set[str] = set()


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its holder wrote it (fields may be missing while it is being written)."""

    pid: int | None
    host: str | None
    since: str | None
    info: dict[str, Any]

    def describe(self) -> str:
        what = self.info.get("what")
        return printable(f"{str(what) + ' ' if what else ''}pid {self.pid or '?'} on host {self.host or '?'}"
                         f" since {self.since or '?'}")


class HeldLock:
    """An acquired lock; `release()` (or leaving the `with`) lets the next writer in."""

    def __init__(self, path: Path, fh: IO[str] | None) -> None:
        self.path = path
        self._fh = fh

    @property
    def enforced(self) -> bool:
        """False where the filesystem refused locks (the run goes on unprotected)."""
        return self._fh is not None

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the file drops the flock
            self._fh = None

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _unsupported(path: Path, exc: OSError) -> None:
    where = str(path.parent)
    if where not in _warned:
        _warned.add(where)
        warn(f"{where}: the filesystem refuses file locks ({exc.strerror}); a second launch on this directory "
             "would not be detected (NFS: run lockd / use NFSv4; Lustre: mount with -o flock)")


def _read_holder(fh: IO[str]) -> Holder:
    fh.seek(0)
    try:
        doc = json.loads(fh.read() or "{}")
    except ValueError:
        doc = {}
    doc = doc if isinstance(doc, dict) else {}
    pid = doc.get("pid")
    return Holder(pid=pid if isinstance(pid, int) else None, host=str(doc["host"]) if "host" in doc else None,
                  since=str(doc["since"]) if "since" in doc else None, info=doc)


def _open(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a+", encoding="utf-8")  # noqa: SIM115 - the handle is the lock, held by the caller


def try_acquire(path: Path, info: dict[str, Any] | None = None, *, wait: bool = False) -> HeldLock | Holder:
    """Take the lock at `path` (blocking only with `wait`) and write who holds it; -> the lock, or the
    Holder of a lock someone else has (never raises for a held lock)."""
    fh = _open(path)
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        holder = _read_holder(fh)
        fh.close()
        return holder
    except OSError as exc:
        fh.close()
        if exc.errno in UNSUPPORTED_ERRNOS:
            _unsupported(path, exc)
            return HeldLock(path, None)
        raise
    fh.seek(0)
    fh.truncate()
    fh.write(json.dumps({**(info or {}), "pid": os.getpid(), "host": socket.gethostname(), "since": _utc()},
                        sort_keys=True))
    fh.flush()
    return HeldLock(path, fh)


def holder_of(path: Path) -> Holder | None:
    """Who holds the lock at `path` now (None when nobody does). Never call it on a lock this process holds."""
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return None
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fh)
        except OSError as exc:
            if exc.errno in UNSUPPORTED_ERRNOS:
                return None
            raise
        with contextlib.suppress(OSError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return None
