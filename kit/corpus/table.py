"""The corpus as a table (pandas only, no ffmpeg): read, canonical order, de-duplicate, merge, write, hash.

One row per frame of one encode, `kit.core.schema.CORPUS_COLUMNS` in that order. Every corpus that
enters or leaves the kit passes through here: assembled cells, merged corpora and shards, old-kit
JSONL (the fork's and the old kit's, via `kit.corpus.legacy`), and the training loader (`kit.train.data.load_corpus`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from kit.core.console import warn
from kit.core.errors import BadInput
from kit.core.fsio import read_json, writable_dir, write_json, write_with
from kit.core.rundir import RunDir
from kit.core.schema import CONTENT_COLUMNS, CORPUS_COLUMNS, FEATURES, ROW_KEY, SORT_KEY, TARGET
from kit.corpus import legacy, rows

# What two rows with the same ROW_KEY must agree on to count as duplicates rather than a conflict.
VALUE_COLUMNS: tuple[str, ...] = ("enc_bytes", TARGET, *FEATURES)


def read_cells(paths: Sequence[Path], names: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The rows of these cell files. `names` (cell_id -> the source's current name) relabels `src`: a cell
    is keyed by its content, so a renamed clip's finished cells are reused, and carry the new name."""
    frames = [pq.read_table(p).to_pandas() for p in paths]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in CORPUS_COLUMNS.items()})
    df = pd.concat(frames, ignore_index=True)
    if names:
        df["src"] = df["cell_id"].map(names).fillna(df["src"])
    return df


def canonical_order(df: pd.DataFrame) -> pd.DataFrame:
    return df.astype(CORPUS_COLUMNS).sort_values(list(SORT_KEY), kind="mergesort").reset_index(drop=True)[list(CORPUS_COLUMNS)]


def write_corpus(df: pd.DataFrame, path: Path) -> None:
    df = canonical_order(df)
    write_with(path, lambda tmp: df.to_parquet(tmp, index=False))


def assemble(cell_files: Sequence[Path], out: Path, names: Mapping[str, str] | None = None) -> int:
    """corpus.parquet from exactly these cell files (their sources named as `names` says), in canonical
    row order; -> rows."""
    df = read_cells(cell_files, names)
    write_corpus(df, out)
    return len(df)


def dedupe(df: pd.DataFrame) -> tuple[pd.DataFrame, int, pd.DataFrame]:
    """-> (rows unique on ROW_KEY, exact duplicates dropped, rows of keys whose values conflict).

    The first occurrence (input order) of a conflicting key is kept; every version is returned so the
    caller reports them instead of hiding them.
    """
    df = df.reset_index(drop=True)
    exact = df.duplicated(subset=[*ROW_KEY, *VALUE_COLUMNS], keep="first")
    rest = df[~exact]
    conflicting = rest.duplicated(subset=list(ROW_KEY), keep=False)
    kept = rest.drop_duplicates(subset=list(ROW_KEY), keep="first")
    return kept, int(exact.sum()), rest[conflicting]


def load_corpus_input(path: Path, *, drop_invalid: bool = False, invalid: legacy.InvalidRows | None = None
                      ) -> pd.DataFrame:
    """A run dir (its corpus.parquet, or its finished grid cells when it is a shard), a .parquet or a per-frame
    .jsonl. A JSONL row that cannot be a corpus row is bad input naming its file:line, or with `drop_invalid`
    skipped and counted into `invalid` (when given)."""
    path = Path(path)
    if path.is_dir():
        rd = RunDir(path)
        if rd.corpus.is_file():
            path = rd.corpus
        else:
            if not rd.grid_json.is_file():
                raise BadInput(f"{path} holds neither corpus.parquet nor corpus/grid.json",
                               hint="pass a run directory made by `ensemble-kit corpus`, or a corpus file")
            grid = read_json(rd.grid_json, what="grid")
            cells = [rd.cell_path(c["cell_id"]) for c in grid["cells"]]
            names = {c["cell_id"]: c["src"] for c in grid["cells"] if isinstance(c.get("src"), str)}
            cells_df = read_cells([c for c in cells if c.is_file()], names)
            return check_types(cells_df, path, drop_invalid=drop_invalid, invalid=invalid)
    if path.suffix == ".jsonl":
        df, skipped = legacy.read_jsonl([path], drop_invalid=drop_invalid)
        _count_invalid(path, skipped, invalid)
        return df
    try:
        df = pq.read_table(path).to_pandas()
    except Exception as exc:  # noqa: BLE001 - any unreadable input is bad input naming it
        raise BadInput(f"cannot read corpus {path}: {exc}", hint="pass a corpus .parquet, a run directory or an old-kit .jsonl") from None
    missing = [c for c in CORPUS_COLUMNS if c not in df.columns]
    if missing:
        raise BadInput(f"{path} is not an ensemble-kit corpus (missing {', '.join(missing[:5])})",
                       hint="old-kit JSONL goes through `ensemble-kit corpus import`")
    return check_types(df[list(CORPUS_COLUMNS)], path, drop_invalid=drop_invalid, invalid=invalid)


# What a bad row in a .parquet says to do: with --drop-invalid where the command has it (train, merge: they
# count the dropped rows), else ask for a corpus the kit wrote (it never holds such a row).
PARQUET_FIX_HINT = "fix or remove those rows, or pass --drop-invalid to skip and count them"
PARQUET_NO_DROP_HINT = "a corpus ensemble-kit wrote never holds such a row: regenerate it with `ensemble-kit corpus`"


def check_types(df: pd.DataFrame, where: Path | str, *, drop_invalid: bool = False,
                invalid: legacy.InvalidRows | None = None) -> pd.DataFrame:
    """A corpus file is untrusted: every number column must hold numbers (integers where CORPUS_COLUMNS
    says int64, no gaps there), else bad input naming the file, the column and a bad value; then every row
    must keep the row rule (`kit.corpus.rows`: non-empty source and encoder, values in range), else bad
    input naming the file, row, column and value, or with `drop_invalid` dropped and counted into `invalid`.
    -> typed frame."""
    for col, dtype in CORPUS_COLUMNS.items():
        if dtype not in ("int64", "float64"):
            continue
        raw = df[col]
        values = pd.to_numeric(raw, errors="coerce")
        bad = values.isna() & raw.notna()
        if dtype == "int64":
            bad |= values.isna() | (values.notna() & (values != values.round()))
        if bad.any():
            first = raw[bad].iloc[0]
            raise BadInput(f"{where}: column {col} must hold {'integers' if dtype == 'int64' else 'numbers'}, "
                           f"but {int(bad.sum())} row(s) hold e.g. {first!r}",
                           hint="regenerate the corpus with `ensemble-kit corpus`, or fix that column")
        df = df.assign(**{col: values})
    df = enforce_row_rule(df.reset_index(drop=True), where, drop_invalid=drop_invalid, invalid=invalid)
    return df.astype(CORPUS_COLUMNS)


def enforce_row_rule(df: pd.DataFrame, where: Path | str, *, drop_invalid: bool = False,
                     invalid: legacy.InvalidRows | None = None, first_row: int = 0) -> pd.DataFrame:
    """The rows of `df` that keep the row rule. A row that breaks it is bad input (`where: row N: ...`, N
    counted from 0 in the file, `first_row` being df's first), or with `drop_invalid` dropped, counted
    into `invalid` and warned about."""
    found = rows.invalid_rows(df)
    if not found.count:
        return df
    at = found.positions()
    examples = [f"{where}: row {first_row + int(i)}: {found.reason(int(i))}" for i in at[: legacy.EXAMPLES]]
    if not drop_invalid:
        more = f" (and {found.count - 1} more invalid row(s))" if found.count > 1 else ""
        raise BadInput(f"{examples[0]}{more}", hint=PARQUET_FIX_HINT if invalid is not None else PARQUET_NO_DROP_HINT)
    skipped = legacy.InvalidRows(found.count, examples)
    _count_invalid(Path(str(where)), skipped, invalid)
    return df[~found.mask].reset_index(drop=True)


def merge(inputs: Sequence[Path], out: Path, *, drop_invalid: bool = False) -> dict[str, Any]:
    """`ensemble-kit merge`: concatenate inputs in order, de-duplicate on ROW_KEY, write canonical order."""
    if not inputs:
        raise BadInput("merge needs at least one input", hint="pass run directories or corpus files")
    out = Path(out)
    if out.is_dir():
        raise BadInput(f"--out {out} is a folder", hint="name the corpus file, e.g. --out merged/corpus.parquet")
    writable_dir(out.parent, "--out: the folder")
    invalid = legacy.InvalidRows()
    frames = [load_corpus_input(p, drop_invalid=drop_invalid, invalid=invalid).astype(CORPUS_COLUMNS) for p in inputs]
    kept, dropped, conflicts = dedupe(pd.concat(frames, ignore_index=True))
    # The conflicts file belongs to the corpus beside it: an older one never stays next to a new result.
    cpath = conflicts_path(out)
    cpath.unlink(missing_ok=True)
    if out.suffix == ".jsonl":
        legacy.write_jsonl(canonical_order(kept), out)
    else:
        write_corpus(kept, out)
    if len(conflicts):
        write_with(cpath, lambda tmp: conflicts.to_parquet(tmp, index=False))
    return {"inputs": len(inputs), "rows": len(kept), "duplicates_dropped": dropped,
            "conflicts": int(conflicts[list(ROW_KEY)].drop_duplicates().shape[0]),
            "out": str(out), "conflicts_file": str(cpath) if len(conflicts) else None, **invalid.to_dict()}


def conflicts_path(out: Path) -> Path:
    """Where `merge` writes every version of conflicting rows: OUT.conflicts.parquet beside OUT."""
    return out.with_name(out.stem + ".conflicts.parquet")


def _count_invalid(path: Path, skipped: legacy.InvalidRows, into: legacy.InvalidRows | None) -> None:
    if skipped.count:
        warn(f"{path}: skipped {skipped.count} invalid row(s) (--drop-invalid), e.g. {skipped.examples[0]}")
    if into is not None:
        into.count += skipped.count
        into.examples = (into.examples + skipped.examples)[: legacy.EXAMPLES]


def import_jsonl(paths: Sequence[Path], run_dir: RunDir, *, drop_invalid: bool = False) -> dict[str, Any]:
    """`ensemble-kit corpus import`: per-frame JSONL (ours, the fork's, the old kit's) -> run_dir/corpus.parquet
    (de-duplicated like `merge`); invalid rows are an error, or skipped and counted with `drop_invalid`."""
    df, skipped = legacy.read_jsonl(paths, drop_invalid=drop_invalid)
    _count_invalid(Path(", ".join(map(str, paths))), skipped, None)
    kept, dropped, conflicts = dedupe(df)
    run_dir.root.mkdir(parents=True, exist_ok=True)
    write_corpus(kept, run_dir.corpus)
    report = {"inputs": [str(p) for p in paths], "rows": len(kept), "sources": int(kept["src"].nunique()),
              "duplicates_dropped": dropped, "conflicts": int(len(conflicts)), "corpus": str(run_dir.corpus),
              **skipped.to_dict()}
    if len(conflicts):
        path = run_dir.import_conflicts
        path.parent.mkdir(parents=True, exist_ok=True)
        conflicts.to_parquet(path, index=False)
        report["conflicts_file"] = str(path)
    write_json(run_dir.import_json, report)
    return report


def export_jsonl(corpus_path: Path, out: Path) -> int:
    """corpus.parquet -> JSONL with every corpus column (lossless; the fork's trainer reads it as is),
    canonical row order; -> rows."""
    try:
        df = pd.read_parquet(corpus_path)
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read corpus {corpus_path}: {exc}", hint="run `ensemble-kit corpus` first") from None
    return legacy.write_jsonl(canonical_order(df), out)


def jsonl_sha256(df: pd.DataFrame) -> str:
    """sha256 of the JSONL `corpus export` writes for these rows (what a member sidecar's corpus.sha256 names)."""
    ordered = df.sort_values(list(SORT_KEY), kind="mergesort").reset_index(drop=True)
    present = {c: t for c, t in CORPUS_COLUMNS.items() if c in ordered.columns}
    return legacy.jsonl_sha256(ordered[list(present)].astype(present))


# ---- what a corpus is, in one hash -------------------------------------------------------------------

def corpus_sha256(df: pd.DataFrame) -> str:
    """Content hash of the rows in canonical order over every content column present.

    Timings and provenance (schema.MEASURED_COLUMNS, PROVENANCE_COLUMNS) stay out: the same rows
    computed twice, or on two boxes, hash the same.

    Column by column: name, then values as little-endian int64/float64 bytes or UTF-8 strings joined
    by an unused separator. Independent of file format, row order on disk and pandas version.
    """
    df = df.sort_values(list(SORT_KEY), kind="mergesort").reset_index(drop=True)
    h = hashlib.sha256()
    for col in [c for c in CONTENT_COLUMNS if c in df.columns]:
        h.update(f"\x1e{col}\x1e".encode())
        _hash_values(h, col, df[col])
    return h.hexdigest()


# Rows per batch when a corpus file is streamed (one column at a time): memory stays a few MiB.
STREAM_BATCH_ROWS = 1 << 16
# Columns the loader rewrites (kit.train.data.normalise): a file streams only if they need no rewriting.
_NORMALISED_TEXT = ("src", "src_sha256", "encoder", "preset")


def _hash_values(h: Any, col: str, values: pd.Series) -> None:
    """One column's values into the content hash, exactly as `corpus_sha256` encodes them."""
    if CORPUS_COLUMNS[col] == "int64":
        h.update(pd.to_numeric(values, errors="coerce").fillna(-1).to_numpy(dtype="<i8").tobytes())
    elif CORPUS_COLUMNS[col] == "float64":
        h.update(pd.to_numeric(values, errors="coerce").to_numpy(dtype="<f8").tobytes())
    else:
        h.update("\x1f".join("\x00" if pd.isna(v) else str(v) for v in values).encode())


def _strictly_increasing(keys: list[np.ndarray]) -> bool:
    """Rows (one array per SORT_KEY column) strictly increase lexicographically."""
    less = np.zeros(len(keys[0]) - 1, dtype=bool)
    equal = np.ones(len(keys[0]) - 1, dtype=bool)
    for k in keys:
        a, b = k[:-1], k[1:]
        less |= equal & (a < b)
        equal &= a == b
    return bool(less.all())


def stream_batches(pf: pq.ParquetFile, columns: Sequence[str]) -> Iterator[Any]:
    """`columns` of a parquet file in STREAM_BATCH_ROWS record batches, one row group at a time: pyarrow's
    reader over all row groups keeps memory it has read (measured: it grows with the file), a fresh reader
    per row group does not, so memory stays one row group's worth whatever the file's size."""
    for group in range(pf.metadata.num_row_groups):
        yield from pf.iter_batches(batch_size=STREAM_BATCH_ROWS, row_groups=[group], columns=list(columns),
                                   use_threads=False)


def _streamable(path: Path) -> pq.ParquetFile | None:
    """The parquet file, if it is already what the loader (kit.train.data.load_corpus) makes of it: every
    corpus column present, rows strictly in SORT_KEY order (nothing to re-order or de-duplicate) and no
    blank source, sha256, encoder, preset, cq or frame index (nothing to fill in). Every corpus
    ensemble-kit writes is. Checked in STREAM_BATCH_ROWS batches of the key columns; else None.
    The same pass applies the row rule (`kit.corpus.rows`) to every batch: a row that breaks it is bad
    input naming the file and row, as the loader says it."""
    try:
        pf = pq.ParquetFile(path)
    except Exception:  # noqa: BLE001 - an unreadable file: the caller's loader names the problem
        return None
    if any(c not in pf.schema_arrow.names for c in CORPUS_COLUMNS):
        return None
    previous: list[np.ndarray] | None = None
    checked = [*_NORMALISED_TEXT, "cq", "frame_index"]
    offset = 0
    for batch in stream_batches(pf, list(dict.fromkeys([*SORT_KEY, *checked, *rows.ROW_RULES]))):
        frame = batch.to_pandas()
        if frame[checked].isna().to_numpy().any() or (frame["src_sha256"].astype(str) == "").any():
            return None
        enforce_row_rule(frame, path, first_row=offset)
        offset += len(frame)
        keys = [frame[c].to_numpy(dtype=object) for c in SORT_KEY]
        if previous is not None:
            keys = [np.concatenate([p[-1:], k]) for p, k in zip(previous, keys, strict=True)]
        if len(keys[0]) > 1 and not _strictly_increasing(keys):
            return None
        previous = keys
    return pf


def streamed_corpus_sha256(path: Path) -> str | None:
    """`corpus_sha256` of the loaded corpus, streamed column by column in STREAM_BATCH_ROWS batches, so a
    corpus of any size hashes in a few MiB; None when the file is not streamable (`_streamable`) and the
    caller must hash the loaded frame instead."""
    pf = _streamable(path)
    if pf is None:
        return None
    h = hashlib.sha256()
    for col in CONTENT_COLUMNS:
        h.update(f"\x1e{col}\x1e".encode())
        first = True
        for batch in stream_batches(pf, [col]):
            values = batch.column(0).to_pandas()
            if CORPUS_COLUMNS[col] not in ("int64", "float64") and not first and len(values):
                h.update(b"\x1f")  # the separator `corpus_sha256` puts between rows of one column
            _hash_values(h, col, values)
            first = first and not len(values)
    return h.hexdigest()


def streamed_jsonl_sha256(path: Path, keep: Callable[[pd.DataFrame], pd.Series]) -> tuple[str, int] | None:
    """(`jsonl_sha256`, rows) of the loaded corpus's rows that `keep` selects, streamed in batches; None
    when the file is not streamable. What a member sidecar's corpus block names (`keep`: the usable rows)."""
    pf = _streamable(path)
    if pf is None:
        return None
    h, rows = hashlib.sha256(), 0
    for batch in stream_batches(pf, list(CORPUS_COLUMNS)):
        frame = batch.to_pandas().astype(CORPUS_COLUMNS)
        frame = frame[keep(frame)]
        rows += len(frame)
        for line in legacy.jsonl_lines(frame):
            h.update(line.encode("utf-8"))
    return h.hexdigest(), rows


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
