"""The corpus grid: sources x encoders x cqs, each cell encoded, scored and written atomically.

A cell's id hashes everything that decides its rows (content, geometry, encoder argv, ffmpeg and libvmaf
identity, model) and nothing that changes run to run (timings, thread counts, device node), so a rerun
skips finished cells, redoes changed ones, and `corpus.parquet` is assembled from exactly the current
grid's cells. A failed cell is logged to `corpus/failures.jsonl` and the others go on.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from kit.core.errors import BadInput, WorkFailed
from kit.core.fsio import append_line, canonical_json, write_json, write_with
from kit.core.rundir import RunDir
from kit.core.schema import CORPUS_COLUMNS, DEFAULT_VMAF_MODEL, FEATURES, ROW_KEY, SORT_KEY, TARGET
from kit.corpus import encoders as enc_table
from kit.corpus import scoring
from kit.corpus.ffmpeg import EncoderProbe, FFmpeg, cpu_count, probe_encoder
from kit.corpus.sources import Source

CELL_SCHEMA_VERSION = 1
# Concurrent sessions a hardware encoder family takes before it starts refusing (consumer NVENC: 3-8).
HW_SESSION_LIMITS: dict[str, int] = {"cuda": 3, "qsv": 4, "vaapi": 4, "videotoolbox": 2}
# Relative encode cost, to start the longest cells first (less idle tail).
ENCODER_COST: dict[str, float] = {"libx265": 3.0, "libsvtav1": 2.0, "libx264": 1.0}


# ---- plan ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunContext:
    """What every row of this run carries besides its measurements."""

    ff: FFmpeg
    platform: str
    box_id: str
    env_fingerprint: str
    model: str = DEFAULT_VMAF_MODEL
    vmaf_cli: Path | None = None
    vmaf_cli_version: str | None = None

    @classmethod
    def detect(cls, ff: FFmpeg, *, model: str = DEFAULT_VMAF_MODEL, vmaf_cli: Path | None = None) -> RunContext:
        from kit.env import fingerprint as environment
        from kit.env import platform

        version = None
        if vmaf_cli is not None:
            with contextlib.suppress(Exception):
                import subprocess

                version = subprocess.run([str(vmaf_cli), "--version"], capture_output=True, text=True,
                                         timeout=30).stdout.strip() or "unknown"
        fp = environment.fingerprint(ff)
        return cls(ff=ff, platform=platform.detect().tag, box_id=platform.box_id(),
                   env_fingerprint=environment.fingerprint_id(fp), model=model, vmaf_cli=vmaf_cli,
                   vmaf_cli_version=version)

    def scorer_identity(self) -> dict[str, Any]:
        if self.vmaf_cli is not None:
            return {"backend": "vmaf-cli", "version": self.vmaf_cli_version}
        return {"backend": "ffmpeg-libvmaf", "libvmaf_version": self.ff.libvmaf_version}


@dataclass(frozen=True)
class Cell:
    source: Source
    encoder: enc_table.Encoder
    cq: int
    device: str | None  # render node for qsv/vaapi (not part of the id)
    encode_args: tuple[str, ...]  # output-side args: filters + encoder argv
    global_args: tuple[str, ...]  # hw device setup before the inputs
    cell_id: str

    @property
    def label(self) -> str:
        return f"{self.source.src} {self.encoder.name} cq{self.cq}"

    @property
    def stream_format(self) -> str:
        return enc_table.CODEC_STREAM_FORMAT[enc_table.codec_of(self.encoder)]

    @property
    def cost(self) -> float:
        s = self.source
        return s.n_frames * s.width * s.height * ENCODER_COST.get(self.encoder.name, 1.0)


def cell_key(source: Source, encoder: enc_table.Encoder, cq: int, encode_args: Sequence[str], ctx: RunContext) -> dict[str, Any]:
    """Everything that decides a cell's rows; timings, threads and device nodes deliberately left out."""
    return {"cell_schema": CELL_SCHEMA_VERSION, "src_sha256": source.src_sha256, "geometry": source.geometry,
            "encoder": encoder.name, "cq": cq, "argv": list(encode_args), "ffmpeg": ctx.ff.identity(),
            "scorer": ctx.scorer_identity(), "model": ctx.model}


def make_cell_id(key: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(key, indent=None).encode()).hexdigest()[:24]


def check_encoders(ff: FFmpeg, names: Sequence[str]) -> dict[str, EncoderProbe]:
    """Unknown names and encoders that cannot encode on this box are bad input naming what does work."""
    encs = [enc_table.get(n) for n in names]  # unknown name -> BadInput
    probes = {e.name: probe_encoder(ff, e.name) for e in encs}
    bad = [p for p in probes.values() if not p.ok]
    if bad:
        working = [n for n in enc_table.ENCODERS if probe_encoder(ff, n).ok]
        why = "; ".join(f"{p.encoder}: {p.reason}" for p in bad)
        raise BadInput(f"--encoders: not available on this box: {why}",
                       hint=f"encoders that work here: {', '.join(working) or 'none'}")
    return probes


def check_cqs(encoder_names: Sequence[str], cqs: Sequence[int]) -> None:
    for name in encoder_names:
        for cq in cqs:
            enc_table.get(name).check_cq(cq)


def plan_grid(sources: Sequence[Source], encoder_names: Sequence[str], cqs: Sequence[int], ctx: RunContext,
              probes: dict[str, EncoderProbe] | None = None) -> list[Cell]:
    """The full grid in its canonical order (src, encoder, cq)."""
    check_cqs(encoder_names, cqs)
    cells = []
    for source in sorted(sources, key=lambda s: (s.src, s.src_sha256)):
        for name in encoder_names:
            enc = enc_table.get(name)
            device = probes[name].device if probes and name in probes else None
            pre, vf = enc_table.hw_setup(enc, device, ten_bit=source.bit_depth > 8)
            for cq in sorted(set(cqs)):
                encode_args = (*(["-vf", vf] if vf else []), *enc.argv(cq))
                # the id sees the hw setup without the node path: moving to another node is the same cell
                id_args = [a.replace(device, "<node>") if device else a for a in (*pre, *encode_args)]
                cid = make_cell_id(cell_key(source, enc, cq, id_args, ctx))
                cells.append(Cell(source, enc, cq, device, tuple(encode_args), tuple(pre), cid))
    return cells


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' with 0 <= K < N (0-based, like Slurm's 0-based arrays and Kubernetes' JOB_COMPLETION_INDEX)."""
    try:
        k_text, n_text = text.split("/")
        k, n = int(k_text), int(n_text)
    except ValueError:
        raise BadInput(f"--shard {text!r} is not K/N", hint="e.g. --shard 0/4 ... --shard 3/4") from None
    if n < 1 or not 0 <= k < n:
        raise BadInput(f"--shard {text}: need 0 <= K < N", hint=f"use --shard 0/{max(n, 1)} ... {max(n, 1) - 1}/{max(n, 1)}")
    return k, n


def shard_cells(cells: Sequence[Cell], k: int, n: int) -> list[Cell]:
    """Cell i of the canonical grid order goes to shard i mod N: deterministic and mixes sources and cqs."""
    return [c for i, c in enumerate(cells) if i % n == k]


def default_jobs(encoder_names: Sequence[str]) -> int:
    """One cell per core: encoders and libvmaf threads overlap across cells; hw families are capped separately."""
    return cpu_count()


# ---- one cell ------------------------------------------------------------------------------------------

def cell_timeout(source: Source, encoder: enc_table.Encoder) -> float:
    """Generous per-tool limit so only a hung tool hits it: 120 s plus 2 s per megapixel-frame (x3 for slow encoders)."""
    mp_frames = source.n_frames * source.width * source.height / 1e6
    return 120.0 + 2.0 * mp_frames * ENCODER_COST.get(encoder.name, 1.0)


def _rows(cell: Cell, ctx: RunContext, result: scoring.ScoreResult, enc_bytes: int, enc_ms: float) -> pd.DataFrame:
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


def run_cell(cell: Cell, ctx: RunContext, run_dir: RunDir, *, vmaf_threads: int | Callable[[], int] = 1,
             timeout: float | None = None,
             hw_gate: threading.Semaphore | None = None) -> int:
    """Encode, score, write `cells/<cell_id>.parquet` atomically; -> rows. Raises scoring.ToolFailed."""
    s, ff = cell.source, ctx.ff
    limit = timeout if timeout is not None else cell_timeout(s, cell.encoder)
    work_root = run_dir.cells_dir / ".work"
    work_root.mkdir(parents=True, exist_ok=True)
    wd = Path(tempfile.mkdtemp(prefix=f"{cell.cell_id}.", dir=work_root))
    try:
        stream = wd / f"encoded.{cell.stream_format}"
        argv = [str(ff.path), "-nostdin", "-hide_banner", "-v", "error", *cell.global_args, *s.input_args(),
                "-map", "0:v:0", "-an", "-sn", "-dn", "-fps_mode", "passthrough", *cell.encode_args,
                "-progress", "pipe:1", "-nostats", "-f", cell.stream_format, "-y", str(stream)]
        with hw_gate or contextlib.nullcontext():
            enc_ms, enc_err, progress = scoring.run_tool("encode", argv, timeout=limit, stdout=True)
        enc_bytes = stream.stat().st_size if stream.exists() else 0
        if enc_bytes == 0:
            raise scoring.ToolFailed("encode", "the encoder exited 0 but wrote 0 bytes", enc_err[-scoring.STDERR_TAIL:])
        encoded = re.findall(r"^frame=(\d+)", progress, re.M)
        if not encoded or int(encoded[-1]) != s.n_frames:
            got = encoded[-1] if encoded else "an unknown number of"
            raise scoring.ToolFailed("encode", f"the encoder wrote {got} frames but the reference has {s.n_frames}",
                                     enc_err[-scoring.STDERR_TAIL:])
        threads = vmaf_threads() if callable(vmaf_threads) else vmaf_threads  # decided now: fewer cells left, more threads
        result = scoring.score(ff, s, ["-f", cell.stream_format, "-i", str(stream)], n_threads=threads,
                               model=ctx.model, expected_frames=s.n_frames, timeout=limit, workdir=wd,
                               vmaf_cli=ctx.vmaf_cli)
        df = _rows(cell, ctx, result, enc_bytes, enc_ms)
        write_with(run_dir.cell_path(cell.cell_id), lambda tmp: df.to_parquet(tmp, index=False))
        return len(df)
    finally:
        shutil.rmtree(wd, ignore_errors=True)


def cell_file_ok(path: Path, cell: Cell) -> bool:
    """A finished cell file is trusted only if it reads back whole and matches its cell exactly."""
    try:
        df = pq.read_table(path).to_pandas()
    except Exception:  # noqa: BLE001 - any unreadable file is simply redone
        return False
    if list(df.columns) != list(CORPUS_COLUMNS) or len(df) != cell.source.n_frames:
        return False
    if set(df["cell_id"]) != {cell.cell_id} or list(df["frame_index"]) != list(range(cell.source.n_frames)):
        return False
    values = df[[TARGET, *FEATURES]]
    return bool(values.notna().all().all())


# ---- the run -------------------------------------------------------------------------------------------

@dataclass
class CellOutcome:
    cell: Cell
    status: str  # "done" | "reused" | "failed"
    rows: int = 0
    reason: str = ""
    seconds: float = 0.0


@dataclass
class CorpusSummary:
    grid_cells: int
    shard: tuple[int, int] | None
    planned: int  # cells this run is responsible for (the shard's share)
    done: int = 0
    reused: int = 0
    redone_corrupt: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    corpus_path: str | None = None
    corpus_rows: int = 0
    missing_cells: int = 0  # grid cells without a finished file (failed, or other shards still running)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def raise_if_failed(self, failures_file: Path, hint: str) -> None:
        """Exit 4 with the count and where the details are; the finished cells stay on disk."""
        if self.failed:
            raise WorkFailed(f"{len(self.failed)} of {self.planned} corpus cells failed (details in "
                             f"{failures_file}); the finished cells are kept", hint=hint)

    def to_json(self) -> dict[str, Any]:
        return {"grid_cells": self.grid_cells, "shard": f"{self.shard[0]}/{self.shard[1]}" if self.shard else None,
                "planned": self.planned, "done": self.done, "reused": self.reused,
                "redone_corrupt": self.redone_corrupt, "failed": len(self.failed),
                "failures": [{k: f[k] for k in ("cell_id", "src", "encoder", "cq", "stage", "reason")} for f in self.failed],
                "corpus": self.corpus_path, "corpus_rows": self.corpus_rows, "missing_cells": self.missing_cells,
                "wall_s": round(self.wall_s, 3)}


def _utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _failure_record(cell: Cell, exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, scoring.ToolFailed):
        stage, reason, tail, code = exc.stage, exc.reason, exc.stderr_tail, exc.returncode
    else:
        stage, reason, tail, code = "internal", f"{type(exc).__name__}: {exc}", "", None
    return {"cell_id": cell.cell_id, "src": cell.source.src, "src_sha256": cell.source.src_sha256,
            "encoder": cell.encoder.name, "cq": cell.cq, "stage": stage, "reason": reason, "returncode": code,
            "stderr_tail": tail, "utc": _utc()}


ProgressFn = Callable[[CellOutcome, int, int], None]


def run_corpus(run_dir: RunDir, sources: Sequence[Source], encoder_names: Sequence[str], cqs: Sequence[int], *,
               ff: FFmpeg, jobs: int | None = None, shard: tuple[int, int] | None = None,
               vmaf_threads: int | None = None, model: str = DEFAULT_VMAF_MODEL, timeout: float | None = None,
               vmaf_cli: Path | None = None, progress: ProgressFn | None = None,
               on_plan: Callable[[int], None] | None = None, ctx: RunContext | None = None) -> CorpusSummary:
    """Run (this shard of) the grid; reuse valid finished cells; assemble corpus.parquet when the grid is whole.

    Raises BadInput for unknown/unavailable encoders or out-of-range cqs before any work starts. Cell
    failures do not raise: they are in `summary.failed` and `corpus/failures.jsonl`.
    """
    t0 = time.perf_counter()
    run_dir = RunDir(Path(run_dir.root).resolve())  # tools run in temp dirs: paths must be absolute
    if not sources:
        raise BadInput("no reference sources", hint="pass --ref-dir with clips, or --demo")
    check_cqs(encoder_names, cqs)
    probes = check_encoders(ff, encoder_names)
    ctx = ctx or RunContext.detect(ff, model=model, vmaf_cli=vmaf_cli)
    grid = plan_grid(sources, encoder_names, cqs, ctx, probes)
    mine = shard_cells(grid, *shard) if shard else list(grid)
    summary = CorpusSummary(grid_cells=len(grid), shard=shard, planned=len(mine))
    _check_writable(run_dir)
    _write_grid(run_dir, grid, ctx, encoder_names, cqs)

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
    work_root = run_dir.cells_dir / ".work"
    for cell in todo:  # leftovers of a killed run's in-flight cells (never finished files)
        for stale in work_root.glob(f"{cell.cell_id}.*"):
            shutil.rmtree(stale, ignore_errors=True)
    if on_plan:
        on_plan(len(todo))

    jobs = max(1, jobs or default_jobs(encoder_names))
    cores = cpu_count()
    unfinished = [len(todo)]  # cells not yet finished; read by workers, written by this thread

    def scorer_threads() -> int:
        """cores / cells running: one libvmaf thread each in the bulk, all cores for the last few (the
        tail would otherwise leave cores idle). Threads never change the values, so not in the cell id."""
        return vmaf_threads or max(1, cores // max(1, min(jobs, unfinished[0])))
    gates = {hw: threading.Semaphore(n) for hw, n in HW_SESSION_LIMITS.items()}
    stop = threading.Event()

    def work(cell: Cell) -> CellOutcome:
        if stop.is_set():
            return CellOutcome(cell, "cancelled")
        start = time.perf_counter()
        try:
            rows = run_cell(cell, ctx, run_dir, vmaf_threads=scorer_threads, timeout=timeout,
                            hw_gate=gates.get(cell.encoder.hw or ""))
            return CellOutcome(cell, "done", rows=rows, seconds=time.perf_counter() - start)
        except Exception as exc:  # noqa: BLE001 - one failed cell must not stop the others
            if stop.is_set():
                return CellOutcome(cell, "cancelled")
            if _out_of_space(exc):  # every further cell would fail the same way: stop, keep what is done
                stop.set()
                return CellOutcome(cell, "fatal", reason=str(exc))
            record = _failure_record(cell, exc)
            append_line(run_dir.failures, canonical_json(record, indent=None))
            summary.failed.append(record)
            return CellOutcome(cell, "failed", reason=f"{record['stage']}: {record['reason']}",
                               seconds=time.perf_counter() - start)

    finished = 0
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="cell")
    try:
        pending: set[Future[CellOutcome]] = {pool.submit(work, c) for c in todo}
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in done:
                outcome = fut.result()
                if outcome.status == "fatal":
                    raise BadInput(f"--out-dir {run_dir.root}: no space left on device (or it became unwritable) "
                                   f"while writing cell {outcome.cell.label}",
                                   hint="free space (or pick another --out-dir) and rerun: finished cells are kept")
                finished += 1
                unfinished[0] = len(todo) - finished
                if outcome.status == "done":
                    summary.done += 1
                if progress:
                    progress(outcome, finished, len(todo))
    except BaseException:
        stop.set()
        scoring.kill_all()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    summary.failed.sort(key=lambda r: (r["src"], r["encoder"], r["cq"]))

    present = [c for c in grid if run_dir.cell_path(c.cell_id).exists()]
    summary.missing_cells = len(grid) - len(present)
    if shard is None or summary.missing_cells == 0:
        summary.corpus_rows = assemble(run_dir, present)
        summary.corpus_path = str(run_dir.corpus)
    summary.wall_s = time.perf_counter() - t0
    write_json(run_dir.corpus_dir / "summary.json" if shard is None else
               run_dir.corpus_dir / f"summary-shard{shard[0]}of{shard[1]}.json", summary.to_json())
    return summary


def prepare_run_dir(out_dir: Path) -> RunDir:
    """The run directory, created and checked writable (bad input naming it otherwise)."""
    run_dir = RunDir(Path(out_dir))
    _check_writable(run_dir)
    return run_dir


def _out_of_space(exc: BaseException) -> bool:
    """Disk full / read-only out-dir, whether Python or a tool (ffmpeg's stderr) hit it."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return True
    text = f"{exc} {getattr(exc, 'stderr_tail', '')}"
    return "No space left on device" in text or "Disk quota exceeded" in text or "Read-only file system" in text


def _check_writable(run_dir: RunDir) -> None:
    try:
        run_dir.cells_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir.cells_dir, prefix=".probe-"):
            pass
    except OSError as exc:
        raise BadInput(f"--out-dir {run_dir.root} is not writable: {exc.strerror}",
                       hint="pick a directory you can write to (and with free space)") from None


def _quarantine(run_dir: RunDir, path: Path) -> None:
    """A corrupt cell file is moved aside (never trusted, never silently deleted) and redone."""
    from kit.core.console import warn

    dest = run_dir.corpus_dir / "corrupt" / f"{path.name}.{int(time.time())}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    path.replace(dest)
    warn(f"cell file {path.name} is corrupt or incomplete: moved to {dest.relative_to(run_dir.root)} and redoing it")


def _write_grid(run_dir: RunDir, grid: Sequence[Cell], ctx: RunContext, encoder_names: Sequence[str],
                cqs: Sequence[int]) -> None:
    """corpus/grid.json: the current grid (which cells corpus.parquet must hold) and what made it."""
    write_json(run_dir.corpus_dir / "grid.json", {
        "encoders": list(encoder_names), "cqs": sorted(set(cqs)), "model": ctx.model,
        "ffmpeg": {**ctx.ff.identity(), "path": str(ctx.ff.path), "origin": ctx.ff.origin},
        "scorer": ctx.scorer_identity(), "platform": ctx.platform, "box_id": ctx.box_id,
        "env_fingerprint": ctx.env_fingerprint,
        "sources": sorted({(c.source.src, c.source.src_sha256): c.source.geometry | {"src": c.source.src,
                           "src_sha256": c.source.src_sha256} for c in grid}.values(), key=lambda d: str(d["src"])),
        "cells": [{"cell_id": c.cell_id, "src": c.source.src, "encoder": c.encoder.name, "cq": c.cq} for c in grid],
    })


def read_cells(paths: Sequence[Path]) -> pd.DataFrame:
    frames = [pq.read_table(p).to_pandas() for p in paths]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in CORPUS_COLUMNS.items()})
    return pd.concat(frames, ignore_index=True)


def canonical_order(df: pd.DataFrame) -> pd.DataFrame:
    return df.astype(CORPUS_COLUMNS).sort_values(list(SORT_KEY), kind="mergesort").reset_index(drop=True)[list(CORPUS_COLUMNS)]


def write_corpus(df: pd.DataFrame, path: Path) -> None:
    df = canonical_order(df)
    write_with(path, lambda tmp: df.to_parquet(tmp, index=False))


def assemble(run_dir: RunDir, cells: Sequence[Cell]) -> int:
    """corpus.parquet from exactly these cells' files, in canonical row order; -> rows."""
    df = read_cells([run_dir.cell_path(c.cell_id) for c in cells])
    write_corpus(df, run_dir.corpus)
    return len(df)


# ---- merging corpora and shards from several boxes ------------------------------------------------------

VALUE_COLUMNS: tuple[str, ...] = ("enc_bytes", TARGET, *FEATURES)


def dedupe(df: pd.DataFrame) -> tuple[pd.DataFrame, int, pd.DataFrame]:
    """-> (rows unique on ROW_KEY, exact duplicates dropped, rows of keys whose values conflict).

    The first occurrence (input order) of a conflicting key is kept; every version is returned so the
    caller reports them instead of hiding them.
    """
    df = df.reset_index(drop=True)
    exact = df.duplicated(subset=[*ROW_KEY, *VALUE_COLUMNS], keep="first")
    rest = df[~exact]
    conflicting = rest.duplicated(subset=list(ROW_KEY), keep=False)
    kept = rest.drop_duplicates(subset=list(ROW_KEY), keep="first")
    return kept, int(exact.sum()), rest[conflicting]


def load_corpus_input(path: Path) -> pd.DataFrame:
    """A run dir (its corpus.parquet, or its finished grid cells when it is a shard), a .parquet or old-kit .jsonl."""
    from kit.corpus import legacy

    path = Path(path)
    if path.is_dir():
        rd = RunDir(path)
        if rd.corpus.is_file():
            path = rd.corpus
        else:
            grid_file = rd.corpus_dir / "grid.json"
            if not grid_file.is_file():
                raise BadInput(f"{path} holds neither corpus.parquet nor corpus/grid.json",
                               hint="pass a run directory made by `ensemble-kit corpus`, or a corpus file")
            from kit.core.fsio import read_json

            grid = read_json(grid_file, what="grid")
            cells = [rd.cell_path(c["cell_id"]) for c in grid["cells"]]
            return read_cells([c for c in cells if c.is_file()])
    if path.suffix == ".jsonl":
        return legacy.read_jsonl([path])
    try:
        df = pq.read_table(path).to_pandas()
    except Exception as exc:  # noqa: BLE001 - any unreadable input is bad input naming it
        raise BadInput(f"cannot read corpus {path}: {exc}", hint="pass a corpus .parquet, a run directory or an old-kit .jsonl") from None
    missing = [c for c in CORPUS_COLUMNS if c not in df.columns]
    if missing:
        raise BadInput(f"{path} is not an ensemble-kit corpus (missing {', '.join(missing[:5])})",
                       hint="old-kit JSONL goes through `ensemble-kit corpus import`")
    return df[list(CORPUS_COLUMNS)]


def merge(inputs: Sequence[Path], out: Path) -> dict[str, Any]:
    """`ensemble-kit merge`: concatenate inputs in order, de-duplicate on ROW_KEY, write canonical order."""
    from kit.corpus import legacy

    if not inputs:
        raise BadInput("merge needs at least one input", hint="pass run directories or corpus files")
    frames = [load_corpus_input(p).astype(CORPUS_COLUMNS) for p in inputs]
    kept, dropped, conflicts = dedupe(pd.concat(frames, ignore_index=True))
    out = Path(out)
    if out.suffix == ".jsonl":
        legacy.write_jsonl(kept, out)
    else:
        write_corpus(kept, out)
    report: dict[str, Any] = {"inputs": len(inputs), "rows": len(kept), "duplicates_dropped": dropped,
                              "conflicts": int(conflicts[list(ROW_KEY)].drop_duplicates().shape[0]),
                              "out": str(out), "conflicts_file": None}
    if len(conflicts):
        cpath = out.with_name(out.stem + ".conflicts.parquet")
        write_with(cpath, lambda tmp: conflicts.to_parquet(tmp, index=False))
        report["conflicts_file"] = str(cpath)
    return report
