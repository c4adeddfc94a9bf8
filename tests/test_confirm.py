"""`compare` with the fork's verdict as LEAD: CONFIRMS only for the same answer to the same test; each
difference is a reason (exit 1); a lead file of another shape is one error line (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from kit.cli import main
from kit.results.gate import write_verdict
from kit.train.config import TrainConfig
from kit.train.loso_files import PREDICTION_COLUMNS, LosoResult, write_loso

PRODUCTION = Path(__file__).resolve().parents[2] / "shared" / "fork-contract" / "production"
LEAD_PLCCS = {0: 0.9975, 1: 0.9972, 2: 0.9978, 3: 0.9969, 4: 0.9969}


@pytest.fixture(scope="module")
def lead_dir(tmp_path_factory) -> Path:
    """The fork's PROMOTE.json with its members' sidecars (model/tiny/ as the lead has it)."""
    if not PRODUCTION.is_dir():
        pytest.skip("../shared/fork-contract is absent (a user's clone): the lead's verdict comes from the fork's files")
    dest = tmp_path_factory.mktemp("lead")
    for p in PRODUCTION.glob("*.json"):
        shutil.copy(p, dest / p.name)
    return dest


def _run(root: Path, plccs: dict[int, float], config: TrainConfig | None = None, vocab: str = "v2", **gate) -> Path:
    """A run directory whose LOSO numbers are `plccs` (three folds each), gated by the real writer."""
    rows = [{"seed": s, "fold_src": f"src{k}", "fold_src_sha256": f"{k:064x}", "plcc": v + d, "srocc": v, "krocc": v,
             "rmse": 2.0, "n_frames": 10, "n_encodes": 2, "n_train": 20}
            for s, v in plccs.items() for k, d in enumerate((-1e-4, 0.0, 1e-4))]
    loso = LosoResult(seeds=tuple(plccs), config=config or TrainConfig(), folds=pd.DataFrame(rows),
                      predictions=pd.DataFrame(columns=list(PREDICTION_COLUMNS)), corpus={"sha256": "c" * 64},
                      codec={"vocab": vocab})
    write_loso(loso, root)
    write_verdict(root, **gate)
    return root


def _compare(lead, collab, *extra):
    return CliRunner().invoke(main, ["compare", str(lead), str(collab), *extra])


def test_the_same_answer_to_the_same_test_confirms(lead_dir, tmp_path):
    run = _run(tmp_path / "run", {s: v - 0.01 for s, v in LEAD_PLCCS.items()})
    for lead in (lead_dir, lead_dir / "PROMOTE.json"):
        r = _compare(lead, run)
        assert r.exit_code == 0, r.output
        lines = r.output.splitlines()
        assert lines[0].startswith("CONFIRMS: this run") and "under the same gate and seeds 0,1,2,3,4" in lines[0]
        assert not any("reason:" in line for line in lines)
        assert any(line.split()[:4] == ["mean", "PLCC", "(>=", "0.95"] and "0.997253 pass" in line for line in lines)
        assert any(line.split() == ["recipe", "epochs", "200", "200"] for line in lines)
    doc = json.loads(_compare(lead_dir, run, "--json").stdout)
    assert doc["outcome"] == "CONFIRMS" and doc["lead_gate"]["recipe"]["epochs"] == 200


@pytest.mark.parametrize(("setup", "reason"), [
    (dict(plccs={s: 0.93 for s in range(5)}), "verdicts differ: the lead's fork gate said PROMOTE, this run's gate says HOLD"),
    (dict(plcc_spread_max=0.02), "the gates differ: the lead's --spread-max is 0.005, this run's 0.02"),
    (dict(plccs={s: 0.99 for s in range(3)}), "seeds differ: the lead gated seeds 0,1,2,3,4, this run 0,1,2"),
    (dict(config=TrainConfig(epochs=100)), "the recipe differs: the lead's members were trained with epochs 200, this run "
                                           "with 100 (train with --epochs 200)"),
    (dict(vocab="v3"), "the codec vocabularies differ: the lead's members use v2, this run v3"),
    # 0.995 - 0.990 = 0.0050000000000000044: ensemble-kit's 1e-12 tolerance passes it, the fork's exact rule does not
    (dict(plccs={0: 0.995, 1: 0.99, 2: 0.99, 3: 0.99, 4: 0.99}), "at a float boundary: this run's numbers give PROMOTE "
                                                                   "under ensemble-kit's 1e-12 tolerance but HOLD"),
])
def test_every_difference_refutes_with_its_reason_first(lead_dir, tmp_path, setup, reason):
    setup = {"plccs": {s: 0.99 for s in range(5)}, **setup}
    run = _run(tmp_path / "run", **setup)
    r = _compare(lead_dir, run)
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("REFUTES:") and lines[1].startswith("  reason: ")
    assert any(reason in line for line in lines if line.startswith("  reason: ")), r.output


def test_an_edited_lead_verdict_refutes(lead_dir, tmp_path):
    lead = tmp_path / "lead"
    shutil.copytree(lead_dir, lead)
    doc = json.loads((lead / "PROMOTE.json").read_text())
    doc["gate"]["per_seed_plccs"]["2"] = 0.5  # the numbers now fail, the verdict still says PROMOTE
    (lead / "PROMOTE.json").write_text(json.dumps(doc))
    r = _compare(lead, _run(tmp_path / "run", {s: 0.99 for s in range(5)}))
    assert r.exit_code == 1 and "was edited or is corrupt" in r.output


def test_a_lead_without_sidecars_says_the_recipe_is_unknown(lead_dir, tmp_path):
    (tmp_path / "lead").mkdir()
    shutil.copy(lead_dir / "PROMOTE.json", tmp_path / "lead" / "fr_regressor_v2_ensemble_v1_seed_flip_PROMOTE.json")
    r = _compare(tmp_path / "lead", _run(tmp_path / "run", {s: 0.99 for s in range(5)}))
    assert r.exit_code == 0 and "the lead's training recipe is unknown" in r.output


def test_our_own_fork_file_can_be_the_lead(tmp_path):
    run = _run(tmp_path / "run", {s: 0.99 for s in range(5)})
    r = _compare(run / "loso" / "PROMOTE.json", run)
    assert r.exit_code == 0 and r.output.startswith("CONFIRMS"), r.output


@pytest.mark.parametrize(("content", "message"), [
    ({"schema_version": 2, "verdict": "PROMOTE", "seeds": [0], "gate": {}}, r"schema_version: 1 was expected"),
    ({"schema_version": 1, "verdict": "MAYBE", "seeds": [0], "gate": {}}, r"verdict: 'MAYBE' is not one of"),
    ({"schema_version": 1, "verdict": "PROMOTE", "seeds": [0], "gate": {"passed": True}}, r"gate: 'mean_plcc' is a required"),
    ("[1, 2]", r"\(top level\): \[1, 2\] is not of type 'object'"),
])
def test_a_lead_file_of_another_shape_is_one_error_line(tmp_path, content, message):
    import re

    lead = tmp_path / "PROMOTE.json"
    lead.write_text(content if isinstance(content, str) else json.dumps(content))
    r = _compare(lead, _run(tmp_path / "run", {0: 0.99}))
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), lines
    assert "validate_ensemble_seeds.py" in lines[0]


def test_a_folder_with_both_fork_verdicts_is_refused(tmp_path):
    (tmp_path / "PROMOTE.json").write_text("{}")
    (tmp_path / "HOLD.json").write_text("{}")
    r = _compare(tmp_path, tmp_path)
    assert r.exit_code == 2 and "holds 2 fork verdict files" in r.output
