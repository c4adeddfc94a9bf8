"""THE way the kit runs a tool (ffmpeg, vmaf, nvidia-smi, sysctl, meson, pip): one subprocess runner.

Every tool runs in its own process group, so a hung encoder dies together with its children; with an
optional timeout; registered, so `kill_all()` ends every tool still running when a run is
interrupted. A failure is `ToolFailed`: which stage, one line of reason from the tool's stderr, and
the stderr tail for the log. `run` collects the output; `stream` hands stdout on in chunks (raw
frames that must never sit in memory whole).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

STDERR_TAIL = 4000  # characters of a tool's stderr kept with a failure


class ToolFailed(Exception):
    """A tool run failed: `stage`, one-line `reason`, the tool's `stderr_tail` and `returncode`.

    `kind` says how: "start" (the binary did not run), "timeout" (killed after the limit) or "exit"
    (a non-zero exit status or a signal).
    """

    def __init__(self, stage: str, reason: str, stderr_tail: str = "", returncode: int | None = None,
                 kind: str = "exit") -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason, self.stderr_tail, self.returncode, self.kind = (
            stage, reason, stderr_tail, returncode, kind)


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str
    ms: float  # wall time

    @property
    def ok(self) -> bool:
        return self.returncode == 0


# ---- one line of reason -----------------------------------------------------------------------------

_NOISE = re.compile(r"Task finished|Terminating thread|Nothing was written|Error sending frames|Conversion failed|"
                    r"Could not open encoder before EOF|Error while filtering|^\s*$")


def stderr_reason(stderr: str) -> str:
    """The most telling stderr line: the first that is not ffmpeg's generic follow-up noise."""
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", ln).strip() for ln in stderr.splitlines()]
    useful = [ln for ln in lines if ln and not _NOISE.search(ln)]
    return (useful or [ln for ln in lines if ln] or ["no error message"])[0][:300]


def last_line(text: str, default: str = "no output") -> str:
    """The last non-empty line (build tools and pip put the verdict there)."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else default


# ---- the registry of running tools --------------------------------------------------------------------

_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, `kill`) ends a run like Ctrl-C: exit 130, finished work kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def hold_interrupts(call: Callable[[], T]) -> T:
    """`call()` with Ctrl-C/SIGTERM held back until it has returned, then raised as KeyboardInterrupt.

    For the short waits on worker threads: an interrupt raised inside `concurrent.futures.wait` (or
    dask's `as_completed`) can land while it holds a lock the workers need (wait takes the futures'
    locks one by one); the worker that finishes such a future then blocks forever, `shutdown(wait=True)`
    with it, and the run never exits (seen under load: SIGTERM mid-corpus, no exit after 120 s).
    """
    if threading.current_thread() is not threading.main_thread():
        return call()
    received: list[int] = []

    def record(signum: int, frame: Any) -> None:
        received.append(signum)  # no lock taken here: the interrupted code may hold any of them

    held = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) not in (signal.SIG_IGN, None)]
    previous = {s: signal.signal(s, record) for s in held}
    try:
        result = call()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise KeyboardInterrupt
    return result


def wait_first(pending: Collection[Future[Any]], timeout: float = 0.5) -> tuple[set[Future[Any]], set[Future[Any]]]:
    """`concurrent.futures.wait(FIRST_COMPLETED)` for at most `timeout` s, interrupts held (`hold_interrupts`)."""
    return hold_interrupts(lambda: _wait_first(pending, timeout))


def wait_all(futures: Collection[Future[Any]]) -> None:
    """Until every future is done, interrupts held back as in `wait_first`."""
    pending = set(futures)
    while pending:
        _, pending = wait_first(pending)


def _wait_first(pending: Collection[Future[Any]], timeout: float) -> tuple[set[Future[Any]], set[Future[Any]]]:
    done, still = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
    return set(done), set(still)


def kill_all() -> None:
    """Kill every tool process group still running (Ctrl-C / shutdown): nothing keeps burning CPU."""
    with _live_lock:
        procs = list(_live)
    for p in procs:
        _kill_group(p)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


# Library directories one particular binary's children get in front of LD_LIBRARY_PATH, and no other tool:
# the Intel pixi environment's libva/iHD/oneVPL for ffmpeg (kit.corpus.ffmpeg registers it), never for
# git or nvidia-smi, which would then load that environment's libraries instead of the host's.
_tool_library_path: dict[str, str] = {}


def set_tool_library_path(executable: Path, library_dirs: str) -> None:
    """Run `executable` (resolved path) with `library_dirs` first on LD_LIBRARY_PATH from now on."""
    _tool_library_path[str(Path(executable).resolve())] = library_dirs


def _tool_env(argv: Sequence[str], env: Mapping[str, str] | None) -> dict[str, str] | None:
    extra = _tool_library_path.get(str(Path(argv[0]).resolve())) if _tool_library_path else None
    if extra is None:
        return dict(env) if env is not None else None
    base = dict(env) if env is not None else dict(os.environ)
    base["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (extra, base.get("LD_LIBRARY_PATH", "")) if p)
    return base


def _start(argv: Sequence[str], stage: str, *, stdout: int | None, stderr: int | object, cwd: Path | None,
           env: Mapping[str, str] | None) -> subprocess.Popen[bytes]:
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,  # type: ignore[arg-type]
                                cwd=cwd, env=_tool_env(argv, env), start_new_session=True)
    except OSError as exc:
        raise ToolFailed(stage, f"cannot start {argv[0]}: {exc.strerror or exc}", kind="start") from None
    with _live_lock:
        _live.add(proc)
    return proc


def _forget(proc: subprocess.Popen[bytes]) -> None:
    with _live_lock:
        _live.discard(proc)


def _failure(stage: str, argv: Sequence[str], code: int, stderr: str) -> ToolFailed:
    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    return ToolFailed(stage, f"{Path(argv[0]).name} failed ({how}): {stderr_reason(stderr)}", stderr[-STDERR_TAIL:], code)


def run(argv: Sequence[str], *, stage: str = "run", timeout: float | None = None, cwd: Path | None = None,
        env: Mapping[str, str] | None = None, check: bool = True, stdout: bool = True) -> Completed:
    """Run one tool to the end and collect its output (stdout only when `stdout`).

    A timeout kills the tool's whole process group and raises ToolFailed(kind="timeout"); so does an
    interrupt (re-raised after the kill). With `check`, a non-zero exit is ToolFailed(kind="exit").
    """
    t0 = time.perf_counter()
    proc = _start(argv, stage, stdout=subprocess.PIPE if stdout else subprocess.DEVNULL, stderr=subprocess.PIPE,
                  cwd=cwd, env=env)
    try:
        try:
            out_bytes, err_bytes = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            _, err_bytes = proc.communicate()
            tail = err_bytes.decode("utf-8", "replace")[-STDERR_TAIL:]
            raise ToolFailed(stage, f"timed out after {timeout:.0f}s (hung?); killed", tail, None, "timeout") from None
        except BaseException:
            _kill_group(proc)
            proc.wait()
            raise
    finally:
        _forget(proc)
    stderr = err_bytes.decode("utf-8", "replace")
    if check and proc.returncode != 0:
        raise _failure(stage, argv, proc.returncode, stderr)
    return Completed(proc.returncode, (out_bytes or b"").decode("utf-8", "replace"), stderr,
                     (time.perf_counter() - t0) * 1000.0)


def stream(argv: Sequence[str], *, stage: str, read_size: int, sink: Callable[[bytes], None],
           cwd: Path | None = None) -> Completed:
    """Run one tool and hand its stdout to `sink` in chunks of `read_size` bytes as it is produced.

    stderr goes to a temp file (no pipe deadlock however much the tool writes). A non-zero exit is
    ToolFailed(kind="exit"); an interrupt or a failing sink kills the tool's group and re-raises.
    """
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err_file:
        proc = _start(argv, stage, stdout=subprocess.PIPE, stderr=err_file, cwd=cwd, env=None)
        try:
            assert proc.stdout is not None
            try:
                while chunk := proc.stdout.read(read_size):
                    sink(chunk)
            except BaseException:
                _kill_group(proc)
                proc.wait()
                raise
            finally:
                proc.stdout.close()
            code = proc.wait()
        finally:
            _forget(proc)
        err_file.seek(0)
        stderr = err_file.read().decode("utf-8", "replace")
    if code != 0:
        raise _failure(stage, argv, code, stderr)
    return Completed(code, "", stderr, (time.perf_counter() - t0) * 1000.0)
