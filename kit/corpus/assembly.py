"""`corpus assemble`: corpus.parquet from a sharded run, only when every cell of the grid is there.

Shards (Slurm array tasks, Kubernetes indexes, local processes) only write cells. This explicit step,
run once after all of them (the cluster's assemble job), reads `corpus/grid.json`, checks every cell
file of the grid (whole, right cell, every frame), and either writes `corpus.parquet` (the same content
hash a single-box run gets) or refuses, naming the missing cells, the shard that owns each, why it
failed when `failures.jsonl` says, and which writers are still running.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit.core.console import printable, warn
from kit.core.errors import KitError, WorkFailed
from kit.core.fsio import read_json, write_json
from kit.core.locking import holder_of
from kit.core.rundir import RunDir
from kit.corpus import table, writer
from kit.corpus.engine import cell_rows_ok
from kit.corpus.grid import GridCell, read_grid

NAMED_IN_MESSAGE = 8  # missing cells named in the one-line error (all of them are in --json)


@dataclass
class AssembleReport:
    run_dir: Path
    grid_id: str
    grid_cells: int
    shard_counts: list[int]  # the N of every shard summary of this grid (usually one)
    missing: list[dict[str, Any]] = field(default_factory=list)
    running: list[str] = field(default_factory=list)  # writers still holding their lock
    corpus: str | None = None
    corpus_rows: int = 0
    corpus_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "grid_id": self.grid_id, "grid_cells": self.grid_cells,
                "missing_cells": len(self.missing), "missing": self.missing, "running_writers": self.running,
                "corpus": self.corpus, "corpus_rows": self.corpus_rows, "corpus_sha256": self.corpus_sha256}

    def raise_if_missing(self) -> None:
        """Exit 4 naming the missing cells (and their shards); nothing is written while any is missing."""
        if not self.missing:
            return
        named = "; ".join(f"{m['label']} ({m['cell_id'][:12]}" + (f", shard {m['shard']}" if m["shard"] else "")
                          + (f", failed: {m['failure']}" if m["failure"] else "") + ")"
                          for m in self.missing[:NAMED_IN_MESSAGE])
        more = f"; and {len(self.missing) - NAMED_IN_MESSAGE} more" if len(self.missing) > NAMED_IN_MESSAGE else ""
        still = f"; still running: {', '.join(self.running)}" if self.running else ""
        shards = sorted({m["shard"] for m in self.missing if m["shard"]}, key=lambda s: int(s.split("/")[0]))
        rerun = (f"rerun shard(s) {', '.join(shards)} (Slurm: sbatch --array=<K> on the array script; "
                 "see docs/cluster.md)" if shards else "rerun the corpus command for this grid")
        raise WorkFailed(printable(f"{self.run_dir}: {len(self.missing)} of {self.grid_cells} grid cells are missing, "
                                   f"so corpus.parquet was not assembled: {named}{more}{still}"),
                         hint=f"{rerun}, then run `ensemble-kit corpus assemble` again: finished cells are kept")


def _shard_counts(run_dir: RunDir, grid_id: str) -> list[int]:
    """The shard counts N this grid was run with, from the shard summaries; warns about other grids'."""
    counts: set[int] = set()
    for path in sorted(run_dir.corpus_dir.glob("summary-shard*of*.json")):
        try:
            doc = read_json(path, what=path.name)
            k_text, n_text = str(doc["shard"]).split("/")
            k, n = int(k_text), int(n_text)
        except (KitError, KeyError, TypeError, ValueError, AttributeError):  # a damaged summary names nothing
            continue
        if doc.get("grid_id") and doc.get("grid_id") != grid_id:
            warn(printable(f"{path.name}: shard {k}/{n} last ran another grid ({doc.get('grid_id')}, not "
                           f"{grid_id}): its node found other sources, encoders or another ffmpeg; only the cells "
                           "of the current grid (corpus/grid.json) are assembled"))
            continue
        counts.add(n)
    return sorted(counts)


def _last_failures(run_dir: RunDir) -> dict[str, str]:
    """cell_id -> 'stage: reason' of its latest failure in failures.jsonl (damaged lines skipped)."""
    found: dict[str, str] = {}
    try:
        lines = run_dir.failures.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            rec = json.loads(line)
            found[str(rec["cell_id"])] = f"{rec.get('stage')}: {rec.get('reason')}"
        except (ValueError, KeyError, TypeError):
            continue
    return found


def _running_writers(run_dir: RunDir) -> list[str]:
    running = []
    for lock in sorted(run_dir.writer_locks_dir.glob("*.lock")):
        if lock.stem == writer.CLAIM_LOCK:
            continue
        holder = holder_of(lock)
        if holder is not None:
            running.append(holder.describe())
    return running


def _owner(cell: GridCell, counts: Sequence[int]) -> str | None:
    return f"{cell.index % counts[0]}/{counts[0]}" if len(counts) == 1 else None


def assemble_grid(run_dir: RunDir) -> AssembleReport:
    """Check every cell of the current grid; write corpus.parquet only when all are there (see module doc)."""
    run_dir = RunDir(Path(run_dir.root).resolve())
    grid_id, cells = read_grid(run_dir)
    report = AssembleReport(run_dir.root, grid_id, len(cells), _shard_counts(run_dir, grid_id))
    failures = _last_failures(run_dir)
    for cell in cells:
        path = run_dir.cell_path(cell.cell_id)
        if not (path.is_file() and cell_rows_ok(path, cell.cell_id, cell.n_frames)):
            report.missing.append({"cell_id": cell.cell_id, "label": cell.label, "src": cell.src,
                                   "encoder": cell.encoder, "cq": cell.cq, "shard": _owner(cell, report.shard_counts),
                                   "failure": failures.get(cell.cell_id),
                                   "present_but_damaged": path.exists()})
    if report.missing:
        report.running = _running_writers(run_dir)
        return report
    df = table.read_cells([run_dir.cell_path(c.cell_id) for c in cells], {c.cell_id: c.src for c in cells})
    table.write_corpus(df, run_dir.corpus)
    report.corpus, report.corpus_rows, report.corpus_sha256 = str(run_dir.corpus), len(df), table.corpus_sha256(df)
    write_json(run_dir.assemble_report, report.to_json())
    return report
