"""Agreement between predicted and measured VMAF: PLCC, SROCC, KROCC, RMSE, per frame and per encode.

SROCC and KROCC are scipy's (ties averaged / tau-b), so they match what a reviewer computes by hand.
A metric that is undefined (constant input, fewer than 2 points) is NaN, never an exception.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

METRICS = ("plcc", "srocc", "krocc", "rmse")
# One encode = one cell: the same source, encoder and quality value.
ENCODE_KEY = ("src_sha256", "encoder", "cq")


def _defined(pred: np.ndarray, actual: np.ndarray) -> bool:
    return len(pred) >= 2 and np.ptp(pred) > 0 and np.ptp(actual) > 0


def agreement(pred: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """PLCC, SROCC, KROCC and RMSE of one set of predictions; NaN where a correlation is undefined."""
    pred = np.asarray(pred, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    rmse = float(np.sqrt(np.mean((pred - actual) ** 2))) if len(pred) else math.nan
    if not _defined(pred, actual):
        return {"plcc": math.nan, "srocc": math.nan, "krocc": math.nan, "rmse": rmse}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "plcc": float(stats.pearsonr(pred, actual)[0]),
            "srocc": float(stats.spearmanr(pred, actual)[0]),
            "krocc": float(stats.kendalltau(pred, actual)[0]),
            "rmse": rmse,
        }


def per_encode(frames: pd.DataFrame) -> pd.DataFrame:
    """Mean prediction and mean VMAF over each encode's frames (grouped by cell_id when present)."""
    key = ["cell_id"] if "cell_id" in frames.columns and frames["cell_id"].notna().all() else list(ENCODE_KEY)
    return frames.groupby(key, sort=True)[["pred", "vmaf"]].mean().reset_index()


def fold_metrics(frames: pd.DataFrame) -> dict[str, float]:
    """Frame-level and encode-level metrics of one held-out source: keys plcc, ..., encode_plcc, ..."""
    out = agreement(frames["pred"].to_numpy(), frames["vmaf"].to_numpy())
    enc = per_encode(frames)
    out.update({f"encode_{k}": v for k, v in agreement(enc["pred"].to_numpy(), enc["vmaf"].to_numpy()).items()})
    out["n_frames"] = int(len(frames))
    out["n_encodes"] = int(len(enc))
    return out


def nan_safe_summary(values: list[float]) -> dict[str, float | int]:
    """mean/std/min/max over the finite values, order-independent (exact sums via math.fsum).

    NaN folds are left out and counted, never allowed to poison min/max.
    """
    finite = sorted(float(v) for v in values if v is not None and math.isfinite(v))
    n = len(finite)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0, "n_nan": len(values)}
    mean = math.fsum(finite) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": finite[0], "max": finite[-1], "n": n, "n_nan": len(values) - n}
