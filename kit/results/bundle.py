"""The results bundle a collaborator mails back: its files, manifest, reproducible tarball and verification.

A bundle holds exactly one run's outputs (never files an earlier run left in the directory), hashed in
`manifest.json`, in a reproducible tarball: the same run always gives the same name and the same bytes,
so two people can compare a sha256 over the phone. A bundle from someone else is untrusted input:
it is only ever opened through `kit.core.archive.safe_extract` and checked against its manifest.
"""

from __future__ import annotations

import atexit
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kit import __version__
from kit.core.archive import safe_extract, write_reproducible_tar
from kit.core.errors import BadInput
from kit.core.fsio import (
    canonical_json,
    make_temp_dir,
    out_target,
    read_json,
    sha256_file,
    temp_dir,
    writable_dir,
    write_text,
)
from kit.core.ids import shorten
from kit.core.rundir import RunDir
from kit.env import platform as kit_platform
from kit.results.thresholds import VERDICTS

BUNDLE_SCHEMA = "ensemble-kit/results-bundle"
BUNDLE_SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
BUNDLE_PREFIX = "ensemble-results-"
BUNDLE_SUFFIX = ".tar.gz"
# A bundle is a corpus, a few small models and a report: far below this. The bound stops a hostile or
# broken tarball from filling the disk when it is opened.
DEFAULT_MAX_BUNDLE_BYTES = 8 << 30
# Inputs that look like a corpus file rather than a run directory or a bundle.
CORPUS_SUFFIXES = (".parquet", ".jsonl")


# ---- reading a run directory -----------------------------------------------------------------------


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def read_verdict(run_root: Path) -> dict[str, Any]:
    rd = RunDir(run_root)
    if not rd.verdict.is_file():
        raise BadInput(
            f"{run_root}: no verdict.json, so this is not a finished run",
            hint="run `ensemble-kit pipeline` (or train + verdict) in it first",
        )
    verdict = read_json(rd.verdict, what="verdict.json")
    if not isinstance(verdict, dict) or verdict.get("verdict") not in VERDICTS:
        raise BadInput(f"{rd.verdict}: not a verdict file (no PROMOTE/HOLD verdict)", hint="rerun `ensemble-kit verdict`")
    return verdict


def verdict_fingerprint(verdict: dict[str, Any]) -> dict[str, Any]:
    """The environment fingerprint a verdict carries (kit.results.gate.verdict_document's `fingerprint`)."""
    value = verdict.get("fingerprint")
    return value if isinstance(value, dict) else {}


def _read_json_if(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = read_json(path, what=path.name)
    return data if isinstance(data, dict) else {}


def _model_files(rd: RunDir, verdict: dict[str, Any]) -> list[Path]:
    """The models listed in ensemble.json, only if they were exported from this run's corpus.

    A models/ directory from an earlier PROMOTE must not ride along with a fresh HOLD: the ensemble's
    corpus hash has to match the verdict's, and every member's sha256 has to match its file.
    """
    if not rd.ensemble_json.is_file():
        return []
    ensemble = read_json(rd.ensemble_json, what="models/ensemble.json")
    verdict_corpus, ens_corpus = corpus_sha(verdict), corpus_sha(ensemble)
    if verdict_corpus and ens_corpus and ens_corpus != verdict_corpus:
        return []  # models from another corpus: not this run's
    files = rd.model_files(ensemble)
    for path in files[1:]:
        if not path.is_file():
            raise BadInput(f"{rd.ensemble_json} lists {path.name}, which is missing", hint="rerun `ensemble-kit export`")
    for member in _ensemble_members(ensemble):  # kit.results.export: {"onnx", "sha256", "sidecar", ...}
        want = member.get("sha256")
        if isinstance(member.get("onnx"), str) and want and sha256_file(rd.models_dir / member["onnx"]) != want:
            raise BadInput(f"{rd.models_dir / member['onnx']}: sha256 differs from ensemble.json",
                           hint="rerun `ensemble-kit export`")
    return files


def _ensemble_members(ensemble: dict[str, Any]) -> list[dict[str, Any]]:
    members = ensemble.get("members", [])
    return [m for m in members if isinstance(m, dict)] if isinstance(members, list) else []


def corpus_sha(doc: dict[str, Any]) -> str | None:
    """Corpus content sha256 of a verdict (`corpus.sha256`) or an ensemble.json (`corpus_sha256`)."""
    if isinstance(doc.get("corpus_sha256"), str):
        return doc["corpus_sha256"]
    corpus = doc.get("corpus")
    return corpus.get("sha256") if isinstance(corpus, dict) and isinstance(corpus.get("sha256"), str) else None


def run_files(run_root: Path) -> list[tuple[str, Path]]:
    """(relative path, file) for every output of this run, sorted; never a stale file.

    The run directory says which files those are (`RunDir`): run.json, verdict.json (+ the fork's
    loso/PROMOTE.json or HOLD.json), corpus.parquet;
    the LOSO files of the verdict's seeds; the models only when their corpus hash matches the
    verdict's; the report's files. When the pipeline recorded its step outputs, those are the
    authority and anything not recorded is left out.
    """
    root = Path(run_root)
    rd = RunDir(root)
    verdict = read_verdict(root)
    if not rd.corpus.is_file():
        raise BadInput(f"{root}: no corpus.parquet", hint="run `ensemble-kit corpus` (or the pipeline) in it first")
    seeds = [int(s) for s in verdict.get("seeds") or [] if isinstance(s, int) or str(s).isdigit()]
    candidates: list[Path] = [p for p in (rd.run_json, rd.corpus) if p.is_file()] + rd.verdict_files()
    candidates += rd.loso_files(seeds)
    candidates += _model_files(rd, verdict)
    candidates += rd.report_files()
    recorded = rd.recorded_outputs()
    if recorded is not None:
        allowed = {p.resolve() for p in recorded} | {rd.run_json.resolve(), rd.verdict.resolve(), rd.corpus.resolve()}
        candidates = [p for p in candidates if p.resolve() in allowed]
    out: dict[str, Path] = {}
    for p in candidates:
        if p.is_symlink():  # a bundle holds the run's own files, never what a link points at
            raise BadInput(f"{p} is a symbolic link (to {p.readlink()}), not a file this run wrote",
                           hint=f"replace it with the run's own file (e.g. rerun the step that writes {p.name})")
        rel = _rel(p.resolve(), root.resolve())
        if rel == MANIFEST_NAME:
            continue
        out[rel] = p
    return sorted(out.items())


# ---- naming --------------------------------------------------------------------------------------


def _utc_stamp(text: str | None) -> str | None:
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-") or "unknown"


def run_identity(run_root: Path, verdict: dict[str, Any] | None = None) -> dict[str, str]:
    """platform, box and utc stamp of a run, from its own records (so a re-bundle gives the same name)."""
    verdict = verdict if verdict is not None else read_verdict(run_root)
    run = _read_json_if(RunDir(run_root).run_json)
    fp = run.get("fingerprint") if isinstance(run.get("fingerprint"), dict) else verdict_fingerprint(verdict)
    host = fp.get("host") if isinstance(fp.get("host"), dict) else fp  # fingerprint v2 keeps the platform in host
    plat = run.get("platform") or host.get("platform") or kit_platform.detect().tag
    box = run.get("box_id") or host.get("box_id") or kit_platform.box_id()
    stamp = (
        _utc_stamp(run.get("started_at_utc"))
        or _utc_stamp(verdict.get("generated_at_utc"))
        or datetime.fromtimestamp(RunDir(run_root).verdict.stat().st_mtime, UTC).strftime("%Y%m%dT%H%M%SZ")
    )
    return {"platform": _slug(str(plat)), "box_id": _slug(str(box)), "utc": stamp}


def bundle_name(platform: str, box: str, utc: str) -> str:
    return f"{BUNDLE_PREFIX}{_slug(platform)}-{_slug(box)}-{utc}{BUNDLE_SUFFIX}"


# ---- making a bundle -----------------------------------------------------------------------------


def build_manifest(run_root: Path, files: list[tuple[str, Path]]) -> dict[str, Any]:
    verdict = read_verdict(run_root)
    ident = run_identity(run_root, verdict)
    run = _read_json_if(RunDir(run_root).run_json)
    fp = verdict_fingerprint(verdict) or (run.get("fingerprint") if isinstance(run.get("fingerprint"), dict) else {})
    gate = verdict.get("gate") if isinstance(verdict.get("gate"), dict) else {}
    return {
        "schema": BUNDLE_SCHEMA,
        "schema_version": BUNDLE_SCHEMA_VERSION,
        "kit_version": run.get("kit_version") or fp.get("kit_version") or __version__,  # v1 fingerprints had it
        "name": bundle_name(ident["platform"], ident["box_id"], ident["utc"]),
        "platform": ident["platform"],
        "box_id": ident["box_id"],
        "run_utc": ident["utc"],
        "verdict": {
            "verdict": verdict["verdict"],
            "generated_at_utc": verdict.get("generated_at_utc"),
            "mean_plcc": gate.get("mean_plcc"),
            "plcc_spread": gate.get("plcc_spread"),
            "seeds": verdict.get("seeds"),
            "recommendation": verdict.get("recommendation"),
        },
        "corpus_sha256": corpus_sha(verdict),
        "fingerprint": fp,
        "files": [{"path": rel, "size": p.stat().st_size, "sha256": sha256_file(p)} for rel, p in files],
    }


@dataclass(frozen=True)
class BundleResult:
    path: Path
    manifest: dict[str, Any]
    sha256: str


def make_bundle(run_root: Path, out: str | Path | None = None) -> BundleResult:
    """Write `ensemble-results-<platform>-<box>-<utc>.tar.gz` for this run (into the run dir by default)."""
    root = Path(run_root)
    if not root.is_dir():
        raise BadInput(f"run directory not found: {root}", hint="pass the --out-dir of a finished pipeline run")
    files = run_files(root)
    manifest = build_manifest(root, files)
    stem = manifest["name"][: -len(BUNDLE_SUFFIX)]
    target = out_target(out, manifest["name"]) if out is not None else root / manifest["name"]
    if target.exists() and not target.is_file():
        raise BadInput(f"--out {target} exists and is not a file", hint="name a new file or a folder")
    writable_dir(target.parent, "--out: the folder")
    with temp_dir("manifest") as tmp:
        manifest_path = Path(tmp) / MANIFEST_NAME
        write_text(manifest_path, canonical_json(manifest))
        members = [(f"{stem}/{rel}", p) for rel, p in files] + [(f"{stem}/{MANIFEST_NAME}", manifest_path)]
        write_reproducible_tar(sorted(members), target)
    return BundleResult(path=target, manifest=manifest, sha256=sha256_file(target))


# ---- opening and verifying a bundle (untrusted input) -------------------------------------------------


class TamperedBundle(BadInput):
    """A well-formed bundle whose content no longer matches its manifest (edited or corrupted after
    bundling). `verify` reports it as bad input; `compare` reports it as a reason for DIVERGED."""


def is_bundle(path: Path) -> bool:
    return Path(path).is_file() and Path(path).name.endswith((".tar.gz", ".tgz", ".tar"))


@dataclass(frozen=True)
class VerifyResult:
    bundle: Path
    sha256: str
    manifest: dict[str, Any]
    n_files: int
    total_bytes: int


def _load_manifest(root: Path, bundle: Path) -> dict[str, Any]:
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise BadInput(f"{bundle}: no {MANIFEST_NAME} inside, so it is not an ensemble-kit results bundle",
                       hint="ask the sender for the ensemble-results-*.tar.gz that `ensemble-kit bundle` wrote")
    manifest = read_json(path, what=f"{bundle.name}: {MANIFEST_NAME}")
    if not isinstance(manifest, dict) or manifest.get("schema") != BUNDLE_SCHEMA:
        raise BadInput(f"{bundle}: {MANIFEST_NAME} is not an ensemble-kit bundle manifest",
                       hint="ask the sender for the file `ensemble-kit bundle` wrote")
    version = manifest.get("schema_version")
    if version != BUNDLE_SCHEMA_VERSION:
        raise BadInput(
            f"{bundle}: bundle schema version {version!r}, this ensemble-kit {__version__} reads version "
            f"{BUNDLE_SCHEMA_VERSION}",
            hint="use the ensemble-kit release that wrote it (see kit_version in its manifest.json), or ask for a rebundle",
        )
    if not isinstance(manifest.get("files"), list):
        raise BadInput(f"{bundle}: {MANIFEST_NAME} has no file list", hint="ask the sender for a fresh bundle")
    summary = manifest.get("verdict")
    if not isinstance(summary, dict) or summary.get("verdict") not in VERDICTS:
        raise BadInput(f"{bundle}: {MANIFEST_NAME} has no verdict summary (its 'verdict' is "
                       f"{type(summary).__name__}, not an object naming PROMOTE or HOLD)",
                       hint="ask the sender for the file `ensemble-kit bundle` wrote")
    return manifest


def check_tree(root: Path, manifest: dict[str, Any], label: str) -> tuple[int, int]:
    """Every manifest entry present with its size and sha256, nothing unlisted, verdict consistent."""
    listed: set[str] = set()
    total = 0
    for entry in manifest["files"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise TamperedBundle(f"{label}: malformed entry in {MANIFEST_NAME}: {entry!r}", hint="ask the sender for a fresh bundle")
        rel = entry["path"]
        p = root / rel
        if not p.is_file():
            raise TamperedBundle(f"{label}: {rel} is listed in the manifest but missing", hint="ask the sender for a fresh bundle")
        size = p.stat().st_size
        if size != entry.get("size"):
            raise TamperedBundle(f"{label}: {rel} is {size} bytes, the manifest says {entry.get('size')}: it was changed after bundling",
                           hint="ask the sender for a fresh bundle")
        digest = sha256_file(p)
        if digest != entry.get("sha256"):
            raise TamperedBundle(f"{label}: {rel} sha256 {shorten(digest)}… differs from the manifest's {shorten(str(entry.get('sha256')))}…: "
                           "it was changed after bundling", hint="ask the sender for a fresh bundle")
        listed.add(rel)
        total += size
    present = {_rel(p, root) for p in root.rglob("*") if p.is_file()} - {MANIFEST_NAME}
    extra = sorted(present - listed)
    if extra:
        raise TamperedBundle(f"{label}: {extra[0]} is in the bundle but not in its manifest ({len(extra)} unlisted file(s))",
                       hint="the bundle was altered; ask the sender for a fresh bundle")
    rd = RunDir(root)  # a bundle holds a run directory's files under their run-directory paths
    for required in (rd.relative(rd.verdict), rd.relative(rd.corpus)):
        if required not in listed:
            raise TamperedBundle(f"{label}: the manifest lists no {required}", hint="ask the sender for a fresh bundle")
    verdict = read_json(rd.verdict, what=f"{label}: verdict.json")
    claimed = (manifest.get("verdict") or {}).get("verdict")
    if not isinstance(verdict, dict) or verdict.get("verdict") != claimed:
        raise TamperedBundle(f"{label}: manifest says {claimed}, verdict.json says {verdict.get('verdict') if isinstance(verdict, dict) else '?'}",
                       hint="the bundle was altered; ask the sender for a fresh bundle")
    return len(listed), total


@contextmanager
def opened_bundle(bundle: Path, *, max_total_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
                  dest: Path | None = None) -> Iterator[tuple[Path, VerifyResult]]:
    """Safely extract and verify a bundle; yield (run root inside it, result). Temp files are removed after."""
    bundle = Path(bundle)
    if not bundle.exists():
        raise BadInput(f"bundle not found: {bundle}", hint="check the path")
    if not bundle.is_file():
        raise BadInput(f"{bundle} is not a file", hint="pass an ensemble-results-*.tar.gz")
    if bundle.stat().st_size == 0:
        raise BadInput(f"{bundle} is empty (0 bytes)", hint="the transfer was cut short; ask the sender to send it again")
    own_tmp = dest is None
    if dest is not None:
        Path(dest).mkdir(parents=True, exist_ok=True)
    # Always a fresh, empty folder: whatever else sits in `dest` is never mistaken for bundle content.
    work = make_temp_dir("bundle", parent=dest)
    try:
        safe_extract(bundle, work, max_total_bytes=max_total_bytes)
        tops = [p for p in work.iterdir()]
        if len(tops) != 1 or not tops[0].is_dir():
            raise BadInput(f"{bundle}: expected one top-level folder inside, found {len(tops)} entries",
                           hint="ask the sender for the file `ensemble-kit bundle` wrote")
        root = tops[0]
        manifest = _load_manifest(root, bundle)
        n, total = check_tree(root, manifest, bundle.name)
        yield root, VerifyResult(bundle=bundle, sha256=sha256_file(bundle), manifest=manifest, n_files=n, total_bytes=total)
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)


def verify(bundle: Path, *, max_total_bytes: int = DEFAULT_MAX_BUNDLE_BYTES) -> VerifyResult:
    """Check a bundle: safe extraction, every sha256 and size, no unlisted files, schema version."""
    with opened_bundle(bundle, max_total_bytes=max_total_bytes) as (_root, result):
        return result


def _persistent_tmp() -> Path:
    path = make_temp_dir("bundle")
    atexit.register(shutil.rmtree, path, True)
    return path


def extract_bundle(bundle: Path, dest: Path | None = None, *,
                   max_total_bytes: int = DEFAULT_MAX_BUNDLE_BYTES) -> Path:
    """Verify and extract a bundle; return the run root inside `dest` (a temp dir removed at exit if None)."""
    target = Path(dest) if dest is not None else _persistent_tmp()
    with opened_bundle(bundle, max_total_bytes=max_total_bytes, dest=target) as (root, _):
        return root


def corpus_from(path: Path, dest: Path | None = None) -> Path:
    """The corpus file behind a corpus file, a run directory or a results bundle.

    `train --corpus` and `merge` call this so a collaborator's bundle can be retrained or merged
    directly; a bundle is verified and safely extracted first (to `dest`, or a temp dir removed at exit).
    """
    p = Path(path)
    if not p.exists():
        raise BadInput(f"corpus not found: {p}", hint="pass a corpus.parquet, a run directory or an ensemble-results-*.tar.gz")
    if p.is_dir():
        corpus = RunDir(p).corpus
        if not corpus.is_file():
            raise BadInput(f"{p}: no corpus.parquet in this run directory", hint="run `ensemble-kit corpus` in it first")
        return corpus
    if p.name.endswith(CORPUS_SUFFIXES):
        return p
    if is_bundle(p):
        return RunDir(extract_bundle(p, dest)).corpus
    raise BadInput(f"{p}: not a corpus (.parquet/.jsonl), run directory or results bundle (.tar.gz)",
                   hint="pass one of those")
