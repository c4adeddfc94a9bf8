"""The run directory layout (see ARCHITECTURE.md), defined once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def corpus_dir(self) -> Path:
        return self.root / "corpus"

    @property
    def cells_dir(self) -> Path:
        return self.root / "corpus" / "cells"

    @property
    def failures(self) -> Path:
        return self.root / "corpus" / "failures.jsonl"

    @property
    def corpus(self) -> Path:
        return self.root / "corpus.parquet"

    @property
    def loso_dir(self) -> Path:
        return self.root / "loso"

    @property
    def verdict(self) -> Path:
        return self.root / "verdict.json"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def cell_path(self, cell_id: str) -> Path:
        return self.cells_dir / f"{cell_id}.parquet"
