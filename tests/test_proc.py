"""kit.core.proc, the one subprocess runner: timeouts kill the whole process group, failures carry a
one-line reason and the stderr tail, output can be streamed, and interrupts leave no tool running."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from kit.core import proc

PY = sys.executable


def test_stderr_reason_skips_ffmpeg_follow_up_noise():
    text = ("[h264_nvenc @ 0x1] Cannot load libcuda.so.1\n"
            "[vost#0:0/h264_nvenc @ 0x2] Task finished with error code: -22 (Invalid argument)\n")
    assert proc.stderr_reason(text) == "Cannot load libcuda.so.1"
    assert proc.last_line("a\nb\n\n") == "b" and proc.last_line("", "none") == "none"


def test_run_collects_output_and_failures_name_the_tool_and_reason():
    done = proc.run([PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)"], stage="t")
    assert done.ok and done.stdout == "out\n" and done.stderr == "err\n" and done.ms > 0
    with pytest.raises(proc.ToolFailed) as info:
        proc.run([PY, "-c", "import sys; sys.stderr.write('boom: bad input\\n'); sys.exit(3)"], stage="encode")
    exc = info.value
    assert (exc.stage, exc.returncode, exc.kind) == ("encode", 3, "exit")
    assert "exit code 3" in exc.reason and "boom: bad input" in exc.reason and "boom" in exc.stderr_tail
    assert not proc.run([PY, "-c", "raise SystemExit(5)"], check=False).ok
    with pytest.raises(proc.ToolFailed) as info:
        proc.run(["/nonexistent/tool"], stage="probe")
    assert info.value.kind == "start" and "cannot start" in info.value.reason


def test_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    # a tool that starts a child of its own and hangs: both must be gone after the timeout
    code = (f"import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            f"open({str(pidfile)!r}, 'w').write(str(c.pid)); time.sleep(60)")
    t0 = time.monotonic()
    with pytest.raises(proc.ToolFailed) as info:
        proc.run([PY, "-c", code], stage="encode", timeout=2)
    assert time.monotonic() - t0 < 30 and info.value.kind == "timeout" and "timed out after 2s" in info.value.reason
    child = int(pidfile.read_text())
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the hung tool's child survived the timeout")


def test_stream_hands_stdout_on_in_chunks_and_fails_cleanly():
    chunks: list[bytes] = []
    proc.stream([PY, "-c", "import sys; sys.stdout.buffer.write(b'x' * 10000)"], stage="decode", read_size=4096,
                sink=chunks.append)
    assert b"".join(chunks) == b"x" * 10000 and max(map(len, chunks)) <= 4096
    with pytest.raises(proc.ToolFailed) as info:
        proc.stream([PY, "-c", "import sys; sys.stderr.write('corrupt frame\\n'); sys.exit(1)"], stage="decode",
                    read_size=4096, sink=chunks.append)
    assert "corrupt frame" in info.value.reason


def test_kill_all_ends_every_running_tool():
    errors: list[BaseException] = []

    def hang() -> None:
        try:
            proc.run([PY, "-c", "import time; time.sleep(60)"], stage="hang")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=hang) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(proc._live) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill_all()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert len(errors) == 2 and all(isinstance(e, proc.ToolFailed) and e.returncode == -signal.SIGKILL for e in errors)


def test_an_interrupt_during_wait_first_is_raised_only_after_the_wait(monkeypatch):
    """SIGTERM landing inside concurrent.futures.wait (which takes the futures' locks one by one) once left
    a worker blocked on a lock the main thread held: the run never exited. wait_first holds it back."""
    finished_inside: list[bool] = []

    def wait_that_gets_signalled(pending, timeout):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered now, in the middle of the wait
        for _ in range(1000):  # bytecodes on which an asynchronous KeyboardInterrupt would land
            pass
        finished_inside.append(True)
        return set(pending), set()

    monkeypatch.setattr(proc, "_wait_first", wait_that_gets_signalled)
    with ThreadPoolExecutor(max_workers=1) as pool, proc.sigterm_as_interrupt():
        fut = pool.submit(lambda: 1)
        with pytest.raises(KeyboardInterrupt):
            proc.wait_first({fut})
        assert finished_inside == [True]
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # sigterm_as_interrupt's handler is back
        with pytest.raises(KeyboardInterrupt):  # ... and still turns SIGTERM into an interrupt outside the wait
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)


def test_wait_first_keeps_an_ignored_sigint_ignored():
    """A job launched with `&` has SIGINT ignored; waiting must not start catching it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            fut = pool.submit(time.sleep, 0.2)
            pending = {fut}
            while pending:
                os.kill(os.getpid(), signal.SIGINT)
                _, pending = proc.wait_first(pending, timeout=0.05)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
