"""Finding ffmpeg / vmaf binaries and probing what they can really do.

ffmpeg lists nvenc/qsv/vaapi encoders on boxes with no GPU, so an encoder counts as available only
after a real 3-frame test encode succeeds. Probes are cached (ffmpeg's on disk, keyed by the binary's
path+size+mtime; encoder probes per process) because a static ffmpeg takes ~0.1 s to start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from kit.core.errors import PrereqError

REPO_ROOT = Path(__file__).resolve().parents[2]
PROBE_TIMEOUT_S = 60
PROBE_CACHE_VERSION = 1


def cache_dir() -> Path:
    """Where probe caches live: $ENSEMBLE_KIT_CACHE, else $XDG_CACHE_HOME/ensemble-kit, else ~/.cache."""
    if env := os.environ.get("ENSEMBLE_KIT_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ensemble-kit"


@dataclass(frozen=True)
class FFmpeg:
    path: Path
    version: str  # e.g. "n9.0.2-17-g2a571b6068-20260930"
    configure: tuple[str, ...]  # configure flags
    encoders: frozenset[str]
    filters: frozenset[str]
    libvmaf_version: str | None  # None when the build has no libvmaf filter
    origin: str  # "flag" | "env" | "binaries" | "path" | "imageio"

    @property
    def has_libvmaf(self) -> bool:
        return "libvmaf" in self.filters

    @property
    def configure_sha256(self) -> str:
        return hashlib.sha256("\n".join(self.configure).encode()).hexdigest()

    def identity(self) -> dict[str, str | None]:
        """What determines this binary's output: goes into every cell_id."""
        return {"ffmpeg_version": self.version, "configure_sha256": self.configure_sha256,
                "libvmaf_version": self.libvmaf_version}


def _run(argv: list[str], timeout: float = PROBE_TIMEOUT_S, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=cwd)


def _listing(path: Path, what: str) -> frozenset[str]:
    """Names from `ffmpeg -encoders` / `-filters` (lines after the legend)."""
    proc = _run([str(path), "-hide_banner", f"-{what}"])
    # " V....D libx264   libx264 H.264 ..." / " .. libvmaf   VV->V   Calculate ..."
    line_re = r"^ [VAS.][A-Z.]{5} (\S+)" if what == "encoders" else r"^ [A-Z.]{2,3} (\S+)\s+\S*->"
    return frozenset(re.findall(line_re, proc.stdout, re.M))


def _libvmaf_version(path: Path) -> str:
    """libvmaf writes its version into the JSON log: score one tiny frame and read it."""
    with tempfile.TemporaryDirectory(prefix="ekit-vmafprobe-") as tmp:
        proc = _run([str(path), "-nostdin", "-hide_banner", "-v", "error",
                     "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=1:duration=1",
                     "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=1:duration=1",
                     "-lavfi", "[0:v][1:v]libvmaf=log_fmt=json:log_path=probe.json", "-f", "null", "-"], cwd=Path(tmp))
        try:
            return str(json.loads((Path(tmp) / "probe.json").read_text())["version"])
        except (OSError, ValueError, KeyError):
            return "unknown" if proc.returncode == 0 else f"broken ({_stderr_reason(proc.stderr)})"


def _probe_uncached(path: Path, origin: str) -> FFmpeg:
    try:
        proc = _run([str(path), "-hide_banner", "-version"])
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PrereqError(f"ffmpeg at {path} does not run: {exc}", hint="pass a working binary with --ffmpeg") from None
    m = re.search(r"ffmpeg version (\S+)", proc.stdout)
    if proc.returncode != 0 or not m:
        raise PrereqError(f"{path} is not a working ffmpeg (`-version` said: {_stderr_reason(proc.stderr or proc.stdout)})",
                          hint="pass a working binary with --ffmpeg")
    cm = re.search(r"^configuration: (.*)$", proc.stdout, re.M)
    configure = tuple(cm.group(1).split()) if cm else ()
    filters = _listing(path, "filters")
    return FFmpeg(path=path, version=m.group(1), configure=configure, encoders=_listing(path, "encoders"),
                  filters=filters, libvmaf_version=_libvmaf_version(path) if "libvmaf" in filters else None,
                  origin=origin)


_probe_lock = threading.Lock()
_probe_memo: dict[tuple[str, int, int], FFmpeg] = {}


def probe_ffmpeg(path: Path, *, origin: str = "flag") -> FFmpeg:
    """Probe a binary once; the result is cached on disk keyed by its path+size+mtime."""
    path = Path(path).resolve()
    try:
        st = path.stat()
    except OSError:
        raise PrereqError(f"ffmpeg not found: {path}", hint="check the --ffmpeg / ENSEMBLE_KIT_FFMPEG path") from None
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _probe_lock:
        if key in _probe_memo:
            return _probe_memo[key] if _probe_memo[key].origin == origin else _replace_origin(_probe_memo[key], origin)
    digest = hashlib.sha256(repr((PROBE_CACHE_VERSION, *key)).encode()).hexdigest()[:24]
    cache_file = cache_dir() / "ffmpeg-probes" / f"{digest}.json"
    ff = _load_probe(cache_file, origin)
    if ff is None:
        ff = _probe_uncached(path, origin)
        _save_probe(cache_file, ff)
    with _probe_lock:
        _probe_memo[key] = ff
    return ff


def _replace_origin(ff: FFmpeg, origin: str) -> FFmpeg:
    d = asdict(ff)
    d["origin"] = origin
    return FFmpeg(**d)


def _load_probe(cache_file: Path, origin: str) -> FFmpeg | None:
    try:
        d = json.loads(cache_file.read_text())
        return FFmpeg(path=Path(d["path"]), version=d["version"], configure=tuple(d["configure"]),
                      encoders=frozenset(d["encoders"]), filters=frozenset(d["filters"]),
                      libvmaf_version=d["libvmaf_version"], origin=origin)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_probe(cache_file: Path, ff: FFmpeg) -> None:
    from kit.core.fsio import write_json

    d = {"path": str(ff.path), "version": ff.version, "configure": list(ff.configure),
         "encoders": sorted(ff.encoders), "filters": sorted(ff.filters), "libvmaf_version": ff.libvmaf_version}
    with contextlib.suppress(OSError):  # a read-only home only costs a re-probe next time
        write_json(cache_file, d)


def _platform_bin(name: str) -> Path:
    from kit.env import platform

    return REPO_ROOT / "binaries" / platform.detect().tag / "bin" / name


def _imageio_ffmpeg() -> Path | None:
    try:
        import imageio_ffmpeg

        return Path(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception:  # noqa: BLE001 - missing package or binary: just not a candidate
        return None


def find_ffmpeg(explicit: str | None = None, *, require_libvmaf: bool = True) -> FFmpeg:
    """--ffmpeg / $ENSEMBLE_KIT_FFMPEG, then binaries/<platform>/bin/ffmpeg, then PATH (with libvmaf), then imageio-ffmpeg's."""
    def check(ff: FFmpeg, how: str) -> FFmpeg:
        if require_libvmaf and not ff.has_libvmaf:
            raise PrereqError(f"ffmpeg from {how} ({ff.path}) has no libvmaf filter",
                              hint="use an ffmpeg built with --enable-libvmaf, or drop the flag to use the bundled one")
        return ff

    if explicit:
        return check(probe_ffmpeg(Path(explicit), origin="flag"), "--ffmpeg")
    if env := os.environ.get("ENSEMBLE_KIT_FFMPEG"):
        return check(probe_ffmpeg(Path(env), origin="env"), "ENSEMBLE_KIT_FFMPEG")
    staged = _platform_bin("ffmpeg")
    if staged.is_file():
        return check(probe_ffmpeg(staged, origin="binaries"), str(staged.parent))
    on_path = shutil.which("ffmpeg")
    if on_path:
        try:
            ff = probe_ffmpeg(Path(on_path), origin="path")
            if ff.has_libvmaf or not require_libvmaf:
                return ff
        except PrereqError:
            pass
    bundled = _imageio_ffmpeg()
    if bundled is not None and bundled.is_file():
        return check(probe_ffmpeg(bundled, origin="imageio"), "imageio-ffmpeg")
    raise PrereqError("no ffmpeg with libvmaf found (checked --ffmpeg, ENSEMBLE_KIT_FFMPEG, binaries/, PATH, imageio-ffmpeg)",
                      hint="pip install imageio-ffmpeg, or pass --ffmpeg /path/to/ffmpeg")


def find_vmaf_cli() -> Path | None:
    """A `vmaf` CLI staged in binaries/<platform>/bin/ (or $ENSEMBLE_KIT_VMAF): an alternative scorer."""
    for cand in (os.environ.get("ENSEMBLE_KIT_VMAF"), _platform_bin("vmaf")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return Path(cand).resolve()
    return None


def render_nodes() -> list[Path]:
    """DRM render nodes in order; QSV/VAAPI try each and keep the first whose driver works."""
    return sorted(Path("/dev/dri").glob("renderD*")) if Path("/dev/dri").is_dir() else []


@dataclass(frozen=True)
class EncoderProbe:
    encoder: str
    ok: bool
    reason: str  # "ok", or why not, in the tool's own words
    device: str | None  # render node (qsv/vaapi) that worked


_NOISE = re.compile(r"Task finished|Terminating thread|Nothing was written|Error sending frames|Conversion failed|"
                    r"Could not open encoder before EOF|Error while filtering|^\s*$")


def _stderr_reason(stderr: str) -> str:
    """The most telling stderr line: the first that is not ffmpeg's generic follow-up noise."""
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", ln).strip() for ln in stderr.splitlines()]
    useful = [ln for ln in lines if ln and not _NOISE.search(ln)]
    return (useful or [ln for ln in lines if ln] or ["no error message"])[0][:300]


_encoder_memo: dict[tuple[str, str], EncoderProbe] = {}


def probe_encoder(ff: FFmpeg, encoder: str) -> EncoderProbe:
    """A real 3-frame test encode; for qsv/vaapi the first render node that works. Cached per process."""
    key = (str(ff.path), encoder)
    with _probe_lock:
        if key in _encoder_memo:
            return _encoder_memo[key]
    result = _probe_encoder_uncached(ff, encoder)
    with _probe_lock:
        _encoder_memo[key] = result
    return result


def _probe_encoder_uncached(ff: FFmpeg, encoder: str) -> EncoderProbe:
    from kit.corpus import encoders

    enc = encoders.ENCODERS.get(encoder)
    if enc is None:
        return EncoderProbe(encoder, False, "not in ensemble-kit's encoder table", None)
    if encoder not in ff.encoders:
        return EncoderProbe(encoder, False, f"this ffmpeg ({ff.path.name}) has no {encoder} encoder", None)
    devices: list[str | None] = [None]
    if enc.hw in ("qsv", "vaapi"):
        devices = [str(p) for p in render_nodes()]
        if not devices:
            return EncoderProbe(encoder, False, "no /dev/dri render node (no Intel/AMD GPU driver visible)", None)
    lo, hi = enc.cq_range
    reasons = []
    for device in devices:
        pre, vf = encoders.hw_setup(enc, device, ten_bit=False)
        argv = [str(ff.path), "-nostdin", "-hide_banner", "-v", "error", *pre,
                "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-frames:v", "3",
                *(["-vf", vf] if vf else []), *enc.argv((lo + hi) // 2), "-f", "null", "-"]
        try:
            proc = _run(argv, timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            reasons.append(f"{device or encoder}: test encode hung for {PROBE_TIMEOUT_S}s")
            continue
        if proc.returncode == 0:
            return EncoderProbe(encoder, True, "ok", device)
        reason = _stderr_reason(proc.stderr)
        reasons.append(f"{device}: {reason}" if device else reason)
    return EncoderProbe(encoder, False, "; ".join(reasons), None)


@cache
def cpu_count() -> int:
    """Cores this process may use (respects affinity / cgroup-pinned CPU sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
