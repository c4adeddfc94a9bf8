"""`--executor dask`: corpus cells as dask.distributed tasks, for users who run dask.

Each cell is one task running the thread executor's own per-cell function (`engine.compute_cell`, handed
in as `cell_task`), so a worker writes the same cell file the same way (temp -> fsync -> rename into
corpus/cells/) and the corpus is byte-identical. This process stays the run's writer: it holds the
one-writer lock (kit.corpus.writer) for the whole run, appends failures.jsonl and assembles; workers only
compute cells. Without `--dask-scheduler` the cluster is a LocalCluster of `--jobs` one-thread worker
processes on this box; with one, the scheduler's workers must see the run directory at the same path (a
shared filesystem) and run the same ffmpeg at the same path: every task checks both first, and a worker
that fails the check fails its cells with the reason (failures.jsonl, exit 4) instead of writing elsewhere.

A worker that dies while running a cell makes dask retry the cell elsewhere (the scheduler's
`allowed-failures`, 3 by default); past that the cell is a failed cell like any other. Ctrl-C/SIGTERM
cancels the cells, kills the kit's tools on every worker until none runs a cell, and closes the cluster.

dask and distributed are an optional dependency (`pip install 'ensemble-kit[dask]'`, pixi `-e dask`):
imported inside functions only, when a run asks for this executor.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kit.core import proc
from kit.core.errors import BadInput, KitError, PrereqError
from kit.core.proc import ToolFailed
from kit.corpus.encoders import HW_SESSION_LIMITS
from kit.corpus.ffmpeg import FFmpeg, probe_ffmpeg
from kit.corpus.grid import Cell
from kit.env.platform import cpu_count

EXECUTORS: tuple[str, ...] = ("threads", "dask")
INSTALL_HINT = "pip install 'ensemble-kit[dask]', or with pixi: pixi run -e dask ensemble-kit ..."
SCHEDULER_RE = re.compile(r"(tcp|tls|ws|wss|ucx)://[^\s/]+:\d+")
CONNECT_TIMEOUT_S = 20  # reaching the scheduler
WORKERS_TIMEOUT_S = 60  # a scheduler with no worker yet: how long to wait for the first one
STOP_TIMEOUT_S = 30  # Ctrl-C: how long to keep killing tools until no worker runs a cell of this run
TASK_PREFIX = "ensemble-kit-cell"
POLL_S = 0.1  # how often the waiting loop looks for finished cells (each look holds interrupts back)


def check(executor: str, scheduler: str | None) -> None:
    """Refuse an unknown executor, a scheduler address without dask or a malformed one (exit 2), and
    dask when it is not installed (exit 3), before any work starts."""
    if executor not in EXECUTORS:
        raise BadInput(f"--executor {executor}: unknown executor", hint=f"use one of {', '.join(EXECUTORS)}")
    if scheduler is not None and executor != "dask":
        raise BadInput(f"--dask-scheduler {scheduler} is given but the executor is {executor}",
                       hint="add --executor dask, or drop --dask-scheduler")
    if scheduler is not None and not SCHEDULER_RE.fullmatch(scheduler):
        raise BadInput(f"--dask-scheduler {scheduler} is not a scheduler address",
                       hint="give the address the scheduler prints, e.g. tcp://10.0.0.5:8786")
    if executor == "dask":
        try:
            import dask  # noqa: F401 - optional dependency: only --executor dask needs it
            import distributed  # noqa: F401 - optional dependency: only --executor dask needs it
        except ImportError as exc:
            raise PrereqError(f"--executor dask needs the dask and distributed packages ({exc})",
                              hint=INSTALL_HINT) from None


# ---- on the worker --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkerCheck:
    """What a worker must share with this run: the run directory (a file only this run wrote, read back)
    and the ffmpeg (same path, same build). Checked by every task, before it writes anything."""

    share_file: str
    token: str
    ffmpeg: str
    ffmpeg_version: str

    def verify(self) -> None:
        try:
            seen = Path(self.share_file).read_text(encoding="utf-8")
        except OSError:
            seen = None
        if seen != self.token:
            raise ToolFailed("executor", f"worker {socket.gethostname()} does not see this run's directory at "
                             f"{Path(self.share_file).parent} (dask workers need the run directory at the same "
                             "path: a shared filesystem, docs/cluster.md)")
        try:
            found = probe_ffmpeg(Path(self.ffmpeg)).version  # once per worker process (memoised)
        except KitError as exc:
            found = f"unusable ({exc})"
        if found != self.ffmpeg_version:
            raise ToolFailed("executor", f"worker {socket.gethostname()}: ffmpeg {self.ffmpeg} is {found}, not "
                             f"{self.ffmpeg_version} (run the workers in the same environment as this run)")


def _worker_vmaf_threads() -> int:
    """libvmaf threads for a cell on this worker: its cores shared by the cells it runs at once."""
    from distributed import get_worker  # optional dependency: runs on a dask worker only

    return max(1, cpu_count() // max(1, get_worker().state.nthreads))


def run_task(cell_task: Callable[..., Any], cell: Cell, check_share: WorkerCheck, vmaf_threads: int | None,
             gate: Any) -> Any:
    """One cell on a worker: check the share, then the executors' common per-cell function."""
    check_share.verify()
    return cell_task(cell, vmaf_threads=vmaf_threads or _worker_vmaf_threads(), hw_gate=gate)


def dask_setup(worker: Any) -> None:
    """A LocalCluster worker's preload (distributed calls it as the worker starts, restarts included): a
    terminal's Ctrl-C reaches the whole process group, workers too, which would die with tracebacks; this
    process stops them itself, so they ignore it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop_tools(prefix: str, dask_worker: Any = None) -> int:
    """Kill the kit's tools on this worker; -> cells of the run (task key `prefix`) still executing."""
    proc.kill_all()
    executing = dask_worker.state.executing if dask_worker is not None else ()
    return sum(1 for ts in executing if str(ts.key).startswith(prefix))


# ---- in this process ------------------------------------------------------------------------------------

@contextlib.contextmanager
def _client(scheduler: str | None, jobs: int) -> Iterator[Any]:
    """A client of the given scheduler, or of a LocalCluster of `jobs` one-thread worker processes."""
    from distributed import Client, LocalCluster  # optional dependency: only --executor dask needs it

    with contextlib.ExitStack() as stack:
        if scheduler is None:
            with _sigint_ignored():  # inherited by the workers spawned now: no traceback from a Ctrl-C at start
                cluster = stack.enter_context(LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                                           dashboard_address=None, silence_logs=logging.CRITICAL,
                                                           preload=[__name__]))
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(scheduler, timeout=CONNECT_TIMEOUT_S))
                client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                raise PrereqError(f"--dask-scheduler {scheduler}: no scheduler with workers there ({exc})",
                                  hint="start the scheduler and its workers (docs/cluster.md), or drop "
                                       "--dask-scheduler to run a LocalCluster on this box") from None
        yield client


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while a LocalCluster spawns its workers (a Ctrl-C in those seconds is dropped)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _error_outcome(exc: BaseException) -> ToolFailed:
    """What a task that ended without an outcome (its worker died, it could not be sent) is recorded as."""
    from distributed import KilledWorker  # optional dependency: only --executor dask needs it

    if isinstance(exc, KilledWorker):
        return ToolFailed("executor", f"the dask worker running it died ({exc.allowed_failures + 1} attempt(s), "
                          f"the last on {exc.last_worker.address}); see that worker's log")
    return ToolFailed("executor", f"{type(exc).__name__}: {exc}")


def run_cells(todo: list[Cell], cell_task: Callable[..., Any], on_outcome: Callable[[Any], None], *,
              on_error: Callable[[Cell, BaseException], Any], jobs: int, scheduler: str | None,
              vmaf_threads: int | None, work_dir: Path, ff: FFmpeg) -> None:
    """Run `cell_task(cell, vmaf_threads=, hw_gate=)` for every cell as a dask task; each outcome goes to
    `on_outcome` in this process (which may raise to stop the run), a task that ended without one to
    `on_error`. Interrupted: the cells are cancelled and their tools killed before the cluster closes."""
    from distributed import Semaphore, as_completed  # optional dependency: only --executor dask needs it

    token = secrets.token_hex(8)
    share_file = work_dir / f".dask-share-{token}"
    share_file.write_text(token, encoding="utf-8")
    check_share = WorkerCheck(str(share_file), token, str(ff.path), ff.version)
    if vmaf_threads is None and scheduler is None:
        vmaf_threads = max(1, cpu_count() // jobs)  # a LocalCluster: this box's cores over its workers
    prefix = f"{TASK_PREFIX}-{token}-"
    try:
        with _client(scheduler, jobs) as client:
            gates = {hw: Semaphore(max_leases=HW_SESSION_LIMITS[hw], name=f"ensemble-kit-{hw}-{token}")
                     for hw in sorted({c.encoder.hw for c in todo if c.encoder.hw in HW_SESSION_LIMITS})}
            futures = {client.submit(run_task, cell_task, cell, check_share, vmaf_threads,
                                     gates.get(cell.encoder.hw or ""), key=f"{prefix}{cell.cell_id}",
                                     priority=len(todo) - i, pure=False): cell
                       for i, cell in enumerate(todo)}  # todo is longest first: so are the tasks
            try:
                for fut in _finished(as_completed(futures)):
                    cell = futures[fut]
                    try:
                        outcome = fut.result()
                    except Exception as exc:  # noqa: BLE001 - the task, not the cell, failed: a failed cell
                        outcome = on_error(cell, _error_outcome(exc))
                    on_outcome(outcome)
            except BaseException:
                _stop(client, list(futures), prefix)
                raise
    finally:
        share_file.unlink(missing_ok=True)


def _finished(completed: Any) -> Iterator[Any]:
    """dask's `as_completed`, each short poll with interrupts held (`proc.hold_interrupts`): its blocking
    `next()` waits on a condition that dask's own thread must take to deliver the next result."""
    def poll() -> list[Any]:
        batch = completed.next_batch(block=False)
        if not batch:
            time.sleep(POLL_S)
        return batch
    while not completed.is_empty():
        yield from proc.hold_interrupts(poll)


def _stop(client: Any, futures: list[Any], prefix: str) -> None:
    """Cancel the run's cells, then kill the kit's tools on every worker until none runs one of them
    (a cell between two tools would start the next after a single kill)."""
    with contextlib.suppress(Exception):
        client.cancel(futures)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            running = client.run(_stop_tools, prefix)
        except Exception:  # noqa: BLE001 - a closing cluster: nothing more to stop
            return
        if not any(running.values()):
            return
        time.sleep(0.1)
