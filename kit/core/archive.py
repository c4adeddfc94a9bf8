"""Untrusted-archive extraction and byte-reproducible tarballs (reference packs, result bundles, dist).

WHY: a tarball mailed between boxes is untrusted input. The old kit's bundles carried a dangling symlink
and extracted one directory deeper than expected; a hostile archive can also write outside the target
(`../`, absolute paths, links), name special files (`/proc/self/pagemap`, devices, FIFOs) for a checker
to open, or decompress into far more bytes than it weighs. So:

* every path an archive or its manifest names passes `path_problem` (a plain relative path, no
  control characters, no over-long names) before anything is opened, and only regular files and
  directories are ever written, each atomically;
* decompression is bounded (`_BoundedReader`): a reader never inflates more than the archive may
  hold, so a bomb costs at most that bound, never the disk or the memory;
* `safe_extract` checks every member before writing any (reference packs, dist tarballs);
  `extract_listed` reads an archive whose FIRST member is its own manifest (results bundles): the
  manifest is validated, its declared total is bounded (absolutely and by a ratio to the compressed
  size), and then each member must be listed, of its declared size and sha256, or nothing more is
  written. Reads are bounded by the declared sizes.

The writer side makes the same inputs give the same bytes (sorted members, optional fixed first
members, zeroed times/owners, fixed modes, gzip mtime 0), so two boxes can compare archives by sha256.

This module is over 500 lines because its three readers (`safe_extract`, `read_member`,
`extract_listed`) share one bounded stream and one set of member checks, which must not drift apart
across modules, and the writer must refuse exactly the names the readers refuse.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from kit.core.console import printable
from kit.core.errors import BadInput
from kit.core.fsio import atomic_path

DEFAULT_MAX_TOTAL_BYTES = 64 << 30  # 64 GiB of extracted content unless the caller says otherwise
DEFAULT_MAX_MEMBERS = 100_000
MAX_NAME_BYTES = 255  # one path component (the common file-system limit)
MAX_PATH_BYTES = 1024  # a whole member path: far above anything the kit writes
# Tar headers, PAX records and end-of-archive padding a reader may inflate beyond the members' data.
HEADER_ALLOWANCE = 64 << 10
PER_MEMBER_ALLOWANCE = 4 << 10
_COPY_CHUNK = 1 << 20
_FIX = "the archive is damaged or unsafe: ask the sender for a fresh copy, do not extract it by hand"
_CORRUPT = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError, OSError, ValueError)


class ArchiveMismatch(BadInput):
    """A safe, well-formed archive whose content no longer matches its own manifest (edited or damaged
    after it was made). Callers that compare archives may report it as a result rather than an error."""


# ---- paths -----------------------------------------------------------------------------------------

def path_problem(name: str) -> str | None:
    """Why `name` is not a plain relative path inside an extraction root, or None when it is.

    The one rule for every path an archive or a manifest names (bundles, reference packs, dist).
    """
    if not name or name in (".", "./"):
        return "empty name"
    if "\x00" in name:
        return "NUL byte in name"
    if printable(name) != name:  # the console's own rule: controls, bidi/format, bad UTF-8, separators
        return "control or invisible character in name"
    if "\\" in name:
        return "backslash in name (Windows path separator)"
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        return "absolute path"
    if len(name) >= 2 and name[1] == ":":
        return "drive-letter path"
    parts = PurePosixPath(name).parts
    if ".." in parts:
        return "'..' path component (path traversal)"
    if len(name.encode()) > MAX_PATH_BYTES:
        return f"path longer than {MAX_PATH_BYTES} bytes"
    if any(len(p.encode()) > MAX_NAME_BYTES for p in parts):
        return f"a path component longer than {MAX_NAME_BYTES} bytes"
    return None


def canonical_path_problem(name: str) -> str | None:
    """`path_problem`, and the path must be written canonically (no `./`, `//` or trailing `/`): what
    a manifest the kit wrote always holds, so anything else was made by hand."""
    why = path_problem(name)
    if why is None and _normalised(name) != name:
        why = "not a canonical path (./, // or a trailing /)"
    return why


def _normalised(name: str) -> str:
    return str(PurePosixPath(*[p for p in PurePosixPath(name).parts if p != "."]))


def _type_problem(member: tarfile.TarInfo) -> str | None:
    if member.issparse():
        return "sparse file"
    if member.isreg() or member.isdir():
        return None
    if member.issym():
        return f"symbolic link (-> {printable(repr(member.linkname))})"
    if member.islnk():
        return f"hard link (-> {printable(repr(member.linkname))})"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    return f"unsupported member type {member.type!r}"


def _bad(tar_path: Path, member: str, why: str) -> BadInput:
    return BadInput(f"unsafe archive member {printable(repr(member))} in {tar_path}: {why}", hint=_FIX)


# ---- bounded, hashed reading -------------------------------------------------------------------------


class _Bomb(Exception):
    """Raised inside a read when the archive inflates past its bound."""


class _HashingReader:
    """The archive file as read: sha256 and byte count of exactly the bytes that went by."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw, self.sha, self.count = raw, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(_COPY_CHUNK):
            pass


class _BoundedReader:
    """Decompressed bytes, refused past `limit` (which the caller raises as it learns what to expect)."""

    def __init__(self, inner: IO[bytes] | _HashingReader, limit: int) -> None:
        self.inner, self.limit, self.count = inner, limit, 0

    def read(self, n: int = -1) -> bytes:
        want = self.limit - self.count + 1 if n is None or n < 0 else min(n, self.limit - self.count + 1)
        data = self.inner.read(max(want, 0))
        self.count += len(data)
        if self.count > self.limit:
            raise _Bomb(self.count)
        return data

    def drain(self) -> None:
        while self.read(_COPY_CHUNK):
            pass


def _open_regular(path: Path) -> tuple[IO[bytes], int]:
    """Open an archive the user named; never a FIFO, device or directory (those could hang or lie)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BadInput(f"archive not found: {path}", hint="check the path") from None
    except OSError as exc:
        raise BadInput(f"cannot open {path}: {exc.strerror}", hint="check the path and its permissions") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BadInput(f"{path} is not a regular file", hint="pass the archive file itself")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), st.st_size


def _decompressed(source: _HashingReader, head: bytes) -> IO[bytes] | _HashingReader:
    """gzip / bzip2 / xz / plain tar, recognised by magic bytes (never by the file's name)."""
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=source, mode="rb")  # type: ignore[arg-type]
    if head.startswith(b"BZh"):
        return bz2.BZ2File(source, "rb")  # type: ignore[arg-type]
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(source, "rb")  # type: ignore[arg-type]
    return source


class _Peeked:
    """The first bytes (already read to sniff the format) followed by the rest of the stream."""

    def __init__(self, head: bytes, rest: _HashingReader) -> None:
        self.head, self.rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n is None or n < 0:
                data, self.head = self.head + self.rest.read(), b""
                return data
            data, self.head = self.head[:n], self.head[n:]
            return data
        return self.rest.read(n)


@dataclass
class _Stream:
    tar: tarfile.TarFile
    bounded: _BoundedReader
    hashing: _HashingReader
    size: int  # bytes of the archive file


@contextmanager
def _stream(tar_path: Path, limit: int) -> Iterator[_Stream]:
    """A one-pass tar reader over the archive file, inflating at most `limit` bytes."""
    raw, size = _open_regular(tar_path)
    with raw:
        if size == 0:
            raise BadInput(f"not a readable tar archive: {tar_path}: the file is empty (0 bytes)", hint=_FIX)
        hashing = _HashingReader(raw)
        head = hashing.read(6)
        peeked = _Peeked(head, hashing)
        bounded = _BoundedReader(_decompressed(peeked, head), limit)  # type: ignore[arg-type]
        try:
            tf = tarfile.open(fileobj=bounded, mode="r|")  # type: ignore[call-overload]  # noqa: SIM115 - `with tf` below
        except _Bomb:
            raise _bomb(tar_path) from None
        except _CORRUPT as exc:
            raise BadInput(f"not a readable tar archive: {tar_path}: {_first_line(exc)}", hint=_FIX) from None
        with tf:
            yield _Stream(tf, bounded, hashing, size)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0].rstrip(":") if str(exc) else type(exc).__name__


def _bomb(tar_path: Path) -> BadInput:
    return BadInput(f"{tar_path} inflates to more bytes than its members may hold "
                    "(a decompression bomb, or a damaged archive); refused there", hint=_FIX)


def _corrupt(tar_path: Path, exc: BaseException) -> BadInput:
    return BadInput(f"archive {tar_path} is truncated or corrupt: {printable(_first_line(exc))}", hint=_FIX)


def _copy_member(source: IO[bytes], target: Path, size: int, mode: int) -> str:
    """Write exactly `size` bytes of a member to `target` atomically; -> their sha256."""
    digest = hashlib.sha256()
    left = size
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            while left:
                chunk = source.read(min(_COPY_CHUNK, left))
                if not chunk:
                    raise EOFError("unexpected end of data")
                digest.update(chunk)
                fh.write(chunk)
                left -= len(chunk)
        os.chmod(tmp, 0o755 if mode & 0o100 else 0o644)
    return digest.hexdigest()


def _target(root: Path, tar_path: Path, member_name: str, name: str, *, is_dir: bool) -> Path:
    """root/name, its parents created; an existing symlinked directory inside root cannot carry it out."""
    target = root / name
    parent = target if is_dir else target.parent
    parent.mkdir(parents=True, exist_ok=True)
    if not parent.resolve().is_relative_to(root):
        raise _bad(tar_path, member_name, f"{parent} resolves outside {root}")
    if not is_dir and target.is_dir() and not target.is_symlink():
        raise _bad(tar_path, member_name, f"{target} already exists as a directory")
    return target


# ---- safe_extract: every member checked before any is written --------------------------------------------


def _validated_members(tf: tarfile.TarFile, bounded: _BoundedReader, tar_path: Path, max_total_bytes: int,
                       max_members: int) -> list[tuple[str, str, int, bool]]:
    """(name, normalised name, size, is_dir) of every member, each checked; nothing is written."""
    seen: dict[str, bool] = {}  # normalised name -> is_dir
    total = 0
    members: list[tuple[str, str, int, bool]] = []
    for member in tf:
        if len(members) >= max_members:
            raise BadInput(f"archive {tar_path} has more than {max_members} members", hint=_FIX)
        why = path_problem(member.name) or _type_problem(member)
        if why:
            raise _bad(tar_path, member.name, why)
        name = _normalised(member.name)
        if name in seen and not (member.isdir() and seen[name]):
            raise _bad(tar_path, member.name, "appears twice (a later copy would overwrite the first)")
        for parent in PurePosixPath(name).parents:
            if str(parent) != "." and seen.get(str(parent)) is False:
                raise _bad(tar_path, member.name, f"its parent {str(parent)!r} is a file in the same archive")
        seen[name] = member.isdir()
        if member.isreg():
            total += member.size
            if total > max_total_bytes:
                raise _bad(tar_path, member.name,
                           f"extracting it would exceed the size limit of {max_total_bytes} bytes "
                           "(a decompression bomb, or raise the limit if the archive is trusted)")
        bounded.limit = max_total_bytes + HEADER_ALLOWANCE + PER_MEMBER_ALLOWANCE * (len(members) + 2)
        members.append((member.name, name, member.size, member.isdir()))
    return members


def safe_extract(tar_path: str | os.PathLike[str], dest: str | os.PathLike[str], *,
                 max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
                 max_members: int = DEFAULT_MAX_MEMBERS) -> list[Path]:
    """Extract an untrusted tar(.gz/.xz/.bz2) into `dest`; return the regular files written, in archive order.

    Refuses (BadInput naming the member, before writing anything) unsafe paths (`path_problem`),
    symlinks, hard links, devices, FIFOs, sparse files, duplicate names and archives whose regular files
    add up to more than `max_total_bytes`; inflating stops at that bound plus the headers' allowance.
    Each file is written temp -> rename, with mode 0644 (0755 if executable in the archive); owners and
    times from the archive are ignored. Two passes: the first checks, the second writes exactly the
    members the first checked (a file changed in between is refused).
    """
    tar_path, dest = Path(tar_path), Path(dest)
    limit = max_total_bytes + HEADER_ALLOWANCE + PER_MEMBER_ALLOWANCE
    try:
        with _stream(tar_path, limit) as s:
            checked = _validated_members(s.tar, s.bounded, tar_path, max_total_bytes, max_members)
    except _Bomb:
        raise _bomb(tar_path) from None
    except _CORRUPT as exc:
        raise _corrupt(tar_path, exc) from None
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written: list[Path] = []
    try:
        with _stream(tar_path, limit) as s:
            members = iter(checked)
            for member in s.tar:
                s.bounded.limit = limit + PER_MEMBER_ALLOWANCE * (len(written) + len(checked) + 2)
                want = next(members, None)
                if want is None or want != (member.name, _normalised(member.name), member.size, member.isdir()):
                    raise BadInput(f"archive {tar_path} changed while it was being extracted", hint="extract it again")
                target = _target(root, tar_path, member.name, want[1], is_dir=member.isdir())
                if member.isdir():
                    continue
                source = s.tar.extractfile(member)
                if source is None:  # pragma: no cover - isreg() members always have data
                    raise _bad(tar_path, member.name, "no data")
                _copy_member(source, target, member.size, member.mode)
                written.append(target)
    except _Bomb:
        raise _bomb(tar_path) from None
    except _CORRUPT as exc:
        raise _corrupt(tar_path, exc) from None
    return written


def read_member(tar_path: str | os.PathLike[str], name: str, *, max_bytes: int, max_total_bytes: int) -> bytes:
    """The bytes of one regular member (`name`, at the top level) of an untrusted archive, without
    extracting anything: every member on the way is checked like `safe_extract` does, inflating stops
    at `max_total_bytes` plus the headers' allowance, and the member may be at most `max_bytes`."""
    tar_path = Path(tar_path)
    try:
        with _stream(tar_path, max_total_bytes + HEADER_ALLOWANCE + PER_MEMBER_ALLOWANCE) as s:
            total = 0
            for i, member in enumerate(s.tar):
                why = path_problem(member.name) or _type_problem(member)
                if why:
                    raise _bad(tar_path, member.name, why)
                total += member.size
                if total > max_total_bytes:
                    raise _bad(tar_path, member.name, f"the archive holds more than {max_total_bytes} bytes")
                s.bounded.limit = max_total_bytes + HEADER_ALLOWANCE + PER_MEMBER_ALLOWANCE * (i + 2)
                if _normalised(member.name) == name and member.isreg():
                    if member.size > max_bytes:
                        raise _bad(tar_path, member.name, f"{member.size} bytes, more than such a file holds ({max_bytes})")
                    data = s.tar.extractfile(member)
                    return data.read(member.size) if data is not None else b""
    except _Bomb:
        raise _bomb(tar_path) from None
    except _CORRUPT as exc:
        raise _corrupt(tar_path, exc) from None
    raise BadInput(f"{tar_path} holds no {name}", hint="pass the archive that holds it")


# ---- extract_listed: the manifest first, then only what it lists -------------------------------------------


@dataclass(frozen=True)
class Listed:
    """One file an archive's manifest declares: its path under the top folder, size and sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ListedArchive:
    root: Path  # dest/<top>: where the manifest and the listed files now are
    top: str
    manifest: bytes
    files: tuple[Listed, ...]
    sha256: str  # of the archive file, hashed in the same pass
    archive_bytes: int
    total_bytes: int  # of the listed files


def _listing_problem(entries: Sequence[Listed], manifest_name: str) -> tuple[str, str] | None:
    """(entry, why) for the first listed entry that is not a plain, unique, well-formed file entry."""
    seen: set[str] = set()
    for e in entries:
        if not isinstance(e.path, str):
            return repr(e.path), "path is not a string"
        why = canonical_path_problem(e.path)
        if why:
            return e.path, why
        if e.path == manifest_name:
            return e.path, "the manifest cannot list itself"
        if e.path in seen:
            return e.path, "listed twice"
        if any(str(p) in seen for p in PurePosixPath(e.path).parents if str(p) != "."):
            return e.path, "listed under a path that is itself a listed file"
        seen.add(e.path)
        if not isinstance(e.size, int) or isinstance(e.size, bool) or e.size < 0:
            return e.path, f"size {e.size!r} is not a byte count"
        if not (isinstance(e.sha256, str) and len(e.sha256) == 64 and all(c in "0123456789abcdef" for c in e.sha256)):
            return e.path, "sha256 is not 64 lowercase hex digits"
    dirs = {str(p) for e in entries for p in PurePosixPath(e.path).parents if str(p) != "."}
    clash = sorted(dirs & seen)
    return (clash[0], "listed as a file and used as a folder") if clash else None


def extract_listed(tar_path: str | os.PathLike[str], dest: str | os.PathLike[str], *, manifest_name: str,
                   parse_manifest: Callable[[bytes], Sequence[Listed]], max_total_bytes: int, max_ratio: int,
                   ratio_floor: int, max_manifest_bytes: int = 16 << 20,
                   on_mismatch: type[ArchiveMismatch] = ArchiveMismatch, kind: str = "listed archive") -> ListedArchive:
    """Extract an archive whose first member is `<top>/<manifest_name>`, writing only what it lists.

    The manifest is read (at most `max_manifest_bytes`), parsed by `parse_manifest` (which raises
    BadInput for a manifest of the wrong kind) and its entries checked (`canonical_path_problem`,
    unique, sizes, sha256s) before anything else is read. Its declared total must stay within
    `max_total_bytes` and within `max_ratio` times the archive's size (at least `ratio_floor`), so a
    bomb is refused having written nothing but the manifest. Then every member must be a regular file
    (or a folder holding listed files) that the manifest lists, once, with the declared size; each is
    written while hashed, and a sha256 that differs is `on_mismatch`. The archive's own sha256 comes
    from the same pass. On any refusal the caller removes `dest` (files already written stay there).
    """
    tar_path, dest = Path(tar_path), Path(dest)
    root_dest = dest.resolve()
    limit = max_manifest_bytes + HEADER_ALLOWANCE
    try:
        with _stream(tar_path, limit) as s:
            members = iter(s.tar)
            first = next(members, None)
            if first is None:
                raise BadInput(f"{tar_path} is an empty archive", hint=_FIX)
            top, name = _manifest_member(tar_path, first, manifest_name, max_manifest_bytes, kind)
            source = s.tar.extractfile(first)
            manifest = source.read(first.size + 1) if source is not None else b""
            if len(manifest) != first.size:
                raise EOFError("unexpected end of data")
            entries = tuple(parse_manifest(manifest))
            problem = _listing_problem(entries, manifest_name)
            if problem:
                raise BadInput(f"{tar_path}: {manifest_name} lists {printable(repr(problem[0]))}: {problem[1]}", hint=_FIX)
            total = sum(e.size for e in entries)
            bound = max(max_ratio * s.size, ratio_floor)
            if total > max_total_bytes:
                raise BadInput(f"{tar_path}: {manifest_name} declares {total} bytes of content, over the limit of "
                               f"{max_total_bytes} bytes", hint="raise the limit (--max-bytes) if you trust the sender")
            if total > bound:
                raise BadInput(f"{tar_path}: {manifest_name} declares {total} bytes from a {s.size}-byte archive "
                               f"(more than {max_ratio}:1): a decompression bomb", hint=_FIX)
            s.bounded.limit = s.bounded.count + total + HEADER_ALLOWANCE + PER_MEMBER_ALLOWANCE * (2 * len(entries) + 2)
            root = _target(root_dest, tar_path, first.name, name, is_dir=False).parent
            _write_bytes_atomic(root / manifest_name, manifest)
            listed = {e.path: e for e in entries}
            dirs = {str(p) for e in entries for p in PurePosixPath(e.path).parents if str(p) != "."}
            seen: set[str] = set()
            for member in members:
                rel = _listed_name(tar_path, member, top)
                if member.isdir():
                    if rel not in dirs and rel != "":
                        raise on_mismatch(f"{tar_path}: folder {printable(rel)!s} is in the archive but holds no file "
                                          f"{manifest_name} lists", hint="the archive was altered; ask the sender for a fresh copy")
                    continue
                entry = listed.get(rel)
                if entry is None:
                    raise on_mismatch(f"{tar_path}: {printable(rel)} is in the archive but not in its {manifest_name} "
                                      "(nothing of it was written)", hint="the archive was altered; ask the sender for a fresh copy")
                if rel in seen:
                    raise _bad(tar_path, member.name, "appears twice (a later copy would overwrite the first)")
                if member.size != entry.size:
                    raise on_mismatch(f"{tar_path}: {printable(rel)} is {member.size} bytes in the archive, {manifest_name} "
                                      f"says {entry.size}: it was changed after it was made (nothing of it was written)",
                                      hint="ask the sender for a fresh copy")
                seen.add(rel)
                data = s.tar.extractfile(member)
                if data is None:  # pragma: no cover - regular members always have data
                    raise _bad(tar_path, member.name, "no data")
                digest = _copy_member(data, _target(root_dest, tar_path, member.name, f"{top}/{rel}" if top else rel,
                                                    is_dir=False), entry.size, member.mode)
                if digest != entry.sha256:
                    raise on_mismatch(f"{tar_path}: {printable(rel)} sha256 {digest[:12]}… differs from {manifest_name}'s "
                                      f"{entry.sha256[:12]}…: it was changed after it was made",
                                      hint="ask the sender for a fresh copy")
            missing = sorted(set(listed) - seen)
            if missing:
                raise on_mismatch(f"{tar_path}: {printable(missing[0])} is listed in {manifest_name} but not in the "
                                  f"archive ({len(missing)} missing)", hint="ask the sender for a fresh copy")
            s.bounded.drain()  # the tar padding and the compressed stream's own checksum
            s.hashing.drain()
            return ListedArchive(root=root, top=top, manifest=manifest, files=entries, sha256=s.hashing.sha.hexdigest(),
                                 archive_bytes=s.hashing.count, total_bytes=total)
    except _Bomb:
        raise _bomb(tar_path) from None
    except _CORRUPT as exc:
        raise _corrupt(tar_path, exc) from None


def _manifest_member(tar_path: Path, member: tarfile.TarInfo, manifest_name: str, max_bytes: int,
                     kind: str) -> tuple[str, str]:
    """(top folder, normalised name) of the first member, which must be the manifest."""
    why = path_problem(member.name) or _type_problem(member)
    if why:
        raise _bad(tar_path, member.name, why)
    name = _normalised(member.name)
    parts = PurePosixPath(name).parts
    if parts[-1] != manifest_name or len(parts) > 2 or not member.isreg():
        raise BadInput(f"{tar_path}: not an {kind}: its first member is {printable(repr(member.name))}, not "
                       f"{manifest_name} (another archive, one made by an older version, or one that was altered)",
                       hint="ask the sender for the file this version of the kit writes")
    if member.size > max_bytes:
        raise BadInput(f"{tar_path}: {manifest_name} is {member.size} bytes, more than any manifest ({max_bytes})",
                       hint=_FIX)
    return (parts[0] if len(parts) == 2 else ""), name


def _listed_name(tar_path: Path, member: tarfile.TarInfo, top: str) -> str:
    """The member's path under the top folder, after the path and type checks."""
    why = path_problem(member.name) or _type_problem(member)
    if why:
        raise _bad(tar_path, member.name, why)
    name = _normalised(member.name)
    if not top:
        return name
    if name == top and member.isdir():
        return ""
    if not name.startswith(top + "/"):
        raise _bad(tar_path, member.name, f"outside the archive's top folder {top!r}")
    return name[len(top) + 1:]


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)


# ---- writing ---------------------------------------------------------------------------------------------


def _expand(members: Iterable[tuple[str, Path]]) -> list[tuple[str, Path, bool]]:
    """(arcname, path, is_dir) for every file and directory, directories expanded recursively."""
    out: dict[str, tuple[Path, bool]] = {}
    for arcname, path in members:
        why = path_problem(arcname)
        if why:
            raise BadInput(f"cannot archive {path} as {printable(repr(arcname))}: {why}",
                           hint="use a relative name without '..'")
        arc = _normalised(arcname)
        path = Path(path)
        if not path.exists():
            raise BadInput(f"cannot archive {path}: it does not exist (a dangling symlink?)",
                           hint="create the file or leave it out")
        if path.is_dir():
            out[arc] = (path, True)
            for sub in sorted(path.rglob("*")):
                rel = sub.relative_to(path).as_posix()
                if not sub.exists():
                    raise BadInput(f"cannot archive {sub}: dangling symlink", hint="remove the link or its target")
                why = path_problem(f"{arc}/{rel}")
                if why:
                    raise BadInput(f"cannot archive {sub}: {why}", hint="rename it")
                out[f"{arc}/{rel}"] = (sub, sub.is_dir())
        else:
            if arc in out and out[arc][0] != path:
                raise BadInput(f"two files would be archived as {arc!r}: {out[arc][0]} and {path}",
                               hint="give each member its own name")
            out[arc] = (path, False)
    return [(arc, path, is_dir) for arc, (path, is_dir) in sorted(out.items())]


def _tarinfo(arcname: str, path: Path, is_dir: bool) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if is_dir:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        info.size = 0
    else:
        st = path.stat()  # follows symlinks: the archive carries the content, never a link
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"cannot archive {path}: not a regular file", hint="archive only files and directories")
        info.type = tarfile.REGTYPE
        info.mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
        info.size = st.st_size
    return info


def write_reproducible_tar(members: list[tuple[str, Path]], out: str | os.PathLike[str], *,
                           compresslevel: int = 6, first: Sequence[str] = ()) -> None:
    """Write `members` ((arcname, path) pairs; directories are expanded) to `out`, byte-reproducibly.

    Sorted by name, except the arcnames in `first`, which lead in that order (a results bundle's
    manifest, so a reader can check it before anything else); mtime 0, uid/gid 0, no owner names,
    mode 0644 (0755 for executables and directories); `.tar.gz`/`.tgz` are gzip'd with header mtime 0
    and no file name, anything else is a plain tar. Symlinks are stored as the file they point to;
    dangling ones are an error. The archive appears at `out` only when complete.
    """
    out = Path(out)
    entries = _expand(members)
    leading = [_normalised(a) for a in first]
    entries.sort(key=lambda e: (leading.index(e[0]) if e[0] in leading else len(leading), e[0]))
    gzipped = out.name.endswith((".tar.gz", ".tgz"))
    with atomic_path(out) as tmp, open(tmp, "wb") as raw:
        stream = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=compresslevel) \
            if gzipped else raw
        try:
            with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tf:
                for arcname, path, is_dir in entries:
                    info = _tarinfo(arcname, path, is_dir)
                    if is_dir:
                        tf.addfile(info)
                    else:
                        with open(path, "rb") as fh:
                            tf.addfile(info, fh)
        finally:
            if gzipped:
                stream.close()
