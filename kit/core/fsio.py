"""Atomic writes, streamed hashes and canonical JSON: the only way files reach the run directory.

Every write goes temp file -> fsync -> rename -> fsync(dir), so a SIGKILL leaves either the old file
or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from kit.core.errors import BadInput

CHUNK = 1 << 20
_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- temp files and folders carry their owner, so a later run can tell a dead run's leftovers ----------
#
# A SIGKILL (power cut, OOM kill) leaves temp files behind that no `finally` can remove. Every temp name
# the kit makes holds `<host>-p<pid>`; `is_stale` says whether that process is gone (same host, pid not
# running), and the sweeps below remove exactly those, never another live run's files.

_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:16] or "host"
_OWNER_RE = re.compile(r"(?:^|[.\-])([A-Za-z0-9]{1,16})-p(\d{1,10})(?=[.\-])")
TEMP_PREFIX = "ekit-"  # the kit's folders in the system temp dir: ekit-<what>-<host>-p<pid>-<random>


def owner_tag() -> str:
    """`<host>-p<pid>` of this process: part of every temp name the kit makes."""
    return f"{_HOST}-p{os.getpid()}"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or an absurd pid): never ours to clean up
    return True


def is_stale(name: str) -> bool:
    """True for a temp name made by a process of this host that is no longer running."""
    m = _OWNER_RE.search(name)
    return bool(m) and m.group(1) == _HOST and not _pid_running(int(m.group(2)))


def remove_stale(paths: Iterable[Path]) -> int:
    """Remove the stale temp files/folders among `paths`; -> how many."""
    removed = 0
    for p in paths:
        if not is_stale(p.name):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError:
            pass  # unremovable leftovers are not worth failing a run over
    return removed


def sweep_temp_dirs(base: str | os.PathLike[str] | None = None) -> int:
    """Remove the system temp dir's `ekit-*` folders of runs that died (SIGKILL) before cleaning up."""
    try:
        return remove_stale(Path(base or tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"))
    except OSError:
        return 0


def make_temp_dir(what: str, *, parent: str | os.PathLike[str] | None = None) -> Path:
    """A new folder `ekit-<what>-<host>-p<pid>-<random>` (in the system temp dir unless `parent`)."""
    return Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{what}-{owner_tag()}-", dir=parent))


@contextmanager
def temp_dir(what: str, *, parent: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """`make_temp_dir`, removed when the block ends (also on Ctrl-C/SIGTERM, which the CLI turns into an exception)."""
    path = make_temp_dir(what, parent=parent)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep_temp_files(directory: str | os.PathLike[str], *, recursive: bool = True) -> int:
    """Remove `.<name>.<owner>.<random>.tmp` files that a dead run's atomic writes left in `directory`."""
    root = Path(directory)
    if not root.is_dir():
        return 0
    try:
        return remove_stale(root.rglob(".*.tmp") if recursive else root.glob(".*.tmp"))
    except OSError:
        return 0


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `path`; on clean exit fsync it and rename it over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{owner_tag()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; published files get the usual mode
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside `path` for writing; it replaces `path` only if the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else "utf-8") as fh:
        yield fh
        fh.flush()


def writable_dir(path: str | os.PathLike[str], flag: str = "--out-dir") -> Path:
    """Create `path` if needed and prove it takes a file, before any work: bad input naming the flag otherwise
    (a file in the way, a read-only or full disk, a name too long, no permission)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise BadInput(f"{flag} {p} is a file", hint="pass a folder; it is created if missing")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".write-test.{owner_tag()}.", suffix=".tmp", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BadInput(f"{flag} {p} is not writable: {exc.strerror or exc}",
                       hint="pick a folder you can write to, with free space") from None
    return p


def out_target(out: str | os.PathLike[str], default_name: str) -> Path:
    """An `--out` as users mean it: an existing folder, or a path ending in '/', is a folder to write
    `default_name` into (never a file named like the folder); anything else is the file itself."""
    text = os.fspath(out)
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir():
        return path / default_name
    return path


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def canonical_json(obj: Any, *, indent: int | None = 2) -> str:
    """Sorted keys, fixed separators, trailing newline: equal objects give equal bytes."""
    sep = (",", ": ") if indent else (",", ":")
    return json.dumps(obj, sort_keys=True, indent=indent, separators=sep, ensure_ascii=False, allow_nan=True) + "\n"


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, canonical_json(obj))


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> None:
    """Let a library write to a temp path (e.g. `df.to_parquet`), then publish it atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one line and fsync: for logs like failures.jsonl where each line is a whole record."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a", encoding="utf-8") as fh:
        fh.write(line.rstrip("\n") + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Content hash, streamed so a 100 GiB raw clip never sits in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_declared(path: str | os.PathLike[str], size: int) -> str | None:
    """sha256 of `path` if it is a regular file (not a symlink, FIFO, device or /proc entry) of exactly
    `size` bytes, reading at most `size` bytes; None otherwise. For files an untrusted manifest names."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return None
        h, left = hashlib.sha256(), size
        while left and (chunk := fh.read(min(CHUNK, left))):
            h.update(chunk)
            left -= len(chunk)
        return h.hexdigest() if left == 0 else None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python numbers, so the JSON is strict (other tools choke on NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if type(obj).__module__ == "numpy" and getattr(obj, "ndim", None) == 0:  # a numpy scalar (no numpy import here)
        return json_safe(obj.item())
    return obj


class JSONProblem(ValueError):
    """Text that is not one unambiguous JSON document; the message says why in a few words."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise JSONProblem(f"key {dup!r} appears twice in one object (readers disagree on which value counts)")
    return dict(pairs)


def parse_json(text: str | bytes) -> Any:
    """Parse JSON someone else wrote. Everything Python's parser raises on hostile text becomes
    JSONProblem: invalid syntax, nesting deep enough to exhaust the stack (RecursionError), an integer
    with more digits than Python converts (plain ValueError), and a key given twice in one object
    (json.loads keeps the last value, other readers the first: the document means two things)."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except JSONProblem:
        raise
    except UnicodeDecodeError:
        raise JSONProblem("not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise JSONProblem(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise JSONProblem("nested too deeply") from None
    except ValueError as exc:  # e.g. an integer over sys.get_int_max_str_digits() digits
        raise JSONProblem(str(exc).split(";")[0]) from None


def read_json(path: str | os.PathLike[str], *, what: str = "file") -> Any:
    """Read JSON a user handed us; a missing or corrupt file is bad input naming the file."""
    p = Path(path)
    try:
        return parse_json(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{what} not found: {p}", hint="check the path") from None
    except IsADirectoryError:
        raise BadInput(f"{what} {p} is a folder, not a file", hint="pass the file itself") from None
    except OSError as exc:
        raise BadInput(f"cannot read {what} {p}: {exc.strerror or exc}", hint="check the path and its permissions") from None
    except (UnicodeDecodeError, JSONProblem) as exc:
        raise BadInput(f"{what} is not valid JSON: {p}: {exc}", hint="regenerate it or pass another file") from None
