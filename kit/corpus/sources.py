"""Reference discovery: per-source geometry, exact frame counts, and a content sha256 for each clip.

Every source carries its own geometry (the old kit forced 1920x1080/25 fps/yuv420p on everything) and
its frame rate as an exact rational (`fps_rational`: 26777/1000 stays 26777/1000). Raw .yuv geometry:
explicit beats inferred. --width/--height/--pix-fmt/--fps (when given) beat a `<name>.json` sidecar,
which beats the file name (`_1920x1080_`, `_25fps`, `10bit`/`yuv420p10le`); a flag that overrides what
the name or sidecar says is noted in one line, and a name stating two sizes (or rates) with nothing
else to settle it is bad input naming both. The sha256 and frame count are cached keyed by path, size,
mtime, inode and ctime (`cp -p`, `rsync -t` and tar keep mtimes, never ctime), so re-runs do not re-hash
100 GiB of raw video and a file whose content changed is always probed again.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path

from kit.core import proc
from kit.core.console import warn
from kit.core.errors import BadInput
from kit.core.fsio import read_json, sha256_file, write_json
from kit.core.ids import KEY_LEN, short_id
from kit.corpus.ffmpeg import FFmpeg, cache_dir
from kit.corpus.geometry import (
    MAX_FPS,
    Y4M_COLORSPACES,
    NameAmbiguity,
    bit_depth,
    fps_arg,
    frame_bytes,
    geometry_from_name,
    parse_rate,
    rate_text,
)
from kit.refs import manifest as refs_manifest

RAW_EXTS = frozenset({".yuv"})
Y4M_EXTS = frozenset({".y4m"})
CONTAINER_EXTS = frozenset({".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".mts", ".m2ts", ".mxf",
                            ".flv", ".mpg", ".mpeg", ".nut", ".264", ".h264", ".265", ".hevc", ".ivf", ".obu"})
SOURCE_CACHE_VERSION = 2  # 2: exact rates (fps_rational), variable_rate; inode and ctime in the key
DEFAULT_RAW_FPS = Fraction(25)


@dataclass(frozen=True)
class Source:
    path: Path
    src: str  # file stem: the LOSO group name
    src_sha256: str  # content hash of the file
    kind: str  # "yuv" | "y4m" | "container"
    width: int
    height: int
    pix_fmt: str
    fps: float  # float(fps_rational), for arithmetic (durations, bitrates) and the corpus' fps column
    n_frames: int
    fps_rational: str = ""  # the exact rate ("30000/1001"); what the corpus feeds the encoders
    variable_rate: bool = False  # its timestamps vary: the encoders get its frames at fps_rational, one after another

    def __post_init__(self) -> None:
        if not self.fps_rational:  # built from a float rate only (an older cache entry, a test)
            object.__setattr__(self, "fps_rational", fps_arg(self.fps))

    @property
    def rate(self) -> Fraction:
        return Fraction(self.fps_rational)

    def input_args(self) -> list[str]:
        """ffmpeg input args (ending in `-i path`) that read exactly the reference frames; map with `N:v:0`."""
        path = str(self.path)
        if self.kind == "yuv":
            return ["-f", "rawvideo", "-pix_fmt", self.pix_fmt, "-video_size", f"{self.width}x{self.height}",
                    "-framerate", self.fps_rational, "-i", path]
        if self.kind == "y4m":
            return ["-f", "yuv4mpegpipe", "-i", path]
        return ["-noautorotate", "-i", path]

    @property
    def bit_depth(self) -> int:
        return bit_depth(self.pix_fmt)

    @property
    def geometry(self) -> dict[str, object]:
        """What, besides the frames' bytes, decides what a cell's encoder sees: part of every cell_id. Not
        the file kind: a .y4m, a .yuv and a lossless .mkv of the same frames at the same rate feed the
        encoders the same stream (kit.corpus.grid.encoder_input)."""
        return {"width": self.width, "height": self.height, "pix_fmt": self.pix_fmt, "fps": self.fps_rational,
                "n_frames": self.n_frames}


# ---- geometry from sidecars ----------------------------------------------------------------------

def _sidecar(path: Path) -> dict[str, object]:
    for cand in (path.with_suffix(".json"), path.with_name(path.name + ".json")):
        if cand.is_file():
            data = read_json(cand, what="geometry sidecar")
            if not isinstance(data, dict):
                raise BadInput(f"geometry sidecar {cand} must hold a JSON object",
                               hint='e.g. {"width": 1920, "height": 1080, "pix_fmt": "yuv420p", "fps": 25}')
            found = {k: data[k] for k in ("width", "height", "pix_fmt", "fps") if k in data}
            if "fps_rational" in data:  # refs unpack writes the exact rate beside the float one
                found["fps"] = data["fps_rational"]
            return found
    return {}


# ---- probing one file --------------------------------------------------------------------------------

GEOMETRY_FLAGS = {"width": "--width", "height": "--height", "pix_fmt": "--pix-fmt", "fps": "--fps"}


def _raw_source(path: Path, size: int, flags: dict[str, object]) -> dict[str, object]:
    """A .yuv's geometry: explicit beats inferred (flags > sidecar > name), each override said in one line."""
    given = {k: v for k, v in flags.items() if v is not None}
    side = _sidecar(path)
    try:
        named = geometry_from_name(path.name)
    except NameAmbiguity as exc:
        named = {}
        settled = ("width" in given or "width" in side) and ("height" in given or "height" in side) \
            if "x" in str(exc) else ("fps" in given or "fps" in side)
        if not settled:
            raise BadInput(f"{path.name}: its name states two {'frame sizes' if 'x' in str(exc) else 'frame rates'} "
                           f"({exc}), so it says neither",
                           hint=f"pass --width/--height/--fps, or add {path.with_suffix('.json').name} with "
                                "width/height/pix_fmt/fps") from None
    geo: dict[str, object] = {**named, **side}
    differs = [k for k, v in given.items() if k in geo and not _same(k, geo[k], v, path)]
    if differs:
        said = "its sidecar" if any(k in side for k in differs) else "its name"
        warn(f"{path.name}: {', '.join(f'{GEOMETRY_FLAGS[k]} {given[k]}' for k in differs)} override "
             f"{', '.join(f'{k} {geo[k]}' for k in differs)} from {said}")
    geo.update(given)
    if "width" not in geo or "height" not in geo:
        raise BadInput(f"{path}: cannot tell the frame size of this raw file",
                       hint=f"name it like clip_1920x1080_25fps.yuv, add {path.with_suffix('.json').name} "
                            "with width/height/pix_fmt/fps, or pass --width/--height")
    try:
        width, height = int(geo["width"]), int(geo["height"])  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise BadInput(f"{path}: geometry {geo} is not numeric", hint="fix the sidecar or the flags") from None
    if width <= 0 or height <= 0:
        raise BadInput(f"{path}: frame size {width}x{height} is not positive", hint="fix the name, sidecar or flags")
    pix_fmt = str(geo.get("pix_fmt") or "yuv420p")
    if geo.get("fps") is None:
        warn(f"{path.name}: no frame rate in its name, sidecar or --fps; assuming {DEFAULT_RAW_FPS} fps")
        rate = DEFAULT_RAW_FPS
    else:
        rate = parse_rate(geo["fps"], str(path))
    fb = frame_bytes(width, height, pix_fmt, path)
    if size % fb:
        raise BadInput(f"{path}: size {size} bytes is not a whole number of {width}x{height} {pix_fmt} frames "
                       f"({fb} bytes each; {size / fb:.3f} frames)",
                       hint="the file is truncated or the geometry is wrong: fix the name, sidecar or flags")
    return {"kind": "yuv", "width": width, "height": height, "pix_fmt": pix_fmt, **_rate_fields(rate),
            "n_frames": size // fb}


def _same(key: str, a: object, b: object, path: Path) -> bool:
    """Do a name/sidecar value and a flag value say the same thing (25 and 25.0 do)?"""
    if key == "fps":
        return parse_rate(a, str(path)) == parse_rate(b, str(path))
    try:
        return int(a) == int(b) if key in ("width", "height") else str(a) == str(b)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return False


def _rate_fields(rate: Fraction, variable: bool = False) -> dict[str, object]:
    return {"fps": float(rate), "fps_rational": rate_text(rate), "variable_rate": variable}


def _y4m_source(path: Path, size: int) -> dict[str, object]:
    with open(path, "rb") as fh:
        header = fh.readline(4096)
        if not header.startswith(b"YUV4MPEG2 ") or not header.endswith(b"\n"):
            raise BadInput(f"{path}: not a YUV4MPEG2 file (bad header)", hint="re-export it as .y4m or rename it")
        tags = {t[:1]: t[1:] for t in header.decode("ascii", "replace").split()[1:]}
        try:
            width, height = int(tags["W"]), int(tags["H"])
            num, den = (int(x) for x in tags.get("F", "25:1").split(":"))
            rate = Fraction(num, den)
        except (KeyError, ValueError, ZeroDivisionError):
            raise BadInput(f"{path}: Y4M header {header[:80]!r} lacks a valid W/H/F", hint="re-export the clip") from None
        if width <= 0 or height <= 0 or not 0 < rate <= MAX_FPS:
            raise BadInput(f"{path}: Y4M header {header[:80]!r} has an impossible frame size or rate "
                           f"(W{width} H{height} F{tags.get('F', '25:1')})", hint="re-export the clip")
        if tags.get("I") == "m":  # ffmpeg refuses to open it: every cell would fail
            raise BadInput(f"{path}: Y4M interlacing Im (mixed per frame) cannot be read by ffmpeg",
                           hint="re-export it with one interlacing mode for the whole clip (Ip, It or Ib)")
        if "F" not in tags:
            warn(f"{path.name}: its Y4M header has no frame rate; assuming 25 fps")
        cs = tags.get("C", "420jpeg")
        if cs not in Y4M_COLORSPACES:
            raise BadInput(f"{path}: Y4M colourspace C{cs} is not supported",
                           hint=f"convert to one of {', '.join('C' + c for c in Y4M_COLORSPACES)}")
        pix_fmt = Y4M_COLORSPACES[cs]
        fb = frame_bytes(width, height, pix_fmt, path)
        n, pos = 0, fh.tell()
        while pos < size:  # walk FRAME headers: exact count, and a truncated last frame is caught
            fh.seek(pos)
            line = fh.readline(1024)
            if not line.startswith(b"FRAME") or not line.endswith(b"\n"):
                raise BadInput(f"{path}: frame {n} has no FRAME header at byte {pos}", hint="the file is corrupt; re-export it")
            pos += len(line) + fb
            if pos > size:
                raise BadInput(f"{path}: size {size} bytes ends inside frame {n} ({fb} bytes each at {width}x{height} "
                               f"{pix_fmt})", hint="the file is truncated; re-export or re-copy it")
            n += 1
    if n == 0:
        raise BadInput(f"{path}: has a Y4M header but no frames", hint="re-export the clip")
    return {"kind": "y4m", "width": width, "height": height, "pix_fmt": pix_fmt, **_rate_fields(rate), "n_frames": n}


def _split_top(text: str) -> list[str]:
    """Split ffmpeg's stream description on top-level ', ' (not inside parentheses)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [*parts, cur.strip()]


def _container_source(path: Path, ff: FFmpeg) -> dict[str, object]:
    """Decode the first video stream once, as the corpus step will: geometry from ffmpeg's stream line, and
    from a per-frame listing (framecrc) the exact frame count and the exact rate ffmpeg hands the encoders
    (its time base is 1/rate: 26777/1000 stays 26777/1000, where the stream line shows "26.78 fps"). Frames
    whose timestamps do not step evenly make it a variable-rate source."""
    argv = [str(ff.path), "-nostdin", "-hide_banner", "-noautorotate", "-i", str(path), "-map", "0:v:0",
            "-fps_mode", "passthrough", "-f", "framecrc", "pipe:1"]
    try:
        done = proc.run(argv, stage="probe", check=False)
    except proc.ToolFailed as exc:
        raise BadInput(f"{path}: cannot run ffmpeg on it: {exc.reason}", hint="check the file and --ffmpeg") from None
    stream = re.search(r"Stream #0:\d+[^:]*: Video: (.*)", done.stderr)
    pts = [int(m) for m in re.findall(r"^\d+,\s*(-?\d+),", done.stdout, re.M)]
    tb = re.search(r"^#tb \d+: (\d+)/(\d+)$", done.stdout, re.M)
    if not done.ok or not stream or not pts or not tb:
        raise BadInput(f"{path}: ffmpeg cannot decode a video stream from it ({proc.stderr_reason(done.stderr)})",
                       hint="the file is unreadable, truncated or has no video; re-copy or re-export it")
    parts = _split_top(stream.group(1))
    pix_fmt = re.sub(r"\(.*", "", parts[1]).strip() if len(parts) > 1 else "yuv420p"
    size = next((m for p in parts if (m := re.match(r"(\d+)x(\d+)", p))), None)
    if size is None:
        raise BadInput(f"{path}: ffmpeg reports no frame size for its video stream", hint="re-export the clip")
    steps = {b - a for a, b in zip(pts, pts[1:], strict=False)}
    rate = Fraction(int(tb.group(2)), int(tb.group(1)))
    if not 0 < rate <= MAX_FPS:  # no frame rate known: the time base is the container's; use the mean step
        span = max(pts) - min(pts)
        rate = Fraction((len(pts) - 1) * int(tb.group(2)), span * int(tb.group(1))).limit_denominator(1001) \
            if span > 0 else DEFAULT_RAW_FPS
    variable = len(steps) > 1
    if variable:
        warn(f"{path.name} has a variable frame rate: the corpus feeds its {len(pts)} frames to the encoders one "
             f"after another at {rate_text(rate)} fps")
    return {"kind": "container", "width": int(size.group(1)), "height": int(size.group(2)), "pix_fmt": pix_fmt,
            **_rate_fields(rate, variable), "n_frames": len(pts)}


def open_source(path: Path, *, ff: FFmpeg, width: int | None = None, height: int | None = None,
                pix_fmt: str | None = None, fps: float | str | None = None) -> Source:
    """Probe one reference file. Cached on what identifies its content without reading it: path, size,
    mtime, inode, ctime and device (ctime changes whenever the content or the name does, even when a copy
    keeps the mtime), plus the geometry flags and its sidecar."""
    path = Path(path).absolute()  # not resolve(): a symlinked clip keeps the name it has in the ref dir
    try:
        st = path.stat()
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise BadInput(f"cannot read reference {path}: {exc.strerror}", hint="check the path and its permissions") from None
    if st.st_size == 0:
        raise BadInput(f"reference {path} is empty (0 bytes)", hint="re-copy it or remove it from the folder")
    ext = path.suffix.lower()
    fallback = {"width": width, "height": height, "pix_fmt": pix_fmt, "fps": fps}
    sidecar_stat = [(c.stat().st_mtime_ns, c.stat().st_ctime_ns, c.stat().st_size) for c in (path.with_suffix(".json"),)
                    if c.is_file()]
    key = repr((SOURCE_CACHE_VERSION, str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, st.st_dev,
                sorted((k, str(v)) for k, v in fallback.items()), sidecar_stat,
                ff.version if ext not in RAW_EXTS | Y4M_EXTS else ""))
    cache_file = cache_dir() / "sources" / f"{short_id(key, KEY_LEN)}.json"
    try:
        d = json.loads(cache_file.read_text())
        return Source(path=path, **{k: v for k, v in d.items() if k != "path"})
    except (OSError, ValueError, TypeError):
        pass
    if ext in RAW_EXTS:
        info = _raw_source(path, st.st_size, fallback)
    elif ext in Y4M_EXTS:
        info = _y4m_source(path, st.st_size)
    elif ext in CONTAINER_EXTS:
        info = _container_source(path, ff)
    else:
        raise BadInput(f"{path}: unknown reference type {ext!r}",
                       hint=f"use .yuv, .y4m or a container ({', '.join(sorted(CONTAINER_EXTS))})")
    source = Source(path=path, src=path.stem, src_sha256=sha256_file(path), **info)  # type: ignore[arg-type]
    try:
        d = asdict(source)
        d["path"] = str(path)
        write_json(cache_file, d)
    except OSError:
        pass
    return source


def discover(ref_dir: Path, *, ff: FFmpeg, width: int | None = None, height: int | None = None,
             pix_fmt: str | None = None, fps: float | str | None = None) -> list[Source]:
    """Every reference clip in `ref_dir` (not recursive), sorted by name, duplicates by content dropped."""
    ref_dir = Path(ref_dir)
    if not ref_dir.is_dir():
        raise BadInput(f"--ref-dir {ref_dir} is not a directory", hint="pass the folder holding your reference clips")
    known = RAW_EXTS | Y4M_EXTS | CONTAINER_EXTS
    entries = sorted(p for p in ref_dir.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file() and p.suffix.lower() in known]
    _check_left_out(ref_dir, [p for p in entries if p not in files], known)
    if not files:
        raise BadInput(f"--ref-dir {ref_dir} holds no reference clips",
                       hint="add .yuv (with geometry in the name or a sidecar), .y4m or video files such as .mp4")
    # With a refs.json (a reference pack), src_sha256 is the raw-frame sha256: .y4m/.yuv/.mkv of one clip are one source.
    rekey = raw_rekeyer(ref_dir)
    sources: list[Source] = []
    by_sha: dict[str, Source] = {}
    by_src: dict[str, Source] = {}
    for path in files:
        s = rekey(open_source(path, ff=ff, width=width, height=height, pix_fmt=pix_fmt, fps=fps))
        if s.src_sha256 in by_sha:
            warn(f"{path.name} has the same content as {by_sha[s.src_sha256].path.name}: using {by_sha[s.src_sha256].src} once")
            continue
        name = unicodedata.normalize("NFC", s.src)  # 'café' typed, or as macOS spells it ('cafe' + U+0301)
        if name in by_src:
            other = by_src[name]
            spelled = "" if other.src == s.src else (f" (spelled {ascii(other.src)} and {ascii(s.src)}: one letter "
                                                      "written two ways in Unicode)")
            raise BadInput(f"{other.path.name} and {path.name} have the same name {s.src!r}{spelled} but different content",
                           hint="rename one: the name is the source's identity in the corpus")
        by_sha[s.src_sha256] = by_src[name] = s
        sources.append(s)
    return sources


def _check_left_out(ref_dir: Path, left_out: list[Path], known: frozenset[str]) -> None:
    """What `discover` does not use is never dropped silently: a clip's symbolic link whose target is gone
    (an unmounted share) is bad input, and folders (not searched) and files that are not clips are named
    in one warning. Sidecars (.json) and the notes people keep beside clips (.txt, .md) are expected."""
    for p in left_out:
        if p.is_symlink() and not p.exists() and p.suffix.lower() in known:
            raise BadInput(f"--ref-dir {ref_dir}: {p.name} is a symbolic link to {p.readlink()}, which does not exist",
                           hint="mount or copy the clip it points to, or remove the link")
    ignored = [f"{p.name}/" if p.is_dir() else p.name for p in left_out
               if p.is_dir() or p.suffix.lower() not in {".json", ".txt", ".md"}]
    if ignored:
        shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
        warn(f"--ref-dir {ref_dir}: not used: {shown} (only .yuv, .y4m and video files such as .mp4 directly in "
             "the folder are read; folders are not searched)")


def raw_rekeyer(ref_dir: Path) -> Callable[[Source], Source]:
    """For `discover`: a function giving each Source its raw-frame sha256 (from refs.json) as `src_sha256`.

    WHY: with a refs.json present (a reference pack, docs/refs.md), a `.y4m`, a `.yuv` and a lossless
    `.mkv` of the same frames must be ONE source, so corpus rows from two boxes that used the same pack
    merge. Identity when there is no refs.json. Cheap (no decoding): a file is re-keyed only if its
    geometry matches its refs.json entry, and a `.yuv` (whose file hash IS its raw-frame hash) only if
    the hashes agree; otherwise it keeps its file hash, with a warning to run `refs verify`.
    """
    entries = refs_manifest.entries_by_file(ref_dir)
    if not entries:
        return lambda source: source

    def rekey(source: Source) -> Source:
        e = entries.get(source.path.name)
        if e is None:
            return source
        if (source.width, source.height, source.pix_fmt, source.n_frames) != (e.width, e.height, e.pix_fmt, e.n_frames) \
                or (source.kind == "yuv" and source.src_sha256 != e.raw_sha256):
            warn(f"{source.path.name} does not match its entry in {Path(ref_dir) / refs_manifest.REFS_JSON}: keyed by "
                 f"its file hash (run `ensemble-kit refs verify {Path(ref_dir)}`)")
            return source
        return replace(source, src_sha256=e.raw_sha256)

    return rekey


def duration_s(source: Source) -> float:
    return source.n_frames / source.fps if source.fps > 0 else math.nan
