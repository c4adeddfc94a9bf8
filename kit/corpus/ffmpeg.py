"""Finding ffmpeg binaries and probing what they can really do, including which encoders work here.

ffmpeg lists nvenc/qsv/vaapi encoders on boxes with no GPU, so an encoder counts as available only
after a real 3-frame test encode succeeds (`probe_encoder`), and a box's default encoders are those of
its family that pass one (`default_encoders`). Probes are cached (ffmpeg's on disk, keyed by the
binary's path+size+mtime; encoder probes per process) because a static ffmpeg takes ~0.1 s to start.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import imageio_ffmpeg

from kit.core import proc
from kit.core.errors import PrereqError
from kit.core.fsio import temp_dir, write_json
from kit.core.ids import KEY_LEN, sha256_hex, short_id
from kit.corpus import encoders as enc_table
from kit.env import platform

REPO_ROOT = Path(__file__).resolve().parents[2]
PROBE_TIMEOUT_S = 60
PROBE_CACHE_VERSION = 1
# Set by the intel-media pixi environment (pixi.toml): its lib/ (libva, libva-drm, iHD's deps, libmfx-gen),
# put first on LD_LIBRARY_PATH for ffmpeg children only (kit.core.proc.set_tool_library_path).
FFMPEG_LIBRARY_PATH_ENV = "EKIT_FFMPEG_LIBRARY_PATH"
# The static ffmpeg loads libva/libdrm through implib-gen stubs, which abort the process when the library
# is missing: "implib-gen: libva-drm.so.2: failed to load library 'libva-drm.so.2' via dlopen: ...".
_STUB_ABORT = re.compile(r"implib-gen: (\S+): failed to load library")


def explain_stderr(stderr: str) -> str:
    """One line of why ffmpeg failed, naming an unloadable runtime library (and its fix) when that was it."""
    m = _STUB_ABORT.search(stderr)
    if m:
        return (f"ffmpeg aborted: {m.group(1)} cannot be loaded (the VA-API runtime: use the intel-media pixi "
                "environment, which brings libva and iHD, or install libva2 and libva-drm2 on the host)")
    return proc.stderr_reason(stderr)


CACHE_ENV = "ENSEMBLE_KIT_CACHE"


def cache_dir() -> Path:
    """Where probe caches live: $ENSEMBLE_KIT_CACHE, else $XDG_CACHE_HOME/ensemble-kit, else ~/.cache.
    Probe caches are best effort (an unwritable cache only costs time); the demo clips need it writable."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # no $HOME and a uid without a passwd entry (a container's arbitrary user)
            raise PrereqError("no home directory to keep the ensemble-kit cache in",
                              hint=f"set {CACHE_ENV} (or XDG_CACHE_HOME) to a writable folder, e.g. {CACHE_ENV}=/tmp/ekit-cache") from None
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
        return sha256_hex("\n".join(self.configure))

    def identity(self) -> dict[str, str | None]:
        """What determines this binary's output: goes into every cell_id."""
        return {"ffmpeg_version": self.version, "configure_sha256": self.configure_sha256,
                "libvmaf_version": self.libvmaf_version}


def _run(argv: list[str], stage: str, cwd: Path | None = None) -> proc.Completed:
    return proc.run(argv, stage=stage, timeout=PROBE_TIMEOUT_S, cwd=cwd, check=False)


def _listing(path: Path, what: str) -> frozenset[str]:
    """Names from `ffmpeg -encoders` / `-filters` (lines after the legend)."""
    done = _run([str(path), "-hide_banner", f"-{what}"], f"ffmpeg -{what}")
    # " V....D libx264   libx264 H.264 ..." / " .. libvmaf   VV->V   Calculate ..."
    line_re = r"^ [VAS.][A-Z.]{5} (\S+)" if what == "encoders" else r"^ [A-Z.]{2,3} (\S+)\s+\S*->"
    return frozenset(re.findall(line_re, done.stdout, re.M))


def _libvmaf_version(path: Path) -> str:
    """libvmaf writes its version into the JSON log: score one tiny frame and read it."""
    with temp_dir("vmafprobe") as tmp:
        done = _run([str(path), "-nostdin", "-hide_banner", "-v", "error",
                     "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=1:duration=1",
                     "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=1:duration=1",
                     "-lavfi", "[0:v][1:v]libvmaf=log_fmt=json:log_path=probe.json", "-f", "null", "-"],
                    "libvmaf probe", cwd=Path(tmp))
        try:
            return str(json.loads((Path(tmp) / "probe.json").read_text())["version"])
        except (OSError, ValueError, KeyError):
            return "unknown" if done.ok else f"broken ({proc.stderr_reason(done.stderr)})"


def _probe_uncached(path: Path, origin: str) -> FFmpeg:
    try:
        done = _run([str(path), "-hide_banner", "-version"], "ffmpeg -version")
    except proc.ToolFailed as exc:
        raise PrereqError(f"ffmpeg at {path} does not run: {exc.reason}", hint="pass a working binary with --ffmpeg") from None
    m = re.search(r"ffmpeg version (\S+)", done.stdout)
    if not done.ok or not m:
        raise PrereqError(f"{path} is not a working ffmpeg (`-version` said: {proc.stderr_reason(done.stderr or done.stdout)})",
                          hint="pass a working binary with --ffmpeg")
    cm = re.search(r"^configuration: (.*)$", done.stdout, re.M)
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
    if library_dirs := os.environ.get(FFMPEG_LIBRARY_PATH_ENV):
        proc.set_tool_library_path(path, library_dirs)
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _probe_lock:
        if key in _probe_memo:
            return _probe_memo[key] if _probe_memo[key].origin == origin else _replace_origin(_probe_memo[key], origin)
    cache_file = cache_dir() / "ffmpeg-probes" / f"{short_id(repr((PROBE_CACHE_VERSION, *key)), KEY_LEN)}.json"
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
    d = {"path": str(ff.path), "version": ff.version, "configure": list(ff.configure),
         "encoders": sorted(ff.encoders), "filters": sorted(ff.filters), "libvmaf_version": ff.libvmaf_version}
    with contextlib.suppress(OSError):  # a read-only home only costs a re-probe next time
        write_json(cache_file, d)


def platform_bin(name: str) -> Path:
    return REPO_ROOT / "binaries" / platform.detect().tag / "bin" / name


def _imageio_ffmpeg() -> Path | None:
    try:
        return Path(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception:  # noqa: BLE001 - a missing binary: just not a candidate
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
    staged = platform_bin("ffmpeg")
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


def render_nodes() -> list[Path]:
    """DRM render nodes in order; QSV/VAAPI try each and keep the first whose driver works."""
    return sorted(Path("/dev/dri").glob("renderD*")) if Path("/dev/dri").is_dir() else []


# ---- which encoders really encode here -----------------------------------------------------------

@dataclass(frozen=True)
class EncoderProbe:
    encoder: str
    ok: bool
    reason: str  # "ok", or why not, in the tool's own words
    device: str | None  # render node (qsv/vaapi) that worked


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
    enc = enc_table.ENCODERS.get(encoder)
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
        pre, vf = enc_table.hw_setup(enc, device, ten_bit=False)
        argv = [str(ff.path), "-nostdin", "-hide_banner", "-v", "error", *pre,
                "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-frames:v", "3",
                *(["-vf", vf] if vf else []), *enc.argv((lo + hi) // 2), "-f", "null", "-"]
        try:
            done = _run(argv, f"test encode {encoder}")
        except proc.ToolFailed as exc:
            reasons.append(f"{device or encoder}: test encode hung for {PROBE_TIMEOUT_S}s" if exc.kind == "timeout"
                           else f"{device or encoder}: {exc.reason}")
            continue
        if done.ok:
            return EncoderProbe(encoder, True, "ok", device)
        reason = explain_stderr(done.stderr)
        reasons.append(f"{device}: {reason}" if device else reason)
    return EncoderProbe(encoder, False, "; ".join(reasons), None)


class ProbeResult(Protocol):
    encoder: str
    ok: bool
    reason: str


@dataclass(frozen=True)
class EncoderChoice:
    encoders: tuple[str, ...]  # what a run uses by default
    rejected: dict[str, str]  # encoder -> why it was not usable on this box
    warnings: tuple[str, ...]  # one line each, for the user


def explain_failure(host: platform.HostPlatform, encoder: str, reason: str) -> str:
    """One line: why `encoder` failed here, in words a video engineer can act on."""
    line = f"{encoder}: test encode failed ({reason})"
    if "nvenc" in encoder:
        names = [g.name for g in host.gpus if g.vendor == "nvidia"]
        no_nvenc = [n for n in names if enc_table.NO_NVENC_GPUS.search(n)]
        if no_nvenc:
            return (f"{encoder}: test encode failed: this GPU ({no_nvenc[0]}) has no NVENC encoder "
                    "(data-centre GPUs like A100/H100/H200 have none)")
        if not names:
            return f"{encoder}: test encode failed: no NVIDIA GPU visible to the driver (nvidia-smi lists none)"
        if encoder == "av1_nvenc":
            return f"{line}; {enc_table.NVENC_AV1_HINT}"
    if ("qsv" in encoder or "vaapi" in encoder) and not any(g.vendor == "intel" for g in host.gpus):
        return f"{encoder}: test encode failed: no Intel GPU render node ({reason})"
    if "videotoolbox" in encoder and host.family != "darwin":
        return f"{encoder}: only available on macOS"
    return line


def default_encoders(host: platform.HostPlatform | None = None, *, probe: Callable[[str], ProbeResult] | None = None,
                     ffmpeg: FFmpeg | None = None) -> EncoderChoice:
    """The family's encoders that pass a real test encode; libx264 (with a warning saying why) if none do.

    `probe(encoder)` defaults to `probe_encoder(ffmpeg, encoder)` on the bundled ffmpeg.
    """
    host = host or platform.detect()
    if probe is None:
        ff = ffmpeg or find_ffmpeg(require_libvmaf=False)

        def probe(name: str) -> ProbeResult:
            return probe_encoder(ff, name)

    family = enc_table.FAMILY_ENCODERS[host.family]
    fallback_name = enc_table.FALLBACK_ENCODER
    ok: list[str] = []
    rejected: dict[str, str] = {}
    warnings: list[str] = []
    for name in family:
        result = probe(name)
        if result.ok:
            ok.append(name)
        else:
            rejected[name] = explain_failure(host, name, result.reason)
            warnings.append(rejected[name])
    if ok:
        return EncoderChoice(tuple(ok), rejected, tuple(warnings))
    fallback = probe(fallback_name) if fallback_name not in rejected else None
    if fallback is not None and fallback.ok:
        warnings.append(f"none of {', '.join(family)} works on this {host.family} box; falling back to {fallback_name}")
        return EncoderChoice((fallback_name,), rejected, tuple(warnings))
    if fallback is not None:
        rejected[fallback_name] = explain_failure(host, fallback_name, fallback.reason)
        warnings.append(rejected[fallback_name])
    return EncoderChoice((), rejected, tuple(warnings))
