"""Tidy after faults (issue 11): temp files carry their owner, a dead run's leftovers are removed by the
next command, and SIGTERM/SIGINT remove the kit's temp folders on the way out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from click.testing import CliRunner

from kit.cli import main
from kit.core import fsio
from kit.core.errors import ExitCode
from kit.results import bundle


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def _dead_owner() -> str:
    return fsio.owner_tag().rsplit("-p", 1)[0] + f"-p{_dead_pid()}"


def test_atomic_writes_name_their_owner_and_sweeps_remove_only_dead_ones(tmp_path):
    dead = tmp_path / f".x.json.{_dead_owner()}.abcdefgh.tmp"
    live = tmp_path / f".y.json.{fsio.owner_tag()}.abcdefgh.tmp"
    foreign = tmp_path / ".z.json.otherhost-p1.abcdefgh.tmp"  # another host's pid: never ours to judge
    user_file = tmp_path / "notes.tmp"
    for p in (dead, live, foreign, user_file):
        p.write_text("x")
    (tmp_path / "sub").mkdir()
    nested_dead = tmp_path / "sub" / f".w.parquet.{_dead_owner()}.abcdefgh.tmp"
    nested_dead.write_text("x")
    assert fsio.sweep_temp_files(tmp_path) == 2
    assert not dead.exists() and not nested_dead.exists()
    assert live.exists() and foreign.exists() and user_file.exists()
    with fsio.atomic_path(tmp_path / "a.bin") as tmp:
        assert fsio.owner_tag() in tmp.name and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"1")
    assert (tmp_path / "a.bin").read_bytes() == b"1"


def test_the_next_command_removes_a_killed_runs_temp_folders(tmp_path, monkeypatch, fake_run):
    """SIGKILL leaves /tmp/ekit-* folders and run-dir .tmp files no `finally` removed: the next command does."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    dead_dir = tmp_path / "tmp" / f"ekit-bundle-{_dead_owner()}-abcd1234"
    (dead_dir / "run").mkdir(parents=True)
    live_dir = fsio.make_temp_dir("bundle")
    other = tmp_path / "tmp" / "ekit-someone-elses"
    other.mkdir()
    run = fake_run(tmp_path / "run")
    stale = run / "report" / f".index.html.{_dead_owner()}.abcdefgh.tmp"
    stale.write_text("half a report")
    work = run / "corpus" / "cells" / ".work" / f"{'c' * 24}.{_dead_owner()}.abcdefgh"
    work.mkdir(parents=True)
    result = CliRunner().invoke(main, ["bundle", str(run)])
    assert result.exit_code == 0, result.output
    assert not dead_dir.exists() and not stale.exists() and not work.exists()
    assert live_dir.exists() and other.exists()


SLOW_VERIFY = textwrap.dedent("""
    import sys, time
    from kit.results import bundle_checks
    real = bundle_checks.run_checks
    def slow(*args, **kw):  # the fault injected: a verify that takes long enough to be signalled
        print("checking", flush=True)
        time.sleep(60)
        return real(*args, **kw)
    bundle_checks.run_checks = slow
    from kit.cli import main
    main([sys.argv[1], *sys.argv[2:]], prog_name="ensemble-kit")
""")


def test_sigterm_and_sigint_during_verify_and_compare_leave_no_temp_folder(tmp_path, fake_run):
    made = bundle.make_bundle(fake_run(tmp_path / "run")).path
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    for argv, sig in ((["verify", str(made)], signal.SIGTERM), (["compare", str(made), str(made)], signal.SIGINT)):
        proc = subprocess.Popen([sys.executable, "-c", SLOW_VERIFY, *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "checking"
        assert list(tmp.glob("ekit-bundle-*")), "the bundle is extracted into the temp folder while it is checked"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == ExitCode.INTERRUPTED, err
        assert "interrupted" in err and "Traceback" not in err
        assert not list(tmp.glob("ekit-*")), list(tmp.iterdir())


def test_killed_verify_leftovers_go_on_the_next_command(tmp_path, fake_run):
    made = bundle.make_bundle(fake_run(tmp_path / "run")).path
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_VERIFY, "verify", str(made)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "checking"
    proc.kill()
    proc.communicate(timeout=60)
    assert list(tmp.glob("ekit-bundle-*"))  # SIGKILL: nothing could clean up
    time.sleep(0.05)
    done = subprocess.run([sys.executable, "-m", "kit", "verify", str(made)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert not list(tmp.glob("ekit-*"))
