"""Raw frames through hashlib, and the plumbing pack, unpack and verify share.

Every ffmpeg call is one subprocess (`kit.core.proc.stream`) whose rawvideo output is hashed in
chunks, so a 100 GiB clip never sits in memory; sources run in parallel (threads driving ffmpeg
processes).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kit.core import proc
from kit.core.errors import PrereqError, WorkFailed
from kit.corpus.ffmpeg import FFmpeg
from kit.corpus.geometry import frame_bytes, y4m_color_range
from kit.corpus.sources import Source
from kit.env.platform import cpu_count

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
CHUNK = 1 << 20

ProgressFn = Callable[[str, int, int], None]  # (source name, its raw bytes, total raw bytes to do); ("", 0, total) first


def raw_output(pix_fmt: str) -> list[str]:
    """Output options that hand every decoded frame, unconverted and undropped, to stdout."""
    return ["-map", "0:v:0", "-fps_mode", "passthrough", "-pix_fmt", pix_fmt, "-f", "rawvideo", "pipe:1"]


class _PastLimit(Exception):
    """Raised from inside the stream (which kills the tool) once it produced more than it may."""


def stream_sha256(argv: list[str], *, what: str, read_size: int, sink: Callable[[bytes], None] | None = None,
                  clean: bool = False, max_bytes: int | None = None) -> tuple[str, int]:
    """Run ffmpeg writing rawvideo to stdout; hash (and optionally hand on) every byte. -> (sha256, bytes).

    `clean=True` (decoding a lossless pack member): any error ffmpeg reports is a failure even when it
    exits 0. WHY: FFV1 conceals a slice whose CRC fails from the previous frame, and whether that frame is
    ready depends on thread timing, so a damaged member sometimes decodes to the right frames and sometimes
    not; the CRC message is printed every time.

    `max_bytes`: the most raw bytes the input may decode to; past it the tool is killed and this is
    WorkFailed. WHY: a 240 KB FFV1 file can decode to gigabytes, and a hostile pack member whose refs.json
    says 18 KB must not fill the disk before the sizes are compared.
    """
    digest = hashlib.sha256()
    total = 0

    def take(chunk: bytes) -> None:
        nonlocal total
        digest.update(chunk)
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise _PastLimit
        if sink is not None:
            sink(chunk)

    try:
        done = proc.stream(argv, stage=what, read_size=read_size, sink=take)
    except _PastLimit:
        raise WorkFailed(f"{what} decodes to more than the {max_bytes} bytes of raw frames expected (stopped there)") from None
    except proc.ToolFailed as exc:
        if exc.kind == "start":
            raise PrereqError(f"cannot run ffmpeg {argv[0]}: {exc.reason}", hint="pass a working binary with --ffmpeg") from None
        raise WorkFailed(f"ffmpeg failed on {what}: {proc.last_line(exc.stderr_tail, 'no message')}") from None
    if clean and done.stderr.strip():  # argv runs at `-v error`: whatever it printed is an error
        raise WorkFailed(f"ffmpeg reported errors decoding {what}: {proc.stderr_reason(done.stderr)}")
    return digest.hexdigest(), total


def hash_file_prefix(path: Path, length: int) -> tuple[str, int]:
    digest = hashlib.sha256()
    total = 0
    with open(path, "rb") as fh:
        while total < length and (chunk := fh.read(min(CHUNK, length - total))):
            digest.update(chunk)
            total += len(chunk)
    return digest.hexdigest(), total


def raw_sha256(source: Source, ff: FFmpeg, *, threads: int = 0, clean: bool = False) -> str:
    """sha256 of a source's raw frames (planar, its own pix_fmt): the same for .yuv, .y4m and lossless .mkv.

    `clean=True` for a pack's own lossless member: a decoder error fails it (see `stream_sha256`)."""
    expected = source.n_frames * frame_bytes(source.width, source.height, source.pix_fmt)
    if source.kind == "yuv":  # the file IS the raw frames: hash it directly, no ffmpeg round trip
        sha, total = hash_file_prefix(source.path, expected)
    else:
        argv = [str(ff.path), "-nostdin", "-hide_banner", "-v", "error", "-threads", str(threads),
                *source.input_args(), *raw_output(source.pix_fmt)]
        sha, total = stream_sha256(argv, what=str(source.path), read_size=CHUNK, clean=clean, max_bytes=expected)
    if total != expected:
        raise WorkFailed(f"{source.path}: decoded {total} bytes of raw frames, expected {expected} "
                         f"({source.n_frames} frames of {source.width}x{source.height} {source.pix_fmt})",
                         hint="the file is truncated or its geometry is wrong; check it with `ensemble-kit refs verify`")
    return sha


def color_range(source: Source, ff: FFmpeg) -> str:
    """The source's tagged colour range. WHY: an encoder that does not declare full range (FFV1) makes
    ffmpeg insert a pc->tv range conversion, which silently changes the pixels; tagging the output
    with the input's range keeps every byte."""
    if source.kind == "yuv":
        return ""
    if source.kind == "y4m":
        with open(source.path, "rb") as fh:
            return y4m_color_range(fh.readline(4096).decode("ascii", "replace"))
    done = proc.run([str(ff.path), "-hide_banner", "-nostdin", *source.input_args()], stage="probe", check=False)
    m = re.search(r"Stream #0:\d+[^:]*: Video: [^,]+, [a-z0-9]+\((pc|tv)\b", done.stderr)
    return m.group(1) if m else ""


def default_jobs() -> int:
    """All the cores this process may use."""
    return cpu_count()


def threads_per_job(jobs: int, n_items: int) -> int:
    """ffmpeg threads for each job. WHY not cores/jobs: clips differ in size, and once the small ones finish
    the big one would crawl on its share; a little oversubscription costs less than idle cores."""
    share = max(1, default_jobs() // max(1, min(jobs, n_items)))
    return min(default_jobs(), 2 * share)


def is_tarball(path: Path) -> bool:
    return path.name.endswith(TAR_SUFFIXES)


def pack_bound(tar_path: Path) -> int:
    """Bytes a pack tarball may hold once extracted: FFV1 barely compresses, so more than this is a bomb."""
    return 4 * tar_path.stat().st_size + (16 << 20)


def stat_key(path: Path) -> dict[str, int]:
    """What says a file is still the one a resume state recorded, without reading it: size and mtime, and
    inode and ctime (a `cp -p`/`rsync -t` copy of other content keeps the mtime, never the ctime)."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "ctime_ns": st.st_ctime_ns}


def run_parallel(items: list[Any], work: Callable[[Any], Any], jobs: int) -> Iterator[tuple[Any, Future[Any]]]:
    """Run `work` over `items` on `jobs` threads (each drives an ffmpeg process); yield as they finish."""
    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="refs")
    try:
        futures = {pool.submit(work, item): item for item in items}
        order = {fut: i for i, fut in enumerate(futures)}
        pending = set(futures)
        while pending:
            done, pending = proc.wait_first(pending)
            for fut in sorted(done, key=order.__getitem__):
                yield futures[fut], fut
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
