"""Corpus in, model inputs out: the one loader, the codec vocabulary, checks and the corpus hash.

`load_corpus(path)` is the single entry point for every corpus format (corpus.parquet, a run
directory, the old kit's per-frame JSONL; extend it for results bundles), so every command reads
corpora the same way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kit.core.errors import BadInput
from kit.core.schema import CONTENT_COLUMNS, CORPUS_COLUMNS, FEATURES, SORT_KEY, TARGET
from kit.corpus.encoders import ENCODERS, codec_inputs

# The codec one-hot vocabulary. Bump the version whenever the list changes: a model's sidecar records
# it, so a consumer can tell which column means which encoder. Order = kit.corpus.encoders.ENCODERS order.
VOCAB_VERSION = 1
UNKNOWN = "unknown"
VOCAB: tuple[str, ...] = (*ENCODERS, UNKNOWN)
CODEC_COLUMNS: tuple[str, ...] = (*(f"onehot:{v}" for v in VOCAB), "preset_norm", "cq_norm")
MIN_SOURCES = 3
NEUTRAL_PRESET = 0.5  # preset_norm for rows that do not record their preset (old-kit imports)

# Columns a training corpus must have; everything else in CORPUS_COLUMNS is optional provenance.
REQUIRED = ("src", "encoder", "cq", "frame_index", TARGET, *FEATURES)


def legacy_src_sha256(src: str) -> str:
    """A stable stand-in for a source's content hash where an old corpus never recorded one."""
    return hashlib.sha256(f"ensemble-kit:legacy-src:{src}".encode()).hexdigest()


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


def load_corpus(path: str | Path) -> pd.DataFrame:
    """Read any supported corpus into the canonical frame (normalised, de-duplicated, SORT_KEY order).

    Accepts a corpus.parquet, a run directory (its corpus.parquet, or a shard's finished cells) and
    the old kit's per-frame JSONL (via kit.legacy, which fills what old rows lack). Exact duplicate
    rows (the old kit appended them on re-runs) are dropped so no frame counts twice.
    """
    from kit.corpus.engine import dedupe, load_corpus_input

    p = Path(path)
    if not p.exists():
        raise BadInput(f"corpus not found: {p}", hint="run `ensemble-kit corpus` first or pass --corpus PATH")
    df = load_corpus_input(p)
    df, dropped, _ = dedupe(df)
    if dropped:
        from kit.core.console import warn

        warn(f"{p}: dropped {dropped} exact duplicate row(s)")
    return canonical_order(normalise(df))


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
    return df.loc[ok].reset_index(drop=True)


def features(df: pd.DataFrame) -> np.ndarray:
    return df[list(FEATURES)].to_numpy(dtype=np.float64)


def target(df: pd.DataFrame) -> np.ndarray:
    return df[TARGET].to_numpy(dtype=np.float64)


def codec_block(df: pd.DataFrame, vocab: tuple[str, ...] | list[str] = VOCAB) -> np.ndarray:
    """[N, len(vocab)+2]: one-hot encoder (names not in vocab -> 'unknown'), preset_norm, cq_norm.

    preset_norm comes from the encoder table; a row with no recorded preset (old-kit JSONL) gets the
    neutral 0.5 for encoders that have presets, rather than a guess.

    `vocab` defaults to this kit's; a model sidecar's own vocab can be passed to feed older models.
    """
    n = len(df)
    block = np.zeros((n, len(vocab) + 2), dtype=np.float32)
    index = {name: i for i, name in enumerate(vocab)}
    enc = df["encoder"].to_numpy()
    cq = df["cq"].to_numpy()
    preset = df["preset"].to_numpy() if "preset" in df.columns else np.full(n, "")
    cache: dict[tuple[str, int, str], tuple[float, float]] = {}
    for i in range(n):
        key = (enc[i], int(cq[i]), preset[i])
        if key not in cache:
            preset_norm, cq_norm = codec_inputs(enc[i], int(cq[i]), preset[i] or None)
            if not preset[i] and enc[i] in ENCODERS and ENCODERS[enc[i]].preset:
                preset_norm = NEUTRAL_PRESET  # an old corpus never said which preset it used
            cache[key] = (preset_norm, cq_norm)
        block[i, index.get(enc[i], index[UNKNOWN])] = 1.0
        block[i, -2], block[i, -1] = cache[key]
    return block


def codec_layout() -> dict[str, Any]:
    return {"vocab": list(VOCAB), "vocab_version": VOCAB_VERSION, "columns": list(CODEC_COLUMNS)}


def corpus_sha256(df: pd.DataFrame) -> str:
    """Content hash of the rows in canonical order over every content column present.

    Timings and provenance (schema.MEASURED_COLUMNS, PROVENANCE_COLUMNS) stay out: the same rows
    computed twice, or on two boxes, hash the same.

    Column by column: name, then values as little-endian int64/float64 bytes or UTF-8 strings joined
    by an unused separator. Independent of file format, row order on disk and pandas version.
    """
    df = canonical_order(df)
    h = hashlib.sha256()
    for col in [c for c in CONTENT_COLUMNS if c in df.columns]:
        h.update(f"\x1e{col}\x1e".encode())
        values = df[col]
        if CORPUS_COLUMNS[col] == "int64":
            h.update(pd.to_numeric(values, errors="coerce").fillna(-1).to_numpy(dtype="<i8").tobytes())
        elif CORPUS_COLUMNS[col] == "float64":
            h.update(pd.to_numeric(values, errors="coerce").to_numpy(dtype="<f8").tobytes())
        else:
            h.update("\x1f".join("\x00" if pd.isna(v) else str(v) for v in values).encode())
    return h.hexdigest()


def corpus_summary(df: pd.DataFrame) -> dict[str, Any]:
    """What the verdict says about its corpus: hash, sizes, and each source with its sha256."""
    sources = (
        df.groupby("src_sha256", sort=True)
        .agg(src=("src", "first"), n_rows=("src", "size"))
        .reset_index()
    )
    return {
        "sha256": corpus_sha256(df),
        "n_rows": int(len(df)),
        "n_sources": int(len(sources)),
        "n_encoders": int(df["encoder"].nunique()),
        "encoders": sorted(df["encoder"].unique().tolist()),
        "sources": [
            {"src": str(r.src), "src_sha256": str(r.src_sha256), "n_rows": int(r.n_rows)} for r in sources.itertuples()
        ],
    }


def adopt_corpus(df: pd.DataFrame, run_corpus: Path) -> None:
    """Make a corpus given with --corpus the run directory's corpus.parquet (so verdict, export,
    report and bundle all see the rows that were trained on); never overwrite a different one."""
    from kit.corpus.engine import write_corpus

    run_corpus = Path(run_corpus)
    if run_corpus.is_file():
        existing = corpus_sha256(load_corpus(run_corpus))
        if existing != corpus_sha256(df):
            raise BadInput(
                f"{run_corpus} already holds a different corpus (sha256 {existing[:12]})",
                hint="use a fresh --out-dir for this corpus, or drop --corpus to train on the run's own",
            )
        return
    write_corpus(df[list(CORPUS_COLUMNS)], run_corpus)
