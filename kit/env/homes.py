"""Folders in the user's home that libraries the kit uses want to write, settled before they are imported.

matplotlib keeps its config and font cache in ~/.config/matplotlib and ~/.cache/matplotlib, onnxruntime a
telemetry device id in ~/.cache/Microsoft; with a read-only or missing home each prints its own warning
(matplotlib two lines, onnxruntime a coloured one) before the kit has said anything. `settle` runs first
in every command (kit.cli) and, only where the default is not writable:

  * MPLCONFIGDIR -> <the kit's cache>/matplotlib when that is writable (the font cache is then kept), else
    a temp folder `ekit-matplotlib-<host>-p<pid>-…` removed at exit (a SIGKILLed one by the next command);
  * ORT_DISABLE_TELEMETRY=1, so onnxruntime does not try to persist a device id at all.

A variable the user set is never changed. Neither changes a result (matplotlib draws the report with its
built-in defaults either way; telemetry is not part of inference).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from kit.core.fsio import make_temp_dir

MATPLOTLIB_ENV = "MPLCONFIGDIR"
ONNXRUNTIME_TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"


def can_write(path: Path) -> bool:
    """Whether this process can create files in `path`, or create `path` itself (tried, not guessed from
    mode bits: root ignores them, and a read-only mount or /sys refuses whatever the bits say). Nothing is
    left behind, and a missing `path` is not created."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            return False
        existing = existing.parent
    if not existing.is_dir():
        return False
    try:
        with tempfile.TemporaryDirectory(dir=existing, prefix=".ekit-probe-"):
            return True
    except OSError:
        return False


def _in_home(variable: str, *default: str) -> Path | None:
    """$variable, else ~/<default>; None when there is no home at all."""
    if value := os.environ.get(variable):
        return Path(value)
    try:
        return Path.home().joinpath(*default)
    except RuntimeError:  # no $HOME and a uid without a passwd entry
        return None


def _all_writable(paths: list[Path | None]) -> bool:
    return all(p is not None and can_write(p) for p in paths)


def settle(kit_cache: Path | None) -> dict[str, str]:
    """Point matplotlib and onnxruntime away from an unwritable home (see the module docstring); `kit_cache`
    is the kit's own cache folder (None when there is none). -> the variables it set."""
    chosen: dict[str, str] = {}
    if MATPLOTLIB_ENV not in os.environ:
        config, cache = _in_home("XDG_CONFIG_HOME", ".config"), _in_home("XDG_CACHE_HOME", ".cache")
        if not _all_writable([config and config / "matplotlib", cache and cache / "matplotlib"]):
            if kit_cache is not None and can_write(kit_cache / "matplotlib"):
                target = kit_cache / "matplotlib"
            else:
                target = make_temp_dir("matplotlib")
                atexit.register(shutil.rmtree, target, True)
            chosen[MATPLOTLIB_ENV] = str(target)
    if ONNXRUNTIME_TELEMETRY_ENV not in os.environ and not _all_writable([_in_home("XDG_CACHE_HOME", ".cache")]):
        chosen[ONNXRUNTIME_TELEMETRY_ENV] = "1"
    os.environ.update(chosen)
    return chosen
