"""kit.corpus.engine and `ensemble-kit corpus`: the grid, cell ids, atomic cells, resume, failures, shards, merge.

Real ffmpeg + libvmaf on tiny clips; a wrapper script around the real ffmpeg injects faults (crash, hang,
garbage, dropped frames) into matching encodes only.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from kit.cli import main
from kit.core.errors import BadInput, ExitCode, WorkFailed
from kit.core.rundir import RunDir
from kit.core.schema import CORPUS_COLUMNS, FEATURES
from kit.corpus import engine, grid, sources, table

TIMING = ["enc_time_ms", "score_time_ms"]
N_FRAMES = 8  # each tiny_refs clip


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_KIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def refs(tiny_refs, kit_ffmpeg):
    return sources.discover(tiny_refs, ff=kit_ffmpeg)


@pytest.fixture(scope="module")
def ctx(kit_ffmpeg):
    return grid.RunContext.detect(kit_ffmpeg)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, refs, kit_ffmpeg, ctx):
    """An uninterrupted run: 2 sources x libx264 x 2 cqs."""
    rd = RunDir(tmp_path_factory.mktemp("baseline"))
    summary = engine.run_corpus(rd, refs, ["libx264"], [25, 37], ff=kit_ffmpeg, jobs=2, ctx=ctx)
    return rd, summary


def _without_timing(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path).drop(columns=TIMING)


def _fault_ffmpeg(tmp_path: Path, real: Path, mode: str, match: str = "-crf 37") -> Path:
    """An ffmpeg that misbehaves (mode) only for libx264 encodes whose argv contains `match`."""
    script = tmp_path / f"ffmpeg-{mode}"
    faults = {
        "crash": 'echo "x264 [error]: fake crash in x264_encoder_encode" >&2; kill -SEGV $$',
        "hang": "sleep 300",
        "garbage": 'printf "garbage%.0s" $(seq 1 500) > "${@: -1}"; exit 0',
        "dropframe": f'exec "{real}" "${{@:1:$#-1}}" -frames:v 5 "${{@: -1}}"',
    }
    script.write_text(f'#!/bin/bash\nif [[ "$*" == *"-c:v libx264"* && "$*" == *"{match}"* ]]; then\n'
                      f'  {faults[mode]}\nfi\nexec "{real}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_grid_rows_columns_and_metadata(baseline, refs):
    rd, summary = baseline
    assert summary.ok and summary.done == 4 and summary.grid_cells == 4 and summary.missing_cells == 0
    df = pd.read_parquet(rd.corpus)
    assert list(df.columns) == list(CORPUS_COLUMNS)
    assert {c: str(t) for c, t in df.dtypes.items()} == {c: ("object" if t == "string" else t) for c, t in CORPUS_COLUMNS.items()} \
        or all(str(df[c].dtype) in (t, "object", "str") for c, t in CORPUS_COLUMNS.items())
    assert len(df) == 4 * N_FRAMES
    for _, cell in df.groupby("cell_id"):
        assert list(cell["frame_index"]) == list(range(N_FRAMES))
        assert cell[["src", "encoder", "cq", "enc_bytes"]].nunique().max() == 1
    assert df[["vmaf", *FEATURES]].notna().all().all()
    assert (df.groupby("cq")["vmaf"].mean()[25] > df.groupby("cq")["vmaf"].mean()[37])
    row = df.iloc[0]
    assert row["quality_arg"].startswith("-crf ") and row["preset"] == "medium"
    assert row["platform"] and row["box_id"] and row["env_fingerprint"] and row["libvmaf_version"]
    assert row["bitrate_kbps"] == pytest.approx(row["enc_bytes"] * 8 / (N_FRAMES / row["fps"]) / 1000)
    assert sorted(df["src"].unique()) == sorted(s.src for s in refs)
    grid = json.loads((rd.corpus_dir / "grid.json").read_text())
    assert {c["cell_id"] for c in grid["cells"]} == set(df["cell_id"])


def test_rerun_reuses_every_cell_and_gives_the_same_corpus(baseline, refs, kit_ffmpeg, ctx):
    rd, _ = baseline
    before = _without_timing(rd.corpus)
    again = engine.run_corpus(rd, refs, ["libx264"], [25, 37], ff=kit_ffmpeg, ctx=ctx)
    assert again.reused == 4 and again.done == 0
    pd.testing.assert_frame_equal(_without_timing(rd.corpus), before)


def test_cell_id_covers_what_decides_rows_and_nothing_else(refs, ctx):
    from dataclasses import replace

    from kit.corpus import encoders

    s, x264 = refs[0], encoders.get("libx264")
    base = grid.cell_key(s, x264, 25, x264.argv(25), ctx)
    ids = {grid.make_cell_id(base)}
    for variant in (grid.cell_key(s, x264, 26, x264.argv(26), ctx),
                    grid.cell_key(s, x264, 25, [*x264.argv(25), "-tune", "film"], ctx),
                    grid.cell_key(replace(s, src_sha256="0" * 64), x264, 25, x264.argv(25), ctx),
                    grid.cell_key(replace(s, width=s.width * 2), x264, 25, x264.argv(25), ctx),
                    grid.cell_key(s, x264, 25, x264.argv(25), replace(ctx, ff=replace(ctx.ff, version="n0"))),
                    grid.cell_key(s, x264, 25, x264.argv(25), replace(ctx, ff=replace(ctx.ff, libvmaf_version="x"))),
                    grid.cell_key(s, x264, 25, x264.argv(25), replace(ctx, ff=replace(ctx.ff, configure=("--x",)))),
                    grid.cell_key(s, x264, 25, x264.argv(25), replace(ctx, model="vmaf_v0.6.1neg"))):
        ids.add(grid.make_cell_id(variant))
    assert len(ids) == 9
    # a different box / platform / fingerprint (timings never enter) keeps the id
    other_box = replace(ctx, box_id="elsewhere", platform="darwin-arm64", env_fingerprint="f" * 16)
    assert grid.make_cell_id(grid.cell_key(s, x264, 25, x264.argv(25), other_box)) == grid.make_cell_id(base)


def test_corrupt_cell_file_is_redone_not_trusted(tmp_path, baseline, refs, kit_ffmpeg, ctx, capsys):
    import shutil

    src_rd, _ = baseline
    rd = RunDir(tmp_path / "run")
    shutil.copytree(src_rd.root, rd.root)
    cells = sorted(rd.cells_dir.glob("*.parquet"))
    cells[0].write_bytes(cells[0].read_bytes()[:500])  # torn file
    df = pd.read_parquet(cells[1])
    df.iloc[:-1].to_parquet(cells[1], index=False)  # readable but a frame short
    summary = engine.run_corpus(rd, refs, ["libx264"], [25, 37], ff=kit_ffmpeg, ctx=ctx)
    assert summary.redone_corrupt == 2 and summary.done == 2 and summary.reused == 2
    assert "corrupt" in capsys.readouterr().err
    assert len(list((rd.corpus_dir / "corrupt").iterdir())) == 2  # moved aside, not silently deleted
    pd.testing.assert_frame_equal(_without_timing(rd.corpus), _without_timing(src_rd.corpus))


@pytest.mark.parametrize(("mode", "stage", "reason"), [
    ("crash", "encode", "signal 11"),
    ("garbage", "encode", "frames"),
    ("dropframe", "encode", "wrote 5 frames but the reference has 8"),
])
def test_failed_cells_are_logged_and_the_rest_go_on(tmp_path, tiny_refs, kit_ffmpeg, mode, stage, reason):
    fake = _fault_ffmpeg(tmp_path, kit_ffmpeg.path, mode)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["corpus", "--ref-dir", str(tiny_refs), "--encoders", "libx264", "--cqs", "25,37",
                                  "--out-dir", str(out), "--ffmpeg", str(fake), "--quiet", "--json"])
    assert r.exit_code == ExitCode.WORK_FAILED, r.output
    summary = json.loads(r.stdout)
    assert summary["failed"] == 2 and summary["done"] == 2 and summary["corpus_rows"] == 2 * N_FRAMES
    assert "2 of 4 corpus cells failed" in r.stderr and "failures.jsonl" in r.stderr
    records = [json.loads(line) for line in (out / "corpus" / "failures.jsonl").read_text().splitlines()]
    assert len(records) == 2 and {rec["cq"] for rec in records} == {37}
    assert all(rec["stage"] == stage and reason in rec["reason"] for rec in records), records
    if mode == "crash":
        assert all("fake crash" in rec["stderr_tail"] for rec in records)
    # the fault is gone: a rerun with the real ffmpeg does only the failed cells
    r = CliRunner().invoke(main, ["corpus", "--ref-dir", str(tiny_refs), "--encoders", "libx264", "--cqs", "25,37",
                                  "--out-dir", str(out), "--quiet", "--json", "--ffmpeg", str(kit_ffmpeg.path)])
    assert r.exit_code == 0, r.output
    again = json.loads(r.stdout)
    assert again["done"] == 2 and again["reused"] == 2 and again["corpus_rows"] == 4 * N_FRAMES


def test_hung_encoder_times_out(tmp_path, refs, kit_ffmpeg):
    fake = _fault_ffmpeg(tmp_path, kit_ffmpeg.path, "hang")
    from kit.corpus import ffmpeg

    ff = ffmpeg.probe_ffmpeg(fake)
    t0 = time.monotonic()
    summary = engine.run_corpus(RunDir(tmp_path / "run"), refs[:1], ["libx264"], [25, 37], ff=ff, timeout=3)
    assert time.monotonic() - t0 < 60
    assert summary.done == 1 and len(summary.failed) == 1
    assert "timed out after 3s" in summary.failed[0]["reason"]


def test_bad_encoders_and_cqs_are_bad_input(tiny_refs, tmp_path):
    def run(*args):
        return CliRunner().invoke(main, ["corpus", "--ref-dir", str(tiny_refs), "--out-dir", str(tmp_path / "o"), *args])

    r = CliRunner().invoke(main, ["corpus", "--out-dir", str(tmp_path / "o")])
    assert r.exit_code == ExitCode.BAD_INPUT and "--ref-dir" in r.output and "--demo" in r.output
    r = run("--demo")
    assert r.exit_code == ExitCode.BAD_INPUT and "mutually exclusive" in r.output
    r = run("--encoders", "x264")
    assert r.exit_code == ExitCode.BAD_INPUT and "unknown encoder 'x264'" in r.output
    r = run("--encoders", "libx264,h264_nvenc")
    if r.exit_code == ExitCode.BAD_INPUT:  # no NVIDIA GPU here: say so, and name what works
        assert "h264_nvenc" in r.output and "libx264" in r.output.split("work here:")[1]
    r = run("--encoders", "libx264", "--cqs", "19,60")
    assert r.exit_code == ExitCode.BAD_INPUT and "60" in r.output and "0..51" in r.output
    r = run("--encoders", "libx264", "--shard", "4/4")
    assert r.exit_code == ExitCode.BAD_INPUT and "--shard" in r.output
    r = run("--encoders", "libx264", "--shard", "1/0")  # no "use --shard 0/1 ... 0/1": N is what is wrong
    assert r.exit_code == ExitCode.BAD_INPUT and "N must be >= 1" in r.output and "--shard 0/1 runs everything" in r.output
    r = CliRunner().invoke(main, ["corpus", "--ref-dir", str(tmp_path / "none"), "--encoders", "libx264",
                                  "--out-dir", str(tmp_path / "o")])
    assert r.exit_code == ExitCode.BAD_INPUT and "none" in r.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = CliRunner().invoke(main, ["corpus", "--ref-dir", str(tiny_refs), "--encoders", "libx264",
                                  "--out-dir", str(blocker / "sub")])
    assert r.exit_code == ExitCode.BAD_INPUT and "not writable" in r.output
    assert all("Traceback" not in x for x in (r.output,))


def test_shards_never_assemble_and_assemble_refuses_until_every_cell_is_there(tmp_path, baseline, refs, kit_ffmpeg, ctx):
    from kit.corpus import assembly

    full, _ = baseline
    rd = RunDir(tmp_path / "shared")
    s0 = engine.run_corpus(rd, refs, ["libx264"], [25, 37], ff=kit_ffmpeg, shard=(0, 2), ctx=ctx)
    assert s0.planned == 2 and s0.corpus_path is None and s0.missing_cells == 2 and not rd.corpus.exists()
    report = assembly.assemble_grid(rd)
    assert len(report.missing) == 2 and {m["shard"] for m in report.missing} == {"1/2"} and not rd.corpus.exists()
    with pytest.raises(WorkFailed, match=r"2 of 4 grid cells are missing.*shard 1/2") as exc:
        report.raise_if_missing()
    assert exc.value.exit_code == ExitCode.WORK_FAILED and "--array=<K>" in str(exc.value)
    s1 = engine.run_corpus(rd, refs, ["libx264"], [25, 37], ff=kit_ffmpeg, shard=(1, 2), ctx=ctx)
    assert s1.planned == 2 and s1.done == 2 and s1.missing_cells == 0 and s1.corpus_path is None  # never opportunistic
    report = assembly.assemble_grid(rd)
    report.raise_if_missing()
    assert report.corpus_sha256 == table.corpus_sha256(pd.read_parquet(full.corpus))
    pd.testing.assert_frame_equal(_without_timing(rd.corpus), _without_timing(full.corpus))


def test_corpus_holds_exactly_the_current_grid(tmp_path, baseline, refs, kit_ffmpeg, ctx):
    import shutil

    rd = RunDir(tmp_path / "run")
    shutil.copytree(baseline[0].root, rd.root)
    summary = engine.run_corpus(rd, refs, ["libx264"], [37], ff=kit_ffmpeg, ctx=ctx)  # a smaller grid
    df = pd.read_parquet(rd.corpus)
    assert summary.reused == 2 and set(df["cq"]) == {37} and len(df) == 2 * N_FRAMES
    assert len(list(rd.cells_dir.glob("*.parquet"))) == 4  # other grids' cells kept on disk, not mixed in


def test_sigkill_loses_at_most_cells_in_flight(tmp_path, tiny_refs, baseline, kit_ffmpeg):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "kit", "corpus", "--ref-dir", str(tiny_refs), "--encoders", "libx264",
            "--cqs", "25,37", "--out-dir", str(out), "--jobs", "1", "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((out / "corpus" / "cells").glob("*.parquet")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    r = subprocess.run(argv, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    pd.testing.assert_frame_equal(_without_timing(RunDir(out).corpus), _without_timing(baseline[0].corpus))


def test_merge_dedupes_and_reports_conflicts(tmp_path, baseline):
    rd, _ = baseline
    df = pd.read_parquet(rd.corpus)
    other = df.copy()
    other.loc[other["frame_index"] == 0, "vmaf"] += 1.0  # another box disagrees on frame 0 of each cell
    other.to_parquet(tmp_path / "other.parquet", index=False)
    report = table.merge([rd.root, tmp_path / "other.parquet"], tmp_path / "merged.parquet")
    assert report["rows"] == len(df) and report["duplicates_dropped"] == len(df) - 4 and report["conflicts"] == 4
    merged = pd.read_parquet(tmp_path / "merged.parquet")
    pd.testing.assert_frame_equal(merged, pd.read_parquet(rd.corpus))  # first input wins
    assert len(pd.read_parquet(report["conflicts_file"])) == 8
    r = CliRunner().invoke(main, ["merge", str(tmp_path / "other.parquet"), str(rd.root), "--out", str(tmp_path / "m2.parquet")])
    assert r.exit_code == 0 and "conflicting" in r.output


def test_jsonl_round_trip_is_lossless_and_old_kit_rows_still_import(tmp_path, baseline):
    from kit.core.schema import LEGACY_JSONL_COLUMNS
    from kit.corpus import legacy

    rd, _ = baseline
    out = tmp_path / "export.jsonl"
    assert table.export_jsonl(rd.corpus, out) == 4 * N_FRAMES
    lines = out.read_text().splitlines()
    keys = list(json.loads(lines[0]))
    assert keys[: len(LEGACY_JSONL_COLUMNS)] == list(LEGACY_JSONL_COLUMNS) and {"preset", "src_sha256"} <= set(keys)
    dup = tmp_path / "dup.jsonl"
    dup.write_text("\n".join(lines + lines[:5]) + "\n")  # the old kit re-appended rows on rerun
    r = CliRunner().invoke(main, ["corpus", "import", str(dup), "--out-dir", str(tmp_path / "imp"), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["rows"] == 4 * N_FRAMES and report["duplicates_dropped"] == 5 and report["conflicts"] == 0
    imported = pd.read_parquet(tmp_path / "imp" / "corpus.parquet")
    pd.testing.assert_frame_equal(imported, pd.read_parquet(rd.corpus))  # every column, every value, same order
    assert table.corpus_sha256(imported) == table.corpus_sha256(pd.read_parquet(rd.corpus))
    old = tmp_path / "old.jsonl"  # the old kit's rows: its columns only
    old.write_text("".join(json.dumps({k: json.loads(line)[k] for k in LEGACY_JSONL_COLUMNS}) + "\n" for line in lines))
    df, invalid = legacy.read_jsonl([old])
    assert invalid.count == 0 and len(df) == len(lines)
    assert df["src_sha256"].str.startswith("name:").all() and (df["platform"] == "legacy").all()


def test_demo_clips_are_deterministic_and_distinct(tmp_path, kit_ffmpeg):
    from kit.core.fsio import sha256_file
    from kit.corpus import demo

    a = demo.make_demo_sources(tmp_path / "a", kit_ffmpeg, width=64, height=48, frames=6)
    b = demo.make_demo_sources(tmp_path / "b", kit_ffmpeg, width=64, height=48, frames=6)
    sha_a = {p.name: sha256_file(p) for p in sorted(a.iterdir())}
    assert sha_a == {p.name: sha256_file(p) for p in sorted(b.iterdir())}
    assert len(set(sha_a.values())) == len(demo.DEMO_CLIPS) >= 5


def test_demo_corpus_cli(tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(main, ["corpus", "--demo", "--out-dir", str(out), "--encoders", "libx264", "--cqs", "30",
                                  "--json", "--format", "jsonl"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["failed"] == 0 and summary["corpus_rows"] > 0
    df = pd.read_parquet(out / "corpus.parquet")
    assert df["src"].nunique() >= 5 and (out / "corpus.jsonl").is_file()
    # the pipeline's demo: the same clips, size and frame count (kit.corpus.inputs resolves both)
    from kit.corpus import demo

    assert set(df["src"]) == set(demo.demo_clip_names())
    assert df[["width", "height"]].drop_duplicates().values.tolist() == [list(demo.DEMO_SIZE)]
    assert df.groupby("src")["frame_index"].nunique().eq(demo.DEMO_FRAMES).all()
    assert not (out / "demo-refs").exists()  # inputs live in the tool cache, never in the run directory


@pytest.mark.slow
def test_full_demo_default_encoders(tmp_path):
    r = CliRunner().invoke(main, ["corpus", "--demo", "--out-dir", str(tmp_path / "demo"), "--json"])
    assert r.exit_code == 0, r.output


def test_help_has_examples():
    for cmd in (["corpus"], ["score"], ["merge"], ["corpus", "import"], ["corpus", "export"]):
        r = CliRunner().invoke(main, [*cmd, "--help"])
        assert r.exit_code == 0 and "ensemble-kit" in r.output


def test_disk_full_stops_the_run_with_bad_input_and_keeps_finished_cells(tmp_path, refs, kit_ffmpeg, ctx, monkeypatch):
    import errno

    real_write_with = engine.write_with
    calls = {"n": 0}

    def fill_up_after_one(path, writer):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write_with(path, writer)

    monkeypatch.setattr(engine, "write_with", fill_up_after_one)  # fault injection: the disk fills up
    rd = RunDir(tmp_path / "run")
    with pytest.raises(BadInput, match="no space left"):
        engine.run_corpus(rd, refs, ["libx264"], [25, 37], ff=kit_ffmpeg, jobs=1, ctx=ctx)
    assert len(list(rd.cells_dir.glob("*.parquet"))) == 1  # the finished cell is kept
    assert not rd.failures.exists()  # not blamed on the cells


def test_ten_bit_raw_source_and_real_footage(tmp_path, kit_ffmpeg, ctx, shared_media):
    from conftest import lavfi_clip

    refs_dir = tmp_path / "refs"
    refs_dir.mkdir()
    lavfi_clip(kit_ffmpeg, "testsrc2=s=64x48:r=50", refs_dir / "deep_64x48_50fps_yuv420p10le.yuv", frames=6,
               pix_fmt="yuv420p10le")
    (refs_dir / "joy.y4m").symlink_to(shared_media / "park_joy_420_720p50_frm0to9_480x270.y4m")
    (refs_dir / "seeking.mp4").symlink_to(shared_media / "Seeking_10_288_375.mp4")
    found = sources.discover(refs_dir, ff=kit_ffmpeg)
    summary = engine.run_corpus(RunDir(tmp_path / "run"), found, ["libx264", "libx265"], [30], ff=kit_ffmpeg, ctx=ctx)
    assert summary.ok, summary.failed
    df = pd.read_parquet(tmp_path / "run" / "corpus.parquet")
    per_src = df.groupby("src")["frame_index"].count().to_dict()
    assert per_src == {"deep_64x48_50fps_yuv420p10le": 12, "joy": 20, "seeking": 300}
    assert set(df.loc[df["src"] == "deep_64x48_50fps_yuv420p10le", "pix_fmt"]) == {"yuv420p10le"}
    assert df.loc[df["src"] == "seeking", ["width", "height"]].drop_duplicates().values.tolist() == [[384, 288]]
    assert df["vmaf"].between(0, 100).all() and df[list(FEATURES)].notna().all().all()
