"""`ensemble-kit refs pack`: every reference clip losslessly into a pack, with refs.json.

Each source is encoded (FFV1 by default) while its raw frames stream through sha256, then the packed
file is decoded again and must give the same sha256, or that source fails: a pack that exists is a
lossless pack. A tarball pack is byte-reproducible (sorted members, zero times, bit-exact FFV1/Matroska).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kit.core.archive import write_reproducible_tar
from kit.core.errors import BadInput, KitError, PrereqError, WorkFailed
from kit.core.fsio import atomic_path, read_json, sha256_file, write_json, write_text
from kit.corpus.ffmpeg import FFmpeg, find_ffmpeg
from kit.corpus.geometry import frame_bytes
from kit.corpus.sources import Source, discover
from kit.env.fingerprint import fingerprint, fingerprint_id
from kit.refs.frames import (
    CHUNK,
    ProgressFn,
    color_range,
    default_jobs,
    is_tarball,
    raw_output,
    run_parallel,
    stat_key,
    stream_sha256,
    threads_per_job,
)
from kit.refs.manifest import (
    README,
    REFS_JSON,
    RefEntry,
    RefsManifest,
    check_name,
    check_pix_fmt,
    readme_text,
)

PACK_STATE = ".refs-pack-state.json"  # inside a pack being built: finished members, for resume

# ---- lossless codecs: one table, one row per codec, candidate encoders in preference order ------


@dataclass(frozen=True)
class Variant:
    encoder: str
    args: tuple[str, ...]
    pix_fmts: frozenset[str] | None = None  # None: every raw layout kit.corpus.sources knows


@dataclass(frozen=True)
class Codec:
    name: str
    ext: str
    variants: tuple[Variant, ...]


_AOM_FMTS = frozenset({"yuv420p", "yuv422p", "yuv444p", "yuv420p10le", "yuv422p10le", "yuv444p10le",
                       "yuv420p12le", "yuv422p12le", "yuv444p12le", "gray", "gray10le", "gray12le"})
_X265_FMTS = _AOM_FMTS
CODECS: dict[str, Codec] = {
    # Intra-only FFV1 v3 with per-slice CRCs: damage stays in one frame and is detected, and the 16 slices
    # encode/decode in parallel. Golomb-Rice with the small context (the defaults) measured 2x faster
    # AND ~6% smaller than the range coder / large context on 1080p noise (ffmpeg 9.0.2, 2 threads).
    "ffv1": Codec("ffv1", ".mkv", (Variant("ffv1", ("-c:v", "ffv1", "-level", "3", "-coder", "0", "-context", "0",
                                                    "-g", "1", "-slices", "16", "-slicecrc", "1")),)),
    "x265-lossless": Codec("x265-lossless", ".mkv", (
        Variant("libx265", ("-c:v", "libx265", "-preset", "medium", "-x265-params", "lossless=1:log-level=error"),
                _X265_FMTS),)),
    # libaom's `-lossless 1` alone is NOT lossless through ffmpeg (its default bitrate wins): it needs
    # `-crf 0 -b:v 0` too (checked on ffmpeg 9.0.2). SVT-AV1 is lossless only for 4:2:0.
    "av1-lossless": Codec("av1-lossless", ".mkv", (
        Variant("libaom-av1", ("-c:v", "libaom-av1", "-lossless", "1", "-crf", "0", "-b:v", "0", "-cpu-used", "6",
                               "-row-mt", "1"), _AOM_FMTS),
        Variant("libsvtav1", ("-c:v", "libsvtav1", "-svtav1-params", "lossless=1"),
                frozenset({"yuv420p", "yuv420p10le"})),
    )),
}
DEFAULT_CODEC = "ffv1"


def choose_variant(codec: str, pix_fmt: str, ff: FFmpeg, *, where: str) -> Variant:
    """The first encoder of `codec` that this ffmpeg has and that takes `pix_fmt`, or a clear error."""
    if codec not in CODECS:
        raise BadInput(f"unknown pack codec {codec!r}", hint=f"use one of: {', '.join(CODECS)}")
    present = [v for v in CODECS[codec].variants if v.encoder in ff.encoders]
    if not present:
        wanted = " or ".join(v.encoder for v in CODECS[codec].variants)
        raise PrereqError(f"pack codec {codec} needs the {wanted} encoder, which {ff.path} does not have",
                          hint="use --codec ffv1 (available in every ffmpeg build) or another ffmpeg via --ffmpeg")
    for variant in present:
        if variant.pix_fmts is None or pix_fmt in variant.pix_fmts:
            return variant
    raise BadInput(f"{where}: pack codec {codec} ({', '.join(v.encoder for v in present)}) cannot store {pix_fmt} "
                   "losslessly", hint="use --codec ffv1, which stores every supported pixel format")



# ---- pack ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackResult:
    out: Path
    manifest: RefsManifest
    raw_bytes: int
    packed_bytes: int
    seconds: float
    reused: int  # members kept from an interrupted earlier run


def _pack_one(source: Source, variant: Variant, codec: Codec, ff: FFmpeg, pack_dir: Path, threads: int) -> RefEntry:
    """Encode one source losslessly while hashing its raw frames (one decode), then prove the round trip."""
    name = source.src
    check_name(Path(REFS_JSON), name, "source name")
    packed = pack_dir / f"{name}{codec.ext}"
    fsize = frame_bytes(source.width, source.height, source.pix_fmt)
    expected = source.n_frames * fsize
    tagged_range = color_range(source, ff)
    with atomic_path(packed) as tmp:
        argv = [str(ff.path), "-nostdin", "-hide_banner", "-v", "error", "-y", *source.input_args(),
                "-map", "0:v:0", "-fps_mode", "passthrough", "-pix_fmt", source.pix_fmt, *variant.args,
                *(["-color_range", tagged_range] if tagged_range else []),
                "-threads", str(threads), "-fflags", "+bitexact", "-flags:v", "+bitexact", "-f", "matroska", str(tmp),
                *raw_output(source.pix_fmt)]
        sha, total = stream_sha256(argv, what=f"{source.path} (packing with {variant.encoder})", read_size=CHUNK)
        if total != expected:
            raise WorkFailed(f"{source.path}: read {total} bytes of raw frames, expected {expected} "
                             f"({source.n_frames} frames of {source.width}x{source.height} {source.pix_fmt})",
                             hint="the file is truncated or its geometry is wrong")
        check_argv = [str(ff.path), "-nostdin", "-hide_banner", "-v", "error", "-threads", str(threads),
                      "-i", str(tmp), *raw_output(source.pix_fmt)]
        back, back_total = stream_sha256(check_argv, what=f"{packed.name} (round-trip check)", read_size=CHUNK,
                                         clean=True)
        if (back, back_total) != (sha, total):
            raise WorkFailed(f"{variant.encoder} did not reproduce the frames of {source.path} exactly "
                             f"({source.pix_fmt}): the pack would not be lossless",
                             hint="use --codec ffv1")
        os.chmod(tmp, 0o644)
        packed_sha = sha256_file(tmp)
        packed_size = tmp.stat().st_size
    return RefEntry(name=name, source_file=source.path.name, packed_file=packed.name, width=source.width,
                    height=source.height, pix_fmt=source.pix_fmt, fps=source.fps, fps_rational=source.fps_rational,
                    n_frames=source.n_frames, raw_sha256=sha, raw_bytes=total, packed_sha256=packed_sha,
                    packed_bytes=packed_size, encoder=variant.encoder, color_range=tagged_range,
                    variable_rate=source.variable_rate)


def pack(ref_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, codec: str = DEFAULT_CODEC,
         jobs: int | None = None, ff: FFmpeg | None = None, width: int | None = None, height: int | None = None,
         pix_fmt: str | None = None, fps: float | str | None = None, progress: ProgressFn | None = None) -> PackResult:
    """Pack every reference in `ref_dir` losslessly into `out` (a directory, or a `.tar`/`.tar.gz` file).

    Resumable: members finished by an interrupted run (recorded in the pack's state file, keyed on the
    source file's size and mtime) are kept, not encoded again.
    """
    started = time.perf_counter()
    ref_dir, out = Path(ref_dir), Path(out)
    ff = ff or find_ffmpeg(require_libvmaf=False)
    jobs = jobs or default_jobs()
    if codec not in CODECS:
        raise BadInput(f"unknown pack codec {codec!r}", hint=f"use one of: {', '.join(CODECS)}")
    found = discover(ref_dir, ff=ff, width=width, height=height, pix_fmt=pix_fmt, fps=fps)
    if not found:
        raise BadInput(f"no reference clips found in {ref_dir}", hint="pass the directory holding the .yuv/.y4m/.mkv/.mp4 references")
    names = [s.src for s in found]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BadInput(f"{ref_dir} holds several files for source(s) {', '.join(dupes)}",
                       hint="keep one file per source in the reference directory")
    variants = {s.src: choose_variant(codec, s.pix_fmt, ff, where=str(s.path)) for s in found}
    for s in found:
        check_pix_fmt(s.pix_fmt, str(s.path))
        check_name(ref_dir / s.path.name, s.src, "source name")
        if s.src == Path(REFS_JSON).stem:  # its .yuv sidecar would be refs.json itself
            raise BadInput(f"{s.path}: the source name {s.src!r} is reserved for the pack manifest", hint="rename the file")

    tarball = is_tarball(out)
    if not tarball and out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is an existing file", hint="name a directory, or a file ending in .tar or .tar.gz")
    pack_dir = out.with_name(f".{out.name}.partial") if tarball else out
    if pack_dir.resolve() == ref_dir.resolve():
        raise BadInput(f"--out {out} is the reference directory itself", hint="pack into a new directory or a .tar file")
    pack_dir.mkdir(parents=True, exist_ok=True)
    state_path = pack_dir / PACK_STATE
    state: dict[str, Any] = read_json(state_path, what="pack state") if state_path.is_file() else {}
    if state.get("codec") != codec or state.get("ffmpeg") != ff.version:
        state = {"codec": codec, "ffmpeg": ff.version, "members": {}}

    entries: dict[str, RefEntry] = {}
    todo: list[Source] = []
    for s in found:
        prior = state["members"].get(s.src)
        packed = pack_dir / f"{s.src}{CODECS[codec].ext}"
        if (prior and prior.get("source") == {"file": s.path.name, **stat_key(s.path)} and packed.is_file()
                and prior.get("packed") == stat_key(packed)):
            entries[s.src] = RefEntry(**prior["entry"])
        else:
            todo.append(s)
    reused = len(entries)
    todo.sort(key=lambda s: -s.n_frames * frame_bytes(s.width, s.height, s.pix_fmt))  # biggest first
    threads = threads_per_job(jobs, len(todo))
    total_todo = sum(s.n_frames * frame_bytes(s.width, s.height, s.pix_fmt) for s in todo)
    if progress:
        progress("", 0, total_todo)
    failures: list[str] = []
    for s, fut in run_parallel(todo, lambda s: _pack_one(s, variants[s.src], CODECS[codec], ff, pack_dir, threads), jobs):
        try:
            entry = fut.result()
        except KitError as exc:
            failures.append(str(exc))
            continue
        entries[s.src] = entry
        packed = pack_dir / entry.packed_file
        state["members"][s.src] = {"source": {"file": s.path.name, **stat_key(s.path)}, "packed": stat_key(packed),
                                   "entry": asdict(entry)}
        write_json(state_path, state)
        if progress:
            progress(s.src, entry.raw_bytes, total_todo)
    if failures:
        raise WorkFailed(f"{len(failures)} of {len(found)} source(s) could not be packed: " + "; ".join(failures),
                         hint="fix the named files and rerun: finished members are kept")

    manifest = RefsManifest(codec=codec, sources=tuple(entries[s.src] for s in found), ffmpeg_version=ff.version,
                            env_fingerprint=fingerprint_id(fingerprint(ff)))
    write_json(pack_dir / REFS_JSON, manifest.to_json())
    write_text(pack_dir / README, readme_text(manifest))
    if tarball:
        members = [(REFS_JSON, pack_dir / REFS_JSON), (README, pack_dir / README)]
        members += [(e.packed_file, pack_dir / e.packed_file) for e in manifest.sources]
        write_reproducible_tar(members, out, compresslevel=1)
        shutil.rmtree(pack_dir)
    # A directory pack keeps its (hidden) state file: rerunning the same pack is then a quick no-op.
    raw_total = sum(e.raw_bytes for e in manifest.sources)
    packed_total = sum(e.packed_bytes for e in manifest.sources)
    return PackResult(out=out, manifest=manifest, raw_bytes=raw_total, packed_bytes=packed_total,
                      seconds=time.perf_counter() - started, reused=reused)


