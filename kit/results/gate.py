"""Where the verdict is decided: the PROMOTE/HOLD rule (`decide`) and the one verdict file.

PROMOTE iff, over the per-seed LOSO mean PLCCs (each seed's mean over its folds):
  * their mean  >= mean_plcc_threshold   (default 0.95)
  * their spread = max - min across seeds <= plcc_spread_max (default 0.005)
  * every seed  >= per_seed_min          (default 0.95)

Float comparisons: every comparison allows GATE_EPS = 1e-12 in the passing direction, so a value
that equals a threshold up to float rounding (0.955 - 0.950 = 0.00500000000000006) passes, exactly
as a person reading the numbers would expect. NaN never passes. Folds whose PLCC is undefined (NaN,
e.g. a held-out source with constant VMAF) are left out of their seed's mean and counted in
`nan_folds`; a seed with no defined fold is NaN and fails. Sums use math.fsum, so the verdict does
not depend on the order of seeds or folds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kit.core.fsio import json_safe, write_json
from kit.core.rundir import RunDir
from kit.results.thresholds import GATE_EPS, HOLD, PROMOTE, Thresholds
from kit.train.loso_files import LosoResult, load_loso

SCHEMA_VERSION = 1
DEFAULT_THRESHOLDS = Thresholds()


@dataclass
class Verdict:
    verdict: str
    seeds: list[int]
    gate: dict[str, Any]
    recommendation: str
    nan_folds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def promoted(self) -> bool:
        return self.verdict == PROMOTE


def _at_least(value: float, threshold: float) -> bool:
    return math.isfinite(value) and value >= threshold - GATE_EPS


def _at_most(value: float, threshold: float) -> bool:
    return math.isfinite(value) and value <= threshold + GATE_EPS


def _fmt(v: float) -> str:
    return "NaN" if not math.isfinite(v) else f"{v:.4f}"


def decide(loso: LosoResult | Mapping[int, float], thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Verdict:
    """Apply the gate to a LOSO result (or a {seed: mean PLCC} mapping)."""
    nan_folds: list[dict[str, Any]] = []
    if isinstance(loso, LosoResult):
        per_seed = {s: float(v["mean"]) for s, v in loso.per_seed().items()}
        bad = loso.folds[~loso.folds["plcc"].map(lambda v: math.isfinite(float(v)))]
        nan_folds = [{"seed": int(r.seed), "fold_src": str(r.fold_src), "fold_src_sha256": str(r.fold_src_sha256)}
                     for r in bad.sort_values(["seed", "fold_src_sha256"]).itertuples()]
    else:
        per_seed = {int(s): float(v) for s, v in loso.items()}
    seeds = sorted(per_seed)
    values = [per_seed[s] for s in seeds]
    all_finite = bool(values) and all(math.isfinite(v) for v in values)
    mean = math.fsum(values) / len(values) if all_finite else math.nan
    spread = (max(values) - min(values)) if all_finite else math.nan
    failing = [s for s in seeds if not _at_least(per_seed[s], thresholds.per_seed_min)]
    gate = {
        "mean_plcc": mean,
        "mean_plcc_threshold": thresholds.mean_plcc,
        "mean_plcc_pass": _at_least(mean, thresholds.mean_plcc),
        "plcc_spread": spread,
        "plcc_spread_max": thresholds.plcc_spread_max,
        "plcc_spread_pass": _at_most(spread, thresholds.plcc_spread_max),
        "per_seed_plccs": {str(s): per_seed[s] for s in seeds},
        "per_seed_min": thresholds.per_seed_min,
        "per_seed_pass": not failing and bool(seeds),
        "failing_seeds": failing,
        "comparison_epsilon": GATE_EPS,
        "nan_folds": len(nan_folds),
    }
    gate["passed"] = bool(gate["mean_plcc_pass"] and gate["plcc_spread_pass"] and gate["per_seed_pass"])
    verdict = PROMOTE if gate["passed"] else HOLD
    return Verdict(verdict, seeds, gate, _recommendation(gate, per_seed, nan_folds), nan_folds)


def _recommendation(gate: dict[str, Any], per_seed: dict[int, float], nan_folds: list[dict[str, Any]]) -> str:
    """One line that says which condition failed and by how much."""
    mean, spread = gate["mean_plcc"], gate["plcc_spread"]
    note = f" ({len(nan_folds)} fold(s) with undefined PLCC left out)" if nan_folds else ""
    if gate["passed"]:
        return (f"PROMOTE: mean PLCC {_fmt(mean)} >= {gate['mean_plcc_threshold']}, spread {_fmt(spread)} <= "
                f"{gate['plcc_spread_max']}, every seed >= {gate['per_seed_min']}{note}")
    reasons = []
    if not gate["mean_plcc_pass"]:
        reasons.append(f"mean PLCC {_fmt(mean)} is " + (
            f"{gate['mean_plcc_threshold'] - mean:.4f} below {gate['mean_plcc_threshold']}" if math.isfinite(mean)
            else "undefined (a seed has no fold with a defined PLCC)"))
    if not gate["plcc_spread_pass"]:
        reasons.append(f"seed spread {_fmt(spread)} " + (
            f"exceeds {gate['plcc_spread_max']} by {spread - gate['plcc_spread_max']:.4f}" if math.isfinite(spread)
            else "is undefined"))
    if not gate["per_seed_pass"]:
        worst = ", ".join(f"seed {s} ({_fmt(per_seed[s])})" for s in gate["failing_seeds"]) or "no seeds"
        reasons.append(f"{worst} below {gate['per_seed_min']}")
    return "HOLD: " + "; ".join(reasons) + note + ". Check the per-fold table for the weakest sources."


def verdict_document(verdict: Verdict, loso: LosoResult, *, now: datetime | None = None) -> dict[str, Any]:
    """The verdict.json content: everything a reviewer needs to trust or re-derive the verdict."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    folds = loso.folds.sort_values(["seed", "fold_src_sha256"], kind="mergesort")
    return json_safe({
        "schema_version": SCHEMA_VERSION,
        "verdict": verdict.verdict,
        "generated_at_utc": stamp,
        "seeds": verdict.seeds,
        "gate": verdict.gate,
        "recommendation": verdict.recommendation,
        "per_seed": {str(s): v for s, v in loso.per_seed().items()},
        "folds": [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in folds.to_dict("records")],
        "nan_folds": verdict.nan_folds,
        "corpus": loso.corpus,
        "config": loso.config.to_dict(),
        "fingerprint": loso.fingerprint,
        "fingerprint_id": loso.fingerprint_id,
    })


def write_verdict_file(path: str | Path, verdict: Verdict, loso: LosoResult, *, now: datetime | None = None) -> dict[str, Any]:
    """Write the ONE verdict file atomically (a fresh HOLD replaces an old PROMOTE, never sits beside it)."""
    doc = verdict_document(verdict, loso, now=now)
    write_json(path, doc)
    return doc


def write_verdict(
    run_dir: str | Path,
    *,
    mean_plcc: float = Thresholds.mean_plcc,
    plcc_spread_max: float = Thresholds.plcc_spread_max,
    per_seed_min: float = Thresholds.per_seed_min,
    now: datetime | None = None,
) -> dict[str, Any]:
    """`ensemble-kit verdict`: read run_dir/loso/, apply the gate, write run_dir/verdict.json."""
    rd = RunDir(Path(run_dir))
    loso = load_loso(rd)
    verdict = decide(loso, Thresholds(mean_plcc, plcc_spread_max, per_seed_min))
    return write_verdict_file(rd.verdict, verdict, loso, now=now)
