"""`ensemble-kit compare`: does a collaborator's run reproduce the lead's? Causes first, then numbers.

Either side is a run directory or a results bundle (verified and safely extracted first, see
`kit.results.bundle`). Every difference class is named before any number, so a DIVERGED says why:

    config       every TrainConfig field, the seeds and every gate threshold (from verdict.json)
    corpus       content hash, rows, sources (by content sha256) and cells (source x encoder x cq),
                 the cells streamed from corpus.parquet
    environment  `kit.env.fingerprint.result_env` only (what can change a number); host facts are
                 listed apart, as recorded, never as a difference
    numbers      the verdicts, per-seed and per-fold PLCCs (exactly, or within an explicit tolerance),
                 the folds: these decide REPRODUCED / DIVERGED

(A fork PROMOTE.json/HOLD.json as LEAD is `kit.results.confirm`, issue 9's CONFIRMS/REFUTES.)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from kit.core.errors import BadInput
from kit.core.fsio import canonical_json, json_safe
from kit.core.ids import shorten
from kit.core.rundir import RunDir
from kit.corpus.table import stream_batches
from kit.env import fingerprint as env_fingerprint
from kit.results.bundle import (
    CORPUS_SUFFIXES,
    TamperedBundle,
    corpus_sha,
    is_bundle,
    opened_bundle,
    read_verdict,
    verdict_fingerprint,
)
from kit.results.thresholds import recorded_thresholds
from kit.train.config import RESULT_NEUTRAL_TRAIN

DIFFERENCE_CLASSES: tuple[str, ...] = ("config", "corpus", "environment")


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


@dataclass
class CorpusFacts:
    """What the corpus class compares, streamed from corpus.parquet (memory: the cells, not the rows)."""

    rows: int = 0
    sources: dict[str, str] = field(default_factory=dict)  # src_sha256 -> a source name
    encoders: dict[str, set[str]] = field(default_factory=dict)  # src_sha256 -> encoders
    cells: set[tuple[str, str, int]] = field(default_factory=set)  # (src_sha256, encoder, cq)


def corpus_facts(run_root: Path) -> CorpusFacts:
    """Rows, sources and cells of a run's corpus, read in batches of four columns."""
    corpus = RunDir(run_root).corpus
    facts = CorpusFacts()
    if not corpus.is_file():
        return facts
    try:
        for batch in stream_batches(pq.ParquetFile(corpus), ["src_sha256", "src", "encoder", "cq"]):
            facts.rows += batch.num_rows
            cells = batch.to_pandas().drop_duplicates(["src_sha256", "encoder", "cq"])  # a batch's few cells
            for sha, src, enc, cq in cells.itertuples(index=False):
                facts.sources.setdefault(str(sha), str(src))
                facts.encoders.setdefault(str(sha), set()).add(str(enc))
                facts.cells.add((str(sha), str(enc), int(cq) if pd.notna(cq) else -1))
    except Exception as exc:  # noqa: BLE001 - a corrupt file from someone else: name it
        raise BadInput(f"{corpus}: unreadable corpus: {type(exc).__name__}: {exc}", hint="ask for a fresh bundle") from None
    return facts


def _item(key: str, lead: Any, collab: Any, note: str = "") -> dict[str, Any]:
    return {"key": key, "lead": lead, "collab": collab, **({"note": note} if note else {})}


def _json_equal(a: Any, b: Any) -> bool:
    return canonical_json(json_safe(a), indent=None) == canonical_json(json_safe(b), indent=None)


def config_differences(lv: dict[str, Any], cv: dict[str, Any]) -> list[dict[str, Any]]:
    """Every TrainConfig field, the seeds and every gate threshold that differ between two verdicts."""
    out = []
    lc = lv.get("config") if isinstance(lv.get("config"), dict) else {}
    cc = cv.get("config") if isinstance(cv.get("config"), dict) else {}
    for key in sorted(set(lc) | set(cc)):
        if not _json_equal(lc.get(key), cc.get(key)):
            out.append(_item(key, lc.get(key), cc.get(key),
                             "does not change results" if key in RESULT_NEUTRAL_TRAIN else ""))
    if not _json_equal(lv.get("seeds"), cv.get("seeds")):
        out.append(_item("seeds", lv.get("seeds"), cv.get("seeds")))
    lg = recorded_thresholds(lv.get("gate") if isinstance(lv.get("gate"), dict) else {})
    cg = recorded_thresholds(cv.get("gate") if isinstance(cv.get("gate"), dict) else {})
    out += [_item(f"gate.{k}", lg[k], cg[k]) for k in lg if not _json_equal(lg[k], cg[k])]
    return out


def corpus_differences(lv: dict[str, Any], cv: dict[str, Any], lf: CorpusFacts, cf: CorpusFacts) -> list[dict[str, Any]]:
    """Content hash, rows, sources (by content) and cells (source x encoder x cq) that differ."""
    lc, cc = corpus_sha(lv), corpus_sha(cv)
    if lc == cc and lf.cells == cf.cells and lf.rows == cf.rows:
        return []
    out = [_item("sha256", lc, cc)] if lc != cc else []
    if lf.rows != cf.rows:
        out.append(_item("rows", lf.rows, cf.rows))
    shared = set(lf.sources) & set(cf.sources)
    if set(lf.sources) != set(cf.sources):
        only_l = sorted(lf.sources[s] for s in set(lf.sources) - shared)
        only_c = sorted(cf.sources[s] for s in set(cf.sources) - shared)
        out.append(_item("sources", only_l, only_c, f"{len(shared)} shared by content; listed: only in each side"))
    if lf.cells != cf.cells:
        both = lf.cells & cf.cells
        out.append(_item("cells", len(lf.cells - both), len(cf.cells - both),
                         f"{len(both)} cells (source x encoder x cq) shared; counted: only in each side"))
    return out


def environment_differences(lv: dict[str, Any], cv: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """(result_env differences, host keys that differ): only the first can change a number."""
    lfp, cfp = verdict_fingerprint(lv), verdict_fingerprint(cv)
    diffs = [_item(k, a, b) for k, a, b in env_fingerprint.differences(env_fingerprint.result_env(lfp),
                                                                        env_fingerprint.result_env(cfp))]
    host = [k for k, _, _ in env_fingerprint.differences(env_fingerprint.host_part(lfp), env_fingerprint.host_part(cfp))]
    return diffs, host


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
    reasons: list[str] = field(default_factory=list)  # the numbers that make it DIVERGED; empty = REPRODUCED
    differences: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # DIFFERENCE_CLASSES -> items
    corpus_summary: str = ""  # what the corpora are when they are the same
    host_diffs: list[str] = field(default_factory=list)  # recorded host facts that differ (never compared)
    per_seed: list[dict[str, Any]] = field(default_factory=list)
    per_fold: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)

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
            "differences": self.differences, "host_diffs": self.host_diffs,
            "reasons": self.reasons, "per_seed": self.per_seed, "per_fold": self.per_fold,
            "sources": self.sources, "fingerprint_diffs": self.differences.get("environment", []),
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

    _classify(cmp, lv, cv, corpus_facts(lead_root), corpus_facts(collab_root))
    return cmp


def _classify(cmp: Comparison, lv: dict[str, Any], cv: dict[str, Any], lf: CorpusFacts, cf: CorpusFacts) -> None:
    """Fill the difference classes and the per-source encoder table."""
    cmp.differences["config"] = config_differences(lv, cv)
    cmp.differences["corpus"] = corpus_differences(lv, cv, lf, cf)
    cmp.differences["environment"], cmp.host_diffs = environment_differences(lv, cv)
    sha = corpus_sha(lv)
    cmp.corpus_summary = (f"sha256 {shorten(str(sha))}…, {lf.rows} rows, {len(lf.sources)} sources, "
                          f"{len(lf.cells)} cells")
    for src in sorted(set(lf.sources) | set(cf.sources)):
        cmp.sources.append({"src_sha256": src, "src": lf.sources.get(src) or cf.sources.get(src),
                            "lead_encoders": sorted(lf.encoders.get(src, ())) or None,
                            "collab_encoders": sorted(cf.encoders.get(src, ())) or None})


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return shorten(value) + "…" if len(value) == 64 else value
    return canonical_json(json_safe(value), indent=None).strip()


def class_lines(cmp: Comparison) -> list[str]:
    """One line per difference class, in DIFFERENCE_CLASSES order: what differs, lead | collaborator."""
    lines = []
    for name in DIFFERENCE_CLASSES:
        items = cmp.differences.get(name, [])
        if not items:
            same = {"config": "same training config, seeds and gate thresholds",
                    "corpus": f"same corpus ({cmp.corpus_summary})",
                    "environment": "same result environment"}[name]
            lines.append(f"  {name}: {same}")
            continue
        parts = [f"{d['key']} {_shown(d['lead'])} | {_shown(d['collab'])}" + (f" ({d['note']})" if d.get("note") else "")
                 for d in items]
        lines.append(f"  {name}: differs (lead | collaborator): {'; '.join(parts)}")
    if cmp.host_diffs:
        lines.append(f"  host (recorded, not compared): {', '.join(cmp.host_diffs)}")
    return lines


def comparison_lines(cmp: Comparison, *, verbose: bool = False) -> list[str]:
    """Human summary: the outcome, every difference class, then the numbers (reasons first)."""
    lines = [f"{cmp.outcome}: lead {cmp.lead_verdict}, collaborator {cmp.collab_verdict} "
             f"(PLCC tolerance {cmp.plcc_tol:g}{' = exact' if cmp.plcc_tol == 0 else ''})"]
    lines += class_lines(cmp) if cmp.differences else []
    lines += [f"  reason: {r}" for r in cmp.reasons]
    if cmp.per_seed:
        lines.append("  per-seed mean PLCC (lead / collaborator / |delta|):")
        lines += [f"    seed {s['seed']}: {s['lead']:.6f} / {s['collab']:.6f} / {s['delta']:.3g}" for s in cmp.per_seed]
    if cmp.per_fold:
        worst = max(cmp.per_fold, key=lambda f: f["delta"] if not math.isnan(f["delta"]) else math.inf)
        lines.append(f"  per-fold PLCC: {len(cmp.per_fold)} folds compared, largest |delta| {worst['delta']:.3g} "
                     f"(seed {worst['seed']}, fold {shorten(str(worst['fold']))})")
        if verbose:
            lines += [f"    seed {f['seed']} fold {shorten(str(f['fold']))}: {f['lead']:.6f} / {f['collab']:.6f} / {f['delta']:.3g}"
                      for f in cmp.per_fold]
    if cmp.sources:
        lines.append("  sources (by content sha256): encoders lead | collaborator")
        for s in cmp.sources:
            le = ",".join(s["lead_encoders"]) if s["lead_encoders"] else "-"
            ce = ",".join(s["collab_encoders"]) if s["collab_encoders"] else "-"
            lines.append(f"    {s['src']} ({shorten(s['src_sha256'])}): {le} | {ce}")
    return lines
