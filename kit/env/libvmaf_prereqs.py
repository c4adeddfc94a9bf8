"""What building a libvmaf tree needs, checked before anything runs, each named with the line that installs it.

The list follows the tree (its meson_options.txt and project languages) and the backend, because the
failures it prevents are silent or late ones (measured on the lusoris fork and Netflix's tree):
- without nasm the default setup (enable_asm=true, x86) fails, and asm off costs 5.6x the CPU;
- without xxd the build *succeeds* with no built-in models, and `vmaf --model version=vmaf_v0.6.1`
  fails later with "no such built-in model";
- CUDA: meson only checks that `ffnvcodec/dynlink_cuda.h` exists; Debian's libffmpeg-nvenc-dev (and
  every tagged nv-codec-headers release) passes that check and then fails the compile, because the
  fork needs code.ffmpeg.org master at or after 876af32a (cuMemHostAlloc, cuStreamWaitEvent). nvcc
  gets `--std c++20`, which needs CUDA >= 12;
- SYCL: icx/icpx from Intel oneAPI and the Level Zero loader (cc.find_library('ze_loader')).
"""

from __future__ import annotations

import os
import platform as _stdlib_platform
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from kit.core import proc
from kit.core.errors import PrereqError

NV_CODEC_HEADERS = ("git clone https://code.ffmpeg.org/FFmpeg/nv-codec-headers && "
                    "sudo make -C nv-codec-headers install (commit 876af32a or later)")
NV_CODEC_SYMBOLS = ("cuMemHostAlloc", "cuStreamWaitEvent")  # what the fork uses and older headers lack
CUDA_TOOLKIT = ("CUDA toolkit >= 12 (NVIDIA's apt repository: apt-get install cuda-toolkit-13-0), "
                "then export PATH=/usr/local/cuda/bin:$PATH")
ONEAPI = "Intel oneAPI Base Toolkit 2025.3, then source /opt/intel/oneapi/setvars.sh"
MIN_CUDA = Version("12")
SYSTEM_INCLUDE_DIRS = ("/usr/local/include", "/usr/include")
SYSTEM_LIB_DIRS = ("/usr/local/lib", "/usr/lib", "/usr/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu")


@dataclass(frozen=True)
class Missing:
    what: str  # "nasm 2.14 or later"
    why: str  # "x86 SIMD (enable_asm, libvmaf's default)"
    apt: str = ""  # Debian/Ubuntu package(s)
    brew: str = ""  # Homebrew formula(e)
    other: str = ""  # an install line that is not a package manager's


@dataclass(frozen=True)
class Project:
    """The facts about a libvmaf tree that decide what its build needs."""

    root: Path  # the meson project (the folder with meson.build)
    options: frozenset[str]  # the project options its meson_options.txt declares
    languages: frozenset[str]  # project('libvmaf', ['c', 'cpp'])


def read_project(root: Path) -> Project:
    options: set[str] = set()
    for name in ("meson_options.txt", "meson.options"):
        if (root / name).is_file():
            options |= set(re.findall(r"option\(\s*'([^']+)'", (root / name).read_text(errors="replace")))
    head = (root / "meson.build").read_text(errors="replace")
    m = re.search(r"project\(\s*'[^']*'\s*,\s*(\[[^\]]*\]|'[^']*')", head)
    languages = set(re.findall(r"'([a-z+]+)'", m.group(1))) if m else {"c"}
    return Project(root, frozenset(options), frozenset(languages))


def option_value(meson_args: Sequence[str], name: str) -> str | None:
    """The last `-Dname=value` among the meson arguments (later ones win, as in meson)."""
    value = None
    for arg in meson_args:
        if arg.startswith(f"-D{name}="):
            value = arg.split("=", 1)[1]
    return value


def _enabled(project: Project, meson_args: Sequence[str], name: str) -> bool:
    """A boolean project option is on: declared and not turned off (these default to true in libvmaf)."""
    return name in project.options and option_value(meson_args, name) not in ("false", "disabled")


def _version(exe: str, flag: str) -> Version | None:
    try:
        done = proc.run([exe, flag], stage=f"{Path(exe).name} {flag}", timeout=30, check=False)
    except proc.ToolFailed:
        return None
    m = re.search(r"(?:version|release)\s+v?(\d+(?:\.\d+)+)", done.stdout + done.stderr, re.I)
    try:
        return Version(m.group(1)) if m else None
    except InvalidVersion:
        return None


def _compiler(env_var: str, names: tuple[str, ...]) -> str | None:
    chosen = os.environ.get(env_var, "").split()
    return shutil.which(chosen[0]) if chosen else next((p for n in names if (p := shutil.which(n))), None)


def _dirs_from(env_vars: tuple[str, ...]) -> list[Path]:
    return [Path(d) for v in env_vars for d in os.environ.get(v, "").split(os.pathsep) if d]


def include_dirs(meson_args: Sequence[str]) -> list[Path]:
    """Where the compiler will look for headers: -I in c_args, CPATH/C_INCLUDE_PATH, pkg-config's, the system's."""
    flags = " ".join(option_value(meson_args, k) or "" for k in ("c_args", "cpp_args"))
    dirs = [Path(d) for d in re.findall(r"-I\s*'?([^\s',\]]+)", flags)]
    dirs += _dirs_from(("CPATH", "C_INCLUDE_PATH"))
    if pkg_config := shutil.which("pkg-config"):
        done = proc.run([pkg_config, "--variable=includedir", "ffnvcodec"], stage="pkg-config", timeout=30, check=False)
        dirs += [Path(done.stdout.strip())] if done.ok and done.stdout.strip() else []
    return dirs + [Path(d) for d in SYSTEM_INCLUDE_DIRS]


def _nv_codec_headers(meson_args: Sequence[str]) -> Missing | None:
    for d in include_dirs(meson_args):
        loader = d / "ffnvcodec" / "dynlink_loader.h"
        if loader.is_file():
            text = loader.read_text(errors="replace")
            lacking = [s for s in NV_CODEC_SYMBOLS if s not in text]
            if not lacking:
                return None
            return Missing(f"nv-codec-headers newer than the ones in {d} (they lack {', '.join(lacking)})",
                           "CUDA: the fork's CUDA code needs nv-codec-headers master at or after 876af32a",
                           other=NV_CODEC_HEADERS)
    return Missing("nv-codec-headers (ffnvcodec/dynlink_loader.h)", "CUDA: libvmaf loads the driver through them",
                   other=NV_CODEC_HEADERS)


def _level_zero() -> bool:
    dirs = _dirs_from(("LIBRARY_PATH", "LD_LIBRARY_PATH")) + [Path(d) for d in SYSTEM_LIB_DIRS]
    return any(next(d.glob("libze_loader.so*"), None) for d in dirs if d.is_dir())


def meson_command() -> list[str]:
    """meson on PATH, else the one installed in this interpreter (pip install meson)."""
    exe = shutil.which("meson")
    if exe:
        return [exe]
    try:
        import mesonbuild  # noqa: F401 - optional (pip install meson): only probed when meson is not on PATH
    except ImportError:
        raise PrereqError("meson is not installed", hint="pip install meson ninja") from None
    return [sys.executable, "-m", "mesonbuild.mesonmain"]


def ninja_env() -> dict[str, str]:
    """Environment in which meson finds ninja (PATH, else the pip `ninja` package's binary)."""
    env = dict(os.environ)
    if shutil.which("ninja") or shutil.which("samu"):
        return env
    try:
        import ninja  # optional (pip install ninja): only when ninja is not on PATH

        env["NINJA"] = str(Path(ninja.BIN_DIR) / "ninja")
        return env
    except (ImportError, AttributeError):
        raise PrereqError("ninja is not installed", hint="pip install ninja (or apt-get install ninja-build)") from None


def _meson_and_ninja() -> list[Missing]:
    missing = []
    for find, what in ((meson_command, "meson"), (ninja_env, "ninja")):
        try:
            find()
        except PrereqError:
            missing.append(Missing(what, "configures and runs the build", other="pip install meson ninja"))
    return missing


def missing(project: Project, backend: str, meson_args: Sequence[str]) -> list[Missing]:
    """Everything the build of `project` with `backend` needs and this box lacks (empty: ready)."""
    found: list[Missing] = _meson_and_ninja()
    if backend == "sycl":  # libvmaf/README.md builds SYCL with CC=icx CXX=icpx
        if not shutil.which("icx"):
            found.append(Missing("icx", "the C compiler of libvmaf's SYCL build (CC=icx)", other=ONEAPI))
    elif not _compiler("CC", ("cc", "gcc", "clang")):
        found.append(Missing("a C compiler (cc)", "libvmaf is C", apt="build-essential", brew="llvm"))
    if "cpp" in project.languages and not _compiler("CXX", ("c++", "g++", "clang++")):
        found.append(Missing("a C++ compiler (c++)", "libvmaf's SVM code is C++", apt="build-essential", brew="llvm"))
    x86 = _stdlib_platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")
    if x86 and _enabled(project, meson_args, "enable_asm"):
        need = Version("2.14") if _enabled(project, meson_args, "enable_avx512") else Version("2.13.02")
        nasm = shutil.which("nasm")
        have = _version(nasm, "-v") if nasm else None
        if have is None or have < need:
            found.append(Missing(f"nasm {need} or later" + (f" (found {have})" if have else ""),
                                 "x86 SIMD (enable_asm, libvmaf's default; -Denable_asm=false costs 5.6x the CPU)",
                                 apt="nasm", brew="nasm"))
    if _enabled(project, meson_args, "built_in_models") and not shutil.which("xxd"):
        found.append(Missing("xxd", "built-in models (without it the build silently has none)",
                             apt="xxd", brew="vim"))
    if backend == "cuda":
        nvcc = shutil.which("nvcc")
        cuda = _version(nvcc, "--version") if nvcc else None
        if cuda is None or cuda < MIN_CUDA:
            found.append(Missing(f"nvcc from CUDA {MIN_CUDA} or later" + (f" (found {cuda})" if cuda else ""),
                                 "CUDA kernels (nvcc --std c++20)", other=CUDA_TOOLKIT))
        if not shutil.which("bin2c"):
            found.append(Missing("bin2c", "CUDA: embeds the kernels (ships with the CUDA toolkit)", other=CUDA_TOOLKIT))
        if problem := _nv_codec_headers(meson_args):
            found.append(problem)
    if backend == "sycl":
        if not shutil.which("icpx"):
            found.append(Missing("icpx", "SYCL kernels (Intel oneAPI DPC++)", other=ONEAPI))
        if not _level_zero():
            found.append(Missing("the Level Zero loader (libze_loader)", "SYCL on Intel GPUs", apt="libze-dev"))
    return found


def install_lines(items: Sequence[Missing], *, darwin: bool | None = None) -> list[str]:
    """One install line per package manager, then the other lines, each once."""
    darwin = sys.platform == "darwin" if darwin is None else darwin
    packages = sorted({m.brew if darwin else m.apt for m in items} - {""})
    manager = "brew install" if darwin else "apt-get install"
    lines = [f"{manager} {' '.join(packages)}"] if packages else []
    return lines + list(dict.fromkeys(m.other for m in items if m.other))


def require(project: Project, backend: str, meson_args: Sequence[str]) -> None:
    """PrereqError naming every missing piece (and why it is needed) with the lines that install them."""
    items = missing(project, backend, meson_args)
    if items:
        raise PrereqError(f"build-libvmaf --backend {backend} needs what this box lacks: "
                          + "; ".join(f"{m.what} for {m.why}" for m in items),
                          hint="; ".join(install_lines(items)))
