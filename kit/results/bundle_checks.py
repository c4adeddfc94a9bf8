"""What `verify` proves about a bundle beyond its hashes: every claim re-derived from the bundle alone.

The manifest's sha256s only say the files are the ones that were bundled; anyone can edit a file and
rehash the manifest. So each claim a bundle makes is recomputed from the other files it holds:

    verdict-file        verdict.json is a verdict (PROMOTE/HOLD, seeds, gate, folds, config, corpus)
    manifest-agrees     the manifest's verdict, numbers, seeds and corpus hash are verdict.json's
    folds-per-seed      the folds table gives the per-seed PLCCs (verdict.json, loso/folds.csv, loso/summary.json)
    gate-reapplied      the gate, re-applied to those per-seed PLCCs with the recorded thresholds, gives the verdict
    thresholds-recorded the thresholds are the ones run.json, loso/summary.json (when verdict.json says they
                        came from there) and the models' gate snapshot recorded
    config-recorded     run.json's training config and seeds are the LOSO files', the verdict's and the models'
    corpus-hash         the corpus content hash (recomputed, streamed) and row count are the ones recorded
    members-sha256      every ONNX member's sha256 is the one ensemble.json and its sidecar record
    models-corpus       the models' declared corpus hash is the bundled corpus's content hash
    models-verdict      models ride only with a PROMOTE (or an export marked forced), promoted as the verdict says
    fork-files          the fork's views of the same decision: loso/PROMOTE.json or loso/HOLD.json (exactly
                        one, beside verdict.json) and loso/loso_seed<N>.json per seed, numbers and all
    run-consistent      one run, not parts of several: kit.results.provenance.problems, the rule every step
                        applies at home (loso/ trained on this corpus, verdict.json decided on this
                        loso/summary.json, models/ and report/ made under this verdict)
    run-files-only      nothing but the files `ensemble-kit bundle` writes for this run (no look-alike
                        loso/PR\u041eMOTE.json beside HOLD.json, no script)

Each check is one row of `CHECKS`; a new file a run writes gets a new row. A failed check names the
file and what disagrees; `run_checks` raises one TamperedBundle line naming every failed check.
These checks make a bundle self-consistent, not authentic: a sender can still fabricate a whole,
consistent run. Bundle hashes are a change detector, not a signature.

This module is over 500 lines because every claim `verify` checks sits in this one table, beside the
bounded view of the bundle the checks share: a reviewer reads what verify proves in one place.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from kit.core.archive import Listed
from kit.core.console import printable, printable_short
from kit.core.errors import BadInput, KitError
from kit.core.fsio import JSONProblem, canonical_json, json_safe, parse_json
from kit.core.ids import shorten
from kit.core.rundir import MEMBER_FILE_KEYS, RunDir
from kit.corpus.table import corpus_sha256, jsonl_sha256, streamed_corpus_sha256, streamed_jsonl_sha256
from kit.results import contract, provenance
from kit.results.bundle import MANIFEST_NAME, TamperedBundle, corpus_sha
from kit.results.gate import FORK_GATE_KEYS, THRESHOLDS_FROM_KEY, decide
from kit.results.thresholds import (
    GATE_EPS,
    PROMOTE,
    RECORDED_AS,
    VERDICTS,
    Thresholds,
    checked_thresholds,
    recorded_thresholds,
)
from kit.train.config import SUMMARY_GATE_KEY, TrainConfig, result_train_config
from kit.train.data import check_trainable, load_corpus, usable
from kit.train.metrics import nan_safe_summary

# verdict.json, run.json, folds.csv, sidecars: small documents. Anything larger is not one of ours,
# and is refused rather than parsed (parsing would hold it all in memory).
MAX_PARSED_BYTES = 64 << 20
HINT = "the bundle was altered after the run, or made by hand; ask the sender for a fresh bundle"
THRESHOLD_NAMES = tuple(Thresholds.__dataclass_fields__)
# The training settings the fork's loso_seed<N>.json repeats (kit.train.loso_files.fork_seed_file).
FORK_SEED_CONFIG_KEYS = ("epochs", "batch_size", "lr", "weight_decay")


class Problem(Exception):
    """One thing a check found wrong (its message names the file and the disagreement)."""


def same(a: Any, b: Any) -> bool:
    """Equal as JSON (NaN and null alike, exact float repr): how two recorded values are compared."""
    return canonical_json(json_safe(a), indent=None) == canonical_json(json_safe(b), indent=None)


def shown(value: Any) -> str:
    """A recorded value in a message: short, one line, escaped."""
    return printable_short(canonical_json(json_safe(value), indent=None).strip(), 80)


@dataclass
class BundleView:
    """The extracted bundle as the checks see it: listed files only, JSON parsed once and bounded."""

    root: Path
    manifest: dict[str, Any]
    listed: dict[str, Listed]
    _docs: dict[str, Any] = field(default_factory=dict)

    @property
    def rd(self) -> RunDir:
        return RunDir(self.root)

    def rel(self, path: Path) -> str:
        return self.rd.relative(path)

    def has(self, path: Path) -> bool:
        return self.rel(path) in self.listed

    def text(self, path: Path) -> str:
        rel = self.rel(path)
        if self.listed[rel].size > MAX_PARSED_BYTES:
            raise Problem(f"{rel} is {self.listed[rel].size} bytes, far more than such a file holds")
        try:
            return path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise Problem(f"{rel} is not UTF-8 text") from None

    def doc(self, path: Path) -> dict[str, Any] | None:
        """The JSON object at `path`, None when the bundle does not hold it."""
        rel = self.rel(path)
        if rel not in self.listed:
            return None
        if rel not in self._docs:
            try:
                value = parse_json(self.text(path))
            except JSONProblem as exc:
                raise Problem(f"{rel} is not valid JSON ({exc})") from None
            if not isinstance(value, dict):
                raise Problem(f"{rel} is not a JSON object")
            self._docs[rel] = value
        return self._docs[rel]

    def verdict(self) -> dict[str, Any]:
        v = self.doc(self.rd.verdict)
        if v is None:
            raise Problem("the bundle holds no verdict.json")
        return v

    def corpus_sha256(self) -> str:
        """The bundled corpus's content hash, recomputed (streamed when the file allows it)."""
        if "corpus_sha256" not in self._docs:
            path = self.rd.corpus
            if not self.has(path):
                raise Problem("the bundle holds no corpus.parquet")
            try:
                self._docs["corpus_sha256"] = streamed_corpus_sha256(path) or corpus_sha256(load_corpus(path))
            except BadInput as exc:  # a row the row rule refuses: its own words (file, row, column, value)
                raise self._refused_corpus(exc, path) from None
            except Exception as exc:  # noqa: BLE001 - a corrupt file from someone else: name it
                raise Problem(f"corpus.parquet cannot be read: {type(exc).__name__}: {printable(exc)}") from None
        return self._docs["corpus_sha256"]


    def _refused_corpus(self, exc: BadInput, path: Path) -> Problem:
        """The row rule's words once (file, row, column, value); every later check that reads the corpus
        points back to them instead of repeating the line."""
        if "corpus_refused" in self._docs:
            return Problem("the bundled corpus.parquet is refused (said above)")
        self._docs["corpus_refused"] = True
        return Problem(exc.message.replace(str(path), self.rel(path)))

    def trained_rows_sha256(self) -> tuple[str, int]:
        """(JSONL sha256, rows) of the corpus rows a full-corpus fit trains on: what a member's corpus block names."""
        if "trained_rows" not in self._docs:
            path = self.rd.corpus
            try:
                got = streamed_jsonl_sha256(path, usable)
                if got is None:
                    rows = check_trainable(load_corpus(path))
                    got = (jsonl_sha256(rows), len(rows))
            except BadInput as exc:
                raise self._refused_corpus(exc, path) from None
            except Exception as exc:  # noqa: BLE001 - a corrupt file from someone else: name it
                raise Problem(f"corpus.parquet cannot be read: {type(exc).__name__}: {printable(exc)}") from None
            self._docs["trained_rows"] = got
        return self._docs["trained_rows"]


# ---- reading a verdict's numbers -----------------------------------------------------------------------


def _number(value: Any) -> float:
    """A recorded PLCC: a number, or null for an undefined one (NaN)."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Problem(f"{shown(value)} is not a number")
    return float(value)


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Problem(f"seed {shown(value)} is not an integer")
    return value


def fold_plccs(verdict: dict[str, Any]) -> dict[tuple[int, str], float]:
    """(seed, held-out source sha256) -> frame-level PLCC, from verdict.json's folds table."""
    out: dict[tuple[int, str], float] = {}
    for row in verdict["folds"]:
        if not isinstance(row, dict) or not isinstance(row.get("fold_src_sha256"), str):
            raise Problem(f"verdict.json: folds row {shown(row)} has no seed/fold_src_sha256/plcc")
        key = (_seed(row.get("seed")), row["fold_src_sha256"])
        if key in out:
            raise Problem(f"verdict.json: fold (seed {key[0]}, {shorten(key[1])}) appears twice")
        out[key] = _number(row.get("plcc"))
    return out


def per_seed_summaries(folds: dict[tuple[int, str], float]) -> dict[int, dict[str, float | int]]:
    """The per-seed summary train computes (kit.train.metrics.nan_safe_summary) of each seed's folds."""
    seeds = sorted({s for s, _ in folds})
    return {s: nan_safe_summary([p for (seed, _), p in folds.items() if seed == s]) for s in seeds}


# ---- the checks --------------------------------------------------------------------------------------------


def check_verdict_file(b: BundleView) -> list[str]:
    v = b.verdict()
    wanted = {"verdict": str, "seeds": list, "gate": dict, "folds": list, "config": dict, "corpus": dict}
    bad = [k for k, kind in wanted.items() if not isinstance(v.get(k), kind)]
    if bad:
        return [f"verdict.json lacks {', '.join(bad)} (or they have the wrong type)"]
    if v["verdict"] not in VERDICTS:
        return [f"verdict.json: verdict {shown(v['verdict'])} is neither PROMOTE nor HOLD"]
    for s in v["seeds"]:
        _seed(s)
    fold_plccs(v)
    return []


def check_manifest_agrees(b: BundleView) -> list[str]:
    v, m = b.verdict(), b.manifest.get("verdict")
    if not isinstance(m, dict):
        return [f"{MANIFEST_NAME} has no verdict block"]
    gate = v["gate"]
    pairs = {"verdict": (m.get("verdict"), v["verdict"]), "seeds": (m.get("seeds"), v["seeds"]),
             "mean_plcc": (m.get("mean_plcc"), gate.get("mean_plcc")),
             "plcc_spread": (m.get("plcc_spread"), gate.get("plcc_spread")),
             "corpus_sha256": (b.manifest.get("corpus_sha256"), corpus_sha(v))}
    return [f"{MANIFEST_NAME} says {key} {shown(a)}, verdict.json says {shown(c)}"
            for key, (a, c) in pairs.items() if not same(a, c)]


def check_folds_per_seed(b: BundleView) -> list[str]:
    v = b.verdict()
    folds = fold_plccs(v)
    summaries = per_seed_summaries(folds)
    problems = []
    if sorted(summaries) != sorted(v["seeds"]):
        problems.append(f"verdict.json: seeds {shown(v['seeds'])}, but its folds are of seeds {shown(sorted(summaries))}")
    recorded = v["gate"].get("per_seed_plccs")
    derived = {str(s): x["mean"] for s, x in summaries.items()}
    if not same(recorded, derived):
        problems.append(f"verdict.json: gate.per_seed_plccs {shown(recorded)}, but its folds give {shown(derived)}")
    if "per_seed" in v and not same(v["per_seed"], {str(s): x for s, x in summaries.items()}):
        problems.append("verdict.json: per_seed is not the summary of its folds")
    if b.has(b.rd.loso_folds):
        csv_folds = _csv_fold_plccs(b)
        if not same(sorted(csv_folds.items()), sorted(folds.items())):
            problems.append("loso/folds.csv and verdict.json's folds table give different PLCCs")
    summary = b.doc(b.rd.loso_summary)
    if summary is not None and not same(summary.get("per_seed"), {str(s): x for s, x in summaries.items()}):
        problems.append("loso/summary.json: per_seed differs from the summary of verdict.json's folds")
    return problems


def _csv_fold_plccs(b: BundleView) -> dict[tuple[int, str], float]:
    rows = csv.DictReader(io.StringIO(b.text(b.rd.loso_folds)))
    out: dict[tuple[int, str], float] = {}
    for row in rows:
        try:
            key = (int(row["seed"]), str(row["fold_src_sha256"]))
            out[key] = float(row["plcc"]) if row["plcc"] not in ("", None) else math.nan
        except (KeyError, TypeError, ValueError):
            raise Problem(f"loso/folds.csv: row {shown(row)} has no seed/fold_src_sha256/plcc") from None
    return out


def _thresholds(b: BundleView) -> Thresholds:
    """The thresholds verdict.json records, each range-checked as the flags are (NaN, a negative spread: refused)."""
    try:
        return checked_thresholds(recorded_thresholds(b.verdict()["gate"]), "verdict.json", RECORDED_AS)
    except BadInput as exc:
        raise Problem(exc.message) from None


def check_gate_reapplied(b: BundleView) -> list[str]:
    v = b.verdict()
    folds = fold_plccs(v)
    redone = decide({s: x["mean"] for s, x in per_seed_summaries(folds).items()}, _thresholds(b))
    problems = []
    if redone.verdict != v["verdict"]:
        problems.append(f"verdict.json says {v['verdict']}, but the gate re-applied to its per-seed PLCCs gives "
                        f"{redone.verdict} ({printable(redone.recommendation.split('. ')[0])})")
    gate = v["gate"]
    expected = {**redone.gate, "nan_folds": sum(1 for p in folds.values() if not math.isfinite(p))}
    for key, value in expected.items():
        if key in gate and not same(gate[key], value):
            problems.append(f"verdict.json: gate.{key} is {shown(gate[key])}, re-derived {shown(value)}")
    if not same(gate.get("comparison_epsilon", GATE_EPS), GATE_EPS):
        problems.append(f"verdict.json: gate.comparison_epsilon {shown(gate.get('comparison_epsilon'))} is not {GATE_EPS}")
    return problems


def check_thresholds_recorded(b: BundleView) -> list[str]:
    v = b.verdict()
    used = recorded_thresholds(v["gate"])
    problems = []
    run = b.doc(b.rd.run_json)
    options = run.get("options") if run else None
    if isinstance(options, dict) and "gate" in options:
        wanted = options["gate"]
        if not isinstance(wanted, dict) or not same({k: wanted.get(k) for k in THRESHOLD_NAMES}, used):
            problems.append(f"verdict.json's gate thresholds {shown(used)} are not run.json's {shown(wanted)}")
    summary = b.doc(b.rd.loso_summary)
    carried = summary.get(SUMMARY_GATE_KEY) if summary is not None else None
    said = v.get(THRESHOLDS_FROM_KEY) if isinstance(v.get(THRESHOLDS_FROM_KEY), dict) else {}
    for name in THRESHOLD_NAMES:  # "from loso/summary.json" must be what loso/summary.json carries
        if said.get(name) == b.rel(b.rd.loso_summary) and not (isinstance(carried, dict)
                                                              and same(carried.get(name), used[name])):
            theirs = carried.get(name) if isinstance(carried, dict) else None
            problems.append(f"verdict.json says its {name} {shown(used[name])} came from loso/summary.json, which "
                            f"carries {shown(theirs)}")
    ensemble = b.doc(b.rd.ensemble_json)
    if ensemble is not None:
        snap = ensemble.get("gate") if isinstance(ensemble.get("gate"), dict) else {}
        if not same(snap.get("gate"), v["gate"]) or snap.get("verdict") != v["verdict"]:
            problems.append(f"models/ensemble.json: its gate snapshot ({shown(snap.get('verdict'))}) is not verdict.json's gate")
    snapshot = {"verdict": v["verdict"], "gate": v["gate"]}
    for rel, side in _sidecars(b):
        if not same(side.get("gate"), contract.sidecar_gate(snapshot, side.get("seed"))):  # type: ignore[arg-type]
            problems.append(f"{rel}: its gate block is not verdict.json's gate")
    for rel, fork in _fork_verdicts(b):
        if not same(fork.get("gate"), {k: v["gate"].get(k) for k in FORK_GATE_KEYS}):
            problems.append(f"{rel}: its gate is not verdict.json's gate")
    return problems


def _members(ensemble: dict[str, Any]) -> list[dict[str, Any]]:
    members = ensemble.get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
        raise Problem("models/ensemble.json lists no members")
    return members


def _sidecars(b: BundleView) -> list[tuple[str, dict[str, Any]]]:
    """(file, document) for every member sidecar models/ensemble.json lists that the bundle holds."""
    ensemble = b.doc(b.rd.ensemble_json)
    out = []
    for member in _members(ensemble) if ensemble is not None else []:
        sidecar = member.get("sidecar")
        if isinstance(sidecar, str) and f"models/{sidecar}" in b.listed:
            doc = b.doc(b.rd.models_dir / sidecar)
            if doc is not None:
                out.append((f"models/{sidecar}", doc))
    return out


def _extras(side: dict[str, Any]) -> dict[str, Any]:
    """What only ensemble-kit records in a member sidecar (contract.EXTRAS_KEY)."""
    extras = side.get(contract.EXTRAS_KEY)
    return extras if isinstance(extras, dict) else {}


def _fork_verdicts(b: BundleView) -> list[tuple[str, dict[str, Any]]]:
    """(file, document) for the fork's loso/PROMOTE.json / loso/HOLD.json the bundle holds."""
    out = []
    for path in b.rd.fork_verdicts():
        doc = b.doc(path)
        if doc is not None:
            out.append((b.rel(path), doc))
    return out


def check_config_recorded(b: BundleView) -> list[str]:
    v = b.verdict()
    try:
        TrainConfig.from_dict(v["config"])
    except Exception as exc:  # noqa: BLE001 - out-of-range values from someone else's file
        return [f"verdict.json: config is not a valid training config ({printable(exc)})"]
    config, seeds = result_train_config(v["config"]), v["seeds"]
    records: list[tuple[str, Any, Any]] = []
    run = b.doc(b.rd.run_json)
    options = run.get("options") if run else None
    if isinstance(options, dict):
        records.append(("run.json", options.get("train"), options.get("seeds")))
    summary = b.doc(b.rd.loso_summary)
    if summary is not None:
        records.append(("loso/summary.json", summary.get("config"), summary.get("seeds")))
    ensemble = b.doc(b.rd.ensemble_json)
    if ensemble is not None:
        records.append(("models/ensemble.json", ensemble.get("config"), ensemble.get("seeds")))
    records += [(rel, _extras(side).get("config"), None) for rel, side in _sidecars(b)]
    records += [(rel, None, fork.get("seeds")) for rel, fork in _fork_verdicts(b)]
    problems = []
    for rel, other_config, other_seeds in records:
        if other_config is not None and (not isinstance(other_config, dict)
                                         or not same(result_train_config(other_config), config)):
            theirs = other_config if isinstance(other_config, dict) else {}
            diff = sorted(k for k in set(config) | set(theirs) if not same(config.get(k), theirs.get(k)))
            problems.append(f"{rel}: training config differs from verdict.json's ({', '.join(map(printable, diff[:5]))})")
        if other_seeds is not None and not same(other_seeds, seeds):
            problems.append(f"{rel}: seeds {shown(other_seeds)}, verdict.json says {shown(seeds)}")
    for seed in seeds:
        fork = b.doc(b.rd.loso_seed_json(int(seed)))
        for key in FORK_SEED_CONFIG_KEYS if fork is not None else ():
            if not same(fork.get(key), v["config"].get(key)):
                problems.append(f"loso/loso_seed{seed}.json: {key} {shown(fork.get(key))}, verdict.json's config says "
                                f"{shown(v['config'].get(key))}")
    if b.has(b.rd.loso_folds):
        absent = [s for s in seeds if not b.has(b.rd.loso_predictions(int(s)))]
        if absent:
            problems.append(f"the bundle holds no loso/seed{absent[0]}/predictions.parquet though verdict.json has seed {absent[0]}")
    return problems


def check_corpus_hash(b: BundleView) -> list[str]:
    v = b.verdict()
    have = b.corpus_sha256()
    problems = []
    for rel, doc in [("verdict.json", v), ("loso/summary.json", b.doc(b.rd.loso_summary))]:
        if doc is None:
            continue
        want = doc.get("corpus", {}).get("sha256") if isinstance(doc.get("corpus"), dict) else None
        if want != have:
            problems.append(f"{rel} records corpus sha256 {shorten(str(want))}…, the bundled corpus.parquet hashes to "
                            f"{shorten(have)}…")
        rows = doc.get("corpus", {}).get("n_rows") if isinstance(doc.get("corpus"), dict) else None
        n_rows = pq.ParquetFile(b.rd.corpus).metadata.num_rows
        if rows != n_rows:
            problems.append(f"{rel} records {shown(rows)} corpus rows, corpus.parquet has {n_rows}")
    return problems


def _listed_sha(b: BundleView, rel: str, want: Any, what: str, problems: list[str]) -> None:
    """`rel` must be in the bundle with the sha256 `what` records (`want`)."""
    if rel not in b.listed:
        problems.append(f"{what} names {printable(rel)}, which the bundle does not hold")
    elif b.listed[rel].sha256 != want:  # the listed sha256 is the one the file was extracted with
        problems.append(f"{printable(rel)} has sha256 {shorten(b.listed[rel].sha256)}…, {what} records "
                        f"{shorten(str(want))}…")


def check_members_sha256(b: BundleView) -> list[str]:
    ensemble = b.doc(b.rd.ensemble_json)
    if ensemble is None:
        stray = sorted(rel for rel in b.listed if rel.startswith("models/"))
        return [f"{stray[0]} is in the bundle without models/ensemble.json"] if stray else []
    problems: list[str] = []
    owned = {b.rel(b.rd.ensemble_json)}
    registry = ensemble.get("registry")
    if isinstance(registry, str):
        owned.add(f"models/{registry}")
        _listed_sha(b, f"models/{registry}", ensemble.get("registry_sha256"), "models/ensemble.json", problems)
    for member in _members(ensemble):
        names = {k: member.get(k) for k in MEMBER_FILE_KEYS if member.get(k) is not None}
        if not all(isinstance(n, str) for n in names.values()) or "onnx" not in names or "sidecar" not in names:
            problems.append(f"models/ensemble.json: member {shown(member)} names no onnx/sidecar file")
            continue
        owned |= {f"models/{n}" for n in names.values()}
        onnx_rel, sidecar_rel = f"models/{names['onnx']}", f"models/{names['sidecar']}"
        _listed_sha(b, onnx_rel, member.get("sha256"), "models/ensemble.json", problems)
        _listed_sha(b, sidecar_rel, member.get("sidecar_sha256"), "models/ensemble.json", problems)
        if "onnx_data" in names:
            _listed_sha(b, f"models/{names['onnx_data']}", member.get("onnx_data_sha256"), "models/ensemble.json", problems)
        if sidecar_rel not in b.listed or onnx_rel not in b.listed:
            continue
        side = b.doc(b.rd.models_dir / names["sidecar"]) or {}
        _listed_sha(b, onnx_rel, side.get("sha256"), f"its sidecar {printable(sidecar_rel)}", problems)
        for key in ("seed", "onnx"):
            if not same(side.get(key), member.get(key)):
                problems.append(f"{printable(sidecar_rel)}: {key} {shown(side.get(key))}, models/ensemble.json says "
                                f"{shown(member.get(key))}")
    stray = sorted(rel for rel in b.listed if rel.startswith("models/") and rel not in owned)
    if stray:
        problems.append(f"{printable(stray[0])} is in models/ but not named by models/ensemble.json")
    return problems


def check_models_corpus(b: BundleView) -> list[str]:
    ensemble = b.doc(b.rd.ensemble_json)
    if ensemble is None:
        return []
    have = b.corpus_sha256()
    declared = [("models/ensemble.json", ensemble.get("corpus_sha256"), ensemble.get("corpus"))]
    declared += [(rel, _extras(side).get("corpus_content_sha256"), side.get("corpus")) for rel, side in _sidecars(b)]
    problems = [f"{rel} declares corpus sha256 {shorten(str(content))}…, the bundled corpus hashes to {shorten(have)}…"
                for rel, content, _ in declared if content != have]
    fork_sha, rows = b.trained_rows_sha256()
    for rel, _, block in declared:  # the fork's view: the JSONL of the rows the members were fit on
        block = block if isinstance(block, dict) else {}
        if block.get("sha256") != fork_sha or block.get("n_rows") != rows:
            problems.append(f"{rel}: corpus block (sha256 {shorten(str(block.get('sha256')))}…, {shown(block.get('n_rows'))} "
                            f"rows) is not the bundled corpus's trainable rows ({shorten(fork_sha)}…, {rows} rows)")
    return problems


def check_models_verdict(b: BundleView) -> list[str]:
    ensemble = b.doc(b.rd.ensemble_json)
    if ensemble is None:
        return []
    v = b.verdict()
    promoted = v["verdict"] == PROMOTE
    problems = []
    if ensemble.get("promoted", promoted) != promoted or ensemble.get("forced", not promoted) != (not promoted):
        problems.append(f"models/ensemble.json: promoted {shown(ensemble.get('promoted'))}, forced "
                        f"{shown(ensemble.get('forced'))} with a {v['verdict']} verdict.json")
    problems += [f"{rel}: forced {shown(_extras(side).get('forced'))} with a {v['verdict']} verdict.json"
                 for rel, side in _sidecars(b) if _extras(side).get("forced", not promoted) != (not promoted)]
    return problems


def check_fork_files(b: BundleView) -> list[str]:
    """loso/PROMOTE.json or loso/HOLD.json and loso/loso_seed<N>.json: the fork reads these, not verdict.json."""
    v = b.verdict()
    problems = []
    views = [rel for rel, _ in _fork_verdicts(b)]
    want = b.rel(b.rd.fork_verdict(v["verdict"]))
    if views != [want]:
        problems.append(f"the bundle holds {', '.join(views) or 'no fork verdict file'} beside a {v['verdict']} "
                        f"verdict.json (it must hold exactly {want})")
    for rel, fork in _fork_verdicts(b):
        kit_part = fork.get("ensemble_kit") if isinstance(fork.get("ensemble_kit"), dict) else {}
        if fork.get("verdict") != v["verdict"]:
            problems.append(f"{rel} says {shown(fork.get('verdict'))}, verdict.json says {v['verdict']}")
        if kit_part.get("corpus_sha256") != b.corpus_sha256():
            problems.append(f"{rel}: ensemble_kit.corpus_sha256 is not the bundled corpus's content hash")
    summaries = per_seed_summaries(fold_plccs(v))
    names = {(row["seed"], row.get("fold_src")): _number(row.get("plcc")) for row in v["folds"]}
    for seed in v["seeds"]:
        path = b.rd.loso_seed_json(int(seed))
        rel = b.rel(path)
        fork = b.doc(path)
        if fork is None:
            if b.has(b.rd.loso_summary):  # a run whose train step wrote the fork's files
                problems.append(f"the bundle holds no {rel} though verdict.json has seed {seed}")
            continue
        mean = summaries.get(seed, {}).get("mean")
        if fork.get("seed") != seed or not same(fork.get("mean_plcc"), mean):
            problems.append(f"{rel}: seed {shown(fork.get('seed'))}, mean_plcc {shown(fork.get('mean_plcc'))}; "
                            f"verdict.json's folds give seed {seed} mean {shown(mean)}")
        folds = fork.get("folds") if isinstance(fork.get("folds"), list) else []
        theirs = sorted((str(f.get("held_out")), _plcc_or_nan(f.get("plcc"))) for f in folds if isinstance(f, dict))
        ours = sorted((str(name), plcc) for (s, name), plcc in names.items() if s == seed)
        if not same(theirs, ours):
            problems.append(f"{rel}: its folds' PLCCs are not verdict.json's folds of seed {seed}")
        kit_part = fork.get("ensemble_kit") if isinstance(fork.get("ensemble_kit"), dict) else {}
        if kit_part.get("corpus_sha256") != b.corpus_sha256():
            problems.append(f"{rel}: ensemble_kit.corpus_sha256 is not the bundled corpus's content hash")
    return problems


def check_run_consistent(b: BundleView) -> list[str]:
    """The run-consistency rule every step applies at home (kit.results.provenance: loso/ trained on this
    corpus, the verdict decided on these LOSO results, models and report made under this verdict), applied
    to the bundle: it catches parts of different runs whose numbers happen to agree (e.g. a report/ or a
    loso/summary.json from another run), which the checks above cannot see."""
    try:
        found = provenance.problems(b.rd, corpus_sha256=b.corpus_sha256())
    except KitError as exc:  # a record that is not a JSON object
        return [_in_bundle(b, exc.message)]
    return [_in_bundle(b, stale.what) for stale in found]


def check_run_files_only(b: BundleView) -> list[str]:
    """Only files `ensemble-kit bundle` writes for this run (`RunDir.bundle_files`, for the verdict's seeds
    and the members ensemble.json lists): anything else was added by hand. Names are shown with non-ASCII
    letters escaped, so a look-alike (a Cyrillic 'О' in PROMOTE.json) cannot pass for the real name."""
    seeds = [s for s in b.verdict().get("seeds") or [] if isinstance(s, int) and not isinstance(s, bool)]
    ensemble = b.doc(b.rd.ensemble_json) if b.has(b.rd.ensemble_json) else None
    expected = {b.rel(p) for p in b.rd.bundle_files(seeds, ensemble) if p.resolve().is_relative_to(b.root.resolve())}
    unexpected = sorted(set(b.listed) - expected - {MANIFEST_NAME})
    return [f"{printable(rel.encode('ascii', 'backslashreplace').decode('ascii'))} is not a file ensemble-kit "
            "bundles for this run" for rel in unexpected]


def _in_bundle(b: BundleView, text: str) -> str:
    """A message about the extracted copy, with the bundle's own relative paths (not the temp folder's)."""
    return printable(text.replace(f"{b.root}/", "").replace(str(b.root), "the bundle"))


def _plcc_or_nan(value: Any) -> float:
    try:
        return _number(value)
    except Problem:
        return math.nan


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[BundleView], list[str]]


CHECKS: tuple[Check, ...] = (
    Check("verdict-file", check_verdict_file),
    Check("manifest-agrees", check_manifest_agrees),
    Check("folds-per-seed", check_folds_per_seed),
    Check("gate-reapplied", check_gate_reapplied),
    Check("thresholds-recorded", check_thresholds_recorded),
    Check("config-recorded", check_config_recorded),
    Check("corpus-hash", check_corpus_hash),
    Check("members-sha256", check_members_sha256),
    Check("models-corpus", check_models_corpus),
    Check("models-verdict", check_models_verdict),
    Check("fork-files", check_fork_files),
    Check("run-consistent", check_run_consistent),
    Check("run-files-only", check_run_files_only),
)


def run_checks(root: Path, manifest: dict[str, Any], files: Sequence[Listed], label: str) -> tuple[str, ...]:
    """Run every check on an extracted bundle; -> the names that passed, or TamperedBundle naming each failure.

    `verdict-file` comes first: when verdict.json is not a verdict, nothing else can be judged.
    """
    view = BundleView(root=root, manifest=manifest, listed={f.path: f for f in files})
    for required in (view.rd.verdict, view.rd.corpus):
        if not view.has(required):
            raise TamperedBundle(f"{label}: the manifest lists no {view.rel(required)}", hint=HINT)
    failures: list[tuple[str, str]] = []
    for check in CHECKS:
        try:
            problems = check.run(view)
        except Problem as exc:
            problems = [str(exc)]
        failures += [(check.name, p) for p in problems]
        if failures and check.name == "verdict-file":
            break
    if failures:
        names = sorted({name for name, _ in failures}, key=[c.name for c in CHECKS].index)
        detail = "; ".join(f"[{name}] {problem}" for name, problem in failures[:4])
        more = f" (+{len(failures) - 4} more)" if len(failures) > 4 else ""
        raise TamperedBundle(f"{label}: {len(failures)} claim(s) do not hold ({', '.join(names)}): {detail}{more}",
                             hint=HINT)
    return tuple(c.name for c in CHECKS)
