"""One grid, one writer, and shards then assemble, with real processes (kit.corpus.writer, kit.corpus.assembly).

Real `ensemble-kit corpus` processes on tiny clips. A wrapper around the real ffmpeg holds the encodes
of one clip until the test releases it, so a writer is provably alive (and has work in flight) while
the others start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from kit.cli import main
from kit.core.errors import ExitCode
from kit.core.locking import Holder, holder_of, try_acquire
from kit.core.rundir import RunDir
from kit.corpus import engine, grid, sources, table

CORPUS = [sys.executable, "-m", "kit", "corpus"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_KIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def single_box(tmp_path_factory, tiny_refs, kit_ffmpeg):
    """The whole grid on one box (in-process): the content hash every sharded run must reproduce."""
    rd = RunDir(tmp_path_factory.mktemp("single"))
    refs = sources.discover(tiny_refs, ff=kit_ffmpeg)
    engine.run_corpus(rd, refs, ["libx264"], [25, 37], ff=kit_ffmpeg, jobs=2)
    return table.corpus_sha256(pd.read_parquet(rd.corpus))


def _gated_ffmpeg(tmp_path: Path, real: Path) -> tuple[Path, Path, Path]:
    """An ffmpeg that holds libx264 encodes of tsrc.y4m until `release` exists (touching `entered`)."""
    entered, release = tmp_path / "entered", tmp_path / "release"
    script = tmp_path / "ffmpeg-gated"
    script.write_text(f'#!/bin/bash\nif [[ "$*" == *"-c:v libx264"* && "$*" == *"tsrc.y4m"* ]]; then\n'
                      f'  touch "{entered}"; while [ ! -e "{release}" ]; do sleep 0.05; done\nfi\n'
                      f'exec "{real}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, entered, release


def _argv(tiny_refs: Path, out: Path, *extra: str) -> list[str]:
    return [*CORPUS, "--ref-dir", str(tiny_refs), "--encoders", "libx264", "--cqs", "25,37", "--out-dir", str(out),
            "--jobs", "2", "--quiet", *extra]


def _wait_for(path: Path, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 90
    while not path.exists():
        assert proc.poll() is None, f"the writer exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, env=env)


def test_lock_names_its_holder_and_is_free_when_the_holder_dies(tmp_path):
    path = tmp_path / "x.lock"
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                              "from kit.core.locking import try_acquire\n"
                              f"lock = try_acquire(Path({str(path)!r}), {{'what': 'test holder'}})\n"
                              "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        holder = holder_of(path)
        assert holder is not None and holder.pid == child.pid and holder.host == socket.gethostname()
        got = try_acquire(path)
        assert isinstance(got, Holder) and f"test holder pid {child.pid} on host" in got.describe()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert holder_of(path) is None  # the OS dropped the flock with the process
    lock = try_acquire(path, {"what": "next"})
    assert not isinstance(lock, Holder) and lock.enforced
    lock.release()


def test_one_grid_one_writer_with_real_processes(tmp_path, tiny_refs, kit_ffmpeg, single_box):
    gated, entered, release = _gated_ffmpeg(tmp_path, kit_ffmpeg.path)
    out = tmp_path / "run"
    rd = RunDir(out)
    first = subprocess.Popen(_argv(tiny_refs, out, "--shard", "0/2", "--ffmpeg", str(gated), "--jobs", "1"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(entered, first, "shard 0/2 started its tsrc encode")
        in_flight = list(rd.cell_work_dir("shard0of2").iterdir())  # one cell at a time: the held one
        assert len(in_flight) == 1

        # the same launch again: exit 2, naming the running one by pid and host
        again = _run(_argv(tiny_refs, out, "--shard", "0/2"))
        assert again.returncode == ExitCode.BAD_INPUT, again.stderr
        assert f"pid {first.pid} on host {socket.gethostname()}" in again.stderr and "Traceback" not in again.stderr

        # another shard of the same grid runs beside it and leaves the live writer's work alone
        other = _run(_argv(tiny_refs, out, "--shard", "1/2"))
        assert other.returncode == 0, other.stderr
        assert all(p.exists() for p in in_flight)

        # the whole grid overlaps the running shard: refused, naming it
        whole = _run(_argv(tiny_refs, out))
        assert whole.returncode == ExitCode.BAD_INPUT and "shard 0/2" in whole.stderr and str(first.pid) in whole.stderr

        # assembling now names the missing cell, its shard, and the writer still running
        early = _run([*CORPUS, "assemble", "--out-dir", str(out)])
        assert early.returncode == ExitCode.WORK_FAILED and not rd.corpus.exists()
        assert "1 of 4 grid cells are missing" in early.stderr and "tsrc libx264 cq25" in early.stderr
        assert "shard 0/2" in early.stderr and f"pid {first.pid}" in early.stderr
    finally:
        release.touch()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert not any(rd.cell_work_dir("shard0of2").iterdir())
    done = _run([*CORPUS, "assemble", "--out-dir", str(out), "--json"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["corpus_sha256"] == single_box


def test_a_dead_writers_work_is_cleared_by_its_successor(tmp_path, tiny_refs, kit_ffmpeg):
    gated, entered, release = _gated_ffmpeg(tmp_path, kit_ffmpeg.path)
    out = tmp_path / "run"
    rd = RunDir(out)
    first = subprocess.Popen(_argv(tiny_refs, out, "--ffmpeg", str(gated)), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for(entered, first, "the tsrc encodes started")
        leftovers = list(rd.cell_work_dir("all").iterdir())
        assert leftovers
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        again = _run(_argv(tiny_refs, out))
        assert again.returncode == 0, again.stderr
        assert not any(p.exists() for p in leftovers) and rd.corpus.is_file()
    finally:
        release.touch()  # lets the orphaned gated encodes (their own process groups) finish


def test_assemble_without_a_grid_or_with_a_damaged_cell(tmp_path, tiny_refs, kit_ffmpeg):
    assemble = CliRunner()
    r = assemble.invoke(main, ["corpus", "assemble", "--out-dir", str(tmp_path / "nothing")])
    assert r.exit_code == ExitCode.BAD_INPUT and "grid.json does not exist" in r.output
    rd = RunDir(tmp_path / "run")
    engine.run_corpus(rd, sources.discover(tiny_refs, ff=kit_ffmpeg), ["libx264"], [37], ff=kit_ffmpeg, shard=(0, 1))
    victim = sorted(rd.cells_dir.glob("*.parquet"))[0]
    victim.write_bytes(victim.read_bytes()[:100])
    r = assemble.invoke(main, ["corpus", "assemble", "--out-dir", str(rd.root)])
    assert r.exit_code == ExitCode.WORK_FAILED and victim.stem[:12] in r.output and "shard 0/1" in r.output
    assert not rd.corpus.exists()


@pytest.mark.parametrize("n", [1, 2, 7])
def test_shards_cover_every_cell_exactly_once(n, tiny_refs, kit_ffmpeg):
    ctx = grid.RunContext.detect(kit_ffmpeg)
    cells = grid.plan_grid(sources.discover(tiny_refs, ff=kit_ffmpeg), ["libx264", "libx265"], [22, 30, 38], ctx)
    parts = [grid.shard_cells(cells, k, n) for k in range(n)]
    ids = [c.cell_id for part in parts for c in part]
    assert sorted(ids) == sorted(c.cell_id for c in cells) and len(ids) == len(set(ids)) == 12
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced


def test_sweep_clears_dead_cells_in_a_writers_folder_and_keeps_live_ones(tmp_path):
    from kit.core.fsio import owner_tag

    rd = RunDir(tmp_path / "run")
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()  # a pid that has exited
    host = owner_tag().rsplit("-p", 1)[0]
    dead = rd.cell_work_dir("shard0of2") / f"{'a' * 24}.{host}-p{dead_pid}.x1"
    live = rd.cell_work_dir("shard0of2") / f"{'b' * 24}.{owner_tag()}.x2"
    for d in (dead, live):
        d.mkdir(parents=True)
    assert rd.sweep_temp() == 1
    assert not dead.exists() and live.exists()
