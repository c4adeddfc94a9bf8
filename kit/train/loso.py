"""Leave-one-source-out cross-validation over seeds x folds, trained as one batched computation.

One fold per distinct source (`src_sha256`); each fold's scaler is fit on its training rows only, and
the codec block (vocabulary, crf_norm over the whole corpus's cq range) is the fork's (kit.train.codec).
Every (seed, fold) model has its own generator keyed by (seed, the held-out source's sha256), so
fold k of seed s is the same model whatever other seeds or folds run beside it. The results and
their files are `kit.train.loso_files` (pandas only).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kit.core.errors import BadInput
from kit.core.ids import int_key
from kit.core.rundir import RunDir
from kit.core.schema import FEATURES
from kit.corpus.table import corpus_summary
from kit.train.batched import Job, check_memory, predict, train_models
from kit.train.codec import CodecSpec
from kit.train.config import TrainConfig
from kit.train.data import (
    Scaler,
    canonical_order,
    check_trainable,
    corpus_codec,
    dropped_rows,
    features,
    model_inputs,
    normalise,
    target,
)
from kit.train.loso_files import PREDICTION_COLUMNS, LosoResult, write_loso
from kit.train.metrics import fold_metrics

LOSO_TAG = 1  # generator key domain: LOSO models
FULL_TAG = 0  # generator key domain: full-corpus (export) models


def source_key(src_sha256: str) -> int:
    """64 bits of the source id for a generator key (ids may be legacy 'name:<src>', not hex)."""
    return int_key(src_sha256, 64)


def prepare_folds(df: pd.DataFrame, codec: CodecSpec) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]],
                                                              list[tuple[pd.DataFrame, np.ndarray]]]:
    """-> (fold source ids, per fold (train inputs, train target), per fold (held-out rows, their inputs)).

    Each fold's scaler is fit on that fold's training rows only: the held-out source never leaks in. The
    codec block is the whole corpus's (the fork computes crf_norm once, over every row).
    """
    folds = sorted(df["src_sha256"].unique())
    blocks, tests = [], []
    for sha in folds:
        train, test = df[df["src_sha256"] != sha], df[df["src_sha256"] == sha]
        scaler = Scaler.fit(features(train))
        blocks.append((model_inputs(train, scaler, codec), target(train).astype(np.float32)))
        tests.append((test, model_inputs(test, scaler, codec)))
    return folds, blocks, tests


def run_loso(
    corpus_df: pd.DataFrame,
    config: TrainConfig,
    seeds: tuple[int, ...] | list[int],
    run_dir: RunDir | str | Path | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    environment: tuple[dict[str, Any], str] = ({}, ""),
    corpus_notes: dict[str, Any] | None = None,
    max_memory: int | None = None,
    gate_thresholds: dict[str, float] | None = None,
) -> LosoResult:
    """Train seeds x folds together, evaluate each on its held-out source, write run_dir/loso/ (if given).

    `environment` is the (fingerprint, id) the results record: the caller's `kit.env.fingerprint.current()`
    (the trainer does not look for the tools the fingerprint describes). `corpus_notes` (e.g. invalid rows
    skipped on input) are recorded with the corpus summary, so the verdict carries them. Training that would
    need more than `max_memory` bytes (default: most of this box's memory) is refused before it starts.
    `gate_thresholds` (taken from a --corpus run or bundle) are recorded for a later `verdict`.
    """
    seeds = tuple(sorted({int(s) for s in seeds}))
    if not seeds:
        raise BadInput("--seeds is empty", hint="e.g. --seeds 0,1,2,3,4")
    full = canonical_order(normalise(corpus_df))
    summary = {**corpus_summary(full), **(corpus_notes or {})}
    df = check_trainable(full)
    summary["dropped"] = dropped_rows(corpus_df, len(df))
    codec = corpus_codec(df, config.codec_vocab)
    fold_rows = df.groupby("src_sha256").size()
    check_memory([len(df) - int(n) for n in fold_rows], [f for _ in seeds for f in range(len(fold_rows))],
                 len(FEATURES) + codec.vocab.width, config, max_memory)
    folds, blocks, tests = prepare_folds(df, codec)
    jobs = [Job(block=f, key=(seed, LOSO_TAG, source_key(sha))) for seed in seeds for f, sha in enumerate(folds)]
    src_name = dict(zip(df["src_sha256"], df["src"], strict=False))
    names = [f"seed {seed} fold {src_name[sha]}" for seed in seeds for sha in folds]
    started = time.monotonic()
    net = train_models(blocks, jobs, config, names=names, progress=progress)
    preds = predict(net, [tests[j.block][1] for j in jobs], config.threads)
    wall_time_s = time.monotonic() - started
    n_rows = len(df)

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
        fold_rows.append({"seed": seed, "fold_src": src_name[folds[job.block]], "fold_src_sha256": folds[job.block],
                          **metrics, "n_train": n_rows - len(test)})
        pred_frames.append(frames[list(PREDICTION_COLUMNS)])
    fp, fp_id = environment
    result = LosoResult(
        seeds=seeds,
        config=config,
        folds=pd.DataFrame(fold_rows).sort_values(["seed", "fold_src_sha256"], kind="mergesort").reset_index(drop=True),
        predictions=pd.concat(pred_frames, ignore_index=True),
        corpus=summary,
        codec=codec.to_dict(),
        fingerprint=fp,
        fingerprint_id=fp_id,
        wall_time_s=wall_time_s,
        gate_thresholds=gate_thresholds,
    )
    if run_dir is not None:
        write_loso(result, RunDir.of(run_dir))
    return result
