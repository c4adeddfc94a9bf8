"""The one-command pipeline on the real corpus engine and trainer (tiny demo settings, seconds not minutes)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from kit import pipeline
from kit.cli import main
from kit.core.fsio import read_json
from kit.results import bundle, compare

# Tiny but real settings come from the `tiny_pipeline_args` fixture (tests/conftest.py), shared with test_dist.py.


def _run(*args: str):
    result = CliRunner().invoke(main, ["pipeline", *args])
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_pipeline_args) -> Path:
    out = tmp_path_factory.mktemp("pipeline") / "run"
    result = _run(*tiny_pipeline_args, "--out-dir", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_tiny_demo_pipeline_promotes_and_bundles(tiny_run):
    run = read_json(tiny_run / "run.json")
    assert run["schema"] == pipeline.RUN_SCHEMA and run["options"]["encoders"] == ["libx264"]
    assert run["options"]["cqs"] == [22, 34] and run["options"]["seeds"] == [0, 1]
    assert run["options"]["train"]["epochs"] == 20 and run["options"]["gate"]["mean_plcc"] == 0.5
    assert run["fingerprint_id"] and run["fingerprint"]["result_env"]["packages"]["torch"]["digest"]
    verdict = read_json(tiny_run / "verdict.json")
    assert verdict["verdict"] == "PROMOTE"
    (tarball,) = tiny_run.glob("ensemble-results-*.tar.gz")
    assert tarball.name.startswith(f"ensemble-results-{run['platform']}-{run['box_id']}-")
    checked = bundle.verify(tarball)
    names = {f["path"] for f in checked.manifest["files"]}
    assert {"run.json", "verdict.json", "corpus.parquet", "loso/folds.csv", "loso/summary.json",
            "models/ensemble.json", "report/index.html"} <= names
    assert {f"models/fr_regressor_v2_ensemble_v1_seed{s}.{ext}" for s in (0, 1) for ext in ("onnx", "json")} <= names
    # the fork's views travel too: its per-seed LOSO files, its verdict file, the registry rows
    assert {"loso/loso_seed0.json", "loso/loso_seed1.json", "loso/PROMOTE.json", "models/registry.rows.json"} <= names
    assert not any(n.startswith((".pipeline", "corpus/")) for n in names)  # bookkeeping and cells stay home
    assert compare.compare(tiny_run, tarball).reproduced


def test_rerun_resumes_without_redoing_anything(tiny_run, tiny_pipeline_args):
    (tarball,) = tiny_run.glob("ensemble-results-*.tar.gz")
    before = {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*") if p.is_file() and ".pipeline" not in p.parts}
    result = _run(*tiny_pipeline_args, "--out-dir", str(tiny_run))
    assert result.exit_code == 0, result.output
    for step in ("corpus", "train", "verdict", "export", "report", "bundle"):
        assert any(line.startswith("[") and f" {step} " in line and "(done earlier)" in line
                   for line in result.output.splitlines()), (step, result.output)
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before  # not one file rewritten
    assert result.output.strip().splitlines()[-1] == f"PROMOTE {tarball}"


def test_other_options_are_refused_not_mixed(tiny_run, tiny_pipeline_args):
    run_json = (tiny_run / "run.json").read_bytes()
    args = [a if a != "22,34" else "22,30,34" for a in tiny_pipeline_args]
    result = _run(*args, "--out-dir", str(tiny_run))
    assert result.exit_code == 2
    assert "resuming would mix results: cqs [22,34] -> [22,30,34]" in result.output
    assert "--fresh" in result.output
    assert (tiny_run / "run.json").read_bytes() == run_json


def test_fresh_moves_old_run_aside_and_hold_exits_1(tiny_run, tiny_pipeline_args, tmp_path):
    work = tmp_path / "run"
    shutil.copytree(tiny_run, work)
    old_models = sorted(p.name for p in (work / "models").iterdir())
    args = [a if a != "0.5" else "0.9999" for a in tiny_pipeline_args]  # a gate no tiny run passes
    result = _run(*args, "--out-dir", str(work), "--fresh")
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].startswith("HOLD ")
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert sorted(p.name for p in (aside / "models").iterdir()) == old_models  # nothing deleted
    assert read_json(aside / "verdict.json")["verdict"] == "PROMOTE"
    assert read_json(work / "verdict.json")["verdict"] == "HOLD"
    assert not (work / "models").exists()
    (tarball,) = work.glob("ensemble-results-*.tar.gz")
    assert not any(f["path"].startswith("models/") for f in bundle.verify(tarball).manifest["files"])
    # the lead's PROMOTE against this HOLD: DIVERGED, verdicts first
    cmp = compare.compare(tiny_run, tarball)
    assert not cmp.reproduced and cmp.reasons[0] == "verdicts differ: lead PROMOTE, collaborator HOLD"


def test_retraining_the_lead_bundle_gives_identical_plccs(tiny_run, tmp_path):
    """The lock's promise: the lead's corpus, retrained here (same environment), gives the same PLCCs."""
    (tarball,) = tiny_run.glob("ensemble-results-*.tar.gz")
    out = tmp_path / "retrain"
    result = CliRunner().invoke(main, ["train", "--corpus", str(tarball), "--out-dir", str(out), "--seeds", "0,1",
                                       "--epochs", "20", "--quiet"])
    assert result.exit_code == 0, result.output
    ours = pd.read_csv(tiny_run / "loso" / "folds.csv")
    theirs = pd.read_csv(out / "loso" / "folds.csv")
    pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
    assert (out / "loso" / "folds.csv").read_bytes() == (tiny_run / "loso" / "folds.csv").read_bytes()


def test_cli_flags_stay_in_step_with_the_gate_the_config_and_the_demo():
    """The pipeline's --gate-* and training flags are generated from Thresholds and TrainConfig; --help
    shows the defaults those dataclasses (and the demo's settings) really use."""
    from dataclasses import fields

    from kit.corpus import demo
    from kit.results.thresholds import GATE_DEFAULTS
    from kit.train.config import TrainConfig, flag_of

    cmd, verdict_cmd = main.commands["pipeline"], main.commands["verdict"]
    flags = {opt for p in cmd.params for opt in p.opts}
    assert {f"--gate-{name.replace('_', '-')}" for name in GATE_DEFAULTS} <= flags
    assert {flag_of(f.name) for f in fields(TrainConfig)} <= flags  # workers: the pipeline's -j/--jobs
    assert {p.name: p.default for p in verdict_cmd.params if p.name in GATE_DEFAULTS} == GATE_DEFAULTS
    help_text = " ".join(CliRunner().invoke(main, ["pipeline", "--help"]).output.split())  # unwrapped
    assert f"[default: {TrainConfig().epochs}; demo {demo.DEMO_TRAIN['epochs']}]" in help_text
    assert all(f"(default {v})" in help_text for v in GATE_DEFAULTS.values())


def test_sigterm_exits_130_and_the_rerun_finishes(tmp_path, tiny_pipeline_args):
    """A scheduler's SIGTERM mid-corpus: exit 130 with the resume hint; the same command then completes."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "kit", "pipeline", *tiny_pipeline_args, "--demo-frames", "24", "--out-dir", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "corpus" / "cells").is_dir() and any((out / "corpus" / "cells").glob("*.parquet")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before SIGTERM arrived (machine too fast for this timing)")
    assert proc.returncode == 130, stderr
    assert "rerun the same command to resume" in stderr
    assert "Traceback" not in stderr
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "[resuming]" in again.stderr


def test_failed_cells_exit_4_keep_the_rest_and_the_rerun_redoes_only_them(tmp_path, tiny_pipeline_args):
    """Fault injection: an ffmpeg whose encoder crashes at cq 34 while a 'broken' file exists."""
    import imageio_ffmpeg

    broken = tmp_path / "broken"
    broken.touch()
    fake = tmp_path / "ffmpeg"
    fake.write_text(f'#!/bin/bash\nif [ -f "{broken}" ] && [[ " $* " == *" -crf 34 "* ]]; then\n'
                    f'  echo "fake encoder crash: out of hardware sessions" >&2; exit 1\nfi\n'
                    f'exec "{imageio_ffmpeg.get_ffmpeg_exe()}" "$@"\n')
    fake.chmod(0o755)
    out = tmp_path / "run"
    args = [*tiny_pipeline_args, "--ffmpeg", str(fake), "--out-dir", str(out)]
    first = _run(*args)
    assert first.exit_code == 4, first.output
    assert "5 of 10 corpus cells failed" in first.output and "failures.jsonl" in first.output
    assert len(list((out / "corpus" / "cells").glob("*.parquet"))) == 5  # the good half is kept
    assert "fake encoder crash" in (out / "corpus" / "failures.jsonl").read_text()
    assert not (out / "verdict.json").exists()
    broken.unlink()  # "fix the cause"
    second = _run(*args)
    assert second.exit_code == 0, second.output
    assert "5 cells encoded + scored, 5 reused" in second.output


def test_bundles_from_two_boxes_merge_and_retrain(tiny_run, tiny_pipeline_args, tmp_path):
    """A cross-platform retrain: the lead's bundle + a collaborator's bundle with another encoder."""
    other = tmp_path / "collab"
    args = [a if a != "libx264" else "libx265" for a in tiny_pipeline_args]
    assert _run(*args, "--out-dir", str(other)).exit_code == 0
    (lead_bundle,) = tiny_run.glob("ensemble-results-*.tar.gz")
    (collab_bundle,) = other.glob("ensemble-results-*.tar.gz")
    merged = tmp_path / "merged" / "corpus.parquet"
    r = CliRunner().invoke(main, ["merge", str(lead_bundle), str(collab_bundle), "--out", str(merged)])
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(merged)
    assert sorted(df["encoder"].unique()) == ["libx264", "libx265"]
    assert len(df) == len(pd.read_parquet(tiny_run / "corpus.parquet")) + len(pd.read_parquet(other / "corpus.parquet"))
    assert df["box_id"].notna().all() and df["platform"].notna().all()  # provenance kept per row
    r = CliRunner().invoke(main, ["train", "--corpus", str(merged), "--out-dir", str(tmp_path / "retrain"),
                                  "--seeds", "0", "--epochs", "5", "--quiet"])
    assert r.exit_code == 0, r.output
    folds = pd.read_csv(tmp_path / "retrain" / "loso" / "folds.csv")
    assert len(folds) == df["src_sha256"].nunique()


def test_pipeline_on_real_footage_ref_dir(shared_media, tmp_path):
    """--ref-dir with real clips (an h264 .mp4 and a .y4m from ../shared/media) plus one lavfi clip."""
    import imageio_ffmpeg

    refs = tmp_path / "refs"
    refs.mkdir()
    for name in ("Seeking_10_288_375.mp4", "park_joy_420_720p50_frm0to9_480x270.y4m"):
        (refs / name).symlink_to(shared_media / name)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=160x96:r=25",
                    "-frames:v", "12", "-pix_fmt", "yuv420p", str(refs / "synthetic.y4m")], check=True)
    out = tmp_path / "run"
    result = _run("--ref-dir", str(refs), "--encoders", "libx264", "--cqs", "24,36", "--seeds", "0", "--epochs", "5",
                  "--gate-mean-plcc", "-1", "--gate-per-seed-min", "-1", "--gate-plcc-spread-max", "1",
                  "--out-dir", str(out))
    assert result.exit_code == 0, result.output
    run = read_json(out / "run.json")
    assert run["options"]["demo"] is False and run["options"]["ref_dir"] == str(refs.resolve())
    assert sorted(s["src"] for s in run["options"]["ref_sources"]) == sorted(
        ["Seeking_10_288_375", "park_joy_420_720p50_frm0to9_480x270", "synthetic"])
    df = pd.read_parquet(out / "corpus.parquet")
    assert df.groupby("src")["frame_index"].nunique().to_dict() == {
        "Seeking_10_288_375": 150, "park_joy_420_720p50_frm0to9_480x270": 10, "synthetic": 12}


def test_a_resume_names_renamed_removed_and_added_clips():
    from kit.pipeline import _source_changes

    old = [{"src": "a", "src_sha256": "1"}, {"src": "b", "src_sha256": "2"}, {"src": "c", "src_sha256": "3"}]
    new = [{"src": "a2", "src_sha256": "1"}, {"src": "b", "src_sha256": "2"}, {"src": "c", "src_sha256": "4"}]
    assert _source_changes(old, new) == ("reference clips renamed a -> a2 (same content; names are part of the "
                                         "results); no longer there or changed: c; new or changed: c")
