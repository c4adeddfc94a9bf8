"""The environment fingerprint. (Skeleton: the environments issue fills in GPUs, locks and drift.)"""

from __future__ import annotations

import hashlib
import platform as _stdlib_platform
import sys
from importlib import metadata
from typing import Any

from kit import __version__
from kit.fsio import canonical_json

PACKAGES = ("torch", "numpy", "pandas", "pyarrow", "onnx", "onnxruntime", "click")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def fingerprint(ffmpeg: Any | None = None) -> dict[str, Any]:
    from kit import platform

    host = platform.detect()
    return {
        "platform": host.tag,
        "os": _stdlib_platform.system(),
        "arch": host.arch,
        "python": sys.version.split()[0],
        "packages": {name: _version(name) for name in PACKAGES},
        "kit_version": __version__,
    }


def fingerprint_id(fp: dict[str, Any]) -> str:
    """Short sha256 of the canonical JSON: what rows and verdicts carry."""
    return hashlib.sha256(canonical_json(fp, indent=None).encode()).hexdigest()[:16]
