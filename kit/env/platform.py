"""This box: host family, architecture, GPUs, CPU, cores and an anonymous box id.

The family says which hardware encoders to *try* (`kit.corpus.encoders.FAMILY_ENCODERS`); only a real
test encode (`kit.corpus.ffmpeg.default_encoders`) decides which ones a run uses, because ffmpeg lists
NVENC/QSV/VAAPI encoders on boxes that cannot run them. Everything that touches the machine goes
through `Probes`, so tests can stand in any family.
"""

from __future__ import annotations

import os
import platform as _stdlib_platform
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from kit.core import proc
from kit.core.errors import BadInput
from kit.core.ids import short_id

FAMILIES: tuple[str, ...] = ("linux-cuda", "linux-sycl", "linux-cpu", "darwin")
# The pixi environment (pixi.toml) made for each family; the distribution's `run` script picks by it.
PIXI_ENVS: dict[str, str] = {"linux-cuda": "cuda", "linux-sycl": "intel-media", "linux-cpu": "default", "darwin": "osx"}
# pixi environments built for a GPU vendor: running one without that GPU is a prerequisite failure.
PIXI_ENV_GPU: dict[str, str] = {"cuda": "nvidia", "intel-media": "intel"}

INTEL_PCI_VENDOR = "0x8086"


@dataclass(frozen=True)
class GPU:
    vendor: str  # "nvidia" | "intel" | "apple" | other
    name: str
    driver: str | None = None  # driver version (nvidia-smi) or kernel driver (i915/xe)
    memory_total_mib: int | None = None
    memory_free_mib: int | None = None  # varies run to run: never part of the fingerprint
    device: str | None = None  # render node for Intel

    def identity(self) -> dict[str, Any]:
        """What is stable about this GPU (for the environment fingerprint)."""
        return {"vendor": self.vendor, "name": self.name, "driver": self.driver,
                "memory_total_mib": self.memory_total_mib}


@dataclass(frozen=True)
class HostPlatform:
    family: str  # linux-cuda | linux-sycl | linux-cpu | darwin
    arch: str  # x86_64 | arm64 | aarch64
    gpus: tuple[GPU, ...] = field(default=(), compare=False)

    @property
    def tag(self) -> str:
        return f"{self.family}-{self.arch}"


@dataclass(frozen=True)
class Probes:
    """Everything detection asks the machine; tests replace any of these."""

    system: Callable[[], str] = lambda: sys.platform  # "linux" | "darwin"
    machine: Callable[[], str] = _stdlib_platform.machine
    nvidia_gpus: Callable[[], list[GPU]] = lambda: _nvidia_smi_gpus()
    intel_gpus: Callable[[], list[GPU]] = lambda: _intel_render_gpus()


def normalize_arch(machine: str) -> str:
    m = (machine or "unknown").lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "arm64", "aarch64": "aarch64"}.get(m, m)


def detect(probes: Probes | None = None) -> HostPlatform:
    """Family from what the box really has: an NVIDIA GPU the driver sees, an Intel render node, else CPU.

    `ENSEMBLE_KIT_FAMILY` forces a family (e.g. a box with both an NVIDIA and an Intel GPU).
    """
    if probes is None:
        return _detect_default(os.environ.get("ENSEMBLE_KIT_FAMILY", ""))
    return _detect(probes, os.environ.get("ENSEMBLE_KIT_FAMILY", ""))


@cache
def _detect_default(forced: str) -> HostPlatform:
    return _detect(Probes(), forced)


def _detect(probes: Probes, forced: str) -> HostPlatform:
    arch = normalize_arch(probes.machine())
    if probes.system() == "darwin":
        # Apple silicon reports arm64; Intel Macs x86_64. No discrete-GPU probing: VideoToolbox decides.
        return HostPlatform("darwin", arch, ())
    nvidia = tuple(probes.nvidia_gpus())
    intel = tuple(probes.intel_gpus())
    if forced:
        if forced not in FAMILIES or forced == "darwin":
            raise BadInput(f"ENSEMBLE_KIT_FAMILY={forced!r} is not a Linux family",
                           hint="use linux-cuda, linux-sycl or linux-cpu, or unset it")
        return HostPlatform(forced, arch, nvidia + intel)
    if nvidia:
        return HostPlatform("linux-cuda", arch, nvidia + intel)
    if intel:
        return HostPlatform("linux-sycl", arch, intel)
    return HostPlatform("linux-cpu", arch, ())


def box_id() -> str:
    """A stable anonymous id for this machine (never a person's name): hash of the machine id."""
    for candidate in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        p = Path(candidate)
        if p.is_file() and p.read_text().strip():
            seed = p.read_text().strip()
            break
    else:
        seed = _stdlib_platform.node()
    return short_id(f"ensemble-kit:{seed}")


# ---- machine probes ------------------------------------------------------------------------

NVIDIA_SMI_QUERY = "name,driver_version,memory.total,memory.free"


def parse_nvidia_smi(csv_text: str) -> list[GPU]:
    """Rows of `nvidia-smi --query-gpu=name,driver_version,memory.total,memory.free --format=csv,noheader,nounits`."""
    gpus = []
    for line in csv_text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[0]:
            continue
        gpus.append(GPU("nvidia", parts[0], parts[1] or None, _int_or_none(parts[2]), _int_or_none(parts[3])))
    return gpus


def _int_or_none(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


def _nvidia_smi_gpus() -> list[GPU]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        done = proc.run([exe, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"], stage="nvidia-smi",
                        timeout=20, check=False)
    except proc.ToolFailed:
        return []
    return parse_nvidia_smi(done.stdout) if done.ok else []


def _intel_render_gpus(drm: Path = Path("/sys/class/drm")) -> list[GPU]:
    """Intel GPUs with a render node (what QSV and VAAPI open), from sysfs."""
    gpus = []
    for node in sorted(drm.glob("renderD*")):
        dev = node / "device"
        try:
            vendor = (dev / "vendor").read_text().strip().lower()
        except OSError:
            continue
        if vendor != INTEL_PCI_VENDOR:
            continue
        try:
            pci_id = (dev / "device").read_text().strip().lower()
        except OSError:
            pci_id = "unknown"
        driver = Path(os.readlink(dev / "driver")).name if (dev / "driver").is_symlink() else None
        gpus.append(GPU("intel", f"Intel GPU {pci_id}", driver, device=f"/dev/dri/{node.name}"))
    return gpus


@cache
def cpu_model() -> str:
    """CPU model name (stable per box; part of the fingerprint)."""
    if sys.platform == "darwin":
        try:
            out = proc.run(["sysctl", "-n", "machdep.cpu.brand_string"], stage="sysctl", timeout=10,
                           check=False).stdout.strip()
            if out:
                return out
        except proc.ToolFailed:
            pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _stdlib_platform.processor() or "unknown"


@cache
def cpu_count() -> int:
    """Cores this process may use (respects affinity / cgroup-pinned CPU sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)
