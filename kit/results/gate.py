"""Where the verdict is decided: the PROMOTE/HOLD rule (`decide`) and the files that say it.

One decision, two views, written together (`write_decision`): `verdict.json` (ours: folds, corpus,
config, environment) and, in the fork's shape, exactly one of `loso/PROMOTE.json` / `loso/HOLD.json`
(what the fork's exporter, bundle step and reports read). A new decision first removes every old view,
so a kill between the writes leaves fewer files, never a stale PROMOTE.json beside a HOLD; rerunning
`verdict` finishes the job.

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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kit import __version__
from kit.core.fsio import json_safe, write_json
from kit.core.rundir import RunDir
from kit.results import provenance
from kit.results.thresholds import GATE_DEFAULTS, GATE_EPS, HOLD, PROMOTE, Thresholds, checked_thresholds
from kit.train.config import SUMMARY_GATE_KEY
from kit.train.loso_files import LosoResult, load_loso

SCHEMA_VERSION = 1
DEFAULT_THRESHOLDS = Thresholds()
# verdict.json: where each threshold came from (the command line, loso/summary.json, the default).
THRESHOLDS_FROM_KEY = "gate_thresholds_from"


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


def verdict_document(verdict: Verdict, loso: LosoResult, *, now: datetime | None = None,
                     inputs: dict[str, Any] | None = None,
                     thresholds_from: dict[str, str] | None = None) -> dict[str, Any]:
    """The verdict.json content: everything a reviewer needs to trust or re-derive the verdict, and
    (`inputs`, kit.results.provenance) exactly which LOSO results it was decided on."""
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
        "codec": loso.codec,
        "config": loso.config.to_dict(),
        "fingerprint": loso.fingerprint,
        "fingerprint_id": loso.fingerprint_id,
        **({provenance.INPUTS_KEY: inputs} if inputs is not None else {}),
        **({THRESHOLDS_FROM_KEY: thresholds_from} if thresholds_from is not None else {}),
    })


def write_verdict_file(path: str | Path, verdict: Verdict, loso: LosoResult, *, now: datetime | None = None,
                       inputs: dict[str, Any] | None = None,
                       thresholds_from: dict[str, str] | None = None) -> dict[str, Any]:
    """Write verdict.json's document (only) atomically to `path`; a run directory gets `write_decision`."""
    doc = verdict_document(verdict, loso, now=now, inputs=inputs, thresholds_from=thresholds_from)
    write_json(path, doc)
    return doc


# ---- the fork's view of the same decision ------------------------------------------------------------

FORK_GATE_KEYS: tuple[str, ...] = ("passed", "mean_plcc", "mean_plcc_threshold", "mean_plcc_pass", "plcc_spread",
                                   "plcc_spread_max", "plcc_spread_pass", "per_seed_plccs", "per_seed_min",
                                   "per_seed_pass", "failing_seeds")
FORK_PROMOTE_TEXT = ("flip seeds smoke->false in model/tiny/registry.json (ADR-0309: registry-flip is a separate "
                     "follow-up PR; DO NOT flip during a rebase or in the same PR as this verdict file)")


def fork_gate_passes(per_seed: Mapping[str, float], thresholds: Thresholds) -> bool:
    """The fork's own rule (ensemble_prod_gate.evaluate_gate): a plain sum in the order given, exact
    comparisons with no tolerance, and NaN failing every comparison. Used to say what the fork's gate
    would decide on a run's numbers, where ours (1e-12 tolerance) could differ at a float boundary."""
    values = [float(v) for v in per_seed.values()]
    if not values:
        return False
    mean = sum(values) / len(values)
    spread = max(values) - min(values)
    return (mean >= thresholds.mean_plcc and spread <= thresholds.plcc_spread_max
            and all(v >= thresholds.per_seed_min for v in values))


def _fork_recommendation(gate: dict[str, Any]) -> str:
    """validate_ensemble_seeds.py's wording, so the fork's readers see what they expect."""
    if gate["passed"]:
        return FORK_PROMOTE_TEXT
    aspects = []
    if not gate["mean_plcc_pass"]:
        aspects.append(f"mean_plcc {gate['mean_plcc']:.4f} < {gate['mean_plcc_threshold']:.4f}")
    if not gate["plcc_spread_pass"]:
        aspects.append(f"plcc_spread {gate['plcc_spread']:.4f} > {gate['plcc_spread_max']:.4f}")
    if not gate["per_seed_pass"]:
        aspects.append(f"failing seeds {gate['failing_seeds']}")
    return "keep smoke=true; investigate diversity / hyperparameters. Failing aspects: " + ", ".join(aspects or ["unknown"])


def fork_verdict_document(verdict: Verdict, loso: LosoResult, *, now: datetime | None = None) -> dict[str, Any]:
    """PROMOTE.json / HOLD.json: the fork's verdict file (validate_ensemble_seeds.py's keys), with this
    decision's numbers; what only we know goes under `ensemble_kit`."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    return json_safe({
        "schema_version": 1,
        "verdict": verdict.verdict,
        "generated_at_utc": stamp,
        "loso_dir": "loso",  # relative to the run directory: this file's own folder
        "seeds": verdict.seeds,
        "gate": {k: verdict.gate[k] for k in FORK_GATE_KEYS},
        # the fork snapshots a folder of YUVs here; our corpus is identified in `ensemble_kit` instead
        "corpus": {"present": False, "corpus_root": "", "sha256": None, "ref_count": 0, "dis_count": 0},
        "recommendation": _fork_recommendation(verdict.gate),
        "adr": "ADR-0309",
        "parent_adr": "ADR-0303",
        "ensemble_kit": {
            "kit_version": __version__, "verdict_json": "../verdict.json", "recommendation": verdict.recommendation,
            "comparison_epsilon": verdict.gate["comparison_epsilon"], "nan_folds": verdict.gate["nan_folds"],
            "corpus_sha256": loso.corpus.get("sha256"), "n_rows": loso.corpus.get("n_rows"),
            "n_sources": loso.corpus.get("n_sources"), "codec_vocab": loso.codec.get("vocab"),
            "epochs": loso.config.epochs, "fingerprint_id": loso.fingerprint_id,
        },
    })


def write_decision(run_dir: RunDir | str | Path, verdict: Verdict, loso: LosoResult, *,
                   now: datetime | None = None, thresholds_from: dict[str, str] | None = None) -> dict[str, Any]:
    """Write both views of one decision: loso/PROMOTE.json or loso/HOLD.json, then verdict.json.

    Every old view goes first, so at no moment does a PROMOTE.json sit beside a newer HOLD (or an old
    verdict.json beside a new fork file); a kill in between leaves a missing file, and rerunning
    `verdict` (or the pipeline) writes both again. verdict.json records the LOSO results it was decided
    on; models/ and report/ made under another verdict are then moved aside (kit.results.provenance).
    """
    rd = RunDir.of(run_dir)
    now = now or datetime.now(UTC)
    rd.verdict.unlink(missing_ok=True)
    for path in rd.fork_verdicts():
        path.unlink(missing_ok=True)
    write_json(rd.fork_verdict(verdict.verdict), fork_verdict_document(verdict, loso, now=now))
    doc = write_verdict_file(rd.verdict, verdict, loso, now=now,
                             inputs=provenance.verdict_inputs(rd, loso.corpus.get("sha256")),
                             thresholds_from=thresholds_from)
    provenance.set_aside_outdated(rd, doc)
    return doc


def write_verdict(
    run_dir: str | Path,
    *,
    mean_plcc: float | None = None,
    plcc_spread_max: float | None = None,
    per_seed_min: float | None = None,
    given_from: str = "command line",
    now: datetime | None = None,
) -> dict[str, Any]:
    """`ensemble-kit verdict`: read run_dir/loso/, apply the gate, write verdict.json and the fork's file.

    Each threshold is the one given (not None, from `given_from`), else the one loso/summary.json carries
    (`train --corpus RUN|BUNDLE` took it from that run; checked as untrusted input), else the default.
    verdict.json's `gate` records the values and `gate_thresholds_from` where each came from.
    Refused (bad input) when loso/ was trained on another corpus than the run's corpus.parquet now holds.
    """
    rd = RunDir(Path(run_dir))
    loso = load_loso(rd)
    provenance.check(rd, verdict=False, models=False, report=False)
    given = {k: v for k, v in {"mean_plcc": mean_plcc, "plcc_spread_max": plcc_spread_max,
                               "per_seed_min": per_seed_min}.items() if v is not None}
    carried: dict[str, float] = {}
    where = rd.relative(rd.loso_summary)
    if loso.gate_thresholds is not None and given.keys() != GATE_DEFAULTS.keys():  # all given: none needed
        values = loso.gate_thresholds if isinstance(loso.gate_thresholds, dict) else {}
        carried = asdict(checked_thresholds(values, f"{rd.loso_summary}: {SUMMARY_GATE_KEY}"))
    sources = {name: given_from if name in given else where if name in carried else "default" for name in GATE_DEFAULTS}
    thresholds = Thresholds(**{**GATE_DEFAULTS, **carried, **given})
    return write_decision(rd, decide(loso, thresholds), loso, now=now, thresholds_from=sources)
