"""The lock data that ships inside the package (`kit/locks/`), so every install knows its own lock.

- `<lock>.txt`: hash-pinned pip locks, one per platform and torch build (`LOCKS`), each installable in
  one step with `pip install --require-hashes --no-deps -r`; `pylock.<lock>.toml` is the same resolve
  in PEP 751's format (pip >= 26.1, uv). Made by `python environments/regenerate.py`.
- `ffmpeg.json`: per platform, the ffmpeg binary inside the locked imageio-ffmpeg wheel (its sha256,
  version, hardware encoders, NVENC driver floor). The kit checks the binary it runs against it at
  start-up (`check_ffmpeg`) and `prereqs` takes the NVENC driver floor from it.

Platforms are conda's names (linux-64, linux-aarch64, osx-arm64, osx-64): one vocabulary for pixi and pip.
"""

from __future__ import annotations

import json
import os
import platform as _stdlib_platform
import sys
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging import tags

from kit.core.fsio import sha256_file
from kit.env.platform import normalize_arch

LOCKS_DIR = Path(__file__).resolve().parents[1] / "locks"
FFMPEG_DATA = LOCKS_DIR / "ffmpeg.json"


@dataclass(frozen=True)
class PipLock:
    name: str  # file stem in kit/locks/
    platform: str  # conda platform name
    torch: str  # "cpu" | "cuda": which torch build the lock pins
    python_platforms: tuple[str, ...]  # pip --platform tags, newest first (dry runs, `dist --with-wheels`)
    torch_pin: str  # the exact torch the lock pins (+cpu builds come from PyTorch's CPU index)
    uv_platform: str  # uv's --python-platform for regenerating it (environments/regenerate.py)
    macos_target: str | None = None  # MACOSX_DEPLOYMENT_TARGET the wheels need
    extra_pins: tuple[str, ...] = ()  # constraints beyond pyproject.toml's (with the reason in LOCKS' comments)
    marker: str = ""  # PEP 508 environment marker for the platform (pylock's `environments`)

    @property
    def path(self) -> Path:
        return LOCKS_DIR / f"{self.name}.txt"

    @property
    def pylock(self) -> Path:
        return LOCKS_DIR / f"pylock.{self.name}.toml"


def _manylinux(arch: str, glibc_minor: int = 28) -> tuple[str, ...]:
    """Every tag a glibc-2.28 box accepts, newest first (PEP 600 and its legacy aliases)."""
    legacy = {"manylinux2014": 17, **({"manylinux2010": 12, "manylinux1": 5} if arch == "x86_64" else {})}
    return (*(f"manylinux_2_{minor}_{arch}" for minor in range(glibc_minor, 4, -1)),
            *(f"{alias}_{arch}" for alias, minor in legacy.items() if minor <= glibc_minor), f"linux_{arch}")


def _macos(arch: str, major: int) -> tuple[str, ...]:
    """Every tag macOS `major` on `arch` accepts, newest first (packaging's own rules)."""
    return tuple(tags.mac_platforms((major, 0), arch))


# Every pip lock, the box's default first per platform (the one `lock_for` picks without a hint).
TORCH = "2.13.0"
_LINUX_X86 = "sys_platform == 'linux' and platform_machine == 'x86_64'"
_LINUX_ARM = "sys_platform == 'linux' and platform_machine == 'aarch64'"
LOCKS: tuple[PipLock, ...] = (
    PipLock("linux-64-cpu", "linux-64", "cpu", _manylinux("x86_64"), f"{TORCH}+cpu", "x86_64-manylinux_2_28",
            marker=_LINUX_X86),
    # PyPI's Linux torch is the CUDA 13.0 build (nvidia-*-cu13 wheels): right for the NVIDIA box.
    PipLock("linux-64-cuda", "linux-64", "cuda", _manylinux("x86_64"), TORCH, "x86_64-manylinux_2_28",
            marker=_LINUX_X86),
    PipLock("linux-aarch64-cpu", "linux-aarch64", "cpu", _manylinux("aarch64"), f"{TORCH}+cpu", "aarch64-manylinux_2_28",
            marker=_LINUX_ARM),
    # PyPI's aarch64 torch is a CUDA build too (Grace Hopper, DGX Spark).
    PipLock("linux-aarch64-cuda", "linux-aarch64", "cuda", _manylinux("aarch64"), TORCH, "aarch64-manylinux_2_28",
            marker=_LINUX_ARM),
    # torch 2.13's Apple-silicon wheel is macosx_14_0: macOS 14 or newer.
    PipLock("osx-arm64", "osx-arm64", "cpu", _macos("arm64", 14), TORCH, "aarch64-apple-darwin", "14.0",
            marker="sys_platform == 'darwin' and platform_machine == 'arm64'"),
    # torch published no macOS x86_64 wheel after 2.2.2, which is built against numpy 1.x; onnxruntime's
    # last one is 1.23.2 and onnx 1.23.2's is macosx_13_0 (macOS 13+). Another torch than every other box:
    # its result_env differs by design. Intel Macs get torch 2.13 from conda-forge with pixi (-e osx).
    PipLock("osx-64", "osx-64", "cpu", _macos("x86_64", 13), "2.2.2", "x86_64-apple-darwin", "13.0",
            extra_pins=("numpy<2",), marker="sys_platform == 'darwin' and platform_machine == 'x86_64'"),
)
# The lock CI and developers install: `-r` the linux-64-cpu lock plus the test and lint tools.
DEV_LOCK = "linux-64-cpu-dev"


def conda_platform(system: str | None = None, machine: str | None = None) -> str:
    """conda's platform name for this box: linux-64, linux-aarch64, osx-arm64, osx-64."""
    system = system or sys.platform
    arch = normalize_arch(machine or _stdlib_platform.machine())
    if system == "darwin":
        return "osx-arm64" if arch in ("arm64", "aarch64") else "osx-64"
    if system == "win32":
        return "win-64"
    return {"x86_64": "linux-64", "aarch64": "linux-aarch64", "arm64": "linux-aarch64"}.get(arch, f"linux-{arch}")


def locks_for(platform: str | None = None) -> list[PipLock]:
    """The pip locks made for a platform (default: this box's), its default first."""
    platform = platform or conda_platform()
    return [lock for lock in LOCKS if lock.platform == platform]


def lock_named(name: str) -> PipLock | None:
    return next((lock for lock in LOCKS if lock.name == name), None)


# ---- the locked ffmpeg -----------------------------------------------------------------------


@dataclass(frozen=True)
class LockedFFmpeg:
    platform: str
    imageio_ffmpeg: str  # the imageio-ffmpeg release the locks pin
    binary: str  # path inside the wheel
    sha256: str
    version: str
    hw: tuple[str, ...]
    nvenc_min_driver: str | None  # "610.00": the driver NVENC in this binary needs (None: no NVENC)
    libsvtav1: bool


@cache
def ffmpeg_data() -> dict[str, Any]:
    """kit/locks/ffmpeg.json, parsed (it ships with the kit: unreadable means a broken install)."""
    return json.loads(FFMPEG_DATA.read_text(encoding="utf-8"))


def _locked(platform: str, entry: dict[str, Any]) -> LockedFFmpeg:
    return LockedFFmpeg(platform=platform, imageio_ffmpeg=ffmpeg_data()["imageio_ffmpeg"], binary=entry["binary"],
                        sha256=entry["binary_sha256"], version=entry["ffmpeg_version"], hw=tuple(entry["hw"]),
                        nvenc_min_driver=entry.get("nvenc_min_driver"), libsvtav1=bool(entry.get("libsvtav1")))


def locked_ffmpeg(platform: str | None = None) -> LockedFFmpeg | None:
    """The ffmpeg the locks give this platform (None where imageio-ffmpeg has no wheel)."""
    platform = platform or conda_platform()
    entry = ffmpeg_data()["platforms"].get(platform)
    return _locked(platform, entry) if entry else None


def ffmpeg_by_sha256(sha256: str) -> LockedFFmpeg | None:
    """Which locked build a binary is, by content (any platform), or None."""
    for platform, entry in ffmpeg_data()["platforms"].items():
        if entry["binary_sha256"] == sha256:
            return _locked(platform, entry)
    return None


_binary_digests: dict[tuple[str, int, int, int, int], str] = {}


def binary_sha256(path: Path) -> str:
    """sha256 of a binary, memoised per process on (path, inode, size, mtime, ctime): a 170 MB ffmpeg
    takes ~0.2 s, and a fingerprint is asked for per command, not per cell."""
    st = Path(path).stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _binary_digests:
        _binary_digests[key] = sha256_file(Path(path))
    return _binary_digests[key]


LOCKED, TAMPERED, UNLOCKED = "locked", "tampered", "unlocked"


@dataclass(frozen=True)
class FFmpegLockCheck:
    status: str  # LOCKED | TAMPERED | UNLOCKED
    sha256: str
    expected: str | None  # the locked binary's sha256 for this platform
    detail: str  # one line for warnings and the prereqs table


def _installed_imageio_ffmpeg() -> str | None:
    try:
        return metadata.version("imageio-ffmpeg")
    except metadata.PackageNotFoundError:
        return None


def check_ffmpeg(path: Path, origin: str, *, platform: str | None = None,
                 imageio_version: str | None = None) -> FFmpegLockCheck:
    """Is this the ffmpeg the lock pins? LOCKED by content; TAMPERED when it is the locked imageio-ffmpeg
    release's own binary but its bytes differ (a damaged or replaced install: refuse); UNLOCKED for any
    other ffmpeg (--ffmpeg, PATH, binaries/, another imageio-ffmpeg: allowed, with a warning, because its
    results carry another result_env)."""
    sha = binary_sha256(path)
    expected = locked_ffmpeg(platform)
    known = ffmpeg_by_sha256(sha)
    if known is not None:
        return FFmpegLockCheck(LOCKED, sha, expected.sha256 if expected else None,
                               f"the locked imageio-ffmpeg {known.imageio_ffmpeg} build for {known.platform} "
                               f"(ffmpeg {known.version}, sha256 {sha[:12]})")
    installed = imageio_version if imageio_version is not None else _installed_imageio_ffmpeg()
    if expected is not None and origin == "imageio" and installed == expected.imageio_ffmpeg:
        return FFmpegLockCheck(TAMPERED, sha, expected.sha256,
                               f"{path} is imageio-ffmpeg {installed}'s binary but its sha256 is {sha[:12]}, "
                               f"not the locked {expected.sha256[:12]}")
    where = {"imageio": f"imageio-ffmpeg {installed}"}.get(origin, origin)
    locked = f"imageio-ffmpeg {expected.imageio_ffmpeg} ({expected.sha256[:12]})" if expected else "none for this platform"
    return FFmpegLockCheck(UNLOCKED, sha, expected.sha256 if expected else None,
                           f"{path} (from {where}, sha256 {sha[:12]}) is not the locked ffmpeg [{locked}]: "
                           "its results carry another result_env")


def reinstall_hint() -> str:
    lock = next(iter(locks_for()), None)
    if os.environ.get("PIXI_ENVIRONMENT_NAME"):
        return "reinstall the environment: pixi install --locked (after `pixi clean`)"
    target = f"kit/locks/{lock.name}.txt" if lock else "the lock for this platform"
    return f"reinstall it from the lock: pip install --force-reinstall --require-hashes --no-deps -r {target}"
