"""`ensemble-kit compare LEAD COLLAB` with the fork's verdict as LEAD: does this run CONFIRM or REFUTE it?

LEAD is the fork's `PROMOTE.json` / `HOLD.json` (what `validate_ensemble_seeds.py` wrote for the
production ensemble), or a folder holding one (a fork loso dir, or model/tiny/ with its
`*_PROMOTE.json` and the members' sidecars, whose `training_recipe` then says how the lead trained).
COLLAB is this kit's run directory or results bundle.

CONFIRMS only when the same test gave the same answer: the same verdict, under the same thresholds and
seeds, with the same recipe where the lead's sidecars record it, and the fork's own exact rule agreeing
with ours on this run's numbers. Anything else REFUTES, and each reason says what differs and what to
do. Both gates' numbers are printed side by side; that block is the sentence a collaborator mails back.
(Run-vs-run comparison is `kit.results.compare`.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit.core.errors import BadInput
from kit.core.fsio import read_json
from kit.core.rundir import RunDir
from kit.results import contract
from kit.results.bundle import read_verdict
from kit.results.compare import opened_run
from kit.results.gate import fork_gate_passes
from kit.results.thresholds import HOLD, PROMOTE, Thresholds
from kit.train.codec import VOCABS

FORK_NAMES: tuple[str, ...] = (f"{PROMOTE}.json", f"{HOLD}.json")
# Recipe fields the lead's sidecars record (training_recipe) -> the TrainConfig field that sets them here.
RECIPE_FIELDS: dict[str, str] = {"epochs": "epochs", "lr": "lr", "weight_decay": "weight_decay",
                                 "batch_size": "batch_size", "hidden": "hidden", "dropout": "dropout"}
FORK_HINT = "pass the PROMOTE.json or HOLD.json that the fork's validate_ensemble_seeds.py wrote (schema_version 1)"


def fork_verdict_file(path: Path) -> Path | None:
    """The fork verdict file LEAD names, or None when LEAD is one of our runs (or bundles)."""
    p = Path(path)
    if p.is_file():
        return p if p.suffix == ".json" else None
    if not p.is_dir() or RunDir(p).verdict.is_file():
        return None
    found = sorted(q for q in p.iterdir() if q.is_file() and (q.name in FORK_NAMES or (
        q.name.startswith(contract.PRODUCTION_NAME) and q.name.endswith(tuple(f"_{n}" for n in FORK_NAMES)))))
    if len(found) > 1:
        raise BadInput(f"{p} holds {len(found)} fork verdict files ({', '.join(q.name for q in found)})",
                       hint="the fork's gate never removes the older one: pass the file its latest run wrote")
    return found[0] if found else None


@dataclass
class Side:
    """One gate's decision, normalised: the lead's fork verdict or this run's verdict.json."""

    verdict: str
    per_seed: dict[str, float]
    thresholds: Thresholds
    mean: float
    spread: float
    passes: dict[str, bool]  # mean / spread / per-seed condition results as that gate recorded them
    source: str
    recipe: dict[str, Any] = field(default_factory=dict)  # only what the side records
    vocab: str | None = None
    when: str = ""


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def _side(doc: dict[str, Any], source: str) -> Side:
    gate = doc["gate"]
    return Side(
        verdict=doc["verdict"],
        per_seed={str(k): _num(v) for k, v in sorted(gate["per_seed_plccs"].items(), key=lambda kv: int(kv[0]))},
        thresholds=Thresholds(float(gate["mean_plcc_threshold"]), float(gate["plcc_spread_max"]), float(gate["per_seed_min"])),
        mean=_num(gate["mean_plcc"]), spread=_num(gate["plcc_spread"]),
        passes={"mean": bool(gate["mean_plcc_pass"]), "spread": bool(gate["plcc_spread_pass"]),
                "per_seed": bool(gate["per_seed_pass"])},
        source=source, when=str(doc.get("generated_at_utc") or ""))


def lead_side(path: Path) -> Side:
    """The fork's verdict file (schema-checked), plus the recipe and vocabulary of the members beside it."""
    doc = read_json(path, what="the lead's fork verdict file")
    contract.check(doc, contract.FORK_VERDICT_SCHEMA, where=str(path), hint=FORK_HINT)
    side = _side(doc, path.name)
    for sidecar in sorted(path.parent.glob(f"{contract.PRODUCTION_NAME}_seed*.json")):
        member = read_json(sidecar, what="member sidecar")
        recipe = member.get("training_recipe") if isinstance(member, dict) else None
        if isinstance(recipe, dict):
            side.recipe = {k: recipe[k] for k in RECIPE_FIELDS if isinstance(recipe.get(k), int | float)}
            version = member.get("encoder_vocab_version")
            side.vocab = next((v.name for v in VOCABS.values() if v.version == version), None)
            break
    return side


def run_side(root: Path) -> Side:
    doc = read_verdict(root)  # its gate block has the fork's keys (and more): the same schema checks it
    contract.check(doc, contract.FORK_VERDICT_SCHEMA, where=str(RunDir(root).verdict),
                   hint="rerun `ensemble-kit verdict` in that run")
    side = _side(doc, "verdict.json")
    config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    side.recipe = {k: config[f] for k, f in RECIPE_FIELDS.items() if isinstance(config.get(f), int | float)}
    codec = doc.get("codec") if isinstance(doc.get("codec"), dict) else {}
    side.vocab = codec.get("vocab") if isinstance(codec.get("vocab"), str) else None
    return side


@dataclass
class Confirmation:
    lead: str
    collab: str
    lead_side: Side
    collab_side: Side
    reasons: list[str] = field(default_factory=list)  # why REFUTES; empty = CONFIRMS
    notes: list[str] = field(default_factory=list)

    @property
    def confirmed(self) -> bool:
        return not self.reasons

    @property
    def outcome(self) -> str:
        return "CONFIRMS" if self.confirmed else "REFUTES"

    def to_dict(self) -> dict[str, Any]:
        def side(s: Side) -> dict[str, Any]:
            return {"verdict": s.verdict, "source": s.source, "generated_at_utc": s.when, "mean_plcc": s.mean,
                    "plcc_spread": s.spread, "per_seed_plccs": s.per_seed, "thresholds": vars(s.thresholds),
                    "passes": s.passes, "recipe": s.recipe, "codec_vocab": s.vocab}

        return {"outcome": self.outcome, "lead": self.lead, "collab": self.collab, "reasons": self.reasons,
                "notes": self.notes, "lead_gate": side(self.lead_side), "collab_gate": side(self.collab_side)}


def _fmt(v: float, digits: int = 6) -> str:
    return "NaN" if not math.isfinite(v) else f"{v:.{digits}f}"


def _seeds(values: list[str]) -> str:
    return ",".join(values) or "none"


def judge(lead: Side, collab: Side, lead_name: str, collab_name: str) -> Confirmation:
    """Same verdict under the same test -> CONFIRMS; every difference in the test or the answer -> a reason."""
    c = Confirmation(lead=lead_name, collab=collab_name, lead_side=lead, collab_side=collab)
    if fork_gate_passes(lead.per_seed, lead.thresholds) != (lead.verdict == PROMOTE):
        c.reasons.append(f"the lead's {lead.source} says {lead.verdict}, but its own per-seed PLCCs give the opposite "
                         "under its own thresholds: the file was edited or is corrupt (ask the lead for the original)")
    if lead.verdict != collab.verdict:
        c.reasons.append(f"verdicts differ: the lead's fork gate said {lead.verdict}, this run's gate says {collab.verdict}")
    for name, (a, b) in {"--mean-plcc": (lead.thresholds.mean_plcc, collab.thresholds.mean_plcc),
                         "--spread-max": (lead.thresholds.plcc_spread_max, collab.thresholds.plcc_spread_max),
                         "--per-seed-min": (lead.thresholds.per_seed_min, collab.thresholds.per_seed_min)}.items():
        if a != b:
            c.reasons.append(f"the gates differ: the lead's {name} is {a:g}, this run's {b:g} (rerun "
                             f"`ensemble-kit verdict {name} {a:g}` on this run)")
    if list(lead.per_seed) != list(collab.per_seed):
        c.reasons.append(f"seeds differ: the lead gated seeds {_seeds(list(lead.per_seed))}, this run "
                         f"{_seeds(list(collab.per_seed))} (train with --seeds {_seeds(list(lead.per_seed))})")
    for key, value in lead.recipe.items():
        if key in collab.recipe and collab.recipe[key] != value:
            c.reasons.append(f"the recipe differs: the lead's members were trained with {key} {value:g}, this run "
                             f"with {collab.recipe[key]:g} (train with --{key.replace('_', '-')} {value:g})")
    if lead.vocab and collab.vocab and lead.vocab != collab.vocab:
        c.reasons.append(f"the codec vocabularies differ: the lead's members use {lead.vocab}, this run {collab.vocab} "
                         f"(train with --codec-vocab {lead.vocab})")
    fork_says = PROMOTE if fork_gate_passes(collab.per_seed, collab.thresholds) else HOLD
    if fork_says != collab.verdict:
        c.reasons.append(f"at a float boundary: this run's numbers give {collab.verdict} under ensemble-kit's 1e-12 "
                         f"tolerance but {fork_says} under the fork's exact comparisons, which is the lead's gate")
    if not lead.recipe:
        c.notes.append("the lead's training recipe is unknown (no member sidecars beside its verdict file): "
                       "pass the folder holding both to check it too")
    if math.isfinite(lead.mean) and math.isfinite(collab.mean):
        c.notes.append(f"mean PLCC differs by {collab.mean - lead.mean:+.6f} (different boxes and corpora are "
                       "expected to differ; the verdict is what must agree)")
    return c


def confirm(lead_file: Path, collab: Path) -> Confirmation:
    """The lead's fork verdict vs this kit's run (directory or bundle)."""
    lead = lead_side(Path(lead_file))
    with opened_run(Path(collab)) as root:
        other = run_side(root)
    return judge(lead, other, str(lead_file), str(collab))


def confirmation_lines(c: Confirmation) -> list[str]:
    """Reasons first, then both gates side by side: what the collaborator mails back."""
    a, b = c.lead_side, c.collab_side
    lead = f"the lead's {a.verdict} ({c.lead}{', ' + a.when if a.when else ''})"
    if c.confirmed:
        head = f"{c.outcome}: this run ({c.collab}) confirms {lead}: this run says {b.verdict} under the same gate " \
               f"and seeds {_seeds(list(a.per_seed))}"
    else:  # the verdicts may even agree (another recipe): say why it cannot count, and what this run's gate said
        why = f"{len(c.reasons)} reason(s) below" if len(c.reasons) != 1 else c.reasons[0]
        head = f"{c.outcome}: this run ({c.collab}) does not confirm {lead}: {why}; this run's own gate says {b.verdict}"
    lines = [head]
    lines += [f"  reason: {r}" for r in c.reasons]
    lines += [f"  note: {n}" for n in c.notes]

    def passed(ok: bool) -> str:
        return "pass" if ok else "FAIL"

    t, u = a.thresholds, b.thresholds
    rows = [("", "lead (fork gate)", "this run (ensemble-kit)"),
            ("verdict", a.verdict, b.verdict),
            (f"mean PLCC (>= {t.mean_plcc:g} / {u.mean_plcc:g})", f"{_fmt(a.mean)} {passed(a.passes['mean'])}",
             f"{_fmt(b.mean)} {passed(b.passes['mean'])}"),
            (f"seed spread (<= {t.plcc_spread_max:g} / {u.plcc_spread_max:g})",
             f"{_fmt(a.spread)} {passed(a.passes['spread'])}", f"{_fmt(b.spread)} {passed(b.passes['spread'])}"),
            (f"every seed (>= {t.per_seed_min:g} / {u.per_seed_min:g})", passed(a.passes["per_seed"]),
             passed(b.passes["per_seed"]))]
    for seed in sorted(set(a.per_seed) | set(b.per_seed), key=int):
        rows.append((f"seed {seed}", _fmt(a.per_seed.get(seed, math.nan)), _fmt(b.per_seed.get(seed, math.nan))))
    for key in RECIPE_FIELDS:
        if key in a.recipe or key in b.recipe:
            rows.append((f"recipe {key}", f"{a.recipe[key]:g}" if key in a.recipe else "?",
                         f"{b.recipe[key]:g}" if key in b.recipe else "?"))
    if a.vocab or b.vocab:
        rows.append(("codec vocab", a.vocab or "?", b.vocab or "?"))
    width = max(len(r[0]) for r in rows)
    lines += [f"  {r[0]:<{width}}  {r[1]:<18}  {r[2]}" for r in rows]
    return lines
