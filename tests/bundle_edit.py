"""Test helpers: take a real bundle apart, edit it as a hostile sender would, put it back together.

`edited(...)` keeps the bundle layout (manifest.json first); with `rehash=True` the manifest's file
list is recomputed, so only the re-derivation checks (kit.results.bundle_checks) can catch the edit.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable
from pathlib import Path

from kit.core.archive import write_reproducible_tar
from kit.core.fsio import sha256_file, write_json


def unpack(bundle: Path, work: Path) -> Path:
    """The bundle's top folder, extracted with tarfile's own data filter (the test trusts its own bundle)."""
    with tarfile.open(bundle) as tf:
        tf.extractall(work, filter="data")
    (top,) = list(work.iterdir())
    return top


def rehash(top: Path) -> None:
    """Recompute manifest.json's file list from what the folder now holds (what a forger would do)."""
    manifest = json.loads((top / "manifest.json").read_text())
    files = sorted(p for p in top.rglob("*") if p.is_file() and p != top / "manifest.json")
    manifest["files"] = [{"path": p.relative_to(top).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
                         for p in files]
    write_json(top / "manifest.json", manifest)


def repack(top: Path, out: Path) -> Path:
    """Pack the folder again the way `ensemble-kit bundle` does (manifest first, reproducible)."""
    members = [(f"{top.name}/{p.relative_to(top).as_posix()}", p) for p in sorted(top.rglob("*")) if p.is_file()]
    first = [f"{top.name}/manifest.json"] if (top / "manifest.json").is_file() else []
    write_reproducible_tar(members, out, first=first)
    return out


def edited(bundle: Path, out: Path, edit: Callable[[Path], None], *, rehash_manifest: bool = False) -> Path:
    """A copy of `bundle` at `out` after `edit(top folder)`; the manifest rehashed if asked."""
    work = out.parent / f"{out.name}.work"
    top = unpack(bundle, work)
    edit(top)
    if rehash_manifest:
        rehash(top)
    return repack(top, out)


def edit_json(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    """An edit that loads top/name as JSON, lets `change` alter it, and writes it back."""
    def edit(top: Path) -> None:
        doc = json.loads((top / name).read_text())
        change(doc)
        write_json(top / name, doc)

    return edit
