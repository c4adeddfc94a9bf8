"""Atomic writes, streamed hashes and canonical JSON: the only way files reach the run directory.

Every write goes temp file -> fsync -> rename -> fsync(dir), so a SIGKILL leaves either the old file
or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
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


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `path`; on clean exit fsync it and rename it over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
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


def read_json(path: str | os.PathLike[str], *, what: str = "file") -> Any:
    """Read JSON a user handed us; a missing or corrupt file is bad input naming the file."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{what} not found: {p}", hint="check the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{what} is not valid JSON: {p}: {exc}", hint="regenerate it or pass another file") from None
