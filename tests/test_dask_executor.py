"""`--executor dask` (kit.corpus.dask_executor): cells as dask.distributed tasks, same cell files, same corpus.

Real `ensemble-kit corpus` processes with a real LocalCluster (two one-thread worker processes) on the
tiny lavfi clips, and a scheduler started here for the `--dask-scheduler` route. Wrappers around the real
ffmpeg inject the faults: one kills the dask worker that runs it, one holds an encode until released.
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
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from kit.cli import main
from kit.core.errors import ExitCode
from kit.core.proc import ToolFailed
from kit.core.rundir import RunDir
from kit.core.schema import MEASURED_COLUMNS
from kit.corpus import dask_executor, engine, sources, table

CORPUS = [sys.executable, "-m", "kit", "corpus"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DASK_TEMPORARY_DIRECTORY", str(tmp_path / "dask"))  # workers' scratch space


@pytest.fixture(scope="module")
def threads_run(tmp_path_factory, tiny_refs, kit_ffmpeg):
    """The thread executor's run (in-process): the cell files and content hash dask must reproduce."""
    rd = RunDir(tmp_path_factory.mktemp("threads"))
    refs = sources.discover(tiny_refs, ff=kit_ffmpeg)
    engine.run_corpus(rd, refs, ["libx264"], [25, 37], ff=kit_ffmpeg, jobs=2)
    return rd, table.corpus_sha256(pd.read_parquet(rd.corpus))


def _argv(tiny_refs: Path, out: Path, *extra: str) -> list[str]:
    return [*CORPUS, "--ref-dir", str(tiny_refs), "--encoders", "libx264", "--cqs", "25,37", "--out-dir", str(out),
            "--jobs", "2", "--quiet", "--json", *extra]


def _run(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=240, env={**os.environ, **env})


def _wrapper(tmp_path: Path, real: Path, name: str, action: str) -> Path:
    """An ffmpeg that does `action` for the libx264 encode of tsrc.y4m at cq 37, and is the real one otherwise."""
    script = tmp_path / f"ffmpeg-{name}"
    script.write_text(f'#!/bin/bash\nif [[ "$*" == *"-c:v libx264"* && "$*" == *"tsrc.y4m"* && "$*" == *"-crf 37"* ]]; then\n'
                      f'  {action}\nfi\nexec "{real}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def _sha(out: Path) -> str:
    return table.corpus_sha256(pd.read_parquet(RunDir(out).corpus))


def test_missing_dask_is_one_line_exit_3_and_scheduler_mistakes_are_bad_input(tiny_refs, tmp_path, monkeypatch):
    base = ["corpus", "--ref-dir", str(tiny_refs), "--encoders", "libx264", "--out-dir", str(tmp_path / "r")]
    for flags, code, words in [
        (["--dask-scheduler", "tcp://127.0.0.1:8786"], ExitCode.BAD_INPUT, "add --executor dask"),
        (["--executor", "dask", "--dask-scheduler", "127.0.0.1"], ExitCode.BAD_INPUT, "tcp://10.0.0.5:8786"),
    ]:
        r = CliRunner().invoke(main, [*base, *flags])
        assert r.exit_code == code and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output
    r = CliRunner().invoke(main, ["pipeline", "--dask-scheduler", "tcp://127.0.0.1:8786", "--out-dir", str(tmp_path / "p")])
    assert r.exit_code == ExitCode.BAD_INPUT and "--dask-scheduler" in r.stderr, r.output  # the pipeline passes it on
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed: importing it raises ImportError
    r = CliRunner().invoke(main, [*base, "--executor", "dask"])
    assert r.exit_code == ExitCode.PREREQS, r.output
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "distributed" in line and "pip install 'ensemble-kit[dask]'" in line
    assert "pixi run -e dask" in line and "Traceback" not in r.output
    assert not (tmp_path / "r").exists()  # refused before any work


def test_a_worker_without_the_run_directory_or_the_ffmpeg_fails_its_cells(tmp_path, kit_ffmpeg):
    share = tmp_path / ".dask-share-x"
    share.write_text("token")
    dask_executor.WorkerCheck(str(share), "token", str(kit_ffmpeg.path), kit_ffmpeg.version).verify()  # all there
    with pytest.raises(ToolFailed, match="does not see this run's directory .*shared filesystem"):
        dask_executor.WorkerCheck(str(tmp_path / "elsewhere" / ".dask-share-x"), "token", str(kit_ffmpeg.path),
                                  kit_ffmpeg.version).verify()
    with pytest.raises(ToolFailed, match="is n0.0, not|not n0.0"):
        dask_executor.WorkerCheck(str(share), "token", str(kit_ffmpeg.path), "n0.0").verify()


def test_dask_writes_the_same_cell_files_and_corpus_as_threads_on_a_running_scheduler(tmp_path, tiny_refs,
                                                                                     threads_run):
    distributed = pytest.importorskip("distributed")
    rd_threads, sha = threads_run
    out = tmp_path / "run"
    # a scheduler with in-process workers, reached by address like a cluster's: the --dask-scheduler route
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp",
                                  dashboard_address=None) as cluster:
        r = _run(_argv(tiny_refs, out, "--executor", "dask", "--dask-scheduler", cluster.scheduler_address))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["done"] == 4 and summary["failed"] == 0 and _sha(out) == sha
    cells = sorted(p.name for p in RunDir(out).cells_dir.glob("*.parquet"))
    assert cells == sorted(p.name for p in rd_threads.cells_dir.glob("*.parquet")) and len(cells) == 4
    for name in cells:  # the same cell files, every value but the measured wall times
        pd.testing.assert_frame_equal(pd.read_parquet(RunDir(out).cells_dir / name).drop(columns=list(MEASURED_COLUMNS)),
                                      pd.read_parquet(rd_threads.cells_dir / name).drop(columns=list(MEASURED_COLUMNS)))
    assert not list(RunDir(out).cell_work_dir("all").iterdir())  # nothing left in flight, no share probe


def test_a_dead_worker_and_a_failed_cell_are_failures_exit_4_and_threads_resume(tmp_path, tiny_refs, kit_ffmpeg,
                                                                               threads_run):
    pytest.importorskip("distributed")
    killer = _wrapper(tmp_path, kit_ffmpeg.path, "kill-worker", "kill -9 $PPID; sleep 30")  # $PPID: the worker
    out = tmp_path / "run"
    r = _run(_argv(tiny_refs, out, "--executor", "dask", "--ffmpeg", str(killer)),
             DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0")  # no retry on another worker: fail the cell
    assert r.returncode == ExitCode.WORK_FAILED, r.stderr
    assert "1 of 4 corpus cells failed" in r.stderr and "Traceback" not in r.stderr
    summary = json.loads(r.stdout)
    assert summary["done"] == 3 and summary["failed"] == 1 and summary["corpus_rows"] == 3 * 8
    [record] = [json.loads(line) for line in RunDir(out).failures.read_text().splitlines()]
    assert record["stage"] == "executor" and "dask worker running it died" in record["reason"]
    assert record["src"] == "tsrc" and record["cq"] == 37

    # a failed cell on a worker (the encoder crashes): the same record as the thread executor writes
    crasher = _wrapper(tmp_path, kit_ffmpeg.path, "crash", 'echo "fake crash" >&2; kill -SEGV $$')
    r = _run(_argv(tiny_refs, out, "--executor", "dask", "--ffmpeg", str(crasher)))
    assert r.returncode == ExitCode.WORK_FAILED, r.stderr
    assert json.loads(r.stdout)["reused"] == 3
    last = json.loads(RunDir(out).failures.read_text().splitlines()[-1])
    assert last["stage"] == "encode" and "signal 11" in last["reason"] and "fake crash" in last["stderr_tail"]

    # the fault gone, the thread executor finishes the run: the threads-only corpus
    r = _run(_argv(tiny_refs, out))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["reused"] == 3 and _sha(out) == threads_run[1]


def _alive(procs: list) -> list:
    import psutil  # distributed's own dependency: present wherever these tests run

    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


def _ctrl_c(run: subprocess.Popen) -> None:
    os.killpg(run.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground process group, workers too


@pytest.mark.parametrize("interrupt", [pytest.param(lambda run: run.send_signal(signal.SIGTERM), id="sigterm"),
                                       pytest.param(_ctrl_c, id="ctrl-c", marks=pytest.mark.slow)])
def test_an_interrupt_stops_the_cluster_leaving_no_process_and_the_lock_holds(tmp_path, tiny_refs, kit_ffmpeg,
                                                                             threads_run, interrupt):
    pytest.importorskip("distributed")
    entered, release = tmp_path / "entered", tmp_path / "release"
    gated = _wrapper(tmp_path, kit_ffmpeg.path, "gated",
                     f'touch "{entered}"; while [ ! -e "{release}" ]; do sleep 0.05; done')
    out = tmp_path / "run"
    run = subprocess.Popen(_argv(tiny_refs, out, "--executor", "dask", "--ffmpeg", str(gated)),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    seen: dict = {}  # pid -> psutil.Process: every process the run started, as they are seen
    try:
        _interrupt_and_check(run, tiny_refs, out, entered, seen, interrupt)
    finally:
        release.touch()  # whatever happened above, no held encode outlives the test
        if run.poll() is None:
            run.kill()
            run.wait()

    # the killed run resumes with the dask executor: the held cell is redone, the corpus is the threads' one
    r = _run(_argv(tiny_refs, out, "--executor", "dask"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["done"] + summary["reused"] == 4 and summary["done"] >= 1 and _sha(out) == threads_run[1]


def _interrupt_and_check(run: subprocess.Popen, tiny_refs: Path, out: Path, entered: Path, seen: dict,
                         interrupt: Callable[[subprocess.Popen], None]) -> None:
    """With a cell held in flight: a second writer is refused, the interrupt ends the run with 130, no
    traceback from any process, and every process it started (workers, their tools) is gone."""
    import psutil  # distributed's own dependency: present wherever these tests run

    deadline = time.monotonic() + 120
    while not entered.exists():
        assert run.poll() is None, f"the run exited ({run.returncode}) before the held encode: {run.stderr.read()}"
        assert time.monotonic() < deadline, "timed out waiting for the held encode"
        time.sleep(0.05)
    time.sleep(0.3)  # the other worker's cells go on meanwhile
    for p in psutil.Process(run.pid).children(recursive=True):
        seen[p.pid] = p
    assert any("ffmpeg-gated" in " ".join(p.cmdline()) for p in _alive(list(seen.values())))

    # one grid, one writer: the driver holds the lock while dask workers compute
    again = _run(_argv(tiny_refs, out))
    assert again.returncode == ExitCode.BAD_INPUT and f"pid {run.pid} on host {socket.gethostname()}" in again.stderr

    interrupt(run)
    _, err = run.communicate(timeout=90)
    assert run.returncode == ExitCode.INTERRUPTED, err
    assert "Traceback" not in err
    deadline = time.monotonic() + 20
    while (left := _alive(list(seen.values()))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, [(p.pid, p.cmdline()) for p in left]  # workers, their tools: all gone
