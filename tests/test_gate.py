"""The PROMOTE/HOLD gate: thresholds, NaN folds, one failing seed, the exact-threshold edge, order."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime

import pandas as pd
import pytest
from click.testing import CliRunner

from kit.cli import main
from kit.results.gate import decide, write_verdict, write_verdict_file
from kit.results.thresholds import GATE_EPS, HOLD, PROMOTE, Thresholds
from kit.train.config import TrainConfig
from kit.train.loso_files import PREDICTION_COLUMNS, LosoResult, write_loso


def _loso(per_fold: dict[int, list[float]]) -> LosoResult:
    rows = []
    for seed, plccs in per_fold.items():
        for k, v in enumerate(plccs):
            rows.append({"seed": seed, "fold_src": f"src{k}", "fold_src_sha256": f"{k:064x}", "plcc": v,
                         "srocc": v, "krocc": v, "rmse": 1.0, "n_frames": 10, "n_encodes": 2,
                         "n_train": 10 * (len(plccs) - 1)})
    return LosoResult(seeds=tuple(sorted(per_fold)), config=TrainConfig(epochs=1), folds=pd.DataFrame(rows),
                      predictions=pd.DataFrame(columns=list(PREDICTION_COLUMNS)), corpus={"sha256": "c" * 64, "n_rows": 30, "n_sources": 3},
                      fingerprint={"platform": "test"}, fingerprint_id="f" * 16)


def test_promote_when_all_conditions_hold():
    v = decide({0: 0.97, 1: 0.968, 2: 0.971})
    assert v.verdict == PROMOTE and v.gate["passed"] and v.recommendation.startswith("PROMOTE")


def test_one_failing_seed_holds_and_is_named():
    v = decide({0: 0.9512, 1: 0.9499, 2: 0.9520})
    assert v.verdict == HOLD
    assert v.gate["failing_seeds"] == [1]
    assert v.gate["mean_plcc_pass"] and v.gate["plcc_spread_pass"] and not v.gate["per_seed_pass"]
    assert "seed 1 (0.9499) below 0.95" in v.recommendation


def test_low_mean_says_by_how_much():
    v = decide({0: 0.90, 1: 0.90})
    assert v.verdict == HOLD and "0.0500 below 0.95" in v.recommendation


def test_spread_exactly_at_threshold_passes_and_just_over_fails():
    at = decide({0: 0.955, 1: 0.950})  # 0.955 - 0.950 = 0.0050000000000000044 in floats
    assert at.gate["plcc_spread"] != 0.005  # the float edge is real...
    assert at.gate["plcc_spread_pass"] and at.verdict == PROMOTE  # ...and documented to pass
    over = decide({0: 0.9551, 1: 0.950})
    assert not over.gate["plcc_spread_pass"] and over.verdict == HOLD
    assert "exceeds 0.005 by 0.0001" in over.recommendation
    assert decide({0: 0.95 - GATE_EPS / 2, 1: 0.95}).verdict == PROMOTE
    assert decide({0: 0.95 - 1e-9, 1: 0.95}).verdict == HOLD


def test_nan_folds_are_left_out_and_counted():
    v = decide(_loso({0: [0.97, math.nan, 0.96], 1: [0.965, 0.966, 0.964], 2: [0.97, 0.96, 0.965]}))
    assert v.gate["nan_folds"] == 1 and v.nan_folds[0]["seed"] == 0
    assert v.gate["per_seed_plccs"]["0"] == pytest.approx(0.965)
    assert v.verdict == PROMOTE and "undefined PLCC left out" in v.recommendation


def test_a_seed_with_only_nan_folds_holds():
    v = decide(_loso({0: [math.nan, math.nan], 1: [0.97, 0.97]}))
    assert v.verdict == HOLD and v.gate["failing_seeds"] == [0]
    assert math.isnan(v.gate["mean_plcc"]) and not v.gate["plcc_spread_pass"]


def test_order_independence():
    per_fold = {s: [0.95 + 0.001 * ((s * 7 + k * 3) % 11) for k in range(9)] for s in range(5)}
    base = decide(_loso(per_fold)).gate
    rng = random.Random(0)
    for _ in range(5):
        seeds = list(per_fold)
        rng.shuffle(seeds)
        shuffled = {s: rng.sample(per_fold[s], len(per_fold[s])) for s in seeds}
        loso = _loso(shuffled)
        loso.folds = loso.folds.sample(frac=1.0, random_state=rng.randrange(1000))
        assert decide(loso).gate == base


def test_verdict_file_is_deterministic_apart_from_the_timestamp(tmp_path):
    loso = _loso({0: [0.97, 0.96, 0.965], 1: [0.97, 0.96, 0.965]})
    a = write_verdict_file(tmp_path / "a.json", decide(loso), loso, now=datetime(2026, 1, 1, tzinfo=UTC))
    b = write_verdict_file(tmp_path / "b.json", decide(loso), loso, now=datetime(2026, 1, 1, tzinfo=UTC))
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert a == b
    for key in ("schema_version", "verdict", "generated_at_utc", "seeds", "gate", "folds", "corpus", "config",
                "fingerprint", "recommendation"):
        assert key in a
    for key in ("mean_plcc", "mean_plcc_threshold", "mean_plcc_pass", "plcc_spread", "plcc_spread_max",
                "plcc_spread_pass", "per_seed_plccs", "per_seed_min", "per_seed_pass", "failing_seeds", "passed"):
        assert key in a["gate"]


def test_thresholds_are_flags_and_exit_codes(tmp_path):
    loso = _loso({0: [0.97, 0.96, 0.965], 1: [0.96, 0.95, 0.955]})
    write_loso(loso, tmp_path)
    runner = CliRunner()
    fork_files = lambda: sorted(p.name for p in (tmp_path / "loso").glob("*.json") if p.stem in (PROMOTE, HOLD))  # noqa: E731
    hold = runner.invoke(main, ["verdict", "--out-dir", str(tmp_path)])
    assert hold.exit_code == 1, hold.output
    assert json.loads((tmp_path / "verdict.json").read_text())["verdict"] == HOLD
    assert fork_files() == ["HOLD.json"]
    ok = runner.invoke(main, ["verdict", "--out-dir", str(tmp_path), "--spread-max", "0.02"])
    assert ok.exit_code == 0, ok.output
    doc = json.loads((tmp_path / "verdict.json").read_text())
    assert doc["verdict"] == PROMOTE and doc["gate"]["plcc_spread_max"] == 0.02
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loso", "verdict.json"]  # one verdict file, never two
    assert fork_files() == ["PROMOTE.json"]  # and one fork view of it, never a stale HOLD beside it
    assert runner.invoke(main, ["verdict", "--out-dir", str(tmp_path)]).exit_code == 1
    assert fork_files() == ["HOLD.json"]  # the fork's gate would leave the old PROMOTE.json here; we do not
    # the pipeline's spelling of the same thresholds works here too
    alias = runner.invoke(main, ["verdict", "--out-dir", str(tmp_path), "--gate-plcc-spread-max", "0.001"])
    assert alias.exit_code == 1, alias.output
    missing = runner.invoke(main, ["verdict", "--out-dir", str(tmp_path / "nothing")])
    assert missing.exit_code == 2


def test_write_verdict_run_dir_api(tmp_path):
    write_loso(_loso({0: [0.97, 0.96], 1: [0.97, 0.96]}), tmp_path)
    doc = write_verdict(tmp_path, **{"mean_plcc": 0.99})
    assert doc["verdict"] == HOLD and doc["gate"]["mean_plcc_threshold"] == 0.99
    assert Thresholds().mean_plcc == 0.95
