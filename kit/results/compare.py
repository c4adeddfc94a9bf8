"""`ensemble-kit compare`: does a collaborator's run reproduce the lead's? Reasons for DIVERGED first.

Either side is a run directory or a results bundle (verified and safely extracted first, see
`kit.results.bundle`). Compared from each side's verdict.json: the verdicts, per-seed and per-fold
PLCCs (exactly, or within an explicit tolerance), the folds; then notes that are not divergences on
their own: shared sources, whether the corpora differ, every environment-fingerprint difference.
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

from kit.core.errors import BadInput
from kit.core.ids import shorten
from kit.core.rundir import RunDir
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


def _corpus_sources(run_root: Path) -> dict[str, dict[str, Any]]:
    """src_sha256 -> {src, encoders} of a run's corpus (the columns only, cheap)."""
    corpus = RunDir(run_root).corpus
    if not corpus.is_file():
        return {}
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
    lc, cc = corpus_sha(lv), corpus_sha(cv)
    if lc and cc and lc != cc:
        cmp.notes.append(f"corpora differ (content sha256 {shorten(lc)}… vs {shorten(cc)}…)")

    for key, a, b in env_fingerprint.differences(env_fingerprint.result_env(verdict_fingerprint(lv)),
                                                 env_fingerprint.result_env(verdict_fingerprint(cv))):
        cmp.fingerprint_diffs.append({"key": key, "lead": a, "collab": b})
    if cmp.fingerprint_diffs:
        keys = ", ".join(d["key"] for d in cmp.fingerprint_diffs[:6])
        more = f" (+{len(cmp.fingerprint_diffs) - 6} more)" if len(cmp.fingerprint_diffs) > 6 else ""
        cmp.notes.append(f"result_env differs: {keys}{more}")
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
    if cmp.fingerprint_diffs:
        lines.append("  environment differences (lead | collaborator):")
        lines += [f"    {d['key']}: {d['lead']} | {d['collab']}" for d in cmp.fingerprint_diffs]
    return lines
