"""The gate thresholds of a --corpus run or bundle travel: `train --corpus BUNDLE` records them in
loso/summary.json, and a later `verdict` on the new run decides with them unless its flags say otherwise
(issue 10's leftover). They are someone else's numbers: checked like the flags, a bad one is exit 2
naming the file and its key.
"""

from __future__ import annotations

import json
import math

import pytest
from bundle_edit import edit_json, edited
from click.testing import CliRunner

from kit.cli import main
from kit.core.errors import ExitCode
from kit.core.fsio import read_json
from kit.results import bundle
from kit.train.config import TrainConfig

TINY = TrainConfig(epochs=2, hidden=8)


@pytest.fixture
def hold_bundle(tmp_path, fake_run):
    """A HOLD run decided with mean_plcc 0.999 (conftest's fake_run), bundled."""
    return bundle.make_bundle(fake_run(tmp_path / "lead", verdict="HOLD", seeds=(0, 1), config=TINY)).path


def _invoke(argv):
    return CliRunner().invoke(main, argv)


def _one_error_line(result, *phrases):
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    return lines[0]


def test_verdict_after_train_corpus_bundle_uses_the_bundles_thresholds_and_flags_win(tmp_path, hold_bundle):
    check = tmp_path / "check"
    trained = _invoke(["train", "--corpus", str(hold_bundle), "--out-dir", str(check), "-q"])
    assert trained.exit_code == 0, trained.output
    assert "gate thresholds from" in trained.output and "mean_plcc 0.999" in trained.output
    summary = read_json(check / "loso" / "summary.json")
    assert summary["gate_thresholds"] == {"mean_plcc": 0.999, "plcc_spread_max": 0.005, "per_seed_min": 0.95}

    decided = _invoke(["verdict", "--out-dir", str(check)])
    doc = read_json(check / "verdict.json")
    assert doc["gate"]["mean_plcc_threshold"] == 0.999  # not the default 0.95
    assert doc["gate_thresholds_from"] == {"mean_plcc": "loso/summary.json", "plcc_spread_max": "loso/summary.json",
                                           "per_seed_min": "loso/summary.json"}
    assert decided.exit_code == ExitCode.HOLD, decided.output  # 2 epochs cannot reach a 0.999 mean PLCC
    assert "gate thresholds from loso/summary.json" in decided.output

    # an explicit flag wins and is recorded as such; the others still come from the bundle
    _invoke(["verdict", "--out-dir", str(check), "--spread-max", "0.01"])
    doc = read_json(check / "verdict.json")
    assert (doc["gate"]["mean_plcc_threshold"], doc["gate"]["plcc_spread_max"]) == (0.999, 0.01)
    assert doc["gate_thresholds_from"]["plcc_spread_max"] == "command line"
    assert doc["gate_thresholds_from"]["mean_plcc"] == "loso/summary.json"
    # even a flag typed with its default's value is the user's choice
    _invoke(["verdict", "--out-dir", str(check), "--mean-plcc", "0.95"])
    assert read_json(check / "verdict.json")["gate"]["mean_plcc_threshold"] == 0.95


def test_a_run_trained_on_a_plain_corpus_keeps_the_defaults(tmp_path, fake_run):
    lead = fake_run(tmp_path / "lead", config=TINY)
    check = tmp_path / "check"
    assert _invoke(["train", "--corpus", str(lead / "corpus.parquet"), "--out-dir", str(check), "-q"]).exit_code == 0
    assert "gate_thresholds" not in read_json(check / "loso" / "summary.json")
    _invoke(["verdict", "--out-dir", str(check)])
    doc = read_json(check / "verdict.json")
    assert doc["gate"]["mean_plcc_threshold"] == 0.95
    assert set(doc["gate_thresholds_from"].values()) == {"default"}


@pytest.mark.parametrize("value", [-0.1, math.nan, "0.005", True, None])
def test_a_bundle_cannot_carry_a_threshold_that_is_not_one(tmp_path, hold_bundle, value):
    """A forged bundle (manifest rehashed) with a negative/NaN/non-number spread: refused, naming the entry."""
    def forge(top):
        edit_json("verdict.json", lambda v: v["gate"].update(plcc_spread_max=value))(top)
        edit_json("run.json", lambda r: r["options"]["gate"].update(plcc_spread_max=value))(top)

    forged = edited(hold_bundle, tmp_path / "forged.tar.gz", forge, rehash_manifest=True)
    for argv in (["verify", str(forged)],
                 ["train", "--corpus", str(forged), "--out-dir", str(tmp_path / "check"), "-q"]):
        _one_error_line(_invoke(argv), "gate-reapplied", "verdict.json: gate threshold plcc_spread_max")
    assert not (tmp_path / "check" / "loso").exists()


def test_a_run_directory_or_summary_with_a_bad_threshold_is_named(tmp_path, fake_run):
    """A run directory is not verified as a bundle is: its recorded thresholds are still checked when carried."""
    lead = fake_run(tmp_path / "lead", config=TINY)
    verdict = read_json(lead / "verdict.json")
    verdict["gate"]["mean_plcc_threshold"] = math.nan
    (lead / "verdict.json").write_text(json.dumps(verdict))  # NaN: what Python's json writes and reads
    check = tmp_path / "check"
    _one_error_line(_invoke(["train", "--corpus", str(lead), "--out-dir", str(check), "-q"]),
                    f"{lead}: verdict.json: gate threshold mean_plcc_threshold nan is not a number from -1 to 1")

    # a carried threshold edited in loso/summary.json afterwards is refused by `verdict`, naming the file
    assert _invoke(["train", "--corpus", str(bundle.make_bundle(fake_run(tmp_path / "ok", config=TINY)).path),
                    "--out-dir", str(check), "-q"]).exit_code == 0
    summary = read_json(check / "loso" / "summary.json")
    summary["gate_thresholds"]["per_seed_min"] = -5
    (check / "loso" / "summary.json").write_text(json.dumps(summary))
    _one_error_line(_invoke(["verdict", "--out-dir", str(check)]),
                    "loso/summary.json: gate_thresholds: gate threshold per_seed_min -5 is not a number from -1 to 1")
    # a flag for every threshold needs none of the carried ones
    assert _invoke(["verdict", "--out-dir", str(check), "--mean-plcc", "0.9", "--spread-max", "0.01",
                    "--per-seed-min", "0.9"]).exit_code in (ExitCode.OK, ExitCode.HOLD)


def test_a_bundle_of_the_retrained_run_verifies_and_its_carried_thresholds_are_checked(tmp_path, hold_bundle):
    """runs/check (train --corpus BUNDLE, verdict) bundles and verifies; verdict.json saying a threshold came
    from loso/summary.json is a claim verify re-derives."""
    check = tmp_path / "check"
    assert _invoke(["train", "--corpus", str(hold_bundle), "--out-dir", str(check), "-q"]).exit_code == 0
    _invoke(["verdict", "--out-dir", str(check)])
    made = bundle.make_bundle(check, tmp_path / "out/").path
    assert _invoke(["verify", str(made)]).exit_code == 0
    forged = edited(made, tmp_path / "forged.tar.gz",
                    edit_json("loso/summary.json", lambda s: s["gate_thresholds"].update(mean_plcc=0.5)),
                    rehash_manifest=True)
    _one_error_line(_invoke(["verify", str(forged)]), "thresholds-recorded",
                    "verdict.json says its mean_plcc 0.999 came from loso/summary.json, which carries 0.5")
