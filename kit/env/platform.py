"""Host family, architecture, GPUs and the encoders this box can really run.

The family says which hardware encoders to *try*; only a real test encode (`kit.corpus.ffmpeg.probe_encoder`)
decides which ones a run uses, because ffmpeg lists NVENC/QSV/VAAPI encoders on boxes that cannot run
them. Everything that touches the machine goes through `Probes`, so tests can stand in any family.
"""

from __future__ import annotations

import hashlib
import os
import platform as _stdlib_platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

FAMILIES: tuple[str, ...] = ("linux-cuda", "linux-sycl", "linux-cpu", "darwin")

# Which encoders each family tries, in preference order. Software encoders are the fallback everywhere.
FAMILY_ENCODERS: dict[str, tuple[str, ...]] = {
    "linux-cuda": ("h264_nvenc", "hevc_nvenc", "av1_nvenc"),
    "linux-sycl": ("h264_qsv", "hevc_qsv", "av1_qsv", "h264_vaapi", "hevc_vaapi"),
    "linux-cpu": ("libx264", "libx265", "libsvtav1"),
    "darwin": ("h264_videotoolbox", "hevc_videotoolbox"),
}
FALLBACK_ENCODER = "libx264"

INTEL_PCI_VENDOR = "0x8086"
# NVIDIA data-centre GPUs built without NVENC (compute only): the probe fails there by design.
NO_NVENC_GPUS = re.compile(r"\b(A100|A800|A30|H100|H800|H200|GH200)\b", re.I)
# NVENC AV1 needs Ada Lovelace (RTX 40xx, L4, L40) or newer.
NVENC_AV1_HINT = "NVENC AV1 needs an Ada Lovelace or newer GPU (RTX 40xx, L4, L40)"


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

    @property
    def encoders(self) -> tuple[str, ...]:
        """The encoders this family tries (not yet probed)."""
        return FAMILY_ENCODERS[self.family]


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
    from kit.core.errors import BadInput

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
    return hashlib.sha256(f"ensemble-kit:{seed}".encode()).hexdigest()[:12]


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
        proc = subprocess.run([exe, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(proc.stdout) if proc.returncode == 0 else []


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
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 timeout=10, stdin=subprocess.DEVNULL).stdout.strip()
            if out:
                return out
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _stdlib_platform.processor() or "unknown"


# ---- default encoders from real probes -------------------------------------------------------


class ProbeResult(Protocol):
    encoder: str
    ok: bool
    reason: str


@dataclass(frozen=True)
class EncoderChoice:
    encoders: tuple[str, ...]  # what a run uses by default
    rejected: dict[str, str]  # encoder -> why it was not usable on this box
    warnings: tuple[str, ...]  # one line each, for the user


def explain_failure(host: HostPlatform, encoder: str, reason: str) -> str:
    """One line: why `encoder` failed here, in words a video engineer can act on."""
    line = f"{encoder}: test encode failed ({reason})"
    if "nvenc" in encoder:
        names = [g.name for g in host.gpus if g.vendor == "nvidia"]
        no_nvenc = [n for n in names if NO_NVENC_GPUS.search(n)]
        if no_nvenc:
            return (f"{encoder}: test encode failed: this GPU ({no_nvenc[0]}) has no NVENC encoder "
                    "(data-centre GPUs like A100/H100/H200 have none)")
        if not names:
            return f"{encoder}: test encode failed: no NVIDIA GPU visible to the driver (nvidia-smi lists none)"
        if encoder == "av1_nvenc":
            return f"{line}; {NVENC_AV1_HINT}"
    if ("qsv" in encoder or "vaapi" in encoder) and not any(g.vendor == "intel" for g in host.gpus):
        return f"{encoder}: test encode failed: no Intel GPU render node ({reason})"
    if "videotoolbox" in encoder and host.family != "darwin":
        return f"{encoder}: only available on macOS"
    return line


def default_encoders(host: HostPlatform | None = None, *, probe: Callable[[str], ProbeResult] | None = None,
                     ffmpeg: Any | None = None) -> EncoderChoice:
    """The family's encoders that pass a real test encode; libx264 (with a warning saying why) if none do.

    `probe(encoder)` defaults to `kit.corpus.ffmpeg.probe_encoder(ffmpeg, encoder)` on the bundled ffmpeg.
    """
    host = host or detect()
    if probe is None:
        from kit.corpus import ffmpeg as tools

        ff = ffmpeg or tools.find_ffmpeg(require_libvmaf=False)

        def probe(name: str) -> ProbeResult:
            return tools.probe_encoder(ff, name)

    ok: list[str] = []
    rejected: dict[str, str] = {}
    warnings: list[str] = []
    for name in host.encoders:
        result = probe(name)
        if result.ok:
            ok.append(name)
        else:
            rejected[name] = explain_failure(host, name, result.reason)
            warnings.append(rejected[name])
    if ok:
        return EncoderChoice(tuple(ok), rejected, tuple(warnings))
    fallback = probe(FALLBACK_ENCODER) if FALLBACK_ENCODER not in rejected else None
    if fallback is not None and fallback.ok:
        warnings.append(f"none of {', '.join(host.encoders)} works on this {host.family} box; "
                        f"falling back to {FALLBACK_ENCODER}")
        return EncoderChoice((FALLBACK_ENCODER,), rejected, tuple(warnings))
    if fallback is not None:
        rejected[FALLBACK_ENCODER] = explain_failure(host, FALLBACK_ENCODER, fallback.reason)
        warnings.append(rejected[FALLBACK_ENCODER])
    return EncoderChoice((), rejected, tuple(warnings))
