"""Untrusted-archive extraction and byte-reproducible tarballs (reference packs and result bundles).

WHY: a tarball mailed between boxes is untrusted input. The old kit's bundles carried a dangling symlink
and extracted one directory deeper than expected; a hostile or broken archive could also write outside
the target (`../`, absolute paths, links) or fill the disk. So extraction validates EVERY member before
writing anything, and writes only regular files and directories, each atomically. The writer side makes
the same inputs give the same bytes (sorted members, zeroed times/owners, fixed modes, gzip mtime 0), so
two boxes can compare archives by sha256.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from kit.core.errors import BadInput
from kit.core.fsio import atomic_path

DEFAULT_MAX_TOTAL_BYTES = 64 << 30  # 64 GiB of extracted content unless the caller says otherwise
DEFAULT_MAX_MEMBERS = 100_000
_COPY_CHUNK = 1 << 20
_FIX = "the archive is damaged or unsafe: ask the sender for a fresh copy, do not extract it by hand"


def _member_problem(name: str) -> str | None:
    """Why `name` may not be written under the destination, or None when it is a plain relative path."""
    if not name or name in (".", "./"):
        return "empty name"
    if "\x00" in name:
        return "NUL byte in name"
    if "\\" in name:
        return "backslash in name (Windows path separator)"
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        return "absolute path"
    if len(name) >= 2 and name[1] == ":":
        return "drive-letter path"
    parts = PurePosixPath(name).parts
    if ".." in parts:
        return "'..' path component (path traversal)"
    return None


def _normalised(name: str) -> str:
    return str(PurePosixPath(*[p for p in PurePosixPath(name).parts if p != "."]))


def _type_problem(member: tarfile.TarInfo) -> str | None:
    if member.isreg() or member.isdir():
        return None
    if member.issym():
        return f"symbolic link (-> {member.linkname!r})"
    if member.islnk():
        return f"hard link (-> {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    return f"unsupported member type {member.type!r}"


def _bad(tar_path: Path, member: str, why: str) -> BadInput:
    return BadInput(f"unsafe archive member {member!r} in {tar_path}: {why}", hint=_FIX)


def _open(tar_path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(tar_path, "r:*")
    except FileNotFoundError:
        raise BadInput(f"archive not found: {tar_path}", hint="check the path") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        reason = str(exc).splitlines()[0].rstrip(":") if str(exc) else type(exc).__name__
        raise BadInput(f"not a readable tar archive: {tar_path}: {reason}", hint=_FIX) from None


def _validated_members(tf: tarfile.TarFile, tar_path: Path, max_total_bytes: int,
                       max_members: int) -> list[tarfile.TarInfo]:
    """Every member checked before a single byte is written: an unsafe archive writes nothing."""
    seen: dict[str, bool] = {}  # normalised name -> is_dir
    total = 0
    members: list[tarfile.TarInfo] = []
    try:
        for member in tf:
            if len(members) >= max_members:
                raise BadInput(f"archive {tar_path} has more than {max_members} members", hint=_FIX)
            why = _member_problem(member.name) or _type_problem(member)
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
            members.append(member)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BadInput(f"archive {tar_path} is truncated or corrupt: {exc}", hint=_FIX) from None
    return members


def safe_extract(tar_path: str | os.PathLike[str], dest: str | os.PathLike[str], *,
                 max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
                 max_members: int = DEFAULT_MAX_MEMBERS) -> list[Path]:
    """Extract an untrusted tar(.gz/.xz/.bz2) into `dest`; return the regular files written, in archive order.

    Refuses (BadInput naming the member, before writing anything) absolute paths, `..`, symlinks, hard
    links, devices, FIFOs, duplicate names and archives whose regular files add up to more than
    `max_total_bytes`. Each file is written temp -> rename, with mode 0644 (0755 if executable in the
    archive); owners and times from the archive are ignored.
    """
    tar_path = Path(tar_path)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written: list[Path] = []
    with _open(tar_path) as tf:
        members = _validated_members(tf, tar_path, max_total_bytes, max_members)
        try:
            for member in members:
                name = _normalised(member.name)
                target = root / name
                # An existing symlinked directory inside dest must not carry us outside it.
                parent = (target if member.isdir() else target.parent)
                parent.mkdir(parents=True, exist_ok=True)
                if not parent.resolve().is_relative_to(root):
                    raise _bad(tar_path, member.name, f"{parent} resolves outside {root}")
                if member.isdir():
                    continue
                if target.is_dir() and not target.is_symlink():
                    raise _bad(tar_path, member.name, f"{target} already exists as a directory")
                source = tf.extractfile(member)
                if source is None:  # pragma: no cover - isreg() members always have data
                    raise _bad(tar_path, member.name, "no data")
                with atomic_path(target) as tmp:
                    with open(tmp, "wb") as fh:
                        shutil.copyfileobj(source, fh, _COPY_CHUNK)
                    os.chmod(tmp, 0o755 if member.mode & 0o100 else 0o644)
                written.append(target)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise BadInput(f"archive {tar_path} is truncated or corrupt: {exc}", hint=_FIX) from None
    return written


def _expand(members: Iterable[tuple[str, Path]]) -> list[tuple[str, Path, bool]]:
    """(arcname, path, is_dir) for every file and directory, directories expanded recursively."""
    out: dict[str, tuple[Path, bool]] = {}
    for arcname, path in members:
        why = _member_problem(arcname)
        if why:
            raise BadInput(f"cannot archive {path} as {arcname!r}: {why}", hint="use a relative name without '..'")
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
                           compresslevel: int = 6) -> None:
    """Write `members` ((arcname, path) pairs; directories are expanded) to `out`, byte-reproducibly.

    Sorted by name, mtime 0, uid/gid 0, no owner names, mode 0644 (0755 for executables and
    directories); `.tar.gz`/`.tgz` are gzip'd with header mtime 0 and no file name, anything else is a
    plain tar. Symlinks are stored as the file they point to; dangling ones are an error. The archive
    appears at `out` only when complete.
    """
    out = Path(out)
    entries = _expand(members)
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
