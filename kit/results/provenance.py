"""One run is one consistent thing: what each step consumed, and the check that a run's files belong together.

Every step records, in what it writes, the identity of what it consumed:

    train    loso/summary.json     corpus.sha256: the content hash of the rows it trained on (+ config, seeds)
    verdict  verdict.json          inputs: {loso: sha256 of loso/summary.json, corpus_sha256}
    export   models/ensemble.json  inputs: {verdict: the verdict's identity, loso, corpus_sha256}
    report   report/inputs.json    inputs: {verdict, loso, corpus_sha256}

`check` compares each record with what is on disk now. `verdict`, `export`, `report` and `bundle` call it
first, whether run alone or by `ensemble-kit pipeline`, and refuse (bad input) with the exact difference
and the command that redoes the stale step: a corpus re-run with other cqs after training, a verdict
about other LOSO results, models exported under an earlier verdict (a HOLD never ships models exported
under an earlier PROMOTE), a report of an older verdict. Records an older kit did not write are checked
as far as what it did write allows.

Light on purpose (no pandas at import): the bundle module imports it and the CLI imports the bundle
module at start-up; the corpus content hash is computed by `corpus_id`, which loads pandas when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit.core.errors import BadInput
from kit.core.fsio import read_json, sha256_file, write_json
from kit.core.ids import digest, shorten
from kit.core.rundir import RunDir

# Written into a verdict.json, ensemble.json or report/inputs.json: what that step consumed.
INPUTS_KEY = "inputs"
# Fields of verdict.json that say when it was written, not what it decided: not part of its identity.
VERDICT_TIME_FIELDS: tuple[str, ...] = ("generated_at_utc",)


def loso_id(rd: RunDir) -> str | None:
    """The identity of the LOSO results in a run: the sha256 of loso/summary.json (None when absent)."""
    return sha256_file(rd.loso_summary) if rd.loso_summary.is_file() else None


def verdict_id(doc: dict[str, Any]) -> str:
    """The identity of a decision: verdict.json's content without the time it was written, so rewriting
    the same verdict keeps the models and report made under it."""
    return digest({k: v for k, v in doc.items() if k not in VERDICT_TIME_FIELDS})


def corpus_id(path: Path) -> str:
    """The content hash of a corpus file as training computes it (the rows, deduplicated and normalised)."""
    # pandas (through kit.train.data): imported here so importing this module stays light for the CLI
    from kit.corpus.table import corpus_sha256
    from kit.train.data import load_corpus

    return corpus_sha256(load_corpus(path, quiet=True))


def verdict_inputs(rd: RunDir, corpus_sha256: str | None) -> dict[str, Any]:
    """What `verdict` records in verdict.json: the LOSO results it decided on and their corpus."""
    return {"loso": loso_id(rd), "corpus_sha256": corpus_sha256}


def downstream_inputs(rd: RunDir, verdict: dict[str, Any]) -> dict[str, Any]:
    """What `export` (in ensemble.json) and `report` (in report/inputs.json) record: the verdict they
    were made under, and what that verdict was decided on."""
    recorded = verdict.get(INPUTS_KEY) if isinstance(verdict.get(INPUTS_KEY), dict) else {}
    return {"verdict": verdict_id(verdict), "verdict_name": verdict.get("verdict"),
            "verdict_generated_at_utc": verdict.get("generated_at_utc"),
            "loso": recorded.get("loso", loso_id(rd)), "corpus_sha256": corpus_sha(verdict)}


def write_report_inputs(rd: RunDir, verdict: dict[str, Any]) -> Path:
    write_json(rd.report_inputs, {INPUTS_KEY: downstream_inputs(rd, verdict)})
    return rd.report_inputs


# ---- the check -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stale:
    """One step's output that was not made from what is on disk now."""

    what: str  # the exact difference
    fix: str  # the command that redoes the stale step

    def error(self) -> BadInput:
        return BadInput(self.what, hint=self.fix)


def corpus_sha(doc: dict[str, Any]) -> str | None:
    """The corpus content sha256 a verdict or LOSO summary (`corpus.sha256`) or an ensemble.json
    (`corpus_sha256`) says it was made from."""
    if isinstance(doc.get("corpus_sha256"), str):
        return doc["corpus_sha256"]
    corpus = doc.get("corpus")
    return corpus.get("sha256") if isinstance(corpus, dict) and isinstance(corpus.get("sha256"), str) else None


def _rows(doc: dict[str, Any]) -> str:
    corpus = doc.get("corpus")
    n = corpus.get("n_rows") if isinstance(corpus, dict) else None
    return f" ({n} rows)" if isinstance(n, int) else ""


def _read(path: Path, what: str) -> dict[str, Any]:
    doc = read_json(path, what=what)
    if not isinstance(doc, dict):
        raise BadInput(f"{path} is not a JSON object", hint=f"rerun the step that writes {path.name}")
    return doc


def _describe_verdict(doc: dict[str, Any]) -> str:
    return f"{doc.get('verdict_name') or doc.get('verdict') or '?'} of {doc.get('verdict_generated_at_utc') or doc.get('generated_at_utc') or '?'}"


def _made_under(what: str, made: str, verdict: dict[str, Any]) -> str:
    """`what` was made under verdict `made`, not under verdict.json; said so even when both read alike."""
    now = _describe_verdict(verdict)
    if made == now:  # same name and time, other content (e.g. another run's records)
        return f"{what} another verdict than verdict.json (both {now}, but not the same decision)"
    return f"{what} verdict {made}, but verdict.json is now {now}"


def problems(rd: RunDir, *, corpus: Path | None = None, verdict: bool = True, models: bool = True,
             report: bool = True, corpus_sha256: str | None = None) -> list[Stale]:
    """Every way the run's files do not belong together, upstream first (empty: one consistent run).

    Checked when both sides exist: the corpus (`corpus`, default the run's corpus.parquet) against what
    loso/ was trained on; verdict.json against loso/ and the corpus; models/ and report/ against the
    verdict. `verdict`/`models`/`report` False leave that part out (a step does not check its own
    outputs before it rewrites them). `corpus_sha256`: the corpus's content hash when the caller has it
    already (`verify` streams it), so the corpus is not loaded again.
    """
    root = rd.root
    found: list[Stale] = []
    corpus_path = Path(corpus) if corpus is not None else rd.corpus
    summary = _read(rd.loso_summary, "loso/summary.json") if rd.loso_summary.is_file() else None
    trained_on = corpus_sha(summary) if summary else None
    here = (corpus_sha256 or corpus_id(corpus_path)) if corpus_path.is_file() and (trained_on or verdict) else None
    if summary and trained_on and here and trained_on != here:
        found.append(Stale(
            f"{rd.loso_dir} was trained on corpus {shorten(trained_on)}{_rows(summary)}, but {corpus_path} now holds "
            f"corpus {shorten(here)}: the corpus was rebuilt (other encoders, cqs or sources?) after training",
            f"rerun `ensemble-kit train --out-dir {root}` and the steps after it, or put back the corpus it was trained on"))
        return found  # everything downstream is stale too; one line says what to redo first
    doc = _read(rd.verdict, "verdict.json") if verdict and rd.verdict.is_file() else None
    if doc is not None:
        recorded = doc.get(INPUTS_KEY) if isinstance(doc.get(INPUTS_KEY), dict) else None
        now = loso_id(rd)
        if recorded is not None and now is not None and recorded.get("loso") != now:
            found.append(Stale(
                f"verdict.json ({doc.get('verdict')}) was decided on other LOSO results than those now in {rd.loso_dir}",
                f"rerun `ensemble-kit verdict --out-dir {root}` (with your thresholds)"))
        elif (decided_on := corpus_sha(doc)) and (here or trained_on) and decided_on != (trained_on or here):
            found.append(Stale(
                f"verdict.json ({doc.get('verdict')}) is about corpus {shorten(decided_on)}{_rows(doc)}, but "
                f"{'loso/ was trained on' if trained_on else f'{corpus_path} holds'} corpus {shorten(trained_on or here)}",
                f"rerun `ensemble-kit train --out-dir {root}`, then `ensemble-kit verdict --out-dir {root}`"))
        if found:
            return found
    if doc is not None and models and rd.ensemble_json.is_file():
        ensemble = _read(rd.ensemble_json, "models/ensemble.json")
        if (stale := _stale_models(rd, ensemble, doc)) is not None:
            found.append(stale)
    if doc is not None and report and rd.report_index.is_file():
        if not rd.report_inputs.is_file():
            found.append(Stale(f"{rd.report_dir} does not say which verdict it shows (made by an older kit, or "
                               "interrupted)", f"rerun `ensemble-kit report --out-dir {root}`"))
        else:
            made = _read(rd.report_inputs, "report/inputs.json").get(INPUTS_KEY) or {}
            if made.get("verdict") != verdict_id(doc):
                found.append(Stale(
                    _made_under(f"{rd.report_dir} shows", _describe_verdict(made), doc),
                    f"rerun `ensemble-kit report --out-dir {root}`"))
    return found


def _stale_models(rd: RunDir, ensemble: dict[str, Any], verdict: dict[str, Any]) -> Stale | None:
    """models/ belong to this verdict only if they were exported under it (same decision, same corpus)."""
    made = ensemble.get(INPUTS_KEY) if isinstance(ensemble.get(INPUTS_KEY), dict) else None
    if made is not None:
        same = made.get("verdict") == verdict_id(verdict)
        under = _describe_verdict(made)
    else:  # an older kit's ensemble.json: its gate snapshot says which verdict it was exported under
        snap = ensemble.get("gate") if isinstance(ensemble.get("gate"), dict) else {}
        same = (snap.get("verdict"), snap.get("generated_at_utc")) == (verdict.get("verdict"), verdict.get("generated_at_utc"))
        under = f"{snap.get('verdict') or '?'} of {snap.get('generated_at_utc') or '?'}"
    ens_corpus, verdict_corpus = corpus_sha(ensemble), corpus_sha(verdict)
    if ens_corpus and verdict_corpus and ens_corpus != verdict_corpus:
        return Stale(f"{rd.models_dir} were exported from corpus {shorten(ens_corpus)}, but verdict.json is about "
                     f"corpus {shorten(verdict_corpus)}", _models_fix(rd, verdict))
    if not same:
        return Stale(_made_under(f"{rd.models_dir} were exported under", under, verdict), _models_fix(rd, verdict))
    return None


def _models_fix(rd: RunDir, verdict: dict[str, Any]) -> str:
    if verdict.get("verdict") == "PROMOTE":
        return f"rerun `ensemble-kit export --out-dir {rd.root}` to export under this verdict"
    return (f"a HOLD ships no models: move {rd.models_dir} out of the run directory (or rerun `ensemble-kit verdict "
            f"--out-dir {rd.root}`, which moves them aside)")


def check(rd: RunDir, **parts: Any) -> None:
    """Bad input naming the first way the run's files do not belong together (see `problems`)."""
    found = problems(rd, **parts)
    if found:
        raise found[0].error()


def set_aside_outdated(rd: RunDir, verdict: dict[str, Any]) -> None:
    """After a new verdict: models/ and report/ made under another verdict no longer belong to the run.
    They are moved under .pipeline/stale/ (never deleted), so no HOLD ships models of an earlier PROMOTE."""
    if rd.ensemble_json.is_file():
        ensemble = _read(rd.ensemble_json, "models/ensemble.json")
        if _stale_models(rd, ensemble, verdict) is not None:
            rd.move_aside(rd.models_dir, f"exported under an earlier verdict, not this {verdict.get('verdict')}"
                          + ("; rerun `ensemble-kit export` to export under it" if verdict.get("verdict") == "PROMOTE" else ""))
    elif rd.models_dir.is_dir() and any(rd.models_dir.iterdir()):
        rd.move_aside(rd.models_dir, "no ensemble.json: not a whole export")
    if rd.report_index.is_file():
        made = _read(rd.report_inputs, "report/inputs.json").get(INPUTS_KEY) if rd.report_inputs.is_file() else None
        if not isinstance(made, dict) or made.get("verdict") != verdict_id(verdict):
            rd.move_aside(rd.report_dir, "a report of an earlier verdict; rerun `ensemble-kit report`")
