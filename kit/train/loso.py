"""Leave-one-source-out cross-validation over seeds x folds, trained as one batched computation.

One fold per distinct source (`src_sha256`); each fold's scaler is fit on its training rows only.
Every (seed, fold) model has its own generator keyed by (seed, the held-out source's sha256), so
fold k of seed s is the same model whatever other seeds or folds run beside it.

Outputs (run_dir/loso/, byte-identical on every run of the same corpus in the same environment):
  folds.csv                     one row per (seed, fold): frame- and encode-level PLCC/SROCC/KROCC/RMSE
  seed<N>/predictions.parquet   held-out predictions of seed N, one row per corpus frame
  summary.json                  seeds, config, corpus summary, per-seed aggregates, environment
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kit.core.errors import BadInput
from kit.core.fsio import read_json, write_json, write_text, write_with
from kit.train.batched import Job, predict, train_models
from kit.train.config import TrainConfig
from kit.train.data import (
    canonical_order,
    check_trainable,
    codec_block,
    codec_layout,
    corpus_summary,
    features,
    normalise,
    target,
)
from kit.train.metrics import fold_metrics, nan_safe_summary

SCHEMA_VERSION = 1
LOSO_TAG = 1  # generator key domain: LOSO models
FULL_TAG = 0  # generator key domain: full-corpus (export) models
PREDICTION_COLUMNS = ("seed", "fold_src_sha256", "src", "encoder", "cq", "frame_index", "vmaf", "pred")


@dataclass(frozen=True)
class Scaler:
    """Feature standardisation fit on training rows only (std 0 -> 1, so constant features pass)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Scaler:
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        return cls(mean, np.where(std > 0, std, 1.0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}


def model_inputs(df: pd.DataFrame, scaler: Scaler) -> np.ndarray:
    """[standardised features | codec block] as float32: what the regressor sees."""
    return np.hstack([scaler.transform(features(df)), codec_block(df).astype(np.float64)]).astype(np.float32)


def source_key(src_sha256: str) -> int:
    """64 bits of the source id for a generator key (ids may be legacy 'name:<src>', not hex)."""
    return int(hashlib.sha256(src_sha256.encode()).hexdigest()[:16], 16)


def prepare_folds(df: pd.DataFrame) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]], list[tuple[pd.DataFrame, np.ndarray]]]:
    """-> (fold source ids, per fold (train inputs, train target), per fold (held-out rows, their inputs)).

    Each fold's scaler is fit on that fold's training rows only: the held-out source never leaks in.
    """
    folds = sorted(df["src_sha256"].unique())
    blocks, tests = [], []
    for sha in folds:
        train, test = df[df["src_sha256"] != sha], df[df["src_sha256"] == sha]
        scaler = Scaler.fit(features(train))
        blocks.append((model_inputs(train, scaler), target(train).astype(np.float32)))
        tests.append((test, model_inputs(test, scaler)))
    return folds, blocks, tests


@dataclass
class LosoResult:
    seeds: tuple[int, ...]
    config: TrainConfig
    folds: pd.DataFrame  # one row per (seed, fold)
    predictions: pd.DataFrame  # held-out predictions, PREDICTION_COLUMNS
    corpus: dict[str, Any]  # corpus_summary(): sha256, n_rows, n_sources, sources...
    fingerprint: dict[str, Any] = field(default_factory=dict)
    fingerprint_id: str = ""

    def per_seed(self) -> dict[int, dict[str, float | int]]:
        """NaN-safe mean/std/min/max of the fold PLCCs of each seed."""
        return {s: nan_safe_summary(self.folds.loc[self.folds["seed"] == s, "plcc"].tolist()) for s in self.seeds}

    def summary(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "seeds": list(self.seeds),
            "config": self.config.to_dict(),
            "codec": codec_layout(),
            "corpus": self.corpus,
            "per_seed": {str(s): v for s, v in self.per_seed().items()},
            "fingerprint": self.fingerprint,
            "fingerprint_id": self.fingerprint_id,
        }


def _environment() -> tuple[dict[str, Any], str]:
    from kit.env.fingerprint import fingerprint, fingerprint_id

    fp = fingerprint()
    return fp, fingerprint_id(fp)


def run_loso(
    corpus_df: pd.DataFrame,
    config: TrainConfig,
    seeds: tuple[int, ...] | list[int],
    out_dir: str | Path | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> LosoResult:
    """Train seeds x folds together, evaluate each on its held-out source, write run_dir/loso/."""
    seeds = tuple(sorted({int(s) for s in seeds}))
    if not seeds:
        raise BadInput("--seeds is empty", hint="e.g. --seeds 0,1,2,3,4")
    full = canonical_order(normalise(corpus_df))
    summary = corpus_summary(full)
    df = check_trainable(full)
    folds, blocks, tests = prepare_folds(df)
    jobs = [Job(block=f, key=(seed, LOSO_TAG, source_key(sha))) for seed in seeds for f, sha in enumerate(folds)]
    src_name = dict(zip(df["src_sha256"], df["src"], strict=False))
    names = [f"seed {seed} fold {src_name[sha]}" for seed in seeds for sha in folds]
    net = train_models(blocks, jobs, config, names=names, progress=progress)
    preds = predict(net, [tests[j.block][1] for j in jobs], config.threads)

    fold_rows, pred_frames = [], []
    for job, pred in zip(jobs, preds, strict=True):
        seed = job.key[0]
        test = tests[job.block][0]
        frames = pd.DataFrame(
            {
                "seed": np.int64(seed),
                "fold_src_sha256": folds[job.block],
                "src": test["src"].to_numpy(),
                "encoder": test["encoder"].to_numpy(),
                "cq": test["cq"].to_numpy(dtype=np.int64),
                "frame_index": test["frame_index"].to_numpy(dtype=np.int64),
                "vmaf": test["vmaf"].to_numpy(dtype=np.float64),
                "pred": pred.astype(np.float64),
            }
        )
        if "cell_id" in test.columns:
            frames["cell_id"] = test["cell_id"].to_numpy()
        frames["src_sha256"] = folds[job.block]
        metrics = fold_metrics(frames)
        fold_rows.append({"seed": seed, "fold_src": src_name[folds[job.block]], "fold_src_sha256": folds[job.block], **metrics})
        pred_frames.append(frames[list(PREDICTION_COLUMNS)])
    fp, fp_id = _environment()
    result = LosoResult(
        seeds=seeds,
        config=config,
        folds=pd.DataFrame(fold_rows).sort_values(["seed", "fold_src_sha256"], kind="mergesort").reset_index(drop=True),
        predictions=pd.concat(pred_frames, ignore_index=True),
        corpus=summary,
        fingerprint=fp,
        fingerprint_id=fp_id,
    )
    if out_dir is not None:
        write_loso(result, Path(out_dir))
    return result


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    """Parquet with fixed settings and no pandas index metadata: same frame -> same bytes."""
    table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(None)
    write_with(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", compression_level=3, write_statistics=False))


def write_loso(result: LosoResult, loso_dir: Path) -> None:
    loso_dir.mkdir(parents=True, exist_ok=True)
    for seed in result.seeds:
        part = result.predictions[result.predictions["seed"] == seed].reset_index(drop=True)
        _write_parquet(part, loso_dir / f"seed{seed}" / "predictions.parquet")
    write_text(loso_dir / "folds.csv", result.folds.to_csv(index=False, lineterminator="\n", float_format="%.17g"))
    write_json(loso_dir / "summary.json", _json_safe(result.summary()))


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> None so the JSON is strict (other tools choke on bare NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def load_loso(loso_dir: str | Path, *, with_predictions: bool = False) -> LosoResult:
    """Read back what run_loso wrote (for `verdict`, `export` and `report`)."""
    loso_dir = Path(loso_dir)
    summary_path, folds_path = loso_dir / "summary.json", loso_dir / "folds.csv"
    if not summary_path.is_file() or not folds_path.is_file():
        raise BadInput(f"{loso_dir}: no LOSO results (summary.json/folds.csv)", hint="run `ensemble-kit train` first")
    summary = read_json(summary_path, what="loso/summary.json")
    seeds = tuple(int(s) for s in summary["seeds"])
    folds = pd.read_csv(folds_path, dtype={"fold_src": str, "fold_src_sha256": str})
    predictions = pd.DataFrame(columns=list(PREDICTION_COLUMNS))
    if with_predictions:
        parts = [pd.read_parquet(loso_dir / f"seed{s}" / "predictions.parquet") for s in seeds
                 if (loso_dir / f"seed{s}" / "predictions.parquet").is_file()]
        if parts:
            predictions = pd.concat(parts, ignore_index=True)
    return LosoResult(
        seeds=seeds,
        config=TrainConfig.from_dict(summary["config"]),
        folds=folds,
        predictions=predictions,
        corpus=summary["corpus"],
        fingerprint=summary.get("fingerprint", {}),
        fingerprint_id=summary.get("fingerprint_id", ""),
    )
