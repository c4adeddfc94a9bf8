"""Host family and architecture. (Skeleton: the environments issue adds GPU probes and default encoders.)"""

from __future__ import annotations

import hashlib
import platform as _stdlib_platform
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostPlatform:
    family: str  # linux-cuda | linux-sycl | linux-cpu | darwin
    arch: str  # x86_64 | arm64 | aarch64

    @property
    def tag(self) -> str:
        return f"{self.family}-{self.arch}"


def detect() -> HostPlatform:
    arch = _stdlib_platform.machine().lower() or "unknown"
    arch = {"amd64": "x86_64"}.get(arch, arch)
    family = "darwin" if sys.platform == "darwin" else "linux-cpu"
    return HostPlatform(family=family, arch=arch)


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
