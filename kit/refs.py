"""Reference packs: ship reference clips bit-exactly (lossless codec + sha256 of the raw frames).

WHY: a second verdict only confirms the first if both boxes encoded the *same* reference frames. A
pack holds every reference losslessly (FFV1 by default) plus `refs.json`, which records each source's
geometry (from `kit.sources`, never guessed from a file size) and the sha256 of its raw frames.
Unpacking decodes back to raw `.yuv` (or `.y4m`) and checks every raw sha256 while writing; a file
appears under its final name only once verified. The raw-frame sha256 is also the source's identity
in the corpus when a `refs.json` is present, so a `.y4m`, a `.yuv` and a lossless `.mkv` of the same
frames are one source.

Every ffmpeg call is one subprocess whose rawvideo output is streamed through hashlib in chunks, so
a 100 GiB clip never sits in memory; sources run in parallel (threads driving ffmpeg processes).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

from kit import __version__
from kit.core.archive import safe_extract, write_reproducible_tar
from kit.core.console import warn
from kit.core.errors import BadInput, KitError, PrereqError, WorkFailed
from kit.core.fsio import atomic_path, read_json, sha256_file, write_bytes, write_json, write_text
from kit.corpus.ffmpeg import FFmpeg, cpu_count, find_ffmpeg
from kit.corpus.sources import RAW_PIX_FMTS, Y4M_COLORSPACES, Source, discover, fps_arg, frame_bytes

REFS_JSON = "refs.json"
README = "README.txt"
SCHEMA = "ensemble-kit/refs"
SCHEMA_VERSION = 1
PACK_STATE = ".refs-pack-state.json"  # inside a pack being built: finished members, for resume
VERIFIED_STATE = ".refs-verified.json"  # inside an unpacked dir: files already verified, for resume
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
CHUNK = 1 << 20
FFMPEG_TIMEOUT_S = None  # raw clips can be hundreds of GiB: no wall-clock limit on a single decode

# ---- raw frame layouts come from kit.corpus.sources (one table); Y4M tags are its table inverted -------

Y4M_TAG: dict[str, str] = {}
for _tag, _fmt in Y4M_COLORSPACES.items():
    Y4M_TAG.setdefault(_fmt, _tag)  # first tag per format: C420jpeg for yuv420p, as ffmpeg writes


def _check_pix_fmt(pix_fmt: str, where: str) -> None:
    if pix_fmt not in RAW_PIX_FMTS:
        raise BadInput(f"{where}: pixel format {pix_fmt!r} is not supported by reference packs",
                       hint=f"convert it to one of: {', '.join(RAW_PIX_FMTS)}")


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


# ---- refs.json -----------------------------------------------------------------------------------

_SHA = re.compile(r"[0-9a-f]{64}")
COLOR_RANGES = ("", "pc", "tv")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@=,-]*")


@dataclass(frozen=True)
class RefEntry:
    """One source in a pack: what the frames are (geometry, raw sha256) and where they are stored."""

    name: str  # Source.src: the corpus' source name
    source_file: str  # the file it was packed from
    packed_file: str  # the lossless file in the pack
    width: int
    height: int
    pix_fmt: str
    fps: float
    fps_rational: str  # e.g. "30000/1001": exact, for Y4M headers
    n_frames: int
    raw_sha256: str
    raw_bytes: int
    packed_sha256: str
    packed_bytes: int
    encoder: str
    color_range: str = ""  # "pc" (full), "tv" (limited) or "" (untagged): kept so no step converts ranges

    def raw_file(self, *, y4m: bool = False) -> str:
        """File name `refs unpack` gives these frames: `<name>.y4m`, or `<name>.yuv` + a `<name>.json`
        geometry sidecar (kit.corpus.sources reads it), so the corpus' source name stays `<name>`."""
        return f"{self.name}.y4m" if y4m else f"{self.name}.yuv"

    def sidecar(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "pix_fmt": self.pix_fmt, "fps": self.fps}

    def known_files(self) -> tuple[str, ...]:
        """Every name under which a reference directory may hold exactly these frames."""
        return tuple(dict.fromkeys((self.raw_file(), self.raw_file(y4m=True), self.packed_file, self.source_file)))


@dataclass(frozen=True)
class RefsManifest:
    codec: str
    sources: tuple[RefEntry, ...]
    kit_version: str = __version__
    ffmpeg_version: str = ""
    env_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "codec": self.codec,
            "kit_version": self.kit_version,
            "ffmpeg_version": self.ffmpeg_version,
            "env_fingerprint": self.env_fingerprint,
            "unpack": "ensemble-kit refs unpack <this pack> --out <dir>   (then: --ref-dir <dir>)",
            "raw_bytes": sum(e.raw_bytes for e in self.sources),
            "packed_bytes": sum(e.packed_bytes for e in self.sources),
            "sources": [asdict(e) for e in sorted(self.sources, key=lambda e: e.name)],
        }

    def by_name(self) -> dict[str, RefEntry]:
        return {e.name: e for e in self.sources}


def _bad_manifest(path: Path, what: str) -> BadInput:
    return BadInput(f"{path} is not a valid refs.json: {what}",
                    hint="the pack is damaged or from an incompatible kit: ask the sender to re-run `ensemble-kit refs pack`")


def _check_name(path: Path, value: Any, what: str) -> str:
    """refs.json is untrusted: every name that becomes a path must be a plain file name."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value in (".", ".."):
        raise _bad_manifest(path, f"{what} {value!r} is not a plain file name")
    return value


def _entry(path: Path, raw: Any, index: int) -> RefEntry:
    if not isinstance(raw, dict):
        raise _bad_manifest(path, f"sources[{index}] is not an object")
    kinds = {f.name: f.type for f in fields(RefEntry)}
    optional = {f.name for f in fields(RefEntry) if f.default is not MISSING}
    missing = [k for k in kinds if k not in raw and k not in optional]
    if missing:
        raise _bad_manifest(path, f"sources[{index}] lacks {', '.join(missing)}")
    values: dict[str, Any] = {}
    for key, kind in kinds.items():
        if key not in raw:
            continue
        v = raw[key]
        ok = {"int": isinstance(v, int) and not isinstance(v, bool) and v >= 0,
              "float": isinstance(v, int | float) and not isinstance(v, bool) and v > 0,
              "str": isinstance(v, str)}[kind]
        if not ok:
            raise _bad_manifest(path, f"sources[{index}].{key} = {v!r} is not a valid {kind}")
        values[key] = float(v) if kind == "float" else v
    for key in ("name", "source_file", "packed_file"):
        _check_name(path, values[key], f"sources[{index}].{key}")
    for key in ("raw_sha256", "packed_sha256"):
        if not _SHA.fullmatch(values[key]):
            raise _bad_manifest(path, f"sources[{index}].{key} is not a sha256")
    if values.get("color_range", "") not in COLOR_RANGES:
        raise _bad_manifest(path, f"sources[{index}].color_range must be one of {', '.join(map(repr, COLOR_RANGES))}")
    if values["pix_fmt"] not in RAW_PIX_FMTS:
        raise _bad_manifest(path, f"sources[{index}].pix_fmt {values['pix_fmt']!r} is unsupported")
    if values["width"] < 1 or values["height"] < 1 or values["n_frames"] < 1:
        raise _bad_manifest(path, f"sources[{index}] has an empty geometry")
    if values["raw_bytes"] != values["n_frames"] * frame_bytes(values["width"], values["height"], values["pix_fmt"]):
        raise _bad_manifest(path, f"sources[{index}].raw_bytes disagrees with its geometry and frame count")
    try:
        Fraction(values["fps_rational"])
    except (ValueError, ZeroDivisionError):
        raise _bad_manifest(path, f"sources[{index}].fps_rational {values['fps_rational']!r} is not a fraction") from None
    return RefEntry(**values)


def read_manifest(path: str | os.PathLike[str]) -> RefsManifest:
    """Parse and validate a refs.json (a file or the directory holding one); BadInput names the problem."""
    path = Path(path)
    if path.is_dir():
        path = path / REFS_JSON
    doc = read_json(path, what="refs.json")
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise _bad_manifest(path, f"schema is not {SCHEMA!r}")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise BadInput(f"{path} has refs schema_version {doc.get('schema_version')!r}; this kit reads {SCHEMA_VERSION}",
                       hint="use the ensemble-kit version that made the pack")
    raw_sources = doc.get("sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        raise _bad_manifest(path, "no sources")
    entries = tuple(_entry(path, raw, i) for i, raw in enumerate(raw_sources))
    for key in ("name", "packed_file"):
        seen = [getattr(e, key) for e in entries]
        if len(set(seen)) != len(seen):
            raise _bad_manifest(path, f"duplicate {key}")
    known = {"schema", "schema_version", "codec", "kit_version", "ffmpeg_version", "env_fingerprint", "unpack",
             "raw_bytes", "packed_bytes", "sources"}
    return RefsManifest(codec=str(doc.get("codec", "")), sources=entries, kit_version=str(doc.get("kit_version", "")),
                        ffmpeg_version=str(doc.get("ffmpeg_version", "")),
                        env_fingerprint=str(doc.get("env_fingerprint", "")),
                        extra={k: v for k, v in doc.items() if k not in known})


def raw_sha256_index(ref_dir: str | os.PathLike[str]) -> dict[str, str]:
    """File name -> raw-frame sha256 for the files a reference directory's refs.json describes.

    Empty when there is no refs.json. Covers every name the same frames may have there (unpacked
    `.yuv`/`.y4m`, the packed `.mkv`, the original file name). It trusts refs.json; `refs verify`
    is what checks the files against it.
    """
    path = Path(ref_dir) / REFS_JSON
    if not path.is_file():
        return {}
    index: dict[str, str] = {}
    for entry in read_manifest(path).sources:
        for name in entry.known_files():
            index.setdefault(name, entry.raw_sha256)
    return index


def raw_rekeyer(ref_dir: str | os.PathLike[str]) -> Callable[[Source], Source]:
    """For `kit.corpus.sources.discover`: a function giving each Source its raw-frame sha256 as `src_sha256`.

    WHY: with a refs.json present, a `.y4m`, a `.yuv` and a lossless `.mkv` of the same frames must be
    ONE source, so corpus rows from two boxes that used the same pack merge. Identity when there is no
    refs.json. Cheap (no decoding): a file is re-keyed only if its geometry matches its refs.json entry,
    and a `.yuv` (whose file hash IS its raw-frame hash) only if the hashes agree; otherwise it keeps
    its file hash, with a warning to run `refs verify`.
    """
    path = Path(ref_dir) / REFS_JSON
    if not path.is_file():
        return lambda source: source
    entries = {name: e for e in read_manifest(path).sources for name in e.known_files()}

    def rekey(source: Source) -> Source:
        e = entries.get(source.path.name)
        if e is None:
            return source
        if (source.width, source.height, source.pix_fmt, source.n_frames) != (e.width, e.height, e.pix_fmt, e.n_frames) \
                or (source.kind == "yuv" and source.src_sha256 != e.raw_sha256):
            warn(f"{source.path.name} does not match its entry in {path}: keyed by its file hash "
                 f"(run `ensemble-kit refs verify {Path(ref_dir)}`)")
            return source
        return replace(source, src_sha256=e.raw_sha256)

    return rekey


# ---- streaming raw frames through hashlib --------------------------------------------------------


def _ffmpeg_error(stderr: IO[bytes], what: str) -> str:
    stderr.seek(0)
    lines = [ln.strip() for ln in stderr.read().decode(errors="replace").splitlines() if ln.strip()]
    return f"ffmpeg failed on {what}: {lines[-1] if lines else 'no message'}"


def _stream(argv: list[str], *, what: str, read_size: int, sink: Callable[[bytes], None] | None = None) -> tuple[str, int]:
    """Run ffmpeg writing rawvideo to stdout; hash (and optionally hand on) every byte. -> (sha256, bytes)."""
    digest = hashlib.sha256()
    total = 0
    with tempfile.TemporaryFile() as stderr:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)
        except OSError as exc:
            raise PrereqError(f"cannot run ffmpeg {argv[0]}: {exc}", hint="pass a working binary with --ffmpeg") from None
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read(read_size):
                digest.update(chunk)
                total += len(chunk)
                if sink is not None:
                    sink(chunk)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
        if proc.wait() != 0:
            raise WorkFailed(_ffmpeg_error(stderr, what))
    return digest.hexdigest(), total


def _raw_output(pix_fmt: str) -> list[str]:
    """Output options that hand every decoded frame, unconverted and undropped, to stdout."""
    return ["-map", "0:v:0", "-fps_mode", "passthrough", "-pix_fmt", pix_fmt, "-f", "rawvideo", "pipe:1"]


def _hash_file_prefix(path: Path, length: int) -> tuple[str, int]:
    digest = hashlib.sha256()
    total = 0
    with open(path, "rb") as fh:
        while total < length and (chunk := fh.read(min(CHUNK, length - total))):
            digest.update(chunk)
            total += len(chunk)
    return digest.hexdigest(), total


def raw_sha256(source: Source, ff: FFmpeg, *, threads: int = 0) -> str:
    """sha256 of a source's raw frames (planar, its own pix_fmt): the same for .yuv, .y4m and lossless .mkv."""
    expected = source.n_frames * frame_bytes(source.width, source.height, source.pix_fmt)
    if source.kind == "yuv":  # the file IS the raw frames: hash it directly, no ffmpeg round trip
        sha, total = _hash_file_prefix(source.path, expected)
    else:
        argv = [str(ff.path), "-nostdin", "-hide_banner", "-v", "error", "-threads", str(threads),
                *source.input_args(), *_raw_output(source.pix_fmt)]
        sha, total = _stream(argv, what=str(source.path), read_size=CHUNK)
    if total != expected:
        raise WorkFailed(f"{source.path}: decoded {total} bytes of raw frames, expected {expected} "
                         f"({source.n_frames} frames of {source.width}x{source.height} {source.pix_fmt})",
                         hint="the file is truncated or its geometry is wrong; check it with `ensemble-kit refs verify`")
    return sha


# ---- pack ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackResult:
    out: Path
    manifest: RefsManifest
    raw_bytes: int
    packed_bytes: int
    seconds: float
    reused: int  # members kept from an interrupted earlier run


ProgressFn = Callable[[str, int, int], None]  # (source name, its raw bytes, total raw bytes to do); ("", 0, total) first


def default_jobs() -> int:
    """All the cores this process may use."""
    return cpu_count()


def _threads_per_job(jobs: int, n_items: int) -> int:
    """ffmpeg threads for each job. WHY not cores/jobs: clips differ in size, and once the small ones finish
    the big one would crawl on its share; a little oversubscription costs less than idle cores."""
    share = max(1, default_jobs() // max(1, min(jobs, n_items)))
    return min(default_jobs(), 2 * share)


def _is_tarball(path: Path) -> bool:
    return path.name.endswith(TAR_SUFFIXES)


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _color_range(source: Source, ff: FFmpeg) -> str:
    """The source's tagged colour range. WHY: an encoder that does not declare full range (FFV1) makes
    ffmpeg insert a pc->tv range conversion, which silently changes the pixels; tagging the output
    with the input's range keeps every byte."""
    if source.kind == "yuv":
        return ""
    if source.kind == "y4m":
        with open(source.path, "rb") as fh:
            header = fh.readline(4096).decode("ascii", "replace")
        return {"XCOLORRANGE=FULL": "pc", "XCOLORRANGE=LIMITED": "tv"}.get(
            next((t for t in header.split() if t.startswith("XCOLORRANGE=")), ""), "")
    proc = subprocess.run([str(ff.path), "-hide_banner", "-nostdin", *source.input_args()], capture_output=True,
                          text=True, errors="replace", stdin=subprocess.DEVNULL)
    m = re.search(r"Stream #0:\d+[^:]*: Video: [^,]+, [a-z0-9]+\((pc|tv)\b", proc.stderr)
    return m.group(1) if m else ""


def _pack_one(source: Source, variant: Variant, codec: Codec, ff: FFmpeg, pack_dir: Path, threads: int) -> RefEntry:
    """Encode one source losslessly while hashing its raw frames (one decode), then prove the round trip."""
    name = source.src
    _check_name(Path(REFS_JSON), name, "source name")
    packed = pack_dir / f"{name}{codec.ext}"
    fsize = frame_bytes(source.width, source.height, source.pix_fmt)
    expected = source.n_frames * fsize
    fps = Fraction(fps_arg(source.fps))
    color_range = _color_range(source, ff)
    with atomic_path(packed) as tmp:
        argv = [str(ff.path), "-nostdin", "-hide_banner", "-v", "error", "-y", *source.input_args(),
                "-map", "0:v:0", "-fps_mode", "passthrough", "-pix_fmt", source.pix_fmt, *variant.args,
                *(["-color_range", color_range] if color_range else []),
                "-threads", str(threads), "-fflags", "+bitexact", "-flags:v", "+bitexact", "-f", "matroska", str(tmp),
                *_raw_output(source.pix_fmt)]
        sha, total = _stream(argv, what=f"{source.path} (packing with {variant.encoder})", read_size=CHUNK)
        if total != expected:
            raise WorkFailed(f"{source.path}: read {total} bytes of raw frames, expected {expected} "
                             f"({source.n_frames} frames of {source.width}x{source.height} {source.pix_fmt})",
                             hint="the file is truncated or its geometry is wrong")
        check_argv = [str(ff.path), "-nostdin", "-hide_banner", "-v", "error", "-threads", str(threads),
                      "-i", str(tmp), *_raw_output(source.pix_fmt)]
        back, back_total = _stream(check_argv, what=f"{packed.name} (round-trip check)", read_size=CHUNK)
        if (back, back_total) != (sha, total):
            raise WorkFailed(f"{variant.encoder} did not reproduce the frames of {source.path} exactly "
                             f"({source.pix_fmt}): the pack would not be lossless",
                             hint="use --codec ffv1")
        os.chmod(tmp, 0o644)
        packed_sha = sha256_file(tmp)
        packed_size = tmp.stat().st_size
    return RefEntry(name=name, source_file=source.path.name, packed_file=packed.name, width=source.width,
                    height=source.height, pix_fmt=source.pix_fmt, fps=float(source.fps),
                    fps_rational=f"{fps.numerator}/{fps.denominator}", n_frames=source.n_frames, raw_sha256=sha,
                    raw_bytes=total, packed_sha256=packed_sha, packed_bytes=packed_size, encoder=variant.encoder,
                    color_range=color_range)


def _readme(manifest: RefsManifest) -> str:
    return (f"ensemble-kit reference pack: {len(manifest.sources)} source(s), codec {manifest.codec}, "
            f"{manifest.to_json()['raw_bytes']} raw bytes. "
            "Unpack with: ensemble-kit refs unpack <this pack> --out <dir>   then run with --ref-dir <dir>\n")


def _run_parallel(items: list[Any], work: Callable[[Any], Any], jobs: int) -> Iterator[tuple[Any, Future[Any]]]:
    """Run `work` over `items` on `jobs` threads (each drives an ffmpeg process); yield as they finish."""
    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="refs")
    try:
        futures = {pool.submit(work, item): item for item in items}
        for fut in as_completed(futures):
            yield futures[fut], fut
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def pack(ref_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, codec: str = DEFAULT_CODEC,
         jobs: int | None = None, ff: FFmpeg | None = None, width: int | None = None, height: int | None = None,
         pix_fmt: str | None = None, fps: float | None = None, progress: ProgressFn | None = None) -> PackResult:
    """Pack every reference in `ref_dir` losslessly into `out` (a directory, or a `.tar`/`.tar.gz` file).

    Resumable: members finished by an interrupted run (recorded in the pack's state file, keyed on the
    source file's size and mtime) are kept, not encoded again.
    """
    from kit.env.fingerprint import fingerprint, fingerprint_id

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
        _check_pix_fmt(s.pix_fmt, str(s.path))
        _check_name(ref_dir / s.path.name, s.src, "source name")
        if s.src == Path(REFS_JSON).stem:  # its .yuv sidecar would be refs.json itself
            raise BadInput(f"{s.path}: the source name {s.src!r} is reserved for the pack manifest", hint="rename the file")

    tarball = _is_tarball(out)
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
        if (prior and prior.get("source") == {"file": s.path.name, **_stat_key(s.path)} and packed.is_file()
                and prior.get("packed") == _stat_key(packed)):
            entries[s.src] = RefEntry(**prior["entry"])
        else:
            todo.append(s)
    reused = len(entries)
    todo.sort(key=lambda s: -s.n_frames * frame_bytes(s.width, s.height, s.pix_fmt))  # biggest first
    threads = _threads_per_job(jobs, len(todo))
    total_todo = sum(s.n_frames * frame_bytes(s.width, s.height, s.pix_fmt) for s in todo)
    if progress:
        progress("", 0, total_todo)
    failures: list[str] = []
    for s, fut in _run_parallel(todo, lambda s: _pack_one(s, variants[s.src], CODECS[codec], ff, pack_dir, threads), jobs):
        try:
            entry = fut.result()
        except KitError as exc:
            failures.append(str(exc))
            continue
        entries[s.src] = entry
        packed = pack_dir / entry.packed_file
        state["members"][s.src] = {"source": {"file": s.path.name, **_stat_key(s.path)}, "packed": _stat_key(packed),
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
    write_text(pack_dir / README, _readme(manifest))
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


# ---- unpack --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnpackResult:
    out: Path
    manifest: RefsManifest
    files: tuple[Path, ...]
    raw_bytes: int
    seconds: float
    reused: int  # files already verified by an earlier run, not decoded again


def _y4m_header(entry: RefEntry) -> bytes:
    tag = Y4M_TAG[entry.pix_fmt]
    fps = Fraction(entry.fps_rational)
    rng = {"pc": " XCOLORRANGE=FULL", "tv": " XCOLORRANGE=LIMITED"}.get(entry.color_range, "")
    return f"YUV4MPEG2 W{entry.width} H{entry.height} F{fps.numerator}:{fps.denominator} Ip A1:1 C{tag}{rng}\n".encode()


def _sidecar_path(raw_file: Path) -> Path:
    return raw_file.with_suffix(".json")  # where kit.corpus.sources looks first


def _unpack_one(entry: RefEntry, pack_dir: Path, out_dir: Path, y4m: bool, ff: FFmpeg, threads: int) -> Path:
    """Check the packed member's sha256, decode it to its raw file while hashing, publish only if equal."""
    packed = pack_dir / entry.packed_file
    if not packed.is_file():
        raise BadInput(f"pack member {entry.packed_file} is missing from {pack_dir}",
                       hint="the pack is incomplete: ask the sender for a fresh copy")
    if packed.stat().st_size != entry.packed_bytes or sha256_file(packed) != entry.packed_sha256:
        raise BadInput(f"pack member {entry.packed_file} is corrupt (its sha256 differs from refs.json)",
                       hint="the pack was damaged in transit: ask the sender for a fresh copy")
    target = out_dir / entry.raw_file(y4m=y4m)
    fsize = frame_bytes(entry.width, entry.height, entry.pix_fmt)
    argv = [str(ff.path), "-nostdin", "-hide_banner", "-v", "error", "-threads", str(threads), "-i", str(packed),
            *_raw_output(entry.pix_fmt)]
    if not y4m:  # geometry first: a .yuv never appears without the sidecar that sizes it
        write_json(_sidecar_path(target), entry.sidecar())
    with atomic_path(target) as tmp, open(tmp, "wb", buffering=CHUNK) as fh:
        if y4m:
            fh.write(_y4m_header(entry))

            def sink(frame: bytes) -> None:
                fh.write(b"FRAME\n")
                fh.write(frame)
        else:
            sink = fh.write
        try:
            sha, total = _stream(argv, what=entry.packed_file, read_size=fsize if y4m else CHUNK, sink=sink)
        except WorkFailed as exc:  # its sha256 matched refs.json, yet it does not decode: the pack is bad
            raise BadInput(f"pack member {entry.packed_file} cannot be decoded ({exc.message}); "
                           f"no {target.name} was written",
                           hint="the pack is damaged or was made by a different kit: ask the sender for a fresh copy") from None
        fh.flush()
        os.chmod(tmp, 0o644)
        if (sha, total) != (entry.raw_sha256, entry.raw_bytes):
            raise BadInput(f"{target.name}: decoded frames of {entry.packed_file} do not match refs.json "
                           f"(sha256 {sha[:12]}…, {total} bytes; expected {entry.raw_sha256[:12]}…, {entry.raw_bytes} bytes); "
                           "the bad output was removed",
                           hint="the pack is damaged or was made by a different kit: ask the sender for a fresh copy")
    return target


def _extract_pack(tar_path: Path, out_dir: Path) -> Path:
    """Extract a pack tarball under the untrusted-archive rules into a staging dir inside `out_dir`."""
    staging = out_dir / f".refs-pack-{tar_path.name}"
    marker = staging / ".extracted"
    key = f"{tar_path.stat().st_size}:{tar_path.stat().st_mtime_ns}"
    if marker.is_file() and marker.read_text() == key:
        return staging
    limit = 4 * tar_path.stat().st_size + (16 << 20)  # FFV1 barely compresses: more than this is a bomb
    safe_extract(tar_path, staging, max_total_bytes=limit)
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
    elif _is_tarball(pack_path):
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
        if target.is_file() and state.get(target.name) == {"raw_sha256": e.raw_sha256, **_stat_key(target)}:
            if not y4m:  # cheap, and repairs a deleted or edited sidecar
                write_json(_sidecar_path(target), e.sidecar())
            done.append(target)
        else:
            todo.append(e)
    reused = len(done)
    todo.sort(key=lambda e: -e.raw_bytes)  # biggest first: the long pole starts at once
    threads = _threads_per_job(jobs, len(todo))
    total_todo = sum(e.raw_bytes for e in todo)
    if progress:
        progress("", 0, total_todo)
    failures: list[KitError] = []
    for e, fut in _run_parallel(todo, lambda e: _unpack_one(e, pack_dir, out_dir, y4m, ff, threads), jobs):
        try:
            target = fut.result()
        except KitError as exc:
            failures.append(exc)
            continue
        done.append(target)
        state[target.name] = {"raw_sha256": e.raw_sha256, **_stat_key(target)}
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


# ---- verify --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyRow:
    name: str
    file: str  # "" when missing
    status: str  # "ok" | "mismatch" | "missing" | "extra" | "error"
    detail: str = ""


@dataclass(frozen=True)
class VerifyReport:
    ref_dir: Path
    rows: tuple[VerifyRow, ...]

    @property
    def ok(self) -> bool:
        return all(r.status in ("ok", "extra") for r in self.rows)

    def problems(self) -> list[VerifyRow]:
        return [r for r in self.rows if r.status not in ("ok", "extra")]


def verify(ref_dir: str | os.PathLike[str], *, refs_json: str | os.PathLike[str] | None = None,
           jobs: int | None = None, ff: FFmpeg | None = None) -> VerifyReport:
    """Check every reference file in `ref_dir` against refs.json (raw-frame sha256 + geometry), decoding
    in memory only. Every source in refs.json must be present under one of its known names."""
    ref_dir = Path(ref_dir)
    if refs_json is None and not (ref_dir / REFS_JSON).is_file():
        raise BadInput(f"{ref_dir} has no {REFS_JSON} to verify against",
                       hint="pass the pack's manifest with --refs-json PACK/refs.json")
    manifest = read_manifest(Path(refs_json) if refs_json else ref_dir / REFS_JSON)
    ff = ff or find_ffmpeg(require_libvmaf=False)
    jobs = jobs or default_jobs()
    found = discover(ref_dir, ff=ff)
    by_file = {name: e for e in manifest.sources for name in e.known_files()}
    by_name = manifest.by_name()
    pairs: list[tuple[Source, RefEntry]] = []
    rows: list[VerifyRow] = []
    for s in found:
        entry = by_file.get(s.path.name) or by_name.get(s.src)
        if entry is None:
            rows.append(VerifyRow(s.src, s.path.name, "extra", "not in refs.json"))
        else:
            pairs.append((s, entry))
    covered = {e.name for _, e in pairs}
    rows += [VerifyRow(e.name, "", "missing", f"expected one of {', '.join(e.known_files())}")
             for e in manifest.sources if e.name not in covered]

    def check(pair: tuple[Source, RefEntry]) -> VerifyRow:
        s, e = pair
        geometry = (s.width, s.height, s.pix_fmt, s.n_frames)
        if geometry != (e.width, e.height, e.pix_fmt, e.n_frames):
            return VerifyRow(e.name, s.path.name, "mismatch",
                             f"geometry {s.width}x{s.height} {s.pix_fmt} {s.n_frames} frames, refs.json says "
                             f"{e.width}x{e.height} {e.pix_fmt} {e.n_frames} frames")
        try:
            sha = raw_sha256(s, ff, threads=_threads_per_job(jobs, len(pairs)))
        except KitError as exc:
            return VerifyRow(e.name, s.path.name, "error", exc.message)
        if sha != e.raw_sha256:
            return VerifyRow(e.name, s.path.name, "mismatch", f"raw-frame sha256 {sha[:12]}… != {e.raw_sha256[:12]}…")
        return VerifyRow(e.name, s.path.name, "ok")

    rows += [fut.result() for _, fut in _run_parallel(pairs, check, jobs)]
    return VerifyReport(ref_dir=ref_dir, rows=tuple(sorted(rows, key=lambda r: (r.name, r.file))))
