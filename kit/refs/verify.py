"""`ensemble-kit refs verify`: a reference directory against refs.json, decoding in memory only."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kit.core.errors import BadInput, KitError
from kit.core.ids import shorten
from kit.corpus.ffmpeg import FFmpeg, find_ffmpeg
from kit.corpus.sources import Source, discover
from kit.refs.frames import default_jobs, raw_sha256, run_parallel, threads_per_job
from kit.refs.manifest import REFS_JSON, RefEntry, read_manifest

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


def verify(ref_dir: str | os.PathLike[str], *, refs_json: str | os.PathLike[str] | None = None,
           jobs: int | None = None, ff: FFmpeg | None = None) -> VerifyReport:
    """Check every reference file in `ref_dir` against refs.json (raw-frame sha256 + geometry), decoding
    in memory only. Every source in refs.json must be present under one of its known names."""
    ref_dir = Path(ref_dir)
    if refs_json is None and not (ref_dir / REFS_JSON).is_file():
        raise BadInput(f"{ref_dir} has no {REFS_JSON} to verify against",
                       hint="pass the pack's manifest with --refs-json PACK/refs.json")
    manifest = read_manifest(Path(refs_json) if refs_json else ref_dir / REFS_JSON)
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
            sha = raw_sha256(s, ff, threads=threads_per_job(jobs, len(pairs)))
        except KitError as exc:
            return VerifyRow(e.name, s.path.name, "error", exc.message)
        if sha != e.raw_sha256:
            return VerifyRow(e.name, s.path.name, "mismatch", f"raw-frame sha256 {shorten(sha)}… != {shorten(e.raw_sha256)}…")
        return VerifyRow(e.name, s.path.name, "ok")

    rows += [fut.result() for _, fut in run_parallel(pairs, check, jobs)]
    return VerifyReport(ref_dir=ref_dir, rows=tuple(sorted(rows, key=lambda r: (r.name, r.file))))
