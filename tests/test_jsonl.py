"""Per-frame JSONL in and out: export -> import -> train gives the same corpus and verdict; every invalid row
is reported with its file:line (exit 2) or, with --drop-invalid, skipped and counted in the run's records;
the fork's minimal rows (its trainer's keys only) import."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from click.testing import CliRunner

from kit.cli import main
from kit.core.rundir import RunDir
from kit.core.schema import FEATURES
from kit.corpus import legacy, table
from kit.train.synthetic import synthetic_corpus

FORK_KEYS = ("src", "encoder", "cq", "frame_index", "vmaf", *FEATURES)  # what the fork's trainer requires


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    rd = RunDir(tmp_path_factory.mktemp("run"))
    table.write_corpus(synthetic_corpus(n_sources=3, frames=4, encoders=("libx264", "h264_nvenc"), cqs=(22, 34)), rd.corpus)
    return rd


def _good_row(**change) -> str:
    row = {"src": "a", "encoder": "libx264", "cq": 22, "frame_index": 0, "vmaf": 80.0, **dict.fromkeys(FEATURES, 0.5)}
    row.update(change)
    return json.dumps(row)


def test_export_import_train_gives_the_same_corpus_and_verdict(run_dir, tmp_path):
    runner = CliRunner()
    jsonl = tmp_path / "corpus.jsonl"
    assert runner.invoke(main, ["corpus", "export", str(run_dir.root), "--out", str(jsonl)]).exit_code == 0
    train = ["--epochs", "2", "--hidden", "8", "--seeds", "0,1", "--quiet"]
    verdicts = {}
    for name, corpus in (("parquet", run_dir.corpus), ("jsonl", jsonl)):
        out = tmp_path / name
        r = runner.invoke(main, ["train", "--corpus", str(corpus), "--out-dir", str(out), *train])
        assert r.exit_code == 0, r.output
        runner.invoke(main, ["verdict", "--out-dir", str(out)])
        verdicts[name] = json.loads((out / "verdict.json").read_text())
    for key in ("corpus", "gate", "folds", "verdict", "codec"):
        assert verdicts["parquet"][key] == verdicts["jsonl"][key], key


def test_the_forks_minimal_rows_import(tmp_path):
    path = tmp_path / "fork.jsonl"
    path.write_text("".join(_good_row(src=f"clip{i % 3}", frame_index=i) + "\n" for i in range(6)))
    r = CliRunner().invoke(main, ["corpus", "import", str(path), "--out-dir", str(tmp_path / "imp"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["rows"] == 6


BAD_ROWS = [
    (_good_row(vmaf=None), "vmaf is null, not a finite number"),
    (_good_row(adm2="0.9"), 'adm2 is "0.9", not a finite number'),
    (_good_row(vmaf=True), "vmaf is true, not a finite number"),
    (_good_row().replace('"vmaf": 80.0', '"vmaf": NaN'), "vmaf is nan, not a finite number"),
    (_good_row(cq=22.7), "cq is 22.7, not an integer"),
    (_good_row(cq=True), "cq is true, not an integer"),
    (_good_row().replace('"cq": 22', '"cq": 1e400'), "cq is inf, not an integer"),
    (_good_row(cq=10**40), "cq is a huge integer, outside 0..63"),
    (_good_row(frame_index=-1), "frame_index is -1, outside 0..4294967295"),
    (json.dumps({"src": "a"}), "lacks encoder, cq"),
    ('{"src": "a", "encod', "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_ROWS, ids=[r for _, r in BAD_ROWS])
def test_an_invalid_row_is_one_error_naming_its_line(tmp_path, line, reason):
    path = tmp_path / "bad.jsonl"
    path.write_text(_good_row() + "\n" + line + "\n" + _good_row(frame_index=1) + "\n")
    r = CliRunner().invoke(main, ["corpus", "import", str(path), "--out-dir", str(tmp_path / "imp")])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}:2: {reason}"), lines
    assert "--drop-invalid" in lines[0] and not (tmp_path / "imp" / "corpus.parquet").exists()


def test_drop_invalid_skips_counts_and_records(run_dir, tmp_path):
    lines = list(legacy.jsonl_lines(table.canonical_order(pd.read_parquet(run_dir.corpus))))
    bad = [BAD_ROWS[0][0], BAD_ROWS[4][0], BAD_ROWS[10][0]]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join([*lines[:3], *(b + "\n" for b in bad), *lines[3:]]))
    runner = CliRunner()
    r = runner.invoke(main, ["corpus", "import", str(path), "--out-dir", str(tmp_path / "imp")])
    assert r.exit_code == 2 and re.search(r"mixed.jsonl:4: .*and 2 more invalid row\(s\): .*mixed.jsonl:5: .*mixed.jsonl:6", r.output)
    r = runner.invoke(main, ["corpus", "import", str(path), "--out-dir", str(tmp_path / "imp"), "--drop-invalid", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["rows"] == len(lines) and report["invalid_rows_dropped"] == 3
    assert json.loads((tmp_path / "imp" / "corpus" / "import.json").read_text())["invalid_rows_dropped"] == 3
    r = runner.invoke(main, ["train", "--corpus", str(path), "--out-dir", str(tmp_path / "t"), "--drop-invalid",
                             "--epochs", "1", "--hidden", "4", "--seeds", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "skipped 3 invalid row(s)" in r.output
    summary = json.loads((tmp_path / "t" / "loso" / "summary.json").read_text())
    assert summary["corpus"]["invalid_rows_dropped"] == 3 and len(summary["corpus"]["invalid_row_examples"]) == 3
