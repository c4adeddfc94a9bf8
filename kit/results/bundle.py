"""The results bundle a collaborator mails back: its files, manifest, reproducible tarball and verification.

A bundle holds exactly one run's outputs (never files an earlier run left in the directory), hashed in
`manifest.json`, in a reproducible tarball whose first member is that manifest: the same run always
gives the same name and the same bytes, so two people can compare a sha256 over the phone. A bundle
from someone else is untrusted input: it is only ever opened through `kit.core.archive.extract_listed`
(the manifest first, then only what it lists, bounded) and then re-checked claim by claim
(`kit.results.bundle_checks`). Its hashes detect changes after bundling; they are not a signature.
"""

from __future__ import annotations

import atexit
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kit import __version__
from kit.core import proc
from kit.core.archive import ArchiveMismatch, Listed, extract_listed, write_reproducible_tar
from kit.core.console import printable
from kit.core.errors import BadInput
from kit.core.fsio import (
    JSONProblem,
    canonical_json,
    make_temp_dir,
    out_target,
    parse_json,
    read_json,
    sha256_file,
    temp_dir,
    writable_dir,
    write_text,
)
from kit.core.rundir import RunDir
from kit.env import platform as kit_platform
from kit.results import provenance
from kit.results.provenance import corpus_sha
from kit.results.thresholds import RECORDED_AS, VERDICTS, checked_thresholds, recorded_thresholds
from kit.train.config import SUMMARY_GATE_KEY

BUNDLE_SCHEMA = "ensemble-kit/results-bundle"
BUNDLE_SCHEMA_VERSION = 2  # 2: manifest.json is the first member, and only what it lists may follow
MANIFEST_NAME = "manifest.json"
BUNDLE_PREFIX = "ensemble-results-"
BUNDLE_SUFFIX = ".tar.gz"
# A bundle is a corpus, a few small models and a report: far below this. The bound stops a hostile or
# broken tarball from filling the disk when it is opened.
DEFAULT_MAX_BUNDLE_BYTES = 8 << 30
# What a bundle may declare per byte of tarball: its parquet, ONNX and PNG files barely compress (a demo
# bundle is 1.3:1), so 50:1 is far above any honest bundle and far below a bomb's ~1000:1. Small
# bundles may always declare RATIO_FLOOR_BYTES.
MAX_COMPRESSION_RATIO = 50
RATIO_FLOOR_BYTES = 8 << 20
NOT_A_SIGNATURE = ("the sha256s detect changes made after bundling; they are not a signature: anyone can build a "
                   "consistent bundle, so ask the sender to confirm the sha256 above")
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


def _checked_ensemble(rd: RunDir) -> dict[str, Any] | None:
    """models/ensemble.json (None without models), every file it lists present and every member's sha256
    matching its file. That they were exported under this verdict, from this corpus, `provenance.check`
    has already made sure."""
    if not rd.ensemble_json.is_file():
        return None
    ensemble = read_json(rd.ensemble_json, what="models/ensemble.json")
    files = rd.model_files(ensemble)
    for path in files[1:]:
        if not path.is_file():
            raise BadInput(f"{rd.ensemble_json} lists {path.name}, which is missing", hint="rerun `ensemble-kit export`")
    for member in _ensemble_members(ensemble):  # kit.results.export: {"onnx", "sha256", "sidecar", ...}
        want = member.get("sha256")
        if isinstance(member.get("onnx"), str) and want and sha256_file(rd.models_dir / member["onnx"]) != want:
            raise BadInput(f"{rd.models_dir / member['onnx']}: sha256 differs from ensemble.json",
                           hint="rerun `ensemble-kit export`")
    return ensemble


def _ensemble_members(ensemble: dict[str, Any]) -> list[dict[str, Any]]:
    members = ensemble.get("members", [])
    return [m for m in members if isinstance(m, dict)] if isinstance(members, list) else []


def run_files(run_root: Path) -> list[tuple[str, Path]]:
    """(relative path, file) for every output of this run, sorted; never a stale file.

    The run directory says which files those are (`RunDir`): run.json, verdict.json (+ the fork's
    loso/PROMOTE.json or HOLD.json), corpus.parquet; the LOSO files of the verdict's seeds; the models;
    the report's files. First they must belong together (`provenance.check`: the corpus loso/ was
    trained on, the verdict about those LOSO results, models and report made under that verdict), else
    bad input naming the difference and the command that redoes the stale step. When the pipeline
    recorded its step outputs, those are the authority and anything not recorded is left out.
    """
    root = Path(run_root)
    rd = RunDir(root)
    verdict = read_verdict(root)
    if not rd.corpus.is_file():
        raise BadInput(f"{root}: no corpus.parquet", hint="run `ensemble-kit corpus` (or the pipeline) in it first")
    provenance.check(rd)
    seeds = [int(s) for s in verdict.get("seeds") or [] if isinstance(s, int) or str(s).isdigit()]
    ensemble = _checked_ensemble(rd)
    candidates = rd.bundle_files(seeds, ensemble)
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
        first = f"{stem}/{MANIFEST_NAME}"
        members = [(f"{stem}/{rel}", p) for rel, p in files] + [(first, manifest_path)]
        write_reproducible_tar(members, target, first=[first])
    return BundleResult(path=target, manifest=manifest, sha256=sha256_file(target))


# ---- opening and verifying a bundle (untrusted input) -------------------------------------------------


class TamperedBundle(ArchiveMismatch):
    """A well-formed bundle whose content no longer matches its manifest, or whose files contradict each
    other (edited or corrupted after bundling). `verify` reports it as bad input; `compare` reports it as
    a reason for DIVERGED."""


def is_bundle(path: Path) -> bool:
    return Path(path).is_file() and Path(path).name.endswith((".tar.gz", ".tgz", ".tar"))


@dataclass(frozen=True)
class VerifyResult:
    bundle: Path
    sha256: str
    manifest: dict[str, Any]
    n_files: int
    total_bytes: int
    checks: tuple[str, ...] = ()  # the re-derivation checks that passed (kit.results.bundle_checks)


def _manifest_reader(bundle: Path) -> Callable[[bytes], list[Listed]]:
    """Parse manifest.json (already bounded in size) into the listing `extract_listed` enforces."""
    label = f"{bundle}: {MANIFEST_NAME}"

    def parse(data: bytes) -> list[Listed]:
        try:
            manifest = parse_json(data)
        except JSONProblem as exc:
            raise BadInput(f"{label} is not valid JSON: {exc}", hint="ask the sender for a fresh bundle") from None
        if not isinstance(manifest, dict) or manifest.get("schema") != BUNDLE_SCHEMA:
            raise BadInput(f"{bundle}: not an ensemble-kit results bundle ({MANIFEST_NAME} is not a bundle manifest)",
                           hint="ask the sender for the ensemble-results-*.tar.gz that `ensemble-kit bundle` wrote")
        version = manifest.get("schema_version")
        if version != BUNDLE_SCHEMA_VERSION:
            raise BadInput(
                f"{bundle}: bundle schema version {printable(repr(version))}, this ensemble-kit {__version__} reads "
                f"version {BUNDLE_SCHEMA_VERSION}",
                hint="use the ensemble-kit release that wrote it (see kit_version in its manifest.json), or ask for a rebundle",
            )
        files = manifest.get("files")
        if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
            raise BadInput(f"{label} has no file list", hint="ask the sender for a fresh bundle")
        summary = manifest.get("verdict")
        if not isinstance(summary, dict) or summary.get("verdict") not in VERDICTS:
            raise BadInput(f"{label} has no verdict summary (its 'verdict' is {type(summary).__name__}, not an object "
                           "naming PROMOTE or HOLD)", hint="ask the sender for the file `ensemble-kit bundle` wrote")
        return [Listed(path=f.get("path"), size=f.get("size"), sha256=f.get("sha256")) for f in files]  # type: ignore[arg-type]

    return parse


@contextmanager
def opened_bundle(bundle: Path, *, max_total_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
                  dest: Path | None = None) -> Iterator[tuple[Path, VerifyResult]]:
    """Extract a bundle under the untrusted-archive rules, check it, yield (run root inside it, result).

    Reading order: manifest.json (the first member) is validated, its declared total bounded; then
    only the files it lists are written, each hashed as it is written; then every claim the bundle
    makes is re-derived from its own files (`kit.results.bundle_checks`). The temp folder is removed
    after use, after any refusal, and on Ctrl-C or SIGTERM.
    """
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
    with proc.sigterm_as_interrupt():
        # Always a fresh, empty folder: whatever else sits in `dest` is never mistaken for bundle content.
        work = make_temp_dir("bundle", parent=dest)
        try:
            got = extract_listed(bundle, work, manifest_name=MANIFEST_NAME, parse_manifest=_manifest_reader(bundle),
                                 max_total_bytes=max_total_bytes, max_ratio=MAX_COMPRESSION_RATIO,
                                 ratio_floor=RATIO_FLOOR_BYTES, on_mismatch=TamperedBundle,
                                 kind=f"ensemble-kit results bundle (schema version {BUNDLE_SCHEMA_VERSION})")
            if not got.top:
                raise BadInput(f"{bundle}: {MANIFEST_NAME} is not inside a top-level folder",
                               hint="ask the sender for the file `ensemble-kit bundle` wrote")
            manifest = parse_json(got.manifest)
            from kit.results import (
                bundle_checks,  # heavy (pandas, pyarrow): loaded only when a bundle is opened
            )

            passed = bundle_checks.run_checks(got.root, manifest, got.files, bundle.name)
            yield got.root, VerifyResult(bundle=bundle, sha256=got.sha256, manifest=manifest, n_files=len(got.files),
                                         total_bytes=got.total_bytes, checks=passed)
        except BaseException:
            if not own_tmp:  # the caller's dest keeps nothing of a refused bundle
                shutil.rmtree(work, ignore_errors=True)
            raise
        finally:
            if own_tmp:
                shutil.rmtree(work, ignore_errors=True)


def verify(bundle: Path, *, max_total_bytes: int = DEFAULT_MAX_BUNDLE_BYTES) -> VerifyResult:
    """Check a bundle: safe extraction against its manifest, then every claim re-derived from its files."""
    with opened_bundle(bundle, max_total_bytes=max_total_bytes) as (_root, result):
        return result


def _persistent_tmp() -> Path:
    path = make_temp_dir("bundle")
    atexit.register(shutil.rmtree, path, True)
    return path


def extract_bundle(bundle: Path, dest: Path | None = None, *,
                   max_total_bytes: int = DEFAULT_MAX_BUNDLE_BYTES) -> Path:
    """Verify and extract a bundle; return the run root inside `dest` (a temp dir removed at exit if None).

    A refused bundle leaves nothing behind, in `dest` or in the temp dir.
    """
    target = Path(dest) if dest is not None else _persistent_tmp()
    try:
        with opened_bundle(bundle, max_total_bytes=max_total_bytes, dest=target) as (root, _):
            return root
    except BaseException:
        if dest is None:
            shutil.rmtree(target, ignore_errors=True)
        raise


@dataclass(frozen=True)
class RecordedTraining:
    """How a run trained, as its verdict.json (else loso/summary.json) records it, and the gate thresholds
    it was (or is to be) decided with: what `train --corpus RUN|BUNDLE` carries into the new run."""

    where: str  # the file it came from, for messages
    config: dict[str, Any]
    seeds: tuple[int, ...]
    gate: dict[str, float] | None = None  # checked thresholds (kit.results.thresholds), None when none recorded


def recorded_gate(run_root: Path, label: str | None = None) -> tuple[str, dict[str, float]] | None:
    """(file, thresholds) a run recorded: verdict.json's gate (what its verdict used), else loso/summary.json's
    SUMMARY_GATE_KEY (what `train --corpus` carried in for a later `verdict`). Range-checked as untrusted input (bad input naming `label`'s file and
    key when one is not a threshold); None when it recorded none."""
    rd = RunDir(run_root)
    verdict, summary = _read_json_if(rd.verdict), _read_json_if(rd.loso_summary)
    if isinstance(verdict.get("gate"), dict):
        path, values, keys = rd.verdict, recorded_thresholds(verdict["gate"]), RECORDED_AS
    elif isinstance(summary.get(SUMMARY_GATE_KEY), dict):
        path, values, keys = rd.loso_summary, summary[SUMMARY_GATE_KEY], None
    else:
        return None
    where = rd.relative(path)
    return where, asdict(checked_thresholds(values, f"{label or run_root}: {where}", keys))


def recorded_training(run_root: Path, label: str | None = None) -> RecordedTraining | None:
    """The training config, seeds and gate thresholds a finished run recorded (None when it recorded none)."""
    rd = RunDir(run_root)
    for path in (rd.verdict, rd.loso_summary):
        doc = _read_json_if(path)
        config, seeds = doc.get("config"), doc.get("seeds")
        if isinstance(config, dict) and isinstance(seeds, list) and all(isinstance(s, int) for s in seeds):
            gate = recorded_gate(run_root, label)
            return RecordedTraining(where=rd.relative(path), config=config, seeds=tuple(seeds),
                                    gate=gate[1] if gate else None)
    return None


def training_source(path: Path, dest: Path | None = None) -> tuple[Path, RecordedTraining | None]:
    """(corpus file, the training it was recorded with) behind `train --corpus PATH`: a run directory or a
    results bundle (verified first) carries its config, seeds and gate thresholds, a plain corpus file none."""
    corpus = corpus_from(path, dest)
    p = Path(path)
    return corpus, (recorded_training(corpus.parent, str(p)) if p.is_dir() or is_bundle(p) else None)


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
