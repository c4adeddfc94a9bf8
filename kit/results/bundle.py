"""The results bundle a collaborator mails back, its manifest, verification, and run-vs-run comparison.

A bundle holds exactly one run's outputs (never files an earlier run left in the directory), hashed in
`manifest.json`, in a reproducible tarball: the same run always gives the same name and the same bytes,
so two people can compare a sha256 over the phone. A bundle from someone else is untrusted input:
it is only ever opened through `kit.core.archive.safe_extract` and checked against its manifest.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from kit import __version__
from kit.core.errors import BadInput
from kit.core.fsio import canonical_json, read_json, sha256_file, write_text
from kit.core.rundir import RunDir

BUNDLE_SCHEMA = "ensemble-kit/results-bundle"
BUNDLE_SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
BUNDLE_PREFIX = "ensemble-results-"
BUNDLE_SUFFIX = ".tar.gz"
# A bundle is a corpus, a few small models and a report: far below this. The bound stops a hostile or
# broken tarball from filling the disk when it is opened.
DEFAULT_MAX_BUNDLE_BYTES = 8 << 30
# Where the pipeline records which files each step wrote (kit.pipeline writes these markers).
STEP_MARKERS = Path(".pipeline") / "steps"
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
    if not isinstance(verdict, dict) or verdict.get("verdict") not in ("PROMOTE", "HOLD"):
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


class _RefCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.refs.append(value)


def report_files(report_dir: Path) -> list[Path]:
    """index.html and the local files it links to: what the report step wrote for this run."""
    index = report_dir / "index.html"
    if not index.is_file():
        return []
    parser = _RefCollector()
    parser.feed(index.read_text(encoding="utf-8", errors="replace"))
    files = [index]
    root = report_dir.resolve()
    for ref in parser.refs:
        if re.match(r"^[a-z][a-z0-9+.-]*:", ref, re.I) or ref.startswith(("#", "/")):
            continue  # external link, anchor or absolute path: not a file of this report
        target = (report_dir / ref.split("#")[0].split("?")[0]).resolve()
        if target.is_file() and target.is_relative_to(root) and target not in files:
            files.append(target)
    return files


def _model_files(rd: RunDir, verdict: dict[str, Any]) -> list[Path]:
    """The models listed in ensemble.json, only if they were exported from this run's corpus.

    A models/ directory from an earlier PROMOTE must not ride along with a fresh HOLD: the ensemble's
    corpus hash has to match the verdict's, and every member's sha256 has to match its file.
    """
    ensemble_path = rd.models_dir / "ensemble.json"
    if not ensemble_path.is_file():
        return []
    ensemble = read_json(ensemble_path, what="models/ensemble.json")
    corpus_sha = _corpus_sha(verdict)
    ens_corpus = _find_corpus_sha(ensemble)
    if corpus_sha and ens_corpus and ens_corpus != corpus_sha:
        return []  # models from another corpus: not this run's
    files = [ensemble_path]
    for member in _ensemble_members(ensemble):  # kit.export: {"onnx", "sha256", "sidecar", ...}
        for key in ("onnx", "sidecar"):
            name = member.get(key)
            if not isinstance(name, str):
                continue
            path = rd.models_dir / name
            if not path.is_file():
                raise BadInput(f"{ensemble_path} lists {name}, which is missing", hint="rerun `ensemble-kit export`")
            files.append(path)
        want = member.get("sha256")
        if isinstance(member.get("onnx"), str) and want and sha256_file(rd.models_dir / member["onnx"]) != want:
            raise BadInput(f"{rd.models_dir / member['onnx']}: sha256 differs from ensemble.json",
                           hint="rerun `ensemble-kit export`")
    return files


def _ensemble_members(ensemble: dict[str, Any]) -> list[dict[str, Any]]:
    members = ensemble.get("members", [])
    return [m for m in members if isinstance(m, dict)] if isinstance(members, list) else []


def _find_corpus_sha(doc: dict[str, Any]) -> str | None:
    """Corpus content sha256 of a verdict (`corpus.sha256`) or an ensemble.json (`corpus_sha256`)."""
    if isinstance(doc.get("corpus_sha256"), str):
        return doc["corpus_sha256"]
    corpus = doc.get("corpus")
    return corpus.get("sha256") if isinstance(corpus, dict) and isinstance(corpus.get("sha256"), str) else None


def _corpus_sha(verdict: dict[str, Any]) -> str | None:
    return _find_corpus_sha(verdict)


def _step_outputs(root: Path) -> list[Path] | None:
    """Files the pipeline's step markers say this run wrote; None when the run had no pipeline."""
    marker_dir = root / STEP_MARKERS
    if not marker_dir.is_dir():
        return None
    outputs: list[Path] = []
    for marker in sorted(marker_dir.glob("*.json")):
        data = _read_json_if(marker)
        if data.get("step") == "bundle":
            continue  # the previous tarball is not an input of the next one
        for rel, digest in (data.get("outputs") or {}).items():
            p = root / rel
            if not p.is_file():
                continue
            if sha256_file(p) != digest:
                raise BadInput(f"{p} changed after the pipeline's {data.get('step')} step wrote it",
                               hint="rerun `ensemble-kit pipeline` with the same options: it redoes what changed")
            outputs.append(p)
    return outputs or None


def _loso_files(rd: RunDir, verdict: dict[str, Any]) -> list[Path]:
    """LOSO outputs of this run: the seeds the verdict names, never a seed left over from an old run."""
    if not rd.loso_dir.is_dir():
        return []
    seeds = {str(s) for s in verdict.get("seeds", [])}
    files = []
    for p in sorted(rd.loso_dir.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        m = re.search(r"seed[_-]?(\d+)", _rel(p, rd.loso_dir))
        if m and seeds and m.group(1) not in seeds:
            continue
        files.append(p)
    return files


def run_files(run_root: Path) -> list[tuple[str, Path]]:
    """(relative path, file) for every output of this run, sorted; never a stale file.

    Known single files are taken by name; models only when their corpus hash matches the verdict;
    the report as index.html plus what it links; LOSO outputs limited to the verdict's seeds. When the
    pipeline recorded its step outputs, those are the authority and anything not recorded is left out.
    """
    root = Path(run_root)
    rd = RunDir(root)
    verdict = read_verdict(root)
    if not rd.corpus.is_file():
        raise BadInput(f"{root}: no corpus.parquet", hint="run `ensemble-kit corpus` (or the pipeline) in it first")
    candidates: list[Path] = [p for p in (rd.run_json, rd.verdict, rd.corpus) if p.is_file()]
    candidates += _loso_files(rd, verdict)
    candidates += _model_files(rd, verdict)
    candidates += report_files(rd.report_dir)
    recorded = _step_outputs(root)
    if recorded is not None:
        allowed = {p.resolve() for p in recorded} | {rd.run_json.resolve(), rd.verdict.resolve(), rd.corpus.resolve()}
        candidates = [p for p in candidates if p.resolve() in allowed]
    out: dict[str, Path] = {}
    for p in candidates:
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
    from kit.env import platform as kit_platform

    verdict = verdict if verdict is not None else read_verdict(run_root)
    run = _read_json_if(RunDir(run_root).run_json)
    fp = run.get("fingerprint") if isinstance(run.get("fingerprint"), dict) else verdict_fingerprint(verdict)
    plat = run.get("platform") or fp.get("platform") or kit_platform.detect().tag
    box = run.get("box_id") or fp.get("box_id") or kit_platform.box_id()
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
        "kit_version": run.get("kit_version") or fp.get("kit_version") or __version__,
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
        "corpus_sha256": _corpus_sha(verdict),
        "fingerprint": fp,
        "files": [{"path": rel, "size": p.stat().st_size, "sha256": sha256_file(p)} for rel, p in files],
    }


@dataclass(frozen=True)
class BundleResult:
    path: Path
    manifest: dict[str, Any]
    sha256: str


def make_bundle(run_root: Path, out: Path | None = None) -> BundleResult:
    """Write `ensemble-results-<platform>-<box>-<utc>.tar.gz` for this run (into the run dir by default)."""
    from kit.core.archive import write_reproducible_tar

    root = Path(run_root)
    if not root.is_dir():
        raise BadInput(f"run directory not found: {root}", hint="pass the --out-dir of a finished pipeline run")
    files = run_files(root)
    manifest = build_manifest(root, files)
    stem = manifest["name"][: -len(BUNDLE_SUFFIX)]
    target = Path(out) if out is not None else root / manifest["name"]
    if target.is_dir():
        target = target / manifest["name"]
    with tempfile.TemporaryDirectory(prefix="ekit-manifest-") as tmp:
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
            raise TamperedBundle(f"{label}: {rel} sha256 {digest[:12]}… differs from the manifest's {str(entry.get('sha256'))[:12]}…: "
                           "it was changed after bundling", hint="ask the sender for a fresh bundle")
        listed.add(rel)
        total += size
    present = {_rel(p, root) for p in root.rglob("*") if p.is_file()} - {MANIFEST_NAME}
    extra = sorted(present - listed)
    if extra:
        raise TamperedBundle(f"{label}: {extra[0]} is in the bundle but not in its manifest ({len(extra)} unlisted file(s))",
                       hint="the bundle was altered; ask the sender for a fresh bundle")
    for required in ("verdict.json", "corpus.parquet"):
        if required not in listed:
            raise TamperedBundle(f"{label}: the manifest lists no {required}", hint="ask the sender for a fresh bundle")
    verdict = read_json(root / "verdict.json", what=f"{label}: verdict.json")
    claimed = (manifest.get("verdict") or {}).get("verdict")
    if not isinstance(verdict, dict) or verdict.get("verdict") != claimed:
        raise TamperedBundle(f"{label}: manifest says {claimed}, verdict.json says {verdict.get('verdict') if isinstance(verdict, dict) else '?'}",
                       hint="the bundle was altered; ask the sender for a fresh bundle")
    return len(listed), total


@contextmanager
def opened_bundle(bundle: Path, *, max_total_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
                  dest: Path | None = None) -> Iterator[tuple[Path, VerifyResult]]:
    """Safely extract and verify a bundle; yield (run root inside it, result). Temp files are removed after."""
    from kit.core.archive import safe_extract

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
    work = Path(tempfile.mkdtemp(prefix="ekit-bundle-", dir=dest))
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
    path = Path(tempfile.mkdtemp(prefix="ekit-bundle-"))
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


# ---- comparing two runs ----------------------------------------------------------------------------


def _per_fold(verdict: dict[str, Any]) -> dict[tuple[str, str], float]:
    """(seed, held-out source sha256) -> frame-level PLCC, from the verdict's `folds` table."""
    out: dict[tuple[str, str], float] = {}
    for row in verdict.get("folds") or []:
        if not isinstance(row, dict) or row.get("seed") is None or row.get("fold_src_sha256") is None:
            continue
        plcc = row.get("plcc")
        out[(str(row["seed"]), str(row["fold_src_sha256"]))] = float(plcc) if isinstance(plcc, int | float) else math.nan
    return out


def _per_seed(verdict: dict[str, Any]) -> dict[str, float]:
    """seed -> mean PLCC over its folds, from the verdict's `gate.per_seed_plccs` (None = undefined)."""
    gate = verdict.get("gate") if isinstance(verdict.get("gate"), dict) else {}
    values = gate.get("per_seed_plccs")
    if not isinstance(values, dict):
        return {}
    return {str(k): float(v) if isinstance(v, int | float) else math.nan for k, v in values.items()}


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": value}; lists as canonical JSON. For naming fingerprint differences."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, list):
        return {prefix: canonical_json(d, indent=None).strip()}
    return {prefix: d}


def _corpus_sources(run_root: Path) -> dict[str, dict[str, Any]]:
    """src_sha256 -> {src, encoders} of a run's corpus (the columns only, cheap)."""
    corpus = RunDir(run_root).corpus
    if not corpus.is_file():
        return {}
    import pandas as pd

    try:
        df = pd.read_parquet(corpus, columns=["src", "src_sha256", "encoder"])
    except Exception as exc:  # a corrupt file from someone else: name it
        raise BadInput(f"{corpus}: unreadable corpus: {type(exc).__name__}: {exc}", hint="ask for a fresh bundle") from None
    out: dict[str, dict[str, Any]] = {}
    for sha, group in df.groupby("src_sha256", sort=True):
        out[str(sha)] = {"src": str(group["src"].iloc[0]), "encoders": sorted(map(str, group["encoder"].unique()))}
    return out


def _delta(a: float, b: float) -> float:
    if math.isnan(a) and math.isnan(b):
        return 0.0
    return abs(a - b)


@dataclass
class Comparison:
    lead: str
    collab: str
    plcc_tol: float
    lead_verdict: str
    collab_verdict: str
    reasons: list[str] = field(default_factory=list)  # why DIVERGED; empty = REPRODUCED
    notes: list[str] = field(default_factory=list)  # differences that are not, on their own, a divergence
    per_seed: list[dict[str, Any]] = field(default_factory=list)
    per_fold: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    fingerprint_diffs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reproduced(self) -> bool:
        return not self.reasons

    @property
    def outcome(self) -> str:
        return "REPRODUCED" if self.reproduced else "DIVERGED"

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome, "lead": self.lead, "collab": self.collab, "plcc_tol": self.plcc_tol,
            "lead_verdict": self.lead_verdict, "collab_verdict": self.collab_verdict,
            "reasons": self.reasons, "notes": self.notes, "per_seed": self.per_seed, "per_fold": self.per_fold,
            "sources": self.sources, "fingerprint_diffs": self.fingerprint_diffs,
        }


@contextmanager
def opened_run(path: Path) -> Iterator[Path]:
    """A run root for a run directory (as is) or a bundle (verified, extracted to a temp dir)."""
    p = Path(path)
    if p.is_dir():
        read_verdict(p)
        yield p
    elif is_bundle(p) or (p.is_file() and not p.name.endswith(CORPUS_SUFFIXES)):
        with opened_bundle(p) as (root, _):
            yield root
    elif not p.exists():
        raise BadInput(f"not found: {p}", hint="pass a results bundle (.tar.gz) or a run directory")
    else:
        raise BadInput(f"{p}: not a results bundle or run directory", hint="pass an ensemble-results-*.tar.gz or a pipeline --out-dir")


def compare(lead: Path, collab: Path, *, plcc_tol: float = 0.0) -> Comparison:
    """Does the collaborator's run reproduce the lead's? Reasons for DIVERGED come first in the result.

    Default tolerance 0 is exact equality: what the lock promises for the same corpus in the same
    environment. Runs on different hardware (different encoders, different corpus) need `plcc_tol`.
    """
    if plcc_tol < 0 or math.isnan(plcc_tol):
        raise BadInput(f"--plcc-tol {plcc_tol}: must be >= 0", hint="e.g. --plcc-tol 0.005")
    with contextlib.ExitStack() as stack:
        roots: dict[str, Path] = {}
        for side, path in (("lead", lead), ("collaborator", collab)):
            try:
                roots[side] = stack.enter_context(opened_run(path))
            except TamperedBundle as exc:  # a bundle changed after bundling cannot confirm anything
                shown = {"lead": "not checked", "collaborator": "not checked", side: "tampered"}
                if "lead" in roots:
                    shown["lead"] = str(read_verdict(roots["lead"]).get("verdict"))
                cmp = Comparison(lead=str(lead), collab=str(collab), plcc_tol=plcc_tol,
                                 lead_verdict=shown["lead"], collab_verdict=shown["collaborator"])
                cmp.reasons.append(f"the {side}'s bundle fails verification: {exc}")
                return cmp
        return _compare(lead, collab, plcc_tol, roots["lead"], roots["collaborator"])


def _compare(lead: Path, collab: Path, plcc_tol: float, lead_root: Path, collab_root: Path) -> Comparison:
    lv, cv = read_verdict(lead_root), read_verdict(collab_root)
    cmp = Comparison(lead=str(lead), collab=str(collab), plcc_tol=plcc_tol,
                     lead_verdict=lv["verdict"], collab_verdict=cv["verdict"])
    if lv["verdict"] != cv["verdict"]:
        cmp.reasons.append(f"verdicts differ: lead {lv['verdict']}, collaborator {cv['verdict']}")

    ls, cs = _per_seed(lv), _per_seed(cv)
    if set(ls) != set(cs):
        cmp.reasons.append(f"seeds differ: lead {sorted(ls)}, collaborator {sorted(cs)}")
    for seed in sorted(set(ls) & set(cs), key=lambda s: (len(s), s)):
        d = _delta(ls[seed], cs[seed])
        cmp.per_seed.append({"seed": seed, "lead": ls[seed], "collab": cs[seed], "delta": d})
        if not d <= plcc_tol:
            cmp.reasons.append(f"seed {seed} mean PLCC differs by {d:.3g} (lead {ls[seed]:.6f}, collaborator {cs[seed]:.6f}; tolerance {plcc_tol:g})")

    lf, cf = _per_fold(lv), _per_fold(cv)
    only_lead, only_collab = set(lf) - set(cf), set(cf) - set(lf)
    if only_lead or only_collab:
        cmp.reasons.append(f"LOSO folds differ: {len(only_lead)} only in lead, {len(only_collab)} only in collaborator (different sources or seeds)")
    worst = 0.0
    n_over = 0
    for key in sorted(set(lf) & set(cf)):
        d = _delta(lf[key], cf[key])
        cmp.per_fold.append({"seed": key[0], "fold": key[1], "lead": lf[key], "collab": cf[key], "delta": d})
        if not d <= plcc_tol:
            n_over += 1
            worst = max(worst, d) if not math.isnan(d) else math.inf
    if n_over:
        cmp.reasons.append(f"{n_over} fold PLCC(s) differ by more than {plcc_tol:g} (largest {worst:.3g})")

    lsrc, csrc = _corpus_sources(lead_root), _corpus_sources(collab_root)
    for sha in sorted(set(lsrc) | set(csrc)):
        a, b = lsrc.get(sha), csrc.get(sha)
        cmp.sources.append({"src_sha256": sha, "src": (a or b or {}).get("src"),
                            "lead_encoders": (a or {}).get("encoders"), "collab_encoders": (b or {}).get("encoders")})
    shared = set(lsrc) & set(csrc)
    if lsrc and csrc and len(shared) < max(len(lsrc), len(csrc)):
        cmp.notes.append(f"sources: {len(shared)} shared by content, {len(lsrc) - len(shared)} only in lead, "
                         f"{len(csrc) - len(shared)} only in collaborator")
    lc, cc = _corpus_sha(lv), _corpus_sha(cv)
    if lc and cc and lc != cc:
        cmp.notes.append(f"corpora differ (content sha256 {lc[:12]}… vs {cc[:12]}…)")

    lfp, cfp = flatten(verdict_fingerprint(lv)), flatten(verdict_fingerprint(cv))
    for key in sorted(set(lfp) | set(cfp)):
        if lfp.get(key) != cfp.get(key):
            cmp.fingerprint_diffs.append({"key": key, "lead": lfp.get(key), "collab": cfp.get(key)})
    if cmp.fingerprint_diffs:
        keys = ", ".join(d["key"] for d in cmp.fingerprint_diffs[:6])
        more = f" (+{len(cmp.fingerprint_diffs) - 6} more)" if len(cmp.fingerprint_diffs) > 6 else ""
        cmp.notes.append(f"environments differ: {keys}{more}")
    return cmp


def comparison_lines(cmp: Comparison, *, verbose: bool = False) -> list[str]:
    """Human summary: the outcome, then the reasons, then the differences worth knowing."""
    lines = [f"{cmp.outcome}: lead {cmp.lead_verdict}, collaborator {cmp.collab_verdict} "
             f"(PLCC tolerance {cmp.plcc_tol:g}{' = exact' if cmp.plcc_tol == 0 else ''})"]
    lines += [f"  reason: {r}" for r in cmp.reasons]
    lines += [f"  note: {n}" for n in cmp.notes]
    if cmp.per_seed:
        lines.append("  per-seed mean PLCC (lead / collaborator / |delta|):")
        lines += [f"    seed {s['seed']}: {s['lead']:.6f} / {s['collab']:.6f} / {s['delta']:.3g}" for s in cmp.per_seed]
    if cmp.per_fold:
        worst = max(cmp.per_fold, key=lambda f: f["delta"] if not math.isnan(f["delta"]) else math.inf)
        lines.append(f"  per-fold PLCC: {len(cmp.per_fold)} folds compared, largest |delta| {worst['delta']:.3g} "
                     f"(seed {worst['seed']}, fold {str(worst['fold'])[:12]})")
        if verbose:
            lines += [f"    seed {f['seed']} fold {str(f['fold'])[:12]}: {f['lead']:.6f} / {f['collab']:.6f} / {f['delta']:.3g}"
                      for f in cmp.per_fold]
    if cmp.sources:
        lines.append("  sources (by content sha256): encoders lead | collaborator")
        for s in cmp.sources:
            le = ",".join(s["lead_encoders"]) if s["lead_encoders"] else "-"
            ce = ",".join(s["collab_encoders"]) if s["collab_encoders"] else "-"
            lines.append(f"    {s['src']} ({s['src_sha256'][:12]}): {le} | {ce}")
    if cmp.fingerprint_diffs:
        lines.append("  environment differences (lead | collaborator):")
        lines += [f"    {d['key']}: {d['lead']} | {d['collab']}" for d in cmp.fingerprint_diffs]
    return lines
