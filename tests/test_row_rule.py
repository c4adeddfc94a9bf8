"""The one row rule (kit.corpus.rows): both corpus formats refuse the same implausible values, each bound is
physically justified (docs/corpus.md), a bad row is ONE error line naming file, row, column and value (exit
2), and --drop-invalid drops and counts it. Real corpora pass (the demo's: test_pipeline; synthetic here)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from kit.cli import main
from kit.core.errors import BadInput
from kit.core.schema import FEATURES
from kit.corpus import rows, table
from kit.corpus.encoders import ENCODERS
from kit.train.synthetic import synthetic_corpus

# (column, value, encoder of the row, phrase the error line carries): every bound of the rule, just outside.
OUTSIDE = [
    ("cq", 52, "libx264", "cq is 52, outside 0..51 (libx264's cq range"),
    ("cq", -1, "libx264", "cq is -1, outside 0..51"),
    ("cq", 0, "libsvtav1", "cq is 0, outside 1..63 (libsvtav1's"),
    ("cq", 64, "x264-from-the-fork", "cq is 64, outside 0..63 (every encoder's cq range"),
    ("cq", 2**62, "libx264", "cq is 4611686018427387904, outside 0..51"),
    ("frame_index", -1, "libx264", "frame_index is -1, outside 0..4294967295"),
    ("frame_index", 2**32, "libx264", "frame_index is 4294967296, outside"),
    ("enc_bytes", -1, "libx264", "enc_bytes is -1, outside 0.."),
    ("width", -2, "libx264", "width is -2, outside 0..65536"),
    ("height", 65537, "libx264", "height is 65537, outside 0..65536"),
    ("vmaf", -0.01, "libx264", "vmaf is -0.01, outside 0..100"),
    ("vmaf", 100.01, "libx264", "vmaf is 100.01, outside 0..100"),
    ("adm2", -0.1, "libx264", "adm2 is -0.1, outside 0..100"),
    ("adm2", 1e100, "libx264", "adm2 is 1e+100, outside 0..100"),
    ("vif_scale0", 15.5, "libx264", "vif_scale0 is 15.5, outside 0..15"),
    ("vif_scale3", -0.5, "libx264", "vif_scale3 is -0.5, outside 0..15"),
    ("motion2", -1.0, "libx264", "motion2 is -1.0, outside 0..256"),
    ("motion2", 256.5, "libx264", "motion2 is 256.5, outside 0..256"),
    ("fps", -25.0, "libx264", "fps is -25.0, outside >= 0"),
    ("score_time_ms", -3.0, "libx264", "score_time_ms is -3.0"),
    ("src", "", "libx264", "src is '', not a non-empty string"),
    ("encoder", "", "libx264", "encoder is '', not a non-empty string"),
]
# Just inside every bound: real values, kept.
INSIDE = [("cq", 51, "libx264"), ("cq", 63, "libsvtav1"), ("cq", 63, "x264-from-the-fork"), ("cq", 0, "libx264"),
          ("vmaf", 0.0, "libx264"), ("vmaf", 100.0, "libx264"), ("adm2", 1.002, "libx264"),
          ("vif_scale0", 1.000859, "libx264"), ("motion2", 255.75, "libx264"), ("frame_index", 0, "libx264"),
          ("fps", float("nan"), "libx264"), ("vmaf", float("nan"), "libx264")]
IDS = [f"{c}={v!r}@{e}"[:40] for c, v, e, _ in OUTSIDE]


def _corpus() -> pd.DataFrame:
    return table.canonical_order(synthetic_corpus(n_sources=3, frames=3, encoders=("libx264",), cqs=(22, 34)))


def _with(df: pd.DataFrame, row: int, column: str, value, encoder: str) -> pd.DataFrame:
    df = df.copy()
    if column in ("src", "encoder"):
        df[column] = df[column].astype(object)
    elif isinstance(value, int) and abs(value) > 2**53:
        df[column] = df[column].astype("int64")
    else:
        df[column] = df[column].astype(object if isinstance(value, str) else df[column].dtype)
    df.loc[row, "encoder"] = encoder
    df.loc[row, column] = value
    return df


def _one_error(r, *phrases: str) -> str:
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    for p in phrases:
        assert p in lines[0], (p, lines[0])
    assert "Traceback" not in r.output
    return lines[0]


@pytest.mark.parametrize(("column", "value", "encoder", "phrase"), OUTSIDE, ids=IDS)
def test_a_parquet_row_outside_the_rule_is_one_error_naming_file_row_column_value(tmp_path, column, value, encoder,
                                                                                   phrase):
    path = tmp_path / "bad.parquet"
    _with(_corpus(), 4, column, value, encoder).to_parquet(path, index=False)
    r = CliRunner().invoke(main, ["train", "--corpus", str(path), "--out-dir", str(tmp_path / "t")])
    _one_error(r, f"{path}: row 4: {phrase}", "--drop-invalid")
    assert not (tmp_path / "t" / "loso").exists()


@pytest.mark.parametrize(("column", "value", "encoder", "phrase"), OUTSIDE, ids=IDS)
def test_a_jsonl_row_outside_the_rule_is_the_same_error(tmp_path, column, value, encoder, phrase):
    row = {"src": "a", "encoder": encoder, "cq": 22, "frame_index": 0, "vmaf": 80.0, **dict.fromkeys(FEATURES, 0.5),
           column: value}
    good = {**row, "encoder": "libx264", "cq": 22, "src": "a", column: _corpus()[column].iloc[0]} \
        if column not in ("src", "encoder") else {**row, column: "ok"}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good, default=float) + "\n" + json.dumps(row) + "\n")
    r = CliRunner().invoke(main, ["corpus", "import", str(path), "--out-dir", str(tmp_path / "imp")])
    _one_error(r, f"{path}:2: {phrase.replace(repr(''), json.dumps(''))}", "--drop-invalid")
    assert not (tmp_path / "imp" / "corpus.parquet").exists()


@pytest.mark.parametrize(("column", "value", "encoder"), INSIDE, ids=[f"{c}={v!r}@{e}"[:40] for c, v, e in INSIDE])
def test_values_at_the_bounds_are_kept(column, value, encoder):
    assert rows.invalid_rows(_with(_corpus(), 4, column, value, encoder)).count == 0


def test_real_corpora_pass_the_rule():
    assert rows.invalid_rows(synthetic_corpus(n_sources=4, frames=20, encoders=tuple(ENCODERS))).count == 0


def test_merge_drop_invalid_drops_and_counts_parquet_rows(tmp_path):
    path = tmp_path / "bad.parquet"
    df = _with(_with(_corpus(), 2, "cq", 2**62, "libx264"), 5, "adm2", 1e100, "libx264")
    df.to_parquet(path, index=False)
    out = tmp_path / "merged.parquet"
    _one_error(CliRunner().invoke(main, ["merge", str(path), "--out", str(out)]), f"{path}: row 2: cq",
               "and 1 more invalid row(s)")
    r = CliRunner().invoke(main, ["merge", str(path), "--out", str(out), "--drop-invalid", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["invalid_rows_dropped"] == 2 and report["rows"] == len(df) - 2
    assert "row 2: cq is 4611686018427387904" in report["invalid_row_examples"][0]
    assert pd.read_parquet(out)["adm2"].max() <= 1.0


def test_train_drop_invalid_records_the_dropped_parquet_row(tmp_path):
    path = tmp_path / "bad.parquet"
    _with(_corpus(), 1, "cq", 2**62, "libx264").to_parquet(path, index=False)
    out = tmp_path / "t"
    r = CliRunner().invoke(main, ["train", "--corpus", str(path), "--out-dir", str(out), "--drop-invalid",
                                  "--epochs", "1", "--hidden", "4", "--seeds", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "loso" / "summary.json").read_text())
    assert json.dumps(summary).count("4611686018427387904") == 1  # the example, never a trained cq
    assert '"invalid_rows_dropped": 1' in json.dumps(summary)


def test_the_streamed_pass_checks_every_batch_and_counts_rows_across_them(tmp_path, monkeypatch):
    """verify hashes a bundle's corpus in batches: a bad row in a later batch is named by its row in the file."""
    monkeypatch.setattr(table, "STREAM_BATCH_ROWS", 4)
    path = tmp_path / "corpus.parquet"
    df = _corpus()
    df.loc[9, "motion2"] = 1e100  # keeps the row order: the streamed path, not the loader
    table.write_corpus(df, path)
    with pytest.raises(BadInput, match=r"corpus.parquet: row 9: motion2 is 1e\+100, outside 0..256"):
        table.streamed_corpus_sha256(path)
    table.write_corpus(_corpus(), path)
    assert table.streamed_corpus_sha256(path) == table.corpus_sha256(_corpus())


def test_huge_python_integers_are_compared_not_overflowed():
    df = pd.DataFrame({"cq": np.array([10**40, 22], dtype=object), "encoder": ["libx264", "libx264"]})
    found = rows.invalid_rows(df)
    assert found.mask.tolist() == [True, False] and "a huge integer" in found.reason(0)
