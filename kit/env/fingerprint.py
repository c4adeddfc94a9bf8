"""The environment fingerprint: what must match for two runs to give byte-identical results.

Only things that are stable on one box between runs go in (never free memory, time, hostnames or
paths that differ per checkout); anything that changes the numbers (ffmpeg build, libvmaf, torch,
the lock the environment came from) does. `fingerprint_id` is the short hash every corpus row,
verdict and bundle carries.
"""

from __future__ import annotations

import platform as _stdlib_platform
import sys
from collections.abc import Callable
from functools import cache
from importlib import metadata
from typing import Any

from kit import __version__
from kit.core.errors import KitError
from kit.core.fsio import canonical_json
from kit.core.ids import FINGERPRINT_ID_LEN, object_id, shorten
from kit.core.schema import DEFAULT_VMAF_MODEL
from kit.corpus import ffmpeg as ffmpeg_tools
from kit.env import locks, platform

PACKAGES = ("torch", "numpy", "pandas", "pyarrow", "onnx", "onnxruntime", "click")
FINGERPRINT_VERSION = 1


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@cache
def os_name() -> str:
    """'Debian GNU/Linux 12 (bookworm)' / 'macOS 14.5': the distribution, not the hostname or kernel build."""
    if sys.platform == "darwin":
        return f"macOS {_stdlib_platform.mac_ver()[0] or 'unknown'}"
    try:
        release = _stdlib_platform.freedesktop_os_release()
        return release.get("PRETTY_NAME") or release.get("NAME", "Linux")
    except OSError:
        return _stdlib_platform.system() or "unknown"


def _ffmpeg_block(ffmpeg: Any | None) -> dict[str, Any] | None:
    if ffmpeg is None:
        return None
    return {"version": ffmpeg.version, "configure_sha256": ffmpeg.configure_sha256,
            "libvmaf_version": ffmpeg.libvmaf_version}


def _default_ffmpeg() -> Any | None:
    try:
        return ffmpeg_tools.find_ffmpeg(require_libvmaf=False)
    except KitError:
        return None


def fingerprint(ffmpeg: Any | None = None, *, vmaf_model: str = DEFAULT_VMAF_MODEL,
                host: Any | None = None, lock: dict[str, Any] | None = None,
                find_ffmpeg: Callable[[], Any | None] = _default_ffmpeg) -> dict[str, Any]:
    """The canonical description of this environment (see module doc for what is in and out).

    `ffmpeg` is a `kit.corpus.ffmpeg.FFmpeg` (found with `find_ffmpeg()` when None); `host` a
    `platform.HostPlatform`; `lock` the `locks.current_lock()` record. All injectable for tests.
    """
    host = host or platform.detect()
    ff = ffmpeg if ffmpeg is not None else find_ffmpeg()
    lock = lock if lock is not None else locks.current_lock().identity()
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "platform": host.tag,
        "os": os_name(),
        "arch": host.arch,
        "cpu_model": platform.cpu_model(),
        "gpus": sorted((g.identity() for g in host.gpus), key=canonical_json),
        "python": _stdlib_platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "ffmpeg": _ffmpeg_block(ff),
        "libvmaf_version": ff.libvmaf_version if ff is not None else None,
        "vmaf_model": vmaf_model,
        "kit_version": __version__,
        "lock": lock,
    }


def fingerprint_id(fp: dict[str, Any]) -> str:
    """Short sha256 of the canonical JSON: what rows and verdicts carry."""
    return object_id(fp, FINGERPRINT_ID_LEN)


def current(ffmpeg: Any | None = None) -> tuple[dict[str, Any], str]:
    """(fingerprint, its id) of this environment, for the LOSO results, sidecars and run.json.

    The trainer (kit.train) takes this from its caller instead of computing it, so training never
    imports the ffmpeg tooling the fingerprint describes.
    """
    fp = fingerprint(ffmpeg)
    return fp, fingerprint_id(fp)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": value}; lists as canonical JSON. For naming fingerprint differences."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, list):
        return {prefix: canonical_json(d, indent=None).strip()}
    return {prefix: d}


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, a's value, b's value) for every leaf where two fingerprints differ, sorted by key."""
    fa, fb = flatten(a), flatten(b)
    return [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def describe(fp: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows for `ensemble-kit env`'s table."""
    ff = fp.get("ffmpeg") or {}
    lock = fp.get("lock") or {}
    gpus = "; ".join(f"{g['name']} (driver {g['driver'] or '?'})" for g in fp.get("gpus", [])) or "none"
    pkgs = ", ".join(f"{k} {v or 'MISSING'}" for k, v in fp.get("packages", {}).items())
    lock_text = "none (not installed from a lock)" if lock.get("kind") == "none" else \
        f"{lock.get('kind')} {lock.get('name')} sha256 {shorten(str(lock.get('sha256')))}"
    return [
        ("fingerprint", fingerprint_id(fp)),
        ("platform", fp["platform"]),
        ("os", fp["os"]),
        ("cpu", fp["cpu_model"]),
        ("gpus", gpus),
        ("python", fp["python"]),
        ("packages", pkgs),
        ("ffmpeg", f"{ff.get('version')}, configure sha256 {shorten(str(ff.get('configure_sha256')))}"
         if ff else "not found"),
        ("libvmaf", f"{fp.get('libvmaf_version') or 'none'} · model {fp['vmaf_model']}"),
        ("kit", fp["kit_version"]),
        ("lock", lock_text),
    ]
