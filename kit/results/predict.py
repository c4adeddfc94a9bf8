"""Ensemble prediction with onnxruntime (no torch): every member's score, their mean, spread and interval.

Each member is checked against ensemble.json's sha256 before it runs, and fed the codec block of its
own sidecar's vocabulary, so older models keep working after the vocabulary grows.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
from scipy import stats

from kit.core.errors import BadInput
from kit.core.fsio import read_json, sha256_bytes, write_with
from kit.core.rundir import ENSEMBLE_JSON
from kit.train.codec import VOCAB, codec_block
from kit.train.data import canonical_order, features, normalise


def ort_scores(onnx_bytes: bytes, feats: np.ndarray, codec: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    return session.run(["score"], {"features": feats.astype(np.float32), "codec_onehot": codec.astype(np.float32)})[0]


def load_ensemble(models_dir: str | Path) -> tuple[dict[str, Any], list[tuple[dict[str, Any], bytes]]]:
    """ensemble.json and each member's (sidecar, onnx bytes), every sha256 verified."""
    models_dir = Path(models_dir)
    ensemble = read_json(models_dir / ENSEMBLE_JSON, what=f"models/{ENSEMBLE_JSON}")
    members = []
    for member in ensemble.get("members", []):
        path = models_dir / member["onnx"]
        if not path.is_file():
            raise BadInput(f"{path}: listed in ensemble.json but missing", hint="rerun `ensemble-kit export`")
        data = path.read_bytes()
        if sha256_bytes(data) != member["sha256"]:
            raise BadInput(f"{path}: sha256 differs from ensemble.json (file changed)", hint="rerun `ensemble-kit export`")
        sidecar = read_json(models_dir / member["sidecar"], what=f"sidecar {member['sidecar']}")
        members.append((sidecar, data))
    if not members:
        raise BadInput(f"{models_dir / 'ensemble.json'} lists no members", hint="rerun `ensemble-kit export`")
    return ensemble, members


def predict_ensemble(models_dir: str | Path, corpus_df: pd.DataFrame) -> pd.DataFrame:
    """Every member's score per row, their mean, std (ddof=1) and a 95% interval of the mean.

    Interval: mean +- t(0.975, n-1) * std / sqrt(n) over the n members (NaN with one member).
    """
    _, members = load_ensemble(models_dir)
    df = canonical_order(normalise(corpus_df))
    feats = features(df).astype(np.float32)
    out = pd.DataFrame({c: df[c] for c in ("src", "src_sha256", "encoder", "cq", "frame_index") if c in df.columns})
    if "vmaf" in df.columns:
        out["vmaf"] = df["vmaf"].to_numpy()
    scores = []
    for sidecar, data in members:
        vocab = tuple(sidecar.get("codec", {}).get("vocab", VOCAB))
        s = ort_scores(data, feats, codec_block(df, vocab)).astype(np.float64)
        out[f"pred_seed{sidecar['seed']}"] = s
        scores.append(s)
    stack = np.vstack(scores)
    n = stack.shape[0]
    mean = stack.mean(axis=0)
    std = stack.std(axis=0, ddof=1) if n > 1 else np.full(stack.shape[1], np.nan)
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n) if n > 1 else np.full(stack.shape[1], np.nan)
    out["pred_mean"], out["pred_std"] = mean, std
    out["pred_ci95_low"], out["pred_ci95_high"] = mean - half, mean + half
    return out


def write_predictions(df: pd.DataFrame, path: str | Path) -> None:
    """Atomically write predictions as .csv or .parquet (by suffix)."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        write_with(p, lambda tmp: df.to_csv(tmp, index=False, lineterminator="\n", float_format="%.9g"))
    else:
        write_with(p, lambda tmp: df.to_parquet(tmp, index=False))
