"""One meaning per flag, outputs where users expect them, nothing changed silently (issue 11, items 5 and 9)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from kit.cli import main
from kit.core.console import Progress
from kit.core.fsio import out_target
from kit.core.schema import CORPUS_COLUMNS
from kit.corpus import table
from kit.corpus.encoders import parse_cqs, parse_encoders
from kit.corpus.engine import non_finite
from kit.results import bundle
from kit.results.report import format_value
from kit.train.synthetic import synthetic_corpus


def test_repeated_encoders_and_cqs_are_used_once_with_a_note(capsys):
    assert parse_encoders("libx264,libx265,libx264") == ("libx264", "libx265")
    assert parse_cqs("30,22,30") == (22, 30)
    err = capsys.readouterr().err
    assert "--encoders: libx264 given more than once" in err and "--cqs: 30 given more than once" in err


def test_threads_and_jobs_mean_one_thing_on_every_command():
    """-j/--jobs: units side by side; --threads: threads inside each unit (the old spellings still work)."""
    def opts(name: str, *sub: str) -> dict[str, tuple[str, ...]]:
        cmd = main.commands[name]
        for s in sub:
            cmd = cmd.commands[s]
        return {p.name: tuple(p.opts) for p in cmd.params}

    corpus, train, score, pipeline = opts("corpus"), opts("train"), opts("score"), opts("pipeline")
    assert {"--jobs", "-j"} <= set(corpus["jobs"]) and {"--threads", "--vmaf-threads"} <= set(corpus["vmaf_threads"])
    assert {"--jobs", "-j", "--workers"} <= set(train["workers"]) and train["threads"] == ("--threads",)
    assert score["threads"] == ("--threads",)
    assert {"--jobs", "-j"} <= set(pipeline["jobs"]) and "workers" not in pipeline
    assert "--vmaf-threads" not in str(opts("refs", "pack"))


def test_out_means_a_folder_when_it_is_one(tmp_path, fake_run):
    assert out_target(str(tmp_path / "new") + "/", "x.tar.gz") == tmp_path / "new" / "x.tar.gz"
    assert out_target(tmp_path, "x.tar.gz") == tmp_path / "x.tar.gz"
    assert out_target(tmp_path / "file.tar.gz", "x.tar.gz") == tmp_path / "file.tar.gz"
    made = bundle.make_bundle(fake_run(tmp_path / "run"), str(tmp_path / "outbox") + "/")
    assert made.path.parent == tmp_path / "outbox" and made.path.name.startswith("ensemble-results-")
    r = CliRunner().invoke(main, ["merge", str(tmp_path / "run"), "--out", str(tmp_path / "merged") + "/"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "merged" / "corpus.parquet").is_file()
    r = CliRunner().invoke(main, ["merge", str(tmp_path / "run"), "--out", str(tmp_path / "merged")])  # existing dir
    assert r.exit_code == 0 and "merged/corpus.parquet" in r.output, r.output


def test_merge_never_leaves_an_older_conflicts_file_beside_a_new_result(tmp_path):
    a = synthetic_corpus(n_sources=3, frames=3, encoders=("libx264",), cqs=(20,))
    b = a.copy()
    b.loc[0, "vmaf"] += 1.0  # same key, another value: a conflict
    for name, df in (("a", a), ("b", b)):
        df.to_parquet(tmp_path / f"{name}.parquet", index=False)
    out = tmp_path / "m.parquet"
    first = table.merge([tmp_path / "a.parquet", tmp_path / "b.parquet"], out)
    assert first["conflicts"] == 1 and table.conflicts_path(out).is_file()
    second = table.merge([tmp_path / "a.parquet"], out)
    assert second["conflicts"] == 0 and second["conflicts_file"] is None
    assert not table.conflicts_path(out).exists()


def test_training_counts_what_it_leaves_out(tmp_path):
    """Non-finite rows and conflicting duplicates: said on stderr and recorded in loso/summary.json."""
    df = synthetic_corpus(n_sources=3, frames=4, encoders=("libx264",), cqs=(20, 40))
    df.loc[1, "adm2"] = np.inf
    df.loc[2, "vmaf"] = np.nan
    twin = df.iloc[[5]].copy()
    twin["vmaf"] += 3.0
    df = pd.concat([df, twin], ignore_index=True).astype(CORPUS_COLUMNS)
    df.to_parquet(tmp_path / "c.parquet", index=False)
    r = CliRunner().invoke(main, ["train", "--corpus", str(tmp_path / "c.parquet"), "--out-dir", str(tmp_path / "run"),
                                  "--seeds", "0", "--epochs", "2", "--hidden", "8", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "2 of 24 corpus rows have a NaN/inf" in r.output and "1 row key(s)" in r.output
    dropped = json.loads((tmp_path / "run" / "loso" / "summary.json").read_text())["corpus"]["dropped"]
    assert dropped == {"exact_duplicates": 0, "conflicting_keys": 1, "conflicting_rows": 1, "non_finite": 2}


def test_a_non_finite_value_fails_the_cell_check():
    rows = synthetic_corpus(n_sources=1, frames=3, encoders=("libx264",), cqs=(20,))
    assert non_finite(rows) is None
    rows.loc[1, "motion2"] = np.inf
    assert non_finite(rows) == "frame 1 motion2=inf"


@pytest.mark.parametrize(("value", "field", "shown"), [
    (100, "epochs", "100"), (100.0, "epochs", "100"), (1e-8, "eps", "1e-08"), (5e-4, "lr", "0.0005"),
    (0.98765432, "plcc", "0.9877"), (0.95, "per_seed_min", "0.95"), (float("nan"), "plcc", "NaN"), (True, "x", "True"),
])
def test_report_formats_each_field_as_what_it_is(value, field, shown):
    assert format_value(value, field) == shown


def test_progress_lines_say_their_unit(capsys):
    bar = Progress("train", unit="epochs")
    bar.tick(40, 200)
    assert "train: 40/200 epochs" in capsys.readouterr().err


def test_dist_help_lists_only_platforms_it_accepts():
    from kit.env.lockfiles import LOCKS  # --with-wheels names a pip lock (kit/locks/<LOCK>.txt)

    text = CliRunner().invoke(main, ["dist", "--help"]).output
    assert f"[{'|'.join(lock.name for lock in LOCKS)}]" in " ".join(text.split())
