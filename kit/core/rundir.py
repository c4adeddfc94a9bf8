"""The run directory: every path of a run, the pipeline's step markers, and the files each step wrote.

Nothing else spells a run-directory path. Bundle, report and compare ask a `RunDir` which files
belong to a run instead of looking around:

    <root>/run.json                    resolved options + environment fingerprint (pipeline)
           corpus/grid.json            the current grid; corpus/cells/<cell_id>.parquet its finished cells
           corpus/failures.jsonl       failed cells; corpus/summary[-shardKofN].json; assemble.json; corpus/corrupt/
           corpus/.locks/<writer>.lock the running writers (all, or shardKofN); cells/.work/<writer>/ their cells in flight
           corpus.parquet              the assembled corpus
           loso/summary.json, loso/folds.csv, loso/seed<N>/predictions.parquet, loso/loso_seed<N>.json
           verdict.json + loso/PROMOTE.json or loso/HOLD.json   one decision, ours and the fork's view
           models/ensemble.json + members' .onnx (+ .onnx.data) and .json sidecars + registry.rows.json
           report/index.html + REPORT_IMAGES + report/inputs.json (which verdict it shows)
           .pipeline/steps/<step>.json the step markers; .pipeline/lock, log.jsonl, stale/

A step marker records the hash of the step's inputs (`key`) and the sha256 of every file the step
wrote (`outputs`), written after the outputs, atomically: a marker exists only for a whole step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kit.core.console import warn
from kit.core.errors import BadInput
from kit.core.fsio import read_json, remove_stale, sha256_file, sweep_temp_files, write_json
from kit.core.ids import digest

PIPELINE_DIR = ".pipeline"
ENSEMBLE_JSON = "ensemble.json"  # in a models folder (models/ of a run, or any folder `predict --models` reads)
FORK_VERDICTS: tuple[str, ...] = ("PROMOTE", "HOLD")  # the fork's verdict file names (loso/<VERDICT>.json)
MEMBER_FILE_KEYS: tuple[str, ...] = ("onnx", "onnx_data", "sidecar")  # an ensemble.json member's files
# The report's pictures (kit.results.report draws them); index.html links the ones it drew.
REPORT_IMAGES: tuple[str, ...] = ("fold_plcc.png", "pred_vs_actual.png", "rate_quality.png")


def _rel(root: Path, p: Path) -> str:
    return p.resolve().relative_to(root.resolve()).as_posix()


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def of(cls, where: RunDir | str | Path) -> RunDir:
        """A RunDir for a run directory given as a RunDir or a path."""
        return where if isinstance(where, RunDir) else cls(Path(where))

    # ---- the layout -------------------------------------------------------------------------------

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def corpus_dir(self) -> Path:
        return self.root / "corpus"

    @property
    def cells_dir(self) -> Path:
        return self.corpus_dir / "cells"

    @property
    def cells_work_dir(self) -> Path:
        """Temporary per-cell folders of cells in flight (never finished files)."""
        return self.cells_dir / ".work"

    def cell_work_dir(self, writer: str) -> Path:
        """The in-flight cells of one writer (`kit.corpus.writer`): only that writer or its successor deletes them."""
        return self.cells_work_dir / writer

    def cell_path(self, cell_id: str) -> Path:
        return self.cells_dir / f"{cell_id}.parquet"

    @property
    def writer_locks_dir(self) -> Path:
        """One lock per corpus writer (the whole grid, or one shard), naming its pid and host."""
        return self.corpus_dir / ".locks"

    def writer_lock(self, writer: str) -> Path:
        return self.writer_locks_dir / f"{writer}.lock"

    @property
    def grid_json(self) -> Path:
        return self.corpus_dir / "grid.json"

    @property
    def failures(self) -> Path:
        return self.corpus_dir / "failures.jsonl"

    def corpus_summary(self, shard: tuple[int, int] | None = None) -> Path:
        return self.corpus_dir / ("summary.json" if shard is None else f"summary-shard{shard[0]}of{shard[1]}.json")

    @property
    def assemble_report(self) -> Path:
        """What `corpus assemble` checked and wrote (grid id, cells, corpus content sha256)."""
        return self.corpus_dir / "assemble.json"

    @property
    def corrupt_dir(self) -> Path:
        return self.corpus_dir / "corrupt"

    @property
    def import_json(self) -> Path:
        return self.corpus_dir / "import.json"

    @property
    def import_conflicts(self) -> Path:
        return self.corpus_dir / "import-conflicts.parquet"

    @property
    def corpus(self) -> Path:
        return self.root / "corpus.parquet"

    @property
    def corpus_jsonl(self) -> Path:
        return self.root / "corpus.jsonl"

    @property
    def loso_dir(self) -> Path:
        return self.root / "loso"

    @property
    def loso_summary(self) -> Path:
        return self.loso_dir / "summary.json"

    @property
    def loso_folds(self) -> Path:
        return self.loso_dir / "folds.csv"

    def loso_predictions(self, seed: int) -> Path:
        return self.loso_dir / f"seed{seed}" / "predictions.parquet"

    def loso_seed_json(self, seed: int) -> Path:
        """The fork's per-seed LOSO file (what its gate reads)."""
        return self.loso_dir / f"loso_seed{seed}.json"

    @property
    def verdict(self) -> Path:
        return self.root / "verdict.json"

    def fork_verdict(self, verdict: str) -> Path:
        """loso/PROMOTE.json or loso/HOLD.json: the fork's verdict file beside its loso_seed<N>.json."""
        if verdict not in FORK_VERDICTS:
            raise ValueError(f"{verdict!r} is not one of {FORK_VERDICTS}")
        return self.loso_dir / f"{verdict}.json"

    def fork_verdicts(self) -> list[Path]:
        """Both possible fork verdict files (whether present or not)."""
        return [self.fork_verdict(v) for v in FORK_VERDICTS]

    def verdict_files(self) -> list[Path]:
        """What `verdict` writes that exists: verdict.json and the fork's PROMOTE.json or HOLD.json."""
        return [p for p in (self.verdict, *self.fork_verdicts()) if p.is_file()]

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def ensemble_json(self) -> Path:
        return self.models_dir / ENSEMBLE_JSON

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report_index(self) -> Path:
        return self.report_dir / "index.html"

    @property
    def report_inputs(self) -> Path:
        """What the report was made from (kit.results.provenance): which verdict it shows."""
        return self.report_dir / "inputs.json"

    def report_image(self, name: str) -> Path:
        if name not in REPORT_IMAGES:
            raise ValueError(f"{name} is not one of the report's images {REPORT_IMAGES}")
        return self.report_dir / name

    @property
    def pipeline_dir(self) -> Path:
        return self.root / PIPELINE_DIR

    @property
    def lock_file(self) -> Path:
        return self.pipeline_dir / "lock"

    @property
    def log_file(self) -> Path:
        return self.pipeline_dir / "log.jsonl"

    @property
    def markers_dir(self) -> Path:
        return self.pipeline_dir / "steps"

    def marker(self, step: str) -> Path:
        return self.markers_dir / f"{step}.json"

    # ---- the files each step writes ---------------------------------------------------------------------

    def loso_files(self, seeds: Iterable[int]) -> list[Path]:
        """What `train` writes for these seeds (those present), never a seed left over from an older run."""
        seeds = [int(s) for s in seeds]
        wanted = [self.loso_summary, self.loso_folds, *(self.loso_predictions(s) for s in seeds),
                  *(self.loso_seed_json(s) for s in seeds)]
        return [p for p in wanted if p.is_file()]

    def model_files(self, ensemble: dict[str, Any]) -> list[Path]:
        """ensemble.json, the registry rows it names, and the .onnx (+ .onnx.data when the members use
        external data) + sidecar of every member it lists (whether present or not)."""
        files = [self.ensemble_json]
        if isinstance(ensemble.get("registry"), str):
            files.append(self.models_dir / ensemble["registry"])
        members = ensemble.get("members", [])
        for member in members if isinstance(members, list) else []:
            if not isinstance(member, dict):
                continue
            files += [self.models_dir / member[k] for k in MEMBER_FILE_KEYS if isinstance(member.get(k), str)]
        return files

    def report_files(self) -> list[Path]:
        """index.html, its inputs record and the report's images that exist (the report removes the ones
        it did not draw)."""
        if not self.report_index.is_file():
            return []
        return [self.report_index, *(p for p in (self.report_inputs,) if p.is_file()),
                *(p for p in map(self.report_image, REPORT_IMAGES) if p.is_file())]

    def bundle_files(self, seeds: Iterable[int], ensemble: dict[str, Any] | None) -> list[Path]:
        """Every file a bundle of this run may hold: run.json, corpus.parquet, the verdict files, the LOSO
        files of these seeds, the models `ensemble` lists (None: no models) and the report. The bundle
        writes no other file, and `verify` refuses a bundle holding one (a `loso/PR\u041eMOTE.json`
        saying PROMOTE beside an honest HOLD.json, a script)."""
        files = [p for p in (self.run_json, self.corpus) if p.is_file()] + self.verdict_files() + self.loso_files(seeds)
        return files + (self.model_files(ensemble) if ensemble is not None else []) + self.report_files()

    # ---- step markers ------------------------------------------------------------------------------

    def read_marker(self, step: str) -> dict[str, Any]:
        return read_json(self.marker(step), what=f"{step} step marker")

    def step_done(self, step: str, key: str) -> dict[str, Any] | None:
        """The marker if `step` finished with these inputs and its outputs are still intact, else None."""
        path = self.marker(step)
        if not path.is_file():
            return None
        try:
            marker = read_json(path, what="step marker")
        except BadInput:
            return None
        if not isinstance(marker, dict) or marker.get("key") != key:
            return None
        for rel, sha in (marker.get("outputs") or {}).items():
            p = self.root / rel
            if not p.is_file() or sha256_file(p) != sha:
                return None
        return marker

    def mark_done(self, step: str, key: str, outputs: Sequence[Path], info: dict[str, Any] | None = None) -> dict[str, Any]:
        """Written after the step's outputs, atomically: a marker exists only for a whole step."""
        marker = {"step": step, "key": key, "outputs": {_rel(self.root, p): sha256_file(p) for p in outputs},
                  "info": info or {}}
        write_json(self.marker(step), marker)
        return marker

    def clear_marker(self, step: str) -> None:
        self.marker(step).unlink(missing_ok=True)

    def outputs_digest(self, step: str) -> str:
        """One hash of the files a finished step wrote: the next step's input key."""
        return digest(self.read_marker(step).get("outputs") or {})

    def marked_steps(self, steps: Iterable[str]) -> list[str]:
        return [s for s in steps if self.marker(s).is_file()]

    def recorded_outputs(self, *, exclude: Iterable[str] = ("bundle",)) -> list[Path] | None:
        """Every file the step markers say this run wrote (intact, or BadInput naming the changed one);
        None when the run has no markers (it was not made by the pipeline)."""
        if not self.markers_dir.is_dir():
            return None
        skip = set(exclude)
        outputs: list[Path] = []
        for path in sorted(self.markers_dir.glob("*.json")):
            data = read_json(path, what=path.name)
            if not isinstance(data, dict) or data.get("step") in skip:
                continue
            for rel, sha in (data.get("outputs") or {}).items():
                p = self.root / rel
                if not p.is_file():
                    continue
                if sha256_file(p) != sha:
                    raise BadInput(f"{p} changed after the pipeline's {data.get('step')} step wrote it",
                                   hint="rerun `ensemble-kit pipeline` with the same options: it redoes what changed")
                outputs.append(p)
        return outputs or None

    def move_aside(self, path: Path, why: str) -> Path | None:
        """Results that no longer belong to this run go under .pipeline/stale/, never deleted."""
        if not path.exists():
            return None
        dest = self.pipeline_dir / "stale" / f"{path.name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        path.replace(dest)
        shown = _rel(self.root, path) if path.is_relative_to(self.root) else str(path)
        warn(f"{shown}: {why}; moved to {_rel(self.root, dest)}")
        return dest

    def sweep_temp(self) -> int:
        """Remove what a dead (SIGKILLed) run left here: atomic writes' `.*.tmp` files and in-flight cell
        folders whose process is gone (never a live run's). Every command that writes a run calls it first."""
        removed = sweep_temp_files(self.root)
        if self.cells_work_dir.is_dir():  # cell folders directly in .work/ (older runs) or in a writer's folder
            entries = list(self.cells_work_dir.iterdir())
            removed += remove_stale([*entries, *(p for d in entries if d.is_dir() for p in d.iterdir())])
        return removed

    def relative(self, path: Path) -> str:
        return _rel(self.root, path)
