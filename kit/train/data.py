"""Corpus in, model inputs out: the one loader, checks, the fold scaler and the arrays the regressor sees.

`load_corpus(path)` is the single entry point for every corpus format (corpus.parquet, a run
directory, the old kit's per-frame JSONL), read through `kit.corpus.table` (pandas only: no ffmpeg
here), so every command reads corpora the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kit.core.console import warn
from kit.core.errors import BadInput
from kit.core.ids import sha256_hex, shorten
from kit.core.schema import CORPUS_COLUMNS, FEATURES, ROW_KEY, SORT_KEY, TARGET
from kit.corpus import table
from kit.corpus.legacy import InvalidRows
from kit.train.codec import CodecSpec

MIN_SOURCES = 3

# Columns a training corpus must have; everything else in CORPUS_COLUMNS is optional provenance.
REQUIRED = ("src", "encoder", "cq", "frame_index", TARGET, *FEATURES)


def legacy_src_sha256(src: str) -> str:
    """A stable stand-in for a source's content hash where an old corpus never recorded one."""
    return sha256_hex(f"ensemble-kit:legacy-src:{src}")


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Fill what old corpora lack (src_sha256 from src, neutral preset) and fix dtypes."""
    df = df.copy()
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise BadInput(f"corpus lacks column(s) {', '.join(missing)}", hint="regenerate it with `ensemble-kit corpus`")
    if "src_sha256" not in df.columns:
        df["src_sha256"] = df["src"].astype(str).map(legacy_src_sha256)
    else:
        blank = df["src_sha256"].isna() | (df["src_sha256"].astype(str) == "")
        df.loc[blank, "src_sha256"] = df.loc[blank, "src"].astype(str).map(legacy_src_sha256)
    if "preset" not in df.columns:
        df["preset"] = ""
    df["preset"] = df["preset"].fillna("")
    for col in ("cq", "frame_index"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("int64")
    for col in (TARGET, *FEATURES):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    for col in ("src", "src_sha256", "encoder", "preset"):
        df[col] = df[col].astype(str)
    return df


def load_corpus(path: str | Path, *, drop_invalid: bool = False, invalid: InvalidRows | None = None,
                quiet: bool = False) -> pd.DataFrame:
    """Read any supported corpus into the canonical frame (normalised, de-duplicated, SORT_KEY order).

    Accepts a corpus.parquet, a run directory (its corpus.parquet, or a shard's finished cells) and
    a per-frame JSONL (ours, the fork's, the old kit's: kit.corpus.legacy checks every row and fills what
    old rows lack; `drop_invalid` skips invalid rows, counted into `invalid`). Exact duplicate rows (the
    old kit appended them on re-runs) are dropped so no frame counts twice. `quiet`: no notes about what
    was left out (a consistency check reading the corpus again, not a step consuming it).
    """
    p = Path(path)
    if not p.exists():
        raise BadInput(f"corpus not found: {p}", hint="run `ensemble-kit corpus` first or pass --corpus PATH")
    df = table.load_corpus_input(p, drop_invalid=drop_invalid, invalid=invalid)
    df, dropped, conflicts = table.dedupe(df)
    if dropped and not quiet:
        warn(f"{p}: dropped {dropped} exact duplicate row(s)")
    n_keys = int(conflicts[list(ROW_KEY)].drop_duplicates().shape[0]) if len(conflicts) else 0
    if n_keys and not quiet:
        warn(f"{p}: {n_keys} row key(s) (source, encoder, cq, frame) hold conflicting values: kept the first row of "
             f"each, left out {len(conflicts) - n_keys} (`ensemble-kit merge` writes every version to a conflicts file)")
    out = canonical_order(normalise(df))
    out.attrs[LOAD_ATTR] = {"exact_duplicates": int(dropped), "conflicting_keys": n_keys,
                            "conflicting_rows": int(len(conflicts) - n_keys)}
    return out


LOAD_ATTR = "corpus_load"  # DataFrame.attrs key: what load_corpus left out, for the run's records


def dropped_rows(df: pd.DataFrame, used: int) -> dict[str, int]:
    """What was left out between the corpus file and training: `load_corpus`'s duplicates plus the rows
    with a NaN/inf value. Recorded in loso/summary.json and verdict.json under corpus.dropped."""
    return {**{"exact_duplicates": 0, "conflicting_keys": 0, "conflicting_rows": 0}, **df.attrs.get(LOAD_ATTR, {}),
            "non_finite": int(len(df) - used)}


def canonical_order(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(list(SORT_KEY), kind="mergesort").reset_index(drop=True)


def usable(df: pd.DataFrame) -> pd.Series:
    """Rows with a finite target and finite features: the only rows training may see."""
    return pd.Series(np.isfinite(df[[TARGET, *FEATURES]].to_numpy(dtype=float)).all(axis=1), index=df.index)


def check_trainable(df: pd.DataFrame) -> pd.DataFrame:
    """Bad input unless >= 3 sources each with usable frames; returns only the usable rows."""
    sources = sorted(df["src_sha256"].unique()) if len(df) else []
    if len(sources) < MIN_SOURCES:
        raise BadInput(
            f"corpus has {len(sources)} source(s); leave-one-source-out needs at least {MIN_SOURCES}",
            hint="add reference clips and rebuild the corpus",
        )
    ok = usable(df)
    per_source = ok.groupby(df["src_sha256"]).sum()
    empty = [s for s in sources if per_source.get(s, 0) == 0]
    if empty:
        names = sorted(df.loc[df["src_sha256"].isin(empty), "src"].unique())
        raise BadInput(
            f"source(s) {', '.join(names)} have no usable frames (vmaf or features missing/NaN)",
            hint="rescore those sources or remove them from the corpus",
        )
    n_bad = int((~ok).sum())
    if n_bad:
        warn(f"{n_bad} of {len(df)} corpus rows have a NaN/inf VMAF or feature value: left out of training "
             "(recorded as corpus.dropped.non_finite)")
    kept = df.loc[ok].reset_index(drop=True)
    _check_standardisable(kept)
    return kept


def _check_standardisable(df: pd.DataFrame) -> None:
    """Finite is not enough: a value like 1e308 overflows the scaler's std to inf, and the fold holding it
    trains to a NaN PLCC (a HOLD that says nothing about why). Bad input naming the column and the value."""
    columns = [TARGET, *FEATURES]
    values = df[columns].to_numpy(dtype=float)
    with np.errstate(over="ignore", invalid="ignore"):
        spread = values.std(axis=0)
    for col, s, column in zip(columns, spread, values.T, strict=True):
        if not np.isfinite(s):
            row = int(np.abs(column).argmax())
            raise BadInput(f"corpus column {col} holds {column[row]:.6g} (source {df['src'].iloc[row]}, encoder "
                           f"{df['encoder'].iloc[row]}, cq {df['cq'].iloc[row]}, frame {df['frame_index'].iloc[row]}): "
                           "too large to standardise, no libvmaf score is near it",
                           hint="rescore that source or remove the row from the corpus")


def features(df: pd.DataFrame) -> np.ndarray:
    return df[list(FEATURES)].to_numpy(dtype=np.float64)


def target(df: pd.DataFrame) -> np.ndarray:
    return df[TARGET].to_numpy(dtype=np.float64)


SCALER_MIN_STD = 1e-8  # the fork's rule: a feature whose std is below this is divided by 1


@dataclass(frozen=True)
class Scaler:
    """The fork's StandardScaler, kept outside the network: float64 mean and population std (ddof 0) of
    the rows it is fit on, std < 1e-8 -> 1. LOSO fits one per fold on that fold's training rows; export
    fits one on the whole corpus and writes it into every sidecar (`feature_mean`/`feature_std`)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Scaler:
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(axis=0)
        std = x.std(axis=0, ddof=0)
        return cls(mean, np.where(std < SCALER_MIN_STD, 1.0, std))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}


def codec_block(df: pd.DataFrame, codec: CodecSpec) -> np.ndarray:
    """The rows' codec block (`codec_onehot`), float32."""
    return codec.block(df["encoder"].to_numpy(), df["cq"].to_numpy())


def model_inputs(df: pd.DataFrame, scaler: Scaler, codec: CodecSpec) -> np.ndarray:
    """[standardised features | codec block] as float32: what the regressor sees (standardised in float64,
    then cast, as the fork does)."""
    return np.hstack([scaler.transform(features(df)), codec_block(df, codec).astype(np.float64)]).astype(np.float32)


def corpus_codec(df: pd.DataFrame, vocab: str) -> CodecSpec:
    """The codec block's definition for a training corpus: the vocabulary and this corpus's cq range."""
    return CodecSpec.of_corpus(df["cq"].to_numpy(), vocab)


def adopt_corpus(df: pd.DataFrame, run_corpus: Path) -> None:
    """Make a corpus given with --corpus the run directory's corpus.parquet (so verdict, export,
    report and bundle all see the rows that were trained on); never overwrite a different one."""
    run_corpus = Path(run_corpus)
    if run_corpus.is_file():
        existing = table.corpus_sha256(load_corpus(run_corpus))
        if existing != table.corpus_sha256(df):
            raise BadInput(
                f"{run_corpus} already holds a different corpus (sha256 {shorten(existing)})",
                hint="use a fresh --out-dir for this corpus, or drop --corpus to train on the run's own",
            )
        return
    table.write_corpus(df[list(CORPUS_COLUMNS)], run_corpus)
