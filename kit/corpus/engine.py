"""Running the grid: each cell encoded, scored and written atomically; resume, failures, shards, assembly.

Where a frame becomes a row: `run_cell` encodes one cell (the argv `kit.corpus.grid` planned), scores
it with libvmaf (`kit.corpus.scoring`) and turns each scored frame into one corpus row (`_rows`), written
as `corpus/cells/<cell_id>.parquet` (temp -> fsync -> rename). `run_corpus` becomes the directory's
writer for its grid or shard (`kit.corpus.writer`), runs the cells in parallel (threads here, or dask
tasks: `kit.corpus.dask_executor`, both through `compute_cell`), reuses valid finished
cells, logs failed ones to `corpus/failures.jsonl` while the others go on, and (whole-grid runs only)
assembles `corpus.parquet` from exactly the current grid's cells. A shard never assembles: that is the
explicit `assemble_grid` step (`ensemble-kit corpus assemble`), which refuses while cells are missing.
"""

from __future__ import annotations

import contextlib
import functools
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from kit.core import proc
from kit.core.console import Progress, warn
from kit.core.errors import BadInput, WorkFailed, is_out_of_space
from kit.core.fsio import append_line, canonical_json, owner_tag, write_json, write_with
from kit.core.proc import STDERR_TAIL, ToolFailed
from kit.core.rundir import RunDir
from kit.core.schema import CORPUS_COLUMNS, DEFAULT_VMAF_MODEL, FEATURES, TARGET
from kit.corpus import dask_executor, scoring, table, writer
from kit.corpus.encoders import HW_SESSION_LIMITS
from kit.corpus.ffmpeg import FFmpeg
from kit.corpus.grid import (
    Cell,
    RunContext,
    check_cqs,
    check_encoders,
    grid_id,
    plan_grid,
    shard_cells,
    write_grid,
)
from kit.corpus.sources import Source
from kit.corpus.vmaf_cli import VmafCli
from kit.env.platform import cpu_count

# ---- one cell ------------------------------------------------------------------------------------------


def _rows(cell: Cell, ctx: RunContext, result: scoring.ScoreResult, enc_bytes: int, enc_ms: float) -> pd.DataFrame:
    """One corpus row per scored frame: the frame's features and VMAF, plus what every row of the cell shares."""
    s = cell.source
    duration = s.n_frames / s.fps if s.fps > 0 else float("nan")
    base = {"src": s.src, "src_sha256": s.src_sha256, "width": s.width, "height": s.height, "pix_fmt": s.pix_fmt,
            "fps": s.fps, "encoder": cell.encoder.name, "cq": cell.cq, "quality_arg": cell.encoder.quality_arg(cell.cq),
            "preset": cell.encoder.preset, "enc_bytes": enc_bytes, "bitrate_kbps": enc_bytes * 8 / duration / 1000,
            "enc_time_ms": enc_ms, "score_time_ms": result.score_time_ms, "platform": ctx.platform,
            "box_id": ctx.box_id, "ffmpeg_version": ctx.ff.version, "libvmaf_version": result.libvmaf_version,
            "vmaf_model": ctx.model, "env_fingerprint": ctx.env_fingerprint, "cell_id": cell.cell_id}
    rows = [{**base, "frame_index": i, **frame} for i, frame in enumerate(result.frames)]
    return pd.DataFrame(rows, columns=list(CORPUS_COLUMNS)).astype(CORPUS_COLUMNS)


def encode_argv(cell: Cell, ff: FFmpeg, stream: Path) -> list[str]:
    """The whole encode command of a cell: reference input, the cell's planned argv, raw elementary stream out."""
    return [str(ff.path), "-nostdin", "-hide_banner", "-v", "error", *cell.global_args, *cell.source.input_args(),
            "-map", "0:v:0", "-an", "-sn", "-dn", "-fps_mode", "passthrough", *cell.encode_args,
            "-progress", "pipe:1", "-nostats", "-f", cell.stream_format, "-y", str(stream)]


def run_cell(cell: Cell, ctx: RunContext, run_dir: RunDir, *, vmaf_threads: int | Callable[[], int] = 1,
             timeout: float | None = None, hw_gate: threading.Semaphore | None = None,
             work_dir: Path | None = None) -> int:
    """Encode, score, write `cells/<cell_id>.parquet` atomically; -> rows. Raises proc.ToolFailed.

    Temporary files go under `work_dir` (the writer's in-flight folder; default `cells/.work/`)."""
    s, ff = cell.source, ctx.ff
    limit = timeout if timeout is not None else cell.timeout
    work_root = work_dir or run_dir.cells_work_dir
    work_root.mkdir(parents=True, exist_ok=True)
    wd = Path(tempfile.mkdtemp(prefix=f"{cell.cell_id}.{owner_tag()}.", dir=work_root))
    try:
        stream = wd / f"encoded.{cell.stream_format}"
        with hw_gate or contextlib.nullcontext():
            encoded_run = proc.run(encode_argv(cell, ff, stream), stage="encode", timeout=limit)
        enc_err, progress = encoded_run.stderr, encoded_run.stdout
        enc_bytes = stream.stat().st_size if stream.exists() else 0
        if enc_bytes == 0:
            raise ToolFailed("encode", "the encoder exited 0 but wrote 0 bytes", enc_err[-STDERR_TAIL:])
        encoded = re.findall(r"^frame=(\d+)", progress, re.M)
        if not encoded or int(encoded[-1]) != s.n_frames:
            got = encoded[-1] if encoded else "an unknown number of"
            raise ToolFailed("encode", f"the encoder wrote {got} frames but the reference has {s.n_frames}",
                             enc_err[-STDERR_TAIL:])
        threads = vmaf_threads() if callable(vmaf_threads) else vmaf_threads  # decided now: fewer cells left, more threads
        result = scoring.score(ff, s, ["-f", cell.stream_format, "-i", str(stream)], n_threads=threads,
                               model=ctx.model, expected_frames=s.n_frames, timeout=limit, workdir=wd,
                               vmaf_cli=ctx.vmaf_cli)
        df = _rows(cell, ctx, result, enc_bytes, encoded_run.ms)
        if bad := non_finite(df):
            raise ToolFailed("score", f"libvmaf gave a non-finite value: {bad}", result_tail(result))
        write_with(run_dir.cell_path(cell.cell_id), lambda tmp: df.to_parquet(tmp, index=False))
        return len(df)
    finally:
        shutil.rmtree(wd, ignore_errors=True)


def cell_file_ok(path: Path, cell: Cell) -> bool:
    """A finished cell file is trusted only if it reads back whole and matches its cell exactly."""
    return cell_rows_ok(path, cell.cell_id, cell.source.n_frames)


def cell_rows_ok(path: Path, cell_id: str, n_frames: int) -> bool:
    """The file holds exactly one cell's rows: every frame once, in order, no missing value."""
    try:
        df = pq.read_table(path).to_pandas()
    except Exception:  # noqa: BLE001 - any unreadable file is simply redone
        return False
    if list(df.columns) != list(CORPUS_COLUMNS) or len(df) != n_frames:
        return False
    if set(df["cell_id"]) != {cell_id} or list(df["frame_index"]) != list(range(n_frames)):
        return False
    return non_finite(df) is None


def non_finite(df: pd.DataFrame) -> str | None:
    """'frame 3 adm2=inf' for the first NaN/inf VMAF or feature value of a cell's rows, else None.
    Such a cell is a failed cell (never written, never reused): training would drop its rows silently."""
    values = df[[TARGET, *FEATURES]].to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if not bad.any():
        return None
    row, col = (int(i[0]) for i in np.nonzero(bad))
    return f"frame {int(df['frame_index'].iloc[row])} {[TARGET, *FEATURES][col]}={values[row, col]}"


def result_tail(result: scoring.ScoreResult) -> str:
    return f"{len(result.frames)} frames scored with {result.backend} ({result.model})"


# ---- the run -------------------------------------------------------------------------------------------

@dataclass
class CellOutcome:
    cell: Cell
    status: str  # "done" | "failed" | "fatal" (a full disk: the run stops) | "cancelled"
    rows: int = 0
    reason: str = ""
    seconds: float = 0.0
    record: dict[str, Any] | None = None  # a failed cell's failures.jsonl line


@dataclass
class CorpusSummary:
    grid_cells: int
    shard: tuple[int, int] | None
    planned: int  # cells this run is responsible for (the shard's share)
    grid_id: str = ""
    done: int = 0
    reused: int = 0
    redone_corrupt: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    corpus_path: str | None = None
    corpus_rows: int = 0
    missing_cells: int = 0  # grid cells without a finished file (failed, or other shards still running)
    wall_s: float = 0.0
    scorer: dict[str, Any] = field(default_factory=dict)  # what computed the features (as in grid.json)

    @property
    def ok(self) -> bool:
        return not self.failed

    def raise_if_failed(self, failures_file: Path, hint: str) -> None:
        """Exit 4 with the count and where the details are; the finished cells stay on disk."""
        if self.failed:
            raise WorkFailed(f"{len(self.failed)} of {self.planned} corpus cells failed (details in "
                             f"{failures_file}); the finished cells are kept", hint=hint)

    def to_json(self) -> dict[str, Any]:
        return {"grid_id": self.grid_id, "grid_cells": self.grid_cells, "shard": f"{self.shard[0]}/{self.shard[1]}" if self.shard else None,
                "planned": self.planned, "done": self.done, "reused": self.reused,
                "redone_corrupt": self.redone_corrupt, "failed": len(self.failed),
                "failures": [{k: f[k] for k in ("cell_id", "src", "encoder", "cq", "stage", "reason")} for f in self.failed],
                "corpus": self.corpus_path, "corpus_rows": self.corpus_rows, "missing_cells": self.missing_cells,
                "scorer": self.scorer, "wall_s": round(self.wall_s, 3)}


def _utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _failure_record(cell: Cell, exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ToolFailed):
        stage, reason, tail, code = exc.stage, exc.reason, exc.stderr_tail, exc.returncode
    else:
        stage, reason, tail, code = "internal", f"{type(exc).__name__}: {exc}", "", None
    return {"cell_id": cell.cell_id, "src": cell.source.src, "src_sha256": cell.source.src_sha256,
            "encoder": cell.encoder.name, "cq": cell.cq, "stage": stage, "reason": reason, "returncode": code,
            "stderr_tail": tail, "utc": _utc()}


ProgressFn = Callable[[CellOutcome, int, int], None]


def compute_cell(cell: Cell, ctx: RunContext, run_dir: RunDir, *, work_dir: Path,
                 vmaf_threads: int | Callable[[], int] = 1, timeout: float | None = None,
                 hw_gate: contextlib.AbstractContextManager[Any] | None = None) -> CellOutcome:
    """One cell, whichever executor runs it (a thread here, a dask task on a worker): its file written by
    `run_cell`, or why not. A cell's own failure is returned, not raised: the run logs it once."""
    start = time.perf_counter()
    try:
        rows = run_cell(cell, ctx, run_dir, vmaf_threads=vmaf_threads, timeout=timeout, hw_gate=hw_gate,
                        work_dir=work_dir)
    except Exception as exc:  # noqa: BLE001 - one failed cell must not stop the others
        return failed_outcome(cell, exc, time.perf_counter() - start)
    return CellOutcome(cell, "done", rows=rows, seconds=time.perf_counter() - start)


def failed_outcome(cell: Cell, exc: BaseException, seconds: float = 0.0) -> CellOutcome:
    """A failed cell's outcome with its failures.jsonl record; a full disk is fatal to the whole run."""
    if is_out_of_space(exc):  # every further cell would fail the same way: stop, keep what is done
        return CellOutcome(cell, "fatal", reason=str(exc))
    record = _failure_record(cell, exc)
    return CellOutcome(cell, "failed", reason=f"{record['stage']}: {record['reason']}", seconds=seconds,
                       record=record)


class CellTally:
    """The run's side of each finished cell, whichever executor ran it (so failures.jsonl has one writer):
    counts, the failure record, progress; a fatal outcome (full disk) stops the run as bad input."""

    def __init__(self, run_dir: RunDir, summary: CorpusSummary, total: int, progress: ProgressFn | None) -> None:
        self.run_dir, self.summary, self.total, self.progress = run_dir, summary, total, progress
        self.finished = 0

    @property
    def unfinished(self) -> int:
        return self.total - self.finished

    def __call__(self, outcome: CellOutcome) -> None:
        if outcome.status == "fatal":
            raise BadInput(f"--out-dir {self.run_dir.root}: no space left on device (or it became unwritable) "
                           f"while writing cell {outcome.cell.label}",
                           hint="free space (or pick another --out-dir) and rerun: finished cells are kept")
        if outcome.record is not None:
            append_line(self.run_dir.failures, canonical_json(outcome.record, indent=None))
            self.summary.failed.append(outcome.record)
        elif outcome.status == "done":
            self.summary.done += 1
        self.finished += 1
        if self.progress:
            self.progress(outcome, self.finished, self.total)




def progress_callback(bar: Progress) -> ProgressFn:
    """Feeds a run's cells into the shared progress display; a failed cell is one line above the bar."""
    def on_cell(outcome: CellOutcome, done: int, total: int) -> None:
        if outcome.status == "failed":
            bar.note(f"      cell failed: {outcome.cell.label}: {outcome.reason}")
        bar.tick(done, total, last=outcome.cell.label)

    return on_cell


def default_jobs() -> int:
    """One cell per core: encoders and libvmaf threads overlap across cells; hw families are capped separately."""
    return cpu_count()


def run_corpus(run_dir: RunDir, sources: Sequence[Source], encoder_names: Sequence[str], cqs: Sequence[int], *,
               ff: FFmpeg, jobs: int | None = None, shard: tuple[int, int] | None = None,
               vmaf_threads: int | None = None, model: str = DEFAULT_VMAF_MODEL, timeout: float | None = None,
               vmaf_cli: VmafCli | None = None, progress: ProgressFn | None = None,
               on_plan: Callable[[int], None] | None = None, ctx: RunContext | None = None,
               executor: str = "threads", dask_scheduler: str | None = None) -> CorpusSummary:
    """Run (this shard of) the grid; reuse valid finished cells; a whole-grid run assembles corpus.parquet.

    Raises BadInput for unknown/unavailable encoders or out-of-range cqs before any work starts, and
    when another writer runs an overlapping part of this directory (kit.corpus.writer). Cell failures
    do not raise: they are in `summary.failed` and `corpus/failures.jsonl`. `executor` runs the cells
    in this process's threads or as dask tasks (kit.corpus.dask_executor): same cell files either way.
    """
    t0 = time.perf_counter()
    dask_executor.check(executor, dask_scheduler)
    run_dir = RunDir(Path(run_dir.root).resolve())  # tools run in temp dirs: paths must be absolute
    if not sources:
        raise BadInput("no reference sources", hint="pass --ref-dir with clips, or --demo")
    check_cqs(encoder_names, cqs)
    probes = check_encoders(ff, encoder_names)
    ctx = ctx or RunContext.detect(ff, model=model, vmaf_cli=vmaf_cli)
    grid = plan_grid(sources, encoder_names, cqs, ctx, probes)
    mine = shard_cells(grid, *shard) if shard else list(grid)
    summary = CorpusSummary(grid_cells=len(grid), shard=shard, planned=len(mine), scorer=ctx.scorer_identity(),
                            grid_id=grid_id(grid))
    _check_writable(run_dir)
    with writer.claim(run_dir, shard, summary.grid_id) as work_dir:
        write_grid(run_dir, grid, ctx, encoder_names, cqs)
        todo: list[Cell] = []
        for cell in mine:
            path = run_dir.cell_path(cell.cell_id)
            if path.exists():
                if cell_file_ok(path, cell):
                    summary.reused += 1
                    continue
                _quarantine(run_dir, path)
                summary.redone_corrupt += 1
            todo.append(cell)
        todo.sort(key=lambda c: (-c.cost, c.cell_id))  # longest first: shorter idle tail
        if on_plan:
            on_plan(len(todo))
        _run_cells(todo, ctx, run_dir, summary, work_dir=work_dir, jobs=jobs, vmaf_threads=vmaf_threads,
                   timeout=timeout, progress=progress, executor=executor, dask_scheduler=dask_scheduler)
        present = [c for c in grid if run_dir.cell_path(c.cell_id).exists()]
        summary.missing_cells = len(grid) - len(present)
        if shard is None:  # a shard never assembles: `corpus assemble` does, once every shard is done
            summary.corpus_rows = table.assemble([run_dir.cell_path(c.cell_id) for c in present], run_dir.corpus,
                                                 names={c.cell_id: c.source.src for c in grid})
            summary.corpus_path = str(run_dir.corpus)
        summary.wall_s = time.perf_counter() - t0
        write_json(run_dir.corpus_summary(shard), summary.to_json())
    return summary


def _run_cells(todo: list[Cell], ctx: RunContext, run_dir: RunDir, summary: CorpusSummary, *, work_dir: Path,
               jobs: int | None, vmaf_threads: int | None, timeout: float | None,
               progress: ProgressFn | None, executor: str = "threads", dask_scheduler: str | None = None) -> None:
    """Compute `todo` in parallel; failures are logged and counted in `summary`, a full disk stops all."""
    jobs = max(1, jobs or default_jobs())
    tally = CellTally(run_dir, summary, len(todo), progress)
    if executor == "dask":
        cell_task = functools.partial(compute_cell, ctx=ctx, run_dir=run_dir, work_dir=work_dir, timeout=timeout)
        dask_executor.run_cells(todo, cell_task, tally, on_error=failed_outcome, jobs=jobs,
                                scheduler=dask_scheduler, vmaf_threads=vmaf_threads, work_dir=work_dir, ff=ctx.ff)
    else:
        _run_threads(todo, ctx, run_dir, tally, work_dir=work_dir, jobs=jobs, vmaf_threads=vmaf_threads,
                     timeout=timeout)
    summary.failed.sort(key=lambda r: (r["src"], r["encoder"], r["cq"]))


def _run_threads(todo: list[Cell], ctx: RunContext, run_dir: RunDir, tally: CellTally, *, work_dir: Path, jobs: int,
                 vmaf_threads: int | None, timeout: float | None) -> None:
    """The default executor: `jobs` threads in this process, each running cells' tools."""
    cores = cpu_count()

    def scorer_threads() -> int:
        """cores / cells running: one libvmaf thread each in the bulk, all cores for the last few (the
        tail would otherwise leave cores idle). Threads never change the values, so not in the cell id."""
        return vmaf_threads or max(1, cores // max(1, min(jobs, tally.unfinished)))
    gates = {hw: threading.Semaphore(n) for hw, n in HW_SESSION_LIMITS.items()}
    stop = threading.Event()

    def work(cell: Cell) -> CellOutcome:
        if stop.is_set():
            return CellOutcome(cell, "cancelled")
        outcome = compute_cell(cell, ctx, run_dir, work_dir=work_dir, vmaf_threads=scorer_threads, timeout=timeout,
                               hw_gate=gates.get(cell.encoder.hw or ""))
        if stop.is_set() and outcome.status != "done":  # killed by the stop, not failed
            return CellOutcome(cell, "cancelled")
        return outcome

    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="cell")
    try:
        pending: set[Future[CellOutcome]] = {pool.submit(work, c) for c in todo}
        while pending:
            done, pending = proc.wait_first(pending)
            for fut in done:
                tally(fut.result())
    except BaseException:
        stop.set()
        proc.kill_all()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def prepare_run_dir(out_dir: Path) -> RunDir:
    """The run directory, created and checked writable (bad input naming it otherwise)."""
    run_dir = RunDir(Path(out_dir))
    _check_writable(run_dir)
    return run_dir


def _check_writable(run_dir: RunDir) -> None:
    try:
        run_dir.cells_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir.cells_dir, prefix=f".probe.{owner_tag()}.", suffix=".tmp"):
            pass
    except OSError as exc:
        raise BadInput(f"--out-dir {run_dir.root} is not writable: {exc.strerror}",
                       hint="pick a directory you can write to (and with free space)") from None


def _quarantine(run_dir: RunDir, path: Path) -> None:
    """A corrupt cell file is moved aside (never trusted, never silently deleted) and redone."""
    dest = run_dir.corrupt_dir / f"{path.name}.{int(time.time())}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    path.replace(dest)
    warn(f"cell file {path.name} is corrupt or incomplete: moved to {dest.relative_to(run_dir.root)} and redoing it")
