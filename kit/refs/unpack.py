"""`ensemble-kit refs unpack`: a pack back to raw files `--ref-dir` finds, every file checked first.

Each member's sha256 is checked against refs.json; it is then decoded to a temporary file while its
frames are hashed, and only a matching file is renamed into place (a `.yuv` with its geometry
sidecar, or a `.y4m`). A tarball pack is extracted under the untrusted-archive rules.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from kit.core.archive import safe_extract
from kit.core.errors import BadInput, KitError, WorkFailed
from kit.core.fsio import (
    atomic_path,
    canonical_json,
    read_json,
    sha256_declared,
    write_bytes,
    write_json,
    write_text,
)
from kit.core.ids import shorten
from kit.corpus.ffmpeg import FFmpeg, find_ffmpeg
from kit.corpus.geometry import Y4M_TAG, frame_bytes, y4m_header
from kit.refs.frames import (
    CHUNK,
    ProgressFn,
    default_jobs,
    is_tarball,
    pack_bound,
    raw_output,
    run_parallel,
    stat_key,
    stream_sha256,
    threads_per_job,
)
from kit.refs.manifest import REFS_JSON, RefEntry, RefsManifest, read_manifest

VERIFIED_STATE = ".refs-verified.json"  # inside an unpacked dir: files already verified, for resume

# ---- unpack --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnpackResult:
    out: Path
    manifest: RefsManifest
    files: tuple[Path, ...]
    raw_bytes: int
    seconds: float
    reused: int  # files already verified by an earlier run, not decoded again


def _sidecar_path(raw_file: Path) -> Path:
    return raw_file.with_suffix(".json")  # where kit.corpus.sources looks first


def _unpack_one(entry: RefEntry, pack_dir: Path, out_dir: Path, y4m: bool, ff: FFmpeg, threads: int) -> Path:
    """Check the packed member's sha256, decode it to its raw file while hashing, publish only if equal."""
    packed = pack_dir / entry.packed_file
    if not packed.is_file():
        raise BadInput(f"pack member {entry.packed_file} is missing from {pack_dir}",
                       hint="the pack is incomplete: ask the sender for a fresh copy")
    # a regular file of the declared size, never a link to /proc or a device: read at most that many bytes
    if sha256_declared(packed, entry.packed_bytes) != entry.packed_sha256:
        raise BadInput(f"pack member {entry.packed_file} is corrupt (its sha256 differs from refs.json)",
                       hint="the pack was damaged in transit: ask the sender for a fresh copy")
    target = out_dir / entry.raw_file(y4m=y4m)
    fsize = frame_bytes(entry.width, entry.height, entry.pix_fmt)
    argv = [str(ff.path), "-nostdin", "-hide_banner", "-v", "error", "-threads", str(threads), "-i", str(packed),
            *raw_output(entry.pix_fmt)]
    if not y4m:  # geometry first: a .yuv never appears without the sidecar that sizes it
        write_json(_sidecar_path(target), entry.sidecar())
    with atomic_path(target) as tmp, open(tmp, "wb", buffering=CHUNK) as fh:
        if y4m:
            fh.write(y4m_header(entry.width, entry.height, entry.pix_fmt, Fraction(entry.fps_rational), entry.color_range))

            def sink(frame: bytes) -> None:
                fh.write(b"FRAME\n")
                fh.write(frame)
        else:
            sink = fh.write
        try:
            sha, total = stream_sha256(argv, what=entry.packed_file, read_size=fsize if y4m else CHUNK, sink=sink,
                                        clean=True, max_bytes=entry.raw_bytes)
        except WorkFailed as exc:  # its sha256 matched refs.json, yet it does not decode: the pack is bad
            raise BadInput(f"pack member {entry.packed_file} cannot be decoded ({exc.message}); "
                           f"no {target.name} was written",
                           hint="the pack is damaged or was made by a different kit: ask the sender for a fresh copy") from None
        fh.flush()
        os.chmod(tmp, 0o644)
        if (sha, total) != (entry.raw_sha256, entry.raw_bytes):
            raise BadInput(f"{target.name}: decoded frames of {entry.packed_file} do not match refs.json "
                           f"(sha256 {shorten(sha)}…, {total} bytes; expected {shorten(entry.raw_sha256)}…, {entry.raw_bytes} bytes); "
                           "the bad output was removed",
                           hint="the pack is damaged or was made by a different kit: ask the sender for a fresh copy")
    return target


def _extract_pack(tar_path: Path, out_dir: Path) -> Path:
    """Extract a pack tarball under the untrusted-archive rules into a staging dir inside `out_dir`."""
    staging = out_dir / f".refs-pack-{tar_path.name}"
    marker = staging / ".extracted"
    key = canonical_json(stat_key(tar_path), indent=None)  # another tarball of the same size and mtime: extract again
    if marker.is_file() and marker.read_text() == key:
        return staging
    safe_extract(tar_path, staging, max_total_bytes=pack_bound(tar_path))
    write_text(marker, key)
    return staging


def unpack(pack_path: str | os.PathLike[str], out: str | os.PathLike[str], *, y4m: bool = False,
           jobs: int | None = None, ff: FFmpeg | None = None, progress: ProgressFn | None = None) -> UnpackResult:
    """Decode a pack (directory or tarball) into `out` as raw files `--ref-dir out` finds, verifying each.

    Resumable: files recorded as verified (by sha256, size and mtime) are not decoded again. A member
    that fails its check is named in the error and leaves no output behind; the others still finish.
    """
    started = time.perf_counter()
    pack_path, out_dir = Path(pack_path), Path(out)
    if not pack_path.exists():
        raise BadInput(f"pack not found: {pack_path}", hint="pass the pack directory or .tar file `refs pack` wrote")
    ff = ff or find_ffmpeg(require_libvmaf=False)
    jobs = jobs or default_jobs()
    if out_dir.exists() and not out_dir.is_dir():
        raise BadInput(f"--out {out_dir} is an existing file", hint="name a directory for the raw references")
    out_dir.mkdir(parents=True, exist_ok=True)
    staging: Path | None = None
    if pack_path.is_dir():
        pack_dir = pack_path
    elif is_tarball(pack_path):
        staging = pack_dir = _extract_pack(pack_path, out_dir)
    else:
        raise BadInput(f"{pack_path} is neither a pack directory nor a .tar/.tar.gz pack",
                       hint="pass what `ensemble-kit refs pack` wrote")
    if not (pack_dir / REFS_JSON).is_file():
        raise BadInput(f"{pack_path} has no {REFS_JSON} at its top level", hint="pass what `ensemble-kit refs pack` wrote")
    manifest = read_manifest(pack_dir / REFS_JSON)
    if y4m:
        for e in manifest.sources:
            if e.pix_fmt not in Y4M_TAG:
                raise BadInput(f"source {e.name} is {e.pix_fmt}, which has no .y4m form", hint="unpack without --y4m")

    state_path = out_dir / VERIFIED_STATE
    state: dict[str, Any] = read_json(state_path, what="verified state") if state_path.is_file() else {}
    done: list[Path] = []
    todo: list[RefEntry] = []
    for e in manifest.sources:
        target = out_dir / e.raw_file(y4m=y4m)
        if target.is_file() and state.get(target.name) == {"raw_sha256": e.raw_sha256, **stat_key(target)}:
            if not y4m:  # cheap, and repairs a deleted or edited sidecar
                write_json(_sidecar_path(target), e.sidecar())
            done.append(target)
        else:
            todo.append(e)
    reused = len(done)
    todo.sort(key=lambda e: -e.raw_bytes)  # biggest first: the long pole starts at once
    threads = threads_per_job(jobs, len(todo))
    total_todo = sum(e.raw_bytes for e in todo)
    if progress:
        progress("", 0, total_todo)
    failures: list[KitError] = []
    for e, fut in run_parallel(todo, lambda e: _unpack_one(e, pack_dir, out_dir, y4m, ff, threads), jobs):
        try:
            target = fut.result()
        except KitError as exc:
            failures.append(exc)
            continue
        done.append(target)
        state[target.name] = {"raw_sha256": e.raw_sha256, **stat_key(target)}
        write_json(state_path, state)
        if progress:
            progress(e.name, e.raw_bytes, total_todo)
    if failures:
        kind = BadInput if all(isinstance(f, BadInput) for f in failures) else WorkFailed
        raise kind(f"{len(failures)} of {len(manifest.sources)} source(s) failed to unpack: "
                   + "; ".join(f.message for f in failures),
                   hint=failures[0].hint or "rerun to retry: verified files are kept")
    if pack_dir.resolve() != out_dir.resolve():  # the same bytes: `compare` can tell "same references"
        write_bytes(out_dir / REFS_JSON, (pack_dir / REFS_JSON).read_bytes())
    if staging is not None:
        shutil.rmtree(staging)
    files = tuple(sorted(done))
    return UnpackResult(out=out_dir, manifest=manifest, files=files, raw_bytes=sum(e.raw_bytes for e in manifest.sources),
                        seconds=time.perf_counter() - started, reused=reused)


