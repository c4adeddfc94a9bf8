"""`ensemble-kit refs verify`: reference clips against refs.json, decoding in memory only.

What is checked may be a reference directory, a pack directory, or a pack tarball (extracted to a
temporary folder under the untrusted-archive rules, removed afterwards). The refs.json may come from
the checked folder itself, a file, a pack directory, or a pack tarball (read from it, bounded).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kit.core import proc
from kit.core.archive import read_member, safe_extract
from kit.core.errors import BadInput, KitError
from kit.core.fsio import JSONProblem, parse_json
from kit.core.ids import shorten
from kit.corpus.ffmpeg import FFmpeg, find_ffmpeg
from kit.corpus.sources import Source, discover
from kit.refs.frames import default_jobs, is_tarball, pack_bound, raw_sha256, run_parallel, threads_per_job
from kit.refs.manifest import REFS_JSON, RefEntry, RefsManifest, manifest_from, read_manifest

MAX_REFS_JSON_BYTES = 16 << 20  # thousands of sources; a bigger refs.json is not one of ours

# ---- verify --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyRow:
    name: str
    file: str  # "" when missing
    status: str  # "ok" | "mismatch" | "missing" | "extra" | "error"
    detail: str = ""


@dataclass(frozen=True)
class VerifyReport:
    ref_dir: Path
    rows: tuple[VerifyRow, ...]

    @property
    def ok(self) -> bool:
        return all(r.status in ("ok", "extra") for r in self.rows)

    def problems(self) -> list[VerifyRow]:
        return [r for r in self.rows if r.status not in ("ok", "extra")]


def load_refs_json(where: str | os.PathLike[str]) -> RefsManifest:
    """refs.json from a file, a pack directory, or a pack tarball (read from it without extracting)."""
    where = Path(where)
    if where.is_file() and is_tarball(where):
        data = read_member(where, REFS_JSON, max_bytes=MAX_REFS_JSON_BYTES, max_total_bytes=pack_bound(where))
        label = where / REFS_JSON
        try:
            doc = parse_json(data)
        except JSONProblem as exc:
            raise BadInput(f"{label} is not valid JSON: {exc}", hint="ask the sender for a fresh pack") from None
        return manifest_from(doc, label)
    if where.is_dir() and not (where / REFS_JSON).is_file():
        raise BadInput(f"{where} has no {REFS_JSON}", hint="pass a refs.json, a pack directory or a pack .tar")
    return read_manifest(where)


def verify(ref_dir: str | os.PathLike[str], *, refs_json: str | os.PathLike[str] | None = None,
           jobs: int | None = None, ff: FFmpeg | None = None) -> VerifyReport:
    """Check every reference file in `ref_dir` (a folder, or a pack tarball) against refs.json (raw-frame
    sha256 + geometry), decoding in memory only. Every source in refs.json must be present under one of
    its known names. `refs_json` may be a file, a pack directory or a pack tarball."""
    ref_dir = Path(ref_dir)
    if not ref_dir.exists():
        raise BadInput(f"{ref_dir} does not exist", hint="pass a reference folder, a pack folder or a pack .tar")
    if ref_dir.is_file():
        if not is_tarball(ref_dir):
            raise BadInput(f"{ref_dir} is neither a folder nor a pack tarball (.tar/.tar.gz)",
                           hint="pass a reference folder, a pack folder or the pack .tar `refs pack` wrote")
        manifest = load_refs_json(refs_json or ref_dir)  # before extracting anything
        with proc.sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="ekit-refs-verify-") as tmp:
            safe_extract(ref_dir, tmp, max_total_bytes=pack_bound(ref_dir))
            report = _verify_dir(Path(tmp), manifest, jobs, ff)
        return VerifyReport(ref_dir=ref_dir, rows=report.rows)
    if refs_json is None and not (ref_dir / REFS_JSON).is_file():
        raise BadInput(f"{ref_dir} has no {REFS_JSON} to verify against",
                       hint="pass the pack's manifest with --refs-json PACK (a refs.json, pack folder or pack .tar)")
    return _verify_dir(ref_dir, load_refs_json(refs_json or ref_dir / REFS_JSON), jobs, ff)


def _verify_dir(ref_dir: Path, manifest: RefsManifest, jobs: int | None, ff: FFmpeg | None) -> VerifyReport:
    ff = ff or find_ffmpeg(require_libvmaf=False)
    jobs = jobs or default_jobs()
    found = discover(ref_dir, ff=ff)
    by_file = {name: e for e in manifest.sources for name in e.known_files()}
    by_name = manifest.by_name()
    pairs: list[tuple[Source, RefEntry]] = []
    rows: list[VerifyRow] = []
    for s in found:
        entry = by_file.get(s.path.name) or by_name.get(s.src)
        if entry is None:
            rows.append(VerifyRow(s.src, s.path.name, "extra", "not in refs.json"))
        else:
            pairs.append((s, entry))
    covered = {e.name for _, e in pairs}
    rows += [VerifyRow(e.name, "", "missing", f"expected one of {', '.join(e.known_files())}")
             for e in manifest.sources if e.name not in covered]

    def check(pair: tuple[Source, RefEntry]) -> VerifyRow:
        s, e = pair
        geometry = (s.width, s.height, s.pix_fmt, s.n_frames)
        if geometry != (e.width, e.height, e.pix_fmt, e.n_frames):
            return VerifyRow(e.name, s.path.name, "mismatch",
                             f"geometry {s.width}x{s.height} {s.pix_fmt} {s.n_frames} frames, refs.json says "
                             f"{e.width}x{e.height} {e.pix_fmt} {e.n_frames} frames")
        try:
            sha = raw_sha256(s, ff, threads=threads_per_job(jobs, len(pairs)), clean=s.path.name == e.packed_file)
        except KitError as exc:
            return VerifyRow(e.name, s.path.name, "error", exc.message)
        if sha != e.raw_sha256:
            return VerifyRow(e.name, s.path.name, "mismatch", f"raw-frame sha256 {shorten(sha)}… != {shorten(e.raw_sha256)}…")
        return VerifyRow(e.name, s.path.name, "ok")

    rows += [fut.result() for _, fut in run_parallel(pairs, check, jobs)]
    return VerifyReport(ref_dir=ref_dir, rows=tuple(sorted(rows, key=lambda r: (r.name, r.file))))
