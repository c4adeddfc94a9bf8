"""What LOSO training leaves in run_dir/loso/, and reading it back: pandas only, no torch.

  folds.csv                     one row per (seed, fold): frame- and encode-level PLCC/SROCC/KROCC/RMSE
  seed<N>/predictions.parquet   held-out predictions of seed N, one row per corpus frame
  summary.json                  seeds, config, codec layout, corpus summary, per-seed aggregates, environment
                                (+ gate_thresholds, when `train --corpus RUN|BUNDLE` carried that run's in)
  loso_seed<N>.json             the fork's per-seed file (train_fr_regressor_v2_ensemble_loso.py's keys):
                                what its gate (validate_ensemble_seeds.py) reads, so `loso/` is a fork loso dir

Byte-identical on every run of the same corpus in the same environment, except one measured value:
`wall_time_s` in loso_seed<N>.json (the wall time of the whole batched LOSO, all seeds trained
together). The gate, the report and the exporter read LOSO results through here, so none of them
needs the trainer (or torch) to do it.

The fork's per-seed numbers are ours: `mean_plcc` is exactly the gate's per-seed value (mean of the
finite fold PLCCs); min/max leave NaN folds out (the fork's depend on fold order then); `srocc` is
scipy's, ties averaged (the fork ranks without averaging ties, which differs only on tied values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kit.core.errors import BadInput
from kit.core.fsio import json_safe, read_json, write_json, write_text, write_with
from kit.core.rundir import RunDir
from kit.train.config import SUMMARY_GATE_KEY, TrainConfig
from kit.train.metrics import nan_safe_summary

SCHEMA_VERSION = 1
PREDICTION_COLUMNS = ("seed", "fold_src_sha256", "src", "encoder", "cq", "frame_index", "vmaf", "pred")


@dataclass
class LosoResult:
    seeds: tuple[int, ...]
    config: TrainConfig
    folds: pd.DataFrame  # one row per (seed, fold)
    predictions: pd.DataFrame  # held-out predictions, PREDICTION_COLUMNS
    corpus: dict[str, Any]  # kit.corpus.table.corpus_summary(): sha256, n_rows, n_sources, sources...
    codec: dict[str, Any] = field(default_factory=dict)  # kit.train.codec.CodecSpec.to_dict(): vocab, cq range
    fingerprint: dict[str, Any] = field(default_factory=dict)
    fingerprint_id: str = ""
    wall_time_s: float = math.nan  # measured (the one non-deterministic number); only the fork's files carry it
    # the gate thresholds a `train --corpus RUN|BUNDLE` took from that run, for a later `verdict` (None: none)
    gate_thresholds: dict[str, float] | None = None

    def per_seed(self) -> dict[int, dict[str, float | int]]:
        """NaN-safe mean/std/min/max of the fold PLCCs of each seed."""
        return {s: nan_safe_summary(self.folds.loc[self.folds["seed"] == s, "plcc"].tolist()) for s in self.seeds}

    def summary(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "seeds": list(self.seeds),
            "config": self.config.to_dict(),
            "codec": self.codec,
            "corpus": self.corpus,
            "per_seed": {str(s): v for s, v in self.per_seed().items()},
            "fingerprint": self.fingerprint,
            "fingerprint_id": self.fingerprint_id,
            **({SUMMARY_GATE_KEY: self.gate_thresholds} if self.gate_thresholds is not None else {}),
        }


def fork_seed_file(result: LosoResult, seed: int) -> dict[str, Any]:
    """loso_seed<N>.json: the fork trainer's keys, this run's numbers; what only we know under `ensemble_kit`."""
    folds = result.folds[result.folds["seed"] == seed].sort_values("fold_src_sha256", kind="mergesort")
    plcc = nan_safe_summary(folds["plcc"].tolist())
    config = result.config
    return json_safe({
        "seed": int(seed),
        "corpus": "corpus.parquet",  # relative to the run directory: the rows every fold was cut from
        "n_folds": int(len(folds)),
        "folds": [{"held_out": str(r.fold_src), "n_train": int(r.n_train), "n_val": int(r.n_frames),
                   "plcc": float(r.plcc), "srocc": float(r.srocc), "rmse": float(r.rmse)} for r in folds.itertuples()],
        "mean_plcc": plcc["mean"],
        "std_plcc": plcc["std"] if plcc["n"] >= 2 else math.nan,
        "min_plcc": plcc["min"],
        "max_plcc": plcc["max"],
        "mean_srocc": nan_safe_summary(folds["srocc"].tolist())["mean"],
        "mean_rmse": nan_safe_summary(folds["rmse"].tolist())["mean"],
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "num_codecs": result.codec.get("num_codecs"),
        "encoder_vocab_version": result.codec.get("encoder_vocab_version"),
        "wall_time_s": result.wall_time_s,
        "ensemble_kit": {"corpus_sha256": result.corpus.get("sha256"), "codec_vocab": result.codec.get("vocab"),
                         "fingerprint_id": result.fingerprint_id, "nan_folds": plcc["n_nan"],
                         "wall_time_note": "the whole batched LOSO (all seeds trained together)"},
    })


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Parquet with fixed settings and no pandas index metadata: same frame -> same bytes."""
    table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
    write_with(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", compression_level=3, write_statistics=False))


def write_loso(result: LosoResult, run_dir: RunDir | str | Path) -> list[Path]:
    """Write run_dir/loso/; -> the files written (what the train step records)."""
    run_dir = RunDir.of(run_dir)
    run_dir.loso_dir.mkdir(parents=True, exist_ok=True)
    for seed in result.seeds:
        part = result.predictions[result.predictions["seed"] == seed].reset_index(drop=True)
        _write_parquet(part, run_dir.loso_predictions(seed))
    write_text(run_dir.loso_folds, result.folds.to_csv(index=False, lineterminator="\n", float_format="%.17g"))
    write_json(run_dir.loso_summary, json_safe(result.summary()))
    for seed in result.seeds:
        write_json(run_dir.loso_seed_json(seed), fork_seed_file(result, seed))
    return run_dir.loso_files(result.seeds)


def load_loso(run_dir: RunDir | str | Path, *, with_predictions: bool = False) -> LosoResult:
    """Read back what `train` wrote (for `verdict`, `export` and `report`)."""
    run_dir = RunDir.of(run_dir)
    if not run_dir.loso_summary.is_file() or not run_dir.loso_folds.is_file():
        raise BadInput(f"{run_dir.loso_dir}: no LOSO results (summary.json/folds.csv)", hint="run `ensemble-kit train` first")
    summary = read_json(run_dir.loso_summary, what="loso/summary.json")
    seeds = tuple(int(s) for s in summary["seeds"])
    folds = pd.read_csv(run_dir.loso_folds, dtype={"fold_src": str, "fold_src_sha256": str})
    predictions = pd.DataFrame(columns=list(PREDICTION_COLUMNS))
    if with_predictions:
        parts = [pd.read_parquet(run_dir.loso_predictions(s)) for s in seeds if run_dir.loso_predictions(s).is_file()]
        if parts:
            predictions = pd.concat(parts, ignore_index=True)
    return LosoResult(
        seeds=seeds,
        config=TrainConfig.from_dict(summary["config"]),
        folds=folds,
        predictions=predictions,
        corpus=summary["corpus"],
        codec=summary.get("codec") or {},
        fingerprint=summary.get("fingerprint", {}),
        fingerprint_id=summary.get("fingerprint_id", ""),
        gate_thresholds=summary.get(SUMMARY_GATE_KEY),
    )
