"""One grid, one writer: who may compute cells in a run directory right now.

A writer is one `corpus` run over the whole grid (`all`) or over one shard (`shard3of8`). Each holds
`corpus/.locks/<writer>.lock` (kit.core.locking: the OS drops it when the process dies) for its whole
run, and keeps its cells in flight under `corpus/cells/.work/<writer>/`. So:

- a second launch of the same writer on the same directory exits 2 naming the running one (pid, host);
- a writer whose cells overlap a running one's (the whole grid vs a shard, another shard count) or that
  plans another grid than a running writer exits 2 the same way: one grid per directory at a time;
- in-flight work is deleted only by its own writer's successor (same lock, so the old one is dead) or,
  for another writer's folder, when that writer's lock is free: a live process's work is never touched.

Shards of one grid run side by side (Slurm array tasks, Kubernetes indexes, local processes).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from kit.core.errors import BadInput
from kit.core.locking import HeldLock, Holder, holder_of, try_acquire
from kit.core.rundir import RunDir

ALL = "all"
CLAIM_LOCK = "claim"  # held only while a writer checks the others, so two starting at once see each other


def writer_name(shard: tuple[int, int] | None) -> str:
    return ALL if shard is None else f"shard{shard[0]}of{shard[1]}"


def _shard_text(shard: tuple[int, int] | None) -> str:
    return "the whole grid" if shard is None else f"shard {shard[0]}/{shard[1]}"


def _parse_shard(value: object) -> tuple[int, int] | None:
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return value[0], value[1]
    return None


def overlaps(a: tuple[int, int] | None, b: tuple[int, int] | None) -> bool:
    """Two writers of one grid share cells: either covers the whole grid, or the shard counts differ."""
    return a is None or b is None or a == b or a[1] != b[1]


def _conflict(mine: tuple[int, int] | None, grid_id: str, holder: Holder) -> str | None:
    theirs = _parse_shard(holder.info.get("shard"))
    if holder.info.get("grid_id") != grid_id:
        return f"another grid ({holder.info.get('grid_id') or '?'}, {_shard_text(theirs)})"
    if overlaps(mine, theirs):
        return _shard_text(theirs)
    return None


@contextlib.contextmanager
def claim(run_dir: RunDir, shard: tuple[int, int] | None, grid_id: str) -> Iterator[Path]:
    """Become the writer of `shard` (None: the whole grid) of grid `grid_id`; -> its in-flight folder.

    Raises BadInput (exit 2) naming the running writer when this one would collide with it.
    """
    name = writer_name(shard)
    with _claim_lock(run_dir):
        got = try_acquire(run_dir.writer_lock(name), {"what": f"ensemble-kit corpus ({_shard_text(shard)})",
                                                      "shard": list(shard) if shard else None, "grid_id": grid_id})
        if isinstance(got, Holder):
            raise _busy(run_dir, _shard_text(shard), got)
        try:
            for other in sorted(run_dir.writer_locks_dir.glob("*.lock")):
                if other.stem in (name, CLAIM_LOCK):
                    continue
                holder = holder_of(other)
                if holder is not None and (what := _conflict(shard, grid_id, holder)) is not None:
                    raise _busy(run_dir, what, holder)
            work = _tidy(run_dir, name)
        except BaseException:
            got.release()
            raise
    with got:
        yield work


@contextlib.contextmanager
def _claim_lock(run_dir: RunDir) -> Iterator[None]:
    lock = try_acquire(run_dir.writer_lock(CLAIM_LOCK), {"what": "starting writer"}, wait=True)
    assert isinstance(lock, HeldLock)  # a blocking acquire waits instead of returning the holder
    with lock:
        yield


def _busy(run_dir: RunDir, what: str, holder: Holder) -> BadInput:
    return BadInput(f"--out-dir {run_dir.root}: ensemble-kit corpus is already computing {what} there "
                    f"({holder.describe()})",
                    hint="wait for it to finish (or stop it) and rerun: finished cells are reused; "
                         "to run shards side by side give each its own --shard K/N of the same grid")


def _tidy(run_dir: RunDir, name: str) -> Path:
    """Clear in-flight leftovers of dead writers (this one's predecessor, writers whose lock is free);
    -> this writer's empty in-flight folder. Called holding this writer's lock and the claim lock."""
    root = run_dir.cells_work_dir
    live = False
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if not entry.is_dir():
            continue
        lock = run_dir.writer_lock(entry.name)
        owned = entry.name == name or lock.is_file()  # a writer's folder (else: a pre-writer leftover)
        if entry.name == name or (owned and holder_of(lock) is None):
            shutil.rmtree(entry, ignore_errors=True)
        elif owned:
            live = True
    if not live:  # folders from before writers had their own (cell_id.random): no live writer can own them
        for entry in root.glob("*.*") if root.is_dir() else []:
            if entry.is_dir() and not run_dir.writer_lock(entry.name).is_file():
                shutil.rmtree(entry, ignore_errors=True)
    work = run_dir.cell_work_dir(name)
    work.mkdir(parents=True, exist_ok=True)
    return work
